"""Collapse diagnostics: RankMe against numpy and analytic cases, spread, and the warning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deeplense_ssl.collapse import (
    RANKME_EPS,
    EmbeddingStd,
    collapse_warning,
    effective_rank,
    embedding_std,
)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rankme_numpy(z: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, Eq. 1-2, written out: p_k = sigma_k / ||sigma||_1 + eps,
    RankMe = exp(-sum_k p_k log p_k)."""
    sigma = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    l1 = sum(abs(s) for s in sigma)
    entropy = 0.0
    for s in sigma:
        p = s / l1 + eps
        entropy -= p * math.log(p)
    return math.exp(entropy)


@pytest.mark.parametrize("shape", [(20, 8), (5, 12), (64, 64)])
def test_effective_rank_matches_numpy(shape) -> None:
    z = _randn(*shape, seed=shape[0]) @ torch.diag(torch.linspace(0.1, 3.0, shape[1]))
    assert effective_rank(z) == pytest.approx(rankme_numpy(z.numpy()), rel=1e-10)
    assert RANKME_EPS == 1e-7


def test_effective_rank_analytic_cases() -> None:
    # rank one: a single non-zero singular value -> ~1 (eps adds ~(D-1) * 1.6e-6 nats)
    u, v = _randn(30, 1, seed=1), _randn(1, 16, seed=2)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-4)
    # orthonormal columns: D equal singular values -> D
    q, _ = torch.linalg.qr(_randn(32, 8, seed=3).double())
    assert effective_rank(q) == pytest.approx(8.0, rel=1e-5)
    # invariant to scale and to rotations of the embedding space
    z = _randn(40, 6, seed=4)
    rot, _ = torch.linalg.qr(_randn(6, 6, seed=5))
    assert effective_rank(1e3 * z) == pytest.approx(effective_rank(z), rel=1e-9)
    assert effective_rank(z @ rot) == pytest.approx(effective_rank(z), rel=1e-5)
    # k equal directions out of D -> k
    assert effective_rank(q[:, :3] @ torch.eye(3, 8, dtype=torch.float64)) == pytest.approx(
        3.0, rel=1e-5
    )
    assert effective_rank(torch.zeros(5, 4)) == 0.0


def test_effective_rank_accepts_low_precision_and_rejects_bad_input() -> None:
    z = _randn(16, 8, seed=6)
    assert effective_rank(z.bfloat16()) == pytest.approx(effective_rank(z), rel=1e-2)
    with pytest.raises(ValueError):
        effective_rank(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(torch.tensor([[1.0, float("nan")]]))


def test_embedding_std_isotropic_vs_collapsed() -> None:
    d = 16
    iso = embedding_std(_randn(4000, d, seed=7))
    assert isinstance(iso, EmbeddingStd)
    assert iso.mean == pytest.approx(1 / math.sqrt(d), rel=0.03)
    assert iso.min > 0.9 / math.sqrt(d)
    collapsed = _randn(1, d, seed=8) + 1e-4 * _randn(500, d, seed=9)
    small = embedding_std(collapsed)
    assert small.mean < 1e-3 and small.min <= small.mean
    # against numpy: std (ddof=1) over rows of the L2-normalised embeddings
    z = _randn(30, 5, seed=10).double().numpy() * [1, 2, 3, 4, 5]
    ref = (z / np.linalg.norm(z, axis=1, keepdims=True)).std(axis=0, ddof=1)
    got = embedding_std(torch.from_numpy(z))
    assert got.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert got.min == pytest.approx(ref.min(), rel=1e-12)
    with pytest.raises(ValueError):
        embedding_std(torch.ones(1, 4))


def test_collapse_warning_thresholds() -> None:
    healthy_std = 1 / math.sqrt(128)
    assert collapse_warning(40.0, healthy_std, 128) is None
    msg = collapse_warning(1.5, healthy_std, 128)  # below the floor of 2
    assert msg is not None and "effective rank 1.50 < 2.00" in msg
    assert "std" not in msg
    # 1 % of min(N, D): D = 512 -> 5.12; with only 100 samples the floor 2 applies
    assert collapse_warning(5.0, 1 / math.sqrt(512), 512) is not None
    assert collapse_warning(5.3, 1 / math.sqrt(512), 512) is None
    assert collapse_warning(3.0, 1 / math.sqrt(512), 512, n_samples=100) is None
    # std threshold 0.1 / sqrt(D) = 0.01 for D = 100
    assert collapse_warning(50.0, 0.011, 100) is None
    msg = collapse_warning(50.0, 0.009, 100)
    assert msg is not None and "std" in msg and "rank" not in msg


def test_collapse_warning_on_measured_embeddings() -> None:
    d = 32
    healthy = _randn(256, d, seed=11)
    assert collapse_warning(effective_rank(healthy), embedding_std(healthy).mean, d, 256) is None
    collapsed = _randn(1, d, seed=12) + 1e-5 * _randn(256, d, seed=13)
    msg = collapse_warning(effective_rank(collapsed), embedding_std(collapsed).mean, d, 256)
    assert msg is not None and msg.startswith("representation collapse")
    assert "rank" in msg and "std" in msg
