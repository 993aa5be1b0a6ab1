"""Loader speed: images/s for 64x64 float32 from HDF5, a .npy folder and a memory-mapped .npy.

Question: is data loading ever the bottleneck? The CPU training step runs at ~50 images/s, so
the loader should deliver >= 100x that (5,000 images/s), and the HDF5 path >= 20,000 images/s
warm on one core.

Measured (each "warm": the files were read once before, so they sit in the page cache; every
number is the median and the best of ``--repeats`` runs, side by side in one process):

* ``load_dataset``: read + layout/dtype + NaN policy + min-max scaling into memory, per input
  (converted HDF5, ``<root>/<class>/*.npy`` folder, one stacked memory-mapped ``.npy``), on
  clean data (``nan_policy="raise"``: the check runs, nothing to fix) and on data where 1% of
  the images hold 10 NaN pixels (``nan_policy="interpolate"``, the most expensive policy);
* random access of single images as a training loop sees them: ``LensingDataset`` +
  ``DataLoader(batch_size=256, shuffle=True)`` over the loaded set, raw ``h5py`` reads of
  single images in random order (a lazy HDF5 dataset), and memory-mapped ``.npy`` rows;
* HDF5 chunking: random single-image reads and a bulk read for several ``chunk_images``;
* streaming (issue 13): one epoch of ``streaming.StreamReader`` batches (256 images) from the
  HDF5 split into 4 shards, read, cleaned (``nan_policy="raise"``, min-max) and gathered in
  the chunked order (chunks of 256, windows of 8 chunks), as one rank of 1 and of 2 sees it.

Run (exact command used for benchmarks/README.md)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_speed.py --n 8192 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from deeplense_ssl import __version__  # noqa: E402
from deeplense_ssl.datasets import LensingDataset, convert_dataset, load_dataset  # noqa: E402
from deeplense_ssl.io import write_hdf5, write_text_atomic  # noqa: E402
from deeplense_ssl.streaming import (  # noqa: E402
    CleanOptions,
    StreamingData,
    StreamLayout,
    StreamReader,
)

TRAIN_STEP_IMAGES_PER_S = 50.0  # CPU training-step rate the loader must beat 100x


def header() -> str:
    cpu = cpu_name()
    return (
        f"# {cpu}, {os.cpu_count()} logical cores visible, 1 thread used; Python "
        f"{platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__} "
        f"(HDF5 {h5py.version.hdf5_version}), torch {torch.__version__}, deeplense_ssl "
        f"{__version__}; load average at start {os.getloadavg()[0]:.1f} (shared machine)"
        f"\n# command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"{sys.executable.split('/work/main/')[-1]} {' '.join(sys.argv)}"
    )


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Run ``fn`` (returns images processed) once to warm up, then ``repeats`` times.

    Returns:
        (median, best) images per second over the timed repeats. On a shared machine the best
        run (as ``timeit`` advises) is the closest to the uncontended one-core rate.
    """
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates)), float(np.max(rates))


def make_inputs(root: Path, n: int, nan: bool, seed: int) -> dict[str, Path]:
    """Write the same n 64x64 float32 images (3 classes) as a folder, a stacked .npy and HDF5."""
    rng = np.random.default_rng(seed)
    images = rng.gamma(2.0, 1.0, (n, 64, 64)).astype(np.float32)
    labels = np.arange(n) % 3
    if nan:
        bad = rng.choice(n, max(1, n // 100), replace=False)
        for i in bad:
            images[i, rng.integers(0, 64, 10), rng.integers(0, 64, 10)] = np.nan
    tag = "nan" if nan else "clean"
    folder = root / f"folder_{tag}"
    for c, name in enumerate(("axion", "cdm", "no_sub")):
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == c):
            np.save(folder / name / f"{i:06d}.npy", images[i][None])
    stacked = root / f"stack_{tag}.npy"
    np.save(stacked, images)
    np.save(root / f"labels_{tag}.npy", labels)
    h5 = root / f"data_{tag}.h5"
    if not nan:
        convert_dataset(stacked, h5, labels=root / f"labels_{tag}.npy", progress=False)
    else:  # keep the NaNs in the HDF5 input too, so their cleaning cost is measured from it
        write_hdf5(h5, np.nan_to_num(images[:, None]), labels, ["axion", "cdm", "no_sub"])
        with h5py.File(h5, "r+") as f:
            f["images"][...] = images[:, None]
    return {"hdf5": h5, "npy folder": folder, "mmap npy": stacked}


def bench_load(inputs: dict[str, Path], policy: str, labels: Path, repeats: int) -> dict:
    out = {}
    for name, path in inputs.items():
        kw = {"labels": labels} if name == "mmap npy" else {}

        def run(path: Path = path, kw: dict = kw) -> int:
            data = load_dataset(path, nan_policy=policy, normalize="minmax", progress=False, **kw)
            return len(data)

        out[name] = timed(run, repeats)
    return out


def bench_random_access(inputs: dict[str, Path], n: int, repeats: int, seed: int) -> dict:
    out = {}
    data = load_dataset(inputs["hdf5"], normalize="minmax", progress=False)
    loader = DataLoader(LensingDataset(data), batch_size=256, shuffle=True, num_workers=0)

    def epoch() -> int:
        count = 0
        for x, _ in loader:
            count += len(x)
        return count

    out["LensingDataset+DataLoader (in memory, after load_dataset from HDF5)"] = timed(
        epoch, repeats
    )
    order = np.random.default_rng(seed).permutation(n)

    def h5_items() -> int:
        with h5py.File(inputs["hdf5"], "r") as f:
            ds = f["images"]
            for i in order:
                ds[i]
        return n

    out["h5py single-image random reads (lazy HDF5, chunk 1)"] = timed(h5_items, repeats)
    mm = np.load(inputs["mmap npy"], mmap_mode="r")

    def mmap_items() -> int:
        for i in order:
            np.array(mm[i])
        return n

    out["memory-mapped .npy single-image random reads"] = timed(mmap_items, repeats)
    return out


def bench_chunks(root: Path, n: int, chunks: list[int], repeats: int, seed: int) -> dict:
    images = np.random.default_rng(seed).random((n, 1, 64, 64), dtype=np.float32)
    order = np.random.default_rng(seed + 1).permutation(n)[: min(n, 4096)]
    out = {}
    for chunk in chunks:
        path = write_hdf5(
            root / f"chunk{chunk}.h5", images, np.zeros(n, int), ["a"], chunk_images=chunk
        )

        def single(path: Path = path) -> int:
            with h5py.File(path, "r") as f:
                ds = f["images"]
                for i in order:
                    ds[i]
            return len(order)

        def bulk(path: Path = path) -> int:
            with h5py.File(path, "r") as f:
                f["images"][()]
            return n

        out[chunk] = {"random single": timed(single, repeats), "bulk": timed(bulk, repeats)}
    return out


def bench_stream(root: Path, h5: Path, n: int, repeats: int) -> dict:
    """Images/s of one epoch of :class:`StreamReader` batches over 4 shards of ``h5``."""
    data = load_dataset(h5, normalize="none", progress=False)
    bounds = np.linspace(0, n, 5).astype(int)
    for k in range(4):
        a, b = bounds[k], bounds[k + 1]
        write_hdf5(root / f"shard{k}.h5", data.images[a:b], data.labels[a:b], data.class_names)
    out = {}
    batch, layout = 256, StreamLayout(256, 8)
    with StreamingData(str(root / "shard*.h5"), CleanOptions("raise", "minmax")) as stream:
        for world in (1, 2):
            steps = n // (batch * world)

            def epoch(world: int = world, steps: int = steps) -> int:
                reader = StreamReader(
                    stream, np.arange(n), 0, layout, steps, batch * world, 0, world
                )
                return sum(len(reader.batch(step)[0]) for step in range(steps))

            out[f"StreamReader, rank 0 of {world} (4 shards, chunks 256, windows 8)"] = timed(
                epoch, repeats
            )
    return out


def fmt(rate: tuple[float, float]) -> str:
    med, best = rate
    return f"{med:>9,.0f} | {best:>9,.0f}  ({med / TRAIN_STEP_IMAGES_PER_S:>6,.0f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="images per input")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", default="1,2,8,16", help="HDF5 chunk sizes to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core
    root = Path(tempfile.mkdtemp(prefix="loader_speed_", dir=args.workdir))
    results: dict = {"config": vars(args) | {"json": str(args.json), "workdir": str(root)}}
    try:
        print(header())
        print(
            f"# {args.n} images 64x64 float32 per input; images/s median | best of "
            f"{args.repeats} warm repeats; (Nx) = multiple of the {TRAIN_STEP_IMAGES_PER_S:.0f} "
            "images/s CPU training step (from the median)"
        )
        clean = make_inputs(root, args.n, nan=False, seed=args.seed)
        dirty = make_inputs(root, args.n, nan=True, seed=args.seed)
        sections = {
            "load_dataset, clean data, nan_policy=raise": bench_load(
                clean, "raise", root / "labels_clean.npy", args.repeats
            ),
            "load_dataset, 1% images with NaN, nan_policy=interpolate": bench_load(
                dirty, "interpolate", root / "labels_nan.npy", args.repeats
            ),
            "random access (training-loop view)": bench_random_access(
                clean, args.n, args.repeats, args.seed
            ),
            "streaming (pretrain --data-mode stream)": bench_stream(
                root, clean["hdf5"], args.n, args.repeats
            ),
        }
        chunks = bench_chunks(
            root, args.n, [int(c) for c in args.chunks.split(",")], args.repeats, args.seed
        )
        for title, rows in sections.items():
            print(f"\n## {title}")
            for name, rate in rows.items():
                print(f"  {name:<70} {fmt(rate)}")
        print("\n## HDF5 chunk_images (images/s): random single-image reads | bulk read")
        for chunk, rates in chunks.items():
            print(f"  chunk {chunk:>3}: {fmt(rates['random single'])} | {fmt(rates['bulk'])}")
        results["sections"] = {
            t: {k: list(v) for k, v in rows.items()} for t, rows in sections.items()
        }
        results["chunks"] = {str(c): {k: list(v) for k, v in r.items()} for c, r in chunks.items()}
        results["header"] = header()
        if args.json:
            write_text_atomic(args.json, json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
