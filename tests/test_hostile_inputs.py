"""Hostile inputs and faults in the data layer (issue 15): every case is one clear error.

Corrupt or bomb-sized files, malformed files of our own formats, extreme values, a full or
read-only disk, signals and killed writers. Each case asserts the error type and that the
message names the file (and key); the disk-full cases mount a 2 MiB tmpfs where the tests run
as root and skip elsewhere; subprocess cases check the exit code (a crash would be 139).
"""

from __future__ import annotations

import errno
import gzip
import io as pyio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_mounts import mount_tmpfs, unmount

from deeplense_ssl import io
from deeplense_ssl.cleaning import (
    NAN_POLICIES,
    NORMALIZATIONS,
    NormStats,
    fit_size,
    normalize_images,
)
from deeplense_ssl.datasets import convert_dataset, load_dataset
from deeplense_ssl.errors import ConfigError, DataError, DeepLenseError, OutputError
from deeplense_ssl.io import (
    HDF5Writer,
    atomic_output,
    open_source,
    read_cifar10,
    read_hdf5,
    read_source,
    remove_stale_temporaries,
    require_disk_space,
    write_hdf5,
    write_text_atomic,
)

HUGE = (4294967296, 4294967296)  # 2**32 x 2**32: the product overflows int64


# ----------------------------------------------------------------------------- helpers


def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> Path:
    """An .npy file whose header declares ``shape`` and which holds no data."""
    buf = pyio.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    path.write_bytes(buf.getvalue())
    return path


def _fits_header_only(path: Path, naxis1: int, naxis2: int) -> Path:
    """A FITS file declaring a float32 NAXIS2 x NAXIS1 image with one block of data."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                  -32",
        "NAXIS   =                    2",
        f"NAXIS1  = {naxis1:>20}",
        f"NAXIS2  = {naxis2:>20}",
        "END",
    ]
    header = "".join(c.ljust(80) for c in cards).ljust(2880)
    path.write_bytes(header.encode() + b"\0" * 2880)
    return path


def _ours(path: Path, n: int = 4) -> Path:
    """A small valid file of the package's HDF5 layout (with a per-image parameter)."""
    images = np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)
    labels = np.arange(n) % 2
    return write_hdf5(path, images, labels, ["a", "b"], params={"m": np.arange(n, dtype=float)})


def _replace(path: Path, name: str, value: object) -> None:
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = value


def _run_main(args: list[str], capsys) -> tuple[int, str]:
    from deeplense_ssl_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def _one_clean_line(err: str) -> str:
    """The single message line of stderr (tqdm progress-bar redraws are not messages)."""
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _cli_code(args: list[str], patch: str = "") -> str:
    return f"{patch}\nfrom deeplense_ssl_cli.main import main\nmain({args!r})\n"


def _cli(args: list[str], patch: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter: a segmentation fault shows as exit code -11 / 139."""
    return subprocess.run(
        [sys.executable, "-c", _cli_code(args, patch)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MiB tmpfs (root only; skipped elsewhere)."""
    folder = tmp_path / "tiny"
    mount_tmpfs(folder, "size=2m")
    yield folder
    unmount(folder)


NO_PREFLIGHT = (
    "from deeplense_ssl import io, simulate\n"
    "io.require_disk_space = simulate.require_disk_space = lambda *a, **k: None\n"
)


# ----------------------------------------------------------------------------- runaway sizes


def test_npy_declaring_huge_shape_alone_is_refused_before_allocating(tmp_path: Path):
    path = _npy_header_only(tmp_path / "bomb.npy", HUGE)
    for call in (open_source, read_source, lambda p: load_dataset(p, normalize="none")):
        with pytest.raises(DataError, match=r"bomb.npy: truncated .npy: the header promises"):
            call(path)


def test_npy_declaring_huge_shape_in_a_class_folder_names_the_file(tmp_path: Path):
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    np.save(root / "a" / "fine.npy", np.ones((8, 8), np.float32))
    _npy_header_only(root / "a" / "x.npy", HUGE)
    with pytest.raises(DataError, match=r"a/x.npy: cannot read .npy, truncated"):
        read_source(root)
    with pytest.raises(DataError, match=r"a/x.npy: cannot read .npy, truncated"):
        load_dataset(root, normalize="none")


def test_npy_declaring_more_data_than_it_holds_by_one_byte(tmp_path: Path):
    path = tmp_path / "short.npy"
    np.save(path, np.ones((3, 4, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"short.npy: truncated .npy.*192 data bytes"):
        open_source(path)


@pytest.mark.parametrize("gz", [False, True])
def test_fits_declaring_a_huge_image_is_refused_before_allocating(tmp_path: Path, gz: bool):
    path = _fits_header_only(tmp_path / "bomb.fits", 10**6, 10**6)
    if gz:
        with gzip.open(tmp_path / "bomb.fits.gz", "wb") as fh:
            fh.write(path.read_bytes())
        path.unlink()
        path = tmp_path / "bomb.fits.gz"
    with pytest.raises(DataError, match=rf"{path.name}: .*truncated FITS image of shape"):
        read_source(path)
    root = tmp_path / "folder" / "lens"
    root.mkdir(parents=True)
    shutil.copy(path, root / path.name)
    with pytest.raises(DataError, match=rf"lens/{path.name}: .*truncated FITS"):
        load_dataset(tmp_path / "folder", normalize="none")


def test_fits_declaring_slightly_more_data_than_it_holds(tmp_path: Path):
    path = _fits_header_only(tmp_path / "short.fits", 100, 100)  # 40000 bytes promised, 2880
    with pytest.raises(DataError, match=r"short.fits: .*promises 40000 data bytes"):
        read_source(path)


def test_hdf5_with_a_huge_sparse_image_dataset_is_refused_by_memory(tmp_path: Path):
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:  # legal HDF5: nothing is stored, reads return zeros
        f.create_dataset("images", (2, 1, 10**6, 10**6), "f4", chunks=(1, 1, 1000, 1000))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"sparse.h5: one image of shape .*needs .* of memory"):
        open_source(path)


def test_npz_member_declaring_a_huge_shape_is_refused(tmp_path: Path):
    path = tmp_path / "bomb.npz"
    member = _npy_header_only(tmp_path / "images.npy", HUGE).read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", member)
    with pytest.raises(DataError, match=r"bomb.npz: truncated .npz member 'images'"):
        open_source(path)


def test_labels_far_beyond_any_class_count_are_refused(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones((2, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"labels must be class indices below"):
        open_source(tmp_path / "x.npy", labels=np.array([0, 10**12]))
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "a.npy", np.ones((4, 4)))
    (tmp_path / "l.csv").write_text("file,label\na.npy,999999999\n")
    with pytest.raises(DataError, match=r"l.csv: integer labels must be class indices below"):
        open_source(flat, labels_csv=tmp_path / "l.csv")


def test_fit_size_to_an_absurd_size_is_a_config_error_not_an_allocation():
    images = np.ones((2, 1, 8, 8), np.float32)
    with pytest.raises(ConfigError, match=r"image_size=1000000 needs .* of memory"):
        fit_size(images, 10**6)


def test_convert_to_an_absurd_image_size_leaves_nothing(tmp_path: Path, capsys):
    np.save(tmp_path / "x.npy", np.ones((3, 8, 8), np.float32))
    out = tmp_path / "out.h5"
    code, err = _run_main(
        ["convert", str(tmp_path / "x.npy"), "--out", str(out), "--image-size", "1000000"], capsys
    )
    assert code in (1, 2)  # 2 if the option's range refuses it first
    line = _one_clean_line(err)
    assert "1000000" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_writer_refuses_images_over_the_hdf5_chunk_limit(tmp_path: Path):
    with pytest.raises(DataError, match=r"4 GiB chunk limit"):
        HDF5Writer(tmp_path / "o.h5", 1, (1, 40000, 40000), ["a"]).__enter__()
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_free_space_before_creating_anything(tmp_path: Path):
    out = tmp_path / "sub" / "big.h5"
    with pytest.raises(OutputError, match=r"no space left on .*big.h5 needs about"):
        HDF5Writer(out, 10**12, (1, 64, 64), ["a"]).__enter__()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match=r"no space left on"):
        require_disk_space(out, 1 << 62)
    require_disk_space(out, 1)  # a byte is fine


# ----------------------------------------------------------------------------- simulate sizes


def test_simulate_requests_are_checked_before_any_work(tmp_path: Path):
    sim = pytest.importorskip("deeplense_ssl.simulate")
    from deeplense_ssl.config import SimulateConfig

    with pytest.raises(ConfigError, match=r"image_size must be an integer from 4 to 2048"):
        sim.check_request("model_ii", 1, image_size=10**6)
    with pytest.raises(ConfigError, match=r"seed must be an integer >= 0"):
        sim.check_request("model_ii", 1, seed=-1)
    with pytest.raises(ConfigError, match=r"n_per_class must be an integer"):
        sim.check_request("model_ii", 2.5)
    assert sim.check_request("model_i", 2) == (6, 150)
    pytest.importorskip("lenstronomy")
    with pytest.raises(ConfigError, match=r"simulating 3000000000 images .* of memory"):
        sim.simulate_arrays("model_ii", 10**9)
    out = tmp_path / "sim.h5"
    cfg = SimulateConfig(out=str(out), n_per_class=10**9)
    started = time.perf_counter()
    with pytest.raises(OutputError, match=r"no space left on .*sim.h5 needs about"):
        sim.simulate_dataset(cfg)
    assert time.perf_counter() - started < 30  # refused up front, nothing rendered
    assert list(tmp_path.iterdir()) == []


def test_simulate_cli_absurd_sizes_are_one_line(tmp_path: Path, capsys):
    pytest.importorskip("lenstronomy")
    out = tmp_path / "s.h5"
    for flag, value in (("--image-size", "1000000"), ("--n-per-class", "1000000000")):
        code, err = _run_main(["simulate", flag, value, "--out", str(out)], capsys)
        assert code in (1, 2), err
        _one_clean_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:image_size=12 px")
def test_simulate_streams_the_same_file_as_in_memory(tmp_path: Path):
    sim = pytest.importorskip("deeplense_ssl.simulate")
    pytest.importorskip("lenstronomy")
    from deeplense_ssl.config import SimulateConfig

    cfg = SimulateConfig(out=str(tmp_path / "s.h5"), model="model_iii", n_per_class=2)
    cfg.image_size = 12
    cfg.seed = 5
    raw = read_hdf5(sim.simulate_dataset(cfg))
    images, labels, params = sim.simulate_arrays("model_iii", 2, 5, image_size=12)
    np.testing.assert_array_equal(raw.images, images)
    assert raw.labels.tolist() == labels.tolist()
    for key, value in params.items():
        np.testing.assert_array_equal(raw.params[key], value)
    assert raw.sources[4] == "model_iii/cdm/4"


# ----------------------------------------------------------------------------- our formats


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("a, b", r"attribute 'class_names' is not JSON"),
        ("3", r"attribute 'class_names' must be a list of class names"),
        ('{"a": 1}', r"attribute 'class_names' must be a list"),
        ('["a", "a"]', r"attribute 'class_names' names a class twice"),
        ("[]", r"attribute 'class_names' must be a list"),
    ],
)
def test_hdf5_malformed_class_names(tmp_path: Path, value: str, pattern: str):
    path = _ours(tmp_path / "c.h5")
    with h5py.File(path, "a") as f:
        f.attrs["class_names"] = value
    with pytest.raises(DataError, match=rf"c.h5: {pattern}"):
        open_source(path)


@pytest.mark.parametrize(
    ("name", "value", "pattern"),
    [
        ("nan_counts", np.array([b"x", b"y", b"z", b"w"]), r"dataset 'nan_counts' has shape"),
        ("nan_counts", np.zeros(3, np.int64), r"dataset 'nan_counts' has shape \(3,\)"),
        ("nan_counts", np.array([0, -1, 0, 0]), r"dataset 'nan_counts' holds negative counts"),
        ("params/m", np.array([b"x", b"y", b"z", b"w"]), r"dataset 'params/m' has shape"),
        ("params/m", np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]), r"dataset 'params/m'"),
        ("params/m", np.zeros(2), r"dataset 'params/m' has shape \(2,\)"),
        ("params/m", 3.0, r"dataset 'params/m' has shape \(\)"),
        ("sources", np.arange(4), r"dataset 'sources' has shape \(4,\) and dtype int64"),
        ("labels", np.zeros(7, np.int64), r"dataset 'labels' has shape \(7,\) for 4 images"),
        ("images", 3.0, r"dataset 'images' has shape \(\)"),
        ("images", np.array([[b"a"] * 4] * 4), r"dataset 'images' has non-numeric dtype"),
    ],
)
def test_hdf5_malformed_datasets_name_file_and_key(tmp_path, name, value, pattern):
    path = _ours(tmp_path / "d.h5")
    _replace(path, name, value)
    with pytest.raises(DataError, match=rf"d.h5: {pattern}"):
        load_dataset(path, normalize="none")


def test_hdf5_unreadable_extra_attribute_is_skipped_not_fatal(tmp_path: Path):
    path = _ours(tmp_path / "e.h5")
    with h5py.File(path, "a") as f:
        f.attrs["format"] = np.array([1, 2])  # not a string: then it is not "ours"
        f.attrs.create("empty", h5py.Empty("f4"))
    data = load_dataset(path, normalize="none")
    assert data.class_names == ["a", "b"] and len(data) == 4


def test_corrupt_npy_header_alone_and_in_a_folder(tmp_path: Path):
    good = pyio.BytesIO()
    np.save(good, np.ones((4, 4), np.float32))
    bad = good.getvalue().replace(b"'shape': (4, 4)", b"'shape': (4, 4((")
    (tmp_path / "bad.npy").write_bytes(bad)
    with pytest.raises(DataError, match=r"bad.npy: not a readable .npy file"):
        open_source(tmp_path / "bad.npy")
    (tmp_path / "f" / "c").mkdir(parents=True)
    (tmp_path / "f" / "c" / "bad.npy").write_bytes(bad)
    with pytest.raises(DataError, match=r"c/bad.npy: not a readable .npy file"):
        load_dataset(tmp_path / "f", normalize="none")


def test_npy_with_a_structured_dtype_is_refused(tmp_path: Path):
    np.save(tmp_path / "s.npy", np.zeros((2, 4, 4), dtype=[("a", "f4"), ("b", "f4")]))
    with pytest.raises(DataError, match=r"s.npy: holds a structured array"):
        open_source(tmp_path / "s.npy")
    (tmp_path / "f" / "c").mkdir(parents=True)
    np.save(tmp_path / "f" / "c" / "s.npy", np.zeros((4, 4), dtype=[("re", "f4"), ("im", "f4")]))
    with pytest.raises(DataError, match=r"c/s.npy: holds a structured array"):
        read_source(tmp_path / "f")


def test_npz_that_is_really_an_npy_or_holds_junk(tmp_path: Path):
    np.save(tmp_path / "a.npy", np.ones((2, 4, 4)))
    shutil.copy(tmp_path / "a.npy", tmp_path / "a.npz")
    with pytest.raises(DataError, match=r"a.npz: is a .npy file, not an .npz archive"):
        open_source(tmp_path / "a.npz")
    with zipfile.ZipFile(tmp_path / "j.npz", "w") as zf:
        zf.writestr("images", b"plain text, not an array")
    with pytest.raises(DataError, match=r"j.npz: member 'images' is not a readable .npy"):
        open_source(tmp_path / "j.npz")
    np.savez(tmp_path / "c.npz", images=np.ones((2, 4, 4)), class_names=np.array("one"))
    with pytest.raises(DataError, match=r"c.npz: member 'class_names' must be a list"):
        open_source(tmp_path / "c.npz")


def test_npz_with_corrupt_compressed_data(tmp_path: Path):
    path = tmp_path / "z.npz"
    np.savez_compressed(path, images=np.random.default_rng(0).normal(size=(8, 16, 16)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"z.npz: .*corrupt"):
        read_source(path)


def test_cifar_meta_without_label_names(tmp_path: Path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as fh:
            data = np.zeros((2, 3072), np.uint8)
            pickle.dump({b"data": data, b"labels": [0, 1]}, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"num_vis": 3072}, fh, protocol=2)
    with pytest.raises(DataError, match=r"batches.meta: CIFAR-10 batches.meta has no list"):
        read_cifar10(tmp_path)
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 42]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1: CIFAR-10 labels must lie in 0..9"):
        read_cifar10(tmp_path)


# ----------------------------------------------------------------------------- label CSV


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    folder = tmp_path / "flat"
    folder.mkdir()
    for name in ("a.npy", "b.npy"):
        np.save(folder / name, np.ones((4, 4), np.float32))
    return folder


def test_csv_conflicting_duplicate_rows_are_an_error(flat: Path, tmp_path: Path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("file,label\na.npy,lens\nb.npy,lens\nsub/a.npy,nonlens\n")
    with pytest.raises(
        DataError, match=r"l.csv: a.npy has two different labels, 'lens' \(line 2\)"
    ):
        open_source(flat, labels_csv=csv_path)
    csv_path.write_text("file,label\na.npy,lens\nb.npy,nonlens\na.npy,lens\n")  # same: fine
    assert open_source(flat, labels_csv=csv_path).labels.tolist() == [0, 1]


@pytest.mark.parametrize("row", ["b.npy,", "b.npy", "b.npy,   ", ",lens"])
def test_csv_row_without_a_label_or_file_is_an_error(flat: Path, tmp_path: Path, row: str):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text(f"file,label\na.npy,lens\n{row}\n")
    with pytest.raises(DataError, match=r"l.csv: line 3 has no (label|file name)"):
        open_source(flat, labels_csv=csv_path)


def test_csv_with_an_excel_byte_order_mark_is_accepted(flat: Path, tmp_path: Path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_bytes("file,label\r\na.npy,lens\r\nb.npy,nonlens\r\n".encode("utf-8-sig"))
    src = open_source(flat, labels_csv=csv_path)
    assert src.class_names == ["lens", "nonlens"] and src.labels.tolist() == [0, 1]


def test_csv_not_utf8_is_one_clear_error(flat: Path, tmp_path: Path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_bytes("file,label\na.npy,lentille\xe9\nb.npy,x\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l.csv: cannot read labels CSV"):
        open_source(flat, labels_csv=csv_path)


# ----------------------------------------------------------------------------- extreme values


def _extreme(seed: int = 0) -> np.ndarray:
    """Finite float32 images spanning almost the whole float32 range (+-3e38)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(3, 2, 8, 8)) * 3.0e38
    x[1] = rng.uniform(1e37, 3.3e38, size=(2, 8, 8))  # all large and positive
    return x.astype(np.float32)


@pytest.mark.parametrize("method", ["minmax", "zscore", "asinh"])
def test_normalisation_of_extreme_values_is_finite_and_exact(method: str):
    x = _extreme()
    out = normalize_images(x, method)
    assert np.isfinite(out).all()
    ref64 = x.astype(np.float64)  # reference: float64 arithmetic cannot overflow here
    axes = (1, 2, 3)
    if method == "zscore":
        mean, std = ref64.mean(axis=axes, keepdims=True), ref64.std(axis=axes, keepdims=True)
        np.testing.assert_allclose(out, (ref64 - mean) / std, atol=1e-5)
    else:
        lo, hi = ref64.min(axis=axes, keepdims=True), ref64.max(axis=axes, keepdims=True)
        ref = (ref64 - lo) / (hi - lo)
        if method == "asinh":
            ref = np.arcsinh(ref / 0.1) / np.arcsinh(1 / 0.1)
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_ordinary_images_are_not_touched_by_the_extreme_value_path():
    x = np.random.default_rng(1).normal(size=(4, 1, 8, 8)).astype(np.float32) * 1e3
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_array_equal(normalize_images(x, "minmax"), (x - lo) / (hi - lo))


def test_zscore_dataset_overflow_is_reported_without_nan_policy_advice():
    x = _extreme()
    stats = NormStats(mean=np.zeros(2), std=np.full(2, 1e-3))  # z = 3e41: beyond float32
    with pytest.raises(DataError, match=r"x.h5 \[image 5\]: normalize='zscore-dataset' maps") as e:
        normalize_images(x, "zscore-dataset", stats, path="x.h5", start=5)
    assert "nan" not in str(e.value).lower()
    big = NormStats(mean=np.full(2, 1e38), std=np.full(2, 1e38))
    out = normalize_images(x, "zscore-dataset", big)  # x - mean alone would overflow
    np.testing.assert_allclose(out, (x.astype(np.float64) - 1e38) / 1e38, atol=1e-5)


def test_normalising_nan_input_points_to_the_nan_policy():
    x = np.ones((2, 1, 4, 4), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"\[image 1\]: image holds NaN/inf.*nan_policy"):
        normalize_images(x, "minmax")


def test_load_extreme_values_gives_finite_images(tmp_path: Path):
    np.save(tmp_path / "x.npy", _extreme()[:, :1])
    for method in ("minmax", "zscore", "asinh"):
        data = load_dataset(tmp_path / "x.npy", normalize=method)
        assert np.isfinite(data.images).all(), method


def _overflowing(n: int = 6) -> np.ndarray:
    """Ordinary images except image 4, which ``zscore-dataset`` with std 1e-30 overflows."""
    x = np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[4] *= 1e10
    return x


TINY_STD = {"method": "zscore-dataset", "mean": [0.0], "std": [1e-30], "n_images": 1}


def test_zscore_dataset_overflow_while_loading_names_the_source_image(tmp_path: Path):
    x = _overflowing()
    x[1, 0, 0, 0] = np.nan  # dropped: image 4 of the file is image 3 of the kept block
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"x\.npy \[image 4\]: normalize='zscore-dataset' maps"):
        load_dataset(
            tmp_path / "x.npy", nan_policy="drop", normalize="zscore-dataset", norm_stats=TINY_STD
        )
    folder = tmp_path / "cls" / "a"
    folder.mkdir(parents=True)
    for i, image in enumerate(_overflowing()):
        np.save(folder / f"{i}.npy", image)
    with pytest.raises(DataError, match=r"cls/a/4\.npy: normalize='zscore-dataset' maps"):
        load_dataset(tmp_path / "cls", normalize="zscore-dataset", norm_stats=TINY_STD)


def test_zscore_dataset_fitted_later_names_the_source_image(tmp_path: Path):
    x = _overflowing()
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    data = load_dataset(tmp_path / "x.npy", nan_policy="drop", normalize="zscore-dataset")
    with pytest.raises(DataError, match=r"x\.npy \[image 4\]: normalize='zscore-dataset' maps"):
        data.apply_normalization(NormStats.from_dict(TINY_STD))


def test_policy_and_normalisation_names_are_defined_in_cleaning():
    assert NAN_POLICIES == ("raise", "zero", "median", "interpolate", "drop")
    assert NORMALIZATIONS == ("none", "minmax", "zscore", "zscore-dataset", "asinh")


# ----------------------------------------------------------------------------- atomic writes


def test_enospc_inside_the_block_names_the_target_not_the_temporary(tmp_path: Path):
    target = tmp_path / "metrics.json"
    with pytest.raises(OutputError) as info, atomic_output(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    message = str(info.value)
    assert message.startswith(f"no space left on {tmp_path}: cannot write {target}")
    assert ".tmp" not in message and info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError) and isinstance(info.value, DeepLenseError)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_inside_the_block_are_kept(tmp_path: Path):
    with pytest.raises(FileNotFoundError), atomic_output(tmp_path / "t.txt"):
        raise FileNotFoundError(errno.ENOENT, "No such file", "/elsewhere/input.npy")
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "t.txt"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_names_the_target(read_only_folder: Path):
    target = read_only_folder / "report.html"
    with pytest.raises(OutputError) as info:
        write_text_atomic(target, "<html></html>")
    message = str(info.value)
    assert f"cannot write {target}" in message and ".tmp" not in message
    assert "read-only or not writable" in message
    with pytest.raises(OutputError, match=r"cannot write .*ro/data.h5"):
        write_hdf5(read_only_folder / "data.h5", np.zeros((1, 1, 4, 4)), np.zeros(1), ["a"])


def test_full_disk_in_text_and_library_writes(tiny_disk: Path):
    filler = tiny_disk / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
    target = tiny_disk / "config.json"
    with pytest.raises(OutputError, match=rf"no space left on {tiny_disk}: cannot write {target}"):
        write_text_atomic(target, "x" * 200_000)

    def torch_like_save(path: Path) -> None:  # torch.save reports ENOSPC without an errno
        try:
            path.write_bytes(b"\0" * 200_000)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64") from None

    with pytest.raises(OutputError, match=r"no space left on .*RuntimeError: \[enforce fail"):
        with atomic_output(tiny_disk / "checkpoint.pt") as tmp:
            torch_like_save(tmp)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]


# ----------------------------------------------------------------------------- full disk, CLI


def _big_input(tmp_path: Path, n: int = 300) -> Path:
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).random((n, 1, 64, 64), dtype=np.float32))  # 4.9 MB
    return path


@pytest.mark.parametrize("patch", ["", NO_PREFLIGHT], ids=["preflight", "mid-write"])
def test_convert_to_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_disk, patch):
    out = tiny_disk / "k.h5"
    done = _cli(["convert", str(_big_input(tmp_path)), "--out", str(out)], patch)
    assert done.returncode == 1, done.stderr  # it was 139 (segmentation fault in HDF5)
    line = _one_clean_line(done.stderr)
    assert f"no space left on {tiny_disk}" in line and str(out) in line and ".tmp" not in line
    assert list(tiny_disk.iterdir()) == []


def test_writer_api_on_a_full_disk_raises_output_error(tmp_path, tiny_disk, monkeypatch):
    monkeypatch.setattr(io, "require_disk_space", lambda *a, **k: None)
    images = np.random.default_rng(0).random((300, 1, 64, 64), dtype=np.float32)
    with pytest.raises(OutputError, match=rf"no space left on {tiny_disk}"):
        write_hdf5(tiny_disk / "w.h5", images, np.zeros(300), ["a"])
    assert list(tiny_disk.iterdir()) == []
    with pytest.raises(OutputError, match=r"no space left on"):
        convert_dataset(_big_input(tmp_path), tiny_disk / "c.h5")
    assert list(tiny_disk.iterdir()) == []
    write_hdf5(tiny_disk / "small.h5", images[:5], np.zeros(5), ["a"])  # still usable after
    assert read_hdf5(tiny_disk / "small.h5").images.shape == (5, 1, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("patch", ["", NO_PREFLIGHT], ids=["preflight", "mid-write"])
def test_simulate_to_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk, patch):
    pytest.importorskip("lenstronomy")
    out = tiny_disk / "sim.h5"
    args = ["simulate", "--model", "model_iii", "--n-per-class", "12", "--image-size", "128"]
    done = _cli([*args, "--out", str(out)], patch)  # 36 images x 64 KiB > 2 MiB
    assert done.returncode == 1, done.stderr
    line = _one_clean_line(done.stderr)
    assert f"no space left on {tiny_disk}" in line and ".tmp" not in line
    assert list(tiny_disk.iterdir()) == []


# ----------------------------------------------------------------------------- signals, kills

SLOW_WRITES = (
    # a shell's background job (``cmd &`` without job control) starts with SIGINT ignored, and
    # Python keeps it so: give the child Python's own Ctrl-C handler whatever the parent did
    "import signal\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "import time\n"
    "from deeplense_ssl import io\n"
    "_write = io._GuardedFile.write\n"
    "def slow(self, data):\n"
    "    time.sleep(0.003)\n"
    "    return _write(self, data)\n"
    "io._GuardedFile.write = slow\n"
)


def _start_slow_convert(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    src = tmp_path / "in.npy"
    np.save(src, np.ones((3000, 1, 16, 16), np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "k.h5"
    code = _cli_code(["convert", str(src), "--out", str(out)], SLOW_WRITES)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in out_dir.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "convert never started writing"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the HDF5 writes now
    return proc, out_dir, out


@pytest.mark.parametrize(
    ("signum", "code", "text"),
    [(signal.SIGTERM, 143, "Terminated by SIGTERM"), (signal.SIGINT, 130, "Interrupted")],
)
def test_signal_during_convert_cleans_up_like_ctrl_c(tmp_path: Path, signum, code, text):
    proc, out_dir, _ = _start_slow_convert(tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert text in _one_clean_line(err)
    assert list(out_dir.iterdir()) == []


def test_temporary_left_by_sigkill_is_removed_by_the_next_write(tmp_path: Path, monkeypatch):
    proc, out_dir, out = _start_slow_convert(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    left = [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not out.exists()
    monkeypatch.setattr(io, "_PROCESS_START", time.time())  # as if this were a new run
    convert_dataset(tmp_path / "in.npy", out)
    assert [p.name for p in out_dir.iterdir()] == ["k.h5"]


def test_only_our_own_stale_temporaries_are_removed(tmp_path: Path):
    target = tmp_path / "data.h5"
    old = time.time() - 3600
    names = {
        "stale": ".data.h5.ab_cd123.tmp",
        "fresh": ".data.h5.zzzzzzzz.tmp",  # newer than this process: maybe a live writer
        "other_target": ".data.h5x.abcdefgh.tmp",
        "not_our_pattern": ".data.h5.abc.tmp",
        "visible": "data.h5.abcdefgh.tmp",
        "locked": ".data.h5.locked00.tmp",
    }
    for key, name in names.items():
        (tmp_path / name).write_text(key)
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    os.symlink(tmp_path / names["visible"], tmp_path / ".data.h5.symlink.tmp")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path / names['locked'])!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_temporaries(target)
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in removed] == [names["stale"]]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == (set(names.values()) - {names["stale"]}) | {".data.h5.symlink.tmp"}


# ----------------------------------------------------------------------------- CLI mapping


def test_cli_maps_eof_and_termination_to_clean_exits(capsys):
    import click

    from deeplense_ssl_cli.errors import Terminated, run_with_clean_errors

    def group_raising(exc: BaseException) -> click.Group:
        @click.group()
        def grp():
            pass

        @grp.command(name="boom")
        def boom():
            raise exc

        return grp

    assert run_with_clean_errors(group_raising(EOFError("No data left in file")), ["boom"]) == 1
    line = _one_clean_line(capsys.readouterr().err)
    assert "ended unexpectedly" in line and "No data left" in line
    assert run_with_clean_errors(group_raising(Terminated(signal.SIGTERM)), ["boom"]) == 143
    assert "Terminated by SIGTERM" in _one_clean_line(capsys.readouterr().err)
    assert run_with_clean_errors(group_raising(KeyboardInterrupt()), ["boom"]) == 130
    assert "Interrupted" in _one_clean_line(capsys.readouterr().err)


def test_main_restores_the_signal_handlers(capsys):
    before = signal.getsignal(signal.SIGTERM)
    _run_main(["--version"], capsys)
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_convert_hostile_inputs_are_one_line(tmp_path: Path, capsys):
    cases = {
        "bomb.npy": lambda p: _npy_header_only(p, HUGE),
        "bomb.fits": lambda p: _fits_header_only(p, 10**6, 10**6),
        "npy.npz": lambda p: p.write_bytes(
            _npy_header_only(tmp_path / "t.npy", (1, 2)).read_bytes()
        ),
    }
    for name, make in cases.items():
        make(tmp_path / name)
        code, err = _run_main(
            ["convert", str(tmp_path / name), "--out", str(tmp_path / "o.h5")], capsys
        )
        assert code == 1, (name, err)
        assert name in _one_clean_line(err)
    assert not (tmp_path / "o.h5").exists()


def test_undecodable_file_names_are_stored_escaped(tmp_path: Path):
    root = tmp_path / "set" / "a"
    root.mkdir(parents=True)
    raw = os.fsencode(str(root)) + b"/img\xff.npy"
    try:
        with open(raw, "wb") as fh:
            np.save(fh, np.ones((4, 4), np.float32))
    except OSError:
        pytest.skip("this file system refuses undecodable names")
    out, _ = convert_dataset(tmp_path / "set", tmp_path / "o.h5")
    raw_back = read_hdf5(out)
    assert raw_back.sources == ["a/img\\udcff.npy"]
    json.dumps(raw_back.sources)  # plain text


def test_labels_file_declaring_a_huge_shape_is_refused(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones((2, 4, 4), np.float32))
    labels = _npy_header_only(tmp_path / "y.npy", (2**40,), "<i8")
    with pytest.raises(DataError, match=r"y.npy: truncated .npy: the header promises"):
        open_source(tmp_path / "x.npy", labels=labels)
    (tmp_path / "y.txt").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(DataError, match=r"y.txt: cannot read labels"):
        open_source(tmp_path / "x.npy", labels=tmp_path / "y.txt")
