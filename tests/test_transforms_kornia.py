"""The batched augmentation ops against kornia, an independent implementation of the same maths.

Our ops are written for per-sample parameters in one call (one sigma / angle per image, one
grouped convolution or ``grid_sample`` for the batch) and seeded per device; kornia is applied
here one image at a time with the same parameter, so the comparison also checks that no image's
result depends on the others in the batch.
"""

from __future__ import annotations

import math

import kornia
import pytest
import torch

from deeplense_ssl import transforms as T


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_gaussian_blur_matches_kornia_per_image_sigma() -> None:
    x = _randn(5, 2, 23, 19)
    sigma = torch.tensor([0.0, 0.4, 1.1, 1.9, 2.7])
    ours = T.gaussian_blur(x, sigma)
    torch.testing.assert_close(ours[0], x[0], rtol=0, atol=0)  # sigma 0 is the identity
    for i, s in enumerate(sigma.tolist()[1:], start=1):
        radius = math.ceil(3.0 * s)  # our truncation: ceil(truncate * sigma), truncate = 3
        ref = kornia.filters.gaussian_blur2d(
            x[i : i + 1], (2 * radius + 1, 2 * radius + 1), (s, s), border_type="reflect"
        )
        torch.testing.assert_close(ours[i], ref[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("angle", [-73.0, 12.5, 90.0, 161.0])
def test_rotation_warp_matches_kornia_rotate(angle: float) -> None:
    x = _randn(1, 3, 17, 17, seed=1)
    ours = T.affine_warp(x, T.rotation_matrix(torch.tensor([angle]), 17, 17))
    ref = kornia.geometry.transform.rotate(
        x, torch.tensor([angle]), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_rotation_sign_is_kornia_counter_clockwise() -> None:
    """A wrong sign would still pass a symmetric image: use an asymmetric one."""
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 3, 7:12] = 1.0
    ours = T.affine_warp(x, T.rotation_matrix(torch.tensor([30.0]), 15, 15))
    wrong = kornia.geometry.transform.rotate(x, torch.tensor([-30.0]), align_corners=False)
    assert (ours - wrong).abs().max() > 0.5


def test_colour_conversions_match_kornia() -> None:
    rgb = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    rgb[0, :, 0, 0] = 0.5  # grey pixel: chroma 0, hue defined as 0 by both
    ours = T.rgb_to_hsv(rgb)
    ref = kornia.color.rgb_to_hsv(rgb)  # hue in radians [0, 2 pi)
    torch.testing.assert_close(ours[:, 0] * 2 * math.pi, ref[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[:, 1:], ref[:, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(T.hsv_to_rgb(ours), kornia.color.hsv_to_rgb(ref), rtol=0, atol=1e-5)
    # Luma: torchvision's 0.2989 vs kornia's 0.299 for red, so agreement to 1e-4.
    torch.testing.assert_close(
        T.rgb_to_grayscale(rgb), kornia.color.rgb_to_grayscale(rgb), rtol=0, atol=1e-4
    )
