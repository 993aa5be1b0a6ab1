"""Turn library errors into one clear CLI message and a non-zero exit, never a traceback.

SIGTERM (sent by batch schedulers, ``timeout`` and ``kill``) and SIGHUP are delivered like
Ctrl-C: :class:`Terminated` is a ``KeyboardInterrupt``, so every cleanup path of the library
(temporary files of :func:`deeplense_ssl.io.atomic_output`, partial outputs) runs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import click

from deeplense_ssl.errors import DeepLenseError

CLEANUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(KeyboardInterrupt):
    """A termination signal, raised in the main process where it arrived.

    Args:
        signum: the signal number (``signal.SIGTERM`` ...).
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def handle_signals_like_ctrl_c() -> Callable[[], None]:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in this process.

    Signals whose action is not the default (e.g. SIGHUP ignored under ``nohup``) are left
    alone. Processes forked later (worker pools) keep the default action: the handler kills them
    as before instead of raising inside a worker.

    Returns:
        A function restoring the previous handlers.
    """
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked worker: terminate as usual
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    previous: dict[int, Any] = {}
    for signum in CLEANUP_SIGNALS:
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread, or not supported here
            continue

    def restore() -> None:
        for signum, old in previous.items():
            try:
                signal.signal(signum, old)
            except (ValueError, OSError):
                continue

    return restore


def run_with_clean_errors(group: click.Group, argv: list[str] | None) -> int:
    """Invoke ``group`` and map known failures to exit codes.

    Returns:
        0 on success, 1 for a :class:`DeepLenseError`, a missing optional dependency, a failed
        file operation or a file that ends too early, 2 for usage errors, 130 on Ctrl-C and
        128 + the signal number on SIGTERM / SIGHUP.
    """
    try:
        group.main(args=argv, prog_name="deeplense-ssl", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click wraps Ctrl-C and EOFError in Abort
        return _aborted(exc.__cause__ or exc.__context__)
    except KeyboardInterrupt as exc:
        return _aborted(exc)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except DeepLenseError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    except ModuleNotFoundError as exc:
        click.echo(
            f"Error: missing optional dependency {exc.name!r}. "
            "Install it (e.g. pip install 'deeplense-ssl[sim]' for lenstronomy).",
            err=True,
        )
        return 1
    except FileNotFoundError as exc:
        click.echo(f"Error: {exc.filename or exc}: no such file or directory.", err=True)
        return 1
    except OSError as exc:  # permission denied, disk full, ...: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(
            f"Error: {where}{exc.strerror or exc}. Check the path and its permissions.", err=True
        )
        return 1
    return 0


def _aborted(cause: BaseException | None) -> int:
    """Message and exit code for an interrupted command."""
    if isinstance(cause, Terminated):
        name = signal.Signals(cause.signum).name
        click.echo(f"Terminated by {name}; no partial output was kept.", err=True)
        return 128 + cause.signum
    if isinstance(cause, KeyboardInterrupt):
        click.echo("Interrupted; no partial output was kept.", err=True)
        return 130
    if isinstance(cause, EOFError):  # e.g. a zero-byte file read with numpy or pickle
        detail = f" ({cause})" if str(cause) else ""
        click.echo(
            f"Error: a file ended unexpectedly{detail}: it is empty or truncated; re-create it.",
            err=True,
        )
        return 1
    click.echo("Aborted.", err=True)
    return 130
