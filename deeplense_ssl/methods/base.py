"""The :class:`Method` base class: what every self-supervised method owns, and the registry.

A method is one ``nn.Module`` that owns, in one place:

* the backbone it trains (``self.backbone``) and its own heads (projection, predictor, ...);
* the view transform (:meth:`Method.view_transform`, a batched on-device augmenter);
* the training loss, split in three calls so that the training loop can run the network once
  per step under DDP and autocast: :meth:`make_inputs` (augmentation, float32, outside
  autocast) -> :meth:`forward` (the one network call) -> :meth:`loss` (float32 scalar);
* every piece of state (target networks, centres, ...) as parameters or buffers, so that
  ``state_dict()`` is the whole method state and a checkpoint resumes it bitwise;
* :meth:`after_step`, called after each optimiser step (EMA updates, schedules).

The training loop (``deeplense_ssl.training``) knows nothing about any particular method. A new
method is one file in this package: subclass :class:`Method`, decorate it with
:func:`register`, and import the file in ``methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..heads import ProjectionHead
from ..transforms import ViewAugmenter


class MethodSettings(Protocol):
    """The pretraining settings a method may read (``PretrainConfig`` provides them all)."""

    @property
    def method(self) -> str: ...

    @property
    def temperature(self) -> float: ...

    @property
    def n_views(self) -> int: ...

    @property
    def proj_hidden_dim(self) -> int: ...

    @property
    def proj_out_dim(self) -> int: ...

    @property
    def proj_layers(self) -> int: ...

    @property
    def augment(self) -> str: ...

    @property
    def blur_sigmas_px(self) -> Sequence[float]: ...

    @property
    def noise_std(self) -> float: ...

    @property
    def paired_data(self) -> str | None: ...

    @property
    def ema_momentum(self) -> float | None: ...

    @property
    def n_local_views(self) -> int: ...

    @property
    def local_view_size(self) -> int | None: ...

    @property
    def dino_out_dim(self) -> int: ...

    @property
    def teacher_temperature(self) -> float: ...


@dataclass(frozen=True)
class ViewOptions:
    """The settings a view transform may read (from the config; see each ``view_transform``)."""

    augment: str = "lensing"
    blur_sigmas_px: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    noise_std: float = 0.1


class Method(nn.Module):
    """Base class of self-supervised methods (see the module docstring for the contract).

    Args:
        backbone: features-only network with ``feature_dim`` (``backbones.build_backbone``).
        cfg: the pretraining settings (:class:`MethodSettings`).
        in_chans: image bands.
        image_size: side of the square training images in pixels.
        distributed: gather or all-reduce batch statistics across ranks in the loss.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    backbone: nn.Module
    transform: ViewAugmenter  # one line: what the network learns (README, CLI help)
    supports_pairs: ClassVar[bool] = False  # can take its two views from paired renderings
    # optimiser and base learning rate (lr = base_lr * global batch / 256) when the config
    # leaves them unset: SGD 0.3 (SimCLR's, measured here), LARS for methods whose losses are
    # large and badly scaled for plain SGD (the solo-learn CIFAR recipes)
    default_optimizer: ClassVar[str] = "sgd"
    default_base_lr: ClassVar[float] = 0.3

    def __init__(
        self,
        backbone: nn.Module,
        cfg: MethodSettings,
        in_chans: int,
        image_size: int,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(getattr(backbone, "feature_dim"))  # noqa: B009 (a Module attr)
        views = ViewOptions(cfg.augment, tuple(cfg.blur_sigmas_px), cfg.noise_std)
        self.transform = self.view_transform(in_chans, image_size, views)
        self.distributed = distributed
        self.build(cfg, in_chans, image_size)

    # ---- what a subclass provides

    @classmethod
    def validate(cls, cfg: MethodSettings) -> None:
        """Raise :class:`ConfigError` for settings this method cannot train with."""

    @classmethod
    def fill_defaults(cls, cfg: Any) -> None:
        """Set the config's ``optimizer`` / ``base_lr`` to this method's defaults where unset."""
        if cfg.optimizer is None:
            cfg.optimizer = cls.default_optimizer
        if cfg.base_lr is None:
            cfg.base_lr = cls.default_base_lr

    @classmethod
    def check_pairs(cls, cfg: MethodSettings) -> None:
        """Refuse paired data (``paired_data``) for a method that cannot use it."""
        if cfg.paired_data and not cls.supports_pairs:
            raise ConfigError(
                f"method {cls.name} cannot use --paired-data; methods with two views can: "
                f"{', '.join(n for n, c in _REGISTRY.items() if c.supports_pairs)}."
            )

    def build(self, cfg: MethodSettings, in_chans: int, image_size: int) -> None:
        """Create the method's heads, targets and losses (after the backbone and the view
        transform exist; ``self.distributed`` is set). Default: nothing."""

    def projection_head(self, cfg: MethodSettings) -> nn.Module:
        """The config's projection MLP on the backbone features (``proj_*`` settings)."""
        return ProjectionHead(
            self.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers
        )

    @classmethod
    def view_transform(cls, in_chans: int, image_size: int, views: ViewOptions) -> ViewAugmenter:
        """The per-view augmentation ``(B, C, H, W) -> (B, C, S, S)`` of this method.

        Default: the ``augment`` preset of :mod:`deeplense_ssl.transforms` (``lensing``:
        dihedral group, rotation, mild crops, flux scale, light blur and noise).
        """
        return ViewAugmenter(views.augment, in_chans, image_size)

    def make_inputs(self, x: Tensor) -> tuple[Any, Any]:
        """Batch -> ``(inputs, aux)``: network inputs and loss context.

        ``x`` is ``(B, C, H, W)``, or ``(B, 2, C, H, W)`` for paired data (two renderings of
        each scene, see :meth:`view_pair`).
        """
        raise NotImplementedError

    def view_pair(self, x: Tensor) -> list[Tensor]:
        """Two views of every image, ``[(B, C, S, S), (B, C, S, S)]``.

        Unpaired ``(B, C, H, W)``: two independent augmentations of each image. Paired
        ``(B, 2, C, H, W)`` (simulation-informed positives: the same lens and substructure
        rendered twice with another source position and noise): one augmentation of each
        rendering, so the positives differ by the source as well as by the augmentation.
        """
        if x.ndim == 5:
            return list(self.transform(torch.cat([x[:, 0], x[:, 1]])).chunk(2))
        return self.transform.views(x, 2)

    def forward(self, inputs: Any) -> Any:
        """The one network call of a training step (DDP wraps this)."""
        raise NotImplementedError

    def loss(self, outputs: Any, aux: Any) -> Tensor:
        """Scalar float32 training loss of the network ``outputs``."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (1-based) of ``total_steps``; default: nothing."""

    def export_backbone(self) -> nn.Module:
        """The backbone that downstream tasks use (``backbone.pt``, the kNN and collapse
        monitors): the trained one by default; a momentum teacher for DINO."""
        return self.backbone

    def embed(self, x: Tensor) -> Tensor:
        """Features ``(B, C, H, W) -> (B, feature_dim)`` of :meth:`export_backbone`."""
        return self.export_backbone()(x)


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered.")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The :class:`Method` subclass registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method={name!r} is not one of {', '.join(_REGISTRY)}.") from None


def chunked(net: Callable[[Tensor], Tensor], x: Tensor, chunks: int) -> Tensor:
    """``cat([net(part) for part in x.chunk(chunks)])``: one network pass per view.

    The contrastive methods pass each view through the network separately, as lightly's and
    most SimCLR implementations do (BatchNorm statistics are per view). On this CPU one pass
    over all ``n_views * B`` images was measured ~1.4x slower than ``n_views`` passes over
    ``B`` (ResNet-18, CIFAR stem, 32 px; larger activations fall out of cache).
    """
    if chunks == 1:
        return net(x)
    return torch.cat([net(part) for part in x.chunk(chunks)])
