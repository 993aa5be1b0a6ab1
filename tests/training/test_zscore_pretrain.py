"""``pretrain --normalize zscore-dataset``: per-channel statistics fit on the whole pretraining
set (in memory and streamed alike), recorded in ``config.json``, kept on resume, and used by
``embed --normalize auto``."""

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers_crash import Crash, crash_at

from deeplense_ssl import cleaning, streaming, training
from deeplense_ssl.checkpoint import load_checkpoint
from deeplense_ssl.cleaning import channel_stats
from deeplense_ssl.config import EmbedConfig, PretrainConfig, config_from_sources
from deeplense_ssl.embedding import embed_files, load_encoder, resolve_preprocessing
from deeplense_ssl.inference import embed
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.methods import get_method
from deeplense_ssl.runs import CHECKPOINT_FILE, CONFIG_FILE
from deeplense_ssl.streaming import ChunkedOrder
from deeplense_ssl.training import data as train_data
from deeplense_ssl.training import loop as train_loop

N, SIZE = 24, 16


def _images(n: int = N, seed: int = 0) -> np.ndarray:
    """Two bands far from zero mean / unit std (100 +- 5 and -3 +- 0.1), float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, SIZE, SIZE)).astype(np.float32)
    x[:, 0] = 100 + 5 * x[:, 0]
    x[:, 1] = -3 + 0.1 * x[:, 1]
    return x


def _labels(n: int = N) -> np.ndarray:
    return (np.arange(n) % 2).astype(np.int64)


def _write(path: Path, images: np.ndarray) -> Path:
    return write_hdf5(path, images, _labels(len(images)), ["a", "b"])


def _shards(folder: Path, images: np.ndarray, cuts=(7, 15)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(images)]
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        write_hdf5(folder / f"part{k}.h5", images[a:b], _labels(N)[a:b], ["a", "b"])
    return str(folder / "part*.h5")


def _cfg(out: Path, data, **kw) -> PretrainConfig:
    base = dict(out=str(out), data=str(data), stem="small", batch_size=2, epochs=2)
    base.update(proj_hidden_dim=16, proj_out_dim=8, device="cpu", checkpoint_every_steps=3)
    base.update(warmup_epochs=0.5, method="simclr", normalize="zscore-dataset")
    return PretrainConfig(**{**base, **kw})


def _numpy_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float64)
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def _manual(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    m, s = mean.astype(np.float32), std.astype(np.float32)
    return (images - m[None, :, None, None]) / s[None, :, None, None]


def _resolved(run: Path) -> dict:
    return json.loads((run / CONFIG_FILE).read_text())["resolved"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_FILE)["method"]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def small_blocks(monkeypatch):
    """Statistics blocks of 5 images (cross the shard cuts 7 and 15); chunks of 4 images and
    windows of 2 chunks for the streaming order."""
    monkeypatch.setattr(cleaning, "STATS_BLOCK_BYTES", 5 * 8 * 2 * SIZE * SIZE)
    monkeypatch.setattr(train_data, "CHUNK_IMAGES", 4)
    monkeypatch.setattr(streaming, "MAX_WINDOW_CHUNKS", 2)


# --------------------------------------------------------------------------------------------
# the statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 5, 7, 24, 100])
def test_channel_stats_equal_numpy_in_one_pass_over_any_blocks(block):
    images = _images()
    images[:, 0] += 1e4  # a large offset: a plain sum of squares would cancel
    stats = channel_stats(images[i : i + block] for i in range(0, N, block))
    mean, std = _numpy_stats(images)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(stats.std, std, rtol=1e-10)
    assert stats.n_images == N
    constant = channel_stats([np.full((3, 1, 4, 4), 2.5, np.float32)])
    assert constant.mean.tolist() == [2.5] and constant.std.tolist() == [1.0]


def test_pretraining_sees_images_normalised_with_the_whole_set_statistics(tmp_path, monkeypatch):
    images = _images()
    data = _write(tmp_path / "d.h5", images)
    seen: list[torch.Tensor] = []
    simclr = get_method("simclr")
    original = simclr.make_inputs

    def spy(self, x):
        seen.append(x.detach().clone())
        return original(self, x)

    monkeypatch.setattr(simclr, "make_inputs", spy)
    run = training.pretrain(_cfg(tmp_path / "run", data, max_steps=2), progress=False)
    mean, std = _numpy_stats(images)
    stats = _resolved(run)["norm_stats"]
    assert stats["method"] == "zscore-dataset" and stats["n_images"] == N
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-10)
    expected = _manual(images, mean, std)
    got = torch.cat(seen).numpy()
    assert got.shape == (4, 2, SIZE, SIZE)
    # every image seen is one of the manually normalised images (not the stored units)
    dist = ((got[:, None] - expected[None]) ** 2).sum(axis=(2, 3, 4)).min(axis=1)
    assert dist.max() < 1e-6, dist
    assert np.abs(got[:, 0]).max() < 10  # stored units are ~100


def test_streaming_and_in_memory_fit_the_same_statistics_and_weights(
    tmp_path, small_blocks, monkeypatch
):
    images = _images()
    spec = _shards(tmp_path / "s", images)
    streamed = training.pretrain(
        _cfg(tmp_path / "stream", spec, data_mode="stream", max_steps=2), progress=False
    )
    layout = _resolved(streamed)["stream_layout"]

    def order(seed, epoch, n):  # the in-memory run takes the streaming run's order
        chunked = ChunkedOrder(n, seed, epoch, layout["chunk_images"], layout["window_chunks"])
        return torch.from_numpy(chunked[:])

    monkeypatch.setattr(train_loop, "epoch_permutation", order)
    loaded = training.pretrain(
        _cfg(tmp_path / "memory", spec, data_mode="in-memory", max_steps=2), progress=False
    )
    one_file = training.pretrain(
        _cfg(tmp_path / "one", _write(tmp_path / "d.h5", images), max_steps=2), progress=False
    )
    a, b, c = (_resolved(r) for r in (streamed, loaded, one_file))
    assert a["data_mode"] == "stream" and b["data_mode"] == "in-memory"
    assert a["norm_stats"] == b["norm_stats"] == c["norm_stats"]  # bitwise: same blocks, sums
    mean, std = _numpy_stats(images)
    np.testing.assert_allclose(a["norm_stats"]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(a["norm_stats"]["std"], std, rtol=1e-10)
    assert a["data_fingerprint"] == b["data_fingerprint"] == c["data_fingerprint"]
    _assert_same_weights(streamed, loaded)
    _assert_same_weights(loaded, one_file)


def test_paired_renderings_get_the_statistics_of_data(tmp_path):
    images, other = _images(), _images(seed=1) * 2
    data, paired = _write(tmp_path / "a.h5", images), _write(tmp_path / "b.h5", other)
    cfg = _cfg(tmp_path / "run", data, paired_data=str(paired), method="contrastive-blur")
    loaded = train_data.open_training_data(cfg, None, None)
    mean, std = _numpy_stats(images)
    np.testing.assert_allclose(loaded.norm_stats["mean"], mean, rtol=1e-12)
    assert loaded.images is not None and loaded.images.shape == (N, 2, 2, SIZE, SIZE)
    np.testing.assert_allclose(loaded.images[:, 1], _manual(other, mean, std), atol=1e-5)


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["in-memory", "stream"])
def test_resume_reuses_the_recorded_statistics_and_is_bitwise(
    tmp_path, small_blocks, monkeypatch, mode
):
    spec = _shards(tmp_path / "s", _images())
    ref = training.pretrain(_cfg(tmp_path / "ref", spec, data_mode=mode, epochs=1), progress=False)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        training.pretrain(
            _cfg(run, spec, data_mode=mode, epochs=1), progress=False, on_step=crash_at(5)
        )
    recorded = load_checkpoint(run / CHECKPOINT_FILE)["resolved"]["norm_stats"]
    assert recorded == _resolved(ref)["norm_stats"]

    def refit(*args, **kwargs):
        raise AssertionError("a resume must not refit the statistics")

    monkeypatch.setattr(train_data, "channel_stats", refit)
    monkeypatch.setattr(streaming, "channel_stats", refit)
    torch.manual_seed(99)
    training.pretrain(_cfg(run, spec, data_mode=mode, epochs=1, resume=True), progress=False)
    assert _resolved(run)["norm_stats"] == recorded
    _assert_same_weights(ref, run)


def test_a_run_recorded_before_the_statistics_resumes_on_unnormalised_images(tmp_path):
    images = _images()
    data = _write(tmp_path / "d.h5", images)
    cfg = _cfg(tmp_path / "run", data)
    with pytest.warns(UserWarning, match="un-normalised images and resumes so"):
        old = train_data.open_training_data(cfg, None, {"data_mode": "in-memory"})
    assert old.norm_stats is None
    np.testing.assert_array_equal(old.images, images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = train_data.open_training_data(cfg, None, None)
    assert fresh.norm_stats is not None and np.abs(fresh.images).max() < 10


# --------------------------------------------------------------------------------------------
# readers of the run
# --------------------------------------------------------------------------------------------


def test_embed_auto_uses_the_stored_statistics_of_a_zscore_pretrain_run(tmp_path):
    images = _images()
    data = _write(tmp_path / "d.h5", images)
    run = training.pretrain(_cfg(tmp_path / "run", data, max_steps=1), progress=False)
    stats = _resolved(run)["norm_stats"]
    encoder = load_encoder(run)
    prep = resolve_preprocessing(encoder)  # --normalize auto
    assert prep["normalize"] == "zscore-dataset" and prep["norm_stats"] == stats
    out = tmp_path / "emb.h5"
    cfg = config_from_sources(
        EmbedConfig, None,
        {"checkpoint": str(run), "data": [str(data)], "out": str(out), "device": "cpu"},
    )  # fmt: skip
    embed_files(cfg)
    with h5py.File(out, "r") as f:
        got = f["embeddings"][()]
    manual = _manual(images, np.asarray(stats["mean"]), np.asarray(stats["std"]))
    want = embed(encoder.backbone, manual, "cpu", 8).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    raw = embed(encoder.backbone, images, "cpu", 8).numpy()
    assert not np.allclose(got, raw, atol=1e-3)  # the statistics were applied
