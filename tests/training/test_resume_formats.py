"""Checkpoints of the format before per-method state (v1) still resume, bitwise."""

from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense_ssl import training
from deeplense_ssl.checkpoint import CHECKPOINT_FORMAT_V1, load_checkpoint, save_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import CheckpointError
from deeplense_ssl.runs import CHECKPOINT_FILE
from deeplense_ssl.training.resume import method_state


def _cfg(out, **kw) -> PretrainConfig:
    base = dict(out=str(out), stem="small", batch_size=4, epochs=2, proj_hidden_dim=16)
    base.update(proj_out_dim=8, device="cpu", checkpoint_every_steps=1, warmup_epochs=0.5)
    return PretrainConfig(**{**base, **kw})


def _images() -> np.ndarray:
    return np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)


def _as_v1(state: dict) -> dict:
    """Rewrite a current checkpoint the way the v1 format stored it."""
    old = {k: v for k, v in state.items() if k != "method"}
    old["format"] = CHECKPOINT_FORMAT_V1
    for part in ("backbone", "head"):
        old[part] = {
            k[len(part) + 1 :]: v for k, v in state["method"].items() if k.startswith(part + ".")
        }
    return old


def test_a_v1_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    ref = training.pretrain(_cfg(tmp_path / "ref"), progress=False, dataset=_images())
    run = tmp_path / "old"
    training.pretrain(_cfg(run, max_steps=2), progress=False, dataset=_images())
    ckpt = run / CHECKPOINT_FILE
    save_checkpoint(ckpt, _as_v1(load_checkpoint(ckpt, expect_format=False)))
    training.pretrain(_cfg(run, resume=True), progress=False, dataset=_images())
    got = load_checkpoint(Path(run) / CHECKPOINT_FILE)["method"]
    want = load_checkpoint(Path(ref) / CHECKPOINT_FILE)["method"]
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_an_unknown_checkpoint_format_names_the_versions():
    with pytest.raises(CheckpointError, match=r"format 'x\.v9'.*0\.0\.1.*v2.*v1"):
        method_state({"format": "x.v9", "deeplense_ssl_version": "0.0.1"}, Path("c.pt"))
