"""The pretraining data path: images in, device batches out, in a deterministic order.

Speed decisions (CPU first, GPU-ready): the whole training set is one float32 tensor on the
training device (host memory if it does not fit comfortably on the GPU); batches are index
slices, no per-sample ``Dataset``/``DataLoader``; augmentation happens on the device, batched,
inside the method.

Overlap: :class:`Prefetcher` makes the next batches (index gather, pinned host -> device copy
on a side CUDA stream; reading and cleaning on the streaming path) in a background thread
while the current step runs. The batch of step ``k`` depends only on ``k`` (the epoch's order
and the data), never on the global RNG, so batches are the same with or without it.

``normalize="zscore-dataset"``: pretraining has no labels and no validation split, so the
per-channel statistics are fit on the whole training set (``--data``; the renderings of
``--paired-data`` get the same statistics), in memory and streamed alike with
:func:`~deeplense_ssl.cleaning.channel_stats` over the same blocks (the same statistics, to
the bit), recorded in the run (``resolved["norm_stats"]``) and reused on resume. A run started
before they were recorded trained on un-normalised images and resumes so.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cleaning import NormStats, channel_stats, row_blocks
from ..datasets import load_dataset
from ..distributed import DistInfo, gather_objects, shard_batch_indices
from ..errors import CheckpointError, ConfigError, DataError
from ..streaming import (
    CHUNK_IMAGES,
    CleanOptions,
    StreamingData,
    StreamLayout,
    StreamReader,
    choose_data_mode,
    memory_budget_bytes,
    shard_paths,
    window_chunks,
)

IN_MEMORY_DATA = "<in-memory>"
"""``cfg.data`` recorded for a dataset passed to ``pretrain`` as an object."""

MAX_DEVICE_DATA_FRACTION = 0.5  # of free GPU memory the training set may occupy

FINGERPRINT_ROWS = 256
"""Images hashed by :func:`data_fingerprint`: evenly spaced, the first and the last included."""


@dataclass(frozen=True)
class Normalization:
    """What a run does about ``zscore-dataset`` statistics.

    Attributes:
        stats: statistics to apply (``NormStats.to_dict()``, those recorded by the run being
            resumed); None fits them on the whole training set.
        apply: False for a run recorded before pretraining normalised (it resumes on the
            un-normalised images it started on).
    """

    stats: dict | None = None
    apply: bool = True

    @classmethod
    def of_run(cls, cfg: Any, recorded: dict[str, Any] | None) -> Normalization:
        """The normalisation of a fresh run (``recorded`` None) or of the run resumed."""
        if recorded is None or recorded.get("norm_stats"):
            return cls(None if recorded is None else recorded["norm_stats"])
        if cfg.normalize == "zscore-dataset":
            warnings.warn(
                "this run was started before pretraining fit --normalize zscore-dataset "
                "statistics: it trained on un-normalised images and resumes so (a new run "
                "normalises).",
                stacklevel=2,
            )
        return cls(None, apply=False)


def load_images(
    cfg: Any, dataset: Any, norm: Normalization | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], dict | None]:
    """``(images, labels (N,) int64, class_names, norm_stats)`` for pretraining.

    ``images`` is ``(N, C, S, S)`` float32, or ``(N, 2, C, S, S)`` with ``cfg.paired_data``
    (row ``i`` of the second file renders the scene of row ``i`` of the first).

    Args:
        cfg: the pretraining config (``data``, ``paired_data`` and the data options).
        dataset: ``None`` (read ``cfg.data``), an ``ImageSet``-like object, or an array/tensor
            ``(N, C, H, W)`` used as given. An ``ImageSet`` still pending ``zscore-dataset``
            statistics is normalised in place like the files.
        norm: the ``zscore-dataset`` statistics to apply (default: fit them on the whole set).

    Returns:
        The arrays, and the ``zscore-dataset`` statistics applied (``NormStats.to_dict()``,
        None when the images carry none).

    Raises:
        DataError: not 4-D, not square, non-finite pixels, or a paired file that does not
            match the first (count, shape, labels).
    """
    norm = Normalization() if norm is None else norm
    if dataset is None:
        parts = _read(cfg, cfg.data, norm.stats)
    else:
        parts = [dataset] if hasattr(dataset, "images") else []
    stats = _normalise(parts, norm)
    if dataset is None:
        images, labels, class_names = _join(parts, shard_paths(cfg.data))
    else:
        images, labels, class_names = _unpack(dataset)
    _check_images(images, cfg.data)
    images = np.ascontiguousarray(images, dtype=np.float32)
    if cfg.paired_data:
        images = _pair(images, labels, cfg, Normalization(stats, norm.apply))
    return images, labels, class_names, stats


def _read(cfg: Any, spec: str, stats: dict | None) -> list[Any]:
    """The ``ImageSet`` of every file of ``spec`` (:func:`streaming.shard_paths`), normalised
    with ``stats`` when given (``zscore-dataset``), else pending as loaded."""
    zscore = cfg.normalize == "zscore-dataset"
    return [
        load_dataset(
            path,
            nan_policy=cfg.nan_policy,
            normalize=cfg.normalize,
            image_size=cfg.image_size,
            allow_pickle=cfg.allow_pickle,
            norm_stats=stats if zscore else None,
        )
        for path in shard_paths(spec)
    ]


def _normalise(parts: list[Any], norm: Normalization) -> dict | None:
    """Fit (on all ``parts`` together) and apply pending ``zscore-dataset`` statistics, in
    place; the statistics the images carry (``to_dict()``), or None."""
    pending = [p for p in parts if getattr(p, "normalization_pending", False)]
    if pending and norm.apply:
        if norm.stats:
            stats = NormStats.from_dict(norm.stats)
        else:
            arrays = [np.asarray(p.images) for p in parts]
            rows = np.arange(sum(len(a) for a in arrays))
            stats = channel_stats(row_blocks(_joined_reader(arrays), rows, arrays[0].shape[1:]))
        for part in pending:
            part.apply_normalization(stats)
    meta = getattr(parts[0], "meta", None) if parts else None
    return meta.get("norm_stats") if isinstance(meta, dict) else None


def _joined_reader(arrays: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``read(rows)`` of the arrays joined along axis 0, for consecutive ``rows`` (no copy of
    the whole set: each block is cut from the arrays it spans)."""
    starts = np.cumsum([0] + [len(a) for a in arrays])

    def read(rows: np.ndarray) -> np.ndarray:
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        parts = [
            a[max(lo - s, 0) : hi - s]
            for a, s, e in zip(arrays, starts[:-1], starts[1:], strict=True)
            if lo < e and hi > s
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return read


def _join(parts: list[Any], paths: list[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The shards' images, labels and class names joined (they must share classes/shape)."""
    unpacked = [_unpack(p) for p in parts]
    if len(unpacked) == 1:
        return unpacked[0]
    first = unpacked[0]
    for (images, _, names), path in zip(unpacked[1:], paths[1:], strict=True):
        if names != first[2] or images.shape[1:] != first[0].shape[1:]:
            raise DataError(
                f"this shard's classes or image shape ({names}, {images.shape[1:]}) differ from "
                f"those of {paths[0]} ({first[2]}, {first[0].shape[1:]}).",
                path,
            )
    images = np.concatenate([p[0] for p in unpacked])
    return images, np.concatenate([p[1] for p in unpacked]), first[2]


def _pair(images: np.ndarray, labels: np.ndarray, cfg: Any, norm: Normalization) -> np.ndarray:
    """Stack the second rendering of every scene: ``(N, 2, C, S, S)`` (normalised with the
    statistics of the first, ``norm``)."""
    parts = _read(cfg, cfg.paired_data, norm.stats)
    _normalise(parts, norm)
    other, other_labels, _ = _join(parts, shard_paths(cfg.paired_data))
    _check_images(other, cfg.paired_data)
    if other.shape != images.shape:
        raise DataError(
            f"--paired-data must hold one image per image of --data ({cfg.data}, "
            f"{images.shape}), got {other.shape}; simulate it with the same model, seed and "
            "counts plus --source-variant.",
            cfg.paired_data,
        )
    mismatch = np.flatnonzero(other_labels != labels)
    if len(mismatch):
        raise DataError(
            "--paired-data is not row-aligned with --data: labels differ (rows must render the "
            "same scenes).",
            cfg.paired_data,
            int(mismatch[0]),
        )
    return np.stack([images, other.astype(np.float32)], axis=1)


def _unpack(dataset: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if isinstance(dataset, Tensor):
        dataset = dataset.detach().cpu().numpy()
    if isinstance(dataset, np.ndarray):
        return np.asarray(dataset), np.zeros(len(dataset), np.int64), ["unlabelled"]
    images = dataset.images
    images = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    return images, np.asarray(dataset.labels, dtype=np.int64), list(dataset.class_names)


def _check_images(images: np.ndarray, where: str) -> None:
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {images.shape}.", where)
    if images.shape[-1] != images.shape[-2]:
        raise DataError(
            f"pretraining needs square images, got {images.shape[-2]}x{images.shape[-1]}; "
            "pass --image-size N.",
            where,
        )
    check_finite(images, lambda bad: (where, bad))


def check_finite(images: np.ndarray, locate: Callable[[int], tuple[object, int]]) -> None:
    """Refuse non-finite pixels in ``images`` ``(N, ...)``.

    Args:
        images: cleaned images about to be trained on.
        locate: row of ``images`` -> ``(file, index)`` named in the error.

    Raises:
        DataError: the first image with a NaN or inf pixel, and what to do.
    """
    finite = np.isfinite(images).reshape(len(images), -1).all(1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        if np.isnan(images[bad]).any():
            advice = "clean them first: --nan-policy zero, median, interpolate or drop"
        else:  # inf only: a NaN policy would not see it as missing data
            advice = "the values overflow float32; rescale the data (e.g. --normalize minmax)"
        raise DataError(f"non-finite pixels (NaN/inf) reach training; {advice}.", *locate(bad))


def fingerprint_rows(n: int) -> np.ndarray:
    """The images hashed by :func:`data_fingerprint`: up to :data:`FINGERPRINT_ROWS`, evenly
    spaced, the first and the last included (sorted, unique)."""
    return np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().astype(np.int64))


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What identifies the training data of a run, to refuse a resume on other data.

    Computed on the loaded float32 array (after cleaning and normalisation), so it changes when
    the file's content or the loading options change, and not when the file is only moved.

    Args:
        images: ``(N, ...)`` the training array as :func:`load_images` returns it.
        labels: ``(N,)`` int64.

    Returns:
        ``{"n", "shape", "dtype", "rows_hashed", "sha256"}``: count, per-image shape, dtype,
        and the SHA-256 of the labels and of :data:`FINGERPRINT_ROWS` evenly spaced images
        (bytes, C order).
    """
    rows = fingerprint_rows(len(images))
    return sampled_fingerprint(len(images), images[rows], labels)


def sampled_fingerprint(n: int, sampled: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """:func:`data_fingerprint` of a set of ``n`` images from its :func:`fingerprint_rows`
    only (``sampled``: those rows, in order), e.g. read from streamed shards."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for image in sampled:
        digest.update(np.ascontiguousarray(image).tobytes())
    return {
        "n": int(n),
        "shape": [int(v) for v in sampled.shape[1:]],
        "dtype": str(sampled.dtype),
        "rows_hashed": int(len(sampled)),
        "sha256": digest.hexdigest(),
    }


def first_rendering(data: Tensor) -> Tensor:
    """The images of a training tensor: ``(N, C, S, S)`` as is, the first of each pair else."""
    return data[:, 0] if data.ndim == 5 else data


def put_on_device(images: np.ndarray, device: torch.device) -> Tensor:
    """The training set as one tensor: on the GPU if it fits comfortably, else on the host
    (each batch is then gathered and pinned by :func:`fetch`; pinning the whole set would copy
    it a second time in host memory)."""
    data = torch.from_numpy(images)
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.numel() * data.element_size() < MAX_DEVICE_DATA_FRACTION * free:
        return data.to(device)
    return data


def fetch(data: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    """Rows ``idx`` of the training set, on ``device``.

    Decided by device *type*, not equality: ``torch.device("cuda") != torch.device("cuda:0")``,
    so a set already on the GPU must not be mistaken for a host copy.
    """
    if data.device.type == "cpu" and device.type != "cpu":
        rows = data.index_select(0, idx.cpu())
        if device.type == "cuda":
            return rows.pin_memory().to(device, non_blocking=True)
        return rows.to(device)
    return data.index_select(0, idx.to(data.device))


def epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    """The data order of one epoch: a permutation of ``n`` depending only on (seed, epoch)."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=gen)


# --------------------------------------------------------------------------------------------
# overlap: the next batches are made in a background thread
# --------------------------------------------------------------------------------------------

PRODUCER_POLL_S = 0.05
"""How often a blocked producer or consumer checks that the other side is still there (s)."""


@dataclass
class _Failure:
    """An exception raised while making a batch, carried to the consumer."""

    exc: BaseException


_DONE = object()  # the producer made every item


CUDA_PREFETCH = 2
"""Batches made ahead by default on a CUDA device (none on the CPU, :func:`prefetch_depth`)."""


def prefetch_depth(requested: int | None, device: torch.device | None) -> int:
    """Batches made ahead: ``requested``, or by default :data:`CUDA_PREFETCH` on a CUDA device
    (the gather and the host-to-device copy overlap the step) and 0 elsewhere. On the CPU a
    producer thread only competes with the step's own threads for the same cores: with 2
    threads on 2 cores, 2 batches ahead made pretraining 12-15% slower (benchmarks/README.md,
    "Streaming and prefetch")."""
    if requested is not None:
        return int(requested)
    return CUDA_PREFETCH if device is not None and device.type == "cuda" else 0


class Prefetcher:
    """``make(k)`` for every ``k`` of ``keys``, in order, made ``depth`` items ahead in a thread.

    The producer thread blocks when ``depth`` items wait (bounded memory). An exception raised
    by ``make`` is raised again, once, by :meth:`next` in the consumer's thread (the original
    exception object, its type kept); :meth:`close` stops and joins the thread (no thread is
    left running, whatever happened). ``depth=0`` makes each item in the caller's thread, when
    it is asked for (no thread): the same items, in the same order.

    On CUDA (``device`` given), each item is made under a side stream, and the consumer's
    stream waits for it (copies overlap the running step; ``Tensor.record_stream`` keeps the
    memory allocator from reusing the item's memory early). An item is a tensor or a tuple of
    tensors.

    Args:
        make: ``make(k) -> item``; it must not draw from the global RNGs (the producer runs
            concurrently with the step, so it would change the draws of the step).
        keys: the keys, e.g. ``range(first_step, stop_step)``.
        depth: items made ahead (``>= 0``; None: :func:`prefetch_depth`'s default).
        device: the training device (a side stream is used when it is a CUDA device).
    """

    def __init__(
        self,
        make: Callable[[int], Any],
        keys: Iterable[int],
        depth: int | None,
        device: torch.device | None = None,
    ) -> None:
        self._make, self._keys = make, iter(keys)
        self._cuda = device if device is not None and device.type == "cuda" else None
        self._thread: threading.Thread | None = None
        depth = prefetch_depth(depth, device)
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._produce, name="deeplense-prefetch", daemon=True
            )
            self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._thread is None:
            return self._make(next(self._keys))
        item = self._get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        made, event = item
        if event is not None:
            stream = torch.cuda.current_stream(self._cuda)
            stream.wait_event(event)
            for tensor in made if isinstance(made, tuple) else (made,):
                tensor.record_stream(stream)
        return made

    def next(self) -> Any:
        """The next item (raises ``StopIteration`` after the last key)."""
        return self.__next__()

    def close(self) -> None:
        """Stop the producer and wait for its thread to end (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(PRODUCER_POLL_S)
        self._drain()
        self._thread = None

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _get(self) -> Any:
        assert self._thread is not None
        while True:
            try:
                return self._queue.get(timeout=PRODUCER_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch producer thread ended without a result") from None

    def _produce(self) -> None:
        try:
            stream = torch.cuda.Stream(self._cuda) if self._cuda is not None else None
            for key in self._keys:
                if self._stop.is_set():
                    return
                if not self._put(self._make_one(key, stream)):
                    return
        except BaseException as exc:  # noqa: BLE001 - carried to the consumer, raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def _make_one(self, key: int, stream: Any) -> tuple[Any, Any]:
        if stream is None:
            return self._make(key), None
        with torch.cuda.device(self._cuda), torch.cuda.stream(stream):
            item = self._make(key)
            event = torch.cuda.Event()
            event.record(stream)
        return item, event

    def _put(self, item: Any) -> bool:
        """Queue ``item``; False when stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=PRODUCER_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MemoryBatches:
    """The batch of every step from a training set held in one tensor (``make`` of
    :class:`Prefetcher`): this rank's part of the step's global batch, on the device.

    Args:
        data: ``(N, ...)`` the training set (host or device).
        order: ``order(epoch) -> (N,)`` int64 permutation of the epoch.
        steps_per_epoch: optimiser steps per epoch.
        global_batch: images per step over all ranks.
        rank: this process's rank; world_size: number of processes.
        device: the training device.
    """

    def __init__(
        self,
        data: Tensor,
        order: Callable[[int], Tensor],
        steps_per_epoch: int,
        global_batch: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.data, self.order, self.device = data, order, device
        self.steps_per_epoch, self.global_batch = steps_per_epoch, global_batch
        self.rank, self.world_size = rank, world_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> Tensor:
        """``(batch_size,)`` rows of the training set used by this rank at ``step``."""
        epoch = step // self.steps_per_epoch
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.order(epoch)
        start = (step % self.steps_per_epoch) * self.global_batch
        chunk = self._perm[start : start + self.global_batch]
        return shard_batch_indices(chunk, self.rank, self.world_size)

    def __call__(self, step: int) -> Tensor:
        return fetch(self.data, self.indices(step), self.device)


# --------------------------------------------------------------------------------------------
# the training set of a run: in memory or streamed
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The training set of a run and what identifies it.

    Attributes:
        mode: ``in-memory`` (``images`` holds the set) or ``stream`` (``stream`` reads it).
        labels: ``(N,)`` int64; class_names: names in label order.
        shape: per-image shape, ``(C, S, S)`` or ``(2, C, S, S)`` (paired renderings).
        fingerprint: :func:`data_fingerprint` of the set (the same in both modes).
        images: ``(N, *shape)`` float32 in memory, else None.
        stream: the open shards when streaming, else None.
        layout: chunk and window sizes of the streaming order, else None.
        budget: the memory budget in bytes (None: unknown).
        norm_stats: the ``zscore-dataset`` statistics applied to the images
            (``NormStats.to_dict()``; None: another normalisation).
    """

    mode: str
    labels: np.ndarray
    class_names: list[str]
    shape: tuple[int, ...]
    fingerprint: dict[str, Any]
    images: np.ndarray | None = None
    stream: StreamingData | None = None
    layout: StreamLayout | None = None
    budget: int | None = None
    norm_stats: dict | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), *shape)`` images of global indices ``rows`` (a copy)."""
        if self.images is not None:
            return self.images[rows]
        assert self.stream is not None
        return self.stream.read(rows)

    def close(self) -> None:
        """Close the shards (streaming)."""
        if self.stream is not None:
            self.stream.close()


def open_training_data(
    cfg: Any, dataset: Any, recorded: dict[str, Any] | None, info: DistInfo | None = None
) -> TrainingData:
    """The training set of a run: loaded, or opened for streaming (every shard checked first).

    Args:
        cfg: the pretraining config (data, data options, ``data_mode``, ``max_memory_gb``).
        dataset: data passed in memory (used as given, in memory), or None to read ``cfg.data``.
        recorded: the resolved values of the checkpoint resumed from (None: a fresh run); a
            resume keeps the data mode, the streaming order and the ``zscore-dataset``
            statistics the run started with (a fresh run fits them on the whole set).
        info: the process group; every rank takes rank 0's data mode and order (nodes may
            have different free memory).

    Raises:
        ConfigError: ``data_mode="stream"`` with a dataset passed in memory, or
            ``nan_policy="drop"`` when streaming.
        DataError: a missing, unreadable, truncated or mismatched shard (named), non-square
            images.
    """
    if dataset is not None:
        if cfg.data_mode == "stream":
            raise ConfigError(
                "data_mode='stream' reads --data from files; a dataset passed in memory is "
                "trained on in memory (data_mode 'auto' or 'in-memory')."
            )
        return _in_memory(cfg, dataset, None, Normalization.of_run(cfg, recorded))
    budget = memory_budget_bytes(cfg.max_memory_gb)
    stream = StreamingData(cfg.data, CleanOptions.of(cfg), cfg.paired_data)
    try:
        if recorded is not None:  # runs written before streaming existed were in memory
            mode, layout = recorded.get("data_mode", "in-memory"), recorded.get("stream_layout")
        else:
            mode = choose_data_mode(cfg.data_mode, stream.nbytes, budget)
            image_bytes = 4 * int(np.prod(stream.shape))
            layout = {
                "chunk_images": CHUNK_IMAGES,
                "window_chunks": window_chunks(image_bytes, budget),
            }
        if info is not None:
            mode, layout = gather_objects((mode, layout), info)[0]  # rank 0 decides
        norm = Normalization.of_run(cfg, recorded)
        if mode == "in-memory":
            stream.close()
            return _in_memory(cfg, None, budget, norm)
        return _streamed(cfg, stream, budget, layout, norm)
    except BaseException:
        stream.close()
        raise


def _in_memory(cfg: Any, dataset: Any, budget: int | None, norm: Normalization) -> TrainingData:
    images, labels, class_names, stats = load_images(cfg, dataset, norm)
    return TrainingData(
        "in-memory", labels, class_names, images.shape[1:], data_fingerprint(images, labels),
        images=images, budget=budget, norm_stats=stats,
    )  # fmt: skip


def _streamed(
    cfg: Any, stream: StreamingData, budget: int | None, layout: dict | None, norm: Normalization
) -> TrainingData:
    if cfg.nan_policy == "drop":
        raise ConfigError(
            "nan_policy='drop' changes the number of images, which streaming needs to know "
            "up front: convert the data with --nan-policy drop first (deeplense-ssl convert), "
            "or use --nan-policy zero/median/interpolate, or --data-mode in-memory."
        )
    if layout is None:
        raise CheckpointError(
            "the checkpoint of this streaming run lacks its order's layout (resolved "
            "stream_layout); the file is damaged: start a new run (another --out)."
        )
    size = stream.shape[-2:]
    if size[0] != size[1]:
        raise DataError(
            f"pretraining needs square images, got {size[0]}x{size[1]}; pass --image-size N.",
            cfg.data,
        )
    stats = stream.fit_normalization(norm.stats) if norm.apply else None
    sampled = stream.read(fingerprint_rows(len(stream)))
    return TrainingData(
        "stream", stream.labels, stream.class_names, stream.shape,
        sampled_fingerprint(len(stream), sampled, stream.labels),
        stream=stream, layout=StreamLayout(**layout), budget=budget, norm_stats=stats,
    )  # fmt: skip


class StreamBatches:
    """The batch of every step read from streamed shards (``make`` of :class:`Prefetcher`).

    Args:
        reader: this rank's :class:`~deeplense_ssl.streaming.StreamReader`.
        device: the training device (pinned host memory and an asynchronous copy on CUDA).
    """

    def __init__(self, reader: StreamReader, device: torch.device) -> None:
        self.reader, self.device = reader, device

    def __call__(self, step: int) -> Tensor:
        images, rows = self.reader.batch(step)
        check_finite(images, lambda bad: self.reader.data.locate(int(rows[bad])))
        x = torch.from_numpy(images)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)
