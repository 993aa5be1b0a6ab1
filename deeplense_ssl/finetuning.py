"""Few-label classification on top of a (pretrained) backbone, and the supervised baselines.

Modes (``FinetuneConfig.head`` x ``FinetuneConfig.init``):

=================  ===========  ================================================================
init               head         what is trained
=================  ===========  ================================================================
``pretrained``     ``linear``   linear probe on frozen pretrained features (cached once)
``pretrained``     ``mlp``      MLP head on frozen pretrained features (cached once)
``pretrained``     ``full``     backbone + linear head end to end, backbone lr x
                                ``backbone_lr_scale``
``pretrained``     ``lp-ft``    the linear probe first, then ``full`` from its head (LP-FT,
                                Kumar et al. 2022: the backbone's first steps follow a trained
                                head, not a random one); its steps add up
``random``         linear/mlp   the same probe on a frozen *randomly initialised* backbone
                                (baseline ``--random-init``)
``scratch``        any          supervised training of a random backbone + head
                                (baseline ``--from-scratch``)
=================  ===========  ================================================================

A frozen backbone is run once over the labelled training images (and, with
``feature_dihedral``, over their 8 rotations/reflections, since lensing images have no preferred
orientation) and once over the validation images; the head then trains on the cached features
in seconds. Features are standardised with the training mean and standard deviation while the
head trains, and the standardisation is folded into the head's first linear layer afterwards,
so the saved model is plain ``backbone -> head``.

Label budget (:func:`label_budget_split`): at ``label_fraction`` f the run sees f of the labels of
the data *in total*. The labelled images are drawn first (``label_fraction_subset``: stratified,
seeded, nested across fractions, >= 1 per class); the validation split is then carved out of
them (``val_fraction`` of each class, stratified, seeded). Model selection keeps the epoch with
the best validation macro ROC-AUC, but only when every class has at least
``min_val_per_class`` validation images; with fewer (or ``val_fraction`` 0) every labelled image
trains and the run keeps its last epoch: a fixed schedule, recorded as
``model_selection = "fixed-schedule"`` in ``config.json`` beside ``n_labels_train`` and
``n_labels_val``. The test set is never seen here.

Training budget: every run takes at least ``min_steps`` optimiser steps (the number of epochs is
raised until it does), so that a run with very few labels is not undertrained by construction;
the cosine schedule spans all the steps actually taken.

Precision (``amp``, the modes of :func:`deeplense_ssl.runtime.resolve_amp_dtype`): float32 by
default; otherwise the backbone's forward passes (training, cached features, validation) run
under autocast, while the weights, the loss and the head's training on cached features stay
float32. ``config.json`` records the precision used (``resolved["amp"]``).

:func:`finetune` runs the steps in order: resolve the backbone, load and check the data, split
it, train (probe or end to end), embed the labelled images for kNN, describe and write the run
folder (layout in :mod:`deeplense_ssl.runs`: ``config.json``, ``model.pt``, ``metrics.jsonl``,
``history.png``, ``val_metrics.json``, ``label_subset.npy``, ``train_embeddings.npz``).
The inference side (the composed model, loading it back) is :mod:`deeplense_ssl.inference`.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .backbones import build_backbone
from .checkpoint import load_pretrained_backbone, save_checkpoint
from .config import FinetuneConfig, config_to_dict
from .datasets import label_fraction_subset, load_dataset, stratified_split
from .errors import CheckpointError, ConfigError, DataError
from .heads import BACKBONE_TRAINING_HEADS, build_classifier_head
from .inference import ClassifierModel, embed, predict_logits
from .io import atomic_output
from .metrics import roc_auc_report
from .plots import plot_finetune_history
from .runs import (
    CONFIG_FILE,
    FINETUNE_KIND,
    HISTORY_PLOT_FILE,
    LABEL_SUBSET_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_FORMAT,
    TRAIN_EMBEDDINGS_FILE,
    VAL_METRICS_FILE,
    check_replaceable,
    staged_run_folder,
    to_jsonable,
    write_json,
    write_jsonl,
)
from .runtime import amp_name, autocast, resolve_amp_dtype, resolve_device, seed_everything
from .streaming import (
    CleanOptions,
    RowImages,
    StreamedPool,
    open_stream,
)
from .tracking import final_metrics, open_tracker, require_tracker
from .training.data import Prefetcher, fetch
from .training.step import backward_step
from .transforms import random_dihedral

MAX_TRAIN_EMBEDDINGS = 20000
DEFAULT_LR = {"probe": 1e-3, "end_to_end": 1e-3}


@dataclass
class FinetuneData:
    """The images of a fine-tuning run after loading, checking and splitting.

    Attributes:
        images: (N, C, H, W) float32, normalised as the model will see them; when streamed,
            a :class:`~deeplense_ssl.streaming.RowImages` holding only the labelled and
            validation rows (indexed by row like the whole set).
        labels: (N,) int64 class indices into ``class_names``.
        class_names: names in label order.
        train_pool: indices of every image outside the validation split (the
            ``zscore-dataset`` statistics are fit on them; no labels are used for that).
        val_idx: indices of the labelled validation images (empty with a fixed schedule).
        labelled: indices of the labelled training images.
        model_selection: ``"val"`` (best validation epoch) or ``"fixed-schedule"`` (last epoch).
        selection_reason: why (:attr:`LabelBudget.reason`).
        normalize: the normalisation applied.
        image_size: the crop/resize size, or None (native size).
        norm_stats: ``zscore-dataset`` statistics (fit on ``train_pool``) or the dataset's
            stored statistics, else None.
        nan_report: the NaN policy report of the loaded data (streamed: of the rows loaded).
    """

    images: np.ndarray | RowImages
    labels: np.ndarray
    class_names: list[str]
    train_pool: np.ndarray
    val_idx: np.ndarray
    labelled: np.ndarray
    model_selection: str
    selection_reason: str
    normalize: str
    image_size: int | None
    norm_stats: dict | None
    nan_report: Any


# --------------------------------------------------------------------------------------------
# Label budget
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelBudget:
    """Which labels a run sees, split into training and model-selection images.

    Attributes:
        train: sorted int64 indices of the labelled training images.
        val: sorted int64 indices of the labelled validation images (empty with a fixed
            schedule). ``train`` and ``val`` are disjoint; together they are the labelled set.
        model_selection: ``"val"`` or ``"fixed-schedule"``.
        reason: one sentence saying why this model selection was chosen.
    """

    train: np.ndarray
    val: np.ndarray
    model_selection: str
    reason: str


def label_budget_split(
    labels: np.ndarray,
    label_fraction: float,
    val_fraction: float,
    min_val_per_class: int,
    seed: int = 0,
) -> LabelBudget:
    """Draw ``label_fraction`` of the labels, then carve the validation split out of them.

    The labelled set is ``label_fraction_subset(all images, labels, label_fraction, seed)``
    (stratified, >= 1 image per class, nested across fractions for one seed). It is split per
    class by :func:`~deeplense_ssl.datasets.stratified_split` (``round(n_c * val_fraction)``
    validation images of a class with ``n_c`` labelled ones, at least one left to train). The
    split is used only when *every* class gets at least ``min_val_per_class`` validation images;
    otherwise (and whenever ``val_fraction`` is 0) all labelled images train and the run uses a
    fixed schedule. Either way ``len(train) + len(val)`` is the whole label budget.

    Args:
        labels: (N,) int64 labels of the whole labelled pool.
        label_fraction: in (0, 1], the fraction of the pool's labels the run may see.
        val_fraction: in [0, 1), the fraction of each class's labelled images for validation.
        min_val_per_class: >= 1, the fewest validation images per class for model selection.
        seed: the seed of both draws.

    Returns:
        The :class:`LabelBudget`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    labelled = np.asarray(
        label_fraction_subset(np.arange(len(labels)), labels, label_fraction, seed=seed),
        dtype=np.int64,
    )
    none = np.empty(0, np.int64)
    if val_fraction <= 0:
        return LabelBudget(labelled, none, "fixed-schedule", "val_fraction is 0")
    parts = stratified_split(labels[labelled], val_fraction, 0.0, seed=seed)
    val = np.sort(labelled[parts["val"]])
    classes = np.unique(labels[labelled])
    fewest = int(min((labels[val] == c).sum() for c in classes))
    if fewest < min_val_per_class:
        reason = (
            f"a {val_fraction:g} validation split of {len(labelled)} labels would leave "
            f"{fewest} validation image(s) in some class (< min_val_per_class="
            f"{min_val_per_class})"
        )
        return LabelBudget(labelled, none, "fixed-schedule", reason)
    reason = f">= {min_val_per_class} validation images in every class"
    return LabelBudget(np.sort(labelled[parts["train"]]), val, "val", reason)


# --------------------------------------------------------------------------------------------
# Training loops
# --------------------------------------------------------------------------------------------


def _val_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    loss = nn.functional.cross_entropy(logits, labels).item()
    probs = torch.softmax(logits, dim=1).numpy()
    auc = roc_auc_report(labels.numpy(), probs, class_names)["macro"]
    acc = float((logits.argmax(1) == labels).float().mean())
    return {"val_loss": loss, "val_acc": acc, "val_auc_macro": auc}


def _is_better(new: dict, best: dict | None) -> bool:
    if best is None:
        return True
    a, b = new["val_auc_macro"], best["val_auc_macro"]
    if a is not None and b is not None and a != b:
        return a > b
    return new["val_loss"] < best["val_loss"]


def _fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``head(x)`` equal what ``head((x - mean) / std)`` was, by rescaling its first
    linear layer in place: ``W' = W / std``, ``b' = b - W' @ mean``."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / std
        first.bias.sub_(w @ mean)
        first.weight.copy_(w)


def steps_per_epoch(n_train: int, batch_size: int, *, skip_single: bool = False) -> int:
    """Optimiser steps in one shuffled pass over ``n_train`` items in batches of ``batch_size``.

    Args:
        n_train: number of training items (images, or cached feature rows).
        batch_size: items per step.
        skip_single: a trailing batch of one image is skipped (BatchNorm needs two images per
            batch in training mode), as the end-to-end loop does when ``n_train >= 2``.
    """
    full, rest = divmod(n_train, batch_size)
    steps = full + (rest > 0)
    if skip_single and n_train >= 2:
        steps = full * (batch_size >= 2) + (rest >= 2)
    return steps


def budget_epochs(epochs: int, n_steps_per_epoch: int, min_steps: int) -> int:
    """The epochs a run trains: ``epochs``, raised until it takes at least ``min_steps`` steps.

    Raises:
        ConfigError: an epoch takes no step at all (e.g. ``batch_size`` 1 end to end).
    """
    if n_steps_per_epoch < 1:
        raise ConfigError(
            "an epoch takes no optimiser step: training a backbone with BatchNorm needs "
            "--batch-size >= 2."
        )
    return max(epochs, math.ceil(min_steps / n_steps_per_epoch))


def _cosine_adamw(
    param_groups: Any, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a cosine schedule over ``total_steps``, every optimiser step of the run."""
    opt = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return opt, sched


def _probe_epoch(
    head: nn.Module,
    xt: torch.Tensor,
    yt: torch.Tensor,
    perm: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: Any,
    batch_size: int,
) -> tuple[float, int]:
    """One pass of the head over the shuffled features; returns (summed loss, correct)."""
    head.train()
    total, correct = 0.0, 0
    for start in range(0, len(xt), batch_size):
        idx = perm[start : start + batch_size]
        logits = head(xt[idx])
        loss = nn.functional.cross_entropy(logits, yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == yt[idx]).sum())
    return total, correct


def _keep(
    row: dict, best: dict | None, best_state: dict | None, module: nn.Module, fixed: bool
) -> tuple[dict, dict | None]:
    """The kept epoch after ``row``: the latest one with a fixed schedule (its weights are the
    module's own, so no copy: ``None``), else the better of ``row`` and ``best`` (by
    :func:`_is_better`) with a copy of its weights."""
    if fixed:
        return row, None
    if _is_better(row, best):
        return row, copy.deepcopy(module.state_dict())
    assert best is not None
    return best, best_state


def train_probe(
    head: nn.Module,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    class_names: list[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    min_steps: int = 0,
) -> tuple[list[dict], dict]:
    """Train a classifier head on cached features; keep the epoch with the best validation AUC.

    Args:
        head: ``(B, D) -> (B, C)``; trained in place, left with the kept epoch's weights with
            the feature standardisation folded in.
        train_feats: (N, D) features (augmented copies already stacked in).
        train_labels: (N,) int64.
        val_feats: (M, D); val_labels: (M,). Both ``None``: a fixed schedule, the last epoch
            is kept.
        class_names: C names, for the validation AUC.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over all steps.
        generator: seeded CPU generator for the shuffling.
        min_steps: train at least this many optimiser steps (:func:`budget_epochs`).

    Returns:
        ``(history, best)``: one dict per epoch (``step`` is the optimiser steps taken so far)
        and the kept epoch's dict.
    """
    fixed = val_feats is None or val_labels is None
    # Standardisation statistics and validation labels live on the host (the head is folded
    # and scored there); features computed on a GPU by the caller are accepted too.
    train_feats, train_labels = train_feats.float().cpu(), train_labels.cpu()
    mean = train_feats.mean(0)
    std = train_feats.std(0).clamp_min(1e-6) if len(train_feats) > 1 else torch.ones_like(mean)
    xt = ((train_feats - mean) / std).to(device)
    yt = train_labels.to(device)
    xv: torch.Tensor | None = None
    yv: torch.Tensor | None = None
    if val_feats is not None and val_labels is not None:  # i.e. not fixed
        xv = ((val_feats.float().cpu() - mean) / std).to(device)
        yv = val_labels.cpu()
    per_epoch = steps_per_epoch(len(xt), batch_size)
    epochs = budget_epochs(epochs, per_epoch, min_steps)
    head.to(device)
    opt, sched = _cosine_adamw(
        [{"params": head.parameters(), "lr": lr}], weight_decay, epochs * per_epoch
    )
    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    for epoch in tqdm(range(1, epochs + 1), desc="probe", disable=not progress):
        perm = torch.randperm(len(xt), generator=generator).to(device)
        total, correct = _probe_epoch(head, xt, yt, perm, opt, sched, batch_size)
        row = {
            "epoch": epoch,
            "step": epoch * per_epoch,
            "train_loss": total / len(xt),
            "train_acc": correct / len(xt),
            "lr": opt.param_groups[0]["lr"],
        }
        if xv is not None and yv is not None:  # i.e. not fixed
            head.eval()
            with torch.no_grad():
                val_logits = head(xv).float().cpu()
            row.update(_val_metrics(val_logits, yv, class_names))
        history.append(row)
        best, best_state = _keep(row, best, best_state, head, fixed)
    if best_state is not None:
        head.load_state_dict(best_state)
    head.cpu()
    _fold_standardisation(head, mean, std)
    assert best is not None
    return history, best


def _end_to_end_epoch(
    model: ClassifierModel,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    perm: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: Any,
    *,
    batch_size: int,
    augment: bool,
    generator: torch.Generator,
    device: torch.device | str,
    prefetch: int | None = None,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int, int]:
    """One pass of backbone + head over the shuffled images; returns (loss sum, correct, seen).

    The forward pass runs under autocast to ``amp`` (None: float32), the loss in float32;
    ``scaler`` scales the loss of float16 steps (:func:`train_end_to_end` makes it).

    The batches (index gather and copy to ``device``) are made ``prefetch`` batches ahead by
    a background thread (:class:`~deeplense_ssl.training.data.Prefetcher`; 0: inline; None:
    :func:`~deeplense_ssl.training.data.prefetch_depth`, i.e. only on CUDA); they
    depend only on ``perm``, and the augmentation draws from ``generator`` here, in order, so
    the weights are the same with or without it.
    """
    model.train()
    total, correct, seen = 0.0, 0, 0
    batches = [perm[start : start + batch_size] for start in range(0, len(perm), batch_size)]
    # BatchNorm needs two images per batch in training mode
    batches = [idx for idx in batches if len(idx) >= 2 or len(perm) < 2]
    target = torch.device(device)

    def make(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return fetch(train_images, batches[k], target), fetch(train_labels, batches[k], target)

    with Prefetcher(make, range(len(batches)), prefetch, target) as feed:
        for x, y in feed:
            if augment:
                x = random_dihedral(x, generator=generator)
            with autocast(target, amp):
                logits = model(x).float()
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            backward_step(loss, opt, scaler)
            sched.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    return total, correct, seen


def _end_to_end_row(
    epoch: int, step: int, sums: tuple[float, int, int], opt: torch.optim.Optimizer
) -> dict:
    """The history row of an end-to-end epoch from :func:`_end_to_end_epoch`'s ``(loss sum,
    correct, seen)``: mean training loss and accuracy, the head's and the backbone's rates."""
    total, correct, seen = sums
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": total / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": opt.param_groups[1]["lr"],
        "backbone_lr": opt.param_groups[0]["lr"],
    }


def _end_to_end_validation(
    model: ClassifierModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    batch_size: int,
    device: torch.device | str,
    amp: torch.dtype | None,
) -> dict:
    """Validation metrics of the model (forward passes under autocast to ``amp``)."""
    with autocast(device, amp):
        logits = predict_logits(model, images, batch_size=batch_size, device=device)
    return _val_metrics(logits, labels, class_names)


def _two_rate_adamw(
    model: ClassifierModel, lr: float, backbone_lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """:func:`_cosine_adamw` over the backbone (``backbone_lr``, group 0) and the head (``lr``,
    group 1)."""
    groups = [
        {"params": model.backbone.parameters(), "lr": backbone_lr},
        {"params": model.head.parameters(), "lr": lr},
    ]
    return _cosine_adamw(groups, weight_decay, total_steps)


def train_end_to_end(
    model: ClassifierModel,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    class_names: list[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    backbone_lr: float,
    weight_decay: float,
    augment: bool,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    min_steps: int = 0,
    prefetch: int | None = None,
    amp: torch.dtype | None = None,
) -> tuple[list[dict], dict]:
    """Train backbone and head together (full fine-tune or supervised from scratch).

    Args:
        model: the composed model; trained in place, left with the kept epoch's weights.
        train_images: (N, C, H, W) float32; train_labels (N,) int64.
        val_images: (M, C, H, W); val_labels (M,). Both ``None``: a fixed schedule, the last
            epoch is kept.
        class_names: C names, for the validation AUC.
        lr: head learning rate; backbone_lr: backbone learning rate (AdamW, cosine schedule).
        augment: random dihedral transform of every training batch.
        generator: seeded CPU generator (shuffling, augmentation).
        min_steps: train at least this many optimiser steps (:func:`budget_epochs`).
        prefetch: batches made ahead by a background thread (0: inline; None: only on CUDA;
            the same weights either way).
        amp: autocast dtype of the forward passes (training and validation; float16 with
            loss scaling), or None for float32 (:func:`deeplense_ssl.runtime.resolve_amp_dtype`).

    Returns:
        ``(history, best)`` as :func:`train_probe`.
    """
    fixed = val_images is None or val_labels is None
    per_epoch = steps_per_epoch(len(train_images), batch_size, skip_single=True)
    epochs = budget_epochs(epochs, per_epoch, min_steps)
    model.to(device)
    opt, sched = _two_rate_adamw(model, lr, backbone_lr, weight_decay, epochs * per_epoch)
    scaler = torch.amp.GradScaler(torch.device(device).type) if amp == torch.float16 else None
    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    for epoch in tqdm(range(1, epochs + 1), desc="fine-tune", disable=not progress):
        perm = torch.randperm(len(train_images), generator=generator)
        sums = _end_to_end_epoch(
            model,
            train_images,
            train_labels,
            perm,
            opt,
            sched,
            batch_size=batch_size,
            augment=augment,
            generator=generator,
            device=device,
            prefetch=prefetch,
            amp=amp,
            scaler=scaler,
        )
        row = _end_to_end_row(epoch, epoch * per_epoch, sums, opt)
        if val_images is not None and val_labels is not None:  # i.e. not fixed
            val = (val_images, val_labels, class_names)
            row.update(_end_to_end_validation(model, *val, batch_size, device, amp))
        history.append(row)
        best, best_state = _keep(row, best, best_state, model, fixed)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    assert best is not None
    return history, best


# --------------------------------------------------------------------------------------------
# The finetune command, step by step
# --------------------------------------------------------------------------------------------


def _resolve_backbone(cfg: FinetuneConfig, data_chans: int | None) -> tuple[nn.Module, dict]:
    """The backbone to fine-tune and where its architecture / preprocessing come from."""
    if cfg.checkpoint:
        pretrained, info = load_pretrained_backbone(cfg.checkpoint, map_location="cpu")
        if cfg.init == "pretrained":
            return pretrained, info
        # baselines with the same architecture and preprocessing as the pretrain run
        fresh = build_backbone(info["backbone"], in_chans=info["in_chans"], stem=info["stem"])
        return fresh, info
    if data_chans is None:
        raise ConfigError("a baseline without --checkpoint needs the data to know in_chans.")
    backbone = build_backbone(cfg.backbone, in_chans=data_chans, stem=cfg.stem)
    info = {
        "backbone": cfg.backbone,
        "stem": cfg.stem,
        "in_chans": data_chans,
        "feature_dim": int(getattr(backbone, "feature_dim")),  # noqa: B009 (a Module attr)
        "normalize": None,
        "image_size": None,
    }
    return backbone, info


def _check_data(cfg: FinetuneConfig, dataset: Any, info: dict, image_size: int | None) -> None:
    """Channels and image size must fit the backbone; at least two classes must be present."""
    shape = _pool_shape(dataset)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    class_names = list(dataset.class_names)
    if len(shape) != 4 or shape[1] != info["in_chans"]:
        where = cfg.checkpoint or "the backbone"
        raise CheckpointError(
            f"{where}: the backbone takes {info['in_chans']} channel(s) but {cfg.data} has images "
            f"of shape {shape[1:]}; pretrain on data with the same bands, or fine-tune "
            "a baseline (--from-scratch / --random-init) without --checkpoint."
        )
    seen = info.get("input_shape")
    if cfg.init == "pretrained" and image_size is None and seen and len(seen) == 3:
        if tuple(shape[2:]) != tuple(seen[1:]):
            raise DataError(
                f"images are {shape[2]}x{shape[3]} px but the backbone in "
                f"{cfg.checkpoint} was pretrained on {seen[1]}x{seen[2]} px; pass "
                f"--image-size {seen[1]} to crop/resize them as in pretraining, or choose the "
                "size explicitly with --image-size.",
                cfg.data,
            )
    present = np.unique(labels)
    if len(class_names) < 2 or len(present) < 2:
        raise DataError(
            f"fine-tuning needs labelled images of at least two classes; found "
            f"{len(present)} class(es) ({', '.join(class_names)}).",
            cfg.data,
        )


def _pool_shape(dataset: Any) -> tuple[int, ...]:
    """``(N, C, H, W)`` of a loaded or streamed (:class:`StreamedPool`) set."""
    if isinstance(dataset, StreamedPool):
        return tuple(dataset.shape)
    return tuple(np.shape(dataset.images))


def _split(
    cfg: FinetuneConfig, dataset: Any, normalize: str, image_size: int | None, progress: bool
) -> FinetuneData:
    """Label budget (:func:`label_budget_split`) and (``zscore-dataset``) normalisation fit.

    A streamed set (:class:`StreamedPool`) then loads the images of the label budget only.
    """
    labels = np.asarray(dataset.labels, dtype=np.int64)
    budget = label_budget_split(
        labels, cfg.label_fraction, cfg.val_fraction, cfg.min_val_per_class, seed=cfg.seed
    )
    train_pool = np.setdiff1d(np.arange(len(labels)), budget.val).astype(np.int64)
    norm_stats = None
    if getattr(dataset, "normalization_pending", False):
        # zscore-dataset: pixel statistics of every image outside the validation split (no
        # labels used), stored with the model. Also with --checkpoint of a zscore-dataset
        # pretrain run (whose resolved["norm_stats"] were fit on its own pretraining set):
        # the fine-tuning data are standardised by their own statistics, and evaluate / embed
        # of the finetune run use these. Loaded and streamed sets sum the same blocks
        # (cleaning.row_blocks), so both get bitwise the same statistics.
        norm_stats = dataset.fit_normalization(train_pool).to_dict()
    elif isinstance(getattr(dataset, "meta", None), dict):
        norm_stats = dataset.meta.get("norm_stats")
    if isinstance(dataset, StreamedPool):
        used = np.union1d(budget.train, budget.val)
        images: np.ndarray | RowImages = dataset.load_rows(used, progress=progress)
    else:
        images = np.asarray(dataset.images, dtype=np.float32)
    return FinetuneData(
        images=images,
        labels=labels,
        class_names=list(dataset.class_names),
        train_pool=train_pool,
        val_idx=budget.val,
        labelled=budget.train,
        model_selection=budget.model_selection,
        selection_reason=budget.reason,
        normalize=normalize,
        image_size=image_size,
        norm_stats=norm_stats,
        nan_report=getattr(dataset, "nan_report", None),
    )


def _load_data(
    cfg: FinetuneConfig, dataset: Any, info: dict, progress: bool
) -> tuple[Any, str, int | None]:
    """The dataset with the run's preprocessing: ``dataset`` when given, else ``cfg.data``
    opened for streaming (:class:`StreamedPool`, ``cfg.data_mode``) or loaded."""
    normalize = cfg.normalize
    if normalize == "auto":
        normalize = info.get("normalize") or "minmax"
    image_size = cfg.image_size if cfg.image_size is not None else info.get("image_size")
    if dataset is not None and cfg.data_mode == "stream":
        raise ConfigError(
            "data_mode='stream' reads --data from files; a dataset passed in memory is "
            "fine-tuned in memory (data_mode 'auto' or 'in-memory')."
        )
    if dataset is None:
        options = CleanOptions(cfg.nan_policy, normalize, image_size, cfg.allow_pickle)
        shards, budget = open_stream(
            cfg.data, cfg.data_mode, cfg.max_memory_gb, options, "finetune"
        )
        if shards is not None:
            return StreamedPool(shards, budget), normalize, image_size
        dataset = load_dataset(
            cfg.data,
            nan_policy=cfg.nan_policy,
            normalize=normalize,
            image_size=image_size,
            allow_pickle=cfg.allow_pickle,
            progress=progress,
        )
    return dataset, normalize, image_size


def _fit_probe(
    cfg: FinetuneConfig,
    model: ClassifierModel,
    data: FinetuneData,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
    amp: torch.dtype | None,
    progress: bool,
) -> tuple[list[dict], dict, torch.Tensor]:
    """Cache frozen features (dihedral copies too, if asked; under autocast to ``amp``, stored
    in float32) and train the head on them (float32).

    Returns:
        ``(history, best, train_emb)`` with ``train_emb`` the (N_labelled, D) CPU features of
        the labelled images themselves.
    """
    backbone = model.backbone
    backbone.to(device)
    with autocast(device, amp):
        tr = embed(
            backbone,
            data.images[data.labelled],
            device,
            cfg.batch_size,
            dihedral=cfg.feature_dihedral,
            progress=progress,
            desc="train features",
        ).cpu()
        va, va_y = None, None
        if data.model_selection == "val":
            va = embed(
                backbone,
                data.images[data.val_idx],
                device,
                cfg.batch_size,
                progress=progress,
                desc="val features",
            ).cpu()
            va_y = torch.as_tensor(data.labels[data.val_idx])
    backbone.cpu()
    y_train = torch.as_tensor(data.labels[data.labelled])
    if cfg.feature_dihedral:
        train_emb = tr[0]
        tr_x, tr_y = tr.reshape(-1, tr.shape[-1]), y_train.repeat(tr.shape[0])
    else:
        train_emb, tr_x, tr_y = tr, tr, y_train
    history, best = train_probe(
        model.head,
        tr_x,
        tr_y,
        va,
        va_y,
        data.class_names,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        weight_decay=cfg.weight_decay,
        generator=generator,
        device=device,
        progress=progress,
        min_steps=cfg.min_steps,
    )
    return history, best, train_emb


def _fit_end_to_end(
    cfg: FinetuneConfig,
    model: ClassifierModel,
    data: FinetuneData,
    lr: float,
    backbone_lr: float,
    generator: torch.Generator,
    device: torch.device,
    amp: torch.dtype | None,
    progress: bool,
) -> tuple[list[dict], dict]:
    """Train backbone and head on the labelled images (full fine-tune / from scratch), under
    autocast to ``amp``."""
    val = data.model_selection == "val"
    return train_end_to_end(
        model,
        torch.as_tensor(data.images[data.labelled]),
        torch.as_tensor(data.labels[data.labelled]),
        torch.as_tensor(data.images[data.val_idx]) if val else None,
        torch.as_tensor(data.labels[data.val_idx]) if val else None,
        data.class_names,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        backbone_lr=backbone_lr,
        weight_decay=cfg.weight_decay,
        augment=cfg.augment,
        generator=generator,
        device=device,
        progress=progress,
        min_steps=cfg.min_steps,
        amp=amp,
    )


def _fit_lp_ft(
    cfg: FinetuneConfig,
    model: ClassifierModel,
    data: FinetuneData,
    rates: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    amp: torch.dtype | None,
    progress: bool,
) -> tuple[list[dict], dict]:
    """LP-FT: the linear probe (its own model selection), then backbone + head from it.

    One history: the probe's epochs (``stage`` "probe") and then the fine-tune's, whose epochs
    and steps continue the count, so the run's ``optimizer_steps`` counts both stages.
    """
    lr, backbone_lr = rates["lr"], rates["backbone_lr"]
    probe_history, _, _ = _fit_probe(cfg, model, data, lr, generator, device, amp, progress)
    history, best = _fit_end_to_end(
        cfg, model, data, lr, backbone_lr, generator, device, amp, progress
    )
    last = probe_history[-1]

    def shifted(row: dict) -> dict:
        return {**row, "epoch": row["epoch"] + last["epoch"], "step": row["step"] + last["step"],
                "stage": "fine-tune"}  # fmt: skip

    probe_rows = [{**row, "stage": "probe"} for row in probe_history]
    return probe_rows + [shifted(row) for row in history], shifted(best)


def _train_embeddings(
    cfg: FinetuneConfig,
    model: ClassifierModel,
    data: FinetuneData,
    probe_emb: torch.Tensor | None,
    device: torch.device,
    amp: torch.dtype | None,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of (at most :data:`MAX_TRAIN_EMBEDDINGS`) labelled images, for kNN evaluation.

    Returns:
        ``(embeddings (K, D) float32, labels (K,) int64)``.
    """
    labelled = data.labelled
    if len(labelled) > MAX_TRAIN_EMBEDDINGS:
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(labelled), MAX_TRAIN_EMBEDDINGS, replace=False))
    else:
        keep = np.arange(len(labelled))
    if probe_emb is None:
        model.to(device)
        with autocast(device, amp):
            emb = embed(
                model.backbone,
                data.images[labelled[keep]],
                device,
                cfg.batch_size,
                progress=progress,
                desc="train embeddings",
            ).cpu()
        model.cpu()
    else:
        emb = probe_emb[torch.as_tensor(keep)]
    return emb.numpy(), data.labels[labelled[keep]]


def _model_spec(
    cfg: FinetuneConfig, info: dict, data: FinetuneData, mode: str, head_kind: str
) -> dict[str, Any]:
    """What :func:`deeplense_ssl.inference.load_finetuned` needs to rebuild the model."""
    return {
        "backbone": info["backbone"],
        "stem": info["stem"],
        "in_chans": int(info["in_chans"]),
        "feature_dim": int(info["feature_dim"]),
        "head": cfg.head,
        "head_kind": head_kind,
        "mlp_hidden_dim": int(cfg.mlp_hidden_dim),
        "init": cfg.init,
        "mode": mode,
        "class_names": data.class_names,
        "normalize": data.normalize,
        "image_size": data.image_size,
        "norm_stats": to_jsonable(data.norm_stats),
        "input_hw": [int(data.images.shape[2]), int(data.images.shape[3])],
        "nan_policy": cfg.nan_policy,
    }


def _data_summary(cfg: FinetuneConfig, data: FinetuneData) -> dict[str, Any]:
    """Counts of the data, splits and labelled subset (the run config's ``data_summary``)."""
    labels, labelled, names = data.labels, data.labelled, data.class_names
    return {
        "data": str(cfg.data),
        "n_images": int(len(labels)),
        "class_counts": {n: int((labels == k).sum()) for k, n in enumerate(names)},
        "n_train_pool": int(len(data.train_pool)),
        "n_train_labelled": int(len(labelled)),
        "train_labelled_class_counts": {
            n: int((labels[labelled] == k).sum()) for k, n in enumerate(names)
        },
        "n_val": int(len(data.val_idx)),
        "val_class_counts": {
            n: int((labels[data.val_idx] == k).sum()) for k, n in enumerate(names)
        },
        "label_fraction": float(cfg.label_fraction),
        "n_labels_used": int(len(labelled) + len(data.val_idx)),
        "image_shape": list(data.images.shape[1:]),
        # streamed: only the labelled images were loaded, and the NaN report counts those
        "data_mode": "stream" if isinstance(data.images, RowImages) else "in-memory",
        "nan_report": to_jsonable(data.nan_report),
    }


def _budget_record(cfg: FinetuneConfig, data: FinetuneData, history: list[dict]) -> dict:
    """The labels and optimiser steps the run actually used (part of ``resolved``)."""
    n_train, n_val = int(len(data.labelled)), int(len(data.val_idx))
    return {
        "n_label_pool": int(len(data.labels)),
        "n_labels_train": n_train,
        "n_labels_val": n_val,
        "n_labels": n_train + n_val,
        "model_selection": data.model_selection,
        "model_selection_reason": data.selection_reason,
        "epochs": int(history[-1]["epoch"]),
        "optimizer_steps": int(history[-1]["step"]),
        "min_steps": int(cfg.min_steps),
    }


def _run_config(
    cfg: FinetuneConfig,
    info: dict,
    data: FinetuneData,
    spec: dict,
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """The finetune run's ``config.json`` content."""
    pretrain = None
    if cfg.checkpoint:
        pretrain = {
            "run": str(Path(cfg.checkpoint).resolve()),
            "method": info.get("method"),
            "step": info.get("step"),
            "epoch": info.get("epoch"),
            "config": info.get("config"),
        }
    return {
        "kind": FINETUNE_KIND,
        "deeplense_ssl_version": __version__,
        "config": config_to_dict(cfg),
        "resolved": resolved,
        "spec": spec,
        "pretrain": pretrain,
        "data_summary": _data_summary(cfg, data),
    }


def _val_record(cfg: FinetuneConfig, data: FinetuneData, best: dict) -> dict[str, Any]:
    """``val_metrics.json``: the kept epoch and how it was chosen."""
    if data.model_selection == "val":
        selection = "best validation macro ROC-AUC (ties: lower validation loss)"
    else:
        selection = f"fixed schedule, last epoch kept: {data.selection_reason}"
    return {
        "selection": selection,
        "model_selection": data.model_selection,
        "best_epoch": best["epoch"],
        **{k: v for k, v in best.items() if k.startswith("val_")},
        "n_val": int(len(data.val_idx)),
        "n_train_labelled": int(len(data.labelled)),
        "label_fraction": float(cfg.label_fraction),
    }


def _write_run(
    out: Path,
    model: ClassifierModel,
    spec: dict,
    run_config: dict,
    history: list[dict],
    val_metrics: dict,
    labelled: np.ndarray,
    train_emb: np.ndarray,
    train_emb_labels: np.ndarray,
) -> None:
    """Write every file of the run into ``out`` (the stage of
    :func:`deeplense_ssl.runs.staged_run_folder`, swapped in whole afterwards), after training
    has succeeded (``model.pt`` last)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / LABEL_SUBSET_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, labelled.astype(np.int64))
    with atomic_output(out / TRAIN_EMBEDDINGS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, embeddings=train_emb.astype(np.float32), labels=train_emb_labels
            )
    write_jsonl(out / METRICS_FILE, history)
    write_json(out / VAL_METRICS_FILE, val_metrics)
    plot_finetune_history(history, val_metrics["best_epoch"], out / HISTORY_PLOT_FILE)
    write_json(out / CONFIG_FILE, run_config)
    save_checkpoint(
        out / MODEL_FILE,
        {
            "format": MODEL_FORMAT,
            "spec": spec,
            "backbone_state": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
            "head_state": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
            "deeplense_ssl_version": __version__,
        },
    )


def _track(
    cfg: FinetuneConfig, stage: Path, run_config: dict, history: list[dict], val_metrics: dict
) -> None:
    """Send the run to its tracker (``cfg.log``, :mod:`deeplense_ssl.tracking`): the config,
    every ``metrics.jsonl`` record and the kept epoch's metrics (``final/...``).

    It runs as the run folder is written (``stage``, where the tracker's files go by default, so
    they are swapped in with the run). A tracker that cannot be opened now (a bad ``log_uri``)
    warns: the trained run is written without it.
    """
    try:
        tracker = open_tracker(cfg.log, stage, uri=cfg.log_uri, name=Path(cfg.out).absolute().name)
    except ConfigError as exc:
        warnings.warn(f"{exc} The run is written without tracking.", RuntimeWarning, stacklevel=3)
        return
    with tracker:
        tracker.log_params(run_config)
        for row in history:
            tracker.log_metrics(int(row["step"]), row)
        tracker.log_metrics(int(history[-1]["step"]), final_metrics([val_metrics]))


def _prepare(
    cfg: FinetuneConfig, dataset: Any, progress: bool
) -> tuple[nn.Module, dict, FinetuneData]:
    """The backbone, where it comes from, and the run's data, loaded, checked and split.

    A pretrained backbone is built before the data are read, a baseline's after (it needs
    their channels); a streamed set is closed once the run's images are in memory.
    """
    backbone, info = _resolve_backbone(cfg, None) if cfg.checkpoint else (None, {})
    dataset, normalize, image_size = _load_data(cfg, dataset, info, progress)
    try:
        if backbone is None:
            backbone, info = _resolve_backbone(cfg, int(_pool_shape(dataset)[1]))
        _check_data(cfg, dataset, info, image_size)
        return backbone, info, _split(cfg, dataset, normalize, image_size, progress)
    finally:
        if isinstance(dataset, StreamedPool):
            dataset.close()


def learning_rates(cfg: FinetuneConfig) -> dict[str, Any]:
    """The mode and learning rates a run of ``cfg`` trains with (recorded in its ``resolved``).

    ``backbone_lr`` is None where the backbone stays frozen (probes); a scratch network trains
    everything at ``lr``; a pretrained one trains its backbone at ``lr * backbone_lr_scale``.
    """
    mode = "end_to_end" if cfg.init == "scratch" or cfg.head in BACKBONE_TRAINING_HEADS else "probe"
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[mode]
    scale = 1.0 if cfg.init == "scratch" else cfg.backbone_lr_scale
    return {"mode": mode, "lr": lr, "backbone_lr": lr * scale if mode == "end_to_end" else None}


def finetune(cfg: FinetuneConfig, progress: bool = True, dataset: Any = None) -> Path:
    """Train a classifier on a (pretrained) backbone with a fraction of the labels.

    Args:
        cfg: the resolved finetune config (see the module docstring for the modes).
        progress: show progress bars.
        dataset: an already loaded :class:`deeplense_ssl.datasets.ImageSet` (skips reading
            ``cfg.data``; it must be normalised as the pretraining was).

    Returns:
        The run folder ``cfg.out``.

    Raises:
        ConfigError: an impossible mode (``--random-init`` with ``--head full``;
            :meth:`FinetuneConfig.validate`).
        CheckpointError: unusable pretrain run; backbone channels differ from the data's;
            ``cfg.out`` holds something else than a finetune run (an existing finetune run is
            replaced whole at the end, :func:`deeplense_ssl.runs.staged_run_folder`).
        DataError: unreadable data, or fewer than two classes.
    """
    cfg.validate()
    check_replaceable(cfg.out, FINETUNE_KIND)  # a wrong --out fails now, not after training
    require_tracker(cfg.log)  # so does a missing `track` extra
    device = resolve_device(cfg.device)
    amp = resolve_amp_dtype(cfg.amp, device)
    generator = seed_everything(cfg.seed)
    # the order of the random draws (backbone init, splits, head init) is part of the contract
    backbone, info, data = _prepare(cfg, dataset, progress)
    rates = learning_rates(cfg)
    mode, lr = rates["mode"], rates["lr"]
    head_kind = "mlp" if cfg.head == "mlp" else "linear"
    head = build_classifier_head(
        head_kind, int(info["feature_dim"]), len(data.class_names), cfg.mlp_hidden_dim
    )
    model = ClassifierModel(backbone, head)
    probe_emb = None
    if mode == "probe":
        history, best, probe_emb = _fit_probe(
            cfg, model, data, lr, generator, device, amp, progress
        )
    elif cfg.head == "lp-ft":
        history, best = _fit_lp_ft(cfg, model, data, rates, generator, device, amp, progress)
    else:
        history, best = _fit_end_to_end(
            cfg, model, data, lr, rates["backbone_lr"], generator, device, amp, progress
        )
    model.cpu().eval()
    train_emb, train_emb_labels = _train_embeddings(
        cfg, model, data, probe_emb, device, amp, progress
    )

    spec = _model_spec(cfg, info, data, mode, head_kind)
    resolved = {
        **rates,
        "normalize": data.normalize,
        "image_size": data.image_size,
        "device": str(device),
        "amp": amp_name(amp),
        **_budget_record(cfg, data, history),
    }
    run_config = _run_config(cfg, info, data, spec, resolved)
    val_metrics = _val_record(cfg, data, best)
    out = Path(cfg.out)
    with staged_run_folder(out, FINETUNE_KIND) as stage:  # swapped in whole, or not at all
        _write_run(
            stage,
            model,
            spec,
            run_config,
            history,
            val_metrics,
            data.labelled,
            train_emb,
            train_emb_labels,
        )
        _track(cfg, stage, run_config, history, val_metrics)
    return out
