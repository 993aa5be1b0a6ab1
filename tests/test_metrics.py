"""Pure metric maths against scikit-learn, slow loop references and analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.neighbors import KNeighborsClassifier

from deeplense_ssl.metrics import (
    binary_auc,
    bootstrap_ci,
    classification_metrics,
    knn_predict,
    ood_auroc,
    roc_auc_report,
    roc_curves,
    scalar_metrics,
)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(n=120, c=3, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c)) + 1.2 * np.eye(c)[y]
    if ties:
        logits = np.round(logits)  # few distinct rows: many tied scores
    return y, _softmax(logits)


def _auc_pairs(y, s):
    """Slow reference: P(score_pos > score_neg) + 0.5 P(tie) over all pairs."""
    pos, neg = s[y], s[~y]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def _auc_trapezoid(y, s):
    """Slow reference: ROC points at every distinct threshold, trapezoid area."""
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tpr.append((pred & y).sum() / y.sum())
        fpr.append((pred & ~y).sum() / (~y).sum())
    return float(sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr))))


@pytest.mark.parametrize("ties", [False, True])
def test_binary_auc_matches_sklearn_and_slow_references(ties):
    y, p = _scores(80, 3, seed=1, ties=ties)
    yb, s = y == 0, p[:, 0]
    got = binary_auc(yb, s)
    assert got == pytest.approx(skm.roc_auc_score(yb, s), abs=1e-12)
    assert got == pytest.approx(_auc_pairs(yb, s), abs=1e-12)
    assert got == pytest.approx(_auc_trapezoid(yb, s), abs=1e-12)


def test_binary_auc_analytic_cases():
    y = np.array([0, 0, 1, 1], bool)
    assert binary_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert binary_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert binary_auc(y, np.full(4, 0.3)) == 0.5
    assert np.isnan(binary_auc(np.ones(4, bool), np.arange(4.0)))


@pytest.mark.parametrize("c", [3, 5])
def test_roc_auc_report_matches_sklearn_macro_micro_per_class(c):
    y, p = _scores(150, c, seed=c, ties=True)
    names = [f"k{i}" for i in range(c)]
    rep = roc_auc_report(y, p, names)
    assert rep["macro"] == pytest.approx(
        skm.roc_auc_score(y, p, average="macro", multi_class="ovr"), abs=1e-12
    )
    onehot = np.eye(c)[y]
    assert rep["micro"] == pytest.approx(skm.roc_auc_score(onehot, p, average="micro"), abs=1e-12)
    per = skm.roc_auc_score(onehot, p, average=None)
    assert [rep["per_class"][n] for n in names] == pytest.approx(per.tolist(), abs=1e-12)
    assert rep["macro"] != pytest.approx(rep["micro"], abs=1e-6)  # they are different things


def test_binary_task_has_one_auc():
    y, p = _scores(60, 2, seed=3)
    rep = roc_auc_report(y, p, ["non_lens", "lens"])
    want = skm.roc_auc_score(y, p[:, 1])
    assert rep["binary"] and rep["positive_class"] == "lens"
    assert rep["auc"] == pytest.approx(want, abs=1e-12)
    assert rep["macro"] == rep["auc"] and rep["micro"] is None
    # both one-vs-rest AUCs of softmax outputs equal the one AUC
    assert rep["per_class"]["non_lens"] == pytest.approx(want, abs=1e-12)
    curves = roc_curves(y, p, ["non_lens", "lens"])
    assert list(curves) == ["lens"]


def test_class_absent_from_test_set():
    y, p = _scores(90, 3, seed=4)
    keep = y != 2
    rep = roc_auc_report(y[keep], p[keep], ["a", "b", "c"])
    assert rep["per_class"]["c"] is None and rep["classes_without_positives"] == ["c"]
    per = [skm.roc_auc_score(y[keep] == k, p[keep, k]) for k in (0, 1)]
    assert rep["macro"] == pytest.approx(np.mean(per), abs=1e-12)


def test_roc_curves_integrate_to_the_auc():
    y, p = _scores(100, 3, seed=5, ties=True)
    names = ["a", "b", "c"]
    rep, curves = roc_auc_report(y, p, names), roc_curves(y, p, names)
    for n in names:
        assert np.trapezoid(curves[n]["tpr"], curves[n]["fpr"]) == pytest.approx(
            rep["per_class"][n], abs=1e-12
        )
    assert np.trapezoid(curves["micro"]["tpr"], curves["micro"]["fpr"]) == pytest.approx(
        rep["micro"], abs=1e-12
    )
    assert curves["macro"]["fpr"][0] == 0.0 and curves["macro"]["tpr"][-1] == 1.0


def test_classification_metrics_match_sklearn():
    y, p = _scores(200, 4, seed=6)
    m = classification_metrics(y, p, list("abcd"))
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    for k in (2, 3):
        assert m["top_k_accuracy"][str(k)] == pytest.approx(
            skm.top_k_accuracy_score(y, p, k=k, labels=range(4))
        )
    assert set(m["top_k_accuracy"]) == {"2", "3"}


def test_bootstrap_perfect_classifier_has_degenerate_interval():
    y = np.repeat(np.arange(3), 10)
    p = np.eye(3)[y] * 0.9 + 0.05
    ci = bootstrap_ci(y, p, lambda a, b: scalar_metrics(a, b, list("abc")), n_bootstrap=50)
    assert ci["auc_macro"]["lower"] == ci["auc_macro"]["upper"] == 1.0
    assert ci["accuracy"]["n_valid"] == 50 and ci["accuracy"]["n_resamples"] == 50


def test_bootstrap_stratified_keeps_class_counts_and_is_seeded():
    y = np.array([0] * 3 + [1] * 7 + [2] * 2)
    p = np.full((len(y), 3), 1 / 3)

    def counts(a, _):
        return {f"n{k}": float((a == k).sum()) for k in range(3)}

    ci = bootstrap_ci(y, p, counts, n_bootstrap=30, stratified=True)
    for k, n in enumerate((3, 7, 2)):
        assert ci[f"n{k}"]["lower"] == ci[f"n{k}"]["upper"] == n
    y2, p2 = _scores(40, 3, seed=7)

    def fn(a, b):
        return scalar_metrics(a, b, list("abc"))

    a = bootstrap_ci(y2, p2, fn, n_bootstrap=40, seed=3)
    b = bootstrap_ci(y2, p2, fn, n_bootstrap=40, seed=3)
    c = bootstrap_ci(y2, p2, fn, n_bootstrap=40, seed=4)
    assert a == b and a != c


def test_bootstrap_unstratified_drops_resamples_missing_a_class():
    y = np.array([0] * 9 + [1])  # a resample misses class 1 with probability 0.9**10 ~ 35%
    rng = np.random.default_rng(0)
    p = _softmax(rng.standard_normal((10, 2)))
    ci = bootstrap_ci(
        y, p, lambda a, b: scalar_metrics(a, b, ["x", "y"]), n_bootstrap=200, stratified=False
    )
    auc = ci["auc_macro"]
    assert 80 < auc["n_valid"] < 190 and auc["n_resamples"] == 200
    assert 0.0 <= auc["lower"] <= auc["upper"] <= 1.0
    assert ci["accuracy"]["n_valid"] == 200  # accuracy is defined on every resample


def test_bootstrap_interval_width_matches_binomial_theory():
    # accuracy of n independent hits with probability q: sd = sqrt(q (1 - q) / n)
    n, q = 400, 0.8
    rng = np.random.default_rng(1)
    y = np.zeros(n, np.int64)
    hit = rng.random(n) < q
    p = np.where(hit[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    ci = bootstrap_ci(
        y, p, lambda a, b: {"acc": float((b.argmax(1) == a).mean())}, n_bootstrap=1000
    )["acc"]
    acc = hit.mean()
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert ci["upper"] - ci["lower"] == pytest.approx(2 * half, rel=0.15)
    assert ci["lower"] < acc < ci["upper"]


def _knn_slow(train, tl, query, k, t, c):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    preds, scores = [], []
    for q in query:
        sims = train @ q
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(c)
        for j in order:
            votes[tl[j]] += np.exp(sims[j] / t)
        preds.append(votes.argmax())
        scores.append(votes / votes.sum())
    return np.array(preds), np.array(scores)


def test_knn_predict_matches_slow_loop_and_1nn():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((50, 8)).astype(np.float32)
    tl = rng.integers(0, 3, 50)
    query = rng.standard_normal((17, 8)).astype(np.float32)
    pred, scores = knn_predict(train, tl, query, k=7, temperature=0.1, num_classes=3, chunk_size=5)
    want_pred, want_scores = _knn_slow(train, tl, query, 7, 0.1, 3)
    assert np.array_equal(pred.numpy(), want_pred)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-4, atol=1e-6)
    one = KNeighborsClassifier(1, metric="cosine").fit(train, tl).predict(query)
    assert np.array_equal(knn_predict(train, tl, query, k=1, num_classes=3)[0].numpy(), one)


def test_knn_small_temperature_stays_finite():
    train = torch.eye(4)
    _, scores = knn_predict(train, torch.arange(4), train, k=4, temperature=1e-3)
    assert torch.isfinite(scores).all()
    assert torch.equal(scores.argmax(1), torch.arange(4))


def test_ood_auroc_matches_sklearn():
    rng = np.random.default_rng(3)
    p_in = _softmax(3 * rng.standard_normal((30, 3)))
    p_ood = _softmax(0.5 * rng.standard_normal((20, 3)))
    got = ood_auroc(p_in, p_ood)
    y = np.r_[np.ones(30), np.zeros(20)]
    s = np.r_[p_in.max(1), p_ood.max(1)]
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert got["n_in"] == 30 and got["n_ood"] == 20


def test_attribution_localisation_analytic_cases():
    from deeplense_ssl.metrics import attribution_localisation

    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True  # a quarter of the image
    on_target = attribution_localisation(masks.astype(float), masks)
    assert on_target["fraction"] == 1.0 and on_target["random"] == 0.25
    assert on_target["ratio"] == 4.0 and on_target["n"] == 2
    uniform = attribution_localisation(-np.ones((2, 4, 4)), masks)  # signs do not matter
    assert uniform["fraction"] == pytest.approx(0.25) and uniform["ratio"] == pytest.approx(1.0)
    off = attribution_localisation((~masks).astype(float), masks)
    assert off["fraction"] == 0.0
    empty = attribution_localisation(np.zeros((1, 4, 4)), masks[:1])
    assert empty["n"] == 0 and np.isnan(empty["ratio"])
    with pytest.raises(ValueError, match="N, H, W"):
        attribution_localisation(np.zeros((4, 4)), masks[0])
