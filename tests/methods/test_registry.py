"""The method registry and the Method contract every method keeps."""

import pytest
import torch

from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.methods import METHOD_NAMES, Method, get_method, register


def _cfg(method: str, **kw) -> PretrainConfig:
    base = dict(data="x", method=method, proj_hidden_dim=16, proj_out_dim=8)
    return PretrainConfig(**{**base, **kw})


def test_every_documented_method_is_registered_once():
    expected = {"simclr", "contrastive-rotation", "contrastive-blur", "rotation", "blur"}
    expected |= {"byol", "simsiam", "vicreg", "barlow-twins", "dino"}
    assert set(METHOD_NAMES) == expected and len(METHOD_NAMES) == len(expected)
    with pytest.raises(ConfigError, match="not one of simclr, contrastive-rotation"):
        get_method("no-such-method")


def test_register_refuses_a_duplicate_or_empty_name():
    class Dup(Method):
        name = "simclr"

    class Nameless(Method):
        pass

    for cls in (Dup, Nameless):
        with pytest.raises(ValueError, match="already registered|empty"):
            register(cls)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_owns_the_backbone_and_returns_a_finite_loss(name):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", in_chans=1, stem="small")
    cfg = _cfg(name)
    get_method(name).validate(cfg)
    method = get_method(name)(backbone, cfg, in_chans=1, image_size=16)
    assert method.backbone is backbone
    keys = method.state_dict().keys()
    assert {k for k in keys if k.startswith("backbone.")} == {
        f"backbone.{k}" for k in backbone.state_dict()
    }
    x = torch.rand(4, 1, 16, 16)
    inputs, aux = method.make_inputs(x)
    loss = method.loss(method(inputs), aux)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert backbone.conv1.weight.grad is not None
    assert method.embed(x).shape == (4, backbone.feature_dim)


def test_method_specific_settings_are_validated_by_the_method():
    with pytest.raises(ConfigError, match="n_views must be >= 2"):
        get_method("simclr").validate(_cfg("simclr", n_views=1))
    with pytest.raises(ConfigError, match="two blur_sigmas_px"):
        get_method("blur").validate(_cfg("blur", blur_sigmas_px=[1.0]))


def test_after_step_defaults_to_nothing():
    backbone = build_backbone("resnet18", in_chans=1, stem="small")
    method = get_method("rotation")(backbone, _cfg("rotation"), 1, 16)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_step(1, 10)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
