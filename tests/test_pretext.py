"""Rotation and blur pretext batches: the targets describe exactly what was done."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deeplense_ssl.pretext import blur_pretext, rotation_pretext
from deeplense_ssl.transforms import gaussian_blur


def _images(b=3, c=2, size=8, seed=0) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_rotation_pretext_shapes_and_targets() -> None:
    x = _images()
    inputs, targets = rotation_pretext(x)
    assert inputs.shape == (12, 2, 8, 8) and inputs.dtype == x.dtype
    assert targets.dtype == torch.int64
    assert targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_rotating_back_by_the_target_gives_the_original() -> None:
    x = _images()
    inputs, targets = rotation_pretext(x)
    for i in range(inputs.shape[0]):
        back = np.rot90(inputs[i].numpy(), k=-int(targets[i]), axes=(-2, -1))
        np.testing.assert_array_equal(back, x[i % 3].numpy())


def test_rotation_target_one_is_counter_clockwise() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of the centre
    inputs, _ = rotation_pretext(x)
    assert inputs[1, 0].argmax().item() == 0 * 5 + 2  # target 1: moved to the top (row 0, col 2)
    assert inputs[2, 0].argmax().item() == 2 * 5 + 0  # target 2: left
    assert inputs[3, 0].argmax().item() == 4 * 5 + 2  # target 3: bottom


def test_rotation_pretext_rejects_non_square() -> None:
    with pytest.raises(ValueError):
        rotation_pretext(torch.zeros(2, 1, 4, 6))


def test_blur_pretext_targets_describe_the_blur() -> None:
    levels = (0.0, 1.0, 2.5)
    x = _images(b=24, c=1, size=16)
    inputs, targets = blur_pretext(x, levels, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == x.shape and targets.shape == (24,) and targets.dtype == torch.int64
    assert set(targets.tolist()) == {0, 1, 2}
    for i in range(24):
        sigma = levels[int(targets[i])]
        torch.testing.assert_close(inputs[i : i + 1], gaussian_blur(x[i : i + 1], sigma))
        if sigma == 0:
            torch.testing.assert_close(inputs[i], x[i], rtol=0, atol=0)
        else:  # independent reference; torch "reflect" padding == scipy "mirror"
            ref = ndimage.gaussian_filter(
                x[i, 0].double().numpy(), sigma, mode="mirror", truncate=np.ceil(3 * sigma) / sigma
            )
            np.testing.assert_allclose(inputs[i, 0].numpy(), ref, rtol=0, atol=1e-5)


def test_blur_pretext_is_seeded() -> None:
    x = _images(b=16, c=1, size=8)
    a = blur_pretext(x, (0.0, 1.0), torch.Generator().manual_seed(3))
    b = blur_pretext(x, (0.0, 1.0), torch.Generator().manual_seed(3))
    c = blur_pretext(x, (0.0, 1.0), torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("levels", [(1.0,), (), (0.0, -1.0)])
def test_blur_pretext_rejects_bad_levels(levels) -> None:
    with pytest.raises(ValueError):
        blur_pretext(_images(), levels)
