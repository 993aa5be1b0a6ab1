"""Device resolution and the training-set fetch (the GPU paths checked with a faked CUDA)."""

from __future__ import annotations

import pytest
import torch

from deeplense_ssl import runtime
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.train import _fetch


def test_cpu_and_auto_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            runtime.resolve_device(asked)
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        runtime.resolve_device("gpu0")


def test_cuda_always_comes_back_with_its_index(monkeypatch) -> None:
    """torch.device("cuda") != torch.device("cuda:0"); tensors report the indexed form, so an
    unindexed device made the training loop take the host-copy path for data already on the
    GPU (and crash)."""
    assert torch.device("cuda") != torch.device("cuda:0")  # the trap itself
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert runtime.resolve_device("auto") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="only 2 GPU"):
        runtime.resolve_device("cuda:2")


def test_fetch_picks_rows_on_the_data_device() -> None:
    data = torch.arange(24.0).view(6, 4)
    idx = torch.tensor([4, 0, 4])
    out = _fetch(data, idx, torch.device("cpu"))
    torch.testing.assert_close(out, data[[4, 0, 4]])
    # Data on a non-CPU device (meta stands in for a GPU here) is indexed where it lives,
    # whatever index form the target device was given in.
    meta = data.to("meta")
    out = _fetch(meta, idx, torch.device("meta"))
    assert out.device.type == "meta" and out.shape == (3, 4)
