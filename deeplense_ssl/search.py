"""Nearest neighbours and anomaly scores in an embedding index, by cosine similarity.

An *embedding index* is the HDF5 file ``deeplense-ssl embed`` writes
(:mod:`deeplense_ssl.embedding`); :class:`EmbeddingIndex` reads it:

=====================  ===================  ====================================================
name                   shape / type         meaning
=====================  ===================  ====================================================
``embeddings``         (N, D) float32/16    backbone features (not normalised)
``sources``            (N,) str             source name of the image (``Source.sources``)
``file_index``         (N,) int64           which input file (index into attribute ``files``)
``index_in_file``      (N,) int64           the image's index inside that input
``labels``             (N,) int64           index into attribute ``class_names``; -1: unknown
attrs                  ``format`` (:data:`INDEX_FORMAT`), ``files``, ``class_names``, ``run``,
                       ``run_kind``, ``backbone`` (spec), ``embedding_dim``, ``dtype``,
                       ``input_shape``, ``preprocessing``, ``weights_sha256``, ``fingerprint``,
                       ``rows_done``, ``complete``, ``deeplense_ssl_version`` (JSON where not
                       scalar)
=====================  ===================  ====================================================

Similarity is the cosine ``<a, b> / (|a| |b|)`` (a zero vector has similarity 0 with
everything). Two backends give the same neighbours:

* ``exact``: NumPy, streaming the index in chunks of rows (memory: one chunk of the index and a
  queries x chunk similarity block, whatever N is; time O(Q N D)).
* ``faiss`` (optional extra ``search``: ``pip install "deeplense-ssl[search]"``): the
  L2-normalised float32 vectors in a ``faiss.IndexFlatIP`` (exact inner product; memory 4 N D
  bytes), or an ``IndexIVFFlat`` with ``ivf_lists`` > 0 (approximate, faster for N >~ 10^6).
* ``auto``: faiss when installed and the index holds at least :data:`AUTO_FAISS_MIN_ROWS` rows
  (measured on 10^5 x 512 float16 rows, 2 shared CPU cores: exact 0.4 s per query and no
  build; FAISS flat 2 s to build, then 0.08 s per query; ``benchmarks/embed_search_speed.py``).

Anomaly score (:func:`knn_anomaly_scores`): for image ``i`` with embedding ``e_i``,
``score_i = (1/k) sum_{j in kNN(i)} (1 - cos(e_i, r_j))``, the mean cosine distance (in [0, 2])
to its ``k`` nearest neighbours ``r_j`` in a reference set (a training embedding), or in the
index itself without a reference, the image itself excluded. Images unlike anything in the
reference score high (kNN distance novelty detection; e.g. Stein et al. 2022 used
self-supervised similarity search on 76M survey cutouts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from .datasets import iter_clean_blocks
from .errors import ConfigError, DataError, MissingDependencyError
from .io import open_source, require_memory

BACKENDS = ("auto", "exact", "faiss")
AUTO_FAISS_MIN_ROWS = 100_000
INDEX_FORMAT = "deeplense_ssl.embeddings.v1"
INDEX_DATASETS = ("embeddings", "sources", "file_index", "index_in_file", "labels")
SIMILARITY_BLOCK = 1 << 24  # query x index similarities computed at once (64 MiB float32)
CHUNK_ROWS = 65536  # index rows read at once
FAISS_HINT = 'install the optional extra: pip install "deeplense-ssl[search]" (faiss-cpu)'


class VectorStore(Protocol):
    """Row vectors readable by range: an :class:`EmbeddingIndex` or an :class:`ArrayStore`."""

    dim: int

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 ``(stop - start, dim)``."""
        ...


class ArrayStore:
    """An in-memory ``(N, D)`` array as a :class:`VectorStore` (tests, benchmarks)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.asarray(vectors)
        if self.vectors.ndim != 2:
            raise DataError(f"vectors must be (N, D), got shape {self.vectors.shape}.")
        self.dim = int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32."""
        return np.asarray(self.vectors[start:stop], dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


# --------------------------------------------------------------------------------------------
# The index file
# --------------------------------------------------------------------------------------------


class EmbeddingIndex:
    """A complete embedding file opened for reading (use as a context manager).

    Args:
        path: the ``.h5`` written by ``deeplense-ssl embed``.

    Attributes:
        path, n (rows), dim (D), attrs (JSON attributes decoded), files, class_names, run,
        backbone (spec dict), preprocessing (dict), input_shape.

    Raises:
        DataError: missing file, not an HDF5 file, not a complete embedding index, or
            datasets of inconsistent shapes (naming the file and the key).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(
                "no such embedding index; create it with `deeplense-ssl embed`.", self.path
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"not a readable HDF5 file ({exc}).", self.path) from exc
        try:
            self._check()
        except BaseException:
            self._file.close()
            raise
        self.attrs = {k: _decode(v) for k, v in self._file.attrs.items()}
        self.files = [Path(p) for p in self.attrs.get("files", [])]
        self.class_names = list(self.attrs.get("class_names", []))
        self.run = str(self.attrs.get("run", ""))
        self.backbone = dict(self.attrs.get("backbone") or {})
        self.preprocessing = dict(self.attrs.get("preprocessing") or {})
        self.input_shape = self.attrs.get("input_shape")

    def _check(self) -> None:
        f = self._file
        if f.attrs.get("format") != INDEX_FORMAT:
            raise DataError(
                f"not an embedding index (attribute 'format' is not {INDEX_FORMAT!r}); create "
                "one with `deeplense-ssl embed`.",
                self.path,
            )
        if not int(f.attrs.get("complete", 0)):
            raise DataError("the embedding index is incomplete; re-run `embed`.", self.path)
        missing = [k for k in INDEX_DATASETS if k not in f]
        if missing:
            raise DataError(f"dataset {missing[0]!r} is missing; re-create the index.", self.path)
        emb = f["embeddings"]
        if emb.ndim != 2 or emb.dtype.kind != "f":
            raise DataError(f"'embeddings' must be (N, D) float, got {emb.shape}.", self.path)
        self.n, self.dim = int(emb.shape[0]), int(emb.shape[1])
        for key in INDEX_DATASETS[1:]:
            if f[key].shape != (self.n,):
                raise DataError(
                    f"{key!r} has shape {f[key].shape}, expected ({self.n},).", self.path
                )

    def __len__(self) -> int:
        return self.n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Embeddings of rows ``start:stop`` as float32 ``(stop - start, D)``."""
        return np.asarray(self._file["embeddings"][start:stop], dtype=np.float32)

    def rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Embeddings of the given rows (any order, repeats allowed) as float32 ``(R, D)``."""
        rows = self.check_rows(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        got = self._file["embeddings"][unique] if len(unique) else np.empty((0, self.dim))
        return np.asarray(got, dtype=np.float32)[inverse]

    def check_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``rows`` as int64, refused unless every one lies in ``[0, n)``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = rows[(rows < 0) | (rows >= self.n)]
        if len(bad):
            raise DataError(f"row {int(bad[0])} is outside [0, {self.n}).", self.path)
        return rows

    def describe(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """``row``, ``source``, ``file``, ``index_in_file``, ``label`` (name or None) per row."""
        rows = self.check_rows(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        cols = {k: self._file[k][unique] if len(unique) else [] for k in INDEX_DATASETS[1:]}
        out = []
        for r, j in zip(rows, inverse, strict=True):
            label = int(cols["labels"][j])
            fi = int(cols["file_index"][j])
            source = cols["sources"][j]
            out.append(
                {
                    "row": int(r),
                    "source": source.decode() if isinstance(source, bytes) else str(source),
                    "file": str(self.files[fi]) if 0 <= fi < len(self.files) else None,
                    "index_in_file": int(cols["index_in_file"][j]),
                    "label": self.class_names[label]
                    if 0 <= label < len(self.class_names)
                    else None,
                }
            )
        return out

    def locations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(file_index, index_in_file)``, both (N,) int64."""
        f = self._file
        return np.asarray(f["file_index"], np.int64), np.asarray(f["index_in_file"], np.int64)

    def copy_row_columns(self, target: Any) -> None:
        """Copy ``sources``, ``file_index``, ``index_in_file`` and ``labels`` as stored into
        ``target`` (an open, writable ``h5py`` file or group)."""
        for name in INDEX_DATASETS[1:]:
            self._file.copy(self._file[name], target, name)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> EmbeddingIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _decode(value: Any) -> Any:
    """An HDF5 attribute as Python: bytes -> str, JSON lists/dicts decoded, NumPy -> Python."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def check_same_backbone(a: EmbeddingIndex, b: EmbeddingIndex) -> None:
    """Refuse to compare two indexes made by different networks.

    Raises:
        DataError: ``b``'s embedding dim, backbone spec or weights differ from ``a``'s (naming
            ``b``).
    """
    what = None
    if a.dim != b.dim:
        what = f"embedding dim {b.dim}, not {a.dim}"
    elif a.backbone != b.backbone:
        what = f"backbone {b.backbone}, not {a.backbone}"
    elif a.attrs.get("weights_sha256") != b.attrs.get("weights_sha256"):
        what = f"the weights of run {b.run}, not those of {a.run}"
    if what is not None:
        raise DataError(
            f"was embedded with {what} ({a.path}); embed both with the same run.", b.path
        )


# --------------------------------------------------------------------------------------------
# Neighbour search
# --------------------------------------------------------------------------------------------


@dataclass
class Neighbours:
    """The ``k`` nearest rows of each query, most similar first.

    Attributes:
        similarity: (Q, k) float32 cosine similarities, descending per row (ties: lower id).
        ids: (Q, k) int64 rows of the searched store.
        backend: ``exact`` or ``faiss``.
    """

    similarity: np.ndarray
    ids: np.ndarray
    backend: str


def _topk(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of each row of ``sims`` (Q, M) with their ``ids`` (Q, M), unsorted."""
    if sims.shape[1] <= k:
        return sims, ids
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(sims, part, 1), np.take_along_axis(ids, part, 1)


def _sorted(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by descending similarity, ties by ascending id."""
    order = np.lexsort((ids, -sims), axis=1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


class ExactSearch:
    """Brute-force cosine search, streaming the store in chunks of rows.

    Args:
        store: the vectors searched (read in chunks, never all at once).
        chunk_rows: rows read per chunk (lowered so that queries x chunk stays within
            :data:`SIMILARITY_BLOCK`).
    """

    backend = "exact"

    def __init__(self, store: VectorStore, chunk_rows: int = CHUNK_ROWS):
        self.store = store
        self.chunk_rows = max(1, int(chunk_rows))

    def search(
        self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of each query.

        Args:
            queries: (Q, D) vectors (any norm).
            k: neighbours per query.
            exclude: (Q,) a row never returned for each query (its own row; -1: none).

        Returns:
            ``(similarity (Q, k) float32, ids (Q, k) int64)``, sorted.
        """
        q = unit_rows(queries)
        n_q = len(q)
        best_s = np.empty((n_q, 0), np.float32)
        best_i = np.empty((n_q, 0), np.int64)
        step = max(1, min(self.chunk_rows, SIMILARITY_BLOCK // max(n_q, 1)))
        for lo in range(0, len(self.store), step):
            hi = min(lo + step, len(self.store))
            x = self.store.read(lo, hi)
            # cosine = (q . x) / |x|: dividing the (Q, m) block is cheaper than normalising x
            sims = q @ x.T
            sims /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), np.float32(1e-12))
            if exclude is not None:
                own = np.flatnonzero((exclude >= lo) & (exclude < hi))
                sims[own, exclude[own] - lo] = -np.inf
            ids = np.broadcast_to(np.arange(lo, hi, dtype=np.int64), sims.shape)
            s, i = _topk(sims, ids, k)
            best_s, best_i = _topk(np.hstack([best_s, s]), np.hstack([best_i, i]), k)
        return _sorted(best_s, best_i)


class FaissSearch:
    """Cosine search with FAISS: inner product on L2-normalised float32 vectors.

    Args:
        store: the vectors, added to the FAISS index chunk by chunk (held in memory by FAISS:
            4 N D bytes).
        ivf_lists: 0: ``IndexFlatIP`` (exact); > 0: ``IndexIVFFlat`` with that many inverted
            lists, trained on about ``64 * ivf_lists`` evenly spaced rows (approximate).
        nprobe: lists visited per query (IVF only; more: slower and closer to exact).
        chunk_rows: rows added per chunk.

    Raises:
        MissingDependencyError: faiss is not installed.
    """

    backend = "faiss"

    def __init__(
        self, store: VectorStore, ivf_lists: int = 0, nprobe: int = 16, chunk_rows: int = CHUNK_ROWS
    ):
        faiss = _import_faiss()
        n, d = len(store), store.dim
        require_memory(4 * n * d, f"a FAISS index of {n} x {d} float32 vectors", error=ConfigError)
        if ivf_lists:
            if ivf_lists > n:
                raise ConfigError(f"ivf_lists={ivf_lists} exceeds the {n} indexed vectors.")
            self.index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(d), d, ivf_lists, faiss.METRIC_INNER_PRODUCT
            )
            self.index.train(_training_sample(store, 64 * ivf_lists, chunk_rows))
            self.index.nprobe = int(nprobe)
        else:
            self.index = faiss.IndexFlatIP(d)
        for lo in range(0, n, chunk_rows):
            self.index.add(unit_rows(store.read(lo, min(lo + chunk_rows, n))))

    def search(
        self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ExactSearch.search`."""
        extra = 0 if exclude is None else 1
        sims, ids = self.index.search(unit_rows(queries), k + extra)
        ids = ids.astype(np.int64)
        if (ids < 0).any():
            raise ConfigError(
                f"FAISS found fewer than {k} neighbours for some queries; raise --nprobe or "
                "lower --ivf-lists."
            )
        if exclude is not None:
            keep = ids != np.asarray(exclude)[:, None]
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the excluded id last
            sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        return _sorted(sims.astype(np.float32), ids)


def _training_sample(store: VectorStore, n_max: int, chunk_rows: int) -> np.ndarray:
    """About ``n_max`` evenly strided rows of ``store``, L2-normalised (one pass in chunks)."""
    stride = max(1, -(-len(store) // n_max))
    parts = [
        unit_rows(store.read(lo, min(lo + chunk_rows, len(store)))[(-lo) % stride :: stride])
        for lo in range(0, len(store), chunk_rows)
    ]
    return np.vstack(parts)


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(f"the faiss backend needs faiss: {FAISS_HINT}.") from exc
    return faiss


def faiss_available() -> bool:
    """True if the optional ``faiss`` package can be imported."""
    try:
        _import_faiss()
    except MissingDependencyError:
        return False
    return True


def build_search(
    store: VectorStore, backend: str = "auto", *, ivf_lists: int = 0, nprobe: int = 16
) -> ExactSearch | FaissSearch:
    """The searcher of ``backend`` over ``store`` (``auto``: see the module docstring).

    Raises:
        ConfigError: unknown backend, or IVF options with the exact backend.
        MissingDependencyError: ``faiss`` asked for but not installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        big = len(store) >= AUTO_FAISS_MIN_ROWS or ivf_lists > 0
        backend = "faiss" if big and faiss_available() else "exact"
    if backend == "exact":
        if ivf_lists:
            raise ConfigError("--ivf-lists needs the faiss backend (--backend faiss).")
        return ExactSearch(store)
    return FaissSearch(store, ivf_lists=ivf_lists, nprobe=nprobe)


def check_k(k: int, n: int, exclude_self: bool, where: object = None) -> None:
    """Refuse ``k`` larger than the candidates (``n``, less the query itself if excluded)."""
    available = n - (1 if exclude_self else 0)
    if not 0 < k <= available:
        extra = " besides the query itself" if exclude_self else ""
        message = f"k={k} but the index has {available} candidate row(s){extra}; lower -k."
        raise ConfigError(f"{where}: {message}" if where is not None else message)


def nearest_neighbours(
    queries: np.ndarray,
    store: VectorStore,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    backend: str = "auto",
    ivf_lists: int = 0,
    nprobe: int = 16,
) -> Neighbours:
    """The ``k`` most cosine-similar rows of ``store`` for each query.

    Args:
        queries: (Q, D) vectors.
        store: the searched vectors (N, D).
        k: neighbours per query, 1 <= k <= N (N - 1 with ``exclude``).
        exclude: (Q,) the row of ``store`` each query must not match (its own), or None.
        backend, ivf_lists, nprobe: see :func:`build_search`.

    Returns:
        :class:`Neighbours` with (Q, k) similarities and ids.
    """
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != store.dim:
        raise DataError(f"queries must be (Q, {store.dim}), got shape {queries.shape}.")
    check_k(k, len(store), exclude is not None)
    searcher = build_search(store, backend, ivf_lists=ivf_lists, nprobe=nprobe)
    ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    sims, ids = searcher.search(queries, k, ex)
    return Neighbours(sims, ids, searcher.backend)


# --------------------------------------------------------------------------------------------
# Anomaly scores
# --------------------------------------------------------------------------------------------


@dataclass
class AnomalyScores:
    """Per-image kNN anomaly scores (:func:`knn_anomaly_scores`).

    Attributes:
        scores: (N,) float64 mean cosine distance to the ``k`` nearest reference rows.
        neighbours: the (N, k) :class:`Neighbours` the scores come from.
    """

    scores: np.ndarray
    neighbours: Neighbours


def knn_anomaly_scores(
    index: VectorStore,
    reference: VectorStore | None = None,
    k: int = 10,
    *,
    backend: str = "auto",
    ivf_lists: int = 0,
    nprobe: int = 16,
    query_rows: int = 4096,
    progress: Any = None,
) -> AnomalyScores:
    """Anomaly score of every row of ``index``: mean cosine distance to its k nearest neighbours.

    ``score_i = (1/k) * sum_{j in kNN(i)} (1 - cos(e_i, r_j))`` with ``r_j`` the rows of
    ``reference`` (e.g. the training set's embedding) or, when ``reference`` is None, the other
    rows of ``index`` (the row itself is excluded; an exact duplicate still counts).

    Args:
        index: (N, D) the scored embeddings.
        reference: (M, D) the embedding of normal data, or None.
        k: neighbours averaged over.
        backend, ivf_lists, nprobe: see :func:`build_search`.
        query_rows: index rows scored per search call.
        progress: a tqdm-like bar to ``update`` per scored row, or None.

    Returns:
        :class:`AnomalyScores`.
    """
    ref = index if reference is None else reference
    if ref.dim != index.dim:
        raise DataError(f"reference vectors have dim {ref.dim}, the index {index.dim}.")
    check_k(k, len(ref), reference is None)
    searcher = build_search(ref, backend, ivf_lists=ivf_lists, nprobe=nprobe)
    sims, ids = [], []
    for lo in range(0, len(index), query_rows):
        hi = min(lo + query_rows, len(index))
        own = np.arange(lo, hi, dtype=np.int64) if reference is None else None
        s, i = searcher.search(index.read(lo, hi), k, own)
        sims.append(s)
        ids.append(i)
        if progress is not None:
            progress.update(hi - lo)
    sim = np.vstack(sims) if sims else np.empty((0, k), np.float32)
    scores = (1.0 - sim.astype(np.float64)).mean(axis=1)
    nb = Neighbours(sim, np.vstack(ids) if ids else np.empty((0, k), np.int64), searcher.backend)
    return AnomalyScores(scores, nb)


# --------------------------------------------------------------------------------------------
# Images back from the sources an index records
# --------------------------------------------------------------------------------------------


def read_index_images(
    index: EmbeddingIndex, rows: Sequence[int] | np.ndarray, *, allow_pickle: bool = False
) -> list[np.ndarray]:
    """The images of ``rows``, read back from their recorded input files and cleaned as when
    they were embedded (the index's ``preprocessing``).

    Args:
        index: an open index.
        rows: index rows.
        allow_pickle: allow pickled ``.npy`` inputs (trusted files only; never taken from the
            index file itself).

    Returns:
        One float32 ``(C, H, W)`` image per row, in the order of ``rows``.

    Raises:
        DataError: an input file is gone or changed (naming it).
    """
    rows = index.check_rows(rows)
    file_index, in_file = index.locations()
    prep = index.preprocessing
    by_file: dict[int, list[int]] = defaultdict(list)
    for pos, r in enumerate(rows):
        by_file[int(file_index[r])].append(pos)
    out: list[np.ndarray | None] = [None] * len(rows)
    for fi, positions in by_file.items():
        with open_source(index.files[fi], allow_pickle=allow_pickle) as src:
            for pos in positions:
                i = int(in_file[rows[pos]])
                if i >= len(src):
                    raise DataError(
                        f"has {len(src)} images, but the index records image {i}; the file "
                        "changed since it was embedded: re-run `embed`.",
                        index.files[fi],
                    )
                block = next(_clean(src, prep, i))
                out[pos] = block.images[0] if len(block.images) else None
    return [
        _present(img, index.files, file_index, in_file, r) for img, r in zip(out, rows, strict=True)
    ]


def _clean(src: Any, prep: dict[str, Any], i: int) -> Any:
    return iter_clean_blocks(
        src,
        nan_policy=prep.get("nan_policy", "raise"),
        normalize=prep.get("normalize", "none"),
        image_size=prep.get("image_size"),
        stats=prep.get("norm_stats"),
        fit_mode=prep.get("fit_mode", "auto"),
        block_size=1,
        start=i,
        stop=i + 1,
    )


def _present(
    img: np.ndarray | None, files: list[Path], fi: np.ndarray, in_file: np.ndarray, row: int
) -> np.ndarray:
    if img is None:
        raise DataError(
            "was dropped by the NaN policy now, but not when it was embedded: the file changed; "
            "re-run `embed`.",
            files[int(fi[row])],
            int(in_file[row]),
        )
    return img
