"""Every CLI option that sets a config field takes its type, choices and default from that
field; config errors from flags and YAML files are one line, exit 1, nothing written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from deeplense_ssl.config import (
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
    field_spec,
)
from deeplense_ssl_cli.errors import run_with_clean_errors
from deeplense_ssl_cli.main import COMMANDS, cli

# command -> (config class, parameters that are not its fields, fields without an option)
CONFIGS: dict[str, tuple[type, set[str], set[str] | None]] = {
    "simulate": (SimulateConfig, {"config_path"}, set()),
    "convert": (ConvertConfig, {"config_path"}, set()),
    "pretrain": (PretrainConfig, {"config_path", "progress"}, set()),
    "finetune": (FinetuneConfig, {"config_path", "from_scratch", "random_init"}, {"init"}),
    "evaluate": (EvaluateConfig, {"config_path"}, set()),
    "report": (ReportConfig, {"config_path"}, set()),
    "export": (ExportConfig, {"config_path"}, set()),
    "embed": (EmbedConfig, {"config_path", "progress", "more_data"}, set()),
    "search": (SearchConfig, {"config_path"}, set()),
    "anomaly": (AnomalyConfig, {"config_path", "progress"}, set()),
    # commands without a config of their own: options shared with a config's fields
    "inspect": (ConvertConfig, {"path", "card", "as_json"}, None),
    "demo": (PretrainConfig, {"out", "quick"}, None),
}


def _command(name: str) -> click.Command:
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd is not None
    return cmd


def _processed_default(cmd: click.Command, param: click.Parameter):
    """The value the command function would receive for ``param`` when it is not given."""
    ctx = click.Context(cmd)
    value = param.type_cast_value(ctx, param.get_default(ctx))
    return param.callback(ctx, param, value) if param.callback else value


def test_every_command_is_checked():
    assert set(CONFIGS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_options_match_their_config_fields(name: str):
    cls, not_fields, unexposed = CONFIGS[name]
    cmd = _command(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {p.name: p for p in cmd.params if p.name != "help"}
    assert set(params) - fields <= not_fields, f"{name}: options without a config field"
    if unexposed is not None:  # every field can be set from the command line
        assert fields - set(params) == unexposed, f"{name}: fields without an option"
    for pname, param in params.items():
        if pname in not_fields:
            continue
        spec = field_spec(cls, pname)
        where = f"{name} {pname}"
        if isinstance(param, click.Argument):
            continue  # SRC / RUNS: required values, no default
        default = _processed_default(cmd, param)
        assert default == spec.default or (default is None and not spec.default), where
        if spec.choices is not None and not spec.many:
            assert isinstance(param.type, click.Choice), where
            assert tuple(param.type.choices) == spec.choices, where
        elif isinstance(param.type, click.Choice):
            pytest.fail(f"{where}: a click.Choice on a field without choices")
        if spec.type is bool:
            assert param.is_flag, where
        elif spec.type in (int, float) and not spec.many:
            assert param.type is {int: click.INT, float: click.FLOAT}[spec.type], where


def test_list_options_parse_like_their_fields(tmp_path: Path):
    """Comma lists: floats for blur sigmas, strings for classes; '' is the empty list."""
    cmd = _command("pretrain")
    ctx = cmd.make_context("pretrain", ["--blur-sigmas-px", "0, 1.5,3"])
    assert ctx.params["blur_sigmas_px"] == [0.0, 1.5, 3.0]
    cmd = _command("report")
    ctx = cmd.make_context("report", [str(tmp_path), "--attribution-methods", ""])
    assert ctx.params["attribution_methods"] == []


# ----------------------------------------------------------------------------- bad values


def _run(capsys: pytest.CaptureFixture, argv: list[object]) -> tuple[int, str]:
    code = run_with_clean_errors(cli, [str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 1, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.parametrize(
    "command, yaml_line, field",
    [
        ("pretrain", 'epochs: "ten"', "epochs"),
        ("pretrain", "batch_size: 2.5", "batch_size"),
        ("pretrain", "epochs: .nan", "epochs"),
        ("pretrain", "lr: .inf", "lr"),
        ("pretrain", "weight_decay: -1", "weight_decay"),
        ("pretrain", "momentum: -1", "momentum"),
        ("pretrain", "blur_sigmas_px: [0, x]", "blur_sigmas_px"),
        ("pretrain", "compile: maybe", "compile"),
        ("finetune", 'label_fraction: "0.1"', "label_fraction"),
        ("finetune", "weight_decay: -1", "weight_decay"),
        ("finetune", "epochs: null", "epochs"),
        ("evaluate", "batch_size: 0", "batch_size"),
        ("evaluate", "ood_classes: cdm", "ood_classes"),
        ("report", "n_attribution_examples: -2", "n_attribution_examples"),
        ("simulate", "n_per_class: 1.5", "n_per_class"),
        ("convert", "image_size: 0", "image_size"),
    ],
)
def test_bad_yaml_values_name_the_field_and_file(capsys, tmp_path, command, yaml_line, field):
    data = tmp_path / "d.h5"
    data.write_bytes(b"")  # never read: the config is refused first
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_line + "\n")
    out = tmp_path / "out"
    argv: list[object] = {
        "pretrain": ["--data", data, "--out", out],
        "finetune": ["--data", data, "--out", out, "--from-scratch"],
        "evaluate": ["--checkpoint", run_dir, "--data", data, "--out", out / "m.json"],
        "report": [run_dir, "--out", out / "r.html"],
        "simulate": ["--out", out / "s.h5"],
        "convert": [data, "--out", out / "c.h5"],
    }[command]
    code, err = _run(capsys, [command, *argv, "--config", cfg])
    _assert_one_line(code, err, f"{cfg}: {field} must be")
    assert not out.exists()  # nothing written (no config.json holding NaN)


@pytest.mark.parametrize(
    "argv, text",
    [
        (["evaluate", "--batch-size", "0"], "batch_size must be > 0, got 0"),
        (["evaluate", "--knn-k", "-3"], "knn_k must be > 0, got -3"),
        (["pretrain", "--momentum", "1"], "momentum must be in [0, 1), got 1.0"),
        (["pretrain", "--seed", "-1"], "seed must be in [0, 2**64 - 1], got -1"),
        (["finetune", "--label-fraction", "1.5"], "label_fraction must be in (0, 1], got 1.5"),
        (["finetune", "--weight-decay", "-1"], "weight_decay must be >= 0, got -1.0"),
        (["simulate", "--workers", "0"], "workers must be > 0, got 0"),
    ],
)
def test_bad_flag_values_are_one_line(capsys, tmp_path, argv, text):
    data = tmp_path / "d.h5"
    data.write_bytes(b"")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = tmp_path / "out"
    extra: list[object] = {
        "evaluate": ["--checkpoint", run_dir, "--data", data, "--out", out / "m.json"],
        "pretrain": ["--data", data, "--out", out],
        "finetune": ["--data", data, "--out", out, "--from-scratch"],
        "simulate": ["--out", out / "s.h5"],
    }[argv[0]]
    code, err = _run(capsys, [*argv, *extra])
    _assert_one_line(code, err, text)
    assert str(tmp_path) not in err  # a flag, not a file, is named
    assert not out.exists()
