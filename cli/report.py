"""``deeplense-ssl report``: one self-contained HTML report from evaluated run folders."""

from __future__ import annotations

import click

from deeplense_ssl.config import ReportConfig, config_from_sources

from .options import config_option, device_option, explicit_params, field_option, seed_option

C = ReportConfig


@click.command("report")
@click.argument("runs", nargs=-1, type=click.Path(exists=True))
@field_option(
    C,
    "out",
    type=click.Path(dir_okay=False),
    help="HTML file; a metrics.json with the comparison table is written beside it.",
)
@field_option(
    C, "n_attribution_examples", help="Example images per class for the attribution maps."
)
@field_option(C, "attribution_methods", help="Comma-separated attribution methods ('' for none).")
@field_option(
    C,
    "embedding_map",
    help="2-D map of the test embeddings (auto: t-SNE; UMAP above 5,000 images when the "
    "`umap` extra is installed).",
)
@seed_option(C)
@device_option(C)
@config_option
def command(config_path: str | None, **params) -> None:
    """Report on evaluated finetune runs (RUNS: run folders or their metrics.json files)."""
    from deeplense_ssl.report import build_report

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, params)
    if "runs" in overrides:
        overrides["runs"] = list(overrides["runs"])
    cfg = config_from_sources(ReportConfig, config_path, overrides)
    path = build_report(cfg)
    click.echo(f"Wrote {path}")
