"""Run-folder layout: every file name, run kind and JSON convention of the written folders.

This is the only module that knows what a run folder holds; the commands import the names from
here. It imports no training or evaluation code (only :mod:`deeplense_ssl.io` for atomic writes
and :mod:`deeplense_ssl.errors`).

Pretrain run (``deeplense-ssl pretrain``)

=======================  =====================================================================
``config.json``          ``{"kind": "pretrain", "deeplense_ssl_version", "config", "resolved",
                         "backbone_spec"}`` (:func:`write_run_config` / :func:`read_run_config`)
``checkpoint.pt``        the latest full training state, atomic
``backbone.pt``          the final backbone ``state_dict`` (torchvision key layout, no ``fc``)
``metrics.jsonl``        one JSON object per logged step / epoch (:func:`read_metrics`)
``loss_curve.png``       the training loss against the optimiser step
=======================  =====================================================================

Finetune run (``deeplense-ssl finetune``)

=======================  =====================================================================
``config.json``          ``{"kind": "finetune", "deeplense_ssl_version", "config", "resolved",
                         "spec", "pretrain", "data_summary"}``
``model.pt``             backbone + head ``state_dict`` and the spec to rebuild them
                         (``format`` :data:`MODEL_FORMAT`)
``metrics.jsonl``        one line per epoch
``history.png``          loss and validation metrics against the epoch
``val_metrics.json``     the kept (best validation AUC) epoch
``label_subset.npy``     indices into the training data of the labelled images
``train_embeddings.npz`` ``embeddings`` (N, D) and ``labels`` (N,) of labelled images, for kNN
=======================  =====================================================================

Evaluation (``deeplense-ssl evaluate``; default ``--out`` inside the finetune run): a metrics
file (``metrics.json``, ``kind="evaluate"``) and beside it the per-image ``scores.npz`` and the
report examples ``examples.npz`` (:func:`scores_path_for`).

Report (``deeplense-ssl report``): the HTML file and ``metrics.json`` beside it (``kind="report"``;
``report_metrics.json`` when an evaluate ``metrics.json`` already sits there,
:func:`report_metrics_path`).

JSON: every metrics / config file is written through :func:`to_jsonable` (strict JSON: NumPy
scalars and arrays become Python numbers and lists, non-finite floats become ``null``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CheckpointError
from .io import write_text_atomic

# --------------------------------------------------------------------------------------------
# File names and kinds
# --------------------------------------------------------------------------------------------

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"

# pretrain run
CHECKPOINT_FILE = "checkpoint.pt"
BACKBONE_FILE = "backbone.pt"
LOSS_CURVE_FILE = "loss_curve.png"

# finetune run
MODEL_FILE = "model.pt"
HISTORY_PLOT_FILE = "history.png"
VAL_METRICS_FILE = "val_metrics.json"
LABEL_SUBSET_FILE = "label_subset.npy"
TRAIN_EMBEDDINGS_FILE = "train_embeddings.npz"

# evaluation and report
EVAL_METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.npz"
EXAMPLES_FILE = "examples.npz"
REPORT_FILE = "report.html"
REPORT_METRICS_FALLBACK_FILE = "report_metrics.json"

PRETRAIN_KIND = "pretrain"
FINETUNE_KIND = "finetune"
EVALUATE_KIND = "evaluate"
REPORT_KIND = "report"

MODEL_FORMAT = "deeplense_ssl.finetune_model.v1"


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Dataclasses become dicts, mappings get ``str`` keys, tuples become lists, NumPy / torch
    scalars and arrays become Python numbers and (nested) lists (anything with ``tolist``),
    paths become strings, non-finite floats (NaN, +-inf) become ``None`` (strict JSON) and any
    other object its ``str``.

    Args:
        obj: any value.

    Returns:
        A value ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # NumPy scalars / arrays, torch tensors
        return to_jsonable(obj.tolist())
    return str(obj)


def write_json(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``to_jsonable(obj)`` as strict JSON (plus a final newline) atomically.

    Args:
        path: the file; its folder is created if needed.
        obj: any value (see :func:`to_jsonable`).
        indent: JSON indentation.
        sort_keys: sort object keys.

    Returns:
        The path.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_text_atomic(Path(path), text + "\n")


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object file.

    Args:
        path: the file.
        what: what it is, for the error message (e.g. ``"run config"``).

    Raises:
        CheckpointError: unreadable file, invalid JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc}).") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object.")
    return data


def write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """Write one JSON object per line (each through :func:`to_jsonable`) atomically."""
    text = "".join(json.dumps(to_jsonable(row)) + "\n" for row in rows)
    return write_text_atomic(Path(path), text)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one per non-empty line.

    Lines that are not valid JSON objects (a torn last line of a killed run) are skipped; a
    missing file gives an empty list.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (an empty list if there is none)."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


# --------------------------------------------------------------------------------------------
# Pretrain run config
# --------------------------------------------------------------------------------------------


def write_run_config(run_dir: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write a pretrain run's ``config.json`` atomically (adds ``kind`` and the version)."""
    data = {"kind": PRETRAIN_KIND, "deeplense_ssl_version": __version__, **payload}
    path = Path(run_dir) / CONFIG_FILE
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Read a pretrain run folder's ``config.json``.

    Raises:
        CheckpointError: missing folder or file, invalid JSON, or not a pretrain run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder.")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir}: not a pretrain run folder (no {CONFIG_FILE}); pass the --out folder of "
            "`deeplense-ssl pretrain`."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable run config ({exc}).") from exc
    if (
        not isinstance(data, dict)
        or data.get("kind") != PRETRAIN_KIND
        or "backbone_spec" not in data
    ):
        raise CheckpointError(
            f"{run_dir}: {CONFIG_FILE} is not from a deeplense_ssl pretrain run "
            f"(kind={data.get('kind') if isinstance(data, dict) else None!r})."
        )
    return data


# --------------------------------------------------------------------------------------------
# Evaluation and report outputs
# --------------------------------------------------------------------------------------------


def scores_path_for(metrics_path: str | Path, kind: str = "scores") -> Path:
    """Where the per-image arrays of a metrics file go.

    ``scores.npz`` / ``examples.npz`` beside a file named ``metrics.json``,
    ``<stem>.<kind>.npz`` beside any other name.

    Args:
        metrics_path: the evaluate metrics file.
        kind: ``"scores"`` or ``"examples"``.
    """
    p = Path(metrics_path)
    if p.name == EVAL_METRICS_FILE:
        return p.with_name(f"{kind}.npz")
    return p.with_name(f"{p.stem}.{kind}.npz")


def report_metrics_path(out: str | Path) -> Path:
    """``metrics.json`` beside the report, unless that is an evaluate metrics file."""
    p = Path(out).with_name(EVAL_METRICS_FILE)
    if p.is_file():
        try:
            kind = json.loads(p.read_text()).get("kind")
        except (OSError, json.JSONDecodeError, AttributeError):
            kind = None
        if kind != REPORT_KIND:
            return p.with_name(REPORT_METRICS_FALLBACK_FILE)
    return p
