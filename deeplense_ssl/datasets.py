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
:func:`convert_dataset` (streaming into HDF5) and by :func:`summarize` (``inspect``).
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

from . import __version__
from .cleaning import (
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
from .config import NAN_POLICIES, NORMALIZATIONS
from .errors import ConfigError, DataError
from .io import HDF5Writer, Source, open_source, write_text_atomic

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
    "render_data_card",
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
        stats = fit_normalization(self.images[np.asarray(train_indices)])
        self.apply_normalization(stats)
        return stats

    def apply_normalization(self, stats: NormStats) -> None:
        """Apply given ``zscore-dataset`` statistics (e.g. stored with a model) in place."""
        for start in range(0, len(self.images), 4096):
            block = self.images[start : start + 4096]
            block[...] = normalize_images(block, "zscore-dataset", stats)
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
        if buffer is not None and src.stacked:
            raw, params = src.read_block(start, stop, out=buffer(stop - start))
        else:
            raw, params = src.read_block(start, stop)
        if src.stacked:
            arr = to_nchw_float32(raw, path=src.path, start=start)
            counts = count_nonfinite(arr)
            arr, kept, report = apply_nan_policy(
                arr, nan_policy, path=src.path, start=start, counts=counts
            )
            arr = fit_size(arr, image_size, fit_mode, path=src.path)
        else:
            files = src.files[start : start + len(raw)]  # type: ignore[attr-defined]
            parts, kept_list, count_list, report = [], [], [], NanReport(policy=nan_policy)
            for j, (image, file) in enumerate(zip(raw, files, strict=True)):
                one = to_chw_float32(image, path=file)[None]
                count = count_nonfinite(one)
                count_list.append(int(count[0]))
                one, kept_one, rep = apply_nan_policy(
                    one, nan_policy, sources=[str(file)], counts=count
                )
                report = report + rep
                if len(kept_one):
                    parts.append(fit_size(one, image_size, fit_mode, path=file))
                    kept_list.append(j)
            kept = np.array(kept_list, np.int64)
            counts = np.array(count_list, np.int64)
            arr = _stack_same_shape(parts, [files[j] for j in kept_list])
        params = {k: np.asarray(v)[kept] for k, v in params.items()}
        if scale != "none":
            # In place is safe: a block is read once from a source that is closed afterwards;
            # read-only memory maps are copied.
            arr = normalize_images(arr, scale, stats, copy=not arr.flags.writeable)
        yield _Block(arr, start + kept, counts[kept], params, report)


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


def _progress(total: int, desc: str, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = (total < 2048 or None) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False)


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
        nan_policy: ``raise`` | ``zero`` | ``median`` | ``interpolate`` | ``drop``.
        normalize: ``none`` | ``minmax`` | ``zscore`` | ``zscore-dataset`` | ``asinh``.
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
        n = len(src)
        images: np.ndarray | None = None
        index, counts = np.empty(n, np.int64), np.empty(n, np.int64)
        params: dict[str, np.ndarray] = {}
        report = NanReport(policy=nan_policy)
        pos = 0
        first_src: object = None
        direct = getattr(src, "direct_shape", None) if image_size is None else None
        buffer = None
        if direct is not None:  # read straight into the final array (float32 HDF5, ours)
            images = np.empty((n, *direct), np.float32)

            def buffer(b: int) -> np.ndarray:
                return images[pos : pos + b]

        bar = _progress(n, f"loading {Path(path).name}", progress)
        try:
            blocks = _clean_blocks(
                src,
                nan_policy=nan_policy,
                image_size=image_size,
                fit_mode=fit_mode,
                normalize=normalize,
                stats=norm_stats,
                block_size=block_size,
                buffer=buffer,
            )
            for block in blocks:
                report = report + block.report
                m = len(block.images)
                bar.update(m + block.report.images_dropped)
                if m == 0:
                    continue
                if images is None:
                    images = np.empty((n, *block.images.shape[1:]), np.float32)
                if first_src is None:
                    first_src = src.sources[int(block.index[0])]
                elif block.images.shape[1:] != images.shape[1:]:
                    bad = int(block.index[0])
                    where, idx = _where(src, bad)
                    raise _shape_error(
                        block.images.shape[1:], images.shape[1:], first_src, where, idx
                    )
                if not _same_memory(block.images, images[pos : pos + m]):
                    images[pos : pos + m] = block.images
                index[pos : pos + m] = block.index
                counts[pos : pos + m] = block.nan_counts
                for key, value in block.params.items():
                    if key not in params:
                        params[key] = np.full((n, *value.shape[1:]), np.nan)
                    params[key][pos : pos + m] = value
                pos += m
        finally:
            bar.close()
        if images is None:
            raise DataError(
                f"all {n} images were dropped by nan_policy='drop'; use another NaN policy.",
                path,
            )
        meta = {k: v for k, v in src.meta.items() if k != "nan_counts"}
        stored = src.meta.get("nan_counts")
        index = index[:pos]
        counts = counts[:pos] + (stored[index] if stored is not None else 0)
        meta.update(
            nan_policy=nan_policy,
            normalize=normalize,
            image_size=image_size,
            fit_mode=fit_mode,
            nan_counts=counts,
            source_index=index,
            params={k: v[:pos] for k, v in params.items()},
            normalize_pending=normalize == "zscore-dataset" and norm_stats is None,
        )
        if norm_stats is not None:
            meta["norm_stats"] = norm_stats.to_dict()
        return ImageSet(
            images=images[:pos] if pos < n else images,
            labels=src.labels[index].copy(),
            class_names=list(src.class_names),
            sources=[src.sources[i] for i in index],
            nan_report=report,
            meta=meta,
        )


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` is exactly the memory of ``b`` (same start, shape and strides)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def _where(src: Source, i: int) -> tuple[object, int | None]:
    if src.stacked:
        return src.path, i
    return src.files[i], None  # type: ignore[attr-defined]


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
        n = len(src)
        blocks = _clean_blocks(
            src,
            nan_policy=nan_policy,
            image_size=image_size,
            fit_mode=fit_mode,
            normalize=normalize,
            stats=None,
            block_size=block_size,
        )
        report = NanReport(policy=nan_policy)
        stored = src.meta.get("nan_counts")
        provenance = {
            "source": str(Path(src_path).resolve()),
            "source_kind": src.kind,
            "source_images": n,
            "reader_options": {k: str(v) for k, v in reader_kwargs.items() if v is not None},
            "allow_pickle": allow_pickle,
            "fit_mode": fit_mode,
            "created_by": f"deeplense_ssl {__version__} convert",
        }
        writer: HDF5Writer | None = None
        bar = _progress(n, f"converting {Path(src_path).name}", progress)
        first_src: object = None
        try:
            for block in blocks:
                report = report + block.report
                bar.update(len(block.index) + block.report.images_dropped)
                if len(block.images) == 0:
                    continue
                if writer is None:
                    attrs = {
                        "nan_policy": nan_policy,
                        "normalize": normalize,
                        "image_size": image_size if image_size is not None else "native",
                        "provenance": provenance,
                    }
                    if "labelled" in src.meta:
                        attrs["labelled"] = int(bool(src.meta["labelled"]))
                    writer = HDF5Writer(
                        out,
                        n,
                        block.images.shape[1:],
                        src.class_names,
                        attrs=attrs,
                        chunk_images=chunk_images,
                    ).__enter__()
                    first_src = src.sources[int(block.index[0])]
                elif block.images.shape[1:] != writer.image_shape:
                    where, idx = _where(src, int(block.index[0]))
                    raise _shape_error(
                        block.images.shape[1:], writer.image_shape, first_src, where, idx
                    )
                counts = block.nan_counts + (stored[block.index] if stored is not None else 0)
                writer.append(
                    block.images,
                    src.labels[block.index],
                    sources=[src.sources[i] for i in block.index],
                    nan_counts=counts,
                    params=block.params,
                )
            if writer is None:
                raise DataError(
                    f"all {n} images were dropped by nan_policy='drop'; nothing to write.",
                    src_path,
                )
            writer.attrs["nan_report"] = dict(report.__dict__)
        except BaseException as exc:
            bar.close()
            if writer is not None:
                writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        bar.close()
        writer.__exit__(None, None, None)
    return Path(out), report


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
    """
    with open_source(path, allow_pickle=allow_pickle, **reader_kwargs) as src:
        n = len(src)
        names = src.class_names
        shapes: Counter[str] = Counter()
        chw: Counter[str] = Counter()
        dtypes: Counter[str] = Counter()
        per_class = {
            c: {"count": 0, "min": np.inf, "max": -np.inf, "sum": 0.0, "pixels": 0} for c in names
        }
        nan_pix = inf_pix = total_pix = 0
        nonfinite_imgs: list[str] = []
        constant_imgs: list[str] = []
        n_nonfinite = n_constant = 0
        params: dict[str, list[float]] = {}
        bar = _progress(n, f"inspecting {Path(path).name}", progress)
        try:
            for start, raw, block_params in src.iter_blocks(block_size):
                if src.stacked:
                    dtypes[str(raw.dtype)] += len(raw)
                    shapes[str(tuple(raw.shape[1:]))] += len(raw)
                    arrays = list(to_nchw_float32(raw, path=src.path, start=start))
                else:
                    files = src.files[start : start + len(raw)]  # type: ignore[attr-defined]
                    arrays = []
                    for image, file in zip(raw, files, strict=True):
                        dtypes[str(image.dtype)] += 1
                        shapes[str(tuple(image.shape))] += 1
                        arrays.append(to_chw_float32(image, path=file))
                for j, img in enumerate(arrays):
                    i = start + j
                    chw[str(tuple(img.shape))] += 1
                    cls = per_class[names[src.labels[i]]]
                    cls["count"] += 1
                    isnan = np.isnan(img)
                    finite = np.isfinite(img)
                    n_nan = int(isnan.sum())
                    n_inf = int(img.size - finite.sum() - n_nan)
                    nan_pix += n_nan
                    inf_pix += n_inf
                    total_pix += img.size
                    good = img[finite] if n_nan or n_inf else img.ravel()
                    if n_nan or n_inf:
                        n_nonfinite += 1
                        if len(nonfinite_imgs) < max_examples:
                            nonfinite_imgs.append(src.sources[i])
                    if good.size:
                        lo, hi = float(good.min()), float(good.max())
                        cls["min"] = min(cls["min"], lo)
                        cls["max"] = max(cls["max"], hi)
                        cls["sum"] += float(good.sum(dtype=np.float64))
                        cls["pixels"] += int(good.size)
                    if good.size == 0 or lo == hi:
                        n_constant += 1
                        if len(constant_imgs) < max_examples:
                            constant_imgs.append(src.sources[i])
                for key, value in block_params.items():
                    params.setdefault(key, []).extend(np.asarray(value, float).ravel().tolist())
                bar.update(len(arrays))
        finally:
            bar.close()
        total_sum = sum(c["sum"] for c in per_class.values())
        total_good = sum(c["pixels"] for c in per_class.values())
        summary: dict[str, Any] = {
            "path": str(path),
            "kind": src.kind,
            "n_images": n,
            "class_names": list(names),
            "labelled": bool(src.meta.get("labelled", True)),
            "counts_per_class": {c: v["count"] for c, v in per_class.items()},
            "shapes": dict(shapes),
            "chw_shapes": dict(chw),
            "dtypes": dict(dtypes),
            "value_min": min((v["min"] for v in per_class.values()), default=None),
            "value_max": max((v["max"] for v in per_class.values()), default=None),
            "value_mean": total_sum / total_good if total_good else None,
            "per_class": {
                c: {
                    "count": v["count"],
                    "min": v["min"] if v["pixels"] else None,
                    "max": v["max"] if v["pixels"] else None,
                    "mean": v["sum"] / v["pixels"] if v["pixels"] else None,
                }
                for c, v in per_class.items()
            },
            "total_pixels": total_pix,
            "nan_pixels": nan_pix,
            "inf_pixels": inf_pix,
            "nan_fraction": nan_pix / total_pix if total_pix else 0.0,
            "inf_fraction": inf_pix / total_pix if total_pix else 0.0,
            "images_with_nonfinite": n_nonfinite,
            "nonfinite_examples": nonfinite_imgs,
            "constant_images": n_constant,
            "constant_examples": constant_imgs,
            "params": {
                k: {
                    "known": int(np.isfinite(v).sum()),
                    "min": float(np.nanmin(v)) if np.isfinite(v).any() else None,
                    "max": float(np.nanmax(v)) if np.isfinite(v).any() else None,
                }
                for k, v in ((k, np.asarray(v)) for k, v in params.items())
            },
        }
        if src.kind == "hdf5":
            attrs = {
                k: v
                for k, v in src.meta.items()
                if k not in ("nan_counts", "kind", "path", "images_key")
            }
            summary["attrs"] = {k: _maybe_json(v) for k, v in _json_safe(attrs).items()}
        stored = src.meta.get("nan_counts")
        if stored is not None:
            summary["stored_nan_counts"] = {
                "pixels": int(stored.sum()),
                "images": int((stored > 0).sum()),
            }
        if summary["value_min"] == np.inf:
            summary["value_min"] = summary["value_max"] = None
    return summary


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a :func:`summarize` dict (what ``inspect`` prints)."""
    lines = [
        f"{summary['path']}  ({summary['kind']}, {summary['n_images']} images)",
        "classes:",
    ]
    for c, v in summary["per_class"].items():
        rng = f"{v['min']:.4g} .. {v['max']:.4g}" if v["min"] is not None else "no finite pixels"
        lines.append(f"  {c:<20} {v['count']:>8}   values {rng}")
    if not summary["labelled"]:
        lines.append("  (no labels found: give labels_csv / label_pattern to label a flat folder)")
    lines.append(f"stored shapes: {_fmt_counts(summary['shapes'])}")
    lines.append(f"as (C, H, W):  {_fmt_counts(summary['chw_shapes'])}")
    lines.append(f"dtypes:        {_fmt_counts(summary['dtypes'])}")
    if summary["value_min"] is not None:
        lines.append(
            f"values:        {summary['value_min']:.6g} .. {summary['value_max']:.6g} "
            f"(mean {summary['value_mean']:.6g}, finite pixels)"
        )
    lines.append(
        f"NaN pixels:    {summary['nan_pixels']} ({summary['nan_fraction']:.3%}); inf pixels: "
        f"{summary['inf_pixels']} ({summary['inf_fraction']:.3%}); images with any: "
        f"{summary['images_with_nonfinite']}"
        + (
            f" e.g. {', '.join(summary['nonfinite_examples'])}"
            if summary["nonfinite_examples"]
            else ""
        )
    )
    lines.append(
        f"constant images: {summary['constant_images']}"
        + (
            f" e.g. {', '.join(summary['constant_examples'])}"
            if summary["constant_examples"]
            else ""
        )
    )
    if "stored_nan_counts" in summary:
        s = summary["stored_nan_counts"]
        policy = summary.get("attrs", {}).get("nan_policy", "?")
        lines.append(
            f"cleaned at conversion (nan_policy={policy}): {s['pixels']} non-finite pixels in "
            f"{s['images']} images"
        )
    for k, v in summary["params"].items():
        lines.append(f"param {k}: {v['known']} known, {v['min']} .. {v['max']}")
    return "\n".join(lines)


def _fmt_counts(counts: dict[str, int]) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} x{v}" for k, v in items[:6])
    return text + (f", ... ({len(items) - 6} more)" if len(items) > 6 else "")


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"


def render_data_card(summary: dict[str, Any], *, name: str | None = None) -> str:
    """A data-card draft (Hugging Face layout, as in ``data_cards/``) from :func:`summarize`.

    Sections marked TODO need a human: licence, simulation/creation details, citation.
    """
    import yaml

    pretty = name or Path(summary["path"]).stem
    provenance = summary.get("attrs", {}).get("provenance")
    source = provenance.get("source", summary["path"]) if isinstance(provenance, dict) else None
    source = str(source or summary["path"])
    front = {
        "pretty_name": pretty,
        "license": "unknown",
        "task_categories": ["image-classification"],
        "tags": ["astronomy", "strong-gravitational-lensing", "dark-matter", "deeplense"],
        "size_categories": [_size_category(summary["n_images"])],
        "source_datasets": [source],
    }
    counts = "\n".join(
        f"| {c} | {v['count']} | {_fmt_num(v['min'])} | {_fmt_num(v['max'])} | "
        f"{_fmt_num(v['mean'])} |"
        for c, v in summary["per_class"].items()
    )
    attrs = summary.get("attrs", {})
    attr_lines = (
        "\n".join(
            f"- `{k}`: {json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in attrs.items()
            if k != "class_names"
        )
        or "- (none stored)"
    )
    params = "\n".join(
        f"- `{k}`: {v['known']} images, {v['min']} .. {v['max']}"
        for k, v in summary["params"].items()
    )
    problems = [
        f"- Non-finite pixels: {summary['nan_pixels']} NaN ({summary['nan_fraction']:.4%}) and "
        f"{summary['inf_pixels']} inf ({summary['inf_fraction']:.4%}) in "
        f"{summary['images_with_nonfinite']} images.",
        f"- Constant images (min-max scaling would divide by zero): {summary['constant_images']}.",
    ]
    if "stored_nan_counts" in summary:
        s = summary["stored_nan_counts"]
        problems.append(
            f"- Cleaned at conversion with nan_policy={attrs.get('nan_policy', '?')}: "
            f"{s['pixels']} non-finite pixels in {s['images']} source images."
        )
    if len(summary["chw_shapes"]) > 1:
        problems.append(
            f"- Mixed image shapes: {_fmt_counts(summary['chw_shapes'])}; use --image-size."
        )
    if len(summary["dtypes"]) > 1:
        problems.append(f"- Mixed dtypes: {_fmt_counts(summary['dtypes'])}.")
    if not summary["labelled"]:
        problems.append("- No labels were found (one class `unlabelled`).")
    problems.append("- TODO: anything else known (simulation shortcuts, label noise, leakage).")
    body = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {pretty}

## Dataset description

TODO: what the images show, where they come from, and who made them.
Drafted by `deeplense-ssl inspect --card` from `{summary["path"]}` ({summary["kind"]}).

## Dataset structure

- Images: {summary["n_images"]}; stored shapes {_fmt_counts(summary["shapes"])}; as (C, H, W)
  {_fmt_counts(summary["chw_shapes"])}; dtypes {_fmt_counts(summary["dtypes"])}.
- Pixel values (finite): {_fmt_num(summary["value_min"])} .. {_fmt_num(summary["value_max"])},
  mean {_fmt_num(summary["value_mean"])}.
- Classes (label order): {", ".join(summary["class_names"])}.

| class | images | min | max | mean |
|---|---|---|---|---|
{counts}

## Creation / simulation parameters

Stored attributes:
{attr_lines}
{("Per-image parameters:" + chr(10) + params) if params else ""}
TODO: simulator, instrument (pixel scale in arcsec, PSF), noise model, random seeds.

## Known problems

{chr(10).join(problems)}

## Intended use

Self-supervised pretraining and few-label classification of strong-lensing images with
`deeplense_ssl`. TODO: out-of-scope uses.

## Citation

TODO: how to cite the data (and the DeepLense / simulator papers it builds on).
"""
    return body


def _fmt_num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def write_data_card(summary: dict[str, Any], out: str | Path, *, name: str | None = None) -> Path:
    """Write :func:`render_data_card` to ``out`` atomically."""
    return write_text_atomic(out, render_data_card(summary, name=name))
