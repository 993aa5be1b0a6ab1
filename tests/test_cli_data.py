"""End-to-end tests of ``deeplense-ssl convert`` and ``inspect`` (in-process, tiny files)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from helpers_cards import assert_card_layout

from deeplense_ssl_cli.errors import run_with_clean_errors
from deeplense_ssl_cli.main import cli
from deeplense_ssl_cli.options import explicit_params


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = run_with_clean_errors(cli, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def axion_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "model_ii"
    for name in ("axion", "cdm", "no_sub"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            img = rng.random((12, 12))
            if name == "axion":
                obj = np.array([img, 1e-23 * (i + 1)], dtype=object)
                np.save(root / name / f"{i}.npy", obj, allow_pickle=True)
            else:
                if name == "cdm" and i == 1:
                    img[2, 2] = np.nan
                np.save(root / name / f"{i}.npy", img[None])
    return root


def test_convert_folder_end_to_end(capsys, tmp_path: Path, axion_folder: Path):
    out = tmp_path / "out" / "data.h5"
    code, stdout, err = run(
        capsys,
        "convert",
        axion_folder,
        "--out",
        out,
        "--allow-pickle",
        "--nan-policy",
        "median",
        "--image-size",
        "8",
    )
    assert code == 0, err
    assert "1 non-finite pixels in 1 images" in stdout
    with h5py.File(out) as f:
        assert f["images"].shape == (6, 1, 8, 8) and f["images"].dtype == np.float32
        assert f["labels"][()].tolist() == [0, 0, 1, 1, 2, 2]
        assert json.loads(f.attrs["class_names"]) == ["axion", "cdm", "no_sub"]
        assert f["nan_counts"][()].tolist() == [0, 0, 0, 1, 0, 0]
        assert f["sources"][3].decode() == "cdm/1.npy"
        assert f["params/axion_mass_ev"][:2].tolist() == [1e-23, 2e-23]
        prov = json.loads(f.attrs["provenance"])
        assert prov["allow_pickle"] is True and prov["source_kind"] == "folder"
        assert f.attrs["nan_policy"] == "median" and f.attrs["image_size"] == 8


def test_convert_refuses_pickle_cleanly_and_writes_nothing(capsys, tmp_path, axion_folder):
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, _, err = run(capsys, "convert", axion_folder, "--out", outdir / "d.h5")
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "axion/0.npy" in err and "--allow-pickle" in err
    assert list(outdir.iterdir()) == []


def test_config_file_and_explicit_flags(capsys, tmp_path: Path, axion_folder: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nan_policy: zero\nimage_size: 10\nallow_pickle: true\n")
    out = tmp_path / "a.h5"
    code, _, err = run(capsys, "convert", axion_folder, "--out", out, "--config", cfg)
    assert code == 0, err
    with h5py.File(out) as f:  # YAML values used, defaults did not override them
        assert f.attrs["nan_policy"] == "zero" and f["images"].shape[-1] == 10
    code, _, err = run(
        capsys, "convert", axion_folder, "--out", out, "--config", cfg, "--nan-policy", "drop"
    )
    assert code == 0, err
    with h5py.File(out) as f:  # the explicit flag wins over the file
        assert f.attrs["nan_policy"] == "drop" and f["images"].shape == (5, 1, 10, 10)
    cfg.write_text("nan_policy: sometimes\n")
    code, _, err = run(capsys, "convert", axion_folder, "--config", cfg)
    assert code == 1 and "nan_policy='sometimes'" in err


def test_explicit_params_only_returns_given_flags():
    @click.command()
    @click.option("--a", default=1)
    @click.option("--b", default=2)
    def cmd(a: int, b: int) -> None:
        ctx = click.get_current_context()
        click.echo(json.dumps(explicit_params(ctx, {"a": a, "b": b})))

    from click.testing import CliRunner

    result = CliRunner().invoke(cmd, ["--b", "2"])
    assert json.loads(result.output) == {"b": 2}  # given explicitly, even if equal to default


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "h5", "fits", "mismatch", "mixed"])
def test_bad_inputs_give_one_line_and_exit_1(capsys, tmp_path: Path, case: str):
    from astropy.io import fits

    src = tmp_path / "src"
    expect = "src"
    if case == "empty":
        src.mkdir()
    elif case == "corrupt":
        src = tmp_path / "src.npy"
        src.write_bytes(b"\x93NUMPY\x01\x00garbage")
    elif case == "h5":
        src = tmp_path / "src.h5"
        with h5py.File(src, "w") as f:
            f["weights"] = np.zeros(3)
    elif case == "fits":
        src = tmp_path / "src.fits"
        table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(src)
    elif case == "mismatch":
        src = tmp_path / "src.npz"
        np.savez(src, images=np.zeros((4, 5, 5)), labels=np.zeros(3))
    elif case == "mixed":
        (src / "a").mkdir(parents=True)
        np.save(src / "a" / "x.npy", np.zeros((5, 5)))
        np.save(src / "a" / "y.npy", np.zeros((6, 6)))
        expect = "y.npy"
    out = tmp_path / "o.h5"
    for argv in (("convert", src, "--out", out), ("inspect", src)):
        if case == "mixed" and argv[0] == "inspect":
            continue  # inspect reports mixed shapes instead of failing
        code, _, err = run(capsys, *argv)
        assert code == 1, err
        assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert expect in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.h5")] == []


def test_inspect_and_card(capsys, tmp_path: Path, axion_folder: Path):
    code, out, err = run(capsys, "inspect", axion_folder, "--allow-pickle")
    assert code == 0, err
    assert "axion" in out and "NaN pixels:    1 (" in out and "(1, 12, 12) x4" in out
    code, out, err = run(capsys, "inspect", axion_folder, "--allow-pickle", "--json")
    summary = json.loads(out)
    assert summary["counts_per_class"] == {"axion": 2, "cdm": 2, "no_sub": 2}
    assert summary["params"]["axion_mass_ev"]["known"] == 2
    card = tmp_path / "cards" / "model_ii.md"
    code, out, err = run(capsys, "inspect", axion_folder, "--allow-pickle", "--card", card)
    assert code == 0, err
    text = card.read_text()
    assert_card_layout(text, str(card))
    assert "pretty_name: model_ii" in text
    assert "| cdm | 2 |" in text


def test_convert_out_is_a_folder(capsys, tmp_path: Path):
    np.save(tmp_path / "x.npy", np.zeros((3, 5, 5)))
    (tmp_path / "out").mkdir()
    code, _, err = run(capsys, "convert", tmp_path / "x.npy", "--out", tmp_path / "out")
    assert code == 1 and "is a folder" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []
