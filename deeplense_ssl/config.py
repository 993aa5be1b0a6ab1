"""One configuration dataclass per command, shared by the Python API and the CLI.

Precedence, lowest to highest: dataclass defaults < YAML file (``--config``) < flags given
explicitly on the command line. Every run folder stores its resolved config, and every
checkpoint stores it together with the package version.

Each field declares its type (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``list[X]``) and, in its metadata, its allowed range (``gt`` / ``ge`` / ``lt`` / ``le``) and
choices. :func:`check_fields` checks every field against them, for flags, YAML values and
configs built in Python alike: a value of the wrong type, NaN, inf or out of range is one
:class:`~deeplense_ssl.errors.ConfigError` naming the field (and the YAML file it came from)
before any command writes anything. Cross-field rules live in each class's ``validate``.

The choice lists are defined where they are implemented (NaN policies and normalisations in
``cleaning``, backbones and stems in ``backbones``, heads, SSL methods in ``methods``,
optimisers in ``optim``, devices and mixed-precision modes in ``runtime``, augmentation presets
in ``transforms``, attribution methods) and only imported here; the CLI reads its
``click.Choice`` lists and defaults back from these dataclasses (:func:`field_spec`). Imports
run one way: implementing modules -> config -> training; no module imported here may import
this one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from .attribution import METHODS as ATTRIBUTION_METHODS
from .backbones import BACKBONES, STEMS
from .cleaning import NAN_POLICIES, NORMALIZATIONS
from .errors import ConfigError
from .heads import BACKBONE_TRAINING_HEADS, CLASSIFIER_HEADS
from .methods import METHOD_NAMES as METHODS
from .methods import get_method
from .optim import OPTIMIZERS
from .runtime import AMP_MODES, DEVICES
from .search import BACKENDS as SEARCH_BACKENDS
from .streaming import DATA_MODES
from .tracking import TRACKERS
from .transforms import PRESETS as AUGMENT_PRESETS

# Choice lists whose implementing module cannot be imported here; each becomes one import
# line once it can:
# * SIM_MODELS -> ``from .simulate import MODELS as SIM_MODELS`` (simulate.py imports this
#   module for SimulateConfig);
# * INITS belongs to finetuning.py, which consumes FinetuneConfig, so it stays here;
# * EMBEDDING_MAPS is ``plots.EMBEDDING_MAPS``: plots imports matplotlib and scikit-learn's
#   manifold module, which every command would pay for (tests/test_config.py checks they match).
SIM_MODELS = ("model_i", "model_ii", "model_iii")
INITS = ("pretrained", "random", "scratch")
EMBEDDING_MAPS = ("auto", "umap", "tsne", "none")

BACKBONE_NAMES = tuple(BACKBONES)
AUGMENTATIONS = tuple(AUGMENT_PRESETS)
STORABLE_NORMALIZATIONS = tuple(n for n in NORMALIZATIONS if n != "zscore-dataset")
MAX_SEED = 2**64 - 1  # torch.manual_seed takes an unsigned 64-bit seed


def _field(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    note: str | None = None,
) -> Any:
    """A dataclass field whose metadata holds its allowed ``choices`` and range bounds.

    For ``list[X]`` fields the choices and bounds apply to every element. ``note`` is added to
    the message when a value is not among the choices.
    """
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le}
    meta: dict[str, Any] = {k: v for k, v in bounds.items() if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if note is not None:
        meta["note"] = note
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


def _seed() -> Any:
    return _field(0, ge=0, le=MAX_SEED)


# ----------------------------------------------------------------------------- field checks


def check_fields(cfg: Any, origin: Mapping[str, str] | None = None) -> None:
    """Check every field of the config dataclass ``cfg`` by its declared type, range and choices.

    Args:
        cfg: an instance of one of this module's config dataclasses.
        origin: field name -> where its value came from (e.g. the YAML file); named first in
            the message when that field is wrong.

    Raises:
        ConfigError: the first wrong field, e.g. ``c.yaml: epochs must be an integer, got 'ten'
            (str).``
    """
    cls: type = type(cfg)
    hints = _type_hints(cls)
    for f in fields(cfg):
        try:
            _check_value(f.name, getattr(cfg, f.name), hints[f.name], f.metadata)
        except ConfigError as exc:
            where = (origin or {}).get(f.name)
            if where is None:
                raise
            raise ConfigError(f"{where}: {exc}") from None


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(name: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> None:
    """Type, then range and choices, of one field value (of every element for lists)."""
    hint, optional = _strip_optional(hint)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name} must be {_describe(hint)}, got None.")
    items = [value]
    if typing.get_origin(hint) is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be {_describe(hint)}, got {value!r}.")
        items = list(value)
    item_type = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
    for item in items:
        if not _has_type(item, item_type):
            what = f"{item!r} ({type(item).__name__})"
            got = f"got {what}" if item is value else f"but item {what} is not"
            raise ConfigError(f"{name} must be {_describe(hint)}, {got}.")
        _check_range(name, item, meta)
    choices = meta.get("choices")
    if choices is None:
        return
    unknown = [item for item in items if item not in choices]
    note = f" ({meta['note']})" if "note" in meta else ""
    if unknown and item_type is hint:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}{note}.")
    if unknown:
        raise ConfigError(
            f"{name}: unknown value(s) {', '.join(map(str, unknown))}; choose from "
            f"{', '.join(choices)}."
        )


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other hint -> ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != len(typing.get_args(hint)) and len(args) == 1:
            return args[0], True
    return hint, False


def _has_type(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"config fields of type {hint!r} are not supported")  # programming error


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names[hint]


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if not isinstance(value, numbers.Real):
        return
    gt, ge, lt, le = (meta.get(k) for k in ("gt", "ge", "lt", "le"))
    low_ok = (gt is None or value > gt) and (ge is None or value >= ge)
    high_ok = (lt is None or value < lt) and (le is None or value <= le)
    if low_ok and high_ok:
        return
    low = f"> {gt}" if gt is not None else f">= {ge}" if ge is not None else None
    high = f"< {lt}" if lt is not None else f"<= {_fmt_bound(le)}" if le is not None else None
    bound: str | None = low or high  # one of them is set: a bound failed above
    if low and high:
        bound = (
            f"in {'(' if gt is not None else '['}{gt if gt is not None else ge}, "
            f"{lt if lt is not None else _fmt_bound(le)}{')' if lt is not None else ']'}"
        )
    raise ConfigError(f"{name} must be {bound}, got {value}.")


def _fmt_bound(bound: Any) -> str:
    """``18446744073709551615`` -> ``2**64 - 1``; other bounds as they are."""
    if isinstance(bound, int) and bound > 2**16 and (bound + 1).bit_count() == 1:
        return f"2**{(bound + 1).bit_length() - 1} - 1"
    return str(bound)


class FieldSpec(NamedTuple):
    """What the CLI (and docs) need to know about one config field."""

    name: str
    type: Any  # int, float, bool or str (of the elements, for lists)
    optional: bool  # None is allowed
    many: bool  # a list of ``type``
    default: Any  # a fresh copy
    choices: tuple[str, ...] | None  # allowed values (of every element, for lists)


def field_spec(cls: type, name: str) -> FieldSpec:
    """The declared type, default and choices of field ``name`` of the config dataclass ``cls``.

    Raises:
        KeyError: ``cls`` has no field ``name``.
    """
    f = _fields_of(cls)[name]
    hint, optional = _strip_optional(_type_hints(cls)[name])
    many = typing.get_origin(hint) is list
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    return FieldSpec(
        name=name,
        type=typing.get_args(hint)[0] if many else hint,
        optional=optional,
        many=many,
        default=default,
        choices=f.metadata.get("choices"),
    )


def _fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


# ----------------------------------------------------------------------------- the configs


@dataclass
class DataOptions:
    """Options for reading images that every command that reads data shares (flattened in)."""

    nan_policy: str = _field("raise", choices=NAN_POLICIES)
    normalize: str = _field("minmax", choices=NORMALIZATIONS)
    image_size: int | None = _field(None, gt=0)
    allow_pickle: bool = False


@dataclass
class SimulateConfig:
    """``deeplense-ssl simulate``: lenstronomy scenes like DeepLense Models I-III."""

    out: str = "sim.h5"
    model: str = _field("model_ii", choices=SIM_MODELS)
    n_per_class: int = _field(100, gt=0)
    seed: int = _seed()
    workers: int = _field(1, gt=0)
    # None: the model's native size (150 for model_i, 64 otherwise)
    image_size: int | None = _field(None, gt=0)
    noise: bool = True
    # k > 0: the same scenes with the source centre redrawn and fresh noise (paired positives)
    source_variant: int = _field(0, ge=0)

    def validate(self) -> None:
        """Check the fields (:func:`check_fields`)."""
        check_fields(self)


@dataclass
class ConvertConfig(DataOptions):
    """``deeplense-ssl convert``: any supported input -> one HDF5 file."""

    src: str = ""
    out: str = "data.h5"
    # convert keeps physical values (normalise when training)
    normalize: str = _field(
        "none",
        choices=STORABLE_NORMALIZATIONS,
        note="zscore-dataset needs the training split: keep 'none' and normalise when training",
    )
    labels_csv: str | None = None
    label_pattern: str | None = None
    labels_file: str | None = None  # labels of a single stacked .npy/FITS (.npy or text)
    images_key: str | None = None  # image dataset name in HDF5/.npz when ambiguous
    labels_key: str | None = None  # label dataset name in HDF5/.npz when ambiguous

    def validate(self) -> None:
        """Check the fields, then that there is a source."""
        check_fields(self)
        if not self.src:
            raise ConfigError("convert needs a source path (SRC).")


@dataclass
class PretrainConfig(DataOptions):
    """``deeplense-ssl pretrain``: self-supervised pretraining of a ResNet backbone."""

    data: str = ""
    # a second rendering of the same scenes, row-aligned with `data` (simulate --source-variant
    # 1): the two views of each image come one from each file (simulation-informed positives)
    paired_data: str | None = None
    out: str = "runs/pretrain"
    # the default lensing recipe: views that differ only by PSF-like blur and noise (no geometry,
    # so the Einstein radius and positions are untouched); the best of the recipes screened on
    # simulated Model II (benchmarks/RESULTS.md, "Recipe screen")
    method: str = _field("contrastive-blur", choices=METHODS)
    backbone: str = _field("resnet18", choices=BACKBONE_NAMES)
    stem: str = _field("imagenet", choices=STEMS)
    epochs: int = _field(10, gt=0)
    # stop after this many optimiser steps (tests, smoke runs)
    max_steps: int | None = _field(None, gt=0)
    batch_size: int = _field(128, gt=0)
    # None: the method's default (Method.default_optimizer / default_base_lr)
    optimizer: str | None = _field(None, choices=OPTIMIZERS)
    lr: float | None = _field(None, gt=0)  # None: base_lr * batch_size / 256
    base_lr: float | None = _field(None, gt=0)
    weight_decay: float = _field(1e-6, ge=0)
    momentum: float = _field(0.9, ge=0, lt=1)
    warmup_epochs: float = _field(1.0, ge=0)
    grad_clip: float | None = _field(None, gt=0)
    temperature: float = _field(0.1, gt=0)
    n_views: int = _field(2, ge=1)
    proj_hidden_dim: int = _field(512, gt=0)
    proj_out_dim: int = _field(128, gt=0)
    proj_layers: int = _field(2, ge=1)
    augment: str = _field("lensing", choices=AUGMENTATIONS)
    blur_sigmas_px: list[float] = _field(factory=lambda: [0.0, 1.0, 2.0, 3.0], ge=0)
    noise_std: float = _field(0.1, ge=0)
    # momentum target networks (byol, dino): EMA momentum at step 0; None = the method's default
    ema_momentum: float | None = _field(None, ge=0, lt=1)
    n_local_views: int = _field(4, ge=0)  # dino: native-scale local views besides 2 global
    local_view_size: int | None = _field(None, ge=2)  # dino: None = half the image side
    dino_out_dim: int = _field(1024, gt=0)  # dino: prototypes K (paper 65536)
    teacher_temperature: float = _field(0.04, gt=0)  # dino: teacher softmax temperature
    amp: str = _field("auto", choices=AMP_MODES)
    channels_last: bool = True
    compile: bool = False
    seed: int = _seed()
    device: str = _field("auto", choices=DEVICES)
    checkpoint_every_steps: int = _field(200, gt=0)
    knn_monitor: bool = False
    knn_val_fraction: float = _field(0.1, gt=0, lt=1)
    # images whose embeddings' effective rank and std are logged every epoch (0: off)
    collapse_monitor_size: int = _field(512, ge=0)
    resume: bool = False
    # metrics.jsonl line + NaN/inf check every N steps and at checkpoints
    log_every_steps: int = _field(10, gt=0)
    sync_batchnorm: bool = True  # multi-GPU DDP: SyncBatchNorm (statistics over the global batch)
    # batches made ahead by a background thread while the step runs (0: off; same batches);
    # None: 2 on a CUDA device, 0 on the CPU (where the thread only slows the step down)
    prefetch: int | None = _field(None, ge=0)
    # stream: read --data (one file, a comma-separated list or a glob of shards) in chunks;
    # in-memory: load it; auto: stream when the cleaned set exceeds max_memory_gb
    data_mode: str = _field("auto", choices=DATA_MODES)
    # memory budget of the training set in GiB (None: half of the available memory)
    max_memory_gb: float | None = _field(None, gt=0)
    # experiment tracking of metrics.jsonl, the config and the final metrics (extra `track`)
    log: str = _field("none", choices=TRACKERS)
    log_uri: str | None = None  # tensorboard: event folder; mlflow: tracking URI (None: in --out)

    def validate(self) -> None:
        """Check the fields, then the data path and the method's own needs (``Method.validate``)."""
        check_fields(self)
        if not self.data:
            raise ConfigError("pretrain needs --data.")
        get_method(self.method).fill_defaults(self)
        get_method(self.method).validate(self)
        get_method(self.method).check_pairs(self)


@dataclass
class FinetuneConfig(DataOptions):
    """``deeplense-ssl finetune``: classifier head on a (pretrained) backbone."""

    data: str = ""
    out: str = "runs/finetune"
    checkpoint: str | None = None  # a pretrain run folder; None with init='scratch'/'random'
    head: str = _field("linear", choices=CLASSIFIER_HEADS)
    # pretrained | random (frozen random backbone) | scratch (supervised)
    init: str = _field("pretrained", choices=INITS)
    backbone: str = _field("resnet18", choices=BACKBONE_NAMES)  # only without a checkpoint
    stem: str = _field("imagenet", choices=STEMS)
    # fraction of the data's labels the run sees in total (training + validation)
    label_fraction: float = _field(1.0, gt=0, le=1)
    # fraction of each class's *labelled* images kept for model selection; 0: fixed schedule
    val_fraction: float = _field(0.15, ge=0, lt=1)
    # fewer validation images than this in any class: no validation split, fixed schedule
    min_val_per_class: int = _field(5, ge=1)
    epochs: int = _field(30, gt=0)
    # at least this many optimiser steps (epochs are raised until reached), so that few labels
    # do not mean a few steps; 0: exactly `epochs`
    min_steps: int = _field(300, ge=0)
    batch_size: int = _field(128, gt=0)
    lr: float | None = _field(None, gt=0)  # None: a head-dependent default
    # full fine-tune: backbone lr = lr * this. 1.0 (the head's rate, as training from scratch)
    # beat 0.1 on validation labels with 15 labels per class or more; with ~3 per class 0.1
    # did better (benchmarks/RESULTS.md)
    backbone_lr_scale: float = _field(1.0, ge=0)
    weight_decay: float = _field(1e-4, ge=0)
    mlp_hidden_dim: int = _field(512, gt=0)
    augment: bool = True  # dihedral augmentation when the backbone is trained
    feature_dihedral: bool = True  # frozen backbone: also cache features of 8 dihedral copies
    # auto: the pretrain run's normalisation (minmax without one)
    normalize: str = _field("auto", choices=("auto", *NORMALIZATIONS))
    # stream: read the labels of --data (one file, a comma-separated list or a glob of shards)
    # and load only the images of the label budget; in-memory: load the set; auto: stream when
    # the cleaned set exceeds max_memory_gb (or --data names several files)
    data_mode: str = _field("auto", choices=DATA_MODES)
    # memory budget of the images in GiB (None: half of the available memory)
    max_memory_gb: float | None = _field(None, gt=0)
    seed: int = _seed()
    device: str = _field("auto", choices=DEVICES)
    # autocast of the backbone's forward passes (training, features, validation), as pretrain's
    # `amp`. off (float32) by default: every benchmarks/RESULTS.md table fine-tuned in float32
    amp: str = _field("off", choices=AMP_MODES)
    # experiment tracking of metrics.jsonl, the config and the final metrics (extra `track`)
    log: str = _field("none", choices=TRACKERS)
    log_uri: str | None = None  # tensorboard: event folder; mlflow: tracking URI (None: in --out)

    def validate(self) -> None:
        """Check the fields, the data path, that a pretrained init has a checkpoint, and that
        the head can train from the init (a frozen random backbone is never trained; LP-FT
        starts from a pretrained one)."""
        check_fields(self)
        if not self.data:
            raise ConfigError("finetune needs --data.")
        if self.init == "pretrained" and not self.checkpoint:
            raise ConfigError(
                "finetune needs --checkpoint RUN_DIR (a pretrain run), or --from-scratch / "
                "--random-init for the baselines."
            )
        if self.init == "random" and self.head in BACKBONE_TRAINING_HEADS:
            raise ConfigError(
                f"--random-init keeps the random backbone frozen; with --head {self.head} use "
                "--from-scratch."
            )
        if self.init == "scratch" and self.head == "lp-ft":
            raise ConfigError("--head lp-ft starts from a pretrained backbone; use --head full.")


@dataclass
class EvaluateConfig(DataOptions):
    """``deeplense-ssl evaluate``: metrics of a fine-tuned run on a test set."""

    checkpoint: str = ""  # a finetune run folder
    data: str = ""
    out: str = ""  # metrics.json path; "": <checkpoint>/metrics.json
    n_bootstrap: int = _field(1000, ge=0)
    ci_level: float = _field(0.95, gt=0, lt=1)
    knn_k: int = _field(20, gt=0)
    knn_temperature: float = _field(0.07, gt=0)
    batch_size: int = _field(256, gt=0)
    ood_classes: list[str] = _field(factory=list)
    # auto: the finetune run's normalisation
    normalize: str = _field("auto", choices=("auto", *NORMALIZATIONS))
    # attribution localisation on simulated test sets (how much attribution falls on the true
    # subhalos / vortex): test images per substructure class (0: off), the attribution method,
    # and the distance from the substructure that counts, in PSF FWHM
    localisation_images: int = _field(16, ge=0)
    localisation_method: str = _field("integrated_gradients", choices=ATTRIBUTION_METHODS)
    localisation_radius_fwhm: float = _field(3.0, gt=0)
    seed: int = _seed()
    device: str = _field("auto", choices=DEVICES)
    # stream: score --data (one file, a comma-separated list or a glob of shards) block by
    # block, resumable; in-memory: load it; auto: stream when the cleaned set exceeds
    # max_memory_gb (or --data names several files)
    data_mode: str = _field("auto", choices=DATA_MODES)
    # memory budget of the test images in GiB (None: half of the available memory)
    max_memory_gb: float | None = _field(None, gt=0)

    def validate(self) -> None:
        """Check the fields, then that a run folder and test data are given."""
        check_fields(self)
        if not self.checkpoint or not self.data:
            raise ConfigError("evaluate needs --checkpoint RUN_DIR and --data TEST.")


@dataclass
class ReportConfig:
    """``deeplense-ssl report``: one self-contained HTML file from run folders."""

    runs: list[str] = _field(factory=list)
    out: str = "report.html"
    n_attribution_examples: int = _field(2, ge=0)  # per class
    attribution_methods: list[str] = _field(
        factory=lambda: list(ATTRIBUTION_METHODS), choices=ATTRIBUTION_METHODS
    )
    # 2-D map of the test embeddings: auto (t-SNE; UMAP above plots.AUTO_UMAP_ABOVE images when
    # the `umap` extra is installed), umap, tsne or none
    embedding_map: str = _field("auto", choices=EMBEDDING_MAPS)
    seed: int = _seed()
    device: str = _field("auto", choices=DEVICES)

    def validate(self) -> None:
        """Check the fields, then that there is at least one run."""
        check_fields(self)
        if not self.runs:
            raise ConfigError("report needs at least one run folder.")


# export.py consumes ExportConfig (it sits above this module), so its format list lives here
EXPORT_FORMATS = ("safetensors", "torchvision", "timm", "onnx")


@dataclass
class ExportConfig:
    """``deeplense-ssl export``: a finished run's network as a file other libraries load."""

    run: str = ""  # a pretrain run (backbone.pt) or a finetune run (model.pt) folder
    format: str = _field("safetensors", choices=EXPORT_FORMATS)
    out: str = ""  # the exported file; its model card goes beside it with the suffix .md

    def validate(self) -> None:
        """Check the fields, then that a run folder and an output file are given."""
        check_fields(self)
        if not self.run or not self.out:
            raise ConfigError("export needs a run folder (RUN) and --out FILE.")


@dataclass
class EmbedConfig:
    """``deeplense-ssl embed``: backbone embeddings of images -> one HDF5 index (resumable)."""

    checkpoint: str = ""  # a pretrain (backbone.pt) or finetune (model.pt) run folder
    data: list[str] = _field(factory=list)  # any supported inputs, embedded in this order
    out: str = "embeddings.h5"
    float16: bool = False  # store float16 (half the size; cosine ranks barely change)
    batch_size: int = _field(256, gt=0)
    # images read, cleaned, embedded and committed to the partial file at a time
    block_size: int = _field(4096, gt=0)
    # auto: as the run's training data was cleaned (recommended)
    nan_policy: str = _field("auto", choices=("auto", *NAN_POLICIES))
    normalize: str = _field("auto", choices=("auto", *NORMALIZATIONS))
    image_size: int | None = _field(None, gt=0)  # None: the run's
    allow_pickle: bool = False
    # continue <out>.partial when it was started by the same run, inputs and options
    resume: bool = True
    device: str = _field("auto", choices=DEVICES)

    def validate(self) -> None:
        """Check the fields, then that a run and at least one input are given."""
        check_fields(self)
        if not self.checkpoint or not self.data:
            raise ConfigError("embed needs --checkpoint RUN_DIR and --data FILE [FILE ...].")


@dataclass
class SearchConfig:
    """``deeplense-ssl search``: nearest neighbours of query images in an embedding index."""

    index: str = ""  # the .h5 written by `embed`
    query: str | None = None  # an image file (every image in it is a query)
    query_index: list[int] = _field(factory=list, ge=0)  # or rows of the index
    k: int = _field(10, gt=0)
    out: str | None = None  # folder for neighbours.csv / .json and montage.png
    backend: str = _field("auto", choices=SEARCH_BACKENDS)
    ivf_lists: int = _field(0, ge=0)  # faiss: > 0 for an approximate IVF index
    nprobe: int = _field(16, gt=0)  # faiss IVF: lists visited per query
    # the run that embeds --query images (None: the run recorded in the index)
    checkpoint: str | None = None
    montage: bool = True
    batch_size: int = _field(256, gt=0)
    allow_pickle: bool = False
    device: str = _field("auto", choices=DEVICES)

    def validate(self) -> None:
        """Check the fields, then that there is an index and exactly one kind of query."""
        check_fields(self)
        if not self.index:
            raise ConfigError("search needs --index EMBEDDINGS.h5.")
        if (self.query is None) == (not self.query_index):
            raise ConfigError("search needs either --query IMAGE or --query-index N[,M...].")


@dataclass
class AnomalyConfig:
    """``deeplense-ssl anomaly``: kNN anomaly scores of the images of an embedding index."""

    index: str = ""  # the .h5 written by `embed`
    reference: str | None = None  # embedding of normal data (None: the index itself)
    k: int = _field(10, gt=0)
    top: int = _field(16, ge=0)  # images in the montage of the highest scores
    out: str = "anomalies"  # folder for anomaly_scores.h5 / .csv and anomaly_top.png
    backend: str = _field("auto", choices=SEARCH_BACKENDS)
    ivf_lists: int = _field(0, ge=0)
    nprobe: int = _field(16, gt=0)
    montage: bool = True
    allow_pickle: bool = False

    def validate(self) -> None:
        """Check the fields, then that an index is given."""
        check_fields(self)
        if not self.index:
            raise ConfigError("anomaly needs --index EMBEDDINGS.h5.")


# ----------------------------------------------------------------------------- sources


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
        ConfigError: unknown keys, unreadable file, or invalid values (naming the field, and
            the file when the value came from it).
    """
    from_file = _read_mapping(Path(yaml_path)) if yaml_path is not None else {}
    overrides = dict(overrides or {})
    values = {**from_file, **overrides}
    names = set(_fields_of(cls))
    unknown = sorted(set(values) - names)
    if unknown:
        where = f" in {yaml_path}" if yaml_path else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)}. "
            f"Known: {', '.join(sorted(names))}."
        )
    cfg = cls(**values)
    check_fields(cfg, origin={k: str(yaml_path) for k in from_file if k not in overrides})
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def _read_mapping(path: Path) -> dict[str, Any]:
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
