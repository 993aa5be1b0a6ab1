"""Tests of load_dataset, splits, label fractions, LensingDataset, convert and summarize.

Rendering summaries (text, data cards) is tested in tests/test_datacards.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from deeplense_ssl.datasets import (
    LensingDataset,
    convert_dataset,
    label_fraction_subset,
    load_dataset,
    make_splits,
    stratified_split,
    summarize,
)
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.io import read_hdf5, write_hdf5


def _mixed_folder(root: Path) -> dict[str, np.ndarray]:
    """A DeepLense-like folder with every per-file layout and dtype; returns (C,H,W) truths."""
    rng = np.random.default_rng(0)
    truth = {}
    layouts = [
        lambda a: a[0].astype(np.int64),  # (H, W) int64 counts
        lambda a: a.astype(">f4"),  # (1, H, W) big-endian
        lambda a: np.moveaxis(a, 0, -1).astype(np.float64),  # (H, W, 1)
        lambda a: a.astype(np.uint8),  # (1, H, W) uint8
    ]
    for k, name in enumerate(("no_sub", "cdm")):
        (root / name).mkdir(parents=True)
        for i, layout in enumerate(layouts):
            chw = rng.integers(0, 250, (1, 18, 18)).astype(np.float32)
            if k == 1 and i == 2:
                chw[0, 4, 4] = np.nan
            np.save(root / name / f"{i}.npy", layout(chw))
            truth[f"{name}/{i}.npy"] = chw
    return truth


def test_load_folder_mixed_layouts_dtypes_and_nan(tmp_path: Path):
    truth = _mixed_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"cdm/2.npy: 1 non-finite pixels"):
        load_dataset(tmp_path / "d")
    data = load_dataset(tmp_path / "d", nan_policy="zero", normalize="none")
    assert data.images.shape == (8, 1, 18, 18) and data.images.dtype == np.float32
    assert data.class_names == ["cdm", "no_sub"] and data.labels.dtype == np.int64
    for img, src in zip(data.images, data.sources, strict=True):
        np.testing.assert_array_equal(img, np.nan_to_num(truth[src], nan=0.0))
    assert (data.nan_report.pixels_touched, data.nan_report.images_touched) == (1, 1)
    assert data.meta["nan_counts"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    dropped = load_dataset(tmp_path / "d", nan_policy="drop", normalize="minmax")
    assert len(dropped) == 7 and "cdm/2.npy" not in dropped.sources
    assert dropped.nan_report.images_dropped == 1
    assert dropped.meta["source_index"].tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert dropped.images.min() == 0.0 and dropped.images.max() == 1.0


def test_mixed_shapes_need_image_size(tmp_path: Path):
    root = tmp_path / "d" / "lens"
    root.mkdir(parents=True)
    np.save(root / "a.npy", np.ones((3, 20, 20)))
    np.save(root / "b.npy", np.ones((3, 24, 23)))
    np.save(root / "c.npy", np.ones((12, 14, 3)))
    with pytest.raises(DataError, match=r"lens/b.npy: image shape \(3, 24, 23\).*--image-size"):
        load_dataset(tmp_path / "d", block_size=1)
    data = load_dataset(tmp_path / "d", image_size=16, normalize="none")
    assert data.images.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(data.images, 1.0, rtol=1e-6)
    np.save(root / "d.npy", np.ones((1, 20, 20)))
    with pytest.raises(DataError, match=r"d.npy.*same number of channels"):
        load_dataset(tmp_path / "d", image_size=16)


def test_axion_mass_kept_as_per_image_metadata(tmp_path: Path):
    root = tmp_path / "d"
    (root / "axion").mkdir(parents=True)
    (root / "no_sub").mkdir()
    for i, mass in enumerate((1e-23, 5e-23)):
        obj = np.array([np.full((10, 10), i + 1.0), mass], dtype=object)
        np.save(root / "axion" / f"{i}.npy", obj, allow_pickle=True)
    np.save(root / "no_sub" / "0.npy", np.zeros((10, 10)))
    with pytest.raises(DataError, match="allow_pickle"):
        load_dataset(root)
    data = load_dataset(root, allow_pickle=True, normalize="none")
    mass = data.meta["params"]["axion_mass_ev"]
    assert mass[:2].tolist() == [1e-23, 5e-23] and np.isnan(mass[2])


def test_zscore_dataset_is_fit_on_train_only(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (40, 1, 8, 8)).astype(np.float32)
    y = np.repeat([0, 1], 20)
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    data = load_dataset(tmp_path / "a.npz", normalize="zscore-dataset")
    assert data.normalization_pending
    with pytest.raises(ConfigError, match="fit_normalization"):
        LensingDataset(data)
    split = stratified_split(data.labels, 0.25, seed=1)
    stats = data.fit_normalization(split["train"])
    assert stats.mean[0] == pytest.approx(x[split["train"]].astype(np.float64).mean())
    np.testing.assert_allclose(data.images, (x - stats.mean[0]) / stats.std[0], atol=1e-6)
    again = load_dataset(tmp_path / "a.npz", normalize="zscore-dataset", norm_stats=stats.to_dict())
    np.testing.assert_allclose(again.images, data.images, rtol=1e-6)
    assert len(LensingDataset(again)) == 40


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    val=st.floats(0, 0.45),
    test=st.floats(0, 0.45),
    seed=st.integers(0, 1000),
)
def test_stratified_split_properties(counts, val, test, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    split = stratified_split(labels, val, test, seed=seed)
    allidx = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(allidx.tolist()) == list(range(len(labels)))  # disjoint and complete
    for c, n in enumerate(counts):
        n_test = (labels[split["test"]] == c).sum()
        n_val = (labels[split["val"]] == c).sum()
        assert (labels[split["train"]] == c).sum() >= 1
        assert abs(n_test - n * test) <= 1 or n_test == n - 1
        assert abs(n_val - n * val) <= 1 or n_val + n_test == n - 1
    again = stratified_split(labels, val, test, seed=seed)
    for key in split:
        np.testing.assert_array_equal(split[key], again[key])


def test_stratified_split_seed_and_bad_fractions():
    labels = np.repeat([0, 1, 2], 50)
    a = stratified_split(labels, 0.2, 0.2, seed=0)
    b = stratified_split(labels, 0.2, 0.2, seed=1)
    assert not np.array_equal(a["val"], b["val"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [90, 30, 30]
    with pytest.raises(ConfigError):
        stratified_split(labels, 0.6, 0.5)


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=4), seed=st.integers(0, 99))
def test_label_fraction_subsets_are_nested_and_keep_every_class(counts, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    indices = np.flatnonzero(np.arange(len(labels)) % 3 != 1)  # a "training split"
    prev: set[int] = set()
    for frac in (0.01, 0.1, 0.5, 1.0):
        sub = label_fraction_subset(indices, labels, frac, seed)
        assert set(sub) <= set(indices.tolist())
        assert prev <= set(sub.tolist())  # nested
        prev = set(sub.tolist())
        for c in np.unique(labels[indices]):
            n_c = (labels[indices] == c).sum()
            k = (labels[sub] == c).sum()
            assert k == max(1, int(np.floor(frac * n_c + 0.5)))
    np.testing.assert_array_equal(sub, np.sort(indices))  # fraction 1 keeps everything
    with pytest.raises(ConfigError):
        label_fraction_subset(indices, labels, 0.0, seed)


def test_lensing_dataset_with_dataloader(tmp_path: Path):
    x = np.random.default_rng(0).random((10, 2, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(10) % 2)
    data = load_dataset(tmp_path / "a.npz", normalize="none")
    ds = LensingDataset(data, [1, 3, 5])
    img, label = ds[1]
    assert isinstance(img, torch.Tensor) and img.shape == (2, 8, 8) and label == 1
    np.testing.assert_array_equal(img.numpy(), x[3])
    xb, yb = next(iter(DataLoader(ds, batch_size=3)))
    assert xb.shape == (3, 2, 8, 8) and yb.dtype == torch.int64
    assert ds.labels.tolist() == [1, 1, 1] and ds.class_names == ["class_0", "class_1"]


def test_convert_streams_in_blocks_and_matches_load(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 12, 12))
    x[7, 0, 0] = np.nan
    x[19, 3, 3] = np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(23) % 3)
    out, report = convert_dataset(
        tmp_path / "x.npy",
        tmp_path / "o.h5",
        nan_policy="drop",
        block_size=5,
        labels=tmp_path / "y.npy",
    )
    assert report.images_dropped == 2
    ref = load_dataset(
        tmp_path / "x.npy", nan_policy="drop", normalize="none", labels=tmp_path / "y.npy"
    )
    raw = read_hdf5(out)
    np.testing.assert_array_equal(raw.images, ref.images)
    np.testing.assert_array_equal(raw.labels, ref.labels)
    assert raw.sources == ref.sources and "x.npy[7]" not in raw.sources
    with h5py.File(out) as f:
        assert f.attrs["nan_policy"] == "drop" and "provenance" in f.attrs
    again = load_dataset(out, normalize="none")
    np.testing.assert_array_equal(again.images, ref.images)
    out2, _ = convert_dataset(tmp_path / "x.npy", tmp_path / "z.h5", nan_policy="zero")
    assert load_dataset(out2).meta["nan_counts"].sum() == 2  # counts found at conversion kept


def test_convert_failure_in_a_late_block_leaves_nothing(tmp_path: Path):
    x = np.zeros((12, 6, 6))
    x[10, 1, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"x.npy \[image 10\]"):
        convert_dataset(tmp_path / "x.npy", tmp_path / "out" / "o.h5", block_size=4)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ConfigError, match="training split"):
        convert_dataset(tmp_path / "x.npy", tmp_path / "out" / "o.h5", normalize="zscore-dataset")


def test_summarize_counts_raw_problems(tmp_path: Path):
    root = tmp_path / "d"
    (root / "lens").mkdir(parents=True)
    (root / "nonlens").mkdir()
    a = np.arange(100.0).reshape(10, 10)
    a[0, :3] = np.nan
    a[1, 0] = np.inf
    np.save(root / "lens" / "a.npy", a)
    np.save(root / "lens" / "b.npy", np.full((10, 10), 4.0))
    np.save(root / "nonlens" / "c.npy", np.arange(100, dtype=np.int64).reshape(1, 10, 10))
    s = summarize(root)
    assert s["counts_per_class"] == {"lens": 2, "nonlens": 1}
    assert (s["nan_pixels"], s["inf_pixels"], s["total_pixels"]) == (3, 1, 300)
    assert s["nan_fraction"] == pytest.approx(0.01)
    assert s["images_with_nonfinite"] == 1 and s["nonfinite_examples"] == ["lens/a.npy"]
    assert s["constant_images"] == 1 and s["constant_examples"] == ["lens/b.npy"]
    assert s["dtypes"] == {"float64": 2, "int64": 1}
    assert s["shapes"] == {"(10, 10)": 2, "(1, 10, 10)": 1}
    assert s["per_class"]["lens"]["min"] == 3.0 and s["per_class"]["lens"]["max"] == 99.0
    assert s["value_max"] == 99.0
    # the card drafted from this summary: tests/test_datacards.py


@pytest.mark.parametrize("policy", ["drop", "interpolate"])
def test_direct_hdf5_read_matches_in_memory_path(tmp_path: Path, policy: str):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 1, 6, 6)).astype(np.float32)
    x[[1, 5, 6], 0, 2, 2] = np.nan
    with h5py.File(tmp_path / "g.h5", "w") as f:  # float32 (N, C, H, W): read in place
        f["images"] = x
        f["labels"] = np.arange(11) % 2
    np.savez(tmp_path / "g.npz", images=x, labels=np.arange(11) % 2)
    a = load_dataset(tmp_path / "g.h5", nan_policy=policy, block_size=3)
    b = load_dataset(tmp_path / "g.npz", nan_policy=policy, block_size=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.nan_report == b.nan_report and np.isfinite(a.images).all()
    assert len(a) == (8 if policy == "drop" else 11)


@settings(max_examples=30, deadline=None)
@given(
    layout=st.sampled_from(["nhw", "nchw", "nhwc"]),
    dtype=st.sampled_from(["<f4", ">f4", "<f8", ">f8", "<i8", "|u1", "<i2"]),
    n=st.integers(1, 5),
    c=st.integers(1, 3),
    nan_at=st.lists(st.integers(0, 10_000), max_size=6),
    policy=st.sampled_from(["zero", "drop"]),
    seed=st.integers(0, 999),
)
def test_load_dataset_property_shapes_dtypes_nan(layout, dtype, n, c, nan_at, policy, seed):
    import tempfile

    rng = np.random.default_rng(seed)
    c = 1 if layout == "nhw" else c
    ref = rng.integers(0, 200, (n, c, 17, 18)).astype(np.float64)  # exact in every dtype
    if np.dtype(dtype).kind == "f":
        flat = ref.reshape(-1)
        for k in nan_at:
            flat[k % flat.size] = np.nan if k % 2 else np.inf
    stored = {"nhw": ref[:, 0], "nchw": ref, "nhwc": np.moveaxis(ref, 1, -1)}[layout]
    bad = ~np.isfinite(ref)
    per_image = bad.reshape(n, -1).sum(1)
    keep = np.flatnonzero(per_image == 0) if policy == "drop" else np.arange(n)
    expect = np.where(bad, 0.0, ref)[keep].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, stored.astype(dtype))
        if len(keep) == 0:
            with pytest.raises(DataError, match="all .* dropped"):
                load_dataset(path, nan_policy=policy, normalize="none")
            return
        data = load_dataset(path, nan_policy=policy, normalize="none")
    assert data.nan_report.pixels_touched == bad.sum()
    assert data.nan_report.images_touched == (per_image > 0).sum()
    np.testing.assert_array_equal(data.images, expect)
    assert data.images.dtype == np.float32 and data.images.shape == (len(keep), c, 17, 18)
    assert data.meta["nan_counts"].tolist() == per_image[keep].tolist()


def test_make_splits_few_labels_and_train_only_statistics(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, (60, 1, 6, 6)).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    data = load_dataset(tmp_path / "a.npz", normalize="zscore-dataset")
    parts = make_splits(data, val_fraction=0.2, test_fraction=0.2, label_fraction=0.25, seed=4)
    split = stratified_split(y, 0.2, 0.2, seed=4)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [9, 12, 12]  # 3 x round(12/4)
    assert set(parts["train"].indices) <= set(split["train"])
    np.testing.assert_array_equal(parts["test"].indices, split["test"])
    mean = x[split["train"]].astype(np.float64).mean()
    assert data.meta["norm_stats"]["mean"][0] == pytest.approx(mean)


def test_summary_of_hdf5_attrs_is_strict_json(tmp_path: Path):
    """Stored attributes come back as plain JSON values: numbers stay numbers, NaN is null."""
    path = tmp_path / "a.h5"
    write_hdf5(path, np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1]), ["a", "b"])
    with h5py.File(path, "a") as f:
        f.attrs["pixel_scale_arcsec"] = np.float64(0.101)
        f.attrs["n_sub"] = np.int64(25)
        f.attrs["zero_point"] = np.nan
        f.attrs["sizes"] = np.array([64, 64])
        f.attrs["recipe"] = json.dumps({"psf": "gaussian"})
    attrs = summarize(path)["attrs"]
    assert attrs["pixel_scale_arcsec"] == 0.101 and attrs["n_sub"] == 25
    assert attrs["zero_point"] is None and attrs["sizes"] == [64, 64]
    assert attrs["recipe"] == {"psf": "gaussian"}  # JSON strings are decoded
    json.dumps(attrs, allow_nan=False)


def test_summary_without_any_finite_pixel(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.full((2, 3, 3), np.nan))
    s = summarize(tmp_path / "x.npy")
    assert s["value_min"] is None and s["value_max"] is None and s["value_mean"] is None
    assert s["nan_pixels"] == 18 and s["constant_images"] == 2
    assert s["per_class"]["unlabelled"] == {"count": 2, "min": None, "max": None, "mean": None}
