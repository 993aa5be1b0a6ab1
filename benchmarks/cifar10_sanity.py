"""CIFAR-10 sanity check: do our SSL methods learn what lightly's implementations learn?

Runs, on the same data, backbone (ResNet-18, CIFAR stem: 3x3/1 conv, no max-pool), batch,
optimiser, schedule and epoch budget, side by side in one process:

* ``ours``: ``deeplense_ssl.training.pretrain`` (method ``simclr``, ``cifar`` augmentation preset,
  batched on the training device);
* ``lightly``: lightly's ``SimCLRTransform`` (PIL, per sample, in DataLoader workers), its
  ``SimCLRProjectionHead`` and ``NTXentLoss``;
* ``random-init``: the same backbone, untrained;
* ``supervised``: the same backbone trained with labels (crop + flip) for the same epochs.

Every backbone is then scored identically: weighted kNN accuracy (k=200, T=0.1, as in lightly's
CIFAR-10 benchmark) and a linear probe on frozen features, on the test split. Published numbers
from DOMAIN.md are printed beside ours; a CPU run of a few epochs is expected to land far below
them (they take hundreds of GPU epochs), so the check that matters on CPU is the ordering
``random-init < ours ~ lightly``.

With ``--methods simclr,byol,simsiam,vicreg,barlow-twins,dino`` (issue 11, "Quality"), each
method is trained twice, interleaved method by method in one process: ``ours``
(``pretrain(PretrainConfig(method=...))``) and lightly's implementation of the same method
(lightly's heads, losses, momentum helpers and transforms, assembled as in lightly's examples).
Both sides share, per method (:data:`RECIPES`): the backbone and its initial weights, the data,
batch, number of optimiser steps, our method's default optimiser (SGD or LARS) with the same
parameter groups (no weight decay on biases and normalisation weights: ``optim.build_optimizer``,
also for lightly's model), the peak learning rate, its
one-epoch warm-up + cosine schedule, the projector widths and depth, the EMA momentum schedule
and the view recipe (the ``cifar`` preset, i.e. lightly's ``SimCLRViewTransform`` without blur,
for every method; see :data:`DIFFERENCES` for what still differs). Then every backbone is scored
identically, with a random-init baseline once.

Usage (data in the official ``cifar-10-batches-py`` layout; the reader never unpickles code)::

    python benchmarks/cifar10_sanity.py --data-dir ../shared/data/cifar-10-subset --setting quick
    OMP_NUM_THREADS=2 python benchmarks/cifar10_sanity.py \\
        --data-dir ../shared/data/cifar-10-subset \\
        --setting quick --n-train 256 --epochs 2 --batch-size 128 --n-test 384 \\
        --methods simclr,byol,simsiam,vicreg,barlow-twins,dino --skip-supervised \\
        --work-dir /tmp/h8_runs --out benchmarks/results/cifar10_methods_quick_cpu.json
    python benchmarks/cifar10_sanity.py --data-dir ~/data/cifar10 --download --setting full  # GPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name
from torch import Tensor, nn

from deeplense_ssl import __version__
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.checkpoint import load_pretrained_backbone
from deeplense_ssl.collapse import effective_rank
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.datasets import ImageSet
from deeplense_ssl.finetuning import train_probe
from deeplense_ssl.heads import LinearHead
from deeplense_ssl.inference import embed
from deeplense_ssl.io import read_cifar10, write_text_atomic
from deeplense_ssl.methods import get_method
from deeplense_ssl.metrics import knn_predict
from deeplense_ssl.optim import build_optimizer, warmup_cosine
from deeplense_ssl.runs import CHECKPOINT_FILE
from deeplense_ssl.runtime import resolve_device, seed_everything
from deeplense_ssl.training import pretrain
from deeplense_ssl.training.resume import load_training_checkpoint

PUBLISHED = {
    "SimCLR paper, ResNet-50, 1000 ep, linear": 94.0,
    "SimCLR official repo, ResNet-18, linear": 91.0,
    "lightly, 200 ep, batch 512, kNN": 84.8,
    "lightly, 800 ep, kNN": 87.9,
    "strong reproduction, 100 ep, kNN": 83.2,
    "strong reproduction, 500 ep, kNN": 90.3,
    "solo-learn, 1000 ep, online linear": 90.74,
}

SETTINGS = {
    # CPU: a few minutes per method on 2 cores; numbers far from converged.
    "quick": dict(n_train=1000, epochs=2, batch_size=128, probe_epochs=50),
    # GPU: the lightly benchmark budget.
    "full": dict(n_train=None, epochs=200, batch_size=512, probe_epochs=100),
}
BASE_LR = 0.3  # SGD peak lr = BASE_LR * batch / 256 (SimCLR paper, LARS-free variant)
WEIGHT_DECAY = 5e-4
TEMPERATURE = 0.5
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What ours and lightly's run of one method share (``--methods`` mode).

    Attributes:
        optimizer: ``sgd`` or ``lars`` (``optim.build_optimizer``, the same on both sides).
        base_lr: peak lr per 256 images (scaled by ``batch / 256``).
        proj_layers: linear layers of the projector (ours ``proj_layers``; lightly's head is
            built with the same depth, or is fixed at it: SimSiam and Barlow Twins use 3).
        ema_momentum: EMA momentum of the target network at step 0 (cosine to 1 per step).
    """

    optimizer: str
    base_lr: float
    proj_layers: int = 2
    ema_momentum: float | None = None


PROJ_HIDDEN_DIM, PROJ_OUT_DIM = 512, 128  # every method, both sides (PretrainConfig defaults)
DINO_OUT_DIM = 1024  # K prototypes (PretrainConfig default; paper 65536)
DINO_N_LOCAL = 4  # local views of 16 px, native scale (PretrainConfig default n_local_views)
DINO_LOCAL_SIZE = IMAGE_SIZE // 2
DINO_TEACHER_TEMP = 0.04


def _recipe(method: str, **fields) -> Recipe:
    """Our method's default optimiser and base lr (``Method.default_optimizer`` /
    ``default_base_lr``: LARS for BYOL, VICReg, Barlow Twins and DINO), used by both sides."""
    cls = get_method(method)
    return Recipe(cls.default_optimizer, cls.default_base_lr, **fields)


RECIPES: dict[str, Recipe] = {
    "simclr": _recipe("simclr"),
    "byol": _recipe("byol", ema_momentum=0.99),
    "simsiam": _recipe("simsiam", proj_layers=3),
    "vicreg": _recipe("vicreg", proj_layers=3),
    "barlow-twins": _recipe("barlow-twins", proj_layers=3),
    "dino": _recipe("dino", ema_momentum=0.996),
}
METHODS = tuple(RECIPES)
DIFFERENCES: dict[str, str] = {
    "all": (
        "views: ours = batched on-device `cifar` preset in the training process; lightly = "
        "SimCLRViewTransform(32, cj_strength=0.5, gaussian_blur=0, normalize=None) per PIL "
        "image in 1 persistent DataLoader worker (same recipe, other random draws). Lightly's "
        "method-specific recipes (BYOL/VICReg/DINO blur and solarisation) are NOT used. Ours' "
        "seconds include building the model and writing the run folder (checkpoint with fsync, "
        "backbone.pt, loss plot); lightly's include PIL conversion and the worker start."
    ),
    "simclr": "lightly's SimCLRProjectionHead has a BatchNorm on its output layer; ours does not.",
    "byol": (
        "loss scale: ours 2-2cos summed over both directions (BYOL paper), lightly's example "
        "0.5 * (-cos + -cos): same minimiser, ours' gradient is 4x lightly's at the same lr. "
        "EMA: ours after each step with tau(step-1), lightly before each forward with tau(step)."
    ),
    "simsiam": (
        "lightly's SimSiamProjectionHead (3 layers) ends in BatchNorm1d(affine=False) (SimSiam "
        "paper); ours (proj_layers=3) ends in a plain Linear."
    ),
    "vicreg": "none beyond `all` (VICRegProjectionHead(512, 512, 128, num_layers=3)).",
    "barlow-twins": "off-diagonal weight: ours 5.1e-3 (paper), lightly's default 5e-3.",
    "dino": (
        "local views: ours 16 px native-scale square windows; lightly DINOViewTransform(16, "
        "crop_scale=(0.25, 0.25)) = the same area, aspect 3/4-4/3, no blur/solarisation. Head: "
        "lightly trunc-normal(0.02) init of the MLP, ours PyTorch default init; the teacher head "
        "is a copy of the student head on both sides (lightly's example builds a fresh one); no "
        "last-layer freezing on either side. Both score the teacher backbone."
    ),
}


def parse_methods(text: str) -> tuple[str, ...]:
    """``"byol,dino"`` -> ``("byol", "dino")``; ``"all"`` -> every method of :data:`RECIPES`.

    Raises:
        SystemExit: an unknown or repeated name (argparse-style message).
    """
    names = METHODS if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n)
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names or len(set(names)) != len(names):
        raise SystemExit(
            f"--methods: {text!r} must be 'all' or distinct names from {', '.join(METHODS)}."
        )
    return names


def peak_lr(base_lr: float, batch_size: int) -> float:
    """SGD peak learning rate ``base_lr * batch_size / 256`` (as ``PretrainConfig``)."""
    return base_lr * batch_size / 256


# --------------------------------------------------------------------------------------------
# lightly's implementations (the ``bench`` extra), assembled as in lightly's examples
# --------------------------------------------------------------------------------------------


class LightlyTwoView(nn.Module):
    """lightly SimCLR / VICReg / Barlow Twins: ``criterion(head(f(x0)), head(f(x1)))``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head, self.criterion = backbone, head, criterion

    def loss(self, views: Sequence[Tensor], step: int, total: int) -> Tensor:
        """Scalar loss of two view batches ``(B, 3, 32, 32)``."""
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0.float(), z1.float())

    def export(self) -> nn.Module:
        return self.backbone


class LightlySimSiam(nn.Module):
    """lightly SimSiam example: symmetric ``NegativeCosineSimilarity(p, z.detach())`` / 2."""

    def __init__(self, backbone: nn.Module, projector, predictor, criterion) -> None:
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor
        self.criterion = criterion

    def loss(self, views: Sequence[Tensor], step: int, total: int) -> Tensor:
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))

    def export(self) -> nn.Module:
        return self.backbone


class LightlyMomentum(nn.Module):
    """lightly BYOL or DINO example: a frozen copy updated by ``update_momentum`` before each
    forward with ``cosine_schedule(step, total, momentum_base, 1)``.

    Args:
        backbone: the online / student backbone.
        heads: online modules after the backbone, ``[projector, predictor]`` (BYOL) or
            ``[dino_head]`` (DINO); the first one is copied into the target.
        make_head: builds a new module like ``heads[0]`` (the target's, before copying).
        criterion: lightly's loss.
        momentum_base: EMA momentum at step 0.
        dino: DINO (teacher on the 2 global views, student on all) instead of BYOL.
    """

    def __init__(self, backbone, heads, make_head, criterion, momentum_base, dino=False):
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone, self.heads, self.criterion = backbone, nn.ModuleList(heads), criterion
        self.target_backbone = copy.deepcopy(backbone)
        # A fresh head loaded with the online one's weights: lightly's DINO head uses the old
        # ``nn.utils.weight_norm``, which ``copy.deepcopy`` refuses.
        self.target_head = copy_module(heads[0], make_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_head)
        self.momentum_base, self.dino = momentum_base, dino

    def loss(self, views: Sequence[Tensor], step: int, total: int) -> Tensor:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total, self.momentum_base, 1.0)
        update_momentum(self.backbone, self.target_backbone, m)
        update_momentum(self.heads[0], self.target_head, m)
        n_target = 2
        with torch.no_grad():
            z = [self.target_head(self.target_backbone(v)) for v in views[:n_target]]
        if self.dino:
            student = [self.heads[0](self.backbone(v)) for v in views]
            return self.criterion(z, student, teacher_temp=DINO_TEACHER_TEMP)
        p = [self.heads[1](self.heads[0](self.backbone(v))) for v in views[:2]]
        return 0.5 * (self.criterion(p[0], z[1]) + self.criterion(p[1], z[0]))

    def export(self) -> nn.Module:
        """DINO: the teacher's backbone (as ours exports); BYOL: the online backbone."""
        return self.target_backbone if self.dino else self.backbone


def copy_module(module: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` loaded with ``module``'s parameters and buffers (a deep copy by state)."""
    target = make()
    target.load_state_dict(module.state_dict())
    return target


def lightly_model(method: str, backbone: nn.Module) -> nn.Module:
    """lightly's heads and loss for ``method`` around ``backbone``, with our widths
    (:data:`PROJ_HIDDEN_DIM`, :data:`PROJ_OUT_DIM`) and depths (:data:`RECIPES`)."""
    from lightly import loss as L
    from lightly.models.modules import heads as M

    feat, hid, out = backbone.feature_dim, PROJ_HIDDEN_DIM, PROJ_OUT_DIM
    recipe = RECIPES[method]
    if method == "simclr":
        head = M.SimCLRProjectionHead(feat, hid, out, num_layers=recipe.proj_layers)
        return LightlyTwoView(backbone, head, L.NTXentLoss(temperature=TEMPERATURE))
    if method == "vicreg":
        head = M.VICRegProjectionHead(feat, hid, out, num_layers=recipe.proj_layers)
        return LightlyTwoView(backbone, head, L.VICRegLoss())
    if method == "barlow-twins":
        return LightlyTwoView(
            backbone, M.BarlowTwinsProjectionHead(feat, hid, out), L.BarlowTwinsLoss()
        )
    if method == "simsiam":
        proj, pred = (
            M.SimSiamProjectionHead(feat, hid, out),
            M.SimSiamPredictionHead(out, hid // 4, out),
        )
        return LightlySimSiam(backbone, proj, pred, L.NegativeCosineSimilarity())
    if method == "byol":

        def make() -> nn.Module:
            return M.BYOLProjectionHead(feat, hid, out)

        heads = [make(), M.BYOLPredictionHead(out, hid, out)]
        criterion = L.NegativeCosineSimilarity()
        return LightlyMomentum(backbone, heads, make, criterion, recipe.ema_momentum)
    if method == "dino":

        def make() -> nn.Module:
            return M.DINOProjectionHead(feat, hid, out, DINO_OUT_DIM, batch_norm=False)

        criterion = L.DINOLoss(
            DINO_OUT_DIM, warmup_teacher_temp=DINO_TEACHER_TEMP, teacher_temp=DINO_TEACHER_TEMP
        )
        return LightlyMomentum(backbone, [make()], make, criterion, recipe.ema_momentum, True)
    raise ValueError(f"no lightly model for {method!r}")


def lightly_transform(method: str) -> Callable:
    """Per-PIL-image views: two ``cifar``-recipe views (+ DINO's local views)."""
    from lightly.transforms import DINOViewTransform, SimCLRViewTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform

    view = SimCLRViewTransform(
        input_size=IMAGE_SIZE, cj_strength=0.5, gaussian_blur=0.0, normalize=None
    )
    if method != "dino":
        return MultiViewTransform([view, view])
    local = DINOViewTransform(
        crop_size=DINO_LOCAL_SIZE, crop_scale=((DINO_LOCAL_SIZE / IMAGE_SIZE) ** 2,) * 2,
        cj_strength=0.5, cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2,
        gaussian_blur=0.0, solarization_prob=0.0, normalize=None,
    )  # fmt: skip
    return MultiViewTransform([view, view] + [local] * DINO_N_LOCAL)


def lightly_pretrain(
    method: str,
    images: np.ndarray,
    epochs: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[nn.Module, float, list[float]]:
    """Train lightly's ``method``; returns (model, source images/s, epoch losses); the model's
    ``export()`` is the backbone to score, its ``backbone`` the online / student one.

    Same backbone (``build_backbone``, seeded like ours, hence the same initial weights),
    optimiser groups (``build_optimizer``), lr schedule and step count as ``pretrain``. On a GPU:
    bf16 autocast (loss in float32), channels-last, 8 loader workers; on the CPU one worker, so
    the augmentation does not take the cores the training step needs.
    """
    from PIL import Image

    seed_everything(seed)
    transform = lightly_transform(method)
    pil = [Image.fromarray(x) for x in (images.transpose(0, 2, 3, 1) * 255).round().astype("uint8")]
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _Views(pil, transform), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=8 if cuda else 1, pin_memory=cuda, persistent_workers=True,
    )  # fmt: skip
    fmt = torch.channels_last if cuda else torch.preserve_format
    backbone = build_backbone("resnet18", in_chans=3, stem="cifar")
    model = lightly_model(method, backbone).to(device, memory_format=fmt)
    lr = peak_lr(RECIPES[method].base_lr, batch_size)
    opt = build_optimizer(
        RECIPES[method].optimizer, model, lr, weight_decay=WEIGHT_DECAY, momentum=0.9
    )
    total, warmup = epochs * len(loader), max(1, len(loader))  # one warm-up epoch, like ours
    step, n_seen, losses, t0 = 0, 0, [], time.perf_counter()
    model.train()
    for _ in range(epochs):
        epoch_loss = 0.0
        for views in loader:
            for g in opt.param_groups:
                g["lr"] = lr * warmup_cosine(step, warmup, total)
            views = [v.to(device, non_blocking=True, memory_format=fmt) for v in views]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model.loss(views, step, total)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            step, n_seen, epoch_loss = (
                step + 1,
                n_seen + len(views[0]),
                epoch_loss + float(loss.detach()),
            )
        losses.append(epoch_loss / len(loader))
    return model, n_seen / (time.perf_counter() - t0), losses


class _Views(torch.utils.data.Dataset):
    """PIL images -> lists of view tensors (``transform`` per item)."""

    def __init__(self, pil: list, transform: Callable) -> None:
        self.pil, self.transform = pil, transform

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int):
        return self.transform(self.pil[i])


def lightly_simclr(
    images: np.ndarray, epochs: int, batch_size: int, device: torch.device, seed: int
) -> tuple[nn.Module, float]:
    """lightly's SimCLR (:func:`lightly_pretrain`); returns (backbone, source images/s)."""
    model, rate, _ = lightly_pretrain("simclr", images, epochs, batch_size, device, seed)
    return model.export(), rate


# --------------------------------------------------------------------------------------------
# ours, the supervised baseline and the scoring
# --------------------------------------------------------------------------------------------


def ours_pretrain(
    method: str, data: ImageSet, epochs: int, batch_size: int, args: argparse.Namespace
) -> tuple[nn.Module, list[float]]:
    """``pretrain`` of ``method`` with the shared :data:`RECIPES`; returns (exported backbone,
    epoch losses). The run folder is ``<work-dir>/ours-<method>`` (replaced)."""
    recipe, out = RECIPES[method], Path(args.work_dir) / f"ours-{method}"
    if method == "simclr":
        out = Path(args.work_dir) / "ours"  # the single-method run's folder, as before
    device = resolve_device(args.device)
    cfg = PretrainConfig(
        data="cifar10", out=str(out), method=method, backbone="resnet18", stem="cifar",
        augment="cifar", normalize="none", epochs=epochs, batch_size=batch_size,
        optimizer=recipe.optimizer, base_lr=recipe.base_lr, weight_decay=WEIGHT_DECAY,
        temperature=TEMPERATURE,
        proj_hidden_dim=PROJ_HIDDEN_DIM, proj_out_dim=PROJ_OUT_DIM, proj_layers=recipe.proj_layers,
        ema_momentum=recipe.ema_momentum, n_local_views=DINO_N_LOCAL,
        local_view_size=DINO_LOCAL_SIZE, dino_out_dim=DINO_OUT_DIM,
        teacher_temperature=DINO_TEACHER_TEMP, collapse_monitor_size=0, seed=args.seed,
        device=args.device, channels_last=device.type == "cuda",
    )  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    run = pretrain(cfg, dataset=data)
    backbone, _ = load_pretrained_backbone(run)
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "epoch"]
    return backbone.to(device), losses


def ours_teacher_backbone(run_dir: Path, device: torch.device) -> nn.Module:
    """DINO's teacher backbone from ``checkpoint.pt`` (``backbone.pt`` holds the student)."""
    state = load_training_checkpoint(run_dir / CHECKPOINT_FILE)["method"]
    prefix = "teacher_backbone."
    teacher = build_backbone("resnet18", in_chans=3, stem="cifar")
    teacher.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return teacher.to(device)


def supervised(
    images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int, device, seed: int
) -> nn.Module:
    """Supervised baseline: the same backbone + linear layer, crop-and-flip augmentation."""
    from deeplense_ssl.transforms import ViewAugmenter

    gen = seed_everything(seed)
    backbone = build_backbone("resnet18", in_chans=3, stem="cifar").to(device)
    head = LinearHead(backbone.feature_dim, int(labels.max()) + 1).to(device)
    aug = ViewAugmenter("none", in_chans=3, image_size=32, hflip_p=0.5, crop_scale=(0.5, 1.0))
    params = list(backbone.parameters()) + list(head.parameters())
    lr = 0.1 * batch_size / 256
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = max(1, len(x_all) // batch_size)
    total, step = epochs * steps, 0
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for s in range(steps):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * warmup_cosine(step, steps, total)
            x = aug(x_all[idx].to(device))
            loss = nn.functional.cross_entropy(head(backbone(x)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return backbone


def features(backbone: nn.Module, train_x, test_x, device) -> tuple[Tensor, Tensor]:
    """Frozen backbone features (eval mode) of the train and test images, on the CPU."""
    return embed(backbone, train_x, device).cpu(), embed(backbone, test_x, device).cpu()


def score_features(f_train, train_y, f_test, test_y, class_names, probe_epochs, seed):
    """kNN (k=200, T=0.1) and linear-probe top-1 accuracy (%) from frozen features."""
    pred, _ = knn_predict(f_train, train_y, f_test, k=200, temperature=0.1, num_classes=10)
    knn = float((np.asarray(pred) == test_y).mean() * 100)
    gen = torch.Generator().manual_seed(seed)
    # Model selection on a held-out tenth of the training features, never on the test set.
    n_val = max(10, len(f_train) // 10)
    perm = torch.randperm(len(f_train), generator=gen)
    val, tr = perm[:n_val], perm[n_val:]
    y = torch.from_numpy(train_y)
    head = LinearHead(f_train.shape[1], 10)
    train_probe(
        head, f_train[tr], y[tr], f_train[val], y[val], class_names,
        epochs=probe_epochs, batch_size=256, lr=1e-3, weight_decay=1e-4, generator=gen,
    )  # fmt: skip
    head.eval()
    with torch.no_grad():
        probe = float((head(f_test).argmax(1).numpy() == test_y).mean() * 100)
    return knn, probe


def score(backbone, train_x, train_y, test_x, test_y, class_names, device, probe_epochs, seed):
    """kNN (k=200, T=0.1) and linear-probe top-1 accuracy (%) on the test split."""
    f_train, f_test = features(backbone, train_x, test_x, device)
    return score_features(f_train, train_y, f_test, test_y, class_names, probe_epochs, seed)


# --------------------------------------------------------------------------------------------
# the two modes
# --------------------------------------------------------------------------------------------


class Scorer:
    """Scores backbones identically on one train/test split; the results dict it fills."""

    def __init__(self, split: tuple, names: list[str], device, probe_epochs: int, seed: int):
        self.train_x, self.train_y, self.test_x, self.test_y = split
        self.names, self.device, self.probe_epochs, self.seed = names, device, probe_epochs, seed

    def __call__(self, label: str, backbone: nn.Module, seconds: float, rate: float | None):
        """kNN / linear top-1 (%), RankMe of the test features, seconds and images/s."""
        f_train, f_test = features(backbone, self.train_x, self.test_x, self.device)
        knn, probe = score_features(
            f_train, self.train_y, f_test, self.test_y, self.names, self.probe_epochs, self.seed
        )
        out = {
            "knn_top1": knn,
            "linear_top1": probe,
            "train_seconds": seconds,
            "src_images_per_s": rate,
            "test_feature_rank": effective_rank(f_test),
            "load_avg_1min": os.getloadavg()[0],
        }
        rank, load = out["test_feature_rank"], out["load_avg_1min"]
        print(
            f"{label:22s} kNN {knn:5.1f}%  linear {probe:5.1f}%  rank {rank:5.1f}"
            f"  ({seconds:.0f} s, load {load:.1f})",
            flush=True,
        )
        return out


def run_simclr(args, setting, data: ImageSet, scorer: Scorer) -> dict[str, dict]:
    """The original sanity check: ours and lightly's SimCLR, random-init, supervised."""
    epochs, bs, device = setting["epochs"], setting["batch_size"], scorer.device
    n_train = len(scorer.train_x)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    ours, _ = ours_pretrain("simclr", data, epochs, bs, args)
    secs = time.perf_counter() - t0
    results["ours"] = scorer("ours", ours, secs, epochs * (n_train // bs) * bs / secs)
    if not args.skip_lightly:
        t0 = time.perf_counter()
        theirs, rate = lightly_simclr(scorer.train_x, epochs, bs, device, args.seed)
        results["lightly"] = scorer("lightly", theirs, time.perf_counter() - t0, rate)
    results.update(baselines(args, setting, scorer))
    return results


def baselines(args, setting, scorer: Scorer) -> dict[str, dict]:
    """random-init (always) and supervised (unless ``--skip-supervised``)."""
    torch.manual_seed(args.seed)
    out = {
        "random-init": scorer(
            "random-init", build_backbone("resnet18", 3, "cifar").to(scorer.device), 0.0, None
        )
    }
    if not args.skip_supervised:
        t0 = time.perf_counter()
        sup = supervised(
            scorer.train_x, scorer.train_y, setting["epochs"], setting["batch_size"],
            scorer.device, args.seed,
        )  # fmt: skip
        out["supervised"] = scorer("supervised", sup, time.perf_counter() - t0, None)
    return out


def run_methods(args, setting, data: ImageSet, scorer: Scorer) -> dict[str, dict]:
    """Each method: ours then lightly's, scored right after training (interleaved)."""
    epochs, bs = setting["epochs"], setting["batch_size"]
    n_images = epochs * (len(scorer.train_x) // bs) * bs
    results: dict[str, dict] = {}
    for method in args.methods:
        row: dict[str, dict] = {}
        t0 = time.perf_counter()
        ours, losses = ours_pretrain(method, data, epochs, bs, args)
        secs = time.perf_counter() - t0
        if method == "dino":  # score the teacher, as DINO and lightly do; the student too
            row["ours-student"] = scorer("ours dino student", ours, secs, n_images / secs)
            ours = ours_teacher_backbone(Path(args.work_dir) / "ours-dino", scorer.device)
        row["ours"] = scorer(f"ours {method}", ours, secs, n_images / secs) | {"epoch_loss": losses}
        if not args.skip_lightly:
            t0 = time.perf_counter()
            model, rate, losses = lightly_pretrain(
                method, scorer.train_x, epochs, bs, scorer.device, args.seed
            )
            secs = time.perf_counter() - t0
            row["lightly"] = scorer(f"lightly {method}", model.export(), secs, rate)
            row["lightly"]["epoch_loss"] = losses
            if method == "dino":
                row["lightly-student"] = scorer("lightly dino student", model.backbone, secs, rate)
        results[method] = row
    return results | baselines(args, setting, scorer)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py")
    ap.add_argument("--download", action="store_true", help="fetch CIFAR-10 via torchvision")
    ap.add_argument("--setting", choices=list(SETTINGS), default="quick")
    ap.add_argument("--epochs", type=int, default=None, help="override the setting's epochs")
    ap.add_argument("--n-train", type=int, default=None, help="override the training subset")
    ap.add_argument("--batch-size", type=int, default=None, help="override the setting's batch")
    ap.add_argument("--probe-epochs", type=int, default=None, help="override the linear probe's")
    ap.add_argument("--n-test", type=int, default=None, help="score on a random test subset")
    ap.add_argument(
        "--methods", type=parse_methods, default=None,
        help=f"comma list from {','.join(METHODS)} (or 'all'): ours vs lightly per method",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-lightly", action="store_true")
    ap.add_argument("--skip-supervised", action="store_true")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--work-dir", default="cifar10_runs", help="run folders (checkpoints) go here")
    return ap.parse_args(argv)


def load_split(args, setting) -> tuple[tuple, list[str]]:
    """``(train_x, train_y, test_x, test_y)`` subsets (seeded) and the class names."""
    if args.download:
        import torchvision

        torchvision.datasets.CIFAR10(args.data_dir, train=True, download=True)
        torchvision.datasets.CIFAR10(args.data_dir, train=False, download=True)
    train_x, train_y, names = read_cifar10(args.data_dir, "train")
    test_x, test_y, _ = read_cifar10(args.data_dir, "test")
    rng = np.random.default_rng(args.seed)
    if setting["n_train"]:
        keep = np.sort(rng.permutation(len(train_x))[: setting["n_train"]])
        train_x, train_y = train_x[keep], train_y[keep]
    if args.n_test:
        keep = np.sort(np.random.default_rng(args.seed + 1).permutation(len(test_x))[: args.n_test])
        test_x, test_y = test_x[keep], test_y[keep]
    return (train_x, train_y, test_x, test_y), names


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setting = dict(SETTINGS[args.setting])
    for key in ("epochs", "n_train", "batch_size", "probe_epochs"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    device = resolve_device(args.device)
    split, names = load_split(args, setting)
    header = {
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else argv)]),
        "setting": args.setting,
        **setting,
        "n_test": len(split[2]),
        "device": str(device),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "deeplense_ssl": __version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_start": os.getloadavg(),
    }
    if args.methods:
        import lightly

        header |= {"methods": args.methods, "lightly": lightly.__version__}
        header |= {"recipes": {k: dataclasses.asdict(RECIPES[k]) for k in args.methods}}
    print(json.dumps(header, indent=1))
    data = ImageSet(split[0], split[1], names, [""] * len(split[0]))
    scorer = Scorer(split, names, device, setting["probe_epochs"], args.seed)
    t_all = time.perf_counter()
    run = run_methods if args.methods else run_simclr
    results = run(args, setting, data, scorer)
    header |= {"load_avg_end": os.getloadavg(), "wall_seconds": time.perf_counter() - t_all}
    finish(args, header, results)


def finish(args, header: dict, results: dict) -> None:
    """Print the published numbers and the speed ratio(s); write the JSON."""
    print("\nPublished (DOMAIN.md), for scale:")
    for k, v in PUBLISHED.items():
        print(f"  {v:5.1f}%  {k}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"header": header, "results": results, "published": PUBLISHED, "peak_rss_mb": peak_mb}
    if args.methods:
        out["differences"] = {k: DIFFERENCES[k] for k in ("all", *args.methods)}
        print_methods_table(results, args.methods)
    elif "lightly" in results and results["lightly"]["src_images_per_s"]:
        ratio = results["ours"]["src_images_per_s"] / results["lightly"]["src_images_per_s"]
        out["speed_ratio_ours_over_lightly"] = ratio
        print(f"\nSimCLR training speed, ours / lightly: {ratio:.2f}x")
    if args.out:
        write_text_atomic(args.out, json.dumps(out, indent=1))
        print(f"results -> {args.out}")
    rows = [r if "knn_top1" in r else r.get("ours", {}) for r in results.values()]
    rows += [r["lightly"] for r in results.values() if "lightly" in r and "knn_top1" not in r]
    assert all(math.isfinite(r["knn_top1"]) for r in rows if r)


def print_methods_table(results: dict, methods: Sequence[str]) -> None:
    """Markdown table: per method, ours vs lightly kNN / linear / seconds."""
    print(
        "\n| method | ours kNN | lightly kNN | ours linear | lightly linear | ours s | lightly s |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = [(m, results[m]["ours"], results[m].get("lightly", {})) for m in methods]
    if "dino" in methods:
        r = results["dino"]
        rows.append(("dino student", r["ours-student"], r.get("lightly-student", {})))
    for m, o, t in rows:

        def cell(r: dict, key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else "-"

        print(
            f"| {m} | {cell(o, 'knn_top1', '.1f')} | {cell(t, 'knn_top1', '.1f')} | "
            f"{cell(o, 'linear_top1', '.1f')} | {cell(t, 'linear_top1', '.1f')} | "
            f"{cell(o, 'train_seconds', '.0f')} | {cell(t, 'train_seconds', '.0f')} |"
        )
    r = results["random-init"]
    print(f"| random-init | {r['knn_top1']:.1f} | | {r['linear_top1']:.1f} | | | |")


if __name__ == "__main__":
    main()
