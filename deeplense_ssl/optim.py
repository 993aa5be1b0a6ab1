"""Optimisers and schedules of pretraining: SGD, AdamW, LARS; warm-up + cosine; EMA momentum.

Choices are defined here (:data:`OPTIMIZERS`) and read by the config and the CLI. This module
imports no config: a settings object only needs the attributes named in each function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "lars")
"""Optimiser names accepted by :func:`build_optimizer` (``PretrainConfig.optimizer``)."""


class LARS(torch.optim.Optimizer):
    """LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman, Ginsburg 2017).

    As in SimCLR (Chen et al. 2020, Sec. B.1): for each parameter ``w`` with gradient ``g``,
    ``d = g + weight_decay * w`` and ``d <- trust_coefficient * |w| / |d| * d``; then momentum
    SGD on ``d``. Parameter groups with ``lars_exclude=True`` (biases, BatchNorm) skip both the
    trust ratio and the weight decay.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty (not applied to excluded groups).
        trust_coefficient: ``eta`` of the paper.
        eps: added to the denominator of the trust ratio.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        d = p.grad
        assert d is not None
        if not group["lars_exclude"]:
            d = d.add(p, alpha=group["weight_decay"])
            w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
            trust = torch.where(
                (w_norm > 0) & (d_norm > 0),
                group["trust_coefficient"] * w_norm / (d_norm + group["eps"]),
                torch.ones_like(w_norm),
            )
            d = d * trust
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(group["momentum"]).add_(d)
        p.add_(buf, alpha=-group["lr"])


def build_optimizer(
    name: str, model: nn.Module, lr: float, *, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or LARS; no weight decay on biases and normalisation weights.

    Only parameters with ``requires_grad`` are optimised (a momentum target network is not).

    Args:
        name: one of :data:`OPTIMIZERS`.
        model: the trained module (a :class:`~deeplense_ssl.methods.Method`).
        lr: the peak learning rate (after batch scaling).
        weight_decay: L2 penalty of the weights (``ndim > 1``).
        momentum: SGD / LARS momentum.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    if name == "lars":
        groups = [
            {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
        return LARS(groups, lr=lr, momentum=momentum)
    plain = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}.")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine to 0.

    Args:
        step: optimiser steps already taken (0 for the first step).
        warmup_steps: length of the linear warm-up.
        total_steps: the schedule's length (``epochs * steps_per_epoch``).

    Returns:
        A factor in (0, 1] multiplied with the peak learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum of a target network after ``step`` steps (BYOL Sec. 3.2, DINO Sec. 3.1).

    ``tau = final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``: ``base`` at the
    first step, rising to ``final`` (1.0) at the end of training.

    Args:
        step: optimiser steps taken so far.
        total_steps: the schedule's length.
        base: the momentum at step 0 (BYOL 0.996 for ImageNet, lightly's examples 0.99).
        final: the momentum at the end.
    """
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
