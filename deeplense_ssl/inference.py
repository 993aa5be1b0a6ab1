"""One batched forward loop (embeddings, logits, probabilities) and loading a fine-tuned model.

Every pass of a network over a set of images without gradients (the pretraining kNN monitor,
the frozen-feature cache of fine-tuning, validation logits, evaluation scores, the report's
attribution probabilities) goes through :func:`forward_batches`: eval mode, ``torch.no_grad``,
fixed-size batches moved to the compute device, the training mode restored afterwards.

:class:`ClassifierModel` composes a backbone and a classifier head for inference, and
:func:`load_finetuned` rebuilds one from a finetune run folder's ``model.pt`` (weights-only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .backbones import build_backbone
from .checkpoint import load_checkpoint
from .errors import CheckpointError
from .heads import LinearHead, MLPHead
from .runs import BACKBONE_FILE, MODEL_FILE, MODEL_FORMAT, check_model_state

T = TypeVar("T")


class ClassifierModel(nn.Module):
    """A backbone and a classifier head composed for inference (evaluation, attribution).

    Args:
        backbone: features-only network, ``(B, C, H, W) -> (B, D)``.
        head: classifier, ``(B, D) -> (B, num_classes)`` logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.head(self.backbone(x))

    def embed(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of images ``(B, C, H, W)``."""
        return self.backbone(x)


def build_head(kind: str, in_dim: int, num_classes: int, hidden_dim: int) -> nn.Module:
    """``linear`` -> :class:`~deeplense_ssl.heads.LinearHead`, ``mlp`` -> ``MLPHead``."""
    if kind == "mlp":
        return MLPHead(in_dim, num_classes, hidden_dim=hidden_dim)
    return LinearHead(in_dim, num_classes)


def dihedral_views(x: Tensor) -> list[Tensor]:
    """The 8 rotations/reflections (dihedral group D4) of a batch ``(B, C, H, W)``."""
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    flipped = torch.flip(x, dims=(3,))
    views += [torch.rot90(flipped, k, dims=(2, 3)) for k in range(4)]
    return views


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def forward_batches(
    model: nn.Module,
    fn: Callable[[Tensor], T],
    images: np.ndarray | Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "batches",
) -> list[T]:
    """Apply ``fn`` to consecutive batches of ``images`` with ``model`` in eval mode.

    Args:
        model: the network ``fn`` calls; put in eval mode for the pass and restored to its
            previous training mode afterwards.
        fn: ``(B, C, H, W)`` batch on ``device`` -> anything (a tensor, a tuple of tensors).
        images: (N, C, H, W) float32 array or tensor (on any device).
        device: where each batch is computed.
        batch_size: images per forward pass.
        channels_last: hand the batches over in ``torch.channels_last`` memory format.
        progress: show a progress bar.
        desc: progress-bar label.

    Returns:
        ``fn``'s result per batch, in order (empty for no images).
    """
    was_training = model.training
    model.eval()
    x_all = torch.as_tensor(images, dtype=torch.float32)
    out = []
    starts = range(0, len(x_all), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = x_all[start : start + batch_size].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(fn(x))
    model.train(was_training)
    return out


def embed(
    backbone: nn.Module,
    images: np.ndarray | Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    channels_last: bool = False,
    *,
    dihedral: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> Tensor:
    """Backbone features of every image (eval mode, no gradients).

    Args:
        backbone: ``(B, C, H, W) -> (B, D)``.
        images: (N, C, H, W) float32.
        device: where to compute; the features stay there.
        batch_size: images per forward pass.
        channels_last: hand the batches over in ``torch.channels_last`` memory format.
        dihedral: also compute the features of the 8 dihedral copies of every image.
        progress: show a progress bar.
        desc: progress-bar label.

    Returns:
        (N, D) float32 tensor on ``device``, or (8, N, D) with ``dihedral`` (copy-major; copy 0
        is the image itself).
    """

    def features(x: Tensor) -> Tensor:
        views = dihedral_views(x) if dihedral else [x]
        return torch.stack([backbone(v).float() for v in views])

    out = forward_batches(
        backbone,
        features,
        images,
        device=device,
        batch_size=batch_size,
        channels_last=channels_last,
        progress=progress,
        desc=desc,
    )
    if out:
        feats = torch.cat(out, dim=1)
    else:
        dim = int(getattr(backbone, "feature_dim", 0))
        feats = torch.zeros(8 if dihedral else 1, 0, dim, device=device)
    return feats if dihedral else feats[0]


def predict_logits(
    model: nn.Module,
    images: np.ndarray | Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Logits ``(N, num_classes)`` float32 on the CPU of a classifier ``(B, C, H, W) -> (B, K)``."""
    out = forward_batches(
        model, lambda x: model(x).float().cpu(), images, device=device, batch_size=batch_size
    )
    return torch.cat(out)


def predict(
    model: ClassifierModel,
    images: np.ndarray | Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and backbone embeddings of every image.

    Returns:
        ``(probs, embeddings)``: (N, num_classes) float32 and (N, D) float32 arrays.
    """

    def scores(x: Tensor) -> tuple[Tensor, Tensor]:
        emb = model.backbone(x)
        return torch.softmax(model.head(emb).float(), dim=1).cpu(), emb.float().cpu()

    out = forward_batches(
        model,
        scores,
        images,
        device=device,
        batch_size=batch_size,
        progress=progress,
        desc="scoring",
    )
    probs = torch.cat([p for p, _ in out])
    embs = torch.cat([e for _, e in out])
    return probs.numpy(), embs.numpy()


# --------------------------------------------------------------------------------------------
# Loading a fine-tuned model
# --------------------------------------------------------------------------------------------


def _read_model_file(run_dir: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The ``model.pt`` of a finetune run folder, checked for our format."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder.")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        hint = ""
        if (run_dir / BACKBONE_FILE).is_file():
            hint = (
                " It looks like a pretrain run: fine-tune it first with `deeplense-ssl finetune`."
            )
        raise CheckpointError(
            f"{run_dir}: not a finetune run folder (no {MODEL_FILE}); pass the --out folder of "
            f"`deeplense-ssl finetune`.{hint}"
        )
    state = load_checkpoint(path, map_location, expect_format=False)
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a deeplense_ssl finetune model ({MODEL_FORMAT}).")
    check_model_state(state, path)
    return state


def load_finetuned(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ClassifierModel, dict[str, Any]]:
    """Rebuild the model of a finetune run folder (``model.pt``, loaded weights-only).

    Returns:
        ``(model, spec)``: a :class:`ClassifierModel` in eval mode and the spec dict (keys
        ``backbone``, ``stem``, ``in_chans``, ``feature_dim``, ``head``, ``head_kind``,
        ``mlp_hidden_dim``, ``class_names``, ``normalize``, ``image_size``, ``input_hw``,
        ``init``).

    Raises:
        CheckpointError: no such folder, no ``model.pt`` (not a finetune run), a foreign or
            corrupt file, or weights that do not fit the recorded architecture.
    """
    run_dir = Path(run_dir)
    state = _read_model_file(run_dir, map_location)
    spec = state["spec"]
    backbone = build_backbone(spec["backbone"], in_chans=int(spec["in_chans"]), stem=spec["stem"])
    head = build_head(
        spec["head_kind"],
        int(spec["feature_dim"]),
        len(spec["class_names"]),
        int(spec["mlp_hidden_dim"]),
    )
    try:
        backbone.load_state_dict(state["backbone_state"], strict=True)
        head.load_state_dict(state["head_state"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{run_dir / MODEL_FILE}: weights do not match the recorded architecture "
            f"({spec['backbone']}, stem={spec['stem']}, in_chans={spec['in_chans']}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    model = ClassifierModel(backbone, head).to(map_location).eval()
    return model, spec
