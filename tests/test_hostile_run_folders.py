"""Hostile inputs and faults in the commands that write and read run folders (issue 15).

A run folder is always one consistent run: a finetune re-run that fails, or is killed while
writing, leaves the old run whole; evaluate and report publish their files together. Damaged
run-folder files (zero bytes, truncated, pickles, missing keys) are one line naming the file
and the key. Every CLI case: exit 1, one line, no traceback, no partial or temporary output.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_finetune import fake_pretrain_run, finetune_and_evaluate
from helpers_mounts import mount_tmpfs, unmount

from deeplense_ssl import runs
from deeplense_ssl.io import atomic_output

FT_ARGS = ["--head", "linear", "--epochs", "1", "--batch-size", "32"]


def _main(args: list[str], capsys) -> tuple[int, str]:
    from deeplense_ssl_cli.main import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _hidden_siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def evaluated(module_tmp):
    """Toy data, a fake pretrain run and one finetune run evaluated into its folder."""
    root = module_tmp("hostile_runs")
    run, _ = finetune_and_evaluate(root, epochs=1, n_bootstrap=5, name="ft")
    return root, run


def _copy(run: Path, dst: Path) -> Path:
    """A copy of an evaluated run whose metrics file points at the copy."""
    shutil.copytree(run, dst)
    m = json.loads((dst / runs.EVAL_METRICS_FILE).read_text())
    m["finetune_run"] = str(dst)
    (dst / runs.EVAL_METRICS_FILE).write_text(json.dumps(m))
    return dst


def _finetune(root: Path, out: Path, *extra: str) -> list[str]:
    data, pre = root / "train.h5", root / "pretrain"
    return ["finetune", "--data", data, "--checkpoint", pre, "--out", out, *FT_ARGS, *extra]


# ----------------------------------------------------------------------------- finetune


def test_finetune_failing_in_its_write_phase_keeps_the_old_run(
    evaluated, tmp_path, monkeypatch, capsys
):
    root, run = evaluated
    out = _copy(run, tmp_path / "ft")
    before = _snapshot(out)

    def full_disk(path, state):  # the model file is the last and biggest one
        with atomic_output(path) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr("deeplense_ssl.finetuning.save_checkpoint", full_disk)
    code, err = _main(_finetune(root, out, "--label-fraction", "0.5"), capsys)
    line = _one_line(err)
    assert code == 1 and f"no space left on {out}: cannot write {out / 'model.pt'}" in line
    assert ".stage-" not in line and ".tmp" not in line
    assert _snapshot(out) == before  # not new config.json + old model.pt
    assert _hidden_siblings(out) == []


SIGKILL_IN_WRITE_PHASE = (
    "import os, signal\n"
    "import deeplense_ssl.finetuning as f\n"
    "f.plot_finetune_history = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
)


def test_sigkill_in_the_write_phase_keeps_the_old_run_and_the_next_run_cleans_up(
    evaluated, tmp_path, monkeypatch, capsys
):
    root, run = evaluated
    out = _copy(run, tmp_path / "ft")
    before = _snapshot(out)
    args = [str(a) for a in _finetune(root, out, "--label-fraction", "0.5")]
    code = f"{SIGKILL_IN_WRITE_PHASE}from deeplense_ssl_cli.main import main\nmain({args!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert _snapshot(out) == before  # label_subset/metrics/embeddings went to the stage only
    stale = _hidden_siblings(out)
    assert len(stale) == 1 and stale[0].startswith(".ft.stage-")
    monkeypatch.setattr(runs, "_STARTED", time.time())  # as in a later process
    code, err = _main(_finetune(root, out, "--label-fraction", "0.5"), capsys)
    assert code == 0, err
    assert _hidden_siblings(out) == []
    # the new run replaced the old one whole, evaluation of the old model included
    assert sorted(p.name for p in out.iterdir()) == sorted(runs.FINETUNE_FILES)
    assert json.loads((out / "config.json").read_text())["config"]["label_fraction"] == 0.5


def test_finetune_refuses_a_folder_that_is_not_a_finetune_run(evaluated, tmp_path, capsys):
    root, _ = evaluated
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    started = time.perf_counter()
    code, err = _main(_finetune(root, mine), capsys)
    assert code == 1 and "mine is not empty" in _one_line(err) and "thesis.tex" in err
    assert time.perf_counter() - started < 20  # refused before loading data or training
    assert _snapshot(mine) == {"thesis.tex": b"years of work"}
    pre = fake_pretrain_run(tmp_path / "pre")
    before = _snapshot(pre)
    code, err = _main(_finetune(root, pre), capsys)  # --out = a pretrain run
    assert code == 1 and "holds a pretrain run" in _one_line(err)
    assert _snapshot(pre) == before and _hidden_siblings(pre) == []


def test_pretrain_refuses_to_overwrite_a_finetune_run_config(evaluated, tmp_path, capsys):
    root, run = evaluated
    out = _copy(run, tmp_path / "ft")
    before = _snapshot(out)
    args = ["pretrain", "--data", root / "train.h5", "--out", out, "--stem", "small"]
    code, err = _main([*args, "--epochs", "1", "--batch-size", "8", "--no-progress"], capsys)
    assert code == 1 and "holds a finetune config.json" in _one_line(err)
    assert _snapshot(out) == before


# ----------------------------------------------------------------------------- evaluate


def _evaluate(run: Path, root: Path, *extra) -> list:
    args = ["evaluate", "--checkpoint", run, "--data", root / "test.h5"]
    return [*args, "--n-bootstrap", "5", *extra]


def _object_array_npz(path: Path, **arrays) -> None:
    obj = np.empty(2, dtype=object)
    obj[:] = [{"a": 1}, {"b": 2}]
    np.savez(path, **arrays, labels=obj)


@pytest.mark.parametrize("damage", ["empty", "pickle", "missing-key", "other-width"])
def test_evaluate_with_a_damaged_train_embeddings_file(evaluated, tmp_path, capsys, damage):
    root, run = evaluated
    out = _copy(run, tmp_path / "ft")
    emb = out / runs.TRAIN_EMBEDDINGS_FILE
    if damage == "empty":
        emb.write_bytes(b"")  # was "Aborted." with exit 130
    elif damage == "pickle":
        _object_array_npz(emb, embeddings=np.zeros((2, 512), np.float32))
    elif damage == "missing-key":
        np.savez(emb, embeddings=np.zeros((2, 512), np.float32))
    else:
        np.savez(emb, embeddings=np.zeros((2, 7), np.float32), labels=np.zeros(2, np.int64))
    before = _snapshot(out)
    code, err = _main(_evaluate(out, root), capsys)
    line = _one_line(err)
    assert code == 1 and f"{emb}:" in line
    expected = {
        "empty": "unreadable labelled training embeddings",
        "pickle": "member 'labels' is a pickled object array",
        "missing-key": "has no member 'labels'",
        "other-width": "embeds to width 512",
    }[damage]
    assert expected in line
    assert _snapshot(out) == before


def test_evaluate_failing_while_writing_keeps_the_previous_evaluation(
    evaluated, tmp_path, monkeypatch, capsys
):
    root, run = evaluated
    out = _copy(run, tmp_path / "ft")
    before = _snapshot(out)
    from deeplense_ssl import evaluation

    def npz_writer(arrays):
        def write(path):
            if "neighbor_images" in arrays:  # examples.npz: the last file written
                raise OSError(errno.ENOSPC, "No space left on device")
            runs.npz_writer(arrays)(path)

        return write

    monkeypatch.setattr(evaluation, "npz_writer", npz_writer)
    code, err = _main(_evaluate(out, root), capsys)
    line = _one_line(err)
    assert code == 1 and f"cannot write {out / 'examples.npz'}" in line and ".tmp" not in line
    assert _snapshot(out) == before  # metrics.json, scores.npz, examples.npz: all the old ones


def test_evaluate_cli_bad_batch_size_is_one_line(evaluated, tmp_path, capsys):
    root, run = evaluated
    args = _evaluate(run, root, "--batch-size", "0", "--out", tmp_path / "m.json")
    code, err = _main(args, capsys)
    assert code == 1 and "batch_size" in _one_line(err)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- report


def _damage(run: Path, what: str) -> Path:
    """Damage one file of an evaluated run copy; returns the damaged file."""
    if what == "scores-empty":
        (run / "scores.npz").write_bytes(b"")  # was "Aborted." with exit 130
        return run / "scores.npz"
    if what == "scores-pickle":
        _object_array_npz(run / "scores.npz", probs=np.zeros((2, 3)), embeddings=np.zeros((2, 4)))
        return run / "scores.npz"
    if what == "examples-truncated":
        data = (run / "examples.npz").read_bytes()
        (run / "examples.npz").write_bytes(data[: len(data) // 3])
        return run / "examples.npz"
    if what.startswith("metrics-"):
        m = json.loads((run / "metrics.json").read_text())
        del m[what.removeprefix("metrics-")]  # was a KeyError traceback
        (run / "metrics.json").write_text(json.dumps(m))
        return run / "metrics.json"
    if what == "config-type":
        c = json.loads((run / "config.json").read_text())
        c["config"] = ["not", "an", "object"]
        (run / "config.json").write_text(json.dumps(c))
        return run / "config.json"
    (run / "val_metrics.json").write_text('{"best_epoch": ')
    return run / "val_metrics.json"


REPORT_DAMAGE = {
    "scores-empty": "unreadable per-image scores",
    "scores-pickle": "member 'labels' is a pickled object array",
    "examples-truncated": "unreadable report examples",
    "metrics-roc_auc": "metrics file has no 'roc_auc' entry",
    "metrics-class_names": "metrics file has no 'class_names' entry",
    "metrics-confusion_matrix": "metrics file has no 'confusion_matrix' entry",
    "config-type": "run config entry 'config' must be an object",
    "val-torn": "unreadable validation metrics",
}


@pytest.mark.parametrize("what", sorted(REPORT_DAMAGE))
def test_report_on_a_damaged_run_is_one_line_naming_the_file(evaluated, tmp_path, capsys, what):
    _, run = evaluated
    copy = _copy(run, tmp_path / "ft")
    damaged = _damage(copy, what)
    report = tmp_path / "rep" / "report.html"
    code, err = _main(["report", copy, "--out", report, "--embedding-map", "none"], capsys)
    line = _one_line(err)
    assert code == 1 and f"{damaged}:" in line and REPORT_DAMAGE[what] in line, line
    assert not report.parent.exists()


def test_report_html_and_its_metrics_are_published_together(evaluated, tmp_path, monkeypatch):
    from deeplense_ssl import report as report_module
    from deeplense_ssl.config import ReportConfig

    _, run = evaluated
    out = tmp_path / "report.html"
    cfg = ReportConfig(runs=[str(run)], out=str(out), embedding_map="none", attribution_methods=[])
    report_module.build_report(cfg)
    before = _snapshot(tmp_path)
    assert sorted(before) == ["metrics.json", "report.html"]

    def text_writer(text):
        def write(path):
            if '"kind": "report"' in text:
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            path.write_text(text)

        return write

    monkeypatch.setattr(report_module, "text_writer", text_writer)
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'metrics.json'}"):
        report_module.build_report(cfg)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "command, yaml_text, field",
    [
        ("pretrain", "batch_size: 2.5\n", "batch_size"),
        ("pretrain", "epochs: .nan\n", "epochs"),
        ("pretrain", "lr: .nan\n", "lr"),
        ("pretrain", "momentum: -1\n", "momentum"),
        ("finetune", "batch_size: 2.5\n", "batch_size"),
        ("finetune", "epochs: .nan\n", "epochs"),
        ("finetune", 'label_fraction: "0.1"\n', "label_fraction"),
        ("finetune", "weight_decay: -1\n", "weight_decay"),
    ],
)
def test_bad_yaml_values_fail_before_anything_is_written(
    evaluated, tmp_path, capsys, command, yaml_text, field
):
    root, _ = evaluated
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "out"
    args = [command, "--data", root / "train.h5", "--out", out, "--config", cfg]
    if command == "finetune":
        args += ["--checkpoint", root / "pretrain"]
    code, err = _main(args, capsys)
    line = _one_line(err)
    assert code == 1 and f"c.yaml: {field} must be" in line
    assert not out.exists()  # no config.json (with NaN), no metrics.jsonl


# ----------------------------------------------------------------------------- divergence


def test_overflow_inside_the_network_does_not_advise_a_nan_policy(tmp_path, capsys):
    images = np.random.default_rng(0).uniform(-1, 1, (8, 1, 16, 16)).astype(np.float32) * 3e38
    np.save(tmp_path / "huge.npy", images)
    args = ["pretrain", "--data", tmp_path / "huge.npy", "--out", tmp_path / "run"]
    args += ["--normalize", "none", "--stem", "small", "--batch-size", "4", "--epochs", "1"]
    args += ["--log-every-steps", "1", "--no-progress", "--device", "cpu"]
    code, err = _main(args, capsys)
    line = _one_line(err)
    assert code == 1 and "the training loss became" in line
    assert "--normalize minmax" in line and "nan-policy" not in line and "nan_policy" not in line


def test_non_finite_in_memory_data_advice_depends_on_nan_or_inf(tmp_path):
    from deeplense_ssl import training
    from deeplense_ssl.config import PretrainConfig
    from deeplense_ssl.errors import DataError

    images = np.ones((8, 1, 16, 16), np.float32)
    images[3, 0, 0, 0] = np.inf
    cfg = PretrainConfig(out=str(tmp_path / "a"), stem="small", batch_size=4, device="cpu")
    with pytest.raises(DataError, match=r"\[image 3\].*overflow float32") as info:
        training.pretrain(cfg, progress=False, dataset=images)
    assert "nan-policy" not in str(info.value)
    images[3, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"\[image 3\].*--nan-policy"):
        training.pretrain(cfg, progress=False, dataset=images)


# ----------------------------------------------------------------------------- full / read-only


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 2 MiB tmpfs filled to the last byte (root only; skipped elsewhere)."""
    folder = tmp_path / "full"
    mount_tmpfs(folder, "size=2m")
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
    except OSError:
        pass
    yield folder
    unmount(folder)


def _outputs(evaluated, folder: Path) -> list[tuple[list, Path]]:
    root, run = evaluated
    return [
        (_evaluate(run, root, "--out", folder / "metrics.json"), folder / "metrics.json"),
        (["report", run, "--out", folder / "r.html", "--embedding-map", "none"], folder / "r.html"),
        (["inspect", root / "test.h5", "--card", folder / "card.md"], folder / "card.md"),
    ]


def test_full_disk_names_the_target_file(evaluated, full_disk, capsys):
    before = sorted(p.name for p in full_disk.iterdir())
    for args, target in _outputs(evaluated, full_disk):
        code, err = _main(args, capsys)
        line = _one_line(err)
        assert code == 1 and f"no space left on {full_disk}: cannot write {target}" in line
        assert ".tmp" not in line
        assert sorted(p.name for p in full_disk.iterdir()) == before


def test_read_only_folder_names_the_target_file(evaluated, read_only_folder, capsys):
    for args, target in _outputs(evaluated, read_only_folder):
        code, err = _main(args, capsys)
        line = _one_line(err)
        assert code == 1 and f"cannot write {target}" in line and ".tmp" not in line
        assert "read-only or not writable" in line


def test_incomplete_backbone_spec_and_model_spec_are_named_errors(tmp_path):
    import json as _json

    import torch as _torch

    from deeplense_ssl.checkpoint import load_pretrained_backbone
    from deeplense_ssl.errors import CheckpointError
    from deeplense_ssl.inference import load_finetuned
    from deeplense_ssl.runs import MODEL_FORMAT

    pre = tmp_path / "pre"
    pre.mkdir()
    spec = {"name": "resnet18", "stem": "small", "feature_dim": 512}  # no in_chans
    (pre / "config.json").write_text(
        _json.dumps(
            {"kind": "pretrain", "deeplense_ssl_version": "0", "config": {}, "backbone_spec": spec}
        )  # fmt: skip
    )
    with pytest.raises(CheckpointError, match=r"config\.json.*in_chans"):
        load_pretrained_backbone(pre)
    ft = tmp_path / "ft"
    ft.mkdir()
    _torch.save({"format": MODEL_FORMAT, "spec": {}, "backbone_state": {}, "head_state": {}},
                ft / "model.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_finetuned(ft)
