"""Checkpoint contents of a pretraining run, the resume policy and old-format upgrades.

A checkpoint (``checkpoint.pt``, format :data:`CHECKPOINT_FORMAT`) holds the whole method state
(``method``: backbone, heads, target networks, centres: ``Method.state_dict()``), the
optimiser, scheduler and grad-scaler states, every process's RNG states and the position in
the data order; ``resume=True`` restores all of it and continues bitwise.

Checkpoints of format ``...v1`` (package 0.x before the methods redesign) stored ``backbone``
and ``head`` separately; :func:`method_state` upgrades them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_V1, load_checkpoint
from ..errors import CheckpointError
from ..runs import BACKBONE_FILE, CHECKPOINT_FILE, CONFIG_FILE

RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "resume"})
"""Config fields that may differ between a checkpoint and the run resuming it."""

MUST_MATCH_ON_RESUME = ("world_size", "n_train", "input_shape")
"""Resolved values that a resume needs unchanged (same data and number of processes)."""


def method_state(state: dict[str, Any], path: Path) -> dict[str, Tensor]:
    """The ``Method.state_dict()`` stored in checkpoint ``state`` (any known format).

    Raises:
        CheckpointError: a format this version cannot read.
    """
    fmt = state.get("format")
    if fmt == CHECKPOINT_FORMAT:
        return state["method"]
    if fmt == CHECKPOINT_FORMAT_V1:
        return {
            **{f"backbone.{k}": v for k, v in state["backbone"].items()},
            **{f"head.{k}": v for k, v in state["head"].items()},
        }
    raise CheckpointError(
        f"{path}: checkpoint format {fmt!r} (written by deeplense_ssl "
        f"{state.get('deeplense_ssl_version', '?')}) is not one this version reads "
        f"({CHECKPOINT_FORMAT}, {CHECKPOINT_FORMAT_V1}); use that version, or start a new run."
    )


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a pretraining checkpoint of any known format (``weights_only=True``)."""
    state = load_checkpoint(path, expect_format=False)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a deeplense_ssl pretrain checkpoint.")
    method_state(state, path)  # raises for unknown formats
    return state


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every config field that differs, except resumable ones."""
    keys = sorted((set(old) | set(new)) - RESUMABLE_CHANGES)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, cfg_dict: dict[str, Any], resume: bool) -> dict | None:
    """Apply the run-folder policy; return the checkpoint to resume from (or ``None``).

    Raises:
        CheckpointError: a finished or started run without ``resume``, or a resume whose
            config differs in anything but ``epochs`` / ``max_steps``.
    """
    if not resume:
        for name in (CHECKPOINT_FILE, BACKBONE_FILE):
            if (run_dir / name).exists():
                raise CheckpointError(
                    f"{run_dir} already holds a pretraining run ({name}); pass --resume to "
                    "continue it, or choose another --out."
                )
        return None
    state, old = _previous_config(run_dir)
    if old is None:
        return None  # nothing to resume: a fresh run
    diff = config_diff(old, cfg_dict)
    if diff:
        raise CheckpointError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's "
            f"({'; '.join(diff)}). Only epochs and max_steps may change; use another --out "
            "for a new run."
        )
    return state


def _previous_config(run_dir: Path) -> tuple[dict | None, dict | None]:
    ckpt = run_dir / CHECKPOINT_FILE
    if ckpt.exists():
        state = load_training_checkpoint(ckpt)
        return state, state["config"]
    if (run_dir / CONFIG_FILE).exists():  # killed before its first checkpoint
        try:
            return None, json.loads((run_dir / CONFIG_FILE).read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: unreadable run config.") from exc
    return None, None


def check_resolved(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a resume whose data or process count changed (:data:`MUST_MATCH_ON_RESUME`)."""
    for key in MUST_MATCH_ON_RESUME:
        if old[key] != new[key]:
            raise CheckpointError(
                f"cannot resume {run_dir}: {key} was {old[key]} and is now {new[key]} "
                "(same data and number of processes needed)."
            )
