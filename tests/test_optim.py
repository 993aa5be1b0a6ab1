"""Optimisers and schedules: LARS against its formula, weight-decay groups, the schedules."""

import math

import pytest
import torch
from torch import nn

from deeplense_ssl.optim import LARS, build_optimizer, cosine_momentum, warmup_cosine


def test_warmup_cosine_schedule():
    f = [warmup_cosine(s, warmup_steps=4, total_steps=12) for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a > b for a, b in zip(f[4:], f[5:], strict=False))
    assert f[8] == pytest.approx(0.5)  # halfway through the cosine
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0)


def test_lars_step_matches_the_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    opt = LARS(
        [
            {"params": [w], "weight_decay": 0.1, "lars_exclude": False},
            {"params": [b], "weight_decay": 0.0, "lars_exclude": True},
        ],
        lr=0.5,
        momentum=0.9,
        trust_coefficient=0.02,
    )
    opt.step()
    d = w.grad + 0.1 * w0
    trust = 0.02 * w0.norm() / (d.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w0 - 0.5 * trust * d)
    torch.testing.assert_close(b.detach(), b0 - 0.5 * b.grad)  # excluded: plain SGD


def test_optimizers_exclude_biases_and_norms_from_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    for name in ("sgd", "adamw", "lars"):
        opt = build_optimizer(name, model, lr=0.1, weight_decay=0.01, momentum=0.9)
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        assert decayed == {id(model[0].weight), id(model[2].weight)}, name


def test_cosine_momentum_rises_from_base_to_one():
    total = 10
    taus = [cosine_momentum(s, total, base=0.99) for s in range(total + 1)]
    assert taus[0] == pytest.approx(0.99) and taus[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(taus, taus[1:], strict=False))
    # the BYOL formula at half-way: 1 - (1 - base) * (cos(pi/2) + 1) / 2
    assert taus[5] == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)


def test_build_optimizer_skips_frozen_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].requires_grad_(False)  # e.g. a momentum target network
    opt = build_optimizer("sgd", model, lr=0.1, weight_decay=0.0, momentum=0.9)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(model[0].weight), id(model[0].bias)}
    with pytest.raises(ValueError, match="not one of"):
        build_optimizer("adam", model, lr=0.1, weight_decay=0.0, momentum=0.9)
