"""Streaming training data: one or many files (shards) read in chunks, never loaded whole.

``pretrain --data 'shards/*.h5'`` (a glob, a comma-separated list, or one path) trains on data
larger than memory: the shards are opened (and checked) once, and the images of each step are
read, cleaned and normalised by :func:`deeplense_ssl.datasets.iter_clean_blocks` (the cleaning
of :func:`~deeplense_ssl.datasets.load_dataset`, so both paths give the same images), a window
of chunks at a time.

The order of an epoch (:class:`ChunkedOrder`) is a function of ``(seed, epoch)`` alone: the
training images are cut into chunks of :data:`CHUNK_IMAGES` consecutive images, the chunks
are shuffled, consecutive shuffled chunks are grouped into windows of ``window_chunks``
chunks, and the images of each window are shuffled. Reads stay sequential (whole chunks), only
one or two windows are in memory, and the batches are cut from the order exactly like the
in-memory permutation: global batch ``k`` is positions ``[k G, (k + 1) G)``, rank ``r`` takes
its ``r``-th part (:func:`deeplense_ssl.distributed.shard_batch_indices`) and reads only the
images of its own parts (:class:`StreamReader`). A resume continues at the step recorded in
the checkpoint: the same order, the same batches, bitwise the same weights.

``data_mode``: ``stream``, ``in-memory``, or ``auto`` (stream when the cleaned float32 set
is larger than the memory budget, :func:`memory_budget_bytes`).

``normalize="zscore-dataset"``: the per-channel statistics of the whole training set are fit
in one pass over the shards (:meth:`StreamingData.fit_normalization`,
:func:`~deeplense_ssl.cleaning.channel_stats`, the same blocks and sums as the in-memory path,
so both give the same statistics) and then applied to every block read.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .cleaning import NanReport, NormStats, channel_stats, row_blocks, stats_block_images
from .datasets import iter_clean_blocks
from .errors import ConfigError, DataError
from .io import Source, available_memory_bytes, open_source

DATA_MODES = ("auto", "in-memory", "stream")
"""``data_mode`` choices: decide by the memory budget, load the set, or stream it."""

MEMORY_BUDGET_FRACTION = 0.5
"""Default memory budget (``max_memory_gb=None``): this fraction of the available memory."""

CHUNK_IMAGES = 256
"""Consecutive images of the training set read together (one shuffled unit of the order)."""

MAX_WINDOW_CHUNKS = 32
"""Chunks whose images are shuffled together at most (more: a better shuffle, more memory)."""

WINDOW_BUDGET_FRACTION = 1 / 8
"""Fraction of the memory budget one window of cleaned images may take."""

READ_GAP = 8
"""Unneeded images between two needed ones that are read through (one read instead of two)."""

_GLOB_CHARS = frozenset("*?[")


def shard_paths(spec: str) -> list[Path]:
    """The files named by ``--data``: one path, a comma-separated list, or glob patterns.

    A path that exists is taken as it is (even with commas or glob characters in its name);
    a pattern's matches are sorted by name; the list keeps its order.

    Raises:
        DataError: a pattern matches nothing, or a file is named twice.
    """
    if not spec or Path(spec).exists():
        return [Path(spec)]
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if _GLOB_CHARS & set(part):
            found = sorted(Path(m) for m in glob.glob(part))
            if not found:
                raise DataError("no file matches this pattern; check the path.", part)
            paths.extend(found)
        else:
            paths.append(Path(part))
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise DataError("this shard is named twice in --data; name each file once.", path)
        seen.add(path)
    return paths


def memory_budget_bytes(max_memory_gb: float | None) -> int | None:
    """The memory the training data may take: ``max_memory_gb`` GiB, or by default
    :data:`MEMORY_BUDGET_FRACTION` of :func:`io.available_memory_bytes` (None where unknown)."""
    if max_memory_gb is not None:
        return int(max_memory_gb * 2**30)
    available = available_memory_bytes()
    return None if available is None else int(MEMORY_BUDGET_FRACTION * available)


def choose_data_mode(requested: str, nbytes: int, budget: int | None) -> str:
    """``stream`` or ``in-memory``: ``requested`` unless it is ``auto``, then by the budget.

    Args:
        requested: one of :data:`DATA_MODES`.
        nbytes: bytes of the cleaned float32 training set.
        budget: :func:`memory_budget_bytes` (None: unknown, keep the set in memory).
    """
    if requested not in DATA_MODES:
        raise ConfigError(f"data_mode={requested!r} is not one of {', '.join(DATA_MODES)}.")
    if requested != "auto":
        return requested
    return "stream" if budget is not None and nbytes > budget else "in-memory"


def window_chunks(image_bytes: int, budget: int | None, chunk_images: int = CHUNK_IMAGES) -> int:
    """Chunks per shuffling window: as many as :data:`WINDOW_BUDGET_FRACTION` of the budget
    holds, between 1 and :data:`MAX_WINDOW_CHUNKS`."""
    if budget is None:
        return MAX_WINDOW_CHUNKS
    fit = int(budget * WINDOW_BUDGET_FRACTION) // max(1, chunk_images * image_bytes)
    return max(1, min(MAX_WINDOW_CHUNKS, fit))


# --------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanOptions:
    """How the images are read and cleaned (the data options of the config).

    ``normalize="zscore-dataset"`` leaves the images in stored units, as ``load_dataset``
    does before ``fit_normalization``, until statistics are given to the reader
    (:meth:`StreamingData.fit_normalization`).
    """

    nan_policy: str = "raise"
    normalize: str = "minmax"
    image_size: int | None = None
    allow_pickle: bool = False

    @classmethod
    def of(cls, cfg: Any) -> CleanOptions:
        """The options of a config with ``nan_policy``, ``normalize``, ``image_size`` and
        ``allow_pickle`` fields."""
        return cls(cfg.nan_policy, cfg.normalize, cfg.image_size, cfg.allow_pickle)

    @property
    def scaling(self) -> str:
        """The normalisation applied while streaming without statistics."""
        return "none" if self.normalize == "zscore-dataset" else self.normalize


def _stored_layout(src: Source) -> dict[str, Any]:
    """What every shard must share with the first: classes, labelling, stored image layout."""
    layout: dict[str, Any] = {
        "kind": src.kind,
        "class_names": list(src.class_names),
        "labelled": bool(src.meta.get("labelled", True)),
    }
    array = getattr(src, "array", None)
    if src.stacked and array is not None:
        layout.update(image_shape=tuple(array.shape[1:]), dtype=str(array.dtype))
        layout["images_key"] = src.meta.get("images_key")
    return layout


class ShardSet:
    """Several sources read as one set: global image ``i`` is image ``i - offsets[k]`` of
    shard ``k``. Every shard is opened and checked here, before any training.

    Args:
        spec: ``--data``: one path, a comma-separated list or glob patterns
            (:func:`shard_paths`).
        options: the cleaning options.

    Attributes:
        paths: the shard files; offsets: ``(S + 1,)`` first global index of each shard.
        labels: ``(N,)`` int64; class_names: names in label order.
        image_shape: ``(C, H, W)`` of a cleaned image.
        nan_report: what the NaN policy touched in the images :meth:`read` so far.

    Raises:
        DataError: a shard that is missing, unreadable, truncated or whose layout (classes,
            labelling, stored shape, dtype, dataset names) differs from the first's, named.
    """

    def __init__(self, spec: str, options: CleanOptions) -> None:
        self.spec, self.options = spec, options
        self.stats: NormStats | None = None  # zscore-dataset statistics applied when read
        # what the NaN policy touched in every image read so far (reset it to count anew)
        self.nan_report = NanReport(policy=options.nan_policy)
        self.paths = shard_paths(spec)
        self.sources: list[Source] = []
        self._ids: list[tuple[int, int]] = []
        try:
            for path in self.paths:
                self._open(path)
        except BaseException:
            self.close()
            raise
        counts = [len(s) for s in self.sources]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.labels = np.concatenate([s.labels for s in self.sources])
        self.class_names = list(self.sources[0].class_names)

    def _open(self, path: Path) -> None:
        src = open_source(path, allow_pickle=self.options.allow_pickle)
        self.sources.append(src)
        self._ids.append(_file_id(path))
        layout, first = _stored_layout(src), self.sources[0]
        expected = _stored_layout(first)
        if layout != expected:
            changed = [k for k in expected if layout.get(k) != expected.get(k)]
            diff = [f"{k} {layout.get(k)!r} (first: {expected[k]!r})" for k in changed]
            raise DataError(
                f"this shard differs from the first shard {first.path}: {'; '.join(diff)}. "
                "All shards need the same classes and image layout (write them with the same "
                "convert/simulate options).",
                path,
            )
        shape = self._probe(len(self.sources) - 1)
        if len(self.sources) == 1:
            self.image_shape = shape
        elif shape != self.image_shape:
            raise DataError(
                f"cleaned images are {shape}, those of the first shard {first.path} "
                f"{self.image_shape}; pass --image-size N to bring all to N x N.",
                path,
            )

    def _probe(self, k: int) -> tuple[int, ...]:
        """Read the first and the last image of shard ``k`` (a truncated file fails here)."""
        src = self.sources[k]
        probe = CleanOptions("zero", "none", self.options.image_size)  # the shape only
        shapes = {_clean_range(src, i, i + 1, probe)[0].shape[1:] for i in (0, len(src) - 1)}
        return tuple(int(v) for v in shapes.pop())

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def image_bytes(self) -> int:
        """Bytes of one cleaned float32 image."""
        return 4 * math.prod(self.image_shape)

    def locate(self, row: int) -> tuple[Path, int]:
        """``(shard path, index in that shard)`` of global image ``row``."""
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.paths[k], int(row - self.offsets[k])

    def read(self, rows: Sequence[int] | np.ndarray, gap: int = READ_GAP) -> np.ndarray:
        """Cleaned images ``rows`` (global indices, any order), ``(len(rows), C, H, W)``.

        Each shard's images are read in ascending order, consecutive ones (and gaps of at most
        ``gap`` images, read and cleaned too: :attr:`nan_report` counts them) in one read.

        Raises:
            DataError: a shard deleted, replaced or unreadable since it was opened, a NaN
                with ``nan_policy="raise"``, or an image dropped by the NaN policy.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.image_shape), np.float32)
        order = np.argsort(rows, kind="stable")
        shard_of = np.searchsorted(self.offsets, rows[order], side="right") - 1
        for k in np.unique(shard_of):
            where = order[shard_of == k]
            local = rows[where] - self.offsets[k]
            self._check_present(int(k))
            for lo, hi in _runs(local, gap):
                take = (local >= lo) & (local < hi)
                out[where[take]] = self._clean(int(k), lo, hi)[local[take] - lo]
        return out

    def _clean(self, k: int, lo: int, hi: int) -> np.ndarray:
        images, report = _clean_range(self.sources[k], lo, hi, self.options, self.stats)
        self.nan_report = self.nan_report + report
        if images.shape[1:] != self.image_shape:
            raise DataError(
                f"images {lo}..{hi - 1} are {images.shape[1:]}, not {self.image_shape}; "
                "pass --image-size N.",
                self.paths[k],
                lo,
            )
        return images

    def _check_present(self, k: int) -> None:
        """Refuse to read shard ``k`` when its file is gone or was replaced since opening."""
        path = self.paths[k]
        try:
            now = _file_id(path)
        except OSError:
            raise DataError(
                "this shard is gone (deleted, moved or unmounted) since training started.", path
            ) from None
        if now != self._ids[k]:
            raise DataError("this shard was replaced by another file since training started.", path)

    def close(self) -> None:
        """Close every shard."""
        for src in self.sources:
            src.close()

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _clean_range(
    src: Source, lo: int, hi: int, options: CleanOptions, stats: NormStats | None = None
) -> tuple[np.ndarray, NanReport]:
    """Images ``lo:hi`` of ``src`` cleaned like ``load_dataset`` (``(hi - lo, C, H, W)``),
    normalised with ``stats`` when given (``zscore-dataset``), and what the NaN policy touched.

    Raises:
        DataError: as :func:`~deeplense_ssl.datasets.iter_clean_blocks`, or an image dropped
            by ``nan_policy="drop"`` (streaming needs every image).
    """
    block = next(
        iter_clean_blocks(
            src,
            nan_policy=options.nan_policy,
            normalize=options.scaling if stats is None else "zscore-dataset",
            stats=stats,
            image_size=options.image_size,
            block_size=hi - lo,
            start=lo,
            stop=hi,
            check_shape=False,
        )
    )
    if len(block.images) != hi - lo:
        dropped = sorted(set(range(lo, hi)) - set(block.index.tolist()))
        raise DataError(
            "an image was dropped by --nan-policy drop while streaming; streaming needs every "
            "image: convert the data with --nan-policy drop first, or use another policy.",
            src.path,
            dropped[0],
        )
    return block.images, block.nan_report


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _runs(sorted_rows: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` ranges covering ascending ``sorted_rows``, merging gaps <= ``gap``."""
    if len(sorted_rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) > gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [len(sorted_rows) - 1]])
    return [
        (int(sorted_rows[a]), int(sorted_rows[b]) + 1) for a, b in zip(starts, stops, strict=True)
    ]


def open_stream(
    spec: str, data_mode: str, max_memory_gb: float | None, options: CleanOptions, command: str
) -> tuple[ShardSet | None, int | None]:
    """The opened shards of ``spec`` when they are to be streamed, else None; and the budget.

    Streamed: ``data_mode="stream"``, or ``auto`` when ``spec`` names several files or the
    cleaned float32 set is larger than :func:`memory_budget_bytes` (``max_memory_gb``).

    Args:
        spec: ``--data`` (:func:`shard_paths`); data_mode: one of :data:`DATA_MODES`;
        max_memory_gb: the budget in GiB (None: the default); options: the cleaning options;
        command: the command named in errors (``evaluate``, ``finetune``).

    Returns:
        ``(shards or None, budget in bytes or None)``.

    Raises:
        ConfigError: several files with ``data_mode="in-memory"``, or ``nan_policy="drop"``
            when streaming.
        DataError: a missing, unreadable, truncated or mismatched shard (named).
    """
    several = len(shard_paths(spec)) > 1
    if data_mode == "in-memory":
        if several:
            raise ConfigError(
                f"--data {spec} names several files; {command} them with --data-mode stream "
                "(or auto)."
            )
        return None, None
    budget = memory_budget_bytes(max_memory_gb)
    shards = ShardSet(spec, options)
    try:
        nbytes = len(shards) * shards.image_bytes
        mode = "stream" if several else choose_data_mode(data_mode, nbytes, budget)
        if mode == "in-memory":
            shards.close()
            return None, budget
        if options.nan_policy == "drop":
            raise ConfigError(
                "nan_policy='drop' changes the number of images, which streaming needs to know "
                "up front: convert the data with --nan-policy drop first (deeplense-ssl "
                "convert), or use --nan-policy zero/median/interpolate, or --data-mode in-memory."
            )
        return shards, budget
    except BaseException:
        shards.close()
        raise


class StreamingData:
    """The training images as :meth:`read` returns them: one :class:`ShardSet`, or two whose
    rows render the same scenes (``paired_data``: ``(B, 2, C, H, W)``).

    Raises:
        DataError: the paired set does not match the first (count, image shape, labels).
    """

    def __init__(self, spec: str, options: CleanOptions, paired: str | None = None) -> None:
        self.sets = [ShardSet(spec, options)]
        try:
            if paired:
                self.sets.append(ShardSet(paired, options))
                _check_pair(self.sets[0], self.sets[1])
        except BaseException:
            self.close()
            raise
        first = self.sets[0]
        self.labels, self.class_names = first.labels, first.class_names
        self.shape = (*((2,) if paired else ()), *first.image_shape)

    def __len__(self) -> int:
        return len(self.sets[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cleaned float32 set (what loading it would take)."""
        return len(self) * 4 * math.prod(self.shape)

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(len(rows), *shape)`` cleaned images of global indices ``rows``."""
        parts = [s.read(rows) for s in self.sets]
        return parts[0] if len(parts) == 1 else np.stack(parts, axis=1)

    def locate(self, row: int) -> tuple[Path, int]:
        """``(first shard set's file, index in it)`` of global image ``row``."""
        return self.sets[0].locate(row)

    def fit_normalization(self, stats: dict | None = None) -> dict | None:
        """Normalise every image read from now on (``normalize="zscore-dataset"`` only).

        Args:
            stats: the statistics of the run (``NormStats.to_dict()``, recorded on resume);
                None fits them on the whole first shard set (``--data``, not ``--paired-data``)
                in one pass (:func:`channel_stats` over :func:`fit_blocks`).

        Returns:
            The statistics applied (``to_dict()`` form), None for other normalisations.
        """
        if self.sets[0].options.normalize != "zscore-dataset":
            return None
        fitted = NormStats.from_dict(stats) if stats else channel_stats(self.fit_blocks())
        for s in self.sets:  # the paired renderings get the statistics of --data
            s.stats = fitted
        return fitted.to_dict()

    def fit_blocks(self) -> Iterator[np.ndarray]:
        """The un-normalised images of ``--data`` in order, :func:`stats_block_images` at a
        time (rows ``[k B, (k + 1) B)`` of the whole set, across shard boundaries)."""
        first = self.sets[0]
        saved, first.stats = first.stats, None
        try:
            yield from row_blocks(first.read, np.arange(len(first)), first.image_shape)
        finally:
            first.stats = saved

    def close(self) -> None:
        """Close every shard."""
        for s in self.sets:
            s.close()

    def __enter__(self) -> StreamingData:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RowImages:
    """Images of some rows of a larger set, indexed by their rows in the whole set.

    ``images[rows]`` returns what indexing the whole loaded set would, for rows among those
    held; ``shape`` is that of the whole set.

    Args:
        rows: the held rows, ascending and unique; images: ``(len(rows), C, H, W)``;
        n: the size of the whole set.
    """

    def __init__(self, rows: np.ndarray, images: np.ndarray, n: int) -> None:
        self.rows, self.images, self.n = np.asarray(rows, dtype=np.int64), images, n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.images.shape[1:])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.rows, rows), max(0, len(self.rows) - 1))
        if len(self.rows) == 0 or not np.array_equal(self.rows[pos], rows):
            raise IndexError("some requested rows were not read from the shards.")
        return self.images[pos]


class StreamedPool:
    """A labelled set streamed from shards, of which a run loads only the rows it uses.

    What fine-tuning reads of a set too large to load (``finetune --data-mode stream``): the
    labels of every image (small), the ``zscore-dataset`` statistics of chosen rows in one
    streamed pass (:meth:`fit_normalization`), and the images of its label budget
    (:meth:`load_rows`), which must fit in the memory budget.

    Args:
        shards: the opened shards (closed by :meth:`close`); budget: memory budget in bytes
            (None: unknown).

    Attributes:
        labels, class_names, shape ``(N, C, H, W)``; normalization_pending: ``zscore-dataset``
        statistics still to fit; nan_report: what the NaN policy touched in the rows loaded
        (None before :meth:`load_rows`).
    """

    def __init__(self, shards: ShardSet, budget: int | None) -> None:
        self.shards, self.budget = shards, budget
        self.labels, self.class_names = shards.labels, shards.class_names
        self.shape = (len(shards), *shards.image_shape)
        self.normalization_pending = shards.options.normalize == "zscore-dataset"
        self.nan_report: NanReport | None = None

    def fit_normalization(self, rows: np.ndarray) -> NormStats:
        """Fit ``zscore-dataset`` statistics on images ``rows`` and apply them to every later
        read (:func:`channel_stats` over :func:`row_blocks`)."""
        stats = channel_stats(row_blocks(self.shards.read, rows, self.shape[1:]))
        self.shards.stats, self.normalization_pending = stats, False
        return stats

    def load_rows(self, rows: np.ndarray, progress: bool = False) -> RowImages:
        """The cleaned images of ``rows`` (ascending), held in memory; :attr:`nan_report`
        counts these images exactly (no gap between them is read).

        Raises:
            DataError: they would take more than the memory budget.
        """
        rows = np.asarray(rows, dtype=np.int64)
        nbytes = len(rows) * self.shards.image_bytes
        if self.budget is not None and nbytes > self.budget:
            raise DataError(
                f"the {len(rows)} labelled images this run uses take {nbytes / 2**20:.4g} MiB, "
                f"more than the memory budget of {self.budget / 2**20:.4g} MiB; lower "
                "--label-fraction or raise --max-memory-gb (streaming keeps the images of "
                "the label budget in memory, never the rest of the set).",
                self.shards.spec,
            )
        self.shards.nan_report = NanReport(policy=self.shards.options.nan_policy)
        block = stats_block_images(self.shape[1:])
        images = np.empty((len(rows), *self.shape[1:]), np.float32)
        for lo in tqdm(range(0, len(rows), block), desc="labelled images", disable=not progress):
            images[lo : lo + block] = self.shards.read(rows[lo : lo + block], gap=0)
        self.nan_report = self.shards.nan_report
        return RowImages(rows, images, len(self.shards))

    def close(self) -> None:
        """Close every shard."""
        self.shards.close()


def _check_pair(first: ShardSet, other: ShardSet) -> None:
    if (len(other), other.image_shape) != (len(first), first.image_shape):
        raise DataError(
            f"--paired-data must hold one image per image of --data ({first.spec}, "
            f"{len(first)} x {first.image_shape}), got {len(other)} x {other.image_shape}; "
            "simulate it with the same model, seed and counts plus --source-variant.",
            other.spec,
        )
    mismatch = np.flatnonzero(other.labels != first.labels)
    if len(mismatch):
        raise DataError(
            "--paired-data is not row-aligned with --data: labels differ (rows must render the "
            "same scenes).",
            other.spec,
            int(mismatch[0]),
        )


# --------------------------------------------------------------------------------------------
# the order of an epoch, and one rank's reads
# --------------------------------------------------------------------------------------------


class ChunkedOrder:
    """The order of one epoch over ``n`` training images, a function of ``(seed, epoch)``.

    Position ``p`` of the epoch holds image ``order[p]``: chunks of ``chunk_images``
    consecutive images are shuffled, grouped ``window_chunks`` at a time, and each window's
    images are shuffled (NumPy ``default_rng`` seeded by ``[seed, epoch, 0]`` for the chunks
    and ``[seed, epoch, w + 1]`` for window ``w``; independent of the number of readers).

    Args:
        n: number of training images.
        seed: the run's seed; epoch: the epoch.
        chunk_images: images per chunk (> 0); window_chunks: chunks per window (> 0).
    """

    def __init__(self, n: int, seed: int, epoch: int, chunk_images: int, window_chunks: int):
        self.n, self.seed, self.epoch = n, int(seed), int(epoch)
        self.chunk, self.window = int(chunk_images), int(window_chunks)
        n_chunks = -(-n // self.chunk)
        self.chunks = np.random.default_rng([self.seed, self.epoch, 0]).permutation(n_chunks)
        sizes = np.minimum(self.chunk, n - self.chunks * self.chunk)
        per_window = np.add.reduceat(sizes, np.arange(0, n_chunks, self.window))
        self.starts = np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64)

    @property
    def n_windows(self) -> int:
        """Number of windows."""
        return len(self.starts) - 1

    def window_of(self, positions: np.ndarray) -> np.ndarray:
        """The window of each epoch position."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def window_images(self, w: int) -> np.ndarray:
        """``(len,)`` images at positions ``starts[w] .. starts[w + 1] - 1``, in order."""
        chunks = self.chunks[w * self.window : (w + 1) * self.window]
        idx = np.concatenate(
            [np.arange(c * self.chunk, min((c + 1) * self.chunk, self.n)) for c in chunks]
        )
        return np.random.default_rng([self.seed, self.epoch, w + 1]).permutation(idx)

    def __getitem__(self, positions: slice) -> np.ndarray:
        """Images at a slice of positions (may span windows)."""
        pos = np.asarray(range(self.n)[positions], dtype=np.int64)
        out = np.empty(len(pos), np.int64)
        wins = self.window_of(pos)
        for w in np.unique(wins):
            sel = wins == w
            out[sel] = self.window_images(int(w))[pos[sel] - self.starts[w]]
        return out


@dataclass(frozen=True)
class StreamLayout:
    """The order's chunk and window sizes (recorded in a run, reused on resume)."""

    chunk_images: int
    window_chunks: int


class StreamReader:
    """This rank's batch of every step, read window by window from :class:`StreamingData`.

    Args:
        data: the training images.
        rows: ``(n_train,)`` global indices of the training images (position ``i`` of the
            order is image ``rows[i]``).
        seed: the run's seed; layout: chunk and window sizes of the order.
        steps_per_epoch: optimiser steps per epoch; global_batch: images per step, all ranks.
        rank: this process's rank; world_size: number of processes.
    """

    def __init__(
        self,
        data: StreamingData,
        rows: np.ndarray,
        seed: int,
        layout: StreamLayout,
        steps_per_epoch: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.rows, self.seed, self.layout = data, np.asarray(rows), seed, layout
        self.steps_per_epoch, self.global_batch = steps_per_epoch, global_batch
        self.rank, self.world_size = rank, world_size
        self._epoch = -1
        self._order: ChunkedOrder | None = None
        self._windows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def order(self, epoch: int) -> ChunkedOrder:
        """The order of ``epoch`` (:class:`ChunkedOrder`)."""
        lay = self.layout
        return ChunkedOrder(len(self.rows), self.seed, epoch, lay.chunk_images, lay.window_chunks)

    def positions(self, step: int) -> np.ndarray:
        """``(batch_size,)`` epoch positions this rank trains on at ``step``."""
        per_rank = self.global_batch // self.world_size
        # the rank-th contiguous part of the global batch (distributed.shard_batch_indices)
        start = (step % self.steps_per_epoch) * self.global_batch + self.rank * per_rank
        return np.arange(start, start + per_rank)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(images (B, ...), global rows (B,))`` of this rank at ``step``."""
        epoch = step // self.steps_per_epoch
        if epoch != self._epoch:
            self._epoch, self._order, self._windows = epoch, self.order(epoch), {}
        assert self._order is not None
        pos = self.positions(step)
        wins = self._order.window_of(pos)
        for w in [w for w in self._windows if w < wins.min()]:
            del self._windows[w]  # steps only move forward: earlier windows are done
        images = np.empty((len(pos), *self.data.shape), np.float32)
        rows = np.empty(len(pos), np.int64)
        for w in np.unique(wins):
            own, own_images, own_rows = self._window(int(w))
            sel = wins == w
            at = np.searchsorted(own, pos[sel])
            images[sel], rows[sel] = own_images[at], own_rows[at]
        return images, rows

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, images, rows) of this rank in window ``w`` of the current epoch."""
        if w not in self._windows:
            order = self._order
            assert order is not None
            start, stop = int(order.starts[w]), int(order.starts[w + 1])
            pos = np.arange(start, stop)
            g, b = self.global_batch, self.global_batch // self.world_size
            mine = ((pos % g) // b == self.rank) & (pos < self.steps_per_epoch * g)
            own = pos[mine]
            rows = self.rows[order.window_images(w)[own - start]]
            self._windows[w] = (own, self.data.read(rows), rows)
        return self._windows[w]
