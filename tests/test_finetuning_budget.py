"""The few-label protocol of fine-tuning: every label counts (validation included), a fixed
schedule when there are too few labels to validate, and a minimum number of optimiser steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers_finetune import fake_pretrain_run, write_toy_h5

from deeplense_ssl.config import FinetuneConfig, config_from_sources
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.finetuning import (
    budget_epochs,
    finetune,
    label_budget_split,
    steps_per_epoch,
    train_probe,
)
from deeplense_ssl.heads import LinearHead


@pytest.fixture(scope="module")
def toy(module_tmp):
    root = module_tmp("budget")
    write_toy_h5(root / "train.h5", n_per_class=20, seed=0)
    fake_pretrain_run(root / "pretrain")
    return root


def _cfg(toy, out, **kw):
    values = {
        "data": str(toy / "train.h5"),
        "checkpoint": str(toy / "pretrain"),
        "epochs": 1,
        "batch_size": 32,
        "out": str(out),
        **kw,
    }
    return config_from_sources(FinetuneConfig, None, values)


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@pytest.mark.parametrize("per_class", [(300, 300, 300), (7, 40, 123)])
@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.5, 1.0])
def test_labels_used_are_the_fraction_of_the_pool(per_class, fraction):
    labels = np.repeat(np.arange(3), per_class)
    np.random.default_rng(0).shuffle(labels)
    b = label_budget_split(labels, fraction, val_fraction=0.15, min_val_per_class=5, seed=3)
    assert not set(b.train) & set(b.val)
    used = np.concatenate([b.train, b.val])
    # per class max(1, round(f * n_c)) labels in total, whatever goes to validation
    want = [max(1, _half_up(fraction * n)) for n in per_class]
    np.testing.assert_array_equal(np.bincount(labels[used], minlength=3), want)
    val_counts = np.bincount(labels[b.val], minlength=3)
    if b.model_selection == "val":
        assert val_counts.min() >= 5
        np.testing.assert_array_equal(val_counts, [_half_up(0.15 * n) for n in want])
    else:
        assert b.model_selection == "fixed-schedule" and len(b.val) == 0
        assert min(_half_up(0.15 * n) for n in want) < 5


def test_fixed_schedule_rule():
    labels = np.repeat(np.arange(3), 300)
    # 1% of 300 = 3 labels per class: nothing to validate on
    assert label_budget_split(labels, 0.01, 0.15, 5).model_selection == "fixed-schedule"
    # 10%: 30 labels per class, round(4.5) = 5 validate: just enough
    b = label_budget_split(labels, 0.1, 0.15, 5)
    assert b.model_selection == "val" and len(b.val) == 15 and len(b.train) == 75
    # one more demanded per class -> fixed schedule, every label trains
    b = label_budget_split(labels, 0.1, 0.15, 6)
    assert b.model_selection == "fixed-schedule" and len(b.train) == 90
    assert "min_val_per_class=6" in b.reason
    assert label_budget_split(labels, 1.0, 0.0, 1).model_selection == "fixed-schedule"
    # one class short is enough to drop validation (counts per class, not in total)
    skewed = np.repeat(np.arange(3), [300, 300, 20])
    assert label_budget_split(skewed, 1.0, 0.15, 5).model_selection == "fixed-schedule"


def test_labelled_sets_are_nested_across_fractions():
    labels = np.repeat(np.arange(3), 100)
    small = label_budget_split(labels, 0.1, 0.15, 5, seed=1)
    large = label_budget_split(labels, 0.5, 0.15, 5, seed=1)
    small_all = set(small.train) | set(small.val)
    assert small_all <= set(large.train) | set(large.val)


def _loop_steps(n: int, batch_size: int, skip_single: bool) -> int:
    """Reference: walk the batches as the training loops do."""
    steps = 0
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        if skip_single and size < 2 and n >= 2:
            continue
        steps += 1
    return steps


@pytest.mark.parametrize("n", [1, 2, 3, 9, 31, 32, 33, 64, 65])
@pytest.mark.parametrize("batch_size", [1, 2, 8, 32])
def test_steps_per_epoch_matches_the_loop(n, batch_size):
    for skip in (False, True):
        assert steps_per_epoch(n, batch_size, skip_single=skip) == _loop_steps(n, batch_size, skip)


def test_budget_epochs():
    assert budget_epochs(30, 10, 300) == 30  # already enough
    assert budget_epochs(10, 1, 300) == 300
    assert budget_epochs(2, 7, 300) == 43  # ceil(300 / 7)
    assert budget_epochs(4, 3, 0) == 4
    with pytest.raises(ConfigError, match="batch-size >= 2"):
        budget_epochs(5, 0, 300)


class _CountingAdamW(torch.optim.AdamW):
    steps = 0

    def step(self, closure=None):  # type: ignore[override]
        type(self).steps += 1
        return super().step(closure)


@pytest.mark.parametrize(
    "kw",
    [
        dict(init="scratch", head="full", checkpoint=None, stem="small"),
        dict(init="pretrained", head="full"),
        dict(init="pretrained", head="linear"),
        dict(init="random", head="linear"),
    ],
    ids=["scratch", "full", "probe", "random-probe"],
)
def test_tiny_label_fraction_still_takes_the_minimum_steps(toy, tmp_path, monkeypatch, kw):
    monkeypatch.setattr(torch.optim, "AdamW", _CountingAdamW)
    _CountingAdamW.steps = 0
    # 5% of 20 per class = 1 label per class: 3 labels, one batch, no validation split
    cfg = _cfg(toy, tmp_path / "run", label_fraction=0.05, min_steps=7, **kw)
    out = finetune(cfg, progress=False)
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert _CountingAdamW.steps >= 7  # counted on the optimiser itself
    assert resolved["optimizer_steps"] == _CountingAdamW.steps
    assert resolved["min_steps"] == 7 and resolved["epochs"] >= 7  # one step per epoch
    assert resolved["n_labels_train"] == 3 and resolved["n_labels_val"] == 0
    assert resolved["n_labels"] == 3 and resolved["model_selection"] == "fixed-schedule"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == resolved["epochs"] and rows[-1]["step"] == _CountingAdamW.steps
    assert not any(k.startswith("val_") for r in rows for k in r)  # nothing was validated
    val = json.loads((out / "val_metrics.json").read_text())
    assert val["model_selection"] == "fixed-schedule" and val["best_epoch"] == len(rows)
    assert val["n_val"] == 0 and "fixed schedule" in val["selection"]


class _RecordingAdamW(torch.optim.AdamW):
    group_lrs: list[float] = []

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        type(self).group_lrs = [g["lr"] for g in self.param_groups]  # before any schedule


@pytest.mark.parametrize(
    "scale, init, backbone_rate",
    [(None, "pretrained", 1.0), (0.1, "pretrained", 0.1), (0.1, "scratch", 1.0)],
    ids=["default", "scaled", "scratch-ignores-it"],
)
def test_full_finetune_trains_the_backbone_at_the_scaled_rate(
    toy, tmp_path, monkeypatch, scale, init, backbone_rate
):
    # the default trains the backbone at the head's rate, like training from scratch (the
    # validation check of benchmarks/RESULTS.md); group 0 is the backbone, group 1 the head
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    kw = {} if scale is None else {"backbone_lr_scale": scale}
    if init == "scratch":
        kw.update(checkpoint=None, stem="small")
    cfg = _cfg(toy, tmp_path / "run", label_fraction=0.05, min_steps=1, head="full", init=init,
               lr=2e-3, **kw)  # fmt: skip
    out = finetune(cfg, progress=False)
    assert _RecordingAdamW.group_lrs == pytest.approx([2e-3 * backbone_rate, 2e-3])
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["backbone_lr"] == pytest.approx(2e-3 * backbone_rate)


def test_min_steps_zero_trains_exactly_the_epochs(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", _CountingAdamW)
    _CountingAdamW.steps = 0
    cfg = _cfg(toy, tmp_path / "run", label_fraction=0.05, min_steps=0, epochs=2, head="full")
    finetune(cfg, progress=False)
    assert _CountingAdamW.steps == 2  # 3 images, one batch per epoch


def test_config_records_every_label_the_run_saw(toy, tmp_path):
    out = finetune(
        _cfg(toy, tmp_path / "run", label_fraction=1.0, min_val_per_class=3, min_steps=0),
        progress=False,
    )
    cfg = json.loads((out / "config.json").read_text())
    r = cfg["resolved"]
    # 20 per class, round(0.15 * 20) = 3 validate
    assert (r["n_labels_train"], r["n_labels_val"], r["n_labels"]) == (51, 9, 60)
    assert r["model_selection"] == "val" and r["n_label_pool"] == 60
    assert cfg["data_summary"]["n_labels_used"] == 60
    assert cfg["data_summary"]["val_class_counts"] == {"no_sub": 3, "cdm": 3, "axion": 3}


def test_probe_without_validation_keeps_the_last_epoch():
    torch.manual_seed(0)
    feats, labels = torch.randn(12, 4), torch.arange(12) % 3
    head = LinearHead(4, 3)
    history, best = train_probe(
        head, feats, labels, None, None, ["a", "b", "c"], epochs=3, batch_size=5, lr=1e-2,
        weight_decay=0.0, generator=torch.Generator().manual_seed(0), min_steps=10,
    )  # fmt: skip
    # 3 steps per epoch, raised from 3 epochs (9 steps) to 4 (12 steps)
    assert [r["step"] for r in history] == [3, 6, 9, 12]
    assert best is history[-1]
