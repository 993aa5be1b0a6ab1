"""deeplense_ssl: self-supervised learning for strong gravitational lensing images.

The public API, importable from the package itself::

    from deeplense_ssl import PretrainConfig, load_dataset, pretrain

    data = load_dataset("data.h5", nan_policy="interpolate")
    run_dir = pretrain(PretrainConfig(data="data.h5", out="runs/simclr", epochs=10))

Names are imported lazily, on first use, so ``import deeplense_ssl`` stays fast (it does not
import torch); :data:`__all__` lists them and the module each comes from is in ``_LAZY``.

The pipeline functions live in modules named after the step: ``training.pretrain``,
``finetuning.finetune``, ``evaluation.evaluate``, ``report.build_report``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module (inside this package) that defines it
_LAZY: dict[str, str] = {
    # data
    "load_dataset": "datasets",
    "LensingDataset": "datasets",
    "ImageSet": "datasets",
    "stratified_split": "datasets",
    "label_fraction_subset": "datasets",
    "summarize": "datasets",
    "convert_dataset": "datasets",
    "simulate_dataset": "simulate",
    # configs, one per command
    "PretrainConfig": "config",
    "FinetuneConfig": "config",
    "EvaluateConfig": "config",
    "ReportConfig": "config",
    "SimulateConfig": "config",
    "ConvertConfig": "config",
    "ExportConfig": "config",
    "EmbedConfig": "config",
    "SearchConfig": "config",
    "AnomalyConfig": "config",
    "config_from_sources": "config",
    # models and the pipeline
    "build_backbone": "backbones",
    "pretrain": "training",
    "finetune": "finetuning",
    "evaluate": "evaluation",
    "build_report": "report",
    # using the representation: export, embed, search, anomalies
    "export_run": "export",
    "embed_files": "embedding",
    "search_index": "embedding",
    "anomaly_index": "embedding",
    # errors
    "DeepLenseError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "CheckpointError": "errors",
}

__all__ = [  # the keys of _LAZY (checked by tests/test_package.py)
    "__version__",
    "load_dataset",
    "LensingDataset",
    "ImageSet",
    "stratified_split",
    "label_fraction_subset",
    "summarize",
    "convert_dataset",
    "simulate_dataset",
    "PretrainConfig",
    "FinetuneConfig",
    "EvaluateConfig",
    "ReportConfig",
    "SimulateConfig",
    "ConvertConfig",
    "ExportConfig",
    "EmbedConfig",
    "SearchConfig",
    "AnomalyConfig",
    "config_from_sources",
    "build_backbone",
    "pretrain",
    "finetune",
    "evaluate",
    "build_report",
    "export_run",
    "embed_files",
    "search_index",
    "anomaly_index",
    "DeepLenseError",
    "DataError",
    "ConfigError",
    "CheckpointError",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .backbones import build_backbone
    from .config import (
        AnomalyConfig,
        ConvertConfig,
        EmbedConfig,
        EvaluateConfig,
        ExportConfig,
        FinetuneConfig,
        PretrainConfig,
        ReportConfig,
        SearchConfig,
        SimulateConfig,
        config_from_sources,
    )
    from .datasets import (
        ImageSet,
        LensingDataset,
        convert_dataset,
        label_fraction_subset,
        load_dataset,
        stratified_split,
        summarize,
    )
    from .embedding import anomaly_index, embed_files, search_index
    from .errors import CheckpointError, ConfigError, DataError, DeepLenseError
    from .evaluation import evaluate
    from .export import export_run
    from .finetuning import finetune
    from .report import build_report
    from .simulate import simulate_dataset
    from .training import pretrain


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562) and cache it here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
