"""Self-supervised losses: pure functions plus thin modules, and the distributed gather.

* NT-Xent (SimCLR, contrastive): :func:`nt_xent`, :func:`nt_xent_multi`, :class:`NTXentLoss`.
* Negative cosine (BYOL, SimSiam): :func:`negative_cosine`, :func:`symmetric_negative_cosine`,
  :class:`NegativeCosineLoss`.
* VICReg: :func:`vicreg_loss`, :class:`VICRegLoss`.
* Barlow Twins: :func:`barlow_twins_loss`, :class:`BarlowTwinsLoss`.
* DINO: :func:`dino_loss`, :func:`dino_teacher_temperature`, :class:`DINOLoss` (owns the centre).

Every loss runs with autocast disabled and returns a float32 scalar for float16, bfloat16 and
float32 inputs (low-precision inputs are upcast); the losses other than NT-Xent keep float64
inputs in float64 (so ``torch.autograd.gradcheck`` can check them).

Distributed convention (all losses with ``gather_distributed``): each rank returns a loss whose
MEAN over ranks is the loss of the global batch (the concatenation of every rank's batch).
Batch statistics (NT-Xent negatives, VICReg variance/covariance, Barlow Twins normalisation and
cross-correlation) come from :func:`gather_with_grad`, whose backward SUMS the gradients of all
ranks. Hence the gradient reaching a rank's input rows is ``world_size`` times the gradient of
the global-batch loss with respect to those rows, and DDP's average of the parameter gradients
over ranks is exactly the gradient of the global-batch loss (tests/test_losses_distributed.py).

NT-Xent references:
    Chen, Kornblith, Norouzi, Hinton (2020), "A Simple Framework for Contrastive Learning of
    Visual Representations" (SimCLR), Algorithm 1 and Eq. 1.
    Khosla et al. (2020), "Supervised Contrastive Learning", Eq. 2 (``L^sup_out``), used here
    with *identity* labels (all views of one image are positives of each other) to extend
    NT-Xent to ``n >= 2`` views per image.

NT-Xent definitions (all embeddings are L2-normalised first, ``sim(u, v) = u.v / temperature``):

* two views, batch ``B``: the ``2B`` embeddings are anchors in turn; for anchor ``i`` with
  positive ``p(i)`` (the other view of the same image)
  ``l_i = -log( exp(sim_i,p(i)) / sum_{k != i} exp(sim_i,k) )`` and the loss is the mean of
  ``l_i`` over the ``2B`` anchors (SimCLR Alg. 1: ``L = 1/(2N) sum_k [l(2k-1,2k) + l(2k,2k-1)]``).
* ``n`` views: anchors are the ``nB`` embeddings; ``P(i)`` are the ``n - 1`` other views of the
  same image; ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(sim_i,p) / sum_{k != i} exp(sim_i,k) )``;
  mean over the ``nB`` anchors. For ``n = 2`` it is exactly the two-view loss.

NT-Xent is computed in float32 whatever the input dtype (safe under autocast).
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
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        group = torch.distributed.group.WORLD
        out = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(out, x, group=group)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
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


# ---------------------------------------------------------------------------------------------
# Shared helpers of the non-contrastive losses


def _full_precision(x: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 are returned unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            "embeddings must be two (batch, dim) tensors of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{name} must be >= 0, got {value}.")


def _check_gather_available(gather_distributed: bool) -> None:
    if gather_distributed and not torch.distributed.is_available():
        raise ConfigError("gather_distributed=True needs torch.distributed, not available.")


def _maybe_gather(x: Tensor, gather_distributed: bool) -> Tensor:
    return gather_with_grad(x) if gather_distributed else x


def _off_diagonal(m: Tensor) -> Tensor:
    """The ``n * (n - 1)`` off-diagonal entries of a square ``(n, n)`` matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


# ---------------------------------------------------------------------------------------------
# BYOL / SimSiam: negative cosine similarity with a stop-gradient on the target

NEGATIVE_COSINE_FORMS = ("simsiam", "byol")


def _check_form(form: str) -> None:
    if form not in NEGATIVE_COSINE_FORMS:
        raise ConfigError(f"form must be one of {NEGATIVE_COSINE_FORMS}, got {form!r}.")


def negative_cosine(p: Tensor, z: Tensor, form: str = "simsiam") -> Tensor:
    """Negative cosine similarity of predictions and stop-gradient targets (BYOL, SimSiam).

    * ``form="simsiam"``: ``D(p, z) = -cos(p, stopgrad(z))`` averaged over the batch (Chen & He
      2021, "Exploring Simple Siamese Representation Learning", Eq. 1 and Alg. 1); in
      ``[-1, 1]``, minimum -1 for aligned pairs.
    * ``form="byol"``: ``||p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z)`` averaged over the
      batch (Grill et al. 2020, "Bootstrap Your Own Latent", Eq. 2); in ``[0, 4]``, minimum 0.
      It equals ``2 + 2 * D(p, z)``: same minimiser, gradients twice SimSiam's.

    The target ``z`` is always detached (SimSiam's stop-gradient; BYOL's target network gets no
    gradient either). Cosines use ``eps = 1e-8`` on the norm product, as
    ``torch.nn.functional.cosine_similarity``.

    Args:
        p: ``(batch, dim)`` predictor outputs (online branch).
        z: ``(batch, dim)`` targets (projections of the other view, or target-network outputs).
        form: ``"simsiam"`` or ``"byol"``.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    _check_form(form)
    _check_pair(p, z)
    with _no_autocast(p):
        cos = F.cosine_similarity(_full_precision(p), _full_precision(z).detach(), dim=1, eps=1e-8)
        return -cos.mean() if form == "simsiam" else (2.0 - 2.0 * cos).mean()


def symmetric_negative_cosine(
    p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, form: str = "simsiam"
) -> Tensor:
    """Symmetrised BYOL / SimSiam loss: view 1's prediction regresses view 2's target and back.

    * ``"simsiam"``: ``L = D(p1, z2) / 2 + D(p2, z1) / 2`` (SimSiam Alg. 1).
    * ``"byol"``: ``L = L(p1, z2) + L(p2, z1)`` (BYOL Sec. 3.1: ``L + L~``, a sum, not a mean).

    Args:
        p1: ``(batch, dim)`` predictions from view 1.
        p2: ``(batch, dim)`` predictions from view 2.
        z1: ``(batch, dim)`` targets from view 1 (detached inside).
        z2: ``(batch, dim)`` targets from view 2 (detached inside).
        form: ``"simsiam"`` (range ``[-1, 1]``) or ``"byol"`` (range ``[0, 8]``).

    Returns:
        Scalar loss.
    """
    _check_form(form)
    d12, d21 = negative_cosine(p1, z2, form), negative_cosine(p2, z1, form)
    return 0.5 * (d12 + d21) if form == "simsiam" else d12 + d21


class NegativeCosineLoss(nn.Module):
    """Symmetrised BYOL / SimSiam loss module: ``loss(p1, p2, z1, z2)``.

    Args:
        form: ``"simsiam"`` (``-cos`` averaged over both directions) or ``"byol"``
            (``2 - 2 cos`` summed over both directions); see :func:`negative_cosine`.

    Raises:
        ConfigError: unknown form.
    """

    def __init__(self, form: str = "simsiam") -> None:
        super().__init__()
        _check_form(form)
        self.form = form

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Predictions ``p1, p2`` and targets ``z1, z2``, each ``(batch, dim)``; scalar loss."""
        return symmetric_negative_cosine(p1, p2, z1, z2, self.form)

    def extra_repr(self) -> str:
        return f"form={self.form!r}"


# ---------------------------------------------------------------------------------------------
# VICReg


def _variance_hinge(z: Tensor, eps: float) -> Tensor:
    """``mean_j relu(1 - sqrt(Var(z_:,j) + eps))`` with the unbiased variance (VICReg Eq. 1)."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance_penalty(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances over ``dim`` (VICReg Eq. 4, ``1/(N-1)``)."""
    n, dim = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return _off_diagonal(cov).pow(2).sum() / dim


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = False,
) -> Tensor:
    """VICReg loss (Bardes, Ponce, LeCun 2022, "VICReg", Alg. 1, Eqs. 1-6).

    ``L = sim_coeff * s(Z, Z') + std_coeff * [v(Z) + v(Z')] / 2 + cov_coeff * [c(Z) + c(Z')]``

    * invariance ``s``: mean squared error over all ``batch * dim`` entries;
    * variance ``v(Z) = mean_j relu(1 - sqrt(Var(Z_:,j) + eps))`` (unbiased variance, ``gamma=1``);
    * covariance ``c(Z) = sum_{i != j} C(Z)_ij^2 / dim`` with ``C`` the ``1/(N-1)`` covariance.

    The variance term is the MEAN of the two branches, as in the authors' released code
    (``main_vicreg.py``) with which the paper's coefficients (25, 25, 1; Sec. 4.3) were tuned,
    and as lightly does; Alg. 1 and Eq. 6 print the SUM, i.e. ``std_coeff = 2 * mu`` there.

    Args:
        z_a: ``(batch, dim)`` expander outputs of the first views.
        z_b: ``(batch, dim)`` expander outputs of the second views.
        sim_coeff: ``lambda``, weight of the invariance term (paper 25).
        std_coeff: ``mu``, weight of the variance term (paper 25).
        cov_coeff: ``nu``, weight of the covariance term (paper 1).
        eps: added to the variance before the square root (paper 1e-4).
        gather_distributed: compute variance and covariance over the GLOBAL batch (all ranks,
            gradients through :func:`gather_with_grad`); the invariance term stays local (its
            mean over ranks is the global one). No effect when not distributed.

    Returns:
        Scalar loss (see the module docstring for the distributed gradient convention).

    Raises:
        ValueError: shapes differ, are not 2-D, or the (global) batch has fewer than 2 rows.
    """
    _check_pair(z_a, z_b)
    with _no_autocast(z_a):
        z_a, z_b = _full_precision(z_a), _full_precision(z_b)
        invariance = F.mse_loss(z_a, z_b)
        z_a, z_b = _maybe_gather(z_a, gather_distributed), _maybe_gather(z_b, gather_distributed)
        if z_a.shape[0] < 2:
            raise ValueError(f"VICReg needs a batch of at least 2, got {z_a.shape[0]}.")
        variance = 0.5 * (_variance_hinge(z_a, eps) + _variance_hinge(z_b, eps))
        covariance = _covariance_penalty(z_a) + _covariance_penalty(z_b)
        return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


class VICRegLoss(nn.Module):
    """VICReg loss module: ``loss(z_a, z_b)``; arguments as :func:`vicreg_loss`.

    Raises:
        ConfigError: a negative coefficient, non-positive ``eps``, or ``gather_distributed``
            without ``torch.distributed``.
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_non_negative(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)
        if not eps > 0:
            raise ConfigError(f"eps must be > 0, got {eps}.")
        _check_gather_available(gather_distributed)
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.eps = float(eps)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Two ``(batch, dim)`` view embeddings -> scalar loss."""
        return vicreg_loss(
            z_a,
            z_b,
            self.sim_coeff,
            self.std_coeff,
            self.cov_coeff,
            self.eps,
            self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, "
            f"cov_coeff={self.cov_coeff}, gather_distributed={self.gather_distributed}"
        )


# ---------------------------------------------------------------------------------------------
# Barlow Twins

BARLOW_BN_EPS = 1e-5  # torch.nn.BatchNorm1d's eps, as in the authors' code


def _batch_standardise(z: Tensor) -> Tensor:
    """``(z - mean) / sqrt(var + eps)`` per dimension over the batch (biased var, like BN)."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, correction=0)
    return (z - mean) / torch.sqrt(var + BARLOW_BN_EPS)


def barlow_twins_loss(
    z_a: Tensor,
    z_b: Tensor,
    lambda_offdiag: float = 5.1e-3,
    gather_distributed: bool = False,
) -> Tensor:
    """Barlow Twins loss (Zbontar et al. 2021, "Barlow Twins", Alg. 1 and Eq. 1).

    Each dimension is standardised over the (global) batch, ``C = z_a_norm^T z_b_norm / N``
    is the ``(dim, dim)`` cross-correlation and
    ``L = sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2``.

    Standardisation is the authors' code's ``BatchNorm1d(affine=False)`` (biased variance,
    ``eps = 1e-5``), as lightly's; Alg. 1 prints ``z.std(0)`` (unbiased, no eps), which, eps
    aside, rescales ``C`` by ``(N - 1) / N`` and so leaves ``C_ii < 1`` for identical views.

    Args:
        z_a: ``(batch, dim)`` projector outputs of the first views.
        z_b: ``(batch, dim)`` projector outputs of the second views.
        lambda_offdiag: weight of the redundancy-reduction term (paper 5.1e-3; lightly's
            default is 5e-3).
        gather_distributed: normalise and correlate over the GLOBAL batch (all ranks, gradients
            through :func:`gather_with_grad`): every rank then returns the global loss. No effect
            when not distributed.

    Returns:
        Scalar loss, ~0 (eps aside) for perfectly correlated views with decorrelated dimensions.

    Raises:
        ValueError: shapes differ, are not 2-D, or the (global) batch has fewer than 2 rows.
    """
    _check_pair(z_a, z_b)
    with _no_autocast(z_a):
        z_a, z_b = _full_precision(z_a), _full_precision(z_b)
        z_a, z_b = _maybe_gather(z_a, gather_distributed), _maybe_gather(z_b, gather_distributed)
        n = z_a.shape[0]
        if n < 2:
            raise ValueError(f"Barlow Twins needs a batch of at least 2, got {n}.")
        c = _batch_standardise(z_a).T @ _batch_standardise(z_b) / n
        on_diagonal = (torch.diagonal(c) - 1.0).pow(2).sum()
        off_diagonal = _off_diagonal(c).pow(2).sum()
        return on_diagonal + lambda_offdiag * off_diagonal


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss module: ``loss(z_a, z_b)``; arguments as :func:`barlow_twins_loss`.

    Raises:
        ConfigError: negative ``lambda_offdiag`` or ``gather_distributed`` without
            ``torch.distributed``.
    """

    def __init__(self, lambda_offdiag: float = 5.1e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_non_negative(lambda_offdiag=lambda_offdiag)
        _check_gather_available(gather_distributed)
        self.lambda_offdiag = float(lambda_offdiag)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Two ``(batch, dim)`` view embeddings -> scalar loss."""
        return barlow_twins_loss(z_a, z_b, self.lambda_offdiag, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag}, gather_distributed={self.gather_distributed}"


# ---------------------------------------------------------------------------------------------
# DINO


def _check_dino_views(student_out: Sequence[Tensor], teacher_out: Sequence[Tensor]) -> None:
    n_t, n_s = len(teacher_out), len(student_out)
    if n_t < 1 or n_s < n_t or n_s < 2:
        raise ValueError(
            "DINO needs >= 1 teacher (global) view and at least as many, and >= 2, student "
            f"views (the global ones first), got {n_t} teacher and {n_s} student views."
        )
    shape = teacher_out[0].shape
    if len(shape) != 2 or any(t.shape != shape for t in (*teacher_out, *student_out)):
        shapes = sorted({tuple(t.shape) for t in (*teacher_out, *student_out)})
        raise ValueError(f"all DINO outputs must be (batch, out_dim) alike, got {shapes}.")


def dino_loss(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO self-distillation loss (Caron et al. 2021, "Emerging Properties in Self-Supervised
    Vision Transformers", Alg. 1 and Eq. 3, with multi-crop as in the authors' code).

    For each teacher (global) view ``t`` and each student view ``s != t``:
    ``H(t, s) = -mean_b sum_k P_t[b, k] log P_s[b, k]`` with
    ``P_t = softmax((g_t(x_t) - center) / teacher_temp)`` (centred and sharpened, no gradient)
    and ``P_s = softmax(g_s(x_s) / student_temp)``. The loss is the mean of ``H`` over the
    ``T * S - T`` pairs (same-view pairs skipped). With two global views and no local ones it
    is Alg. 1's ``H(t1, s2) / 2 + H(t2, s1) / 2``.

    Args:
        student_out: ``S >= 2`` student head outputs, each ``(batch, out_dim)``: the ``T``
            global views first, in the teacher's order, then the local crops.
        teacher_out: ``T >= 1`` teacher head outputs of the global views, ``(batch, out_dim)``
            each (detached inside).
        center: ``(out_dim,)`` or ``(1, out_dim)`` teacher centre (detached inside).
        student_temp: ``tau_s`` (paper 0.1).
        teacher_temp: ``tau_t`` (paper 0.04, warmed up to 0.04-0.07; see
            :func:`dino_teacher_temperature`).

    Returns:
        Scalar cross entropy in nats (``log(out_dim)`` for uniform teacher and student).

    Raises:
        ValueError: wrong number of views or mismatched shapes.
    """
    _check_dino_views(student_out, teacher_out)
    _check_temperature(student_temp)
    _check_temperature(teacher_temp)
    n_t, n_s = len(teacher_out), len(student_out)
    with _no_autocast(student_out[0]):
        teacher = torch.stack([_full_precision(t).detach() for t in teacher_out])  # (T, B, K)
        student = torch.stack([_full_precision(s) for s in student_out])  # (S, B, K)
        centred = teacher - _full_precision(center).detach().reshape(1, 1, -1)
        p_teacher = F.softmax(centred / teacher_temp, dim=-1)
        log_p_student = F.log_softmax(student / student_temp, dim=-1)
        # cross entropy of every (teacher view, student view) pair, averaged over the batch
        ce = -torch.einsum("tbk,sbk->ts", p_teacher, log_p_student) / teacher.shape[1]
        same_view = torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)
        return ce[~same_view].mean()


def dino_teacher_temperature(
    step: int,
    teacher_temp: float = 0.04,
    warmup_teacher_temp: float = 0.04,
    warmup_steps: int = 0,
) -> float:
    """Teacher temperature at optimiser step ``step`` (0-based): linear warm-up, then constant.

    ``warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * step / warmup_steps`` for
    ``step < warmup_steps``, ``teacher_temp`` afterwards (DINO implementation details:
    0.04 -> 0.07 over the first 30 epochs; the authors' code steps it per epoch with
    ``np.linspace``, here per step).

    Args:
        step: optimiser steps already taken (0 at the first step).
        teacher_temp: final temperature.
        warmup_teacher_temp: temperature at step 0.
        warmup_steps: length of the warm-up in steps (0: none).

    Returns:
        Temperature (> 0).
    """
    if step >= warmup_steps:
        return float(teacher_temp)
    return float(warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * step / warmup_steps)


class DINOLoss(nn.Module):
    """DINO loss with its teacher centre (a buffer, so it lives in ``state_dict`` / checkpoints).

    ``loss(student_out, teacher_out, step)`` computes :func:`dino_loss` with the current centre
    and the warmed-up teacher temperature, then (by default) updates the centre with this
    batch's teacher outputs, as Alg. 1 does after the loss.

    Args:
        out_dim: ``K``, width of the DINO head output.
        student_temp: ``tau_s`` (paper 0.1).
        teacher_temp: ``tau_t`` after warm-up (paper 0.04-0.07).
        warmup_teacher_temp: ``tau_t`` at step 0 (paper 0.04).
        warmup_steps: linear warm-up length in optimiser steps (0: none).
        center_momentum: ``m`` in ``C <- m C + (1 - m) mean(teacher outputs)`` (paper 0.9).

    Raises:
        ConfigError: non-positive temperatures or ``out_dim``, negative ``warmup_steps``,
            ``center_momentum`` outside ``[0, 1)``.
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_steps: int = 0,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        for temperature in (student_temp, teacher_temp, warmup_teacher_temp):
            _check_temperature(temperature)
        if out_dim < 1 or warmup_steps < 0:
            raise ConfigError(
                f"need out_dim >= 1, warmup_steps >= 0; got {out_dim}, {warmup_steps}."
            )
        if not 0.0 <= center_momentum < 1.0:
            raise ConfigError(f"center_momentum must be in [0, 1), got {center_momentum}.")
        self.out_dim, self.warmup_steps = int(out_dim), int(warmup_steps)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    def teacher_temperature(self, step: int) -> float:
        """Teacher temperature at (0-based) optimiser step ``step``."""
        return dino_teacher_temperature(
            step, self.teacher_temp, self.warmup_teacher_temp, self.warmup_steps
        )

    def forward(
        self,
        student_out: Sequence[Tensor],
        teacher_out: Sequence[Tensor],
        step: int,
        update_center: bool = True,
    ) -> Tensor:
        """DINO loss with the current centre, then (by default) the centre update.

        Args:
            student_out: ``S`` student outputs ``(batch, out_dim)``, global views first (see
                :func:`dino_loss`).
            teacher_out: ``T`` teacher outputs ``(batch, out_dim)`` of the global views.
            step: optimiser steps already taken (0-based), for the teacher temperature.
            update_center: afterwards move the centre towards this batch's teacher mean
                (all-reduced across ranks; a collective call when distributed).

        Returns:
            Scalar loss.
        """
        loss = dino_loss(
            student_out,
            teacher_out,
            self.center,
            self.student_temp,
            self.teacher_temperature(step),
        )
        if update_center:
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: Sequence[Tensor]) -> None:
        """``C <- m C + (1 - m) mean`` over every teacher row of every rank.

        Args:
            teacher_out: ``T`` tensors ``(batch, out_dim)``. Under ``torch.distributed`` the
                sums and row counts are all-reduced, so every rank gets the global-batch mean
                (the centre stays identical across ranks).
        """
        rows = torch.cat([_full_precision(t).detach() for t in teacher_out])  # (T * B, K)
        # one all-reduce of [sum of rows | number of rows]
        stats = torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])])  # (K + 1,)
        if _is_distributed():
            torch.distributed.all_reduce(stats)
        batch_center = (stats[:-1] / stats[-1]).to(self.center.dtype)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temp={self.student_temp}, "
            f"teacher_temp={self.teacher_temp}, warmup_teacher_temp={self.warmup_teacher_temp}, "
            f"warmup_steps={self.warmup_steps}, center_momentum={self.center_momentum}"
        )
