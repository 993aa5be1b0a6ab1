"""Backbone registry: a name maps to a torchvision ResNet that returns features only.

Every backbone is a plain :class:`torchvision.models.ResNet` (random initialisation, weights are
never downloaded) with three changes:

* ``conv1`` takes ``in_chans`` input bands (1 for most lensing sets, 3 for CIFAR / g,r,i);
* the *stem* (``conv1`` + ``maxpool``) is one of :data:`STEMS`;
* ``fc`` is :class:`torch.nn.Identity`, so ``forward`` maps ``(batch, in_chans, height, width)``
  to ``(batch, feature_dim)`` features (512 for ResNet-18/34, 2048 for ResNet-50).

Stems (output stride of the stem, i.e. the spatial size entering ``layer1`` is ``H / stride``):

======== ========================== ======== ==================================================
stem     conv1                      maxpool  use
======== ========================== ======== ==================================================
imagenet 7x7, stride 2, padding 3   3x3/2    ImageNet default (He et al. 2016); stride 4
cifar    3x3, stride 1, padding 1   none     CIFAR recipe (SimCLR, Chen et al. 2020, App. B.9);
                                             stride 1, 16x the layer compute of ``imagenet``
small    3x3, stride 2, padding 1   none     64x64 lensing images: stride 2 keeps 32x32 maps in
                                             ``layer1`` (ring at 12-17 px radius stays resolved)
                                             at ~1/4 the layer compute of ``cifar``
======== ========================== ======== ==================================================

Measured by ``benchmarks/stem_speed.py`` (``benchmarks/README.md``, "Backbone stems"; ResNet-18,
64x64, 1 band, CPU training step): ``small`` is 2.7-5x faster than ``cifar`` (0.55 vs 2.2 GMAC per
image), about 3x slower than ``imagenet`` (0.14 GMAC), and 1.07-1.13x faster than the other way
to get 32x32 ``layer1`` maps (the ``cifar`` conv followed by the max-pool).

Because the network *is* a torchvision ResNet, its ``state_dict`` loads into
``torchvision.models.resnetXX(num_classes=n)`` once conv1/maxpool are replaced the same way;
only ``fc.weight`` / ``fc.bias`` are missing (:func:`torchvision_resnet_for` builds that model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet

from .errors import ConfigError

BACKBONES: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}
"""Registry of backbone names to torchvision ResNet constructors (called with ``weights=None``)."""

STEMS = ("imagenet", "cifar", "small")
"""Available stems, see the module docstring."""

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
"""Width of the pooled features of each backbone."""


def _check(name: str, in_chans: int, stem: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r} is not one of {', '.join(BACKBONES)}.")
    if stem not in STEMS:
        raise ConfigError(f"stem={stem!r} is not one of {', '.join(STEMS)}.")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans must be a positive integer, got {in_chans!r}.")


def _apply_stem(model: resnet.ResNet, in_chans: int, stem: str) -> None:
    """Replace ``conv1`` (and ``maxpool``) of ``model`` in place for ``in_chans`` and ``stem``."""
    if stem == "imagenet":
        conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif stem == "cifar":
        conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:  # small
        conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=2, padding=1, bias=False)
        model.maxpool = nn.Identity()
    # Same initialisation torchvision uses for every conv of a ResNet.
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv1


def build_backbone(name: str = "resnet18", in_chans: int = 1, stem: str = "imagenet") -> nn.Module:
    """Build a randomly initialised, features-only torchvision ResNet.

    Args:
        name: a key of :data:`BACKBONES` (``resnet18``, ``resnet34``, ``resnet50``).
        in_chans: number of input bands (channels) of the images.
        stem: one of :data:`STEMS` (``imagenet``, ``cifar``, ``small``).

    Returns:
        A :class:`torchvision.models.ResNet` with ``fc = nn.Identity()``. ``forward`` maps
        ``(batch, in_chans, height, width)`` float images to ``(batch, feature_dim)`` features.
        Extra attributes: ``feature_dim`` (int) and ``spec`` (dict with ``name``, ``in_chans``,
        ``stem``, ``feature_dim``; enough to rebuild the network with :func:`build_backbone`).

    Raises:
        ConfigError: unknown name or stem, or a non-positive ``in_chans``.
    """
    _check(name, in_chans, stem)
    model = BACKBONES[name](weights=None)
    _apply_stem(model, in_chans, stem)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    model.feature_dim = feature_dim
    model.spec = {"name": name, "in_chans": in_chans, "stem": stem, "feature_dim": feature_dim}
    return model


def backbone_state_dict_for_torchvision(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of a backbone as a ``state_dict`` for a plain torchvision ResNet of the same shape.

    The keys are exactly torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``...),
    without ``fc.*``; load them with ``model.load_state_dict(sd, strict=False)`` into
    :func:`torchvision_resnet_for` and only ``fc.weight`` / ``fc.bias`` are reported missing.
    Wrappers from ``torch.compile`` (``_orig_mod.``) and DDP (``module.``) are unwrapped.

    Args:
        backbone: a network from :func:`build_backbone` (possibly compiled or DDP-wrapped).

    Returns:
        An ordered dict of detached CPU tensors.
    """
    inner = backbone
    for attr in ("_orig_mod", "module"):
        inner = getattr(inner, attr, inner)
    return {
        k: v.detach().cpu().clone()
        for k, v in inner.state_dict().items()
        if not k.startswith("fc.")
    }


def torchvision_resnet_for(spec: dict[str, Any], num_classes: int) -> resnet.ResNet:
    """A plain torchvision ResNet with a ``num_classes`` ``fc``, shaped like the backbone ``spec``.

    Args:
        spec: ``backbone.spec`` (needs ``name``, ``in_chans``, ``stem``).
        num_classes: output width of the new, randomly initialised ``fc`` layer.

    Returns:
        ``torchvision.models.<name>(weights=None, num_classes=num_classes)`` with conv1/maxpool
        replaced for ``in_chans`` and ``stem``; it accepts the output of
        :func:`backbone_state_dict_for_torchvision` with ``strict=False`` (missing: ``fc.*``).
    """
    name, in_chans, stem = spec["name"], int(spec["in_chans"]), spec["stem"]
    _check(name, in_chans, stem)
    model = BACKBONES[name](weights=None, num_classes=num_classes)
    _apply_stem(model, in_chans, stem)
    return model
