"""Datasets: :mod:`io` readers + :mod:`cleaning` -> in-memory arrays and torch datasets; splits.

Typical use::

    data = load_dataset("data.h5", nan_policy="interpolate", normalize="minmax")
    split = stratified_split(data.labels, val_fraction=0.15, test_fraction=0.15, seed=0)
    few = label_fraction_subset(split["train"], data.labels, fraction=0.1, seed=0)
    train = LensingDataset(data, few)

With ``normalize="zscore-dataset"`` the images are left in physical units until
``data.fit_normalization(split["train"])`` computes per-channel statistics on the training
split only and applies them to every image (``LensingDataset`` refuses un-normalised data).

The same cleaning path (layout/dtype -> NaN policy -> size -> normalisation) is used by
:func:`convert_dataset` (streaming into HDF5) and by :func:`summarize` (``inspect``, raw
statistics; :mod:`deeplense_ssl.datacards` renders them).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import __version__
from .cleaning import (
    NAN_POLICIES,
    NORMALIZATIONS,
    NanReport,
    NormStats,
    apply_nan_policy,
    count_nonfinite,
    fit_normalization,
    fit_size,
    normalize_images,
    to_chw_float32,
    to_nchw_float32,
)
from .errors import ConfigError, DataError
from .io import HDF5Writer, Source, open_source
from .runs import to_jsonable

__all__ = [
    "ImageSet",
    "LensingDataset",
    "NanReport",
    "NormStats",
    "convert_dataset",
    "fit_normalization",
    "label_fraction_subset",
    "load_dataset",
    "make_splits",
    "stratified_split",
    "summarize",
]


@dataclass
class ImageSet:
    """A loaded, cleaned dataset held in memory.

    Attributes:
        images: (N, C, H, W) float32, finite.
        labels: (N,) int64 indices into ``class_names``.
        class_names: names in label order.
        sources: (N,) source file (and ``[index]``) of each image.
        nan_report: what the NaN policy touched while loading.
        meta: ``kind``, ``path``, ``nan_policy``, ``normalize``, ``image_size``, ``nan_counts``
            ((N,) non-finite pixels per image before cleaning), ``source_index`` ((N,) index of
            each image in the source, which differs when images were dropped), ``params``
            (per-image arrays such as ``axion_mass_ev``, NaN where unknown), ``norm_stats`` (dict,
            for ``zscore-dataset``), stored HDF5 attributes.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    nan_report: NanReport = field(default_factory=NanReport)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def normalization_pending(self) -> bool:
        """True while ``zscore-dataset`` statistics have not been fitted yet."""
        return bool(self.meta.get("normalize_pending", False))

    def fit_normalization(self, train_indices: np.ndarray) -> NormStats:
        """Fit ``zscore-dataset`` statistics on ``images[train_indices]`` and apply them to all.

        Args:
            train_indices: indices of the training split only (no validation/test leakage).

        Returns:
            The :class:`NormStats` (also stored as ``meta["norm_stats"]``).
        """
        if not self.normalization_pending:
            raise ConfigError(
                "fit_normalization applies only to data loaded with normalize='zscore-dataset' "
                "and not yet normalised."
            )
        stats = fit_normalization(self.images, np.asarray(train_indices))
        self.apply_normalization(stats)
        return stats

    def apply_normalization(self, stats: NormStats) -> None:
        """Apply given ``zscore-dataset`` statistics (e.g. stored with a model) in place.

        Raises:
            DataError: an image maps beyond the float32 range, naming the source file and the
                image's index in it.
        """
        path = self.meta.get("path")
        for start in range(0, len(self.images), 4096):
            block = self.images[start : start + 4096]
            try:
                block[...] = normalize_images(
                    block, "zscore-dataset", stats, path=path, start=start
                )
            except DataError as exc:
                if exc.index is None:
                    raise
                index = self.meta.get("source_index", np.arange(len(self)))[exc.index]
                folder = self.meta.get("kind") in ("folder", "flat-folder") and path is not None
                file = Path(path) / self.sources[exc.index] if folder and path else None
                raise _located(exc, path, index, file) from exc
        self.meta["norm_stats"] = stats.to_dict()
        self.meta["normalize_pending"] = False


class LensingDataset(Dataset):
    """A torch dataset over an :class:`ImageSet` (or a subset of it by indices).

    Items are ``(image, label)``: a float32 tensor (C, H, W) sharing memory with the ImageSet,
    and an int. Augmentations belong on the training device (``transforms``), batched.

    Args:
        data: the loaded :class:`ImageSet`.
        indices: which images (default all), e.g. ``stratified_split(...)["train"]``.
    """

    def __init__(self, data: ImageSet, indices: Sequence[int] | np.ndarray | None = None):
        if data.normalization_pending:
            raise ConfigError(
                "data was loaded with normalize='zscore-dataset' but not normalised yet; call "
                "data.fit_normalization(train_indices) first."
            )
        self.data = data
        n = len(data)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ConfigError(f"indices must lie in [0, {n}).")
        self._images = torch.from_numpy(data.images)
        self._labels = data.labels

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return self.data.class_names

    @property
    def labels(self) -> np.ndarray:
        """(len(self),) labels of the items."""
        return self._labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        i = self.indices[item]
        return self._images[i], int(self._labels[i])


# ----------------------------------------------------------------------------- the cleaning path


@dataclass
class _Block:
    """One cleaned block: kept images with their source indices, counts and params."""

    images: np.ndarray  # (M, C, H, W) float32
    index: np.ndarray  # (M,) indices into the source
    nan_counts: np.ndarray  # (M,) non-finite pixels before cleaning
    params: dict[str, np.ndarray]
    report: NanReport


def _check_options(nan_policy: str, normalize: str, image_size: int | None) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy={nan_policy!r} is not one of {', '.join(NAN_POLICIES)}.")
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}.")
    if image_size is not None and image_size <= 0:
        raise ConfigError(f"image_size must be > 0, got {image_size}.")


def _clean_blocks(
    src: Source,
    *,
    nan_policy: str,
    image_size: int | None,
    fit_mode: str,
    normalize: str,
    stats: NormStats | None,
    block_size: int,
    buffer: Any = None,
) -> Iterator[_Block]:
    """Read ``src`` block by block and apply layout/dtype -> NaN policy -> size -> scaling.

    ``buffer(b)``, if given, returns where the next ``b`` images should land; stacked float32
    HDF5 sources are then read straight into it and cleaned in place (no extra copy).
    """
    scale = normalize if normalize != "zscore-dataset" or stats is not None else "none"
    for start in range(0, len(src), block_size):
        stop = min(start + block_size, len(src))
        out = buffer(stop - start) if buffer is not None and src.stacked else None
        yield _clean_range(src, start, stop, nan_policy, image_size, fit_mode, scale, stats, out)


def _located(exc: DataError, path: Any, index: int, file: Any = None) -> DataError:
    """``exc`` of ``normalize_images`` naming the image's own ``index`` in the source ``path``
    (images dropped by the NaN policy shift the positions), or its ``file`` for a folder."""
    message = str(exc).removeprefix(f"{exc.path} [image {exc.index}]: ")
    if file is not None:
        return DataError(message, file)
    return DataError(message, path, int(index))


_Cleaned = tuple[np.ndarray, np.ndarray, np.ndarray, NanReport]
"""(kept images (M, C, H, W), kept positions in the block (M,), NaN counts (B,), report)."""


def _clean_stacked(
    src: Source, raw: np.ndarray, start: int, policy: str, size: int | None, fit_mode: str
) -> _Cleaned:
    """Clean one block of a stacked source (one array holding many images)."""
    arr = to_nchw_float32(raw, path=src.path, start=start)
    counts = count_nonfinite(arr)
    arr, kept, report = apply_nan_policy(arr, policy, path=src.path, start=start, counts=counts)
    return fit_size(arr, size, fit_mode, path=src.path), kept, counts, report


def _clean_files(
    src: Source,
    raw: Sequence[np.ndarray],
    start: int,
    policy: str,
    size: int | None,
    fit_mode: str,
) -> _Cleaned:
    """Clean one block of a folder source (one file per image, shapes may differ)."""
    files = src.files[start : start + len(raw)]  # type: ignore[attr-defined]
    parts, kept_list, count_list, report = [], [], [], NanReport(policy=policy)
    for j, (image, file) in enumerate(zip(raw, files, strict=True)):
        one = to_chw_float32(image, path=file)[None]
        count = count_nonfinite(one)
        count_list.append(int(count[0]))
        one, kept_one, rep = apply_nan_policy(one, policy, sources=[str(file)], counts=count)
        report = report + rep
        if len(kept_one):
            parts.append(fit_size(one, size, fit_mode, path=file))
            kept_list.append(j)
    arr = _stack_same_shape(parts, [files[j] for j in kept_list])
    return arr, np.array(kept_list, np.int64), np.array(count_list, np.int64), report


def _stack_same_shape(parts: list[np.ndarray], files: list[Path]) -> np.ndarray:
    if not parts:
        return np.empty((0, 1, 1, 1), np.float32)
    first = parts[0].shape[1:]
    for part, file in zip(parts, files, strict=True):
        if part.shape[1:] != first:
            raise _shape_error(part.shape[1:], first, files[0], file, None)
    return np.concatenate(parts)


def _shape_error(shape: tuple, first: tuple, first_src: object, where: object, index: Any):
    if shape[0] != first[0]:
        hint = "all images need the same number of channels (bands); split the data by band."
    else:
        hint = "pass image_size=N (CLI: --image-size N) to centre-crop/resize all to N x N."
    return DataError(
        f"image shape {tuple(shape)} differs from {tuple(first)} of the first image "
        f"({first_src}); {hint}",
        where,
        index,
    )


def _check_block_shape(src: Source, block: _Block, shape: tuple, first_src: object) -> None:
    """Raise the :func:`_shape_error` of ``block`` if its images are not ``shape``."""
    if block.images.shape[1:] != tuple(shape):
        where, idx = _where(src, int(block.index[0]))
        raise _shape_error(block.images.shape[1:], tuple(shape), first_src, where, idx)


def _where(src: Source, i: int) -> tuple[object, int | None]:
    if src.stacked:
        return src.path, i
    return src.files[i], None  # type: ignore[attr-defined]


def _progress(total: int, desc: str, progress: bool | None) -> Any:
    disable = (total < 2048 or None) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False)


# ----------------------------------------------------------------------------- load


def load_dataset(
    path: str | Path,
    *,
    nan_policy: str = "raise",
    normalize: str = "minmax",
    image_size: int | None = None,
    allow_pickle: bool = False,
    fit_mode: str = "auto",
    norm_stats: NormStats | dict | None = None,
    block_size: int = 1024,
    progress: bool | None = None,
    **reader_kwargs: Any,
) -> ImageSet:
    """Load any supported input into memory as clean float32 ``(N, C, H, W)`` images.

    The images are read block by block into one preallocated array (memory ~ one copy of the
    float32 data).

    Args:
        path: our HDF5, a DeepLense ``<root>/<class>/*.npy`` folder, a flat folder, ``.npy``,
            ``.npz``, generic HDF5 or FITS (see :mod:`deeplense_ssl.io`).
        nan_policy: one of :data:`~deeplense_ssl.cleaning.NAN_POLICIES` (``raise`` | ``zero``
            | ``median`` | ``interpolate`` | ``drop``).
        normalize: one of :data:`~deeplense_ssl.cleaning.NORMALIZATIONS` (``none`` |
            ``minmax`` | ``zscore`` | ``zscore-dataset`` | ``asinh``).
        image_size: bring every image to this side in pixels (centre crop if larger, bilinear
            resize if smaller; see :func:`cleaning.fit_size`); None keeps the stored size and
            requires all images to share it.
        allow_pickle: allow pickled ``.npy`` (DeepLense axion files); trusted files only.
        fit_mode: ``auto`` | ``crop`` | ``resize`` for ``image_size``.
        norm_stats: stored ``zscore-dataset`` statistics to apply (e.g. from a checkpoint);
            without them ``zscore-dataset`` leaves the images pending
            :meth:`ImageSet.fit_normalization`.
        block_size: images read per block.
        progress: tqdm bar (None: only for inputs of 2048+ images on a terminal).
        **reader_kwargs: ``labels``, ``labels_csv``, ``label_pattern``, ``images_key``,
            ``labels_key``, ``class_names`` (see :func:`io.open_source`).

    Returns:
        An :class:`ImageSet`.

    Raises:
        DataError: unreadable or inconsistent input, naming the file and image index.
        ConfigError: unknown option values.
    """
    _check_options(nan_policy, normalize, image_size)
    if isinstance(norm_stats, dict):
        norm_stats = NormStats.from_dict(norm_stats)
    with open_source(path, allow_pickle=allow_pickle, **reader_kwargs) as src:
        # float32 HDF5 of ours: read straight into the final array
        direct = getattr(src, "direct_shape", None) if image_size is None else None
        parts = _Assembly(src, direct, nan_policy)
        blocks = _clean_blocks(
            src,
            nan_policy=nan_policy,
            image_size=image_size,
            fit_mode=fit_mode,
            normalize=normalize,
            stats=norm_stats,
            block_size=block_size,
            buffer=None if direct is None else parts.buffer,
        )
        bar = _progress(len(src), f"loading {Path(path).name}", progress)
        try:
            for block in blocks:
                parts.add(block)
                bar.update(len(block.images) + block.report.images_dropped)
        finally:
            bar.close()
        options = {
            "nan_policy": nan_policy,
            "normalize": normalize,
            "image_size": image_size,
            "fit_mode": fit_mode,
        }
        return parts.image_set(path, options, norm_stats)


class _Assembly:
    """Cleaned blocks of one source gathered into one preallocated ``(N, C, H, W)`` array.

    Args:
        src: the open source.
        direct_shape: (C, H, W) to preallocate now, so that blocks can be read straight into
            :meth:`buffer`; None allocates at the first block.
        nan_policy: the policy, for the merged :class:`NanReport`.
    """

    def __init__(self, src: Source, direct_shape: tuple | None, nan_policy: str) -> None:
        n = len(src)
        self.src = src
        self.images: np.ndarray | None = None
        if direct_shape is not None:
            self.images = np.empty((n, *direct_shape), np.float32)
        self.index, self.counts = np.empty(n, np.int64), np.empty(n, np.int64)
        self.params: dict[str, np.ndarray] = {}
        self.report = NanReport(policy=nan_policy)
        self.pos = 0
        self.first_src: object = None

    def buffer(self, b: int) -> np.ndarray:
        """Where the next ``b`` images land (a view of the preallocated array)."""
        assert self.images is not None
        return self.images[self.pos : self.pos + b]

    def add(self, block: _Block) -> None:
        """Append the kept images of ``block`` (no copy if they were read in place)."""
        self.report = self.report + block.report
        m, pos = len(block.images), self.pos
        if m == 0:
            return
        if self.images is None:
            self.images = np.empty((len(self.src), *block.images.shape[1:]), np.float32)
        if self.first_src is None:
            self.first_src = self.src.sources[int(block.index[0])]
        else:
            _check_block_shape(self.src, block, self.images.shape[1:], self.first_src)
        if not _same_memory(block.images, self.images[pos : pos + m]):
            self.images[pos : pos + m] = block.images
        self.index[pos : pos + m] = block.index
        self.counts[pos : pos + m] = block.nan_counts
        for key, value in block.params.items():
            if key not in self.params:
                self.params[key] = np.full((len(self.src), *value.shape[1:]), np.nan)
            self.params[key][pos : pos + m] = value
        self.pos += m

    def image_set(
        self, path: str | Path, options: dict[str, Any], norm_stats: NormStats | None
    ) -> ImageSet:
        """The :class:`ImageSet` of the blocks added so far.

        Args:
            path: the source path (for the error when every image was dropped).
            options: ``nan_policy``, ``normalize``, ``image_size``, ``fit_mode``, stored in
                ``meta``.
            norm_stats: applied ``zscore-dataset`` statistics, if any.

        Raises:
            DataError: every image was dropped by the NaN policy.
        """
        src, pos = self.src, self.pos
        if self.images is None:
            raise DataError(
                f"all {len(src)} images were dropped by nan_policy='drop'; use another NaN policy.",
                path,
            )
        meta = {k: v for k, v in src.meta.items() if k != "nan_counts"}
        stored = src.meta.get("nan_counts")
        index = self.index[:pos]
        meta.update(
            **options,
            nan_counts=self.counts[:pos] + (stored[index] if stored is not None else 0),
            source_index=index,
            params={k: v[:pos] for k, v in self.params.items()},
            normalize_pending=options["normalize"] == "zscore-dataset" and norm_stats is None,
        )
        if norm_stats is not None:
            meta["norm_stats"] = norm_stats.to_dict()
        return ImageSet(
            images=self.images[:pos] if pos < len(src) else self.images,
            labels=src.labels[index].copy(),
            class_names=list(src.class_names),
            sources=[src.sources[i] for i in index],
            nan_report=self.report,
            meta=meta,
        )


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` is exactly the memory of ``b`` (same start, shape and strides)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


# ----------------------------------------------------------------------------- splits


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded, stratified train/val/test split.

    Per class with ``n`` images: ``round(n * test_fraction)`` go to test,
    ``round(n * val_fraction)`` to val (reduced so that train keeps at least one image), the
    rest to train.

    Args:
        labels: (N,) integer labels.
        val_fraction: fraction of each class for validation, in [0, 1).
        test_fraction: fraction of each class for test, in [0, 1).
        seed: random seed; the same seed and labels give the same split.

    Returns:
        ``{"train", "val", "test"}`` -> sorted, disjoint int64 index arrays covering all images.
    """
    labels = np.asarray(labels)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"need 0 <= val_fraction, test_fraction and val+test < 1; got {val_fraction}, "
            f"{test_fraction}."
        )
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_test = min(_round(n * test_fraction), max(n - 1, 0))
        n_val = min(_round(n * val_fraction), max(n - 1 - n_test, 0))
        out["test"].append(members[:n_test])
        out["val"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    return {
        k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.empty(0, np.int64)
        for k, v in out.items()
    }


def label_fraction_subset(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """A class-stratified subset of ``indices`` for few-label experiments.

    Each class keeps ``max(1, round(fraction * n_class))`` of its images. For one seed the
    subsets are nested: a smaller fraction's subset lies inside a larger one's.

    Args:
        indices: candidate indices (e.g. the training split).
        labels: (N,) labels of the whole set; ``labels[indices]`` are used.
        fraction: in (0, 1].
        seed: random seed.

    Returns:
        Sorted int64 subset of ``indices``.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}.")
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels)
    if len(indices) and indices.max() >= len(labels):
        raise ConfigError("labels must be the labels of the whole set (labels[indices]).")
    chosen = []
    sub = labels[indices]
    for c in np.unique(sub):
        members = np.sort(indices[sub == c])
        order = np.random.default_rng([seed, int(c)]).permutation(members)
        k = max(1, _round(fraction * len(members)))
        chosen.append(order[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def make_splits(
    data: ImageSet,
    *,
    val_fraction: float,
    test_fraction: float = 0.0,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> dict[str, LensingDataset]:
    """Stratified train/val/test :class:`LensingDataset` objects, for few-label experiments.

    ``train`` keeps only ``label_fraction`` of the training split
    (:func:`label_fraction_subset`, at least one image per class, nested across fractions);
    ``val`` and ``test`` are complete. With ``zscore-dataset`` pending, the statistics are fit
    on the whole training split (never on val/test) before the datasets are built.

    Returns:
        ``{"train", "val", "test"}`` -> :class:`LensingDataset`.
    """
    split = stratified_split(data.labels, val_fraction, test_fraction, seed=seed)
    if data.normalization_pending:
        data.fit_normalization(split["train"])
    train = label_fraction_subset(split["train"], data.labels, label_fraction, seed)
    return {
        "train": LensingDataset(data, train),
        "val": LensingDataset(data, split["val"]),
        "test": LensingDataset(data, split["test"]),
    }


# ----------------------------------------------------------------------------- convert


def convert_dataset(
    src_path: str | Path,
    out: str | Path,
    *,
    nan_policy: str = "raise",
    normalize: str = "none",
    image_size: int | None = None,
    allow_pickle: bool = False,
    fit_mode: str = "auto",
    block_size: int = 1024,
    chunk_images: int = 1,
    progress: bool | None = None,
    **reader_kwargs: Any,
) -> tuple[Path, NanReport]:
    """Convert any supported input into one HDF5 file in the package's layout, streaming.

    Blocks of ``block_size`` images are read, cleaned and appended, so the input never has to
    fit in memory. The file is written under a temporary name and renamed at the end; on any
    error nothing is left behind.

    Args:
        src_path: any input supported by :func:`io.open_source`.
        out: output ``.h5`` file.
        nan_policy, normalize, image_size, allow_pickle, fit_mode: as in :func:`load_dataset`;
            ``normalize="zscore-dataset"`` is refused (it needs a training split).
        block_size: images per block.
        chunk_images: images per HDF5 chunk (1: fastest random access, measured).
        progress: tqdm bar (None: only for 2048+ images on a terminal).
        **reader_kwargs: as in :func:`load_dataset`.

    Returns:
        (final path, NaN report).
    """
    _check_options(nan_policy, normalize, image_size)
    if normalize == "zscore-dataset":
        raise ConfigError(
            "convert cannot apply zscore-dataset (it needs the training split); keep "
            "normalize='none' and normalise when training."
        )
    with open_source(src_path, allow_pickle=allow_pickle, **reader_kwargs) as src:
        blocks = _clean_blocks(
            src,
            nan_policy=nan_policy,
            image_size=image_size,
            fit_mode=fit_mode,
            normalize=normalize,
            stats=None,
            block_size=block_size,
        )
        attrs: dict[str, Any] = {
            "nan_policy": nan_policy,
            "normalize": normalize,
            "image_size": image_size if image_size is not None else "native",
            "provenance": _provenance(src_path, src, reader_kwargs, allow_pickle, fit_mode),
        }
        if "labelled" in src.meta:
            attrs["labelled"] = int(bool(src.meta["labelled"]))
        bar = _progress(len(src), f"converting {Path(src_path).name}", progress)
        try:
            report = _write_blocks(src, blocks, out, attrs, chunk_images, bar)
        finally:
            bar.close()
    return Path(out), report


def _provenance(
    src_path: str | Path,
    src: Source,
    reader_kwargs: dict[str, Any],
    allow_pickle: bool,
    fit_mode: str,
) -> dict[str, Any]:
    """Where a converted file came from and how it was read (its ``provenance`` attribute)."""
    return {
        "source": str(Path(src_path).resolve()),
        "source_kind": src.kind,
        "source_images": len(src),
        "reader_options": {k: str(v) for k, v in reader_kwargs.items() if v is not None},
        "allow_pickle": allow_pickle,
        "fit_mode": fit_mode,
        "created_by": f"deeplense_ssl {__version__} convert",
    }


def _write_blocks(
    src: Source,
    blocks: Iterator[_Block],
    out: str | Path,
    attrs: dict[str, Any],
    chunk_images: int,
    bar: Any,
) -> NanReport:
    """Append every cleaned block to a new HDF5 file at ``out`` (created at the first kept image).

    The writer is closed on success (which renames the file into place) and aborted on any
    error, Ctrl-C included, so nothing is left at ``out``.

    Returns:
        The merged NaN report, also stored as the ``nan_report`` attribute.
    """
    report = NanReport(policy=attrs["nan_policy"])
    stored = src.meta.get("nan_counts")
    writer: HDF5Writer | None = None
    first_src: object = None
    try:
        for block in blocks:
            report = report + block.report
            bar.update(len(block.index) + block.report.images_dropped)
            if len(block.images) == 0:
                continue
            if writer is None:
                shape = block.images.shape[1:]
                writer = HDF5Writer(
                    out, len(src), shape, src.class_names, attrs=attrs, chunk_images=chunk_images
                ).__enter__()
                first_src = src.sources[int(block.index[0])]
            else:
                _check_block_shape(src, block, writer.image_shape, first_src)
            writer.append(
                block.images,
                src.labels[block.index],
                sources=[src.sources[i] for i in block.index],
                nan_counts=block.nan_counts + (stored[block.index] if stored is not None else 0),
                params=block.params,
            )
        if writer is None:
            raise DataError(
                f"all {len(src)} images were dropped by nan_policy='drop'; nothing to write.",
                src.path,
            )
        writer.attrs["nan_report"] = dict(report.__dict__)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    writer.__exit__(None, None, None)
    return report


# ----------------------------------------------------------------------------- inspect


def summarize(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    block_size: int = 1024,
    progress: bool | None = None,
    max_examples: int = 5,
    **reader_kwargs: Any,
) -> dict[str, Any]:
    """Statistics of the raw images of any input (before any cleaning), streaming.

    Args:
        path: any supported input.
        allow_pickle: allow pickled ``.npy`` (trusted files only).
        block_size: images per block.
        progress: tqdm bar (None: only for 2048+ images on a terminal).
        max_examples: how many example sources to list for NaN/constant images.
        **reader_kwargs: as in :func:`load_dataset`.

    Returns:
        A JSON-safe dict: ``n_images``, ``class_names``, ``counts_per_class``, ``shapes`` and
        ``dtypes`` (stored, with counts), ``chw_shapes``, ``value_min`` / ``value_max`` /
        ``value_mean`` of finite pixels (overall and ``per_class``), ``nan_pixels``,
        ``inf_pixels``, ``total_pixels``, ``nan_fraction``, ``inf_fraction``,
        ``images_with_nonfinite``, ``constant_images``, examples, ``params`` ranges, stored
        HDF5 attributes and ``stored_nan_counts`` for files written by ``convert``.
        :mod:`deeplense_ssl.datacards` renders it as text or as a data card.
    """
    with open_source(path, allow_pickle=allow_pickle, **reader_kwargs) as src:
        names = src.class_names
        stats = _RawStats(names, max_examples)
        bar = _progress(len(src), f"inspecting {Path(path).name}", progress)
        try:
            for start, raw, block_params in src.iter_blocks(block_size):
                arrays = _raw_as_chw(src, start, raw, stats)
                for i, img in enumerate(arrays, start):
                    stats.add_image(img, names[src.labels[i]], src.sources[i])
                stats.add_params(block_params)
                bar.update(len(arrays))
        finally:
            bar.close()
        summary: dict[str, Any] = {
            "path": str(path),
            "kind": src.kind,
            "n_images": len(src),
            "class_names": list(names),
            "labelled": bool(src.meta.get("labelled", True)),
            **stats.to_dict(),
        }
        summary.update(_stored_extras(src))
    return summary


def _raw_as_chw(src: Source, start: int, raw: Any, stats: _RawStats) -> list[np.ndarray]:
    """The images of one raw block as float32 (C, H, W), counting stored shapes and dtypes."""
    if src.stacked:
        stats.dtypes[str(raw.dtype)] += len(raw)
        stats.shapes[str(tuple(raw.shape[1:]))] += len(raw)
        return list(to_nchw_float32(raw, path=src.path, start=start))
    files = src.files[start : start + len(raw)]  # type: ignore[attr-defined]
    arrays = []
    for image, file in zip(raw, files, strict=True):
        stats.dtypes[str(image.dtype)] += 1
        stats.shapes[str(tuple(image.shape))] += 1
        arrays.append(to_chw_float32(image, path=file))
    return arrays


class _RawStats:
    """Running statistics of raw images for :func:`summarize` (finite pixels only).

    Args:
        class_names: names in label order.
        max_examples: how many example sources to keep for NaN/inf and constant images.
    """

    def __init__(self, class_names: Sequence[str], max_examples: int) -> None:
        self.max_examples = max_examples
        self.shapes: Counter[str] = Counter()
        self.chw: Counter[str] = Counter()
        self.dtypes: Counter[str] = Counter()
        self.per_class: dict[str, dict[str, Any]] = {
            c: {"count": 0, "min": np.inf, "max": -np.inf, "sum": 0.0, "pixels": 0}
            for c in class_names
        }
        self.nan_pix = self.inf_pix = self.total_pix = 0
        self.n_nonfinite = self.n_constant = 0
        self.nonfinite_examples: list[str] = []
        self.constant_examples: list[str] = []
        self.params: dict[str, list[float]] = {}

    def add_image(self, img: np.ndarray, class_name: str, source: str) -> None:
        """Count one (C, H, W) image of class ``class_name`` read from ``source``."""
        self.chw[str(tuple(img.shape))] += 1
        cls = self.per_class[class_name]
        cls["count"] += 1
        finite = np.isfinite(img)
        n_nan = int(np.isnan(img).sum())
        n_inf = int(img.size - finite.sum() - n_nan)
        self.nan_pix += n_nan
        self.inf_pix += n_inf
        self.total_pix += img.size
        good = img[finite] if n_nan or n_inf else img.ravel()
        if n_nan or n_inf:
            self.n_nonfinite += 1
            self._example(self.nonfinite_examples, source)
        if good.size:
            lo, hi = float(good.min()), float(good.max())
            cls["min"] = min(cls["min"], lo)
            cls["max"] = max(cls["max"], hi)
            cls["sum"] += float(good.sum(dtype=np.float64))
            cls["pixels"] += int(good.size)
        if good.size == 0 or lo == hi:
            self.n_constant += 1
            self._example(self.constant_examples, source)

    def _example(self, examples: list[str], source: str) -> None:
        if len(examples) < self.max_examples:
            examples.append(source)

    def add_params(self, block_params: dict[str, Any]) -> None:
        """Collect per-image parameters (e.g. ``axion_mass_ev``) of one block."""
        for key, value in block_params.items():
            self.params.setdefault(key, []).extend(np.asarray(value, float).ravel().tolist())

    def to_dict(self) -> dict[str, Any]:
        """The statistics part of the :func:`summarize` dict (JSON-safe)."""
        classes = self.per_class.values()
        total_sum = sum(c["sum"] for c in classes)
        total_good = sum(c["pixels"] for c in classes)
        value_min = min((c["min"] for c in classes), default=None)
        value_max = max((c["max"] for c in classes), default=None)
        if value_min == np.inf:  # no finite pixel anywhere
            value_min = value_max = None
        total = self.total_pix
        return {
            "counts_per_class": {c: v["count"] for c, v in self.per_class.items()},
            "shapes": dict(self.shapes),
            "chw_shapes": dict(self.chw),
            "dtypes": dict(self.dtypes),
            "value_min": value_min,
            "value_max": value_max,
            "value_mean": total_sum / total_good if total_good else None,
            "per_class": {c: _class_stats(v) for c, v in self.per_class.items()},
            "total_pixels": total,
            "nan_pixels": self.nan_pix,
            "inf_pixels": self.inf_pix,
            "nan_fraction": self.nan_pix / total if total else 0.0,
            "inf_fraction": self.inf_pix / total if total else 0.0,
            "images_with_nonfinite": self.n_nonfinite,
            "nonfinite_examples": self.nonfinite_examples,
            "constant_images": self.n_constant,
            "constant_examples": self.constant_examples,
            "params": {k: _param_range(np.asarray(v)) for k, v in self.params.items()},
        }


def _class_stats(v: dict[str, Any]) -> dict[str, Any]:
    has = bool(v["pixels"])
    return {
        "count": v["count"],
        "min": v["min"] if has else None,
        "max": v["max"] if has else None,
        "mean": v["sum"] / v["pixels"] if has else None,
    }


def _param_range(values: np.ndarray) -> dict[str, Any]:
    known = np.isfinite(values)
    return {
        "known": int(known.sum()),
        "min": float(np.nanmin(values)) if known.any() else None,
        "max": float(np.nanmax(values)) if known.any() else None,
    }


def _stored_extras(src: Source) -> dict[str, Any]:
    """``attrs`` (HDF5 attributes, JSON strings decoded) and ``stored_nan_counts`` (convert)."""
    extras: dict[str, Any] = {}
    if src.kind == "hdf5":
        skip = ("nan_counts", "kind", "path", "images_key")
        attrs = {k: v for k, v in src.meta.items() if k not in skip}
        extras["attrs"] = {k: _maybe_json(v) for k, v in to_jsonable(attrs).items()}
    stored = src.meta.get("nan_counts")
    if stored is not None:
        extras["stored_nan_counts"] = {
            "pixels": int(stored.sum()),
            "images": int((stored > 0).sum()),
        }
    return extras


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# ----------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class CleanBlock:
    """One block of a source after cleaning, as :func:`iter_clean_blocks` yields it.

    Attributes:
        start: first source index the block read.
        stop: one past the last source index it read (the next block starts here, so a
            consumer can record ``stop`` to resume after the block).
        images: (M, C, H, W) float32, finite and normalised; ``M <= stop - start`` (fewer
            when ``nan_policy="drop"`` dropped images; ``M`` may be 0).
        labels: (M,) int64 labels of the kept images (indices into ``source.class_names``).
        index: (M,) int64 source indices of the kept images (``source.sources[index]``).
        nan_counts: (M,) non-finite pixels each kept image had before cleaning.
        params: per-image parameter arrays of the kept images, leading dimension M.
        nan_report: what the NaN policy touched in this block.
    """

    start: int
    stop: int
    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    nan_counts: np.ndarray
    params: dict[str, np.ndarray]
    nan_report: NanReport


def iter_clean_blocks(
    source: Source,
    *,
    nan_policy: str,
    normalize: str,
    image_size: int | None,
    block_size: int = 1024,
    stats: NormStats | dict | None = None,
    fit_mode: str = "auto",
    start: int = 0,
    stop: int | None = None,
    check_shape: bool = True,
) -> Iterator[CleanBlock]:
    """Stream an open source as cleaned blocks, the same cleaning as :func:`load_dataset`.

    Layout/dtype -> NaN policy -> size -> normalisation, block by block, so that only one
    block is in memory (embedding, streaming training, any pass over data larger than memory).
    The images equal those :func:`load_dataset` returns with the same options.

    Args:
        source: an open :class:`~deeplense_ssl.io.Source` (:func:`io.open_source`); the caller
            closes it.
        nan_policy: one of :data:`~deeplense_ssl.cleaning.NAN_POLICIES`.
        normalize: one of :data:`~deeplense_ssl.cleaning.NORMALIZATIONS`; ``zscore-dataset``
            needs ``stats`` (fit them first, e.g. with :func:`fit_normalization` on a pass with
            ``normalize="none"``, or take those stored with a model).
        image_size: side in pixels to crop/resize to (None: stored size).
        block_size: images read per block (> 0).
        stats: ``zscore-dataset`` statistics (:class:`NormStats` or its ``to_dict()``).
        fit_mode: ``auto`` | ``crop`` | ``resize`` for ``image_size``.
        start: first source index to read (e.g. where an interrupted pass stopped).
        stop: one past the last source index (None: the end of the source).
        check_shape: refuse a block whose image shape differs from the first kept image's.

    Yields:
        :class:`CleanBlock` per ``block_size`` images of ``start:stop``, in order (also when
        every image of a block was dropped, so that ``stop`` always advances).

    Raises:
        ConfigError: unknown options, ``zscore-dataset`` without ``stats``, or a bad range.
        DataError: unreadable images, NaN with ``nan_policy="raise"``, values beyond float32
            after scaling, or differing shapes, naming the file and image index.
    """
    _check_options(nan_policy, normalize, image_size)
    if isinstance(stats, dict):
        stats = NormStats.from_dict(stats)
    if normalize == "zscore-dataset" and stats is None:
        raise ConfigError(
            "normalize='zscore-dataset' needs the statistics of the training data (stats=...) "
            "when streaming; fit them first or take those stored with the model."
        )
    stop = len(source) if stop is None else min(int(stop), len(source))
    if block_size <= 0 or not 0 <= start <= stop:
        raise ConfigError(
            f"need block_size > 0 and 0 <= start <= stop <= {len(source)}; got block_size="
            f"{block_size}, start={start}, stop={stop}."
        )
    shape: tuple | None = None
    first: object = None
    for lo in range(start, stop, block_size):
        hi = min(lo + block_size, stop)
        block = _clean_range(source, lo, hi, nan_policy, image_size, fit_mode, normalize, stats)
        if check_shape and len(block.images):
            if shape is None:
                shape = block.images.shape[1:]
                first = source.sources[int(block.index[0])]
            else:
                _check_block_shape(source, block, shape, first)
        yield CleanBlock(
            lo,
            hi,
            block.images,
            source.labels[block.index],
            block.index,
            block.nan_counts,
            block.params,
            block.report,
        )


def _clean_range(
    src: Source,
    start: int,
    stop: int,
    nan_policy: str,
    image_size: int | None,
    fit_mode: str,
    normalize: str,
    stats: NormStats | None,
    out: np.ndarray | None = None,
) -> _Block:
    """Read and clean images ``start:stop`` of ``src``: layout/dtype -> NaN policy -> size ->
    scaling (one step of :func:`_clean_blocks` and :func:`iter_clean_blocks`).

    ``out``: a float32 buffer a stacked source reads into (the block is then cleaned in place:
    safe, since a block is read once; read-only memory maps are copied).
    """
    if out is not None:
        raw, params = src.read_block(start, stop, out=out)
    else:
        raw, params = src.read_block(start, stop)
    clean = _clean_stacked if src.stacked else _clean_files
    arr, kept, counts, report = clean(src, raw, start, nan_policy, image_size, fit_mode)
    params = {k: np.asarray(v)[kept] for k, v in params.items()}
    if normalize != "none" and len(arr):
        try:
            arr = normalize_images(
                arr, normalize, stats, copy=not arr.flags.writeable, path=src.path, start=start
            )
        except DataError as exc:
            if exc.index is None:
                raise
            index = start + int(kept[exc.index - start])
            file = None if src.stacked else src.files[index]  # type: ignore[attr-defined]
            raise _located(exc, src.path, index, file) from exc
    return _Block(arr, start + kept, counts[kept], params, report)
