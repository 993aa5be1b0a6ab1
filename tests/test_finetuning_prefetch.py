"""End-to-end fine-tuning makes its batches in a background thread (issue 13, "overlap in memory
too"): the same weights as the inline gather it replaced, with or without the thread."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers_finetune import fake_pretrain_run, toy_images, write_toy_h5
from torch import nn

from deeplense_ssl import finetuning
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.checkpoint import load_checkpoint
from deeplense_ssl.config import FinetuneConfig, config_from_sources
from deeplense_ssl.heads import LinearHead
from deeplense_ssl.inference import ClassifierModel
from deeplense_ssl.runs import MODEL_FILE
from deeplense_ssl.training.data import Prefetcher
from deeplense_ssl.transforms import random_dihedral


def _inline_epoch(
    model, train_images, train_labels, perm, opt, sched, *, batch_size, augment, generator,
    device, prefetch=0, amp=None, scaler=None,
):  # fmt: skip
    """The loop as it was before the prefetcher (verbatim; float32 only): the reference."""
    assert amp is None and scaler is None
    model.train()
    total, correct, seen = 0.0, 0, 0
    for start in range(0, len(perm), batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) < 2 and len(perm) >= 2:
            continue  # BatchNorm needs two images per batch in training mode
        x = train_images[idx].to(device)
        y = train_labels[idx].to(device)
        if augment:
            x = random_dihedral(x, generator=generator)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
    return total, correct, seen


def _train(prefetch: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Two epochs of a tiny full fine-tune: 9 images, batches of 4 (the last one, of 1 image,
    is skipped), dihedral augmentation drawn from the seeded generator."""
    images, labels = toy_images(3, size=16, seed=2)  # 9 images, 3 classes
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", in_chans=1, stem="small")
    model = ClassifierModel(backbone, LinearHead(512, 3))
    history, _ = finetuning.train_end_to_end(
        model, torch.as_tensor(images), torch.as_tensor(labels), None, None, ["a", "b", "c"],
        epochs=2, batch_size=4, lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4, augment=True,
        generator=torch.Generator().manual_seed(5), device="cpu", prefetch=prefetch,
    )  # fmt: skip
    return model.state_dict(), history


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_prefetch_on_and_off_give_the_weights_of_the_inline_loop(monkeypatch):
    depths: list[int] = []

    class Spy(Prefetcher):
        def __init__(self, make, keys, depth, device=None):
            depths.append(depth)
            super().__init__(make, keys, depth, device)

    monkeypatch.setattr(finetuning, "Prefetcher", Spy)
    on, history_on = _train(prefetch=2)
    off, history_off = _train(prefetch=0)
    assert depths == [2, 2, 0, 0]  # one feed per epoch
    with monkeypatch.context() as m:
        m.setattr(finetuning, "_end_to_end_epoch", _inline_epoch)
        ref, history_ref = _train(prefetch=2)
    _assert_same(on, ref)
    _assert_same(off, ref)
    assert history_on == history_off == history_ref
    assert not [t for t in threading.enumerate() if t.name == "deeplense-prefetch"]


def test_a_full_finetune_run_trains_the_same_weights_as_before(tmp_path, monkeypatch):
    write_toy_h5(tmp_path / "train.h5", n_per_class=6, seed=0)
    fake_pretrain_run(tmp_path / "pretrain")

    def run(out: str):
        values = {"data": str(tmp_path / "train.h5"), "checkpoint": str(tmp_path / "pretrain")}
        values.update(head="full", epochs=2, batch_size=4, min_steps=0, out=str(tmp_path / out))
        cfg = config_from_sources(FinetuneConfig, None, values)
        path = finetuning.finetune(cfg, progress=False) / MODEL_FILE
        return load_checkpoint(path, "cpu", expect_format=False)

    new = run("new")
    with monkeypatch.context() as m:
        m.setattr(finetuning, "_end_to_end_epoch", _inline_epoch)
        old = run("old")
    assert new["spec"]["mode"] == "end_to_end"
    _assert_same(new["backbone_state"], old["backbone_state"])
    _assert_same(new["head_state"], old["head_state"])


def test_a_failed_batch_is_raised_in_the_training_thread(monkeypatch):
    def broken(data, idx, device):
        raise RuntimeError("gather failed")

    monkeypatch.setattr(finetuning, "fetch", broken)
    with pytest.raises(RuntimeError, match="gather failed"):
        _train(prefetch=2)
    assert not [t for t in threading.enumerate() if t.name == "deeplense-prefetch"]
