"""Simulation speed: images per second per model, image size and number of worker processes.

Question: how fast does ``deeplense_ssl.simulate`` make DeepLense-like images, and where does
the time go? Target: >= 300 images/s for 64x64 Model II-like images on a 2-core machine.

Command (from the repository root, needs the ``sim`` extra)::

    python benchmarks/simulate_speed.py --n-per-class 100 --repeats 3 \
        --out benchmarks/results/simulate_speed.json

Each cell times ``simulate_arrays(model, n_per_class, seed, image_size=..., workers=...)``
end to end (pool start-up included, no file writing), ``--repeats`` times with different
seeds, after one untimed warm-up call; it reports mean and spread of images/s. Classes are
interleaved, so every timing averages no_sub, cdm (25 point masses) and axion (100 point
masses) equally. ``--profile`` adds a cProfile of one in-process run of 64x64 Model II.
The results file records the machine, versions, load average and this configuration.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine import cpu_name

from deeplense_ssl import __version__
from deeplense_ssl import simulate as sim
from deeplense_ssl.io import write_text_atomic


def machine_info() -> dict:
    """Hardware, versions and load, recorded beside every result."""
    import lenstronomy
    import scipy

    cpu = cpu_name()
    return {
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "lenstronomy": lenstronomy.__version__,
        "deeplense_ssl": __version__,
        "load_average_1_5_15": list(os.getloadavg()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def time_cell(model: str, size: int, workers: int, n_per_class: int, repeats: int) -> dict:
    """Images/s of one (model, size, workers) cell: mean, std, min, max over repeats."""
    sim.simulate_arrays(model, 2, seed=10_000, image_size=size, workers=workers)  # warm-up
    rates, cpu_rates, loads = [], [], []
    for rep in range(repeats):
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        images, _, _ = sim.simulate_arrays(
            model, n_per_class, seed=rep, image_size=size, workers=workers
        )
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        rates.append(len(images) / elapsed)
        cpu_rates.append(len(images) / cpu)
        loads.append(os.getloadavg()[0])
    return {
        "model": model,
        "image_size": size,
        "workers": workers,
        "n_images": 3 * n_per_class,
        "images_per_s_mean": statistics.fmean(rates),
        "images_per_s_std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "images_per_cpu_s_mean": statistics.fmean(cpu_rates),
        "load_average_1min_after": loads,
    }


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children, seconds.

    On a shared machine the wall-clock rate depends on other users' load; images per CPU-second
    does not (much), and times the number of free cores it bounds the wall-clock rate.
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def profile_model_ii(n_images: int = 300) -> str:
    """Top functions by internal time for an in-process 64x64 Model II run."""
    renderer = sim.Renderer("model_ii", 64)
    for i in range(30):
        sim.simulate_one(renderer, i, 0)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n_images):
        sim.simulate_one(renderer, i, 0)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def main() -> None:
    """Run every cell, print a Markdown table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(sim.MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 150])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    # 64 px Model I crops the ring on purpose here (speed only); silence that warning
    warnings.filterwarnings("ignore", message="image_size=.*crops the Einstein ring")
    info = machine_info()
    print(json.dumps(info, indent=2))
    rows = []
    for model in args.models:
        for size in args.sizes:
            for workers in args.workers:
                row = time_cell(model, size, workers, args.n_per_class, args.repeats)
                rows.append(row)
                print(
                    f"{model:9s} {size:4d}px workers={workers}: "
                    f"{row['images_per_s_mean']:7.1f} +- {row['images_per_s_std']:5.1f} img/s, "
                    f"{row['images_per_cpu_s_mean']:6.1f} img/CPU-s",
                    flush=True,
                )
    print(
        f"\n| model | size | workers | images/s wall (mean +- std, n={args.repeats}) "
        "| images per CPU-s | load (1 min) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['image_size']} | {r['workers']} | "
            f"{r['images_per_s_mean']:.0f} +- {r['images_per_s_std']:.0f} | "
            f"{r['images_per_cpu_s_mean']:.0f} | "
            f"{statistics.fmean(r['load_average_1min_after']):.1f} |"
        )
    profile = profile_model_ii() if args.profile else None
    if profile:
        print(profile)
    info["load_average_end"] = list(os.getloadavg())
    if args.out:
        result = {"machine": info, "config": vars(args) | {"out": str(args.out)}, "rows": rows}
        if profile:
            result["profile_model_ii_64"] = profile
        write_text_atomic(args.out, json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
