"""A resume refuses training data that changed since the run started (issue 15).

The run records a fingerprint of its loaded training array (count, shape, dtype, SHA-256 of
the labels and of evenly spaced images) in ``config.json`` and every checkpoint; runs written
before the fingerprint existed still resume.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense_ssl import training
from deeplense_ssl.checkpoint import load_checkpoint, save_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import CheckpointError
from deeplense_ssl.runs import CHECKPOINT_FILE, CONFIG_FILE
from deeplense_ssl.training.data import FINGERPRINT_ROWS, data_fingerprint
from deeplense_ssl.training.resume import FINGERPRINT_KEY


def _cfg(out: Path, data: Path, **kw) -> PretrainConfig:
    base = dict(data=str(data), out=str(out), stem="small", batch_size=4, epochs=1)
    base.update(proj_hidden_dim=16, proj_out_dim=8, device="cpu", checkpoint_every_steps=1)
    return PretrainConfig(**{**base, "warmup_epochs": 0.0, **kw})


def _data(path: Path, seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).random((8, 1, 16, 16), dtype=np.float32))
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_FILE)["method"]


def test_fingerprint_against_an_independent_hash():
    images = np.random.default_rng(0).random((1000, 1, 4, 4), dtype=np.float32)
    labels = np.arange(1000) % 3
    fp = data_fingerprint(images, labels)
    rows = np.round(np.linspace(0, 999, FINGERPRINT_ROWS)).astype(int)
    ref = hashlib.sha256(labels.astype(np.int64).tobytes())
    for i in sorted(set(rows.tolist())):
        ref.update(images[i].tobytes())
    assert fp == {
        "n": 1000,
        "shape": [1, 4, 4],
        "dtype": "float32",
        "rows_hashed": len(set(rows.tolist())),
        "sha256": ref.hexdigest(),
    }
    changed = images.copy()
    changed[999, 0, 0, 0] += 1  # the last image is always sampled
    assert data_fingerprint(changed, labels)["sha256"] != fp["sha256"]
    assert data_fingerprint(images, labels[::-1].copy())["sha256"] != fp["sha256"]


def test_resume_on_changed_content_is_refused_unchanged_resumes_bitwise(tmp_path):
    data = _data(tmp_path / "d.npy")
    ref = training.pretrain(_cfg(tmp_path / "ref", data), progress=False)
    run = tmp_path / "run"
    training.pretrain(_cfg(run, data, max_steps=1), progress=False)
    recorded = json.loads((run / CONFIG_FILE).read_text())["resolved"][FINGERPRINT_KEY]
    assert load_checkpoint(run / CHECKPOINT_FILE)["resolved"][FINGERPRINT_KEY] == recorded
    assert recorded["n"] == 8 and recorded["shape"] == [1, 16, 16]

    _data(tmp_path / "d.npy", seed=1)  # same path, same shape, other images
    with pytest.raises(CheckpointError, match=r"cannot resume .*run: the training data changed"):
        training.pretrain(_cfg(run, data, resume=True), progress=False)
    assert load_checkpoint(run / CHECKPOINT_FILE)["step"] == 1  # the run is untouched

    _data(tmp_path / "d.npy", seed=0)  # the original content again
    training.pretrain(_cfg(run, data, resume=True), progress=False)
    got, want = _weights(run), _weights(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_run_without_fingerprint_still_resumes(tmp_path):
    data = _data(tmp_path / "d.npy")
    run = tmp_path / "old"
    training.pretrain(_cfg(run, data, max_steps=1), progress=False)
    state = load_checkpoint(run / CHECKPOINT_FILE)
    del state["resolved"][FINGERPRINT_KEY]  # as written before fingerprints
    save_checkpoint(run / CHECKPOINT_FILE, state)
    training.pretrain(_cfg(run, data, resume=True), progress=False)
    assert load_checkpoint(run / CHECKPOINT_FILE)["step"] == 2


def test_cli_resume_on_changed_data_is_one_line(tmp_path, capsys):
    from deeplense_ssl_cli.main import main

    data = _data(tmp_path / "d.npy")
    run = tmp_path / "run"
    training.pretrain(_cfg(run, data, max_steps=1), progress=False)
    _data(tmp_path / "d.npy", seed=3)
    args = ["pretrain", "--data", str(data), "--out", str(run), "--stem", "small"]
    args += ["--batch-size", "4", "--epochs", "1", "--resume", "--no-progress"]
    args += ["--proj-hidden-dim", "16", "--proj-out-dim", "8", "--device", "cpu"]
    args += ["--checkpoint-every-steps", "1", "--warmup-epochs", "0"]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "the training data changed since the run started" in err
    assert "same size, different images or labels" in err


def test_a_damaged_checkpoint_names_the_missing_entry(tmp_path):
    data = _data(tmp_path / "d.npy")
    run = tmp_path / "run"
    training.pretrain(_cfg(run, data, max_steps=1), progress=False)
    state = load_checkpoint(run / CHECKPOINT_FILE)
    del state["optimizer"]
    save_checkpoint(run / CHECKPOINT_FILE, state)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: checkpoint entry 'optimizer'"):
        training.pretrain(_cfg(run, data, resume=True), progress=False)
    state["optimizer"] = {}
    del state["resolved"]["n_train"]
    save_checkpoint(run / CHECKPOINT_FILE, state)
    with pytest.raises(CheckpointError, match=r"entry 'resolved' lacks n_train"):
        training.pretrain(_cfg(run, data, resume=True), progress=False)


@pytest.mark.parametrize("text", ['{"kind": "finetune"}', '{"name": "my project"}', "{torn"])
def test_pretrain_never_overwrites_a_config_json_that_is_not_its_own(tmp_path, text):
    data = _data(tmp_path / "d.npy")
    out = tmp_path / "out"
    out.mkdir()
    (out / CONFIG_FILE).write_text(text)
    for resume in (False, True):
        with pytest.raises(CheckpointError, match=r"config\.json|not a pretrain run"):
            training.pretrain(_cfg(out, data, resume=resume), progress=False)
    assert (out / CONFIG_FILE).read_text() == text and sorted(os.listdir(out)) == [CONFIG_FILE]
