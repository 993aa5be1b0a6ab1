"""Device resolution and the training-set fetch (the GPU paths checked with a faked CUDA)."""

from __future__ import annotations

import pytest
import torch

from deeplense_ssl import runtime
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.training.data import fetch


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
    out = fetch(data, idx, torch.device("cpu"))
    torch.testing.assert_close(out, data[[4, 0, 4]])
    # Data on a non-CPU device (meta stands in for a GPU here) is indexed where it lives,
    # whatever index form the target device was given in.
    meta = data.to("meta")
    out = fetch(meta, idx, torch.device("meta"))
    assert out.device.type == "meta" and out.shape == (3, 4)


def test_amp_modes_map_to_autocast_dtypes(monkeypatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    for mode, dtype in expected.items():
        assert runtime.resolve_amp_dtype(mode, cpu) is dtype
        assert runtime.resolve_amp_dtype(mode, gpu) is dtype
    for native, dtype in ((True, torch.bfloat16), (False, None)):  # CPU: bf16 only if native
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda n=native: n)
        assert runtime.resolve_amp_dtype("auto", cpu) is dtype
    assert runtime.resolve_amp_dtype("auto", torch.device("meta")) is None
    for native, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation, n=native: n
        )
        assert runtime.resolve_amp_dtype("auto", gpu) is dtype
    assert set(runtime.AMP_MODES) == {"auto", *expected}
    with pytest.raises(ConfigError, match="amp='fp8' is not one of auto, bf16, fp16, off"):
        runtime.resolve_amp_dtype("fp8", cpu)


def test_autocast_context_and_the_recorded_name() -> None:
    a = torch.randn(4, 4)
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with runtime.autocast("cpu", None):  # full precision: no autocast
        assert (a @ a).dtype == torch.float32
    names = [runtime.amp_name(d) for d in (torch.bfloat16, torch.float16, None)]
    assert names == ["bfloat16", "float16", "off"]


def test_native_bf16_is_read_from_the_cpu_capabilities(monkeypatch) -> None:
    cases = ((True, False, True), (False, True, True), (False, False, False))
    for avx512_bf16, amx, native in cases:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert runtime.cpu_has_native_bf16() is native
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older torch: no probe
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert runtime.cpu_has_native_bf16() is False


def test_every_listed_device_resolves(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    resolved = {name: runtime.resolve_device(name).type for name in runtime.DEVICES}
    assert resolved == {"auto": "cuda", "cpu": "cpu", "cuda": "cuda"}
