"""evaluate(data_mode="stream"): the same files as in memory, resumable, shards, bad shards."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from helpers_finetune import finetune_and_evaluate, write_simulated_like, write_toy_h5

import deeplense_ssl.scoring as scoring
from deeplense_ssl.config import EvaluateConfig, config_from_sources
from deeplense_ssl.datasets import load_dataset
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.runs import partial_path, scores_path_for

TINY_GB = 1e-6  # ~1 kB: blocks of one batch, and data_mode auto streams
BATCH = 4
# differ by design: where and how the files were made, and their names
MODE_KEYS = {"config", "metrics_file", "scores_file", "examples_file", "streaming", "data"}


@pytest.fixture(scope="module")
def run(module_tmp):
    root = module_tmp("stream")
    run_dir, _ = finetune_and_evaluate(root, n_bootstrap=0)
    return run_dir


def _sim_file(path, nan_at=(4, 0, 3, 5)):
    """The localisation test's simulated-like file (params + provenance, 3 per class), with
    one NaN pixel so that the NaN policy has something to report."""
    write_simulated_like(path)
    with h5py.File(path, "r+") as f:  # our writer refuses NaN: a raw file may hold them
        f["images"][nan_at] = np.nan
    return path


def _evaluate(run_dir, data, out, **options):
    overrides = {
        "checkpoint": str(run_dir),
        "data": str(data),
        "out": str(out),
        "n_bootstrap": 20,
        "batch_size": BATCH,
        "nan_policy": "zero",
        "image_size": 16,
    }
    overrides.update(options)
    return evaluate(config_from_sources(EvaluateConfig, None, overrides), progress=False)


def _files(out):
    """metrics.json (without the mode-specific keys) and every array of scores / examples."""
    metrics = json.loads(out.read_text())
    arrays = {}
    for kind in ("scores", "examples"):
        with np.load(scores_path_for(out, kind)) as z:
            arrays.update({f"{kind}/{k}": z[k] for k in z.files})
    return {k: v for k, v in metrics.items() if k not in MODE_KEYS}, arrays


def _assert_same_files(a, b):
    (ma, xa), (mb, xb) = _files(a), _files(b)
    assert ma == mb
    assert xa.keys() == xb.keys()
    for key in xa:
        assert np.array_equal(xa[key], xb[key]), key


@pytest.fixture(scope="module")
def in_memory(run, module_tmp):
    root = module_tmp("mem")
    data = _sim_file(root / "sim.h5")
    m = _evaluate(run, data, root / "m.json", data_mode="in-memory")
    return data, root / "m.json", m


def test_streaming_writes_the_same_metrics_scores_and_examples_as_in_memory(
    run, in_memory, tmp_path
):
    data, mem_out, mem = in_memory
    out = tmp_path / "s.json"
    m = _evaluate(run, data, out, max_memory_gb=TINY_GB)  # auto: more than the budget
    assert m["streaming"]["data_mode"] == "stream" and m["streaming"]["block_images"] == BATCH
    assert m["streaming"]["resumed_images"] == 0 and "streaming" not in mem
    assert mem["localisation"] is not None and set(mem["localisation"]["per_class"]) == {
        "cdm",
        "axion",
    }
    assert mem["nan_report"]["pixels_touched"] == 1
    _assert_same_files(mem_out, out)
    assert not partial_path(out).exists()  # removed once published
    # the neighbours in examples.npz are the images of the test file at those indices
    ref = load_dataset(data, nan_policy="zero", image_size=16)
    with np.load(tmp_path / "s.examples.npz") as z:
        idx = z["test_index"]
        assert np.array_equal(z["images"], ref.images[idx])


def test_stored_zscore_statistics_are_applied_when_streaming(run, in_memory, tmp_path):
    data = in_memory[0]
    zrun = tmp_path / "zrun"
    shutil.copytree(run, zrun)
    state = torch.load(zrun / "model.pt", weights_only=True)
    state["spec"]["normalize"] = "zscore-dataset"
    state["spec"]["norm_stats"] = {"mean": [0.3], "std": [0.2], "n_images": 60}
    torch.save(state, zrun / "model.pt")
    mem = _evaluate(zrun, data, tmp_path / "a" / "metrics.json", data_mode="in-memory")
    stream = _evaluate(zrun, data, tmp_path / "b" / "metrics.json", data_mode="stream")
    assert mem["normalize"] == stream["normalize"] == "zscore-dataset"
    _assert_same_files(tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json")
    raw = load_dataset(data, nan_policy="zero", normalize="none", image_size=16).images
    with np.load(tmp_path / "b" / "examples.npz") as z:  # the stored statistics, applied
        np.testing.assert_allclose(z["images"], (raw[z["test_index"]] - 0.3) / 0.2, atol=1e-5)
    with pytest.raises(DataError, match="zscore-dataset.*has none"):  # statistics unknown
        _evaluate(run, data, tmp_path / "c.json", data_mode="stream", normalize="zscore-dataset")
    assert not (tmp_path / "c.json").exists()


def test_a_killed_streamed_evaluation_resumes_from_its_last_block(
    run, in_memory, tmp_path, monkeypatch
):
    data, mem_out, _ = in_memory
    run_dir, out = run, tmp_path / "metrics.json"
    calls, kill = [], [True]  # images of each predict call; Ctrl-C at the second block?
    real_predict = scoring.predict

    def killed_after_first_block(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2 and kill[0]:
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(scoring, "predict", killed_after_first_block)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(run_dir, data, out, max_memory_gb=TINY_GB)
    partial = partial_path(out)
    assert sorted(p.name for p in partial.iterdir()) == ["block-000000000000.npz", "state.json"]
    assert not out.exists() and not (tmp_path / "scores.npz").exists()

    calls.clear()
    kill[0] = False
    m = _evaluate(run_dir, data, out, max_memory_gb=TINY_GB)
    assert m["streaming"]["resumed_images"] == BATCH and m["streaming"]["discarded_partial"] is None
    assert sum(calls) == 9 - BATCH  # only the images after the committed block were scored
    assert not partial.exists()
    _assert_same_files(mem_out, out)

    # an interrupted run of other options is not continued
    calls.clear()
    kill[0] = True
    with pytest.raises(KeyboardInterrupt):
        _evaluate(run_dir, data, out, max_memory_gb=TINY_GB)
    assert partial.exists()
    kill[0] = False
    m = _evaluate(run_dir, data, out, max_memory_gb=TINY_GB, batch_size=3)
    assert m["streaming"]["resumed_images"] == 0
    assert "fingerprint changed" in m["streaming"]["discarded_partial"]
    assert not partial.exists()


def test_several_shards_score_like_one_file(run, tmp_path):
    whole = write_toy_h5(tmp_path / "whole.h5", n_per_class=8, seed=1)
    ref = load_dataset(whole, normalize="none")
    (tmp_path / "shards").mkdir()
    for k, part in enumerate((slice(0, 12), slice(12, 24))):  # 12 = 3 batches of 4
        write_hdf5(
            tmp_path / "shards" / f"part{k}.h5",
            ref.images[part],
            ref.labels[part],
            ref.class_names,
            sources=ref.sources[part],
        )
    one = _evaluate(run, whole, tmp_path / "one.json", data_mode="stream")
    many = _evaluate(run, tmp_path / "shards" / "*.h5", tmp_path / "many.json")  # auto: streams
    assert many["streaming"]["shards"] == [str(tmp_path / "shards" / f"part{k}.h5") for k in (0, 1)]
    assert many["n_images"] == one["n_images"] == 24
    _assert_same_files(tmp_path / "one.json", tmp_path / "many.json")


def test_bad_shards_and_options_are_one_clear_error_and_write_nothing(run, tmp_path):
    good = write_toy_h5(tmp_path / "good.h5", n_per_class=4, seed=1)
    other = write_toy_h5(tmp_path / "other.h5", n_per_class=4, class_names=["a", "b", "c"])
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out" / "metrics.json"
    cases = [
        (f"{good},{tmp_path / 'gone.h5'}", DataError, r"gone\.h5"),
        (f"{good},{cut}", DataError, r"cut\.h5"),
        (f"{good},{other}", DataError, r"other\.h5.*differs from the first shard"),
        (str(tmp_path / "none*.h5"), DataError, r"none\*\.h5.*no file matches"),
    ]
    for data, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            _evaluate(run, data, out, data_mode="stream")
    with pytest.raises(ConfigError, match="several files.*--data-mode stream"):
        _evaluate(run, f"{good},{other}", out, data_mode="in-memory")
    with pytest.raises(ConfigError, match="nan_policy='drop'"):
        _evaluate(run, good, out, data_mode="stream", nan_policy="drop")
    cfg = config_from_sources(
        EvaluateConfig, None, {"checkpoint": str(run), "data": str(good), "data_mode": "stream"}
    )
    with pytest.raises(ConfigError, match="in memory"):
        evaluate(cfg, dataset=load_dataset(good), progress=False)
    assert not (tmp_path / "out").exists()
