"""DINO: self-distillation with a momentum teacher, centring and sharpening, multi-crop.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (Alg. 1), on a
ResNet: the student (backbone + :class:`DINOHead`) matches, for every view, the centred and
sharpened softmax of a momentum teacher that sees only the two global views
(``losses.DINOLoss``: student temperature 0.1, teacher ``teacher_temperature`` (0.04), centre
momentum 0.9). The teacher's momentum follows a cosine schedule from ``ema_momentum``
(default 0.996, the paper's) to 1. Downstream tasks use the teacher's backbone, as the paper
does.

Multi-crop and lensing. The paper's local crops are small regions (5-40% of the image) zoomed
up to 96 px. A zoom changes the Einstein radius in pixels, a physical quantity that depends on
the lens mass, so here:

* the 2 global views are the ``augment`` preset (``lensing``: dihedral group, rotation, mild
  crops of 60-100% of the area, aspect within 0.9-1.1, flux scale, light blur and noise);
* the ``n_local_views`` local views are square windows of ``local_view_size`` pixels (default
  half the image side, rounded to even) cut at the NATIVE pixel scale: no zoom and no aspect
  change, so the ring keeps its radius in pixels and the student sees part of it; they also get
  the preset's dihedral element, rotation, flux, blur and noise. Scale changes are therefore
  not used for local views; the global views keep the preset's mild crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import DINOLoss
from ..optim import cosine_momentum
from ..transforms import ViewAugmenter
from .base import Method, MethodSettings, chunked, register
from .momentum import ema_update, frozen_copy

DINO_DEFAULT_MOMENTUM = 0.996
STUDENT_TEMPERATURE = 0.1
CENTER_MOMENTUM = 0.9


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear.

    Initialised as in the paper's code: the MLP's weights from a normal distribution with std
    0.02 (truncated at +-2), zero biases; the last layer PyTorch's default, gain fixed to 1.

    Args:
        in_dim: backbone feature width.
        hidden_dim: hidden width of the 3-layer MLP (paper 2048).
        bottleneck_dim: width before the last layer (paper 256).
        out_dim: ``K``, number of prototypes (paper 65536).

    Shapes:
        ``(batch, in_dim) -> (batch, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:  # the paper's init: N(0, 0.02) weights, zero biases
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        with torch.no_grad():  # the paper fixes the weight-norm gain g to 1
            self.last.parametrizations.weight.original0.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, h: Tensor) -> Tensor:
        return self.last(F.normalize(self.mlp(h), dim=-1))


def local_view_size(image_size: int, requested: int | None) -> int:
    """Side of the local views: ``requested``, or half the image side rounded to even."""
    if requested is not None:
        return int(requested)
    return max(2, 2 * round(image_size / 4))


@register
class DINO(Method):
    """DINO with multi-crop at the native pixel scale (see the module docstring)."""

    name = "dino"
    default_optimizer = "lars"
    supports_pairs = True
    steps_done: Tensor
    summary = (
        "self-distillation from a momentum teacher, centred and sharpened, 2 global + "
        "--n-local-views native-scale local views (DINO)"
    )

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.head = DINOHead(
            self.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.dino_out_dim
        )
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.n_local = int(cfg.n_local_views)
        self.local_transform = self.local_view_transform(
            in_chans, image_size, cfg.augment, local_view_size(image_size, cfg.local_view_size)
        )
        self.criterion = DINOLoss(
            cfg.dino_out_dim,
            student_temp=STUDENT_TEMPERATURE,
            teacher_temp=cfg.teacher_temperature,
            warmup_teacher_temp=cfg.teacher_temperature,
            center_momentum=CENTER_MOMENTUM,
        )
        self.momentum_base = (
            DINO_DEFAULT_MOMENTUM if cfg.ema_momentum is None else float(cfg.ema_momentum)
        )
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        if cfg.n_local_views < 0:
            raise ConfigError(f"n_local_views must be >= 0, got {cfg.n_local_views}.")
        if cfg.local_view_size is not None and cfg.local_view_size < 2:
            raise ConfigError(f"local_view_size must be >= 2 px, got {cfg.local_view_size}.")

    @staticmethod
    def local_view_transform(
        in_chans: int, image_size: int, augment: str, size: int
    ) -> ViewAugmenter:
        """Native-scale square windows of ``size`` px (no zoom, no aspect change)."""
        if size > image_size:
            raise ConfigError(f"local_view_size {size} exceeds the image size {image_size}.")
        area = (size / image_size) ** 2
        return ViewAugmenter(
            augment, in_chans, size, crop_scale=(area, area), crop_ratio=(1.0, 1.0)
        )

    def make_inputs(self, x: Tensor) -> tuple[tuple[Tensor, Tensor | None], None]:
        """``(globals (2B, C, S, S), locals (n_local * B, C, L, L) or None)``; with paired
        data the global views come one from each rendering, the local ones from the first."""
        globals_ = torch.cat(self.view_pair(x))
        first = x[:, 0] if x.ndim == 5 else x
        locals_ = (
            torch.cat(self.local_transform.views(first, self.n_local)) if self.n_local else None
        )
        return (globals_, locals_), None

    def export_backbone(self) -> nn.Module:
        """The teacher's backbone (DINO Sec. 3.1: the teacher performs better)."""
        return self.teacher_backbone

    def forward(self, inputs: tuple[Tensor, Tensor | None]) -> tuple[list[Tensor], list[Tensor]]:
        """``(student outputs of every view, teacher outputs of the 2 global views)``."""
        globals_, locals_ = inputs
        student = list(chunked(self._student, globals_, 2).chunk(2))
        if locals_ is not None:
            student += list(chunked(self._student, locals_, self.n_local).chunk(self.n_local))
        with torch.no_grad():
            teacher = chunked(lambda v: self.teacher_head(self.teacher_backbone(v)), globals_, 2)
        return student, list(teacher.chunk(2))

    def _student(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def loss(self, outputs: tuple[Sequence[Tensor], Sequence[Tensor]], aux: None) -> Tensor:
        student, teacher = outputs
        return self.criterion(student, teacher, int(self.steps_done))

    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher with the cosine momentum of step ``step - 1``."""
        tau = cosine_momentum(step - 1, total_steps, self.momentum_base)
        ema_update(self.teacher_backbone, self.backbone, tau)
        ema_update(self.teacher_head, self.head, tau)
        self.steps_done.fill_(step)
