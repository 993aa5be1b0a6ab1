"""``deeplense-ssl convert SRC --out data.h5``: any supported input -> one clean HDF5 file."""

from __future__ import annotations

from typing import Any

import click

from deeplense_ssl.config import ConvertConfig, config_from_sources

from .options import (
    allow_pickle_option,
    config_option,
    explicit_params,
    field_option,
    image_size_option,
    nan_policy_option,
    normalize_option,
    reader_kwargs,
    reader_options,
)


@click.command("convert")
@click.argument("src", type=click.Path())
@field_option(ConvertConfig, "out", type=click.Path(), help="Output HDF5 file.")
@allow_pickle_option(ConvertConfig)
@nan_policy_option(ConvertConfig)
@image_size_option(ConvertConfig)
@normalize_option(
    ConvertConfig, "Per-image scaling stored in the file (default keeps physical values)."
)
@reader_options(ConvertConfig)
@config_option
def command(**kwargs: Any) -> None:
    """Convert SRC (DeepLense class folders, flat folder, .npy/.npz, HDF5, FITS) to HDF5.

    Images become float32 (N, C, H, W) after the NaN policy; the file also stores int labels,
    class names, per-image NaN counts, source file names and provenance. It is written under a
    temporary name and renamed at the end, so a failure leaves no partial output.
    """
    from deeplense_ssl.datasets import convert_dataset

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, kwargs, exclude=("config_path",))
    overrides["src"] = kwargs["src"]
    cfg = config_from_sources(ConvertConfig, kwargs["config_path"], overrides)
    out, report = convert_dataset(
        cfg.src,
        cfg.out,
        nan_policy=cfg.nan_policy,
        normalize=cfg.normalize,
        image_size=cfg.image_size,
        allow_pickle=cfg.allow_pickle,
        progress=None,
        **reader_kwargs(vars(cfg)),
    )
    click.echo(
        f"wrote {out} (nan_policy={cfg.nan_policy}: {report.pixels_touched} non-finite pixels "
        f"in {report.images_touched} images, {report.images_dropped} dropped)"
    )
