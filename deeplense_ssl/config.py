"""One configuration dataclass per command, shared by the Python API and the CLI.

Precedence, lowest to highest: dataclass defaults < YAML file (``--config``) < flags given
explicitly on the command line. Every run folder stores its resolved config, and every
checkpoint stores it together with the package version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

NAN_POLICIES = ("raise", "zero", "median", "interpolate", "drop")
NORMALIZATIONS = ("none", "minmax", "zscore", "zscore-dataset", "asinh")
METHODS = ("simclr", "contrastive-rotation", "contrastive-blur", "rotation", "blur")
HEADS = ("linear", "mlp", "full")
INITS = ("pretrained", "random", "scratch")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}.")


def _check_positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}.")


@dataclass
class DataOptions:
    """Options for reading images that every command that reads data shares (flattened in)."""

    nan_policy: str = "raise"
    normalize: str = "minmax"
    image_size: int | None = None
    allow_pickle: bool = False

    def _validate_data(self) -> None:
        _check_choice("nan_policy", self.nan_policy, NAN_POLICIES)
        _check_choice("normalize", self.normalize, NORMALIZATIONS)
        _check_positive("image_size", self.image_size)


@dataclass
class SimulateConfig:
    """``deeplense-ssl simulate``: lenstronomy scenes like DeepLense Models I-III."""

    out: str = "sim.h5"
    model: str = "model_ii"
    n_per_class: int = 100
    seed: int = 0
    workers: int = 1
    image_size: int | None = None  # None: the model's native size (150 for model_i, 64 otherwise)
    noise: bool = True

    def validate(self) -> None:
        _check_choice("model", self.model, ("model_i", "model_ii", "model_iii"))
        _check_positive("n_per_class", self.n_per_class)
        _check_positive("workers", self.workers)
        _check_positive("image_size", self.image_size)


@dataclass
class ConvertConfig(DataOptions):
    """``deeplense-ssl convert``: any supported input -> one HDF5 file."""

    src: str = ""
    out: str = "data.h5"
    normalize: str = "none"  # convert keeps physical values; normalise when training
    labels_csv: str | None = None
    label_pattern: str | None = None
    labels_file: str | None = None  # labels of a single stacked .npy/FITS (.npy or text)
    images_key: str | None = None  # image dataset name in HDF5/.npz when ambiguous
    labels_key: str | None = None  # label dataset name in HDF5/.npz when ambiguous

    def validate(self) -> None:
        self._validate_data()
        if not self.src:
            raise ConfigError("convert needs a source path (SRC).")
        if self.normalize == "zscore-dataset":
            raise ConfigError(
                "convert cannot apply normalize=zscore-dataset (it needs the training split); "
                "keep 'none' and normalise when training."
            )


@dataclass
class PretrainConfig(DataOptions):
    """``deeplense-ssl pretrain``: self-supervised pretraining of a ResNet backbone."""

    data: str = ""
    out: str = "runs/pretrain"
    method: str = "simclr"
    backbone: str = "resnet18"
    stem: str = "imagenet"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # None: base_lr * batch_size / 256
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    temperature: float = 0.1
    n_views: int = 2
    proj_hidden_dim: int = 512
    proj_out_dim: int = 128
    proj_layers: int = 2
    augment: str = "lensing"  # "lensing" | "cifar"
    blur_sigmas_px: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0])
    noise_std: float = 0.1
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    checkpoint_every_steps: int = 200
    knn_monitor: bool = False
    knn_val_fraction: float = 0.1
    resume: bool = False
    log_every_steps: int = 10  # metrics.jsonl line + NaN/inf check every N steps and at checkpoints
    sync_batchnorm: bool = True  # multi-GPU DDP: SyncBatchNorm (statistics over the global batch)

    def validate(self) -> None:
        self._validate_data()
        if not self.data:
            raise ConfigError("pretrain needs --data.")
        _check_choice("method", self.method, METHODS)
        _check_choice("optimizer", self.optimizer, ("sgd", "adamw", "lars"))
        _check_choice("stem", self.stem, ("imagenet", "cifar", "small"))
        _check_choice("augment", self.augment, ("lensing", "cifar"))
        _check_choice("amp", self.amp, ("auto", "bf16", "fp16", "off"))
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_positive("epochs", self.epochs)
        _check_positive("batch_size", self.batch_size)
        _check_positive("temperature", self.temperature)
        _check_positive("lr", self.lr)
        _check_positive("max_steps", self.max_steps)
        _check_positive("checkpoint_every_steps", self.checkpoint_every_steps)
        _check_positive("log_every_steps", self.log_every_steps)
        if self.n_views < 2 and self.method.startswith(("simclr", "contrastive")):
            raise ConfigError(f"n_views must be >= 2 for {self.method}, got {self.n_views}.")
        if self.method == "blur" and len(self.blur_sigmas_px) < 2:
            raise ConfigError("blur pretext needs at least two blur_sigmas_px levels.")


def _validate_data_auto(cfg: DataOptions) -> None:
    """Data options where ``normalize='auto'`` means "as the run this one builds on"."""
    _check_choice("normalize", cfg.normalize, ("auto",) + NORMALIZATIONS)
    _check_choice("nan_policy", cfg.nan_policy, NAN_POLICIES)
    _check_positive("image_size", cfg.image_size)


@dataclass
class FinetuneConfig(DataOptions):
    """``deeplense-ssl finetune``: classifier head on a (pretrained) backbone."""

    data: str = ""
    out: str = "runs/finetune"
    checkpoint: str | None = None  # a pretrain run folder; None with init='scratch'/'random'
    head: str = "linear"
    init: str = "pretrained"  # pretrained | random (frozen random backbone) | scratch (supervised)
    backbone: str = "resnet18"  # used only when there is no checkpoint
    stem: str = "imagenet"
    label_fraction: float = 1.0
    val_fraction: float = 0.15
    epochs: int = 30
    batch_size: int = 128
    lr: float | None = None  # None: a head-dependent default
    backbone_lr_scale: float = 0.1  # full fine-tune: backbone lr = lr * this
    weight_decay: float = 1e-4
    mlp_hidden_dim: int = 512
    augment: bool = True  # dihedral augmentation when the backbone is trained
    feature_dihedral: bool = True  # frozen backbone: also cache features of 8 dihedral copies
    normalize: str = "auto"  # auto: the pretrain run's normalisation (minmax without one)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        _validate_data_auto(self)
        if not self.data:
            raise ConfigError("finetune needs --data.")
        _check_choice("head", self.head, HEADS)
        _check_choice("init", self.init, INITS)
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.init == "pretrained" and not self.checkpoint:
            raise ConfigError(
                "finetune needs --checkpoint RUN_DIR (a pretrain run), or --from-scratch / "
                "--random-init for the baselines."
            )
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}.")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        _check_positive("epochs", self.epochs)
        _check_positive("batch_size", self.batch_size)


@dataclass
class EvaluateConfig(DataOptions):
    """``deeplense-ssl evaluate``: metrics of a fine-tuned run on a test set."""

    checkpoint: str = ""  # a finetune run folder
    data: str = ""
    out: str = ""  # metrics.json path; "": <checkpoint>/metrics.json
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 256
    ood_classes: list[str] = field(default_factory=list)
    normalize: str = "auto"  # auto: the finetune run's normalisation
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        _validate_data_auto(self)
        if not self.checkpoint or not self.data:
            raise ConfigError("evaluate needs --checkpoint RUN_DIR and --data TEST.")
        if not 0 < self.ci_level < 1:
            raise ConfigError(f"ci_level must be in (0, 1), got {self.ci_level}.")
        _check_positive("n_bootstrap", self.n_bootstrap, allow_zero=True)
        _check_positive("knn_k", self.knn_k)


@dataclass
class ReportConfig:
    """``deeplense-ssl report``: one self-contained HTML file from run folders."""

    runs: list[str] = field(default_factory=list)
    out: str = "report.html"
    n_attribution_examples: int = 2  # per class
    attribution_methods: list[str] = field(
        default_factory=lambda: ["integrated_gradients", "saliency", "gradcam"]
    )
    tsne: bool = True
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("report needs at least one run folder.")
        methods = ("integrated_gradients", "saliency", "gradcam")
        unknown = [m for m in self.attribution_methods if m not in methods]
        if unknown:
            raise ConfigError(
                f"unknown attribution method(s) {', '.join(unknown)}; choose from "
                f"{', '.join(methods)}."
            )
        _check_positive("n_attribution_examples", self.n_attribution_examples, allow_zero=True)
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))


T = TypeVar("T")


def config_from_sources(
    cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> T:
    """Build and validate a config: dataclass defaults < YAML file < ``overrides``.

    Args:
        cls: a config dataclass of this module.
        yaml_path: optional YAML (or JSON) file with a mapping of field names to values.
        overrides: values given explicitly (e.g. command-line flags); they win over the file.

    Raises:
        ConfigError: unknown keys, unreadable file, or invalid values.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_read_mapping(Path(yaml_path)))
    values.update(overrides or {})
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        where = f" in {yaml_path}" if yaml_path else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)}. "
            f"Known: {', '.join(sorted(names))}."
        )
    cfg = cls(**values)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror}).") from exc
    try:
        data = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON ({exc}).") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a config dataclass."""
    return dataclasses.asdict(cfg)
