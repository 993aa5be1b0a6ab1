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

Consistency: a folder or file group always holds one whole run, never a mix of two.

* ``finetune`` builds its run in a hidden sibling stage folder (``.NAME.stage-XXXXXXXX``) and
  swaps it in whole at the end (:func:`staged_run_folder`): re-running over an existing finetune
  run *replaces* it, evaluation and report files inside it included (they described the old
  model), and a failed, interrupted or killed run leaves the old one untouched. A folder holding
  anything else (another kind of run, files of the user) is refused before any work
  (:func:`check_replaceable`). Stages left by a killed run are removed by the next run.
* ``evaluate`` (metrics + ``scores.npz`` + ``examples.npz``) and ``report`` (HTML + its
  ``metrics.json``) publish their files together (:func:`write_together`).
* ``pretrain`` keeps its resumable folder (``checkpoint.pt`` is replaced atomically; the data
  fingerprint in ``config.json`` / ``checkpoint.pt`` refuses a resume on changed data; a folder
  whose ``config.json`` is not a pretrain run's is refused).

Reading: :func:`read_json` (with required / optional entries and their types),
:func:`read_eval_metrics`, :func:`read_finetune_config`, :func:`read_val_metrics` and
:func:`read_arrays` (``scores.npz``, ``examples.npz``, ``train_embeddings.npz``: no pickles,
sizes checked before allocating, keys, dtypes and shapes checked) turn a zero-byte, truncated,
foreign or incomplete file into one :class:`~deeplense_ssl.errors.CheckpointError` naming the
file and the key.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import json
import math
import os
import re
import shutil
import tempfile
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import CheckpointError, OutputError
from .io import atomic_output, matching_entries, output_error, write_text_atomic

try:  # POSIX only; without it stages are judged by age alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

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

FINETUNE_FILES = (
    CONFIG_FILE,
    MODEL_FILE,
    METRICS_FILE,
    HISTORY_PLOT_FILE,
    VAL_METRICS_FILE,
    LABEL_SUBSET_FILE,
    TRAIN_EMBEDDINGS_FILE,
)
EVALUATE_FILES = (EVAL_METRICS_FILE, SCORES_FILE, EXAMPLES_FILE)
REPORT_FILES = (REPORT_FILE, REPORT_METRICS_FALLBACK_FILE)
# experiment tracking (--log, deeplense_ssl.tracking): where the run records its tracker, and
# the default TensorBoard event folder / MLflow file store inside the run folder
TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
TRACKING_FILES = (TRACKING_FILE, TENSORBOARD_DIR, MLFLOW_DIR)
# an output still being built (embed's HDF5 file, a streamed evaluation's committed blocks):
# ``<out>.partial`` beside it, renamed or removed once the output is complete (partial_path)
PARTIAL_SUFFIX = ".partial"
EVAL_PARTIAL_DIR = EVAL_METRICS_FILE + PARTIAL_SUFFIX
REPLACEABLE_FILES = {
    FINETUNE_KIND: frozenset(
        FINETUNE_FILES + EVALUATE_FILES + REPORT_FILES + TRACKING_FILES + (EVAL_PARTIAL_DIR,)
    )
}
"""Per run kind written through :func:`staged_run_folder`: the names an existing folder may
hold for the new run to replace it (its own files and the evaluation / report files that
describe it)."""


def partial_path(out: str | Path) -> Path:
    """Where an output ``out`` is built until complete: ``<out>.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


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
    return write_text_atomic(Path(path), json_text(obj, indent=indent, sort_keys=sort_keys))


def json_text(obj: Any, *, indent: int = 2, sort_keys: bool = False) -> str:
    """``to_jsonable(obj)`` as strict JSON text with a final newline (what :func:`write_json`
    writes; for files written through :func:`write_together`)."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


Entries = Mapping[str, type | tuple[type, ...]]
"""Entry name -> the JSON type(s) its value must have (``dict``, ``list``, ``str``, ``int``,
``float``, ``bool``, ``type(None)``); ``int`` and ``float`` never accept ``true`` / ``false``."""


def _json_type_name(types: tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
    names.update({float: "a number", bool: "true/false", type(None): "null"})
    return " or ".join(names.get(t, t.__name__) for t in types)


def _is_json_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def check_entries(
    data: Mapping[str, Any],
    path: str | Path,
    what: str,
    required: Entries | None = None,
    optional: Entries | None = None,
) -> None:
    """Check that ``data`` has the ``required`` entries and that these and any ``optional``
    ones present have the declared JSON types.

    Args:
        data: a JSON object read from ``path``.
        path: the file, for the message.
        what: what the file is (``"metrics file"``), for the message.
        required: entries that must be present.
        optional: entries that may be absent.

    Raises:
        CheckpointError: the first missing or wrongly typed entry, naming the file and the key.
    """
    for key in required or {}:
        if key not in data:
            raise CheckpointError(
                f"{path}: {what} has no {key!r} entry; it is incomplete or not ours: re-create "
                "it with the command that wrote it."
            )
    for key, types in {**(optional or {}), **(required or {})}.items():
        types = types if isinstance(types, tuple) else (types,)
        if key in data and not _is_json_type(data[key], types):
            raise CheckpointError(
                f"{path}: {what} entry {key!r} must be {_json_type_name(types)}, got "
                f"{type(data[key]).__name__}; re-create the file with the command that wrote it."
            )


def read_json(
    path: str | Path,
    what: str,
    required: Entries | None = None,
    optional: Entries | None = None,
) -> dict[str, Any]:
    """Read a JSON object file, checking its entries (:func:`check_entries`).

    Args:
        path: the file.
        what: what it is, for the error message (e.g. ``"run config"``).
        required: entries that must be present, with their JSON types.
        optional: entries that may be absent, with their JSON types.

    Raises:
        CheckpointError: missing or unreadable file, invalid JSON, not a JSON object, or a
            missing / wrongly typed entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such {what}.") from exc
    except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise CheckpointError(f"{path}: unreadable {what} ({_one_line(exc)}).") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object.")
    check_entries(data, path, what, required, optional)
    return data


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
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
    data = read_json(path, "run config")
    if data.get("kind") != PRETRAIN_KIND or "backbone_spec" not in data:
        raise CheckpointError(
            f"{run_dir}: {CONFIG_FILE} is not from a deeplense_ssl pretrain run "
            f"(kind={data.get('kind')!r})."
        )
    check_entries(
        data, path, "run config", {"backbone_spec": dict, "config": dict}, {"resolved": dict}
    )
    return data


BACKBONE_SPEC_ENTRIES: Entries = {"name": str, "stem": str, "in_chans": int, "feature_dim": int}
"""What a pretrain run's ``backbone_spec`` must hold to rebuild the backbone."""


def read_backbone_spec(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``backbone_spec`` of a pretrain run's ``config.json``.

    Raises:
        CheckpointError: as :func:`read_run_config`, or a spec without ``name``, ``stem``,
            ``in_chans`` or ``feature_dim`` (naming the file and the key).
    """
    spec = read_run_config(run_dir)["backbone_spec"]
    check_entries(spec, Path(run_dir) / CONFIG_FILE, "backbone_spec", BACKBONE_SPEC_ENTRIES)
    return spec


MODEL_SPEC_ENTRIES: Entries = {
    "backbone": str,
    "stem": str,
    "in_chans": int,
    "feature_dim": int,
    "head_kind": str,
    "mlp_hidden_dim": int,
    "class_names": list,
    "normalize": str,
}
"""What the ``spec`` of a finetune ``model.pt`` must hold to rebuild the model."""


def check_model_state(state: Mapping[str, Any], path: str | Path) -> None:
    """Check a loaded finetune ``model.pt`` (format :data:`MODEL_FORMAT`) before it is used.

    Raises:
        CheckpointError: a missing or wrongly typed ``spec`` / state entry (named).
    """
    what = "model file"
    check_entries(state, path, what, {"spec": dict, "backbone_state": dict, "head_state": dict})
    check_entries(state["spec"], path, "model spec", MODEL_SPEC_ENTRIES)


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
        except (OSError, ValueError, AttributeError):  # unreadable: never overwrite it
            kind = None
        if kind != REPORT_KIND:
            return p.with_name(REPORT_METRICS_FALLBACK_FILE)
    return p


# --------------------------------------------------------------------------------------------
# Checked readers of the evaluation, finetune and report files
# --------------------------------------------------------------------------------------------

EVAL_METRICS_ENTRIES: Entries = {
    "kind": str,
    "class_names": list,
    "n_images": int,
    "roc_auc": dict,
    "confusion_matrix": list,
}
EVAL_METRICS_OPTIONAL: Entries = {
    "ci": dict,
    "ci_method": dict,
    "roc_curves": dict,
    "knn": (dict, type(None)),
    "ood": (dict, type(None)),
    "top_k_accuracy": (dict, type(None)),
    "warnings": list,
    "config": dict,
    "finetune_run": (str, type(None)),
    "scores_file": str,
    "examples_file": str,
    "accuracy": (float, type(None)),
    "class_counts": dict,
}


def read_eval_metrics(path: str | Path) -> dict[str, Any]:
    """Read and check a metrics file of ``evaluate`` (what the report needs of it).

    Raises:
        CheckpointError: unreadable, not of ``kind="evaluate"``, or a missing / malformed entry
            (named), e.g. a ``confusion_matrix`` that is not C x C for the C ``class_names``.
    """
    path = Path(path)
    what = "metrics file"
    m = read_json(path, what, optional={"kind": (str, type(None))})
    if m.get("kind") != EVALUATE_KIND:
        raise CheckpointError(
            f"{path}: not a metrics file of `deeplense-ssl evaluate` (kind={m.get('kind')!r}); "
            "pass evaluated finetune runs."
        )
    check_entries(m, path, what, EVAL_METRICS_ENTRIES, EVAL_METRICS_OPTIONAL)
    names = m["class_names"]
    if not names or not all(isinstance(n, str) for n in names):
        _malformed(path, "class_names", "a non-empty list of class names")
    check_entries(m["roc_auc"], path, "'roc_auc' of the metrics file", {"binary": bool})
    if not m["roc_auc"]["binary"]:
        check_entries(m["roc_auc"], path, "'roc_auc' of the metrics file", {"per_class": dict})
    cm = m["confusion_matrix"]
    if len(cm) != len(names) or not all(
        isinstance(row, list) and len(row) == len(names) and all(_is_number(v) for v in row)
        for row in cm
    ):
        _malformed(path, "confusion_matrix", f"{len(names)} x {len(names)} numbers")
    for name, curve in (m.get("roc_curves") or {}).items():
        ok = isinstance(curve, dict) and all(
            isinstance(curve.get(k), list) and all(_is_number(v) for v in curve[k])
            for k in ("fpr", "tpr")
        )
        if not ok or len(curve["fpr"]) != len(curve["tpr"]):
            _malformed(path, f"roc_curves/{name}", "fpr and tpr lists of equal length")
    for key, entry in (m.get("ci") or {}).items():
        if entry is not None and not isinstance(entry, dict):
            _malformed(path, f"ci/{key}", "an object with lower and upper")
    for key in ("scores_file", "examples_file"):
        if key in m and (not m[key] or Path(m[key]).name != m[key]):
            _malformed(path, key, "a file name beside the metrics file")
    return m


FINETUNE_CONFIG_OPTIONAL: Entries = {
    "kind": (str, type(None)),
    "config": dict,
    "resolved": dict,
    "spec": dict,
    "pretrain": (dict, type(None)),
    "data_summary": dict,
}


def read_finetune_config(path: str | Path) -> dict[str, Any]:
    """Read and check a finetune run's ``config.json`` (entries typed as the report uses them).

    Raises:
        CheckpointError: unreadable, or an entry of the wrong type (named).
    """
    path = Path(path)
    data = read_json(path, "run config", optional=FINETUNE_CONFIG_OPTIONAL)
    pretrain = data.get("pretrain") or {}
    check_entries(
        pretrain, path, "'pretrain' of the run config", optional={"run": (str, type(None))}
    )
    return data


def read_val_metrics(path: str | Path) -> dict[str, Any]:
    """Read and check a finetune run's ``val_metrics.json``.

    Raises:
        CheckpointError: unreadable, or ``best_epoch`` that is not an integer.
    """
    return read_json(path, "validation metrics", optional={"best_epoch": (int, type(None))})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _malformed(path: Path, key: str, expected: str) -> None:
    raise CheckpointError(
        f"{path}: entry {key!r} must be {expected}; the file is damaged or not ours: re-create "
        "it with the command that wrote it."
    )


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What one member of a run-folder ``.npz`` must be.

    Attributes:
        ndim: number of dimensions.
        kinds: allowed NumPy dtype kinds (``"f"`` float, ``"iu"`` integers, ``"U"`` strings).
    """

    ndim: int
    kinds: str


SCORES_ARRAYS = {
    "probs": ArraySpec(2, "f"),
    "labels": ArraySpec(1, "iu"),
    "embeddings": ArraySpec(2, "f"),
}
"""``scores.npz``: (N, C) probabilities, (N,) labels, (N, D) embeddings (+ optional members)."""
EXAMPLES_ARRAYS = {
    "images": ArraySpec(4, "f"),
    "labels": ArraySpec(1, "iu"),
    "neighbor_images": ArraySpec(5, "f"),
    "neighbor_labels": ArraySpec(2, "iu"),
    "neighbor_similarity": ArraySpec(2, "f"),
}
"""``examples.npz``: Q query images (Q, C, H, W), their labels and K neighbours each."""
TRAIN_EMBEDDINGS_ARRAYS = {"embeddings": ArraySpec(2, "f"), "labels": ArraySpec(1, "iu")}
"""``train_embeddings.npz``: (N, D) embeddings and (N,) labels of the labelled images."""

_NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    SyntaxError,
    TypeError,
    KeyError,
    MemoryError,
    zipfile.BadZipFile,
    zlib.error,
    tokenize.TokenError,
)


def read_arrays(
    path: str | Path,
    what: str,
    spec: Mapping[str, ArraySpec],
    *,
    n_classes: int | None = None,
) -> dict[str, np.ndarray]:
    """Every member of a run-folder ``.npz``, checked against ``spec``.

    Members are read without unpickling; each header is checked against the size the archive
    records before anything is allocated. The ``spec`` members must be present with their
    number of dimensions and dtype kind and share their first dimension; members named
    ``*labels`` must be class indices below ``n_classes`` (when given).

    Args:
        path: the ``.npz`` file.
        what: what it is, for the message (``"per-image scores"``).
        spec: required members (e.g. :data:`SCORES_ARRAYS`).
        n_classes: number of classes the labels index.

    Returns:
        ``{member name: array}`` of every member.

    Raises:
        CheckpointError: missing, empty, truncated, not an ``.npz``, an object array, a member
            declaring more data than stored, or a missing / malformed member (named).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file ({what}); re-run the command that writes it.")
    arrays: dict[str, np.ndarray] = {}
    key = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                arrays[key] = _read_member(zf, info, path, key)
    except CheckpointError:
        raise
    except _NPZ_ERRORS as exc:
        where = f" (member {key!r})" if key is not None else ""
        raise CheckpointError(
            f"{path}: unreadable {what}{where}: {_one_line(exc)}; the file is empty, truncated or "
            "not an .npz archive: re-run the command that wrote it."
        ) from exc
    _check_arrays(arrays, path, what, spec, n_classes)
    return arrays


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str) -> np.ndarray:
    """One ``.npy`` member, its header checked before the data is allocated."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise CheckpointError(
            f"{path}: member {key!r} is a pickled object array, which is never loaded (it could "
            "run code); re-run the command that wrote the file."
        )
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size - offset:
        raise CheckpointError(
            f"{path}: member {key!r} declares shape {tuple(shape)} ({declared} bytes) but holds "
            f"{max(info.file_size - offset, 0)}; the file is damaged: re-create it."
        )
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _check_arrays(
    arrays: Mapping[str, np.ndarray],
    path: Path,
    what: str,
    spec: Mapping[str, ArraySpec],
    n_classes: int | None,
) -> None:
    lengths = set()
    for key, want in spec.items():
        if key not in arrays:
            raise CheckpointError(
                f"{path}: {what} has no member {key!r} (it has {sorted(arrays)}); re-run the "
                "command that wrote it."
            )
        a = arrays[key]
        if a.ndim != want.ndim or a.dtype.kind not in want.kinds:
            raise CheckpointError(
                f"{path}: member {key!r} of {what} must be a {want.ndim}-D array of dtype kind "
                f"{want.kinds!r}, got shape {a.shape} dtype {a.dtype}; re-create the file."
            )
        if key.endswith("labels") and n_classes is not None and a.size:
            if a.min() < 0 or a.max() >= n_classes:
                raise CheckpointError(
                    f"{path}: member {key!r} of {what} holds labels outside 0..{n_classes - 1} "
                    "(the classes of its run); re-create the file."
                )
        lengths.add(a.shape[0])
    if len(lengths) > 1:
        raise CheckpointError(
            f"{path}: the members {sorted(spec)} of {what} differ in length "
            f"({sorted(lengths)}); the file is damaged: re-create it."
        )


# --------------------------------------------------------------------------------------------
# Writing a whole run folder, or a group of files, as one
# --------------------------------------------------------------------------------------------

_STARTED = time.time()  # stages older than this cannot be this process's own
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _temporary_of_ours(name: str, known: frozenset[str]) -> bool:
    """A temporary :func:`deeplense_ssl.io.atomic_output` makes for one of the ``known`` names."""
    m = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", name)
    return m is not None and m.group(1) in known


def _kind_in(folder: Path) -> str | None:
    """The ``kind`` recorded in ``folder/config.json`` (None: absent or unreadable)."""
    try:
        kind = json.loads((folder / CONFIG_FILE).read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return kind if isinstance(kind, str) else None


def check_replaceable(out: str | Path, kind: str) -> None:
    """Refuse ``out`` as the folder of a new ``kind`` run unless replacing it loses nothing else.

    ``out`` may be missing, empty, or a folder holding only the files of a ``kind`` run
    (:data:`REPLACEABLE_FILES`: its own, and evaluation / report files describing it). Call it
    before the work starts, so that a wrong ``--out`` fails in a second, not after training.

    Raises:
        CheckpointError: ``out`` is a file, a run of another kind, holds other files (the
            first few are named), or is (or holds) the current folder.
    """
    out = Path(out)
    if not out.exists():
        return
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise CheckpointError(
            f"{out} is the current folder (or holds it); a new run replaces its folder whole: "
            "choose a sub-folder as --out."
        )
    if not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a run folder; choose another --out.")
    try:
        entries = sorted(os.listdir(out))
    except OSError as exc:
        raise output_error(exc, out) from exc
    found = _kind_in(out)
    if found is not None and found != kind:
        raise CheckpointError(
            f"{out} holds a {found} run; a {kind} run will not replace it: choose another --out."
        )
    known = REPLACEABLE_FILES[kind]
    foreign = [e for e in entries if e not in known and not _temporary_of_ours(e, known)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise CheckpointError(
            f"{out} is not empty and holds files that are not from a {kind} run "
            f"({', '.join(foreign[:3])}{more}); a new run replaces the whole folder, so choose "
            "another --out (or move those files away)."
        )


@contextlib.contextmanager
def staged_run_folder(out: str | Path, kind: str) -> Iterator[Path]:
    """Build a run folder in a hidden sibling stage and swap it in whole when the block succeeds.

    ``out`` is replaced by the stage in one step (Linux ``renameat2(RENAME_EXCHANGE)``; two
    renames elsewhere), then the old run is deleted. On any failure (Ctrl-C and SIGTERM
    included) the stage is deleted and ``out`` is untouched; a stage left by SIGKILL or a power
    loss (``.NAME.stage-XXXXXXXX`` beside ``out``, unlocked) is deleted by the next run.

    Args:
        out: the run folder (see :func:`check_replaceable` for what it may already hold).
        kind: the run kind (a key of :data:`REPLACEABLE_FILES`).

    Yields:
        The stage folder: write every file of the run there.

    Raises:
        CheckpointError: ``out`` cannot be replaced (:func:`check_replaceable`).
        OutputError: the stage or the swap cannot be written (naming ``out``, never the stage).
    """
    out = Path(os.path.abspath(out))  # "." and ".." have no name to stage beside
    out = out.resolve() if out.is_symlink() else out
    check_replaceable(out, kind)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(out)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.stage-", dir=out.parent))
    except OSError as exc:
        raise output_error(exc, out) from exc
    lock = _hold(stage)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700; give the usual permissions
        try:
            yield stage
        except OutputError as exc:  # name the run folder, not the hidden stage
            text = str(exc).replace(str(stage), str(out))
            where = str(exc.path or out).replace(str(stage), str(out))
            raise OutputError(text, where, exc.errno) from exc
        check_replaceable(out, kind)  # nothing foreign may have appeared meanwhile
        _swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # the new run, or the old one after a swap
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _swap_in(stage: Path, out: Path) -> None:
    """Put ``stage`` at ``out``; delete what was there."""
    try:
        if _exchange(stage, out):  # the old run is now at ``stage``
            shutil.rmtree(stage, ignore_errors=True)
        elif out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)  # a folder may replace an empty folder
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    except OSError as exc:
        raise output_error(exc, out) from exc
    _fsync_folder(out.parent)


@functools.cache
def _renameat2() -> Any:
    """glibc's ``renameat2`` (None where there is none: other C libraries and systems)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where unsupported or ``b`` is missing."""
    fn = _renameat2()
    if fn is None or not b.exists():
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
        return False  # an old kernel or a file system without it: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _hold(folder: Path) -> int | None:
    """Open ``folder`` and lock it (marks a live stage); the descriptor, or None."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass
    return fd


def remove_stale_stages(out: str | Path) -> list[Path]:
    """Delete the stages of ``out`` left by a killed run (SIGKILL, power loss).

    Only folders named like :func:`staged_run_folder`'s (``.NAME.stage-XXXXXXXX``,
    ``.NAME.old-XXXXXXXX`` beside ``out``), not symbolic links, last modified before this
    process started and not locked by a live run are deleted.

    Returns:
        The folders deleted.
    """
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:stage|old)-[a-z0-9_]{{8}}")
    removed: list[Path] = []
    for entry in matching_entries(out.parent, pattern):
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= _STARTED:
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a run holds it
            shutil.rmtree(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _fsync_folder(folder: Path) -> None:
    """Persist renames in ``folder`` (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


Writer = Callable[[Path], Any]
"""Writes one file's whole content to the path it is given (a temporary beside the target)."""


def text_writer(text: str) -> Writer:
    """A :data:`Writer` of ``text`` (UTF-8)."""
    return lambda path: path.write_text(text, encoding="utf-8")


def npz_writer(arrays: Mapping[str, np.ndarray]) -> Writer:
    """A :data:`Writer` of ``arrays`` as a compressed ``.npz`` (no pickles: plain arrays)."""

    def write(path: Path) -> None:
        named: dict[str, Any] = dict(arrays)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **named)

    return write


def write_together(*files: tuple[str | Path, Writer]) -> list[Path]:
    """Write a group of files and publish them together: all new, or all unchanged.

    Each writer fills a temporary beside its target (:func:`deeplense_ssl.io.atomic_output`);
    only when every writer has succeeded are the files renamed into place. The first file marks
    the group: its old version is deleted before any other target is replaced, and the new one
    is renamed into place last. A reader that starts from it (the report reads ``metrics.json``
    first) sees the old group, the new group, or no group, never a mix, even after SIGKILL.

    Args:
        *files: ``(target, writer)`` pairs; the first target is the marker (e.g. the metrics
            file).

    Returns:
        The targets.

    Raises:
        OutputError: a file cannot be written (full disk, read-only folder), naming that
            target, never a temporary; no target has changed then.
    """
    targets = [Path(target) for target, _ in files]
    with contextlib.ExitStack() as stack:
        for target, (_, writer) in zip(targets, files, strict=True):
            tmp = stack.enter_context(atomic_output(target))
            try:
                writer(tmp)
            except OSError as exc:  # name this target while it is known which one failed
                if isinstance(exc, OutputError) or exc.errno is None:
                    raise
                raise output_error(exc, target) from exc
        try:
            targets[0].unlink(missing_ok=True)  # then the renames run, the marker's last
        except OSError as exc:
            raise output_error(exc, targets[0]) from exc
    return targets
