"""Backbone registry: widths, stems, channel adaptation and torchvision weight compatibility."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from deeplense_ssl.backbones import (
    BACKBONES,
    STEMS,
    backbone_state_dict_for_torchvision,
    build_backbone,
    torchvision_resnet_for,
)
from deeplense_ssl.errors import ConfigError

WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Spatial size entering layer1 for a 32x32 input.
LAYER1_SIZE = {"imagenet": 8, "cifar": 32, "small": 16}


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_width_for_every_name_stem_and_band_count(name, stem, in_chans) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, in_chans=in_chans, stem=stem).eval()
    assert model.feature_dim == WIDTHS[name]
    assert model.spec == {
        "name": name,
        "in_chans": in_chans,
        "stem": stem,
        "feature_dim": WIDTHS[name],
    }
    assert model.conv1.in_channels == in_chans
    assert isinstance(model.fc, nn.Identity)
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 16, 16))
    assert out.shape == (2, WIDTHS[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("stem", STEMS)
def test_stem_geometry(stem) -> None:
    model = build_backbone("resnet18", in_chans=1, stem=stem).eval()
    seen = {}

    def record(module, inputs, output) -> None:
        seen["hw"] = output.shape[-2:]

    model.layer1.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    assert tuple(seen["hw"]) == (LAYER1_SIZE[stem],) * 2
    expected_kernel = 7 if stem == "imagenet" else 3
    assert model.conv1.kernel_size == (expected_kernel, expected_kernel)
    assert isinstance(model.maxpool, nn.MaxPool2d) == (stem == "imagenet")


def test_random_init_never_downloads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)
    a = build_backbone("resnet18", 1, "small")
    b = build_backbone("resnet18", 1, "small")
    # Two random initialisations differ (not a fixed pretrained set).
    assert not torch.equal(a.layer1[0].conv1.weight, b.layer1[0].conv1.weight)


LOAD_CASES = [("resnet18", "imagenet", 1), ("resnet18", "cifar", 3), ("resnet34", "small", 1)]


@pytest.mark.parametrize(("name", "stem", "in_chans"), [*LOAD_CASES, ("resnet50", "small", 3)])
def test_saved_weights_load_into_plain_torchvision_resnet(name, stem, in_chans) -> None:
    torch.manual_seed(1)
    backbone = build_backbone(name, in_chans, stem)
    # Train-mode forward so the BatchNorm running statistics differ from their initial values.
    backbone(torch.randn(4, in_chans, 16, 16))
    backbone.eval()
    state = backbone_state_dict_for_torchvision(backbone)
    assert not any(k.startswith("fc.") for k in state)
    plain = torchvision_resnet_for(backbone.spec, num_classes=3)
    assert type(plain) is torchvision.models.ResNet
    result = plain.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    plain.eval()
    x = torch.randn(2, in_chans, 16, 16)
    with torch.no_grad():
        logits = plain(x)
        plain.fc = nn.Identity()
        torch.testing.assert_close(plain(x), backbone(x), rtol=0, atol=0)
    assert logits.shape == (2, 3)


def test_state_dict_unwraps_ddp_and_compile_wrappers() -> None:
    backbone = build_backbone("resnet18", 1, "small")

    class Wrapper(nn.Module):  # the attribute names DDP and torch.compile use
        def __init__(self, inner, attr):
            super().__init__()
            setattr(self, attr, inner)

    plain = backbone_state_dict_for_torchvision(backbone)
    for attr in ("module", "_orig_mod"):
        wrapped = backbone_state_dict_for_torchvision(Wrapper(backbone, attr))
        assert wrapped.keys() == plain.keys()
        assert all(torch.equal(wrapped[k], plain[k]) for k in plain)


def test_spec_rebuilds_same_shapes() -> None:
    a = build_backbone("resnet34", 3, "cifar")
    spec = {k: v for k, v in a.spec.items() if k != "feature_dim"}
    b = build_backbone(**spec)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].shape == sb[k].shape for k in sa)


def test_channels_last_and_gradients() -> None:
    model = build_backbone("resnet18", 1, "small").to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert torch.isfinite(model.conv1.weight.grad).all()
    assert model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "resnet101"}, {"stem": "huge"}, {"in_chans": 0}],
)
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ConfigError):
        build_backbone(**kwargs)
