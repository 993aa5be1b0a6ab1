"""``embed``: streamed, resumable, atomic embedding files whose rows trace back to their images,
and the streaming cleaner it is built on (``datasets.iter_clean_blocks``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_finetune import fake_pretrain_run, toy_images, write_toy_h5

from deeplense_ssl import embedding
from deeplense_ssl.checkpoint import load_pretrained_backbone
from deeplense_ssl.config import EmbedConfig, EvaluateConfig, FinetuneConfig, config_from_sources
from deeplense_ssl.datasets import iter_clean_blocks, load_dataset
from deeplense_ssl.embedding import embed_files, load_encoder, resolve_preprocessing
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.inference import embed
from deeplense_ssl.io import open_source, write_hdf5
from deeplense_ssl.runs import partial_path
from deeplense_ssl_cli.errors import run_with_clean_errors
from deeplense_ssl_cli.main import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(module_tmp):
    """A 1-band 16 px run, a labelled HDF5 (30 images) and an unlabelled .npy stack (5)."""
    root = module_tmp("embed")
    fake_pretrain_run(root / "run")
    write_toy_h5(root / "toy.h5", n_per_class=10, seed=0)
    extra, _ = toy_images(5, size=16, seed=3, n_classes=1)
    np.save(root / "extra.npy", extra[:, 0])  # (N, H, W)
    return root


def _cfg(files: Path, out: Path, **kw) -> EmbedConfig:
    values = {
        "checkpoint": str(files / "run"),
        "data": [str(files / "toy.h5"), str(files / "extra.npy")],
        "out": str(out),
        "block_size": 8,
        "batch_size": 4,
        "device": "cpu",
        **kw,
    }
    return config_from_sources(EmbedConfig, None, values)


def _contents(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f}
        attrs = {k: f.attrs[k] for k in f.attrs}
    return arrays, attrs


def _same_file(a: Path, b: Path) -> None:
    (arr_a, attrs_a), (arr_b, attrs_b) = _contents(a), _contents(b)
    assert set(arr_a) == set(arr_b)
    for key in arr_a:
        assert arr_a[key].dtype == arr_b[key].dtype, key
        np.testing.assert_array_equal(arr_a[key], arr_b[key], err_msg=key)
    assert attrs_a == attrs_b


# ----------------------------------------------------------------------------- iter_clean_blocks


@pytest.mark.parametrize("policy, normalize", [("zero", "minmax"), ("drop", "zscore")])
def test_iter_clean_blocks_matches_load_dataset(tmp_path, policy, normalize):
    images, labels = toy_images(7, size=16, seed=1)
    images[[2, 9, 10]] = np.nan  # whole images: dropped by "drop"
    images[4, 0, 3, 3] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=labels)
    ref = load_dataset(path, nan_policy=policy, normalize=normalize)
    with open_source(path) as src:
        blocks = list(
            iter_clean_blocks(
                src, nan_policy=policy, normalize=normalize, image_size=None, block_size=4
            )
        )
    assert [(b.start, b.stop) for b in blocks] == [
        (0, 4),
        (4, 8),
        (8, 12),
        (12, 16),
        (16, 20),
        (20, 21),
    ]
    np.testing.assert_array_equal(np.concatenate([b.images for b in blocks]), ref.images)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), ref.labels)
    np.testing.assert_array_equal(
        np.concatenate([b.index for b in blocks]), ref.meta["source_index"]
    )


def test_iter_clean_blocks_range_stats_and_errors(tmp_path):
    images, _ = toy_images(4, size=16, seed=2)
    path = tmp_path / "d.npy"
    np.save(path, images)
    stats = {"mean": [0.3], "std": [2.0], "n_images": 12}
    with open_source(path) as src:
        part = list(
            iter_clean_blocks(
                src, nan_policy="raise", normalize="zscore-dataset", image_size=8, stats=stats,
                start=5, stop=11, block_size=4,
            )
        )  # fmt: skip
        assert [(b.start, b.stop) for b in part] == [(5, 9), (9, 11)]
        assert part[0].images.shape == (4, 1, 8, 8)
        with pytest.raises(ConfigError, match="statistics"):
            next(
                iter_clean_blocks(
                    src, nan_policy="raise", normalize="zscore-dataset", image_size=None
                )
            )
        with pytest.raises(ConfigError, match="start"):
            next(
                iter_clean_blocks(
                    src, nan_policy="raise", normalize="none", image_size=None, start=20
                )
            )
    whole = load_dataset(path, normalize="zscore-dataset", norm_stats=stats, image_size=8)
    np.testing.assert_allclose(np.concatenate([b.images for b in part]), whole.images[5:11])


# ----------------------------------------------------------------------------- embed


def test_rows_trace_back_to_their_images(files, tmp_path):
    result = embed_files(_cfg(files, tmp_path / "e.h5"), progress=False)
    assert result.rows == 35 and result.resumed_rows == 0 and not partial_path(result.path).exists()
    backbone, _ = load_pretrained_backbone(files / "run")
    toy = load_dataset(files / "toy.h5", normalize="minmax")
    extra = load_dataset(files / "extra.npy", normalize="minmax")
    direct = embed(backbone, np.concatenate([toy.images, extra.images]), batch_size=4).numpy()
    with h5py.File(result.path, "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], direct, rtol=1e-5, atol=1e-6)
        assert f["embeddings"].dtype == np.float32 and f["embeddings"].shape == (35, 512)
        np.testing.assert_array_equal(f["file_index"][()], [0] * 30 + [1] * 5)
        np.testing.assert_array_equal(f["index_in_file"][()], [*range(30), *range(5)])
        np.testing.assert_array_equal(f["labels"][()], [*toy.labels, -1, -1, -1, -1, -1])
        sources = [s.decode() for s in f["sources"][()]]
        assert sources[:2] == ["toy[0]", "toy[1]"] and sources[30] == "extra.npy[0]"
        attrs = dict(f.attrs)
    assert json.loads(attrs["files"]) == [str(files / "toy.h5"), str(files / "extra.npy")]
    assert json.loads(attrs["class_names"]) == ["no_sub", "cdm", "axion"]
    assert json.loads(attrs["backbone"])["name"] == "resnet18"
    assert attrs["embedding_dim"] == 512 and attrs["dtype"] == "float32"
    assert attrs["run"] == str((files / "run").resolve()) and attrs["complete"] == 1
    assert json.loads(attrs["preprocessing"])["normalize"] == "minmax"
    # one image embedded on its own gives its row
    one = embed(backbone, extra.images[3:4]).numpy()
    with h5py.File(result.path, "r") as f:
        np.testing.assert_allclose(f["embeddings"][33], one[0], rtol=1e-5, atol=1e-6)


class _Killed(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("before_commit", [False, True])
def test_resumed_after_a_kill_gives_the_same_file(files, tmp_path, monkeypatch, before_commit):
    whole = embed_files(_cfg(files, tmp_path / "whole.h5"), progress=False).path
    out = tmp_path / "e.h5"
    real = embedding._commit
    calls = []

    def dies_at_second_block(writer, next_file, next_start):
        calls.append(next_start)
        if len(calls) == 2 and before_commit:  # rows of block 2 written, not committed
            raise _Killed()
        real(writer, next_file, next_start)
        if len(calls) == 1 and not before_commit:
            raise _Killed()

    monkeypatch.setattr(embedding, "_commit", dies_at_second_block)
    with pytest.raises(_Killed):
        embed_files(_cfg(files, out), progress=False)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        assert f.attrs["rows_done"] == 8 and f.attrs["complete"] == 0
        assert len(f["embeddings"]) == (16 if before_commit else 8)
    monkeypatch.setattr(embedding, "_commit", real)
    result = embed_files(_cfg(files, out), progress=False)
    assert result.resumed_rows == 8 and result.discarded is None and result.rows == 35
    assert not partial_path(out).exists()
    _same_file(result.path, whole)


def test_a_partial_file_of_other_options_or_damaged_is_started_over(files, tmp_path, monkeypatch):
    out = tmp_path / "e.h5"
    real = embedding._commit

    def dies(writer, next_file, next_start):
        real(writer, next_file, next_start)
        raise _Killed()

    monkeypatch.setattr(embedding, "_commit", dies)
    with pytest.raises(_Killed):
        embed_files(_cfg(files, out), progress=False)
    monkeypatch.setattr(embedding, "_commit", real)
    result = embed_files(_cfg(files, out, nan_policy="zero"), progress=False)
    assert result.resumed_rows == 0 and "other options" in result.discarded
    partial_path(out).write_bytes(b"not hdf5")
    result = embed_files(_cfg(files, out), progress=False)
    assert result.resumed_rows == 0 and "unreadable" in result.discarded and result.rows == 35


def test_float16(files, tmp_path):
    f32 = embed_files(_cfg(files, tmp_path / "a.h5"), progress=False).path
    f16 = embed_files(_cfg(files, tmp_path / "b.h5", float16=True), progress=False).path
    with h5py.File(f32, "r") as a, h5py.File(f16, "r") as b:
        assert b["embeddings"].dtype == np.float16 and b.attrs["dtype"] == "float16"
        np.testing.assert_allclose(b["embeddings"][()], a["embeddings"][()], rtol=2e-3, atol=1e-3)
        assert a.attrs["fingerprint"] != b.attrs["fingerprint"]


@pytest.mark.slow
def test_a_real_sigkill_after_a_commit_resumes(files, tmp_path):
    """SIGKILL right after the first block was flushed: the file is readable and continues."""
    out = tmp_path / "e.h5"
    script = textwrap.dedent(
        f"""
        import os, signal
        from deeplense_ssl import embedding
        from deeplense_ssl.config import EmbedConfig
        real = embedding._commit
        def commit(writer, a, b):
            real(writer, a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        embedding._commit = commit
        cfg = EmbedConfig(checkpoint={str(files / "run")!r}, data=[{str(files / "toy.h5")!r}],
                          out={str(out)!r}, block_size=8, batch_size=4, device="cpu")
        embedding.embed_files(cfg, progress=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, timeout=300)
    assert proc.returncode == -9
    assert not out.exists() and partial_path(out).exists()
    cfg = _cfg(files, out, data=[str(files / "toy.h5")])
    result = embed_files(cfg, progress=False)
    assert result.resumed_rows == 8 and result.rows == 30
    whole = embed_files(
        _cfg(files, tmp_path / "w.h5", data=[str(files / "toy.h5")]), progress=False
    )
    _same_file(result.path, whole.path)


def test_a_finetune_run_embeds_like_evaluate_with_its_stored_statistics(files, tmp_path):
    """zscore-dataset: the run's statistics are applied; rows equal evaluate's embeddings."""
    run = tmp_path / "ft"
    ft = {
        "data": str(files / "toy.h5"), "checkpoint": str(files / "run"), "out": str(run),
        "epochs": 1, "min_steps": 0, "batch_size": 16, "normalize": "zscore-dataset",
        "feature_dihedral": False, "device": "cpu",
    }  # fmt: skip
    finetune(config_from_sources(FinetuneConfig, None, ft), progress=False)
    test = write_toy_h5(tmp_path / "test.h5", n_per_class=4, seed=5)
    ev = {"checkpoint": str(run), "data": str(test), "n_bootstrap": 0, "device": "cpu"}
    evaluate(config_from_sources(EvaluateConfig, None, ev), progress=False)
    encoder = load_encoder(run)
    assert encoder.kind == "finetune" and encoder.preprocessing["norm_stats"] is not None
    prep = resolve_preprocessing(encoder)
    assert prep["normalize"] == "zscore-dataset" and prep["norm_stats"]["n_images"] > 0
    cfg = _cfg(files, tmp_path / "e.h5", checkpoint=str(run), data=[str(test)])
    result = embed_files(cfg, progress=False)
    scores = np.load(run / "scores.npz")
    with h5py.File(result.path, "r") as f:
        np.testing.assert_allclose(f["embeddings"][()], scores["embeddings"], rtol=1e-4, atol=1e-5)
        assert f.attrs["run_kind"] == "finetune"
    with pytest.raises(ConfigError, match="statistics"):
        resolve_preprocessing(load_encoder(files / "run"), normalize="zscore-dataset")


# ----------------------------------------------------------------------------- CLI


def _run(capsys, argv) -> tuple[int, str, str]:
    code = run_with_clean_errors(cli, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_embed_takes_several_files_after_data(files, tmp_path, capsys):
    out = tmp_path / "e.h5"
    argv = ["embed", "--checkpoint", files / "run", "--data", files / "toy.h5", files / "extra.npy"]
    code, stdout, err = _run(capsys, [*argv, "--out", out, "--float16", "--no-progress"])
    assert code == 0, err
    assert f"Wrote 35 embeddings to {out}" in stdout
    with h5py.File(out, "r") as f:
        assert f["embeddings"].dtype == np.float16 and len(f["embeddings"]) == 35


def _assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 1, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


def test_cli_embed_bad_inputs_are_one_line_and_leave_nothing(files, tmp_path, capsys):
    three_bands, _ = toy_images(2, size=16, chans=3, n_classes=1)
    np.save(tmp_path / "rgb.npy", three_bands)
    big, labels = toy_images(2, size=24, n_classes=1)
    write_hdf5(tmp_path / "big.h5", big, labels, ["a"])
    out = tmp_path / "e.h5"
    base = ["embed", "--checkpoint", files / "run", "--out", out, "--no-progress", "--data"]
    cases = [
        ([files / "toy.h5", tmp_path / "rgb.npy"], ["rgb.npy", "3 band(s)", "trained on 1"]),
        ([tmp_path / "big.h5"], ["big.h5", "24x24 px", "--image-size 16"]),
        ([tmp_path / "missing.h5"], ["missing.h5", "no such file"]),
    ]
    for data, expected in cases:
        code, _, err = _run(capsys, [*base, *data])
        _assert_one_line(code, err, *expected)
        assert not out.exists() and not partial_path(out).exists()
    code, _, err = _run(capsys, [*base[:2], tmp_path / "nope", *base[3:], files / "toy.h5"])
    _assert_one_line(code, err, "no such run folder")
    assert not out.exists() and not partial_path(out).exists()


def test_cli_embed_interrupted_says_how_to_continue_and_continues(
    files, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "e.h5"
    argv = ["embed", "--checkpoint", files / "run", "--data", files / "toy.h5", files / "extra.npy"]
    argv += ["--out", out, "--block-size", 8, "--no-progress"]
    real = embedding._commit

    def interrupted(writer, next_file, next_start):
        real(writer, next_file, next_start)
        raise KeyboardInterrupt

    monkeypatch.setattr(embedding, "_commit", interrupted)
    with pytest.raises(SystemExit) as exc:
        _run(capsys, argv)
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert f"kept in {partial_path(out)}" in err and "Traceback" not in err
    monkeypatch.setattr(embedding, "_commit", real)
    code, stdout, err = _run(capsys, argv)
    assert code == 0, err
    assert "Wrote 35 embeddings (8 resumed)" in stdout and not partial_path(out).exists()
