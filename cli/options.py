"""Click options built from the config dataclasses, and the options several commands share.

Every option that sets a config field is made by :func:`field_option`: its type, its
``click.Choice`` list and its default come from the field (``deeplense_ssl.config``), which in
turn takes its choices from the module that implements them. Help texts of shared options are
written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from deeplense_ssl.config import field_spec

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: comma-separated option values, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _str_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
    return None if value is None else comma_list(value)


def _float_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
    if value is None:
        return None
    try:
        return [float(v) for v in comma_list(value)]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}.") from exc


def field_option(cls: type, name: str, *param_decls: str, **overrides: Any) -> Decorator:
    """A ``click.option`` for field ``name`` of the config dataclass ``cls``.

    * choice fields: ``click.Choice`` of the field's choices;
    * ``bool``: ``--name/--no-name`` when the default is true, else the flag ``--name``;
    * ``list[float]`` / ``list[str]``: one comma-separated value (``--blur-sigmas-px 0,1.5``);
    * ``int`` / ``float`` / ``str``: that type.

    The default is the field's (a ``str`` field whose default is ``""`` has none: the config
    decides). Commands pass only the flags given explicitly (:func:`explicit_params`) to
    ``config_from_sources``, so defaults never override a ``--config`` file.

    Args:
        cls: a config dataclass.
        name: one of its fields; the parameter gets this name.
        *param_decls: flag spellings (default ``--name-with-dashes``).
        **overrides: any ``click.option`` keyword (``help``, ``type=click.Path(...)``...).
    """
    spec = field_spec(cls, name)
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"default": spec.default, "show_default": True}
    if spec.type is bool and spec.default:
        param_decls = param_decls or (f"{flag}/--no-{flag[2:]}",)
    elif spec.type is bool:
        kwargs.update(is_flag=True, show_default=False)
    elif spec.many:
        kwargs["callback"] = _float_list if spec.type is float else _str_list
        kwargs["default"] = ",".join(str(v) for v in spec.default)
        kwargs["show_default"] = bool(spec.default)
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(spec.choices)
    else:
        kwargs["type"] = spec.type
        if spec.default in (None, ""):
            kwargs.update(default=None, show_default=False)
    kwargs.update(overrides)
    return click.option(*(param_decls or (flag,)), name, **kwargs)


def explicit_params(
    ctx: click.Context, params: Mapping[str, Any], exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The parameters the user gave explicitly (command line or environment), not defaults.

    Use the result as ``overrides`` for ``config_from_sources`` so that a value from ``--config``
    is not silently replaced by a flag's default.

    Args:
        ctx: the current click context (``click.get_current_context()``).
        params: parameter name -> value, usually the command function's keyword arguments.
        exclude: names never returned (e.g. ``config_path``).

    Returns:
        ``{name: value}`` for every parameter whose source is the command line or environment.
    """
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    skip = set(exclude)
    return {
        name: value
        for name, value in params.items()
        if name not in skip and ctx.get_parameter_source(name) in given
    }


# ----------------------------------------------------------------------------- shared options

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML config file; explicit command-line flags override its values.",
)


def seed_option(cls: type) -> Decorator:
    """``--seed`` of ``cls``."""
    return field_option(cls, "seed", help="Random seed.")


def device_option(cls: type) -> Decorator:
    """``--device`` of ``cls``."""
    return field_option(cls, "device", help="Where to compute; auto picks CUDA when available.")


def amp_option(cls: type) -> Decorator:
    """``--amp``: mixed precision (:data:`deeplense_ssl.runtime.AMP_MODES`)."""
    return field_option(
        cls,
        "amp",
        help="Mixed precision; auto: bf16 on GPUs with native bf16, else fp16 (scaled); on the "
        "CPU bf16 where it is native (AVX512-BF16 / AMX), else off (float32).",
    )


def allow_pickle_option(cls: type) -> Decorator:
    """``--allow-pickle`` of ``cls``."""
    return field_option(
        cls,
        "allow_pickle",
        help="Allow unpickling .npy object arrays (e.g. DeepLense axion files). Unpickling can "
        "run arbitrary code: use only on files you trust.",
    )


def nan_policy_option(cls: type) -> Decorator:
    """``--nan-policy`` of ``cls``."""
    return field_option(
        cls, "nan_policy", help="What to do with NaN/inf pixels, applied once right after reading."
    )


def image_size_option(cls: type) -> Decorator:
    """``--image-size`` of ``cls``."""
    return field_option(
        cls,
        "image_size",
        help="Bring every image to N x N (centre crop if larger, resize if smaller).",
    )


def normalize_option(cls: type, help_text: str) -> Decorator:
    """``--normalize`` of ``cls``; ``auto`` (where allowed) follows the model's runs."""
    return field_option(cls, "normalize", help=help_text)


def _stacked(options: list[Decorator]) -> Decorator:
    """One decorator applying ``options`` in the order given (first = first in --help)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def tracking_options(cls: type) -> Decorator:
    """``--log`` / ``--log-uri`` of ``cls`` (experiment tracking: pretrain, finetune)."""
    return _stacked(
        [
            field_option(
                cls,
                "log",
                help="Also send metrics.jsonl, the config and the final metrics to TensorBoard "
                'or MLflow (needs pip install "deeplense-ssl[track]").',
            ),
            field_option(
                cls,
                "log_uri",
                help="--log tensorboard: the event folder; mlflow: the tracking URI (default: "
                "OUT/tensorboard, file:OUT/mlruns).",
            ),
        ]
    )


def data_mode_options(cls: type, stream_help: str, several_stream: bool = True) -> Decorator:
    """``--data-mode`` and ``--max-memory-gb`` (pretrain, finetune, evaluate).

    Args:
        cls: the config class; stream_help: what ``stream`` does for this command;
        several_stream: ``auto`` streams whenever ``--data`` names several files.
    """
    several = " or --data names several files" if several_stream else ""
    return _stacked(
        [
            field_option(
                cls,
                "data_mode",
                help=f"stream: {stream_help} (several shards: a comma-separated list or a quoted "
                "glob, e.g. 'shards/*.h5'); in-memory: load --data whole; auto: stream when the "
                f"cleaned set is larger than --max-memory-gb{several}.",
            ),
            field_option(
                cls,
                "max_memory_gb",
                help="Memory budget of the images in GiB for --data-mode auto (default: half of "
                "the available memory).",
            ),
        ]
    )


def reader_options(cls: type) -> Decorator:
    """The options that say how to read labels and arrays of a source (convert, inspect)."""
    options = [
        field_option(
            cls,
            "labels_csv",
            type=click.Path(),
            help="CSV with columns file,label for a flat folder of images.",
        ),
        field_option(
            cls,
            "label_pattern",
            help="File-name rules for a flat folder, e.g. 'non_lens=^nl_;lens=_hst' or a regex "
            "with a capture group such as '^(cdm|axion|no_sub)_'.",
        ),
        field_option(
            cls,
            "labels_file",
            type=click.Path(),
            help="Labels of a single stacked .npy/FITS input: a .npy or text file, one int per "
            "image.",
        ),
        field_option(cls, "images_key", help="Image dataset name in HDF5/.npz if ambiguous."),
        field_option(cls, "labels_key", help="Label dataset name in HDF5/.npz if ambiguous."),
    ]
    return _stacked(options)


def reader_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``io.open_source`` keyword arguments among reader option values (unset ones left out).

    Args:
        values: field name -> value, e.g. ``vars(cfg)`` of a ``ConvertConfig``.
    """
    reader = {
        "labels_csv": values.get("labels_csv"),
        "label_pattern": values.get("label_pattern"),
        "labels": values.get("labels_file"),
        "images_key": values.get("images_key"),
        "labels_key": values.get("labels_key"),
    }
    return {k: v for k, v in reader.items() if v is not None}
