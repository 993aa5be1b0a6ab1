"""``deeplense-ssl export RUN --format F --out FILE``: a run's network for other libraries."""

from __future__ import annotations

from typing import Any

import click

from deeplense_ssl.config import ExportConfig, config_from_sources

from .options import config_option, explicit_params, field_option

C = ExportConfig


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@field_option(
    C,
    "format",
    help="safetensors (no pickle) and torchvision (.pth state dict) load into a torchvision "
    "ResNet, timm into timm.create_model, onnx into ONNX Runtime (extra `export`).",
)
@field_option(
    C,
    "out",
    type=click.Path(dir_okay=False),
    help="The exported file (e.g. backbone.safetensors); its model card goes beside it as .md. "
    "Both are replaced together, or not at all.",
)
@config_option
def command(**kwargs: Any) -> None:
    """Export the network of a finished run (RUN: the --out folder of pretrain or finetune).

    A pretrain run gives its backbone (images -> embeddings), a finetune run its backbone and
    head (images -> logits). The file loads without deeplense_ssl installed; its model card
    (data, recipe, budget, metrics, loading code) is written beside it.
    """
    from deeplense_ssl.export import export_run

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, kwargs, exclude=("config_path",))
    overrides["run"] = kwargs["run"]
    cfg = config_from_sources(ExportConfig, kwargs["config_path"], overrides)
    result = export_run(cfg)
    what = result.metadata["outputs"]
    click.echo(
        f"wrote {result.file} ({result.format}, {result.metadata['architecture']} -> {what}) "
        f"and its model card {result.card}"
    )
