"""Tiny synthetic data and a fake pretrain run for the finetune / evaluate / report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.checkpoint import backbone_state_for_file, save_checkpoint
from deeplense_ssl.config import EvaluateConfig, FinetuneConfig, config_from_sources
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.runs import write_run_config


def toy_images(n_per_class: int, size: int = 16, chans: int = 1, seed: int = 0, n_classes=3):
    """Ring images; class 1 adds a bright spot, class 2 a bright line; Gaussian noise.

    Returns:
        (images (N, C, H, W) float32, labels (N,) int64).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    ring = np.exp(-((r - size / 4) ** 2) / 2.0)
    images, labels = [], []
    for c in range(n_classes):
        for _ in range(n_per_class):
            img = ring.copy()
            if c == 1:
                y, x = rng.integers(2, size - 2, 2)
                img[y - 1 : y + 2, x - 1 : x + 2] += 1.5
            elif c == 2:
                img[size // 2, 2:-2] += 1.0
                if rng.random() < 0.5:
                    img = img.T.copy()
            elif c >= 3:
                img = np.roll(img, c, axis=0)
            img = img + 0.1 * rng.standard_normal(img.shape)
            images.append(np.repeat(img[None], chans, axis=0))
            labels.append(c)
    return np.asarray(images, np.float32), np.asarray(labels, np.int64)


def write_toy_h5(path: Path, n_per_class=20, size=16, chans=1, seed=0, class_names=None):
    images, labels = toy_images(n_per_class, size, chans, seed, n_classes=len(class_names or "abc"))
    names = class_names or ["no_sub", "cdm", "axion"]
    write_hdf5(path, images, labels, names, sources=[f"toy[{i}]" for i in range(len(labels))])
    return path


def fake_pretrain_run(run_dir: Path, in_chans: int = 1, stem: str = "small", seed: int = 0):
    """A finished pretrain run folder with a random resnet18 (no training needed)."""
    torch.manual_seed(seed)
    bb = build_backbone("resnet18", in_chans=in_chans, stem=stem)
    write_run_config(
        run_dir,
        {
            "config": {
                "method": "simclr",
                "normalize": "minmax",
                "image_size": None,
                "nan_policy": "raise",
                "backbone": "resnet18",
                "stem": stem,
            },
            "resolved": {"input_shape": [in_chans, 16, 16], "final_step": 3, "final_epoch": 1},
            "backbone_spec": bb.spec,
        },
    )
    save_checkpoint(run_dir / "backbone.pt", backbone_state_for_file(bb))
    (run_dir / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "epoch": 0, "loss": {5.0 - s * 0.5}}}\n' for s in range(1, 4))
    )
    return run_dir


def finetune_and_evaluate(
    root: Path,
    *,
    head: str = "linear",
    init: str = "pretrained",
    label_fraction: float = 1.0,
    epochs: int = 2,
    n_bootstrap: int = 50,
    name: str | None = None,
):
    """Toy train/test files + fake pretrain run under ``root`` (made once), then one finetune
    run and its evaluation. Returns (run_dir, metrics dict)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "train.h5").exists():
        write_toy_h5(root / "train.h5", n_per_class=20, seed=0)
        write_toy_h5(root / "test.h5", n_per_class=8, seed=1)
        fake_pretrain_run(root / "pretrain")
    out = root / (name or f"ft_{init}_{head}_{label_fraction}")
    cfg = config_from_sources(
        FinetuneConfig,
        None,
        {
            "data": str(root / "train.h5"),
            "checkpoint": str(root / "pretrain"),
            "head": head,
            "init": init,
            "label_fraction": label_fraction,
            "epochs": epochs,
            "batch_size": 32,
            "out": str(out),
        },
    )
    finetune(cfg, progress=False)
    ecfg = config_from_sources(
        EvaluateConfig,
        None,
        {"checkpoint": str(out), "data": str(root / "test.h5"), "n_bootstrap": n_bootstrap},
    )
    return out, evaluate(ecfg, progress=False)


# a file as `deeplense-ssl simulate` writes it (provenance + substructure params), toy pixels
SIZE, SCALE, FWHM = 20, 0.1, 0.1  # stored side (px), arcsec / px, PSF FWHM (arcsec)
PROVENANCE = {
    "generator": "deeplense_ssl.simulate",
    "image_size_px": SIZE,
    "instrument": {"pixel_scale_arcsec": SCALE, "psf_fwhm_arcsec": FWHM},
}


def write_simulated_like(path, n_per_class=3, provenance=PROVENANCE):
    """20-px toy images with the params a simulated file stores: two subhalos per cdm image,
    a vortex per axion image, nothing for no_sub."""
    images, labels = toy_images(n_per_class, size=SIZE, seed=4)
    rng = np.random.default_rng(0)
    n = len(labels)
    sub_x, sub_y = np.full((n, 2), np.nan), np.full((n, 2), np.nan)
    angle, half = np.full(n, np.nan), np.full(n, np.nan)
    cdm, axion = labels == 1, labels == 2
    sub_x[cdm], sub_y[cdm] = rng.uniform(-0.7, 0.7, (2, cdm.sum(), 2))
    angle[axion], half[axion] = rng.uniform(0, np.pi, axion.sum()), 0.5
    params = {
        "subhalo_x_arcsec": sub_x,
        "subhalo_y_arcsec": sub_y,
        "vortex_angle_rad": angle,
        "vortex_half_length_arcsec": half,
    }
    attrs = {"provenance": json.dumps(provenance)} if provenance else None
    write_hdf5(path, images, labels, ["no_sub", "cdm", "axion"], params=params, attrs=attrs)
    return images, labels, params
