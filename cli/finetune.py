"""``deeplense-ssl finetune``: classifier on a pretrained backbone with a fraction of the labels."""

from __future__ import annotations

import click

from deeplense_ssl.config import FinetuneConfig, config_from_sources

from .options import (
    allow_pickle_option,
    config_option,
    device_option,
    explicit_params,
    image_size_option,
    nan_policy_option,
    normalize_auto_option,
    seed_option,
)


@click.command("finetune")
@click.option("--data", type=click.Path(exists=True), default=None, help="Labelled training data.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Pretrain run folder (the --out of `deeplense-ssl pretrain`).",
)
@click.option(
    "--head",
    type=click.Choice(["linear", "mlp", "full"]),
    default="linear",
    show_default=True,
    help="linear/mlp: head on frozen features (cached once); full: fine-tune the backbone too.",
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
@click.option(
    "--label-fraction",
    type=float,
    default=1.0,
    show_default=True,
    help="Fraction of the training labels used (stratified, seeded, >= 1 per class).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.15,
    show_default=True,
    help="Fraction of the data held out for model selection (stratified, seeded).",
)
@click.option("--out", type=click.Path(file_okay=False), default="runs/finetune", show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=None, help="Head learning rate (default 1e-3, AdamW).")
@click.option(
    "--backbone-lr-scale",
    type=float,
    default=0.1,
    show_default=True,
    help="--head full: backbone learning rate = lr x this.",
)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--mlp-hidden-dim", type=int, default=512, show_default=True, help="--head mlp.")
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Random dihedral augmentation when the backbone is trained.",
)
@click.option(
    "--feature-dihedral/--no-feature-dihedral",
    default=True,
    show_default=True,
    help="Frozen backbone: also cache features of the 8 rotated/reflected training images.",
)
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50"]),
    default="resnet18",
    show_default=True,
    help="Architecture of a baseline without --checkpoint.",
)
@click.option(
    "--stem",
    type=click.Choice(["imagenet", "cifar", "small"]),
    default="imagenet",
    show_default=True,
    help="Stem of a baseline without --checkpoint.",
)
@normalize_auto_option("as in the pretrain run (minmax without one).")
@nan_policy_option
@image_size_option
@allow_pickle_option
@seed_option
@device_option
@config_option
def command(config_path: str | None, from_scratch: bool, random_init: bool, **params) -> None:
    """Fine-tune a classifier (or a baseline) and write a run folder."""
    from deeplense_ssl.finetune import finetune

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
