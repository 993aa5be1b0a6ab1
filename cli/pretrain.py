"""``deeplense-ssl pretrain``: self-supervised pretraining of a ResNet backbone.

Multi-GPU / multi-node: launch the same command under torchrun, e.g.
``torchrun --nproc-per-node 4 -m deeplense_ssl_cli.main pretrain ...``; ``--batch-size`` is
per process and the learning rate scales with the global batch.
"""

from __future__ import annotations

import os

import click

from deeplense_ssl.config import PretrainConfig, config_from_sources, field_spec
from deeplense_ssl.methods import METHOD_NAMES, get_method

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

C = PretrainConfig


def _method_defaults(what: str) -> str:
    """``name value`` of every method's default optimiser / base learning rate (the registry)."""
    attr = f"default_{what}"
    return ", ".join(f"{n} {getattr(get_method(n), attr)}" for n in METHOD_NAMES)


def _method_help() -> str:
    """One line per registered method, from the method's own ``summary``."""
    names = field_spec(C, "method").choices or ()
    return "; ".join(f"{name}: {get_method(name).summary}" for name in names) + "."


@click.command("pretrain")
@field_option(
    C,
    "data",
    help="Training images (HDF5, npy folder, npz, FITS...); several HDF5 shards as a "
    "comma-separated list or a quoted glob.",
)
@field_option(
    C,
    "paired_data",
    help="A second rendering of the same scenes, row-aligned with --data: each image's two "
    "views come one from each file (simulation-informed positives).",
)
@field_option(C, "method", help=_method_help())
@field_option(C, "backbone")
@field_option(
    C,
    "stem",
    help="ResNet stem: imagenet (7x7/2 + maxpool), cifar (3x3/1), small (3x3/2, 64 px images).",
)
@field_option(C, "epochs")
@field_option(C, "max_steps", help="Stop after this many optimiser steps.")
@field_option(C, "batch_size", help="Per process.")
@field_option(
    C,
    "out",
    type=click.Path(file_okay=False),
    help="Run folder (config.json, checkpoint.pt, backbone.pt, metrics.jsonl, loss_curve.png).",
)
@field_option(
    C,
    "resume",
    help="Continue the run in --out from its checkpoint (same config; epochs/max-steps may "
    "change).",
)
@field_option(C, "optimizer", help=f"Default: the method's ({_method_defaults('optimizer')}).")
@field_option(
    C,
    "lr",
    help="Peak learning rate (default: --base-lr x global batch / 256; set ~1e-3 for adamw).",
)
@field_option(C, "base_lr", help=f"Default: the method's ({_method_defaults('base_lr')}).")
@field_option(C, "weight_decay")
@field_option(C, "momentum", help="SGD / LARS momentum.")
@field_option(C, "warmup_epochs")
@field_option(C, "grad_clip", help="Clip the gradient norm to this.")
@field_option(C, "temperature", help="NT-Xent tau.")
@field_option(C, "n_views")
@field_option(C, "proj_hidden_dim")
@field_option(C, "proj_out_dim")
@field_option(C, "proj_layers")
@field_option(
    C,
    "augment",
    help="View preset of the two-view methods (simclr, byol, simsiam, vicreg, barlow-twins, "
    "dino): lensing (dihedral, rotation, mild crops, flux, blur, noise), lensing-exact "
    "(dihedral, flux, blur, noise: no resampling), psf-noise (blur 0-3 px + noise 0.1 only).",
)
@field_option(C, "blur_sigmas_px", help="Comma-separated blur sigmas in pixels (blur methods).")
@field_option(C, "noise_std", help="contrastive-blur: Gaussian noise std (pixel-value units).")
@field_option(
    C,
    "ema_momentum",
    help="Momentum target networks (byol, dino): EMA momentum at step 0 (default: the "
    "method's own).",
)
@field_option(C, "n_local_views", help="dino: native-scale local views besides the 2 global.")
@field_option(C, "local_view_size", help="dino: side of the local views (default: half).")
@field_option(C, "dino_out_dim", help="dino: number of prototypes K.")
@field_option(C, "teacher_temperature", help="dino: teacher softmax temperature.")
@amp_option(C)
@field_option(C, "channels_last")
@field_option(C, "compile", help="torch.compile the model.")
@field_option(C, "checkpoint_every_steps")
@field_option(C, "log_every_steps", help="metrics.jsonl line and NaN/inf check every N steps.")
@field_option(
    C,
    "knn_monitor",
    help="Each epoch, kNN accuracy on a held-out labelled split (not trained on).",
)
@field_option(C, "knn_val_fraction")
@field_option(
    C,
    "collapse_monitor_size",
    help="Images whose embeddings' effective rank and std are logged every epoch (0: off).",
)
@field_option(C, "sync_batchnorm", help="Multi-GPU: BatchNorm statistics over the global batch.")
@field_option(
    C,
    "prefetch",
    help="Batches prepared ahead in a background thread while a step runs (0: off; the same "
    "batches either way). Default: 2 on a GPU, 0 on the CPU (where the thread competes with "
    "the step for the cores).",
)
@data_mode_options(C, "read --data in chunks, never whole", several_stream=False)
@tracking_options(C)
@normalize_option(C, "Per-image (or dataset) scaling applied after loading.")
@nan_policy_option(C)
@image_size_option(C)
@allow_pickle_option(C)
@seed_option(C)
@device_option(C)
@config_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def command(config_path: str | None, progress: bool, **params) -> None:
    """Pretrain a backbone with a self-supervised method and write a run folder."""
    from deeplense_ssl.training import pretrain

    ctx = click.get_current_context()
    cfg = config_from_sources(PretrainConfig, config_path, explicit_params(ctx, params))
    out = pretrain(cfg, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        click.echo(f"Wrote pretrain run ({cfg.method}, {cfg.backbone}/{cfg.stem}) to {out}")
