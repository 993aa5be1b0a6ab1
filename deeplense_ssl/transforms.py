"""Batched view augmentations, run on the training device (never per-sample PIL).

Every op takes a float batch ``(batch, channels, height, width)`` on any device, draws its random
parameters *per sample* (vectorised: no Python loop over samples) and returns a batch of the same
dtype and device. Values may be negative (lensing) and are never clamped, except inside the colour
jitter for 3-band images in [0, 1] (``colour_clamp``, as torchvision does; CIFAR recipe only).

Randomness: each ``random_*`` op takes an optional :class:`torch.Generator`. A generator on
another device than the data (typically the CPU generator of ``runtime.seed_everything`` with
CUDA data) is used only to draw one seed for a fresh generator on the data's device, so results
are reproducible for a given generator state without any host-device copy of random fields.

Conventions:
    * Angles are in degrees, positive = counter-clockwise as displayed with row 0 at the top
      (the same sense as ``torch.rot90(x, 1, dims=(-2, -1))``).
    * Blur widths are Gaussian sigmas in pixels (``sigma_px``); sigma 0 is the identity.
    * Geometric warps use ``affine_grid``/``grid_sample`` (bilinear, ``align_corners=False``) with
      per-sample 2x3 matrices that map *output* normalised coordinates to *input* ones.

:class:`ViewAugmenter` composes the ops from a preset (``lensing``, ``cifar``, ``none``) and
overrides; crop, rotation and dihedral elements are fused into one matrix per sample so a view
costs a single ``grid_sample``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

FloatOrTensor = float | Tensor


# --------------------------------------------------------------------------------------------
# Randomness helpers
# --------------------------------------------------------------------------------------------


def generator_for_device(
    generator: torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """A generator usable for random draws on ``device``, derived from ``generator``.

    Returns ``generator`` itself when it already lives on ``device``; otherwise a fresh generator
    on ``device`` seeded by one draw from ``generator`` (so a CPU generator drives reproducible
    CUDA augmentation without copying random fields between devices); ``None`` stays ``None``.
    """
    if generator is None:
        return None
    gdev = generator.device
    if gdev.type == device.type and (gdev.index or 0) == (device.index or 0):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    derived = torch.Generator(device=device)
    derived.manual_seed(seed)
    return derived


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``n`` float32 samples uniform in ``[low, high)`` on ``device``."""
    u = torch.rand(n, generator=generator, device=device)
    return low + (high - low) * u


def _bernoulli(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` booleans, each True with probability ``p``."""
    return torch.rand(n, generator=generator, device=device) < p


def _per_sample(value: FloatOrTensor, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Broadcast a float or a ``(batch,)`` tensor to ``(batch, 1, 1, 1)`` on ``x``'s device
    (in ``x``'s dtype unless ``dtype`` is given)."""
    if isinstance(value, (int, float)):  # a fill on the device: no host-to-device copy
        return torch.full(
            (x.shape[0], 1, 1, 1), float(value), dtype=dtype or x.dtype, device=x.device
        )
    t = torch.as_tensor(value, dtype=dtype or x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"expected a float or a ({x.shape[0]},) tensor, got {tuple(t.shape)}.")
    return t.view(-1, 1, 1, 1)


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a (batch, channels, height, width) tensor, got {x.ndim}-d.")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating point tensor, got {x.dtype}.")


def _check_range(name: str, rng: Sequence[float], low: float | None = None) -> tuple[float, float]:
    if len(rng) != 2 or rng[0] > rng[1]:
        raise ConfigError(f"{name} must be a (low, high) pair with low <= high, got {rng!r}.")
    if low is not None and rng[0] < low:
        raise ConfigError(f"{name} must be >= {low}, got {rng!r}.")
    return float(rng[0]), float(rng[1])


# --------------------------------------------------------------------------------------------
# Dihedral group (exact, no interpolation)
# --------------------------------------------------------------------------------------------


def dihedral(x: Tensor, k: Tensor) -> Tensor:
    """Apply element ``k[i]`` of the dihedral group D4 to image ``i`` (exact pixel permutation).

    Element ``k`` in ``0..7`` is decoded from its bits, applied in this order: bit 2 transposes
    (swaps height and width), bit 1 flips vertically (rows), bit 0 flips horizontally (columns).
    Rotations are ``k=6`` (90 degrees counter-clockwise, ``torch.rot90(x, 1, dims=(-2, -1))``),
    ``k=3`` (180) and ``k=5`` (270); ``k=0`` is the identity; ``k=1, 2, 4, 7`` are reflections.

    Args:
        x: ``(batch, channels, size, size)`` square images.
        k: ``(batch,)`` integer tensor of group elements in ``0..7``.

    Returns:
        ``(batch, channels, size, size)`` tensor of the same dtype and device.
    """
    _check_batch(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral ops need square images, got {tuple(x.shape[-2:])}.")
    k = k.to(device=x.device).view(-1, 1, 1, 1)
    out = torch.where((k & 4).bool(), x.transpose(-1, -2), x)
    out = torch.where((k & 2).bool(), out.flip(-2), out)
    return torch.where((k & 1).bool(), out.flip(-1), out)


def random_dihedral(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image gets a uniformly random element of D4 (8 rotations/reflections), see
    :func:`dihedral`. Exact: only permutes pixels. Lensing images are statistically invariant
    under it."""
    _check_batch(x)
    gen = generator_for_device(generator, x.device)
    k = torch.randint(0, 8, (x.shape[0],), generator=gen, device=x.device)
    return dihedral(x, k)


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability ``p`` (exact)."""
    _check_batch(x)
    gen = generator_for_device(generator, x.device)
    flip = _bernoulli(x.shape[0], p, gen, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


# --------------------------------------------------------------------------------------------
# Affine warps (rotation, resized crop)
# --------------------------------------------------------------------------------------------


def rotation_matrix(angles_deg: Tensor, height: int, width: int) -> Tensor:
    """Per-sample ``(batch, 2, 3)`` ``affine_grid`` matrices rotating images about their centre.

    Args:
        angles_deg: ``(batch,)`` angles in degrees, counter-clockwise as displayed (row 0 on top).
        height: image height in pixels (the rotation is a true rotation in pixel space also for
            non-square images).
        width: image width in pixels.
    """
    a = torch.deg2rad(angles_deg.float())
    c, s = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # Output -> input map in pixel coords (x right, y down): [[c, -s], [s, c]]; rescaled to
    # normalised coordinates x_n = x / (W / 2), y_n = y / (H / 2).
    row0 = torch.stack([c, -s * (height / width), zero], dim=-1)
    row1 = torch.stack([s * (width / height), c, zero], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def crop_matrix(width_frac: Tensor, height_frac: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """``(batch, 2, 3)`` matrices cropping a box (fractions of the image side, centre in
    normalised coordinates in [-1, 1]) and stretching it to the whole output."""
    zero = torch.zeros_like(width_frac)
    row0 = torch.stack([width_frac, zero, cx], dim=-1)
    row1 = torch.stack([zero, height_frac, cy], dim=-1)
    return torch.stack([row0, row1], dim=-2).float()


def _dihedral_matrix(k: Tensor) -> Tensor:
    """``(batch, 2, 3)`` matrices equal to :func:`dihedral` element ``k`` (square images)."""
    k = k.view(-1)
    n = k.shape[0]
    eye = torch.eye(2, device=k.device).expand(n, 2, 2)
    swap = eye.flip(-1)
    t = torch.where((k & 4).bool().view(-1, 1, 1), swap, eye)
    fh = torch.ones(n, 2, device=k.device)
    fh[:, 1] = torch.where((k & 2).bool(), -1.0, 1.0)
    fw = torch.ones(n, 2, device=k.device)
    fw[:, 0] = torch.where((k & 1).bool(), -1.0, 1.0)
    # output -> input: undo flip W, then flip H, then transpose.
    m = t @ torch.diag_embed(fh) @ torch.diag_embed(fw)
    return torch.cat([m, torch.zeros(n, 2, 1, device=k.device)], dim=-1)


def _compose(*thetas: Tensor) -> Tensor:
    """Product of ``(batch, 2, 3)`` affine maps ``[A | b]``, left to right (first applied last)."""
    out = thetas[0].float()
    for th in thetas[1:]:
        a1, b1 = out[..., :2], out[..., 2:]
        a2, b2 = th.float()[..., :2], th.float()[..., 2:]
        out = torch.cat([a1 @ a2, a1 @ b2 + b1], dim=-1)
    return out


def affine_warp(
    x: Tensor,
    theta: Tensor,
    size: tuple[int, int] | None = None,
    padding_mode: str = "zeros",
    mode: str = "bilinear",
) -> Tensor:
    """Resample each image with its own affine map (one ``grid_sample`` for the batch).

    Args:
        x: ``(batch, channels, height, width)``.
        theta: ``(batch, 2, 3)`` output -> input maps in normalised coordinates
            (``align_corners=False``: -1 and 1 are the outer pixel edges).
        size: output ``(height, width)``; default the input size.
        padding_mode: ``grid_sample`` padding for points outside the input (``zeros``,
            ``border``, ``reflection``).
        mode: ``bilinear`` or ``nearest``.

    Returns:
        ``(batch, channels, *size)``, same dtype and device as ``x``.
    """
    _check_batch(x)
    out_hw = tuple(x.shape[-2:]) if size is None else tuple(size)
    grid = F.affine_grid(
        theta.to(device=x.device, dtype=x.dtype),
        [x.shape[0], x.shape[1], *out_hw],
        align_corners=False,
    )
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def _crop_params(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    aspect_hw: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    area = _uniform(n, scale[0], scale[1], generator, device)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    r = torch.exp(log_r)  # width / height of the box in pixels
    # Box of area fraction `area` and pixel aspect `r`: w_px = sqrt(area * H * W * r).
    w = torch.sqrt(area * r * aspect_hw).clamp(max=1.0)
    h = torch.sqrt(area / r / aspect_hw).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=generator, device=device) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=generator, device=device) - 1) * (1 - h)
    return crop_matrix(w, h, cx, cy)


def random_rotation(
    x: Tensor,
    degrees: tuple[float, float] = (-180.0, 180.0),
    generator: torch.Generator | None = None,
    padding_mode: str = "zeros",
) -> Tensor:
    """Rotate each image by its own angle, uniform in ``degrees``, about the image centre.

    Bilinear interpolation (a slight smoothing for angles that are not multiples of 90 degrees);
    points from outside the image are filled according to ``padding_mode`` (zeros by default).

    Args:
        x: ``(batch, channels, height, width)``.
        degrees: ``(low, high)`` angle range in degrees, counter-clockwise positive.
        generator: optional random generator.
        padding_mode: ``zeros``, ``border`` or ``reflection``.
    """
    _check_batch(x)
    lo, hi = _check_range("degrees", degrees)
    gen = generator_for_device(generator, x.device)
    angles = _uniform(x.shape[0], lo, hi, gen, x.device)
    return affine_warp(x, rotation_matrix(angles, *x.shape[-2:]), padding_mode=padding_mode)


def random_resized_crop(
    x: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Crop a random box of each image and resize it to ``size`` (default: the input size).

    Like ``torchvision.transforms.RandomResizedCrop``: the box area is a fraction uniform in
    ``scale`` of the image area and its aspect ratio (width/height) is log-uniform in ``ratio``;
    the box position is uniform among positions inside the image. Vectorised difference: instead
    of retrying, a box side longer than the image is clipped to the image side.

    Args:
        x: ``(batch, channels, height, width)``.
        scale: ``(low, high)`` area fraction, within (0, 1].
        ratio: ``(low, high)`` aspect ratio range, > 0.
        generator: optional random generator.
        size: output ``(height, width)``.
    """
    _check_batch(x)
    scale = _check_range("scale", scale, low=0.0)
    ratio = _check_range("ratio", ratio, low=1e-6)
    gen = generator_for_device(generator, x.device)
    h, w = x.shape[-2:]
    theta = _crop_params(x.shape[0], scale, ratio, h / w, gen, x.device)
    return affine_warp(x, theta, size=size)


# --------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------


def gaussian_kernels1d(
    sigma_px: Tensor, radius: int, truncate: float = 3.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised 1-d Gaussian kernels ``(batch, 2 * radius + 1)``, one per sigma (pixels).

    Kernel ``i`` is truncated at its own half-width ``ceil(truncate * sigma_px[i])`` (zero
    beyond), so a result never depends on the other sigmas of the batch; sigma 0 gives a delta.
    """
    offsets = torch.arange(-radius, radius + 1, device=sigma_px.device, dtype=dtype)
    sig = sigma_px.to(dtype).view(-1, 1)
    k = torch.exp(-0.5 * (offsets / sig.clamp(min=1e-6)) ** 2)
    k = k * (offsets.abs() <= torch.ceil(truncate * sig))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(
    x: Tensor,
    sigma_px: FloatOrTensor,
    *,
    truncate: float = 3.0,
    max_sigma_px: float | None = None,
) -> Tensor:
    """Gaussian blur with one sigma (in pixels) per image; separable grouped convolution.

    Each image is convolved with its own normalised kernel (so total flux is preserved away from
    the borders), truncated at ``ceil(truncate * sigma_px)`` pixels (at most the image size minus
    one), with reflect padding (``d c b | a b c d``, scipy's ``mode="mirror"``). Sigma 0 is the
    identity.

    Args:
        x: ``(batch, channels, height, width)``.
        sigma_px: a float, or a ``(batch,)`` tensor of sigmas in pixels (>= 0).
        truncate: kernel half-width in units of the largest sigma.
        max_sigma_px: upper bound of ``sigma_px`` that sets the size of the shared kernel array
            (the result does not depend on it); pass it with a CUDA tensor of sigmas to avoid a
            device synchronisation.

    Returns:
        Blurred batch, same shape, dtype and device.
    """
    _check_batch(x)
    b, c, h, w = x.shape
    kdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    sigma = _per_sample(sigma_px, x, kdtype).view(-1)
    if max_sigma_px is None:
        max_sigma_px = float(sigma.max()) if b else 0.0
    radius = min(math.ceil(truncate * max_sigma_px), h - 1, w - 1)
    if radius <= 0:
        return x
    kernels = gaussian_kernels1d(sigma, radius, truncate, kdtype).to(x.dtype)  # (B, K)
    kernels = kernels.repeat_interleave(c, dim=0)  # (B*C, K)
    size = 2 * radius + 1
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kernels.view(b * c, 1, 1, size), groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kernels.view(b * c, 1, size, 1), groups=b * c)
    return y.view(b, c, h, w)


def sigma_levels(index: Tensor, levels_px: Sequence[float]) -> Tensor:
    """``levels_px[index]`` as a float32 tensor on ``index``'s device, built with device-side
    selects (no host-to-device copy, so no CUDA synchronisation)."""
    sigma = torch.zeros(index.shape, dtype=torch.float32, device=index.device)
    for k, level in enumerate(levels_px):
        sigma = torch.where(index == k, float(level), sigma)
    return sigma


def random_gaussian_blur(
    x: Tensor,
    sigma_px: tuple[float, float] = (0.1, 2.0),
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """With probability ``p`` blur each image with a sigma uniform in ``sigma_px`` (pixels)."""
    _check_batch(x)
    lo, hi = _check_range("sigma_px", sigma_px, low=0.0)
    gen = generator_for_device(generator, x.device)
    sig = _uniform(x.shape[0], lo, hi, gen, x.device)
    sig = torch.where(_bernoulli(x.shape[0], p, gen, x.device), sig, 0.0)
    return gaussian_blur(x, sig, max_sigma_px=hi)


# --------------------------------------------------------------------------------------------
# Noise and flux
# --------------------------------------------------------------------------------------------


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_noise(
    x: Tensor, std: FloatOrTensor, generator: torch.Generator | None = None
) -> Tensor:
    """Add white Gaussian noise, ``std`` a float or one value per image (``(batch,)``), in the
    units of the pixel values. Never clamps."""
    _check_batch(x)
    gen = generator_for_device(generator, x.device)
    return x + _per_sample(std, x) * _randn_like(x, gen)


def poisson_like_noise(
    x: Tensor, counts_per_unit: FloatOrTensor, generator: torch.Generator | None = None
) -> Tensor:
    """Add shot noise: Gaussian with variance ``max(x, 0) / counts_per_unit`` per pixel.

    The Gaussian approximation of Poisson noise for an image whose unit value corresponds to
    ``counts_per_unit`` detected photons (larger = less noise). Differentiable, works on any
    device, keeps negative values (negative pixels get no shot noise). Never clamps.

    Args:
        x: ``(batch, channels, height, width)``.
        counts_per_unit: a float or ``(batch,)`` tensor, > 0.
        generator: optional random generator.
    """
    _check_batch(x)
    gen = generator_for_device(generator, x.device)
    std = torch.sqrt(x.clamp(min=0) / _per_sample(counts_per_unit, x))
    return x + std * _randn_like(x, gen)


def flux_scale(x: Tensor, factors: FloatOrTensor) -> Tensor:
    """Multiply each image by its factor (a global flux / exposure change)."""
    _check_batch(x)
    return x * _per_sample(factors, x)


def random_flux_scale(
    x: Tensor,
    scale_range: tuple[float, float] = (0.8, 1.25),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiply each image by a factor log-uniform in ``scale_range`` (> 0)."""
    _check_batch(x)
    lo, hi = _check_range("scale_range", scale_range, low=1e-12)
    gen = generator_for_device(generator, x.device)
    f = torch.exp(_uniform(x.shape[0], math.log(lo), math.log(hi), gen, x.device))
    return flux_scale(x, f)


def contrast(x: Tensor, factors: FloatOrTensor) -> Tensor:
    """Scale deviations from each image's mean (over bands and pixels) by its factor."""
    _check_batch(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + _per_sample(factors, x) * (x - mean)


def random_contrast(
    x: Tensor,
    factor_range: tuple[float, float] = (0.8, 1.2),
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`contrast` with a factor uniform in ``factor_range`` per image."""
    _check_batch(x)
    lo, hi = _check_range("factor_range", factor_range, low=0.0)
    gen = generator_for_device(generator, x.device)
    return contrast(x, _uniform(x.shape[0], lo, hi, gen, x.device))


# --------------------------------------------------------------------------------------------
# Colour (3 bands only)
# --------------------------------------------------------------------------------------------


def _require_rgb(x: Tensor, op: str) -> None:
    _check_batch(x)
    if x.shape[1] != 3:
        raise ValueError(f"{op} needs 3-band (RGB-like) images, got {x.shape[1]} band(s).")


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights), ``(B, 1, H, W)``."""
    _require_rgb(x, "rgb_to_grayscale")
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Replace each 3-band image by its luma (in all 3 bands) with probability ``p``."""
    _require_rgb(x, "random_grayscale")
    gen = generator_for_device(generator, x.device)
    mask = _bernoulli(x.shape[0], p, gen, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, rgb_to_grayscale(x).expand_as(x), x)


def _blend(a: Tensor, b: Tensor, ratio: Tensor, clamp: bool) -> Tensor:
    out = ratio * a + (1 - ratio) * b
    return out.clamp(0, 1) if clamp else out


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV with hue, saturation and value in [0, 1] (torchvision's formulas),
    ``(batch, 3, H, W)``; element-wise, no lookups."""
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    flat = chroma == 0
    sat = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``n`` of RGB is ``v - v s clamp(min(k, 4 - k),
    0, 1)`` with ``k = (n' + 6 h) mod 6`` and ``n' = 5, 3, 1`` for R, G, B."""
    h, sat, v = hsv.unbind(dim=1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_hue(x: Tensor, hue_shift: Tensor) -> Tensor:
    """Shift the HSV hue of each 3-band image in [0, 1] by ``hue_shift[i]`` turns (``(batch,)``),
    as ``torchvision.transforms.functional.adjust_hue`` does with one factor per image."""
    _require_rgb(x, "adjust_hue")
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, :1] + _per_sample(hue_shift, x), 1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def colour_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
    clamp: bool = True,
) -> Tensor:
    """SimCLR colour jitter on 3-band images, applied to each image with probability ``p``.

    Per image: brightness factor uniform in ``[1 - brightness, 1 + brightness]``, contrast and
    saturation factors likewise, hue shift uniform in ``[-hue, hue]`` turns, as in
    ``torchvision.transforms.ColorJitter`` (SimCLR, Chen et al. 2020, App. A). Differences: the
    order is fixed (brightness, contrast, saturation, hue) rather than random per image. With
    ``clamp`` (images in [0, 1]) values are clamped after each step, as torchvision does.

    Raises:
        ValueError: images that do not have 3 bands.
    """
    _require_rgb(x, "colour_jitter")
    gen = generator_for_device(generator, x.device)
    n, dev = x.shape[0], x.device
    on = _bernoulli(n, p, gen, dev)
    b = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, gen, dev)
    c = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, gen, dev)
    s = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, gen, dev)
    h = _uniform(n, -hue, hue, gen, dev)
    one = torch.ones_like(b)
    b, c, s, h = (torch.where(on, v, d) for v, d in ((b, one), (c, one), (s, one), (h, 0 * one)))
    out = x * _per_sample(b, x)
    if clamp:
        out = out.clamp(0, 1)
    gray_mean = rgb_to_grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
    out = _blend(out, gray_mean, _per_sample(c, x), clamp)
    out = _blend(out, rgb_to_grayscale(out), _per_sample(s, x), clamp)
    if hue > 0:
        shifted = adjust_hue(out.clamp(0, 1) if clamp else out, h)
        out = torch.where(on.view(-1, 1, 1, 1), shifted, out)
    return out


# --------------------------------------------------------------------------------------------
# Presets and the augmenter module
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentParams:
    """Settings of a :class:`ViewAugmenter`; ``None`` disables a step.

    Steps run in this order: geometry (dihedral/flip, rotation, crop; fused into one warp),
    flux scale, contrast, colour jitter, grayscale, blur, Gaussian noise, Poisson-like noise,
    clamp.
    """

    dihedral: bool = False  # random element of D4 per image (needs square images)
    hflip_p: float = 0.0  # left-right flip probability (ignored when dihedral)
    rotation_degrees: tuple[float, float] | None = None  # uniform angle range
    crop_scale: tuple[float, float] | None = None  # random resized crop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding_mode: str = "zeros"  # fill outside the image after rotation
    flux_scale: tuple[float, float] | None = None  # log-uniform factor range
    flux_p: float = 1.0
    contrast: tuple[float, float] | None = None
    contrast_p: float = 1.0
    colour_jitter: tuple[float, float, float, float] | None = None  # b, c, s, hue; 3 bands only
    colour_jitter_p: float = 0.8
    colour_clamp: bool = True  # clamp to [0, 1] inside colour jitter, as torchvision does
    grayscale_p: float = 0.0  # 3 bands only
    blur_sigma_px: tuple[float, float] | None = None  # uniform sigma range in pixels
    blur_levels_px: tuple[float, ...] | None = None  # or: a random one of these sigmas
    blur_p: float = 1.0
    noise_std: tuple[float, float] | None = None  # uniform std range, pixel-value units
    noise_p: float = 1.0
    poisson_counts_per_unit: float | None = None
    clamp: tuple[float, float] | None = None  # final clamp; never for lensing


PRESETS: dict[str, AugmentParams] = {
    # Lensing (DeepLense-like, 1 or 3 bands, min-max scaled to ~[0, 1], values may be negative):
    # * dihedral + any rotation: the lens population has no preferred orientation, so the
    #   representation should be invariant to it (the only cost is bilinear smoothing); the
    #   corners uncovered by a rotation are filled with 0, the sky level after min-max scaling;
    # * mild crops, area 0.6-1 and aspect 0.9-1.1: the Einstein ring (radius ~12-17 px of 64)
    #   and its faint substructure must stay in the view; strong aspect changes would mimic
    #   lens ellipticity, a physical parameter;
    # * flux scale 0.8-1.25: exposure / source brightness vary, the morphology carries the class;
    # * light blur (sigma 0.1-1 px, p=0.3): PSF differences, but heavier blur erases substructure;
    # * light Gaussian noise (std up to 0.03, p=0.5): sky noise level varies between sets;
    # * no colour jitter even with 3 bands (colours are physical), no clamping.
    "lensing": AugmentParams(
        dihedral=True,
        rotation_degrees=(-180.0, 180.0),
        crop_scale=(0.6, 1.0),
        crop_ratio=(0.9, 1 / 0.9),
        flux_scale=(0.8, 1.25),
        flux_p=0.8,
        blur_sigma_px=(0.1, 1.0),
        blur_p=0.3,
        noise_std=(0.0, 0.03),
        noise_p=0.5,
    ),
    # Lensing without resampling: exact dihedral elements only (no arbitrary rotation, no crop
    # or zoom, so no bilinear smoothing of pixel-scale substructure and no change of the
    # Einstein radius in pixels), flux scale, PSF-like blur and sky noise (the "views from PSF
    # blur and noise only; exact D4" recipe of the Lens-JEPA write-ups in DOMAIN.md).
    "lensing-exact": AugmentParams(
        dihedral=True,
        flux_scale=(0.8, 1.25),
        flux_p=0.8,
        blur_sigma_px=(0.1, 1.5),
        blur_p=0.5,
        noise_std=(0.0, 0.05),
        noise_p=0.8,
    ),
    # The views of the DeepLense blur pretext (``contrastive-blur``) for any method: a blur level
    # of 0-3 px and Gaussian noise of std 0.1 (DeepLense's, on min-max scaled images); no
    # geometry, so positions and the Einstein radius in pixels are untouched.
    "psf-noise": AugmentParams(
        blur_levels_px=(0.0, 1.0, 2.0, 3.0),
        noise_std=(0.1, 0.1),
    ),
    # SimCLR CIFAR-10 recipe (Chen et al. 2020, App. B.9; DOMAIN.md): crop scale (0.08, 1),
    # left-right flip, colour jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, no blur.
    "cifar": AugmentParams(
        hflip_p=0.5,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        colour_jitter=(0.4, 0.4, 0.4, 0.1),
        colour_jitter_p=0.8,
        grayscale_p=0.2,
    ),
    "none": AugmentParams(),
}
"""Named augmentation settings; see the comments in the source for the reasons."""


class ViewAugmenter(nn.Module):
    """Random views of a batch, computed on the batch's device with per-sample parameters.

    Args:
        preset: a key of :data:`PRESETS` (``lensing``, ``cifar``, ``none``).
        in_chans: number of bands; colour jitter / grayscale are skipped unless it is 3.
        image_size: side of the square output views in pixels (inputs of another size are
            resampled by the geometric warp).
        **overrides: fields of :class:`AugmentParams` replacing the preset's values.

    Raises:
        ConfigError: unknown preset or override, or invalid values.

    Shapes:
        ``forward``: ``(batch, in_chans, H, W) -> (batch, in_chans, image_size, image_size)``.
    """

    def __init__(
        self, preset: str = "lensing", in_chans: int = 1, image_size: int = 64, **overrides
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ConfigError(f"augment preset {preset!r} is not one of {', '.join(PRESETS)}.")
        known = {f.name for f in dataclasses.fields(AugmentParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown augmentation option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}."
            )
        params = dataclasses.replace(PRESETS[preset], **overrides)
        if in_chans != 3 and (params.colour_jitter is not None or params.grayscale_p > 0):
            # Colour only makes sense for RGB-like images; documented skip for other band counts.
            params = dataclasses.replace(params, colour_jitter=None, grayscale_p=0.0)
        self._validate(params, in_chans, image_size)
        self.preset = preset
        self.params = params
        self.in_chans = in_chans
        self.image_size = image_size

    @staticmethod
    def _validate(p: AugmentParams, in_chans: int, image_size: int) -> None:
        if in_chans < 1 or image_size < 1:
            raise ConfigError("in_chans and image_size must be positive.")
        for name in ("rotation_degrees", "crop_ratio"):
            if getattr(p, name) is not None:
                _check_range(name, getattr(p, name))
        for name in ("crop_scale", "blur_sigma_px", "noise_std", "contrast"):
            if getattr(p, name) is not None:
                _check_range(name, getattr(p, name), low=0.0)
        if p.flux_scale is not None:
            _check_range("flux_scale", p.flux_scale, low=1e-12)
        if p.crop_scale is not None and not 0 < p.crop_scale[1] <= 1:
            raise ConfigError(f"crop_scale must lie in (0, 1], got {p.crop_scale}.")
        for name in ("hflip_p", "flux_p", "contrast_p", "colour_jitter_p", "grayscale_p"):
            if not 0 <= getattr(p, name) <= 1:
                raise ConfigError(f"{name} must be a probability, got {getattr(p, name)}.")
        for name in ("blur_p", "noise_p"):
            if not 0 <= getattr(p, name) <= 1:
                raise ConfigError(f"{name} must be a probability, got {getattr(p, name)}.")
        if p.blur_levels_px is not None and (
            len(p.blur_levels_px) == 0 or min(p.blur_levels_px) < 0
        ):
            raise ConfigError(f"blur_levels_px must be non-empty and >= 0: {p.blur_levels_px}.")
        if p.poisson_counts_per_unit is not None and p.poisson_counts_per_unit <= 0:
            raise ConfigError("poisson_counts_per_unit must be > 0.")
        if p.padding_mode not in ("zeros", "border", "reflection"):
            raise ConfigError(f"padding_mode={p.padding_mode!r} is not zeros/border/reflection.")

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, in_chans={self.in_chans}, image_size={self.image_size}"

    def _geometry(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        p = self.params
        n, dev = x.shape[0], x.device
        h, w = x.shape[-2:]
        out_size = (self.image_size, self.image_size)
        needs_warp = (
            p.rotation_degrees is not None or p.crop_scale is not None or (h, w) != out_size
        )
        if p.dihedral:
            k = torch.randint(0, 8, (n,), generator=gen, device=dev)
        elif p.hflip_p > 0:
            k = _bernoulli(n, p.hflip_p, gen, dev).long()  # element 1 = left-right flip
        else:
            k = None
        if not needs_warp:
            return x if k is None else dihedral(x, k)
        thetas = []
        if k is not None:
            if p.dihedral and h != w:
                raise ValueError(f"dihedral augmentation needs square images, got {(h, w)}.")
            thetas.append(_dihedral_matrix(k))
        if p.rotation_degrees is not None:
            angles = _uniform(n, *p.rotation_degrees, gen, dev)
            thetas.append(rotation_matrix(angles, h, w))
        if p.crop_scale is not None:
            thetas.append(_crop_params(n, p.crop_scale, p.crop_ratio, h / w, gen, dev))
        if not thetas:
            thetas.append(torch.eye(2, 3, device=dev).expand(n, 2, 3))
        return affine_warp(x, _compose(*thetas), size=out_size, padding_mode=p.padding_mode)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view of every image.

        Args:
            x: ``(batch, in_chans, H, W)`` float images on the training device.
            generator: optional generator for reproducible views.

        Returns:
            ``(batch, in_chans, image_size, image_size)``, same dtype and device (and
            channels-last memory format if the input had it).
        """
        _check_batch(x)
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} band(s), got {x.shape[1]}.")
        p = self.params
        gen = generator_for_device(generator, x.device)
        n, dev = x.shape[0], x.device
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
        out = self._geometry(x, gen)
        if p.flux_scale is not None:
            lo, hi = p.flux_scale
            f = torch.exp(_uniform(n, math.log(lo), math.log(hi), gen, dev))
            out = flux_scale(out, torch.where(_bernoulli(n, p.flux_p, gen, dev), f, 1.0))
        if p.contrast is not None:
            c = _uniform(n, *p.contrast, gen, dev)
            out = contrast(out, torch.where(_bernoulli(n, p.contrast_p, gen, dev), c, 1.0))
        if p.colour_jitter is not None:
            bri, con, sat, hue = p.colour_jitter
            out = colour_jitter(
                out, bri, con, sat, hue, p.colour_jitter_p, generator=gen, clamp=p.colour_clamp
            )
        if p.grayscale_p > 0:
            out = random_grayscale(out, p.grayscale_p, generator=gen)
        if p.blur_levels_px is not None or p.blur_sigma_px is not None:
            if p.blur_levels_px is not None:
                idx = torch.randint(0, len(p.blur_levels_px), (n,), generator=gen, device=dev)
                sig = sigma_levels(idx, p.blur_levels_px)
                max_sig = max(p.blur_levels_px)
            else:
                assert p.blur_sigma_px is not None  # this branch: blur_levels_px is None
                lo, hi = p.blur_sigma_px
                sig = _uniform(n, lo, hi, gen, dev)
                max_sig = hi
            sig = torch.where(_bernoulli(n, p.blur_p, gen, dev), sig, 0.0)
            out = gaussian_blur(out, sig, max_sigma_px=max_sig)
        if p.noise_std is not None:
            std = _uniform(n, *p.noise_std, gen, dev)
            std = torch.where(_bernoulli(n, p.noise_p, gen, dev), std, 0.0)
            out = gaussian_noise(out, std, generator=gen)
        if p.poisson_counts_per_unit is not None:
            out = poisson_like_noise(out, p.poisson_counts_per_unit, generator=gen)
        if p.clamp is not None:
            out = out.clamp(*p.clamp)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def views(
        self, x: Tensor, n_views: int = 2, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """``n_views`` independent random views of ``x`` computed in one batched pass.

        Returns:
            A list of ``n_views`` tensors ``(batch, in_chans, image_size, image_size)``; view
            ``v`` row ``j`` is a view of image ``j``.
        """
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}.")
        big = self(x.repeat(n_views, 1, 1, 1), generator=generator)
        return list(big.chunk(n_views, dim=0))
