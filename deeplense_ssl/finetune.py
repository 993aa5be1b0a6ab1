"""Few-label classification on top of a (pretrained) backbone, and the supervised baselines.

Modes (``FinetuneConfig.head`` x ``FinetuneConfig.init``):

=================  ===========  ================================================================
init               head         what is trained
=================  ===========  ================================================================
``pretrained``     ``linear``   linear probe on frozen pretrained features (cached once)
``pretrained``     ``mlp``      MLP head on frozen pretrained features (cached once)
``pretrained``     ``full``     backbone + linear head end to end, backbone lr x
                                ``backbone_lr_scale``
``random``         linear/mlp   the same probe on a frozen *randomly initialised* backbone
                                (baseline ``--random-init``)
``scratch``        any          supervised training of a random backbone + head
                                (baseline ``--from-scratch``)
=================  ===========  ================================================================

A frozen backbone is run once over the labelled training images (and, with
``feature_dihedral``, over their 8 rotations/reflections, since lensing images have no preferred
orientation) and once over the validation images; the head then trains on the cached features
in seconds. Features are standardised with the training mean and standard deviation while the
head trains, and the standardisation is folded into the head's first linear layer afterwards,
so the saved model is plain ``backbone -> head``.

The validation split is carved from the training data (``stratified_split``, seeded), the label
fraction is taken from the rest (``label_fraction_subset``, nested and seeded) and the epoch
with the best validation macro ROC-AUC is kept. The test set is never seen here.

Run folder (``cfg.out``): ``config.json``, ``model.pt`` (backbone + head ``state_dict`` and the
spec to rebuild them: backbone name, stem, in_chans, head type, class names, normalisation,
image size), ``metrics.jsonl`` (one line per epoch), ``history.png``, ``val_metrics.json``,
``label_subset.npy`` (indices into the training data of the labelled images) and
``train_embeddings.npz`` (backbone features of the labelled images, for kNN evaluation).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import FinetuneConfig, config_to_dict
from .errors import CheckpointError, ConfigError, DataError
from .io import atomic_output, write_text_atomic

MODEL_FORMAT = "deeplense_ssl.finetune_model.v1"
RUN_KIND = "finetune"
MODEL_FILE = "model.pt"
TRAIN_EMBEDDINGS_FILE = "train_embeddings.npz"
MAX_TRAIN_EMBEDDINGS = 20000
DEFAULT_LR = {"probe": 1e-3, "end_to_end": 1e-3}


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, D)`` of images ``(B, C, H, W)``."""
        return self.backbone(x)


# --------------------------------------------------------------------------------------------
# Feature extraction and prediction
# --------------------------------------------------------------------------------------------


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections (dihedral group D4) of a batch ``(B, C, H, W)``."""
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    flipped = torch.flip(x, dims=(3,))
    views += [torch.rot90(flipped, k, dims=(2, 3)) for k in range(4)]
    return views


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dihedral: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Backbone features of every image, in eval mode, without gradients.

    Args:
        backbone: ``(B, C, H, W) -> (B, D)``.
        images: (N, C, H, W) float32.
        batch_size: images per forward pass.
        device: where to compute.
        dihedral: also return the features of the 8 dihedral copies of every image.
        progress: show a progress bar.
        desc: progress-bar label.

    Returns:
        (N, D) float32 CPU tensor, or (8, N, D) with ``dihedral`` (copy-major; copy 0 is the
        image itself).
    """
    from tqdm.auto import tqdm

    was_training = backbone.training
    backbone.eval()
    x_all = torch.as_tensor(images, dtype=torch.float32)
    out = []
    starts = range(0, len(x_all), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = x_all[start : start + batch_size].to(device)
        views = dihedral_views(x) if dihedral else [x]
        out.append(torch.stack([backbone(v).float().cpu() for v in views]))
    backbone.train(was_training)
    if not out:
        dim = int(getattr(backbone, "feature_dim", 0))
        feats = torch.zeros(8 if dihedral else 1, 0, dim)
    else:
        feats = torch.cat(out, dim=1)
    return feats if dihedral else feats[0]


@torch.no_grad()
def predict(
    model: ClassifierModel,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and backbone embeddings of every image.

    Returns:
        ``(probs, embeddings)``: (N, num_classes) float32 and (N, D) float32 arrays.
    """
    from tqdm.auto import tqdm

    model.eval()
    x_all = torch.as_tensor(images, dtype=torch.float32)
    probs, embs = [], []
    for start in tqdm(range(0, len(x_all), batch_size), desc="scoring", disable=not progress):
        x = x_all[start : start + batch_size].to(device)
        emb = model.backbone(x)
        probs.append(torch.softmax(model.head(emb).float(), dim=1).cpu())
        embs.append(emb.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(embs).numpy()


# --------------------------------------------------------------------------------------------
# Saving and loading the fine-tuned model
# --------------------------------------------------------------------------------------------


def build_head(kind: str, in_dim: int, num_classes: int, hidden_dim: int) -> nn.Module:
    """``linear`` -> :class:`~deeplense_ssl.heads.LinearHead`, ``mlp`` -> ``MLPHead``."""
    from .heads import LinearHead, MLPHead

    if kind == "mlp":
        return MLPHead(in_dim, num_classes, hidden_dim=hidden_dim)
    return LinearHead(in_dim, num_classes)


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
    from .backbones import build_backbone
    from .checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder.")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        hint = ""
        if (run_dir / "backbone.pt").is_file():
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
            f"{path}: weights do not match the recorded architecture ({spec['backbone']}, "
            f"stem={spec['stem']}, in_chans={spec['in_chans']}): {str(exc).splitlines()[0]}"
        ) from exc
    model = ClassifierModel(backbone, head).to(map_location).eval()
    return model, spec


# --------------------------------------------------------------------------------------------
# Training loops
# --------------------------------------------------------------------------------------------


def _val_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    from .evaluate import roc_auc_report

    loss = nn.functional.cross_entropy(logits, labels).item()
    probs = torch.softmax(logits, dim=1).numpy()
    auc = roc_auc_report(labels.numpy(), probs, class_names)["macro"]
    acc = float((logits.argmax(1) == labels).float().mean())
    return {"val_loss": loss, "val_acc": acc, "val_auc_macro": auc}


def _is_better(new: dict, best: dict | None) -> bool:
    if best is None:
        return True
    a, b = new["val_auc_macro"], best["val_auc_macro"]
    if a is not None and b is not None and a != b:
        return a > b
    return new["val_loss"] < best["val_loss"]


def _fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``head(x)`` equal what ``head((x - mean) / std)`` was, by rescaling its first
    linear layer in place: ``W' = W / std``, ``b' = b - W' @ mean``."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / std
        first.bias -= w @ mean
        first.weight.copy_(w)


def train_probe(
    head: nn.Module,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    class_names: list[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Train a classifier head on cached features; keep the epoch with the best validation AUC.

    Args:
        head: ``(B, D) -> (B, C)``; trained in place, left with the best epoch's weights with
            the feature standardisation folded in.
        train_feats: (N, D) features (augmented copies already stacked in).
        train_labels: (N,) int64.
        val_feats: (M, D); val_labels: (M,).
        class_names: C names, for the validation AUC.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over all steps.
        generator: seeded CPU generator for the shuffling.

    Returns:
        ``(history, best)``: one dict per epoch and the best epoch's dict.
    """
    from tqdm.auto import tqdm

    # Standardisation statistics and validation labels live on the host (the head is folded
    # and scored there); features computed on a GPU by the caller are accepted too.
    train_feats, train_labels = train_feats.float().cpu(), train_labels.cpu()
    val_feats, val_labels = val_feats.float().cpu(), val_labels.cpu()
    mean = train_feats.mean(0)
    std = train_feats.std(0).clamp_min(1e-6) if len(train_feats) > 1 else torch.ones_like(mean)
    xt = ((train_feats - mean) / std).to(device)
    yt = train_labels.to(device)
    xv = ((val_feats - mean) / std).to(device)
    head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(xt) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: list[dict] = []
    best: dict | None = None
    best_state = copy.deepcopy(head.state_dict())
    for epoch in tqdm(range(1, epochs + 1), desc="probe", disable=not progress):
        head.train()
        perm = torch.randperm(len(xt), generator=generator).to(device)
        total, correct = 0.0, 0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            logits = head(xt[idx])
            loss = nn.functional.cross_entropy(logits, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        head.eval()
        with torch.no_grad():
            val_logits = head(xv).float().cpu()
        row = {
            "epoch": epoch,
            "train_loss": total / len(xt),
            "train_acc": correct / len(xt),
            "lr": opt.param_groups[0]["lr"],
            **_val_metrics(val_logits, val_labels, class_names),
        }
        history.append(row)
        if _is_better(row, best):
            best, best_state = row, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.cpu()
    _fold_standardisation(head, mean, std)
    assert best is not None
    return history, best


def train_end_to_end(
    model: ClassifierModel,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    class_names: list[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    backbone_lr: float,
    weight_decay: float,
    augment: bool,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Train backbone and head together (full fine-tune or supervised from scratch).

    Args:
        model: the composed model; trained in place, left with the best epoch's weights.
        train_images: (N, C, H, W) float32; train_labels (N,) int64.
        val_images: (M, C, H, W); val_labels (M,).
        class_names: C names, for the validation AUC.
        lr: head learning rate; backbone_lr: backbone learning rate (AdamW, cosine schedule).
        augment: random dihedral transform of every training batch.
        generator: seeded CPU generator (shuffling, augmentation).

    Returns:
        ``(history, best)`` as :func:`train_probe`.
    """
    from tqdm.auto import tqdm

    from .transforms import random_dihedral

    model.to(device)
    opt = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters(), "lr": backbone_lr},
            {"params": model.head.parameters(), "lr": lr},
        ],
        weight_decay=weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(len(train_images) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: list[dict] = []
    best: dict | None = None
    best_state = copy.deepcopy(model.state_dict())
    for epoch in tqdm(range(1, epochs + 1), desc="fine-tune", disable=not progress):
        model.train()
        perm = torch.randperm(len(train_images), generator=generator)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) < 2 and len(perm) >= 2:
                continue  # BatchNorm needs two images per batch in training mode
            x = train_images[idx].to(device)
            y = train_labels[idx].to(device)
            if augment:
                x = random_dihedral(x, generator=generator)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        model.eval()
        val_logits = _logits(model, val_images, batch_size, device)
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "lr": opt.param_groups[1]["lr"],
            "backbone_lr": opt.param_groups[0]["lr"],
            **_val_metrics(val_logits, val_labels, class_names),
        }
        history.append(row)
        if _is_better(row, best):
            best, best_state = row, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.cpu().eval()
    assert best is not None
    return history, best


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int, device: Any) -> torch.Tensor:
    model.eval()
    out = [
        model(images[s : s + batch_size].to(device)).float().cpu()
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# The finetune command
# --------------------------------------------------------------------------------------------


def _resolve_backbone(cfg: FinetuneConfig, data_chans: int | None) -> tuple[nn.Module, dict]:
    """The backbone to fine-tune and where its architecture / preprocessing come from."""
    from .backbones import build_backbone

    if cfg.checkpoint:
        from .checkpoint import load_pretrained_backbone

        pretrained, info = load_pretrained_backbone(cfg.checkpoint, map_location="cpu")
        if cfg.init == "pretrained":
            return pretrained, info
        # baselines with the same architecture and preprocessing as the pretrain run
        fresh = build_backbone(info["backbone"], in_chans=info["in_chans"], stem=info["stem"])
        return fresh, info
    if data_chans is None:
        raise ConfigError("a baseline without --checkpoint needs the data to know in_chans.")
    backbone = build_backbone(cfg.backbone, in_chans=data_chans, stem=cfg.stem)
    info = {
        "backbone": cfg.backbone,
        "stem": cfg.stem,
        "in_chans": data_chans,
        "feature_dim": int(backbone.feature_dim),
        "normalize": None,
        "image_size": None,
    }
    return backbone, info


def finetune(cfg: FinetuneConfig, progress: bool = True, dataset: Any = None) -> Path:
    """Train a classifier on a (pretrained) backbone with a fraction of the labels.

    Args:
        cfg: the resolved finetune config (see the module docstring for the modes).
        progress: show progress bars.
        dataset: an already loaded :class:`deeplense_ssl.datasets.ImageSet` (skips reading
            ``cfg.data``; it must be normalised as the pretraining was).

    Returns:
        The run folder ``cfg.out``.

    Raises:
        ConfigError: an impossible mode (``--random-init`` with ``--head full``).
        CheckpointError: unusable pretrain run; backbone channels differ from the data's.
        DataError: unreadable data, or fewer than two classes.
    """
    from .datasets import label_fraction_subset, load_dataset, stratified_split
    from .runtime import resolve_device, seed_everything

    cfg.validate()
    if cfg.init == "random" and cfg.head == "full":
        raise ConfigError(
            "--random-init keeps the random backbone frozen; with --head full use --from-scratch."
        )
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    backbone, info = (None, {}) if not cfg.checkpoint else _resolve_backbone(cfg, None)
    normalize = cfg.normalize
    if normalize == "auto":
        normalize = info.get("normalize") or "minmax"
    image_size = cfg.image_size if cfg.image_size is not None else info.get("image_size")
    if dataset is None:
        dataset = load_dataset(
            cfg.data,
            nan_policy=cfg.nan_policy,
            normalize=normalize,
            image_size=image_size,
            allow_pickle=cfg.allow_pickle,
            progress=progress,
        )
    if backbone is None:
        backbone, info = _resolve_backbone(cfg, int(np.asarray(dataset.images).shape[1]))
    images = np.asarray(dataset.images, dtype=np.float32)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    class_names = list(dataset.class_names)
    if images.ndim != 4 or images.shape[1] != info["in_chans"]:
        where = cfg.checkpoint or "the backbone"
        raise CheckpointError(
            f"{where}: the backbone takes {info['in_chans']} channel(s) but {cfg.data} has images "
            f"of shape {images.shape[1:]}; pretrain on data with the same bands, or fine-tune "
            "a baseline (--from-scratch / --random-init) without --checkpoint."
        )
    seen = info.get("input_shape")
    if cfg.init == "pretrained" and image_size is None and seen and len(seen) == 3:
        if tuple(images.shape[2:]) != tuple(seen[1:]):
            raise DataError(
                f"images are {images.shape[2]}x{images.shape[3]} px but the backbone in "
                f"{cfg.checkpoint} was pretrained on {seen[1]}x{seen[2]} px; pass "
                f"--image-size {seen[1]} to crop/resize them as in pretraining, or choose the "
                "size explicitly with --image-size.",
                cfg.data,
            )
    present = np.unique(labels)
    if len(class_names) < 2 or len(present) < 2:
        raise DataError(
            f"fine-tuning needs labelled images of at least two classes; found "
            f"{len(present)} class(es) ({', '.join(class_names)}).",
            cfg.data,
        )

    splits = stratified_split(labels, cfg.val_fraction, 0.0, seed=cfg.seed)
    val_idx = np.asarray(splits["val"], dtype=np.int64)
    labelled = np.asarray(
        label_fraction_subset(splits["train"], labels, cfg.label_fraction, seed=cfg.seed),
        dtype=np.int64,
    )
    norm_stats = None
    if getattr(dataset, "normalization_pending", False):
        # zscore-dataset: statistics from the training split only, stored with the model
        norm_stats = dataset.fit_normalization(splits["train"]).to_dict()
    elif isinstance(getattr(dataset, "meta", None), dict):
        norm_stats = dataset.meta.get("norm_stats")
    images = np.asarray(dataset.images, dtype=np.float32)
    if len(val_idx) == 0:
        raise DataError(
            f"no validation images with val_fraction={cfg.val_fraction}; use more data or a "
            "larger --val-fraction.",
            cfg.data,
        )

    mode = "end_to_end" if cfg.init == "scratch" or cfg.head == "full" else "probe"
    head_kind = "mlp" if cfg.head == "mlp" else "linear"
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[mode]
    backbone_lr = lr * (1.0 if cfg.init == "scratch" else cfg.backbone_lr_scale)
    head = build_head(head_kind, int(info["feature_dim"]), len(class_names), cfg.mlp_hidden_dim)
    model = ClassifierModel(backbone, head)
    y_train = torch.as_tensor(labels[labelled])
    y_val = torch.as_tensor(labels[val_idx])

    if mode == "probe":
        backbone.to(device)
        tr = extract_features(
            backbone,
            images[labelled],
            batch_size=cfg.batch_size,
            device=device,
            dihedral=cfg.feature_dihedral,
            progress=progress,
            desc="train features",
        )
        va = extract_features(
            backbone,
            images[val_idx],
            batch_size=cfg.batch_size,
            device=device,
            progress=progress,
            desc="val features",
        )
        backbone.cpu()
        if cfg.feature_dihedral:
            train_emb = tr[0]
            tr_x, tr_y = tr.reshape(-1, tr.shape[-1]), y_train.repeat(tr.shape[0])
        else:
            train_emb, tr_x, tr_y = tr, tr, y_train
        history, best = train_probe(
            head,
            tr_x,
            tr_y,
            va,
            y_val,
            class_names,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=lr,
            weight_decay=cfg.weight_decay,
            generator=generator,
            device=device,
            progress=progress,
        )
    else:
        history, best = train_end_to_end(
            model,
            torch.as_tensor(images[labelled]),
            y_train,
            torch.as_tensor(images[val_idx]),
            y_val,
            class_names,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=lr,
            backbone_lr=backbone_lr,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
            generator=generator,
            device=device,
            progress=progress,
        )
        train_emb = None
    model.cpu().eval()
    keep_emb = labelled
    if len(labelled) > MAX_TRAIN_EMBEDDINGS:
        rng = np.random.default_rng(cfg.seed)
        keep_emb = np.sort(rng.choice(len(labelled), MAX_TRAIN_EMBEDDINGS, replace=False))
    else:
        keep_emb = np.arange(len(labelled))
    if train_emb is None:
        model.to(device)
        train_emb = extract_features(
            model.backbone,
            images[labelled[keep_emb]],
            batch_size=cfg.batch_size,
            device=device,
            progress=progress,
            desc="train embeddings",
        )
        model.cpu()
    else:
        train_emb = train_emb[torch.as_tensor(keep_emb)]

    spec = {
        "backbone": info["backbone"],
        "stem": info["stem"],
        "in_chans": int(info["in_chans"]),
        "feature_dim": int(info["feature_dim"]),
        "head": cfg.head,
        "head_kind": head_kind,
        "mlp_hidden_dim": int(cfg.mlp_hidden_dim),
        "init": cfg.init,
        "mode": mode,
        "class_names": class_names,
        "normalize": normalize,
        "image_size": image_size,
        "norm_stats": _plain(norm_stats),
        "input_hw": [int(images.shape[2]), int(images.shape[3])],
        "nan_policy": cfg.nan_policy,
    }
    counts = {n: int((labels[labelled] == k).sum()) for k, n in enumerate(class_names)}
    summary = {
        "data": str(cfg.data),
        "n_images": int(len(labels)),
        "class_counts": {n: int((labels == k).sum()) for k, n in enumerate(class_names)},
        "n_train_pool": int(len(splits["train"])),
        "n_train_labelled": int(len(labelled)),
        "train_labelled_class_counts": counts,
        "n_val": int(len(val_idx)),
        "label_fraction": float(cfg.label_fraction),
        "image_shape": list(images.shape[1:]),
        "nan_report": _plain(getattr(dataset, "nan_report", None)),
    }
    pretrain = None
    if cfg.checkpoint:
        pretrain = {
            "run": str(Path(cfg.checkpoint).resolve()),
            "method": info.get("method"),
            "step": info.get("step"),
            "epoch": info.get("epoch"),
            "config": info.get("config"),
        }
    run_config = {
        "kind": RUN_KIND,
        "deeplense_ssl_version": __version__,
        "config": config_to_dict(cfg),
        "resolved": {
            "mode": mode,
            "lr": lr,
            "backbone_lr": backbone_lr if mode == "end_to_end" else None,
            "normalize": normalize,
            "image_size": image_size,
            "device": str(device),
        },
        "spec": spec,
        "pretrain": pretrain,
        "data_summary": summary,
    }
    val_metrics = {
        "selection": "best validation macro ROC-AUC (ties: lower validation loss)",
        "best_epoch": best["epoch"],
        **{k: v for k, v in best.items() if k.startswith("val_")},
        "n_val": int(len(val_idx)),
        "n_train_labelled": int(len(labelled)),
        "label_fraction": float(cfg.label_fraction),
    }
    _write_run(
        Path(cfg.out),
        model,
        spec,
        run_config,
        history,
        val_metrics,
        labelled,
        train_emb.numpy(),
        labels[labelled[keep_emb]],
    )
    return Path(cfg.out)


def _plain(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def _write_run(
    out: Path,
    model: ClassifierModel,
    spec: dict,
    run_config: dict,
    history: list[dict],
    val_metrics: dict,
    labelled: np.ndarray,
    train_emb: np.ndarray,
    train_emb_labels: np.ndarray,
) -> None:
    """Write every file of the run folder, each atomically, after training has succeeded."""
    from .checkpoint import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "label_subset.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, labelled.astype(np.int64))
    with atomic_output(out / TRAIN_EMBEDDINGS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, embeddings=train_emb.astype(np.float32), labels=train_emb_labels
            )
    write_text_atomic(
        out / "metrics.jsonl", "".join(json.dumps(_plain(row)) + "\n" for row in history)
    )
    write_text_atomic(out / "val_metrics.json", json.dumps(_plain(val_metrics), indent=2) + "\n")
    _plot_history(history, val_metrics["best_epoch"], out / "history.png")
    write_text_atomic(out / "config.json", json.dumps(_plain(run_config), indent=2) + "\n")
    save_checkpoint(
        out / MODEL_FILE,
        {
            "format": MODEL_FORMAT,
            "spec": spec,
            "backbone_state": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
            "head_state": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
            "deeplense_ssl_version": __version__,
        },
    )


def _plot_history(history: list[dict], best_epoch: int, path: Path) -> None:
    """Training / validation loss and validation AUC / accuracy against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax0.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    ax0.plot(epochs, [r["val_loss"] for r in history], "o-", ms=3, label="validation")
    ax0.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax0.legend()
    auc = [np.nan if r["val_auc_macro"] is None else r["val_auc_macro"] for r in history]
    ax1.plot(epochs, auc, "o-", ms=3, label="val macro AUC")
    ax1.plot(epochs, [r["val_acc"] for r in history], "o-", ms=3, label="val accuracy")
    ax1.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept (epoch {best_epoch})")
    ax1.set(xlabel="epoch", title="validation", ylim=(0, 1.02))
    ax1.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
