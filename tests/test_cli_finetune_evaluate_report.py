"""The finetune -> evaluate -> report path through the CLI, and its bad-input messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_finetune import fake_pretrain_run, write_toy_h5

from deeplense_ssl.io import write_hdf5
from deeplense_ssl_cli.main import main


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(module_tmp):
    root = module_tmp("cli")
    write_toy_h5(root / "train.h5", n_per_class=16, seed=0)
    write_toy_h5(root / "test.h5", n_per_class=6, seed=1)
    fake_pretrain_run(root / "pretrain")
    return root


def test_finetune_evaluate_report_end_to_end(files, tmp_path, capsys):
    run = tmp_path / "ft"
    yaml = tmp_path / "ft.yaml"
    yaml.write_text("epochs: 3\nbatch_size: 16\nlabel_fraction: 0.25\n")
    rc, out, err = run_cli(
        [
            "finetune",
            "--data",
            files / "train.h5",
            "--checkpoint",
            files / "pretrain",
            "--head",
            "linear",
            "--label-fraction",
            "0.5",
            "--out",
            run,
            "--config",
            yaml,
        ],
        capsys,
    )
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["epochs"] == 3 and cfg["batch_size"] == 16  # from the YAML file
    assert cfg["label_fraction"] == 0.5  # the explicit flag wins over the YAML file
    rc, out, err = run_cli(
        ["evaluate", "--checkpoint", run, "--data", files / "test.h5", "--n-bootstrap", "20"],
        capsys,
    )
    assert rc == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['roc_auc']['macro']:.4f}" in out
    assert (run / "scores.npz").is_file()
    report = tmp_path / "report" / "report.html"
    rc, out, err = run_cli(
        [
            "report",
            run,
            "--out",
            report,
            "--embedding-map",
            "none",
            "--attribution-methods",
            "saliency",
        ],
        capsys,
    )
    assert rc == 0, err
    assert report.is_file() and (report.parent / "metrics.json").is_file()


def test_baseline_flags_and_binary_task(files, tmp_path, capsys):
    images = np.concatenate([np.zeros((12, 1, 16, 16)), np.ones((12, 1, 16, 16))]).astype(
        np.float32
    )
    images += np.random.default_rng(0).normal(0, 0.5, images.shape).astype(np.float32)
    labels = np.repeat([0, 1], 12)
    data = write_hdf5(tmp_path / "lens.h5", images, labels, ["non_lens", "lens"])
    run = tmp_path / "scratch"
    rc, _, err = run_cli(
        [
            "finetune",
            "--data",
            data,
            "--from-scratch",
            "--stem",
            "small",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            run,
        ],
        capsys,
    )
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["init"] == "scratch"
    rc, out, err = run_cli(
        [
            "evaluate",
            "--checkpoint",
            run,
            "--data",
            data,
            "--n-bootstrap",
            "10",
            "--out",
            tmp_path / "m.json",
        ],
        capsys,
    )
    assert rc == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["roc_auc"]["binary"] and m["roc_auc"]["micro"] is None
    assert out.startswith("AUC ")
    assert (tmp_path / "m.scores.npz").is_file()
    rc, _, err = run_cli(
        ["finetune", "--data", data, "--from-scratch", "--random-init", "--out", tmp_path / "z"],
        capsys,
    )
    assert rc == 2 and "two different baselines" in err


def test_bad_inputs_give_one_line_and_exit_1(files, tmp_path, capsys):
    rgb = write_toy_h5(tmp_path / "rgb.h5", n_per_class=3, chans=3)
    rc, out, err = run_cli(
        ["finetune", "--data", rgb, "--checkpoint", files / "pretrain", "--out", tmp_path / "a"],
        capsys,
    )
    assert rc == 1 and "Traceback" not in err and "rgb.h5" in err and "channel" in err
    assert not (tmp_path / "a").exists()
    other = fake_pretrain_run(tmp_path / "pre3", in_chans=3)
    rc, _, err = run_cli(["evaluate", "--checkpoint", other, "--data", files / "test.h5"], capsys)
    assert rc == 1 and "no model.pt" in err and not (other / "metrics.json").exists()
    rc, _, err = run_cli(["report", files / "pretrain", "--out", tmp_path / "r.html"], capsys)
    assert rc == 1 and "no metrics.json" in err and "evaluate" in err
    assert not (tmp_path / "r.html").exists()
    assert len(err.strip().splitlines()) == 1
