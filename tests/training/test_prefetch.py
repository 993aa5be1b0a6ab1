"""The background batch producer (issue 13): same batches, overlap, errors and clean stops."""

import threading
import time

import numpy as np
import pytest
import torch
from helpers_crash import Crash, crash_at

import deeplense_ssl.training.data as data_module
from deeplense_ssl import training
from deeplense_ssl.checkpoint import load_checkpoint, save_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import DataError
from deeplense_ssl.runs import CHECKPOINT_FILE
from deeplense_ssl.training.data import (
    MemoryBatches,
    Prefetcher,
    epoch_permutation,
    prefetch_depth,
)
from deeplense_ssl.training.resume import config_diff


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "deeplense-prefetch"]


def _cfg(out, **kw) -> PretrainConfig:
    base = dict(out=str(out), data="<in-memory>", stem="small", batch_size=2, epochs=2)
    base.update(proj_hidden_dim=16, proj_out_dim=8, device="cpu", checkpoint_every_steps=3)
    return PretrainConfig(**{**base, "warmup_epochs": 0.5, **kw})


def _images(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 16, 16), dtype=np.float32)


def _method_state(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_FILE)["method"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_come_in_key_order_whatever_the_depth(depth):
    with Prefetcher(lambda k: torch.tensor([k, k * k]), range(2, 9), depth) as feed:
        got = [t.tolist() for t in feed]
    assert got == [[k, k * k] for k in range(2, 9)]
    assert not _producers()


def test_the_next_item_is_made_while_the_current_one_is_used():
    made_next = threading.Event()

    def make(k: int) -> torch.Tensor:
        if k == 1:
            made_next.set()
        return torch.tensor(k)

    with Prefetcher(make, range(3), depth=1) as feed:
        assert int(feed.next()) == 0
        # nobody asked for item 1 yet: only a producer running alongside can have made it
        assert made_next.wait(timeout=10)
        assert [int(t) for t in feed] == [1, 2]


def test_memory_batches_are_the_rank_parts_of_the_epoch_order():
    data = torch.arange(24).float()[:, None]
    for rank in (0, 1):
        make = MemoryBatches(
            data, lambda e: epoch_permutation(5, e, 24), 3, 8, rank, 2, torch.device("cpu")
        )
        for step in range(6):  # two epochs of 3 steps
            perm = epoch_permutation(5, step // 3, 24)
            start = (step % 3) * 8 + rank * 4
            assert torch.equal(make(step)[:, 0], perm[start : start + 4].float())


def test_a_producer_error_is_raised_once_in_the_consumer_and_the_thread_ends():
    def make(k: int) -> torch.Tensor:
        if k == 3:
            raise DataError("shard gone", "s.h5", 7)
        return torch.tensor(k)

    feed = Prefetcher(make, range(10), depth=2)
    assert [int(feed.next()) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="shard gone") as info:
        feed.next()
    assert info.value.index == 7
    assert not _producers()
    feed.close()  # idempotent


def test_close_while_the_producer_waits_on_a_full_queue_joins_it():
    feed = Prefetcher(lambda k: torch.tensor(k), range(10**6), depth=2)
    assert int(feed.next()) == 0
    time.sleep(0.2)  # the producer fills the queue and blocks
    feed.close()
    assert not _producers()


def test_the_default_depth_prefetches_on_cuda_only_and_an_explicit_depth_wins():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert (prefetch_depth(None, cpu), prefetch_depth(None, None)) == (0, 0)
    assert prefetch_depth(None, cuda) == data_module.CUDA_PREFETCH > 0
    assert (prefetch_depth(3, cpu), prefetch_depth(0, cuda)) == (3, 0)


def test_a_default_cpu_pretraining_starts_no_producer_thread(tmp_path, monkeypatch):
    depths = []
    real = Prefetcher.__init__

    def spy(self, make, keys, depth, device=None):
        depths.append(prefetch_depth(depth, device))
        real(self, make, keys, depth, device)

    monkeypatch.setattr(Prefetcher, "__init__", spy)
    assert PretrainConfig().prefetch is None
    training.pretrain(_cfg(tmp_path / "run", epochs=1), progress=False, dataset=_images())
    assert depths == [0]


def test_prefetch_on_and_off_give_bitwise_the_same_weights(tmp_path):
    """8 images, batch 2, 2 epochs: 8 steps across an epoch boundary and a checkpoint."""
    runs = {}
    for depth in (0, 1, 3):
        runs[depth] = training.pretrain(
            _cfg(tmp_path / f"p{depth}", prefetch=depth), progress=False, dataset=_images()
        )
    ref = _method_state(runs[0])
    for depth in (1, 3):
        got = _method_state(runs[depth])
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    other = training.pretrain(
        _cfg(tmp_path / "seed1", prefetch=2, seed=1), progress=False, dataset=_images()
    )
    assert not torch.equal(
        _method_state(other)["backbone.conv1.weight"], ref["backbone.conv1.weight"]
    )


def test_a_crash_mid_run_leaves_no_producer_and_resumes_with_another_depth(tmp_path):
    ref = training.pretrain(_cfg(tmp_path / "ref", prefetch=0), progress=False, dataset=_images())
    run = tmp_path / "run"
    with pytest.raises(Crash):
        training.pretrain(
            _cfg(run, prefetch=2), progress=False, dataset=_images(), on_step=crash_at(5)
        )
    assert not _producers()
    assert load_checkpoint(run / CHECKPOINT_FILE)["step"] == 4  # the epoch end
    # a run written before the field existed: its config lacks "prefetch"
    state = load_checkpoint(run / CHECKPOINT_FILE)
    del state["config"]["prefetch"]
    save_checkpoint(run / CHECKPOINT_FILE, state)
    training.pretrain(_cfg(run, prefetch=4, resume=True), progress=False, dataset=_images())
    got, want = _method_state(run), _method_state(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_config_diff_counts_missing_new_fields_as_their_defaults():
    new = vars(_cfg("x"))
    old = {k: v for k, v in new.items() if k != "prefetch"}
    assert config_diff(old, new) == []
    assert config_diff(old, {**new, "prefetch": 0}) == []  # prefetch may change on resume
    assert config_diff({**old, "lr": None}, {**new, "lr": 0.5}) == ["lr: None -> 0.5"]
