"""The embedded default job: simulate, pretrain, fine-tune with baselines, evaluate, report.

``deeplense-ssl demo`` (``make demo``) runs this on a small simulated DeepLense Model II-like
dataset. Every stage writes the same run folders the individual commands write, so the demo is
also a worked example of the CLI. Stages whose outputs already exist are skipped and an
interrupted pretraining resumes, so re-running after a crash continues where it stopped.

The sizes are chosen so the whole job finishes in about ten minutes on a 2-core laptop CPU;
with a CUDA GPU the dataset and the pretraining budget grow automatically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import (
    EvaluateConfig,
    FinetuneConfig,
    PretrainConfig,
    ReportConfig,
    SimulateConfig,
)
from .evaluation import evaluate
from .finetuning import finetune
from .report import build_report
from .runs import BACKBONE_FILE, CHECKPOINT_FILE, EVAL_METRICS_FILE, MODEL_FILE, REPORT_FILE
from .runtime import resolve_amp_dtype, resolve_device
from .simulate import simulate_dataset
from .training import pretrain

Log = Callable[[str], None]


@dataclass
class DemoPlan:
    """Sizes and budgets of the demo (CPU defaults; :func:`plan_for` scales them on a GPU)."""

    model: str = "model_ii"
    method: str = PretrainConfig.method  # the package's default lensing recipe
    n_train_per_class: int = 400
    n_test_per_class: int = 200
    # images per class simulated for pretraining only (seed + 2, their labels never read):
    # pretraining sees them and the training images, 3,000 in all, as in the benchmark
    n_unlabelled_per_class: int = 600
    # 6 epochs (138 steps) fit the 10 minutes in float32; a CPU with native bf16 runs the
    # benchmark's 10 (230 steps) in the same time (plan_for)
    pretrain_epochs: int = 6
    pretrain_batch_size: int = 128
    finetune_epochs: int = 30
    scratch_epochs: int = 12
    # every fine-tune takes at least this many optimiser steps (the baselines are never
    # undertrained by construction; 100 keeps the CPU demo within ~10 minutes)
    finetune_min_steps: int = 100
    # the fractions of the label-efficiency benchmark (benchmarks/RESULTS.md, protocol v2)
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    # label fractions that also get the SSL full fine-tune (backbone + head from the SSL
    # weights, what DeepLense users do); the low fractions only on a CPU, where it matters
    full_finetune_fractions: tuple[float, ...] = (0.01, 0.1)
    # evaluate's attribution localisation: test images per substructure class (each costs an
    # Integrated Gradients pass of 32 forward/backward steps)
    localisation_images: int = 8
    backbone: str = "resnet18"
    stem: str = "imagenet"


def plan_for(device: str, quick: bool = False) -> DemoPlan:
    """The demo plan for ``device`` (``auto`` / ``cpu`` / ``cuda``); ``quick`` is a smoke test."""
    if quick:
        return DemoPlan(
            n_train_per_class=24,
            n_test_per_class=12,
            n_unlabelled_per_class=8,
            pretrain_epochs=1,
            pretrain_batch_size=16,
            finetune_epochs=2,
            scratch_epochs=1,
            finetune_min_steps=0,
            label_fractions=(0.5,),
            full_finetune_fractions=(0.5,),
            localisation_images=2,
        )
    dev = resolve_device(device)
    if dev.type == "cuda":
        return DemoPlan(
            n_train_per_class=3000,
            n_test_per_class=1000,
            n_unlabelled_per_class=3000,
            pretrain_epochs=60,
            pretrain_batch_size=256,
            finetune_epochs=50,
            scratch_epochs=40,
            label_fractions=(0.01, 0.1, 1.0),
            full_finetune_fractions=(0.01, 0.1, 1.0),
        )
    if resolve_amp_dtype(PretrainConfig.amp, dev) == torch.bfloat16:  # a CPU with native bf16
        return DemoPlan(pretrain_epochs=10)  # ~1.9x the steps per second of float32
    return DemoPlan()


def _simulate(plan: DemoPlan, data_dir: Path, seed: int, stage: Log) -> tuple[Path, Path, str]:
    """Simulate the training set (``seed``), the test set (``seed + 1``) and the unlabelled
    pool (``seed + 2``) unless present; also returns the pretraining data (``--data``)."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    train_h5, test_h5 = data_dir / "train.h5", data_dir / "test.h5"
    unlabelled_h5 = data_dir / "unlabelled.h5"
    sets = [(train_h5, plan.n_train_per_class, seed), (test_h5, plan.n_test_per_class, seed + 1)]
    if plan.n_unlabelled_per_class:
        sets.append((unlabelled_h5, plan.n_unlabelled_per_class, seed + 2))
    for path, n, s in sets:
        if path.exists():
            stage(f"{path} exists, skipping simulation")
            continue
        stage(f"simulating {3 * n} {plan.model} images -> {path}")
        simulate_dataset(
            SimulateConfig(out=str(path), model=plan.model, n_per_class=n, seed=s, workers=workers)
        )
    pool = f"{train_h5},{unlabelled_h5}" if plan.n_unlabelled_per_class else str(train_h5)
    return train_h5, test_h5, pool


def _pretrain(
    plan: DemoPlan,
    pool: str,
    pre_dir: Path,
    device: str,
    seed: int,
    progress: bool,
    stage: Log,
) -> None:
    """Pretrain unless finished earlier; resume an interrupted run."""
    if (pre_dir / BACKBONE_FILE).exists():
        stage(f"{pre_dir} finished earlier, skipping pretraining")
        return
    budget = f"{plan.backbone}, {plan.pretrain_epochs} epochs on {pool}"
    stage(f"pretraining {plan.method} ({budget}) -> {pre_dir}")
    pretrain(
        PretrainConfig(
            data=pool,
            out=str(pre_dir),
            method=plan.method,
            backbone=plan.backbone,
            stem=plan.stem,
            epochs=plan.pretrain_epochs,
            batch_size=plan.pretrain_batch_size,
            device=device,
            seed=seed,
            resume=(pre_dir / CHECKPOINT_FILE).exists(),
        ),
        progress=progress,
    )


def finetune_variants(plan: DemoPlan, pre_dir: Path) -> list[tuple[str, dict]]:
    """``(run name, FinetuneConfig overrides)`` per label fraction: the SSL linear probe, the
    SSL full fine-tune (at ``plan.full_finetune_fractions``), the random-backbone probe and the
    supervised-from-scratch baseline. The end-to-end runs train ``plan.scratch_epochs``."""
    variants: list[tuple[str, dict]] = []
    pretrained: dict[str, Any] = dict(checkpoint=str(pre_dir), init="pretrained")
    for frac in plan.label_fractions:
        tag = f"f{frac:g}"
        runs: list[tuple[str, dict[str, Any]]] = [
            (f"{plan.method}-linear-{tag}", dict(pretrained, head="linear"))
        ]
        if frac in plan.full_finetune_fractions:
            full = dict(pretrained, head="full", epochs=plan.scratch_epochs)
            runs.append((f"{plan.method}-full-{tag}", full))
        runs += [
            (f"random-linear-{tag}", dict(checkpoint=str(pre_dir), head="linear", init="random")),
            (f"scratch-full-{tag}", dict(head="full", init="scratch", epochs=plan.scratch_epochs)),
        ]
        variants += [(name, {**kw, "label_fraction": frac}) for name, kw in runs]
    return variants


def _finetune_and_evaluate(
    name: str,
    run_dir: Path,
    cfg: FinetuneConfig,
    test_h5: Path,
    device: str,
    localisation_images: int,
    progress: bool,
    stage: Log,
) -> None:
    """Fine-tune and evaluate one variant, skipping what a previous run finished."""
    if not (run_dir / MODEL_FILE).exists():
        stage(f"fine-tuning {name} -> {run_dir}")
        cfg.validate()
        finetune(cfg, progress=progress)
    metrics = run_dir / EVAL_METRICS_FILE
    if metrics.exists():
        return
    stage(f"evaluating {name} on {test_h5}")
    cfg_e = EvaluateConfig(
        checkpoint=str(run_dir),
        data=str(test_h5),
        out=str(metrics),
        device=device,
        localisation_images=localisation_images,
    )
    cfg_e.validate()
    result = evaluate(cfg_e, progress=progress)
    macro = result.get("roc_auc", {}).get("macro")
    if macro is not None:
        stage(f"{name}: macro ROC-AUC {macro:.3f}")


def run_demo(
    out_dir: str | Path = "demo_output",
    *,
    device: str = "auto",
    seed: int = 0,
    quick: bool = False,
    plan: DemoPlan | None = None,
    progress: bool = True,
    log: Log = print,
) -> Path:
    """Run the whole pipeline and return the path of the HTML report.

    Args:
        out_dir: folder for the data (``data/``), run folders (``runs/``) and ``report.html``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: seeds the simulation (test set: ``seed + 1``), pretraining and fine-tuning.
        quick: a tiny smoke-test plan (seconds, meaningless numbers).
        plan: explicit sizes (overrides ``quick`` and the device default).
        progress: show progress bars.
        log: where stage messages go.

    Returns:
        Path of ``report.html``.
    """
    out = Path(out_dir)
    plan = plan or plan_for(device, quick)
    runs_dir = out / "runs"
    t0 = time.perf_counter()

    def stage(msg: str) -> None:
        log(f"[demo {time.perf_counter() - t0:6.0f}s] {msg}")

    train_h5, test_h5, pool = _simulate(plan, out / "data", seed, stage)
    pre_dir = runs_dir / f"pretrain-{plan.method}"
    _pretrain(plan, pool, pre_dir, device, seed, progress, stage)
    base = FinetuneConfig(
        data=str(train_h5),
        backbone=plan.backbone,
        stem=plan.stem,
        device=device,
        seed=seed,
        min_steps=plan.finetune_min_steps,
    )
    run_dirs = []
    for name, kw in finetune_variants(plan, pre_dir):
        run_dir = runs_dir / name
        run_dirs.append(str(run_dir))
        cfg = dataclasses.replace(
            base, **{"out": str(run_dir), "epochs": plan.finetune_epochs, **kw}
        )
        _finetune_and_evaluate(
            name, run_dir, cfg, test_h5, device, plan.localisation_images, progress, stage
        )

    report_path = out / REPORT_FILE
    stage(f"writing the report -> {report_path}")
    build_report(ReportConfig(runs=run_dirs, out=str(report_path), device=device))
    stage(f"done. Open {report_path.resolve()}")
    return report_path
