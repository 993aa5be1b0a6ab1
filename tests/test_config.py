"""Config precedence (defaults < YAML < explicit overrides) and validation."""

import dataclasses
import json

import numpy as np
import pytest

from deeplense_ssl.config import (
    ConvertConfig,
    EvaluateConfig,
    FinetuneConfig,
    PretrainConfig,
    ReportConfig,
    SimulateConfig,
    config_from_sources,
    config_to_dict,
    field_spec,
)
from deeplense_ssl.errors import ConfigError


def test_defaults_then_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: a.h5\nepochs: 7\nbatch-size: 16\ntemperature: 0.2\n")
    cfg = config_from_sources(PretrainConfig, cfg_file, {"epochs": 3})
    assert cfg.data == "a.h5"
    assert cfg.epochs == 3  # explicit override beats the file
    assert cfg.batch_size == 16  # dashes in YAML keys are accepted
    assert cfg.temperature == 0.2
    assert cfg.method == PretrainConfig().method  # untouched default


def test_unknown_key_names_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: a.h5\nepochz: 7\n")
    with pytest.raises(ConfigError, match=r"epochz.*c\.yaml|c\.yaml.*epochz"):
        config_from_sources(PretrainConfig, cfg_file)


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        config_from_sources(PretrainConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_from_sources(PretrainConfig, lst)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"data": "x", "method": "no-such-method"}, "method"),
        ({"data": "x", "nan_policy": "ignore"}, "nan_policy"),
        ({"data": "x", "temperature": 0.0}, "temperature"),
        ({"data": "x", "n_views": 1}, "n_views"),
        ({}, "--data"),
    ],
)
def test_pretrain_validation(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_sources(PretrainConfig, None, overrides)


def test_finetune_needs_checkpoint_unless_baseline():
    with pytest.raises(ConfigError, match="--checkpoint"):
        config_from_sources(FinetuneConfig, None, {"data": "x"})
    cfg = config_from_sources(FinetuneConfig, None, {"data": "x", "init": "scratch"})
    assert cfg.init == "scratch"
    with pytest.raises(ConfigError, match="label_fraction"):
        config_from_sources(
            FinetuneConfig, None, {"data": "x", "init": "random", "label_fraction": 0}
        )


@pytest.mark.parametrize(
    "init, head, pattern",
    [
        ("random", "full", "--random-init keeps the random backbone frozen"),
        ("random", "lp-ft", "--random-init keeps the random backbone frozen"),
        ("scratch", "lp-ft", "--head lp-ft starts from a pretrained backbone"),
    ],
)
def test_finetune_refuses_a_head_its_init_cannot_train_while_loading_the_config(
    init, head, pattern, tmp_path
):
    # caught where the config is read (a YAML file here), before any data or checkpoint is
    # opened: "x" does not exist
    path = tmp_path / "ft.yaml"
    path.write_text(f"data: x\ninit: {init}\nhead: {head}\n")
    with pytest.raises(ConfigError, match=pattern):
        config_from_sources(FinetuneConfig, path, {})
    ok = {"random": "linear", "scratch": "full"}[init]
    assert config_from_sources(FinetuneConfig, None, {"data": "x", "init": init, "head": ok})


def test_config_round_trips_through_dict():
    cfg = config_from_sources(PretrainConfig, None, {"data": "x", "blur_sigmas_px": [0.0, 2.0]})
    again = config_from_sources(PretrainConfig, None, config_to_dict(cfg))
    assert again == cfg


# ----------------------------------------------------------------------------- typed fields

CONFIGS = [SimulateConfig, ConvertConfig, PretrainConfig, FinetuneConfig, EvaluateConfig]
CONFIGS += [ReportConfig]
REQUIRED = {  # the smallest valid config of each class
    SimulateConfig: {},
    ConvertConfig: {"src": "x"},
    PretrainConfig: {"data": "x"},
    FinetuneConfig: {"data": "x", "init": "scratch"},
    EvaluateConfig: {"checkpoint": "r", "data": "x"},
    ReportConfig: {"runs": ["r"]},
}


@pytest.mark.parametrize(
    "cls, key, value, message",
    [
        (PretrainConfig, "epochs", "ten", "epochs must be an integer, got 'ten' (str)"),
        (PretrainConfig, "batch_size", 2.5, "batch_size must be an integer, got 2.5 (float)"),
        (PretrainConfig, "epochs", float("nan"), "epochs must be an integer, got nan"),
        (PretrainConfig, "epochs", True, "epochs must be an integer, got True (bool)"),
        (PretrainConfig, "temperature", float("nan"), "temperature must be a finite number"),
        (PretrainConfig, "weight_decay", -1, "weight_decay must be >= 0, got -1"),
        (PretrainConfig, "momentum", -1, "momentum must be in [0, 1), got -1"),
        (PretrainConfig, "blur_sigmas_px", [0.0, -1.0], "blur_sigmas_px must be >= 0, got -1"),
        (PretrainConfig, "blur_sigmas_px", "0,1", "blur_sigmas_px must be a list of finite"),
        (PretrainConfig, "channels_last", "yes", "channels_last must be true or false"),
        (PretrainConfig, "stem", "huge", "stem='huge' is not one of imagenet, cifar, small"),
        (FinetuneConfig, "label_fraction", "0.1", "label_fraction must be a finite number"),
        (FinetuneConfig, "weight_decay", -1, "weight_decay must be >= 0, got -1"),
        (FinetuneConfig, "label_fraction", 1.01, "label_fraction must be in (0, 1], got 1.01"),
        (FinetuneConfig, "checkpoint", 3, "checkpoint must be a string, got 3 (int)"),
        (EvaluateConfig, "batch_size", 0, "batch_size must be > 0, got 0"),
        (EvaluateConfig, "ood_classes", [1], "ood_classes must be a list of strings, but item 1"),
        (ReportConfig, "attribution_methods", ["x"], "attribution_methods: unknown value(s) x"),
        (SimulateConfig, "model", "model_iv", "model='model_iv' is not one of model_i"),
        (SimulateConfig, "seed", -1, "seed must be in [0, 2**64 - 1], got -1"),
        (ConvertConfig, "normalize", "zscore-dataset", "needs the training split"),
    ],
)
def test_wrong_types_and_ranges_are_one_config_error(tmp_path, cls, key, value, message):
    """The same message from the API (a dataclass + validate), overrides and a YAML file."""
    with pytest.raises(ConfigError) as api:
        cls(**{**REQUIRED[cls], key: value}).validate()
    assert message in str(api.value)
    with pytest.raises(ConfigError) as flags:
        config_from_sources(cls, None, {**REQUIRED[cls], key: value})
    assert str(flags.value) == str(api.value)
    cfg_file = tmp_path / "c.json"  # JSON keeps NaN, tuples-as-lists and types exactly
    cfg_file.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as from_file:
        config_from_sources(cls, cfg_file, REQUIRED[cls])
    assert str(from_file.value) == f"{cfg_file}: {api.value}"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_type_checked_and_defaults_pass(cls):
    cfg = config_from_sources(cls, None, REQUIRED[cls])  # every default is valid
    for f in dataclasses.fields(cls):
        bad = dataclasses.replace(cfg, **{f.name: object()})
        with pytest.raises(ConfigError, match=rf"^{f.name}\b"):
            bad.validate()


def test_integral_and_numpy_numbers_are_accepted():
    cfg = config_from_sources(
        PretrainConfig,
        None,
        {"data": "x", "epochs": np.int64(3), "lr": 1, "momentum": np.float32(0.5)},
    )
    assert cfg.epochs == 3 and cfg.lr == 1 and cfg.momentum == 0.5
    cfg = config_from_sources(PretrainConfig, None, {"data": "x", "max_steps": None})
    assert cfg.max_steps is None


def test_yaml_value_overridden_by_a_flag_is_not_blamed_on_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: x\nepochs: 5\n")
    with pytest.raises(ConfigError) as exc:
        config_from_sources(PretrainConfig, cfg_file, {"epochs": 0})
    assert str(exc.value) == "epochs must be > 0, got 0."


def test_choices_come_from_the_implementing_modules():
    import deeplense_ssl.attribution as attribution
    import deeplense_ssl.backbones as backbones
    import deeplense_ssl.cleaning as cleaning
    import deeplense_ssl.heads as heads
    import deeplense_ssl.methods as methods
    import deeplense_ssl.optim as optim
    import deeplense_ssl.runtime as runtime
    import deeplense_ssl.transforms as transforms

    def choices(cls, name):
        return field_spec(cls, name).choices

    assert choices(PretrainConfig, "method") == methods.METHOD_NAMES
    assert choices(PretrainConfig, "backbone") == tuple(backbones.BACKBONES)
    assert choices(FinetuneConfig, "backbone") == tuple(backbones.BACKBONES)
    assert choices(PretrainConfig, "stem") == choices(FinetuneConfig, "stem") == backbones.STEMS
    assert choices(FinetuneConfig, "head") == heads.CLASSIFIER_HEADS
    assert choices(PretrainConfig, "optimizer") == optim.OPTIMIZERS
    assert choices(PretrainConfig, "augment") == tuple(transforms.PRESETS)
    assert choices(PretrainConfig, "amp") == runtime.AMP_MODES
    for cls in (PretrainConfig, FinetuneConfig, EvaluateConfig, ReportConfig):
        assert choices(cls, "device") == runtime.DEVICES
    assert choices(ReportConfig, "attribution_methods") == attribution.METHODS
    assert choices(PretrainConfig, "nan_policy") == cleaning.NAN_POLICIES
    assert choices(PretrainConfig, "normalize") == cleaning.NORMALIZATIONS
    assert choices(FinetuneConfig, "normalize") == ("auto", *cleaning.NORMALIZATIONS)


def test_field_spec_describes_types_and_copies_defaults():
    spec = field_spec(PretrainConfig, "blur_sigmas_px")
    assert (spec.type, spec.many, spec.optional) == (float, True, False)
    spec.default.append(9.0)
    assert field_spec(PretrainConfig, "blur_sigmas_px").default == [0.0, 1.0, 2.0, 3.0]
    spec = field_spec(PretrainConfig, "lr")
    assert (spec.type, spec.many, spec.optional, spec.default) == (float, False, True, None)
    spec = field_spec(EvaluateConfig, "ood_classes")
    assert (spec.type, spec.many, spec.optional, spec.default) == (str, True, False, [])


@pytest.mark.parametrize(
    "entry, cls, bad",
    [
        ("deeplense_ssl.training:pretrain", PretrainConfig, {"epochs": float("nan")}),
        ("deeplense_ssl.training:pretrain", PretrainConfig, {"batch_size": 2.5}),
        ("deeplense_ssl.finetuning:finetune", FinetuneConfig, {"weight_decay": -1.0}),
        ("deeplense_ssl.evaluation:evaluate", EvaluateConfig, {"batch_size": 0}),
        ("deeplense_ssl.report:build_report", ReportConfig, {"n_attribution_examples": -1}),
        ("deeplense_ssl.simulate:simulate_dataset", SimulateConfig, {"n_per_class": 2.5}),
    ],
)
def test_library_entry_points_refuse_bad_configs_before_writing(tmp_path, entry, cls, bad):
    import importlib

    module, name = entry.split(":")
    run = getattr(importlib.import_module(module), name)
    out = tmp_path / "out"
    given = {**REQUIRED[cls], "out": str(out), **bad}
    with pytest.raises(ConfigError, match=rf"^{next(iter(bad))} must be"):
        run(cls(**given))
    assert not out.exists()
