"""A finished run's network as a file that torchvision, timm or ONNX Runtime load without us.

``deeplense-ssl export RUN --format F --out FILE`` (:func:`export_run`). What is exported:

* a pretrain run's backbone (``backbone.pt``): images ``(B, in_chans, H, W)`` -> ``(B, D)``
  embeddings;
* a finetune run's backbone and classifier head (``model.pt``): images -> ``(B, K)`` logits.

=============  ================  ================================================================
format         file              loads with (no deeplense_ssl needed; the model card has the code)
=============  ================  ================================================================
safetensors    ``.safetensors``  ``safetensors.torch.load_file`` into a torchvision ResNet
               (default)         (no pickle at all)
torchvision    ``.pth``          ``torch.load(..., weights_only=True)`` into a torchvision ResNet
timm           ``.safetensors``  ``timm.create_model(name, in_chans=C, num_classes=0 or K)``
onnx           ``.onnx``         ``onnxruntime.InferenceSession``; input ``images``, batch axis
                                 dynamic, H and W as trained (extra ``export``)
=============  ================  ================================================================

Key layout: torchvision's ResNet names, which timm's ResNet shares (``conv1``, ``bn1``,
``layer1.0.conv1``...). A linear head is ``fc`` (``Linear(D, K)``), an MLP head is
``fc = Sequential(Linear(D, hidden), ReLU, Dropout, Linear(hidden, K))`` (keys ``fc.0.*`` and
``fc.3.*``); an embedding export has no ``fc`` (set ``fc = Identity``). The stem of
:mod:`deeplense_ssl.backbones` replaces ``conv1`` (``small``: 3x3 stride 2, ``cifar``: 3x3
stride 1) and ``maxpool`` (Identity) where it is not torchvision's own; ``metadata["stem_layout"]``
and the card give the lines.

Metadata (:func:`export_metadata`): what a user must feed the network (``in_chans``,
``input_shape``, ``image_size``, ``stem``, ``normalize`` with ``norm_stats``, ``nan_policy``) and
what it returns (``outputs``, ``embedding_dim``, ``class_names``), as strings (JSON for
non-strings) in the safetensors header or the ONNX ``metadata_props``. A ``.pth`` file is a bare
state dict (what ``load_state_dict`` takes): its metadata is in the card only.

Model card: FILE with the suffix ``.md`` (:func:`render_card`): data, method and recipe,
budget, metrics with intervals, versions, the file's SHA-256 and a loading snippet. FILE and
its card are published together (:func:`deeplense_ssl.runs.write_together`): both new or both
unchanged, never a partial file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import __version__
from .backbones import backbone_state_dict_for_torchvision
from .checkpoint import load_pretrained_backbone
from .cleaning import ASINH_SOFTENING
from .config import EXPORT_FORMATS, ExportConfig
from .errors import CheckpointError, ConfigError, DeepLenseError, MissingDependencyError
from .inference import load_finetuned
from .runs import (
    BACKBONE_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVAL_METRICS_FILE,
    FINETUNE_KIND,
    MODEL_FILE,
    PRETRAIN_KIND,
    Writer,
    read_eval_metrics,
    read_finetune_config,
    read_json,
    read_metrics,
    read_run_config,
    to_jsonable,
    write_together,
)

FORMATS = EXPORT_FORMATS
"""Export formats (``ExportConfig.format``)."""
SUFFIXES = {
    "safetensors": ".safetensors",
    "torchvision": ".pth",
    "timm": ".safetensors",
    "onnx": ".onnx",
}
"""The usual file suffix of each format."""
_FORMATS_OF_SUFFIX = {
    ".safetensors": ("safetensors", "timm"),
    ".pth": ("torchvision",),
    ".pt": ("torchvision",),
    ".onnx": ("onnx",),
}
EXPORT_FORMAT = "deeplense_ssl.export.v1"
"""``metadata["format"]`` of every export written now."""
ONNX_OPSET = 18
ONNX_INPUT = "images"
EXTRA_HINT = 'pip install "deeplense-ssl[export]"'
NORMALIZATION_TEXT = {
    "none": "none: pixel values as stored",
    "minmax": "minmax: per image over all bands, (x - min) / (max - min) (a constant image -> 0)",
    "zscore": "zscore: per image over all bands, (x - mean) / std",
    "zscore-dataset": "zscore-dataset: per band c, (x - mean[c]) / std[c] with the training "
    "split's statistics",
    "asinh": f"asinh: minmax per image, then asinh(x / {ASINH_SOFTENING}) / "
    f"asinh(1 / {ASINH_SOFTENING})",
}
"""What each ``normalize`` choice of :mod:`deeplense_ssl.cleaning` does, for the card."""


@dataclass
class RunNetwork:
    """A finished run's network and what a user of its export must know.

    Attributes:
        run_dir: the run folder.
        kind: ``"pretrain"`` or ``"finetune"``.
        model: on the CPU, in eval mode: ``(B, in_chans, H, W)`` float32 images ->
            ``(B, embedding_dim)`` embeddings (pretrain) or ``(B, num_classes)`` logits.
        state: the weights in torchvision's key layout (the backbone, plus ``fc.*`` of a head).
        meta: JSON-safe facts about the network (keys of :func:`export_metadata`).
        run_config: the run's ``config.json``.
    """

    run_dir: Path
    kind: str
    model: nn.Module
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    run_config: dict[str, Any]


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        file: the exported network.
        card: its Markdown model card (``file`` with the suffix ``.md``).
        format: one of :data:`FORMATS`.
        sha256: hex digest of ``file``.
        metadata: the string metadata stored in ``file`` (and the card).
    """

    file: Path
    card: Path
    format: str
    sha256: str
    metadata: dict[str, str]


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_run(cfg: ExportConfig) -> ExportResult:
    """Export the network of a finished run (``cfg.run``) to ``cfg.out`` with its model card.

    Args:
        cfg: the run folder, the format (:data:`FORMATS`) and the output file.

    Returns:
        The files written and the metadata stored.

    Raises:
        ConfigError: a bad format or output path (a folder, an ``.md`` file, a suffix of another
            format, a file inside the run folder).
        CheckpointError: not a run folder, an unfinished run (no ``backbone.pt`` /
            ``model.pt``), or damaged weights.
        MissingDependencyError: ``onnx`` without the ``export`` extra.
        OutputError: the files cannot be written (nothing changes then).
    """
    cfg.validate()
    run_dir, out = Path(cfg.run), Path(cfg.out)
    check_output(out, cfg.format, run_dir)
    if cfg.format == "onnx":
        _require_onnx(out)
    net = load_run(run_dir)
    metadata = export_metadata(net, cfg.format)
    card = card_path(out)
    digest: dict[str, str] = {}

    def write_card(path: Path) -> None:
        text = render_card(net, cfg.format, out, metadata, digest["sha256"])
        path.write_text(text, encoding="utf-8")

    weights = _hashed(_weights_writer(net, cfg.format, metadata), digest)
    write_together((out, weights), (card, write_card))
    return ExportResult(out, card, cfg.format, digest["sha256"], metadata)


def card_path(out: str | Path) -> Path:
    """The model card of an export: ``out`` with the suffix ``.md``."""
    return Path(out).with_suffix(".md")


def check_output(out: Path, fmt: str, run_dir: Path) -> None:
    """Refuse an output path that would clobber the card, the run, or lie about its format.

    Raises:
        ConfigError: ``out`` is a folder, ends in ``.md``, has the suffix of another format, or
            lies inside ``run_dir``.
    """
    suffix = out.suffix.lower()
    example = out.with_suffix(SUFFIXES[fmt]).name
    if suffix == ".md":
        raise ConfigError(
            f"{out}: the model card goes beside the export as .md; name the export "
            f"file with another suffix, e.g. {example}."
        )
    allowed = _FORMATS_OF_SUFFIX.get(suffix, (fmt,))
    if fmt not in allowed:
        raise ConfigError(
            f"{out}: a {suffix} file is not a {fmt} export; pass --format {allowed[0]} or name "
            f"the file {example}."
        )
    if out.is_dir():
        raise ConfigError(
            f"{out}: is a folder; --out takes the export's file name, e.g. "
            f"{out / ('backbone' + SUFFIXES[fmt])}."
        )
    if run_dir.resolve() in out.resolve().parents:
        raise ConfigError(
            f"{out}: inside the run folder {run_dir}; write the export elsewhere (a run folder "
            "holds one run's own files)."
        )


def _require_onnx(out: Path) -> None:
    """Import what ONNX export and its check need, or say which extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"{out}: ONNX export needs {exc.name or 'onnx'}, which is not installed; install the "
            f"extra ({EXTRA_HINT}) or export --format safetensors."
        ) from exc


def _weights_writer(net: RunNetwork, fmt: str, metadata: Mapping[str, str]) -> Writer:
    """A writer of the exported network in ``fmt`` (the ONNX graph is built right away)."""
    if fmt == "onnx":
        data = onnx_model_bytes(net, metadata)
        return lambda path: path.write_bytes(data)
    if fmt == "torchvision":
        return lambda path: torch.save(dict(net.state), path)
    data = safetensors_bytes(net.state, metadata=dict(metadata))
    return lambda path: path.write_bytes(data)


def _hashed(writer: Writer, digest: dict[str, str]) -> Writer:
    """``writer``, then the SHA-256 of what it wrote into ``digest["sha256"]``."""

    def write(path: Path) -> None:
        writer(path)
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        digest["sha256"] = sha.hexdigest()

    return write


# --------------------------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> RunNetwork:
    """The network of a finished pretrain or finetune run, on the CPU, in eval mode.

    Raises:
        CheckpointError: no such folder, not a run folder, an unfinished run, or weights that
            do not fit the recorded architecture.
    """
    run_dir = Path(run_dir)
    if _run_kind(run_dir) == PRETRAIN_KIND:
        return _load_pretrain(run_dir)
    return _load_finetune(run_dir)


def _run_kind(run_dir: Path) -> str:
    """``pretrain`` or ``finetune`` for a finished run folder; one clear error otherwise."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder.")
    where = "pass the --out folder of `deeplense-ssl pretrain` or `deeplense-ssl finetune`"
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); {where}.")
    kind = read_json(path, "run config", optional={"kind": (str, type(None))}).get("kind")
    if kind not in (PRETRAIN_KIND, FINETUNE_KIND):
        raise CheckpointError(f"{path}: not a pretrain or finetune run (kind={kind!r}); {where}.")
    if kind == PRETRAIN_KIND and not (run_dir / BACKBONE_FILE).is_file():
        only = f" ({CHECKPOINT_FILE} only)" if (run_dir / CHECKPOINT_FILE).is_file() else ""
        raise CheckpointError(
            f"{run_dir}: no {BACKBONE_FILE}: the pretraining did not finish{only}. Resume it "
            "with `deeplense-ssl pretrain ... --resume` (same --out), then export."
        )
    if kind == FINETUNE_KIND and not (run_dir / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{run_dir}: no {MODEL_FILE}: the fine-tuning did not finish or the folder is "
            "damaged; re-run `deeplense-ssl finetune`, then export."
        )
    return kind


def _load_pretrain(run_dir: Path) -> RunNetwork:
    backbone, info = load_pretrained_backbone(run_dir, "cpu")
    data = read_run_config(run_dir)
    shape = _input_shape(run_dir, info["in_chans"], data.get("resolved", {}).get("input_shape"))
    meta = {
        **_backbone_meta(backbone, info["backbone"], info["stem"], info["in_chans"]),
        "run_kind": PRETRAIN_KIND,
        "outputs": "embeddings",
        "input_shape": shape,
        "image_size": info["image_size"],
        "head": "none",
        "mlp_hidden_dim": None,
        "num_classes": 0,
        "class_names": [],
        "normalize": info["normalize"],
        "norm_stats": data.get("resolved", {}).get("norm_stats"),  # zscore-dataset, whole set
        "nan_policy": info["nan_policy"],
        "method": info["method"],
        "trained_with": info["deeplense_ssl_version"],
    }
    state = backbone_state_dict_for_torchvision(backbone)
    return RunNetwork(run_dir, PRETRAIN_KIND, backbone, state, meta, data)


def _load_finetune(run_dir: Path) -> RunNetwork:
    model, spec = load_finetuned(run_dir, "cpu")
    data = read_finetune_config(run_dir / CONFIG_FILE)
    hw = spec.get("input_hw")
    chw = [spec["in_chans"], *hw] if isinstance(hw, list) else None
    shape = _input_shape(run_dir, spec["in_chans"], chw)
    head = spec["head_kind"]
    meta = {
        **_backbone_meta(model.backbone, spec["backbone"], spec["stem"], spec["in_chans"]),
        "run_kind": FINETUNE_KIND,
        "outputs": "logits",
        "input_shape": shape,
        "image_size": spec.get("image_size"),
        "head": head,
        "mlp_hidden_dim": int(spec["mlp_hidden_dim"]) if head == "mlp" else None,
        "num_classes": len(spec["class_names"]),
        "class_names": list(spec["class_names"]),
        "normalize": spec["normalize"],
        "norm_stats": spec.get("norm_stats"),
        "nan_policy": spec.get("nan_policy"),
        "method": (data.get("pretrain") or {}).get("method"),
        "trained_with": data.get("deeplense_ssl_version"),
    }
    head_state = {
        "fc." + k.split(".", 1)[1]: v.detach().cpu().clone()
        for k, v in model.head.state_dict().items()  # fc.weight / layers.0.weight -> fc.0.weight
    }
    state = {**backbone_state_dict_for_torchvision(model.backbone), **head_state}
    return RunNetwork(run_dir, FINETUNE_KIND, model, state, meta, data)


def _backbone_meta(backbone: nn.Module, name: str, stem: str, in_chans: int) -> dict[str, Any]:
    """Architecture facts, the stem's layers read off the network itself."""
    conv1 = backbone.conv1
    assert isinstance(conv1, nn.Conv2d)
    layout = {
        "kernel_size": int(conv1.kernel_size[0]),
        "stride": int(conv1.stride[0]),
        "padding": int(conv1.padding[0]),
        "maxpool": not isinstance(backbone.maxpool, nn.Identity),
    }
    dim = int(getattr(backbone, "feature_dim", 0))
    return {
        "architecture": name,
        "stem": stem,
        "stem_layout": layout,
        "in_chans": int(in_chans),
        "embedding_dim": dim,
    }


def _input_shape(run_dir: Path, in_chans: int, shape: Any) -> list[int]:
    """The ``[C, H, W]`` the run trained on, checked."""
    ok = isinstance(shape, list) and len(shape) == 3
    if not ok or not all(isinstance(v, int) and v > 0 for v in shape) or shape[0] != in_chans:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE}: no valid input shape recorded (got {shape!r}); the run "
            "is damaged or from an old version: re-run it."
        )
    return [int(v) for v in shape]


# --------------------------------------------------------------------------------------------
# Metadata and ONNX
# --------------------------------------------------------------------------------------------


def export_metadata(net: RunNetwork, fmt: str) -> dict[str, str]:
    """The string metadata of an export (safetensors header, ONNX ``metadata_props``).

    String values are stored as they are, every other value as JSON (``in_chans`` ``"1"``,
    ``input_shape`` ``"[1, 64, 64]"``, ``class_names`` ``'["no_sub", "cdm"]'``, ``null``).

    Args:
        net: the run's network (:func:`load_run`).
        fmt: the export format.

    Returns:
        ``format``, ``library``, ``deeplense_ssl_version`` (of the exporter) and every entry of
        ``net.meta``: ``run_kind``, ``outputs`` (``embeddings`` / ``logits``), ``architecture``,
        ``stem``, ``stem_layout``, ``in_chans``, ``input_shape``, ``image_size``,
        ``embedding_dim``, ``head``, ``mlp_hidden_dim``, ``num_classes``, ``class_names``,
        ``normalize``, ``norm_stats``, ``nan_policy``, ``method``, ``trained_with``.
    """
    values = {"format": EXPORT_FORMAT, "library": fmt, **net.meta}
    values["deeplense_ssl_version"] = __version__
    return {k: v if isinstance(v, str) else json.dumps(to_jsonable(v)) for k, v in values.items()}


def onnx_model_bytes(net: RunNetwork, metadata: Mapping[str, str]) -> bytes:
    """The network as an ONNX model (dynamic batch axis), checked with ONNX Runtime.

    Args:
        net: the run's network; its ``input_shape`` fixes H and W of the graph.
        metadata: stored as the model's ``metadata_props``.

    Returns:
        The serialised model: input ``images`` ``(batch, C, H, W)`` float32, output
        ``embeddings`` ``(batch, D)`` or ``logits`` ``(batch, K)``.

    Raises:
        CheckpointError: the exporter failed, or ONNX Runtime does not reproduce the network.
    """
    import onnx

    example = torch.randn((2, *net.meta["input_shape"]), generator=torch.Generator().manual_seed(0))
    try:
        program = torch.onnx.export(
            net.model,
            (example,),
            input_names=[ONNX_INPUT],
            output_names=[net.meta["outputs"]],
            opset_version=ONNX_OPSET,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
            report=False,
        )
        assert program is not None
        proto = program.model_proto
    except Exception as exc:  # the exporter's own errors: name the run, suggest a way out
        raise CheckpointError(
            f"{net.run_dir}: the ONNX exporter failed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); export --format safetensors instead."
        ) from exc
    onnx.helper.set_model_props(proto, dict(metadata))
    proto.doc_string = f"deeplense-ssl {net.kind} run {net.run_dir.name}: {ONNX_INPUT} -> " + str(
        net.meta["outputs"]
    )
    data = proto.SerializeToString()
    _check_onnx(data, net, example)
    return data


def _check_onnx(data: bytes, net: RunNetwork, example: torch.Tensor) -> None:
    """Run the ONNX model on ``example`` ``(2, C, H, W)`` and compare with the network."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {ONNX_INPUT: example.numpy()})[0]
    with torch.no_grad():
        want = net.model(example).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
        raise CheckpointError(
            f"{net.run_dir}: the ONNX model does not reproduce the network (shape {got.shape} vs "
            f"{want.shape}); export --format safetensors instead."
        )


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def render_card(
    net: RunNetwork, fmt: str, file: Path, metadata: Mapping[str, str], sha256: str
) -> str:
    """The Markdown model card of an export (Hugging Face layout: YAML front matter first).

    Args:
        net: the run's network.
        fmt: the export format.
        file: the exported file (its name goes into the loading snippet).
        metadata: the metadata stored in the file.
        sha256: the file's SHA-256.

    Returns:
        Sections: model, expected input, training data, method and recipe, budget, metrics
        (with intervals when the run holds an evaluate ``metrics.json``), how to load (a
        snippet that needs only torch / torchvision / timm / safetensors / onnxruntime),
        provenance.
    """
    rows = _pretrain_rows(net) if net.kind == PRETRAIN_KIND else _finetune_rows(net)
    task = "image-feature-extraction" if net.kind == PRETRAIN_KIND else "image-classification"
    front = {
        "library_name": {"onnx": "onnx", "timm": "timm"}.get(fmt, "torchvision"),
        "pipeline_tag": task,
        "tags": ["deeplense-ssl", "strong-gravitational-lensing", "self-supervised", fmt],
    }
    sections = [
        f"---\n{yaml.safe_dump(front, sort_keys=False).strip()}\n---",
        f"# {file.stem}\n\n{_summary(net, fmt, file)}",
        "## Model\n\n" + _bullets(_model_rows(net)),
        "## Expected input\n\n" + _bullets(_input_rows(net.meta)),
        "## Training data\n\n" + _bullets(rows["data"]),
        "## Method and recipe\n\n" + _bullets(rows["recipe"]),
        "## Budget\n\n" + _bullets(rows["budget"]),
        "## Metrics\n\n" + _metrics_text(net),
        "## How to load (no deeplense_ssl needed)\n\nFrom the folder holding "
        f"`{file.name}`:\n\n```python\n{loading_snippet(net.meta, fmt, file.name)}```",
        "## Provenance\n\n" + _bullets(_provenance_rows(net, fmt, file, metadata, sha256)),
    ]
    return "\n\n".join(sections) + "\n"


Rows = list[tuple[str, Any]]


def _bullets(rows: Rows) -> str:
    """``- **label**: value`` lines; rows whose value is None are left out."""
    lines = [f"- **{label}**: {value}" for label, value in rows if value is not None]
    return "\n".join(lines) if lines else "- (not recorded)"


def _summary(net: RunNetwork, fmt: str, file: Path) -> str:
    m = net.meta
    what = (
        f"the self-supervised `{m['architecture']}` backbone of the pretrain run "
        f"`{net.run_dir.name}`, mapping images to {m['embedding_dim']}-d embeddings"
        if net.kind == PRETRAIN_KIND
        else f"the `{m['architecture']}` classifier ({m['head']} head) of the finetune run "
        f"`{net.run_dir.name}`, mapping images to logits over {m['num_classes']} classes"
    )
    return f"`{file.name}` ({fmt}) holds {what}. Exported by deeplense-ssl {__version__}."


def _model_rows(net: RunNetwork) -> Rows:
    m = net.meta
    lay, pool = m["stem_layout"], "max-pool" if m["stem_layout"]["maxpool"] else "no max-pool"
    k, stride, pad = lay["kernel_size"], lay["stride"], lay["padding"]
    stem = f"`{m['stem']}`: conv1 {k}x{k} stride {stride} padding {pad}, {pool}"
    outputs = f"(B, {m['embedding_dim']}) embeddings (global-average-pooled features)"
    if net.kind == FINETUNE_KIND:
        outputs = f"(B, {m['num_classes']}) logits (softmax for probabilities)"
    head = {"none": None, "linear": "linear, `fc = Linear(D, K)`"}.get(m["head"])
    if m["head"] == "mlp":
        head = f"MLP, `fc = Sequential(Linear(D, {m['mlp_hidden_dim']}), ReLU, Dropout, Linear)`"
    classes = ", ".join(f"{i}: `{c}`" for i, c in enumerate(m["class_names"])) or None
    return [
        ("architecture", f"torchvision `{m['architecture']}`"),
        ("stem", stem),
        ("input bands", m["in_chans"]),
        ("outputs", outputs),
        ("head", head),
        ("classes (logit order)", classes),
    ]


def _input_rows(m: Mapping[str, Any]) -> Rows:
    size = m["image_size"]
    c, h, w = m["input_shape"]
    shape = f"(B, {c}, {h}, {w}) float32" + (
        f" (images brought to {size} x {size}: centre crop if larger, resize if smaller)"
        if size
        else " (the data's native size)"
    )
    stats = m["norm_stats"] if isinstance(m.get("norm_stats"), dict) else {}
    norm = NORMALIZATION_TEXT.get(m["normalize"], m["normalize"])
    if m["normalize"] == "zscore-dataset":
        norm += (
            f"; mean {stats['mean']}, std {stats['std']}"
            if stats.get("mean") is not None
            else " (not recorded in this run: compute them on your training split)"
        )
    return [
        ("shape", shape),
        (
            "non-finite pixels",
            f"NaN policy `{m['nan_policy']}` applied first; the network needs finite inputs",
        ),
        ("normalisation", norm),
    ]


def _pretrain_rows(net: RunNetwork) -> dict[str, Rows]:
    cfg = net.run_config.get("config", {})
    res = net.run_config.get("resolved", {})
    recipe_keys = (
        "augment",
        "optimizer",
        "weight_decay",
        "temperature",
        "n_views",
        "blur_sigmas_px",
        "noise_std",
        "ema_momentum",
        "seed",
    )
    steps, batch = res.get("final_step"), res.get("global_batch_size")
    seen = steps * batch if isinstance(steps, int) and isinstance(batch, int) else None
    return {
        "data": [
            ("pretraining data", _code(cfg.get("data"))),
            ("paired data", _code(cfg.get("paired_data"))),
            ("fingerprint", _fingerprint(res.get("data_fingerprint"))),
            (
                "images",
                _join(("train", res.get("n_train")), ("kNN-monitor hold-out", res.get("n_val"))),
            ),
            (
                "classes in the data (labels unused in pretraining)",
                ", ".join(map(str, res.get("class_names") or [])) or None,
            ),
        ],
        "recipe": [
            ("method", _code(cfg.get("method"))),
            ("learning rate", res.get("lr")),
            *[(k, cfg[k]) for k in recipe_keys if cfg.get(k) is not None],
        ],
        "budget": [
            ("epochs", _join(("configured", cfg.get("epochs")), ("done", res.get("final_epoch")))),
            ("optimiser steps", _join(("done", steps), ("max_steps", cfg.get("max_steps")))),
            ("global batch size", batch),
            ("images seen", seen),
            ("device", res.get("device")),
        ],
    }


def _finetune_rows(net: RunNetwork) -> dict[str, Rows]:
    rc = net.run_config
    cfg, res = rc.get("config", {}), rc.get("resolved", {})
    summary, pre = rc.get("data_summary", {}), rc.get("pretrain") or {}
    nan = summary.get("nan_report") or {}
    recipe_keys = ("head", "weight_decay", "batch_size", "augment", "feature_dihedral", "seed")
    return {
        "data": [
            ("fine-tuning data", _code(summary.get("data", cfg.get("data")))),
            ("images", summary.get("n_images")),
            ("class counts", _counts(summary.get("class_counts"))),
            (
                "non-finite pixels",
                _join(
                    ("replaced", nan.get("pixels_touched")),
                    ("images dropped", nan.get("images_dropped")),
                ),
            ),
            *_pretrain_data_rows(pre),
        ],
        "recipe": [
            ("initialisation", _code(cfg.get("init"))),
            ("mode", res.get("mode")),
            ("pretraining method", _code(pre.get("method"))),
            ("learning rate", _join(("head", res.get("lr")), ("backbone", res.get("backbone_lr")))),
            ("model selection", res.get("model_selection")),
            *[(k, cfg[k]) for k in recipe_keys if cfg.get(k) is not None],
        ],
        "budget": [
            ("label fraction", summary.get("label_fraction", cfg.get("label_fraction"))),
            (
                "labels used",
                _join(
                    ("total", summary.get("n_labels_used")),
                    ("training", summary.get("n_train_labelled")),
                    ("validation", summary.get("n_val")),
                ),
            ),
            (
                "labelled training images per class",
                _counts(summary.get("train_labelled_class_counts")),
            ),
            ("epochs", res.get("epochs")),
            ("optimiser steps", res.get("optimizer_steps")),
            ("pretraining", _join(("steps", pre.get("step")), ("epochs", pre.get("epoch")))),
        ],
    }


def _pretrain_data_rows(pre: Mapping[str, Any]) -> Rows:
    """The data of the pretrain run a finetune run started from, when its folder is readable."""
    if not pre.get("run"):
        return [("pretraining", "none (no pretrained backbone)")]
    try:
        data = read_run_config(pre["run"])
    except DeepLenseError:
        return [("pretrain run", f"{_code(pre['run'])} (its config.json is not readable now)")]
    res = data.get("resolved", {})
    return [
        ("pretrain run", _code(pre["run"])),
        ("pretraining data", _code(data.get("config", {}).get("data"))),
        ("pretraining data fingerprint", _fingerprint(res.get("data_fingerprint"))),
    ]


def _metrics_text(net: RunNetwork) -> str:
    if net.kind == PRETRAIN_KIND:
        epochs = [r for r in read_metrics(net.run_dir) if "knn_top1" in r or "rankme" in r]
        if not epochs:
            return "No monitors were logged (pretrain with `--knn-monitor` to log kNN accuracy)."
        last = epochs[-1]
        keys = ("epoch", "knn_top1", "rankme", "emb_std_mean", "emb_std_min")
        return "Monitors of the last logged epoch (`metrics.jsonl`):\n\n" + _bullets(
            [(k, _fmt(last.get(k))) for k in keys]
        )
    path = net.run_dir / EVAL_METRICS_FILE
    if not path.is_file():
        return "Not evaluated yet: run `deeplense-ssl evaluate --checkpoint RUN --data TEST`."
    try:
        m = read_eval_metrics(path)
    except DeepLenseError as exc:
        return f"`{EVAL_METRICS_FILE}` of the run is not readable ({exc})."
    return _eval_table(m)


def _eval_table(m: Mapping[str, Any]) -> str:
    """Markdown table of an evaluate ``metrics.json``: point estimates and intervals."""
    auc, ci = m["roc_auc"], m.get("ci") or {}
    level = (m.get("ci_method") or {}).get("level", 0.95)
    method = (m.get("ci_method") or {}).get("method", "bootstrap")
    rows = [("ROC-AUC" if auc["binary"] else "ROC-AUC (macro)", auc.get("macro"), "auc_macro")]
    if not auc["binary"]:
        rows.append(("ROC-AUC (micro)", auc.get("micro"), "auc_micro"))
        rows += [(f"ROC-AUC `{c}` vs rest", v, f"auc/{c}") for c, v in auc["per_class"].items()]
    rows += [
        ("accuracy", m.get("accuracy"), "accuracy"),
        ("F1 (macro)", m.get("f1_macro"), "f1_macro"),
    ]
    lines = [f"| metric | value | {level:.0%} interval |", "|---|---|---|"]
    for label, value, key in rows:
        entry = ci.get(key) or {}
        lo, hi = entry.get("lower"), entry.get("upper")
        interval = f"[{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else ""
        lines.append(f"| {label} | {_fmt(value)} | {interval} |")
    knn = m.get("knn") or {}
    if knn.get("accuracy") is not None:
        lines.append(f"| kNN accuracy (k={knn.get('k')}) | {_fmt(knn['accuracy'])} | |")
    where = f"`{m.get('data')}`, " if m.get("data") else ""
    return (
        f"On the test set ({where}{m['n_images']} images; {_counts(m.get('class_counts'))}); "
        f"intervals: {method}.\n\n" + "\n".join(lines)
    )


def _provenance_rows(
    net: RunNetwork, fmt: str, file: Path, metadata: Mapping[str, str], sha256: str
) -> Rows:
    where = "ONNX metadata_props" if fmt == "onnx" else "the safetensors header"
    return [
        ("run folder", _code(str(net.run_dir))),
        ("file", f"`{file.name}` ({fmt}), SHA-256 `{sha256}`"),
        ("trained with", f"deeplense-ssl {net.meta.get('trained_with')}"),
        ("exported with", f"deeplense-ssl {__version__}, torch {torch.__version__}"),
        (
            "metadata",
            None
            if fmt == "torchvision"
            else f"in {where}: " + ", ".join(f"`{k}`" for k in metadata),
        ),
    ]


def _code(value: Any) -> str | None:
    return None if value is None else f"`{value}`"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _join(*parts: tuple[str, Any]) -> str | None:
    """``"train 60, val 0"`` of the parts that are known (None if none is)."""
    known = [f"{label} {_fmt(v)}" for label, v in parts if v is not None]
    return ", ".join(known) or None


def _counts(counts: Any) -> str | None:
    """``"a 3, b 4"`` of a ``{class: count}`` mapping (None for anything else)."""
    if not isinstance(counts, Mapping) or not counts:
        return None
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _fingerprint(fp: Any) -> str | None:
    if not isinstance(fp, dict) or "sha256" not in fp:
        return None
    return (
        f"SHA-256 `{fp['sha256']}` of the labels and {fp.get('rows_hashed')} of "
        f"{fp.get('n')} images (per-image shape {fp.get('shape')}, {fp.get('dtype')}) as loaded"
    )


# --------------------------------------------------------------------------------------------
# Loading snippets
# --------------------------------------------------------------------------------------------


def loading_snippet(meta: Mapping[str, Any], fmt: str, file_name: str) -> str:
    """Python that loads the export with its target library alone and defines ``infer(x)``.

    Args:
        meta: ``RunNetwork.meta``.
        fmt: the export format.
        file_name: the exported file, as the snippet opens it.

    Returns:
        Code defining ``model`` (or ``session`` for ONNX) and ``infer(x)``: ``(B, C, H, W)``
        float32 array -> ``(B, D)`` embeddings or ``(B, K)`` logits as a NumPy array.
    """
    c, h, w = meta["input_shape"]
    name = json.dumps(file_name)  # a Python string literal, quotes escaped
    out = (
        f"(B, {meta['embedding_dim']}) embeddings"
        if meta["outputs"] == "embeddings"
        else f"(B, {meta['num_classes']}) logits"
    )
    doc = (
        f'    """x: (B, {c}, {h}, {w}) float32 (NaN policy {meta["nan_policy"]!r}, '
        f'{meta["normalize"]!r} normalisation) -> {out}."""'
    )
    if fmt == "onnx":
        lines = [
            "import numpy as np",
            "import onnxruntime",
            "",
            f'session = onnxruntime.InferenceSession({name}, providers=["CPUExecutionProvider"])',
            "",
            "",
            "def infer(x):",
            doc,
            f'    return session.run(None, {{"{ONNX_INPUT}": np.asarray(x, np.float32)}})[0]',
        ]
    else:
        lines = [
            *_torch_build_lines(meta, fmt, file_name),
            "",
            "",
            "def infer(x):",
            doc,
            "    with torch.no_grad():",
            "        return model(torch.as_tensor(np.asarray(x, np.float32))).numpy()",
        ]
    return "\n".join(lines) + "\n"


def _torch_build_lines(meta: Mapping[str, Any], fmt: str, file_name: str) -> list[str]:
    """Imports, model construction, stem and head changes, weights loading."""
    arch, c, k, head = meta["architecture"], meta["in_chans"], meta["num_classes"], meta["head"]
    lines = ["import numpy as np", "import torch"]
    lines.append("import timm" if fmt == "timm" else "import torchvision")
    if fmt != "torchvision":
        lines.append("from safetensors.torch import load_file")
    classes = k if head == "linear" else 0
    if fmt == "timm":
        build = (
            f'model = timm.create_model("{arch}", pretrained=False, in_chans={c}, '
            f"num_classes={classes})"
        )
    else:
        build = f"model = torchvision.models.{arch}(weights=None" + (
            f", num_classes={classes})" if classes else ")"
        )
    name = json.dumps(file_name)  # a Python string literal, quotes escaped
    lines += ["", build, *_stem_lines(meta, fmt)]
    if head == "none" and fmt != "timm":
        lines.append("model.fc = torch.nn.Identity()  # the network returns embeddings")
    if head == "mlp":
        d, hid = meta["embedding_dim"], meta["mlp_hidden_dim"]
        lines.append(
            f"model.fc = torch.nn.Sequential(torch.nn.Linear({d}, {hid}), torch.nn.ReLU(), "
            f"torch.nn.Dropout(0.0), torch.nn.Linear({hid}, {k}))"
        )
    load = (
        f'torch.load({name}, map_location="cpu", weights_only=True)'
        if fmt == "torchvision"
        else f"load_file({name})"
    )
    return [*lines, f"model.load_state_dict({load})", "model.eval()"]


def _stem_lines(meta: Mapping[str, Any], fmt: str) -> list[str]:
    """The ``conv1`` / ``maxpool`` replacements for the run's stem and band count."""
    lay, c = meta["stem_layout"], meta["in_chans"]
    own = lay == {"kernel_size": 7, "stride": 2, "padding": 3, "maxpool": True}
    if own and (fmt == "timm" or c == 3):  # the library's own stem already fits
        return []
    k, s, p = lay["kernel_size"], lay["stride"], lay["padding"]
    lines = [
        f"# the {meta['stem']!r} stem of deeplense-ssl for {c} band(s)",
        f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size={k}, stride={s}, padding={p}, "
        "bias=False)",
    ]
    if not lay["maxpool"]:
        lines.append("model.maxpool = torch.nn.Identity()")
    return lines
