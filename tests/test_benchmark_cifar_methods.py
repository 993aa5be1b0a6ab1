"""The pure parts of benchmarks/cifar10_sanity.py's ``--methods`` mode (ours vs lightly)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cifar10_sanity  # noqa: E402

from deeplense_ssl.backbones import build_backbone  # noqa: E402
from deeplense_ssl.config import PretrainConfig  # noqa: E402
from deeplense_ssl.methods import get_method  # noqa: E402


def test_parse_methods_accepts_lists_and_all_and_refuses_unknown_or_repeated() -> None:
    parse = cifar10_sanity.parse_methods
    assert parse("byol,dino") == ("byol", "dino")
    assert parse("all") == cifar10_sanity.METHODS
    assert set(parse("all")) == {"simclr", "byol", "simsiam", "vicreg", "barlow-twins", "dino"}
    for bad in ("byol,moco", "byol,byol", ""):
        with pytest.raises(SystemExit):
            parse(bad)


def _head_shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    """Shapes of the trainable weight matrices outside the backbone, in registration order."""
    return [
        tuple(p.shape)
        for name, p in module.named_parameters()
        if p.requires_grad and p.ndim == 2 and not name.startswith("backbone.")
    ]


@pytest.mark.parametrize("method", cifar10_sanity.METHODS)
def test_lightly_heads_have_our_layer_shapes(method: str) -> None:
    """Like for like: lightly's projector/predictor/DINO head match ours layer by layer."""
    pytest.importorskip("lightly")
    recipe = cifar10_sanity.RECIPES[method]
    cfg = PretrainConfig(
        data="unused", method=method, augment="cifar", proj_layers=recipe.proj_layers,
        proj_hidden_dim=cifar10_sanity.PROJ_HIDDEN_DIM, proj_out_dim=cifar10_sanity.PROJ_OUT_DIM,
        n_local_views=cifar10_sanity.DINO_N_LOCAL, local_view_size=cifar10_sanity.DINO_LOCAL_SIZE,
        dino_out_dim=cifar10_sanity.DINO_OUT_DIM,
    )  # fmt: skip
    ours = get_method(method)(build_backbone("resnet18", 3, "cifar"), cfg, 3, 32)
    theirs = cifar10_sanity.lightly_model(method, build_backbone("resnet18", 3, "cifar"))
    assert _head_shapes(theirs) == _head_shapes(ours)
    assert len(_head_shapes(ours)) >= 2


def test_lightly_momentum_target_starts_equal_and_moves_towards_online() -> None:
    """The target copy (state copy, since deepcopy fails on lightly's DINO head) starts equal
    and the EMA step moves it by (1 - m) of the gap, as lightly's update_momentum."""
    pytest.importorskip("lightly")
    torch.manual_seed(0)
    model = cifar10_sanity.lightly_model("byol", build_backbone("resnet18", 3, "cifar"))
    online, target = model.heads[0], model.target_head
    for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
        assert torch.equal(p_o, p_t) and not p_t.requires_grad
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    x = torch.rand(4, 3, 32, 32)
    model.train()
    model.loss([x, x.flip(-1)], step=0, total=10)  # step 0: m = momentum_base
    m = model.momentum_base
    for p_t, b in zip(target.parameters(), before, strict=True):
        assert torch.allclose(p_t, m * b + (1 - m) * (b + 1.0), atol=1e-6)
