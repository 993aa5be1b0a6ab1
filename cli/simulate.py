"""``deeplense-ssl simulate``: lenstronomy scenes like DeepLense Models I-III into one HDF5 file."""

from __future__ import annotations

import click

from deeplense_ssl.config import SimulateConfig, config_from_sources
from deeplense_ssl.simulate import MAX_IMAGE_SIZE_PX

from .options import config_option, explicit_params, field_option, seed_option

C = SimulateConfig


@click.command("simulate")
@field_option(
    C,
    "model",
    help='Instrument: model_i (Gaussian PSF, photon counts, 150 px at 0.05"/px), model_ii '
    '(Euclid VIS-like, 64 px at 0.101"/px), model_iii (HST F160W-like, 64 px at 0.08"/px).',
)
@field_option(
    C, "n_per_class", help="Images per class (classes no_sub, cdm, axion; labels 0, 1, 2)."
)
@field_option(
    C,
    "out",
    type=click.Path(dir_okay=False),
    help="Output HDF5 file (written atomically: nothing is left on failure).",
)
@seed_option(C)
@field_option(C, "workers", help="Processes; the output is identical for any number.")
@field_option(
    C,
    "image_size",
    help="Pixels per side at the model's own pixel scale (a wider or narrower field of view), "
    f"4 to {MAX_IMAGE_SIZE_PX}. Default: 150 for model_i, 64 otherwise.",
)
@field_option(
    C,
    "noise",
    help="Add the model's noise (Poisson counts for model_i, CCD noise for model_ii/iii).",
)
@field_option(
    C,
    "source_variant",
    help="0: the scenes as drawn. K > 0: the SAME scenes (lens, substructure, exposure) with "
    "the source centre redrawn and fresh noise: with the same --model, --seed and "
    "--n-per-class, row i renders the scene of row i of the variant-0 file (paired positives "
    "for `pretrain --paired-data`).",
)
@config_option
def command(config_path: str | None, **params) -> None:
    """Simulate a DeepLense-like dataset (needs the `sim` extra: lenstronomy)."""
    from deeplense_ssl.simulate import simulate_dataset

    ctx = click.get_current_context()
    cfg = config_from_sources(SimulateConfig, config_path, explicit_params(ctx, params))
    path = simulate_dataset(cfg)
    n = 3 * cfg.n_per_class
    click.echo(f"Wrote {n} images ({cfg.model}, seed {cfg.seed}) to {path}")
