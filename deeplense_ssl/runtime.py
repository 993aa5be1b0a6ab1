"""Execution environment: device choice, mixed precision, seeding and CPU thread settings."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
"""Device names a config accepts (the API also takes ``cuda:N``); ``auto`` picks CUDA if any."""

AMP_MODES = ("auto", "bf16", "fp16", "off")
"""Mixed-precision modes, see :func:`resolve_amp_dtype`."""


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a torch device (auto picks CUDA when
    available).

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:<current device>``):
    ``torch.device("cuda") != torch.device("cuda:0")``, and tensors report the indexed form, so
    an unindexed device would make ``tensor.device == device`` checks fail on the GPU.

    Raises:
        ConfigError: CUDA asked for but not available, or an index past the visible GPUs.
    """
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles); without either,
    bf16 autocast is emulated and slower than float32."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an :data:`AMP_MODES` name on ``device`` (None: full precision).

    ``auto``: bf16 on a GPU that has it natively (Ampere and later), fp16 with loss scaling on
    older GPUs (bf16 would be emulated there, slowly); on the CPU bf16 where it is native
    (:func:`cpu_has_native_bf16`: about 1.9x the images per second of float32 for a ResNet-18
    on 64 px, with the same probe quality, benchmarks/RESULTS.md), else full precision.

    Raises:
        ConfigError: ``amp`` is not one of :data:`AMP_MODES`.
    """
    if amp not in AMP_MODES:
        raise ConfigError(f"amp={amp!r} is not one of {', '.join(AMP_MODES)}.")
    if amp == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native_bf16 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def amp_name(dtype: torch.dtype | None) -> str:
    """How a run records its autocast dtype: ``bfloat16`` / ``float16``, or ``off``."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "off"


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (legacy global state used by third parties)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
