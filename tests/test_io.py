"""Tests of the readers and the atomic HDF5 writer: every format and every bad-input trap."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

from deeplense_ssl import io
from deeplense_ssl.errors import DataError
from deeplense_ssl.io import (
    HDF5_FORMAT,
    HDF5Writer,
    atomic_output,
    open_source,
    parse_label_pattern,
    read_hdf5,
    read_source,
    write_hdf5,
)


def _axion(path: Path, image: np.ndarray, mass: float) -> None:
    np.save(path, np.array([image, mass], dtype=object), allow_pickle=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def deeplense_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "model_i"
    for name in ("no_sub", "cdm"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            np.save(root / name / f"img{i}.npy", rng.poisson(5, (1, 16, 16)).astype(np.int64))
    return root


def test_deeplense_folder_classes_sorted_and_sources(deeplense_folder: Path):
    raw = read_source(deeplense_folder)
    assert raw.class_names == ["cdm", "no_sub"]
    assert raw.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert raw.sources[0] == "cdm/img0.npy" and raw.sources[-1] == "no_sub/img2.npy"
    assert raw.images[0].dtype == np.int64 and raw.images[0].shape == (1, 16, 16)
    expect = np.load(deeplense_folder / "no_sub" / "img1.npy")
    np.testing.assert_array_equal(raw.images[4], expect)


def test_pickled_axion_refused_by_default_and_read_with_opt_in(tmp_path: Path):
    root = tmp_path / "d"
    (root / "axion").mkdir(parents=True)
    (root / "cdm").mkdir()
    img = np.arange(256, dtype=np.float64).reshape(16, 16)
    _axion(root / "axion" / "a0.npy", img, 3.5e-23)
    np.save(root / "cdm" / "c0.npy", img)
    with pytest.raises(DataError) as err:
        read_source(root)
    msg = str(err.value)
    assert "axion/a0.npy" in msg and "allow_pickle=True" in msg and "--allow-pickle" in msg
    raw = read_source(root, allow_pickle=True)
    np.testing.assert_array_equal(raw.images[0], img)
    assert raw.params["axion_mass_ev"][0] == 3.5e-23
    assert np.isnan(raw.params["axion_mass_ev"][1])
    single = read_source(root / "axion" / "a0.npy", allow_pickle=True)
    assert single.params["axion_mass_ev"].tolist() == [3.5e-23]
    with pytest.raises(DataError, match="--allow-pickle"):
        open_source(root / "axion" / "a0.npy")


def test_truncated_and_corrupt_npy(tmp_path: Path):
    good = tmp_path / "stack.npy"
    np.save(good, np.ones((10, 8, 8), np.float32))
    data = good.read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match=r"trunc.npy: truncated .npy"):
        open_source(tmp_path / "trunc.npy")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match=r"junk.npy: not a readable .npy"):
        open_source(tmp_path / "junk.npy")
    folder = tmp_path / "f" / "cls"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", np.ones((8, 8)))
    (folder / "b.npy").write_bytes((folder / "a.npy").read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cls/b.npy: cannot read .npy.*re-create"):
        read_source(tmp_path / "f")


def test_stacked_npy_memmap_with_labels(tmp_path: Path):
    x = np.random.default_rng(0).normal(size=(6, 12, 12)).astype(">f8")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    with open_source(tmp_path / "x.npy", labels=tmp_path / "y.npy") as src:
        assert src.stacked and isinstance(src.array, np.memmap)
        block, _ = src.read_block(2, 5)
        np.testing.assert_array_equal(block, x[2:5])
        assert src.class_names == ["class_0", "class_1", "class_2"]
        assert src.sources[3] == "x.npy[3]"
    with pytest.raises(DataError, match=r"x.npy: 6 images but 4 labels"):
        open_source(tmp_path / "x.npy", labels=np.zeros(4, int))
    unlabelled = open_source(tmp_path / "x.npy")
    assert unlabelled.class_names == ["unlabelled"] and unlabelled.meta["labelled"] is False


def test_one_dimensional_array_is_rejected(tmp_path: Path):
    np.save(tmp_path / "v.npy", np.arange(5))
    with pytest.raises(DataError, match="stack of images"):
        open_source(tmp_path / "v.npy")


def test_npz_keys_and_ambiguity(tmp_path: Path):
    x = np.ones((4, 3, 10, 10), np.float32)
    np.savez(tmp_path / "a.npz", images=x, labels=np.array([0, 1, 1, 0]))
    raw = read_source(tmp_path / "a.npz")
    assert len(raw.images) == 4 and raw.labels.tolist() == [0, 1, 1, 0]
    np.savez(tmp_path / "b.npz", images=x, X=x)
    with pytest.raises(DataError, match=r"b.npz: ambiguous image datasets.*images_key"):
        open_source(tmp_path / "b.npz")
    assert len(open_source(tmp_path / "b.npz", images_key="X")) == 4
    np.savez(tmp_path / "c.npz", x=x, y=np.zeros(3))
    with pytest.raises(DataError, match=r"c.npz: 4 images but 3 labels"):
        open_source(tmp_path / "c.npz")
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match=r"d.npz: cannot read .npz"):
        open_source(tmp_path / "d.npz")


def test_generic_and_bad_hdf5(tmp_path: Path):
    x = np.arange(5 * 8 * 8, dtype=np.float64).reshape(5, 8, 8)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["grp/X"] = x
        f["y"] = np.array([1, 0, 1, 0, 1])
        f.attrs["class_names"] = ["lens", "nonlens"]
    raw = read_hdf5(tmp_path / "g.h5")
    np.testing.assert_array_equal(raw.images, x)
    assert raw.class_names == ["lens", "nonlens"] and raw.labels.tolist() == [1, 0, 1, 0, 1]
    with h5py.File(tmp_path / "s.h5", "w") as f:  # class names stored as label strings
        f["images"] = x
        f["labels"] = np.array([b"nonlens", b"lens", b"lens", b"nonlens", b"lens"])
    raw = read_hdf5(tmp_path / "s.h5")
    assert raw.class_names == ["lens", "nonlens"] and raw.labels.tolist() == [1, 0, 0, 1, 0]
    with h5py.File(tmp_path / "amb.h5", "w") as f:
        f["images"] = x
        f["data"] = x
    with pytest.raises(DataError, match=r"amb.h5: ambiguous image datasets"):
        open_source(tmp_path / "amb.h5")
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["stuff"] = x
    with pytest.raises(DataError, match=r"none.h5: no image dataset found.*'stuff'"):
        open_source(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(DataError, match=r"bad.h5: not a readable HDF5"):
        open_source(tmp_path / "bad.h5")


def test_fits_single_cube_folder_and_no_image(tmp_path: Path):
    img = np.arange(20 * 21, dtype=">f4").reshape(20, 21)
    fits.PrimaryHDU(img).writeto(tmp_path / "one.fits")
    raw = read_source(tmp_path / "one.fits")
    assert len(raw.images) == 1
    np.testing.assert_array_equal(raw.images[0], img)
    cube = np.stack([img, img + 1, img + 2])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube)]).writeto(tmp_path / "cube.fits")
    assert len(read_source(tmp_path / "cube.fits").images) == 3
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "tab.fits")
    with pytest.raises(DataError, match=r"tab.fits: FITS file has no image data"):
        open_source(tmp_path / "tab.fits")
    root = tmp_path / "ff"
    for name in ("lens", "nonlens"):
        (root / name).mkdir(parents=True)
        fits.PrimaryHDU(img).writeto(root / name / "a.fits")
    raw = read_source(root)
    assert raw.class_names == ["lens", "nonlens"] and raw.sources[1] == "nonlens/a.fits"
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 20)
    with pytest.raises(DataError, match=r"broken.fits: (not a readable FITS|FITS file has no)"):
        open_source(tmp_path / "broken.fits")


def test_flat_folder_labels_from_csv_and_patterns(tmp_path: Path):
    flat = tmp_path / "hst"
    flat.mkdir()
    for name in ("101_hst.npy", "nl_7_hst.npy", "102_hst.npy", "nl_8_hst.npy"):
        np.save(flat / name, np.zeros((334, 334)))
    rules = "non_lens=^nl_;lens=_hst"
    src = open_source(flat, label_pattern=rules)
    assert src.class_names == ["non_lens", "lens"]
    names = dict(zip(src.sources, src.labels.tolist(), strict=True))
    assert names == {"101_hst.npy": 1, "102_hst.npy": 1, "nl_7_hst.npy": 0, "nl_8_hst.npy": 0}
    src = open_source(flat, label_pattern=r"^(nl|\d+)_")
    assert src.class_names == sorted({"nl", "101", "102"})
    with pytest.raises(DataError, match=r"matches no rule"):
        open_source(flat, label_pattern="lens=^1")
    assert parse_label_pattern("a=x;b=y")[1][0] == "b"
    with pytest.raises(DataError, match="capture group"):
        parse_label_pattern("no_group_here")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,label\n101_hst.npy,lens\nnl_7_hst.npy,nonlens\n102_hst.npy,lens\nnl_8_hst.npy,nonlens\n"
    )
    src = open_source(flat, labels_csv=csv_path)
    assert src.class_names == ["lens", "nonlens"]
    assert dict(zip(src.sources, src.labels.tolist(), strict=True))["nl_8_hst.npy"] == 1
    csv_path.write_text("file,label\n101_hst.npy,lens\n")
    with pytest.raises(DataError, match=r"labels.csv: 102_hst.npy is not listed"):
        open_source(flat, labels_csv=csv_path)
    unl = open_source(flat)
    assert unl.class_names == ["unlabelled"] and len(unl) == 4


def test_empty_missing_and_nested_folders(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope: no such file"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty folder"):
        open_source(tmp_path / "empty")
    (tmp_path / "ct" / "train" / "no").mkdir(parents=True)
    np.save(tmp_path / "ct" / "train" / "no" / "a.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"ct: no image files here.*train"):
        open_source(tmp_path / "ct")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        open_source(tmp_path / "x.txt")
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    np.save(mixed / "a" / "1.npy", np.zeros((4, 4)))
    np.save(mixed / "loose.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match="loose image files"):
        open_source(mixed)


def test_write_hdf5_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 2, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0])
    out = write_hdf5(
        tmp_path / "o.h5",
        images,
        labels,
        ["a", "b", "c"],
        sources=[f"s{i}" for i in range(5)],
        nan_counts=np.array([0, 3, 0, 0, 1]),
        params={"einstein_radius_arcsec": np.linspace(1, 2, 5)},
        attrs={"provenance": {"seed": 3}},
    )
    raw = read_hdf5(out)
    np.testing.assert_array_equal(raw.images, images)
    assert raw.labels.tolist() == labels.tolist()
    assert raw.class_names == ["a", "b", "c"] and raw.sources[3] == "s3"
    np.testing.assert_allclose(raw.params["einstein_radius_arcsec"], np.linspace(1, 2, 5))
    assert raw.meta["nan_counts"].tolist() == [0, 3, 0, 0, 1]
    assert json.loads(raw.meta["provenance"]) == {"seed": 3}
    assert raw.meta["format"] == HDF5_FORMAT
    with h5py.File(out) as f:
        assert f["images"].chunks == (1, 2, 8, 8)
    assert _leftovers(tmp_path) == ["o.h5"]


def test_writer_failures_leave_nothing(tmp_path: Path):
    bad = np.zeros((2, 1, 4, 4), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN/inf"):
        write_hdf5(tmp_path / "n.h5", bad, np.array([0, 0]), ["a"])
    with pytest.raises(DataError, match="labels must lie"):
        write_hdf5(tmp_path / "n.h5", bad[:1], np.array([3]), ["a"])
    with pytest.raises(RuntimeError), HDF5Writer(tmp_path / "w.h5", 4, (1, 4, 4), ["a"]) as w:
        w.append(bad[:1], np.array([0]))
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "t.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert _leftovers(tmp_path) == []
    with HDF5Writer(tmp_path / "w.h5", 4, (1, 4, 4), ["a"], chunk_images=2) as w:
        w.append(bad[:1], np.array([0]), params={"m": np.array([1.5])})
    raw = read_hdf5(tmp_path / "w.h5")  # fewer images than announced: shrunk on close
    assert raw.images.shape == (1, 1, 4, 4) and raw.params["m"].tolist() == [1.5]
    assert (tmp_path / "w.h5").stat().st_mode & 0o044  # readable by others, like a normal file


# --- CIFAR-10, official pickled layout, read without executing code -------------------------


def _write_cifar_layout(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    names.append("truck")
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_vis": 3072}, fh, protocol=2)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, fh, protocol=2)
        expected[name] = (data, labels)
    return folder, expected, names


def test_read_cifar10_matches_the_pickled_arrays(tmp_path):
    folder, expected, names = _write_cifar_layout(tmp_path)
    x, y, class_names = io.read_cifar10(tmp_path, "train")
    assert class_names == names
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.float32
    first = expected["data_batch_1"][0][0]
    # channel-major RGB: the first 1024 values are the red plane, row by row
    np.testing.assert_allclose(x[0, 0].ravel(), first[:1024] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(x[0, 2].ravel(), first[2048:] / 255.0, rtol=0, atol=1e-7)
    assert y.tolist() == sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    xt, yt, _ = io.read_cifar10(folder, "test")
    assert len(xt) == 4 and yt.tolist() == expected["test_batch"][1]


def test_read_cifar10_refuses_code_in_the_pickle(tmp_path):
    folder, _, _ = _write_cifar_layout(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3.*refusing"):
        io.read_cifar10(tmp_path, "train")
    assert not marker.exists()


def test_read_cifar10_missing_batch_names_the_file(tmp_path):
    folder, _, _ = _write_cifar_layout(tmp_path)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5"):
        io.read_cifar10(tmp_path, "train")
