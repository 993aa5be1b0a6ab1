"""Reading and writing image files: the only module that touches data files.

Readers return float32 arrays plus metadata; everything downstream takes arrays or tensors.

The package's HDF5 layout (written by ``convert`` and ``simulate``, format ``deeplense_ssl.v1``):

=================  ===========================  =============================================
name               shape / type                 meaning
=================  ===========================  =============================================
``images``         (N, C, H, W) float32         images after NaN cleaning, physical units
``labels``         (N,) int64                   index into ``class_names``
``nan_counts``     (N,) int64                   non-finite pixels found in each source image
``sources``        (N,) variable-length str     source file (and index) of each image
``params/<name>``  (N, ...) numeric             optional per-image parameters (simulation)
attrs              ``class_names`` (JSON list), ``format``, ``deeplense_ssl_version``,
                   ``created_utc``, ``provenance`` (JSON), ``nan_policy``, ...
=================  ===========================  =============================================
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import DataError

HDF5_FORMAT = "deeplense_ssl.v1"


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched,
    so a failure never leaves a partial output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_hdf5(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    sources: Sequence[str] | None = None,
    nan_counts: np.ndarray | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    chunk_images: int = 1,
) -> Path:
    """Write one dataset in the package's HDF5 layout, atomically.

    Args:
        path: output file; written under a temporary name and renamed at the end.
        images: (N, C, H, W) float32, finite.
        labels: (N,) integer class indices into ``class_names``.
        class_names: names in label order.
        sources: (N,) where each image came from.
        nan_counts: (N,) non-finite pixel counts found before cleaning.
        params: per-image parameter arrays with leading dimension N (stored under ``params/``).
        attrs: extra provenance attributes (JSON-serialisable values).
        chunk_images: images per HDF5 chunk (1 is fastest for random access).

    Returns:
        The final path.
    """
    import h5py

    images = np.asarray(images)
    labels = np.asarray(labels)
    n = len(images)
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {images.shape}.", path)
    if labels.shape != (n,):
        raise DataError(f"{n} images but labels have shape {labels.shape}.", path)
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"labels must lie in [0, {len(class_names)}).", path)
    if not np.isfinite(images).all():
        raise DataError("images contain NaN/inf; clean them first (nan_policy).", path)
    sources = list(sources) if sources is not None else [""] * n
    nan_counts = np.zeros(n, np.int64) if nan_counts is None else np.asarray(nan_counts, np.int64)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        chunks = (max(1, min(chunk_images, n)),) + images.shape[1:] if n else None
        f.create_dataset("images", data=images.astype(np.float32, copy=False), chunks=chunks)
        f.create_dataset("labels", data=labels.astype(np.int64, copy=False))
        f.create_dataset("nan_counts", data=nan_counts)
        f.create_dataset("sources", data=np.array(sources, dtype=object), dtype=h5py.string_dtype())
        if params:
            grp = f.create_group("params")
            for key, value in params.items():
                value = np.asarray(value)
                if len(value) != n:
                    raise DataError(f"params/{key} has {len(value)} rows for {n} images.", path)
                grp.create_dataset(key, data=value)
        f.attrs["format"] = HDF5_FORMAT
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["deeplense_ssl_version"] = __version__
        f.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in (attrs or {}).items():
            f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    return Path(path)
