"""CIFAR-10 sanity check: does our SimCLR learn what SimCLR is known to learn?

Runs, on the same data, backbone (ResNet-18, CIFAR stem: 3x3/1 conv, no max-pool), batch,
optimiser, schedule and epoch budget, side by side in one process:

* ``ours``: ``deeplense_ssl.training.pretrain`` (method ``simclr``, ``cifar`` augmentation preset,
  batched on the training device);
* ``lightly``: lightly's ``SimCLRTransform`` (PIL, per sample, in DataLoader workers), its
  ``SimCLRProjectionHead`` and ``NTXentLoss``;
* ``random-init``: the same backbone, untrained;
* ``supervised``: the same backbone trained with labels (crop + flip) for the same epochs.

Every backbone is then scored identically: weighted kNN accuracy (k=200, T=0.1, as in lightly's
CIFAR-10 benchmark) and a linear probe on frozen features, on the test split. Published numbers
from DOMAIN.md are printed beside ours; a CPU run of a few epochs is expected to land far below
them (they take hundreds of GPU epochs), so the check that matters on CPU is the ordering
``random-init < ours ~ lightly``.

Usage (data in the official ``cifar-10-batches-py`` layout; the reader never unpickles code)::

    python benchmarks/cifar10_sanity.py --data-dir ../shared/data/cifar-10-subset --setting quick
    python benchmarks/cifar10_sanity.py --data-dir ~/data/cifar10 --download --setting full  # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name
from torch import nn

from deeplense_ssl import __version__
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.datasets import ImageSet
from deeplense_ssl.finetuning import train_probe
from deeplense_ssl.heads import LinearHead
from deeplense_ssl.inference import embed
from deeplense_ssl.io import read_cifar10, write_text_atomic
from deeplense_ssl.metrics import knn_predict
from deeplense_ssl.optim import warmup_cosine
from deeplense_ssl.runtime import resolve_device, seed_everything
from deeplense_ssl.training import pretrain

PUBLISHED = {
    "SimCLR paper, ResNet-50, 1000 ep, linear": 94.0,
    "SimCLR official repo, ResNet-18, linear": 91.0,
    "lightly, 200 ep, batch 512, kNN": 84.8,
    "lightly, 800 ep, kNN": 87.9,
    "strong reproduction, 100 ep, kNN": 83.2,
    "strong reproduction, 500 ep, kNN": 90.3,
    "solo-learn, 1000 ep, online linear": 90.74,
}

SETTINGS = {
    # CPU: a few minutes per method on 2 cores; numbers far from converged.
    "quick": dict(n_train=1000, epochs=2, batch_size=128, probe_epochs=50),
    # GPU: the lightly benchmark budget.
    "full": dict(n_train=None, epochs=200, batch_size=512, probe_epochs=100),
}
BASE_LR = 0.3  # SGD peak lr = BASE_LR * batch / 256 (SimCLR paper, LARS-free variant)
WEIGHT_DECAY = 5e-4
TEMPERATURE = 0.5


def lightly_simclr(
    images: np.ndarray, epochs: int, batch_size: int, device: torch.device, seed: int
) -> tuple[nn.Module, float]:
    """lightly's SimCLR recipe on the same backbone and optimiser; returns (backbone, img/s).

    On a GPU it gets what ours gets there (bf16 autocast with the loss in float32,
    channels-last) and 8 loader workers for its per-sample PIL transforms; on the CPU one worker,
    so that the augmentation does not take the cores the training step needs.
    """
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    seed_everything(seed)
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    pil = [Image.fromarray(x) for x in (images.transpose(0, 2, 3, 1) * 255).round().astype("uint8")]

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pil)

        def __getitem__(self, i: int):
            return transform(pil[i])

    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=8 if cuda else 1,
        pin_memory=cuda,
        persistent_workers=True,
    )
    fmt = torch.channels_last if cuda else torch.preserve_format
    backbone = build_backbone("resnet18", in_chans=3, stem="cifar").to(device, memory_format=fmt)
    head = SimCLRProjectionHead(512, 512, 128).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    lr = BASE_LR * batch_size / 256
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    loss_fn = NTXentLoss(temperature=TEMPERATURE)
    total = epochs * len(loader)
    warmup = max(1, len(loader))  # one warm-up epoch, like ours
    step, n_seen, t0 = 0, 0, time.perf_counter()
    backbone.train()
    head.train()
    for _ in range(epochs):
        for views in loader:
            for g in opt.param_groups:
                g["lr"] = lr * warmup_cosine(step, warmup, total)
            x0, x1 = (v.to(device, non_blocking=True, memory_format=fmt) for v in views[:2])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                z0, z1 = head(backbone(x0)), head(backbone(x1))
            loss = loss_fn(z0.float(), z1.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n_seen += len(x0)
    return backbone, n_seen / (time.perf_counter() - t0)


def supervised(
    images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int, device, seed: int
) -> nn.Module:
    """Supervised baseline: the same backbone + linear layer, crop-and-flip augmentation."""
    from deeplense_ssl.transforms import ViewAugmenter

    gen = seed_everything(seed)
    backbone = build_backbone("resnet18", in_chans=3, stem="cifar").to(device)
    head = LinearHead(backbone.feature_dim, int(labels.max()) + 1).to(device)
    aug = ViewAugmenter("none", in_chans=3, image_size=32, hflip_p=0.5, crop_scale=(0.5, 1.0))
    params = list(backbone.parameters()) + list(head.parameters())
    lr = 0.1 * batch_size / 256
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = max(1, len(x_all) // batch_size)
    total, step = epochs * steps, 0
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for s in range(steps):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * warmup_cosine(step, steps, total)
            x = aug(x_all[idx].to(device))
            loss = nn.functional.cross_entropy(head(backbone(x)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return backbone


def score(backbone, train_x, train_y, test_x, test_y, class_names, device, probe_epochs, seed):
    """kNN (k=200, T=0.1) and linear-probe top-1 accuracy (%) on the test split."""
    f_train = embed(backbone, train_x, device).cpu()
    f_test = embed(backbone, test_x, device).cpu()
    pred, _ = knn_predict(f_train, train_y, f_test, k=200, temperature=0.1, num_classes=10)
    knn = float((np.asarray(pred) == test_y).mean() * 100)
    gen = torch.Generator().manual_seed(seed)
    # Model selection on a held-out tenth of the training features, never on the test set.
    n_val = max(10, len(f_train) // 10)
    perm = torch.randperm(len(f_train), generator=gen)
    val, tr = perm[:n_val], perm[n_val:]
    y = torch.from_numpy(train_y)
    head = LinearHead(f_train.shape[1], 10)
    train_probe(
        head, f_train[tr], y[tr], f_train[val], y[val], class_names,
        epochs=probe_epochs, batch_size=256, lr=1e-3, weight_decay=1e-4, generator=gen,
    )  # fmt: skip
    head.eval()
    with torch.no_grad():
        probe = float((head(f_test).argmax(1).numpy() == test_y).mean() * 100)
    return knn, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py")
    ap.add_argument("--download", action="store_true", help="fetch CIFAR-10 via torchvision")
    ap.add_argument("--setting", choices=list(SETTINGS), default="quick")
    ap.add_argument("--epochs", type=int, default=None, help="override the setting's epochs")
    ap.add_argument("--n-train", type=int, default=None, help="override the training subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-lightly", action="store_true")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--work-dir", default="cifar10_runs", help="run folders (checkpoints) go here")
    args = ap.parse_args()

    setting = dict(SETTINGS[args.setting])
    if args.epochs is not None:
        setting["epochs"] = args.epochs
    if args.n_train is not None:
        setting["n_train"] = args.n_train
    device = resolve_device(args.device)
    if args.download:
        import torchvision

        torchvision.datasets.CIFAR10(args.data_dir, train=True, download=True)
        torchvision.datasets.CIFAR10(args.data_dir, train=False, download=True)
    train_x, train_y, names = read_cifar10(args.data_dir, "train")
    test_x, test_y, _ = read_cifar10(args.data_dir, "test")
    if setting["n_train"]:
        keep = np.random.default_rng(args.seed).permutation(len(train_x))[: setting["n_train"]]
        train_x, train_y = train_x[np.sort(keep)], train_y[np.sort(keep)]
    epochs, bs = setting["epochs"], setting["batch_size"]
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setting": args.setting,
        **setting,
        "n_test": len(test_x),
        "device": str(device),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "deeplense_ssl": __version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(header, indent=1))
    results: dict[str, dict] = {}

    def record(name: str, backbone: nn.Module, seconds: float, imgs_per_s: float | None) -> None:
        knn, probe = score(
            backbone, train_x, train_y, test_x, test_y, names, device,
            setting["probe_epochs"], args.seed,
        )  # fmt: skip
        results[name] = {
            "knn_top1": knn,
            "linear_top1": probe,
            "train_seconds": seconds,
            "src_images_per_s": imgs_per_s,
        }
        print(f"{name:12s} kNN {knn:5.1f}%  linear {probe:5.1f}%  ({seconds:.0f} s)", flush=True)

    gen_dir = Path(args.work_dir)
    t0 = time.perf_counter()
    cfg = PretrainConfig(
        data="cifar10", out=str(gen_dir / "ours"), method="simclr", backbone="resnet18",
        stem="cifar", augment="cifar", normalize="none", epochs=epochs, batch_size=bs,
        base_lr=BASE_LR, weight_decay=WEIGHT_DECAY, temperature=TEMPERATURE,
        proj_hidden_dim=512, proj_out_dim=128, seed=args.seed, device=args.device,
        channels_last=device.type == "cuda",
    )  # fmt: skip
    if (gen_dir / "ours").exists():
        import shutil

        shutil.rmtree(gen_dir / "ours")
    data = ImageSet(train_x, train_y, names, [""] * len(train_x))
    run = pretrain(cfg, dataset=data)
    from deeplense_ssl.checkpoint import load_pretrained_backbone

    ours, _ = load_pretrained_backbone(run)
    secs = time.perf_counter() - t0
    record("ours", ours.to(device), secs, epochs * (len(train_x) // bs) * bs / secs)
    if not args.skip_lightly:
        t0 = time.perf_counter()
        theirs, rate = lightly_simclr(train_x, epochs, bs, device, args.seed)
        record("lightly", theirs, time.perf_counter() - t0, rate)
    torch.manual_seed(args.seed)
    record("random-init", build_backbone("resnet18", 3, "cifar").to(device), 0.0, None)
    t0 = time.perf_counter()
    sup = supervised(train_x, train_y, epochs, bs, device, args.seed)
    record("supervised", sup, time.perf_counter() - t0, None)

    print("\nPublished (DOMAIN.md), for scale:")
    for k, v in PUBLISHED.items():
        print(f"  {v:5.1f}%  {k}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"header": header, "results": results, "published": PUBLISHED, "peak_rss_mb": peak_mb}
    if "lightly" in results and results["lightly"]["src_images_per_s"]:
        ratio = results["ours"]["src_images_per_s"] / results["lightly"]["src_images_per_s"]
        out["speed_ratio_ours_over_lightly"] = ratio
        print(f"\nSimCLR training speed, ours / lightly: {ratio:.2f}x")
    if args.out:
        write_text_atomic(args.out, json.dumps(out, indent=1))
        print(f"results -> {args.out}")
    assert all(math.isfinite(r["knn_top1"]) for r in results.values())


if __name__ == "__main__":
    main()
