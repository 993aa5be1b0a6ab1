"""Scores -> metrics: ROC-AUC (per class, macro, micro) with bootstrap intervals, kNN, accuracy.

The metric functions are pure (NumPy / torch arrays in, floats and dicts out) so the demo,
the benchmarks and the tests can call them in-process. :func:`evaluate` is the thin wrapper
behind ``deeplense-ssl evaluate``: it loads a fine-tuned run and a test set, computes every
number once and writes ``metrics.json`` plus the per-image ``scores.npz`` (``probs``,
``labels``, ``sources``, ``embeddings``) from which anyone can recompute them, and
``examples.npz`` (a few images per class and their nearest test neighbours) for the report.

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

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from . import __version__
from .config import EvaluateConfig, config_to_dict
from .errors import DataError
from .io import atomic_output, write_text_atomic

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
    from sklearn.metrics import roc_curve

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
# The evaluate command
# --------------------------------------------------------------------------------------------


def scores_path_for(metrics_path: str | Path, kind: str = "scores") -> Path:
    """Where the per-image arrays of a metrics file go: ``scores.npz``/``examples.npz`` beside
    a file named ``metrics.json``, ``<stem>.scores.npz`` beside any other name."""
    p = Path(metrics_path)
    if p.name == "metrics.json":
        return p.with_name(f"{kind}.npz")
    return p.with_name(f"{p.stem}.{kind}.npz")


def _map_labels(
    data: Any, model_classes: list[str], ood_classes: Sequence[str], data_path: str
) -> tuple[np.ndarray, np.ndarray]:
    """Map dataset labels to model label indices by class name; return (labels, is_ood)."""
    names = list(data.class_names)
    unknown_ood = sorted(set(ood_classes) - set(names))
    if unknown_ood:
        raise DataError(
            f"--ood-classes {', '.join(unknown_ood)} are not classes of this test set "
            f"(it has {', '.join(names)}).",
            data_path,
        )
    clash = sorted(set(ood_classes) & set(model_classes))
    if clash:
        raise DataError(
            f"--ood-classes {', '.join(clash)} are classes the model was trained on; name only "
            "held-out classes.",
            data_path,
        )
    present = {names[i] for i in np.unique(data.labels)}
    unseen = sorted(present - set(model_classes) - set(ood_classes))
    if unseen:
        raise DataError(
            f"test set has class(es) {', '.join(unseen)} that the model was never trained on "
            f"(model classes: {', '.join(model_classes)}). Remove them, or pass "
            f"--ood-classes {','.join(unseen)} to score them as out-of-distribution.",
            data_path,
        )
    lut = np.array([model_classes.index(n) if n in model_classes else -1 for n in names])
    mapped = lut[np.asarray(data.labels, dtype=np.int64)]
    return mapped, mapped < 0


def _neighbours(emb: np.ndarray, query_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` nearest other test images of each query."""
    e = torch.nn.functional.normalize(torch.as_tensor(emb, dtype=torch.float32), dim=1)
    sim = e[query_idx] @ e.T
    sim[torch.arange(len(query_idx)), torch.as_tensor(query_idx)] = -float("inf")
    k = min(k, len(e) - 1)
    s, i = sim.topk(k, dim=1)
    return i.numpy(), s.numpy()


def _example_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def evaluate(cfg: EvaluateConfig, dataset: Any = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a fine-tuned run on a test set and write ``metrics.json`` + ``scores.npz``.

    The test images are read with the run's normalisation and image size (unless the config
    overrides them), classes are matched by name, images of ``cfg.ood_classes`` are scored as
    out-of-distribution and every other unseen class is an error.

    Args:
        cfg: the resolved evaluate config (``checkpoint`` is a finetune run folder).
        dataset: an already loaded :class:`deeplense_ssl.datasets.ImageSet` (skips reading
            ``cfg.data``; it must already be normalised like the run's training data).
        progress: show a progress bar while scoring.

    Returns:
        The metrics dict that was written to ``cfg.out`` (default
        ``<checkpoint>/metrics.json``); its ``"metrics_file"`` entry is that path.

    Raises:
        CheckpointError: the run folder has no usable ``model.pt``.
        DataError: channel count / image size / classes do not match the model.
    """
    from .finetune import load_finetuned, predict
    from .runtime import resolve_device, seed_everything

    cfg.validate()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else run_dir / "metrics.json"
    model, spec = load_finetuned(run_dir, map_location="cpu")
    model.to(device).eval()
    normalize = spec["normalize"] if cfg.normalize == "auto" else cfg.normalize
    image_size = spec.get("image_size") if cfg.image_size is None else cfg.image_size
    if dataset is None:
        from .datasets import load_dataset

        dataset = load_dataset(
            cfg.data,
            nan_policy=cfg.nan_policy,
            normalize=normalize,
            image_size=image_size,
            allow_pickle=cfg.allow_pickle,
            norm_stats=spec.get("norm_stats") if normalize == spec["normalize"] else None,
            progress=progress,
        )
    if getattr(dataset, "normalization_pending", False):
        raise DataError(
            "normalize='zscore-dataset' needs statistics from the training data, and the run "
            f"{run_dir} has none; evaluate with the run's own normalisation (--normalize auto).",
            cfg.data,
        )
    images = np.asarray(dataset.images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"no images to evaluate (shape {images.shape}).", cfg.data)
    if images.shape[1] != spec["in_chans"]:
        raise DataError(
            f"test images have {images.shape[1]} channel(s) but the model in {run_dir} was "
            f"trained on {spec['in_chans']}; evaluate on data with the same bands.",
            cfg.data,
        )
    hw = spec.get("input_hw")
    if hw is not None and tuple(images.shape[2:]) != tuple(hw):
        raise DataError(
            f"test images are {images.shape[2]}x{images.shape[3]} px but the model in {run_dir} "
            f"was trained on {hw[0]}x{hw[1]} px; pass --image-size {hw[0]} (centre crop/resize).",
            cfg.data,
        )
    class_names = list(spec["class_names"])
    labels_all, is_ood = _map_labels(dataset, class_names, cfg.ood_classes, str(cfg.data))
    if not (~is_ood).any():
        raise DataError("no test image belongs to a class the model was trained on.", cfg.data)

    probs_all, emb_all = predict(
        model, images, batch_size=cfg.batch_size, device=device, progress=progress
    )
    keep = ~is_ood
    probs, emb, labels = probs_all[keep], emb_all[keep], labels_all[keep]
    sources_all = np.asarray(
        list(dataset.sources) if len(dataset.sources) == len(images) else [""] * len(images),
        dtype=str,
    )

    metrics: dict[str, Any] = {
        "kind": "evaluate",
        "deeplense_ssl_version": __version__,
        "finetune_run": str(run_dir.resolve()),
        "data": str(cfg.data),
        "class_names": class_names,
        "n_images": int(len(labels)),
        "class_counts": {n: int((labels == k).sum()) for k, n in enumerate(class_names)},
        "normalize": normalize,
        "image_size": image_size,
        "input_hw": list(images.shape[2:]),
        "nan_report": _jsonable(getattr(dataset, "nan_report", None)),
    }
    metrics["warnings"] = _data_warnings(run_dir, cfg.data, sources_all[keep])
    metrics["roc_auc"] = roc_auc_report(labels, probs, class_names)
    metrics.update(classification_metrics(labels, probs, class_names))
    metrics["ci"] = bootstrap_ci(
        labels,
        probs,
        lambda y, p: scalar_metrics(y, p, class_names),
        n_bootstrap=cfg.n_bootstrap,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
    )
    metrics["ci_method"] = {
        "method": "stratified percentile bootstrap over test images",
        "n_resamples": int(cfg.n_bootstrap),
        "level": float(cfg.ci_level),
        "seed": int(cfg.seed),
    }
    metrics["roc_curves"] = roc_curves(labels, probs, class_names)

    train_file = run_dir / "train_embeddings.npz"
    if train_file.exists():
        with np.load(train_file, allow_pickle=False) as z:
            t_emb, t_lab = z["embeddings"], z["labels"]
        knn_pred, _ = knn_predict(
            t_emb, t_lab, emb, cfg.knn_k, cfg.knn_temperature, num_classes=len(class_names)
        )
        metrics["knn"] = {
            "k": int(min(cfg.knn_k, len(t_emb))),
            "temperature": float(cfg.knn_temperature),
            "n_train": int(len(t_emb)),
            "accuracy": float((knn_pred.numpy() == labels).mean()),
        }
    else:
        metrics["knn"] = None
    if is_ood.any():
        metrics["ood"] = ood_auroc(probs, probs_all[is_ood])
        metrics["ood"]["classes"] = sorted(
            {dataset.class_names[i] for i in np.unique(np.asarray(dataset.labels)[is_ood])}
        )
    else:
        metrics["ood"] = None

    # a few examples per class with their nearest test neighbours, for the report
    ex_idx = _example_indices(labels, per_class=4, seed=cfg.seed)
    nb_idx, nb_sim = _neighbours(emb, ex_idx, k=6)
    in_images, in_sources = images[keep], sources_all[keep]
    scores_file = scores_path_for(out, "scores")
    examples_file = scores_path_for(out, "examples")
    metrics["scores_file"] = scores_file.name
    metrics["examples_file"] = examples_file.name
    metrics["config"] = config_to_dict(cfg)
    metrics["metrics_file"] = str(out)

    with atomic_output(scores_file) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                probs=probs.astype(np.float32),
                labels=labels.astype(np.int64),
                sources=in_sources,
                embeddings=emb.astype(np.float32),
                class_names=np.asarray(class_names, dtype=str),
                ood_probs=probs_all[is_ood].astype(np.float32),
                ood_sources=sources_all[is_ood],
            )
    with atomic_output(examples_file) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                images=in_images[ex_idx],
                labels=labels[ex_idx],
                sources=in_sources[ex_idx],
                test_index=ex_idx,
                neighbor_images=in_images[nb_idx],
                neighbor_labels=labels[nb_idx],
                neighbor_similarity=nb_sim.astype(np.float32),
                class_names=np.asarray(class_names, dtype=str),
            )
    write_text_atomic(out, json.dumps(metrics, indent=1, allow_nan=False, default=_json_default))
    return metrics


def _data_warnings(run_dir: Path, data: str, sources: np.ndarray) -> list[str]:
    """Evaluation mistakes of prior work that can be seen from the files (DOMAIN.md)."""
    out = []
    try:
        ft = json.loads((run_dir / "config.json").read_text())["config"]["data"]
        if ft and Path(ft).resolve() == Path(data).resolve():
            out.append(
                f"the test data {data} is the file the model was fine-tuned on; the numbers "
                "are not a held-out evaluation."
            )
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        pass
    named = [s for s in sources.tolist() if s]
    n_dup = len(named) - len(set(named))
    if n_dup:
        out.append(
            f"{n_dup} test image(s) repeat a source already in the test set (drawn with "
            "replacement?); duplicates shrink the intervals artificially."
        )
    return out


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return obj
    return str(obj)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
