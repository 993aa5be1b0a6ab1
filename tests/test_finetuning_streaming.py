"""finetune(data_mode="stream"): the labels are read, only the label budget's images are loaded,
and the run is the same as in memory."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers_finetune import fake_pretrain_run, toy_images

import deeplense_ssl.streaming as streaming
from deeplense_ssl.config import FinetuneConfig, config_from_sources
from deeplense_ssl.datasets import load_dataset
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.finetuning import finetune, label_budget_split
from deeplense_ssl.io import write_hdf5
from deeplense_ssl_cli.main import main

NAMES = ["no_sub", "cdm", "axion"]
NAN_ROWS = (3, 22, 41, 58)  # one NaN pixel each (global rows)
SPLIT = 25  # shard 0: rows 0..24, shard 1: rows 25..59
FRACTION, VAL_FRACTION, MIN_VAL = 0.5, 0.3, 2


@pytest.fixture(scope="module")
def files(module_tmp):
    """One file, the same rows as two shards, and a fake pretrain run."""
    root = module_tmp("ft_stream")
    images, labels = toy_images(20, seed=0)
    sources = [f"toy[{i}]" for i in range(len(labels))]
    write_hdf5(root / "all.h5", images, labels, NAMES, sources=sources)
    (root / "shards").mkdir()
    for k, rows in enumerate((slice(0, SPLIT), slice(SPLIT, None))):
        write_hdf5(
            root / "shards" / f"part{k}.h5",
            images[rows],
            labels[rows],
            NAMES,
            sources=sources[rows],
        )
    for path, offset in [(root / "all.h5", 0), (root / "shards/part0.h5", 0)]:
        _put_nans(path, offset)
    _put_nans(root / "shards/part1.h5", SPLIT)
    fake_pretrain_run(root / "pretrain")
    return root, labels


def _put_nans(path, offset):
    with h5py.File(path, "r+") as f:  # our writer refuses NaN: a raw file may hold them
        for row in NAN_ROWS:
            if 0 <= row - offset < len(f["images"]):
                f["images"][row - offset, 0, 5, 5] = np.nan


def _cfg(root, data, out, **options):
    overrides = {
        "data": str(data),
        "checkpoint": str(root / "pretrain"),
        "out": str(out),
        "label_fraction": FRACTION,
        "val_fraction": VAL_FRACTION,
        "min_val_per_class": MIN_VAL,
        "epochs": 2,
        "min_steps": 6,
        "batch_size": 8,
        "nan_policy": "zero",
        "device": "cpu",
    }
    overrides.update(options)
    return config_from_sources(FinetuneConfig, None, overrides)


def _run(root, data, out, **options):
    return finetune(_cfg(root, data, out, **options), progress=False)


def _weights(run):
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    return {**state["backbone_state"], **{f"head.{k}": v for k, v in state["head_state"].items()}}


def _used_rows(labels):
    budget = label_budget_split(labels, FRACTION, VAL_FRACTION, MIN_VAL, seed=0)
    assert budget.model_selection == "val"  # the test covers the validation split too
    return np.union1d(budget.train, budget.val)


@pytest.mark.parametrize(
    "options",
    [
        {"head": "linear", "normalize": "minmax"},
        {"head": "full", "normalize": "zscore-dataset"},
        {"init": "scratch", "head": "linear", "normalize": "zscore-dataset"},
    ],
    ids=["probe-minmax", "full-zscore", "scratch-zscore"],
)
def test_streamed_shards_train_the_same_run_as_the_loaded_file(files, tmp_path, options):
    root, labels = files
    if options.get("init") == "scratch":
        options = {**options, "checkpoint": None, "stem": "small"}
    mem = _run(root, root / "all.h5", tmp_path / "mem", data_mode="in-memory", **options)
    shards = str(root / "shards" / "*.h5")
    streamed = _run(root, shards, tmp_path / "stream", data_mode="auto", **options)  # 2 files
    a, b = _weights(mem), _weights(streamed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("metrics.jsonl", "val_metrics.json"):
        assert (mem / name).read_text() == (streamed / name).read_text()
    assert np.array_equal(np.load(mem / "label_subset.npy"), np.load(streamed / "label_subset.npy"))
    cm, cs = (json.loads((r / "config.json").read_text()) for r in (mem, streamed))
    assert cm["resolved"] == cs["resolved"]  # budget, steps, normalisation
    assert cm["spec"] == cs["spec"]  # includes the zscore-dataset statistics
    sm, ss = cm["data_summary"], cs["data_summary"]
    assert (sm["data_mode"], ss["data_mode"]) == ("in-memory", "stream")
    # in memory the NaN report counts the whole set, streamed only the images it loaded
    used = _used_rows(labels)
    assert sm["nan_report"]["images_touched"] == len(NAN_ROWS)
    assert ss["nan_report"]["images_touched"] == len(np.intersect1d(used, NAN_ROWS))
    skip = {"data", "data_mode", "nan_report"}
    assert {k: v for k, v in sm.items() if k not in skip} == {
        k: v for k, v in ss.items() if k not in skip
    }


def test_only_the_label_budget_is_read_from_the_shards(files, tmp_path, monkeypatch):
    root, labels = files
    seen = []
    read = streaming.ShardSet.read

    def spy(self, rows, **kwargs):
        seen.extend(np.asarray(rows).tolist())
        return read(self, rows, **kwargs)

    monkeypatch.setattr(streaming.ShardSet, "read", spy)
    _run(root, root / "all.h5", tmp_path / "run", data_mode="stream", normalize="minmax")
    used = _used_rows(labels)
    assert sorted(seen) == used.tolist()  # each used row once, nothing else
    assert len(used) < len(labels) * 0.6


def test_zscore_statistics_stream_over_the_pool_without_the_validation_rows(files, tmp_path):
    root, labels = files
    run = _run(
        root, root / "all.h5", tmp_path / "run", data_mode="stream", normalize="zscore-dataset"
    )
    stats = json.loads((run / "config.json").read_text())["spec"]["norm_stats"]
    budget = label_budget_split(labels, FRACTION, VAL_FRACTION, MIN_VAL, seed=0)
    pool = np.setdiff1d(np.arange(len(labels)), budget.val)
    raw = load_dataset(root / "all.h5", nan_policy="zero", normalize="zscore-dataset")
    images = raw.images[pool].astype(np.float64)
    assert np.allclose(stats["mean"], images.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert np.allclose(stats["std"], images.std(axis=(0, 2, 3)), rtol=1e-12)


def test_a_label_budget_larger_than_the_memory_budget_is_one_clear_error(files, tmp_path, capsys):
    root, _ = files
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"labelled images this run uses take .*--max-memory-gb"):
        _run(root, root / "all.h5", out, data_mode="auto", max_memory_gb=1e-6, normalize="minmax")
    assert not out.exists()
    args = ["finetune", "--data", str(root / "shards" / "*.h5"), "--out", str(out)]
    args += ["--checkpoint", str(root / "pretrain"), "--label-fraction", "0.5"]
    args += ["--nan-policy", "zero", "--max-memory-gb", "1e-6"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "shards/*.h5" in lines[0] and "--label-fraction" in lines[0]
    assert "Traceback" not in err and not out.exists()


def test_stream_options_that_cannot_work_are_refused(files, tmp_path):
    root, _ = files
    shards = str(root / "shards" / "*.h5")
    with pytest.raises(ConfigError, match="names several files; finetune them"):
        _run(root, shards, tmp_path / "a", data_mode="in-memory")
    with pytest.raises(ConfigError, match="nan_policy='drop'"):
        _run(root, shards, tmp_path / "b", nan_policy="drop")
    loaded = load_dataset(root / "all.h5", nan_policy="zero", normalize="minmax")
    with pytest.raises(ConfigError, match="a dataset passed in memory"):
        finetune(_cfg(root, root / "all.h5", tmp_path / "c", data_mode="stream"), False, loaded)
    assert not any((tmp_path / d).exists() for d in "abc")
