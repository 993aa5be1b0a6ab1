"""NT-Xent (normalised temperature-scaled cross entropy) loss: pure functions and a module.

References:
    Chen, Kornblith, Norouzi, Hinton (2020), "A Simple Framework for Contrastive Learning of
    Visual Representations" (SimCLR), Algorithm 1 and Eq. 1.
    Khosla et al. (2020), "Supervised Contrastive Learning", Eq. 2 (``L^sup_out``), used here
    with *identity* labels (all views of one image are positives of each other) to extend
    NT-Xent to ``n >= 2`` views per image.

Definitions (all embeddings are L2-normalised first, ``sim(u, v) = u.v / temperature``):

* two views, batch ``B``: the ``2B`` embeddings are anchors in turn; for anchor ``i`` with
  positive ``p(i)`` (the other view of the same image)
  ``l_i = -log( exp(sim_i,p(i)) / sum_{k != i} exp(sim_i,k) )`` and the loss is the mean of
  ``l_i`` over the ``2B`` anchors (SimCLR Alg. 1: ``L = 1/(2N) sum_k [l(2k-1,2k) + l(2k,2k-1)]``).
* ``n`` views: anchors are the ``nB`` embeddings; ``P(i)`` are the ``n - 1`` other views of the
  same image; ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(sim_i,p) / sum_{k != i} exp(sim_i,k) )``;
  mean over the ``nB`` anchors. For ``n = 2`` it is exactly the two-view loss.

The computation is done in float32 whatever the input dtype (safe under autocast).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}.")


def _check_views(views: Sequence[Tensor]) -> None:
    if len(views) < 2:
        raise ValueError(f"NT-Xent needs at least two views, got {len(views)}.")
    shape = views[0].shape
    if len(shape) != 2:
        raise ValueError(f"embeddings must have shape (batch, dim), got {tuple(shape)}.")
    for v in views[1:]:
        if v.shape != shape:
            raise ValueError(
                f"all views must have the same shape, got {tuple(shape)} and {tuple(v.shape)}."
            )


def _multi_positive_nt_xent(
    views: Sequence[Tensor],
    temperature: float,
    candidates: Sequence[Tensor] | None = None,
    rank: int = 0,
) -> Tensor:
    """Core of the loss: local anchors against (possibly gathered) candidate embeddings.

    Args:
        views: ``n`` local tensors ``(B, D)``; row ``j`` of every view is the same image.
        temperature: softmax temperature ``tau`` (> 0).
        candidates: ``n`` tensors ``(W * B, D)`` of all ranks' views (rank-major); ``None``
            means the local views (single process).
        rank: index of this process in ``candidates``.

    Returns:
        Scalar loss averaged over the ``n * B`` local anchors.
    """
    # Full float32 even inside an autocast region (logits / temperature overflow fp16 easily).
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        return _multi_positive_nt_xent_fp32(views, temperature, candidates, rank)


def _multi_positive_nt_xent_fp32(
    views: Sequence[Tensor],
    temperature: float,
    candidates: Sequence[Tensor] | None,
    rank: int,
) -> Tensor:
    n, batch = len(views), views[0].shape[0]
    anchors = F.normalize(torch.cat(list(views)).float(), dim=1)  # (nB, D)
    if candidates is None:
        cands, total = anchors, batch
    else:
        cands = F.normalize(torch.cat(list(candidates)).float(), dim=1)  # (n W B, D)
        total = candidates[0].shape[0]  # W * B
    logits = anchors @ cands.T / temperature  # (nB, n * total)
    device = logits.device
    local_ids = torch.arange(batch, device=device) + rank * batch  # image id of each row
    anchor_ids = local_ids.repeat(n)  # (nB,)
    cand_ids = torch.arange(total, device=device).repeat(n)  # (n * total,)
    view_of_anchor = torch.arange(n, device=device).repeat_interleave(batch)
    self_col = view_of_anchor * total + anchor_ids  # column of each anchor itself
    cols = torch.arange(n * total, device=device)
    self_mask = cols[None, :] == self_col[:, None]  # (nB, n * total)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (anchor_ids[:, None] == cand_ids[None, :]) & ~self_mask  # n - 1 per row
    # Sum log-probabilities of the positives (masked_fill avoids 0 * -inf on the diagonal).
    pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / (n - 1)
    return -pos_log_prob.mean()


def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR NT-Xent loss of two views (Chen et al. 2020, Alg. 1 / Eq. 1).

    Args:
        z0: ``(batch, dim)`` projections of the first views; need not be normalised.
        z1: ``(batch, dim)`` projections of the second views; row ``j`` pairs with ``z0[j]``.
        temperature: ``tau`` > 0 (SimCLR CIFAR recipe 0.5; DeepLense contrastive pretexts 0.1).

    Returns:
        Scalar float32 loss, averaged over the ``2 * batch`` anchors. With all embeddings
        identical it equals ``log(2 * batch - 1)``; its minimum tends to 0.
    """
    _check_temperature(temperature)
    _check_views((z0, z1))
    return _multi_positive_nt_xent((z0, z1), temperature)


def nt_xent_multi(views: Sequence[Tensor], temperature: float = 0.5) -> Tensor:
    """NT-Xent over ``n >= 2`` views of the same images, each anchor having ``n - 1`` positives.

    This is the SupCon ``L^sup_out`` loss (Khosla et al. 2020, Eq. 2) with identity labels
    (a sample's positives are the other views of the same image; every other embedding is a
    negative), the standard multi-view extension of SimCLR. For ``n = 2`` it equals
    :func:`nt_xent` exactly.

    Args:
        views: sequence of ``n`` tensors ``(batch, dim)``; row ``j`` of every view is image ``j``.
        temperature: ``tau`` > 0.

    Returns:
        Scalar float32 loss averaged over the ``n * batch`` anchors.
    """
    _check_temperature(temperature)
    _check_views(views)
    return _multi_positive_nt_xent(views, temperature)


def _is_distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward gives each rank the summed gradient of its own slice.

    Every rank computes a loss from the gathered tensor, so the gradient of the total loss
    (the sum over ranks) with respect to rank ``r``'s input is the sum, over ranks, of their
    gradients for slice ``r``: an all-reduce of the stacked gradients, then rank ``r``'s row.
    Written here because ``torch.distributed.nn.functional.all_gather`` is deprecated.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        group = torch.distributed.group.WORLD
        out = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(out, x, group=group)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # type: ignore[override]
        group = torch.distributed.group.WORLD
        stacked = torch.stack([g.contiguous() for g in grads])
        torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM, group=group)
        return stacked[torch.distributed.get_rank(group)]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` from every rank, concatenated rank-major, keeping the autograd graph.

    The backward sums the incoming gradients across ranks and returns each rank its slice, so
    gradients reach the embeddings on every rank. The WORLD group is looked up at call time,
    so this stays correct when a process group is destroyed and re-created in the same process
    (tests, notebooks, several pretrain calls).

    Args:
        x: ``(batch, ...)`` tensor, the same shape on every rank.

    Returns:
        ``(world_size * batch, ...)``; ``x`` itself when not running distributed.
    """
    if not _is_distributed():
        return x
    return torch.cat(_AllGatherWithGrad.apply(x.contiguous()), dim=0)


class NTXentLoss(nn.Module):
    """NT-Xent loss module: ``loss(z_view0, z_view1, ...)`` for two or more views.

    Args:
        temperature: ``tau`` > 0.
        gather_distributed: when running with ``torch.distributed`` (world size > 1), take the
            negatives from every rank's batch (anchors stay local; gradients flow through the
            gather), as in SimCLR's large-batch training. Ignored when not distributed.

    Raises:
        ConfigError: non-positive temperature.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_temperature(temperature)
        if gather_distributed and not torch.distributed.is_available():
            raise ConfigError("gather_distributed=True needs torch.distributed, not available.")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, *views: Tensor) -> Tensor:
        """Loss of ``n >= 2`` view projections, each ``(batch, dim)``; returns a scalar."""
        if len(views) == 1 and isinstance(views[0], (list, tuple)):
            views = tuple(views[0])
        _check_views(views)
        if self.gather_distributed and _is_distributed():
            candidates = [gather_with_grad(v) for v in views]
            return _multi_positive_nt_xent(
                views, self.temperature, candidates, rank=torch.distributed.get_rank()
            )
        return _multi_positive_nt_xent(views, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
