"""DINO's projection head is initialised as in the paper's code (Caron et al. 2021, main_dino /
vision_transformer.DINOHead)."""

from __future__ import annotations

import torch
from torch import nn

from deeplense_ssl.methods.dino import DINOHead


def test_mlp_weights_are_normal_with_std_002_biases_zero_and_the_gain_is_fixed_to_one():
    torch.manual_seed(0)
    head = DINOHead(in_dim=512, hidden_dim=1024, bottleneck_dim=256, out_dim=2048)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        w = layer.weight.detach()
        assert abs(float(w.std()) - 0.02) < 0.001  # PyTorch's default would give ~1/sqrt(3 fan_in)
        assert abs(float(w.mean())) < 0.001
        assert torch.count_nonzero(layer.bias) == 0
    gain = head.last.parametrizations.weight.original0
    assert torch.all(gain == 1) and not gain.requires_grad
    row_norms = head.last.weight.detach().norm(dim=1)
    assert torch.allclose(row_norms, torch.ones_like(row_norms), atol=1e-5)
