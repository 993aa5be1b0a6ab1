"""``deeplense-ssl finetune``: classifier on a pretrained backbone with a fraction of the labels."""

from __future__ import annotations

import click

from deeplense_ssl.config import FinetuneConfig, config_from_sources

from .options import (
    allow_pickle_option,
    amp_option,
    config_option,
    data_mode_options,
    device_option,
    explicit_params,
    field_option,
    image_size_option,
    nan_policy_option,
    normalize_option,
    seed_option,
    tracking_options,
)

C = FinetuneConfig


@click.command("finetune")
@field_option(
    C,
    "data",
    help="Labelled training data; several HDF5 shards as a comma-separated list or a quoted glob.",
)
@field_option(
    C,
    "checkpoint",
    type=click.Path(exists=True, file_okay=False),
    help="Pretrain run folder (the --out of `deeplense-ssl pretrain`).",
)
@field_option(
    C,
    "head",
    help="linear/mlp: head on frozen features (cached once); full: fine-tune the backbone too; "
    "lp-ft: the linear probe first, then full from its head.",
)
@click.option(
    "--from-scratch",
    "from_scratch",
    is_flag=True,
    default=False,
    help="Baseline: supervised training of a randomly initialised backbone + head.",
)
@click.option(
    "--random-init",
    "random_init",
    is_flag=True,
    default=False,
    help="Baseline: the chosen head on a frozen randomly initialised backbone.",
)
@field_option(
    C,
    "label_fraction",
    help="Fraction of the labels the run sees in total, validation included (stratified, "
    "seeded, >= 1 per class).",
)
@field_option(
    C,
    "val_fraction",
    help="Fraction of each class's labelled images kept for model selection (stratified, "
    "seeded); 0: fixed schedule, last epoch kept.",
)
@field_option(
    C,
    "min_val_per_class",
    help="Fewer validation images than this in a class: no validation split, fixed schedule.",
)
@field_option(
    C,
    "out",
    type=click.Path(file_okay=False),
    help="Run folder. An existing finetune run there is replaced whole once the new run has "
    "succeeded (a failed run leaves it untouched); a folder holding anything else is refused.",
)
@field_option(C, "epochs")
@field_option(
    C,
    "min_steps",
    help="Train at least this many optimiser steps (more epochs at few labels); 0: just --epochs.",
)
@field_option(C, "batch_size")
@field_option(C, "lr", help="Head learning rate (default 1e-3, AdamW).")
@field_option(C, "backbone_lr_scale", help="--head full/lp-ft: backbone learning rate = lr x this.")
@field_option(C, "weight_decay")
@field_option(C, "mlp_hidden_dim", help="--head mlp.")
@field_option(C, "augment", help="Random dihedral augmentation when the backbone is trained.")
@field_option(
    C,
    "feature_dihedral",
    help="Frozen backbone: also cache features of the 8 rotated/reflected training images.",
)
@field_option(C, "backbone", help="Architecture of a baseline without --checkpoint.")
@field_option(C, "stem", help="Stem of a baseline without --checkpoint.")
@data_mode_options(
    C,
    "read the labels of --data, then load only the images of the label budget (training and "
    "validation)",
)
@tracking_options(C)
@normalize_option(C, "Per-image scaling; auto: as in the pretrain run (minmax without one).")
@nan_policy_option(C)
@image_size_option(C)
@allow_pickle_option(C)
@seed_option(C)
@device_option(C)
@amp_option(C)
@config_option
def command(config_path: str | None, from_scratch: bool, random_init: bool, **params) -> None:
    """Fine-tune a classifier (or a baseline) and write a run folder."""
    from deeplense_ssl.finetuning import finetune

    ctx = click.get_current_context()
    if from_scratch and random_init:
        raise click.UsageError("--from-scratch and --random-init are two different baselines.")
    overrides = explicit_params(ctx, params)
    if from_scratch:
        overrides["init"] = "scratch"
    elif random_init:
        overrides["init"] = "random"
    cfg = config_from_sources(FinetuneConfig, config_path, overrides)
    out = finetune(cfg, progress=True)
    click.echo(
        f"Wrote finetune run ({cfg.init}, head {cfg.head}, labels {cfg.label_fraction}) to {out}"
    )
