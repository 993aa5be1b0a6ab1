"""Execution environment: device choice, seeding and CPU thread settings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a torch device (auto picks CUDA when
    available).

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:<current device>``):
    ``torch.device("cuda") != torch.device("cuda:0")``, and tensors report the indexed form, so
    an unindexed device would make ``tensor.device == device`` checks fail on the GPU.

    Raises:
        ConfigError: CUDA asked for but not available, or an index past the visible GPUs.
    """
    from .errors import ConfigError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from exc
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} was asked for but no CUDA GPU is available; use auto/cpu."
        )
    n_gpus = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= n_gpus:
        raise ConfigError(
            f"--device {device}: only {n_gpus} GPU(s) are visible (cuda:0 .. cuda:{n_gpus - 1})."
        )
    return torch.device("cuda", index)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (legacy global state used by third parties)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
