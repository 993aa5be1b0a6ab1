"""Every figure of the package: pretraining loss curve, fine-tuning history, report figures.

Figures are :class:`matplotlib.figure.Figure` objects built without ``pyplot``, so no backend is
selected and no global figure state is touched by a library call: :func:`png_bytes` renders one
to PNG in memory (the report embeds it), :func:`save_png` writes one atomically. The ``draw_*``
functions draw onto given axes, so the same panel serves a standalone file and the report.

Nothing here computes a metric; the inputs are what the run folders hold (``metrics.jsonl``
records, evaluate ``metrics.json`` dicts, ``examples.npz`` arrays), except the 2-D projection
of :func:`fig_embedding_map` (t-SNE or UMAP), computed for display only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE

from .errors import MissingDependencyError
from .io import atomic_output
from .runs import LOSS_CURVE_FILE, read_metrics

TSNE_MAX_POINTS = 1000  # t-SNE is O(N log N) with a large constant: a stratified sample
TSNE_ITERATIONS = 500  # half of scikit-learn's default: the clusters have settled for display
UMAP_MAX_POINTS = 200_000  # UMAP (extra `umap`) maps 100k+ embeddings in minutes on a CPU
# auto: t-SNE of up to TSNE_MAX_POINTS images for a test set of at most AUTO_UMAP_ABOVE, else
# UMAP when the extra is installed (t-SNE of a sample when not); none: no map
EMBEDDING_MAPS = ("auto", "umap", "tsne", "none")
AUTO_UMAP_ABOVE = 5000
RETRIEVAL_MAX_QUERIES = 6
ATTRIBUTION_TITLES = {
    "integrated_gradients": "Integrated Gradients",
    "saliency": "Saliency",
    "gradcam": "Grad-CAM (layer4)",
}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (tight bounding box), for embedding in HTML."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure as a PNG file atomically (temp file + rename)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    return "\u2013" if x is None else f"{x:.{digits}f}"


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


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def draw_loss_curve(ax: Axes, records: list[dict[str, Any]]) -> None:
    """Draw pretraining ``metrics.jsonl`` records onto matplotlib axes ``ax``.

    Loss per step and the epoch means against the optimiser step, and the kNN monitor (when
    present) on a twin axis. Records without a finite loss are skipped; logs without step
    numbers are drawn against their position. Shared by :func:`plot_loss_curve` and the report.
    """
    rows = [
        r for r in records if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
    ]
    steps = [r for r in rows if r.get("kind", "step") == "step" and "step" in r]
    epochs = [r for r in rows if r.get("kind") == "epoch" and "step" in r]
    if steps or epochs:
        if steps:
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, label="step")
        if epochs:
            ax.plot(
                [r["step"] for r in epochs],
                [r["loss"] for r in epochs],
                "o-",
                ms=3,
                label="epoch mean",
            )
        ax.set_xlabel("optimiser step")
    elif rows:
        ax.plot(range(len(rows)), [r["loss"] for r in rows], lw=1)
        ax.set_xlabel("log entry")
    ax.set_ylabel("training loss")
    knn = [r for r in epochs if isinstance(r.get("knn_top1"), (int, float))]
    if knn:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in knn], [r["knn_top1"] for r in knn], "s--", c="C2", ms=3)
        ax2.set_ylabel("kNN top-1 (val)", color="C2")
    if steps or epochs:
        ax.legend(loc="upper right", fontsize=7)


def _collapse_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r.get("kind") == "epoch" and "step" in r and _num(r.get("rankme")) is not None
    ]


def draw_collapse_curve(ax: Axes, records: list[dict[str, Any]]) -> bool:
    """The collapse monitor of pretraining ``metrics.jsonl`` records onto ``ax``.

    Effective rank (RankMe) of the monitor embeddings against the optimiser step, the mean
    per-dimension std on a twin axis, and red crosses at epochs that logged a collapse warning
    (see :mod:`deeplense_ssl.collapse`).

    Returns:
        Whether there was anything to draw (runs before the monitor existed have nothing).
    """
    rows = _collapse_records(records)
    if not rows:
        return False
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["rankme"] for r in rows], "o-", ms=3, c="C3", label="effective rank")
    warned = [r for r in rows if r.get("collapse_warning")]
    if warned:
        ax.plot([r["step"] for r in warned], [r["rankme"] for r in warned], "x", c="red",
                ms=8, mew=2, label="collapse warning")  # fmt: skip
    ax.set(xlabel="optimiser step", ylabel="effective rank (RankMe)", title="collapse monitor")
    ax.set_ylim(bottom=0)
    std = [_num(r.get("emb_std_mean")) for r in rows]
    if any(v is not None for v in std):
        ax2 = ax.twinx()
        ax2.plot(steps, [np.nan if v is None else v for v in std], "s--", c="C4", ms=3)
        ax2.set_ylabel("mean per-dim std", color="C4")
        ax2.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=7)
    return True


def plot_loss_curve(run_dir: str | Path) -> Path:
    """Draw ``loss_curve.png`` from ``metrics.jsonl``: loss per step, epoch means and kNN
    accuracy; beside it the collapse monitor when the run logged one.

    Args:
        run_dir: a pretrain run folder.

    Returns:
        The path of the PNG file.
    """
    records = read_metrics(run_dir)
    panels = 2 if _collapse_records(records) else 1
    fig = Figure(figsize=(6.4 * panels, 4.0), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, panels))
    draw_loss_curve(axes[0], records)
    if panels == 2:
        draw_collapse_curve(axes[1], records)
    fig.tight_layout()
    return save_png(fig, Path(run_dir) / LOSS_CURVE_FILE, dpi=100)


def _column(records: list[dict[str, Any]], key: str) -> list[Any]:
    """``records[i].get(key)`` for every record (None where a record lacks ``key``)."""
    return [r.get(key) for r in records]


def draw_finetune_history(
    ax_loss: Axes, ax_val: Axes, history: list[dict[str, Any]], best_epoch: int | None
) -> None:
    """Fine-tuning loss (train, validation) and validation AUC / accuracy against the epoch.

    Args:
        ax_loss: axes of the cross-entropy panel.
        ax_val: axes of the validation panel (macro ROC-AUC, accuracy, kept epoch).
        history: the finetune ``metrics.jsonl`` records (``epoch``, ``train_loss``,
            ``val_loss``, ``val_auc_macro``, ``val_acc``).
        best_epoch: the epoch whose weights were kept (a dashed line), or None.
    """
    ep = _column(history, "epoch")
    ax_loss.plot(ep, _column(history, "train_loss"), "o-", ms=3, label="train")
    ax_loss.plot(ep, _column(history, "val_loss"), "o-", ms=3, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="fine-tuning loss")
    ax_loss.legend(fontsize=8)
    auc = [np.nan if r.get("val_auc_macro") is None else r["val_auc_macro"] for r in history]
    ax_val.plot(ep, auc, "o-", ms=3, label="val macro AUC")
    ax_val.plot(ep, _column(history, "val_acc"), "o-", ms=3, label="val accuracy")
    if best_epoch:
        ax_val.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept (epoch {best_epoch})")
    ax_val.set(xlabel="epoch", ylim=(0, 1.02), title="fine-tuning validation")
    ax_val.legend(fontsize=8)
    for a in (ax_loss, ax_val):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_finetune_history(history: list[dict[str, Any]], best_epoch: int, path: Path) -> Path:
    """Write a finetune run's ``history.png`` (see :func:`draw_finetune_history`)."""
    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_val = fig.subplots(1, 2)
    draw_finetune_history(ax_loss, ax_val, history, best_epoch)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def fig_training(
    pretrain_history: list[dict[str, Any]],
    history: list[dict[str, Any]],
    best_epoch: int | None,
    method: str,
) -> Figure | None:
    """Pretraining loss (and the collapse monitor) against the step, and the fine-tuning
    history against the epoch.

    Args:
        pretrain_history: the pretrain run's ``metrics.jsonl`` records (may be empty).
        history: the finetune run's ``metrics.jsonl`` records (may be empty).
        best_epoch: the kept fine-tuning epoch, or None.
        method: the pretraining method, for the title.

    Returns:
        The figure, or None when there is nothing to draw.
    """
    pre = [r for r in pretrain_history if _num(r.get("loss")) is not None]
    collapse = 1 if _collapse_records(pre) else 0
    n_axes = (1 + collapse if pre else 0) + (2 if history else 0)
    if not n_axes:
        return None
    fig = Figure(figsize=(4.2 * n_axes, 3.2))
    axes = np.atleast_1d(fig.subplots(1, n_axes))
    if pre:
        draw_loss_curve(axes[0], pre)
        axes[0].set_title(f"pretraining loss ({method})")
        if collapse:
            draw_collapse_curve(axes[1], pre)
    if history:
        draw_finetune_history(axes[-2], axes[-1], history, best_epoch)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Evaluation figures
# --------------------------------------------------------------------------------------------


def fig_roc(metrics: Mapping[str, Any]) -> Figure:
    """ROC curves per class, macro and micro, AUC in the legend (an evaluate metrics dict)."""
    curves = metrics.get("roc_curves", {})
    auc = metrics.get("roc_auc", {})
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
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
        label = f"micro (AUC {_fmt(auc.get('micro'))})"
        ax.plot(c["fpr"], c["tpr"], ":", color="grey", lw=1.6, label=label)
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC (one-vs-rest)" if not auc.get("binary") else "ROC")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no class with positives and negatives", ha="center", fontsize=8)
    return fig


def fig_confusion(metrics: Mapping[str, Any]) -> Figure:
    """Confusion matrix: counts as text, colours normalised per true class (row)."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    names = metrics["class_names"]
    rows = cm.sum(axis=1, keepdims=True)
    frac = cm / np.where(rows > 0, rows, 1)
    size = 1.2 + 0.9 * len(names)
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return fig


def fig_label_fraction(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    """Macro AUC (with interval) against the label fraction, one line per setup.

    Args:
        groups: setup name -> rows with ``label_fraction``, ``auc_macro`` and
            ``auc_macro_ci`` (``[lower, upper]`` or None).

    Returns:
        The figure, or None when fewer than two label fractions are present.
    """
    fractions = {r["label_fraction"] for g in groups.values() for r in g}
    if len(fractions) < 2:
        return None
    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
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
    return fig


def _draw_attribution_map(
    ax: Axes, method: str, a: np.ndarray, img: np.ndarray, cmap: str | None
) -> None:
    """One attribution map on its axes (Grad-CAM over the image, IG signed, saliency >= 0)."""
    if method == "integrated_gradients":
        v = np.abs(a).max() or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-v, vmax=v)
    elif method == "gradcam":
        # non-negative after ReLU; an all-zero map means no evidence in layer4
        ax.imshow(img, cmap=cmap)
        ax.imshow(a, cmap="inferno", alpha=0.55, vmin=0, vmax=max(float(a.max()), 1e-12))
    else:
        ax.imshow(a, cmap="inferno", vmin=0, vmax=max(float(a.max()), 1e-12))


def fig_attribution(
    images: np.ndarray,
    labels: np.ndarray,
    maps: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    probs: np.ndarray | None = None,
) -> Figure:
    """Rows: example images; columns: the image and one map per method.

    Args:
        images: (N, C, H, W) example images.
        labels: (N,) their classes (the explained logit).
        maps: method -> (N, H, W) attribution maps.
        class_names: names in label order.
        probs: (N, num_classes) model probabilities, shown in the titles.
    """
    methods = list(maps)
    n = len(images)
    fig = Figure(figsize=(2.0 * (1 + len(methods)), 2.0 * n))
    axes = fig.subplots(n, 1 + len(methods), squeeze=False)
    for i in range(n):
        img, cmap = _display(images[i])
        axes[i, 0].imshow(img, cmap=cmap)
        label = f"{class_names[labels[i]]}"
        if probs is not None:
            label += f"  p={probs[i, labels[i]]:.2f}"
        axes[i, 0].set_title(label, fontsize=8)
        for j, m in enumerate(methods, start=1):
            _draw_attribution_map(axes[i, j], m, maps[m][i], img, cmap)
            if i == 0:
                axes[i, j].set_title(ATTRIBUTION_TITLES.get(m, m), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def _retrieval_queries(labels: np.ndarray) -> list[int]:
    """A balanced handful of query indices: round-robin over classes."""
    order: list[int] = []
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    while len(order) < min(RETRIEVAL_MAX_QUERIES, len(labels)):
        for lst in by_class:
            if lst and len(order) < RETRIEVAL_MAX_QUERIES:
                order.append(int(lst.pop(0)))
    return order


def fig_retrieval(ex: Mapping[str, np.ndarray], class_names: Sequence[str]) -> Figure:
    """Query images (first column) and their nearest test neighbours in embedding space.

    Args:
        ex: the arrays of an ``examples.npz`` (``images``, ``labels``, ``neighbor_images``
            (Q, K, C, H, W), ``neighbor_labels``, ``neighbor_similarity``).
        class_names: names in label order.
    """
    labels = ex["labels"]
    order = _retrieval_queries(labels)
    k = ex["neighbor_images"].shape[1]
    fig = Figure(figsize=(1.6 * (k + 1), 1.75 * len(order)))
    axes = fig.subplots(len(order), k + 1, squeeze=False)
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
    return fig


def _stratified_sample(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """All indices, or a seeded sample of at most ``cap`` with equal shares per class."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(labels))
    if len(idx) <= cap:
        return idx
    per = cap // max(1, len(np.unique(labels)))
    return np.concatenate(
        [
            rng.choice(
                np.flatnonzero(labels == c), min(per, int((labels == c).sum())), replace=False
            )
            for c in np.unique(labels)
        ]
    )


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401  (the `umap` extra; importing it compiles numba code)
    except ImportError:
        return False
    return True


def resolve_embedding_map(method: str, n: int) -> str:
    """The projection :func:`fig_embedding_map` uses for ``n`` points (see EMBEDDING_MAPS).

    Raises:
        MissingDependencyError: ``umap`` asked for explicitly without the extra installed.
    """
    if method == "auto":
        return "umap" if n > AUTO_UMAP_ABOVE and _umap_available() else "tsne"
    if method == "umap" and not _umap_available():
        raise MissingDependencyError(
            'the UMAP embedding map needs umap-learn: pip install "deeplense-ssl[umap]", or '
            "use --embedding-map tsne."
        )
    return method


def _project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(N, D) -> (N, 2) by t-SNE or UMAP (cosine metric, the one the kNN monitors use)."""
    if method == "umap":
        import umap

        k = int(min(15, max(2, len(x) - 1)))
        reducer = umap.UMAP(
            n_components=2, n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1
        )
        return np.asarray(reducer.fit_transform(x))
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        max_iter=TSNE_ITERATIONS,
    )
    return tsne.fit_transform(x)


def fig_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    seed: int,
    method: str = "auto",
) -> Figure:
    """2-D map (t-SNE or UMAP, :func:`resolve_embedding_map`) of test embeddings (N, D),
    on a stratified sample of at most TSNE_MAX_POINTS / UMAP_MAX_POINTS."""
    method = resolve_embedding_map(method, len(labels))
    cap = UMAP_MAX_POINTS if method == "umap" else TSNE_MAX_POINTS
    idx = _stratified_sample(labels, cap, seed)
    xy = _project(
        embeddings[idx].astype(np.float64 if method == "tsne" else np.float32), method, seed
    )
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.subplots()
    size = 8 if len(idx) <= 5000 else 1
    for c in np.unique(labels[idx]):
        sel = labels[idx] == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, alpha=0.7, label=class_names[c], linewidths=0)
    name = "UMAP" if method == "umap" else "t-SNE"
    ax.set(xticks=[], yticks=[], title=f"{name} of test embeddings (n={len(idx)})")
    ax.legend(fontsize=8, markerscale=2 if size > 1 else 6)
    return fig


# --------------------------------------------------------------------------------------------
# Montages (search results, anomalies)
# --------------------------------------------------------------------------------------------


def fig_montage(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    title: str | None = None,
    highlight_first_column: bool = False,
    tile_inches: float = 1.5,
) -> Figure:
    """A grid of images with a caption each, filled row by row.

    Args:
        images: (C, H, W) arrays; one band is shown grey, three as RGB, each scaled to [0, 1]
            per image for display only (other band counts: the first band).
        titles: one caption per image (may hold a line break), or None.
        ncols: images per row (e.g. ``k + 1``: a query and its ``k`` neighbours per row).
        title: figure title.
        highlight_first_column: caption the first column in a colour (the queries).
        tile_inches: side of one tile.
    """
    n = len(images)
    ncols = max(1, min(int(ncols), n or 1))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(tile_inches * ncols, (tile_inches + 0.35) * nrows + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for j, img in enumerate(images):
        ax = axes[j // ncols, j % ncols]
        shown, cmap = _display(img)
        ax.imshow(shown, cmap=cmap)
        if titles is not None:
            first = highlight_first_column and j % ncols == 0
            ax.set_title(titles[j], fontsize=6, color="navy" if first else "black")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
