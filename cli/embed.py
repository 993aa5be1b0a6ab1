"""``deeplense-ssl embed``: backbone embeddings of any number of images into one HDF5 index."""

from __future__ import annotations

import click

from deeplense_ssl.config import EmbedConfig, config_from_sources

from .options import (
    allow_pickle_option,
    config_option,
    device_option,
    explicit_params,
    field_option,
    image_size_option,
    nan_policy_option,
    normalize_option,
)

C = EmbedConfig


def _as_list(ctx: click.Context, param: click.Parameter, value: tuple) -> list:
    return list(value or ())


@click.command("embed")
@field_option(
    C,
    "checkpoint",
    type=click.Path(file_okay=False),
    help="Pretrain run (backbone.pt) or finetune run (model.pt) folder.",
)
@field_option(
    C,
    "data",
    multiple=True,
    default=(),
    show_default=False,
    callback=_as_list,
    help="Images to embed: any supported file or folder. More may follow it "
    "(--data a.h5 b.h5) or repeat --data.",
)
@click.argument("more_data", nargs=-1, type=click.Path())
@field_option(
    C,
    "out",
    type=click.Path(dir_okay=False),
    help="The index file; written as OUT.partial until complete, then renamed.",
)
@field_option(C, "float16", help="Store float16 embeddings (half the size).")
@field_option(C, "batch_size", help="Images per forward pass.")
@field_option(C, "block_size", help="Images read, embedded and committed at a time.")
@field_option(
    C,
    "resume",
    help="Continue OUT.partial of an interrupted run with the same run, inputs and options.",
)
@normalize_option(C, "Scaling; auto: as the run's training data (recommended).")
@nan_policy_option(C)
@image_size_option(C)
@allow_pickle_option(C)
@device_option(C)
@config_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def command(config_path: str | None, progress: bool, more_data: tuple, **params) -> None:
    """Embed images with a run's backbone into an HDF5 index (streamed, resumable, atomic)."""
    from deeplense_ssl.embedding import embed_files, partial_path

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, params)
    if more_data:
        overrides["data"] = [*overrides.get("data", []), *more_data]
    cfg = config_from_sources(EmbedConfig, config_path, overrides)
    try:
        result = embed_files(cfg, progress=progress)
    except KeyboardInterrupt as exc:
        partial = partial_path(cfg.out)
        if not partial.exists():
            raise
        click.echo(
            f"Interrupted; the rows embedded so far are kept in {partial}: run the same command "
            "again to continue.",
            err=True,
        )
        raise SystemExit(128 + int(getattr(exc, "signum", 2))) from None
    if result.discarded:
        click.echo(f"Started over: an earlier partial file was discarded ({result.discarded}).")
    resumed = f" ({result.resumed_rows} resumed)" if result.resumed_rows else ""
    click.echo(f"Wrote {result.rows} embeddings{resumed} to {result.path}")
