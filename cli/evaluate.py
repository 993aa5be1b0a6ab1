"""``deeplense-ssl evaluate``: ROC-AUC with intervals, kNN and accuracy of a finetune run."""

from __future__ import annotations

import click

from deeplense_ssl.config import EvaluateConfig, config_from_sources

from .options import (
    allow_pickle_option,
    config_option,
    data_mode_options,
    device_option,
    explicit_params,
    field_option,
    image_size_option,
    nan_policy_option,
    normalize_option,
    seed_option,
)

C = EvaluateConfig


@click.command("evaluate")
@field_option(
    C,
    "checkpoint",
    type=click.Path(exists=True, file_okay=False),
    help="Finetune run folder (the --out of `deeplense-ssl finetune`).",
)
@field_option(
    C,
    "data",
    help="Labelled test data; several HDF5 shards as a comma-separated list or a quoted glob.",
)
@field_option(
    C,
    "out",
    type=click.Path(dir_okay=False),
    help="metrics.json path (default: inside the finetune run); scores.npz and examples.npz go "
    "beside it. The three files are replaced together, or not at all.",
)
@field_option(C, "n_bootstrap", help="Bootstrap resamples for the confidence intervals (0: none).")
@field_option(C, "ci_level")
@field_option(C, "knn_k", help="kNN neighbours.")
@field_option(C, "knn_temperature")
@field_option(C, "batch_size")
@field_option(
    C,
    "ood_classes",
    help="Comma-separated test classes the model never saw, scored as out-of-distribution.",
)
@field_option(
    C,
    "localisation_images",
    help="Test images per substructure class whose attribution is checked against the true "
    "subhalo / vortex positions (files simulated by deeplense-ssl only; 0: off).",
)
@field_option(C, "localisation_method", help="Attribution method of the localisation score.")
@field_option(
    C,
    "localisation_radius_fwhm",
    help="Distance from the substructure that counts as on it, in PSF FWHM.",
)
@data_mode_options(
    C,
    "score --data block by block, never loading it (resumable: a killed run continues from "
    "<out>.partial)",
)
@normalize_option(C, "Per-image scaling; auto: as the model was trained (recommended).")
@nan_policy_option(C)
@image_size_option(C)
@allow_pickle_option(C)
@seed_option(C)
@device_option(C)
@config_option
def command(config_path: str | None, **params) -> None:
    """Evaluate a finetune run on a test set; write metrics.json and scores.npz."""
    from deeplense_ssl.evaluation import evaluate

    ctx = click.get_current_context()
    cfg = config_from_sources(EvaluateConfig, config_path, explicit_params(ctx, params))
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
