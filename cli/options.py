"""Click options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import click

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to compute; auto picks CUDA when available.",
)
allow_pickle_option = click.option(
    "--allow-pickle",
    is_flag=True,
    default=False,
    help="Allow unpickling .npy object arrays (e.g. DeepLense axion files). Unpickling can run "
    "arbitrary code: use only on files you trust.",
)
nan_policy_option = click.option(
    "--nan-policy",
    type=click.Choice(["raise", "zero", "median", "interpolate", "drop"]),
    default="raise",
    show_default=True,
    help="What to do with NaN/inf pixels, applied once right after reading.",
)
image_size_option = click.option(
    "--image-size",
    type=int,
    default=None,
    help="Bring every image to N x N (centre crop if larger, resize if smaller).",
)
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML config file; explicit command-line flags override its values.",
)


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


def normalize_auto_option(auto_help: str):
    """``--normalize`` for commands that use a trained model: ``auto`` follows the model's runs."""
    return click.option(
        "--normalize",
        type=click.Choice(["auto", "none", "minmax", "zscore", "zscore-dataset", "asinh"]),
        default="auto",
        show_default=True,
        help=f"Per-image scaling; auto: {auto_help}",
    )


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: comma-separated option values, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
