"""Simulation-informed positives: two renderings of each scene give the two views."""

import numpy as np
import pytest
import torch

from deeplense_ssl import training
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.methods import get_method
from deeplense_ssl.runs import read_metrics


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(data=str(tmp_path / "a.h5"), paired_data=str(tmp_path / "b.h5"),
                out=str(tmp_path / "run"), stem="small", batch_size=4, epochs=1,
                proj_hidden_dim=16, proj_out_dim=8, device="cpu")  # fmt: skip
    return PretrainConfig(**{**base, **kw})


def _files(tmp_path, n=8, labels_b=None):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    write_hdf5(tmp_path / "a.h5", rng.random((n, 1, 16, 16), dtype=np.float32), labels, ["p", "q"])
    other = labels if labels_b is None else labels_b
    write_hdf5(tmp_path / "b.h5", rng.random((n, 1, 16, 16), dtype=np.float32), other, ["p", "q"])


@pytest.mark.parametrize("method", ["simclr", "vicreg", "byol", "dino"])
def test_paired_pretraining_runs_for_two_view_methods(tmp_path, method):
    _files(tmp_path)
    run = training.pretrain(_cfg(tmp_path, method=method), progress=False)
    losses = [r["loss"] for r in read_metrics(run) if r["kind"] == "step"]
    assert losses and all(np.isfinite(losses))


def test_each_view_comes_from_its_own_rendering():
    cfg = PretrainConfig(data="x", paired_data="y", augment="none", proj_hidden_dim=8,
                         proj_out_dim=4)  # fmt: skip
    backbone = build_backbone("resnet18", in_chans=1, stem="small")
    method = get_method("simclr")(backbone, cfg, in_chans=1, image_size=8)
    x = torch.rand(3, 2, 1, 8, 8)
    inputs, n = method.make_inputs(x)
    assert n == 2
    torch.testing.assert_close(inputs[:3], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(inputs[3:], x[:, 1], rtol=0, atol=0)


def test_paired_data_errors(tmp_path):
    _files(tmp_path, labels_b=np.array([0, 1, 0, 1, 1, 1, 0, 1]))
    with pytest.raises(DataError, match="not row-aligned.*image 4|index 4|4"):
        training.pretrain(_cfg(tmp_path, out=str(tmp_path / "r1")), progress=False)
    with pytest.raises(ConfigError, match="cannot use --paired-data"):
        _cfg(tmp_path, method="rotation").validate()
    with pytest.raises(ConfigError, match="n_views=3"):
        _cfg(tmp_path, n_views=3).validate()
