"""Decorrelating methods: VICReg and Barlow Twins, designed against dimensional collapse.

* VICReg (Bardes, Ponce, LeCun 2022): invariance + variance hinge + covariance penalty on the
  expander outputs of two views (coefficients 25 / 25 / 1 of the paper,
  ``losses.vicreg_loss``).
* Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' projections
  driven to the identity (``lambda_offdiag = 5.1e-3`` of the paper,
  ``losses.barlow_twins_loss``).

Under DDP the variance, covariance and cross-correlation use the global batch (gathered with
gradients). Both use the ``augment`` preset for their two views and the projector sizes of the
config (``proj_hidden_dim``, ``proj_out_dim``, ``proj_layers``); the papers use 8192-wide
3-layer projectors, which a CPU cannot afford, so the defaults stay small.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import BarlowTwinsLoss, VICRegLoss
from .base import Method, MethodSettings, chunked, register


class _TwoViewProjection(Method):
    """Two views, backbone + projector, a loss on the two projections."""

    supports_pairs = True
    default_optimizer = "lars"  # plain SGD at lr 0.3 diverged (NaN within 10 steps) here
    default_base_lr = 0.3

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.projector = self.projection_head(cfg)
        self.criterion = self.make_criterion(self.distributed)

    def make_criterion(self, distributed: bool) -> nn.Module:
        """The loss module ``loss(z_a, z_b)``."""
        raise NotImplementedError

    def make_inputs(self, x: Tensor) -> tuple[Tensor, None]:
        """``(2 * B, C, S, S)``: two views stacked view-major."""
        return torch.cat(self.view_pair(x)), None

    def forward(self, inputs: Tensor) -> Tensor:
        return chunked(lambda v: self.projector(self.backbone(v)), inputs, 2)

    def loss(self, outputs: Tensor, aux: None) -> Tensor:
        return self.criterion(*outputs.float().chunk(2))


@register
class VICReg(_TwoViewProjection):
    """VICReg: variance-invariance-covariance regularisation."""

    name = "vicreg"
    summary = "invariance + variance + covariance terms on two views' projections (VICReg)"

    def make_criterion(self, distributed: bool) -> nn.Module:
        return VICRegLoss(gather_distributed=self.distributed)


@register
class BarlowTwins(_TwoViewProjection):
    """Barlow Twins: cross-correlation of the two views' projections towards the identity."""

    name = "barlow-twins"
    summary = "cross-correlation of two views' projections driven to the identity (Barlow Twins)"

    def make_criterion(self, distributed: bool) -> nn.Module:
        return BarlowTwinsLoss(gather_distributed=self.distributed)
