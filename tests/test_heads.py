"""Projection and classifier heads: shapes, layer structure, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeplense_ssl.errors import ConfigError
from deeplense_ssl.heads import (
    CLASSIFIER_HEADS,
    ClassifierHead,
    LinearHead,
    MLPHead,
    ProjectionHead,
    build_classifier_head,
)


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_projection_head_structure(num_layers, batch_norm) -> None:
    head = ProjectionHead(
        32, hidden_dim=24, out_dim=8, num_layers=num_layers, batch_norm=batch_norm
    )
    assert _count(head, nn.Linear) == num_layers
    assert _count(head, nn.BatchNorm1d) == (num_layers - 1 if batch_norm else 0)
    assert _count(head, nn.ReLU) == num_layers - 1
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 32 and linears[-1].out_features == 8
    assert linears[-1].bias is not None  # the output layer keeps its bias
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 8)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_projection_head_default_is_simclr_shape() -> None:
    head = ProjectionHead(512)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]
    assert head(torch.randn(4, 512)).shape == (4, 128)


def test_projection_head_is_nonlinear() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(6, hidden_dim=16, out_dim=3, batch_norm=False)
    a, b = torch.randn(1, 6), torch.randn(1, 6)
    # A linear map would satisfy f(a + b) = f(a) + f(b) - f(0).
    lhs = head(a + b)
    rhs = head(a) + head(b) - head(torch.zeros(1, 6))
    assert not torch.allclose(lhs, rhs, atol=1e-4)


def test_linear_head() -> None:
    head = LinearHead(10, 4)
    x = torch.randn(3, 10)
    torch.testing.assert_close(head(x), x @ head.fc.weight.T + head.fc.bias)
    assert ClassifierHead is LinearHead


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_mlp_head_any_batch_size(dropout) -> None:
    head = MLPHead(10, 3, hidden_dim=7, dropout=dropout).train()
    assert head(torch.randn(1, 10)).shape == (1, 3)  # no BatchNorm: batch of one is fine
    head.eval()
    x = torch.randn(4, 10)
    torch.testing.assert_close(head(x), head(x))  # dropout off in eval


def test_build_classifier_head() -> None:
    assert isinstance(build_classifier_head("linear", 8, 3), LinearHead)
    assert isinstance(build_classifier_head("full", 8, 3), LinearHead)
    mlp = build_classifier_head("mlp", 8, 3, hidden_dim=5)
    assert isinstance(mlp, MLPHead) and mlp(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(ConfigError):
        build_classifier_head("transformer", 8, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProjectionHead(0),
        lambda: ProjectionHead(8, num_layers=0),
        lambda: LinearHead(8, 0),
        lambda: MLPHead(8, 2, dropout=1.0),
    ],
)
def test_bad_dimensions(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_every_listed_classifier_head_builds():
    """CLASSIFIER_HEADS is the list FinetuneConfig and the CLI offer; each name must build."""
    x = torch.randn(3, 8)
    kinds = {}
    for name in CLASSIFIER_HEADS:
        head = build_classifier_head(name, 8, 4, hidden_dim=6)
        assert head(x).shape == (3, 4)
        kinds[name] = type(head).__name__
    assert kinds == {
        "linear": "LinearHead",
        "mlp": "MLPHead",
        "full": "LinearHead",
        "lp-ft": "LinearHead",
    }
    with pytest.raises(ConfigError, match="head='deep' is not one of linear, mlp, full, lp-ft"):
        build_classifier_head("deep", 8, 4)


def test_simsiam_projector_matches_lightlys_head() -> None:
    """SimSiam's projector (3 layers, BN on every layer including the output, Sec. 4.4) gives
    the same outputs as lightly's SimSiamProjectionHead with the same weights, in train mode."""
    from lightly.models.modules.heads import SimSiamProjectionHead

    from deeplense_ssl.backbones import build_backbone
    from deeplense_ssl.config import PretrainConfig
    from deeplense_ssl.methods import get_method

    ours = ProjectionHead(8, 32, 16, num_layers=3, output_batch_norm=True)
    theirs = SimSiamProjectionHead(8, 32, 16)
    ours_p = [t for t in ours.state_dict().values() if t.dtype.is_floating_point]
    theirs_p = [t for t in theirs.state_dict().values() if t.dtype.is_floating_point]
    assert [t.shape for t in ours_p] == [t.shape for t in theirs_p]
    torch.manual_seed(0)
    for a, b in zip(ours_p, theirs_p, strict=True):
        a.copy_(torch.randn_like(a) if a.dim() > 1 else a)
        b.copy_(a)
    x = torch.randn(6, 8)
    torch.testing.assert_close(ours.train()(x), theirs.train()(x))
    out = ours(x)  # the output is standardised per dimension over the batch
    torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    cfg = PretrainConfig(data="x.h5", method="simsiam", proj_layers=3)
    method = get_method("simsiam")(build_backbone("resnet18"), cfg, 1, 16)
    assert isinstance(method.projector.layers[-1], nn.BatchNorm1d)
    assert not method.projector.layers[-1].affine
