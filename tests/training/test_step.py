"""One training step: channels-last inputs (the precision choice, runtime.resolve_amp_dtype, is
tested in tests/test_runtime.py)."""

import torch

from deeplense_ssl.training.step import to_channels_last


def test_to_channels_last_maps_over_view_lists():
    x = torch.randn(2, 3, 4, 4)
    out = to_channels_last([x, x[:, :, :2, :2]])
    assert isinstance(out, list) and len(out) == 2
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in out)
    assert torch.equal(out[0], x)
