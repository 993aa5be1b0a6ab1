"""``deeplense-ssl pretrain``: tiny end-to-end run, config precedence, clean errors."""

import json

import numpy as np
import pytest

from deeplense_ssl.io import write_hdf5
from deeplense_ssl_cli.main import main


@pytest.fixture(scope="module")
def data(module_tmp):
    path = module_tmp("clidata") / "d.h5"
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, 16, 16), dtype=np.float32)
    write_hdf5(path, images, np.arange(8) % 2, ["no_sub", "cdm"])
    return path


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_pretrain_end_to_end_with_yaml_and_flag_precedence(tmp_path, data, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "temperature: 0.2\nbatch-size: 8\nepochs: 5\nseed: 3\nproj_hidden_dim: 16\nmethod: blur\n"
    )
    out = tmp_path / "run"
    base = ["pretrain", "--data", str(data), "--out", str(out), "--config", str(cfg_file)]
    base += ["--batch-size", "4", "--stem", "small", "--device", "cpu"]
    base += ["--blur-sigmas-px", "0,1.5,3", "--no-progress"]
    argv = [*base, "--max-steps", "1"]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert "Wrote pretrain run" in stdout and str(out) in stdout
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["temperature"] == 0.2  # from the file
    assert cfg["epochs"] == 5 and cfg["seed"] == 3  # file values not replaced by flag defaults
    assert cfg["method"] == "blur" and cfg["proj_hidden_dim"] == 16
    assert cfg["batch_size"] == 4  # the explicit flag beats the file
    assert cfg["blur_sigmas_px"] == [0.0, 1.5, 3.0]
    assert cfg["stem"] == "small" and cfg["max_steps"] == 1
    assert (out / "backbone.pt").exists()

    # the same folder again without --resume: one clear line, exit 1, nothing overwritten
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert err.startswith("Error: ") and "--resume" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before

    # --resume with a changed temperature is refused, with more steps it continues
    code, _, err = _run([*argv, "--resume", "--temperature", "0.5"], capsys)
    assert code == 1 and "temperature: 0.2 -> 0.5" in err
    code, _, err = _run([*base, "--max-steps", "2", "--resume"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["resolved"]["final_step"] == 2


def test_pretrain_usage_and_config_errors(tmp_path, data, capsys):
    code, _, err = _run(["pretrain", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "--data" in err
    code, _, err = _run(["pretrain", "--data", str(data), "--method", "no-such-method"], capsys)
    assert code == 2 and "no-such-method" in err
    code, _, err = _run(["pretrain", "--data", str(data), "--blur-sigmas-px", "1,x"], capsys)
    assert code == 2 and "comma-separated" in err
    code, _, err = _run(
        ["pretrain", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r2")],
        capsys,
    )
    assert code == 1 and "missing.h5" in err
