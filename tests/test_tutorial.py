"""The tutorial notebook (``docs/tutorial.ipynb``) runs end to end on tiny simulated data, so it
never rots: executed with nbclient in a temporary folder, its files and printed numbers are
checked against what the package wrote."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from deeplense_ssl.runs import read_metrics

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def _text(nb) -> str:
    """Everything the code cells printed (stdout and stderr)."""
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )


def test_the_stored_notebook_is_valid_and_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    work, printed = tmp_path / "tutorial_work", _text(nb)

    # the data: a DeepLense-style folder, simulated when lenstronomy is installed
    assert {p.name for p in (work / "train").iterdir()} == {"axion", "cdm", "no_sub"}
    assert len(list((work / "train").rglob("*.npy"))) == 120
    simulated = importlib.util.find_spec("lenstronomy") is not None
    assert ("random images instead" in printed) is not simulated

    # pretraining with its monitors, the probe, the evaluation and the report
    records = read_metrics(work / "pretrain")
    epoch = [r for r in records if r["kind"] == "epoch"][-1]
    assert 0 <= epoch["knn_top1"] <= 1 and epoch["rankme"] >= 1
    assert (work / "pretrain" / "backbone.pt").is_file()
    assert (work / "probe" / "model.pt").is_file()
    metrics = json.loads((work / "probe" / "metrics.json").read_text())
    auc, ci = metrics["roc_auc"]["macro"], metrics["ci"]["auc_macro"]
    assert math.isfinite(auc) and 0 <= auc <= 1
    assert ci["lower"] <= auc <= ci["upper"]
    shown = re.search(r"test macro ROC-AUC (\d\.\d{3})", printed)
    assert shown is not None and float(shown.group(1)) == pytest.approx(auc, abs=5e-4)
    assert (work / "report.html").stat().st_size > 10_000

    # export, embed, search (through the CLI)
    assert (work / "export" / "backbone.safetensors").stat().st_size > 1_000_000
    assert "How to load" in (work / "export" / "backbone.md").read_text()
    assert "Wrote 60 embeddings" in printed and (work / "embeddings.h5").is_file()
    with open(work / "search" / "neighbours.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= 2  # the loss curve and the search montage
