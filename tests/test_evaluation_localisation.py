"""evaluate()'s attribution localisation: the fraction of attribution on the true substructure
of a simulated test file, recomputed here with captum and a hand-made mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from helpers_finetune import (
    SCALE,
    SIZE,
    finetune_and_evaluate,
    write_simulated_like,
)

from deeplense_ssl.config import EvaluateConfig, ReportConfig, config_from_sources
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.inference import load_finetuned
from deeplense_ssl.report import build_report
from deeplense_ssl.simulate import substructure_mask


def _evaluate(run, data, out, **options):
    overrides = {"checkpoint": str(run), "data": str(data), "out": str(out), "n_bootstrap": 0}
    overrides.update(options)
    return evaluate(config_from_sources(EvaluateConfig, None, overrides), progress=False)


@pytest.fixture(scope="module")
def run(module_tmp):
    run_dir, _ = finetune_and_evaluate(module_tmp("loc"), n_bootstrap=0)
    return run_dir


def test_localisation_matches_captum_and_hand_made_masks(run, tmp_path):
    raw, labels, params = write_simulated_like(tmp_path / "sim.h5")
    radius = 3.0  # FWHM: 0.3 arcsec
    m = _evaluate(run, tmp_path / "sim.h5", tmp_path / "m.json", image_size=16)["localisation"]
    assert m["method"] == "integrated_gradients" and m["radius_arcsec"] == pytest.approx(0.3)
    assert set(m["per_class"]) == {"cdm", "axion"}  # no_sub has no substructure

    model, _ = load_finetuned(run, map_location="cpu")
    model.eval()
    crop = slice((SIZE - 16) // 2, (SIZE - 16) // 2 + 16)  # evaluate centre-crops 20 -> 16 px
    images = raw[:, :, crop, crop]
    lo, hi = images.min(axis=(1, 2, 3), keepdims=True), images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - lo) / (hi - lo)  # the run's normalisation (minmax per image)
    axis = (np.arange(SIZE) - (SIZE - 1) / 2) * SCALE
    xx, yy = np.meshgrid(axis, axis)
    for c, name in ((1, "cdm"), (2, "axion")):
        idx = np.flatnonzero(labels == c)
        x = torch.as_tensor(images[idx])
        ig = IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=c, n_steps=32
        )
        maps = np.abs(ig.sum(1).detach().numpy())
        fractions, areas, lights = [], [], []
        for j, i in enumerate(idx):
            if c == 1:  # by hand: within 0.3 arcsec of either subhalo
                d2 = (xx[..., None] - params["subhalo_x_arcsec"][i]) ** 2 + (
                    yy[..., None] - params["subhalo_y_arcsec"][i]
                ) ** 2
                mask = (d2 <= 0.3**2).any(-1)
            else:
                row = {k: v[i] for k, v in params.items()}
                mask = substructure_mask(row, SIZE, SCALE, 0.3)
            mask = mask[crop, crop]
            fractions.append(maps[j][mask].sum() / maps[j].sum())
            areas.append(mask.mean())
            light = np.abs(images[idx[j], 0])
            lights.append(light[mask].sum() / light.sum())
        got = m["per_class"][name]
        assert got["n"] == len(idx)
        assert got["fraction"] == pytest.approx(np.mean(fractions), rel=1e-4)
        assert got["random"] == pytest.approx(np.mean(areas), rel=1e-6)
        assert got["ratio"] == pytest.approx(np.mean(fractions) / np.mean(areas), rel=1e-4)
        assert got["light_fraction"] == pytest.approx(np.mean(lights), rel=1e-6)
        assert got["ratio_to_light"] == pytest.approx(np.mean(fractions) / np.mean(lights), 1e-4)
    assert m["all"]["n"] == 6 and radius == m["radius_fwhm"]


def test_localisation_is_absent_without_positions_or_when_off(run, tmp_path):
    write_simulated_like(tmp_path / "plain.h5", provenance=None)  # not simulated by this package
    m = _evaluate(run, tmp_path / "plain.h5", tmp_path / "a.json", image_size=16)
    assert m["localisation"] is None
    write_simulated_like(tmp_path / "sim.h5")
    off = _evaluate(run, tmp_path / "sim.h5", tmp_path / "b.json", image_size=16,
                    localisation_images=0)  # fmt: skip
    assert off["localisation"] is None
    few = _evaluate(run, tmp_path / "sim.h5", tmp_path / "c.json", image_size=16,
                    localisation_images=1)  # fmt: skip
    assert {v["n"] for v in few["localisation"]["per_class"].values()} == {1}


def test_report_shows_the_localisation_table_and_ratio(run, tmp_path):
    write_simulated_like(tmp_path / "sim.h5")
    m = _evaluate(run, tmp_path / "sim.h5", tmp_path / "m.json", image_size=16)
    out = build_report(
        ReportConfig(
            runs=[str(tmp_path / "m.json")],
            out=str(tmp_path / "r.html"),
            attribution_methods=[],
            embedding_map="none",
        )  # fmt: skip
    )
    page = out.read_text()
    assert "Does the model look at the substructure?" in page
    ratio, to_light = (m["localisation"]["all"][k] for k in ("ratio", "ratio_to_light"))
    assert f"<td>{ratio:.2f}</td>" in page and f"<td>{ratio:.2f} / {to_light:.2f}</td>" in page
    row = json.loads((tmp_path / "metrics.json").read_text())["runs"][0]
    assert row["substructure_attribution_ratio"] == pytest.approx(ratio)
    assert row["substructure_attribution_ratio_to_light"] == pytest.approx(to_light)
