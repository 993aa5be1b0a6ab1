"""How many labels does self-supervision save on DeepLense-like data? (protocol v2)

Protocol v2 (issue 12), for each simulated model (Model II- and Model I-like by default):

* three pools, each simulated with its own seed (``--sim-seeds``): an **unlabelled** pool for
  pretraining (>= 3,000 images), a separate **labelled** pool the label fractions are drawn
  from, and the **test** set;
* each SSL method (``--methods``, any of ``deeplense_ssl.methods.METHOD_NAMES``) is pretrained
  once per seed on the unlabelled pool, with the recipe given by ``--augment``,
  ``--pretrain-option KEY=VALUE`` and ``--paired``;
* at each label fraction f, every run sees f of the labelled pool's labels *in total*: its
  model-selection split is carved out of those labels, or, with too few for a useful split
  (``min_val_per_class``), it trains on all of them for a fixed schedule
  (:func:`deeplense_ssl.finetuning.label_budget_split`);
* rows: the SSL linear probe and the SSL **full fine-tune** (backbone + head from the SSL
  weights), and the baselines: a linear probe on a frozen randomly initialised backbone
  (``random-init``) and supervised training from scratch (``supervised``), same architecture;
* budgets: the probes (SSL and random-init) train ``--probe-epochs`` on cached features; the
  end-to-end runs (SSL full fine-tune and supervised) train ``--end-to-end-epochs`` with the
  dihedral augmentation; both at least ``--min-steps`` optimiser steps, so that 1% of the
  labels does not mean a handful of steps;
* every run is scored on the test set: macro one-vs-rest ROC-AUC with a 95% bootstrap interval.

Every run goes through the package's public functions (the same code as the CLI): simulate ->
pretrain -> finetune -> evaluate. The JSON output records the exact command, the protocol, the
recipe, every budget, and per row the labels used (train / validation), the model selection and
the optimiser steps taken. Run folders are named by a hash of their config, so a changed recipe
never reuses a stale run; an interrupted benchmark resumes where it stopped.

Usage::

    # CPU budget (2 cores); one seed, all methods
    python benchmarks/label_efficiency.py --setting cpu \
        --out benchmarks/results/label_eff_v2_cpu.json \
        --markdown benchmarks/results/label_eff_v2_cpu.md
    # a recipe: two methods, exact dihedral views, a smaller temperature, 3 seeds
    python benchmarks/label_efficiency.py --models model_ii --methods simclr vicreg \
        --augment lensing-exact --pretrain-option temperature=0.2 --pretrain-epochs 20 \
        --seeds 0 1 2 --out le_exact.json
    # plan only: check every config and list the runs, simulate and train nothing
    python benchmarks/label_efficiency.py --methods simclr --dry-run
    # GPU budget
    python benchmarks/label_efficiency.py --setting gpu --out label_eff_v2_gpu.json
    # one table per model from several result files (seeds, budgets, recipes)
    python benchmarks/label_efficiency.py --tables le_a.json le_b.json --markdown le.md

History: result files without ``"protocol": "v2"`` in their header (the ``label_eff_cpu*.json``
files of ``benchmarks/results``) come from protocol v1 (a validation split of 15% of *all*
training images on top of the label fraction; supervised baselines budgeted in epochs; one
pool for pretraining and labels). ``--tables`` still merges them, under a banner that marks them
as history; it refuses to mix the two protocols in one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from machine import cpu_name

from deeplense_ssl import __version__
from deeplense_ssl.config import (
    AUGMENTATIONS,
    EvaluateConfig,
    FinetuneConfig,
    PretrainConfig,
    SimulateConfig,
    config_from_sources,
    field_spec,
)
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.finetuning import finetune, learning_rates
from deeplense_ssl.heads import BACKBONE_TRAINING_HEADS
from deeplense_ssl.io import write_text_atomic
from deeplense_ssl.methods import METHOD_NAMES
from deeplense_ssl.runs import read_run_config
from deeplense_ssl.simulate import simulate_dataset
from deeplense_ssl.training import pretrain

PROTOCOL = "v2"
V1_DEFAULT_EPOCHS = 6  # the pretraining budget of protocol v1's unlabelled table rows
BASELINES = ("random-init", "supervised")
FINETUNE_ROW_NAMES = {"full": " + full fine-tune", "lp-ft": " + LP-FT"}
"""Row-name suffix of the SSL rows that train the backbone (``heads.BACKBONE_TRAINING_HEADS``)."""
SIM_SEEDS = (1000, 2000, 3000)  # unlabelled, labelled, test; recipe_screen uses 100+ / 200+
# the package's default, read where it is defined
DEFAULT_BACKBONE_LR_SCALE = FinetuneConfig.backbone_lr_scale
SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        models=("model_ii", "model_i"),
        image_size={"model_i": 96, "model_ii": 64},  # model_i needs >= 88 px for its ring
        n_unlabelled_per_class=1000,
        n_labelled_per_class=300,
        n_test_per_class=200,
        pretrain_epochs=10,
        pretrain_batch_size=128,
        probe_epochs=40,
        end_to_end_epochs=10,
        min_steps=300,
        fractions=(0.01, 0.1, 1.0),
        seeds=(0,),
        n_bootstrap=500,
    ),
    "gpu": dict(
        models=("model_ii", "model_i"),
        image_size={"model_i": 150, "model_ii": 64},
        n_unlabelled_per_class=10000,
        n_labelled_per_class=5000,
        n_test_per_class=2000,
        pretrain_epochs=100,
        pretrain_batch_size=256,
        probe_epochs=100,
        end_to_end_epochs=30,
        min_steps=1000,
        fractions=(0.01, 0.1, 1.0),
        seeds=(0, 1, 2),
        n_bootstrap=1000,
    ),
}
# FinetuneConfig fields the benchmark sets itself, per run (not --finetune-option)
FINETUNE_RESERVED = {
    "data", "out", "checkpoint", "head", "init", "label_fraction", "seed", "device", "epochs",
    "min_steps", "backbone", "stem", "normalize", "image_size",
}  # fmt: skip
PRETRAIN_RESERVED = {"data", "out", "method", "seed", "device", "resume", "paired_data"}
ARCH_KEYS = ("backbone", "stem", "normalize", "image_size")  # what the baselines share


# --------------------------------------------------------------------------------------------
# Arguments and the plan
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` without the program name; ``None``: ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setting", choices=list(SETTINGS), default="cpu")
    ap.add_argument("--models", nargs="+", default=None, help="default: the setting's")
    ap.add_argument("--methods", nargs="*", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the setting's")
    ap.add_argument("--fractions", nargs="+", type=float, default=None, help="label fractions")
    ap.add_argument("--pretrain-epochs", type=int, default=None)
    ap.add_argument("--pretrain-batch-size", type=int, default=None)
    ap.add_argument("--augment", choices=AUGMENTATIONS, default=None, help="pretrain preset")
    ap.add_argument(
        "--pretrain-option", action="append", default=[], metavar="KEY=VALUE",
        help="any PretrainConfig field (YAML value), e.g. temperature=0.2 stem=small; repeatable",
    )  # fmt: skip
    ap.add_argument(
        "--paired", action="store_true",
        help="simulation-informed positives: also simulate the unlabelled pool with the source "
        "redrawn (--source-variant 1) and pretrain with --paired-data",
    )  # fmt: skip
    ap.add_argument(
        "--finetune-option", action="append", default=[], metavar="KEY=VALUE",
        help="a FinetuneConfig field for every fine-tuning run, e.g. lr=3e-4; repeatable",
    )  # fmt: skip
    ap.add_argument("--probe-epochs", type=int, default=None)
    ap.add_argument("--end-to-end-epochs", type=int, default=None)
    ap.add_argument("--min-steps", type=int, default=None, help="fine-tuning optimiser steps")
    ap.add_argument("--n-unlabelled-per-class", type=int, default=None)
    ap.add_argument("--n-labelled-per-class", type=int, default=None)
    ap.add_argument("--n-test-per-class", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None, help="simulate every model at this")
    ap.add_argument("--n-bootstrap", type=int, default=None)
    ap.add_argument(
        "--sim-seeds", nargs=3, type=int, default=list(SIM_SEEDS),
        metavar=("UNLABELLED", "LABELLED", "TEST"), help="simulation seeds of the three pools",
    )  # fmt: skip
    ap.add_argument("--no-baselines", action="store_true", help="skip random-init / supervised")
    ap.add_argument("--no-full-finetune", action="store_true", help="skip the SSL full rows")
    ap.add_argument(
        "--ssl-heads", nargs="+", default=["full"], choices=BACKBONE_TRAINING_HEADS,
        help="the SSL fine-tune rows (full: backbone + head; lp-ft: the linear probe first)",
    )  # fmt: skip
    ap.add_argument("--work-dir", default="label_efficiency_runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="label_efficiency.json")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    ap.add_argument("--dry-run", action="store_true", help="check configs, list runs, run none")
    ap.add_argument(
        "--tables", nargs="+", metavar="JSON",
        help="run nothing: merge these result files (seeds, budgets) into one table per model",
    )  # fmt: skip
    return ap.parse_args(argv)


def parse_options(pairs: Sequence[str], cls: type, reserved: set[str]) -> dict[str, Any]:
    """``["temperature=0.2", "stem=small"]`` -> ``{"temperature": 0.2, "stem": "small"}``.

    Values are read as YAML (numbers, ``true``, ``[0, 1.5]``), and a float field also takes
    ``3e-4`` (YAML 1.1 reads it as a string); dashes in keys become underscores. Unknown
    fields of ``cls`` and ``reserved`` ones raise ``SystemExit``; the config checks the rest.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SystemExit(f"option {pair!r}: expected KEY=VALUE")
        if key not in names:
            raise SystemExit(f"option {pair!r}: {cls.__name__} has no field {key!r}")
        if key in reserved:
            raise SystemExit(f"option {pair!r}: {key} is set by the benchmark (see --help)")
        parsed = yaml.safe_load(value)
        if field_spec(cls, key).type is float and isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                pass  # the config check names the field and the value
        out[key] = parsed
    return out


def resolve_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The setting with every command-line override applied: the JSON header's budget part."""
    s = dict(SETTINGS[args.setting])
    for key in (
        "pretrain_epochs", "pretrain_batch_size", "probe_epochs", "end_to_end_epochs",
        "min_steps", "n_unlabelled_per_class", "n_labelled_per_class", "n_test_per_class",
        "n_bootstrap",
    ):  # fmt: skip
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s["models"] = list(args.models or s["models"])
    if args.image_size is not None:
        s["image_size"] = dict.fromkeys(s["models"], args.image_size)
    unknown = [m for m in s["models"] if m not in s["image_size"]]
    if unknown:
        raise SystemExit(f"models {unknown}: no image size in the setting; pass --image-size")
    s["seeds"] = list(args.seeds if args.seeds is not None else s["seeds"])
    s["fractions"] = sorted(args.fractions if args.fractions is not None else s["fractions"])
    s["methods"] = list(args.methods)
    s["sim_seeds"] = dict(zip(("unlabelled", "labelled", "test"), args.sim_seeds, strict=True))
    s["recipe"] = {
        "augment": args.augment,
        "pretrain_options": parse_options(args.pretrain_option, PretrainConfig, PRETRAIN_RESERVED),
        "paired": bool(args.paired),
    }
    s["finetune_options"] = parse_options(args.finetune_option, FinetuneConfig, FINETUNE_RESERVED)
    s["rows"] = {"full_finetune": not args.no_full_finetune, "baselines": not args.no_baselines}
    s["ssl_heads"] = list(dict.fromkeys(args.ssl_heads))
    if min(s["fractions"]) <= 0 or max(s["fractions"]) > 1:
        raise SystemExit("--fractions must be in (0, 1]")
    return s


def _tag(values: dict[str, Any]) -> str:
    """A short, stable hash of a config dict (names run folders)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------------
# Data, pretraining, fine-tuning
# --------------------------------------------------------------------------------------------


def pool_paths(plan: dict, model: str, work: Path) -> dict[str, Path]:
    """The simulated files of ``model`` (named by role, size, seed and image size)."""
    size = plan["image_size"][model]
    paths = {}
    for role in ("unlabelled", "labelled", "test"):
        n, seed = plan[f"n_{role}_per_class"], plan["sim_seeds"][role]
        paths[role] = work / model / f"{role}-{n}pc-s{seed}-{size}px.h5"
    if plan["recipe"]["paired"]:
        u = paths["unlabelled"]
        paths["paired"] = u.with_name(u.stem + "-variant1.h5")
    return paths


def simulate_pools(plan: dict, model: str, paths: dict[str, Path]) -> None:
    """Simulate every missing pool of ``model`` (the paired variant: same scenes, new source)."""
    for role, path in paths.items():
        if path.exists():
            continue
        base = "unlabelled" if role == "paired" else role
        cfg = SimulateConfig(
            out=str(path),
            model=model,
            n_per_class=plan[f"n_{base}_per_class"],
            seed=plan["sim_seeds"][base],
            image_size=plan["image_size"][model],
            workers=2,
            source_variant=1 if role == "paired" else 0,
        )
        cfg.validate()
        simulate_dataset(cfg)


def pretrain_config(
    plan: dict, method: str, paths: dict[str, Path], seed: int, device: str, out: Path | None
) -> PretrainConfig:
    """The checked pretraining config of ``method`` (``out`` None: named by its hash)."""
    recipe = plan["recipe"]
    values: dict[str, Any] = {
        "data": str(paths["unlabelled"]),
        "method": method,
        "epochs": plan["pretrain_epochs"],
        "batch_size": plan["pretrain_batch_size"],
        "seed": seed,
        **({"augment": recipe["augment"]} if recipe["augment"] else {}),
        **recipe["pretrain_options"],
    }
    if recipe["paired"]:
        values["paired_data"] = str(paths["paired"])
    if out is None:
        out = paths["unlabelled"].parent / f"pre-{method}-s{seed}-{_tag(values)}"
    values.update(out=str(out), device=device, resume=(out / "checkpoint.pt").exists())
    return config_from_sources(PretrainConfig, None, values)


def baseline_arch(plan: dict, paths: dict[str, Path]) -> dict[str, Any]:
    """Backbone, stem and preprocessing of the pretraining, for the baselines."""
    method = (plan["methods"] or ["simclr"])[0]
    cfg = pretrain_config(plan, method, paths, 0, "cpu", Path("unused"))
    return {k: getattr(cfg, k) for k in ARCH_KEYS}


def finetune_variants(
    plan: dict, pre_dirs: dict[str, Path], arch: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """``(method row name, FinetuneConfig values)`` of every fine-tuning run of one seed and
    fraction: per SSL method the linear probe (and its fine-tunes), then the baselines."""
    probe = {"epochs": plan["probe_epochs"], "head": "linear"}
    e2e = {"epochs": plan["end_to_end_epochs"], "head": "full"}
    out: list[tuple[str, dict[str, Any]]] = []
    for method, pre in pre_dirs.items():
        ssl = {"checkpoint": str(pre), "init": "pretrained"}
        out.append((method, {**ssl, **probe}))
        if plan["rows"]["full_finetune"]:  # the backbone rate named: a new default, new runs
            rate = plan["finetune_options"].get("backbone_lr_scale", DEFAULT_BACKBONE_LR_SCALE)
            for head in plan["ssl_heads"]:
                out.append((method, {**ssl, **e2e, "head": head, "backbone_lr_scale": rate}))
    if plan["rows"]["baselines"]:
        out.append(("random-init", {**arch, **probe, "init": "random"}))
        out.append(("supervised", {**arch, **e2e, "init": "scratch"}))
    return out


def finetune_config(
    plan: dict, values: dict[str, Any], paths: dict[str, Path], frac: float, seed: int, device: str
) -> FinetuneConfig:
    """The checked fine-tuning config of one run (its folder named by the config's hash)."""
    values = {
        **plan["finetune_options"],
        **values,
        "data": str(paths["labelled"]),
        "label_fraction": frac,
        "seed": seed,
        "min_steps": plan["min_steps"],
    }
    name = f"ft-{Path(values.get('checkpoint') or values['init']).name}-{values['head']}"
    out = paths["labelled"].parent / f"{name}-f{frac:g}-s{seed}-{_tag(values)}"
    return config_from_sources(FinetuneConfig, None, {**values, "out": str(out), "device": device})


def earlier_metrics(ecfg: EvaluateConfig) -> dict[str, Any] | None:
    """The metrics of an evaluation with this very config written after the model, or None
    (evaluation is deterministic: a resumed benchmark need not score finished runs again;
    delete the runs' metrics.json after a change to the evaluation code)."""
    path, model = Path(ecfg.out), Path(ecfg.checkpoint) / "model.pt"
    if not path.exists() or path.stat().st_mtime < model.stat().st_mtime:
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("config") == dataclasses.asdict(ecfg) else None


def check_same_config(cfg: FinetuneConfig, run: Path) -> None:
    """Refuse a finished run folder whose recorded config differs from ``cfg`` (a folder is
    named by the options given, so a changed package default would otherwise be reused).

    The learning rates are compared as the run used them (``finetuning.learning_rates``, kept
    in the run's ``resolved``): ``backbone_lr_scale`` matters only where a backbone trains."""
    recorded_run = json.loads((run / "config.json").read_text())
    rates = learning_rates(cfg)
    used = {k: recorded_run["resolved"].get(k) for k in rates}
    recorded = {**recorded_run["config"], **used}
    wanted = {**dataclasses.asdict(cfg), **rates}  # lr: the one used
    keys = (recorded_run["config"].keys() & wanted.keys()) | rates.keys()
    ignore = {"out", "device", "backbone_lr_scale"}  # the scale: as backbone_lr
    differ = sorted(k for k in keys - ignore if recorded.get(k) != wanted[k])
    if differ:
        changes = ", ".join(f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in differ)
        raise SystemExit(
            f"error: {run} was trained with another config ({changes}); delete that folder "
            "or use another --work-dir."
        )


def score_run(cfg: FinetuneConfig, test: Path, plan: dict) -> dict[str, Any]:
    """Fine-tune (unless finished earlier), evaluate on the test set; the result row's numbers."""
    run = Path(cfg.out)
    if (run / "model.pt").exists():
        check_same_config(cfg, run)
    else:
        finetune(cfg, progress=False)
    ecfg = EvaluateConfig(
        checkpoint=str(run), data=str(test), out=str(run / "metrics.json"),
        n_bootstrap=plan["n_bootstrap"], device=cfg.device, seed=cfg.seed,
    )  # fmt: skip
    ecfg.validate()
    m = earlier_metrics(ecfg) or evaluate(ecfg, progress=False)
    ci = (m.get("ci") or {}).get("auc_macro") or {}
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    return {
        "auc_macro": m["roc_auc"]["macro"],
        "ci_low": ci.get("lower"),
        "ci_high": ci.get("upper"),
        "accuracy": m.get("accuracy"),
        **{k: resolved.get(k) for k in ("n_labels_train", "n_labels_val", "model_selection")},
        "optimizer_steps": resolved.get("optimizer_steps"),
        "run": run.name,
    }


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def make_header(args: argparse.Namespace, plan: dict, argv: Sequence[str]) -> dict[str, Any]:
    """The self-description of a result file: command, protocol, plan, machine, versions."""
    script = sys.argv[0] if __name__ == "__main__" else __file__
    return {
        "command": shlex.join([Path(sys.executable).name, script, *argv]),
        "protocol": PROTOCOL,
        "setting": args.setting,
        **plan,
        "device": args.device,
        "cuda": torch.cuda.is_available(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "deeplense_ssl": __version__,
    }


def plan_model(plan: dict, model: str, work: Path, device: str) -> list[tuple]:
    """Every (kind, config) of one model, checked, in run order (nothing runs)."""
    paths = pool_paths(plan, model, work)
    arch = baseline_arch(plan, paths)
    steps: list[tuple] = []
    for seed in plan["seeds"]:
        pre = {m: pretrain_config(plan, m, paths, seed, device, None) for m in plan["methods"]}
        steps += [("pretrain", method, cfg) for method, cfg in pre.items()]
        pre_dirs = {m: Path(cfg.out) for m, cfg in pre.items()}
        for frac in plan["fractions"]:
            for name, values in finetune_variants(plan, pre_dirs, arch):
                cfg = finetune_config(plan, values, paths, frac, seed, device)
                steps.append(("finetune", name, cfg))
    return steps


def run_model(
    plan: dict, model: str, work: Path, device: str, emit: Any, t_start: float
) -> list[dict]:
    """Simulate, pretrain, fine-tune and evaluate everything of one model; emit each row."""
    paths = pool_paths(plan, model, work)
    simulate_pools(plan, model, paths)
    pretrain_log: list[dict] = []
    for kind, name, cfg in plan_model(plan, model, work, device):
        if kind == "pretrain":
            t0 = time.perf_counter()
            if not (Path(cfg.out) / "backbone.pt").exists():
                pretrain(cfg, progress=False)
                took = round(time.perf_counter() - t0)
            else:
                took = None  # finished earlier
            # the precision it trained in (amp "auto" resolves per machine: bf16 on CPUs with
            # native bf16 since this was recorded; a reused older run says "off")
            used = read_run_config(cfg.out)["resolved"]["amp"]
            pretrain_log.append({"model": model, "method": name, "seed": cfg.seed,
                                 "run": Path(cfg.out).name, "seconds": took,
                                 "amp": used})  # fmt: skip
            continue
        row = {
            "model": model,
            "method": name,
            "head": cfg.head,
            "init": cfg.init,
            "label_fraction": cfg.label_fraction,
            "seed": cfg.seed,
            **score_run(cfg, paths["test"], plan),
            "elapsed_s": round(time.perf_counter() - t_start),
        }
        emit(row)
    return pretrain_log


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.tables:
        print_tables(args)
        return
    plan = resolve_plan(args)
    header = make_header(args, plan, argv)
    print(json.dumps(header, indent=1), flush=True)
    work = Path(args.work_dir)
    if args.dry_run:
        for model in plan["models"]:
            for kind, name, cfg in plan_model(plan, model, work, args.device):
                head = getattr(cfg, "head", "")
                print(f"{kind:8s} {model} {name:22s} {head:6s} {cfg.out}")
        return
    rows: list[dict] = []
    pretrain_log: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        result = {"header": header, "pretrain": pretrain_log, "rows": rows}
        write_text_atomic(Path(args.out), json.dumps(result, indent=1))

    t_start = time.perf_counter()
    for model in plan["models"]:
        pretrain_log += run_model(plan, model, work, args.device, emit, t_start)
    write_text_atomic(
        Path(args.out),
        json.dumps({"header": header, "pretrain": pretrain_log, "rows": rows}, indent=1),
    )
    table_rows = label_rows(rows, header, plan["pretrain_epochs"])
    table = markdown_table(table_rows, plan["fractions"])
    table += labels_saved_table(table_rows, plan["fractions"])
    print(table)
    if args.markdown:
        write_text_atomic(
            Path(args.markdown),
            f"Command: `{header['command']}`\n\n```json\n{json.dumps(header, indent=1)}\n```\n\n"
            + table,
        )


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


HISTORY_BANNER = (
    "> **History: protocol v1.** These runs used a validation split of 15% of *all* training\n"
    "> images on top of the label fraction (so '10% of labels' saw more labels than that),\n"
    "> supervised baselines budgeted in epochs (about 10 optimiser steps at 1% of the labels)\n"
    "> and one simulated pool for both pretraining and labels. Not comparable with protocol v2.\n"
)


def print_tables(args: argparse.Namespace) -> None:
    """``--tables``: merge result files into one table per model (history-marked for v1)."""
    protocol = results_protocol(args.tables)
    default_epochs = (
        SETTINGS[args.setting]["pretrain_epochs"] if protocol == PROTOCOL else V1_DEFAULT_EPOCHS
    )
    fractions = args.fractions or SETTINGS[args.setting]["fractions"]
    rows = merge_results(args.tables, default_epochs)
    table = markdown_table(rows, fractions) + labels_saved_table(rows, fractions)
    if protocol != PROTOCOL:
        table = HISTORY_BANNER + table
    print(table)
    if args.markdown:
        write_text_atomic(
            Path(args.markdown), "Merged from: " + ", ".join(args.tables) + "\n" + table
        )


def results_protocol(paths: Sequence[str]) -> str:
    """The protocol of the result files (``v1`` when the header has none).

    Raises:
        SystemExit: the files come from different protocols.
    """
    found = {
        p: json.loads(Path(p).read_text())["header"].get("protocol", "v1") for p in paths
    }  # fmt: skip
    if len(set(found.values())) > 1:
        raise SystemExit(
            f"result files of different protocols cannot share a table: {found}; merge each "
            "protocol separately."
        )
    return next(iter(found.values()))


def _recipe_suffix(header: dict, baseline: bool) -> str:
    """``" [augment=lensing-exact, temperature=0.2, paired]"`` for a non-default recipe (for a
    baseline only the architecture keys count); ``""`` for the default one and for v1."""
    recipe = header.get("recipe") or {}
    options = dict(recipe.get("pretrain_options") or {})
    if recipe.get("augment"):
        options["augment"] = recipe["augment"]
    if baseline:
        options = {k: v for k, v in options.items() if k in ARCH_KEYS}
    parts = [f"{k}={v}" for k, v in sorted(options.items())]
    if recipe.get("paired") and not baseline:
        parts.append("paired")
    return f" [{', '.join(parts)}]" if parts else ""


def row_label(row: dict, header: dict, default_epochs: int | None) -> str:
    """The table row name of a result row: method, ``+ full fine-tune``, the pretraining budget
    when it is not ``default_epochs``, and a non-default recipe."""
    method = row["method"]
    baseline = method in BASELINES
    label = method
    if not baseline and row.get("head") in FINETUNE_ROW_NAMES:
        label += FINETUNE_ROW_NAMES[row["head"]]
    epochs = header.get("pretrain_epochs")
    if not baseline and default_epochs is not None and epochs != default_epochs:
        label += f", {epochs} epochs"
    return label + _recipe_suffix(header, baseline)


def _order(row: dict, epochs: int | None) -> tuple:
    names = (*METHOD_NAMES, *BASELINES)
    base = row["method"]
    return (
        base in BASELINES,
        names.index(base) if base in names else len(names),
        tuple(FINETUNE_ROW_NAMES).index(row["head"])
        if row.get("head") in FINETUNE_ROW_NAMES
        else -1,
        epochs or 0,
    )


def label_rows(rows: list[dict], header: dict, default_epochs: int | None) -> list[dict]:
    """Result rows with ``method`` replaced by their table row name (:func:`row_label`)."""
    return [dict(r, method=row_label(r, header, default_epochs)) for r in rows]


def merge_results(paths: list[str], default_epochs: int) -> list[dict]:
    """Rows of several result files, ready for :func:`markdown_table`.

    An SSL method pretrained for other than ``default_epochs`` becomes its own row
    (``"contrastive-blur, 20 epochs"``), and so does its full fine-tune and a non-default
    recipe; the baselines do not depend on the pretraining budget. A run found in two files
    (same model, row, fraction and seed) is counted once: the later file wins. Rows are ordered:
    SSL methods (probe, then full fine-tune; longer budgets after), then the baselines.
    """
    merged: dict[tuple, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        header = data["header"]
        for row in data["rows"]:
            budget = None if row["method"] in BASELINES else header.get("pretrain_epochs")
            row = dict(row, _order=_order(row, budget))
            row["method"] = row_label(row, header, default_epochs)
            key = (row["model"], row["method"], row["label_fraction"], row["seed"])
            merged[key] = row
    return sorted(merged.values(), key=lambda r: r["_order"])


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


def _saved_cell(auc: float | None, f: float, fractions, base_aucs) -> str:
    if auc is None:
        return "-"
    eq = equivalent_fraction(auc, fractions, base_aucs)
    if eq is None:
        return "> 100%"
    if eq == 0.0:
        return f"<= {fractions[0] * 100:g}%"
    return f"{eq * 100:.2g}% ({eq / f:.2g}x)"


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
        for base in (m for m in dict.fromkeys(r["method"] for r in rows) if _is_baseline(m)):
            base_aucs = [mean_auc(model, base, f) for f in fractions]
            if None in base_aucs:
                continue
            title = f"{model}: labels {base} needs to match each method"
            lines += _table_head(f"{title} (mean AUC, log-linear interpolation)", fractions)
            methods = dict.fromkeys(r["method"] for r in rows if r["model"] == model)
            for method in [m for m in methods if not _is_baseline(m)]:
                cells = [
                    _saved_cell(mean_auc(model, method, f), f, fractions, base_aucs)
                    for f in fractions
                ]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _is_baseline(label: str) -> bool:
    """A table row name of a baseline (``supervised``, ``random-init [stem=small]``...)."""
    return label.split(" [", 1)[0] in BASELINES


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
