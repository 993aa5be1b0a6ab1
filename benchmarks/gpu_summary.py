"""Summarise one run of ``benchmarks/gpu_check.sh``: ``python benchmarks/gpu_summary.py OUT``.

Prints one JSON object: the GPU, each part's command, exit status and wall time, its numbers
(the JSON files the benchmarks wrote), and the GPU utilisation sampled while each part ran
(mean and the share of samples at 0 %, i.e. the GPU idle).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

PARTS = {  # part -> JSON result files it writes
    "cuda_tests": [],
    "train_speed": ["train_speed_gpu.json"],
    "cifar_epoch": ["cifar_epoch_gpu.json"],
    "demo_quick": [],
}


def _utilisation(out: Path) -> list[tuple[float, float]]:
    """(epoch seconds, % utilisation) samples of nvidia-smi's log."""
    samples = []
    path = out / "utilisation.csv"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            stamp, value = (v.strip() for v in line.split(","))
            t = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f")
            samples.append((time.mktime(t.timetuple()) + t.microsecond / 1e6, float(value)))
        except ValueError:
            continue
    return samples


def _part(out: Path, name: str, samples: list[tuple[float, float]]) -> dict:
    """Command, status, wall time, results and utilisation of one part."""
    commands = (out / "commands.txt").read_text().splitlines()
    prefix = f"== {name}: "
    entry: dict = {
        "command": next((c[len(prefix) :] for c in commands if c.startswith(prefix)), None)
    }
    status = next((c for c in commands if c.startswith(f"{name} rc=")), "")
    for field in status.split()[1:]:
        key, _, value = field.partition("=")
        entry[key] = float(value) if "." in value else int(value)
    for file in PARTS[name]:
        if (out / file).exists():
            entry[file] = json.loads((out / file).read_text())
    try:
        start = float((out / f"{name}.start").read_text())
        stop = float((out / f"{name}.stop").read_text())
    except (OSError, ValueError):
        return entry
    inside = [u for t, u in samples if start <= t <= stop]
    if inside:
        entry["gpu_utilisation_mean_pct"] = sum(inside) / len(inside)
        entry["gpu_idle_share"] = sum(u == 0 for u in inside) / len(inside)
    log = out / f"{name}.log"
    entry["log_tail"] = log.read_text()[-1500:] if log.exists() else None
    return entry


def main(out: Path) -> None:
    samples = _utilisation(out)
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None
    summary = {"gpu": gpu, "parts": {name: _part(out, name, samples) for name in PARTS}}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out"))
