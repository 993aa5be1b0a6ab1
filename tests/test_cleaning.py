"""Tests of the pure cleaning functions against slow loops, closed forms and astropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplense_ssl.cleaning import (
    NormStats,
    apply_nan_policy,
    center_crop,
    count_nonfinite,
    fit_normalization,
    fit_size,
    normalize_images,
    to_chw_float32,
    to_nchw_float32,
)
from deeplense_ssl.errors import ConfigError, DataError

DTYPES = ["<i8", "|u1", "<f8", ">f4", ">f8", "<i2", "<f2", ">i4"]
LAYOUTS = ["hw", "1hw", "chw", "hwc"]


def _layout(ref: np.ndarray, layout: str) -> np.ndarray:
    """ref is (C, H, W); return it stored in ``layout``."""
    if layout == "hw":
        return ref[0]
    if layout == "hwc":
        return np.moveaxis(ref, 0, -1)
    return ref


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    c=st.integers(1, 4),
    h=st.integers(17, 22),
    w=st.integers(17, 22),
    seed=st.integers(0, 2**16),
)
def test_to_chw_float32_layouts_and_dtypes(dtype, layout, c, h, w, seed):
    rng = np.random.default_rng(seed)
    if layout in ("hw", "1hw"):
        c = 1
    dt = np.dtype(dtype)
    if dt.kind == "f":
        ref = rng.normal(0, 100, (c, h, w)).astype(dt)
    else:
        info = np.iinfo(dt)
        ref = rng.integers(max(info.min, -30000), min(info.max, 30000), (c, h, w)).astype(dt)
    stored = _layout(ref, layout)
    out = to_chw_float32(stored)
    assert out.shape == (c, h, w)
    assert out.dtype == np.float32 and out.dtype.isnative
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref.astype(np.float64).astype(np.float32))
    torch.from_numpy(out)  # big-endian input would make this raise


def test_range_is_kept_for_counts_and_uint8():
    counts = np.array([[0, 400], [2**20, 7]], dtype=np.int64)
    assert to_chw_float32(counts).max() == 2**20
    u8 = np.array([[0, 255]], dtype=np.uint8)
    assert to_chw_float32(u8).tolist() == [[[0.0, 255.0]]]


def test_float64_overflow_is_an_error_not_inf():
    img = np.ones((4, 4)) * 1e300
    with pytest.raises(DataError, match="float32 range"):
        to_chw_float32(img, path="x.npy")


def test_channel_axis_rules():
    assert to_chw_float32(np.zeros((4, 4, 4))).shape == (4, 4, 4)  # tie: channel-first
    assert to_chw_float32(np.zeros((64, 64, 3))).shape == (3, 64, 64)
    assert to_chw_float32(np.zeros((5, 64, 64))).shape == (5, 64, 64)
    with pytest.raises(DataError, match="channel axis"):
        to_chw_float32(np.zeros((30, 40, 50)), path="cube.npy", index=3)
    with pytest.raises(DataError, match=r"cube.npy \[image 3\]"):
        to_chw_float32(np.zeros((2, 2, 2, 2)), path="cube.npy", index=3)
    with pytest.raises(DataError, match="non-numeric"):
        to_chw_float32(np.array([["a", "b"]]))


def test_to_nchw_stacks():
    x = np.arange(2 * 18 * 19 * 3, dtype=">f8").reshape(2, 18, 19, 3)
    out = to_nchw_float32(x)
    assert out.shape == (2, 3, 18, 19)
    np.testing.assert_array_equal(out[1, 2], x[1, :, :, 2].astype(np.float32))
    assert to_nchw_float32(np.zeros((5, 8, 8), np.int64)).shape == (5, 1, 8, 8)


# ----------------------------------------------------------------------------- NaN policies


def _slow_interpolate(plane: np.ndarray) -> np.ndarray:
    """Reference: repeatedly replace bad pixels that have finite 8-neighbours by their mean."""
    plane = plane.astype(np.float64).copy()
    bad = ~np.isfinite(plane)
    if bad.all():
        return np.zeros_like(plane)
    h, w = plane.shape
    while bad.any():
        new = plane.copy()
        newly = []
        for y in range(h):
            for x in range(w):
                if not bad[y, x]:
                    continue
                vals = [
                    plane[yy, xx]
                    for yy in range(y - 1, y + 2)
                    for xx in range(x - 1, x + 2)
                    if (yy, xx) != (y, x) and 0 <= yy < h and 0 <= xx < w and not bad[yy, xx]
                ]
                if vals:
                    new[y, x] = sum(vals) / len(vals)
                    newly.append((y, x))
        for y, x in newly:
            bad[y, x] = False
        plane = new
    return plane


nan_patterns = st.lists(st.sampled_from([0.0, 0.0, 0.0, np.nan, np.inf, -np.inf]), min_size=50)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 2),
    seed=st.integers(0, 2**16),
    pattern=nan_patterns,
    policy=st.sampled_from(["zero", "median", "interpolate", "drop"]),
)
def test_nan_policies_against_slow_reference(n, c, seed, pattern, policy):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, c, 5, 5)).astype(np.float32)
    flat = images.reshape(-1)
    mask = np.resize(np.array(pattern), flat.size)
    flat += mask.astype(np.float32)  # adds NaN/inf at the pattern, 0 elsewhere
    bad = ~np.isfinite(images)
    before = images.copy()
    out, kept, report = apply_nan_policy(images, policy)
    np.testing.assert_array_equal(images, before, err_msg="input must not be modified")
    per_image = bad.reshape(n, -1).sum(1)
    assert report.pixels_touched == int(bad.sum())
    assert report.images_touched == int((per_image > 0).sum())
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(count_nonfinite(images), per_image)
    if policy == "drop":
        np.testing.assert_array_equal(kept, np.flatnonzero(per_image == 0))
        assert report.images_dropped == int((per_image > 0).sum())
        np.testing.assert_array_equal(out, images[kept])
        return
    np.testing.assert_array_equal(kept, np.arange(n))
    np.testing.assert_array_equal(out[~bad], images[~bad])
    for i in range(n):
        for ch in range(c):
            plane, b = images[i, ch], bad[i, ch]
            if not b.any():
                continue
            if policy == "zero":
                expect = np.where(b, 0.0, plane)
            elif policy == "median":
                good = plane[~b]
                expect = np.where(b, np.median(good) if good.size else 0.0, plane)
            else:
                expect = _slow_interpolate(plane)
            np.testing.assert_allclose(out[i, ch], expect, rtol=1e-5, atol=1e-6)


def test_interpolate_matches_astropy_for_isolated_nan():
    from astropy.convolution import Box2DKernel, interpolate_replace_nans

    rng = np.random.default_rng(1)
    img = rng.normal(size=(9, 9))
    img[4, 4] = np.nan
    img[2, 6] = np.nan
    ref = interpolate_replace_nans(img, Box2DKernel(3))
    out, _, report = apply_nan_policy(img[None, None].astype(np.float32), "interpolate")
    np.testing.assert_allclose(out[0, 0], ref, rtol=1e-5)
    assert report.pixels_touched == 2


def test_raise_names_source_and_index():
    x = np.zeros((4, 1, 3, 3), np.float32)
    x[2, 0, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"stack.npy \[image 12\].*--nan-policy"):
        apply_nan_policy(x, "raise", path="stack.npy", start=10)
    with pytest.raises(DataError, match=r"^c/3.npy: "):
        apply_nan_policy(x, "raise", sources=["c/0.npy", "c/1.npy", "c/3.npy", "c/4.npy"])
    with pytest.raises(ConfigError):
        apply_nan_policy(x, "bogus")


def test_all_nan_channel_becomes_zero():
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    for policy in ("median", "interpolate", "zero"):
        out, _, _ = apply_nan_policy(x, policy)
        assert (out == 0).all()


# ----------------------------------------------------------------------------- size


def test_fit_size_crop_larger_and_resize_smaller():
    x = np.arange(2 * 30 * 31, dtype=np.float32).reshape(1, 2, 30, 31)
    out = fit_size(x, 20)
    np.testing.assert_array_equal(out, x[..., 5:25, 5:25])
    np.testing.assert_array_equal(center_crop(x, 20, 20), x[..., 5:25, 5:25])
    small = np.full((3, 1, 8, 8), 2.5, np.float32)
    up = fit_size(small, 16)
    assert up.shape == (3, 1, 16, 16)
    np.testing.assert_allclose(up, 2.5, rtol=1e-6)  # constant stays constant
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))[None, None]
    up = fit_size(ramp, 16)[0, 0]
    assert (np.diff(up[:, 1:-1], axis=1) > 0).all()  # monotone along x
    np.testing.assert_allclose(up.mean(), ramp.mean(), rtol=1e-5)
    mixed = np.ones((1, 1, 30, 10), np.float32)
    assert fit_size(mixed, 20).shape == (1, 1, 20, 20)
    assert fit_size(x, None) is x
    assert fit_size(x, 10, "resize").shape == (1, 2, 10, 10)
    with pytest.raises(DataError, match="smaller than image_size"):
        fit_size(small, 16, "crop", path="s.npy")


# ----------------------------------------------------------------------------- normalisation


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    constant=st.booleans(),
    method=st.sampled_from(["minmax", "zscore", "asinh"]),
)
def test_normalize_per_image(seed, constant, method):
    rng = np.random.default_rng(seed)
    x = rng.normal(5, 3, (3, 2, 6, 6)).astype(np.float32)
    if constant:
        x[1] = 7.0
    out = normalize_images(x, method)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    for i in range(3):
        img = x[i].astype(np.float64)
        lo, hi = img.min(), img.max()
        if hi == lo:
            assert (out[i] == 0).all()
            continue
        if method == "minmax":
            expect = (img - lo) / (hi - lo)
        elif method == "zscore":
            expect = (img - img.mean()) / img.std()
        else:
            expect = np.arcsinh((img - lo) / (hi - lo) / 0.1) / np.arcsinh(10.0)
        np.testing.assert_allclose(out[i], expect, rtol=1e-4, atol=1e-5)


def test_zscore_dataset_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(10, 2, (20, 2, 4, 4)).astype(np.float32)
    val = rng.normal(50, 9, (5, 2, 4, 4)).astype(np.float32)
    stats = fit_normalization(train)
    for ch in range(2):
        assert stats.mean[ch] == pytest.approx(train[:, ch].astype(np.float64).mean())
        assert stats.std[ch] == pytest.approx(train[:, ch].astype(np.float64).std())
    out = normalize_images(np.concatenate([train, val]), "zscore-dataset", stats)
    np.testing.assert_allclose(out[:20].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert out[20:].mean() > 10  # val is far from the training statistics, not re-centred
    again = NormStats.from_dict(stats.to_dict())
    np.testing.assert_allclose(normalize_images(val, "zscore-dataset", again), out[20:])
    with pytest.raises(ConfigError, match="training split"):
        normalize_images(val, "zscore-dataset")
    const = fit_normalization(np.ones((2, 1, 3, 3), np.float32))
    assert const.std[0] == 1.0


def test_fit_normalization_on_rows_fits_only_those_rows_in_blocks(monkeypatch):
    """``rows`` picks the training images; small blocks (3 images) give numpy's mean and std."""
    from deeplense_ssl import cleaning

    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (11, 2, 4, 4)).astype(np.float32)
    rows = np.array([0, 2, 3, 5, 7, 8, 10])
    images[np.setdiff1d(np.arange(11), rows)] += 100.0  # held-out images are far off
    whole = fit_normalization(images[rows])
    monkeypatch.setattr(cleaning, "STATS_BLOCK_BYTES", 3 * 8 * 2 * 4 * 4)
    blocked = fit_normalization(images, rows)
    subset = images[rows].astype(np.float64)
    np.testing.assert_allclose(blocked.mean, subset.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(blocked.std, subset.std(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(blocked.mean, whole.mean, rtol=1e-12)
    assert blocked.n_images == len(rows)
    with pytest.raises(DataError, match="at least one row"):
        fit_normalization(images, np.array([], dtype=np.int64))
