"""Streamed, resumable scoring of a test set (``evaluate --data-mode stream``).

A test set larger than memory (one file, or HDF5 shards named by a list or a glob) is opened
as a :class:`~deeplense_ssl.streaming.ShardSet` (every shard checked before any scoring) and
scored block by block: :func:`~deeplense_ssl.datasets.iter_clean_blocks` reads and cleans a
block exactly as :func:`~deeplense_ssl.datasets.load_dataset` would (NaN policy, image size,
normalisation with the run's stored ``zscore-dataset`` statistics), the model scores it
(:func:`~deeplense_ssl.inference.predict`) and only the outputs are kept: probabilities and
embeddings (labels and sources are known up front). Blocks start at multiples of the batch
size in each file, so every image is scored in the same batch as in memory: the same numbers.

Resumable: each scored block is committed to ``<out>.partial/`` (one ``.npz`` per block, written
atomically, and a ``state.json`` holding the fingerprint of the model file, the shards (path,
size, mtime), the cleaning options, the batch size and the device). A killed run leaves the
folder; the same command continues after the last committed block when the fingerprint is
unchanged, and starts over otherwise. A data error removes the folder (fixing the input changes
the fingerprint anyway); :meth:`StreamedTestSet.finish` removes it once the results are
published. The few images the report needs (examples, neighbours, the localisation sample)
are read back by index afterwards (:meth:`StreamedTestSet.take`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .cleaning import NanReport
from .datasets import iter_clean_blocks
from .errors import CheckpointError, DataError, DeepLenseError
from .inference import ClassifierModel, predict
from .io import atomic_output
from .runs import ArraySpec, read_arrays, read_json, to_jsonable, write_json
from .simulate import substructure_geometry
from .streaming import CleanOptions, ShardSet

BLOCK_BATCHES = 64
"""Batches per scored (and committed) block at most."""

BLOCK_BUDGET_FRACTION = 1 / 8
"""Fraction of the memory budget one block of cleaned images may take."""

PARTIAL_FORMAT = "deeplense_ssl.evaluate_partial.v1"
STATE_FILE = "state.json"
_BLOCK_NAME = re.compile(r"block-(\d{12})\.npz")
_BLOCK_ARRAYS = {"probs": ArraySpec(2, "f"), "embeddings": ArraySpec(2, "f")}


def block_images(batch_size: int, image_bytes: int, budget: int | None) -> int:
    """Images per block: :data:`BLOCK_BATCHES` batches, fewer when a block would take more
    than :data:`BLOCK_BUDGET_FRACTION` of ``budget`` bytes; always a multiple of
    ``batch_size`` (so that the batches are those of the in-memory pass)."""
    n = batch_size * BLOCK_BATCHES
    if budget is not None:
        fit = int(budget * BLOCK_BUDGET_FRACTION) // max(1, image_bytes)
        n = min(n, max(batch_size, fit // batch_size * batch_size))
    return n


def file_identity(path: str | Path) -> list[Any]:
    """``[resolved path, size in bytes, mtime in ns]`` of a file (for fingerprints)."""
    st = os.stat(path)
    return [str(Path(path).resolve()), int(st.st_size), int(st.st_mtime_ns)]


class _RowParam:
    """One per-image parameter of every shard, read row by row (global image index)."""

    def __init__(self, shards: ShardSet, key: str) -> None:
        self.shards, self.key = shards, key

    def __getitem__(self, row: int) -> np.ndarray:
        k = int(np.searchsorted(self.shards.offsets, row, side="right")) - 1
        stored = self.shards.sources[k].params[self.key]  # type: ignore[attr-defined]
        return np.asarray(stored[int(row - self.shards.offsets[k])], dtype=np.float64)


class StreamedTestSet:
    """A test set scored block by block; what :func:`deeplense_ssl.evaluation.evaluate` reads.

    Args:
        shards: the opened test files (closed by :meth:`close`).
        options: NaN policy, normalisation, image size (the run's unless overridden).
        stats: stored ``zscore-dataset`` statistics (``NormStats.to_dict()``), or None.
        partial: the folder of committed blocks (:func:`partial_path`).
        identity: what else decides the scores (model file, device, batch size), for the
            fingerprint.
        budget: memory budget in bytes (sizes the blocks), None: unknown.

    Attributes:
        labels: (N,) int64; class_names: names in label order; shape: ``(N, C, H, W)``.
        meta: ``provenance`` (when every shard has the same simulated geometry) and
            ``fit_mode``; params: per-image parameters read lazily by global index.
        nan_report: what the NaN policy touched (complete after :meth:`score`).
        info: mode, shards, block size and what was resumed (for ``metrics.json``).
    """

    def __init__(
        self,
        shards: ShardSet,
        options: CleanOptions,
        stats: dict | None,
        partial: Path,
        identity: dict[str, Any],
        budget: int | None,
    ) -> None:
        self.shards, self.options, self.stats, self.partial = shards, options, stats, partial
        self.labels, self.class_names = shards.labels, shards.class_names
        self.shape = (len(shards), *shards.image_shape)
        self.block = block_images(identity["batch_size"], shards.image_bytes, budget)
        self.data_files = [str(p) for p in shards.paths]
        self.nan_report = NanReport(policy=options.nan_policy)
        self.meta = {"provenance": _common_provenance(shards), "fit_mode": "auto"}
        keys = set.intersection(*(set(getattr(s, "params", {})) for s in shards.sources))
        self.params = {k: _RowParam(shards, k) for k in sorted(keys)}
        decides = {
            "format": PARTIAL_FORMAT,
            "version": __version__,
            "shards": [file_identity(p) for p in shards.paths],
            "options": [options.nan_policy, options.normalize, options.image_size, stats],
            **identity,
        }
        text = json.dumps(to_jsonable(decides), sort_keys=True)
        self.fingerprint = hashlib.sha256(text.encode()).hexdigest()
        self.info: dict[str, Any] = {"data_mode": "stream", "shards": self.data_files}

    @property
    def sources(self) -> np.ndarray:
        """(N,) source name of every image, all shards in order."""
        return np.asarray([s for src in self.shards.sources for s in src.sources], dtype=str)

    def _clean(self, k: int, start: int, stop: int | None, block: int) -> Any:
        """:func:`iter_clean_blocks` over images ``start:stop`` of shard ``k``."""
        o = self.options
        return iter_clean_blocks(
            self.shards.sources[k],
            nan_policy=o.nan_policy,
            normalize=o.normalize,
            image_size=o.image_size,
            block_size=block,
            stats=self.stats,
            start=start,
            stop=stop,
        )

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Cleaned images of global indices ``rows`` (any shape), ``(*rows.shape, C, H, W)``."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows.ravel(), return_inverse=True)
        out = np.empty((len(uniq), *self.shape[1:]), np.float32)
        for j, row in enumerate(uniq.tolist()):
            k = int(np.searchsorted(self.shards.offsets, row, side="right")) - 1
            local = row - int(self.shards.offsets[k])
            out[j] = next(self._clean(k, local, local + 1, 1)).images[0]
        return out[inverse].reshape(*rows.shape, *self.shape[1:])

    def score(
        self, model: ClassifierModel, *, batch_size: int, device: Any, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(N, K)`` and embeddings ``(N, D)`` float32 of every image, block by
        block, continuing committed blocks of an interrupted run with the same fingerprint.

        Raises:
            DataError: an unreadable image, a NaN with ``nan_policy="raise"``, an image of
                another size (the committed blocks are removed then).
        """
        writer = _PartialBlocks(self.partial, self.fingerprint, self.options.nan_policy)
        out = _Outputs(len(self.labels))
        for start, stop, probs, emb, report in writer.resume():
            out.put(start, stop, probs, emb)
            self.nan_report = self.nan_report + report
        self.info.update(
            block_images=self.block, resumed_images=out.done, discarded_partial=writer.discarded
        )
        bar = tqdm(total=len(self.labels), initial=out.done, desc="scoring", disable=not progress)
        try:
            for k in range(len(self.shards.sources)):
                first = int(self.shards.offsets[k])
                if out.done >= int(self.shards.offsets[k + 1]):
                    continue
                for block in self._clean(k, out.done - first, None, self.block):
                    self._check_block(k, block)
                    probs, emb = predict(model, block.images, batch_size=batch_size, device=device)
                    out.put(first + block.start, first + block.stop, probs, emb)
                    writer.commit(first + block.start, probs, emb, block.nan_report)
                    self.nan_report = self.nan_report + block.nan_report
                    bar.update(len(block.images))
        except DeepLenseError:
            writer.discard()  # fixing the input or an option changes the fingerprint anyway
            raise
        finally:
            bar.close()
        return out.arrays()

    def _check_block(self, k: int, block: Any) -> None:
        if len(block.images) != block.stop - block.start:  # nan_policy="drop" is refused earlier
            raise DataError("an image was dropped while streaming.", self.shards.paths[k])
        if block.images.shape[1:] != self.shape[1:]:
            raise DataError(
                f"images {block.start}..{block.stop - 1} are {block.images.shape[1:]}, not "
                f"{self.shape[1:]} like the first; pass --image-size N.",
                self.shards.paths[k],
                block.start,
            )

    def finish(self) -> None:
        """Remove the committed blocks (call once the results are published)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> None:
        """Close every shard."""
        self.shards.close()


def _common_provenance(shards: ShardSet) -> Any:
    """The first shard's ``provenance`` when every shard has the same simulated geometry."""
    provs = [src.meta.get("provenance") for src in shards.sources]
    same = len({substructure_geometry(p) for p in provs}) == 1
    return provs[0] if same else None


class _Outputs:
    """Probabilities and embeddings of ``n`` images, filled in order."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0
        self.probs: np.ndarray | None = None
        self.emb: np.ndarray | None = None

    def put(self, start: int, stop: int, probs: np.ndarray, emb: np.ndarray) -> None:
        if self.probs is None or self.emb is None:
            self.probs = np.empty((self.n, probs.shape[1]), np.float32)
            self.emb = np.empty((self.n, emb.shape[1]), np.float32)
        self.probs[start:stop], self.emb[start:stop] = probs, emb
        self.done = stop

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.probs is not None and self.emb is not None and self.done == self.n
        return self.probs, self.emb


class _PartialBlocks:
    """``<out>.partial/``: ``state.json`` (fingerprint) and one ``block-<start>.npz`` per
    committed block (``probs``, ``embeddings``, ``stop``, ``nan``: the NaN report counts)."""

    def __init__(self, path: Path, fingerprint: str, nan_policy: str) -> None:
        self.path, self.fingerprint, self.nan_policy = path, fingerprint, nan_policy
        self.discarded: str | None = None
        self.started = False

    def resume(self) -> list[tuple[int, int, np.ndarray, np.ndarray, NanReport]]:
        """The committed blocks, contiguous from image 0 (an empty list for a fresh start).

        A folder of another fingerprint is removed (``discarded`` says why); blocks after
        the first unreadable or non-contiguous one are dropped and scored again.
        """
        if not self.path.exists():
            return []
        try:
            state = read_json(self.path / STATE_FILE, "partial evaluation state")
        except CheckpointError as exc:
            state, reason = {}, f"unreadable state ({exc})"
        else:
            reason = "another model, data or options (fingerprint changed)"
        if state.get("fingerprint") != self.fingerprint:
            self.discard()
            self.discarded = reason
            return []
        self.started = True
        return self._read_blocks()

    def _read_blocks(self) -> list[tuple[int, int, np.ndarray, np.ndarray, NanReport]]:
        names = sorted(n for n in os.listdir(self.path) if _BLOCK_NAME.fullmatch(n))
        blocks: list[tuple[int, int, np.ndarray, np.ndarray, NanReport]] = []
        pos = 0
        for i, name in enumerate(names):
            try:
                z = read_arrays(self.path / name, "committed block", _BLOCK_ARRAYS)
                stop, nan = int(z["stop"]), [int(v) for v in z["nan"]]
                ok = int(name[6:18]) == pos and stop - pos == len(z["probs"]) > 0
            except (CheckpointError, KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                for stale in names[i:]:
                    (self.path / stale).unlink(missing_ok=True)
                break
            report = NanReport(nan[0], nan[1], nan[2], policy=self.nan_policy)
            blocks.append((pos, stop, z["probs"], z["embeddings"], report))
            pos = stop
        return blocks

    def commit(self, start: int, probs: np.ndarray, emb: np.ndarray, report: NanReport) -> None:
        """Write one scored block (and, the first time, the folder and its state)."""
        if not self.started:
            self.discard()
            write_json(self.path / STATE_FILE, {"fingerprint": self.fingerprint})
            self.started = True
        nan = [report.pixels_touched, report.images_touched, report.images_dropped]
        with atomic_output(self.path / f"block-{start:012d}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, probs=probs, embeddings=emb, stop=start + len(probs), nan=nan)

    def discard(self) -> None:
        """Remove the folder, if any."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.started = False
