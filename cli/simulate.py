"""``deeplense-ssl simulate``: lenstronomy scenes like DeepLense Models I-III into one HDF5 file."""

from __future__ import annotations

import click

from deeplense_ssl.config import SimulateConfig, config_from_sources

from .options import config_option, explicit_params, seed_option


@click.command("simulate")
@click.option(
    "--model",
    type=click.Choice(["model_i", "model_ii", "model_iii"]),
    default="model_ii",
    show_default=True,
    help='Instrument: model_i (Gaussian PSF, photon counts, 150 px at 0.05"/px), model_ii '
    '(Euclid VIS-like, 64 px at 0.101"/px), model_iii (HST F160W-like, 64 px at 0.08"/px).',
)
@click.option(
    "--n-per-class",
    type=int,
    default=100,
    show_default=True,
    help="Images per class (classes no_sub, cdm, axion; labels 0, 1, 2).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="sim.h5",
    show_default=True,
    help="Output HDF5 file (written atomically: nothing is left on failure).",
)
@seed_option
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes; the output is identical for any number.",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Pixels per side at the model's own pixel scale (a wider or narrower field of view). "
    "Default: 150 for model_i, 64 otherwise.",
)
@click.option(
    "--noise/--no-noise",
    default=True,
    show_default=True,
    help="Add the model's noise (Poisson counts for model_i, CCD noise for model_ii/iii).",
)
@config_option
def command(
    model: str,
    n_per_class: int,
    out: str,
    seed: int,
    workers: int,
    image_size: int | None,
    noise: bool,
    config_path: str | None,
) -> None:
    """Simulate a DeepLense-like dataset (needs the `sim` extra: lenstronomy)."""
    from deeplense_ssl.simulate import simulate_dataset

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, dict(ctx.params), exclude=("config_path",))
    cfg = config_from_sources(SimulateConfig, config_path, overrides)
    path = simulate_dataset(cfg)
    n = 3 * cfg.n_per_class
    click.echo(f"Wrote {n} images ({cfg.model}, seed {cfg.seed}) to {path}")
