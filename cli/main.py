"""Entry point of ``deeplense-ssl``: a click group whose commands are imported lazily.

Each command lives in its own module of this package and exposes a click command named
``command``. Importing lazily keeps ``deeplense-ssl --help`` fast (torch is heavy).
"""

from __future__ import annotations

import importlib
import sys

import click

from deeplense_ssl import __version__

# command name -> (module inside this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate", "Simulate a DeepLense-like dataset with lenstronomy into HDF5."),
    "convert": ("convert", "Convert npy/npz/HDF5/FITS inputs into one clean HDF5 file."),
    "inspect": (
        "inspect",
        "Summarise a dataset (counts, shapes, ranges, NaN) or draft its data card.",
    ),
    "pretrain": ("pretrain", "Self-supervised pretraining (SimCLR, rotation, blur pretexts)."),
    "finetune": ("finetune", "Train a classifier head on a pretrained backbone with few labels."),
    "evaluate": ("evaluate", "ROC-AUC (per class, macro, micro) with intervals, kNN, accuracy."),
    "report": ("report", "Self-contained HTML report with ROC curves, tables and attributions."),
    "export": (
        "export",
        "Export a run's backbone for torchvision, timm, safetensors or ONNX, with a model card.",
    ),
    "embed": ("embed", "Write embeddings of any number of images to HDF5 (batched, resumable)."),
    "search": ("search", "Nearest neighbours of query images in an embedding index (cosine)."),
    "anomaly": ("anomaly", "Rank images by an anomaly score in embedding space (kNN distance)."),
    "demo": ("demo", "Run the whole pipeline on a small simulated dataset and write a report."),
}


def _package() -> str:
    return __package__ or "deeplense_ssl_cli"


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[cmd_name]
        module = importlib.import_module(f"{_package()}.{module_name}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deeplense-ssl")
def cli() -> None:
    """Self-supervised learning for strong gravitational lensing images."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one message on stderr and exit code 1 (2 for usage).

    SIGTERM and SIGHUP are handled like Ctrl-C while the command runs (temporary files are
    removed; exit code 128 + the signal number).
    """
    from .errors import handle_signals_like_ctrl_c, run_with_clean_errors

    restore = handle_signals_like_ctrl_c()
    try:
        code = run_with_clean_errors(cli, argv)
    finally:
        restore()
    sys.exit(code)


if __name__ == "__main__":
    main()
