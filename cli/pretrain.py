"""``deeplense-ssl pretrain``: self-supervised pretraining of a ResNet backbone.

Multi-GPU / multi-node: launch the same command under torchrun, e.g.
``torchrun --nproc-per-node 4 -m deeplense_ssl_cli.main pretrain ...``; ``--batch-size`` is
per process and the learning rate scales with the global batch.
"""

from __future__ import annotations

import os

import click

from deeplense_ssl.config import METHODS, NORMALIZATIONS, PretrainConfig, config_from_sources

from .options import (
    allow_pickle_option,
    comma_list,
    config_option,
    device_option,
    explicit_params,
    image_size_option,
    nan_policy_option,
    seed_option,
)

_D = PretrainConfig()


def _float_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
    if value is None:
        return None
    try:
        return [float(v) for v in comma_list(value)]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}.") from exc


@click.command("pretrain")
@click.option("--data", default=None, help="Training images (HDF5, npy folder, npz, FITS...).")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=_D.method,
    show_default=True,
    help="simclr; contrastive-rotation / contrastive-blur (DeepLense: views differ only by "
    "rotation, or by blur and noise); rotation (predict 0/90/180/270); blur (predict the level).",
)
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50"]),
    default=_D.backbone,
    show_default=True,
)
@click.option(
    "--stem",
    type=click.Choice(["imagenet", "cifar", "small"]),
    default=_D.stem,
    show_default=True,
    help="ResNet stem: imagenet (7x7/2 + maxpool), cifar (3x3/1), small (3x3/2, 64 px images).",
)
@click.option("--epochs", type=int, default=_D.epochs, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimiser steps.")
@click.option(
    "--batch-size", type=int, default=_D.batch_size, show_default=True, help="Per process."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=_D.out,
    show_default=True,
    help="Run folder (config.json, checkpoint.pt, backbone.pt, metrics.jsonl, loss_curve.png).",
)
@click.option(
    "--resume",
    is_flag=True,
    default=False,
    help="Continue the run in --out from its checkpoint (same config; epochs/max-steps may "
    "change).",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw", "lars"]),
    default=_D.optimizer,
    show_default=True,
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Peak learning rate (default: --base-lr x global batch / 256; set ~1e-3 for adamw).",
)
@click.option("--base-lr", type=float, default=_D.base_lr, show_default=True)
@click.option("--weight-decay", type=float, default=_D.weight_decay, show_default=True)
@click.option("--warmup-epochs", type=float, default=_D.warmup_epochs, show_default=True)
@click.option("--grad-clip", type=float, default=None, help="Clip the gradient norm to this.")
@click.option(
    "--temperature", type=float, default=_D.temperature, show_default=True, help="NT-Xent tau."
)
@click.option("--n-views", type=int, default=_D.n_views, show_default=True)
@click.option("--proj-hidden-dim", type=int, default=_D.proj_hidden_dim, show_default=True)
@click.option("--proj-out-dim", type=int, default=_D.proj_out_dim, show_default=True)
@click.option("--proj-layers", type=int, default=_D.proj_layers, show_default=True)
@click.option(
    "--augment",
    type=click.Choice(["lensing", "cifar"]),
    default=_D.augment,
    show_default=True,
    help="simclr augmentation preset.",
)
@click.option(
    "--blur-sigmas-px",
    callback=_float_list,
    default=None,
    help="Comma-separated blur sigmas in pixels (blur methods) [default: 0,1,2,3].",
)
@click.option("--noise-std", type=float, default=_D.noise_std, show_default=True)
@click.option(
    "--amp",
    type=click.Choice(["auto", "bf16", "fp16", "off"]),
    default=_D.amp,
    show_default=True,
    help="Mixed precision; auto: bf16 on GPUs with native bf16, else fp16 (scaled); off on CPU.",
)
@click.option("--channels-last/--no-channels-last", default=_D.channels_last, show_default=True)
@click.option("--compile", "compile", is_flag=True, default=False, help="torch.compile the model.")
@click.option("--checkpoint-every-steps", type=int, default=_D.checkpoint_every_steps)
@click.option("--log-every-steps", type=int, default=_D.log_every_steps, show_default=True)
@click.option(
    "--knn-monitor",
    is_flag=True,
    default=False,
    help="Each epoch, kNN accuracy on a held-out labelled split (not trained on).",
)
@click.option("--knn-val-fraction", type=float, default=_D.knn_val_fraction, show_default=True)
@click.option(
    "--normalize",
    type=click.Choice(NORMALIZATIONS),
    default=_D.normalize,
    show_default=True,
    help="Per-image (or dataset) scaling applied after loading.",
)
@nan_policy_option
@image_size_option
@allow_pickle_option
@seed_option
@device_option
@config_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def command(config_path: str | None, progress: bool, **params) -> None:
    """Pretrain a backbone with a self-supervised method and write a run folder."""
    from deeplense_ssl.train import pretrain

    ctx = click.get_current_context()
    cfg = config_from_sources(PretrainConfig, config_path, explicit_params(ctx, params))
    out = pretrain(cfg, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        click.echo(f"Wrote pretrain run ({cfg.method}, {cfg.backbone}/{cfg.stem}) to {out}")
