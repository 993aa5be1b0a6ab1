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


def test_os_errors_become_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """A permission error deep in the library is reported without a traceback."""
    import click

    locked = tmp_path / "locked.h5"

    @click.command(name="boom")
    def boom():
        raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setitem(cli.commands, "boom", boom)
    monkeypatch.setattr(type(cli), "get_command", lambda self, ctx, name: self.commands.get(name))
    try:
        main(["boom"])
    except SystemExit as exc:
        assert exc.code == 1
    err = capsys.readouterr().err
    assert str(locked) in err and "Permission denied" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_comma_list_strips_and_drops_blanks():
    from deeplense_ssl_cli.options import comma_list

    assert comma_list(" cdm, axion ,, ") == ["cdm", "axion"]
    assert comma_list("") == []


def test_demo_passes_method_and_sizes_to_run_demo(monkeypatch, tmp_path):
    import deeplense_ssl.demo as demo

    seen = {}

    def fake_run_demo(out, *, device, seed, plan):
        seen.update(out=out, device=device, seed=seed, plan=plan)
        return tmp_path / "report.html"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    args = ["demo", "--out", str(tmp_path), "--method", "contrastive-blur", "--quick"]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert seen["plan"].method == "contrastive-blur"
    assert seen["plan"] == demo.DemoPlan(**{**vars(demo.plan_for("cpu", quick=True)),
                                            "method": "contrastive-blur"})  # fmt: skip
    assert (seen["device"], seen["seed"]) == ("cpu", 3)
    assert "report.html" in result.output

    result = CliRunner().invoke(cli, ["demo", "--method", "simclr-ish"])
    assert result.exit_code == 2 and "simclr-ish" in result.output
