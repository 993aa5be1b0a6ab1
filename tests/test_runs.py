"""Run-folder layout: file names, strict JSON, tolerant jsonl reading, pretrain run config."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense_ssl import runs
from deeplense_ssl.errors import CheckpointError, OutputError
from deeplense_ssl.io import atomic_output


@dataclasses.dataclass
class _Report:
    pixels: np.int64
    frac: float
    where: Path


class _Thing:
    def __str__(self) -> str:
        return "T"


def test_to_jsonable_gives_plain_strict_json():
    obj = {
        1: np.float32(0.5),
        "ints": np.arange(3),
        "nested": (np.int64(4), [np.bool_(True), None]),
        "report": _Report(np.int64(7), float("nan"), Path("a/b")),
        "inf": np.float64(np.inf),
        "tensor": torch.tensor([1.5, 2.5]),
        "other": _Thing(),
    }
    got = runs.to_jsonable(obj)
    assert got == {
        "1": 0.5,
        "ints": [0, 1, 2],
        "nested": [4, [True, None]],
        "report": {"pixels": 7, "frac": None, "where": "a/b"},
        "inf": None,
        "tensor": [1.5, 2.5],
        "other": "T",
    }
    assert type(got["nested"][0]) is int and type(got["nested"][1][0]) is bool
    json.dumps(got, allow_nan=False)  # strict JSON: no NaN / Infinity tokens


def test_write_json_and_jsonl_round_trip(tmp_path):
    path = runs.write_json(tmp_path / "sub" / "m.json", {"a": np.float64(1.25), "b": [1, 2]})
    assert path.read_text() == '{\n  "a": 1.25,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert runs.read_json(path, "metrics") == {"a": 1.25, "b": [1, 2]}
    rows = [{"epoch": 1, "loss": np.float32(0.5)}, {"epoch": 2, "loss": float("nan")}]
    runs.write_jsonl(tmp_path / runs.METRICS_FILE, rows)
    assert runs.read_metrics(tmp_path) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": None}]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_read_jsonl_skips_torn_and_non_object_lines(tmp_path):
    (tmp_path / runs.METRICS_FILE).write_text('{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "lo')
    assert runs.read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert runs.read_metrics(tmp_path / "missing") == []


def test_read_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad\.json: unreadable run config"):
        runs.read_json(tmp_path / "bad.json", "run config")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(CheckpointError, match=r"list\.json: metrics is not a JSON object"):
        runs.read_json(tmp_path / "list.json", "metrics")


def test_pretrain_run_config_round_trip_and_errors(tmp_path):
    runs.write_run_config(tmp_path, {"backbone_spec": {"name": "resnet18"}, "config": {}})
    data = runs.read_run_config(tmp_path)
    assert data["kind"] == runs.PRETRAIN_KIND and data["backbone_spec"] == {"name": "resnet18"}
    assert "deeplense_ssl_version" in data
    with pytest.raises(CheckpointError, match="no such run folder"):
        runs.read_run_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a pretrain run folder"):
        runs.read_run_config(tmp_path / "empty")


def test_scores_and_report_metrics_paths(tmp_path):
    assert runs.scores_path_for(tmp_path / "metrics.json") == tmp_path / runs.SCORES_FILE
    assert runs.scores_path_for(tmp_path / "metrics.json", "examples") == tmp_path / "examples.npz"
    assert runs.scores_path_for(tmp_path / "ood.json", "scores") == tmp_path / "ood.scores.npz"
    out = tmp_path / "report.html"
    assert runs.report_metrics_path(out) == tmp_path / "metrics.json"
    (tmp_path / "metrics.json").write_text(json.dumps({"kind": "report"}))
    assert runs.report_metrics_path(out) == tmp_path / "metrics.json"
    (tmp_path / "metrics.json").write_text(json.dumps({"kind": "evaluate"}))
    assert runs.report_metrics_path(out) == tmp_path / runs.REPORT_METRICS_FALLBACK_FILE


# --------------------------------------------------------------------------------------------
# Checked readers (issue 15): one CheckpointError naming the file and the key
# --------------------------------------------------------------------------------------------


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _scores(path, n=4, **extra):
    arrays = {
        "probs": np.full((n, 3), 1 / 3, np.float32),
        "labels": np.arange(n) % 3,
        "embeddings": np.zeros((n, 8), np.float32),
        **extra,
    }
    return _npz(path, **arrays)


def test_read_arrays_round_trip_and_all_members(tmp_path):
    path = _scores(tmp_path / "scores.npz", sources=np.array(["a", "b", "c", "d"]))
    got = runs.read_arrays(path, "per-image scores", runs.SCORES_ARRAYS, n_classes=3)
    assert sorted(got) == ["embeddings", "labels", "probs", "sources"]
    np.testing.assert_array_equal(got["labels"], [0, 1, 2, 0])
    assert got["probs"].dtype == np.float32 and got["sources"][3] == "d"


def _corrupt_cases(tmp_path):
    good = _scores(tmp_path / "good.npz").read_bytes()
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.npz").write_text("not an archive\n")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "npy.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    return {
        "empty.npz": r"empty\.npz: unreadable per-image scores.*empty, truncated",
        "truncated.npz": r"truncated\.npz: unreadable per-image scores",
        "text.npz": r"text\.npz: unreadable per-image scores",
        "npy.npz": r"npy\.npz: unreadable per-image scores",
    }


def test_read_arrays_refuses_empty_truncated_and_foreign_files(tmp_path):
    for name, pattern in _corrupt_cases(tmp_path).items():
        with pytest.raises(CheckpointError, match=pattern):
            runs.read_arrays(tmp_path / name, "per-image scores", runs.SCORES_ARRAYS)
    with pytest.raises(CheckpointError, match=r"missing\.npz: no such file"):
        runs.read_arrays(tmp_path / "missing.npz", "per-image scores", runs.SCORES_ARRAYS)


def test_read_arrays_refuses_pickles_and_names_the_key(tmp_path):
    obj = np.empty(4, dtype=object)
    obj[:] = [{"x": 1}] * 4
    path = _scores(tmp_path / "s.npz", sources=obj)  # np.savez pickles object arrays
    with pytest.raises(CheckpointError, match=r"s\.npz: member 'sources' is a pickled object"):
        runs.read_arrays(path, "per-image scores", runs.SCORES_ARRAYS)


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"probs": np.zeros((4, 3))}, r"has no member 'labels'"),
        (
            {"probs": np.zeros((4, 3)), "labels": np.zeros(4), "embeddings": np.zeros((4, 2))},
            r"member 'labels' .* 1-D array of dtype kind 'iu', got shape \(4,\) dtype float64",
        ),
        (
            {"probs": np.zeros(4), "labels": np.zeros(4, int), "embeddings": np.zeros((4, 2))},
            r"member 'probs' .* 2-D",
        ),
        (
            {"probs": np.zeros((4, 3)), "labels": np.zeros(3, int), "embeddings": np.zeros((4, 2))},
            r"differ in length \(\[3, 4\]\)",
        ),
        (
            {"probs": np.zeros((2, 3)), "labels": np.array([0, 3]), "embeddings": np.zeros((2, 2))},
            r"'labels' .* outside 0\.\.2",
        ),
    ],
)
def test_read_arrays_checks_members(tmp_path, arrays, pattern):
    path = _npz(tmp_path / "scores.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"scores\.npz: .*" + pattern):
        runs.read_arrays(path, "per-image scores", runs.SCORES_ARRAYS, n_classes=3)


def test_read_arrays_refuses_a_member_declaring_more_data_than_stored(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**32, 2**32)}
    )
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("embeddings.npy", header.getvalue())
    with pytest.raises(CheckpointError, match=r"bomb\.npz: member 'embeddings' declares shape"):
        runs.read_arrays(path, "labelled training embeddings", runs.TRAIN_EMBEDDINGS_ARRAYS)


def test_read_json_required_and_typed_entries(tmp_path):
    path = runs.write_json(tmp_path / "m.json", {"a": 1, "b": True, "c": [1]})
    assert runs.read_json(path, "metrics", {"a": int}, {"c": list, "z": dict})["c"] == [1]
    with pytest.raises(CheckpointError, match=r"m\.json: metrics has no 'z' entry"):
        runs.read_json(path, "metrics", {"z": dict})
    with pytest.raises(CheckpointError, match=r"m\.json: metrics entry 'b' must be an integer"):
        runs.read_json(path, "metrics", optional={"b": int})  # JSON true is not a number
    with pytest.raises(CheckpointError, match=r"m\.json: metrics entry 'a' must be a list"):
        runs.read_json(path, "metrics", {"a": list})
    (tmp_path / "empty.json").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.json: unreadable metrics"):
        runs.read_json(tmp_path / "empty.json", "metrics")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(CheckpointError, match=r"latin\.json: unreadable metrics"):
        runs.read_json(tmp_path / "latin.json", "metrics")
    with pytest.raises(CheckpointError, match=r"nope\.json: no such metrics"):
        runs.read_json(tmp_path / "nope.json", "metrics")


def _eval_metrics(**changes):
    m = {
        "kind": "evaluate",
        "class_names": ["a", "b"],
        "n_images": 4,
        "roc_auc": {"binary": True, "auc": 0.5, "macro": 0.5},
        "confusion_matrix": [[1, 1], [1, 1]],
        "roc_curves": {"b": {"fpr": [0, 1], "tpr": [0, 1]}},
        "ci": {"auc_macro": {"lower": 0.1, "upper": 0.9}},
        "scores_file": "scores.npz",
    }
    m.update(changes)
    return {k: v for k, v in m.items() if v is not None}


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"roc_auc": None}, r"metrics file has no 'roc_auc' entry"),
        ({"kind": "report"}, r"not a metrics file of `deeplense-ssl evaluate` \(kind='report'\)"),
        ({"class_names": "ab"}, r"entry 'class_names' must be a list"),
        ({"roc_auc": {"macro": 0.5}}, r"'roc_auc' of the metrics file has no 'binary' entry"),
        ({"roc_auc": {"binary": False}}, r"has no 'per_class' entry"),
        ({"confusion_matrix": [[1, 1]]}, r"entry 'confusion_matrix' must be 2 x 2 numbers"),
        ({"roc_curves": {"b": {"fpr": [0]}}}, r"entry 'roc_curves/b' must be fpr and tpr"),
        ({"ci": {"auc_macro": 0.3}}, r"entry 'ci/auc_macro' must be an object"),
        ({"scores_file": "../x.npz"}, r"entry 'scores_file' must be a file name"),
        ({"n_images": "4"}, r"entry 'n_images' must be an integer, got str"),
    ],
)
def test_read_eval_metrics_names_the_missing_or_malformed_entry(tmp_path, changes, pattern):
    assert runs.read_eval_metrics(runs.write_json(tmp_path / "ok.json", _eval_metrics()))
    path = runs.write_json(tmp_path / "metrics.json", _eval_metrics(**changes))
    with pytest.raises(CheckpointError, match=r"metrics\.json: .*" + pattern):
        runs.read_eval_metrics(path)


def test_finetune_config_and_val_metrics_readers(tmp_path):
    ok = runs.write_json(tmp_path / "c.json", {"kind": "finetune", "config": {}, "pretrain": None})
    assert runs.read_finetune_config(ok)["pretrain"] is None
    bad = runs.write_json(tmp_path / "config.json", {"config": [1]})
    with pytest.raises(CheckpointError, match=r"config\.json: run config entry 'config' must be"):
        runs.read_finetune_config(bad)
    bad = runs.write_json(tmp_path / "p.json", {"pretrain": {"run": 3}})
    with pytest.raises(CheckpointError, match=r"p\.json: 'pretrain' of the run config entry 'run'"):
        runs.read_finetune_config(bad)
    bad = runs.write_json(tmp_path / "val_metrics.json", {"best_epoch": "x"})
    with pytest.raises(CheckpointError, match=r"val_metrics\.json: .*'best_epoch' must be"):
        runs.read_val_metrics(bad)


def test_pretrain_run_config_entries_are_checked(tmp_path):
    runs.write_run_config(tmp_path, {"backbone_spec": {"name": "resnet18"}, "config": []})
    with pytest.raises(CheckpointError, match=r"config\.json: run config entry 'config' must be"):
        runs.read_run_config(tmp_path)
    runs.write_run_config(tmp_path, {"backbone_spec": {"name": "resnet18"}, "config": {}})
    with pytest.raises(CheckpointError, match=r"config\.json: backbone_spec has no 'stem' entry"):
        runs.read_backbone_spec(tmp_path)
    spec = {"name": "resnet18", "stem": "small", "in_chans": 1, "feature_dim": 512}
    runs.write_run_config(tmp_path, {"backbone_spec": spec, "config": {}})
    assert runs.read_backbone_spec(tmp_path) == spec


# --------------------------------------------------------------------------------------------
# One consistent run per folder: staged run folders and files written together
# --------------------------------------------------------------------------------------------


def _finetune_like(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json(folder / runs.CONFIG_FILE, {"kind": runs.FINETUNE_KIND, "tag": tag})
    (folder / runs.MODEL_FILE).write_text(tag)
    return folder


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_staged_run_replaces_an_old_run_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(runs, "_exchange", lambda a, b: False)
    out = _finetune_like(tmp_path / "run", "old")
    (out / runs.SCORES_FILE).write_text("old scores")  # evaluation of the old model
    with runs.staged_run_folder(out, runs.FINETUNE_KIND) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".run.stage-")
        assert _contents(out)[runs.MODEL_FILE] == b"old"  # untouched while the run writes
        _finetune_like(stage, "new")
    assert sorted(_contents(out)) == [runs.CONFIG_FILE, runs.MODEL_FILE]
    assert _contents(out)[runs.MODEL_FILE] == b"new"
    assert _siblings(out) == []
    with runs.staged_run_folder(tmp_path / "fresh" / "run", runs.FINETUNE_KIND) as stage:
        _finetune_like(stage, "first")
    assert (tmp_path / "fresh" / "run" / runs.MODEL_FILE).read_text() == "first"


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_staged_run_leaves_the_old_run_untouched(tmp_path, failure):
    out = _finetune_like(tmp_path / "run", "old")
    before = _contents(out)
    with pytest.raises(type(failure)), runs.staged_run_folder(out, runs.FINETUNE_KIND) as stage:
        _finetune_like(stage, "new")
        raise failure
    assert _contents(out) == before and _siblings(out) == []


def test_output_errors_in_the_stage_name_the_run_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputError) as info:
        with runs.staged_run_folder(out, runs.FINETUNE_KIND) as stage:
            with atomic_output(stage / runs.MODEL_FILE) as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    message = str(info.value)
    assert f"cannot write {out / runs.MODEL_FILE}" in message
    assert ".stage-" not in message and info.value.path == str(out / runs.MODEL_FILE)
    assert list(tmp_path.iterdir()) == []


def test_folders_that_are_not_a_finetune_run_are_refused_before_any_work(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    (user / runs.MODEL_FILE).write_text("x")
    with pytest.raises(CheckpointError, match=r"mine is not empty .* \(notes\.txt\); .*another"):
        runs.check_replaceable(user, runs.FINETUNE_KIND)
    pre = tmp_path / "pre"
    runs.write_run_config(pre, {"backbone_spec": {}, "config": {}})
    with pytest.raises(CheckpointError, match=r"pre holds a pretrain run; a finetune run will"):
        with runs.staged_run_folder(pre, runs.FINETUNE_KIND):
            pytest.fail("the block must not run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"file is a file, not a run folder"):
        runs.check_replaceable(tmp_path / "file", runs.FINETUNE_KIND)
    assert (user / "notes.txt").read_text() == "keep me" and _siblings(user) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    runs.check_replaceable(empty, runs.FINETUNE_KIND)  # empty or missing: fine
    runs.check_replaceable(tmp_path / "missing", runs.FINETUNE_KIND)


def test_stale_stages_of_killed_runs_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "run"
    stale = tmp_path / ".run.stage-abcd1234"
    old = tmp_path / ".run.old-zz99_x01"
    live = tmp_path / ".run.stage-live0001"
    other = tmp_path / ".other.stage-abcd1234"
    for folder in (stale, old, live, other):
        folder.mkdir()
        (folder / runs.MODEL_FILE).write_text("x")
        os.utime(folder, (time.time() - 3600,) * 2)
    fd = os.open(live, os.O_RDONLY)
    fcntl = pytest.importorskip("fcntl")
    fcntl.flock(fd, fcntl.LOCK_EX)  # a run still writing it (here: this process)
    try:
        assert sorted(runs.remove_stale_stages(out)) == [old, stale]
    finally:
        os.close(fd)
    assert live.is_dir() and other.is_dir() and not stale.exists() and not old.exists()


def test_write_together_publishes_all_or_nothing(tmp_path):
    m, s = tmp_path / "metrics.json", tmp_path / "scores.npz"
    runs.write_together((m, runs.text_writer("old")), (s, runs.npz_writer({"a": np.zeros(2)})))
    assert m.read_text() == "old" and np.load(s)["a"].shape == (2,)

    def fail(path):
        raise OSError(errno.ENOSPC, "No space left on device")  # np.savez: no file name

    with pytest.raises(OutputError, match=rf"no space left on {tmp_path}: cannot write {s}"):
        runs.write_together((m, runs.text_writer("new")), (s, fail))
    assert m.read_text() == "old" and np.load(s)["a"].shape == (2,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "scores.npz"]


def test_write_together_removes_the_marker_before_replacing_the_others(tmp_path, monkeypatch):
    m, s = tmp_path / "metrics.json", tmp_path / "scores.npz"
    runs.write_together((m, runs.text_writer("old")), (s, runs.text_writer("old")))
    replace = os.replace

    def killed_before_the_marker(src, dst):
        if Path(dst) == m:
            raise KeyboardInterrupt  # stands for a kill between the two renames
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_marker)
    with pytest.raises(KeyboardInterrupt):
        runs.write_together((m, runs.text_writer("new")), (s, runs.text_writer("new")))
    # no marker: the group reads as "not written" (never new scores under an old metrics file)
    assert not m.exists() and s.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_model_state_check_names_the_missing_spec_entry(tmp_path):
    spec = {"backbone": "resnet18", "stem": "small", "in_chans": 1, "feature_dim": 512}
    spec.update(head_kind="linear", mlp_hidden_dim=0, class_names=["a", "b"], normalize="minmax")
    state = {"spec": spec, "backbone_state": {}, "head_state": {}}
    runs.check_model_state(state, tmp_path / "model.pt")
    del spec["in_chans"]
    with pytest.raises(CheckpointError, match=r"model\.pt: model spec has no 'in_chans' entry"):
        runs.check_model_state(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: model file has no 'head_state'"):
        runs.check_model_state({"spec": spec, "backbone_state": {}}, tmp_path / "model.pt")


def test_the_current_folder_is_never_swapped_away(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for out in (".", "..", str(work)):
        with pytest.raises(CheckpointError, match=r"is the current folder \(or holds it\)"):
            runs.check_replaceable(out, runs.FINETUNE_KIND)
    with runs.staged_run_folder("../run", runs.FINETUNE_KIND) as stage:
        _finetune_like(stage, "new")
    assert (work / "run" / runs.MODEL_FILE).read_text() == "new" and Path.cwd() == work / "sub"
