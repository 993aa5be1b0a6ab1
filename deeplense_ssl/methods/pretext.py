"""Classic pretext tasks as methods: predict the rotation or the blur level applied.

The pure batch maths (:func:`~deeplense_ssl.pretext.rotation_pretext`,
:func:`~deeplense_ssl.pretext.blur_pretext`) lives in ``deeplense_ssl/pretext.py``; here each
task gets its label-preserving augmentation, a linear head and cross entropy.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..heads import LinearHead
from ..pretext import blur_pretext, rotation_pretext
from ..transforms import ViewAugmenter
from .base import Method, MethodSettings, ViewOptions, register


class _Classification(Method):
    """Cross entropy on labels generated from the batch (subclasses make them)."""

    head: nn.Module

    def make_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` -> ``(inputs (M, C, H, W), targets (M,) int64)``."""
        raise NotImplementedError

    def make_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.make_batch(self.transform(x))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.backbone(inputs))

    def loss(self, outputs: Tensor, aux: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), aux)


@register
class RotationPrediction(_Classification):
    """RotNet (Gidaris et al. 2018): all four 0/90/180/270 rotations of each image, 4-way head."""

    name = "rotation"
    summary = "predict which of 0/90/180/270 degrees was applied (all four per image)"

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.head = LinearHead(self.feature_dim, 4)

    @classmethod
    def view_transform(cls, in_chans: int, image_size: int, views: ViewOptions) -> ViewAugmenter:
        """Left-right flips only: random rotations would corrupt the 0/90/180/270 labels."""
        return ViewAugmenter("none", in_chans, image_size, hflip_p=0.5)

    def make_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return rotation_pretext(x)


@register
class BlurPrediction(_Classification):
    """Blur-level prediction: each image blurred by one of K sigmas, K-way head."""

    name = "blur"
    summary = "predict which of K blur levels (--blur-sigmas-px) was applied"

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        self.sigmas = [float(s) for s in cfg.blur_sigmas_px]
        self.head = LinearHead(self.feature_dim, len(self.sigmas))

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        if len(cfg.blur_sigmas_px) < 2:
            raise ConfigError("blur pretext needs at least two blur_sigmas_px levels.")

    @classmethod
    def view_transform(cls, in_chans: int, image_size: int, views: ViewOptions) -> ViewAugmenter:
        """Dihedral elements only (exact, no interpolation smoothing): smoothing would corrupt
        the blur-level labels."""
        return ViewAugmenter("none", in_chans, image_size, dihedral=True)

    def make_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return blur_pretext(x, self.sigmas)
