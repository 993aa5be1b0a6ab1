"""evaluate(): outputs recompute from the per-image scores, clear errors, warnings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers_finetune import finetune_and_evaluate, write_toy_h5
from sklearn import metrics as skm

from deeplense_ssl.config import EvaluateConfig, config_from_sources
from deeplense_ssl.errors import CheckpointError, DataError
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.metrics import knn_predict


@pytest.fixture(scope="module")
def evaluated(module_tmp):
    root = module_tmp("eval")
    run, metrics = finetune_and_evaluate(root, n_bootstrap=30)
    return root, run, metrics


def test_evaluate_outputs_recompute_every_number(evaluated):
    root, run, metrics = evaluated
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["roc_auc"]["per_class"] == pytest.approx(metrics["roc_auc"]["per_class"])
    with np.load(run / "scores.npz") as z:
        probs, labels, emb = z["probs"], z["labels"], z["embeddings"]
        assert len(z["sources"]) == len(labels) == 24
    names = on_disk["class_names"]
    assert on_disk["roc_auc"]["macro"] == pytest.approx(
        skm.roc_auc_score(labels, probs, average="macro", multi_class="ovr"), abs=1e-6
    )
    assert on_disk["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert on_disk["class_counts"] == {n: 8 for n in names}
    with np.load(run / "train_embeddings.npz") as z:
        pred, _ = knn_predict(z["embeddings"], z["labels"], emb, 20, 0.07, num_classes=3)
    assert on_disk["knn"]["accuracy"] == pytest.approx(float((pred.numpy() == labels).mean()))
    ci = on_disk["ci"]["auc_macro"]
    assert ci["n_resamples"] == 30 and ci["lower"] <= on_disk["roc_auc"]["macro"] <= ci["upper"]
    with np.load(run / "examples.npz") as z:
        assert z["images"].shape[1:] == (1, 16, 16)
        assert z["neighbor_images"].shape[:2] == (len(z["labels"]), 6)


def test_evaluate_rejects_unseen_classes_and_scores_them_as_ood(evaluated, tmp_path):
    root, run, _ = evaluated
    test4 = write_toy_h5(
        tmp_path / "four.h5", n_per_class=5, seed=2, class_names=["no_sub", "cdm", "axion", "sub"]
    )
    out = tmp_path / "m" / "metrics.json"
    cfg = config_from_sources(
        EvaluateConfig, None, {"checkpoint": str(run), "data": str(test4), "out": str(out)}
    )
    with pytest.raises(DataError, match=r"four\.h5.*sub.*--ood-classes sub"):
        evaluate(cfg, progress=False)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    cfg.ood_classes = ["sub"]
    cfg.n_bootstrap = 0
    m = evaluate(cfg, progress=False)
    assert m["ood"]["n_ood"] == 5 and m["ood"]["classes"] == ["sub"] and m["n_images"] == 15
    assert 0.0 <= m["ood"]["auroc"] <= 1.0


def test_evaluate_rejects_other_size_channels_and_non_finetune_folders(evaluated, tmp_path):
    root, run, _ = evaluated
    big = write_toy_h5(tmp_path / "big.h5", n_per_class=2, size=24)
    rgb = write_toy_h5(tmp_path / "rgb.h5", n_per_class=2, chans=3)
    for data, pattern in ((big, r"big\.h5.*24x24.*--image-size 16"), (rgb, r"rgb\.h5.*3 chan")):
        cfg = config_from_sources(
            EvaluateConfig,
            None,
            {"checkpoint": str(run), "data": str(data), "out": str(tmp_path / "x.json")},
        )
        with pytest.raises(DataError, match=pattern):
            evaluate(cfg, progress=False)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.scores.npz").exists()
    cfg = config_from_sources(
        EvaluateConfig, None, {"checkpoint": str(root / "pretrain"), "data": str(big)}
    )
    with pytest.raises(CheckpointError, match="no model.pt.*pretrain run"):
        evaluate(cfg, progress=False)


def test_model_file_from_another_backbone_is_a_clear_error(evaluated, tmp_path):
    root, run, _ = evaluated
    bad = tmp_path / "bad_run"
    shutil.copytree(run, bad)
    state = torch.load(bad / "model.pt", weights_only=True)
    state["spec"]["backbone"] = "resnet34"  # weights are resnet18's
    torch.save(state, bad / "model.pt")
    cfg = config_from_sources(
        EvaluateConfig, None, {"checkpoint": str(bad), "data": str(root / "test.h5")}
    )
    with pytest.raises(CheckpointError, match=r"model\.pt: weights do not match.*resnet34"):
        evaluate(cfg, progress=False)
    torch.save({"format": "something else"}, bad / "model.pt")
    with pytest.raises(CheckpointError, match="not a deeplense_ssl finetune model"):
        evaluate(cfg, progress=False)


def test_evaluating_on_the_training_file_or_duplicates_is_flagged(evaluated, tmp_path):
    root, run, metrics = evaluated
    assert metrics["warnings"] == []
    cfg = config_from_sources(
        EvaluateConfig,
        None,
        {
            "checkpoint": str(run),
            "data": str(root / "train.h5"),
            "out": str(tmp_path / "m.json"),
            "n_bootstrap": 0,
        },
    )
    assert "is the file the model was fine-tuned on" in evaluate(cfg, progress=False)["warnings"][0]
    images = np.zeros((6, 1, 16, 16), np.float32)
    dup = write_hdf5(
        tmp_path / "dup.h5",
        images,
        np.array([0, 0, 1, 1, 2, 2]),
        ["no_sub", "cdm", "axion"],
        sources=["a", "a", "b", "c", "d", "d"],
    )
    cfg.data = str(dup)
    assert evaluate(cfg, progress=False)["warnings"][0].startswith("2 test image(s) repeat")
