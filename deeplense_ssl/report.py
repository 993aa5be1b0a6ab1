"""Evaluated run folders -> one self-contained HTML report (+ ``metrics.json`` beside it).

The report shows what ``evaluate`` and the training runs wrote; it computes nothing new beyond
what is plotted: the numbers come from each run's ``metrics.json`` (ROC-AUC, intervals, curves,
confusion matrix, kNN), the training curves from the finetune run's ``metrics.jsonl`` and the
pretrain run's ``metrics.jsonl``. Three things need the model or the embeddings and are
computed for display only: captum attribution maps of the example images ``evaluate`` saved
(``examples.npz``), the nearest-neighbour grid (neighbours chosen by ``evaluate``) and a t-SNE
of a capped sample of the test embeddings in ``scores.npz``.

This module assembles HTML only: it reads run folders (layout: :mod:`deeplense_ssl.runs`) and
embeds the figures of :mod:`deeplense_ssl.plots` as base64 PNGs, so the HTML file can be mailed
or archived alone. The ``metrics.json`` beside it (``report_metrics.json`` if a ``metrics.json``
of ``evaluate`` already sits there) holds the comparison table in machine-readable form.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import __version__
from .attribution import attribution_maps
from .config import ReportConfig, config_to_dict
from .errors import CheckpointError, ConfigError
from .inference import load_finetuned, predict
from .plots import (
    fig_attribution,
    fig_confusion,
    fig_embedding_map,
    fig_label_fraction,
    fig_retrieval,
    fig_roc,
    fig_training,
    png_bytes,
)
from .runs import (
    BACKBONE_FILE,
    CONFIG_FILE,
    EVAL_METRICS_FILE,
    EXAMPLES_ARRAYS,
    EXAMPLES_FILE,
    REPORT_KIND,
    SCORES_ARRAYS,
    SCORES_FILE,
    VAL_METRICS_FILE,
    json_text,
    read_arrays,
    read_eval_metrics,
    read_finetune_config,
    read_metrics,
    read_val_metrics,
    report_metrics_path,
    text_writer,
    to_jsonable,
    write_together,
)
from .runtime import resolve_device


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


def _locate_metrics(p: Path) -> Path:
    """The evaluate metrics file of a finetune run folder, or ``p`` itself if it is a file."""
    if p.is_dir():
        metrics_path = p / EVAL_METRICS_FILE
        if not metrics_path.is_file():
            hint = ""
            if (p / BACKBONE_FILE).is_file():
                hint = " (this is a pretrain run: fine-tune and evaluate it first)"
            raise CheckpointError(
                f"{p}: no {EVAL_METRICS_FILE}{hint}; run `deeplense-ssl evaluate --checkpoint {p} "
                "--data TEST` first, or pass the path of its metrics file."
            )
        return metrics_path
    if p.is_file():
        return p
    raise CheckpointError(f"{p}: no such run folder or metrics file.")


def read_run(path: str | Path) -> RunRecord:
    """Locate and read one evaluated run.

    Args:
        path: a finetune run folder holding the ``metrics.json`` of ``evaluate`` (the default
            ``--out``), or the path of such a ``metrics.json`` anywhere.

    Raises:
        CheckpointError: no such folder/file, no metrics (evaluate was not run), a metrics file
            that is not from ``evaluate`` or lacks an entry the report needs, missing per-image
            scores, or a damaged run config / validation metrics file (each named).
    """
    metrics_path = _locate_metrics(Path(path))
    metrics = read_eval_metrics(metrics_path)
    run_dir = Path(metrics.get("finetune_run") or metrics_path.parent)
    if not run_dir.is_dir():
        run_dir = metrics_path.parent
    scores_path = metrics_path.parent / metrics.get("scores_file", SCORES_FILE)
    if not scores_path.is_file():
        raise CheckpointError(
            f"{scores_path}: per-image scores of {metrics_path} are missing; re-run "
            "`deeplense-ssl evaluate`."
        )
    examples_path = metrics_path.parent / metrics.get("examples_file", EXAMPLES_FILE)
    config_path, val_path = run_dir / CONFIG_FILE, run_dir / VAL_METRICS_FILE
    run_config = read_finetune_config(config_path) if config_path.is_file() else None
    pre = (run_config or {}).get("pretrain") or {}
    return RunRecord(
        name=run_dir.name,
        run_dir=run_dir,
        metrics_path=metrics_path,
        metrics=metrics,
        run_config=run_config,
        history=_plottable(read_metrics(run_dir)),
        val_metrics=read_val_metrics(val_path) if val_path.is_file() else None,
        pretrain_history=read_metrics(pre["run"]) if pre.get("run") else [],
        scores_path=scores_path,
        examples_path=examples_path if examples_path.is_file() else None,
    )


HISTORY_KEYS = ("train_loss", "val_loss", "val_auc_macro", "val_acc")


def _plottable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finetune ``metrics.jsonl`` records that can be drawn: an integer epoch and numbers
    (or nothing) for :data:`HISTORY_KEYS`; other lines of a damaged file are left out."""
    return [
        r
        for r in history
        if isinstance(r.get("epoch"), int)
        and all(r.get(k) is None or _num(r.get(k)) is not None for k in HISTORY_KEYS)
    ]


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
        "substructure_attribution_ratio": _localisation_all(m, "ratio"),
        "substructure_attribution_ratio_to_light": _localisation_all(m, "ratio_to_light"),
        "ci_resamples": (m.get("ci_method") or {}).get("n_resamples"),
    }


def _localisation_all(m: dict[str, Any], key: str) -> Any:
    """An entry of the all-classes attribution localisation of an evaluate metrics dict."""
    return ((m.get("localisation") or {}).get("all") or {}).get(key)


def _interval(entry: dict | None) -> list[float | None] | None:
    if not entry:
        return None
    return [_num(entry.get("lower")), _num(entry.get("upper"))]


def _label_fraction_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows with a label fraction and a macro AUC, grouped by setup (init, head, method)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if _num(r["label_fraction"]) is None or _num(r["auc_macro"]) is None:
            continue
        groups.setdefault(_setup_name(r), []).append(r)
    return groups


def _img(fig: Figure | None) -> str:
    """A figure as an ``<img>`` tag with an embedded base64 PNG ("" for None)."""
    if fig is None:
        return ""
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="figure">'


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
        "<th>F1 macro</th><th>kNN acc.</th><th>OOD AUROC</th>"
        "<th>attribution on substructure (&times; random map / &times; image light)</th></tr>"
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
            f"<td>{_fmt(r['ood_auroc'])}</td>"
            f"<td>{_fmt(r['substructure_attribution_ratio'], 2)} / "
            f"{_fmt(r['substructure_attribution_ratio_to_light'], 2)}</td></tr>"
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
        held_out = ", ".join(map(str, ood.get("classes") or []))
        extra += (
            f"; OOD AUROC (max-softmax, held-out {_esc(held_out)}) "
            f"{_fmt(ood.get('auroc'))} ({_esc(ood.get('n_ood'))} images)"
        )
    extra += ".</p>"
    return (
        f"<p class=meta>ROC-AUC, one-vs-rest; interval: {caption}.</p>"
        f"<table><tr><th>class</th><th>test images</th>"
        f"<th>AUC [CI]</th></tr>{''.join(rows)}</table>{extra}"
    )


def _localisation_table(loc: dict[str, Any] | None) -> str:
    """Does the model look at the substructure? (``metrics["localisation"]``; "" when absent)."""
    if not loc:
        return ""
    rows = [(name, v) for name, v in loc["per_class"].items()] + [("all", loc.get("all") or {})]
    body = "".join(
        f"<tr{' class=sum' if name == 'all' else ''}><td>{_esc(name)}</td>"
        f"<td>{_esc(v.get('n'))}</td><td>{_fmt(v.get('fraction'))}</td>"
        f"<td>{_fmt(v.get('random'))}</td><td>{_fmt(v.get('ratio'), 2)}</td>"
        f"<td>{_fmt(v.get('light_fraction'))}</td><td>{_fmt(v.get('ratio_to_light'), 2)}</td></tr>"
        for name, v in rows
    )
    return (
        "<h3>Does the model look at the substructure?</h3>"
        f"<p class=meta>Share of |{_esc(loc.get('method'))}| attribution (true class logit) "
        f"within {_fmt(loc.get('radius_arcsec'), 2)} arcsec ({_esc(loc.get('radius_fwhm'))} PSF "
        "FWHM) of the simulated subhalos (cdm) or vortex line (axion), against the share a "
        "random map puts there (the masks' area) and the share of the image's own light there. "
        "Subhalos sit near the ring, where the light is, so an attribution that only follows "
        "the light already scores above the random map: read the ratio to the light. Near 1 "
        "there, the model follows the light, not the substructure; a subhalo far from the "
        "ring changes pixels on the ring, not at its own position.</p>"
        "<table><tr><th>class</th><th>images</th><th>attribution share</th>"
        "<th>random map</th><th>ratio</th><th>light share</th><th>ratio to light</th></tr>"
        f"{body}</table>"
    )


def _kv_table(obj: dict[str, Any] | None) -> str:
    """A two-column table of a flat-ish dict; nested values as compact JSON."""
    if not obj:
        return "<p class=meta>none recorded</p>"
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>"
        f"{_esc(v if isinstance(v, str) else json.dumps(to_jsonable(v), separators=(', ', ': ')))}"
        "</td></tr>"
        for k, v in obj.items()
    )
    return f"<table>{rows}</table>"


def _details(title: str, obj: Any, open_: bool = False) -> str:
    text = json.dumps(to_jsonable(obj), indent=2)
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


def _figures_html(
    run: RunRecord,
    class_names: list[str],
    cfg: ReportConfig,
    device: Any,
    maps: dict[str, tuple[str, str]],
) -> str:
    """ROC, confusion matrix, training curves, attribution, retrieval and embedding map of a run."""
    m = run.metrics
    parts = ["<h3>ROC curves and confusion matrix</h3>"]
    parts.append(f"<div class=figs>{_img(fig_roc(m))}{_img(fig_confusion(m))}</div>")
    rc = run.run_config or {}
    method = (rc.get("pretrain") or {}).get("method") or "SSL"
    best_epoch = (run.val_metrics or {}).get("best_epoch")
    training = fig_training(run.pretrain_history, run.history, best_epoch, method)
    if training is not None:
        parts.append("<h3>Training curves</h3>" + _img(training))
    n = len(class_names)
    scores = read_arrays(run.scores_path, "per-image scores", SCORES_ARRAYS, n_classes=n)
    ex = None
    if run.examples_path is not None:
        ex = read_arrays(run.examples_path, "report examples", EXAMPLES_ARRAYS, n_classes=n)
    if ex is not None and len(ex["labels"]) and cfg.attribution_methods:
        parts.append("<h3>Attribution maps (explaining the true class logit)</h3>")
        parts.append(_attribution_html(run, ex, class_names, cfg, device))
    if ex is not None and len(ex["labels"]) and ex["neighbor_images"].shape[1] > 0:
        parts.append("<h3>Nearest-neighbour retrieval in embedding space (test set)</h3>")
        parts.append(_img(fig_retrieval(ex, class_names)))
    emb = scores.get("embeddings")
    if cfg.embedding_map != "none" and emb is not None and len(emb) >= 5:
        parts.append(_embedding_map_html(run, emb, scores["labels"], class_names, cfg, maps))
    return "\n".join(parts)


def _embedding_map_html(
    run: RunRecord,
    emb: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    cfg: ReportConfig,
    maps: dict[str, tuple[str, str]],
) -> str:
    """The embedding map of a run, drawn once per distinct set of test embeddings: probes on
    the same frozen backbone share their features, and the map of an earlier run is reused
    (``maps``: content hash -> (run name, ``<img>`` tag))."""
    key = hashlib.sha256(emb.tobytes() + labels.tobytes()).hexdigest()
    if key not in maps:
        fig = fig_embedding_map(emb, labels, class_names, cfg.seed, cfg.embedding_map)
        maps[key] = (run.name, _img(fig))
        return "<h3>Embedding map</h3>" + maps[key][1]
    first, img = maps[key]
    return (
        "<h3>Embedding map</h3><p class=meta>The same test embeddings as run "
        f"{_esc(first)} (the same frozen backbone).</p>" + img
    )


def _config_html(run: RunRecord) -> str:
    """Notes, the fine-tuning data summary and the configs of a run."""
    parts = [f"<p class=note>{_esc(note)}</p>" for note in run.notes]
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
    parts.append(_details("evaluation config", run.metrics.get("config")))
    return "\n".join(parts)


def _run_section(
    run: RunRecord, cfg: ReportConfig, device: Any, maps: dict[str, tuple[str, str]]
) -> str:
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
    parts.append(_localisation_table(m.get("localisation")))
    parts.append(_figures_html(run, class_names, cfg, device, maps))
    parts.append(_config_html(run))
    return "\n".join(parts)


def _attribution_html(
    run: RunRecord,
    ex: dict[str, np.ndarray],
    class_names: list[str],
    cfg: ReportConfig,
    device: Any,
) -> str:
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
    probs, _ = predict(model, images, device=device)
    model.cpu()
    return _img(fig_attribution(images, targets, maps, class_names, probs))


def _document(
    runs: list[RunRecord], rows: list[dict], cfg: ReportConfig, device: Any, now: str
) -> str:
    """The whole HTML page."""
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
    lf = fig_label_fraction(_label_fraction_groups(rows))
    if lf is not None:
        parts.append("<h3>ROC-AUC against label fraction</h3>" + _img(lf))
    parts.append(
        "<p class=meta>"
        + " &middot; ".join(f"<a href='#{_esc(r.name)}'>{_esc(r.name)}</a>" for r in runs)
        + "</p>"
    )
    maps: dict[str, tuple[str, str]] = {}  # embedding maps drawn so far (by content)
    for run in runs:
        parts.append(_run_section(run, cfg, device, maps))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(cfg: ReportConfig) -> Path:
    """Write the HTML report of ``cfg.runs`` to ``cfg.out`` and its ``metrics.json``.

    Args:
        cfg: run folders (or evaluate metrics files), output path, attribution settings.

    Returns:
        The path of the HTML file.

    The HTML file and its ``metrics.json`` are published together
    (:func:`deeplense_ssl.runs.write_together`): a failed or killed report leaves the previous
    pair, or none.

    Raises:
        CheckpointError: a run without metrics/scores, or with a damaged file (nothing is
            written then).
        OutputError: the output cannot be written (full disk, read-only folder), naming it.
    """
    cfg.validate()
    out = Path(cfg.out)
    if report_metrics_path(out) == out:
        raise ConfigError(
            f"--out {out}: the report's {EVAL_METRICS_FILE} is written beside the HTML file; "
            "give the HTML file another name (e.g. report.html)."
        )
    device = resolve_device(cfg.device)
    runs = [read_run(r) for r in cfg.runs]  # fail before writing anything
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.run_dir.parent.name}/{r.run_dir.name}"
    rows = [run_summary(r) for r in runs]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = _document(runs, rows, cfg, device, now)
    summary = {
        "kind": REPORT_KIND,
        "deeplense_ssl_version": __version__,
        "created_utc": now,
        "report": out.name,
        "config": config_to_dict(cfg),
        "runs": rows,
    }
    write_together(
        (out, text_writer(doc)), (report_metrics_path(out), text_writer(json_text(summary)))
    )
    return out
