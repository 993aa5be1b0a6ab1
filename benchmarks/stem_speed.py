"""Training throughput of the backbone stems, measured side by side.

Question: how much cheaper than the ``cifar`` stem (3x3/1, no max-pool) is the ``small`` stem
(3x3/2, no max-pool) that ``deeplense_ssl.backbones`` offers for 64x64 lensing images, and how
do both compare with the ImageNet stem (7x7/2 + max-pool)?

Method: forward + backward (sum of the features as a dummy loss, SGD-free) of
``build_backbone(backbone, in_chans, stem)`` on random ``(batch, in_chans, size, size)`` input, in
training mode. The stems are timed in interleaved rounds (round-robin), so slow drifts of a shared
machine hit all of them alike; each round times ``--steps`` steps after ``--warmup`` untimed ones.
Reported: images/s per stem (median, best and standard deviation over rounds; on a shared
machine the best round is the closest to an idle core), the median over rounds of the per-round
throughput ratios to ``cifar`` and ``imagenet`` (paired, so load spikes largely cancel), and the
forward multiply-accumulates per image of the conv/linear layers (exact, noise-free). A
reference variant ``cifar+maxpool`` (3x3/1 then the 3x3/2 max-pool, the same layer1 resolution
as ``small``) is timed too, as the other obvious way to halve the resolution.

Command (recorded in benchmarks/README.md, section "Backbone stems")::

    .venv/bin/python benchmarks/stem_speed.py --threads 2 --rounds 7 --steps 2 --out stem_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torchvision
from machine import cpu_name
from torch import nn

from deeplense_ssl.backbones import STEMS, build_backbone


def _variant(backbone: str, in_chans: int, stem: str) -> nn.Module:
    if stem == "cifar+maxpool":
        model = build_backbone(backbone, in_chans, "cifar")
        model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        return model
    return build_backbone(backbone, in_chans, stem)


def _count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the conv and linear layers for one forward pass of ``x``."""
    total = 0

    def hook(module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            total += output.numel() * k // module.groups
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    model.train()
    for h in handles:
        h.remove()
    return total


def _time_steps(model: nn.Module, x: torch.Tensor, steps: int, sync) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", default=None, help="optional JSON results file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    stems = [*STEMS, "cifar+maxpool"]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {
        s: _variant(args.backbone, args.in_chans, s).to(device, memory_format=fmt) for s in stems
    }
    x = torch.randn(args.batch, args.in_chans, args.size, args.size, device=device)
    x = x.contiguous(memory_format=fmt)

    header = {
        "script": "benchmarks/stem_speed.py",
        "args": vars(args),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "cpu_model": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print("# " + json.dumps(header))

    macs = {s: _count_macs(m, x[:1]) for s, m in models.items()}
    for model in models.values():  # warm-up (allocator, kernels)
        for _ in range(args.warmup):
            _time_steps(model, x, 1, sync)
    per_round: dict[str, list[float]] = {s: [] for s in stems}
    for r in range(args.rounds):
        order = stems if r % 2 == 0 else stems[::-1]  # alternate order to cancel position bias
        for s in order:
            seconds = _time_steps(models[s], x, args.steps, sync)
            per_round[s].append(args.batch * args.steps / seconds)

    results = {}
    print(
        f"{'stem':<15}{'median img/s':>14}{'best':>8}{'std':>8}{'x cifar':>9}{'x imagenet':>12}"
        f"{'GMAC/img':>10}  layer1"
    )
    for s in stems:
        vals = per_round[s]
        med, best = statistics.median(vals), max(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        # Paired ratios: same round, so a load spike hits numerator and denominator alike.
        vs_cifar = statistics.median(a / b for a, b in zip(vals, per_round["cifar"], strict=True))
        vs_imagenet = statistics.median(
            a / b for a, b in zip(vals, per_round["imagenet"], strict=True)
        )
        layer1 = args.size // {"imagenet": 4, "cifar": 1}.get(s, 2)
        gmac = macs[s] / 1e9
        results[s] = {
            "median_images_per_s": med,
            "best_images_per_s": best,
            "std": std,
            "ratio_to_cifar": vs_cifar,
            "ratio_to_imagenet": vs_imagenet,
            "gmac_per_image": gmac,
        }
        print(
            f"{s:<15}{med:>14.1f}{best:>8.1f}{std:>8.1f}{vs_cifar:>9.2f}"
            f"{vs_imagenet:>12.2f}{gmac:>10.3f}  {layer1}x{layer1}"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"header": header, "results": results, "per_round": per_round}, fh, indent=1)


if __name__ == "__main__":
    main()
