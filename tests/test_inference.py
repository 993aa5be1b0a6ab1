"""The one batched forward loop (embed / predict / logits) and the composed classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.heads import LinearHead, MLPHead
from deeplense_ssl.inference import (
    ClassifierModel,
    dihedral_views,
    embed,
    forward_batches,
    predict,
    predict_logits,
)


def _backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("resnet18", 1, "small")


def test_embed_dihedral_copies():
    bb = _backbone()
    x = torch.randn(5, 1, 16, 16)
    plain = embed(bb, x, batch_size=2)
    d8 = embed(bb, x, batch_size=3, dihedral=True)
    assert plain.shape == (5, 512) and d8.shape == (8, 5, 512)
    torch.testing.assert_close(d8[0], plain)
    torch.testing.assert_close(d8[1], embed(bb, torch.rot90(x, 1, (2, 3))))
    views = dihedral_views(x)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == 8  # all distinct for a generic image


def test_dihedral_views_are_the_eight_rotations_and_reflections():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = dihedral_views(x)
    assert torch.equal(views[0], x)
    assert torch.equal(views[1], torch.rot90(x, 1, (2, 3)))
    assert torch.equal(views[4], x.flip(3))
    # the group is closed: rotating any view by 90 degrees gives another view
    keys = {tuple(v.flatten().tolist()) for v in views}
    assert {tuple(torch.rot90(v, 1, (2, 3)).flatten().tolist()) for v in views} == keys


def test_embed_equals_one_eval_mode_forward_and_restores_the_mode():
    bb = _backbone(1)
    x = np.random.default_rng(0).standard_normal((7, 1, 16, 16)).astype(np.float32)
    bb.train()
    got = embed(bb, x, batch_size=3)
    assert bb.training  # restored
    bb.eval()
    with torch.no_grad():
        want = bb(torch.as_tensor(x))
    torch.testing.assert_close(got, want)  # eval-mode BatchNorm, independent of batching
    assert not got.requires_grad
    empty = embed(bb, np.zeros((0, 1, 16, 16), np.float32))
    assert empty.shape == (0, 512)


def test_forward_batches_covers_every_image_once_in_order():
    model = nn.Identity()
    x = torch.arange(10.0).view(10, 1, 1, 1)
    seen = forward_batches(model, lambda b: b.flatten().tolist(), x, batch_size=4)
    assert seen == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    cl = forward_batches(
        model, lambda b: b.is_contiguous(memory_format=torch.channels_last), x, channels_last=True
    )
    assert cl == [True]


@pytest.mark.parametrize("head", [LinearHead(512, 3), MLPHead(512, 3, hidden_dim=8)])
def test_predict_and_logits_match_the_model(head):
    model = ClassifierModel(_backbone(2), head).eval()
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
    probs, got_emb = predict(model, x, batch_size=4)
    assert probs.shape == (6, 3) and got_emb.shape == (6, 512)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got_emb, emb.numpy(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(predict_logits(model, x, batch_size=5), logits)
