"""Run-folder layout: file names, strict JSON, tolerant jsonl reading, pretrain run config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense_ssl import runs
from deeplense_ssl.errors import CheckpointError


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
