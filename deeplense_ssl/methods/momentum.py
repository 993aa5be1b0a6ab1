"""Momentum (EMA) target networks, shared by BYOL and DINO.

The target is a frozen copy of online modules (no gradients, not in the optimiser) updated
after every optimiser step as ``theta_t <- tau * theta_t + (1 - tau) * theta_o`` with ``tau``
following :func:`deeplense_ssl.optim.cosine_momentum` (BYOL Sec. 3.2; DINO Sec. 3.1). Being
submodules of the method, targets are in ``state_dict`` and therefore in every checkpoint,
which is what makes a resumed BYOL/DINO run bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters do not require gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- tau * target + (1 - tau) * online``, parameter by parameter.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, as in
    lightly's ``update_momentum`` and the BYOL/DINO reference code.
    """
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.mul_(tau).add_(p_o.detach(), alpha=1.0 - tau)
