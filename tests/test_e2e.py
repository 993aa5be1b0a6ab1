"""The whole CLI path on tiny simulated data, and the demo on a tiny plan."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_ssl.demo import DemoPlan, run_demo
from deeplense_ssl_cli.main import cli


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_simulate_pretrain_finetune_evaluate_report(tmp_path):
    run = CliRunner().invoke
    train, test = tmp_path / "train.h5", tmp_path / "test.h5"
    for path, n, seed in [(train, 6, 0), (test, 4, 1)]:
        _ok(run(cli, ["simulate", "--model", "model_ii", "--n-per-class", str(n),
                      "--image-size", "48", "--seed", str(seed), "--out", str(path)]))  # fmt: skip
    with h5py.File(train) as f:
        assert f["images"].shape == (18, 1, 48, 48)
        assert json.loads(f.attrs["class_names"]) == ["no_sub", "cdm", "axion"]
    pre = tmp_path / "pre"
    _ok(run(cli, ["pretrain", "--data", str(train), "--method", "simclr", "--stem", "small",
                  "--batch-size", "6", "--max-steps", "2", "--out", str(pre),
                  "--device", "cpu"]))  # fmt: skip
    assert (pre / "backbone.pt").exists() and (pre / "loss_curve.png").exists()
    ft = tmp_path / "ft"
    _ok(run(cli, ["finetune", "--data", str(train), "--checkpoint", str(pre), "--head", "linear",
                  "--label-fraction", "1.0", "--epochs", "2", "--out", str(ft)]))  # fmt: skip
    _ok(run(cli, ["evaluate", "--checkpoint", str(ft), "--data", str(test),
                  "--n-bootstrap", "20"]))  # fmt: skip
    metrics = json.loads((ft / "metrics.json").read_text())
    scores = np.load(ft / "scores.npz")
    assert scores["probs"].shape == (12, 3)
    np.testing.assert_allclose(scores["probs"].sum(1), 1.0, rtol=1e-5)
    assert 0.0 <= metrics["roc_auc"]["macro"] <= 1.0
    ci = metrics["ci"]["auc_macro"]
    assert ci["lower"] <= metrics["roc_auc"]["macro"] <= ci["upper"]
    html = tmp_path / "report.html"
    _ok(run(cli, ["report", str(ft), "--out", str(html), "--attribution-methods", "saliency",
                  "--embedding-map", "none"]))  # fmt: skip
    text = html.read_text()
    assert "<html" in text.lower() and "data:image/png;base64," in text
    assert f"{metrics['roc_auc']['macro']:.3f}" in text


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    plan = DemoPlan(
        n_train_per_class=6,
        n_test_per_class=4,
        n_unlabelled_per_class=2,
        pretrain_epochs=1,
        pretrain_batch_size=6,
        finetune_epochs=1,
        scratch_epochs=1,
        finetune_min_steps=0,
        label_fractions=(1.0,),
        full_finetune_fractions=(1.0,),
        stem="small",
    )
    logs: list[str] = []
    report = run_demo(tmp_path, device="cpu", plan=plan, progress=False, log=logs.append)
    assert report.exists()
    names = [f"{plan.method}-linear-f1", f"{plan.method}-full-f1", "random-linear-f1"]
    for name in [*names, "scratch-full-f1"]:
        assert (tmp_path / "runs" / name / "metrics.json").exists(), name
    pre = tmp_path / "runs" / f"pretrain-{plan.method}"
    resolved = json.loads((pre / "config.json").read_text())["resolved"]
    assert resolved["n_train"] == 3 * (6 + 2)  # the training images and the unlabelled pool
    stamp = (pre / "backbone.pt").stat().st_mtime_ns
    logs.clear()
    run_demo(tmp_path, device="cpu", plan=plan, progress=False, log=logs.append)
    assert any("skipping pretraining" in line for line in logs)
    assert (pre / "backbone.pt").stat().st_mtime_ns == stamp


def test_the_cpu_demo_pretrains_longer_where_bf16_is_native(monkeypatch):
    from deeplense_ssl import demo, runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    slow = demo.plan_for("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    fast = demo.plan_for("cpu")
    # only the pretraining budget changes: the data and the fine-tunes stay the same
    assert (slow.pretrain_epochs, fast.pretrain_epochs) == (6, 10)
    assert {**vars(slow), "pretrain_epochs": 10} == vars(fast)
    assert demo.plan_for("cpu", quick=True).pretrain_epochs == 1
