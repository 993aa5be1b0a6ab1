"""Validation-only check of the SSL full fine-tune's backbone learning rate (issue 12).

Reruns the SSL full fine-tunes of a ``label_efficiency.py`` work folder with another
``backbone_lr_scale`` (everything else as recorded in each run's ``config.json``, so the same
label subset and schedule) and prints the model-selection AUC of both on the run's own
validation split. The test set is never scored: this chooses a recipe, it reports nothing.

    python benchmarks/backbone_lr_check.py --work-dir /work/le/runs/model_ii \\
        --method contrastive-blur --fractions 1 --seeds 0 1 2 --scale 1.0 --out /work/le/blr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deeplense_ssl.config import FinetuneConfig
from deeplense_ssl.finetuning import finetune


def val_auc(run: Path) -> float:
    """The validation macro AUC a finetune run selected its epoch by."""
    return float(json.loads((run / "val_metrics.json").read_text())["val_auc_macro"])


def rerun(source: Path, scale: float, out: Path) -> Path:
    """``source``'s fine-tune again with ``backbone_lr_scale=scale`` into ``out`` (kept)."""
    if not (out / "val_metrics.json").exists():
        cfg = json.loads((source / "config.json").read_text())["config"]
        cfg.update(out=str(out), backbone_lr_scale=scale)
        finetune(FinetuneConfig(**cfg), progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", type=Path, required=True, help="one model's run folders")
    ap.add_argument("--method", default="contrastive-blur")
    ap.add_argument("--fractions", nargs="+", default=["1"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", type=Path, required=True, help="folder for the reruns")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for frac in args.fractions:
        for seed in args.seeds:
            pattern = f"ft-pre-{args.method}-s{seed}-*-full-f{frac}-s{seed}-*"
            source = sorted(args.work_dir.glob(pattern))[0]
            out = rerun(source, args.scale, args.out / f"full-f{frac}-s{seed}-blr{args.scale:g}")
            row = {"fraction": frac, "seed": seed, "val_auc_source": val_auc(source)}
            row[f"val_auc_scale_{args.scale:g}"] = val_auc(out)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
