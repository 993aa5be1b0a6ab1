"""``deeplense-ssl convert SRC --out data.h5``: any supported input -> one clean HDF5 file."""

from __future__ import annotations

import click

from .options import (
    allow_pickle_option,
    config_option,
    explicit_params,
    image_size_option,
    nan_policy_option,
)


@click.command("convert")
@click.argument("src", type=click.Path())
@click.option(
    "--out", default="data.h5", show_default=True, type=click.Path(), help="Output HDF5 file."
)
@allow_pickle_option
@nan_policy_option
@image_size_option
@click.option(
    "--normalize",
    type=click.Choice(["none", "minmax", "zscore", "asinh"]),
    default="none",
    show_default=True,
    help="Per-image scaling stored in the file (default keeps physical values).",
)
@click.option(
    "--labels-csv",
    type=click.Path(),
    default=None,
    help="CSV with columns file,label for a flat folder of images.",
)
@click.option(
    "--label-pattern",
    default=None,
    help="File-name rules for a flat folder, e.g. 'non_lens=^nl_;lens=_hst' or a regex with a "
    "capture group such as '^(cdm|axion|no_sub)_'.",
)
@click.option(
    "--labels-file",
    type=click.Path(),
    default=None,
    help="Labels of a single stacked .npy/FITS input: a .npy or text file, one int per image.",
)
@click.option("--images-key", default=None, help="Image dataset name in HDF5/.npz if ambiguous.")
@click.option("--labels-key", default=None, help="Label dataset name in HDF5/.npz if ambiguous.")
@config_option
def command(**kwargs: object) -> None:
    """Convert SRC (DeepLense class folders, flat folder, .npy/.npz, HDF5, FITS) to HDF5.

    Images become float32 (N, C, H, W) after the NaN policy; the file also stores int labels,
    class names, per-image NaN counts, source file names and provenance. It is written under a
    temporary name and renamed at the end, so a failure leaves no partial output.
    """
    from deeplense_ssl.config import ConvertConfig, config_from_sources
    from deeplense_ssl.datasets import convert_dataset

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, kwargs, exclude=("config_path",))
    overrides["src"] = kwargs["src"]
    cfg = config_from_sources(ConvertConfig, kwargs["config_path"], overrides)
    reader = {
        "labels_csv": cfg.labels_csv,
        "label_pattern": cfg.label_pattern,
        "labels": cfg.labels_file,
        "images_key": cfg.images_key,
        "labels_key": cfg.labels_key,
    }
    out, report = convert_dataset(
        cfg.src,
        cfg.out,
        nan_policy=cfg.nan_policy,
        normalize=cfg.normalize,
        image_size=cfg.image_size,
        allow_pickle=cfg.allow_pickle,
        progress=None,
        **{k: v for k, v in reader.items() if v is not None},
    )
    click.echo(
        f"wrote {out} (nan_policy={cfg.nan_policy}: {report.pixels_touched} non-finite pixels "
        f"in {report.images_touched} images, {report.images_dropped} dropped)"
    )
