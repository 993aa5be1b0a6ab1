"""One training step: precision choice (runtime.resolve_amp_dtype), channels-last inputs."""

import pytest
import torch

from deeplense_ssl import runtime
from deeplense_ssl.runtime import resolve_amp_dtype
from deeplense_ssl.training.step import to_channels_last


@pytest.mark.parametrize(
    ("amp", "device", "native_bf16", "expected"),
    [
        ("auto", "cpu", True, torch.bfloat16),  # AVX512-BF16 / AMX
        ("auto", "cpu", False, None),  # emulated bf16 would be slower than float32
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),  # pre-Ampere: emulated bf16 would be slow
        ("bf16", "cuda", False, torch.bfloat16),  # an explicit choice is kept
        ("off", "cuda", True, None),
    ],
)
def test_amp_auto_picks_native_precision(monkeypatch, amp, device, native_bf16, expected):
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16
    )
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert resolve_amp_dtype(amp, torch.device(device)) == expected


def test_to_channels_last_maps_over_view_lists():
    x = torch.randn(2, 3, 4, 4)
    out = to_channels_last([x, x[:, :, :2, :2]])
    assert isinstance(out, list) and len(out) == 2
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in out)
    assert torch.equal(out[0], x)
