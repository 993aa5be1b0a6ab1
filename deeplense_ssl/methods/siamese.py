"""Siamese methods without negatives: BYOL and SimSiam (a predictor on one branch).

* BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): the online network (backbone,
  projector, predictor) predicts the projection of the other view made by a momentum target
  network; loss ``2 - 2 cos`` symmetrised (``losses.symmetric_negative_cosine``, ``byol``).
  The target's momentum follows a cosine schedule from ``ema_momentum`` (default 0.99, as in
  lightly's examples for short runs; the paper's 0.996 is for 1000 ImageNet epochs) to 1.
* SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): no target
  network, a stop-gradient on the other branch's projection; loss ``-cos`` symmetrised.

Both use the ``augment`` preset for their two views and the projector sizes of the config
(``proj_hidden_dim``, ``proj_out_dim``, ``proj_layers``; the SimSiam paper uses 3 layers,
``--proj-layers 3``); SimSiam's projector also normalises its output (BatchNorm without
affine parameters, Sec. 4.4, as lightly's ``SimSiamProjectionHead``). The predictor is a
2-layer MLP, ``out -> hidden -> out`` for BYOL and a bottleneck ``out -> hidden / 4 -> out`` for
SimSiam (SimSiam Sec. 4.4: a 4x bottleneck).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..heads import ProjectionHead
from ..losses import NegativeCosineLoss
from ..optim import cosine_momentum
from .base import Method, MethodSettings, chunked, register
from .momentum import ema_update, frozen_copy

BYOL_DEFAULT_MOMENTUM = 0.99


class _Predictive(Method):
    """Two views; the online branch (backbone, projector, predictor) predicts a target."""

    supports_pairs = True

    loss_form = "simsiam"

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.projector = self.projection_head(cfg)
        hidden = self.predictor_hidden(cfg.proj_hidden_dim)
        self.predictor = ProjectionHead(cfg.proj_out_dim, hidden, cfg.proj_out_dim, 2)
        self.criterion = NegativeCosineLoss(self.loss_form)

    @staticmethod
    def predictor_hidden(proj_hidden_dim: int) -> int:
        """Width of the predictor's hidden layer."""
        return proj_hidden_dim

    def make_inputs(self, x: Tensor) -> tuple[Tensor, None]:
        """``(2 * B, C, S, S)``: two views stacked view-major."""
        return torch.cat(self.view_pair(x)), None

    def online(self, x: Tensor) -> Tensor:
        """``q(g(f(x)))``: the online prediction."""
        return self.predictor(self.projector(self.backbone(x)))

    def loss(self, outputs: tuple[Tensor, Tensor], aux: None) -> Tensor:
        p, z = outputs
        p1, p2 = p.float().chunk(2)
        z1, z2 = z.float().chunk(2)
        return self.criterion(p1, p2, z1, z2)


@register
class BYOL(_Predictive):
    """BYOL: online prediction of a momentum target's projection."""

    name = "byol"
    default_optimizer = "lars"
    default_base_lr = 1.0  # solo-learn's CIFAR recipe
    summary = "predict a momentum (EMA) target network's projection of the other view (BYOL)"
    loss_form = "byol"

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        super().build(cfg, in_chans, image_size)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum_base = (
            BYOL_DEFAULT_MOMENTUM if cfg.ema_momentum is None else float(cfg.ema_momentum)
        )

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(predictions, target projections)``, each ``(2 * B, out)`` view-major."""
        p = chunked(self.online, inputs, 2)
        with torch.no_grad():
            z = chunked(lambda v: self.target_projector(self.target_backbone(v)), inputs, 2)
        return p, z

    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the target with the cosine momentum of step ``step - 1``."""
        tau = cosine_momentum(step - 1, total_steps, self.momentum_base)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)


@register
class SimSiam(_Predictive):
    """SimSiam: predict the other view's projection through a stop-gradient."""

    name = "simsiam"
    default_base_lr = 0.5  # SGD (SimSiam Sec. 4: lr = 0.05 x B / 256 on ImageNet; 0.5 on CIFAR)
    summary = "predict the other view's projection through a stop-gradient (SimSiam)"

    @staticmethod
    def predictor_hidden(proj_hidden_dim: int) -> int:
        return max(1, proj_hidden_dim // 4)

    def projection_head(self, cfg: MethodSettings) -> nn.Module:
        """The config's projection MLP with a BatchNorm on its output (SimSiam Sec. 4.4)."""
        return ProjectionHead(
            self.feature_dim,
            cfg.proj_hidden_dim,
            cfg.proj_out_dim,
            num_layers=cfg.proj_layers,
            output_batch_norm=True,
        )

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(predictions, projections)``, each ``(2 * B, out)``; the loss detaches the
        projections (stop-gradient)."""
        z = chunked(lambda v: self.projector(self.backbone(v)), inputs, 2)
        return chunked(self.predictor, z, 2), z
