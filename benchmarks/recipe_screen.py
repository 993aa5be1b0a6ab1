"""Screen pretraining recipes on a VALIDATION split (never the test set) before benchmarking.

Question: which method / augmentation / stem makes a frozen backbone whose linear probe beats a
frozen *random* backbone at few labels on simulated DeepLense-like data? This script is the
recipe search of the lensing-science issue; the final numbers come from
``label_efficiency.py`` on a separately simulated test set, with the winner as the default.

Data (simulated once per ``--work-dir`` with the package's simulator; every seed differs):

* unlabelled pool ``U``: ``--n-unlabelled`` images (seed 100 + seed), used for pretraining only;
* labelled pool ``L``: ``--n-labelled-per-class`` images per class (seed 200 + seed), split 50/50
  (stratified) into probe-training images and validation images.

For each variant: pretrain on ``U`` (``deeplense_ssl.training.pretrain``, the config overrides
of the variant), embed ``L`` with the frozen backbone (eval mode), and fit a logistic
regression (scikit-learn, standardised features) on 10% and on 100% of the probe-training half;
report the macro ROC-AUC on the validation half and the effective rank (RankMe) of the
validation embeddings. ``random`` is the frozen randomly initialised backbone, same probe.

Usage (what ran for benchmarks/RESULTS.md)::

    python benchmarks/recipe_screen.py --variants random simclr contrastive-blur vicreg \
        --epochs 10 --out benchmarks/results/recipe_screen_model_ii.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.checkpoint import load_pretrained_backbone
from deeplense_ssl.collapse import effective_rank
from deeplense_ssl.config import PretrainConfig, SimulateConfig
from deeplense_ssl.datasets import load_dataset
from deeplense_ssl.inference import embed
from deeplense_ssl.io import write_text_atomic
from deeplense_ssl.simulate import simulate_dataset
from deeplense_ssl.training import pretrain

VARIANTS: dict[str, dict] = {
    "simclr": {"method": "simclr"},
    "contrastive-blur": {"method": "contrastive-blur"},
    # ablations of the default: each view ingredient alone, and NT-Xent's temperature
    "contrastive-blur-noise-only": {"method": "contrastive-blur", "blur_sigmas_px": [0.0]},
    "contrastive-blur-blur-only": {"method": "contrastive-blur", "noise_std": 0.0},
    "contrastive-blur-t0.05": {"method": "contrastive-blur", "temperature": 0.05},
    "contrastive-blur-t0.2": {"method": "contrastive-blur", "temperature": 0.2},
    "contrastive-blur-t0.5": {"method": "contrastive-blur", "temperature": 0.5},
    # the default in bf16 autocast (CPUs with native bf16: ~1.9x the images per second)
    "contrastive-blur-bf16": {"method": "contrastive-blur", "amp": "bf16"},
    # the projector's size (default: 2 layers, 512 wide, 128 out), against the bf16 row above
    "contrastive-blur-proj1": {"method": "contrastive-blur", "amp": "bf16", "proj_layers": 1},
    "contrastive-blur-proj3-2048": {
        "method": "contrastive-blur",
        "amp": "bf16",
        "proj_layers": 3,
        "proj_hidden_dim": 2048,
    },
    "vicreg": {"method": "vicreg"},
    "barlow-twins": {"method": "barlow-twins"},
    "byol": {"method": "byol"},
    "simsiam": {"method": "simsiam"},
    "dino": {"method": "dino"},
    "simclr-exact": {"method": "simclr", "augment": "lensing-exact"},
    "vicreg-exact": {"method": "vicreg", "augment": "lensing-exact"},
    "simclr-small": {"method": "simclr", "stem": "small"},
    "vicreg-small": {"method": "vicreg", "stem": "small"},
    # simulation-informed positives: the second view renders the same scene, other source
    "simclr-paired": {"method": "simclr", "paired": True},
    "vicreg-paired": {"method": "vicreg", "paired": True},
    "byol-paired": {"method": "byol", "paired": True},
    "simclr-exact-paired": {"method": "simclr", "augment": "lensing-exact", "paired": True},
    "vicreg-exact-paired": {"method": "vicreg", "augment": "lensing-exact", "paired": True},
    "contrastive-blur-paired": {"method": "contrastive-blur", "paired": True},
    "vicreg-psf": {"method": "vicreg", "augment": "psf-noise"},
    "byol-psf": {"method": "byol", "augment": "psf-noise"},
    "barlow-twins-psf": {"method": "barlow-twins", "augment": "psf-noise"},
    "vicreg-psf-paired": {"method": "vicreg", "augment": "psf-noise", "paired": True},
}
"""Named config overrides of the pretraining (``random``: no pretraining)."""


def simulate(
    path: Path, model: str, n_per_class: int, seed: int, size: int | None, variant: int = 0
) -> Path:
    """Simulate once (cached by file name); ``variant`` > 0: the same scenes, other source."""
    if not path.exists():
        cfg = SimulateConfig(
            out=str(path),
            model=model,
            n_per_class=n_per_class,
            seed=seed,
            image_size=size,
            workers=2,
            source_variant=variant,
        )
        cfg.validate()
        simulate_dataset(cfg)
    return path


def features(backbone: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Frozen backbone features (eval mode) of ``(N, C, H, W)`` images."""
    return embed(backbone, torch.from_numpy(images), "cpu", batch_size=128).numpy()


def screen_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the labelled pool's stratified 50/50 split: (probe-training, validation)."""
    idx_tr, idx_val = train_test_split(
        np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=seed
    )
    return idx_tr, idx_val


def probe_scores(feats: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Macro AUC on the validation half with 10% and 100% of the probe-training half."""
    idx_tr, idx_val = screen_halves(labels, seed)
    out = {"rankme_val": effective_rank(torch.from_numpy(feats[idx_val]))}
    for frac in (0.1, 1.0):
        sub = idx_tr
        if frac < 1.0:
            sub, _ = train_test_split(
                idx_tr, train_size=frac, stratify=labels[idx_tr], random_state=seed
            )
        scaler = StandardScaler().fit(feats[sub])
        clf = LogisticRegression(C=0.1, max_iter=5000).fit(
            scaler.transform(feats[sub]), labels[sub]
        )
        probs = clf.predict_proba(scaler.transform(feats[idx_val]))
        out[f"auc_val_f{frac:g}"] = float(
            roc_auc_score(labels[idx_val], probs, multi_class="ovr", average="macro")
        )
        out[f"labels_f{frac:g}"] = int(len(sub))
    return out


def pretrained_backbone(name: str, args: argparse.Namespace, unlabelled: Path) -> torch.nn.Module:
    """Pretrain variant ``name`` on the unlabelled pool (or a random backbone)."""
    if name == "random":
        torch.manual_seed(args.seed)
        return build_backbone("resnet18", in_chans=1, stem=args.stem).eval()
    overrides = {"stem": args.stem, **VARIANTS[name]}
    if overrides.pop("paired", False):
        overrides["paired_data"] = str(unlabelled.with_name(unlabelled.stem + "-v1.h5"))
        simulate(
            Path(overrides["paired_data"]),
            args.model,
            args.n_unlabelled_per_class,
            100 + args.seed,
            args.image_size,
            variant=1,
        )
    cfg = PretrainConfig(
        data=str(unlabelled),
        out=str(Path(args.work_dir) / f"{name}-s{args.seed}"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device="cpu",
        resume=True,
        **overrides,
    )
    run = pretrain(cfg, progress=False)
    backbone, _ = load_pretrained_backbone(run)
    return backbone


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["random", "simclr", "vicreg"],
        choices=["random", *VARIANTS],
    )
    ap.add_argument("--model", default="model_ii")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--n-unlabelled-per-class", type=int, default=500)
    ap.add_argument("--n-labelled-per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--stem", default="imagenet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default="recipe_screen_runs")
    ap.add_argument("--out", default=None, help="append the rows to this JSON file")
    args = ap.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}-{args.image_size or 'native'}"
    unlabelled = simulate(
        work / f"U-{tag}-s{args.seed}.h5",
        args.model,
        args.n_unlabelled_per_class,
        100 + args.seed,
        args.image_size,
    )
    labelled = simulate(
        work / f"L-{tag}-s{args.seed}.h5",
        args.model,
        args.n_labelled_per_class,
        200 + args.seed,
        args.image_size,
    )
    data = load_dataset(labelled, normalize="minmax", progress=False)
    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    for name in args.variants:
        t0 = time.perf_counter()
        backbone = pretrained_backbone(name, args, unlabelled)
        scores = probe_scores(features(backbone, data.images), data.labels, args.seed)
        row = {"variant": name, "model": args.model, "seed": args.seed, "epochs": args.epochs,
               "stem": args.stem, **scores, "seconds": round(time.perf_counter() - t0, 1),
               "command": cmd}  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.out:  # one row at a time: an interrupted screen keeps what it measured
            old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
            write_text_atomic(args.out, json.dumps(old + [row], indent=1))


if __name__ == "__main__":
    main()
