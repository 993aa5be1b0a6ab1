"""BYOL / SimSiam, VICReg, Barlow Twins and DINO losses against three references each.

1. a slow, literal float64 loop transcription of the paper's pseudo-code;
2. lightly's implementation (an independent oracle), with matching settings;
3. analytic cases (identical, orthogonal, whitened or uniform embeddings).

Plus gradients: the stop-gradient of the targets, ``gradcheck`` on tiny float64 cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard

from deeplense_ssl.errors import ConfigError
from deeplense_ssl.losses import (
    BarlowTwinsLoss,
    DINOLoss,
    NegativeCosineLoss,
    VICRegLoss,
    barlow_twins_loss,
    dino_loss,
    dino_teacher_temperature,
    negative_cosine,
    symmetric_negative_cosine,
    vicreg_loss,
)

lightly_loss = pytest.importorskip("lightly.loss")


def _randn(*shape: int, seed: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ---------------------------------------------------------------------------------------------
# references: literal loop transcriptions of the papers' pseudo-code (float64)


def simsiam_algorithm1(p1, p2, z1, z2) -> float:
    """SimSiam Alg. 1: D(p, z) = -(normalize(p) * normalize(z)).sum(dim=1).mean();
    L = D(p1, z2) / 2 + D(p2, z1) / 2."""

    def d(p: np.ndarray, z: np.ndarray) -> float:
        total = 0.0
        for i in range(p.shape[0]):
            dot = sum(p[i, k] * z[i, k] for k in range(p.shape[1]))
            total += -dot / (math.sqrt((p[i] ** 2).sum()) * math.sqrt((z[i] ** 2).sum()))
        return total / p.shape[0]

    p1, p2, z1, z2 = map(_np, (p1, p2, z1, z2))
    return d(p1, z2) / 2 + d(p2, z1) / 2


def byol_equation2(q1, q2, z1, z2) -> float:
    """BYOL Eq. 2 plus its symmetric twin: L = ||q1_bar - z2'_bar||^2 + ||q2_bar - z1'_bar||^2,
    each averaged over the batch."""

    def l2(q: np.ndarray, z: np.ndarray) -> float:
        total = 0.0
        for i in range(q.shape[0]):
            qb, zb = q[i] / math.sqrt((q[i] ** 2).sum()), z[i] / math.sqrt((z[i] ** 2).sum())
            total += sum((qb[k] - zb[k]) ** 2 for k in range(q.shape[1]))
        return total / q.shape[0]

    q1, q2, z1, z2 = map(_np, (q1, q2, z1, z2))
    return l2(q1, z2) + l2(q2, z1)


def vicreg_algorithm1(z_a, z_b, lam: float, mu: float, nu: float) -> float:
    """VICReg Alg. 1 as printed (note: the variance terms are SUMMED there)."""
    a, b = _np(z_a), _np(z_b)
    n, d = a.shape
    sim_loss = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def std_hinge(z: np.ndarray) -> float:
        total = 0.0
        for j in range(d):
            m = sum(z[:, j]) / n
            var = sum((z[i, j] - m) ** 2 for i in range(n)) / (n - 1)  # torch.var: unbiased
            total += max(0.0, 1.0 - math.sqrt(var + 1e-4))
        return total / d

    def cov_loss(z: np.ndarray) -> float:
        m = [sum(z[:, j]) / n for j in range(d)]
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((z[i, j] - m[j]) * (z[i, k] - m[k]) for i in range(n)) / (n - 1)
                    total += c**2
        return total / d

    std_loss = std_hinge(a) + std_hinge(b)
    return lam * sim_loss + mu * std_loss + nu * (cov_loss(a) + cov_loss(b))


def barlow_algorithm1(z_a, z_b, lam: float, ddof: int = 0, eps: float = 1e-5) -> float:
    """Barlow Twins Alg. 1: z_norm = (z - mean) / std; c = z_a_norm.T @ z_b_norm / N;
    loss = sum((c - I)^2 with off-diagonal terms times lambda).

    Alg. 1 prints ``z.std(0)`` (ddof=1, no eps); the authors' code normalises with
    ``BatchNorm1d(affine=False)``: ddof=0, eps=1e-5, the convention under test.
    """
    a, b = _np(z_a), _np(z_b)
    n, d = a.shape

    def norm(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for j in range(d):
            m = sum(z[:, j]) / n
            var = sum((z[i, j] - m) ** 2 for i in range(n)) / (n - ddof)
            out[:, j] = [(z[i, j] - m) / math.sqrt(var + eps) for i in range(n)]
        return out

    an, bn = norm(a), norm(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(an[k, i] * bn[k, j] for k in range(n)) / n
            loss += (c - 1.0) ** 2 if i == j else lam * c**2
    return loss


def _softmax(x: list[float], temp: float) -> list[float]:
    m = max(v / temp for v in x)
    e = [math.exp(v / temp - m) for v in x]
    return [v / sum(e) for v in e]


def dino_h(t, s, center, tps: float, tpt: float) -> float:
    """DINO Alg. 1: H(t, s) = -(softmax((t - C) / tpt) * log softmax(s / tps)).sum(1).mean()."""
    t, s, c = _np(t), _np(s), _np(center).ravel()
    total = 0.0
    for b in range(t.shape[0]):
        pt = _softmax([t[b, k] - c[k] for k in range(t.shape[1])], tpt)
        ps = _softmax(list(s[b]), tps)
        total += -sum(pt[k] * math.log(ps[k]) for k in range(t.shape[1]))
    return total / t.shape[0]


def dino_algorithm1(student, teacher, center, tps: float, tpt: float) -> float:
    """H averaged over every (teacher view i, student view j != i) pair (multi-crop, as in the
    authors' code; Alg. 1 is the two-view case)."""
    pairs = [(i, j) for i in range(len(teacher)) for j in range(len(student)) if i != j]
    return sum(dino_h(teacher[i], student[j], center, tps, tpt) for i, j in pairs) / len(pairs)


# ---------------------------------------------------------------------------------------------
# BYOL / SimSiam


def _four(seed: int, n: int = 6, d: int = 5) -> list[torch.Tensor]:
    return [_randn(n, d, seed=seed + i) for i in range(4)]


def test_simsiam_matches_algorithm1_and_lightly() -> None:
    p1, p2, z1, z2 = _four(0)
    ours = symmetric_negative_cosine(p1, p2, z1, z2, "simsiam")
    assert ours.item() == pytest.approx(simsiam_algorithm1(p1, p2, z1, z2), rel=1e-6)
    ref = lightly_loss.NegativeCosineSimilarity()
    torch.testing.assert_close(ours, 0.5 * (ref(p1, z2) + ref(p2, z1)))
    torch.testing.assert_close(negative_cosine(p1, z2), ref(p1, z2))
    torch.testing.assert_close(NegativeCosineLoss("simsiam")(p1, p2, z1, z2), ours)


def test_byol_matches_equation2_and_lightly() -> None:
    q1, q2, z1, z2 = _four(10)
    ours = symmetric_negative_cosine(q1, q2, z1, z2, "byol")
    assert ours.item() == pytest.approx(byol_equation2(q1, q2, z1, z2), rel=1e-6)
    ref = lightly_loss.NegativeCosineSimilarity()
    # 2 - 2 cos per direction, summed: 4 + 2 * (lightly(q1, z2) + lightly(q2, z1))
    torch.testing.assert_close(ours, 4 + 2 * (ref(q1, z2) + ref(q2, z1)))
    torch.testing.assert_close(NegativeCosineLoss("byol")(q1, q2, z1, z2), ours)


@pytest.mark.parametrize("form, aligned, orthogonal, opposite", [
    ("simsiam", -1.0, 0.0, 1.0),
    ("byol", 0.0, 4.0, 8.0),
])  # fmt: skip
def test_negative_cosine_analytic(form: str, aligned, orthogonal, opposite) -> None:
    p = _randn(4, 3, seed=1)
    scale = torch.rand(4, 1, generator=torch.Generator().manual_seed(2)) + 0.5
    sym = lambda a, b: symmetric_negative_cosine(a, a, b, b, form).item()  # noqa: E731
    assert sym(p, p * scale) == pytest.approx(aligned, abs=1e-6)  # scale-invariant
    assert sym(p, -p) == pytest.approx(opposite, abs=1e-6)
    e = torch.eye(4)
    assert sym(e, e.roll(1, dims=1)) == pytest.approx(orthogonal, abs=1e-6)


@pytest.mark.parametrize("form", ["simsiam", "byol"])
def test_negative_cosine_stops_the_target_gradient(form: str) -> None:
    p1, p2, z1, z2 = [t.double().requires_grad_() for t in _four(20)]
    symmetric_negative_cosine(p1, p2, z1, z2, form).backward()
    assert z1.grad is None and z2.grad is None
    # the prediction gradient is that of a loss with constant targets
    p1c = p1.detach().clone().requires_grad_()
    sign, scale = (-1.0, 0.5) if form == "simsiam" else (-2.0, 1.0)
    cos = torch.nn.functional.cosine_similarity(p1c, z2.detach(), dim=1)
    (scale * sign * cos.mean()).backward()
    torch.testing.assert_close(p1.grad, p1c.grad)


def test_negative_cosine_checks() -> None:
    with pytest.raises(ConfigError):
        NegativeCosineLoss("mse")
    with pytest.raises(ConfigError):
        negative_cosine(torch.ones(2, 3), torch.ones(2, 3), form="cosine")
    with pytest.raises(ValueError):
        negative_cosine(torch.ones(2, 3), torch.ones(3, 3))


# ---------------------------------------------------------------------------------------------
# VICReg

SCALES = torch.tensor([0.3, 0.6, 1.5, 2.0, 0.9])  # some dims below std 1 (hinge active), some above


@pytest.mark.parametrize("lam, mu, nu", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
def test_vicreg_matches_algorithm1(lam: float, mu: float, nu: float) -> None:
    z_a = _randn(8, 5, seed=3, scale=SCALES)
    z_b = z_a + _randn(8, 5, seed=4, scale=0.3)
    expected = vicreg_algorithm1(z_a, z_b, lam, mu, nu)
    # Alg. 1 sums the two variance hinges, we average them (authors' code): mu_ours = 2 mu
    ours = vicreg_loss(z_a, z_b, sim_coeff=lam, std_coeff=2 * mu, cov_coeff=nu)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (2.0, 7.0, 3.0)])
def test_vicreg_matches_lightly(coeffs) -> None:
    z_a = _randn(16, 8, seed=5, scale=0.7)
    z_b = _randn(16, 8, seed=6, scale=1.3)
    lam, mu, nu = coeffs
    ref = lightly_loss.VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu, eps=1e-4)
    torch.testing.assert_close(vicreg_loss(z_a, z_b, lam, mu, nu), ref(z_a, z_b))
    torch.testing.assert_close(VICRegLoss(lam, mu, nu)(z_a, z_b), ref(z_a, z_b))


def test_vicreg_analytic_whitened_identical_and_collapsed() -> None:
    # Hadamard columns 1..4 are centred and orthogonal: zero covariance; scaled to an unbiased
    # std of 2 (> 1) the hinge is inactive, so identical views give exactly 0.
    h = torch.tensor(hadamard(8), dtype=torch.float64)[:, 1:5]
    z = h * 2.0 * math.sqrt(7 / 8)  # column var: 4 * 7/8 * 8 / 7 = 4
    assert vicreg_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)
    # collapse: constant rows -> std = sqrt(eps) = 0.01, hinge 0.99 per branch, nothing else
    c = torch.ones(8, 4, dtype=torch.float64) * 3.0
    assert vicreg_loss(c, c).item() == pytest.approx(25 * 0.99, rel=1e-12)
    # two identical columns of variance v: off-diagonals v, v -> c(Z) = 2 v^2 / 2 per branch
    col = torch.tensor([1.0, -2.0, 0.5, 0.5], dtype=torch.float64)
    dup = torch.stack([col, col], dim=1)
    v = float(col.var())
    loss = vicreg_loss(dup, dup, sim_coeff=0, std_coeff=0, cov_coeff=1)
    assert loss.item() == pytest.approx(2 * v**2, rel=1e-12)
    # invariance: mse of a constant shift
    shifted = vicreg_loss(z, z + 0.5, sim_coeff=1, std_coeff=0, cov_coeff=0)
    assert shifted.item() == pytest.approx(0.25, rel=1e-12)


def test_vicreg_gradcheck() -> None:
    z_a = _randn(5, 3, seed=7, scale=torch.tensor([0.5, 1.5, 0.8])).double().requires_grad_()
    z_b = _randn(5, 3, seed=8).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b, 2.0, 3.0, 1.5), (z_a, z_b))


def test_vicreg_checks() -> None:
    with pytest.raises(ConfigError):
        VICRegLoss(std_coeff=-1)
    with pytest.raises(ConfigError):
        VICRegLoss(eps=0)
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError):
        vicreg_loss(torch.ones(4, 3), torch.ones(4, 2))


# ---------------------------------------------------------------------------------------------
# Barlow Twins


@pytest.mark.parametrize("lam", [5.1e-3, 0.5])
def test_barlow_matches_algorithm1(lam: float) -> None:
    z_a = _randn(7, 4, seed=9, scale=torch.tensor([0.5, 2.0, 1.0, 3.0]))
    z_b = z_a + _randn(7, 4, seed=10, scale=0.5)
    expected = barlow_algorithm1(z_a, z_b, lam)
    assert barlow_twins_loss(z_a, z_b, lam).item() == pytest.approx(expected, rel=1e-5)


def test_barlow_matches_lightly() -> None:
    z_a, z_b = _randn(16, 8, seed=11), _randn(16, 8, seed=12, scale=2.0)
    # lightly's default lambda is 5e-3; the paper's (and ours) 5.1e-3
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=5.1e-3)
    torch.testing.assert_close(barlow_twins_loss(z_a, z_b), ref(z_a, z_b))
    torch.testing.assert_close(BarlowTwinsLoss()(z_a, z_b), ref(z_a, z_b))
    ref2 = lightly_loss.BarlowTwinsLoss(lambda_param=0.3)
    torch.testing.assert_close(barlow_twins_loss(z_a, z_b, 0.3), ref2(z_a, z_b))


def test_barlow_analytic_cases() -> None:
    # Hadamard columns: centred, orthogonal, biased variance 1 -> standardised = themselves
    h = torch.tensor(hadamard(8), dtype=torch.float64)
    a = h[:, [1, 2]]
    shrink = 1 / math.sqrt(1 + 1e-5)  # BatchNorm's eps: C_ii = 1 / (1 + eps)
    lam = 0.1
    # identical views, decorrelated dims: C = I (up to eps) -> 0
    assert barlow_twins_loss(a, a, lam).item() == pytest.approx(2 * (1 - shrink**2) ** 2)
    assert barlow_twins_loss(a, a, lam).item() < 1e-9
    # one anti-correlated dim: C = diag(1, -1) -> (1 - (-1))^2 = 4
    flipped = a * torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert barlow_twins_loss(a, flipped, lam).item() == pytest.approx(4.0, rel=1e-4)
    # swapped dims: C = [[0, 1], [1, 0]] -> on-diagonal 2, off-diagonal 2 lambda
    assert barlow_twins_loss(a, a.flip(1), lam).item() == pytest.approx(2 + 2 * lam, rel=1e-4)
    # orthogonal views: C = 0 -> D = 2
    assert barlow_twins_loss(a, h[:, [3, 4]], lam).item() == pytest.approx(2.0, rel=1e-9)
    # invariant to a positive affine map of each dimension of one view
    z_a, z_b = _randn(9, 3, seed=13), _randn(9, 3, seed=14)
    affine = z_b * torch.tensor([2.0, 0.5, 7.0]) + torch.tensor([1.0, -3.0, 0.2])
    torch.testing.assert_close(barlow_twins_loss(z_a, affine), barlow_twins_loss(z_a, z_b))


def test_barlow_gradcheck() -> None:
    z_a = _randn(5, 3, seed=15).double().requires_grad_()
    z_b = _randn(5, 3, seed=16).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.2), (z_a, z_b))


def test_barlow_checks() -> None:
    with pytest.raises(ConfigError):
        BarlowTwinsLoss(lambda_offdiag=-0.1)
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.ones(1, 3), torch.ones(1, 3))


# ---------------------------------------------------------------------------------------------
# DINO

K = 6


def _dino_outputs(n_global: int, n_local: int, seed: int, batch: int = 4):
    teacher = [_randn(batch, K, seed=seed + i) for i in range(n_global)]
    student = [_randn(batch, K, seed=seed + 100 + i) for i in range(n_global + n_local)]
    return student, teacher


@pytest.mark.parametrize("n_global, n_local", [(2, 0), (2, 3), (1, 2)])
@pytest.mark.parametrize("tps, tpt", [(0.1, 0.04), (0.2, 0.07)])
def test_dino_matches_algorithm1(n_global: int, n_local: int, tps: float, tpt: float) -> None:
    student, teacher = _dino_outputs(n_global, n_local, seed=n_local)
    center = _randn(1, K, seed=50, scale=0.3)
    expected = dino_algorithm1(student, teacher, center, tps, tpt)
    ours = dino_loss(student, teacher, center, student_temp=tps, teacher_temp=tpt)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_dino_two_views_is_algorithm1_symmetric_form() -> None:
    student, teacher = _dino_outputs(2, 0, seed=60)
    center = _randn(K, seed=61, scale=0.2)
    h1 = dino_h(teacher[0], student[1], center, 0.1, 0.04)  # Alg. 1's default temperatures
    h2 = dino_h(teacher[1], student[0], center, 0.1, 0.04)
    expected = h1 / 2 + h2 / 2
    assert dino_loss(student, teacher, center).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n_local", [0, 4])
def test_dino_matches_lightly_loss_and_center(n_local: int) -> None:
    student, teacher = _dino_outputs(2, n_local, seed=70)
    ours = DINOLoss(K, student_temp=0.1, teacher_temp=0.06, warmup_teacher_temp=0.06)
    ref = lightly_loss.DINOLoss(
        output_dim=K, warmup_teacher_temp=0.06, teacher_temp=0.06, student_temp=0.1
    )
    start = _randn(1, K, seed=71, scale=0.5)
    ours.center.copy_(start)
    ref.center.copy_(start.view(1, 1, K))  # lightly keeps (1, 1, K)
    expected = ref(teacher, student, teacher_temp=0.06)  # note lightly's (teacher, student) order
    torch.testing.assert_close(ours(student, teacher, step=0), expected)
    torch.testing.assert_close(ours.center, ref.center.view(1, K))  # both updated the centre
    assert not torch.allclose(ours.center, start)


def test_dino_analytic_cases() -> None:
    # uniform teacher (outputs equal to the centre) and uniform student: CE = log K
    zeros = [torch.zeros(3, K) for _ in range(3)]
    centre = torch.full((K,), 2.0)
    teacher = [t + 2.0 for t in zeros[:2]]
    assert dino_loss(zeros, teacher, centre).item() == pytest.approx(math.log(K), rel=1e-6)
    # student logits matched to the other view's teacher distribution: CE = its entropy, and
    # zero gradient (the student sits at the minimum)
    t1, t2 = _randn(3, K, seed=80).double(), _randn(3, K, seed=81).double()
    c = _randn(K, seed=82, scale=0.2).double()
    tps, tpt = 0.1, 0.04
    s1 = ((t2 - c) * tps / tpt).requires_grad_()  # matches teacher view 2
    s2 = ((t1 - c) * tps / tpt).requires_grad_()  # matches teacher view 1
    loss = dino_loss([s1, s2], [t1, t2], c, tps, tpt)
    q1, q2 = ((t - c) / tpt for t in (t1, t2))
    entropy = lambda q: -(q.softmax(1) * q.log_softmax(1)).sum(1).mean()  # noqa: E731
    expected = 0.5 * (entropy(q1) + entropy(q2))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(s1.grad, torch.zeros_like(s1), atol=1e-12, rtol=0)


def test_dino_gradients_only_reach_the_student() -> None:
    student, teacher = _dino_outputs(2, 2, seed=90)
    student = [s.double().requires_grad_() for s in student]
    teacher = [t.double().requires_grad_() for t in teacher]
    center = torch.zeros(1, K, dtype=torch.float64, requires_grad=True)
    dino_loss(student, teacher, center).backward()
    assert all(t.grad is None for t in teacher) and center.grad is None
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert torch.autograd.gradcheck(
        lambda *s: dino_loss(list(s), [t.detach() for t in teacher], center.detach(), 0.2, 0.1),
        tuple(student),
    )


def test_dino_center_update_and_state_dict() -> None:
    loss = DINOLoss(K, center_momentum=0.8)
    assert "center" in loss.state_dict() and loss.center.shape == (1, K)
    teacher = [_randn(4, K, seed=100), _randn(4, K, seed=101)]
    loss.update_center(teacher)
    mean = torch.cat(teacher).mean(0, keepdim=True)
    torch.testing.assert_close(loss.center, 0.2 * mean)
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, 0.8 * 0.2 * mean + 0.2 * mean)
    restored = DINOLoss(K)
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored.center, loss.center)
    # forward without updating leaves the centre alone
    before = loss.center.clone()
    loss([t + 1 for t in teacher], teacher, step=5, update_center=False)
    assert torch.equal(loss.center, before)


def test_dino_teacher_temperature_schedule() -> None:
    loss = DINOLoss(K, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=10)
    assert loss.teacher_temperature(0) == pytest.approx(0.04)
    assert loss.teacher_temperature(5) == pytest.approx(0.055)
    assert loss.teacher_temperature(10) == pytest.approx(0.07)
    assert loss.teacher_temperature(10_000) == pytest.approx(0.07)
    assert dino_teacher_temperature(3) == 0.04  # paper default: no warm-up
    # the forward uses the scheduled temperature
    student, teacher = _dino_outputs(2, 1, seed=110)
    expected = dino_loss(student, teacher, loss.center, 0.1, 0.055)
    torch.testing.assert_close(loss(student, teacher, step=5, update_center=False), expected)


def test_dino_checks() -> None:
    with pytest.raises(ConfigError):
        DINOLoss(K, teacher_temp=0.0)
    with pytest.raises(ConfigError):
        DINOLoss(K, center_momentum=1.0)
    with pytest.raises(ConfigError):
        DINOLoss(0)
    x = torch.zeros(2, K)
    with pytest.raises(ValueError):
        dino_loss([x], [x], torch.zeros(K))  # one view: no cross-view pair
    with pytest.raises(ValueError):
        dino_loss([x, x], [x, x, x], torch.zeros(K))  # more teacher than student views
    with pytest.raises(ValueError):
        dino_loss([x, torch.zeros(3, K)], [x], torch.zeros(K))


# ---------------------------------------------------------------------------------------------
# precision


def _all_losses(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    return [
        symmetric_negative_cosine(a, b, b, a),
        vicreg_loss(a, b),
        barlow_twins_loss(a, b),
        dino_loss([a, b], [b, a], torch.zeros(a.shape[1])),
    ]


def test_low_precision_inputs_and_autocast_give_float32() -> None:
    a, b = _randn(8, 16, seed=120), _randn(8, 16, seed=121)
    full = _all_losses(a, b)
    for low, ref in zip(_all_losses(a.bfloat16(), b.bfloat16()), full, strict=True):
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(ref.item(), rel=5e-2, abs=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = _all_losses(a, b)
    for value, ref in zip(inside, full, strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
