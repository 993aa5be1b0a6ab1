"""Execution environment: device choice, seeding and CPU thread settings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` to a torch device (auto picks CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use auto/cpu.")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (legacy global state used by third parties)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
