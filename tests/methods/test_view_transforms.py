"""Each method's view transform keeps the labels or the invariance it is meant to teach."""

import pytest
import torch

from deeplense_ssl import transforms as T
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.methods import build_view_transform


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b=4, c=1, h=16, w=16, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g).to(dtype)


def test_contrastive_rotation_views_differ_only_by_rotation() -> None:
    aug = build_view_transform("contrastive-rotation", 1, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(32.0) - 15.5, indexing="ij")
    r = torch.sqrt(xx**2 + yy**2)
    ring = torch.exp(-((r - 8) ** 2) / 8.0).view(1, 1, 32, 32).expand(4, 1, 32, 32)
    # A rotationally symmetric image is unchanged (up to interpolation) ...
    out = aug(ring, generator=_gen(0))
    torch.testing.assert_close(out, ring, rtol=0, atol=0.05)
    # ... while an asymmetric one changes, and its radial profile (flux per annulus) does not.
    arc = ring * (xx > 3).float()
    out = aug(arc, generator=_gen(0))
    assert not torch.allclose(out, arc, atol=0.05)
    mask_inner = (r < 12).float()
    torch.testing.assert_close(
        (out * mask_inner).sum(dim=(1, 2, 3)),
        (arc * mask_inner).sum(dim=(1, 2, 3)),
        rtol=0.03,
        atol=0,
    )


def test_contrastive_blur_views_differ_only_by_blur_levels() -> None:
    levels = (0.0, 1.0, 2.0)
    aug = build_view_transform("contrastive-blur", 1, 16, blur_sigmas_px=levels, noise_std=0.0)
    x = _images(12, 1, 16, 16)
    out = aug(x, generator=_gen(0))
    candidates = [T.gaussian_blur(x, s) for s in levels]
    matched = [
        [torch.allclose(out[i], c[i], atol=1e-5) for c in candidates] for i in range(x.shape[0])
    ]
    assert all(sum(m) == 1 for m in matched)  # each view is exactly one blur level
    assert len({m.index(True) for m in matched}) == 3  # levels vary per sample
    noisy = build_view_transform("contrastive-blur", 1, 16, blur_sigmas_px=(0.0,), noise_std=0.1)
    residual = noisy(x, generator=_gen(0)) - x
    assert residual.std().item() == pytest.approx(0.1, rel=0.1)


def test_classic_pretext_transforms_do_not_corrupt_labels() -> None:
    x = _images(16, 1, 8, 8)
    rot = build_view_transform("rotation", 1, 8)(x, generator=_gen(0))
    same = (rot == x).flatten(1).all(1)
    assert (same | (rot == x.flip(-1)).flatten(1).all(1)).all()
    blur = build_view_transform("blur", 1, 8)(x, generator=_gen(0))
    # exact dihedral permutation: no smoothing that would fake a blur level
    torch.testing.assert_close(
        blur.flatten(1).sort(1).values, x.flatten(1).sort(1).values, rtol=0, atol=0
    )
    simclr = build_view_transform("simclr", 3, 8, augment="cifar")
    assert simclr.preset == "cifar"
    with pytest.raises(ConfigError):
        build_view_transform("no-such-method", 1, 8)
