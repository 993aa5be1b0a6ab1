"""Crashes of a training run, for the resume tests: ``pretrain(..., on_step=crash_at(k))``
raises :class:`Crash` right after optimiser step ``k`` (its checkpoint, if any, is written);
:func:`kill_and_resume` SIGKILLs a run in a fresh interpreter and resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deeplense_ssl.checkpoint import load_checkpoint
from deeplense_ssl.runs import CHECKPOINT_FILE


class Crash(Exception):
    """Raised from ``on_step`` to kill a run like a crash."""


def crash_at(k: int) -> Callable[[int, dict], None]:
    """An ``on_step(step, record)`` hook that raises :class:`Crash` at step ``k``."""

    def on_step(step: int, record: dict) -> None:
        if step == k:
            raise Crash(f"killed at step {step}")

    return on_step


REPO = Path(__file__).resolve().parents[1]


def fresh_run(script: str, cfg: Any, pause: str) -> subprocess.Popen:
    """``script`` (reads ``PretrainConfig(**json.loads(argv[1]))`` and a pause in seconds after
    each step from ``argv[2]``) in a fresh interpreter, as a user's runs are."""
    args = [sys.executable, "-c", script, json.dumps(vars(cfg)), pause]
    return subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)})


def kill_and_resume(
    script: str, make_cfg: Callable[..., Any], root: Path, kill_after: int
) -> tuple[Path, Path, int]:
    """A reference run, a run SIGKILLed once its checkpoint holds step ``kill_after`` or later,
    and that run resumed, each in a fresh interpreter (:func:`fresh_run`).

    Args:
        script: the training script; make_cfg: ``make_cfg(out, resume=...)`` -> config;
        root: where the ``ref`` and ``killed`` run folders go; kill_after: the step.

    Returns:
        ``(reference run, killed-and-resumed run, checkpoint step at the kill)``.
    """
    ref, killed = root / "ref", root / "killed"
    assert fresh_run(script, make_cfg(ref), "0").wait(timeout=300) == 0
    proc = fresh_run(script, make_cfg(killed), "0.4")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = killed / CHECKPOINT_FILE
            if ckpt.exists() and load_checkpoint(ckpt)["step"] >= kill_after:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the training subprocess ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = int(load_checkpoint(killed / CHECKPOINT_FILE)["step"])
    assert fresh_run(script, make_cfg(killed, resume=True), "0").wait(timeout=300) == 0
    return ref, killed, step_at_kill
