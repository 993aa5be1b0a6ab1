"""Evaluated run folders -> one self-contained HTML report (+ ``metrics.json`` beside it).

The report plots what ``evaluate`` and the training runs wrote; it computes nothing new beyond
what is plotted: the numbers come from each run's ``metrics.json`` (ROC-AUC, intervals, curves,
confusion matrix, kNN), the training curves from the finetune run's ``metrics.jsonl`` and the
pretrain run's ``metrics.jsonl``. Three things need the model or the embeddings and are
computed here for display only: captum attribution maps of the example images ``evaluate``
saved (``examples.npz``), the nearest-neighbour grid (neighbours chosen by ``evaluate``) and a
t-SNE of a capped sample of the test embeddings in ``scores.npz``.

Every image is embedded as a base64 PNG, so the HTML file can be mailed or archived alone.
The ``metrics.json`` beside it (``report_metrics.json`` if a ``metrics.json`` of ``evaluate``
already sits there) holds the comparison table in machine-readable form.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import ReportConfig, config_to_dict
from .errors import CheckpointError
from .io import write_text_atomic

TSNE_MAX_POINTS = 1000
RETRIEVAL_MAX_QUERIES = 6


@dataclass
class RunRecord:
    """Everything the report reads for one evaluated run."""

    name: str
    run_dir: Path
    metrics_path: Path
    metrics: dict[str, Any]
    run_config: dict[str, Any] | None
    history: list[dict[str, Any]]
    val_metrics: dict[str, Any] | None
    pretrain_history: list[dict[str, Any]]
    scores_path: Path
    examples_path: Path | None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading run folders
# --------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc}).") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object.")
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run: skip it
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_run(path: str | Path) -> RunRecord:
    """Locate and read one evaluated run.

    Args:
        path: a finetune run folder holding the ``metrics.json`` of ``evaluate`` (the default
            ``--out``), or the path of such a ``metrics.json`` anywhere.

    Raises:
        CheckpointError: no such folder/file, no metrics (evaluate was not run), a metrics file
            that is not from ``evaluate``, or missing per-image scores.
    """
    p = Path(path)
    if p.is_dir():
        metrics_path = p / "metrics.json"
        if not metrics_path.is_file():
            hint = ""
            if (p / "backbone.pt").is_file():
                hint = " (this is a pretrain run: fine-tune and evaluate it first)"
            raise CheckpointError(
                f"{p}: no metrics.json{hint}; run `deeplense-ssl evaluate --checkpoint {p} "
                "--data TEST` first, or pass the path of its metrics file."
            )
    elif p.is_file():
        metrics_path = p
    else:
        raise CheckpointError(f"{p}: no such run folder or metrics file.")
    metrics = _read_json(metrics_path, "metrics file")
    if metrics.get("kind") != "evaluate":
        raise CheckpointError(
            f"{metrics_path}: not a metrics file of `deeplense-ssl evaluate` "
            f"(kind={metrics.get('kind')!r}); pass evaluated finetune runs."
        )
    run_dir = Path(metrics.get("finetune_run") or metrics_path.parent)
    if not run_dir.is_dir():
        run_dir = metrics_path.parent
    scores_path = metrics_path.parent / metrics.get("scores_file", "scores.npz")
    if not scores_path.is_file():
        raise CheckpointError(
            f"{scores_path}: per-image scores of {metrics_path} are missing; re-run "
            "`deeplense-ssl evaluate`."
        )
    examples_path = metrics_path.parent / metrics.get("examples_file", "examples.npz")
    run_config = None
    if (run_dir / "config.json").is_file():
        run_config = _read_json(run_dir / "config.json", "run config")
    val_metrics = None
    if (run_dir / "val_metrics.json").is_file():
        val_metrics = _read_json(run_dir / "val_metrics.json", "validation metrics")
    pretrain_history: list[dict[str, Any]] = []
    pre = (run_config or {}).get("pretrain") or {}
    if pre.get("run"):
        pretrain_history = _read_jsonl(Path(pre["run"]) / "metrics.jsonl")
    return RunRecord(
        name=run_dir.name,
        run_dir=run_dir,
        metrics_path=metrics_path,
        metrics=metrics,
        run_config=run_config,
        history=_read_jsonl(run_dir / "metrics.jsonl"),
        val_metrics=val_metrics,
        pretrain_history=pretrain_history,
        scores_path=scores_path,
        examples_path=examples_path if examples_path.is_file() else None,
    )


def run_summary(run: RunRecord) -> dict[str, Any]:
    """The comparison-table row of a run (plain JSON types)."""
    m = run.metrics
    cfg = (run.run_config or {}).get("config", {})
    pre = (run.run_config or {}).get("pretrain") or {}
    ds = (run.run_config or {}).get("data_summary", {})
    ci = m.get("ci", {})
    auc = m.get("roc_auc", {})
    return {
        "name": run.name,
        "run_dir": str(run.run_dir),
        "metrics_file": str(run.metrics_path),
        "init": cfg.get("init"),
        "head": cfg.get("head"),
        "pretrain_method": pre.get("method"),
        "label_fraction": cfg.get("label_fraction"),
        "n_train_labelled": ds.get("n_train_labelled"),
        "n_test": m.get("n_images"),
        "binary": auc.get("binary"),
        "auc_macro": auc.get("macro"),
        "auc_macro_ci": _interval(ci.get("auc_macro")),
        "auc_micro": auc.get("micro"),
        "auc_micro_ci": _interval(ci.get("auc_micro")),
        "auc_per_class": auc.get("per_class"),
        "accuracy": m.get("accuracy"),
        "accuracy_ci": _interval(ci.get("accuracy")),
        "f1_macro": m.get("f1_macro"),
        "knn_accuracy": (m.get("knn") or {}).get("accuracy"),
        "ood_auroc": (m.get("ood") or {}).get("auroc"),
        "ci_resamples": (m.get("ci_method") or {}).get("n_resamples"),
    }


def _interval(entry: dict | None) -> list[float | None] | None:
    if not entry:
        return None
    return [entry.get("lower"), entry.get("upper")]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """A matplotlib figure as an ``<img>`` tag with an embedded base64 PNG; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="figure">'


def _display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) -> something ``imshow`` shows: grey for one band, RGB for three, each scaled
    to [0, 1] per image for display only."""
    img = np.asarray(img, dtype=np.float32)
    if img.shape[0] == 3:
        rgb = np.moveaxis(img, 0, -1)
        lo, hi = rgb.min(), rgb.max()
        return (rgb - lo) / (hi - lo if hi > lo else 1.0), None
    band = img[0]
    lo, hi = band.min(), band.max()
    return (band - lo) / (hi - lo if hi > lo else 1.0), "gray"


def fig_roc(metrics: dict[str, Any]) -> str:
    """ROC curves per class, macro and micro, AUC in the legend."""
    plt = _plt()
    curves = metrics.get("roc_curves", {})
    auc = metrics.get("roc_auc", {})
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, c in curves.items():
        if name in ("macro", "micro"):
            continue
        value = auc.get("auc") if auc.get("binary") else auc.get("per_class", {}).get(name)
        ax.plot(c["fpr"], c["tpr"], lw=1.4, label=f"{name} (AUC {_fmt(value)})")
    if "macro" in curves:
        c = curves["macro"]
        ax.plot(c["fpr"], c["tpr"], "k--", lw=1.6, label=f"macro (AUC {_fmt(auc.get('macro'))})")
    if "micro" in curves:
        c = curves["micro"]
        ax.plot(
            c["fpr"],
            c["tpr"],
            ":",
            color="grey",
            lw=1.6,
            label=f"micro (AUC {_fmt(auc.get('micro'))})",
        )
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC (one-vs-rest)" if not auc.get("binary") else "ROC")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no class with positives and negatives", ha="center", fontsize=8)
    return _png(fig)


def fig_confusion(metrics: dict[str, Any]) -> str:
    """Confusion matrix, counts and row-normalised colours."""
    plt = _plt()
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    names = metrics["class_names"]
    rows = cm.sum(axis=1, keepdims=True)
    frac = cm / np.where(rows > 0, rows, 1)
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.6 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return _png(fig)


def fig_training(run: RunRecord) -> str | None:
    """Pretraining loss against the step and the fine-tuning history against the epoch."""
    from matplotlib.ticker import MaxNLocator

    from .train import draw_loss_curve

    plt = _plt()
    panels = []
    pre = [r for r in run.pretrain_history if _num(r.get("loss")) is not None]
    if pre:
        panels.append("pre")
    if run.history:
        panels.append("ft")
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels) + ("ft" in panels), figsize=(4.2 * (len(panels) + 1), 3.2)
    )
    axes = np.atleast_1d(axes)
    k = 0
    if "pre" in panels:
        ax = axes[k]
        k += 1
        method = ((run.run_config or {}).get("pretrain") or {}).get("method") or "SSL"
        draw_loss_curve(ax, pre)
        ax.set_title(f"pretraining loss ({method})")
    if "ft" in panels:
        h = run.history
        ep = [r.get("epoch") for r in h]
        ax = axes[k]
        ax.plot(ep, [r.get("train_loss") for r in h], "o-", ms=3, label="train")
        ax.plot(ep, [r.get("val_loss") for r in h], "o-", ms=3, label="validation")
        ax.set(xlabel="epoch", ylabel="cross-entropy", title="fine-tuning loss")
        ax.legend(fontsize=8)
        ax = axes[k + 1]
        auc = [np.nan if r.get("val_auc_macro") is None else r["val_auc_macro"] for r in h]
        ax.plot(ep, auc, "o-", ms=3, label="val macro AUC")
        ax.plot(ep, [r.get("val_acc") for r in h], "o-", ms=3, label="val accuracy")
        if run.val_metrics and run.val_metrics.get("best_epoch"):
            ax.axvline(
                run.val_metrics["best_epoch"], color="grey", ls="--", lw=1, label="kept epoch"
            )
        ax.set(xlabel="epoch", ylim=(0, 1.02), title="fine-tuning validation")
        ax.legend(fontsize=8)
        for a in axes[k : k + 2]:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def fig_label_fraction(rows: list[dict[str, Any]]) -> str | None:
    """Macro AUC (with interval) against the label fraction, one line per (init, head, method)."""
    plt = _plt()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["label_fraction"] is None or r["auc_macro"] is None:
            continue
        key = _setup_name(r)
        groups.setdefault(key, []).append(r)
    fractions = {r["label_fraction"] for g in groups.values() for r in g}
    if len(fractions) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for key, g in sorted(groups.items()):
        g = sorted(g, key=lambda r: r["label_fraction"])
        x = np.array([r["label_fraction"] for r in g])
        y = np.array([r["auc_macro"] for r in g])
        lo = np.array([(r["auc_macro_ci"] or [None])[0] for r in g], dtype=float)
        hi = np.array([(r["auc_macro_ci"] or [None, None])[1] for r in g], dtype=float)
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=key)
    ax.set_xscale("log")
    ticks = sorted(fractions)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="label fraction", ylabel="macro ROC-AUC (95% CI)", title="label efficiency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def fig_attribution(
    images: np.ndarray,
    labels: np.ndarray,
    maps: dict[str, np.ndarray],
    class_names: list[str],
    probs: np.ndarray | None = None,
) -> str:
    """Rows: example images; columns: the image and one map per method."""
    plt = _plt()
    methods = list(maps)
    n = len(images)
    fig, axes = plt.subplots(
        n, 1 + len(methods), figsize=(2.0 * (1 + len(methods)), 2.0 * n), squeeze=False
    )
    titles = {
        "integrated_gradients": "Integrated Gradients",
        "saliency": "Saliency",
        "gradcam": "Grad-CAM (layer4)",
    }
    for i in range(n):
        img, cmap = _display(images[i])
        ax = axes[i, 0]
        ax.imshow(img, cmap=cmap)
        label = f"{class_names[labels[i]]}"
        if probs is not None:
            label += f"  p={probs[i, labels[i]]:.2f}"
        ax.set_title(label, fontsize=8)
        for j, m in enumerate(methods, start=1):
            a = maps[m][i]
            ax = axes[i, j]
            if m == "integrated_gradients":
                v = np.abs(a).max() or 1.0
                ax.imshow(a, cmap="RdBu_r", vmin=-v, vmax=v)
            elif m == "gradcam":
                # non-negative after ReLU; an all-zero map means no evidence in layer4
                ax.imshow(img, cmap=cmap)
                ax.imshow(a, cmap="inferno", alpha=0.55, vmin=0, vmax=max(float(a.max()), 1e-12))
            else:
                ax.imshow(a, cmap="inferno", vmin=0, vmax=max(float(a.max()), 1e-12))
            if i == 0:
                ax.set_title(titles.get(m, m), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)


def fig_retrieval(ex: dict[str, np.ndarray], class_names: list[str]) -> str:
    """Query images (first column) and their nearest test neighbours in embedding space."""
    plt = _plt()
    labels = ex["labels"]
    # a balanced handful of queries: round-robin over classes
    order = []
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    while len(order) < min(RETRIEVAL_MAX_QUERIES, len(labels)):
        for lst in by_class:
            if lst and len(order) < RETRIEVAL_MAX_QUERIES:
                order.append(lst.pop(0))
    k = ex["neighbor_images"].shape[1]
    fig, axes = plt.subplots(
        len(order), k + 1, figsize=(1.6 * (k + 1), 1.75 * len(order)), squeeze=False
    )
    for row, q in enumerate(order):
        img, cmap = _display(ex["images"][q])
        axes[row, 0].imshow(img, cmap=cmap)
        axes[row, 0].set_title(f"query: {class_names[labels[q]]}", fontsize=7, color="navy")
        for j in range(k):
            img, cmap = _display(ex["neighbor_images"][q, j])
            nl = ex["neighbor_labels"][q, j]
            axes[row, j + 1].imshow(img, cmap=cmap)
            color = "green" if nl == labels[q] else "red"
            axes[row, j + 1].set_title(
                f"{class_names[nl]} {ex['neighbor_similarity'][q, j]:.3f}",
                fontsize=7,
                color=color,
            )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("nearest neighbours (cosine similarity; green = same class)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def fig_tsne(embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], seed: int) -> str:
    """2-D t-SNE of a capped, stratified sample of test embeddings."""
    from sklearn.manifold import TSNE

    plt = _plt()
    rng = np.random.default_rng(seed)
    idx = np.arange(len(labels))
    if len(idx) > TSNE_MAX_POINTS:
        per = TSNE_MAX_POINTS // max(1, len(np.unique(labels)))
        idx = np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(labels == c), min(per, int((labels == c).sum())), replace=False
                )
                for c in np.unique(labels)
            ]
        )
    x = embeddings[idx].astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3.0)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for c in np.unique(labels[idx]):
        sel = labels[idx] == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=class_names[c])
    ax.set(xticks=[], yticks=[], title=f"t-SNE of test embeddings (n={len(idx)})")
    ax.legend(fontsize=8, markerscale=2)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    return "&ndash;" if x is None else f"{x:.{digits}f}"


def _fmt_ci(point: Any, ci: Any) -> str:
    if _num(point) is None:
        return "&ndash;"
    if not ci or ci[0] is None or ci[1] is None:
        return _fmt(point)
    return f"{_fmt(point)} <span class=ci>[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>"


def _setup_name(r: dict[str, Any]) -> str:
    init, head = r.get("init"), r.get("head")
    if init == "scratch":
        return "supervised from scratch"
    if init == "random":
        return f"random frozen backbone + {head}"
    return f"{r.get('pretrain_method') or 'pretrained'} + {head}"


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>run</th><th>setup</th><th>label fraction</th><th>labelled</th><th>test</th>"
        "<th>macro AUC [95% CI]</th><th>micro AUC [95% CI]</th><th>accuracy [95% CI]</th>"
        "<th>F1 macro</th><th>kNN acc.</th><th>OOD AUROC</th></tr>"
    )
    body = []
    for r in rows:
        micro = "n/a (binary)" if r["binary"] else _fmt_ci(r["auc_micro"], r["auc_micro_ci"])
        body.append(
            f"<tr><td>{_esc(r['name'])}</td><td>{_esc(_setup_name(r))}</td>"
            f"<td>{_esc(r['label_fraction'])}</td><td>{_esc(r['n_train_labelled'])}</td>"
            f"<td>{_esc(r['n_test'])}</td><td>{_fmt_ci(r['auc_macro'], r['auc_macro_ci'])}</td>"
            f"<td>{micro}</td><td>{_fmt_ci(r['accuracy'], r['accuracy_ci'])}</td>"
            f"<td>{_fmt(r['f1_macro'])}</td><td>{_fmt(r['knn_accuracy'])}</td>"
            f"<td>{_fmt(r['ood_auroc'])}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _auc_table(m: dict[str, Any]) -> str:
    auc, ci = m["roc_auc"], m.get("ci", {})
    counts = m.get("class_counts", {})
    rows = []
    if auc.get("binary"):
        rows.append(
            f"<tr><td>{_esc(auc.get('positive_class'))} vs rest (the one AUC)</td>"
            f"<td>{_esc(m.get('n_images'))}</td>"
            f"<td>{_fmt_ci(auc.get('auc'), _interval(ci.get('auc_macro')))}</td></tr>"
        )
    else:
        for name, v in auc["per_class"].items():
            rows.append(
                f"<tr><td>{_esc(name)}</td><td>{_esc(counts.get(name))}</td>"
                f"<td>{_fmt_ci(v, _interval(ci.get('auc/' + name)))}</td></tr>"
            )
        rows.append(
            f"<tr class=sum><td>macro (mean of classes)</td><td>{_esc(m.get('n_images'))}</td>"
            f"<td>{_fmt_ci(auc.get('macro'), _interval(ci.get('auc_macro')))}</td></tr>"
        )
        rows.append(
            f"<tr class=sum><td>micro (pooled)</td><td>{_esc(m.get('n_images'))}</td>"
            f"<td>{_fmt_ci(auc.get('micro'), _interval(ci.get('auc_micro')))}</td></tr>"
        )
    method = m.get("ci_method", {})
    caption = (
        f"{_esc(method.get('method', 'bootstrap'))}, {_esc(method.get('n_resamples'))} resamples, "
        f"level {_esc(method.get('level'))}"
    )
    topk = ", ".join(f"top-{k} {_fmt(v)}" for k, v in (m.get("top_k_accuracy") or {}).items())
    knn = m.get("knn") or {}
    extra = (
        f"<p>accuracy {_fmt_ci(m.get('accuracy'), _interval(ci.get('accuracy')))}"
        f"{'; ' + topk if topk else ''}; F1 macro {_fmt(m.get('f1_macro'))}, "
        f"F1 micro {_fmt(m.get('f1_micro'))}"
    )
    if knn:
        extra += (
            f"; weighted kNN accuracy {_fmt(knn.get('accuracy'))} (k={_esc(knn.get('k'))}, "
            f"T={_esc(knn.get('temperature'))}, {_esc(knn.get('n_train'))} labelled train "
            "embeddings)"
        )
    ood = m.get("ood")
    if ood:
        extra += (
            f"; OOD AUROC (max-softmax, held-out {_esc(', '.join(ood.get('classes', [])))}) "
            f"{_fmt(ood.get('auroc'))} ({_esc(ood.get('n_ood'))} images)"
        )
    extra += ".</p>"
    return (
        f"<p class=meta>ROC-AUC, one-vs-rest; interval: {caption}.</p>"
        f"<table><tr><th>class</th><th>test images</th>"
        f"<th>AUC [CI]</th></tr>{''.join(rows)}</table>{extra}"
    )


def _kv_table(obj: dict[str, Any] | None) -> str:
    """A two-column table of a flat-ish dict; nested values as compact JSON."""
    if not obj:
        return "<p class=meta>none recorded</p>"
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>"
        f"{_esc(v if isinstance(v, str) else json.dumps(v, default=str, separators=(', ', ': ')))}"
        "</td></tr>"
        for k, v in obj.items()
    )
    return f"<table>{rows}</table>"


def _details(title: str, obj: Any, open_: bool = False) -> str:
    text = json.dumps(obj, indent=2, default=str)
    return (
        f"<details{' open' if open_ else ''}><summary>{_esc(title)}</summary>"
        f"<pre>{_esc(text)}</pre></details>"
    )


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1350px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ccc;
padding-bottom:3px;margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}th{background:#f3f3f3}
tr.sum td{font-weight:600}caption{text-align:left;font-size:12px;color:#555;padding:2px 0}
.ci{color:#666;font-size:12px}.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.figs img{max-width:100%}.note{color:#8a5a00;font-size:13px}p{font-size:14px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
summary{cursor:pointer;font-size:13px;margin:4px 0}.meta{color:#555;font-size:13px}
"""


def _run_section(run: RunRecord, cfg: ReportConfig, device: Any) -> str:
    m = run.metrics
    class_names = list(m["class_names"])
    row = run_summary(run)
    parts = [
        f"<h2 id='{_esc(run.name)}'>Run {_esc(run.name)}: {_esc(_setup_name(row))}, "
        f"label fraction {_esc(row['label_fraction'])}</h2>"
    ]
    parts.append(
        f"<p class=meta>{_esc(run.run_dir)} &middot; test data {_esc(m.get('data'))} &middot; "
        f"deeplense_ssl {_esc(m.get('deeplense_ssl_version'))}</p>"
    )
    for warning in m.get("warnings") or []:
        parts.append(f"<p class=note>Warning: {_esc(warning)}</p>")
    parts.append(_auc_table(m))
    figs = [fig_roc(m), fig_confusion(m)]
    parts.append("<h3>ROC curves and confusion matrix</h3>")
    parts.append(f"<div class=figs>{''.join(figs)}</div>")
    training = fig_training(run)
    if training:
        parts.append("<h3>Training curves</h3>" + training)

    with np.load(run.scores_path, allow_pickle=False) as z:
        scores = {k: z[k] for k in z.files}
    ex = None
    if run.examples_path is not None:
        with np.load(run.examples_path, allow_pickle=False) as z:
            ex = {k: z[k] for k in z.files}
    if ex is not None and len(ex["labels"]) and cfg.attribution_methods:
        parts.append("<h3>Attribution maps (explaining the true class logit)</h3>")
        parts.append(_attribution_html(run, ex, class_names, cfg, device))
    if ex is not None and len(ex["labels"]) and ex["neighbor_images"].shape[1] > 0:
        parts.append("<h3>Nearest-neighbour retrieval in embedding space (test set)</h3>")
        parts.append(fig_retrieval(ex, class_names))
    emb = scores.get("embeddings")
    if cfg.tsne and emb is not None and len(emb) >= 5:
        parts.append("<h3>Embedding (t-SNE)</h3>")
        parts.append(fig_tsne(emb, scores["labels"], class_names, cfg.seed))
    for note in run.notes:
        parts.append(f"<p class=note>{_esc(note)}</p>")
    rc = run.run_config or {}
    parts.append("<h3>Config, data and versions</h3>")
    parts.append("<p class=meta>fine-tuning data</p>" + _kv_table(rc.get("data_summary")))
    parts.append(
        _details(
            "fine-tuning config (resolved)",
            {
                "config": rc.get("config"),
                "resolved": rc.get("resolved"),
                "spec": rc.get("spec"),
                "deeplense_ssl_version": rc.get("deeplense_ssl_version"),
            },
        )
    )
    parts.append(_details("pretraining run", rc.get("pretrain")))
    parts.append(_details("validation (model selection)", run.val_metrics))
    parts.append(_details("evaluation config", m.get("config")))
    return "\n".join(parts)


def _attribution_html(
    run: RunRecord,
    ex: dict[str, np.ndarray],
    class_names: list[str],
    cfg: ReportConfig,
    device: Any,
) -> str:
    from .attribution import attribution_maps
    from .finetune import load_finetuned

    try:
        model, _ = load_finetuned(run.run_dir, map_location="cpu")
    except CheckpointError as exc:
        run.notes.append(f"attribution maps skipped: {exc}")
        return "<p class=note>model not found; attribution maps skipped.</p>"
    labels = ex["labels"]
    pick = np.concatenate(
        [np.flatnonzero(labels == c)[: cfg.n_attribution_examples] for c in np.unique(labels)]
    )
    images, targets = ex["images"][pick], labels[pick]
    model.to(device)
    maps = attribution_maps(model, images, targets, cfg.attribution_methods)
    from .finetune import predict

    probs, _ = predict(model, images, device=device)
    model.cpu()
    return fig_attribution(images, targets, maps, class_names, probs)


def report_metrics_path(out: Path) -> Path:
    """``metrics.json`` beside the report, unless that is an evaluate metrics file."""
    p = out.with_name("metrics.json")
    if p.is_file():
        try:
            kind = json.loads(p.read_text()).get("kind")
        except (OSError, json.JSONDecodeError, AttributeError):
            kind = None
        if kind != "report":
            return out.with_name("report_metrics.json")
    return p


def build_report(cfg: ReportConfig) -> Path:
    """Write the HTML report of ``cfg.runs`` to ``cfg.out`` and its ``metrics.json``.

    Args:
        cfg: run folders (or evaluate metrics files), output path, attribution settings.

    Returns:
        The path of the HTML file.

    Raises:
        CheckpointError: a run without metrics/scores (nothing is written then).
    """
    from .runtime import resolve_device

    cfg.validate()
    device = resolve_device(cfg.device)
    runs = [read_run(r) for r in cfg.runs]  # fail before writing anything
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.run_dir.parent.name}/{r.run_dir.name}"
    rows = [run_summary(r) for r in runs]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>deeplense_ssl report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>deeplense_ssl report</h1>",
        f"<p class=meta>generated {now} by deeplense_ssl {__version__}; {len(runs)} run(s). "
        "ROC-AUC is one-vs-rest; macro = mean over classes, micro = pooled over (image, class) "
        "pairs; intervals are stratified percentile bootstrap over test images.</p>",
        "<h2>Comparison across runs</h2>",
        _comparison_table(rows),
    ]
    lf = fig_label_fraction(rows)
    if lf:
        parts.append("<h3>ROC-AUC against label fraction</h3>" + lf)
    parts.append(
        "<p class=meta>"
        + " &middot; ".join(f"<a href='#{_esc(r.name)}'>{_esc(r.name)}</a>" for r in runs)
        + "</p>"
    )
    for run in runs:
        parts.append(_run_section(run, cfg, device))
    parts.append("</body></html>")
    out = Path(cfg.out)
    doc = "\n".join(parts)
    summary = {
        "kind": "report",
        "deeplense_ssl_version": __version__,
        "created_utc": now,
        "report": out.name,
        "config": config_to_dict(cfg),
        "runs": rows,
    }
    metrics_out = report_metrics_path(out)
    write_text_atomic(out, doc)
    write_text_atomic(metrics_out, json.dumps(summary, indent=2, default=str) + "\n")
    return out
