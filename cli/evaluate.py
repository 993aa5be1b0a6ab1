"""``deeplense-ssl evaluate``: ROC-AUC with intervals, kNN and accuracy of a finetune run."""

from __future__ import annotations

import click

from deeplense_ssl.config import EvaluateConfig, config_from_sources

from .options import (
    allow_pickle_option,
    comma_list,
    config_option,
    device_option,
    explicit_params,
    image_size_option,
    nan_policy_option,
    normalize_auto_option,
    seed_option,
)


@click.command("evaluate")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Finetune run folder (the --out of `deeplense-ssl finetune`).",
)
@click.option("--data", type=click.Path(exists=True), default=None, help="Labelled test data.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="metrics.json path (default: inside the finetune run); scores.npz goes beside it.",
)
@click.option(
    "--n-bootstrap",
    type=int,
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the confidence intervals (0: none).",
)
@click.option("--ci-level", type=float, default=0.95, show_default=True)
@click.option("--knn-k", type=int, default=20, show_default=True, help="kNN neighbours.")
@click.option("--knn-temperature", type=float, default=0.07, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--ood-classes",
    default=None,
    help="Comma-separated test classes the model never saw, scored as out-of-distribution.",
)
@normalize_auto_option("as the model was trained (recommended).")
@nan_policy_option
@image_size_option
@allow_pickle_option
@seed_option
@device_option
@config_option
def command(config_path: str | None, **params) -> None:
    """Evaluate a finetune run on a test set; write metrics.json and scores.npz."""
    from deeplense_ssl.evaluate import evaluate

    ctx = click.get_current_context()
    overrides = explicit_params(ctx, params)
    if overrides.get("ood_classes") is not None:
        overrides["ood_classes"] = comma_list(overrides["ood_classes"])
    cfg = config_from_sources(EvaluateConfig, config_path, overrides)
    m = evaluate(cfg)
    auc = m["roc_auc"]
    ci = m["ci"].get("auc_macro", {})
    interval = ""
    if ci.get("lower") is not None:
        interval = f" [{ci['lower']:.3f}, {ci['upper']:.3f}]"
    what = "AUC" if auc["binary"] else "macro AUC"
    value = "undefined (one class only)" if auc["macro"] is None else f"{auc['macro']:.4f}"
    click.echo(
        f"{what} {value}{interval} on {m['n_images']} images; "
        f"accuracy {m['accuracy']:.4f}. Wrote {m['metrics_file']}"
    )
