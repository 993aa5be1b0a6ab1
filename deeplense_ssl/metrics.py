"""Pure metrics: ROC-AUC (per class, macro, micro), bootstrap intervals, kNN, OOD, accuracy.

Arrays in (NumPy or torch), floats and dicts out; no files, no models. The demo, the
benchmarks, :mod:`deeplense_ssl.evaluation`, the fine-tuning validation and the pretraining kNN
monitor call them in-process. This module imports no training or evaluation code.

Conventions (see ``docs/ARCHITECTURE.md`` and the evaluation mistakes listed in DOMAIN.md):

* one-vs-rest ROC-AUC, identical to ``sklearn.metrics.roc_auc_score(..., multi_class="ovr")``;
  *macro* is the unweighted mean of the per-class AUCs, *micro* pools every (image, class)
  pair of the one-hot labels and the probabilities into one binary problem;
* two classes (lens vs non-lens): there is one AUC (``roc_auc_score(y, probs[:, 1])``); both
  one-vs-rest AUCs equal it, so ``macro`` equals it and ``micro`` is not reported;
* intervals: stratified percentile bootstrap over test images, with the number of resamples
  and how many of them gave a defined value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

# --------------------------------------------------------------------------------------------
# ROC-AUC
# --------------------------------------------------------------------------------------------


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of one binary problem, via the Mann-Whitney U statistic.

    Equal to the trapezoidal area under the empirical ROC curve (ties count one half), which
    is what ``sklearn.metrics.roc_auc_score`` computes.

    Args:
        y_true: (N,) booleans or 0/1, True for the positive class.
        score: (N,) real scores, larger meaning "more positive".

    Returns:
        The AUC in [0, 1], or NaN when only one of the two classes is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=bool)
    out[np.arange(len(labels)), labels] = True
    return out


def _check_scores(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> None:
    if probs.ndim != 2 or probs.shape != (len(labels), num_classes):
        raise ValueError(
            f"probs must have shape (N={len(labels)}, C={num_classes}), got {probs.shape}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}).")


def roc_auc_report(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """One-vs-rest ROC-AUC per class, macro and micro.

    Args:
        labels: (N,) int class indices into ``class_names``.
        probs: (N, C) class scores (softmax probabilities), C = ``len(class_names)``.
        class_names: names in label order.

    Returns:
        ``{"per_class": {name: auc}, "macro": float, "micro": float | None, "binary": bool,
        "auc": float (binary only), "positive_class": str (binary only),
        "classes_without_positives": [...]}``. A class absent from ``labels`` has AUC ``None``
        and is left out of the macro mean (which is then over the classes present).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    _check_scores(labels, probs, c)
    onehot = _one_hot(labels, c)
    per_class = {name: binary_auc(onehot[:, k], probs[:, k]) for k, name in enumerate(class_names)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    out: dict[str, Any] = {
        "per_class": {k: (None if math.isnan(v) else v) for k, v in per_class.items()},
        "classes_without_positives": [n for n, v in per_class.items() if math.isnan(v)],
        "binary": c == 2,
    }
    if c == 2:
        auc = binary_auc(labels == 1, probs[:, 1])
        out.update(
            auc=None if math.isnan(auc) else auc,
            macro=None if math.isnan(auc) else auc,
            micro=None,
            positive_class=class_names[1],
        )
        return out
    out["macro"] = float(np.mean(defined)) if defined else None
    micro = binary_auc(onehot.ravel(), probs.ravel())
    out["micro"] = None if math.isnan(micro) else micro
    return out


def roc_curves(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """ROC curve points per class (one-vs-rest), macro average and micro average, for plotting.

    The macro curve averages the per-class true-positive rates on the union of their
    false-positive rates (linear interpolation), as in the scikit-learn ROC example.

    Returns:
        ``{name | "macro" | "micro": {"fpr": [...], "tpr": [...]}}``; classes without
        positives or negatives are left out. Binary tasks give one curve, under the positive
        class name.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    onehot = _one_hot(labels, c)
    curves: dict[str, dict[str, list[float]]] = {}
    ks = [1] if c == 2 else range(c)
    for k in ks:
        y = onehot[:, k]
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, k])
        curves[class_names[k]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    if c > 2 and curves:
        grid = np.unique(np.concatenate([np.asarray(v["fpr"]) for v in curves.values()]))
        mean_tpr = np.mean([np.interp(grid, v["fpr"], v["tpr"]) for v in curves.values()], axis=0)
        curves["macro"] = {"fpr": grid.tolist(), "tpr": mean_tpr.tolist()}
        if onehot.any() and not onehot.all():
            fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
            curves["micro"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return curves


# --------------------------------------------------------------------------------------------
# Classification metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def f1_scores(cm: np.ndarray) -> dict[str, float]:
    """F1 macro (mean over classes present in labels or predictions) and micro from a confusion
    matrix (rows true, columns predicted). Micro F1 equals accuracy for single-label tasks."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
    macro = float(f1[present].mean()) if present.any() else float("nan")
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom > 0 else float("nan")
    return {"f1_macro": macro, "f1_micro": micro}


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of images whose true class is among the ``k`` highest scores (ties: lower
    index first, like ``np.argsort`` on the negated scores)."""
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float(np.mean((order == np.asarray(labels)[:, None]).any(axis=1)))


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, top-k accuracy (k = 2..min(5, C-1)), F1 macro/micro and the confusion matrix.

    Args:
        labels: (N,) int class indices.
        probs: (N, C) class scores; the prediction is the arg-max.
        class_names: names in label order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    _check_scores(labels, probs, c)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, c)
    out: dict[str, Any] = {"accuracy": float(np.mean(preds == labels)) if len(labels) else None}
    out["top_k_accuracy"] = {
        str(k): top_k_accuracy(labels, probs, k) for k in range(2, min(5, c - 1) + 1)
    }
    out.update(f1_scores(cm))
    out["confusion_matrix"] = cm.tolist()
    return out


def scalar_metrics(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """The flat scalar metrics that get bootstrap intervals: ``auc_macro``, ``auc_micro``,
    ``auc/<class>``, ``accuracy``, ``f1_macro``. Undefined values are NaN."""
    auc = roc_auc_report(labels, probs, class_names)
    preds = np.asarray(probs).argmax(axis=1)
    cm = confusion_matrix(labels, preds, len(class_names))
    out = {"auc_macro": auc["macro"], "accuracy": float(np.mean(preds == labels))}
    if not auc["binary"]:
        out["auc_micro"] = auc["micro"]
        for name, value in auc["per_class"].items():
            out[f"auc/{name}"] = value
    out["f1_macro"] = f1_scores(cm)["f1_macro"]
    return {k: float("nan") if v is None else float(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap confidence intervals of every value ``metric_fn`` returns.

    Each resample draws test images with replacement; with ``stratified=True`` it draws
    within each class as many images as the class has, so class counts (and therefore the
    defined-ness of per-class AUCs) are preserved. Without stratification a resample can miss
    a class; values that come out NaN are dropped and counted.

    Args:
        labels: (N,) int class indices.
        probs: (N, C) scores, passed through to ``metric_fn`` row-aligned with ``labels``.
        metric_fn: ``(labels, probs) -> {name: float}``; NaN marks an undefined value.
        n_bootstrap: number of resamples (0: point estimates only).
        ci_level: central coverage, e.g. 0.95 -> 2.5th and 97.5th percentiles.
        seed: seed of the NumPy generator (deterministic intervals).
        stratified: resample within classes.

    Returns:
        ``{name: {"point", "lower", "upper", "n_resamples", "n_valid", "level"}}``;
        ``lower``/``upper`` are None when no resample gave a defined value.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs)
    point = metric_fn(labels, probs)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratified else None
    samples = {k: np.full(n_bootstrap, np.nan) for k in point}
    n = len(labels)
    for b in range(n_bootstrap):
        if groups is not None:
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        else:
            idx = rng.integers(0, n, n)
        values = metric_fn(labels[idx], probs[idx])
        for k in samples:
            samples[k][b] = values.get(k, np.nan)
    alpha = (1.0 - ci_level) / 2.0
    out: dict[str, dict[str, Any]] = {}
    for k, v in point.items():
        valid = samples[k][np.isfinite(samples[k])]
        lower = upper = None
        if valid.size:
            lo, hi = np.percentile(valid, [100 * alpha, 100 * (1 - alpha)])
            lower, upper = float(lo), float(hi)
        out[k] = {
            "point": None if v is None or not np.isfinite(v) else float(v),
            "lower": lower,
            "upper": upper,
            "n_resamples": int(n_bootstrap),
            "n_valid": int(valid.size),
            "level": float(ci_level),
        }
    return out


# --------------------------------------------------------------------------------------------
# kNN on embeddings and out-of-distribution scores
# --------------------------------------------------------------------------------------------


def knn_predict(
    train_emb: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    query_emb: torch.Tensor | np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-nearest-neighbour classification (Wu et al. 2018; DINO ``eval_knn``).

    Embeddings are L2-normalised; for each query the ``k`` most cosine-similar TRAIN
    embeddings vote for their class with weight ``exp(similarity / temperature)``.

    Args:
        train_emb: (N_train, D) embeddings of labelled training images.
        train_labels: (N_train,) int class indices.
        query_emb: (N_query, D) embeddings to classify.
        k: neighbours (capped at N_train).
        temperature: softmax temperature of the vote weights (dimensionless, e.g. 0.07).
        num_classes: C; default ``max(train_labels) + 1``.
        chunk_size: queries processed at once (memory: chunk_size x N_train floats).

    Returns:
        ``(preds, scores)``: (N_query,) int64 predicted classes and (N_query, C) float32 vote
        totals normalised to sum to one per query.
    """
    train = torch.as_tensor(train_emb, dtype=torch.float32)
    query = torch.as_tensor(query_emb, dtype=torch.float32, device=train.device)
    tl = torch.as_tensor(train_labels, dtype=torch.int64, device=train.device)
    if train.ndim != 2 or query.ndim != 2 or train.shape[1] != query.shape[1]:
        raise ValueError(f"embeddings must be (N, D) with equal D: {train.shape}, {query.shape}.")
    if len(train) == 0:
        raise ValueError("knn_predict needs at least one training embedding.")
    c = int(num_classes) if num_classes is not None else int(tl.max()) + 1
    k = min(int(k), len(train))
    train = torch.nn.functional.normalize(train, dim=1)
    query = torch.nn.functional.normalize(query, dim=1)
    scores = torch.zeros(len(query), c, dtype=torch.float32, device=train.device)
    for start in range(0, len(query), chunk_size):
        q = query[start : start + chunk_size]
        sim, idx = (q @ train.T).topk(k, dim=1)
        # exp(s/T) / sum = exp((s - s_max)/T) / sum: subtracting the row maximum changes
        # nothing after normalisation but keeps exp finite for small temperatures
        weights = ((sim - sim[:, :1]) / temperature).exp()
        scores[start : start + len(q)].scatter_add_(1, tl[idx], weights)
    scores = scores / scores.sum(dim=1, keepdim=True)
    return scores.argmax(dim=1), scores


def ood_auroc(in_probs: np.ndarray, ood_probs: np.ndarray) -> dict[str, Any]:
    """How well the max-softmax score separates in-distribution from unseen-class images
    (Hendrycks & Gimpel 2017). In-distribution is the positive class.

    Args:
        in_probs: (N_in, C) probabilities of test images of the training classes.
        ood_probs: (N_ood, C) probabilities of images of held-out classes.
    """
    s_in = np.asarray(in_probs).max(axis=1)
    s_ood = np.asarray(ood_probs).max(axis=1)
    y = np.concatenate([np.ones(len(s_in), bool), np.zeros(len(s_ood), bool)])
    auc = binary_auc(y, np.concatenate([s_in, s_ood]))
    return {
        "score": "max_softmax",
        "auroc": None if math.isnan(auc) else auc,
        "n_in": int(len(s_in)),
        "n_ood": int(len(s_ood)),
        "mean_max_softmax_in": float(s_in.mean()) if len(s_in) else None,
        "mean_max_softmax_ood": float(s_ood.mean()) if len(s_ood) else None,
    }


# --------------------------------------------------------------------------------------------
# Attribution localisation
# --------------------------------------------------------------------------------------------


def attribution_localisation(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """How much attribution falls on the true substructure, against a random map.

    For each image, the fraction of ``|attribution|`` mass inside its mask; a map that does not
    depend on the image (uniform, or random with no spatial preference) puts the mask's area
    fraction there on average, which is the baseline.

    Args:
        maps: ``(N, H, W)`` attribution maps (any sign; absolute values are used).
        masks: ``(N, H, W)`` booleans, the pixels near the substructure of each image.

    Returns:
        ``{"fraction": mean mass fraction inside the masks, "random": mean area fraction of the
        masks, "ratio": fraction / random, "n": images}``; a ratio above 1 means the model looks
        at the substructure more than a random map would. Images whose map is all zero are
        skipped.
    """
    maps = np.abs(np.asarray(maps, dtype=np.float64))
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps and masks must both be (N, H, W), got {maps.shape}, {masks.shape}")
    total = maps.sum(axis=(1, 2))
    ok = total > 0
    if not ok.any():
        return {"fraction": float("nan"), "random": float("nan"), "ratio": float("nan"), "n": 0}
    inside = (maps * masks).sum(axis=(1, 2))[ok] / total[ok]
    area = masks.mean(axis=(1, 2))[ok]
    fraction, random = float(inside.mean()), float(area.mean())
    return {"fraction": fraction, "random": random, "ratio": fraction / random, "n": int(ok.sum())}
