"""Embedding throughput, neighbour-search latency and memory, and anomaly precision@N.

Questions:

1. ``embed``: how many images/s does the streamed, resumable writer embed on this CPU (64x64,
   one band, ResNet-18), in float32 and float16, and what does the writer cost next to the
   bare forward pass?
2. ``search``: for N = 10^5 and 10^6 clustered random vectors (D = 512, stored float16 as ``embed
   --float16`` writes them), the latency of one query and of a batch of 16, with the exact
   NumPy backend (streams the index from the file) against FAISS (``IndexFlatIP``: exact;
   ``IndexIVFFlat``: approximate, with its recall@10), the one-off build time (read + add,
   + train for IVF), the index bytes, and the peak RSS of the process doing it (each
   configuration runs in a fresh subprocess; the RSS after imports is given beside it).
3. ``anomaly``: precision@N of the kNN anomaly score (mean cosine distance to the k nearest
   reference embeddings) on simulated Model II-like images with a few injected odd images
   (blank, noise-only, saturated, Model I-like), N = the number of odd images; scored against
   a separate set of normal images (reference) and against the set itself.

Without ``--run`` the network is a random-init ResNet-18 (``--stem``) written as a pretrain
run; pass ``--run RUN`` to use a trained pretrain/finetune run (its preprocessing applies).

Run (exact commands for benchmarks/README.md; the full 10^6 setting takes several minutes)::

    .venv/bin/python benchmarks/embed_search_speed.py --parts embed,search,anomaly \\
        --search-sizes 100000,1000000 --out benchmarks/results/embed_search_speed.json
    # reduced setting (what the helper ran on the shared 2-core CPU):
    .venv/bin/python benchmarks/embed_search_speed.py --parts embed,search,anomaly \\
        --search-sizes 100000 --n-embed 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from machine import cpu_name

from deeplense_ssl import __version__
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.checkpoint import backbone_state_for_file, save_checkpoint
from deeplense_ssl.config import AnomalyConfig, EmbedConfig
from deeplense_ssl.embedding import anomaly_index, embed_files, load_encoder
from deeplense_ssl.inference import embed
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.runs import write_run_config
from deeplense_ssl.search import (
    INDEX_FORMAT,
    EmbeddingIndex,
    ExactSearch,
    FaissSearch,
    faiss_available,
)

DIM = 512
N_CLUSTERS = 1000
SIZE = 64


def header() -> str:
    """Hardware, versions, load and the exact command (printed first and stored)."""
    faiss_v = "not installed"
    if faiss_available():
        import faiss  # the optional extra, only for its version

        faiss_v = faiss.__version__
    return (
        f"# {cpu_name()}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, numpy "
        f"{np.__version__}, torch {torch.__version__}, h5py {h5py.__version__}, faiss {faiss_v}, "
        f"deeplense_ssl {__version__}; load average at start {os.getloadavg()[0]:.1f}\n"
        f"# command: {sys.executable.split('/work/main/')[-1]} {' '.join(sys.argv)}"
    )


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB): ``VmHWM`` (``ru_maxrss`` would keep
    the parent's peak across ``fork`` + ``exec``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_run(root: Path, stem: str, seed: int = 0) -> Path:
    """A finished pretrain run folder holding a random-init ResNet-18 for 1-band 64 px images."""
    torch.manual_seed(seed)
    bb = build_backbone("resnet18", in_chans=1, stem=stem)
    config = {"method": "none (random init)", "normalize": "minmax", "image_size": None}
    write_run_config(
        root,
        {
            "config": {**config, "nan_policy": "raise", "backbone": "resnet18", "stem": stem},
            "resolved": {"input_shape": [1, SIZE, SIZE]},
            "backbone_spec": bb.spec,
        },
    )
    save_checkpoint(root / "backbone.pt", backbone_state_for_file(bb))
    return root


# ----------------------------------------------------------------------------- 1. embed


def bench_embed(run: Path, n: int, tmp: Path, batch_size: int) -> dict:
    """Images/s of ``embed_files`` (float32, float16) and of the bare forward pass."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)
    data = write_hdf5(tmp / "embed_in.h5", images, np.zeros(n, np.int64), ["x"])
    out: dict = {"n_images": n, "image": f"1x{SIZE}x{SIZE}", "batch_size": batch_size}
    encoder = load_encoder(run)
    x = images / np.abs(images).max()
    embed(encoder.backbone, x[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    embed(encoder.backbone, x, batch_size=batch_size)
    out["forward_only_img_s"] = n / (time.perf_counter() - t0)
    for name, f16 in (("float32", False), ("float16", True)):
        cfg = EmbedConfig(
            checkpoint=str(run), data=[str(data)], out=str(tmp / f"emb_{name}.h5"),
            float16=f16, batch_size=batch_size, device="cpu", nan_policy="raise",
        )  # fmt: skip
        t0 = time.perf_counter()
        embed_files(cfg, progress=False)
        out[f"embed_{name}_img_s"] = n / (time.perf_counter() - t0)
        out[f"embed_{name}_file_mib"] = os.path.getsize(cfg.out) / 2**20
    return out


# ----------------------------------------------------------------------------- 2. search


def write_random_index(path: Path, n: int, dim: int = DIM, seed: int = 0) -> Path:
    """A valid float16 embedding index of ``n`` clustered random vectors (written in chunks).

    Real embeddings cluster (classes, similar scenes), so the vectors are drawn around
    :data:`N_CLUSTERS` random centres (noise std 1 against centres of norm ~sqrt(D)): an IVF
    index has structure to exploit, as with real data (isotropic noise would have none).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, dim)).astype(np.float32)
    with h5py.File(path, "w") as f:
        emb = f.create_dataset("embeddings", (n, dim), np.float16, chunks=(1024, dim))
        for lo in range(0, n, 65536):
            hi = min(lo + 65536, n)
            noise = rng.standard_normal((hi - lo, dim), dtype=np.float32)
            emb[lo:hi] = (centres[rng.integers(0, N_CLUSTERS, hi - lo)] + noise).astype(np.float16)
        f.create_dataset("sources", data=np.array([f"r[{i}]" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
        for name in ("file_index", "index_in_file", "labels"):
            f.create_dataset(name, data=np.zeros(n, np.int64))
        f.attrs.update(format=INDEX_FORMAT, complete=1, files="[]", class_names="[]")
    return path


def search_child(index_path: str, backend: str, ivf_lists: int, k: int, repeats: int) -> dict:
    """One configuration, run in a fresh process: build, latency, recall, peak RSS."""
    rss0 = peak_rss_mib()
    rng = np.random.default_rng(1)
    with EmbeddingIndex(index_path) as index:
        n = len(index)
        # queries like the data: indexed vectors moved by half their noise
        queries = index.rows(rng.choice(n, 16, replace=False))
        queries += 0.5 * rng.standard_normal(queries.shape, dtype=np.float32)
        t0 = time.perf_counter()
        if backend == "exact":
            searcher = ExactSearch(index)
            index_bytes = 0  # nothing held: streamed from the file
        else:
            nprobe = 16
            searcher = FaissSearch(index, ivf_lists=ivf_lists, nprobe=nprobe)
            index_bytes = 4 * n * index.dim  # float32 vectors (IVF adds the centroids)
        build_s = time.perf_counter() - t0
        lat = {}
        for q in (1, 16):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, ids = searcher.search(queries[:q], k)
                times.append(time.perf_counter() - t0)
            lat[f"latency_ms_{q}q_median"] = 1000 * float(np.median(times))
        recall = None
        if backend == "faiss" and ivf_lists:
            _, exact_ids = ExactSearch(index).search(queries, k)
            _, got = searcher.search(queries, k)
            pairs = zip(got, exact_ids, strict=True)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in pairs]))
    return {
        "n": n, "backend": backend, "ivf_lists": ivf_lists, "build_s": build_s, **lat,
        "recall_at_10": recall, "index_bytes_mib": index_bytes / 2**20,
        "file_mib": os.path.getsize(index_path) / 2**20, "rss_after_imports_mib": rss0,
        "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip


def bench_search(sizes: list[int], tmp: Path, repeats: int) -> list[dict]:
    rows = []
    configs = [("exact", 0)]
    if faiss_available():
        configs += [("faiss", 0), ("faiss", -1)]  # -1: IVF with sqrt(N) lists
    for n in sizes:
        path = write_random_index(tmp / f"rand_{n}.h5", n)
        for backend, lists in configs:
            lists = int(np.sqrt(n)) if lists < 0 else lists
            cmd = [sys.executable, __file__, "--_child", str(path), backend, str(lists),
                   str(repeats)]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
        path.unlink()
    return rows


# ----------------------------------------------------------------------------- 3. anomaly


def odd_images(n_each: int, normal: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Blank, noise-only, saturated and Model I-like images, ``n_each`` of each (64 px)."""
    from deeplense_ssl.simulate import simulate_arrays

    rng = np.random.default_rng(seed)
    sigma = float(np.std(normal[:, :, :4, :4]))  # sky noise from the corners
    blank = np.zeros((n_each, 1, SIZE, SIZE), np.float32) + 1e-3 * rng.standard_normal(
        (n_each, 1, SIZE, SIZE)
    ).astype(np.float32)
    noise = (sigma * rng.standard_normal((n_each, 1, SIZE, SIZE))).astype(np.float32)
    sat = normal[:n_each].copy()  # the brightest 20% of each image clipped flat
    sat = np.minimum(sat, np.quantile(sat, 0.8, axis=(1, 2, 3), keepdims=True))
    with warnings.catch_warnings():  # 64 px crops Model I rings: wanted, they are the odd ones
        warnings.simplefilter("ignore", UserWarning)
        model_i, _, _ = simulate_arrays("model_i", -(-n_each // 3), seed=seed, image_size=SIZE)
    kinds = ["blank"] * n_each + ["noise"] * n_each + ["saturated"] * n_each
    kinds += ["model_i"] * n_each
    return np.concatenate([blank, noise, sat, model_i[:n_each]]), kinds


def bench_anomaly(run: Path, n_per_class: int, n_odd_each: int, k: int, tmp: Path) -> dict:
    """precision@N (N = number of odd images) against a normal reference and self-referenced."""
    from deeplense_ssl.simulate import simulate_arrays

    normal, labels, _ = simulate_arrays("model_ii", n_per_class, seed=0, image_size=SIZE)
    ref, ref_labels, _ = simulate_arrays("model_ii", n_per_class, seed=1, image_size=SIZE)
    odd, kinds = odd_images(n_odd_each, normal, seed=2)
    rng = np.random.default_rng(3)
    images = np.concatenate([normal, odd])
    is_odd = np.r_[np.zeros(len(normal), bool), np.ones(len(odd), bool)]
    order = rng.permutation(len(images))
    images, is_odd = images[order], is_odd[order]
    names = ["no_sub", "cdm", "axion"]
    test = write_hdf5(tmp / "anomaly_test.h5", images, np.zeros(len(images), np.int64), ["x"])
    normal_file = write_hdf5(tmp / "anomaly_ref.h5", ref, ref_labels, names)
    out = {"n_normal": len(normal), "n_odd": len(odd), "odd_kinds": sorted(set(kinds)), "k": k}
    for name, data in (("test", test), ("ref", normal_file)):
        cfg = EmbedConfig(checkpoint=str(run), data=[str(data)], out=str(tmp / f"{name}.emb.h5"),
                          device="cpu", nan_policy="zero")  # fmt: skip
        embed_files(cfg, progress=False)
    n_top = len(odd)
    for mode, reference in (("reference", str(tmp / "ref.emb.h5")), ("self", None)):
        acfg = AnomalyConfig(
            index=str(tmp / "test.emb.h5"), reference=reference, k=k, top=n_top,
            out=str(tmp / f"anomaly_{mode}"), backend="exact",
        )  # fmt: skip
        result = anomaly_index(acfg, progress=False)
        top = result.order[:n_top]
        out[f"precision_at_{n_top}_{mode}"] = float(is_odd[top].mean())
        caught = [kinds[order[r] - len(normal)] for r in top if is_odd[r]]
        out[f"caught_{mode}"] = {k_: caught.count(k_) for k_ in sorted(set(kinds))}
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        path, backend, lists, repeats = sys.argv[2:6]
        print(json.dumps(search_child(path, backend, int(lists), 10, int(repeats))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="embed,search,anomaly")
    p.add_argument("--run", help="a pretrain/finetune run (default: random-init ResNet-18)")
    p.add_argument("--stem", default="imagenet", help="stem of the random-init network")
    p.add_argument("--n-embed", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--search-sizes", default="100000,1000000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-per-class", type=int, default=100, help="normal images per class")
    p.add_argument("--n-odd-each", type=int, default=3, help="odd images of each kind")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", help="JSON results file")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    print(header(), flush=True)
    results: dict = {"header": header(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = Path(args.run) if args.run else random_run(tmp / "run", args.stem)
        if "embed" in parts:
            results["embed"] = bench_embed(run, args.n_embed, tmp, args.batch_size)
            print(json.dumps(results["embed"]), flush=True)
        if "search" in parts:
            sizes = [int(s) for s in args.search_sizes.split(",")]
            results["search"] = bench_search(sizes, tmp, args.repeats)
        if "anomaly" in parts:
            results["anomaly"] = bench_anomaly(run, args.n_per_class, args.n_odd_each, args.k, tmp)
            print(json.dumps(results["anomaly"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
