"""Training speed vs lightly: SimCLR steps and epochs, ours against lightly's, side by side.

Question: is our SimCLR epoch (data already in memory -> batched on-device augmentation ->
forward/backward/step, plus our run-folder writes) at least as fast as lightly's standard
SimCLR loop on the same backbone, batch, input and data (target >= 1.0x on CPU, >= 1.5x on a
GPU), and how much memory does each take?

The contenders:

* ``ours``: ``method="simclr"``, ``augment="cifar"`` (crop 0.08-1, flip, colour jitter
  0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2), NT-Xent tau 0.5, projection 512-512-128, SGD,
  channels-last, the default ``amp`` (bf16 autocast on CUDA and on CPUs with native bf16, see
  ``runtime.resolve_amp_dtype``); one network call per step that passes each view separately
  (``methods.base.chunked``).
* ``ours-nchw``: the same without channels-last (to measure that choice).
* ``ours-fp32``: the same in float32 (``amp="off"``, to measure the bf16 choice).
* ``lightly`` (the ``bench`` extra): ``lightly.transforms.SimCLRTransform(input_size,
  gaussian_blur=0)`` (the same CIFAR recipe, per-sample PIL ops) in a ``DataLoader``
  (``--lightly-workers``), ``SimCLRProjectionHead(512, 512, 128)``, ``lightly.loss.NTXentLoss``
  (tau 0.5), SGD, the same backbone (``build_backbone``), channels-last and the same autocast as
  ours. The float images are converted to uint8 PIL images *before* timing (lightly needs PIL),
  which favours lightly. Two forward passes per step (``z0 = model(x0)``, ``z1 = model(x1)``)
  as in lightly's examples.

Two phases, both alternating the contenders so that a shared machine's changing load hits both:

1. ``[steps]``: ``--steps`` single steps of each loop, alternated A B B A ... in this process
   (ours: the body of ``training.pretrain``'s loop built from the same functions). The median
   seconds per image give the ratio; quartiles of the per-pair ratios show the spread.
2. ``[epoch]``: ``--rounds`` whole epochs per contender, each in a fresh subprocess, A B A B.
   Ours is the full ``training.pretrain`` call (so it also pays for building the model and writing
   config.json, the checkpoint with fsync, backbone.pt and the loss-curve PNG); lightly is the
   bare loop. Both do one untimed warm-up step first.

Memory (phase 2): CPU -> peak RSS of the trial process (``VmHWM``: imports, data, model,
optimiser, activations; lightly's DataLoader workers, if any, are not included); CUDA ->
``torch.cuda.max_memory_allocated`` during the timed epoch.

Run (exact commands used for benchmarks/README.md, on a shared 2-core CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --n 1024 --size 32 \
        --batch 128 --stem imagenet --threads 1 --steps 16 --rounds 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --n 512 --size 32 \
        --batch 64 --stem cifar --threads 1 --steps 8 --rounds 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --n 512 --size 32 \
        --batch 64 --stem cifar --threads 1 --steps 8 --rounds 0 --contenders ours,ours-nchw

Overlap and streaming (issue 13; phase 2 only, whole runs in fresh subprocesses; the exact
commands behind benchmarks/results/train_speed_{prefetch,stream_32px,stream_128px}_cpu.json)::

    # the same epoch with the package default (since this run: no producer thread on the CPU)
    # and with the background batch producer 2 batches ahead
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_speed.py --n 4096 --size 32 \
        --batch 128 --stem imagenet --threads 2 --rounds 3 --contenders ours,ours-prefetch
    # an HDF5 file 4x the memory budget, loaded whole vs streamed under --max-memory-gb; the
    # step rate is timed from step 3 to the last (loading excluded), peak RSS includes it
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --n 8192 --size 128 \
        --chans 1 --batch 16 --stem small --threads 1 --rounds 2 --max-steps 14 \
        --memory-gb 0.125 --data-file /tmp/train_speed_4x.h5 --contenders file-memory,file-stream
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --n 32768 --size 32 \
        --chans 1 --batch 64 --stem cifar --threads 1 --rounds 2 --max-steps 20 \
        --memory-gb 0.03125 --data-file /tmp/train_speed_4x_32px.h5 \
        --contenders file-memory,file-stream

GPU (not run here: no GPU in this workplace)::

    python benchmarks/train_speed.py --device cuda --n 50000 --size 32 --batch 512 \
        --stem cifar --lightly-workers 8 --steps 50 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------
# The two contenders (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------


def make_images(n: int, chans: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random float32 images in [0, 1], ``(n, chans, size, size)`` (same for both)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, chans, size // 4, size // 4), dtype=np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=size, mode="bilinear")
    noise = 0.1 * rng.random((n, chans, size, size), dtype=np.float32)
    return np.clip(up.numpy() + noise, 0.0, 1.0).astype(np.float32)


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: max_memory_allocated. CPU: this process's peak RSS (``VmHWM``).

    ``VmHWM`` is used rather than ``ru_maxrss`` because Linux carries ``ru_maxrss`` over
    ``exec`` from the forking parent, which would charge the driver's memory to every trial.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _ours_cfg(
    args: argparse.Namespace,
    out: str,
    channels_last: bool = True,
    prefetch: int | None = None,
    amp: str = "auto",
):
    from deeplense_ssl.config import PretrainConfig

    return PretrainConfig(
        prefetch=prefetch,
        data="<benchmark>",
        out=out,
        method="simclr",
        augment="cifar",
        backbone=args.backbone,
        stem=args.stem,
        batch_size=args.batch,
        epochs=1,
        temperature=0.5,
        proj_hidden_dim=512,
        proj_out_dim=128,
        lr=0.3 * args.batch / 256,
        device=args.device,
        checkpoint_every_steps=10**9,
        channels_last=channels_last,
        amp=amp,
        normalize="none",
        seed=0,
    )


def run_ours(
    args: argparse.Namespace,
    channels_last: bool = True,
    prefetch: int | None = None,
    amp: str = "auto",
) -> dict:
    """One timed epoch of ``deeplense_ssl.training.pretrain`` (after a 1-step warm-up run)."""
    from deeplense_ssl.runtime import resolve_device
    from deeplense_ssl.training import pretrain

    device = resolve_device(args.device)
    images = make_images(args.n, args.chans, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _ours_cfg(args, f"{tmp}/warm", channels_last, prefetch, amp)
        cfg = dataclasses.replace(cfg, max_steps=1)
        pretrain(cfg, progress=False, dataset=images)
        _sync(device, reset_peak=True)
        timed = dataclasses.replace(cfg, out=f"{tmp}/timed", max_steps=None)
        t0 = time.perf_counter()
        pretrain(timed, progress=False, dataset=images)
        _sync(device)
        seconds = time.perf_counter() - t0
    steps = args.n // args.batch
    return {"seconds": seconds, "images": steps * args.batch, "peak_mib": _peak_memory_mib(device)}


def ensure_data_file(args: argparse.Namespace) -> Path:
    """``--data-file``: ``--n`` images of ``make_images`` in our HDF5 layout (written once)."""
    from deeplense_ssl.io import write_hdf5

    path = Path(args.data_file)
    if not path.exists():
        labels = np.arange(args.n) % 2
        write_hdf5(path, make_images(args.n, args.chans, args.size), labels, ["a", "b"])
    return path


def run_file(args: argparse.Namespace, mode: str, prefetch: int | None = None) -> dict:
    """``--max-steps`` steps of ``pretrain`` on ``--data-file``, loaded (``in-memory``) or
    streamed (``stream``) under ``--memory-gb``; timed from the end of step 2 to the end of
    the last step (loading and warm-up excluded)."""
    from deeplense_ssl.runtime import resolve_device
    from deeplense_ssl.training import pretrain

    device = resolve_device(args.device)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(
            _ours_cfg(args, f"{tmp}/run", prefetch=prefetch),
            data=args.data_file,
            data_mode=mode,
            max_memory_gb=args.memory_gb,
            max_steps=args.max_steps,
            collapse_monitor_size=0,
        )

        def stamp(step: int, record: dict) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        pretrain(cfg, progress=False, on_step=stamp)
    return {
        "seconds": stamps[-1] - stamps[1],
        "images": (len(stamps) - 2) * args.batch,
        "peak_mib": _peak_memory_mib(device),
        "file_mib": Path(args.data_file).stat().st_size / 2**20,
    }


def ours_stepper(
    args: argparse.Namespace, channels_last: bool = True, method: str = "simclr", **overrides
) -> Callable[[], int]:
    """One step of our loop body (index batch -> on-device views -> step), from training parts.

    The same calls as ``training.pretrain``'s loop without its logging and checkpointing; used
    to interleave single steps with lightly's (or another method's) in one process.
    """
    from deeplense_ssl.optim import build_optimizer
    from deeplense_ssl.runtime import resolve_amp_dtype, resolve_device
    from deeplense_ssl.training import build_method_for
    from deeplense_ssl.training.data import epoch_permutation, fetch, put_on_device
    from deeplense_ssl.training.step import training_step

    cfg = dataclasses.replace(_ours_cfg(args, "unused", channels_last), method=method, **overrides)
    cfg.validate()
    device = resolve_device(args.device)
    data = put_on_device(make_images(args.n, args.chans, args.size), device)
    model = build_method_for(cfg, args.chans, args.size, False)
    model.to(device=device, memory_format=torch.channels_last if channels_last else None)
    opt = build_optimizer(
        cfg.optimizer, model, cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    amp = resolve_amp_dtype(cfg.amp, device)
    per_epoch = args.n // args.batch
    state = {"step": 0, "epoch": -1, "perm": None}

    def step() -> int:
        epoch, b = divmod(state["step"], per_epoch)
        if epoch != state["epoch"]:
            state["epoch"], state["perm"] = epoch, epoch_permutation(0, epoch, args.n)
        x = fetch(data, state["perm"][b * args.batch : (b + 1) * args.batch], device)
        training_step(model, model, x, opt, amp=amp, channels_last=channels_last)
        state["step"] += 1
        model.after_step(state["step"], 10**6)
        return args.batch

    return step


class _PILViews(torch.utils.data.Dataset):
    def __init__(self, images: list, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


def lightly_stepper(args: argparse.Namespace) -> Callable[[], int]:
    """One step of lightly's SimCLR loop: next DataLoader batch (PIL views) -> step."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from torch import nn

    from deeplense_ssl.backbones import build_backbone
    from deeplense_ssl.runtime import resolve_amp_dtype, resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = make_images(args.n, args.chans, args.size)
    mode = "RGB" if args.chans == 3 else "L"
    pil = [
        Image.fromarray(np.squeeze((img.transpose(1, 2, 0) * 255).round().astype(np.uint8)), mode)
        for img in images
    ]
    transform = SimCLRTransform(input_size=args.size, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(
        _PILViews(pil, transform),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.lightly_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.lightly_workers > 0,
    )
    backbone = build_backbone(args.backbone, in_chans=args.chans, stem=args.stem)
    model = nn.Sequential(backbone, SimCLRProjectionHead(backbone.feature_dim, 512, 128))
    model.to(device=device, memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.3 * args.batch / 256, momentum=0.9)
    amp = resolve_amp_dtype("auto", device)  # the precision ours picks on this device
    state = {"it": iter(loader)}

    def step() -> int:
        try:
            views, _ = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            views, _ = next(state["it"])
        x0, x1 = (
            v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            for v in views
        )
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            z0, z1 = model(x0), model(x1)
        loss = criterion(z0.float(), z1.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(x0)

    return step


def run_lightly(args: argparse.Namespace) -> dict:
    """One timed epoch of lightly's SimCLR loop (after a 1-step warm-up)."""
    from deeplense_ssl.runtime import resolve_device

    device = resolve_device(args.device)
    step = lightly_stepper(args)
    step()  # warm-up
    _sync(device, reset_peak=True)
    t0 = time.perf_counter()
    n_images = sum(step() for _ in range(args.n // args.batch))
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": n_images, "peak_mib": _peak_memory_mib(device)}


def _sync(device: torch.device, reset_peak: bool = False) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)


def _stepper(args: argparse.Namespace, name: str) -> Callable[[], int]:
    """``ours``, ``ours-nchw``, ``ours-fp32``, ``lightly``, a method name of ours, or
    ``dino-2views`` (DINO with its two global views only, to separate the multi-crop cost)."""
    if name == "ours":
        return ours_stepper(args)
    if name == "ours-nchw":
        return ours_stepper(args, channels_last=False)
    if name == "ours-fp32":
        return ours_stepper(args, amp="off")
    if name == "lightly":
        return lightly_stepper(args)
    if name == "dino-2views":
        return ours_stepper(args, method="dino", n_local_views=0)
    return ours_stepper(args, method=name)


def interleaved_steps(args: argparse.Namespace, names: list[str]) -> dict[str, list[float]]:
    """Seconds per image of single steps, alternating A B C C B A ... in this process."""
    from deeplense_ssl.runtime import resolve_device

    device = resolve_device(args.device)
    steppers = {name: _stepper(args, name) for name in names}
    for step in steppers.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            n = steppers[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / n)
    return times


# --------------------------------------------------------------------------------------------
# Driver: interleaved trials in subprocesses
# --------------------------------------------------------------------------------------------


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def header(args: argparse.Namespace) -> str:
    import lightly

    import deeplense_ssl

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return "\n".join(
        [
            "# train_speed: one SimCLR epoch, deeplense_ssl vs lightly",
            f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}",
            f"# cpu: {cpu} x{os.cpu_count()}, gpu: {gpu}, device: {args.device}, "
            f"threads: {args.threads}",
            f"# torch {torch.__version__}, lightly {lightly.__version__}, "
            f"deeplense_ssl {deeplense_ssl.__version__}, python {platform.python_version()}",
            f"# data: {args.n} x {args.chans}x{args.size}x{args.size} float32, batch "
            f"{args.batch}, {args.backbone}/{args.stem}, lightly workers {args.lightly_workers}",
        ]
    )


def _trial(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE), "--contender", name, *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} trial failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["images_per_s"] = result["images"] / result["seconds"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="images in the epoch")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--chans", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lightly-workers", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=16, help="interleaved single steps per contender (phase 1)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="epoch trials per contender (phase 2)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--contenders",
        default="ours,lightly",
        choices=[",".join(pair) for pair in PAIRS],
        help="the pair to compare (ours: the package defaults; ours-nchw: without "
        "channels-last; ours-fp32: float32 instead of the default autocast; ours-noprefetch / "
        "ours-prefetch: the background batch producer off / 2 batches ahead; file-memory / "
        "file-stream: pretrain on --data-file loaded or streamed under --memory-gb; the last "
        "three in phase 2 only)",
    )
    parser.add_argument("--contender", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--data-file", default=None, help="HDF5 for the file-* contenders")
    parser.add_argument("--memory-gb", type=float, default=None, help="file-*: --max-memory-gb")
    parser.add_argument("--max-steps", type=int, default=24, help="file-*: steps per trial")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma list of our methods to time step by step beside simclr (one process, "
        "interleaved), e.g. byol,simsiam,vicreg,barlow-twins,dino-2views,dino; replaces the "
        "lightly comparison",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.methods:
        method_table(args)
        return

    if args.contender:
        print(json.dumps(CONTENDERS[args.contender](args)))
        return
    names = args.contenders.split(",")
    base, other = names
    if not {"ours", "lightly"} >= set(names) and names[1] not in ("ours-nchw", "ours-fp32"):
        args.steps = 0  # whole runs only: the producer and the data path are not in a step
    if names[0].startswith("file-"):
        if not args.data_file:
            parser.error("the file-* contenders need --data-file")
        ensure_data_file(args)
    print(header(args))
    load = [_uptime()]
    print(f"# load before: {load[0]}")
    results: dict = {"args": vars(args), "header": header(args)}

    # Phase 1: single steps interleaved in one process (robust to a shared machine's load).
    if args.steps:
        times = interleaved_steps(args, names)
        med_s = {k: statistics.median(v) for k, v in times.items()}
        ratio = med_s[other] / med_s[base]
        print(
            f"[steps] {args.steps} interleaved steps each: median images/s {base} "
            f"{1 / med_s[base]:.1f}, {other} {1 / med_s[other]:.1f} -> ratio {ratio:.2f}x "
            f"(quartiles of the per-pair ratio: {_quartiles(times[other], times[base])})",
            flush=True,
        )
        results["steps"] = {"seconds_per_image": times, "ratio_images_per_s": ratio}

    # Phase 2: whole epochs in fresh subprocesses A B A B (end to end, and peak memory).
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    trials: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            res = _trial(name, args)
            trials[name].append(res)
            print(
                f"[epoch] round {r + 1} {name:9s} {res['images_per_s']:8.1f} images/s  "
                f"{res['seconds']:7.2f} s  peak {res['peak_mib']:8.0f} MiB",
                flush=True,
            )
    if args.rounds:
        med = {k: statistics.median(t["images_per_s"] for t in v) for k, v in trials.items()}
        mem = {k: statistics.median(t["peak_mib"] for t in v) for k, v in trials.items()}
        pairs = [
            o["images_per_s"] / li["images_per_s"]
            for o, li in zip(trials[base], trials[other], strict=True)
        ]
        print(
            f"[epoch] images/s median: {base} {med[base]:.1f}, {other} {med[other]:.1f} -> "
            f"ratio {med[base] / med[other]:.2f}x (per round: "
            f"{', '.join(f'{p:.2f}' for p in pairs)})"
        )
        print(
            f"[epoch] peak memory median: {base} {mem[base]:.0f} MiB, {other} "
            f"{mem[other]:.0f} MiB -> ratio {mem[base] / mem[other]:.2f}x "
            f"({'cuda max_memory_allocated' if on_cuda else 'peak RSS'})"
        )
        results["epochs"] = {
            "trials": trials,
            "ratio_images_per_s": med[base] / med[other],
            "ratio_peak_memory": mem[base] / mem[other],
        }
    load.append(_uptime())
    print(f"# load after: {load[1]}")
    results["load"] = load
    if args.json:
        from deeplense_ssl.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))


def method_table(args: argparse.Namespace) -> None:
    """``[methods]``: one step of each method beside SimCLR's, interleaved, same backbone,
    batch and data; prints seconds per step and the ratio to SimCLR (target <= 1.3x for the
    two-view methods; DINO's multi-crop reported separately from its two global views)."""
    names = ["simclr", *[m for m in args.methods.split(",") if m != "simclr"]]
    print(header(args))
    print(f"# load before: {_uptime()}")
    times = interleaved_steps(args, names)
    base = statistics.median(times["simclr"])
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        rows[name] = {"seconds_per_step": med * args.batch, "ratio_to_simclr": med / base}
        print(
            f"[methods] {name:13s} {med * args.batch:7.3f} s/step  {med / base:5.2f}x simclr "
            f"(quartiles of the per-step ratio: {_quartiles(times[name], times['simclr'])})",
            flush=True,
        )
    print(f"# load after: {_uptime()}")
    if args.json:
        from deeplense_ssl.io import write_text_atomic

        payload = {"args": vars(args), "header": header(args), "methods": rows}
        write_text_atomic(args.json, json.dumps(payload, indent=2))


CONTENDERS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "ours": run_ours,
    "ours-nchw": lambda a: run_ours(a, channels_last=False),
    "ours-fp32": lambda a: run_ours(a, amp="off"),
    "ours-noprefetch": lambda a: run_ours(a, prefetch=0),
    "ours-prefetch": lambda a: run_ours(a, prefetch=2),
    "lightly": run_lightly,
    "file-memory": lambda a: run_file(a, "in-memory"),
    "file-stream": lambda a: run_file(a, "stream"),
    "file-stream-noprefetch": lambda a: run_file(a, "stream", prefetch=0),
}
"""Phase-2 trials by name (each runs in its own subprocess)."""

PAIRS = [
    ("ours", "lightly"),
    ("ours", "ours-nchw"),
    ("ours", "ours-fp32"),
    ("ours", "ours-noprefetch"),
    ("ours", "ours-prefetch"),
    ("file-memory", "file-stream"),
    ("file-stream", "file-stream-noprefetch"),
]


def _quartiles(slow: list[float], fast: list[float]) -> str:
    ratios = sorted(a / b for a, b in zip(slow, fast, strict=True))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}"


if __name__ == "__main__":
    main()
