"""Config precedence (defaults < YAML < explicit overrides) and validation."""

import pytest

from deeplense_ssl.config import (
    FinetuneConfig,
    PretrainConfig,
    config_from_sources,
    config_to_dict,
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


def test_config_round_trips_through_dict():
    cfg = config_from_sources(PretrainConfig, None, {"data": "x", "blur_sigmas_px": [0.0, 2.0]})
    again = config_from_sources(PretrainConfig, None, config_to_dict(cfg))
    assert again == cfg
