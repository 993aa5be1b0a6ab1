"""The HTML report: self-contained, shows what metrics.json says, clear errors, no partial files."""

from __future__ import annotations

import json
import re

import pytest
from helpers_finetune import finetune_and_evaluate

from deeplense_ssl.config import ReportConfig, config_from_sources
from deeplense_ssl.errors import CheckpointError
from deeplense_ssl.report import build_report


@pytest.fixture(scope="module")
def two_runs(module_tmp):
    root = module_tmp("rep")
    a, ma = finetune_and_evaluate(root, label_fraction=0.5, epochs=1, n_bootstrap=20)
    b, mb = finetune_and_evaluate(root, label_fraction=1.0, epochs=1, n_bootstrap=20)
    return root, [(a, ma), (b, mb)]


def test_report_is_self_contained_and_shows_the_metrics(two_runs, tmp_path):
    root, runs = two_runs
    out = tmp_path / "r" / "report.html"
    cfg = config_from_sources(
        ReportConfig,
        None,
        {"runs": [str(r) for r, _ in runs], "out": str(out), "n_attribution_examples": 1},
    )
    assert build_report(cfg) == out
    doc = out.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|file:|//)""", doc)  # nothing external
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    # per run: ROC, confusion, training, attribution, retrieval, embedding map; plus the
    # label-fraction plot
    assert len(images) == 2 * 6 + 1
    # both probes sit on the same frozen backbone: one map, drawn once, shown for both runs
    assert images[6] == images[12] and doc.count("The same test embeddings as run") == 1
    for run, m in runs:
        assert run.name in doc
        assert f"{m['roc_auc']['macro']:.3f}" in doc
        lo, hi = m["ci"]["auc_macro"]["lower"], m["ci"]["auc_macro"]["upper"]
        assert f"[{lo:.3f}, {hi:.3f}]" in doc
    for heading in (
        "ROC-AUC against label fraction",
        "Training curves",
        "Attribution maps",
        "Nearest-neighbour retrieval",
        "Embedding map",
        "fine-tuning data",
    ):
        assert doc.count(heading) == (1 if "label fraction" in heading else 2), heading
    summary = json.loads((out.parent / "metrics.json").read_text())
    assert summary["kind"] == "report"
    assert [r["label_fraction"] for r in summary["runs"]] == [0.5, 1.0]
    assert [r["auc_macro"] for r in summary["runs"]] == [m["roc_auc"]["macro"] for _, m in runs]


def test_report_beside_an_evaluate_metrics_file_does_not_overwrite_it(two_runs):
    root, runs = two_runs
    run, _ = runs[0]
    before = (run / "metrics.json").read_text()
    cfg = config_from_sources(
        ReportConfig,
        None,
        {
            "runs": [str(run / "metrics.json")],
            "out": str(run / "report.html"),
            "embedding_map": "none",
            "attribution_methods": [],
        },
    )
    build_report(cfg)
    assert (run / "metrics.json").read_text() == before
    assert json.loads((run / "report_metrics.json").read_text())["kind"] == "report"


def test_run_without_metrics_is_a_clear_error_and_nothing_is_written(two_runs, tmp_path):
    root, runs = two_runs
    out = tmp_path / "x" / "report.html"
    for bad, pattern in (
        (root / "pretrain", r"pretrain.*no metrics\.json.*pretrain run.*deeplense-ssl evaluate"),
        (tmp_path / "missing", r"missing: no such run folder"),
    ):
        cfg = config_from_sources(
            ReportConfig, None, {"runs": [str(runs[0][0]), str(bad)], "out": str(out)}
        )
        with pytest.raises(CheckpointError, match=pattern):
            build_report(cfg)
    assert not out.parent.exists()
