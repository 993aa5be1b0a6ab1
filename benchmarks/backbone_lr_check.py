"""Validation-only checks of the SSL full fine-tune's backbone learning rate (issue 12).

Two modes; neither ever scores a ``label_efficiency.py`` test set (they choose a recipe, they
report nothing):

* ``--work-dir``: rerun the SSL full fine-tunes of a ``label_efficiency.py`` work folder with
  another ``backbone_lr_scale`` (everything else as recorded in each run's ``config.json``, so
  the same label subset and schedule) and print the model-selection AUC of both on the run's own
  validation split (135 images at 100% of Model II's labels, 15 at 10%: small).

      python benchmarks/backbone_lr_check.py --work-dir /work/le/runs/model_ii \\
          --method contrastive-blur --fractions 1 --seeds 0 1 2 --scale 1.0 --out /work/le/blr

* ``--screen-labelled``: the decision on a larger, separate pool (``--heads full lp-ft``
  also compares LP-FT, the linear probe first, at each scale). The recipe screen's labelled
  pool (``recipe_screen.py``: its own simulation seed) is split 50/50, stratified, as the screen
  splits it; each scale fine-tunes the screen's pretrained backbone on a fraction of the first
  half with a fixed schedule (the label-efficiency recipe otherwise) and is scored on the whole
  second half (450 images for 300 per class).

      python benchmarks/backbone_lr_check.py \\
          --screen-labelled /work/screen/L-model_ii-native-s0.h5 \\
          --checkpoint /work/screen/contrastive-blur-s0 \\
          --like /work/le/runs/model_ii/ft-pre-contrastive-blur-s0-462eb84f-full-f1-s0-f5be983b \\
          --fractions 0.1 1 --seeds 0 1 2 --scales 0.1 1.0 --out /work/le/blr_screen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recipe_screen import screen_halves

from deeplense_ssl.config import EvaluateConfig, FinetuneConfig
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.heads import BACKBONE_TRAINING_HEADS
from deeplense_ssl.io import read_hdf5, write_hdf5


def val_auc(run: Path) -> float:
    """The validation macro AUC a finetune run selected its epoch by."""
    return float(json.loads((run / "val_metrics.json").read_text())["val_auc_macro"])


def rerun(source: Path, out: Path, **changes: object) -> Path:
    """``source``'s fine-tune again with ``changes`` into ``out`` (kept; skipped when done)."""
    if not (out / "config.json").exists() or not (out / "model.pt").exists():
        cfg = json.loads((source / "config.json").read_text())["config"]
        cfg.update(out=str(out), **changes)
        finetune(FinetuneConfig(**cfg), progress=False)
    return out


def split_halves(labelled: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The recipe screen's stratified 50/50 split of ``labelled`` as two files (cached)."""
    paths = folder / "screen-train-half.h5", folder / "screen-val-half.h5"
    if all(p.exists() for p in paths):
        return paths
    raw = read_hdf5(labelled)
    for path, idx in zip(paths, screen_halves(raw.labels, seed), strict=True):
        params = {k: v[idx] for k, v in raw.params.items()}
        sources = [raw.sources[i] for i in idx]
        write_hdf5(path, raw.images[idx], raw.labels[idx], raw.class_names, sources=sources,
                   params=params)  # fmt: skip
    return paths


def held_out_auc(run: Path, data: Path) -> float:
    """Macro AUC of a finetune run on ``data`` (no bootstrap, no attribution)."""
    out = run / "heldout_metrics.json"
    if not out.exists():
        cfg = EvaluateConfig(checkpoint=str(run), data=str(data), out=str(out), n_bootstrap=0,
                             localisation_images=0, device="cpu")  # fmt: skip
        evaluate(cfg, progress=False)
    return float(json.loads(out.read_text())["roc_auc"]["macro"])


def work_dir_mode(args: argparse.Namespace) -> None:
    """Rerun a label-efficiency folder's SSL full fine-tunes; compare validation AUCs."""
    for frac in args.fractions:
        for seed in args.seeds:
            pattern = f"ft-pre-{args.method}-s{seed}-*-full-f{frac}-s{seed}-*"
            source = sorted(args.work_dir.glob(pattern))[0]
            out = args.out / f"full-f{frac}-s{seed}-blr{args.scale:g}"
            rerun(source, out, backbone_lr_scale=args.scale)
            row = {"fraction": frac, "seed": seed, "val_auc_source": val_auc(source)}
            row[f"val_auc_scale_{args.scale:g}"] = val_auc(out)
            print(json.dumps(row), flush=True)


def screen_mode(args: argparse.Namespace) -> None:
    """Fine-tune the screen's backbone per scale on the train half; score the val half."""
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = split_halves(args.screen_labelled, args.out)
    for frac in args.fractions:
        for seed in args.seeds:
            row: dict[str, object] = {"fraction": frac, "seed": seed}
            for head in args.heads:
                for scale in args.scales:
                    out = args.out / f"{head}-f{frac}-s{seed}-blr{scale:g}"
                    rerun(args.like, out, data=str(train), checkpoint=str(args.checkpoint),
                          label_fraction=float(frac), val_fraction=0.0, seed=seed,
                          backbone_lr_scale=scale, head=head)  # fmt: skip
                    row[f"heldout_auc_{head}_scale_{scale:g}"] = held_out_auc(out, val)
            print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", type=Path, help="one model's label-efficiency run folders")
    ap.add_argument("--screen-labelled", type=Path, help="the recipe screen's labelled pool")
    ap.add_argument("--checkpoint", type=Path, help="screen mode: the pretrain run to fine-tune")
    ap.add_argument("--like", type=Path, help="screen mode: a full fine-tune run to copy")
    ap.add_argument("--method", default="contrastive-blur")
    ap.add_argument("--fractions", nargs="+", default=["1"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--scale", type=float, default=1.0, help="work-dir mode: the other scale")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.1, 1.0], help="screen mode")
    ap.add_argument("--heads", nargs="+", default=["full"], choices=BACKBONE_TRAINING_HEADS,
                    help="screen mode: the fine-tunes to compare")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="folder for the reruns")
    args = ap.parse_args()
    if args.screen_labelled:
        if not (args.checkpoint and args.like):
            ap.error("--screen-labelled needs --checkpoint and --like")
        screen_mode(args)
    elif args.work_dir:
        work_dir_mode(args)
    else:
        ap.error("give --work-dir or --screen-labelled")


if __name__ == "__main__":
    main()
