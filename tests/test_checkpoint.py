"""Atomic checkpoints, weights-only loading, RNG states and pretrain run folders."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from deeplense_ssl import checkpoint as ck
from deeplense_ssl import runs
from deeplense_ssl.backbones import build_backbone, torchvision_resnet_for
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import CheckpointError
from deeplense_ssl.training import pretrain
from deeplense_ssl.training.resume import method_state


def _state(value: float) -> dict:
    return {"format": ck.CHECKPOINT_FORMAT, "w": torch.full((3,), value), "step": 1, "c": None}


def test_save_then_load_roundtrip_weights_only(tmp_path):
    path = ck.save_checkpoint(tmp_path / "sub" / "c.pt", _state(2.0))
    state = ck.load_checkpoint(path)
    assert torch.equal(state["w"], torch.full((3,), 2.0))
    assert state["step"] == 1 and state["c"] is None
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temp file left


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c.pt", _state(1.0))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ck.save_checkpoint(path, {**_state(5.0), "bad": Unpicklable()})
    assert torch.equal(ck.load_checkpoint(path)["w"], torch.full((3,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class _Custom:
    def __init__(self):
        self.x = 1


def test_load_refuses_pickled_objects_missing_garbage_and_foreign(tmp_path):
    torch.save({"format": ck.CHECKPOINT_FORMAT, "obj": _Custom()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        ck.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        ck.load_checkpoint(tmp_path / "garbage.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a deeplense_ssl pretrain checkpoint"):
        ck.load_checkpoint(tmp_path / "foreign.pt")
    assert set(ck.load_state_dict_file(tmp_path / "foreign.pt")) == {"weight", "bias"}


def test_rng_state_survives_a_weights_only_roundtrip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    np.random.randn()  # noqa: NPY002 (leaves a cached Gaussian in the legacy state)
    ck.save_checkpoint(tmp_path / "r.pt", {"format": ck.CHECKPOINT_FORMAT, **_rng_payload()})
    expected = (torch.rand(4), np.random.rand(3), np.random.randn(), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    ck.restore_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(4), np.random.rand(3), np.random.randn(), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def _rng_payload() -> dict:
    return {"rng": ck.capture_rng_state()}


@pytest.fixture(scope="module")
def finished_run(module_tmp):
    out = module_tmp("ckrun") / "run"
    images = np.random.default_rng(0).random((8, 2, 16, 16), dtype=np.float32)
    cfg = PretrainConfig(
        out=str(out),
        stem="small",
        batch_size=4,
        max_steps=1,
        proj_hidden_dim=16,
        proj_out_dim=8,
        device="cpu",
        normalize="zscore",
    )
    return pretrain(cfg, progress=False, dataset=images)


def test_load_pretrained_backbone_matches_the_checkpoint(finished_run):
    backbone, info = ck.load_pretrained_backbone(finished_run)
    path = finished_run / runs.CHECKPOINT_FILE
    state = ck.load_checkpoint(path)
    assert state["finished"] and state["step"] == 1
    weights = method_state(state, path)  # v2: the method's whole state, backbone.* keys
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, weights[f"backbone.{key}"]), key
    assert not backbone.training
    assert info["backbone"] == "resnet18" and info["stem"] == "small"
    assert info["in_chans"] == 2 and info["feature_dim"] == 512 == backbone.feature_dim
    assert info["normalize"] == "zscore" and info["image_size"] is None
    assert info["nan_policy"] == "raise" and info["input_shape"] == [2, 16, 16]
    assert info["config"]["batch_size"] == 4
    assert backbone(torch.zeros(3, 2, 16, 16)).shape == (3, 512)


def test_backbone_file_loads_into_plain_torchvision(finished_run):
    sd = ck.load_state_dict_file(finished_run / runs.BACKBONE_FILE)
    _, info = ck.load_pretrained_backbone(finished_run)
    spec = json.loads((finished_run / runs.CONFIG_FILE).read_text())["backbone_spec"]
    model = torchvision_resnet_for(spec, num_classes=3)
    result = model.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_load_pretrained_backbone_clear_errors(tmp_path, finished_run):
    with pytest.raises(CheckpointError, match="no such run folder"):
        ck.load_pretrained_backbone(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a pretrain run folder"):
        ck.load_pretrained_backbone(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "finetune"}))
    with pytest.raises(CheckpointError, match="not from a deeplense_ssl pretrain run"):
        ck.load_pretrained_backbone(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((finished_run / "config.json").read_text())
    with pytest.raises(CheckpointError, match="did not finish.*--resume"):
        ck.load_pretrained_backbone(unfinished)
    wrong = build_backbone("resnet18", in_chans=1, stem="small")  # 1 band, run has 2
    ck.save_checkpoint(unfinished / runs.BACKBONE_FILE, wrong.state_dict())
    with pytest.raises(CheckpointError, match="do not match"):
        ck.load_pretrained_backbone(unfinished)
