"""Figures: the drawn data equals the input records, figures need no pyplot, PNGs are written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from deeplense_ssl import plots
from deeplense_ssl.errors import MissingDependencyError
from deeplense_ssl.runs import LOSS_CURVE_FILE, METRICS_FILE

HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "val_loss": 1.1, "val_acc": 0.4, "val_auc_macro": 0.6},
    {"epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "val_acc": 0.5, "val_auc_macro": None},
    {"epoch": 3, "train_loss": 0.7, "val_loss": 1.05, "val_acc": 0.6, "val_auc_macro": 0.7},
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_finetune_history_draws_the_records_and_the_kept_epoch(tmp_path):
    fig = Figure()
    ax_loss, ax_val = fig.subplots(1, 2)
    plots.draw_finetune_history(ax_loss, ax_val, HISTORY, best_epoch=3)
    train, val = ax_loss.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [1.2, 0.9, 0.7]
    assert list(val.get_ydata()) == [1.1, 1.0, 1.05]
    auc, acc, kept = ax_val.get_lines()
    np.testing.assert_array_equal(auc.get_ydata(), [0.6, np.nan, 0.7])  # undefined AUC: a gap
    assert list(acc.get_ydata()) == [0.4, 0.5, 0.6]
    assert list(kept.get_xdata()) == [3, 3] and kept.get_label() == "kept (epoch 3)"
    path = plots.plot_finetune_history(HISTORY, 3, tmp_path / "history.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]


def test_fig_training_panels_follow_the_available_histories():
    pre = [{"kind": "step", "step": s, "loss": 5.0 - s} for s in (1, 2, 3)]
    assert plots.fig_training([], [], None, "simclr") is None
    assert plots.fig_training([{"loss": None}], [], None, "simclr") is None  # no finite loss
    only_pre = plots.fig_training(pre, [], None, "simclr")
    assert len(only_pre.axes) == 1 and only_pre.axes[0].get_title() == "pretraining loss (simclr)"
    only_ft = plots.fig_training([], HISTORY, 2, "simclr")
    assert len(only_ft.axes) == 2
    both = plots.fig_training(pre, HISTORY, 2, "simclr")
    assert [a.get_title() for a in both.axes] == [
        "pretraining loss (simclr)",
        "fine-tuning loss",
        "fine-tuning validation",
    ]


def test_plot_loss_curve_writes_the_png_from_metrics_jsonl(tmp_path):
    rows = [{"kind": "step", "step": s, "loss": 2.0 / s} for s in (1, 2, 3)]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plots.plot_loss_curve(tmp_path)
    assert path == tmp_path / LOSS_CURVE_FILE and path.read_bytes().startswith(PNG_MAGIC)


def _metrics(binary: bool = False) -> dict:
    names = ["a", "b"] if binary else ["a", "b", "c"]
    curves = {n: {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]} for n in names[binary:]}
    if not binary:
        curves["macro"] = curves["micro"] = {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
    return {
        "class_names": names,
        "confusion_matrix": np.diag([3] * len(names)).tolist(),
        "roc_curves": curves,
        "roc_auc": {
            "binary": binary,
            "auc": 0.8 if binary else None,
            "per_class": dict.fromkeys(names, 0.8),
            "macro": 0.8,
            "micro": None if binary else 0.75,
        },
    }


def test_roc_and_confusion_figures_label_what_the_metrics_say():
    ax = plots.fig_roc(_metrics()).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == [
        "a (AUC 0.800)",
        "b (AUC 0.800)",
        "c (AUC 0.800)",
        "macro (AUC 0.800)",
        "micro (AUC 0.750)",
    ]
    assert plots.fig_roc(_metrics(binary=True)).axes[0].get_legend_handles_labels()[1] == [
        "b (AUC 0.800)"
    ]
    cm = _metrics()
    cm["confusion_matrix"] = [[5, 1, 0], [0, 2, 0], [1, 0, 0]]
    texts = [t.get_text() for t in plots.fig_confusion(cm).axes[0].texts]
    assert texts == ["5", "1", "0", "0", "2", "0", "1", "0", "0"]


def test_label_fraction_needs_two_fractions_and_draws_the_intervals():
    row = {"label_fraction": 0.1, "auc_macro": 0.7, "auc_macro_ci": [0.6, 0.75]}
    assert plots.fig_label_fraction({"x": [row]}) is None
    rows = [row, {"label_fraction": 1.0, "auc_macro": 0.9, "auc_macro_ci": None}]
    fig = plots.fig_label_fraction({"x": rows})
    (line,) = fig.axes[0].get_lines()[:1]
    assert list(line.get_xdata()) == [0.1, 1.0] and list(line.get_ydata()) == [0.7, 0.9]


def test_image_figures_and_png_bytes_without_pyplot():
    rng = np.random.default_rng(0)
    images = rng.random((4, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    maps = {
        "saliency": rng.random((4, 8, 8)),
        "integrated_gradients": rng.standard_normal((4, 8, 8)),
    }
    fig = plots.fig_attribution(images, labels, maps, ["a", "b"], probs=np.full((4, 2), 0.5))
    assert len(fig.axes) == 4 * 3 and fig.axes[0].get_title() == "a  p=0.50"
    ex = {
        "images": images,
        "labels": labels,
        "neighbor_images": np.stack([images[[1, 2]]] * 4),
        "neighbor_labels": np.array([[0, 1]] * 4),
        "neighbor_similarity": np.full((4, 2), 0.5, np.float32),
    }
    retrieval = plots.fig_retrieval(ex, ["a", "b"])
    assert len(retrieval.axes) == 4 * 3  # queries round-robin over classes: 0, 2, 1, 3
    assert [retrieval.axes[3 * r].get_title() for r in range(4)] == ["query: a", "query: b"] * 2
    emb, labels = rng.standard_normal((12, 5)), np.repeat([0, 1, 2], 4)
    tsne = plots.fig_embedding_map(emb, labels, list("abc"), 0)
    assert tsne.axes[0].get_title() == "t-SNE of test embeddings (n=12)"
    assert plots.png_bytes(fig).startswith(PNG_MAGIC)


def test_library_code_never_imports_pyplot():
    # a fresh interpreter: pyplot would pick a backend and keep global figure state
    code = (
        "import sys, deeplense_ssl.plots, deeplense_ssl.finetuning, deeplense_ssl.evaluation, "
        "deeplense_ssl.report; print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_display_scales_each_image_to_unit_range():
    grey, cmap = plots._display(np.array([[[2.0, 4.0], [6.0, 10.0]]]))
    assert cmap == "gray" and grey.min() == 0.0 and grey.max() == 1.0
    rgb, cmap = plots._display(np.ones((3, 2, 2)))
    assert cmap is None and rgb.shape == (2, 2, 3) and (rgb == 0).all()  # constant: no division


def test_collapse_monitor_is_drawn_beside_the_loss():
    pre = [{"kind": "step", "step": s, "loss": 5.0 - s} for s in (1, 2, 3, 4)]
    pre += [
        {"kind": "epoch", "step": 2, "loss": 4.0, "rankme": 30.0, "emb_std_mean": 0.02},
        {"kind": "epoch", "step": 4, "loss": 2.0, "rankme": 1.2, "emb_std_mean": 1e-5,
         "collapse_warning": "representation collapse: ..."},
    ]  # fmt: skip
    fig = plots.fig_training(pre, [], None, "vicreg")
    assert [a.get_title() for a in fig.axes[:2]] == [
        "pretraining loss (vicreg)",
        "collapse monitor",
    ]
    rank_line, warned = fig.axes[1].get_lines()
    assert list(rank_line.get_xdata()) == [2, 4] and list(rank_line.get_ydata()) == [30.0, 1.2]
    assert list(warned.get_xdata()) == [4]  # the warning is marked where it was logged
    twin = [a for a in fig.axes if a.get_ylabel() == "mean per-dim std"]
    assert list(twin[0].get_lines()[0].get_ydata()) == [0.02, 1e-5]
    assert plots.draw_collapse_curve(fig.axes[0], pre[:4]) is False  # nothing logged: no panel


def test_embedding_map_choices_and_umap(monkeypatch):
    from deeplense_ssl import config

    assert config.EMBEDDING_MAPS == plots.EMBEDDING_MAPS  # the config's copy of the choice list
    n = plots.AUTO_UMAP_ABOVE
    assert plots.resolve_embedding_map("auto", n) == "tsne"
    assert plots.resolve_embedding_map("auto", n + 1) == "umap"  # umap-learn is a dev extra
    monkeypatch.setattr(plots, "_umap_available", lambda: False)
    assert plots.resolve_embedding_map("auto", n + 1) == "tsne"
    with pytest.raises(MissingDependencyError, match=r"deeplense-ssl\[umap\]"):
        plots.resolve_embedding_map("umap", 10)
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(3, 8) * 20, 20, axis=0)  # three well-separated clusters
    emb, labels = centres + rng.standard_normal((60, 8)), np.repeat([0, 1, 2], 20)
    fig = plots.fig_embedding_map(emb, labels, list("abc"), 0, "umap")
    assert fig.axes[0].get_title() == "UMAP of test embeddings (n=60)"
    xy = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    # clusters stay apart in the map: each point's nearest other point has its label
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(60) * 1e9
    assert (labels[d.argmin(1)] == labels).mean() > 0.95


def test_stratified_sample_caps_with_equal_class_shares():
    labels = np.repeat([0, 1], [90, 30])
    idx = plots._stratified_sample(labels, 40, seed=1)
    assert len(idx) == 40 and (labels[idx] == 0).sum() == 20 and len(set(idx)) == 40
    assert np.array_equal(plots._stratified_sample(labels, 500, 1), np.arange(120))
