"""Attribution maps with captum: which pixels drive a class score.

Three methods, each returning one map per image with the image's height and width:

* ``integrated_gradients``: Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks";
  path integral of the gradient from an all-zero baseline, summed over channels (signed; the
  attributions of all pixels add up to ``logit(x) - logit(0)``, the completeness axiom).
* ``saliency``: Simonyan et al. 2014, absolute gradient of the class logit, max over channels.
* ``gradcam``: Selvaraju et al. 2017, captum ``LayerGradCam`` on the last residual block
  (``layer4`` of a ResNet), ReLU applied, bilinearly upsampled to the image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .errors import ConfigError

METHODS = ("integrated_gradients", "saliency", "gradcam")


def last_conv_block(model: nn.Module) -> nn.Module:
    """The last residual block of the model's backbone (``layer4`` of a torchvision ResNet,
    else the last ``BasicBlock``/``Bottleneck`` module found)."""
    backbone = getattr(model, "backbone", model)
    layer4 = getattr(backbone, "layer4", None)
    if isinstance(layer4, nn.Module):
        return layer4
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    if not blocks:
        raise ConfigError("Grad-CAM needs a ResNet backbone (no residual block found).")
    return blocks[-1]


def attribution_maps(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    targets: Sequence[int] | torch.Tensor | np.ndarray,
    methods: Sequence[str] = METHODS,
    *,
    ig_steps: int = 32,
    layer: nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """Attribution maps of the logit of ``targets`` for each image.

    Args:
        model: ``(B, C, H, W) -> (B, num_classes)`` logits (e.g. a fine-tuned
            :class:`~deeplense_ssl.inference.ClassifierModel`); put in eval mode here.
        images: (N, C, H, W) float32 images, preprocessed as the model expects.
        targets: (N,) class index whose logit is explained, per image.
        methods: any of :data:`METHODS`.
        ig_steps: Riemann steps of Integrated Gradients.
        layer: the Grad-CAM layer (default :func:`last_conv_block`).

    Returns:
        ``{method: (N, H, W) float32}``.

    Raises:
        ConfigError: an unknown method name.
    """
    # Deferred on purpose: captum costs ~0.5 s and imports matplotlib.pyplot, and config.py
    # imports this module (for METHODS) on every command.
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown attribution method(s) {unknown}; choose from {METHODS}.")
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    t = torch.as_tensor(targets, dtype=torch.int64, device=device)
    out: dict[str, np.ndarray] = {}
    for method in methods:
        inputs = x.clone().requires_grad_(True)
        if method == "integrated_gradients":
            attr = IntegratedGradients(model).attribute(
                inputs, baselines=torch.zeros_like(x), target=t, n_steps=ig_steps
            )
            maps = attr.sum(dim=1)
        elif method == "saliency":
            maps = Saliency(model).attribute(inputs, target=t, abs=True).amax(dim=1)
        else:
            gradcam = LayerGradCam(model, layer if layer is not None else last_conv_block(model))
            attr = gradcam.attribute(inputs, target=t, relu_attributions=True)
            maps = LayerAttribution.interpolate(
                attr, tuple(x.shape[2:]), interpolate_mode="bilinear"
            )[:, 0]
        out[method] = maps.detach().float().cpu().numpy()
    return out
