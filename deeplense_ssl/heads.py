"""Heads put on top of backbone features: the SSL projection head and classifier heads.

Heads are small :class:`torch.nn.Module` s composed with a backbone where they are trained
(``methods/`` / ``finetuning.py``); there is no monolithic model class.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import ConfigError

CLASSIFIER_HEADS = ("linear", "mlp", "full", "lp-ft")
"""Classifier head names of :func:`build_classifier_head` (``full`` and ``lp-ft`` also train
the backbone; ``lp-ft`` fits the linear probe first and fine-tunes everything from it)."""

BACKBONE_TRAINING_HEADS = ("full", "lp-ft")
"""The heads of :data:`CLASSIFIER_HEADS` whose runs train the backbone too."""


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


class ProjectionHead(nn.Module):
    """SimCLR projection head ``g(h)``: an MLP from backbone features to the contrastive space.

    ``num_layers`` linear layers; every layer except the last is followed by BatchNorm1d (if
    ``batch_norm``) and ReLU. With the defaults it is the SimCLR head
    ``Linear(in, 512) -> BN -> ReLU -> Linear(512, 128)`` (Chen et al. 2020, "A Simple Framework
    for Contrastive Learning of Visual Representations", Sec. 2.1; BN as in SimCLR's code).
    ``num_layers=1`` is a single linear projection.

    Args:
        in_dim: backbone feature width (``backbone.feature_dim``).
        hidden_dim: width of the hidden layers.
        out_dim: width of the projection ``z`` fed to the loss.
        num_layers: number of linear layers (>= 1).
        batch_norm: BatchNorm1d after each hidden linear layer.
        output_batch_norm: a BatchNorm1d without affine parameters on the output too (SimSiam,
            Chen & He 2021, Sec. 4.4: "BN is applied to each fc layer, including its output
            fc"); the last linear layer then has no bias.

    Shapes:
        ``(batch, in_dim) -> (batch, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        output_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not output_batch_norm))
        if output_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, h: Tensor) -> Tensor:
        """Project features ``h`` of shape ``(batch, in_dim)`` to ``(batch, out_dim)``."""
        return self.layers(h)


class LinearHead(nn.Module):
    """Linear classifier (linear probe; also the head of the rotation / blur pretexts).

    Args:
        in_dim: feature width.
        num_classes: number of output logits.

    Shapes:
        ``(batch, in_dim) -> (batch, num_classes)`` logits.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, num_classes=num_classes)
        self.fc = nn.Linear(in_dim, num_classes)
        self.in_dim, self.num_classes = in_dim, num_classes

    def forward(self, h: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` for features ``(batch, in_dim)``."""
        return self.fc(h)


class MLPHead(nn.Module):
    """Two-layer classifier ``Linear -> ReLU -> Dropout -> Linear``.

    No BatchNorm, so it works with any batch size (including 1 in training mode).

    Args:
        in_dim: feature width.
        num_classes: number of output logits.
        hidden_dim: hidden width.
        dropout: dropout probability before the last layer, in [0, 1).

    Shapes:
        ``(batch, in_dim) -> (batch, num_classes)`` logits.
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden_dim: int = 512, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, num_classes=num_classes, hidden_dim=hidden_dim)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
        self.in_dim, self.num_classes = in_dim, num_classes

    def forward(self, h: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` for features ``(batch, in_dim)``."""
        return self.layers(h)


ClassifierHead = LinearHead
"""Alias: the rotation / blur pretext classifiers are linear heads on the features."""


def build_classifier_head(
    head: str, in_dim: int, num_classes: int, hidden_dim: int = 512, dropout: float = 0.0
) -> nn.Module:
    """Classifier head by name, as ``FinetuneConfig.head`` spells it.

    Args:
        head: one of :data:`CLASSIFIER_HEADS`: ``linear``, ``full`` or ``lp-ft`` (a
            :class:`LinearHead`; with the last two the backbone is trained too, which is the
            caller's business), or ``mlp`` (an :class:`MLPHead`).
        in_dim: feature width.
        num_classes: number of classes.
        hidden_dim: hidden width of the ``mlp`` head.
        dropout: dropout of the ``mlp`` head.

    Raises:
        ConfigError: unknown head name.
    """
    if head in ("linear", *BACKBONE_TRAINING_HEADS):
        return LinearHead(in_dim, num_classes)
    if head == "mlp":
        return MLPHead(in_dim, num_classes, hidden_dim=hidden_dim, dropout=dropout)
    raise ConfigError(f"head={head!r} is not one of {', '.join(CLASSIFIER_HEADS)}.")
