"""The pretraining data path: images in, device batches out, in a deterministic order.

Speed decisions (CPU first, GPU-ready): the whole training set is one float32 tensor on the
training device (host memory if it does not fit comfortably on the GPU); batches are index
slices, no per-sample ``Dataset``/``DataLoader``; augmentation happens on the device, batched,
inside the method.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets import load_dataset
from ..errors import DataError

IN_MEMORY_DATA = "<in-memory>"
"""``cfg.data`` recorded for a dataset passed to ``pretrain`` as an object."""

MAX_DEVICE_DATA_FRACTION = 0.5  # of free GPU memory the training set may occupy

FINGERPRINT_ROWS = 256
"""Images hashed by :func:`data_fingerprint`: evenly spaced, the first and the last included."""


def load_images(cfg: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images, labels (N,) int64, class_names)`` for pretraining.

    ``images`` is ``(N, C, S, S)`` float32, or ``(N, 2, C, S, S)`` with ``cfg.paired_data``
    (row ``i`` of the second file renders the scene of row ``i`` of the first).

    Args:
        cfg: the pretraining config (``data``, ``paired_data`` and the data options).
        dataset: ``None`` (read ``cfg.data``), an ``ImageSet``-like object, or an array/tensor
            ``(N, C, H, W)`` used as given.

    Raises:
        DataError: not 4-D, not square, non-finite pixels, or a paired file that does not
            match the first (count, shape, labels).
    """
    images, labels, class_names = _unpack(_read(cfg, cfg.data) if dataset is None else dataset)
    _check_images(images, cfg.data)
    images = np.ascontiguousarray(images, dtype=np.float32)
    if cfg.paired_data:
        images = _pair(images, labels, cfg)
    return images, labels, class_names


def _read(cfg: Any, path: str) -> Any:
    return load_dataset(
        path,
        nan_policy=cfg.nan_policy,
        normalize=cfg.normalize,
        image_size=cfg.image_size,
        allow_pickle=cfg.allow_pickle,
    )


def _pair(images: np.ndarray, labels: np.ndarray, cfg: Any) -> np.ndarray:
    """Stack the second rendering of every scene: ``(N, 2, C, S, S)``."""
    other, other_labels, _ = _unpack(_read(cfg, cfg.paired_data))
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
    finite = np.isfinite(images).reshape(len(images), -1).all(1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        if np.isnan(images[bad]).any():
            advice = "clean them first: --nan-policy zero, median, interpolate or drop"
        else:  # inf only: a NaN policy would not see it as missing data
            advice = "the values overflow float32; rescale the data (e.g. --normalize minmax)"
        raise DataError(f"non-finite pixels (NaN/inf) reach training; {advice}.", where, bad)


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
    n = len(images)
    rows = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().astype(np.int64))
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for i in rows:
        digest.update(np.ascontiguousarray(images[i]).tobytes())
    return {
        "n": int(n),
        "shape": [int(v) for v in images.shape[1:]],
        "dtype": str(images.dtype),
        "rows_hashed": int(len(rows)),
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
