"""Batched augmentations: exactness against references, per-sample randomness, determinism."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from deeplense_ssl import transforms as T
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.methods import build_view_transform


def _images(b=4, c=1, h=16, w=16, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g).to(dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_image_batch(b=8, c=1, size=16) -> torch.Tensor:
    return _images(1, c, size, size, seed=42).expand(b, c, size, size).contiguous()


def _rgb(b=4, size=8, seed=0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=_gen(seed))


# Every random functional op with its keyword arguments (1-band friendly).
RANDOM_OPS = {
    "dihedral": (T.random_dihedral, {}),
    "hflip": (T.random_hflip, {"p": 0.5}),
    "rotation": (T.random_rotation, {"degrees": (-180, 180)}),
    "crop": (T.random_resized_crop, {"scale": (0.3, 1.0)}),
    "blur": (T.random_gaussian_blur, {"sigma_px": (0.5, 2.0)}),
    "noise": (lambda x, generator: T.gaussian_noise(x, 0.1, generator), {}),
    "poisson": (lambda x, generator: T.poisson_like_noise(x.abs(), 10.0, generator), {}),
    "flux": (T.random_flux_scale, {"scale_range": (0.5, 2.0)}),
    "contrast": (T.random_contrast, {"factor_range": (0.5, 1.5)}),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_ops_keep_shape_dtype_device(name, dtype) -> None:
    op, kwargs = RANDOM_OPS[name]
    x = _images(3, 2, 12, 12, dtype=dtype)
    out = op(x, generator=_gen(0), **kwargs)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_ops_draw_per_sample_params_and_are_seeded(name) -> None:
    op, kwargs = RANDOM_OPS[name]
    x = _same_image_batch(b=8)
    a = op(x, generator=_gen(1), **kwargs)
    b = op(x, generator=_gen(1), **kwargs)
    c = op(x, generator=_gen(2), **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # The same input image gives several different outputs within one batch.
    distinct = {tuple(v.flatten().tolist()) for v in a.round(decimals=5)}
    assert len(distinct) > 1


# ---------------------------------------------------------------------------- dihedral


def test_dihedral_group_elements_are_the_eight_rotations_and_reflections() -> None:
    x = _images(1, 2, 6, 6)
    reference = [torch.rot90(x, r, dims=(-2, -1)) for r in range(4)]
    reference += [torch.rot90(x.flip(-1), r, dims=(-2, -1)) for r in range(4)]
    outs = [T.dihedral(x, torch.tensor([k])) for k in range(8)]
    for out in outs:  # each element is one of the 8 reference images, exactly
        assert sum(torch.equal(out, ref) for ref in reference) == 1
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    torch.testing.assert_close(outs[0], x, rtol=0, atol=0)
    torch.testing.assert_close(outs[6], torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(outs[3], torch.rot90(x, 2, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(outs[5], torch.rot90(x, 3, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(outs[1], x.flip(-1), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(a=st.integers(0, 7), b=st.integers(0, 7), size=st.integers(1, 6))
def test_dihedral_is_a_group_action(a, b, size) -> None:
    """Closure and inverses: composing two elements is an element; each has an inverse."""
    x = torch.arange(float(2 * size * size)).view(1, 2, size, size)
    twice = T.dihedral(T.dihedral(x, torch.tensor([a])), torch.tensor([b]))
    assert any(torch.equal(twice, T.dihedral(x, torch.tensor([c]))) for c in range(8))
    back = [
        c
        for c in range(8)
        if torch.equal(T.dihedral(T.dihedral(x, torch.tensor([a])), torch.tensor([c])), x)
    ]
    assert back  # an inverse exists


def test_random_dihedral_is_exact_permutation_and_covers_group() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3).expand(64, 1, 3, 3)
    out = T.random_dihedral(x, generator=_gen(0))
    # Exact permutation of each image's pixels: the sorted values are unchanged.
    torch.testing.assert_close(out.flatten(1).sort(dim=1).values, x.flatten(1), rtol=0, atol=0)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # all 8 elements drawn


def test_dihedral_rejects_non_square() -> None:
    with pytest.raises(ValueError):
        T.dihedral(_images(1, 1, 4, 6), torch.tensor([1]))


@pytest.mark.parametrize("k", range(8))
def test_dihedral_matrix_matches_exact_op(k) -> None:
    """The fused affine path of ViewAugmenter reproduces the exact dihedral element."""
    x = _images(2, 1, 8, 8)
    kk = torch.tensor([k, k])
    warped = T.affine_warp(x, T._dihedral_matrix(kk))
    torch.testing.assert_close(warped, T.dihedral(x, kk), rtol=0, atol=1e-5)


def test_random_hflip_outputs_are_original_or_mirror() -> None:
    x = _images(16, 1, 5, 5)
    out = T.random_hflip(x, p=0.5, generator=_gen(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    torch.testing.assert_close(T.random_hflip(x, p=0.0), x, rtol=0, atol=0)


# ---------------------------------------------------------------------------- affine warps


@pytest.mark.parametrize(("angle", "k"), [(90.0, 1), (180.0, 2), (-90.0, 3), (270.0, 3)])
def test_rotation_by_multiples_of_90_matches_rot90(angle, k) -> None:
    x = _images(2, 2, 10, 10)
    theta = T.rotation_matrix(torch.full((2,), angle), 10, 10)
    torch.testing.assert_close(
        T.affine_warp(x, theta), torch.rot90(x, k, dims=(-2, -1)), rtol=0, atol=1e-4
    )
    # The public random op with a degenerate angle range takes the same path.
    torch.testing.assert_close(
        T.random_rotation(x, degrees=(angle, angle)),
        torch.rot90(x, k, dims=(-2, -1)),
        rtol=0,
        atol=1e-4,
    )


def test_rotation_of_non_square_image_by_180_is_double_flip() -> None:
    x = _images(1, 1, 6, 10)
    theta = T.rotation_matrix(torch.tensor([180.0]), 6, 10)
    torch.testing.assert_close(T.affine_warp(x, theta), x.flip(-1).flip(-2), rtol=0, atol=1e-4)


def test_rotation_is_counter_clockwise_for_a_point_source() -> None:
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 16] = 1.0  # right of the centre (row 10, col 10)
    out = T.affine_warp(x, T.rotation_matrix(torch.tensor([90.0]), 21, 21))
    assert out[0, 0].argmax().item() == 4 * 21 + 10  # now above the centre (row 4, col 10)


@pytest.mark.parametrize("angle", [30.0, -72.5, 135.0])
def test_arbitrary_rotation_matches_scipy_rotate(angle) -> None:
    """Bilinear rotation equals scipy.ndimage.rotate(order=1) wherever the rotated sample points
    stay inside the image (a disc of radius 10 px in a 24 px image); only the fill differs."""
    x = _images(1, 1, 24, 24, dtype=torch.float64)
    out = T.affine_warp(x, T.rotation_matrix(torch.tensor([angle]), 24, 24))[0, 0].numpy()
    ref = ndimage.rotate(x[0, 0].numpy(), angle, reshape=False, order=1, mode="constant")
    yy, xx = np.mgrid[0:24, 0:24] - 11.5
    disc = np.hypot(xx, yy) < 10
    np.testing.assert_allclose(out[disc], ref[disc], rtol=0, atol=1e-5)


def test_random_rotation_preserves_flux_of_a_central_source() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    img = torch.exp(-((xx - 15.5) ** 2 + (yy - 16.5) ** 2) / (2 * 2.5**2)).view(1, 1, 32, 32)
    out = T.random_rotation(img.expand(6, 1, 32, 32), generator=_gen(3))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), img.sum().expand(6), rtol=1e-3, atol=0)


def test_crop_matrix_matches_interpolate_of_quadrant() -> None:
    x = _images(1, 1, 16, 16)
    theta = T.crop_matrix(*(torch.tensor([v]) for v in (0.5, 0.5, -0.5, -0.5)))
    out = T.affine_warp(x, theta)
    ref = F.interpolate(x[..., :8, :8], size=(16, 16), mode="bilinear", align_corners=False)
    # Equal away from the quadrant's outer edge (where interpolate clamps, grid_sample sees the
    # neighbouring pixels of the full image).
    torch.testing.assert_close(out[..., 1:15, 1:15], ref[..., 1:15, 1:15], rtol=0, atol=1e-5)


def test_random_resized_crop_full_scale_is_identity_and_size_option() -> None:
    x = _images(3, 2, 12, 12)
    out = T.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    assert T.random_resized_crop(x, size=(8, 6)).shape == (3, 2, 8, 6)


def test_random_resized_crop_zooms_in() -> None:
    # A small crop of a linear ramp has a smaller value range than the whole image.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(8, 1, 32, 32).contiguous()
    out = T.random_resized_crop(ramp, scale=(0.1, 0.1), ratio=(1.0, 1.0), generator=_gen(0))
    ranges = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    assert (ranges < 0.5).all()


# ---------------------------------------------------------------------------- blur


def test_gaussian_blur_sigma_zero_is_identity() -> None:
    x = _images(3, 2, 12, 12)
    torch.testing.assert_close(T.gaussian_blur(x, 0.0), x, rtol=0, atol=0)
    # Inside a mixed batch the sigma-0 image is untouched too.
    out = T.gaussian_blur(x, torch.tensor([0.0, 1.5, 0.0]))
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], rtol=0, atol=1e-6)
    assert not torch.allclose(out[1], x[1])


@pytest.mark.parametrize("sigmas", [(1.0, 2.0), (0.5, 1.5)])
def test_gaussian_blur_matches_scipy_per_sample(sigmas) -> None:
    x = _images(2, 2, 24, 24, dtype=torch.float64)
    out = T.gaussian_blur(x, torch.tensor(sigmas, dtype=torch.float64), truncate=4.0)
    for i, s in enumerate(sigmas):
        # torch "reflect" padding is scipy's "mirror"; same kernel support as ours.
        radius = int(np.ceil(4.0 * s))
        ref = ndimage.gaussian_filter(
            x[i].numpy(), sigma=(0, s, s), mode="mirror", truncate=radius / s
        )
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=0, atol=1e-10)


def test_gaussian_blur_preserves_flux_away_from_borders() -> None:
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 14:18, 12:17] = torch.rand(2, 1, 4, 5, generator=_gen(0)) + 0.5
    x[:, :, 16, 16] = -0.7  # negative values are fine
    out = T.gaussian_blur(x, torch.tensor([1.0, 2.5]))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    assert (out.amax(dim=(1, 2, 3)) < x.amax(dim=(1, 2, 3))).all()  # it did smooth


def test_random_gaussian_blur_probability() -> None:
    x = _images(16, 1, 12, 12)
    out = T.random_gaussian_blur(x, sigma_px=(1.0, 2.0), p=0.5, generator=_gen(0))
    unchanged = (out == x).flatten(1).all(1)
    assert unchanged.any() and (~unchanged).any()


# ---------------------------------------------------------------------------- noise, flux


def test_gaussian_noise_per_sample_std() -> None:
    x = torch.full((3, 1, 64, 64), -2.0)  # negative values are kept, never clamped
    std = torch.tensor([0.0, 0.1, 0.5])
    out = T.gaussian_noise(x, std, generator=_gen(0))
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    measured = (out - x).flatten(1).std(dim=1)
    torch.testing.assert_close(measured[1:], std[1:], rtol=0.05, atol=0)
    assert (out - x).mean().abs() < 0.02


def test_poisson_like_noise_variance_follows_signal() -> None:
    x = torch.cat([torch.full((1, 1, 64, 64), 4.0), torch.full((1, 1, 64, 64), -1.0)])
    out = T.poisson_like_noise(x, counts_per_unit=100.0, generator=_gen(0))
    var = (out[0] - x[0]).var()
    assert var.item() == pytest.approx(4.0 / 100.0, rel=0.1)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=0)  # no shot noise on negative pixels


def test_flux_scale_and_contrast() -> None:
    x = _images(3, 2, 8, 8)
    f = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(T.flux_scale(x, f), x * f.view(3, 1, 1, 1))
    out = T.random_flux_scale(x.abs() + 0.1, scale_range=(0.8, 1.25), generator=_gen(0))
    ratio = out / (x.abs() + 0.1)
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.min(1).values, per_image.max(1).values)
    assert ((per_image[:, 0] >= 0.8 - 1e-6) & (per_image[:, 0] <= 1.25 + 1e-6)).all()
    c = T.contrast(x, torch.tensor([0.0, 1.0, 3.0]))
    torch.testing.assert_close(c.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(c[1], x[1])
    assert c[0].std() < 1e-6 and c[2].std() > 2.5 * x[2].std()


# ---------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    "op",
    [
        T.rgb_to_grayscale,
        lambda x: T.random_grayscale(x, p=1.0),
        lambda x: T.colour_jitter(x),
        lambda x: T.adjust_hue(x, torch.zeros(x.shape[0])),
    ],
)
def test_colour_ops_refuse_one_band(op) -> None:
    with pytest.raises(ValueError, match="3-band"):
        op(_images(2, 1, 8, 8))


def test_grayscale_matches_torchvision() -> None:
    x = _rgb()
    torch.testing.assert_close(T.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    gray = T.random_grayscale(x, p=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    torch.testing.assert_close(T.random_grayscale(x, p=0.0), x, rtol=0, atol=0)


def test_hsv_conversion_matches_colorsys_and_round_trips() -> None:
    x = _rgb(b=2, size=4)
    x[0, :, 0, 0] = 0.5  # a gray pixel (undefined hue)
    hsv = T.rgb_to_hsv(x)
    for b, i, j in [(0, 0, 0), (0, 1, 2), (1, 3, 3), (1, 2, 0)]:
        expected = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
        np.testing.assert_allclose(hsv[b, :, i, j].numpy(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(T.hsv_to_rgb(hsv), x, rtol=0, atol=1e-6)


def test_adjust_hue_matches_torchvision() -> None:
    x = _rgb(b=3)
    shifts = torch.tensor([-0.1, 0.05, 0.3])
    out = T.adjust_hue(x, shifts)
    for i, h in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], h), rtol=0, atol=1e-4)


def test_colour_jitter_brightness_only_and_probability() -> None:
    x = _rgb(b=16) * 0.5  # no clamping at 1.4 x 0.5
    out = T.colour_jitter(x, 0.4, 0.0, 0.0, 0.0, p=1.0, generator=_gen(0))
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio.min(1).values, ratio.max(1).values)
    assert ((ratio[:, 0] >= 0.6 - 1e-6) & (ratio[:, 0] <= 1.4 + 1e-6)).all()
    assert ratio[:, 0].std() > 0.05  # per-sample factors
    untouched = T.colour_jitter(x, p=0.0, generator=_gen(0))
    torch.testing.assert_close(untouched, x, rtol=0, atol=1e-5)
    full = T.colour_jitter(x, generator=_gen(0))
    assert full.min() >= 0 and full.max() <= 1


def test_colour_jitter_saturation_zero_gives_gray_and_contrast_keeps_mean() -> None:
    x = _rgb(b=2)
    out = T.colour_jitter(x, 0.0, 0.0, 1.0, 0.0, p=1.0, generator=_gen(5), clamp=False)
    # factor in [0, 2]: result is a blend of the image and its luma
    gray = T.rgb_to_grayscale(x)
    diff = out - gray
    base = x - gray
    ratio = (diff.flatten(1) / base.flatten(1)).median(dim=1).values
    torch.testing.assert_close(diff, base * ratio.view(-1, 1, 1, 1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- ViewAugmenter


@pytest.mark.parametrize("preset", sorted(T.PRESETS))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_view_augmenter_presets(preset, in_chans) -> None:
    aug = T.ViewAugmenter(preset, in_chans=in_chans, image_size=16)
    x = _images(4, in_chans, 16, 16)
    out = aug(x, generator=_gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    torch.testing.assert_close(aug(x, generator=_gen(0)), out, rtol=0, atol=0)
    if preset != "none":
        assert not torch.equal(aug(x, generator=_gen(1)), out)
    if preset == "cifar" and in_chans == 1:
        assert aug.params.colour_jitter is None and aug.params.grayscale_p == 0.0


def test_lensing_preset_keeps_negative_values_and_varies_per_sample() -> None:
    aug = T.ViewAugmenter("lensing", in_chans=1, image_size=16)
    x = _same_image_batch(b=8) - 3.0  # strongly negative image
    out = aug(x, generator=_gen(0))
    assert out.min() < -3.5  # not clamped to [0, 1]
    assert len({tuple(v.flatten().tolist()) for v in out.round(decimals=4)}) == 8


def test_view_augmenter_resizes_and_keeps_channels_last() -> None:
    aug = T.ViewAugmenter("none", in_chans=3, image_size=12)
    x = _images(2, 3, 24, 24).contiguous(memory_format=torch.channels_last)
    out = aug(x)
    assert out.shape == (2, 3, 12, 12)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_views_are_independent_and_batched() -> None:
    aug = T.ViewAugmenter("lensing", in_chans=1, image_size=16)
    x = _images(3, 1, 16, 16)
    views = aug.views(x, 4, generator=_gen(0))
    assert len(views) == 4 and all(v.shape == x.shape for v in views)
    assert not torch.equal(views[0], views[1])


def test_view_augmenter_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        T.ViewAugmenter("imagenet")
    with pytest.raises(ConfigError):
        T.ViewAugmenter("lensing", blurr_sigma=(0, 1))
    with pytest.raises(ConfigError):
        T.ViewAugmenter("lensing", crop_scale=(0.5, 2.0))
    with pytest.raises(ConfigError):
        T.ViewAugmenter("lensing", noise_p=1.5)
    with pytest.raises(ValueError):
        T.ViewAugmenter("lensing", in_chans=1)(_images(2, 3, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_view_augmenter_on_cuda_with_cpu_generator_never_synchronises() -> None:
    aug = T.ViewAugmenter("lensing", in_chans=1, image_size=16)
    blur = build_view_transform("contrastive-blur", 1, 16)
    x = _images(4, 1, 16, 16).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        a, b = aug(x, generator=_gen(0)), aug(x, generator=_gen(0))
        views = blur.views(x, 2, generator=_gen(1))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert a.device == x.device and views[0].device == x.device
    torch.testing.assert_close(a, b, rtol=0, atol=0)
