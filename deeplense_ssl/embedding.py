"""``deeplense-ssl embed``, ``search`` and ``anomaly``: a run's representation put to use.

:func:`embed_files` writes the backbone features (the ones ``evaluate``'s kNN uses) of any
number of images from any supported inputs into one embedding index (layout:
:mod:`deeplense_ssl.search`). It streams: a block of images is read, cleaned exactly as the
run's training data was (NaN policy, image size, normalisation with the run's stored
statistics: :func:`resolve_preprocessing`), embedded and appended, so memory holds one block.

Resumable and atomic: rows go to ``<out>.partial``; after each block the row count and the
input position are stored in its attributes and the file is flushed. A run that is killed
(Ctrl-C, SIGTERM, SIGKILL after the last flush) leaves the partial file, and the same command
continues from the last committed block when the run's weights, the inputs (path, size, mtime
or file list) and the options (cleaning, dtype) are unchanged (their SHA-256 ``fingerprint``);
otherwise, or with ``resume=False``, it starts over. ``<out>`` appears only complete (rename at
the end). An input error (:class:`~deeplense_ssl.errors.DeepLenseError`) removes the partial
file, since a fixed input or option changes the fingerprint anyway.

:func:`search_index` and :func:`anomaly_index` are the ``search`` and ``anomaly`` commands:
queries (rows of the index, or images embedded with the index's run after the same cleaning)
-> :func:`~deeplense_ssl.search.nearest_neighbours`, and
:func:`~deeplense_ssl.search.knn_anomaly_scores` -> files and montages (:func:`plots.fig_montage`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import load_pretrained_backbone
from .config import AnomalyConfig, EmbedConfig, SearchConfig
from .datasets import CleanBlock, iter_clean_blocks
from .errors import CheckpointError, ConfigError, DataError, DeepLenseError, OutputError
from .inference import embed, load_finetuned
from .io import atomic_output, open_source, require_disk_space
from .plots import fig_montage
from .runs import (
    BACKBONE_FILE,
    MODEL_FILE,
    json_text,
    partial_path,
    read_run_config,
    to_jsonable,
    write_together,
)
from .runtime import resolve_device
from .search import (
    INDEX_FORMAT,
    EmbeddingIndex,
    Neighbours,
    check_k,
    check_same_backbone,
    knn_anomaly_scores,
    nearest_neighbours,
    read_index_images,
)

SEARCH_JSON, SEARCH_CSV, SEARCH_MONTAGE = "neighbours.json", "neighbours.csv", "montage.png"
ANOMALY_H5, ANOMALY_CSV, ANOMALY_MONTAGE = (
    "anomaly_scores.h5",
    "anomaly_scores.csv",
    "anomaly_top.png",
)
ANOMALY_FORMAT = "deeplense_ssl.anomaly_scores.v1"
ANOMALY_DEFINITION = "mean cosine distance (1 - cos) to the k nearest reference embeddings"
MONTAGE_MAX_QUERIES = 8
INT_COLUMNS = ("file_index", "index_in_file", "labels")


# --------------------------------------------------------------------------------------------
# The run's network and preprocessing
# --------------------------------------------------------------------------------------------


@dataclass
class Encoder:
    """A run's backbone and what is needed to feed it images like its training data.

    Attributes:
        backbone: ``(B, C, H, W) -> (B, D)`` features, eval mode, on the compute device.
        run: the run folder.
        kind: ``pretrain`` (``backbone.pt``) or ``finetune`` (``model.pt``).
        spec: ``name``, ``stem``, ``in_chans``, ``feature_dim`` of the backbone.
        input_shape: ``(C, H, W)`` of the training images, None where not recorded.
        preprocessing: the training data's ``nan_policy``, ``normalize``, ``image_size``,
            ``fit_mode`` and ``norm_stats`` (``zscore-dataset`` statistics or None).
        weights_sha256: SHA-256 of the weights file.
    """

    backbone: nn.Module
    run: Path
    kind: str
    spec: dict[str, Any]
    input_shape: tuple[int, ...] | None
    preprocessing: dict[str, Any]
    weights_sha256: str

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.spec["feature_dim"])


def load_encoder(run: str | Path, device: torch.device | str = "cpu") -> Encoder:
    """The backbone of a finished pretrain run (``backbone.pt``) or finetune run (``model.pt``).

    Raises:
        CheckpointError: no such folder, not a run, an unfinished pretraining, or weights that
            do not fit the recorded backbone.
    """
    run = Path(run)
    if (run / MODEL_FILE).is_file():
        model, spec = load_finetuned(run, map_location=device)
        bspec = {k: spec[k] for k in ("stem", "in_chans", "feature_dim")}
        bspec["name"] = spec["backbone"]
        hw = spec.get("input_hw")
        return Encoder(
            model.backbone,
            run,
            "finetune",
            bspec,
            (int(spec["in_chans"]), *map(int, hw)) if hw else None,
            _preprocessing(spec.get("nan_policy"), spec, spec.get("norm_stats")),
            _sha256(run / MODEL_FILE),
        )
    backbone, info = load_pretrained_backbone(run, map_location=device)
    resolved = read_run_config(run).get("resolved", {})
    stats = info["config"].get("norm_stats") or resolved.get("norm_stats")
    shape = info.get("input_shape")
    return Encoder(
        backbone,
        run,
        "pretrain",
        {k: info[k] for k in ("stem", "in_chans", "feature_dim")} | {"name": info["backbone"]},
        tuple(int(v) for v in shape) if shape else None,
        _preprocessing(info.get("nan_policy"), info, stats),
        _sha256(run / BACKBONE_FILE),
    )


def _preprocessing(nan_policy: Any, spec: dict[str, Any], stats: Any) -> dict[str, Any]:
    return {
        "nan_policy": nan_policy or "raise",
        "normalize": spec.get("normalize") or "minmax",
        "image_size": spec.get("image_size"),
        "fit_mode": "auto",
        "norm_stats": stats,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_preprocessing(
    encoder: Encoder,
    nan_policy: str = "auto",
    normalize: str = "auto",
    image_size: int | None = None,
) -> dict[str, Any]:
    """The cleaning to apply: the run's, except where an option is given (not ``auto``/None).

    ``zscore-dataset`` uses the statistics stored with the run (never refit on new data): a
    finetune run's (``model.pt`` spec), a pretrain run's ``resolved["norm_stats"]`` (fit on
    its whole training set).

    Raises:
        ConfigError: ``zscore-dataset`` without stored statistics (a pretrain run written
            before they were recorded trained on un-normalised images: ``--normalize none``).
    """
    run = encoder.preprocessing
    norm = run["normalize"] if normalize == "auto" else normalize
    stats = run.get("norm_stats") if norm == run["normalize"] else None
    if norm == "zscore-dataset" and stats is None:
        old = encoder.kind == "pretrain" and run["normalize"] == "zscore-dataset"
        hint = (
            "it was pretrained before these were recorded, on un-normalised images: pass "
            "--normalize none to embed like its training data"
            if old
            else "pass --normalize with another method"
        )
        raise ConfigError(
            f"{encoder.run}: normalize='zscore-dataset' needs the statistics of the training "
            f"data, and the run stores none; {hint}."
        )
    return {
        "nan_policy": run["nan_policy"] if nan_policy == "auto" else nan_policy,
        "normalize": norm,
        "image_size": run["image_size"] if image_size is None else image_size,
        "fit_mode": run.get("fit_mode", "auto"),
        "norm_stats": stats,
    }


def check_input_shape(
    shape: Sequence[int], encoder: Encoder, path: object, index: int | None, hint: str
) -> None:
    """Refuse images ``(C, H, W)`` whose bands or size differ from the run's training images.

    Args:
        shape: (C, H, W) of the cleaned images.
        encoder: the run.
        path, index: the input and image named in the message.
        hint: what to do about a size mismatch, e.g. ``"pass --image-size 64"``.
    """
    chans = int(encoder.spec["in_chans"])
    if int(shape[0]) != chans:
        raise DataError(
            f"images have {shape[0]} band(s) but the run {encoder.run} was trained on {chans}; "
            "use images with the same bands.",
            path,
            index,
        )
    want = encoder.input_shape
    if want is not None and tuple(shape[1:]) != tuple(want[1:]):
        raise DataError(
            f"images are {shape[1]}x{shape[2]} px but the run {encoder.run} was trained on "
            f"{want[1]}x{want[2]} px; {hint}.",
            path,
            index,
        )


def _features(
    encoder: Encoder, images: np.ndarray, batch_size: int, device: Any, dtype: Any
) -> np.ndarray:
    """(M, D) embeddings of ``images`` in ``dtype`` (float16 refused where it would overflow)."""
    feats = embed(encoder.backbone, images, device, batch_size).cpu().numpy()
    if dtype == np.float16 and np.abs(feats).max(initial=0.0) > np.finfo(np.float16).max:
        raise DataError(
            "embeddings exceed the float16 range (65504); drop --float16 or scale the images "
            "(--normalize)."
        )
    return feats.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------
# embed: inputs, the partial file, the loop
# --------------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One input of ``--data``: its size, label mapping and identity (for the fingerprint)."""

    path: Path
    n: int
    lut: np.ndarray  # source label -> label in the index's class_names (-1: unlabelled)
    identity: dict[str, Any]


def _plan_inputs(paths: Sequence[str], allow_pickle: bool) -> tuple[list[_Input], list[str]]:
    """Open every input once: sizes, class names (merged in order of appearance), identities."""
    inputs, names = [], []
    for raw in paths:
        path = Path(raw).resolve()
        with open_source(path, allow_pickle=allow_pickle) as src:
            labelled = bool(src.meta.get("labelled", True))
            for name in src.class_names if labelled else []:
                if name not in names:
                    names.append(name)
            lut = np.array([names.index(c) if labelled else -1 for c in src.class_names], np.int64)
            ident: dict[str, Any] = {"path": str(path), "kind": src.kind, "n": len(src)}
            if path.is_file():
                st = path.stat()
                ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            else:
                listing = "\n".join(src.sources).encode("utf-8", "backslashreplace")
                ident["sources_sha256"] = hashlib.sha256(listing).hexdigest()
            inputs.append(_Input(path, len(src), lut, ident))
    return inputs, names


def _blocks(src: Any, prep: dict[str, Any], block_size: int, start: int = 0, stop: Any = None):
    return iter_clean_blocks(
        src,
        nan_policy=prep["nan_policy"],
        normalize=prep["normalize"],
        image_size=prep["image_size"],
        stats=prep["norm_stats"],
        fit_mode=prep["fit_mode"],
        block_size=block_size,
        start=start,
        stop=stop,
    )


def _check_first_images(
    inputs: list[_Input], encoder: Encoder, prep: dict[str, Any], allow_pickle: bool
) -> None:
    """Clean the first image of every input and check its shape, before any long work."""
    for inp in inputs:
        with open_source(inp.path, allow_pickle=allow_pickle) as src:
            block = next(_blocks(src, prep, 1, 0, 1))
        if len(block.images):
            check_input_shape(block.images.shape[1:], encoder, inp.path, 0, _size_hint(encoder))


def _size_hint(encoder: Encoder) -> str:
    """What to pass to ``embed`` for images of another size than the run's."""
    size = encoder.input_shape[1] if encoder.input_shape else "N"
    return f"pass --image-size {size} (centre crop / resize)"


def _attr_value(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    return json.dumps(to_jsonable(value))


class _PartialIndex:
    """``<out>.partial``: the index being written, committed block by block.

    Args:
        out: the final file.
        header: the attributes (``fingerprint`` among them).
        dim: embedding dimension D.
        dtype: float32 or float16.
    """

    def __init__(self, out: Path, header: dict[str, Any], dim: int, dtype: Any):
        self.out, self.path = out, partial_path(out)
        self.header, self.dim, self.dtype = header, dim, np.dtype(dtype)
        self.file: Any = None
        self.rows = self.next_file = self.next_start = 0

    def resume(self) -> str | None:
        """Continue an existing partial file of the same fingerprint.

        Returns:
            None, or why an existing partial file was discarded (it is removed then).
        """
        if not self.path.exists():
            return None
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            if "lock" in str(exc):
                raise OutputError(
                    f"{self.path} is open in another process (another embed running?); wait "
                    "for it or stop it.",
                    self.path,
                ) from exc
            self.path.unlink()
            return "it was unreadable (killed during a write)"
        if f.attrs.get("fingerprint") != self.header["fingerprint"]:
            f.close()
            self.path.unlink()
            return "it was started with another run, other inputs or other options"
        try:
            self.rows = int(f.attrs["rows_done"])
            self.next_file, self.next_start = int(f.attrs["next_file"]), int(f.attrs["next_start"])
            for name in ("embeddings", "sources", *INT_COLUMNS):
                f[name].resize(self.rows, axis=0)  # drop rows written after the last commit
        except (KeyError, OSError, ValueError):
            f.close()
            self.path.unlink()
            self.rows = self.next_file = self.next_start = 0
            return "it was damaged (killed during a write)"
        self.file = f
        return None

    def discard(self) -> None:
        """Remove the partial file, if any."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _create(self) -> None:
        f = self.file = h5py.File(self.path, "w")
        rows = max(1, min(4096, (1 << 20) // (self.dim * self.dtype.itemsize)))
        f.create_dataset(
            "embeddings",
            (0, self.dim),
            self.dtype,
            chunks=(rows, self.dim),
            maxshape=(None, self.dim),
        )
        f.create_dataset("sources", (0,), h5py.string_dtype(), chunks=(4096,), maxshape=(None,))
        for name in INT_COLUMNS:
            f.create_dataset(name, (0,), np.int64, chunks=(4096,), maxshape=(None,))
        for key, value in self.header.items():
            f.attrs[key] = _attr_value(value)
        f.attrs["complete"] = 0
        f.attrs["rows_done"] = f.attrs["next_file"] = f.attrs["next_start"] = 0

    def append(self, vectors: np.ndarray, columns: dict[str, Any]) -> None:
        """Append rows: ``vectors`` (M, D) and ``sources``/``file_index``/... (M,) each."""
        if self.file is None:
            self._create()
        lo, hi = self.rows, self.rows + len(vectors)
        f = self.file
        f["embeddings"].resize(hi, axis=0)
        f["embeddings"][lo:hi] = vectors
        for name, values in columns.items():
            f[name].resize(hi, axis=0)
            f[name][lo:hi] = values
        self.rows = hi

    def commit(self, next_file: int, next_start: int) -> None:
        """Record the rows so far and where the inputs continue, and flush the file."""
        if self.file is None:
            self._create()
        f = self.file
        f.attrs["rows_done"] = self.rows
        f.attrs["next_file"], f.attrs["next_start"] = next_file, next_start
        f.flush()
        self.next_file, self.next_start = next_file, next_start

    def publish(self) -> Path:
        """Mark the file complete and rename it to ``out`` (atomically)."""
        self.commit(self.next_file, self.next_start)
        self.file.attrs["complete"] = 1
        self.close()
        with atomic_output(self.out) as tmp:
            os.replace(self.path, tmp)
        return self.out

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self.file is not None:
            self.file.close()
            self.file = None


def _commit(writer: _PartialIndex, next_file: int, next_start: int) -> None:
    """Commit point of the embed loop (a seam for the interruption tests)."""
    writer.commit(next_file, next_start)


@dataclass
class EmbedResult:
    """What :func:`embed_files` wrote.

    Attributes:
        path: the index file.
        rows: its rows.
        resumed_rows: rows taken over from the partial file of an interrupted run.
        discarded: why an existing partial file was not continued, or None.
    """

    path: Path
    rows: int
    resumed_rows: int
    discarded: str | None


def _header(
    encoder: Encoder,
    prep: dict[str, Any],
    inputs: list[_Input],
    class_names: list[str],
    dtype: Any,
) -> dict[str, Any]:
    """The index attributes; ``fingerprint`` covers everything that decides the rows."""
    decides = {
        "format": INDEX_FORMAT,
        "weights_sha256": encoder.weights_sha256,
        "inputs": [i.identity for i in inputs],
        "preprocessing": prep,
        "dtype": np.dtype(dtype).name,
    }
    fingerprint = hashlib.sha256(json_text(to_jsonable(decides)).encode()).hexdigest()
    return {
        "format": INDEX_FORMAT,
        "deeplense_ssl_version": __version__,
        "run": str(encoder.run.resolve()),
        "run_kind": encoder.kind,
        "backbone": encoder.spec,
        "embedding_dim": encoder.dim,
        "dtype": np.dtype(dtype).name,
        "input_shape": list(encoder.input_shape) if encoder.input_shape else None,
        "preprocessing": prep,
        "files": [str(i.path) for i in inputs],
        "inputs": [i.identity for i in inputs],
        "class_names": class_names,
        "weights_sha256": encoder.weights_sha256,
        "fingerprint": fingerprint,
    }


def embed_files(cfg: EmbedConfig, *, progress: bool = True) -> EmbedResult:
    """Embed every image of ``cfg.data`` with the run ``cfg.checkpoint`` into ``cfg.out``.

    See the module docstring for streaming, resuming and atomicity; the layout is in
    :mod:`deeplense_ssl.search`.

    Raises:
        CheckpointError: the run cannot be loaded.
        DataError: unreadable inputs, or images whose bands or size differ from the run's
            training images (no file is left then).
        OutputError: ``out`` is a folder or cannot be written.
    """
    out = Path(cfg.out)
    if out.is_dir():
        raise OutputError("is a folder; give a file name such as embeddings.h5 for --out.", out)
    device = resolve_device(cfg.device)
    encoder = load_encoder(cfg.checkpoint, device)
    prep = resolve_preprocessing(encoder, cfg.nan_policy, cfg.normalize, cfg.image_size)
    inputs, class_names = _plan_inputs(cfg.data, cfg.allow_pickle)
    _check_first_images(inputs, encoder, prep, cfg.allow_pickle)
    dtype = np.float16 if cfg.float16 else np.float32
    total = sum(i.n for i in inputs)
    require_disk_space(out, total * (encoder.dim * np.dtype(dtype).itemsize + 64))
    writer = _PartialIndex(
        out, _header(encoder, prep, inputs, class_names, dtype), encoder.dim, dtype
    )
    if not cfg.resume:
        writer.discard()
    discarded = writer.resume()
    resumed = writer.rows
    done = sum(i.n for i in inputs[: writer.next_file]) + writer.next_start
    bar = tqdm(total=total, initial=done, unit="img", desc="embedding", disable=not progress)
    try:
        for fi in range(writer.next_file, len(inputs)):
            _embed_input(writer, encoder, prep, inputs[fi], fi, cfg, device, bar)
        path = writer.publish()
    except (KeyboardInterrupt, OSError):
        raise  # the partial file is kept: the same command continues from the last commit
    except DeepLenseError:
        writer.discard()  # fixing the input changes the fingerprint: nothing to resume
        raise
    finally:
        writer.close()
        bar.close()
    return EmbedResult(path, writer.rows, resumed, discarded)


def _embed_input(
    writer: _PartialIndex,
    encoder: Encoder,
    prep: dict[str, Any],
    inp: _Input,
    fi: int,
    cfg: EmbedConfig,
    device: Any,
    bar: Any,
) -> None:
    """Embed input number ``fi`` from where the writer stands, one committed block at a time."""
    start = writer.next_start if fi == writer.next_file else 0
    dtype = np.float16 if cfg.float16 else np.float32
    hint = _size_hint(encoder)
    with open_source(inp.path, allow_pickle=cfg.allow_pickle) as src:
        block: CleanBlock
        for block in _blocks(src, prep, cfg.block_size, start):
            if len(block.images):
                first = int(block.index[0])
                check_input_shape(block.images.shape[1:], encoder, inp.path, first, hint)
                vectors = _features(encoder, block.images, cfg.batch_size, device, dtype)
                columns = {
                    "sources": np.array([src.sources[i] for i in block.index], dtype=object),
                    "file_index": np.full(len(block.index), fi, np.int64),
                    "index_in_file": block.index,
                    "labels": inp.lut[block.labels],
                }
                writer.append(vectors, columns)
            last = block.stop >= len(src)
            _commit(writer, fi + 1 if last else fi, 0 if last else block.stop)
            bar.update(block.stop - block.start)


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


@dataclass
class _Queries:
    """Query vectors (Q, D), the index rows they must not match, names and images."""

    vectors: np.ndarray
    exclude: np.ndarray | None
    names: list[str]
    images: list[np.ndarray] | None  # None: read back from the index when needed


@dataclass
class SearchResult:
    """What :func:`search_index` found.

    Attributes:
        table: one dict per (query, rank): ``query``, ``query_source``, ``rank`` (1 = nearest),
            ``row``, ``source``, ``file``, ``index_in_file``, ``label``, ``similarity``.
        backend: ``exact`` or ``faiss``.
        files: the files written into ``--out`` (none without it).
    """

    table: list[dict[str, Any]]
    backend: str
    files: list[Path]


def embed_images(
    encoder: Encoder,
    path: str | Path,
    prep: dict[str, Any],
    *,
    allow_pickle: bool = False,
    batch_size: int = 256,
    device: Any = "cpu",
    hint: str = "crop or resize it to the training size",
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Embed every image of a (small) file, cleaned with ``prep``, held in memory.

    Returns:
        ``(vectors (Q, D) float32, images [(C, H, W)], source names)``.

    Raises:
        DataError: no image left, or images of other bands or size than the run's.
    """
    vectors: list[np.ndarray] = []
    images: list[np.ndarray] = []
    names: list[str] = []
    with open_source(path, allow_pickle=allow_pickle) as src:
        for block in _blocks(src, prep, 1024):
            if len(block.images):
                first = int(block.index[0])
                check_input_shape(block.images.shape[1:], encoder, path, first, hint)
                vectors.append(_features(encoder, block.images, batch_size, device, np.float32))
                images.extend(block.images)
                names.extend(src.sources[i] for i in block.index)
    if not vectors:
        raise DataError("no image left to embed after the NaN policy.", path)
    return np.vstack(vectors), images, names


def _query_encoder(cfg: SearchConfig, index: EmbeddingIndex) -> Encoder:
    """The run that embeds ``--query`` images; it must be the one the index was built with."""
    run = cfg.checkpoint or index.run
    if not cfg.checkpoint and not Path(run).is_dir():
        raise CheckpointError(
            f"{index.path}: the run it was embedded with ({run}) is gone; pass --checkpoint "
            "RUN_DIR."
        )
    encoder = load_encoder(run, resolve_device(cfg.device))
    what = None
    if encoder.dim != index.dim or encoder.spec != index.backbone:
        what = f"backbone {encoder.spec}, but the index holds {index.backbone}"
    elif encoder.weights_sha256 != index.attrs.get("weights_sha256"):
        what = "other weights than those the index was embedded with"
    if what is not None:
        raise DataError(
            f"the run {run} has {what}; search with the run the index was made with, or "
            "re-embed the index.",
            index.path,
        )
    return encoder


def _queries(cfg: SearchConfig, index: EmbeddingIndex) -> _Queries:
    if cfg.query_index:
        rows = index.check_rows(cfg.query_index)
        names = [d["source"] for d in index.describe(rows)]
        return _Queries(index.rows(rows), rows, names, None)
    assert cfg.query is not None  # SearchConfig.validate: one kind of query
    encoder = _query_encoder(cfg, index)
    shape = index.input_shape
    hint = f"crop or resize it to {shape[1]}x{shape[2]} px" if shape else "crop or resize it"
    vectors, images, names = embed_images(
        encoder,
        cfg.query,
        index.preprocessing,
        allow_pickle=cfg.allow_pickle,
        batch_size=cfg.batch_size,
        device=resolve_device(cfg.device),
        hint=hint,
    )
    return _Queries(vectors, None, names, images)


def search_index(cfg: SearchConfig) -> SearchResult:
    """Nearest neighbours (cosine) in ``cfg.index`` of each query; files into ``cfg.out``.

    ``--query-index`` rows never match themselves. Output files (written together):
    ``neighbours.json``, ``neighbours.csv`` and ``montage.png`` (query, then its neighbours,
    one row per query, images read back from their recorded files).

    Raises:
        DataError: missing or foreign index, a query of other bands or size, a run whose
            backbone or weights differ from the index's, or rows out of range.
        ConfigError: ``k`` larger than the index.
    """
    with EmbeddingIndex(cfg.index) as index:
        exclude_self = bool(cfg.query_index)
        check_k(cfg.k, len(index), exclude_self, where=index.path)
        q = _queries(cfg, index)
        nb = nearest_neighbours(
            q.vectors,
            index,
            cfg.k,
            exclude=q.exclude,
            backend=cfg.backend,
            ivf_lists=cfg.ivf_lists,
            nprobe=cfg.nprobe,
        )
        table = _neighbour_table(index, q.names, nb)
        files = _write_search(cfg, index, q, nb, table) if cfg.out else []
    return SearchResult(table, nb.backend, files)


def _neighbour_table(
    index: EmbeddingIndex, names: list[str], nb: Neighbours
) -> list[dict[str, Any]]:
    described = index.describe(nb.ids.ravel())
    k = nb.ids.shape[1]
    table = []
    for j, d in enumerate(described):
        q, rank = divmod(j, k)
        sim = float(nb.similarity[q, rank])
        table.append(
            {"query": q, "query_source": names[q], "rank": rank + 1, **d, "similarity": sim}
        )
    return table


def _csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_search(
    cfg: SearchConfig, index: EmbeddingIndex, q: _Queries, nb: Neighbours, table: list[dict]
) -> list[Path]:
    out = Path(cfg.out or ".")
    payload = {
        "index": str(index.path),
        "k": cfg.k,
        "backend": nb.backend,
        "queries": q.names,
        "neighbours": table,
    }
    columns = ("query", "query_source", "rank", "row", "source", "file", "index_in_file")
    files: list[tuple[Path, Any]] = [
        (out / SEARCH_JSON, lambda p: p.write_text(json_text(to_jsonable(payload)))),
        (
            out / SEARCH_CSV,
            lambda p: p.write_text(_csv_text(table, (*columns, "label", "similarity"))),
        ),
    ]
    if cfg.montage:
        fig = _search_montage(cfg, index, q, nb)
        files.append((out / SEARCH_MONTAGE, lambda p: fig.savefig(p, format="png", dpi=110)))
    return write_together(*files)


def _read_back(index: EmbeddingIndex, rows: np.ndarray, allow_pickle: bool) -> list[np.ndarray]:
    try:
        return read_index_images(index, rows, allow_pickle=allow_pickle)
    except DataError as exc:
        raise DataError(
            f"{exc} (the montage reads the images back from their files; skip it with --no-montage)"
        ) from exc


def _search_montage(cfg: SearchConfig, index: EmbeddingIndex, q: _Queries, nb: Neighbours) -> Any:
    """Query (first column) and its neighbours, for at most :data:`MONTAGE_MAX_QUERIES`."""
    n_q = min(len(q.names), MONTAGE_MAX_QUERIES)
    if q.images is not None:
        queries = q.images[:n_q]
    else:
        assert q.exclude is not None
        queries = _read_back(index, q.exclude[:n_q], cfg.allow_pickle)
    neighbours = _read_back(index, nb.ids[:n_q].ravel(), cfg.allow_pickle)
    described = index.describe(nb.ids[:n_q].ravel())
    images, titles, k = [], [], nb.ids.shape[1]
    for i in range(n_q):
        images.append(queries[i])
        titles.append(f"query\n{_short(q.names[i])}")
        for r in range(k):
            d = described[i * k + r]
            images.append(neighbours[i * k + r])
            titles.append(f"{nb.similarity[i, r]:.3f} {d['label'] or ''}\n{_short(d['source'])}")
    title = f"{k} nearest neighbours by cosine similarity ({nb.backend})"
    return fig_montage(images, titles, ncols=k + 1, title=title, highlight_first_column=True)


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else "\u2026" + text[-(width - 1) :]


# --------------------------------------------------------------------------------------------
# anomaly
# --------------------------------------------------------------------------------------------


@dataclass
class AnomalyResult:
    """What :func:`anomaly_index` computed.

    Attributes:
        scores: (N,) anomaly score per index row (see :func:`search.knn_anomaly_scores`).
        order: (N,) rows by descending score (ties: lower row first).
        top: the described top ``cfg.top`` rows (``row``, ``source``, ..., ``score``, ``rank``).
        backend: ``exact`` or ``faiss``.
        files: the files written into ``cfg.out``.
    """

    scores: np.ndarray
    order: np.ndarray
    top: list[dict[str, Any]]
    backend: str
    files: list[Path]


def anomaly_index(cfg: AnomalyConfig, *, progress: bool = True) -> AnomalyResult:
    """Score every row of ``cfg.index`` and write ``anomaly_scores.h5``, ``anomaly_scores.csv``
    (all rows, most anomalous first) and ``anomaly_top.png`` (top ``cfg.top``) into ``cfg.out``.

    The score is the mean cosine distance to the ``k`` nearest rows of ``cfg.reference`` (or of
    the index itself, self excluded): :func:`deeplense_ssl.search.knn_anomaly_scores`.

    Raises:
        DataError: missing or foreign index/reference, or a reference from another backbone.
        ConfigError: ``k`` larger than the reference.
    """
    with contextlib.ExitStack() as stack:
        index = stack.enter_context(EmbeddingIndex(cfg.index))
        ref = stack.enter_context(EmbeddingIndex(cfg.reference)) if cfg.reference else None
        if ref is not None:
            check_same_backbone(index, ref)
        check_k(cfg.k, len(ref or index), ref is None, where=(ref or index).path)
        bar = tqdm(total=len(index), unit="img", desc="anomaly scores", disable=not progress)
        with bar:
            result = knn_anomaly_scores(
                index, ref, cfg.k, backend=cfg.backend, ivf_lists=cfg.ivf_lists,
                nprobe=cfg.nprobe, progress=bar,
            )  # fmt: skip
        order = np.lexsort((np.arange(len(index)), -result.scores))
        ranked = index.describe(order[: max(cfg.top, 0)])
        for rank, d in enumerate(ranked, 1):
            d.update(rank=rank, score=float(result.scores[d["row"]]))
        files = _write_anomalies(cfg, index, result.scores, result.neighbours, order, ranked)
    return AnomalyResult(result.scores, order, ranked, result.neighbours.backend, files)


def _write_anomalies(
    cfg: AnomalyConfig,
    index: EmbeddingIndex,
    scores: np.ndarray,
    nb: Neighbours,
    order: np.ndarray,
    top: list[dict[str, Any]],
) -> list[Path]:
    out = Path(cfg.out)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    attrs = {
        "format": ANOMALY_FORMAT,
        "deeplense_ssl_version": __version__,
        "score": ANOMALY_DEFINITION,
        "k": cfg.k,
        "index": str(Path(cfg.index).resolve()),
        "reference": str(Path(cfg.reference).resolve()) if cfg.reference else "the index itself",
        "backend": nb.backend,
    }
    arrays = {
        "score": scores,
        "rank": rank,
        "neighbours": nb.ids,
        "neighbour_similarity": nb.similarity,
    }
    rows = index.describe(order)
    for d in rows:
        d.update(rank=int(rank[d["row"]]), score=float(scores[d["row"]]))
    columns = ("rank", "row", "score", "source", "file", "index_in_file", "label")
    files: list[tuple[Path, Any]] = [
        (out / ANOMALY_H5, lambda p: _write_scores_h5(p, index, arrays, attrs)),
        (out / ANOMALY_CSV, lambda p: p.write_text(_csv_text(rows, columns))),
    ]
    if cfg.montage and top:
        fig = _anomaly_montage(cfg, index, top)
        files.append((out / ANOMALY_MONTAGE, lambda p: fig.savefig(p, format="png", dpi=110)))
    return write_together(*files)


def _write_scores_h5(
    path: Path, index: EmbeddingIndex, arrays: dict[str, np.ndarray], attrs: dict[str, Any]
) -> None:
    """The scores file: the arrays, the index's row columns (``sources``, ...) and ``attrs``."""
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)
        index.copy_row_columns(f)
        for key, value in {**attrs, "class_names": index.class_names}.items():
            f.attrs[key] = _attr_value(value)
        f.attrs["files"] = _attr_value([str(p) for p in index.files])


def _anomaly_montage(cfg: AnomalyConfig, index: EmbeddingIndex, top: list[dict[str, Any]]) -> Any:
    images = _read_back(index, np.array([d["row"] for d in top]), cfg.allow_pickle)
    titles = [
        f"#{d['rank']} {d['score']:.3f} {d['label'] or ''}\n{_short(d['source'])}" for d in top
    ]
    title = f"highest anomaly scores (mean cosine distance to {cfg.k} nearest neighbours)"
    return fig_montage(images, titles, ncols=min(8, len(images)), title=title)
