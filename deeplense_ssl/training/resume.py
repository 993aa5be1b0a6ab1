"""Checkpoint contents of a pretraining run, the resume policy and old-format upgrades.

A checkpoint (``checkpoint.pt``, format :data:`CHECKPOINT_FORMAT`) holds the whole method state
(``method``: backbone, heads, target networks, centres: ``Method.state_dict()``), the
optimiser, scheduler and grad-scaler states, every process's RNG states and the position in
the data order; ``resume=True`` restores all of it and continues bitwise.

Checkpoints of format ``...v1`` (package 0.x before the methods redesign) stored ``backbone``
and ``head`` separately; :func:`method_state` upgrades them.

The resolved values of a run (``config.json`` and every checkpoint) include the fingerprint of
its training data (:func:`deeplense_ssl.training.data.data_fingerprint`); a resume on data whose
count, shape, dtype or sampled content differ is refused. Checkpoints written before the
fingerprint existed still resume (nothing to compare).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_V1, load_checkpoint
from ..config import PretrainConfig, config_to_dict
from ..errors import CheckpointError
from ..runs import BACKBONE_FILE, CHECKPOINT_FILE, CONFIG_FILE, PRETRAIN_KIND, read_json

RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_steps", "resume", "prefetch", "max_memory_gb", "log", "log_uri"}
)
"""Config fields that may differ between a checkpoint and the run resuming it: the schedule
length, how the data are fed (not a single batch changes) and where metrics are tracked."""

FIELD_DEFAULTS = config_to_dict(PretrainConfig())
"""Default of every config field: what a run written before a field existed used."""

MUST_MATCH_ON_RESUME = ("world_size", "n_train", "input_shape")
"""Resolved values that a resume needs unchanged (same data and number of processes)."""

FINGERPRINT_KEY = "data_fingerprint"
"""Resolved entry holding the training data's fingerprint (absent in older runs)."""


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


RESUME_ENTRIES = {
    "config": dict,
    "resolved": dict,
    "step": int,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "rng": list,
    "metrics_bytes": int,
}
"""What a checkpoint must hold to resume (every known format)."""


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a pretraining checkpoint of any known format (``weights_only=True``).

    Raises:
        CheckpointError: unreadable, an unknown format, or an entry a resume needs missing or
            of the wrong type (named).
    """
    state = load_checkpoint(path, expect_format=False)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a deeplense_ssl pretrain checkpoint.")
    method_state(state, path)  # raises for unknown formats
    for key, kind in RESUME_ENTRIES.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(
                f"{path}: checkpoint entry {key!r} is missing or not a {kind.__name__}; the file "
                "is damaged or not a pretraining checkpoint: start a new run (another --out)."
            )
    missing = [k for k in MUST_MATCH_ON_RESUME if k not in state["resolved"]]
    if missing:
        raise CheckpointError(
            f"{path}: checkpoint entry 'resolved' lacks {', '.join(missing)}; the file is "
            "damaged: start a new run (another --out)."
        )
    return state


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every config field that differs, except resumable ones.

    A field missing from ``old`` (added after the run started) counts as its default, so a new
    field left at its default does not block resuming an older run.
    """
    old = {**{k: v for k, v in FIELD_DEFAULTS.items() if k not in old and k in new}, **old}
    keys = sorted((set(old) | set(new)) - RESUMABLE_CHANGES)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, cfg_dict: dict[str, Any], resume: bool) -> dict | None:
    """Apply the run-folder policy; return the checkpoint to resume from (or ``None``).

    Raises:
        CheckpointError: a finished or started run without ``resume``, a resume whose config
            differs in anything but ``epochs`` / ``max_steps``, or a folder whose
            ``config.json`` is not a pretrain run's (a finetune run, a file of the user).
    """
    _refuse_foreign_config(run_dir)
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
        return None, read_json(run_dir / CONFIG_FILE, "run config", {"config": dict})["config"]
    return None, None


def _refuse_foreign_config(run_dir: Path) -> None:
    """A ``config.json`` in ``run_dir`` must be a pretrain run's: it is rewritten by the run."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    try:
        kind = read_json(path, "run config").get("kind")
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path} is not the config of a pretrain run ({exc}); a pretraining would overwrite "
            "it: choose another --out."
        ) from exc
    if kind != PRETRAIN_KIND:
        raise CheckpointError(
            f"{run_dir} holds a {kind or 'foreign'} {CONFIG_FILE} (kind={kind!r}), not a pretrain "
            "run; a pretraining would overwrite it: choose another --out."
        )


def check_resolved(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a resume whose data or process count changed (:data:`MUST_MATCH_ON_RESUME`)."""
    for key in MUST_MATCH_ON_RESUME:
        if old[key] != new[key]:
            raise CheckpointError(
                f"cannot resume {run_dir}: {key} was {old[key]} and is now {new[key]} "
                "(same data and number of processes needed)."
            )
    check_fingerprint(run_dir, old.get(FINGERPRINT_KEY), new.get(FINGERPRINT_KEY))


def check_fingerprint(run_dir: Path, old: dict | None, new: dict | None) -> None:
    """Refuse a resume whose training data differ from the run's (old runs have none).

    Args:
        run_dir: the run folder, for the message.
        old: the fingerprint recorded in the checkpoint (None: written before fingerprints).
        new: the fingerprint of the data loaded now.

    Raises:
        CheckpointError: count, image shape, dtype or sampled content differ (named).
    """
    if not old or not new:
        return
    changed = [k for k in ("n", "shape", "dtype") if old.get(k) != new.get(k)]
    what = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
    if not changed and old.get("sha256") != new.get("sha256"):
        what = "same size, different images or labels"
    if what:
        raise CheckpointError(
            f"cannot resume {run_dir}: the training data changed since the run started ({what}; "
            "the content of --data, or the options that load it). Resume with the data the "
            "run started on, or start a new run with another --out."
        )
