"""Self-supervised pretraining: ``pretrain(cfg)``, an explicit loop with resume and DDP.

The model is composed here, not hidden in a class: ``backbone`` (features only, see
``backbones.py``) followed by a head (``heads.py``), trained with the method's objective:

===================== =========================================================================
method                objective
===================== =========================================================================
simclr                ``n_views`` augmented views (``augment`` preset) per image, one forward
                      pass, NT-Xent (``losses.NTXentLoss``) on the projection head's outputs
contrastive-rotation  as simclr, but views differ only by a random rotation (DeepLense)
contrastive-blur      as simclr, but views differ only by blur level and Gaussian noise
rotation              RotNet: all four 0/90/180/270 rotations of each image, 4-way linear head,
                      cross entropy (``pretext.rotation_pretext``)
blur                  each image blurred by one of K levels, K-way linear head, cross entropy
===================== =========================================================================

Speed decisions (CPU first, GPU-ready):

* the whole training set is one float32 tensor on the training device (pinned host memory if
  it does not fit on the GPU); batches are index slices, no per-sample ``Dataset``/``DataLoader``;
* augmentation is batched on the device (``transforms.ViewAugmenter``), all views in one call;
* the views go through the network one view at a time inside one call
  (:class:`ChunkedForward`; measured 1.4x faster on CPU than one pass over all views);
* channels-last memory format (measured faster on this CPU too: see ``benchmarks/README.md``),
  bf16 autocast on CUDA (``amp="auto"``), optional ``torch.compile``.

Determinism and resume: the epoch's data order is ``randperm`` from a generator seeded by
``(seed, epoch)``; augmentation draws from the global torch RNG, whose state (and NumPy's,
Python's and CUDA's) is saved in every checkpoint with the model, optimiser, scheduler and
grad-scaler states. ``resume=True`` continues a killed run (SIGKILL included) and ends with
bitwise the weights of an uninterrupted run on CPU.

Distributed (torchrun, see ``distributed.py``): ``batch_size`` is per process, the learning
rate is scaled by the global batch, NT-Xent negatives are gathered from every rank with
gradients, BatchNorm is synchronised on multi-GPU (``sync_batchnorm``), rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .checkpoint import (
    BACKBONE_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    backbone_state_for_file,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    write_run_config,
)
from .config import PretrainConfig, config_to_dict
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    gather_objects,
    setup_distributed,
    shard_batch_indices,
)
from .errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from .runtime import resolve_device, seed_everything

IN_MEMORY_DATA = "<in-memory>"
"""``cfg.data`` recorded for a dataset passed to :func:`pretrain` as an object."""

RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "resume"})
"""Config fields that may differ between a checkpoint and the run resuming it."""

KNN_K = 20
KNN_TEMPERATURE = 0.07
KNN_MAX_BANK = 10_000  # labelled training images embedded for the kNN monitor at most
MAX_DEVICE_DATA_FRACTION = 0.5  # of free GPU memory the training set may occupy


# --------------------------------------------------------------------------------------------
# Objectives: batch -> network inputs -> loss
# --------------------------------------------------------------------------------------------


@dataclass
class Objective:
    """How one method turns a batch into network inputs and the network outputs into a loss.

    Attributes:
        make_inputs: ``(B, C, H, W)`` batch -> ``(inputs, aux)``; runs outside autocast (the
            augmentations stay float32).
        criterion: ``(outputs, aux)`` -> scalar float32 loss.
        forward_chunks: the network sees ``inputs`` in this many equal chunks (one per view
            for the contrastive methods, see :class:`ChunkedForward`).
    """

    make_inputs: Callable[[Tensor], tuple[Tensor, Any]]
    criterion: Callable[[Tensor, Any], Tensor]
    forward_chunks: int = 1


class ChunkedForward(nn.Module):
    """Run ``net`` on ``chunks`` equal slices of the batch and concatenate the outputs.

    The contrastive methods pass each view through the network separately, as lightly's and
    most SimCLR implementations do (BatchNorm statistics are per view). On this CPU one pass
    over all ``n_views * B`` images was measured ~1.4x slower than ``n_views`` passes over
    ``B`` (ResNet-18, CIFAR stem, 32 px; larger activations fall out of cache). Wrapping (not
    looping in the training step) keeps one forward call per step, as DDP requires.

    Args:
        net: the composed network (``backbone`` then head).
        chunks: number of slices (the batch size must be divisible by it).
    """

    def __init__(self, net: nn.Module, chunks: int) -> None:
        super().__init__()
        self.net, self.chunks = net, int(chunks)

    def forward(self, x: Tensor) -> Tensor:
        """``(chunks * B, ...)`` -> ``cat([net(slice) for each slice])``."""
        if self.chunks == 1:
            return self.net(x)
        return torch.cat([self.net(part) for part in x.chunk(self.chunks)])


def contrastive_objective(transform: nn.Module, n_views: int, loss: nn.Module) -> Objective:
    """SimCLR-style objective: ``n_views`` views of each image, NT-Xent between them.

    Args:
        transform: ``(B, C, H, W) -> (B, C, S, S)`` random view (per-sample randomness); a
            :class:`~deeplense_ssl.transforms.ViewAugmenter` draws all views in one call.
        n_views: views per image (>= 2).
        loss: ``loss(z_0, ..., z_{n-1})`` on ``(B, D)`` projections (e.g. ``NTXentLoss``).

    Returns:
        An :class:`Objective` whose inputs are the ``(n_views * B, C, S, S)`` views stacked
        view-major (rows ``v * B .. (v + 1) * B - 1`` are view ``v``).
    """

    def make_inputs(x: Tensor) -> tuple[Tensor, int]:
        if hasattr(transform, "views"):
            views = transform.views(x, n_views)
        else:
            views = [transform(x) for _ in range(n_views)]
        return torch.cat(views), n_views

    def criterion(z: Tensor, n: int) -> Tensor:
        return loss(*z.float().chunk(n))

    return Objective(make_inputs, criterion, forward_chunks=n_views)


def pretext_objective(
    make_batch: Callable[[Tensor], tuple[Tensor, Tensor]], transform: nn.Module | None = None
) -> Objective:
    """Classification pretext objective (rotation / blur): cross entropy on generated labels.

    Args:
        make_batch: ``(B, C, H, W)`` -> ``(inputs (M, C, H, W), targets (M,) int64)``.
        transform: optional augmentation applied before ``make_batch`` (label-preserving).
    """

    def make_inputs(x: Tensor) -> tuple[Tensor, Tensor]:
        if transform is not None:
            x = transform(x)
        return make_batch(x)

    def criterion(logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets)

    return Objective(make_inputs, criterion)


def build_method(
    cfg: PretrainConfig, feature_dim: int, in_chans: int, image_size: int, distributed: bool
) -> tuple[nn.Module, Objective]:
    """The head and objective of ``cfg.method``.

    Args:
        cfg: the pretraining config (method, temperature, projection sizes, augmentation).
        feature_dim: backbone feature width.
        in_chans: image bands.
        image_size: side of the (square) training images in pixels.
        distributed: gather NT-Xent negatives across ranks.

    Returns:
        ``(head, objective)``: a projection head (contrastive methods) or a linear classifier
        (pretexts), and the :class:`Objective`.
    """
    from .heads import LinearHead, ProjectionHead
    from .losses import NTXentLoss
    from .pretext import blur_pretext, rotation_pretext
    from .transforms import build_view_transform

    transform = build_view_transform(
        cfg.method,
        in_chans,
        image_size,
        augment=cfg.augment,
        blur_sigmas_px=cfg.blur_sigmas_px,
        noise_std=cfg.noise_std,
    )
    if cfg.method in ("simclr", "contrastive-rotation", "contrastive-blur"):
        head = ProjectionHead(
            feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers
        )
        loss = NTXentLoss(cfg.temperature, gather_distributed=distributed)
        return head, contrastive_objective(transform, cfg.n_views, loss)
    if cfg.method == "rotation":
        return LinearHead(feature_dim, 4), pretext_objective(rotation_pretext, transform)
    if cfg.method == "blur":
        sigmas = list(cfg.blur_sigmas_px)
        return LinearHead(feature_dim, len(sigmas)), pretext_objective(
            lambda x: blur_pretext(x, sigmas), transform
        )
    raise ConfigError(f"unknown method {cfg.method!r}.")


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman, Ginsburg 2017).

    As in SimCLR (Chen et al. 2020, Sec. B.1): for each parameter ``w`` with gradient ``g``,
    ``d = g + weight_decay * w`` and ``d <- trust_coefficient * |w| / |d| * d``; then momentum
    SGD on ``d``. Parameter groups with ``lars_exclude=True`` (biases, BatchNorm) skip both the
    trust ratio and the weight decay.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty (not applied to excluded groups).
        trust_coefficient: ``eta`` of the paper.
        eps: added to the denominator of the trust ratio.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0),
                        group["trust_coefficient"] * w_norm / (d_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    d = d * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(cfg: PretrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or LARS; no weight decay on biases and normalisation weights.

    Args:
        cfg: gives ``optimizer``, ``weight_decay`` and ``momentum``.
        model: the trained modules (backbone and head).
        lr: the peak learning rate (after batch scaling).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    if cfg.optimizer == "lars":
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "lars_exclude": False},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
        return LARS(groups, lr=lr, momentum=cfg.momentum)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine to 0.

    Args:
        step: optimiser steps already taken (0 for the first step).
        warmup_steps: length of the linear warm-up.
        total_steps: the schedule's length (``epochs * steps_per_epoch``).

    Returns:
        A factor in (0, 1] multiplied with the peak learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def training_step(
    model: nn.Module,
    x: Tensor,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> Tensor:
    """One optimisation step on the batch ``x``; returns the (local) loss, detached.

    Args:
        model: ``backbone`` followed by the head (possibly DDP-wrapped / compiled).
        x: ``(B, C, H, W)`` float32 images on the training device.
        objective: the method's :class:`Objective`.
        optimizer: the optimiser.
        scaler: gradient scaler (fp16 only; disabled or ``None`` otherwise).
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None``.
        grad_clip: clip the global gradient norm to this value.
        channels_last: feed the network channels-last inputs.

    Returns:
        The scalar float32 loss of this process's batch. Under DDP with NT-Xent gathering, the
        mean of the ranks' losses is the loss of the concatenated global batch.
    """
    optimizer.zero_grad(set_to_none=True)
    inputs, aux = objective.make_inputs(x)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(inputs.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else nullcontext()
    )
    with autocast:
        outputs = model(inputs)
    loss = objective.criterion(outputs, aux)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.detach()


def epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    """The data order of one epoch: a permutation of ``n`` depending only on (seed, epoch)."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=gen)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _load_images(cfg: PretrainConfig, dataset: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if dataset is None:
        from .datasets import load_dataset

        dataset = load_dataset(
            cfg.data,
            nan_policy=cfg.nan_policy,
            normalize=cfg.normalize,
            image_size=cfg.image_size,
            allow_pickle=cfg.allow_pickle,
        )
    if isinstance(dataset, Tensor):
        dataset = dataset.detach().cpu().numpy()
    if isinstance(dataset, np.ndarray):
        images = np.asarray(dataset)
        labels = np.zeros(len(images), np.int64)
        class_names = ["unlabelled"]
    else:
        images = dataset.images
        images = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        labels = np.asarray(dataset.labels, dtype=np.int64)
        class_names = list(dataset.class_names)
    where = cfg.data
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {images.shape}.", where)
    if images.shape[-1] != images.shape[-2]:
        raise DataError(
            f"pretraining needs square images, got {images.shape[-2]}x{images.shape[-1]}; "
            "pass --image-size N.",
            where,
        )
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        bad = int(np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(1))[0])
        raise DataError("non-finite pixels reach training; choose a --nan-policy.", where, bad)
    return images, labels, class_names


def _put_on_device(images: np.ndarray, device: torch.device) -> Tensor:
    """The training set as one tensor: on the GPU if it fits comfortably, else on the host
    (each batch is then gathered and pinned by :func:`_fetch`; pinning the whole set would copy
    it a second time in host memory)."""
    data = torch.from_numpy(images)
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.numel() * data.element_size() < MAX_DEVICE_DATA_FRACTION * free:
        return data.to(device)
    return data


def _fetch(data: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    """Rows ``idx`` of the training set, on ``device``.

    Decided by device *type*, not equality: ``torch.device("cuda") != torch.device("cuda:0")``,
    so a set already on the GPU must not be mistaken for a host copy.
    """
    if data.device.type == "cpu" and device.type != "cpu":
        rows = data.index_select(0, idx.cpu())
        if device.type == "cuda":
            return rows.pin_memory().to(device, non_blocking=True)
        return rows.to(device)
    return data.index_select(0, idx.to(data.device))


# --------------------------------------------------------------------------------------------
# Run folder bookkeeping
# --------------------------------------------------------------------------------------------


class _MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0); truncated to the checkpoint's offset on resume."""

    def __init__(self, path: Path, enabled: bool, truncate_to: int | None) -> None:
        self.path, self.enabled = path, enabled
        self._fh = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+b" if path.exists() and truncate_to else "wb"
        self._fh = open(path, mode)  # noqa: SIM115 (closed in close())
        if mode == "r+b":
            self._fh.truncate(truncate_to)
            self._fh.seek(truncate_to)

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write((json.dumps(record) + "\n").encode())
            self._fh.flush()

    def offset(self) -> int:
        return self._fh.tell() if self._fh is not None else 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (an empty list if there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_loss_curve(ax: Any, records: list[dict[str, Any]]) -> None:
    """Draw pretraining ``metrics.jsonl`` records onto matplotlib axes ``ax``.

    Loss per step and the epoch means against the optimiser step, and the kNN monitor (when
    present) on a twin axis. Records without a finite loss are skipped; logs without step
    numbers are drawn against their position. Shared by :func:`plot_loss_curve` and the report.
    """
    rows = [
        r for r in records if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
    ]
    steps = [r for r in rows if r.get("kind", "step") == "step" and "step" in r]
    epochs = [r for r in rows if r.get("kind") == "epoch" and "step" in r]
    if steps or epochs:
        if steps:
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, label="step")
        if epochs:
            ax.plot(
                [r["step"] for r in epochs],
                [r["loss"] for r in epochs],
                "o-",
                ms=3,
                label="epoch mean",
            )
        ax.set_xlabel("optimiser step")
    elif rows:
        ax.plot(range(len(rows)), [r["loss"] for r in rows], lw=1)
        ax.set_xlabel("log entry")
    ax.set_ylabel("training loss")
    knn = [r for r in epochs if isinstance(r.get("knn_top1"), (int, float))]
    if knn:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in knn], [r["knn_top1"] for r in knn], "s--", c="C2", ms=3)
        ax2.set_ylabel("kNN top-1 (val)", color="C2")
    if steps or epochs:
        ax.legend(loc="upper right", fontsize=7)


def plot_loss_curve(run_dir: str | Path) -> Path:
    """Draw ``loss_curve.png`` (loss per step, epoch means, kNN accuracy) from ``metrics.jsonl``."""
    from matplotlib.figure import Figure

    from .io import atomic_output

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    draw_loss_curve(fig.add_subplot(), read_metrics(run_dir))
    fig.tight_layout()
    out = Path(run_dir) / LOSS_CURVE_FILE
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - RESUMABLE_CHANGES)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _check_resume(run_dir: Path, cfg_dict: dict[str, Any], resume: bool) -> dict | None:
    """Apply the run-folder policy; return the checkpoint to resume from (or ``None``)."""
    ckpt = run_dir / CHECKPOINT_FILE
    if not resume:
        for name in (CHECKPOINT_FILE, BACKBONE_FILE):
            if (run_dir / name).exists():
                raise CheckpointError(
                    f"{run_dir} already holds a pretraining run ({name}); pass --resume to "
                    "continue it, or choose another --out."
                )
        return None
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        old = state["config"]
    elif (run_dir / CONFIG_FILE).exists():  # killed before its first checkpoint
        try:
            old = json.loads((run_dir / CONFIG_FILE).read_text())["config"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: unreadable run config.") from exc
        state = None
    else:
        return None  # nothing to resume: a fresh run
    diff = _config_diff(old, cfg_dict)
    if diff:
        raise CheckpointError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's "
            f"({'; '.join(diff)}). Only epochs and max_steps may change; use another --out "
            "for a new run."
        )
    return state


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def pretrain(
    cfg: PretrainConfig,
    progress: bool = True,
    *,
    dataset: Any = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> Path:
    """Self-supervised pretraining of a backbone; writes and returns the run folder ``cfg.out``.

    Args:
        cfg: the configuration (validated here). ``cfg.batch_size`` is per process.
        progress: show a tqdm progress bar (rank 0 only).
        dataset: optional in-memory data instead of reading ``cfg.data``: an ``ImageSet`` (or
            any object with ``images`` (N, C, H, W) float32, ``labels`` and ``class_names``), or
            an array ``(N, C, H, W)``. It is used as given (already cleaned and normalised);
            ``cfg.data`` then only labels the run (``"<in-memory>"`` if empty).
        on_step: called on rank 0 after every optimiser step (and after any checkpoint written
            at that step) as ``on_step(step, record)``; raising in it stops the run like a crash
            (used by the resume tests).

    Returns:
        The run folder, holding ``config.json``, ``checkpoint.pt``, ``backbone.pt``,
        ``metrics.jsonl`` and ``loss_curve.png`` (see ``checkpoint.py``).

    Raises:
        ConfigError: invalid config (or a batch larger than the data).
        DataError: unreadable data, non-square or non-finite images.
        CheckpointError: a run folder with a checkpoint and no ``resume``, or a resume whose
            config differs in anything but ``epochs`` / ``max_steps``.
        TrainingDivergedError: the loss became NaN or inf; the last good checkpoint is kept.
    """
    cfg = dataclasses.replace(cfg)
    if dataset is not None and not cfg.data:
        cfg.data = IN_MEMORY_DATA
    cfg.validate()
    info = setup_distributed(resolve_device(cfg.device))
    try:
        return _pretrain(cfg, info, progress, dataset, on_step)
    finally:
        cleanup_distributed(info)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that has it natively (Ampere and later), fp16 with loss scaling on
    older GPUs (bf16 would be emulated there, slowly), full precision on the CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native_bf16 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _pretrain(
    cfg: PretrainConfig,
    info: DistInfo,
    progress: bool,
    dataset: Any,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> Path:
    from tqdm.auto import tqdm

    device = info.device
    run_dir = Path(cfg.out)
    cfg_dict = config_to_dict(cfg)
    state = _check_resume(run_dir, cfg_dict, cfg.resume)

    # ---- data
    images, labels, class_names = _load_images(cfg, dataset)
    n_all, in_chans, size = images.shape[0], images.shape[1], images.shape[-1]
    train_idx, val_idx = np.arange(n_all), np.arange(0)
    if cfg.knn_monitor:
        from .datasets import stratified_split

        if len(class_names) < 2 or len(np.unique(labels)) < 2:
            raise ConfigError("knn_monitor needs labelled data with at least two classes.")
        split = stratified_split(labels, val_fraction=cfg.knn_val_fraction, seed=cfg.seed)
        train_idx, val_idx = np.asarray(split["train"]), np.asarray(split["val"])
        if len(val_idx) == 0:
            raise ConfigError("knn_val_fraction leaves no validation images for the kNN monitor.")
    n_train = len(train_idx)
    global_batch = cfg.batch_size * info.world_size
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{n_train} training images are fewer than one global batch ({cfg.batch_size} x "
            f"{info.world_size} process(es)); lower --batch-size."
        )
    total_steps = cfg.epochs * steps_per_epoch
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch / 256
    amp_dtype = _amp_dtype(cfg.amp, device)
    resolved = {
        "world_size": info.world_size,
        "global_batch_size": global_batch,
        "lr": lr,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "stop_step": stop_step,
        "warmup_steps": warmup_steps,
        "n_train": n_train,
        "n_val": len(val_idx),
        "input_shape": [in_chans, size, size],
        "class_names": class_names,
        "device": device.type,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
    }
    if state is not None:
        old = state["resolved"]
        for key in ("world_size", "n_train", "input_shape"):
            if old[key] != resolved[key]:
                raise CheckpointError(
                    f"cannot resume {run_dir}: {key} was {old[key]} and is now {resolved[key]} "
                    "(same data and number of processes needed)."
                )

    # ---- model: backbone + head, composed here
    from .backbones import build_backbone

    seed_everything(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_chans=in_chans, stem=cfg.stem)
    head, objective = build_method(cfg, backbone.feature_dim, in_chans, size, info.enabled)
    model = nn.Sequential(backbone, head)
    if info.enabled and device.type == "cuda" and cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(cfg, model, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if info.rank > 0:  # distinct augmentations per rank; rank 0 matches a single process
        torch.manual_seed(cfg.seed + 7919 * info.rank)

    start_step, metrics_bytes = 0, None
    if state is not None:
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * warmup_cosine(scheduler.last_epoch, warmup_steps, total_steps)
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][info.rank])
        start_step, metrics_bytes = int(state["step"]), int(state["metrics_bytes"])

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(
            run_dir, {"config": cfg_dict, "resolved": resolved, "backbone_spec": backbone.spec}
        )
        if start_step < stop_step:
            (run_dir / BACKBONE_FILE).unlink(missing_ok=True)  # not final any more
    metrics = _MetricsLog(run_dir / METRICS_FILE, info.is_main, metrics_bytes)

    net: nn.Module = ChunkedForward(model, objective.forward_chunks)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    data = _put_on_device(images if n_train == n_all else images[train_idx], device)
    val_data, bank_idx = None, None
    if cfg.knn_monitor:
        val_data = torch.from_numpy(images[val_idx])
        bank_idx = np.arange(n_train)
        if n_train > KNN_MAX_BANK:  # a fixed random subset keeps the monitor cheap
            bank_idx = np.sort(np.random.default_rng(cfg.seed).choice(n_train, KNN_MAX_BANK, False))

    def save(step: int, finished: bool) -> None:
        rng = gather_objects(capture_rng_state(), info)
        if info.is_main:
            save_checkpoint(
                run_dir / CHECKPOINT_FILE,
                {
                    "format": CHECKPOINT_FORMAT,
                    "deeplense_ssl_version": __version__,
                    "config": cfg_dict,
                    "resolved": resolved,
                    "backbone_spec": backbone.spec,
                    "step": step,
                    "epoch": step // steps_per_epoch,
                    "finished": finished,
                    "backbone": backbone.state_dict(),
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng,
                    "data_order": {
                        "seed": cfg.seed,
                        "epoch": step // steps_per_epoch,
                        "batch_in_epoch": step % steps_per_epoch,
                        "global_batch_size": global_batch,
                        "n_train": n_train,
                    },
                    "metrics_bytes": metrics.offset(),
                },
            )

    def check_finite(loss_sum: Tensor, first: int, last: int) -> float:
        value = float(all_reduce_mean(loss_sum, info))
        if not math.isfinite(value):
            ckpt = run_dir / CHECKPOINT_FILE
            kept = f"the last good checkpoint ({ckpt}) is kept" if ckpt.exists() else "none saved"
            raise TrainingDivergedError(
                f"the training loss became {value} between steps {first} and {last}; {kept}. "
                "Lower the learning rate (--lr), set --grad-clip, or check the data "
                "normalisation."
            )
        return value

    bar = tqdm(
        total=stop_step,
        initial=start_step,
        unit="step",
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
    )
    step = start_step
    perm_epoch, perm = -1, torch.empty(0, dtype=torch.int64)
    loss_sum = torch.zeros((), device=device)
    epoch_sum = torch.zeros((), device=device)
    window_start, t0 = step, time.perf_counter()
    # epoch_sum restarts at a resume: the epoch mean then covers the steps since resuming
    epoch_first = step
    model.train()
    try:
        while step < stop_step:
            epoch, batch_in_epoch = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, epoch_permutation(cfg.seed, epoch, n_train)
            start = batch_in_epoch * global_batch
            idx = perm[start : start + global_batch]
            idx = shard_batch_indices(idx, info.rank, info.world_size)
            x = _fetch(data, idx, device)
            loss = training_step(
                net,
                x,
                objective,
                optimizer,
                scaler=scaler,
                amp_dtype=amp_dtype,
                grad_clip=cfg.grad_clip,
                channels_last=cfg.channels_last,
            )
            lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()
            loss_sum += loss
            epoch_sum += loss
            step += 1
            bar.update(1)
            epoch_end = step % steps_per_epoch == 0
            ckpt_due = epoch_end or step == stop_step or step % cfg.checkpoint_every_steps == 0
            record: dict[str, Any] = {}
            if ckpt_due or step % cfg.log_every_steps == 0:
                mean_loss = check_finite(loss_sum, window_start + 1, step) / (step - window_start)
                elapsed = time.perf_counter() - t0
                record = {
                    "kind": "step",
                    "step": step,
                    "epoch": epoch,
                    "loss": mean_loss,
                    "lr": lr_used,
                    "images_per_s": global_batch * (step - window_start) / max(elapsed, 1e-9),
                }
                metrics.write(record)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                loss_sum.zero_()
                window_start, t0 = step, time.perf_counter()
            if epoch_end:
                epoch_record = {
                    "kind": "epoch",
                    "step": step,
                    "epoch": epoch,
                    "loss": float(all_reduce_mean(epoch_sum, info)) / (step - epoch_first),
                }
                if val_data is not None and info.is_main:
                    epoch_record["knn_top1"] = knn_monitor(
                        backbone,
                        data[torch.from_numpy(bank_idx).to(data.device)],
                        labels[train_idx][bank_idx],
                        val_data,
                        labels[val_idx],
                        device,
                        batch_size=2 * cfg.batch_size,
                        channels_last=cfg.channels_last,
                    )
                    model.train()
                metrics.write(epoch_record)
                epoch_sum.zero_()
                epoch_first = step
                record = {**record, "epoch_record": epoch_record}
            if ckpt_due:
                save(step, finished=step == stop_step)
            if on_step is not None and info.is_main:
                on_step(step, record)
    finally:
        bar.close()
        metrics.close()

    if info.is_main:
        save_checkpoint(run_dir / BACKBONE_FILE, backbone_state_for_file(backbone))
        resolved_final = {**resolved, "final_step": step, "final_epoch": step / steps_per_epoch}
        write_run_config(
            run_dir,
            {"config": cfg_dict, "resolved": resolved_final, "backbone_spec": backbone.spec},
        )
        plot_loss_curve(run_dir)
    barrier(info)
    return run_dir


@torch.no_grad()
def embed(
    backbone: nn.Module,
    images: Tensor,
    device: torch.device,
    batch_size: int = 256,
    channels_last: bool = False,
) -> Tensor:
    """Backbone features (eval mode): ``(N, C, H, W)`` -> ``(N, feature_dim)`` float32."""
    backbone.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(backbone(x).float())
    return torch.cat(out)


def knn_monitor(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: np.ndarray,
    val_images: Tensor,
    val_labels: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    channels_last: bool = False,
) -> float:
    """Online kNN top-1 accuracy of ``val_images`` against ``train_images`` in feature space.

    Weighted kNN (k=20, temperature 0.07; ``evaluate.knn_predict``) on L2-normalised features
    of the un-augmented images. The backbone is left in eval mode (the caller sets train mode).

    Returns:
        The fraction of validation images whose predicted class is right.
    """
    from .evaluate import knn_predict

    bank = embed(backbone, train_images, device, batch_size, channels_last)
    query = embed(backbone, val_images, device, batch_size, channels_last)
    preds, _ = knn_predict(
        bank,
        torch.as_tensor(train_labels),
        query,
        k=KNN_K,
        temperature=KNN_TEMPERATURE,
        num_classes=int(max(train_labels.max(), val_labels.max())) + 1,
    )
    return float((preds.cpu().numpy() == val_labels).mean())
