"""One optimisation step of any :class:`~deeplense_ssl.methods.Method` (mixed precision: the
autocast dtype comes from ``runtime.resolve_amp_dtype``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..methods import Method
from ..runtime import autocast


def to_channels_last(inputs: Any) -> Any:
    """Channels-last copies of the 4-D tensors in ``inputs`` (a tensor or a list of them)."""
    if isinstance(inputs, Tensor):
        return inputs.contiguous(memory_format=torch.channels_last)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_channels_last(x) for x in inputs)
    return inputs


def backward_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    params: Sequence[Tensor] = (),
) -> None:
    """Backpropagate ``loss`` and step ``optimizer``, through ``scaler`` when it is enabled
    (float16 loss scaling), first clipping the global gradient norm of ``params`` to
    ``grad_clip`` if given (unscaled gradients)."""
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()


def training_step(
    net: nn.Module,
    method: Method,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp: torch.dtype | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> Tensor:
    """One optimisation step on the batch ``x``; returns the (local) loss, detached.

    Args:
        net: ``method`` itself, or it wrapped by DDP / ``torch.compile`` (called once).
        method: the unwrapped method (augmentation and loss).
        x: ``(B, C, H, W)`` float32 images on the training device.
        optimizer: the optimiser.
        scaler: gradient scaler (fp16 only; disabled or ``None`` otherwise).
        amp: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None``.
        grad_clip: clip the global gradient norm to this value.
        channels_last: feed the network channels-last inputs.

    Returns:
        The scalar float32 loss of this process's batch. Under DDP with gathered statistics,
        the mean of the ranks' losses is the loss of the concatenated global batch.

    The method's :meth:`~deeplense_ssl.methods.Method.after_step` is the caller's to call
    (it needs the step number).
    """
    optimizer.zero_grad(set_to_none=True)
    inputs, aux = method.make_inputs(x)
    if channels_last:
        inputs = to_channels_last(inputs)
    with autocast(x.device, amp):
        outputs = net(inputs)
    loss = method.loss(outputs, aux)
    params = [p for p in method.parameters() if p.requires_grad]
    backward_step(loss, optimizer, scaler, grad_clip, params)
    return loss.detach()
