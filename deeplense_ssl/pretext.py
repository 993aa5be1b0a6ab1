"""Classic (non-contrastive) pretext tasks: pure functions from a batch to (inputs, targets).

* Rotation prediction (RotNet; Gidaris, Singh, Komodakis 2018, "Unsupervised Representation
  Learning by Predicting Image Rotations"): every image appears in all four rotations in the batch.
* Blur-level prediction: each image is blurred by one of K Gaussian sigmas and the network
  predicts which.

Note that lensing images are statistically rotation invariant, so RotNet's "upright" cue is
absent there; the pretext is provided to measure that, not because it is expected to work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .transforms import gaussian_blur, generator_for_device, sigma_levels


def rotation_pretext(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image, with the rotation index as target.

    Args:
        x: ``(batch, channels, size, size)`` square images.

    Returns:
        ``inputs`` of shape ``(4 * batch, channels, size, size)`` and ``targets`` ``(4 * batch,)``
        int64. Block ``k`` (rows ``k * batch`` to ``(k + 1) * batch - 1``) holds
        ``torch.rot90(x, k, dims=(-2, -1))``, i.e. the images rotated by ``k * 90`` degrees
        counter-clockwise as displayed with row 0 on top, and has target ``k``. Rotating an input
        back with ``torch.rot90(inp, -k, dims=(-2, -1))`` gives the original image.

    Raises:
        ValueError: non-square or non-4-d input.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotation_pretext needs (B, C, S, S) square images, got {tuple(x.shape)}."
        )
    inputs = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=0)
    targets = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return inputs, targets


def blur_pretext(
    x: Tensor, sigmas_px: Sequence[float], generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Blur each image by a random one of ``K`` Gaussian levels; the level index is the target.

    Args:
        x: ``(batch, channels, height, width)`` images.
        sigmas_px: the ``K >= 2`` Gaussian sigmas in pixels (0 = no blur), e.g. ``(0, 1, 2, 3)``.
        generator: optional generator for the level draws.

    Returns:
        ``inputs`` ``(batch, channels, height, width)`` (image ``i`` blurred with
        ``sigmas_px[targets[i]]`` by :func:`deeplense_ssl.transforms.gaussian_blur`) and
        ``targets`` ``(batch,)`` int64 in ``0..K-1``, uniform.

    Raises:
        ValueError: fewer than two levels or a negative sigma.
    """
    levels = [float(s) for s in sigmas_px]
    if len(levels) < 2 or min(levels) < 0:
        raise ValueError(f"blur_pretext needs >= 2 non-negative sigmas, got {levels}.")
    gen = generator_for_device(generator, x.device)
    targets = torch.randint(0, len(levels), (x.shape[0],), generator=gen, device=x.device)
    sigma = sigma_levels(targets, levels)
    return gaussian_blur(x, sigma, max_sigma_px=max(levels)), targets
