"""SimCLR and the DeepLense contrastive pretexts: NT-Xent between views of the same image.

=====================  ======================================================================
method                 views
=====================  ======================================================================
``simclr``             ``n_views`` augmented views (``augment`` preset: ``lensing``/``cifar``)
``contrastive-rotation`` views differ only by a random rotation (DeepLense rotation pretext)
``contrastive-blur``   views differ only by blur level and Gaussian noise (DeepLense blur)
=====================  ======================================================================

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations":
a projection head ``g`` (:class:`~deeplense_ssl.heads.ProjectionHead`) on the backbone
features and NT-Xent (:class:`~deeplense_ssl.losses.NTXentLoss`) on the projections, with
negatives gathered from every rank under DDP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import NTXentLoss
from ..transforms import ViewAugmenter
from .base import Method, MethodSettings, ViewOptions, chunked, register


class _Contrastive(Method):
    """NT-Xent between ``n_views`` views of each image; subclasses choose the views."""

    supports_pairs = True
    head: nn.Module

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.head = self.projection_head(cfg)
        self.criterion = NTXentLoss(cfg.temperature, gather_distributed=self.distributed)
        self.n_views = int(cfg.n_views)

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        if cfg.n_views < 2:
            raise ConfigError(f"n_views must be >= 2 for {cls.name}, got {cfg.n_views}.")
        if cfg.paired_data and cfg.n_views != 2:
            raise ConfigError(f"--paired-data gives 2 views; got n_views={cfg.n_views}.")

    def make_inputs(self, x: Tensor) -> tuple[Tensor, int]:
        """``(n_views * B, C, S, S)`` views stacked view-major (rows ``v*B..`` are view ``v``)."""
        if x.ndim == 5:
            return torch.cat(self.view_pair(x)), 2
        return torch.cat(self.transform.views(x, self.n_views)), self.n_views

    def project(self, x: Tensor) -> Tensor:
        """``g(f(x))``: backbone then projection head."""
        return self.head(self.backbone(x))

    def forward(self, inputs: Tensor) -> Tensor:
        return chunked(self.project, inputs, self.n_views)

    def loss(self, outputs: Tensor, aux: int) -> Tensor:
        return self.criterion(*outputs.float().chunk(aux))


@register
class SimCLR(_Contrastive):
    """SimCLR: NT-Xent between views of the ``augment`` preset."""

    name = "simclr"
    summary = (
        "NT-Xent between --n-views augmented views (lensing preset: dihedral group, rotation, "
        "mild crops, flux scale, light blur and noise; never clamps)"
    )


@register
class ContrastiveRotation(_Contrastive):
    """DeepLense rotation pretext in contrastive form."""

    name = "contrastive-rotation"
    summary = "NT-Xent between views that differ only by a random rotation (DeepLense form)"

    @classmethod
    def view_transform(cls, in_chans: int, image_size: int, views: ViewOptions) -> ViewAugmenter:
        """Each view is the image rotated by an independent angle uniform in [-180, 180)
        degrees (continuous, bilinear, zero fill): two views differ only by a rotation."""
        return ViewAugmenter("none", in_chans, image_size, rotation_degrees=(-180.0, 180.0))


@register
class ContrastiveBlur(_Contrastive):
    """DeepLense Gaussian-noise pretext in contrastive form."""

    name = "contrastive-blur"
    summary = "NT-Xent between views that differ only by Gaussian blur / noise (DeepLense form)"

    @classmethod
    def view_transform(cls, in_chans: int, image_size: int, views: ViewOptions) -> ViewAugmenter:
        """Each view is blurred with a sigma drawn from ``blur_sigmas_px`` (0 = none) and gets
        Gaussian noise of std ``noise_std`` (0: blur only); views differ only by blur and noise.

        Raises:
            ConfigError: negative ``noise_std``.
        """
        noise_std = views.noise_std
        if noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {noise_std}.")
        return ViewAugmenter(
            "none",
            in_chans,
            image_size,
            blur_levels_px=tuple(float(s) for s in views.blur_sigmas_px),
            noise_std=(float(noise_std), float(noise_std)) if noise_std > 0 else None,
        )
