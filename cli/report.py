"""``deeplense-ssl report``: one self-contained HTML report from evaluated run folders."""

from __future__ import annotations

import click

from deeplense_ssl.config import ReportConfig, config_from_sources

from .options import comma_list, config_option, device_option, explicit_params, seed_option


@click.command("report")
@click.argument("runs", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="report.html",
    show_default=True,
    help="HTML file; a metrics.json with the comparison table is written beside it.",
)
@click.option(
    "--n-attribution-examples",
    type=int,
    default=2,
    show_default=True,
    help="Example images per class for the attribution maps.",
)
@click.option(
    "--attribution-methods",
    default=None,
    help="Comma-separated subset of integrated_gradients,saliency,gradcam ('' for none).",
)
@click.option("--tsne/--no-tsne", default=True, show_default=True, help="t-SNE embedding plot.")
@seed_option
@device_option
@config_option
def command(config_path: str | None, **params) -> None:
    """Report on evaluated finetune runs (RUNS: run folders or their metrics.json files)."""
    from deeplense_ssl.report import build_report

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, params)
    if "runs" in overrides:
        overrides["runs"] = list(overrides["runs"])
    if overrides.get("attribution_methods") is not None:
        overrides["attribution_methods"] = comma_list(overrides["attribution_methods"])
    cfg = config_from_sources(ReportConfig, config_path, overrides)
    path = build_report(cfg)
    click.echo(f"Wrote {path}")
