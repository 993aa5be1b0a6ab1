"""What pretraining watches while it runs: the metrics log, the kNN and collapse monitors.

``metrics.jsonl`` is append-only and truncated to the checkpoint's byte offset on resume, so a
resumed run's log equals an uninterrupted run's. Every record written also goes to the run's
experiment tracker (:mod:`deeplense_ssl.tracking`, ``--log``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..collapse import collapse_warning, effective_rank, embedding_std
from ..inference import embed
from ..metrics import knn_predict
from ..tracking import Tracker

KNN_K = 20
KNN_TEMPERATURE = 0.07
KNN_MAX_BANK = 10_000  # labelled training images embedded for the kNN monitor at most


class MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0); truncated to the checkpoint's offset on resume.

    Args:
        path: the log file.
        enabled: write at all (rank 0 only).
        truncate_to: byte offset recorded in the checkpoint being resumed (``None``: new log).
        tracker: where every record also goes (:func:`deeplense_ssl.tracking.open_tracker`;
            default: nowhere). It is not closed here: its owner closes it.
    """

    def __init__(
        self, path: Path, enabled: bool, truncate_to: int | None, tracker: Tracker | None = None
    ) -> None:
        self.path, self.enabled = path, enabled
        self.tracker = tracker if tracker is not None else Tracker()
        self._fh: IO[bytes] | None = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and truncate_to:
            self._fh = open(path, "r+b")  # noqa: SIM115 (closed in close())
            self._fh.truncate(truncate_to)
            self._fh.seek(truncate_to)
        else:
            self._fh = open(path, "wb")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed) and send the record to the tracker."""
        if self._fh is not None:
            self._fh.write((json.dumps(record) + "\n").encode())
            self._fh.flush()
            self.tracker.log_metrics(int(record["step"]), record)

    def offset(self) -> int:
        """Bytes written so far (stored in checkpoints)."""
        return self._fh.tell() if self._fh is not None else 0

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def knn_bank_indices(n_train: int, seed: int) -> np.ndarray:
    """The training rows embedded for the kNN monitor: all, or a fixed random subset of
    :data:`KNN_MAX_BANK` when there are more (keeps the monitor cheap)."""
    if n_train <= KNN_MAX_BANK:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(seed).choice(n_train, KNN_MAX_BANK, False))


def knn_monitor(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: np.ndarray,
    val_images: Tensor,
    val_labels: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    channels_last: bool = False,
) -> float:
    """Online kNN top-1 accuracy of ``val_images`` against ``train_images`` in feature space.

    Weighted kNN (k=20, temperature 0.07; :func:`deeplense_ssl.metrics.knn_predict`) on
    L2-normalised features of the un-augmented images. The backbone is left in eval mode (the
    caller sets train mode).

    Returns:
        The fraction of validation images whose predicted class is right.
    """
    bank = embed(backbone, train_images, device, batch_size, channels_last)
    query = embed(backbone, val_images, device, batch_size, channels_last)
    preds, _ = knn_predict(
        bank,
        torch.as_tensor(train_labels),
        query,
        k=KNN_K,
        temperature=KNN_TEMPERATURE,
        num_classes=int(max(train_labels.max(), val_labels.max())) + 1,
    )
    return float((preds.cpu().numpy() == val_labels).mean())


def monitor_indices(n_train: int, size: int, seed: int) -> np.ndarray:
    """The fixed training rows whose embeddings the collapse monitor measures every epoch:
    ``size`` rows drawn once from ``seed`` (all rows when there are fewer)."""
    if n_train <= size:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(seed + 1).choice(n_train, size, replace=False))


def collapse_monitor(
    backbone: nn.Module,
    images: Tensor,
    device: torch.device,
    batch_size: int = 256,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Effective rank (RankMe) and per-dimension std of the backbone features of ``images``.

    The images are un-augmented and the backbone is in eval mode (the caller sets train mode
    again); see :mod:`deeplense_ssl.collapse` for the measures and the warning thresholds.

    Returns:
        ``{"rankme", "emb_std_mean", "emb_std_min"}`` and, when the thresholds of
        :func:`~deeplense_ssl.collapse.collapse_warning` are crossed, ``"collapse_warning"``.
    """
    z = embed(backbone, images, device, batch_size, channels_last).cpu()
    rank, std = effective_rank(z), embedding_std(z)
    record: dict[str, Any] = {"rankme": rank, "emb_std_mean": std.mean, "emb_std_min": std.min}
    warning = collapse_warning(rank, std.mean, z.shape[1], n_samples=z.shape[0])
    if warning is not None:
        record["collapse_warning"] = warning
    return record
