"""Streaming training data (issue 13): shards, the chunked order, one rank's reads, the same
cleaned images as the in-memory path, the same weights under the same order, bitwise resume,
and bad or vanishing shards."""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers_crash import Crash, crash_at, kill_and_resume

from deeplense_ssl import streaming, training
from deeplense_ssl.checkpoint import load_checkpoint, save_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.datasets import load_dataset
from deeplense_ssl.distributed import shard_batch_indices
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.runs import CHECKPOINT_FILE, CONFIG_FILE
from deeplense_ssl.streaming import (
    ChunkedOrder,
    CleanOptions,
    ShardSet,
    StreamingData,
    StreamLayout,
    StreamReader,
    choose_data_mode,
    shard_paths,
)
from deeplense_ssl.training import loop as train_loop

# --------------------------------------------------------------------------------------------
# data helpers
# --------------------------------------------------------------------------------------------


def _images(n: int = 24, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32) * 5 - 1


def _labels(n: int = 24) -> np.ndarray:
    return (np.arange(n) % 2).astype(np.int64)


def _write(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    return write_hdf5(path, images, labels, ["a", "b"])


def _shards(folder: Path, images: np.ndarray, labels: np.ndarray, cuts=(7, 15)) -> list[Path]:
    """``images`` split at ``cuts`` into ``part0.h5``, ``part1.h5``, ... (sorted names)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(images)]
    return [
        _write(folder / f"part{k}.h5", images[a:b], labels[a:b])
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def _put_nans(path: Path, rows: list[int], offset: int = 0) -> None:
    """NaN pixels in images ``rows`` of ``path``, placed by their global index ``offset + i``."""
    with h5py.File(path, "r+") as f:
        for i in rows:
            g = offset + i
            f["images"][i, 0, 2 + g % 5, 3] = np.nan
            f["images"][i, 0, 7, 1 + g % 7] = np.nan


# --------------------------------------------------------------------------------------------
# --data: one path, a list, a glob
# --------------------------------------------------------------------------------------------


def test_shard_paths_takes_a_path_a_list_or_sorted_glob_matches(tmp_path):
    paths = _shards(tmp_path / "s", _images(), _labels())
    odd = tmp_path / "a,b[1].h5"  # an existing name with a comma and glob characters
    odd.write_bytes(b"")
    assert shard_paths(str(odd)) == [odd]
    assert shard_paths(str(tmp_path / "s" / "part*.h5")) == paths
    assert shard_paths(f"{paths[2]}, {paths[0]}") == [paths[2], paths[0]]
    assert shard_paths(str(tmp_path / "missing.h5")) == [tmp_path / "missing.h5"]
    with pytest.raises(DataError, match=r"nothing\*\.h5: no file matches"):
        shard_paths(str(tmp_path / "nothing*.h5"))
    with pytest.raises(DataError, match="named twice"):
        shard_paths(f"{paths[0]},{tmp_path / 's' / 'part*.h5'}")


def test_choose_data_mode_streams_only_beyond_the_budget():
    assert choose_data_mode("auto", 10, 9) == "stream"
    assert choose_data_mode("auto", 10, 10) == "in-memory"
    assert choose_data_mode("auto", 10**15, None) == "in-memory"  # unknown memory: as before
    assert choose_data_mode("stream", 1, 10) == "stream"
    assert choose_data_mode("in-memory", 10**15, 1) == "in-memory"
    with pytest.raises(ConfigError, match="data_mode='fast'"):
        choose_data_mode("fast", 1, 1)


# --------------------------------------------------------------------------------------------
# the order
# --------------------------------------------------------------------------------------------


def _reference_order(n, seed, epoch, chunk, window) -> np.ndarray:
    """A loop transcription of the documented order (chunks shuffled, windows shuffled)."""
    n_chunks = (n + chunk - 1) // chunk
    chunks = list(np.random.default_rng([seed, epoch, 0]).permutation(n_chunks))
    out = []
    for w, first in enumerate(range(0, n_chunks, window)):
        images = []
        for c in chunks[first : first + window]:
            images += list(range(c * chunk, min((c + 1) * chunk, n)))
        out += list(np.random.default_rng([seed, epoch, w + 1]).permutation(np.array(images)))
    return np.array(out)


@pytest.mark.parametrize("n, chunk, window", [(23, 4, 2), (24, 4, 3), (5, 8, 2), (40, 3, 1)])
def test_chunked_order_matches_a_loop_transcription(n, chunk, window):
    order = ChunkedOrder(n, 7, 3, chunk, window)
    ref = _reference_order(n, 7, 3, chunk, window)
    assert np.array_equal(order[:], ref)
    assert sorted(ref.tolist()) == list(range(n))  # a permutation
    assert np.array_equal(order[5:17], ref[5:17])  # slices across windows
    # each window holds whole chunks: reads stay sequential
    for w in range(order.n_windows):
        images = order.window_images(w)
        assert len(set((images // chunk).tolist())) <= window
    assert np.array_equal(ChunkedOrder(n, 7, 3, chunk, window)[:], ref)  # (seed, epoch) only
    assert not np.array_equal(ChunkedOrder(n, 7, 4, chunk, window)[:], ref)
    assert not np.array_equal(ChunkedOrder(n, 8, 3, chunk, window)[:], ref)


class _Spy:
    """StreamingData stand-in: image ``i`` is the constant ``i``; records every read."""

    def __init__(self, n: int):
        self.n, self.shape, self.reads = n, (1, 2, 2), []

    def read(self, rows):
        self.reads.append(np.asarray(rows).copy())
        return np.broadcast_to(
            np.asarray(rows, np.float32)[:, None, None, None], (len(rows), 1, 2, 2)
        ).copy()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_reads_only_its_own_part_of_the_global_batches(world):
    n, batch, layout = 50, 3, StreamLayout(4, 2)
    rows = np.arange(100, 100 + n)  # the training images are global rows 100..149
    spe = n // (batch * world)
    order = ChunkedOrder(n, 1, 0, 4, 2)
    seen = []
    for rank in range(world):
        spy = _Spy(n)
        reader = StreamReader(spy, rows, 1, layout, spe, batch * world, rank, world)  # type: ignore[arg-type]
        for step in range(spe):
            images, got_rows = reader.batch(step)
            glob = torch.arange(step * batch * world, (step + 1) * batch * world)
            pos = shard_batch_indices(glob, rank, world).numpy()
            assert np.array_equal(got_rows, rows[order[:][pos]])
            assert np.array_equal(images[:, 0, 0, 0], got_rows.astype(np.float32))
            seen.append(got_rows)
        read = np.concatenate(spy.reads)
        assert len(read) == len(set(read.tolist())) == spe * batch  # its own rows, once each
    every = np.concatenate(seen)
    assert len(set(every.tolist())) == len(every) == spe * batch * world


def test_a_reader_keeps_at_most_the_windows_of_the_current_step():
    spy, layout = _Spy(40), StreamLayout(4, 1)
    reader = StreamReader(spy, np.arange(40), 0, layout, 10, 4)  # type: ignore[arg-type]
    for step in range(10):
        reader.batch(step)
        assert len(reader._windows) <= 2
    reader.batch(10)  # the next epoch starts afresh
    assert len(reader._windows) == 1


# --------------------------------------------------------------------------------------------
# the same cleaned images as load_dataset
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nan_policy, normalize, image_size",
    [("zero", "minmax", None), ("median", "zscore", 12), ("interpolate", "asinh", 20),
     ("zero", "none", None), ("zero", "zscore-dataset", None)],
)  # fmt: skip
def test_streamed_images_equal_the_loaded_images(tmp_path, nan_policy, normalize, image_size):
    images, labels = _images(), _labels()
    whole = _write(tmp_path / "whole.h5", images, labels)
    paths = _shards(tmp_path / "s", images, labels)
    _put_nans(whole, [0, 5, 9, 23])
    _put_nans(paths[0], [0, 5])
    _put_nans(paths[1], [9 - 7], offset=7)
    _put_nans(paths[2], [23 - 15], offset=15)
    opts = CleanOptions(nan_policy, normalize, image_size)
    ref = load_dataset(whole, nan_policy=nan_policy, normalize=normalize, image_size=image_size)
    rows = np.random.default_rng(0).permutation(24)[:17]
    with ShardSet(str(tmp_path / "s" / "*.h5"), opts) as shards:
        assert len(shards) == 24 and shards.image_shape == ref.images.shape[1:]
        np.testing.assert_array_equal(shards.read(rows), ref.images[rows])
        assert np.array_equal(shards.labels, labels) and shards.class_names == ["a", "b"]
        assert shards.locate(16) == (paths[2], 1)


def test_paired_streaming_stacks_the_two_renderings(tmp_path):
    a, b = _write(tmp_path / "a.h5", _images(), _labels()), tmp_path / "b.h5"
    _write(b, _images(seed=1), _labels())
    with StreamingData(str(a), CleanOptions(), str(b)) as data:
        got = data.read(np.array([3, 1]))
        assert got.shape == (2, 2, 1, 16, 16) and data.nbytes == 24 * 2 * 256 * 4
        np.testing.assert_array_equal(got[:, 1], load_dataset(b).images[[3, 1]])
    _write(b, _images(), _labels()[::-1].copy())
    with pytest.raises(DataError, match=r"b\.h5 \[image 0\]: --paired-data is not row-aligned"):
        StreamingData(str(a), CleanOptions(), str(b))


# --------------------------------------------------------------------------------------------
# shards checked before training
# --------------------------------------------------------------------------------------------


def _bad_shard(kind: str, path: Path) -> None:
    if kind == "missing":
        path.unlink()
    elif kind == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif kind == "other shape":
        _write(path, _images(9, size=12), _labels(9))
    elif kind == "other classes":
        write_hdf5(path, _images(9), _labels(9), ["a", "c"])
    elif kind == "not hdf5":
        path.write_bytes(b"not an hdf5 file" * 100)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("truncated", "truncated|corrupt"),
        ("other shape", "differs from the first shard"),
        ("other classes", "class_names"),
        ("not hdf5", "not a readable HDF5"),
    ],
)
def test_a_bad_shard_is_named_before_training(tmp_path, kind, message):
    paths = _shards(tmp_path / "s", _images(), _labels())
    _bad_shard(kind, paths[1])
    cfg = _cfg(tmp_path / "run", data=f"{paths[0]},{paths[1]},{paths[2]}", data_mode="stream")
    with pytest.raises(DataError, match=message) as info:
        training.pretrain(cfg, progress=False)
    assert str(info.value).startswith(str(paths[1])) and len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written


# --------------------------------------------------------------------------------------------
# pretraining on the streaming path
# --------------------------------------------------------------------------------------------


def _cfg(out: Path, **kw) -> PretrainConfig:
    base = dict(out=str(out), stem="small", batch_size=2, epochs=2, proj_hidden_dim=16)
    base.update(proj_out_dim=8, device="cpu", checkpoint_every_steps=3, warmup_epochs=0.5)
    base.update(collapse_monitor_size=8, method="simclr")
    return PretrainConfig(**{**base, **kw})


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 images and windows of 2 chunks: several windows in tiny data."""
    monkeypatch.setattr("deeplense_ssl.training.data.CHUNK_IMAGES", 4)
    monkeypatch.setattr(streaming, "MAX_WINDOW_CHUNKS", 2)


def _state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_FILE)["method"]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _resolved(run: Path) -> dict:
    return json.loads((run / CONFIG_FILE).read_text())["resolved"]


def _order_of(run: Path, monkeypatch) -> None:
    """Make the in-memory path use the streaming run's order."""
    layout = _resolved(run)["stream_layout"]

    def order(seed, epoch, n):
        chunked = ChunkedOrder(n, seed, epoch, layout["chunk_images"], layout["window_chunks"])
        return torch.from_numpy(chunked[:])

    monkeypatch.setattr(train_loop, "epoch_permutation", order)


@pytest.mark.parametrize(
    "extra",
    [{"max_steps": 2}, {"knn_monitor": True, "knn_val_fraction": 0.25, "prefetch": 0},
     {"paired": True, "max_steps": 3, "method": "contrastive-blur"}],
)  # fmt: skip
def test_streaming_equals_in_memory_under_the_same_order(
    tmp_path, small_chunks, monkeypatch, extra
):
    extra = dict(extra)
    images, labels = _images(), _labels()
    paths = _shards(tmp_path / "s", images, labels)
    spec = str(tmp_path / "s" / "part*.h5")
    if extra.pop("paired", False):
        _shards(tmp_path / "p", _images(seed=3), labels)
        extra["paired_data"] = str(tmp_path / "p" / "part*.h5")
    streamed = training.pretrain(
        _cfg(tmp_path / "stream", data=spec, data_mode="stream", **extra), progress=False
    )
    resolved = _resolved(streamed)
    assert resolved["data_mode"] == "stream"
    assert resolved["stream_layout"] == {"chunk_images": 4, "window_chunks": 2}
    _order_of(streamed, monkeypatch)
    loaded = training.pretrain(
        _cfg(tmp_path / "memory", data=spec, data_mode="in-memory", **extra), progress=False
    )
    assert _resolved(loaded)["data_mode"] == "in-memory"
    assert _resolved(loaded)["data_fingerprint"] == resolved["data_fingerprint"]
    _assert_same_weights(streamed, loaded)
    assert [r for r in _metrics(streamed)] == [r for r in _metrics(loaded)]
    assert paths  # the shards were read, not a copy


def _metrics(run: Path) -> list:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]


def test_several_shards_in_memory_train_like_one_file(tmp_path):
    images, labels = _images(), _labels()
    whole = _write(tmp_path / "whole.h5", images, labels)
    _shards(tmp_path / "s", images, labels)
    a = training.pretrain(_cfg(tmp_path / "a", data=str(whole), max_steps=3), progress=False)
    b = training.pretrain(
        _cfg(tmp_path / "b", data=str(tmp_path / "s" / "*.h5"), max_steps=3), progress=False
    )
    assert _resolved(b)["data_mode"] == "in-memory"
    assert _resolved(a)["data_fingerprint"] == _resolved(b)["data_fingerprint"]
    _assert_same_weights(a, b)


def test_auto_mode_streams_beyond_the_memory_budget(tmp_path, small_chunks):
    data = _write(tmp_path / "d.h5", _images(), _labels())  # 24 KiB cleaned
    small = training.pretrain(
        _cfg(tmp_path / "small", data=str(data), max_steps=1, max_memory_gb=16 / 2**20),
        progress=False,
    )
    assert _resolved(small)["data_mode"] == "stream"
    assert _resolved(small)["stream_layout"]["window_chunks"] == 1  # 2 KiB: one chunk a window
    large = training.pretrain(
        _cfg(tmp_path / "large", data=str(data), max_steps=1, max_memory_gb=1.0), progress=False
    )
    assert _resolved(large)["data_mode"] == "in-memory" and "stream_layout" not in _resolved(large)


def test_streaming_resume_after_a_crash_mid_epoch_is_bitwise(tmp_path, small_chunks):
    """24 images, batch 2: 12 steps an epoch; checkpoints every 3; crash at 8 (mid-epoch,
    mid-window); the resume starts at 6 and reads the order from there."""
    _shards(tmp_path / "s", _images(), _labels())
    kw = dict(data=str(tmp_path / "s" / "*.h5"), data_mode="stream")
    ref = training.pretrain(_cfg(tmp_path / "ref", **kw), progress=False)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        training.pretrain(_cfg(run, **kw), progress=False, on_step=crash_at(8))
    assert load_checkpoint(run / CHECKPOINT_FILE)["step"] == 6
    torch.manual_seed(99)
    # the budget now says in-memory: the resume keeps the run's streaming order regardless
    training.pretrain(
        _cfg(run, resume=True, data=kw["data"], max_memory_gb=64.0, data_mode="stream"),
        progress=False,
    )
    _assert_same_weights(ref, run)
    steps = [[r for r in _metrics(x) if r["kind"] == "step"] for x in (ref, run)]
    assert steps[0] == steps[1] and len(steps[0]) == 10  # the epoch mean restarts on resume


def test_a_run_from_before_streaming_resumes_in_memory(tmp_path):
    data = _write(tmp_path / "d.h5", _images(), _labels())
    ref = training.pretrain(_cfg(tmp_path / "ref", data=str(data), epochs=1), progress=False)
    run = tmp_path / "old"
    with pytest.raises(Crash):
        training.pretrain(_cfg(run, data=str(data), epochs=1), progress=False, on_step=crash_at(4))
    state = load_checkpoint(run / CHECKPOINT_FILE)
    for key in ("data_mode", "max_memory_gb", "prefetch"):  # as written before these existed
        state["config"].pop(key)
    state["resolved"].pop("data_mode")
    save_checkpoint(run / CHECKPOINT_FILE, state)
    tiny = 1 / 2**20  # would stream a fresh run
    training.pretrain(
        _cfg(run, data=str(data), epochs=1, resume=True, max_memory_gb=tiny), progress=False
    )
    assert _resolved(run)["data_mode"] == "in-memory"
    _assert_same_weights(ref, run)


def test_a_shard_gone_during_training_stops_at_the_checkpoint_and_resumes(tmp_path, small_chunks):
    paths = _shards(tmp_path / "s", _images(), _labels())
    kw = dict(data=str(tmp_path / "s" / "*.h5"), data_mode="stream")
    ref = training.pretrain(_cfg(tmp_path / "ref", **kw), progress=False)
    run, away = tmp_path / "run", tmp_path / "away.h5"

    def unmount(step, record):
        if step == 4:
            shutil.move(paths[1], away)

    with pytest.raises(DataError) as info:
        training.pretrain(_cfg(run, **kw), progress=False, on_step=unmount)
    message = str(info.value)
    assert str(paths[1]) in message and "is gone" in message and "--resume" in message
    saved = load_checkpoint(run / CHECKPOINT_FILE)["step"]
    assert f"last checkpoint (step {saved})" in message
    shutil.move(away, paths[1])
    training.pretrain(_cfg(run, resume=True, **kw), progress=False)
    _assert_same_weights(ref, run)


def test_a_nan_met_while_streaming_names_the_shard_and_image(tmp_path, small_chunks):
    paths = _shards(tmp_path / "s", _images(), _labels())
    _put_nans(paths[2], [3])
    cfg = _cfg(tmp_path / "run", data=str(tmp_path / "s" / "*.h5"), data_mode="stream")
    # (24 images: all of them are read for the data fingerprint, so this fails before training)
    with pytest.raises(DataError, match=r"part2\.h5 \[image 3\]: 2 non-finite pixels"):
        training.pretrain(cfg, progress=False)


def test_streaming_refusals(tmp_path):
    data = _write(tmp_path / "d.h5", _images(), _labels())
    with pytest.raises(ConfigError, match="nan_policy='drop'"):
        training.pretrain(
            _cfg(tmp_path / "a", data=str(data), data_mode="stream", nan_policy="drop"),
            progress=False,
        )
    with pytest.raises(ConfigError, match="data_mode='stream' reads --data"):
        training.pretrain(
            _cfg(tmp_path / "b", data_mode="stream"), progress=False, dataset=_images()
        )
    wide = _write(tmp_path / "w.h5", _images()[..., :12], _labels())
    with pytest.raises(DataError, match="square"):
        training.pretrain(_cfg(tmp_path / "c", data=str(wide), data_mode="stream"), progress=False)
    assert not os.path.exists(tmp_path / "a")


def _cli(args: list[str]) -> int:
    from deeplense_ssl_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_cli_streams_a_glob_of_shards_and_names_a_bad_shard_in_one_line(tmp_path, capsys):
    paths = _shards(tmp_path / "s", _images(), _labels())
    args = ["pretrain", "--data", str(tmp_path / "s" / "part*.h5"), "--stem", "small"]
    args += ["--batch-size", "4", "--max-steps", "2", "--no-progress", "--device", "cpu"]
    args += ["--proj-hidden-dim", "16", "--proj-out-dim", "8", "--collapse-monitor-size", "0"]
    args += ["--data-mode", "auto", "--max-memory-gb", str(8 / 2**20), "--prefetch", "1"]
    assert _cli([*args, "--out", str(tmp_path / "ok")]) == 0
    resolved = _resolved(tmp_path / "ok")
    assert resolved["data_mode"] == "stream" and resolved["n_train"] == 24
    paths[2].write_bytes(paths[2].read_bytes()[:2000])  # truncated
    capsys.readouterr()
    assert _cli([*args, "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(paths[2]) in err and not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------
# SIGKILL and two processes (slow)
# --------------------------------------------------------------------------------------------


_KILL_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
import deeplense_ssl.training.data as data
from deeplense_ssl import streaming, training
from deeplense_ssl.config import PretrainConfig
data.CHUNK_IMAGES, streaming.MAX_WINDOW_CHUNKS = 4, 2
cfg = PretrainConfig(**json.loads(sys.argv[1]))
pause = float(sys.argv[2])  # seconds after each step (0: run through)
training.pretrain(cfg, progress=False, on_step=lambda s, r: time.sleep(pause))
"""


@pytest.mark.slow
def test_streaming_resume_after_sigkill_is_bitwise(tmp_path, small_chunks):
    _shards(tmp_path / "s", _images(), _labels())
    kw = dict(data=str(tmp_path / "s" / "*.h5"), data_mode="stream", checkpoint_every_steps=1)
    ref, killed, step = kill_and_resume(
        _KILL_SCRIPT, lambda out, **more: _cfg(out, **kw, **more), tmp_path, 5
    )
    assert 5 <= step < 24  # mid-epoch 0, window 2 or later
    _assert_same_weights(ref, killed)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, ports: tuple[int, int], tmp: str) -> None:
    """Rank ``rank`` of 2 (gloo, torchrun's variables): a streaming run, recording the rows
    this rank's reader loads, then an in-memory run in the streaming run's order."""
    torch.set_num_threads(1)
    import deeplense_ssl.training.data as data_module

    data_module.CHUNK_IMAGES, streaming.MAX_WINDOW_CHUNKS = 4, 2
    loaded: list[list[int]] = []
    real_window = StreamReader._window

    def spy(self, w):
        fresh = w not in self._windows
        own, images, rows = real_window(self, w)
        if fresh:
            loaded.append(rows.tolist())
        return own, images, rows

    StreamReader._window = spy  # type: ignore[method-assign]
    spec, base = f"{tmp}/s/part*.h5", Path(tmp)
    for mode, port in zip(("stream", "in-memory"), ports, strict=True):
        env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "MASTER_PORT": port}
        os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
        if mode == "in-memory":
            lay = _resolved(base / "stream")["stream_layout"]

            def order(seed, epoch, n, lay=lay):
                chunked = ChunkedOrder(n, seed, epoch, lay["chunk_images"], lay["window_chunks"])
                return torch.from_numpy(chunked[:])

            train_loop.epoch_permutation = order  # type: ignore[assignment]
        cfg = _cfg(base / mode, data=spec, data_mode=mode, epochs=1, method="contrastive-rotation")
        training.pretrain(cfg, progress=False)
    (base / f"loaded{rank}.json").write_text(json.dumps(loaded))


@pytest.mark.slow
def test_two_processes_stream_their_own_rows_and_match_in_memory(tmp_path):
    import torch.multiprocessing as mp

    _shards(tmp_path / "s", _images(), _labels())
    mp.spawn(_ddp_worker, args=((_free_port(), _free_port()), str(tmp_path)), nprocs=2)
    resolved = _resolved(tmp_path / "stream")
    assert resolved["world_size"] == 2 and resolved["data_mode"] == "stream"
    assert resolved["global_batch_size"] == 4 and resolved["steps_per_epoch"] == 6
    _assert_same_weights(tmp_path / "stream", tmp_path / "in-memory")
    # each rank's reader loaded only its own rows, each once: 24 images, 12 a rank
    rows = [sum(json.loads((tmp_path / f"loaded{r}.json").read_text()), []) for r in range(2)]
    assert len(rows[0]) == len(set(rows[0])) == 12 and len(rows[1]) == len(set(rows[1])) == 12
    assert set(rows[0]) | set(rows[1]) == set(range(24))
