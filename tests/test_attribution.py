"""captum attribution maps against hand-written references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeplense_ssl.attribution import attribution_maps, last_conv_block
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.heads import LinearHead
from deeplense_ssl.inference import ClassifierModel


def _model(seed=0, chans=1):
    torch.manual_seed(seed)
    return ClassifierModel(build_backbone("resnet18", chans, "cifar"), LinearHead(512, 3)).eval()


def test_shapes_and_unknown_method():
    model = _model(chans=2)
    x = torch.randn(3, 2, 16, 16)
    maps = attribution_maps(model, x, [0, 1, 2], ig_steps=8)
    assert set(maps) == {"integrated_gradients", "saliency", "gradcam"}
    assert all(m.shape == (3, 16, 16) for m in maps.values())
    assert (maps["saliency"] >= 0).all() and (maps["gradcam"] >= 0).all()
    with pytest.raises(ConfigError, match="unknown attribution"):
        attribution_maps(model, x, [0, 1, 2], ["lime"])
    # numpy inputs and tensor targets give the same maps as tensors and lists
    again = attribution_maps(model, x.numpy(), torch.tensor([0, 1, 2]), ig_steps=8)
    for name, m in maps.items():
        assert (again[name] == m).all(), name


def test_integrated_gradients_completeness():
    # smooth model: the IG attributions sum to f(x) - f(0) (Sundararajan et al. 2017, Prop. 1)
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    targets = [2, 0]
    maps = attribution_maps(model, x, targets, ["integrated_gradients"], ig_steps=64)
    with torch.no_grad():
        gap = model(x)[[0, 1], targets] - model(torch.zeros_like(x))[[0, 1], targets]
    sums = torch.as_tensor(maps["integrated_gradients"]).sum(dim=(1, 2))
    torch.testing.assert_close(sums, gap, rtol=1e-3, atol=1e-4)


def test_saliency_is_abs_gradient_max_over_channels():
    model = _model(chans=3)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    targets = torch.tensor([1, 2])
    model(x)[torch.arange(2), targets].sum().backward()
    want = x.grad.abs().amax(dim=1)
    got = attribution_maps(model, x.detach(), targets, ["saliency"])["saliency"]
    torch.testing.assert_close(torch.as_tensor(got), want)


def test_gradcam_matches_manual_hooks():
    model = _model()
    x = torch.randn(2, 1, 16, 16)
    targets = torch.tensor([0, 2])
    layer = last_conv_block(model)
    assert layer is model.backbone.layer4
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logits = model(x)
    handle.remove()
    act = store["a"]  # (2, 512, 2, 2) for the cifar stem at 16 px
    grads = torch.autograd.grad(logits[torch.arange(2), targets].sum(), act)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True))
    want = nn.functional.interpolate(cam, size=(16, 16), mode="bilinear")[:, 0]
    got = attribution_maps(model, x, targets, ["gradcam"])["gradcam"]
    torch.testing.assert_close(torch.as_tensor(got), want.detach(), rtol=1e-4, atol=1e-6)
