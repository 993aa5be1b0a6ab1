"""Exceptions raised by deeplense_ssl.

Every error raised for bad user input is a :class:`DeepLenseError` whose message names the file
(and the image index where there is one) and says what to do. The CLI turns these into one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations


class DeepLenseError(Exception):
    """Base class for errors caused by user input (data, configuration, checkpoints)."""


class DataError(DeepLenseError, ValueError):
    """Unreadable, malformed or inconsistent input data.

    Args:
        message: what is wrong and what to do about it.
        path: the offending file, if any.
        index: the offending image index inside that file, if any.
    """

    def __init__(self, message: str, path: object | None = None, index: int | None = None):
        self.path = None if path is None else str(path)
        self.index = index
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if index is not None:
                where += f" [image {index}]"
            where += ": "
        elif index is not None:
            where = f"[image {index}]: "
        super().__init__(where + message)


class OutputError(DeepLenseError, OSError):
    """An output file cannot be written: no space left, read-only folder, no permission.

    The message names the target file (never the temporary name it is written under) and the
    folder. It is also an :class:`OSError` (``errno`` is kept), so code that handles failed
    writes as ``OSError`` keeps working.

    Args:
        message: what failed and what to do about it.
        path: the target file.
        errno: the operating-system error number (e.g. ``errno.ENOSPC``), if known.
    """

    def __init__(self, message: str, path: object | None = None, errno: int | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.errno = errno


class ConfigError(DeepLenseError, ValueError):
    """Invalid configuration values or combinations."""


class CheckpointError(DeepLenseError, ValueError):
    """A checkpoint or run folder that cannot be used as asked."""


class TrainingDivergedError(DeepLenseError, RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class MissingDependencyError(DeepLenseError, ImportError):
    """An optional dependency (an extra such as ``sim`` for lenstronomy) is not installed."""
