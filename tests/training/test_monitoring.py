"""The collapse monitor: logged every epoch, equal to the collapse measures, warns on collapse."""

import numpy as np
import pytest
import torch
from torch import nn

from deeplense_ssl import training
from deeplense_ssl.collapse import effective_rank, embedding_std
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.runs import read_metrics
from deeplense_ssl.training.monitoring import collapse_monitor, monitor_indices


class _Const(nn.Module):
    """A 'backbone' whose features do not depend on the image: complete collapse."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x.mean()


def test_monitor_indices_are_fixed_by_the_seed_and_capped():
    a = monitor_indices(1000, 64, seed=3)
    assert len(a) == 64 and len(set(a.tolist())) == 64 and (np.diff(a) > 0).all()
    assert np.array_equal(a, monitor_indices(1000, 64, seed=3))
    assert not np.array_equal(a, monitor_indices(1000, 64, seed=4))
    assert np.array_equal(monitor_indices(10, 64, seed=3), np.arange(10))


def test_collapse_monitor_warns_on_a_constant_representation():
    images = torch.rand(32, 1, 8, 8)
    out = collapse_monitor(_Const(), images, torch.device("cpu"), batch_size=8)
    assert out["rankme"] < 1.5 and out["emb_std_mean"] < 1e-6
    assert "collapse" in out["collapse_warning"]


def test_collapse_monitor_matches_the_measures_on_a_healthy_representation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
    images = torch.rand(64, 1, 8, 8)
    out = collapse_monitor(net, images, torch.device("cpu"), batch_size=16)
    with torch.no_grad():
        z = net(images)
    assert out["rankme"] == pytest.approx(effective_rank(z), rel=1e-6)
    assert out["emb_std_mean"] == pytest.approx(embedding_std(z).mean, rel=1e-6)
    assert "collapse_warning" not in out


def test_pretrain_logs_the_collapse_measures_every_epoch(tmp_path):
    cfg = PretrainConfig(out=str(tmp_path / "run"), stem="small", batch_size=4, epochs=2,
                         proj_hidden_dim=16, proj_out_dim=8, device="cpu",
                         collapse_monitor_size=6, method="vicreg")  # fmt: skip
    images = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    run = training.pretrain(cfg, progress=False, dataset=images)
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        assert 1.0 <= r["rankme"] <= 6.0  # at most min(N=6, D=512)
        assert 0.0 <= r["emb_std_min"] <= r["emb_std_mean"]
    off = training.pretrain(
        PretrainConfig(**{**vars(cfg), "out": str(tmp_path / "off"), "collapse_monitor_size": 0}),
        progress=False,
        dataset=images,
    )
    assert all("rankme" not in r for r in read_metrics(off))


def test_backbone_file_holds_the_exported_backbone_dino_teacher(tmp_path):
    """backbone.pt is what downstream tasks load: DINO's teacher, not its student."""
    from deeplense_ssl.checkpoint import load_checkpoint, load_pretrained_backbone

    cfg = PretrainConfig(out=str(tmp_path / "run"), stem="small", batch_size=4, epochs=1,
                         proj_hidden_dim=16, proj_out_dim=8, device="cpu", method="dino",
                         dino_out_dim=32, n_local_views=1)  # fmt: skip
    images = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    run = training.pretrain(cfg, progress=False, dataset=images)
    state = load_checkpoint(run / "checkpoint.pt")["method"]
    backbone, _ = load_pretrained_backbone(run)
    loaded = backbone.state_dict()
    teacher = {k.removeprefix("teacher_backbone."): v for k, v in state.items()
               if k.startswith("teacher_backbone.")}  # fmt: skip
    student = {
        k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
    }
    assert all(torch.equal(loaded[k], teacher[k]) for k in loaded)
    assert not all(torch.equal(loaded[k], student[k]) for k in loaded)
