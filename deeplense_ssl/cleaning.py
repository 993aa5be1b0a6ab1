"""Pure array functions that turn images as stored into clean float32 ``(C, H, W)`` arrays.

Order of operations (``datasets.load_dataset`` and ``convert`` follow it):

1. :func:`to_chw_float32` / :func:`to_nchw_float32`: layout ``(H, W)``, ``(1, H, W)``,
   ``(C, H, W)`` or ``(H, W, C)`` -> ``(C, H, W)``; any numeric dtype (int64 counts, uint8,
   float64, big-endian FITS ``>f4``) -> native float32 keeping the values (no rescaling).
2. :func:`apply_nan_policy`: non-finite pixels (NaN and +-inf) handled once, right after
   reading, and counted in a :class:`NanReport`.
3. :func:`fit_size`: a fixed ``image_size``. Rule (``mode="auto"``): an axis larger than the
   size is centre-cropped (keeps the pixel scale, so arcsec per pixel stays physical); if an
   axis is still smaller, the image is resized (bilinear) up to the size. ``mode="resize"``
   always resizes (antialiased when shrinking), ``mode="crop"`` only crops and refuses small
   images.
4. :func:`normalize_images`: ``none``, ``minmax`` (per image, to [0, 1]), ``zscore`` (per
   image), ``zscore-dataset`` (per channel with statistics from :func:`fit_normalization` on the
   training split only), ``asinh`` (per-image min-max, then ``asinh(x / 0.1) / asinh(1 / 0.1)``).
   Per-image statistics are taken over all channels together, so band ratios are kept. A
   constant image maps to zeros instead of dividing by zero. Images with extreme values (up to
   the float32 limit, 3.4e38) are first divided by an exact power of two, so no difference
   overflows; the result is checked to be finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .io import require_memory

NAN_POLICIES = ("raise", "zero", "median", "interpolate", "drop")
NORMALIZATIONS = ("none", "minmax", "zscore", "zscore-dataset", "asinh")
FIT_MODES = ("auto", "crop", "resize")
ASINH_SOFTENING = 0.1
MAX_CHANNELS = 16


@dataclass
class NanReport:
    """How many non-finite pixels (NaN, +-inf) a NaN policy touched.

    Attributes:
        pixels_touched: non-finite pixels replaced (or inside dropped images).
        images_touched: images with at least one non-finite pixel.
        images_dropped: images removed (``nan_policy="drop"``).
        policy: the policy applied.
    """

    pixels_touched: int = 0
    images_touched: int = 0
    images_dropped: int = 0
    policy: str = "raise"

    def __add__(self, other: NanReport) -> NanReport:
        return NanReport(
            self.pixels_touched + other.pixels_touched,
            self.images_touched + other.images_touched,
            self.images_dropped + other.images_dropped,
            other.policy,
        )


@dataclass
class NormStats:
    """Per-channel dataset statistics for ``zscore-dataset`` (fit on the training split only).

    Attributes:
        mean: (C,) mean per channel.
        std: (C,) standard deviation per channel (constant channels get 1).
        n_images: images the statistics were computed from.
    """

    mean: np.ndarray
    std: np.ndarray
    n_images: int = 0
    method: str = field(default="zscore-dataset")

    def to_dict(self) -> dict:
        """JSON-safe form (stored in checkpoints)."""
        return {
            "method": self.method,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "n_images": int(self.n_images),
        }

    @classmethod
    def from_dict(cls, data: dict) -> NormStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(data["mean"], np.float64),
            np.asarray(data["std"], np.float64),
            int(data.get("n_images", 0)),
        )


# ----------------------------------------------------------------------------- layout and dtype


def _channel_first(shape: tuple[int, ...]) -> bool | None:
    """For a 3-D image shape: True if (C, H, W), False if (H, W, C), None if it cannot tell."""
    first, last = shape[0], shape[-1]
    if first <= MAX_CHANNELS and (first < last or first == last):
        return True
    if last <= MAX_CHANNELS and last < first:
        return False
    return None


def _to_float32(array: np.ndarray, path: object, index: int | None) -> np.ndarray:
    kind = array.dtype.kind
    if kind not in "fiub":
        raise DataError(
            f"image has non-numeric dtype {array.dtype}; expected integer or float pixels.",
            path,
            index,
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        out = np.asarray(array).astype(np.float32, copy=False)  # native order, values kept
    if kind == "f" and array.dtype.itemsize > 4:
        bad = ~np.isfinite(out)
        if bad.any() and np.isfinite(np.asarray(array)[bad]).any():
            raise DataError(
                "pixel values exceed the float32 range (|x| > 3.4e38); rescale the data first.",
                path,
                index,
            )
    return out


def to_chw_float32(
    image: np.ndarray, *, path: object = None, index: int | None = None
) -> np.ndarray:
    """One image in any common layout -> float32 ``(C, H, W)``, native byte order, contiguous.

    The channel axis of a 3-D array is the first or last axis, whichever is at most 16 and
    smaller than the other (ties: channel-first).

    Args:
        image: (H, W), (1, H, W), (C, H, W) or (H, W, C); int/uint/float of any width or byte order.
        path: source file, for error messages.
        index: image index inside ``path``, for error messages.

    Returns:
        (C, H, W) float32 with the same values (int64 counts stay counts, uint8 stays 0..255).

    Raises:
        DataError: not 2-D/3-D, unknown channel axis, non-numeric dtype, or float32 overflow.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    elif image.ndim == 3:
        first = _channel_first(image.shape)
        if first is None:
            raise DataError(
                f"cannot tell the channel axis of an image of shape {image.shape} (neither the "
                f"first nor the last axis is <= {MAX_CHANNELS}); store it as (C, H, W).",
                path,
                index,
            )
        if not first:
            image = np.moveaxis(image, -1, 0)
    else:
        raise DataError(
            f"expected one image (H, W), (C, H, W) or (H, W, C), got shape {image.shape}.",
            path,
            index,
        )
    return np.ascontiguousarray(_to_float32(image, path, index))


def to_nchw_float32(images: np.ndarray, *, path: object = None, start: int = 0) -> np.ndarray:
    """A stack ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)``.

    Args:
        images: the stack, any numeric dtype.
        path: source file, for error messages.
        start: index of the first image inside ``path``, for error messages.

    Returns:
        (N, C, H, W) float32, native byte order, contiguous.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        first = _channel_first(images.shape[1:])
        if first is None:
            raise DataError(
                f"cannot tell the channel axis of images of shape {images.shape[1:]}; store "
                "them as (N, C, H, W).",
                path,
                start,
            )
        if not first:
            images = np.moveaxis(images, -1, 1)
    else:
        raise DataError(
            f"expected a stack (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}.",
            path,
            start,
        )
    return np.ascontiguousarray(_to_float32(images, path, start))


# ----------------------------------------------------------------------------- NaN policies


def count_nonfinite(images: np.ndarray) -> np.ndarray:
    """Non-finite pixels (NaN, +-inf) per image of an ``(N, ...)`` array -> (N,) int64."""
    images = np.asarray(images)
    n = len(images)
    counts = np.zeros(n, np.int64)
    if images.dtype.kind in "iub" or n == 0:
        return counts
    # One cheap pass: a per-image sum is finite unless the image holds NaN/inf (or overflows);
    # exact counts only for the flagged images.
    with np.errstate(invalid="ignore", over="ignore"):
        sums = images.reshape(n, -1).sum(axis=1)
    flagged = np.flatnonzero(~np.isfinite(sums))
    for i in flagged:
        counts[i] = int((~np.isfinite(images[i])).sum())
    return counts


def _fill_median(image: np.ndarray, bad: np.ndarray) -> None:
    for c in range(image.shape[0]):
        if bad[c].any():
            good = image[c][~bad[c]]
            image[c][bad[c]] = np.median(good) if good.size else 0.0


def _fill_interpolate(image: np.ndarray, bad: np.ndarray) -> None:
    """Replace each bad pixel by the mean of its finite 8-neighbours, growing inward until done.

    A first pass equals astropy ``interpolate_replace_nans`` with a 3x3 box kernel for isolated
    bad pixels; larger holes are filled from their rim over several passes. A channel with no
    finite pixel becomes 0.
    """
    for c in range(image.shape[0]):
        plane, hole = image[c], bad[c].copy()
        if not hole.any():
            continue
        if hole.all():
            plane[:] = 0.0
            continue
        plane[hole] = 0.0
        while hole.any():
            values = np.pad(np.where(hole, 0.0, plane).astype(np.float64), 1)
            valid = np.pad((~hole).astype(np.float64), 1)
            total = np.zeros(plane.shape, np.float64)
            count = np.zeros(plane.shape, np.float64)
            h, w = plane.shape
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    if dy == 1 and dx == 1:
                        continue
                    total += values[dy : dy + h, dx : dx + w]
                    count += valid[dy : dy + h, dx : dx + w]
            fill = hole & (count > 0)
            plane[fill] = (total[fill] / count[fill]).astype(plane.dtype)
            hole &= ~fill


def apply_nan_policy(
    images: np.ndarray,
    policy: str = "raise",
    *,
    sources: list[str] | None = None,
    path: object = None,
    start: int = 0,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, NanReport]:
    """Handle non-finite pixels of an image stack once, right after reading.

    Args:
        images: (N, C, H, W) float array (not modified; a cleaned copy is returned when needed).
        policy: ``raise`` (error naming the first bad image), ``zero``, ``median`` (median of
            the image channel's finite pixels), ``interpolate`` (mean of finite 8-neighbours,
            holes filled from their rim inward), ``drop`` (remove the image).
        sources: (N,) source names for error messages.
        path: file named in errors when ``sources`` is not given.
        start: index of ``images[0]`` in the source, for error messages.
        counts: (N,) precomputed :func:`count_nonfinite` of ``images`` (saves a pass).

    Returns:
        (cleaned, kept, report): cleaned (M, C, H, W) float32 (M = N unless dropping), ``kept``
        (M,) int64 indices into the input, and the :class:`NanReport`.

    Raises:
        DataError: ``policy="raise"`` and a non-finite pixel exists.
        ConfigError: unknown policy.
    """
    if policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy={policy!r} is not one of {', '.join(NAN_POLICIES)}.")
    images = np.asarray(images, dtype=np.float32)
    counts = count_nonfinite(images) if counts is None else np.asarray(counts)
    touched = np.flatnonzero(counts)
    report = NanReport(int(counts.sum()), len(touched), 0, policy)
    all_idx = np.arange(len(images), dtype=np.int64)
    if len(touched) == 0:
        return images, all_idx, report
    if policy == "raise":
        first = int(touched[0])
        where = sources[first] if sources is not None else path
        raise DataError(
            f"{int(counts[first])} non-finite pixels (NaN/inf) ({len(touched)} image(s) affected "
            "in this block); choose a NaN policy: nan_policy / --nan-policy zero, median, "
            "interpolate or drop.",
            where,
            None if sources is not None else start + first,
        )
    if policy == "drop":
        kept = np.flatnonzero(counts == 0).astype(np.int64)
        report.images_dropped = len(touched)
        return images[kept], kept, report
    out = images.copy()
    for i in touched:
        bad = ~np.isfinite(out[i])
        if policy == "zero":
            out[i][bad] = 0.0
        elif policy == "median":
            _fill_median(out[i], bad)
        else:
            _fill_interpolate(out[i], bad)
    return out, all_idx, report


# ----------------------------------------------------------------------------- size


def center_crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of ``(..., H, W)`` to ``(..., height, width)`` (no-op on smaller axes).

    The crop starts at ``(H - height) // 2`` (for odd excess the extra pixel goes to the end).
    """
    h, w = images.shape[-2:]
    top = max(0, (h - height) // 2)
    left = max(0, (w - width) // 2)
    return images[..., top : top + min(h, height), left : left + min(w, width)]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(N, C, H, W)`` to ``(N, C, size, size)`` (antialiased when shrinking).

    Uses ``torch.nn.functional.interpolate`` with ``align_corners=False``.
    """

    n, c = images.shape[:2]
    require_memory(
        4 * n * c * size * size,  # the float32 result (the input is shared, not copied)
        f"resizing {n} image(s) of {c} channel(s) to image_size={size}",
        error=ConfigError,
        hint="; choose a smaller image_size",
    )
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    shrink = size < images.shape[-2] or size < images.shape[-1]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return y.numpy()


def fit_size(
    images: np.ndarray,
    size: int | None,
    mode: str = "auto",
    *,
    path: object = None,
) -> np.ndarray:
    """Bring ``(N, C, H, W)`` images to ``(N, C, size, size)``.

    ``auto`` (default): centre-crop axes larger than ``size`` (keeps the pixel scale), then, if
    an axis is still smaller, resize bilinearly up to ``size``. ``resize``: always resize.
    ``crop``: centre-crop only; a smaller image is an error.

    Args:
        images: (N, C, H, W) float32.
        size: target side in pixels; None returns the input.
        mode: ``auto`` | ``crop`` | ``resize``.
        path: file named in errors.

    Returns:
        (N, C, size, size) float32.
    """
    if size is None:
        return images
    if mode not in FIT_MODES:
        raise ConfigError(f"fit mode {mode!r} is not one of {', '.join(FIT_MODES)}.")
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if mode == "resize":
        return resize(images, size)
    out = center_crop(images, size, size)
    if out.shape[-2:] != (size, size):
        if mode == "crop":
            raise DataError(
                f"image of {h}x{w} px is smaller than image_size={size}; use a smaller "
                "image_size or the auto/resize mode.",
                path,
            )
        out = resize(out, size)
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- normalisation


STATS_BLOCK_BYTES = 64 * 2**20
"""Bytes of float64 pixels one block of the statistics pass holds (:func:`stats_block_images`)."""


def stats_block_images(image_shape: Sequence[int]) -> int:
    """Images per block of the statistics pass: :data:`STATS_BLOCK_BYTES` of float64 pixels
    (at least one image). Both data paths use it, so they sum the same blocks."""
    return max(1, STATS_BLOCK_BYTES // (8 * math.prod(image_shape)))


def channel_stats(blocks: Iterable[np.ndarray]) -> NormStats:
    """Per-channel mean and std (population) of images given block by block, in one pass.

    Each block's mean and sum of squared deviations are computed in float64 and merged with
    the pairwise update of Chan, Golub & LeVeque (1979), so the result equals the two-pass
    mean and std to float64 rounding (no cancellation of a sum of squares). The same blocks
    give bitwise the same result: every ``zscore-dataset`` fit (in memory, streamed, pretrain,
    fine-tune) goes through here.

    Args:
        blocks: ``(M, C, H, W)`` finite images per block (``M`` may be 0).

    Returns:
        :class:`~deeplense_ssl.cleaning.NormStats` (the std of a constant channel is 1).

    Raises:
        DataError: no image at all.
    """
    n, images = 0, 0
    mean = m2 = np.zeros(0)
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        if len(b) == 0:
            continue
        count = b.shape[0] * b.shape[2] * b.shape[3]
        b_mean = b.mean(axis=(0, 2, 3))
        b_m2 = np.square(b - b_mean[None, :, None, None]).sum(axis=(0, 2, 3))
        if n == 0:
            mean, m2 = b_mean, b_m2
        else:
            delta, total = b_mean - mean, n + count
            mean = mean + delta * (count / total)
            m2 = m2 + b_m2 + np.square(delta) * (n * count / total)
        n, images = n + count, images + len(b)
    if n == 0:
        raise DataError("zscore-dataset statistics need at least one image; the set is empty.")
    std = np.sqrt(m2 / n)
    std[std == 0] = 1.0
    return NormStats(mean, std, images)


def row_blocks(
    read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, image_shape: Sequence[int]
) -> Iterator[np.ndarray]:
    """``read(rows[k B:(k + 1) B])`` for :func:`stats_block_images` ``B``: the blocks of a
    ``zscore-dataset`` fit on chosen rows, the same whether ``read`` loads from memory or
    from shards (so both give bitwise the same :func:`channel_stats`)."""
    rows = np.asarray(rows, dtype=np.int64)
    block = stats_block_images(image_shape)
    for lo in range(0, len(rows), block):
        yield read(rows[lo : lo + block])


def fit_normalization(images: np.ndarray, rows: np.ndarray | None = None) -> NormStats:
    """Per-channel mean and std of (training) images, for ``zscore-dataset``.

    Args:
        images: (N, C, H, W) finite.
        rows: the training rows to fit on (``None``: every image); never validation or test.

    Returns:
        :class:`NormStats` in float64 (std of a constant channel is set to 1): the
        :func:`channel_stats` of :func:`row_blocks`, so bitwise what a streamed fit of the same
        rows gives.
    """
    shape = tuple(np.shape(images))
    rows = np.arange(shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(shape) != 4 or len(rows) == 0:
        raise DataError(
            f"fit_normalization needs (N, C, H, W) images and at least one row, got {shape} "
            f"and {len(rows)} row(s)."
        )
    return channel_stats(row_blocks(lambda r: images[r], rows, shape[1:]))


def normalize_images(
    images: np.ndarray,
    method: str = "minmax",
    stats: NormStats | None = None,
    *,
    copy: bool = True,
    path: object = None,
    start: int = 0,
) -> np.ndarray:
    """Scale images; see the module docstring for each method.

    Args:
        images: (N, C, H, W) finite float32.
        method: ``none`` | ``minmax`` | ``zscore`` | ``zscore-dataset`` | ``asinh``.
        stats: required for ``zscore-dataset`` (from :func:`fit_normalization` on training data).
        copy: False scales a float32 ``images`` in place (saves memory and passes).
        path: source file, for error messages.
        start: index of ``images[0]`` in ``path``, for error messages.

    Returns:
        (N, C, H, W) float32, finite (a new array when ``copy``, unless ``method="none"``).

    Raises:
        DataError: an input image holds NaN/inf, or ``zscore-dataset`` maps an image beyond the
            float32 range.
        ConfigError: unknown method, or ``zscore-dataset`` without ``stats``.
    """
    if method not in NORMALIZATIONS:
        raise ConfigError(f"normalize={method!r} is not one of {', '.join(NORMALIZATIONS)}.")
    images = np.asarray(images, dtype=np.float32)
    if method == "none" or len(images) == 0:
        return images
    if method == "zscore-dataset" and stats is None:
        raise ConfigError(
            "normalize='zscore-dataset' needs statistics from the training split: "
            "stats = fit_normalization(images[train_idx])."
        )
    out = images.copy() if copy else images
    axes = (1, 2, 3)
    lo = out.min(axis=axes, keepdims=True)
    hi = out.max(axis=axes, keepdims=True)
    _refuse_nonfinite_input(lo, hi, path, start)
    factor = _shrink_extreme(out, lo, hi)
    if method == "zscore-dataset":
        assert stats is not None  # refused above when missing
        mean = np.asarray(stats.mean, np.float64)[None, :, None, None] * factor
        std = np.asarray(stats.std, np.float64)[None, :, None, None] * factor
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            out -= mean.astype(np.float32)
            out /= std.astype(np.float32)
        _check_finite_after(out, method, path, start)
        return out
    if method == "zscore":
        mean = out.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = out.std(axis=axes, keepdims=True, dtype=np.float64)
        out -= mean.astype(np.float32)
        out *= (1.0 / np.where(std > 0, std, 1.0)).astype(np.float32)
        return out
    span = hi - lo
    out -= lo
    out /= np.where(span > 0, span, np.float32(1.0))  # exact 1.0 at the maximum
    if method == "asinh":
        a = ASINH_SOFTENING
        out /= a
        np.arcsinh(out, out=out)
        out *= np.float32(1.0 / np.arcsinh(1.0 / a))
    return out


# float32 values up to this size leave room for a difference of two of them (< 2**125)
_SAFE_ABS = 2.0**124


def _shrink_extreme(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Divide images whose values reach 2**124 (in place) by an exact power of two.

    Min-max and z-score results do not change under a positive scale (``zscore-dataset``
    scales its statistics by the same factor), and a power of two scales float32 exactly.

    Args:
        out: (N, C, H, W) float32, scaled in place.
        lo, hi: (N, 1, 1, 1) per-image minimum and maximum, scaled in place too.

    Returns:
        (N, 1, 1, 1) float64 factors applied (1 for ordinary images).
    """
    peak = np.maximum(np.abs(lo), np.abs(hi)).reshape(-1).astype(np.float64)
    factor = np.ones((len(out), 1, 1, 1))
    for i in np.flatnonzero(peak > _SAFE_ABS):
        f = 2.0 ** -math.ceil(math.log2(peak[i] / _SAFE_ABS))
        factor[i] = f
        out[i] *= np.float32(f)
        lo[i] *= np.float32(f)
        hi[i] *= np.float32(f)
    return factor


def _refuse_nonfinite_input(lo: np.ndarray, hi: np.ndarray, path: object, start: int) -> None:
    bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)).reshape(-1))
    if len(bad):
        raise DataError(
            f"image holds NaN/inf values ({len(bad)} image(s) of this block) before "
            "normalisation; clean them first: nan_policy / --nan-policy zero, median, "
            "interpolate or drop.",
            path,
            start + int(bad[0]),
        )


def _check_finite_after(out: np.ndarray, method: str, path: object, start: int) -> None:
    bad = np.flatnonzero(count_nonfinite(out))
    if len(bad):
        raise DataError(
            f"normalize={method!r} maps this image beyond the float32 range (its values lie "
            "far outside the training statistics); check the data, or store it rescaled "
            "(e.g. in physical units of order 1).",
            path,
            start + int(bad[0]),
        )
