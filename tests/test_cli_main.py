"""The CLI shell: help, version, lazy commands, clean errors, install layout."""

import importlib.util
import subprocess
import sys

from click.testing import CliRunner

from deeplense_ssl import __version__
from deeplense_ssl_cli.main import COMMANDS, cli, main


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ["simulate", "convert", "inspect", "pretrain", "finetune", "evaluate", "report"]:
        assert name in result.output
    assert set(COMMANDS) >= {"simulate", "convert", "inspect", "pretrain", "finetune", "evaluate"}


def test_every_command_module_imports_and_has_help():
    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert __version__ in result.output


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["no-such-command"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "No such command" in capsys.readouterr().err


def test_no_top_level_cli_module_is_installed():
    """The CLI installs as deeplense_ssl_cli; a stray top-level `cli` would shadow users' code."""
    code = (
        "import importlib.util,sys; sys.path=[p for p in sys.path if p not in ('', '.')]; "
        "print(importlib.util.find_spec('cli') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "True", out.stderr
    assert importlib.util.find_spec("deeplense_ssl_cli") is not None
