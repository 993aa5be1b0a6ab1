"""How many labels does self-supervision save on DeepLense-like data?

For each simulated model (Model I- and Model II-like by default), each SSL method
(``simclr``, ``contrastive-rotation``, ``contrastive-blur``, ``rotation``, ``blur``) is pretrained
once per seed on the unlabelled training images, then a linear probe is trained at each label
fraction. The baselines are a linear probe on a frozen randomly initialised backbone and
supervised training from scratch, at the same fractions and seeds. Every run is scored on a
separately simulated test set (different seed): macro one-vs-rest ROC-AUC with a 95% bootstrap
interval. Results go to a JSON file and a Markdown table (``--markdown``).

All runs go through the package's public functions (the same code as the CLI): simulate ->
pretrain -> finetune -> evaluate.

Usage::

    # CPU budget (what ran here; ~1 h on 2 cores)
    python benchmarks/label_efficiency.py --setting cpu \
        --out benchmarks/results/label_eff_cpu.json --markdown benchmarks/results/label_eff_cpu.md
    # GPU budget
    python benchmarks/label_efficiency.py --setting gpu --out label_eff_gpu.json
    # one table per model from several result files (extra seeds, longer pretraining budgets)
    python benchmarks/label_efficiency.py --tables benchmarks/results/label_eff_cpu*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from deeplense_ssl import __version__
from deeplense_ssl.config import (
    EvaluateConfig,
    FinetuneConfig,
    PretrainConfig,
    SimulateConfig,
)
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.io import write_text_atomic
from deeplense_ssl.simulate import simulate_dataset
from deeplense_ssl.training import pretrain

METHODS = ("simclr", "contrastive-rotation", "contrastive-blur", "rotation", "blur")
SETTINGS = {
    "cpu": dict(
        models=("model_ii", "model_i"),
        image_size={"model_i": 96, "model_ii": 64},  # model_i needs >= 88 px for its ring
        n_train_per_class=300,
        n_test_per_class=150,
        pretrain_epochs=6,
        batch_size=96,
        probe_epochs=40,
        scratch_epochs=10,
        fractions=(0.01, 0.1, 1.0),
        seeds=(0,),
        n_bootstrap=500,
    ),
    "gpu": dict(
        models=("model_ii", "model_i"),
        image_size={"model_i": 150, "model_ii": 64},
        n_train_per_class=10000,
        n_test_per_class=2000,
        pretrain_epochs=100,
        batch_size=256,
        probe_epochs=100,
        scratch_epochs=60,
        fractions=(0.01, 0.1, 1.0),
        seeds=(0, 1, 2),
        n_bootstrap=1000,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setting", choices=list(SETTINGS), default="cpu")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="override the setting's")
    ap.add_argument("--no-baselines", action="store_true", help="skip random-init / supervised")
    ap.add_argument("--work-dir", default="label_efficiency_runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="label_efficiency.json")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    ap.add_argument(
        "--tables",
        nargs="+",
        metavar="JSON",
        help="run nothing: merge these result files (seeds, budgets) into one table per model",
    )
    args = ap.parse_args()
    if args.tables:
        rows = merge_results(args.tables, SETTINGS[args.setting]["pretrain_epochs"])
        table = markdown_table(rows, SETTINGS[args.setting]["fractions"])
        table += labels_saved_table(rows, SETTINGS[args.setting]["fractions"])
        print(table)
        if args.markdown:
            write_text_atomic(
                Path(args.markdown), "Merged from: " + ", ".join(args.tables) + "\n" + table
            )
        return
    s = dict(SETTINGS[args.setting])
    if args.pretrain_epochs is not None:
        s["pretrain_epochs"] = args.pretrain_epochs
    models = args.models or list(s["models"])
    seeds = args.seeds if args.seeds is not None else list(s["seeds"])
    work = Path(args.work_dir)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setting": args.setting,
        **{k: v for k, v in s.items() if k not in ("models", "seeds")},
        "models": models,
        "seeds": seeds,
        "methods": args.methods,
        "device": args.device,
        "cuda": torch.cuda.is_available(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "deeplense_ssl": __version__,
    }
    print(json.dumps(header, indent=1), flush=True)
    rows: list[dict] = []
    t_start = time.perf_counter()

    def run_eval(run_dir: Path, test_h5: Path, model: str, method: str, frac: float, seed: int):
        cfg = EvaluateConfig(
            checkpoint=str(run_dir), data=str(test_h5), out=str(run_dir / "metrics.json"),
            n_bootstrap=s["n_bootstrap"], device=args.device, seed=seed,
        )  # fmt: skip
        cfg.validate()
        m = evaluate(cfg, progress=False)
        auc = m["roc_auc"]["macro"]
        ci = (m.get("ci") or {}).get("auc_macro") or {}
        row = {
            "model": model,
            "method": method,
            "label_fraction": frac,
            "seed": seed,
            "auc_macro": auc,
            "ci_low": ci.get("lower"),
            "ci_high": ci.get("upper"),
            "accuracy": m.get("accuracy"),
            "elapsed_s": round(time.perf_counter() - t_start),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(Path(args.out), json.dumps({"header": header, "rows": rows}, indent=1))

    for model in models:
        size = s["image_size"][model]
        data = work / model
        train_h5, test_h5 = data / "train.h5", data / "test.h5"
        for path, n, seed in [(train_h5, s["n_train_per_class"], 0), (test_h5, s["n_test_per_class"], 1)]:  # fmt: skip # noqa: E501
            if not path.exists():
                simulate_dataset(
                    SimulateConfig(
                        out=str(path),
                        model=model,
                        n_per_class=n,
                        seed=seed,
                        image_size=size,
                        workers=2,
                    )  # fmt: skip
                )
        for seed in seeds:
            ft_common = dict(data=str(train_h5), device=args.device, seed=seed)
            for method in args.methods:
                pre = data / f"pre-{method}-s{seed}"
                if not (pre / "backbone.pt").exists():
                    pretrain(
                        PretrainConfig(
                            data=str(train_h5),
                            out=str(pre),
                            method=method,
                            epochs=s["pretrain_epochs"],
                            batch_size=s["batch_size"],
                            seed=seed,
                            device=args.device,
                            resume=(pre / "checkpoint.pt").exists(),
                        ),  # fmt: skip
                        progress=False,
                    )
                for frac in s["fractions"]:
                    run = data / f"ft-{method}-f{frac:g}-s{seed}"
                    if not (run / "model.pt").exists():
                        finetune(
                            FinetuneConfig(
                                **ft_common,
                                checkpoint=str(pre),
                                out=str(run),
                                head="linear",
                                init="pretrained",
                                label_fraction=frac,
                                epochs=s["probe_epochs"],
                            ),  # fmt: skip
                            progress=False,
                        )
                    run_eval(run, test_h5, model, method, frac, seed)
            pre0 = data / f"pre-{args.methods[0]}-s{seed}"
            for frac in [] if args.no_baselines else s["fractions"]:
                for name, kw in [
                    ("random-init", dict(checkpoint=str(pre0), head="linear", init="random",
                                         epochs=s["probe_epochs"])),
                    ("supervised", dict(head="full", init="scratch", epochs=s["scratch_epochs"])),
                ]:  # fmt: skip
                    run = data / f"ft-{name}-f{frac:g}-s{seed}"
                    if not (run / "model.pt").exists():
                        finetune(
                            FinetuneConfig(**ft_common, out=str(run), label_fraction=frac, **kw),
                            progress=False,
                        )
                    run_eval(run, test_h5, model, name, frac, seed)

    table = markdown_table(rows, s["fractions"])
    print(table)
    if args.markdown:
        write_text_atomic(
            Path(args.markdown),
            f"Command: `{header['command']}`\n\n```json\n{json.dumps(header, indent=1)}\n```\n\n"
            + table,
        )


BASELINES = ("random-init", "supervised")


def _runs(rows: list[dict], model: str, method: str, fraction: float) -> list[dict]:
    """The rows (one per seed) of one table cell."""
    return [
        r for r in rows
        if r["model"] == model and r["method"] == method and r["label_fraction"] == fraction
    ]  # fmt: skip


def _table_head(title: str, fractions) -> list[str]:
    return [
        f"\n### {title}\n",
        "| method | " + " | ".join(f"{f * 100:g}% of labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]


def equivalent_fraction(auc: float, fractions, baseline_aucs) -> float | None:
    """The label fraction at which the baseline would reach ``auc``.

    Linear interpolation of the baseline's mean AUC in log10(fraction) between the measured
    fractions (the curve is made monotone first with a running maximum). ``None`` when ``auc``
    is above what the baseline reaches with all its labels; 0.0 when the baseline reaches it
    already with the smallest fraction (so nothing can be said below that).
    """
    logf = np.log10(np.asarray(fractions, dtype=float))
    curve = np.maximum.accumulate(np.asarray(baseline_aucs, dtype=float))
    if auc > curve[-1]:
        return None
    if auc <= curve[0]:
        return 0.0
    j = int(np.searchsorted(curve, auc))  # curve[j - 1] < auc <= curve[j]
    t = (auc - curve[j - 1]) / (curve[j] - curve[j - 1])
    return float(10 ** (logf[j - 1] + t * (logf[j] - logf[j - 1])))


def labels_saved_table(rows: list[dict], fractions) -> str:
    """How many labels each baseline would need to match each SSL row (mean AUC over seeds).

    A cell ``10% -> 28% (2.8x)`` says: the method's AUC with 10% of the labels is what the
    baseline reaches with about 28% of them, by interpolation between the three measured
    fractions, so a crude reading. ``> 100%``: the baseline never gets there; ``<= 1%``: the
    baseline gets there with the fewest labels measured (the method saves nothing measurable).
    """

    def mean_auc(model, method, f):
        sel = _runs(rows, model, method, f)
        return float(np.mean([r["auc_macro"] for r in sel])) if sel else None

    lines = []
    for model in sorted({r["model"] for r in rows}):
        for base in BASELINES:
            base_aucs = [mean_auc(model, base, f) for f in fractions]
            if None in base_aucs:
                continue
            title = f"{model}: labels {base} needs to match each method"
            lines += _table_head(f"{title} (mean AUC, log-linear interpolation)", fractions)
            methods = dict.fromkeys(r["method"] for r in rows if r["model"] == model)
            for method in [m for m in methods if m not in BASELINES]:
                cells = []
                for f in fractions:
                    auc = mean_auc(model, method, f)
                    if auc is None:
                        cells.append("-")
                        continue
                    eq = equivalent_fraction(auc, fractions, base_aucs)
                    if eq is None:
                        cells.append("> 100%")
                    elif eq == 0.0:
                        cells.append(f"<= {fractions[0] * 100:g}%")
                    else:
                        cells.append(f"{eq * 100:.2g}% ({eq / f:.2g}x)")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_results(paths: list[str], default_epochs: int) -> list[dict]:
    """Rows of several result files, ready for :func:`markdown_table`.

    An SSL method pretrained for other than ``default_epochs`` becomes its own row
    (``"contrastive-blur, 20 epochs"``); the baselines do not depend on the pretraining budget.
    A run found in two files (same model, method, budget, fraction and seed) is counted once:
    the later file wins. Rows are ordered: SSL methods, longer budgets, then the baselines.
    """
    merged: dict[tuple, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        epochs = data["header"]["pretrain_epochs"]
        for row in data["rows"]:
            row = dict(row)
            budget = epochs if row["method"] in METHODS else None
            if budget is not None and budget != default_epochs:
                row["method"] = f"{row['method']}, {budget} epochs"
            row["_order"] = (
                row["method"] in BASELINES,
                (METHODS + BASELINES).index(row["method"].split(",")[0]),
                budget or 0,
            )
            key = (row["model"], row["method"], row["label_fraction"], row["seed"])
            merged[key] = row
    return sorted(merged.values(), key=lambda r: r["_order"])


def markdown_table(rows: list[dict], fractions) -> str:
    """Macro AUC per (model, method) x label fraction.

    A cell with one run shows its 95% bootstrap interval over test images; a cell with several
    seeds shows mean ± standard deviation over seeds (ddof=1) and the number of seeds.
    """
    lines = []
    for model in sorted({r["model"] for r in rows}):
        lines += _table_head(f"{model}: macro ROC-AUC on the test set", fractions)
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model):
            cells = []
            for f in fractions:
                sel = _runs(rows, model, method, f)
                aucs = [r["auc_macro"] for r in sel]
                if not sel:
                    cells.append("-")
                elif len(sel) > 1:
                    cells.append(
                        f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f} ({len(sel)} seeds)"
                    )
                elif sel[0]["ci_low"] is not None:
                    cells.append(f"{aucs[0]:.3f} [{sel[0]['ci_low']:.3f}, {sel[0]['ci_high']:.3f}]")
                else:
                    cells.append(f"{aucs[0]:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
