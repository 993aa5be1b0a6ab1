"""Atomic torch checkpoints, RNG states and the pretrained backbone of a pretrain run folder.

The run-folder layout (file names, ``config.json``) lives in :mod:`deeplense_ssl.runs`; import
the names from there.

Every checkpoint holds only tensors and plain Python types (dict, list, str, int, float, bool,
None) so that it loads with ``torch.load(..., weights_only=True)``: random-number-generator states
and the config are converted to tensors / plain types by :func:`capture_rng_state` and
:func:`config_to_dict`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import backbone_state_dict_for_torchvision, build_backbone
from .errors import CheckpointError
from .io import atomic_output
from .runs import BACKBONE_FILE, read_backbone_spec, read_run_config

CHECKPOINT_FORMAT = "deeplense_ssl.pretrain_checkpoint.v2"
"""Format of the pretraining checkpoints written now: the method's whole ``state_dict``."""
CHECKPOINT_FORMAT_V1 = "deeplense_ssl.pretrain_checkpoint.v1"
"""Checkpoints before per-method state (``backbone`` and ``head`` state dicts); still read."""
CHECKPOINT_FORMATS = (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_V1)


# --------------------------------------------------------------------------- atomic save / load


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (via :func:`deeplense_ssl.io.atomic_output`).

    A reader (or a resumed run after SIGKILL) sees either the previous complete file or the new
    complete file, never a partial one (temp file + fsync + ``os.replace`` + folder fsync).

    Args:
        path: final file name (e.g. ``run/checkpoint.pt``); its folder is created if needed.
        state: a mapping of tensors and plain Python types (it must load with
            ``weights_only=True``).

    Returns:
        The final path.
    """
    final = Path(path)
    with atomic_output(final) as tmp:
        torch.save(dict(state), tmp)
    return final


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, expect_format: bool = True
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``"cpu"`` by default).
        expect_format: check that it is a deeplense_ssl pretrain checkpoint (``format`` key).

    Raises:
        CheckpointError: missing, unreadable, not a weights-only file, or a foreign checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals...
        raise CheckpointError(
            f"{path}: cannot load as a weights-only torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})."
        ) from exc
    if expect_format and (
        not isinstance(state, dict) or state.get("format") not in CHECKPOINT_FORMATS
    ):
        raise CheckpointError(
            f"{path}: not a deeplense_ssl pretrain checkpoint (expected format "
            f"{' or '.join(CHECKPOINT_FORMATS)})."
        )
    return state


def load_state_dict_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a plain ``state_dict`` file (e.g. ``backbone.pt``) with ``weights_only=True``.

    Raises:
        CheckpointError: missing or unreadable file, or not a mapping of tensors.
    """
    state = load_checkpoint(path, map_location, expect_format=False)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors).")
    return state


# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The torch, CUDA, NumPy (legacy global) and Python RNG states as tensors / plain types.

    Returns:
        ``{"torch": uint8 tensor, "cuda": [uint8 tensor per device], "numpy": {...},
        "python": {...}}``, safe for ``weights_only=True`` loading.
    """
    np_state = np.random.get_state()  # noqa: NPY002 (legacy global state is what we restore)
    # the global RandomState is MT19937: (name, keys, pos, has_gauss, cached_gaussian)
    assert isinstance(np_state, tuple)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Only a process that has used CUDA has CUDA generator state worth keeping; asking
        # otherwise would initialise CUDA (memory on every GPU) in CPU runs on a GPU node.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng_state`.

    CUDA states are restored only when the same number of devices is visible.
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))


# --------------------------------------------------------------------------- run folders


def load_pretrained_backbone(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the pretrained backbone of a finished pretrain run.

    Args:
        run_dir: a folder written by :func:`deeplense_ssl.training.pretrain`.
        map_location: where the weights are loaded.

    Returns:
        ``(backbone, info)``: the features-only backbone (``backbone(x)`` maps
        ``(B, in_chans, H, W)`` to ``(B, feature_dim)``) with its pretrained weights, in eval
        mode, and ``info`` with keys ``backbone`` (registry name), ``stem``, ``in_chans``,
        ``feature_dim``, ``config`` (the pretrain config dict), ``normalize``, ``image_size``
        (``None``: native size), ``nan_policy``, ``input_shape`` ``[C, H, W]`` seen in
        pretraining, ``method``, ``step``, ``epoch`` and ``deeplense_ssl_version``.

    Raises:
        CheckpointError: missing or foreign folder, unfinished run (no ``backbone.pt``; resume
            it), or weights that do not match the recorded backbone.
    """
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir)
    spec = read_backbone_spec(run_dir)
    weights = run_dir / BACKBONE_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{run_dir}: no {BACKBONE_FILE}: the pretraining did not finish. Resume it with "
            "`deeplense-ssl pretrain ... --resume` (same --out)."
        )
    state = load_state_dict_file(weights, map_location)
    backbone = build_backbone(spec["name"], in_chans=int(spec["in_chans"]), stem=spec["stem"])
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: weights do not match backbone {spec['name']!r} "
            f"(stem={spec['stem']!r}, in_chans={spec['in_chans']}): {str(exc).splitlines()[0]}"
        ) from exc
    backbone.to(map_location).eval()
    cfg = meta["config"]
    resolved = meta.get("resolved", {})
    info = {
        "backbone": spec["name"],
        "stem": spec["stem"],
        "in_chans": int(spec["in_chans"]),
        "feature_dim": int(spec["feature_dim"]),
        "config": cfg,
        "normalize": cfg.get("normalize"),
        "image_size": cfg.get("image_size"),
        "nan_policy": cfg.get("nan_policy"),
        "input_shape": resolved.get("input_shape"),
        "method": cfg.get("method"),
        "step": resolved.get("final_step"),
        "epoch": resolved.get("final_epoch"),
        "deeplense_ssl_version": meta.get("deeplense_ssl_version"),
    }
    return backbone, info


def backbone_state_for_file(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The ``backbone.pt`` content: torchvision key layout (minus ``fc``), CPU tensors."""
    return backbone_state_dict_for_torchvision(backbone)
