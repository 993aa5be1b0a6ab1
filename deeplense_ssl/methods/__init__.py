"""Self-supervised methods, one file per family, each a registered :class:`Method`.

Every module of this package is imported here, so a new method is one new file (a
:class:`Method` subclass decorated with :func:`register`) plus its test. ``METHOD_NAMES`` is the
one list of ``--method`` choices; the config and the CLI read it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from ..transforms import ViewAugmenter
from .base import Method, MethodSettings, ViewOptions, get_method, method_names, register

for _module in pkgutil.iter_modules(__path__):  # every file of this package registers its methods
    importlib.import_module(f"{__name__}.{_module.name}")

METHOD_NAMES: tuple[str, ...] = method_names()
"""Every registered method name, in the order the README lists them."""


def build_view_transform(
    method: str,
    in_chans: int,
    image_size: int,
    *,
    augment: str = "lensing",
    blur_sigmas_px: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
    noise_std: float = 0.1,
) -> ViewAugmenter:
    """The per-view augmentation of ``method`` (see each method's ``view_transform``).

    Raises:
        ConfigError: unknown method or preset.
    """
    views = ViewOptions(augment, tuple(float(s) for s in blur_sigmas_px), float(noise_std))
    return get_method(method).view_transform(in_chans, image_size, views)


__all__ = [
    "METHOD_NAMES",
    "Method",
    "MethodSettings",
    "build_view_transform",
    "get_method",
    "method_names",
    "register",
]
