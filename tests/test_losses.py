"""NT-Xent against slow loop transcriptions of the papers, analytic values and invariances."""

from __future__ import annotations

import math
import multiprocessing

import numpy as np
import pytest
import torch

from deeplense_ssl.errors import ConfigError
from deeplense_ssl.losses import NTXentLoss, gather_with_grad, nt_xent, nt_xent_multi

TEMPERATURES = [0.07, 0.1, 0.5, 1.0]


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def simclr_algorithm1(z0: torch.Tensor, z1: torch.Tensor, tau: float) -> float:
    """Literal transcription of SimCLR Algorithm 1 (Chen et al. 2020), 1-based as printed.

    z_{2k-1} is the first view of image k, z_{2k} the second;
    l(i, j) = -log( exp(s_ij / tau) / sum_{k=1..2N, k != i} exp(s_ik / tau) );
    L = 1/(2N) sum_{k=1..N} [ l(2k-1, 2k) + l(2k, 2k-1) ].
    """
    a, b = z0.double().numpy(), z1.double().numpy()
    n = a.shape[0]
    z = {}
    for k in range(1, n + 1):
        z[2 * k - 1] = a[k - 1]
        z[2 * k] = b[k - 1]

    def s(i: int, j: int) -> float:
        return _cos(z[i], z[j])

    def loss(i: int, j: int) -> float:
        denom = sum(math.exp(s(i, k) / tau) for k in range(1, 2 * n + 1) if k != i)
        return -math.log(math.exp(s(i, j) / tau) / denom)

    total = sum(loss(2 * k - 1, 2 * k) + loss(2 * k, 2 * k - 1) for k in range(1, n + 1))
    return total / (2 * n)


def supcon_loop(views: list[torch.Tensor], tau: float) -> float:
    """Loop transcription of SupCon L^sup_out (Khosla et al. 2020, Eq. 2) with identity labels."""
    arrays = [v.double().numpy() for v in views]
    n_views, batch = len(arrays), arrays[0].shape[0]
    items = [(v, j) for v in range(n_views) for j in range(batch)]  # (view, image)
    total = 0.0
    for v, j in items:
        anchor = arrays[v][j]
        denom = sum(
            math.exp(_cos(anchor, arrays[w][m]) / tau) for w, m in items if (w, m) != (v, j)
        )
        positives = [(w, m) for w, m in items if m == j and w != v]
        s = sum(math.log(math.exp(_cos(anchor, arrays[w][m]) / tau) / denom) for w, m in positives)
        total += -s / len(positives)
    return total / len(items)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_nt_xent_matches_algorithm1(tau: float) -> None:
    g = torch.Generator().manual_seed(int(tau * 100))
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = simclr_algorithm1(z0, z1, tau)
    assert nt_xent(z0, z1, tau).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_multi_reduces_to_nt_xent_for_two_views(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(nt_xent_multi([z0, z1], tau), nt_xent(z0, z1, tau))


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("n_views", [3, 4])
def test_multi_matches_supcon_loop(tau: float, n_views: int) -> None:
    g = torch.Generator().manual_seed(n_views)
    views = [torch.randn(4, 6, generator=g) for _ in range(n_views)]
    expected = supcon_loop(views, tau)
    assert nt_xent_multi(views, tau).item() == pytest.approx(expected, rel=1e-5)


def test_supcon_loop_reference_agrees_with_algorithm1() -> None:
    """The two independent references agree with each other for two views."""
    g = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert supcon_loop([z0, z1], 0.3) == pytest.approx(simclr_algorithm1(z0, z1, 0.3), rel=1e-12)


@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_identical_embeddings_analytic(batch: int, tau: float) -> None:
    # Every similarity is 1/tau, so each anchor's softmax is uniform over 2N-1 candidates:
    # loss = -log(1 / (2N - 1)) whatever the temperature.
    z = torch.randn(1, 8).expand(batch, 8)
    assert nt_xent(z, z, tau).item() == pytest.approx(math.log(2 * batch - 1), abs=1e-5)


@pytest.mark.parametrize("n_views", [2, 3, 5])
def test_identical_embeddings_multi_analytic(n_views: int) -> None:
    batch = 4
    z = torch.randn(1, 8).expand(batch, 8)
    expected = math.log(n_views * batch - 1)  # uniform over the nB-1 other embeddings
    assert nt_xent_multi([z] * n_views, 0.2).item() == pytest.approx(expected, abs=1e-5)


def test_symmetry_and_invariances() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    torch.testing.assert_close(nt_xent(a, b, 0.2), nt_xent(b, a, 0.2))
    perm = torch.randperm(8, generator=g)
    torch.testing.assert_close(nt_xent(a[perm], b[perm], 0.2), nt_xent(a, b, 0.2))
    # Inputs are L2-normalised inside: positive rescaling of rows changes nothing.
    scale = torch.rand(8, 1, generator=g) * 10 + 0.1
    torch.testing.assert_close(nt_xent(a * scale, b, 0.2), nt_xent(a, b, 0.2))
    views = [a, b, a.flip(0)]
    torch.testing.assert_close(nt_xent_multi(views, 0.3), nt_xent_multi(views[::-1], 0.3))


def test_aligned_pairs_have_lower_loss_than_random() -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(16, 32, generator=g)
    aligned = nt_xent(a, a + 0.01 * torch.randn(16, 32, generator=g), 0.1)
    random = nt_xent(a, torch.randn(16, 32, generator=g), 0.1)
    assert aligned < random
    assert aligned < 0.1  # near the minimum 0 for well separated, aligned pairs


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_gradients_finite_and_match_float64(tau: float) -> None:
    g = torch.Generator().manual_seed(6)
    base = torch.randn(6, 8, generator=g)
    z0 = (base + 1e-4 * torch.randn(6, 8, generator=g)).requires_grad_()
    z1 = base.clone().requires_grad_()
    loss = nt_xent_multi([z0, z1, base.clone()], tau)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()
    z0d = z0.detach().double().requires_grad_()
    nt_xent_multi([z0d, z1.detach().double(), base.double()], tau).backward()
    torch.testing.assert_close(z0.grad.double(), z0d.grad, rtol=1e-3, atol=1e-5)


def test_low_precision_inputs_computed_in_float32() -> None:
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    out = nt_xent(a.bfloat16(), b.bfloat16(), 0.1)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(nt_xent(a, b, 0.1).item(), rel=2e-2)


def test_autocast_does_not_lower_the_loss_precision() -> None:
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(a, b, 0.05)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, nt_xent(a, b, 0.05), rtol=1e-6, atol=0)


def test_module_matches_function_and_checks_args() -> None:
    g = torch.Generator().manual_seed(8)
    views = [torch.randn(5, 4, generator=g) for _ in range(3)]
    loss = NTXentLoss(temperature=0.3)
    torch.testing.assert_close(loss(*views), nt_xent_multi(views, 0.3))
    torch.testing.assert_close(loss(views), nt_xent_multi(views, 0.3))
    torch.testing.assert_close(loss(views[0], views[1]), nt_xent(views[0], views[1], 0.3))
    # Not distributed: gathering is the identity, same value.
    torch.testing.assert_close(NTXentLoss(0.3, gather_distributed=True)(*views), loss(*views))
    with pytest.raises(ConfigError):
        NTXentLoss(temperature=0.0)
    with pytest.raises(ConfigError):
        nt_xent(views[0], views[1], temperature=-1.0)
    with pytest.raises(ValueError):
        loss(views[0])
    with pytest.raises(ValueError):
        loss(views[0], views[1][:3])
    with pytest.raises(ValueError):
        nt_xent(torch.randn(2, 3, 4), torch.randn(2, 3, 4))


def test_gather_with_grad_is_identity_without_distributed() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        g = torch.Generator().manual_seed(0)
        full = [torch.randn(world * 3, 5, generator=g) for _ in range(3)]  # same on all ranks
        local = [v[rank * 3 : (rank + 1) * 3].clone().requires_grad_() for v in full]
        loss = NTXentLoss(0.2, gather_distributed=True)(*local)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "grads": [v.grad for v in local]}, f"{out_dir}/r{rank}.pt"
        )
    finally:
        torch.distributed.destroy_process_group()


def test_gather_distributed_matches_single_process(tmp_path) -> None:
    """Two gloo ranks, half the batch each: the mean of the rank losses is the full-batch loss
    and the gathered gradients (summed over ranks by all_gather's backward) are its gradient
    times the world size."""
    world = 2
    torch.multiprocessing.start_processes(
        _distributed_worker,
        args=(world, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world,
        join=True,
        # fork avoids re-importing torch (~0.2 s instead of ~8 s); spawn where fork is missing.
        start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
    )
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(world * 3, 5, generator=g).requires_grad_() for _ in range(3)]
    ref = nt_xent_multi(full, 0.2)
    ref.backward()
    results = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(world)]
    mean_loss = sum(r["loss"] for r in results) / world
    torch.testing.assert_close(mean_loss, ref.detach())
    for v in range(3):
        grads = torch.cat([results[r]["grads"][v] for r in range(world)])
        torch.testing.assert_close(grads / world, full[v].grad)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_lightly_ntxent(tau: float) -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(9)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    ref = lightly_loss.NTXentLoss(temperature=tau, memory_bank_size=0)(z0, z1)
    torch.testing.assert_close(nt_xent(z0, z1, tau), ref)
