"""The table maths of benchmarks/label_efficiency.py (merging result files, labels saved)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_efficiency  # noqa: E402

FRACTIONS = (0.01, 0.1, 1.0)


def test_equivalent_fraction_interpolates_in_log_fraction() -> None:
    eq = label_efficiency.equivalent_fraction
    base = [0.6, 0.7, 0.9]
    # Exactly on a measured point, halfway in log10 between 0.1 and 1, and the edges.
    assert eq(0.7, FRACTIONS, base) == pytest.approx(0.1)
    assert eq(0.8, FRACTIONS, base) == pytest.approx(10**-0.5)
    assert eq(0.65, FRACTIONS, base) == pytest.approx(10**-1.5)
    assert eq(0.95, FRACTIONS, base) is None  # the baseline never gets there
    assert eq(0.55, FRACTIONS, base) == 0.0  # reached with the fewest labels measured
    # A non-monotone baseline (noise near chance) is made monotone first.
    assert eq(0.55, FRACTIONS, [0.5, 0.45, 0.6]) == pytest.approx(10 ** (-1 + 0.5))


def _write(path: Path, epochs: int, rows: list[tuple]) -> str:
    keys = ("model", "method", "label_fraction", "seed", "auc_macro")
    data = {
        "header": {"pretrain_epochs": epochs},
        "rows": [dict(zip(keys, r, strict=True)) | {"ci_low": None, "ci_high": None} for r in rows],
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_merge_results_separates_budgets_and_counts_each_run_once(tmp_path: Path) -> None:
    a = _write(
        tmp_path / "a.json",
        6,
        [("m", "simclr", 1.0, 0, 0.70), ("m", "random-init", 1.0, 0, 0.80)],
    )
    b = _write(
        tmp_path / "b.json",
        20,
        [("m", "simclr", 1.0, 0, 0.75), ("m", "random-init", 1.0, 0, 0.82)],
    )
    c = _write(tmp_path / "c.json", 6, [("m", "simclr", 1.0, 1, 0.74)])
    rows = label_efficiency.merge_results([a, b, c], default_epochs=6)
    got = {(r["method"], r["seed"]): r["auc_macro"] for r in rows}
    # The 20-epoch SSL run is its own row; the baseline does not depend on the budget, so
    # the later file's run with the same seed replaces the earlier one.
    assert got == {
        ("simclr", 0): 0.70,
        ("simclr", 1): 0.74,
        ("simclr, 20 epochs", 0): 0.75,
        ("random-init", 0): 0.82,
    }
    assert [r["method"] for r in rows][-1] == "random-init"  # baselines last
    table = label_efficiency.markdown_table(rows, (1.0,))
    assert "| simclr | 0.720 ± 0.028 (2 seeds) |" in table
