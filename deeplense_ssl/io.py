"""Reading and writing image files: the only module that touches data files.

Readers return arrays as stored plus metadata (labels, class names, source names, per-image
parameters); :mod:`deeplense_ssl.cleaning` turns them into float32 ``(C, H, W)`` and everything
downstream takes arrays or tensors.

Supported inputs (``open_source`` decides from the path):

* a DeepLense folder ``<root>/<class>/*.npy`` (class = folder name, classes sorted by name);
  FITS files (``.fits``, ``.fit``, ``.fts``, ``.fits.gz``) work in class folders too;
* a flat folder of ``.npy`` / FITS files, labelled by a CSV (``labels_csv``: columns ``file`` and
  ``label``), by file-name rules (``label_pattern``, see :func:`parse_label_pattern`), or not at
  all (one class ``unlabelled``);
* one ``.npy`` / ``.npz`` / FITS file: 2-D is one image, 3-D is a stack ``(N, H, W)``, 4-D a
  stack ``(N, C, H, W)`` or ``(N, H, W, C)``; labels from the ``.npz`` key ``labels`` / ``y`` or
  the ``labels`` argument (an array or a ``.npy`` / text file);
* HDF5: the package's own layout (below) or a generic file with one image dataset (``images``,
  ``X``, ``x``, ``data``, ``image``) and optionally one label dataset (``labels``, ``y``,
  ``label``, ``targets``); name them with ``images_key`` / ``labels_key`` when ambiguous.

In folders every file holds one image, in any of the layouts ``(H, W)``, ``(1, H, W)``,
``(C, H, W)``, ``(H, W, C)``. Pickled ``.npy`` files (DeepLense axion files, object arrays
``[image, axion_mass]``, mass in eV) are refused unless ``allow_pickle=True``; the mass is kept
as the per-image parameter ``axion_mass_ev`` (NaN for images without one), the name the
simulator uses.

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

``images`` is chunked one image per chunk, uncompressed: measured fastest for random access of
single images (``benchmarks/loader_speed.py``).

Hostile or damaged files: every size a header declares (``.npy``, ``.npz`` members, FITS
``NAXISn``, HDF5 shapes) is checked, with Python integers, against the bytes the file can hold
and against the available memory (:func:`require_memory`) before anything is allocated;
malformed files of our own layout are a :class:`~deeplense_ssl.errors.DataError` naming the
file and the key. Every output goes through :func:`atomic_output`: a full or read-only disk is
an :class:`~deeplense_ssl.errors.OutputError` naming the target (never the temporary file),
the HDF5 writer checks the free space first (:func:`require_disk_space`), and temporaries left
by a killed run are removed on the next write of the same target.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

from . import __version__
from .errors import DataError, DeepLenseError, OutputError

try:  # POSIX: a live writer holds a lock on its temporary file (see remove_stale_temporaries)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

HDF5_FORMAT = "deeplense_ssl.v1"
MAX_CLASSES = 100_000  # more class indices than this is a corrupt label file, not a dataset
HDF5_MAX_CHUNK_BYTES = 2**32 - 1  # HDF5 refuses chunks of 4 GiB or more
_PROCESS_START = time.time()  # temporaries older than this cannot be this process's own
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_NEARLY_FULL_BYTES = 1 << 20  # a failed write with less free space than this: the disk is full
# errors raised while reading a .npy header (numpy parses it with ast / tokenize)
_NPY_HEADER_ERRORS = (ValueError, OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError)


# ----------------------------------------------------------------------------- resources


def format_bytes(n: float) -> str:
    """``4398046511104`` -> ``'4.0 TiB'`` (binary units, for messages)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate, in bytes (None where unknown).

    The smaller of the system's available memory (``MemAvailable`` of ``/proc/meminfo``, else
    ``os.sysconf`` free pages) and what is left of a cgroup (container) memory limit.
    """
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append(max(0, limit - usage))
    return min(found) if found else None


def require_memory(
    nbytes: int, what: str, *, path: object = None, error: type = DataError, hint: str = ""
) -> None:
    """Refuse, before allocating, anything larger than the memory available.

    Args:
        nbytes: bytes about to be allocated (Python int: no overflow for absurd sizes).
        what: what needs them, for the message (e.g. ``"one image of shape (1, 10**6, 10**6)"``).
        path: file named in the message (``DataError``).
        error: exception class: :class:`DataError` for sizes declared by a file,
            ``ConfigError`` for sizes asked for by an option.
        hint: what to do, appended to the message.

    Raises:
        error: ``nbytes`` exceeds :func:`available_memory_bytes`.
    """
    available = available_memory_bytes()
    if available is None or nbytes <= available:
        return
    message = (
        f"{what} needs {format_bytes(nbytes)} of memory, more than the "
        f"{format_bytes(available)} available{hint}."
    )
    raise error(message, path) if path is not None else error(message)


def _existing_folder(path: Path) -> Path:
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def require_disk_space(path: str | Path, nbytes: int) -> None:
    """Refuse to start writing ``path`` when its folder has less than ``nbytes`` free.

    A first line of defence before a long write; :func:`atomic_output` still turns a disk that
    fills up during the write into an :class:`OutputError`.

    Raises:
        OutputError: not enough free space (message: ``no space left on <folder>: ...``).
    """
    path = Path(path)
    folder = _existing_folder(path)
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY or not os.access(folder, os.W_OK):
            return  # the write itself reports the read-only folder, which is the real cause
        free = shutil.disk_usage(folder).free
    except (OSError, AttributeError):
        return
    if nbytes > free:
        raise OutputError(
            f"no space left on {folder}: writing {path} needs about {format_bytes(nbytes)} but "
            f"only {format_bytes(free)} is free; free some space or choose another output "
            "folder.",
            path,
            errno.ENOSPC,
        )


# ----------------------------------------------------------------------------- atomic writes


def output_error(exc: OSError, target: str | Path) -> OutputError:
    """One clear :class:`OutputError` for a failed write of ``target`` (names the target file,
    never the temporary one, and the folder when it is full)."""
    target = Path(target)
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        message = (
            f"no space left on {target.parent}: cannot write {target} ({reason}); free some "
            "space or choose another output folder."
        )
    elif exc.errno in _NOT_WRITABLE:
        message = (
            f"cannot write {target} ({reason}): the folder is read-only or not writable by you; "
            "choose another output folder."
        )
    else:
        message = f"cannot write {target} ({reason}); check the folder and the disk."
    return OutputError(message, target, exc.errno)


def _write_failure(exc: BaseException, target: Path, tmp: Path) -> OutputError | None:
    """The :class:`OutputError` that ``exc`` (raised while writing ``tmp``) means, if any."""
    if isinstance(exc, DeepLenseError) or not isinstance(exc, Exception):
        return None  # already clear, or Ctrl-C / SIGTERM: keep as is
    if isinstance(exc, OSError) and exc.errno is not None:
        ours = exc.filename is None or str(exc.filename) in (str(tmp), str(target))
        if exc.errno in _NO_SPACE | _NOT_WRITABLE | {errno.EIO} and ours:
            return output_error(exc, target)
    try:  # libraries that hide the errno (torch.save: "unexpected pos"): is the disk full?
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return None
    if free >= _NEARLY_FULL_BYTES:
        return None
    return OutputError(
        f"no space left on {target.parent}: cannot write {target} ({format_bytes(free)} free; "
        f"{type(exc).__name__}: {_one_line(exc)}); free some space or choose another output "
        "folder.",
        target,
        errno.ENOSPC,
    )


def _one_line(exc: object, limit: int = 200) -> str:
    """``str(exc)`` (an exception or any text) on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _temporary_name_pattern(name: str) -> re.Pattern[str]:
    """Names :func:`atomic_output` gives the temporaries of ``name``: ``.NAME.XXXXXXXX.tmp``."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def _lock(fd: int) -> bool:
    """Take an exclusive POSIX record lock on ``fd`` without waiting; False if another process
    holds it. (Record locks, not ``flock``: HDF5 locks its files with ``flock``.)"""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def matching_entries(folder: Path, pattern: re.Pattern[str]) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` whose whole name matches ``pattern`` (none if unreadable);
    the candidates of the stale-temporary clean-ups here and in ``runs.py``."""
    try:
        return [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return []


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporaries of ``path`` left by a killed writer (SIGKILL, power loss).

    Only files named like :func:`atomic_output`'s temporaries of this very target
    (``.NAME.XXXXXXXX.tmp`` beside it), regular files, last modified before this process
    started, and not locked by a live writer are removed.

    Returns:
        The files removed.
    """
    final = Path(path)
    removed: list[Path] = []
    for entry in matching_entries(final.parent, _temporary_name_pattern(final.name)):
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= _PROCESS_START:
                continue
            fd = os.open(entry.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if _lock(fd):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    On any exception (Ctrl-C and SIGTERM included) the temporary file is removed and ``path`` is
    untouched, so a failure never leaves a partial output. The file and then its folder are
    fsynced, so after a crash or power loss a reader sees the previous complete file or the new
    complete file. Temporaries of ``path`` left by a killed earlier run are removed first
    (:func:`remove_stale_temporaries`).

    Raises:
        OutputError: the folder is full, read-only or not writable (naming ``path``, not the
            temporary file). A library error that hides the cause (``torch.save``'s
            ``RuntimeError``) while the disk is full also becomes "no space left on <folder>".
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise output_error(exc, final) from exc
    tmp = Path(tmp_name)
    try:
        _lock(fd)  # marks the temporary as live for remove_stale_temporaries in other processes
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        failure = _write_failure(exc, final, tmp)
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        os.close(fd)
    _fsync_dir(final.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`: readers see the old
    complete file or the new complete file, never a part."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


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
    images = np.asarray(images)
    labels = np.asarray(labels)
    n = len(images)
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {images.shape}.", path)
    if labels.shape != (n,):
        raise DataError(f"{n} images but labels have shape {labels.shape}.", path)
    for key, value in (params or {}).items():
        if len(np.asarray(value)) != n:
            raise DataError(f"params/{key} has {len(np.asarray(value))} rows for {n} images.", path)
    with HDF5Writer(
        path, n, images.shape[1:], class_names, attrs=attrs, chunk_images=chunk_images
    ) as writer:
        writer.append(images, labels, sources=sources, nan_counts=nan_counts, params=params)
    return Path(path)


class _GuardedFile(io.FileIO):
    """The file under h5py's ``fileobj`` driver: a failed write never reaches HDF5.

    HDF5 that meets ``ENOSPC`` in a write or flush is left in a state where closing the file
    fails and the interpreter then crashes at exit with a segmentation fault (h5py 3.16, HDF5
    2.0, measured on a full 2 MiB tmpfs). Here the first ``OSError`` of a write is kept in
    :attr:`error` and the write reports success; later writes are skipped. The writer checks
    :attr:`error` after each block and at the end and raises an :class:`OutputError`.
    """

    error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                written = super().write(view[done:])
            except OSError as exc:
                self.error = exc
                break
            if not written:
                self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                break
            done += written
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size


_DEFERRED_SIGNALS = {
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends, then deliver them.

    h5py's ``fileobj`` driver runs :class:`_GuardedFile` (Python) inside HDF5 calls; an
    exception raised there by a signal handler is lost inside HDF5 (measured: the process then
    crashed with a segmentation fault). Python signal handlers run in the main thread, so
    there they are swapped, for the block, for one that only records the signal; the first
    signal recorded is handed to the original handler just after the block, where cleanup
    works. (Blocking the signals with ``pthread_sigmask`` is not enough: the kernel hands a
    process signal to any other thread, e.g. one of torch's, and Python then runs the handler
    in the main thread anyway.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append((signum, frame))

    previous: dict[int, Any] = {}
    for signum in _DEFERRED_SIGNALS:
        with contextlib.suppress(ValueError, OSError, TypeError):
            if callable(signal.getsignal(signum)):  # a Python handler (not default / ignored)
                previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signum, frame = caught[0]
            previous[signum](signum, frame)


def _storable(text: Any) -> str:
    """``text`` as valid UTF-8 (file names may hold undecodable bytes, kept as ``\\udcXX``)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


class HDF5Writer:
    """Write the package's HDF5 layout block by block, atomically (for data larger than memory).

    Use as a context manager; the file appears under its final name only when the block exits
    without error. Fewer rows than announced (e.g. images dropped by ``nan_policy="drop"``)
    are fine: the datasets are shrunk on close. Before anything is written, the announced size
    is checked against the free disk space (:func:`require_disk_space`); a disk that fills up
    anyway is an :class:`OutputError` naming the folder, and the temporary file is removed.

    Args:
        path: final output file.
        n_max: the most images that will be appended.
        image_shape: (C, H, W) of every image.
        class_names: names in label order.
        attrs: extra provenance attributes (str/int/float stored as is, others as JSON).
        chunk_images: images per chunk of ``images``.

    Example:
        >>> with HDF5Writer("out.h5", n, (1, 64, 64), ["cdm", "no_sub"]) as w:  # doctest: +SKIP
        ...     w.append(block_images, block_labels, sources=block_sources)
    """

    def __init__(
        self,
        path: str | Path,
        n_max: int,
        image_shape: Sequence[int],
        class_names: Sequence[str],
        *,
        attrs: Mapping[str, Any] | None = None,
        chunk_images: int = 1,
    ):
        self.path = Path(path)
        self.n_max = int(n_max)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.class_names = list(class_names)
        self.attrs = dict(attrs or {})
        self.chunk_images = max(1, int(chunk_images))
        self.n = 0
        self._ctx: Any = None
        self._file: Any = None
        self._fh: _GuardedFile | None = None

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored float32 image."""
        return 4 * math.prod(self.image_shape)

    def estimated_bytes(self) -> int:
        """Upper estimate of the file size for ``n_max`` images (images, labels, counts,
        source names and HDF5 overhead; per-image parameters are small next to images)."""
        return self.n_max * (self.image_bytes + 128) + (1 << 20)

    def _check_shape(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise DataError(f"image shape must be (C, H, W), got {self.image_shape}.", self.path)
        if self.image_bytes > HDF5_MAX_CHUNK_BYTES:
            raise DataError(
                f"one image of shape {self.image_shape} is {format_bytes(self.image_bytes)}, "
                "more than HDF5's 4 GiB chunk limit; use a smaller image size.",
                self.path,
            )
        self.chunk_images = max(1, min(self.chunk_images, HDF5_MAX_CHUNK_BYTES // self.image_bytes))

    def __enter__(self) -> HDF5Writer:
        self._check_shape()
        if self.path.is_dir():
            raise DataError("is a folder; give a file name such as data.h5 for --out.", self.path)
        require_disk_space(self.path, self.estimated_bytes())
        self._ctx = atomic_output(self.path)
        tmp = self._ctx.__enter__()
        try:
            with _signals_deferred():
                self._create(tmp, h5py)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def _create(self, tmp: Path, h5py: Any) -> None:
        """Open the temporary file and create the datasets."""
        self._fh = _GuardedFile(tmp, "r+")
        f = self._file = h5py.File(self._fh, "w")
        n = self.n_max
        chunks = (min(self.chunk_images, n),) + self.image_shape if n else None
        f.create_dataset(
            "images",
            (n, *self.image_shape),
            np.float32,
            chunks=chunks,
            maxshape=(None, *self.image_shape),
        )
        for name, dtype in (
            ("labels", np.int64),
            ("nan_counts", np.int64),
            ("sources", h5py.string_dtype()),
        ):
            f.create_dataset(
                name,
                (n,),
                dtype,
                chunks=(max(1, min(n, 65536)),) if n else None,
                maxshape=(None,),
            )
        self._check_io()

    def _check_io(self) -> None:
        """Raise the write error the guarded file swallowed, if any."""
        if self._fh is not None and self._fh.error is not None:
            raise output_error(self._fh.error, self.path)

    def append(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        sources: Sequence[str] | None = None,
        nan_counts: np.ndarray | None = None,
        params: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append a block of images.

        Args:
            images: (B, C, H, W) finite values (cast to float32).
            labels: (B,) class indices into ``class_names``.
            sources: (B,) source names.
            nan_counts: (B,) non-finite pixels found in each source image before cleaning.
            params: per-image parameters, arrays with leading dimension B (NaN = unknown).

        Raises:
            DataError: a malformed block.
            OutputError: the disk is full or the file cannot be written.
        """
        try:
            with _signals_deferred():
                self._append(images, labels, sources, nan_counts, params)
        except DeepLenseError:
            raise
        except Exception:  # after a swallowed write error h5py may fail in any way
            self._check_io()
            raise
        self._check_io()

    def _append(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        sources: Sequence[str] | None,
        nan_counts: np.ndarray | None,
        params: Mapping[str, np.ndarray] | None,
    ) -> None:
        f = self._file
        images = np.asarray(images)
        labels = np.asarray(labels)
        b = len(images)
        if images.shape[1:] != self.image_shape or images.ndim != 4:
            raise DataError(
                f"image block has shape {images.shape}, expected (B, {self.image_shape}).",
                self.path,
            )
        if labels.shape != (b,):
            raise DataError(f"{b} images but labels have shape {labels.shape}.", self.path)
        if b and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(f"labels must lie in [0, {len(self.class_names)}).", self.path)
        if not np.isfinite(images).all():
            raise DataError("images contain NaN/inf; clean them first (nan_policy).", self.path)
        if self.n + b > self.n_max:
            raise DataError(f"more than the announced {self.n_max} images.", self.path)
        names = [""] * b if sources is None else [_storable(v) for v in sources]
        if len(names) != b:
            raise DataError(f"{b} images but {len(names)} source names.", self.path)
        lo, hi = self.n, self.n + b
        if b:
            f["images"][lo:hi] = images.astype(np.float32, copy=False)
            f["labels"][lo:hi] = labels.astype(np.int64, copy=False)
            counts = np.zeros(b, np.int64) if nan_counts is None else np.asarray(nan_counts)
            f["nan_counts"][lo:hi] = counts.astype(np.int64, copy=False)
            f["sources"][lo:hi] = np.array(names, dtype=object)
        for key, value in (params or {}).items():
            value = np.asarray(value)
            if value.ndim == 0 or len(value) != b or value.dtype.kind not in "fiub":
                raise DataError(
                    f"params/{key} must be a numeric array with {b} rows, got shape "
                    f"{value.shape} and dtype {value.dtype}.",
                    self.path,
                )
            name = f"params/{key}"
            if name not in f:
                fill = np.nan if np.issubdtype(value.dtype, np.floating) else 0
                f.create_dataset(
                    name,
                    (self.n_max, *value.shape[1:]),
                    value.dtype,
                    fillvalue=fill,
                    maxshape=(None, *value.shape[1:]),
                )
            if b:
                f[name][lo:hi] = value
        self.n = hi

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._abort(exc)
            return
        try:
            with _signals_deferred():
                self._finish()
                self._file.close()
                self._check_io()
                assert self._fh is not None  # opened by __enter__, which succeeded
                self._fh.close()
        except BaseException as err:
            self._abort(err)
            raise
        self._ctx.__exit__(None, None, None)

    def _finish(self) -> None:
        """Shrink to the rows written and store the attributes."""
        f = self._file
        if self.n != self.n_max:
            for name in ("images", "labels", "nan_counts", "sources"):
                f[name].resize(self.n, axis=0)
            for ds in f.get("params", {}).values():
                ds.resize(self.n, axis=0)
        attrs: dict[str, str | int | float] = {
            "format": HDF5_FORMAT,
            "class_names": json.dumps([_storable(c) for c in self.class_names]),
            "deeplense_ssl_version": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in self.attrs.items():
            if isinstance(value, str):
                attrs[key] = _storable(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                attrs[key] = value
            else:
                attrs[key] = json.dumps(value, default=str)
        for key, value in attrs.items():
            try:
                f.attrs[key] = value
            except (TypeError, ValueError, RuntimeError, OSError) as exc:
                self._check_io()
                raise DataError(f"cannot store attribute {key!r} ({exc}).", self.path) from exc

    def _abort(self, exc: BaseException) -> None:
        """Close everything, remove the temporary file; raise the write error if there was one."""
        with _signals_deferred():
            if self._file is not None:
                with contextlib.suppress(Exception):
                    self._file.close()
            error = self._fh.error if self._fh is not None else None
            if self._fh is not None:
                with contextlib.suppress(Exception):
                    self._fh.close()
        if self._ctx is None:
            return
        if error is not None and not isinstance(exc, OutputError | KeyboardInterrupt):
            failure = output_error(error, self.path)  # the cause, whatever h5py said after it
            self._ctx.__exit__(OutputError, failure, None)
            raise failure from exc
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)


# ----------------------------------------------------------------------------- reading

IMAGE_SUFFIXES = (".npy", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
IMAGE_KEYS = ("images", "X", "x", "data", "image")
LABEL_KEYS = ("labels", "y", "label", "targets")
PICKLE_HINT = (
    "pass allow_pickle=True (CLI: --allow-pickle) only if you trust the file, since "
    "unpickling can run arbitrary code"
)


@dataclass
class RawData:
    """Images as stored in the source plus their metadata (output of :func:`read_source`).

    Attributes:
        images: one array per image, in the stored dtype and layout (not yet ``(C, H, W)``).
        labels: (N,) int64 class indices.
        class_names: names in label order.
        sources: (N,) file name (and ``[index]`` inside stacked files) of each image.
        params: per-image parameters, arrays of length N (NaN where unknown), e.g.
            ``axion_mass_ev``.
        meta: source-level metadata (``kind``, ``path``, stored HDF5 attributes, ...).
    """

    images: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Source:
    """A readable image source: length, labels, class names and source names are known up front;
    pixels are read lazily, in blocks (so big inputs stream instead of filling memory).

    Do not build directly; use :func:`open_source`. Close it (or use ``with``) when done.

    Attributes:
        path: the input path.
        kind: ``folder`` | ``flat-folder`` | ``npy`` | ``npz`` | ``fits`` | ``hdf5``.
        labels: (N,) int64.
        class_names: names in label order.
        sources: (N,) source name of each image.
        meta: extra information (e.g. stored HDF5 attributes, ``labelled``).
        stacked: True when all images come from one array (blocks are then one ndarray).
    """

    stacked = False

    def __init__(
        self,
        path: Path,
        kind: str,
        labels: np.ndarray,
        class_names: list[str],
        sources: list[str],
        meta: dict[str, Any] | None = None,
    ):
        self.path = path
        self.kind = kind
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.sources = sources
        self.meta = dict(meta or {})
        self.meta.setdefault("kind", kind)
        self.meta.setdefault("path", str(path))
        if len(self.labels) != len(self.sources):
            raise DataError(
                f"{len(self.sources)} images but {len(self.labels)} labels; give one label per "
                "image.",
                path,
            )
        if len(self.labels) == 0:
            raise DataError("no images found; point to a file or folder with images.", path)

    def __len__(self) -> int:
        return len(self.labels)

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """Read images ``start:stop`` as stored.

        Args:
            start: first image index.
            stop: one past the last image index.
            out: a float32 buffer for the ``stop - start`` images, which a ``stacked`` source
                may read into (and return) instead of allocating; other sources ignore it.

        Returns:
            (images, params): a list of arrays (or one stacked ndarray when ``stacked``) and
            per-image parameter arrays of length ``stop - start``.
        """
        raise NotImplementedError

    def iter_blocks(
        self, block_size: int = 1024
    ) -> Iterator[tuple[int, Any, dict[str, np.ndarray]]]:
        """Yield ``(start, images, params)`` for consecutive blocks of at most ``block_size``."""
        for start in range(0, len(self), block_size):
            stop = min(start + block_size, len(self))
            images, params = self.read_block(start, stop)
            yield start, images, params

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _FileListSource(Source):
    """One image per file (npy or FITS)."""

    def __init__(
        self,
        path: Path,
        kind: str,
        files: list[Path],
        labels: np.ndarray,
        class_names: list[str],
        allow_pickle: bool,
        meta: dict[str, Any] | None = None,
    ):
        self.files = files
        self.allow_pickle = allow_pickle
        root = path if path.is_dir() else path.parent
        names = [_relative(f, root) for f in files]
        super().__init__(path, kind, labels, class_names, names, meta)

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Read files ``start:stop`` as a list of arrays (``out`` is not used)."""
        images = []
        masses = np.full(stop - start, np.nan)
        for j, file in enumerate(self.files[start:stop]):
            image, params = read_image_file(file, allow_pickle=self.allow_pickle)
            if image.ndim not in (2, 3):
                raise DataError(
                    f"expected one image (H, W), (C, H, W) or (H, W, C) per file, got shape "
                    f"{image.shape}; stacks of images are read when the file is given directly.",
                    file,
                )
            images.append(image)
            if "axion_mass_ev" in params:
                masses[j] = params["axion_mass_ev"]
        params_out = {} if np.isnan(masses).all() else {"axion_mass_ev": masses}
        return images, params_out


_INDEX_BYTES_PER_IMAGE = 128  # label, source name and bookkeeping of one image
_LARGE_BLOCK_BYTES = 1 << 28  # blocks above this are checked against the free memory


class _ArraySource(Source):
    """All images in one array-like (memory-mapped npy, npz member, FITS cube, HDF5 dataset)."""

    stacked = True

    def __init__(
        self,
        path: Path,
        kind: str,
        array: Any,
        labels: np.ndarray | None,
        class_names: list[str] | None,
        params: dict[str, Any] | None = None,
        sources: list[str] | None = None,
        meta: dict[str, Any] | None = None,
        closer: Any = None,
    ):
        shape = tuple(int(v) for v in array.shape)
        if len(shape) == 2:  # one image
            array = _OneImage(array)
            shape = (1, *shape)
        if len(shape) not in (3, 4):
            raise DataError(
                f"expected a stack of images (N, H, W) / (N, C, H, W) / (N, H, W, C), got shape "
                f"{shape}.",
                path,
            )
        n = shape[0]
        # float32 bytes of one image once cleaned: refuse absurd declared sizes up front
        self.image_bytes = 4 * math.prod(shape[1:])
        require_memory(self.image_bytes, f"one image of shape {shape[1:]}", path=path)
        require_memory(n * _INDEX_BYTES_PER_IMAGE, f"the index of {n} images", path=path)
        meta = dict(meta or {})
        if labels is None:
            labels = np.zeros(n, np.int64)
            class_names = class_names or ["unlabelled"]
            meta.setdefault("labelled", False)
        if not isinstance(labels, str | Path) and np.asarray(labels).dtype.kind in "SUO":
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(labels)]
            class_names = class_names or sorted(set(text))
            lookup = {c: k for k, c in enumerate(class_names)}
            missing = sorted(set(text) - set(lookup))
            if missing:
                raise DataError(f"labels {missing} are not among classes {class_names}.", path)
            labels = np.array([lookup[t] for t in text], np.int64)
        labels = _as_labels(labels, path)
        if len(labels) != n:
            raise DataError(
                f"{n} images but {len(labels)} labels; give exactly one label per image.", path
            )
        if class_names is None:
            class_names = [f"class_{k}" for k in range(int(labels.max()) + 1 if n else 0)]
        if n and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataError(
                f"labels must lie in [0, {len(class_names)}) for classes {class_names}, got "
                f"{labels.min()}..{labels.max()}.",
                path,
            )
        self.array = array
        self.params = {k: v for k, v in (params or {}).items()}
        for key, value in self.params.items():
            if len(value) != n:
                raise DataError(f"parameter {key!r} has {len(value)} rows for {n} images.", path)
        self._closer = closer
        if sources is None:
            sources = [f"{path.name}[{i}]" for i in range(n)] if n > 1 else [path.name]
        super().__init__(path, kind, labels, class_names, sources, meta)

    @property
    def direct_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) when blocks can be read straight into a float32 (N, C, H, W) buffer."""
        a = self.array
        if not hasattr(a, "read_direct") or a.ndim != 4 or a.dtype != np.dtype(np.float32):
            return None
        c, h, w = a.shape[1:]
        return (c, h, w) if c <= 16 and c <= w else None

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Read images ``start:stop``; into ``out`` (and return it) when ``direct_shape``."""
        if out is None and (stop - start) * self.image_bytes > _LARGE_BLOCK_BYTES:
            require_memory(
                (stop - start) * self.image_bytes,
                f"reading images {start}..{stop - 1}",
                path=self.path,
                hint="; read fewer images per block (block_size)",
            )
        try:
            if out is not None and self.direct_shape is not None:
                self.array.read_direct(out, np.s_[start:stop])
                block = out
            else:
                block = np.asarray(self.array[start:stop])
        except (OSError, ValueError) as exc:  # truncated memmap, corrupt HDF5 chunk
            raise DataError(
                f"cannot read images {start}..{stop - 1} ({exc}); the file may be truncated or "
                "corrupt: re-create or re-download it.",
                self.path,
                start,
            ) from exc
        params = {k: np.asarray(v[start:stop]) for k, v in self.params.items()}
        return block, params

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


class _OneImage:
    """View a single 2-D image as a stack of one."""

    def __init__(self, image: Any):
        self.image = image
        self.shape = (1, *image.shape)

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.image)[None][item]


def open_source(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    labels: Any = None,
    labels_csv: str | Path | None = None,
    label_pattern: str | None = None,
    images_key: str | None = None,
    labels_key: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Source:
    """Open any supported input (see the module docstring) for block-wise reading.

    Args:
        path: a file or folder.
        allow_pickle: allow unpickling object ``.npy`` files (trusted files only).
        labels: labels of a single stacked array file: an int array or a path to a ``.npy`` /
            text file with one integer per image.
        labels_csv: CSV with columns ``file`` and ``label`` (class name or integer) labelling the
            files of a flat folder.
        label_pattern: file-name rules labelling a flat folder, see :func:`parse_label_pattern`.
        images_key: name of the image dataset/array in an HDF5 or ``.npz`` file.
        labels_key: name of the label dataset/array in an HDF5 or ``.npz`` file.
        class_names: class names in label order for inputs that do not store them.

    Raises:
        DataError: the path does not exist, holds no images, or is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder; check the path.", path)
    if path.is_dir():
        return _open_folder(path, allow_pickle, labels_csv, label_pattern)
    name = path.name.lower()
    names = list(class_names) if class_names is not None else None
    if name.endswith(HDF5_SUFFIXES):
        return _open_hdf5(path, images_key, labels_key, names)
    if name.endswith(".npz"):
        return _open_npz(path, allow_pickle, labels, images_key, labels_key, names)
    if name.endswith(".npy"):
        return _open_npy(path, allow_pickle, labels, names)
    if name.endswith(IMAGE_SUFFIXES):
        return _open_fits(path, labels, names)
    raise DataError(
        "unsupported file type; use .npy, .npz, .h5/.hdf5, .fits or a folder of them.", path
    )


def read_source(path: str | Path, **kwargs: Any) -> RawData:
    """Read every image of any supported input as stored (small inputs; see :func:`open_source`).

    Args:
        path: a file or folder.
        **kwargs: passed to :func:`open_source`.

    Returns:
        A :class:`RawData`.
    """
    with open_source(path, **kwargs) as src:
        images: list[np.ndarray] = []
        params: dict[str, list[np.ndarray]] = {}
        for start, block, block_params in src.iter_blocks():
            images.extend(list(block))
            for key, value in block_params.items():
                params.setdefault(key, [np.full(start, np.nan)]).append(value)
            for key in params:
                if key not in block_params:
                    params[key].append(np.full(len(block), np.nan))
        return RawData(
            images=images,
            labels=src.labels.copy(),
            class_names=list(src.class_names),
            sources=list(src.sources),
            params={k: np.concatenate(v) for k, v in params.items()},
            meta=dict(src.meta),
        )


def read_hdf5(path: str | Path, **kwargs: Any) -> RawData:
    """Read an HDF5 file (the package's layout or a generic one) completely.

    Args:
        path: the HDF5 file.
        **kwargs: ``images_key``, ``labels_key``, ``class_names`` as in :func:`open_source`.

    Returns:
        A :class:`RawData` whose ``images`` is one ``(N, C, H, W)`` (or as stored) ndarray.
    """
    with _open_hdf5(
        Path(path), kwargs.get("images_key"), kwargs.get("labels_key"), kwargs.get("class_names")
    ) as src:
        images, params = src.read_block(0, len(src))
        return RawData(
            images,
            src.labels.copy(),
            list(src.class_names),
            list(src.sources),
            params,
            dict(src.meta),
        )


def read_image_file(path: str | Path, *, allow_pickle: bool = False) -> tuple[np.ndarray, dict]:
    """Read one ``.npy`` or FITS file holding one image (or a stack when given directly).

    Returns:
        (array as stored, params) where params holds ``axion_mass_ev`` for DeepLense axion files.

    Raises:
        DataError: unreadable, truncated, pickled without opt-in, or no image data.
    """
    path = Path(path)
    if path.name.lower().endswith(".npy"):
        return _read_npy_bytes(path, allow_pickle=allow_pickle)
    return _read_fits(path), {}


def parse_label_pattern(pattern: str) -> list[tuple[str | None, re.Pattern[str]]]:
    """Parse file-name labelling rules.

    Two forms are accepted:

    * rules ``"name=regex;name=regex"``, tried in order; the first regex found (``re.search``) in
      the file name gives the class ``name``. Example for the real HST set:
      ``"non_lens=^nl_;lens=_hst"``;
    * one regex with a capture group (or a group named ``label``); the captured text is the
      class name. Example: ``"^(cdm|axion|no_sub)_"``.

    Returns:
        A list of ``(class name or None for the capture form, compiled regex)``.

    Raises:
        DataError: an invalid regex.
    """
    parts = [p for p in pattern.split(";") if p.strip()]
    try:
        if parts and all(re.match(r"^\s*[\w.+-]+\s*=", p) for p in parts):
            rules: list[tuple[str | None, re.Pattern[str]]] = []
            for part in parts:
                name, regex = part.split("=", 1)
                rules.append((name.strip(), re.compile(regex.strip())))
            return rules
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"invalid label pattern {pattern!r}: {exc}.") from exc
    if compiled.groups < 1:
        raise DataError(
            f"label pattern {pattern!r} needs a capture group such as '^(nl)_', or rules "
            "'name=regex;name=regex'."
        )
    return [(None, compiled)]


# ----------------------------------------------------------------------------- helpers


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.name


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)


def _open_folder(path: Path, allow_pickle: bool, labels_csv: Any, label_pattern: Any) -> Source:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if _is_image_file(p)]
    class_dirs = [d for d in subdirs if any(_is_image_file(p) for p in d.iterdir())]
    if class_dirs and not loose:
        if labels_csv or label_pattern:
            raise DataError(
                "this folder has class sub-folders, which already give the labels; drop "
                "labels_csv / label_pattern or point to a flat folder.",
                path,
            )
        files: list[Path] = []
        folder_labels: list[int] = []
        names = [d.name for d in class_dirs]
        for k, d in enumerate(class_dirs):
            found = sorted(p for p in d.iterdir() if _is_image_file(p))
            files.extend(found)
            folder_labels.extend([k] * len(found))
        return _FileListSource(
            path, "folder", files, np.array(folder_labels, np.int64), names, allow_pickle
        )
    if class_dirs and loose:
        raise DataError(
            f"mixes class sub-folders ({', '.join(d.name for d in class_dirs)}) with loose image "
            f"files (e.g. {loose[0].name}); move the loose files into a class folder.",
            path,
        )
    if not loose:
        if subdirs:
            raise DataError(
                "no image files here or directly inside its sub-folders "
                f"({', '.join(d.name for d in subdirs[:5])}); point to the folder whose "
                "sub-folders are the classes (e.g. the 'train' folder).",
                path,
            )
        raise DataError(
            "empty folder: no .npy or FITS files; point to a folder of images or a data file.",
            path,
        )
    if labels_csv:
        labels, names = _labels_from_csv(Path(labels_csv), loose)
    elif label_pattern:
        labels, names = _labels_from_pattern(label_pattern, loose, path)
    else:
        labels, names = np.zeros(len(loose), np.int64), ["unlabelled"]
        return _FileListSource(
            path, "flat-folder", loose, labels, names, allow_pickle, {"labelled": False}
        )
    return _FileListSource(path, "flat-folder", loose, labels, names, allow_pickle)


def _labels_from_pattern(pattern: str, files: list[Path], root: Path) -> tuple[np.ndarray, list]:
    rules = parse_label_pattern(pattern)
    found: list[str] = []
    for file in files:
        name = None
        for cls, regex in rules:
            m = regex.search(file.name)
            if m is None:
                continue
            if cls is not None:
                name = cls
            else:
                name = m.groupdict().get("label") or m.group(1)
            if name:
                break
        if not name:
            raise DataError(
                f"file name matches no rule of label pattern {pattern!r}; add a rule for it or "
                "move the file out.",
                file,
            )
        found.append(name)
    if rules[0][0] is not None:  # rules: class order = rule order (only those used)
        order = [cls for cls, _ in rules if cls in set(found)]
        order = list(dict.fromkeys(order))
    else:
        order = sorted(set(found))
    index = {c: k for k, c in enumerate(order)}
    return np.array([index[c] for c in found], np.int64), order


def _read_label_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, file, label) of every data row of a labels CSV (UTF-8, BOM allowed)."""
    if not csv_path.is_file():
        raise DataError("labels CSV not found; check the path.", csv_path)
    try:  # utf-8-sig: Excel saves CSV files with a byte-order mark
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [(reader.line_num, row) for row in reader]
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read labels CSV ({_one_line(exc)}).", csv_path) from exc
    if not rows:
        raise DataError("labels CSV has no rows; expected columns 'file' and 'label'.", csv_path)
    cols = {c.strip().lower(): c for c in header if c is not None}
    file_col = next((cols[c] for c in ("file", "filename", "path", "name") if c in cols), None)
    label_col = next((cols[c] for c in ("label", "class", "labels", "target") if c in cols), None)
    if file_col is None or label_col is None:
        raise DataError(f"labels CSV needs columns 'file' and 'label', found {header}.", csv_path)
    out = []
    for line, row in rows:
        name, label = (str(row.get(c) or "").strip() for c in (file_col, label_col))
        if not name or not label:
            raise DataError(
                f"line {line} has no {'file name' if not name else 'label'}; every row needs both.",
                csv_path,
            )
        out.append((line, name, label))
    return out


def _labels_from_csv(csv_path: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    mapping: dict[str, tuple[str, int]] = {}
    for line, name, label in _read_label_rows(csv_path):
        key = Path(name).name
        if key in mapping and mapping[key][0] != label:
            first, first_line = mapping[key]
            raise DataError(
                f"{key} has two different labels, {first!r} (line {first_line}) and {label!r} "
                f"(line {line}); keep one row per file.",
                csv_path,
            )
        mapping.setdefault(key, (label, line))
    values = []
    for file in files:
        if file.name not in mapping:
            raise DataError(
                f"{file.name} is not listed in the labels CSV; add a row for it or move it out.",
                csv_path,
            )
        values.append(mapping[file.name][0])
    if all(re.fullmatch(r"-?\d{1,9}", v) for v in values):
        labels = np.array([int(v) for v in values], np.int64)
        if labels.min() < 0:
            raise DataError("integer labels in the CSV must be >= 0.", csv_path)
        if labels.max() >= MAX_CLASSES:
            raise DataError(
                f"integer labels must be class indices below {MAX_CLASSES}, got {labels.max()}.",
                csv_path,
            )
        names = [f"class_{k}" for k in range(int(labels.max()) + 1)]
        return labels, names
    names = sorted(set(values))
    index = {c: k for k, c in enumerate(names)}
    return np.array([index[v] for v in values], np.int64), names


def _as_labels(labels: Any, path: Path) -> np.ndarray:
    if isinstance(labels, str | Path):
        lp = Path(labels)
        if not lp.is_file():
            raise DataError("labels file not found; check the path.", lp)
        try:
            if lp.suffix == ".npy":
                shape, dtype, offset = _npy_header(lp)
                declared = math.prod(shape) * dtype.itemsize
                _check_declared_size(declared, lp.stat().st_size - offset, lp, "truncated .npy")
                labels = np.load(lp, allow_pickle=False)
            else:
                labels = np.loadtxt(lp)
        except DataError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read labels ({exc}); expected one integer per image.", lp
            ) from exc
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] > 1:  # one-hot
        arr = arr.argmax(axis=1)
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError("labels must be whole numbers (class indices).", path)
    elif arr.dtype.kind not in "iub":
        raise DataError(f"labels must be integers, got dtype {arr.dtype}.", path)
    if arr.size and arr.max() >= MAX_CLASSES:
        raise DataError(
            f"labels must be class indices below {MAX_CLASSES}, got up to {arr.max()}; is this "
            "really a label file?",
            path,
        )
    return arr.astype(np.int64)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset in bytes) from a .npy header.

    Raises:
        DataError: no .npy header, a corrupt one (numpy's parser can fail with a
            ``tokenize`` or syntax error), or a structured / sub-array dtype.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except _NPY_HEADER_ERRORS as exc:
        raise DataError(
            f"not a readable .npy file ({_one_line(exc)}); it may be corrupt or truncated: "
            "re-create or re-download it.",
            path,
        ) from exc
    _check_npy_dtype(dtype, path)
    return tuple(int(v) for v in shape), dtype, offset


def _check_npy_dtype(dtype: np.dtype, path: object) -> None:
    if (dtype.names is not None or dtype.subdtype is not None) and not dtype.hasobject:
        raise DataError(
            f"holds a structured array (dtype {dtype}); store the images as a plain numeric array.",
            path,
        )


def _check_declared_size(declared: int, available: int, path: object, lead: str) -> None:
    """A header that promises more data bytes than the file holds is refused before reading."""
    if declared > available:
        raise DataError(
            f"{lead}: the header promises {declared} data bytes "
            f"({format_bytes(declared)}), the file holds at most {max(available, 0)}; re-create or "
            "re-download it.",
            path,
        )


def _read_npy(path: Path, *, allow_pickle: bool, mmap: bool) -> tuple[np.ndarray, dict]:
    shape, dtype, _ = _npy_header(path)
    if dtype.hasobject:
        if not allow_pickle:
            raise DataError(
                "is a pickled object array (e.g. a DeepLense axion file [image, mass]); it is "
                f"refused by default: {PICKLE_HINT}.",
                path,
            )
        return _read_pickled(path)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (*_NPY_HEADER_ERRORS, MemoryError) as exc:
        raise DataError(
            f"cannot read .npy ({_one_line(exc)}); the file is corrupt or truncated: re-create "
            "or re-download it.",
            path,
        ) from exc
    return array, {}


_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def _read_npy_bytes(path: Path, *, allow_pickle: bool) -> tuple[np.ndarray, dict]:
    """Read a small .npy in one system call; headers seen before are not parsed again.

    A folder of DeepLense files shares one header, so this is several times faster than
    ``np.load`` per file (which opens and parses each header with ``ast.literal_eval``).
    Sizes are checked with Python integers, so an absurd declared shape (say
    ``(2**32, 2**32)``) is a clear error, never an overflow or a huge allocation.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > 1 << 30:  # one image per file: a huge file is most likely a mistake
                require_memory(size, "reading this file", path=path)
            data = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror}).", path) from exc
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise DataError(
            "not a readable .npy file (no .npy header); it may be corrupt or have the wrong "
            "extension: re-create or re-download it.",
            path,
        )
    if data[6] == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    else:
        start = 12 + int.from_bytes(data[8:12], "little")
    head = data[:start]
    info = _NPY_HEADERS.get(head)
    if info is None:
        shape, dtype, _ = _npy_header(path)
        if dtype.hasobject:
            return _read_npy(path, allow_pickle=allow_pickle, mmap=False)
        fortran = b"'fortran_order': True" in head
        info = (shape, fortran, dtype)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[head] = info
    shape, fortran, dtype = info
    count = math.prod(shape)
    _check_declared_size(
        count * dtype.itemsize, len(data) - start, path, "cannot read .npy, truncated"
    )
    array = np.frombuffer(data, dtype, count, start).reshape(shape, order="F" if fortran else "C")
    return array, {}


def _read_pickled(path: Path) -> tuple[np.ndarray, dict]:
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything
        raise DataError(f"cannot unpickle .npy ({exc}); the file is corrupt.", path) from exc
    params: dict[str, float] = {}
    if obj.dtype == object and obj.shape == (2,) and np.ndim(obj[1]) == 0:
        image, extra = obj[0], obj[1]
        try:
            params["axion_mass_ev"] = float(extra)
        except (TypeError, ValueError):
            pass
    elif obj.dtype == object and obj.ndim >= 1 and len(obj) >= 1:
        image = obj[0] if obj.ndim == 1 else obj
    else:
        image = obj
    try:
        if getattr(image, "dtype", None) == np.dtype(object):
            image = np.asarray(image.tolist(), dtype=float)
        image = np.asarray(image)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"pickled object array without a numeric image ({exc}); expected [image, mass].", path
        ) from exc
    return image, params


def _open_npy(path: Path, allow_pickle: bool, labels: Any, class_names: Any) -> Source:
    shape, dtype, offset = _npy_header(path)
    if dtype.hasobject:  # a single pickled (axion) file: one image
        image, params = _read_npy(path, allow_pickle=allow_pickle, mmap=False)
        meta = {"params_scalar": params}
        src_params = {k: np.array([v]) for k, v in params.items()}
        return _ArraySource(
            path, "npy", _stack_one(image, path), labels, class_names, src_params, meta=meta
        )
    declared = math.prod(shape) * dtype.itemsize
    _check_declared_size(declared, path.stat().st_size - offset, path, "truncated .npy")
    array, _ = _read_npy(path, allow_pickle=False, mmap=True)
    return _ArraySource(path, "npy", array, labels, class_names, meta={"memmap": True})


def _stack_one(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim in (2, 3):
        return image[None]
    raise DataError(f"expected one image per pickled file, got shape {image.shape}.", path)


_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _open_npz(
    path: Path, allow_pickle: bool, labels: Any, images_key: Any, labels_key: Any, class_names: Any
) -> Source:
    _refuse_npy_named_npz(path)
    try:
        npz = np.load(path, allow_pickle=allow_pickle)
    except _NPZ_ERRORS as exc:
        raise DataError(
            f"cannot read .npz ({_one_line(exc)}); the file is corrupt or truncated.", path
        ) from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(
            "is not an .npz archive (np.savez); check the file and its extension.", path
        )
    try:
        keys = list(npz.keys())
        ikey = _pick_key(
            path,
            keys,
            images_key,
            IMAGE_KEYS,
            "image",
            "images_key (--images-key)",
            fallback_single=True,
        )
        lkey = _pick_key(
            path, keys, labels_key, LABEL_KEYS, "label", "labels_key (--labels-key)", required=False
        )
        images = _npz_member(npz, ikey, path)
        if labels is None and lkey is not None:
            labels = _npz_member(npz, lkey, path)
        if class_names is None and "class_names" in keys:
            class_names = _class_name_list(
                _npz_member(npz, "class_names", path).tolist(), path, "member 'class_names'"
            )
    except BaseException:
        npz.close()
        raise
    if images.dtype == object:
        npz.close()
        raise DataError("image array is an object array; store a numeric (N, ...) array.", path)
    return _ArraySource(path, "npz", images, labels, class_names, closer=npz.close)


def _refuse_npy_named_npz(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror}).", path) from exc
    if magic == b"\x93NUMPY":
        raise DataError(
            "is a .npy file, not an .npz archive (it starts with the .npy header); rename it "
            "to .npy.",
            path,
        )


def _npz_member(npz: Any, key: str, path: Path) -> np.ndarray:
    """Read one member of an .npz after checking its header against its stored size.

    A member whose header declares more data than the archive records (or more than the
    available memory) is refused before numpy allocates it.
    """
    zf = npz.zip
    member = key + ".npy" if key + ".npy" in zf.namelist() else key
    what = f"member {key!r}"
    try:
        info = zf.getinfo(member)
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (*_NPY_HEADER_ERRORS, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"{what} is not a readable .npy array ({_one_line(exc)}); the file is corrupt.",
            path,
        ) from exc
    _check_npy_dtype(dtype, f"{path} ({what})")
    if not dtype.hasobject:
        declared = math.prod(shape) * dtype.itemsize
        _check_declared_size(declared, info.file_size - offset, path, f"truncated .npz {what}")
        require_memory(declared, f".npz {what} of shape {tuple(shape)}", path=path)
    try:
        value = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"holds pickled object arrays; {PICKLE_HINT}.", path) from exc
        raise DataError(
            f"cannot read .npz {what} ({_one_line(exc)}); the file is corrupt.", path
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as exc:
        raise DataError(
            f"cannot read .npz {what} ({_one_line(exc)}); the file is corrupt.", path
        ) from exc
    return np.asarray(value)


def _pick_key(
    path: Path,
    keys: list[str],
    given: Any,
    candidates: tuple[str, ...],
    what: str,
    option: str,
    required: bool = True,
    fallback_single: bool = False,
) -> Any:
    if given is not None:
        if given not in keys:
            raise DataError(f"has no {what} dataset {given!r}; it has {keys}.", path)
        return given
    found = [k for k in keys if k.rsplit("/", 1)[-1] in candidates]  # nested HDF5 names too
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(
            f"ambiguous {what} datasets {found}; name the one to use with {option}.", path
        )
    if fallback_single and len(keys) == 1:
        return keys[0]
    if required:
        raise DataError(
            f"no {what} dataset found (looked for {', '.join(candidates)}; it has {keys}); "
            f"name it with {option}.",
            path,
        )
    return None


def _open_hdf5(path: Path, images_key: Any, labels_key: Any, class_names: Any) -> Source:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(
            f"not a readable HDF5 file ({_one_line(exc)}); it may be corrupt or truncated.", path
        ) from exc
    try:
        return _hdf5_source(f, path, images_key, labels_key, class_names)
    except (OSError, RuntimeError, KeyError, TypeError) as exc:  # a corrupt object inside
        f.close()
        raise DataError(
            f"cannot read the HDF5 structure ({_one_line(exc)}); the file is corrupt.", path
        ) from exc
    except BaseException:
        f.close()
        raise


def _hdf5_source(f: Any, path: Path, images_key: Any, labels_key: Any, class_names: Any) -> Source:
    """Validate an open HDF5 file (every name, shape and dtype) and wrap it as a source."""
    datasets: dict[str, Any] = {}

    def collect(name: str, obj: Any) -> None:  # visititems stops at a non-None return
        if isinstance(obj, h5py.Dataset):
            datasets[name] = obj

    f.visititems(collect)
    keys = list(datasets)
    meta = _hdf5_attrs(f)
    ours = meta.get("format") == HDF5_FORMAT
    ikey = _pick_key(
        path,
        keys,
        images_key or ("images" if ours else None),
        IMAGE_KEYS,
        "image",
        "images_key (--images-key)",
    )
    lkey = _pick_key(
        path,
        keys,
        labels_key or ("labels" if ours else None),
        LABEL_KEYS,
        "label",
        "labels_key (--labels-key)",
        required=False,
    )
    images = datasets[ikey]
    if images.dtype.kind not in "fiub":
        raise DataError(f"dataset {ikey!r} has non-numeric dtype {images.dtype}.", path)
    if images.ndim not in (2, 3, 4):
        raise DataError(
            f"dataset {ikey!r} has shape {images.shape}; expected images (N, H, W), "
            "(N, C, H, W) or (N, H, W, C), or one image (H, W).",
            path,
        )
    n = len(images) if images.ndim > 2 else 1
    labels = None
    if lkey is not None:
        lds = datasets[lkey]
        if lds.ndim not in (1, 2) or lds.shape[0] != n:
            raise DataError(
                f"dataset {lkey!r} has shape {lds.shape} for {n} images; give one label per image.",
                path,
            )
        labels = lds[()]
    if class_names is None and "class_names" in meta:
        class_names = _hdf5_class_names(meta["class_names"], path)
    sources = _hdf5_sources(datasets.get("sources"), n, ours, path)
    params = _hdf5_params(f, n, path)
    meta["images_key"] = ikey
    counts = _hdf5_nan_counts(datasets.get("nan_counts"), n, ours, path)
    if counts is not None:
        meta["nan_counts"] = counts
    return _ArraySource(
        path, "hdf5", images, labels, class_names, params, sources, meta, closer=f.close
    )


def _hdf5_attrs(f: Any) -> dict[str, Any]:
    """Readable attributes of the file's root (an unreadable one is skipped, not fatal)."""
    meta: dict[str, Any] = {}
    for key in list(f.attrs):
        try:
            meta[key] = _attr(f.attrs[key])
        except (OSError, TypeError, ValueError, KeyError):
            continue
    return meta


def _hdf5_class_names(raw: Any, path: Path) -> list[str]:
    what = "attribute 'class_names'"
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise DataError(
                f"{what} is not JSON ({_one_line(exc)}); expected a JSON list of names such as "
                '["no_sub", "cdm"]: fix or delete the attribute.',
                path,
            ) from exc
    return _class_name_list(raw, path, what)


def _class_name_list(raw: Any, path: object, what: str) -> list[str]:
    """Check stored class names: a list of distinct non-empty names (str or int)."""
    ok = isinstance(raw, list | tuple) and all(
        isinstance(c, str | bytes | int) and not isinstance(c, bool) for c in raw
    )
    names = (
        [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in raw]
        if ok
        else []
    )
    if not ok or not names or len(names) > MAX_CLASSES or "" in names:
        raise DataError(
            f'{what} must be a list of class names such as ["no_sub", "cdm"], got '
            f"{_one_line(repr(raw), 80)}; fix or delete it.",
            path,
        )
    if len(set(names)) != len(names):
        raise DataError(f"{what} names a class twice: {names}; class names must differ.", path)
    return names


def _hdf5_sources(ds: Any, n: int, ours: bool, path: Path) -> list[str] | None:
    if ds is None:
        return None
    if ds.shape != (n,) or ds.dtype.kind not in "OSU":
        if not ours:
            return None  # a generic file's own "sources": not ours to interpret
        raise DataError(
            f"dataset 'sources' has shape {ds.shape} and dtype {ds.dtype}; expected ({n},) "
            "strings.",
            path,
        )
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in ds[()]]


def _hdf5_nan_counts(ds: Any, n: int, ours: bool, path: Path) -> np.ndarray | None:
    if ds is None:
        return None
    if ds.shape != (n,) or ds.dtype.kind not in "iu":
        if not ours:
            return None
        raise DataError(
            f"dataset 'nan_counts' has shape {ds.shape} and dtype {ds.dtype}; expected ({n},) "
            "integers.",
            path,
        )
    counts = np.asarray(ds[()], np.int64)
    if n and counts.min() < 0:
        raise DataError("dataset 'nan_counts' holds negative counts.", path)
    return counts


def _hdf5_params(f: Any, n: int, path: Path) -> dict[str, Any]:
    group = f.get("params")
    if not isinstance(group, h5py.Group):
        return {}
    params = {}
    for key, ds in group.items():
        if not isinstance(ds, h5py.Dataset):
            continue
        if ds.dtype.kind not in "fiub" or ds.ndim == 0 or ds.shape[0] != n:
            raise DataError(
                f"dataset 'params/{key}' has shape {ds.shape} and dtype {ds.dtype}; expected a "
                f"numeric array with {n} rows (one per image).",
                path,
            )
        params[key] = ds
    return params


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_fits(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # we raise our own error
            warnings.simplefilter("ignore", AstropyUserWarning)  # "may have been truncated": same
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    if not hdu.is_image or int(hdu.header.get("NAXIS", 0)) < 2:
                        continue
                    _check_fits_size(hdu, path)
                    if hdu.data is not None and hdu.data.ndim >= 2:
                        return np.asarray(hdu.data)
    except DataError:
        raise
    except (OSError, ValueError, TypeError, EOFError, KeyError, IndexError) as exc:
        raise DataError(
            f"not a readable FITS file ({_one_line(exc)}); it may be corrupt or truncated.", path
        ) from exc
    raise DataError(
        "FITS file has no image data (no HDU with a 2-D or higher array); point to a FITS "
        "image or cube.",
        path,
    )


GZIP_MAX_RATIO = 1032  # deflate cannot expand a byte into more than about 1032 bytes


def _check_fits_size(hdu: Any, path: Path) -> None:
    """Refuse an image HDU whose header declares more data than the file can hold or than
    the memory available, before astropy allocates it (NAXIS1 = NAXIS2 = 10**6: 3.6 TiB)."""
    header = hdu.header
    axes = [int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]
    if min(axes) < 0:
        raise DataError(f"FITS header declares negative axis lengths {axes}.", path)
    declared = abs(int(header["BITPIX"])) // 8 * math.prod(axes)
    shape = tuple(reversed(axes))
    if not isinstance(hdu, fits.CompImageHDU):  # tile-compressed data may be much smaller
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":  # gzip: the data cannot exceed the deflate limit
                size *= GZIP_MAX_RATIO
        room = size - int(hdu.fileinfo()["datLoc"])
        _check_declared_size(declared, room, path, f"truncated FITS image of shape {shape}")
    require_memory(declared, f"the FITS image of shape {shape}", path=path)


def _open_fits(path: Path, labels: Any, class_names: Any) -> Source:
    data = _read_fits(path)
    return _ArraySource(path, "fits", data, labels, class_names)


# --- CIFAR-10 (official ``cifar-10-batches-py`` layout) -------------------------------------

_CIFAR_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),  # how Python 3 protocol-2 pickles rebuild ``bytes``; data only
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild only plain containers and numeric numpy arrays.

    The official CIFAR-10 python files are pickles. A general unpickler runs arbitrary code;
    this one refuses every global but the three numpy constructors an array needs, so a
    tampered file fails loudly instead of executing anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)


# what a refused or malformed pickle raises (the unpickler above builds only arrays)
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    MemoryError,
)


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(
            "missing CIFAR-10 batch file; expected the official cifar-10-batches-py layout "
            "(data_batch_1..5, test_batch, batches.meta).",
            path,
        ) from None
    except _UNPICKLE_ERRORS as exc:
        raise DataError(f"not a valid CIFAR-10 batch file ({_one_line(exc)}).", path) from None
    if not isinstance(obj, dict):
        raise DataError("not a valid CIFAR-10 batch file (expected a dict).", path)
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data = obj.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError("CIFAR-10 batch has no uint8 (N, 3072) 'data' array.", path)
    try:
        labels = np.asarray(obj.get("labels", []), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"CIFAR-10 labels are not integers ({_one_line(exc)}).", path) from None
    if labels.shape != (len(data),):
        raise DataError(f"{len(data)} images but labels of shape {labels.shape}.", path)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError("CIFAR-10 labels must lie in 0..9.", path)
    obj["labels"] = labels
    return obj


def read_cifar10(
    root: str | Path, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read CIFAR-10 from the official ``cifar-10-batches-py`` folder without unsafe unpickling.

    Args:
        root: the ``cifar-10-batches-py`` folder, or a folder containing it.
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).

    Returns:
        images (N, 3, 32, 32) float32 in [0, 1], labels (N,) int64, class names.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError("no such CIFAR-10 folder (official cifar-10-batches-py layout).", root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}.", root)
    batches = [_load_cifar_batch(root / name) for name in names]
    meta_path = root / "batches.meta"
    meta = _load_cifar_batch_meta(meta_path)
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    return images.astype(np.float32) / 255.0, labels, meta


def _load_cifar_batch_meta(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            meta = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, *_UNPICKLE_ERRORS) as exc:
        raise DataError(f"cannot read CIFAR-10 class names ({_one_line(exc)}).", path) from None
    if isinstance(meta, dict):
        meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError("CIFAR-10 batches.meta has no list of 10 'label_names'.", path)
    return _class_name_list(names, path, "'label_names'")
