"""A simulated crash of a training run, for the resume tests: ``pretrain(..., on_step=crash_at(k))``
raises :class:`Crash` right after optimiser step ``k`` (its checkpoint, if any, is written)."""

from __future__ import annotations

from collections.abc import Callable


class Crash(Exception):
    """Raised from ``on_step`` to kill a run like a crash."""


def crash_at(k: int) -> Callable[[int, dict], None]:
    """An ``on_step(step, record)`` hook that raises :class:`Crash` at step ``k``."""

    def on_step(step: int, record: dict) -> None:
        if step == k:
            raise Crash(f"killed at step {step}")

    return on_step
