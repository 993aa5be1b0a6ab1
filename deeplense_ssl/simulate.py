"""Strong-lensing scenes like DeepLense Models I-III, rendered with lenstronomy (extra ``sim``).

Physics (see ``data_cards/sim_model_*.md`` and DOMAIN.md): a singular isothermal ellipsoid (SIE)
host of mass 1e12 Msun at z_l = 0.5 plus external shear lenses an elliptical Sersic source at
z_s = 1.0. Three classes, labels in this order:

* ``no_sub`` (0): host + shear only.
* ``cdm`` (1): plus 25 point-mass subhalos, masses from dN/dm ~ m^-0.9 in [1e6, 1e10] Msun,
  radius uniform in [0.25, 2.0] arcsec, angle uniform.
* ``axion`` (2): plus a vortex, 3e10 Msun split over 100 point masses on a straight line through
  the centre at a random angle; axion mass log-uniform in [1e-24, 1e-22] eV; half-length
  0.06e-22 / (2 m_eV) arcsec.

Instruments are pinned here (:data:`INSTRUMENTS`), never read from lenstronomy's presets, which
changed between releases. Model I images are photon counts (Poisson); Models II/III are
electrons per second with Gaussian read-out + sky + shot noise, the noise the original code
computed but never added.

Coordinates: ``x`` grows with the column index and ``y`` with the row index of every image
(display with ``origin="lower"``); angles are counter-clockwise from +x, in radians. The image
centre is (0, 0) arcsec. ``image_size`` changes the number of pixels at the model's own pixel
scale (a wider or narrower field of view), never the pixel scale.

Determinism: image ``i`` of a run with seed ``s`` draws everything from
``numpy.random.SeedSequence(s).spawn(N)[i]`` (scene and noise from two children of it), so the
output is identical for any number of workers, and ``noise=False`` gives the same scenes.
Images are interleaved by class: image ``i`` has label ``i % 3``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from astropy import constants as const
from astropy import units as u
from astropy.cosmology import FlatLambdaCDM
from tqdm.auto import tqdm

from .config import SimulateConfig
from .errors import ConfigError, MissingDependencyError
from .io import HDF5Writer, require_disk_space, require_memory

CLASS_NAMES: tuple[str, ...] = ("no_sub", "cdm", "axion")
MODELS: tuple[str, ...] = ("model_i", "model_ii", "model_iii")

# Lens / source physics, identical for the three models (DeepLense Models I-III).
Z_LENS = 0.5
Z_SOURCE = 1.0
COSMOLOGY = {"H0_km_s_mpc": 70.0, "Om0": 0.3, "Ob0": 0.05}  # flat LambdaCDM, no radiation
HOST_MASS_MSUN = 1e12
HOST_E1, HOST_E2 = 0.1, 0.0
SHEAR_GAMMA1, SHEAR_GAMMA2 = 0.05, 0.0
SOURCE_R_SERSIC_ARCSEC = 0.25
SOURCE_N_SERSIC = 1.0
SOURCE_E1, SOURCE_E2 = -0.1, 0.1
SOURCE_CENTER_MAX_ARCSEC = 0.35  # centre uniform in [-0.35, 0.35]^2 arcsec
N_SUBHALOS = 25
SUBHALO_MASS_RANGE_MSUN = (1e6, 1e10)
SUBHALO_MASS_SLOPE = -0.9  # dN/dm proportional to m ** slope
SUBHALO_RADIUS_RANGE_ARCSEC = (0.25, 2.0)
VORTEX_MASS_MSUN = 3e10
VORTEX_N_MASSES = 100
AXION_LOG10_MASS_RANGE_EV = (-24.0, -22.0)


@dataclass(frozen=True)
class Instrument:
    """Pinned instrument and observation settings of one model.

    Attributes:
        name: model name (``model_i`` ...).
        description: one line for humans.
        native_size_px: default image side in pixels.
        pixel_scale_arcsec: pixel side in arcsec.
        psf_fwhm_arcsec: FWHM of the Gaussian PSF in arcsec.
        psf_truncation_sigma: PSF kernel half-width in units of the Gaussian sigma.
        noise_model: ``"poisson_counts"`` (Model I) or ``"ccd_gaussian"`` (Models II/III).
        image_unit: unit of the stored pixel values.
        source_amp: Model I only: lenstronomy Sersic ``amp`` (counts/s/arcsec^2 at R_sersic).
        source_magnitude: Models II/III: total unlensed source AB magnitude.
        log10_exposure_range_s: Model I only: exposure time 10**U(a, b) seconds per image.
        background_rms_cps: Model I only: rms of the Gaussian background in counts/s/pixel.
        exposure_time_s: Models II/III: exposure time per single exposure, seconds.
        num_exposures: Models II/III: number of co-added exposures.
        read_noise_e: Models II/III: read-out noise per exposure, electrons.
        sky_brightness_mag_arcsec2: Models II/III: sky surface brightness, mag/arcsec^2.
        zero_point_mag: Models II/III: magnitude giving 1 electron per second.
        ccd_gain_e_per_adu: Models II/III: stored for provenance only (images are in e-/s).
        reference: where these numbers come from.
    """

    name: str
    description: str
    native_size_px: int
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    psf_truncation_sigma: float
    noise_model: str
    image_unit: str
    source_amp: float | None = None
    source_magnitude: float | None = None
    log10_exposure_range_s: tuple[float, float] | None = None
    background_rms_cps: float | None = None
    exposure_time_s: float | None = None
    num_exposures: int | None = None
    read_noise_e: float | None = None
    sky_brightness_mag_arcsec2: float | None = None
    zero_point_mag: float | None = None
    ccd_gain_e_per_adu: float | None = None
    reference: str = ""

    @property
    def total_exposure_s(self) -> float:
        """Models II/III: co-added exposure time in seconds."""
        exposure_time_s = _required(self.exposure_time_s, "exposure_time_s")
        return float(exposure_time_s * _required(self.num_exposures, "num_exposures"))

    @property
    def sky_cps_per_pixel(self) -> float:
        """Models II/III: sky level in electrons per second per pixel."""
        sky_mag = _required(self.sky_brightness_mag_arcsec2, "sky_brightness_mag_arcsec2")
        per_arcsec2 = 10 ** (-0.4 * (sky_mag - _required(self.zero_point_mag, "zero_point_mag")))
        return float(per_arcsec2 * self.pixel_scale_arcsec**2)

    @property
    def background_sigma_cps(self) -> float:
        """Models II/III: Gaussian sigma of read-out + sky noise in e-/s per pixel.

        sigma = sqrt(n_exp * read_noise**2 + t_tot * sky_per_pixel) / t_tot.
        """
        t_tot = self.total_exposure_s
        n_exp = _required(self.num_exposures, "num_exposures")
        read_noise_e = _required(self.read_noise_e, "read_noise_e")
        var_e = n_exp * read_noise_e**2 + t_tot * self.sky_cps_per_pixel
        return float(math.sqrt(var_e) / t_tot)


_T = TypeVar("_T")


def _required(value: _T | None, name: str) -> _T:
    """``value``, an :class:`Instrument` field its noise model needs.

    Raises:
        TypeError: the field is None (the instrument's noise model does not use it).
    """
    if value is None:
        raise TypeError(f"this instrument has no {name} (its noise model does not use it).")
    return value


INSTRUMENTS: dict[str, Instrument] = {
    "model_i": Instrument(
        name="model_i",
        description="DeepLense Model I: Gaussian PSF, Poisson photon counts",
        native_size_px=150,
        pixel_scale_arcsec=0.05,
        psf_fwhm_arcsec=0.087,
        psf_truncation_sigma=3.0,
        noise_model="poisson_counts",
        image_unit="photon counts",
        source_amp=20.0,
        log10_exposure_range_s=(3.0, 3.5),
        background_rms_cps=0.01,
        reference="DeepLenseSim deeplense/lens.py simple_sim (lenstronomy 1.9.2)",
    ),
    "model_ii": Instrument(
        name="model_ii",
        description="DeepLense Model II: Euclid VIS-like",
        native_size_px=64,
        pixel_scale_arcsec=0.101,
        psf_fwhm_arcsec=0.16,
        psf_truncation_sigma=5.0,
        noise_model="ccd_gaussian",
        image_unit="electrons per second",
        source_magnitude=20.0,
        exposure_time_s=565.0,
        num_exposures=4,
        read_noise_e=4.2,
        sky_brightness_mag_arcsec2=22.35,
        zero_point_mag=24.0,
        ccd_gain_e_per_adu=3.1,
        reference="lenstronomy<1.14 ObservationConfig.Euclid VIS, coadd_years=6 (pinned copy)",
    ),
    "model_iii": Instrument(
        name="model_iii",
        description="DeepLense Model III: HST WFC3 F160W-like",
        native_size_px=64,
        pixel_scale_arcsec=0.08,
        psf_fwhm_arcsec=0.08,
        psf_truncation_sigma=5.0,
        noise_model="ccd_gaussian",
        image_unit="electrons per second",
        source_magnitude=20.0,
        exposure_time_s=5400.0,
        num_exposures=1,
        read_noise_e=4.0,
        sky_brightness_mag_arcsec2=22.3,
        zero_point_mag=25.96,
        ccd_gain_e_per_adu=2.5,
        reference="lenstronomy ObservationConfig.HST WFC3_F160W, GAUSSIAN PSF (pinned copy)",
    ),
}


# ----------------------------------------------------------------------------- physics


def angular_diameter_distances_mpc(z_lens: float, z_source: float) -> tuple[float, float, float]:
    """(D_l, D_s, D_ls) in Mpc for the flat LambdaCDM cosmology :data:`COSMOLOGY` (astropy)."""
    d_l, d_s, d_ls = _distances(float(z_lens), float(z_source))
    return d_l, d_s, d_ls


@lru_cache(maxsize=8)
def _distances(z_lens: float, z_source: float) -> tuple[float, float, float]:
    cosmo = FlatLambdaCDM(H0=COSMOLOGY["H0_km_s_mpc"], Om0=COSMOLOGY["Om0"], Ob0=COSMOLOGY["Ob0"])
    d_l = cosmo.angular_diameter_distance(z_lens).value
    d_s = cosmo.angular_diameter_distance(z_source).value
    try:  # astropy >= 7
        d_ls = cosmo.angular_diameter_distance(z_lens, z_source).value
    except TypeError:  # older astropy
        d_ls = cosmo.angular_diameter_distance_z1z2(z_lens, z_source).value
    return float(d_l), float(d_s), float(d_ls)


def einstein_radius_arcsec(
    mass_msun: float | np.ndarray, z_lens: float = Z_LENS, z_source: float = Z_SOURCE
) -> float | np.ndarray:
    """Point-mass Einstein radius sqrt(4 G M / c^2 * D_ls / (D_l D_s)) in arcsec.

    Uses angular-diameter distances. (The original DeepLense code used luminosity distances and
    D_ls = D_s - D_l, which gives about 1.28" instead of 1.58" for 1e12 Msun.)

    Args:
        mass_msun: mass(es) in solar masses.
        z_lens: lens redshift.
        z_source: source redshift.
    """
    d_l, d_s, d_ls = _distances(float(z_lens), float(z_source))
    theta2_per_msun = _four_g_over_c2_mpc_per_msun() * d_ls / (d_l * d_s)  # rad^2 per Msun
    theta_rad = np.sqrt(theta2_per_msun * np.asarray(mass_msun, dtype=np.float64))
    theta = theta_rad * (180.0 / np.pi) * 3600.0
    return float(theta) if np.ndim(theta) == 0 else theta


@lru_cache(maxsize=1)
def _four_g_over_c2_mpc_per_msun() -> float:
    """4 G M_sun / c^2 in Mpc (astropy constants; cached: astropy quantities are slow)."""

    return float((4 * const.G * const.M_sun / const.c**2).to(u.Mpc).value)


def vortex_half_length_arcsec(axion_mass_ev: float | np.ndarray) -> float | np.ndarray:
    """Half-length of the vortex line, 0.06e-22 / (2 m) arcsec (DeepLense convention, z_l=0.5)."""
    return 0.06e-22 / (2.0 * np.asarray(axion_mass_ev, dtype=np.float64))


def sample_subhalo_masses(
    rng: np.random.Generator,
    n: int,
    m_min: float = SUBHALO_MASS_RANGE_MSUN[0],
    m_max: float = SUBHALO_MASS_RANGE_MSUN[1],
    slope: float = SUBHALO_MASS_SLOPE,
) -> np.ndarray:
    """Draw ``n`` masses (Msun) from dN/dm ~ m**slope on [m_min, m_max] by inverse transform."""
    if not 0 < m_min < m_max:
        raise ConfigError(f"need 0 < m_min < m_max, got {m_min}, {m_max}.")
    a = slope + 1.0
    u = rng.uniform(0.0, 1.0, size=n)
    if abs(a) < 1e-12:  # slope -1: uniform in log m
        return m_min * (m_max / m_min) ** u
    lo, hi = m_min**a, m_max**a
    return np.clip((lo + (hi - lo) * u) ** (1.0 / a), m_min, m_max)


@dataclass
class Scene:
    """Physical parameters of one image (all angles in the image frame, see module docstring).

    Attributes:
        label: class index into :data:`CLASS_NAMES`.
        theta_e_arcsec: host SIE Einstein radius, arcsec.
        source_x_arcsec, source_y_arcsec: Sersic source centre, arcsec.
        subhalo_mass_msun: (K,) CDM subhalo masses in Msun (K = 25 for ``cdm``, else 0).
        subhalo_x_arcsec, subhalo_y_arcsec: (K,) subhalo positions, arcsec.
        axion_mass_ev: axion mass in eV (NaN unless ``axion``).
        vortex_angle_rad: vortex direction, radians counter-clockwise from +x, in [0, 2 pi).
        vortex_half_length_arcsec: half-length of the vortex line, arcsec.
        vortex_mass_msun: total vortex mass, Msun.
        exposure_time_s: total exposure time of the image, seconds.
    """

    label: int
    theta_e_arcsec: float
    source_x_arcsec: float
    source_y_arcsec: float
    subhalo_mass_msun: np.ndarray = field(default_factory=lambda: np.zeros(0))
    subhalo_x_arcsec: np.ndarray = field(default_factory=lambda: np.zeros(0))
    subhalo_y_arcsec: np.ndarray = field(default_factory=lambda: np.zeros(0))
    axion_mass_ev: float = math.nan
    vortex_angle_rad: float = math.nan
    vortex_half_length_arcsec: float = math.nan
    vortex_mass_msun: float = math.nan
    exposure_time_s: float = math.nan


def draw_scene(model: str, label: int, rng: np.random.Generator) -> Scene:
    """Draw the random physical parameters of one image of class ``label``.

    Args:
        model: one of :data:`MODELS` (sets the exposure time distribution).
        label: 0 (``no_sub``), 1 (``cdm``) or 2 (``axion``).
        rng: generator used for every draw.
    """
    inst = _instrument(model)
    if label not in (0, 1, 2):
        raise ConfigError(f"label must be 0, 1 or 2, got {label}.")
    cx, cy = rng.uniform(-SOURCE_CENTER_MAX_ARCSEC, SOURCE_CENTER_MAX_ARCSEC, size=2)
    if inst.log10_exposure_range_s is not None:
        exposure = float(10 ** rng.uniform(*inst.log10_exposure_range_s))
    else:
        exposure = inst.total_exposure_s
    scene = Scene(
        label=label,
        theta_e_arcsec=float(einstein_radius_arcsec(HOST_MASS_MSUN)),
        source_x_arcsec=float(cx),
        source_y_arcsec=float(cy),
        exposure_time_s=exposure,
    )
    if label == 1:
        scene.subhalo_mass_msun = sample_subhalo_masses(rng, N_SUBHALOS)
        radius = rng.uniform(*SUBHALO_RADIUS_RANGE_ARCSEC, size=N_SUBHALOS)
        angle = rng.uniform(0.0, 2 * np.pi, size=N_SUBHALOS)
        scene.subhalo_x_arcsec = radius * np.cos(angle)
        scene.subhalo_y_arcsec = radius * np.sin(angle)
    elif label == 2:
        scene.axion_mass_ev = float(10 ** rng.uniform(*AXION_LOG10_MASS_RANGE_EV))
        scene.vortex_angle_rad = float(rng.uniform(0.0, 2 * np.pi))
        scene.vortex_half_length_arcsec = float(vortex_half_length_arcsec(scene.axion_mass_ev))
        scene.vortex_mass_msun = VORTEX_MASS_MSUN
    return scene


def lens_kwargs(scene: Scene) -> tuple[list[str], list[dict[str, float]]]:
    """lenstronomy lens model names and keyword arguments (>= 1.14.1 names) for ``scene``."""
    names = ["SIE", "SHEAR"]
    kwargs: list[dict[str, float]] = [
        {
            "theta_E": scene.theta_e_arcsec,
            "e1": HOST_E1,
            "e2": HOST_E2,
            "center_x": 0.0,
            "center_y": 0.0,
        },
        {"gamma1": SHEAR_GAMMA1, "gamma2": SHEAR_GAMMA2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    if scene.label == 1:
        thetas = np.atleast_1d(einstein_radius_arcsec(scene.subhalo_mass_msun))
        for t, x, y in zip(thetas, scene.subhalo_x_arcsec, scene.subhalo_y_arcsec, strict=True):
            names.append("POINT_MASS")
            kwargs.append({"theta_E": float(t), "center_x": float(x), "center_y": float(y)})
    elif scene.label == 2:
        theta = float(einstein_radius_arcsec(scene.vortex_mass_msun / VORTEX_N_MASSES))
        s = np.linspace(
            -scene.vortex_half_length_arcsec, scene.vortex_half_length_arcsec, VORTEX_N_MASSES
        )
        xs, ys = s * math.cos(scene.vortex_angle_rad), s * math.sin(scene.vortex_angle_rad)
        for x, y in zip(xs, ys, strict=True):
            names.append("POINT_MASS")
            kwargs.append({"theta_E": theta, "center_x": float(x), "center_y": float(y)})
    return names, kwargs


def source_kwargs(scene: Scene, model: str) -> list[dict[str, float]]:
    """lenstronomy ``SERSIC_ELLIPSE`` source keyword arguments (amplitude set per model)."""
    return [
        {
            "amp": source_amplitude(model),
            "R_sersic": SOURCE_R_SERSIC_ARCSEC,
            "n_sersic": SOURCE_N_SERSIC,
            "e1": SOURCE_E1,
            "e2": SOURCE_E2,
            "center_x": scene.source_x_arcsec,
            "center_y": scene.source_y_arcsec,
        }
    ]


@lru_cache(maxsize=8)
def source_amplitude(model: str) -> float:
    """lenstronomy Sersic ``amp`` of a model's source (flux per second per arcsec^2 at R_sersic).

    Pinned for Model I; for Models II/III chosen so the unlensed source has the pinned magnitude.
    """
    inst = _instrument(model)
    if inst.source_amp is not None:
        return float(inst.source_amp)
    _require_lenstronomy()
    from lenstronomy.LightModel.light_model import LightModel

    unit = {
        "amp": 1.0,
        "R_sersic": SOURCE_R_SERSIC_ARCSEC,
        "n_sersic": SOURCE_N_SERSIC,
        "e1": SOURCE_E1,
        "e2": SOURCE_E2,
        "center_x": 0.0,
        "center_y": 0.0,
    }
    flux_per_amp = float(LightModel(["SERSIC_ELLIPSE"]).total_flux([unit])[0])
    source_mag = _required(inst.source_magnitude, "source_magnitude")
    zero_point = _required(inst.zero_point_mag, "zero_point_mag")
    cps = 10 ** (-0.4 * (source_mag - zero_point))  # electrons per second
    return float(cps / flux_per_amp)


# ----------------------------------------------------------------------------- rendering


class Renderer:
    """Noiseless images of scenes for one model and image size, lenstronomy objects built once.

    One lenstronomy ``ImageModel`` per class (fixed lens-model lists) is built in ``__init__``
    and reused for every image; this is what makes simulation fast.

    Args:
        model: one of :data:`MODELS`.
        image_size: pixels per side (None: the model's native size); pixel scale is fixed.
    """

    def __init__(self, model: str, image_size: int | None = None):
        _require_lenstronomy()
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.Util import util

        self.instrument = _instrument(model)
        self.model = model
        n = int(image_size or self.instrument.native_size_px)
        if n < 4:
            raise ConfigError(f"image_size must be at least 4 pixels, got {n}.")
        self.image_size = n
        scale = self.instrument.pixel_scale_arcsec
        _, _, ra0, dec0, _, _, pix2coord, _ = util.make_grid_with_coordtransform(
            num_pix=n, delta_pix=scale, subgrid_res=1, inverse=False
        )
        data = ImageData(
            image_data=np.zeros((n, n)),
            ra_at_xy_0=ra0,
            dec_at_xy_0=dec0,
            transform_pix2angle=pix2coord,
        )
        psf = PSF(
            psf_type="GAUSSIAN",
            fwhm=self.instrument.psf_fwhm_arcsec,
            pixel_size=scale,
            truncation=self.instrument.psf_truncation_sigma,
        )
        numerics = {"supersampling_factor": 1, "supersampling_convolution": False}
        source = LightModel(["SERSIC_ELLIPSE"])
        n_point_masses = {0: 0, 1: N_SUBHALOS, 2: VORTEX_N_MASSES}
        self._image_models = {}
        for label, k in n_point_masses.items():
            lens = LensModel(["SIE", "SHEAR"] + ["POINT_MASS"] * k)
            self._image_models[label] = ImageModel(
                data,
                psf,
                lens_model_class=lens,
                source_model_class=source,
                kwargs_numerics=numerics,
            )
        # pixel-centre coordinates (arcsec), x along columns, y along rows
        self.x_grid_arcsec, self.y_grid_arcsec = data.pixel_coordinates

    def noiseless(self, scene: Scene, convolved: bool = True) -> np.ndarray:
        """Noiseless image of ``scene`` in flux per second per pixel, shape (H, W) float64.

        Units: counts/s (Model I) or electrons/s (Models II/III) per pixel.

        Args:
            scene: physical parameters.
            convolved: convolve with the PSF (False: the ray-traced surface brightness only).
        """
        _, kw_lens = lens_kwargs(scene)
        return np.asarray(
            self._image_models[scene.label].image(
                kwargs_lens=kw_lens,
                kwargs_source=source_kwargs(scene, self.model),
                unconvolved=not convolved,
            ),
            dtype=np.float64,
        )


def noise_sigma(model: str, flux_cps: np.ndarray) -> np.ndarray:
    """Models II/III: per-pixel noise sigma (e-/s) of a noiseless image ``flux_cps`` (e-/s).

    sigma^2 = background_sigma^2 + max(flux, 0) / t_tot (Gaussian approximation of the shot
    noise, as lenstronomy's ``SingleBand.noise_for_model``).
    """
    inst = _instrument(model)
    if inst.noise_model != "ccd_gaussian":
        raise ConfigError(f"{model} has Poisson counts, not a Gaussian noise sigma.")
    return np.sqrt(
        inst.background_sigma_cps**2 + np.clip(flux_cps, 0, None) / inst.total_exposure_s
    )


def observe(
    model: str,
    flux_cps: np.ndarray,
    exposure_time_s: float,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Turn a noiseless image into stored pixel values (noise added unless ``rng`` is None).

    Model I (photon counts): ``lam = t * max(flux + g, 0)`` with ``g ~ N(0, background_rms)``
    per pixel, then counts ``~ Poisson(lam)``; without noise, the expected counts ``t * flux``.
    Models II/III (electrons per second): ``flux + N(0, noise_sigma(flux))``; without noise,
    ``flux``.

    Args:
        model: one of :data:`MODELS`.
        flux_cps: (H, W) noiseless image, counts or electrons per second per pixel.
        exposure_time_s: total exposure in seconds (Model I: per image).
        rng: generator for the noise, or None for a noiseless image.

    Returns:
        (H, W) float64 image in the model's stored unit.
    """
    inst = _instrument(model)
    flux = np.asarray(flux_cps, dtype=np.float64)
    if inst.noise_model == "poisson_counts":
        if rng is None:
            return exposure_time_s * flux
        background_rms = _required(inst.background_rms_cps, "background_rms_cps")
        background = rng.normal(0.0, background_rms, size=flux.shape)
        lam = exposure_time_s * np.clip(flux + background, 0.0, None)
        return rng.poisson(lam).astype(np.float64)
    if rng is None:
        return flux
    return flux + rng.normal(0.0, 1.0, size=flux.shape) * noise_sigma(model, flux)


# ----------------------------------------------------------------------------- datasets

PARAM_UNITS: dict[str, str] = {
    "theta_e_arcsec": "host SIE Einstein radius, arcsec",
    "source_x_arcsec": "source centre x (columns), arcsec",
    "source_y_arcsec": "source centre y (rows), arcsec",
    "n_subhalos": "number of CDM point-mass subhalos",
    "subhalo_mass_msun": f"(N, {N_SUBHALOS}) subhalo masses, Msun, NaN-padded",
    "subhalo_x_arcsec": f"(N, {N_SUBHALOS}) subhalo x, arcsec, NaN-padded",
    "subhalo_y_arcsec": f"(N, {N_SUBHALOS}) subhalo y, arcsec, NaN-padded",
    "axion_mass_ev": "axion mass, eV (NaN unless axion)",
    "vortex_angle_rad": "vortex direction, rad counter-clockwise from +x (NaN unless axion)",
    "vortex_half_length_arcsec": "vortex half-length, arcsec (NaN unless axion)",
    "vortex_mass_msun": "total vortex mass, Msun (NaN unless axion)",
    "exposure_time_s": "total exposure time, s",
}


def min_full_ring_size_px(model: str) -> int:
    """Smallest image side (pixels) whose field of view holds 1.3 Einstein radii each side."""
    inst = _instrument(model)
    half = 1.3 * einstein_radius_arcsec(HOST_MASS_MSUN) / inst.pixel_scale_arcsec
    return int(2 * math.ceil(half))


def image_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of image ``index``: child ``index`` of ``SeedSequence(seed).spawn``."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def simulate_one(
    renderer: Renderer, index: int, seed: int, noise: bool = True, source_variant: int = 0
) -> tuple[np.ndarray, int, Scene]:
    """Simulate image ``index`` of a run with ``seed``.

    Args:
        renderer: the model's renderer.
        index: image index in the run (its label is ``index % 3``).
        seed: run seed.
        noise: add the model's noise.
        source_variant: 0 renders the scene as drawn. ``k > 0`` renders the SAME lens,
            subhalos / vortex and exposure with the source centre redrawn and fresh noise, from
            a stream of its own (:func:`resample_source`): row ``i`` of a file simulated with
            ``--source-variant k`` is another view of the scene of row ``i`` of the file with
            the same model, seed and counts (simulation-informed positives).

    Returns:
        The (H, W) float32 image in the model's unit, its label (``index % 3``) and its Scene.
    """
    label = index % len(CLASS_NAMES)
    scene_seq, noise_seq = image_seed_sequence(seed, index).spawn(2)
    scene = draw_scene(renderer.model, label, np.random.default_rng(scene_seq))
    if source_variant:
        variant_seq = np.random.SeedSequence(int(seed), spawn_key=(int(index), 1 + source_variant))
        source_seq, noise_seq = variant_seq.spawn(2)
        scene = resample_source(scene, np.random.default_rng(source_seq))
    flux = renderer.noiseless(scene)
    rng = np.random.default_rng(noise_seq) if noise else None
    image = observe(renderer.model, flux, scene.exposure_time_s, rng)
    return image.astype(np.float32), label, scene


def resample_source(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with the source centre redrawn (uniform in +-``SOURCE_CENTER_MAX``), the
    only source parameter DeepLense varies; lens, substructure and exposure are kept."""
    cx, cy = rng.uniform(-SOURCE_CENTER_MAX_ARCSEC, SOURCE_CENTER_MAX_ARCSEC, size=2)
    return replace(scene, source_x_arcsec=float(cx), source_y_arcsec=float(cy))


MAX_IMAGE_SIZE_PX = 2048  # over 13x the largest native size; rendering cost grows as size**2
PARAM_BYTES_PER_IMAGE = 8 * (3 * N_SUBHALOS + 9)  # the float64 / int64 params of one image


def check_request(
    model: str, n_per_class: int, seed: int = 0, image_size: int | None = None, workers: int = 1
) -> tuple[int, int]:
    """Validate a simulation request before any work.

    Returns:
        (number of images, image side in pixels).

    Raises:
        ConfigError: unknown model, non-integer or out-of-range counts, sizes, seed or workers.
    """
    _instrument(model)
    for name, value, low in (("n_per_class", n_per_class, 1), ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}.")
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int | np.integer)
        or not 4 <= image_size <= MAX_IMAGE_SIZE_PX
    ):
        raise ConfigError(
            f"image_size must be an integer from 4 to {MAX_IMAGE_SIZE_PX} pixels, got "
            f"{image_size!r}."
        )
    size = int(image_size or INSTRUMENTS[model].native_size_px)
    return int(n_per_class) * len(CLASS_NAMES), size


def simulate_arrays(
    model: str,
    n_per_class: int,
    seed: int = 0,
    *,
    image_size: int | None = None,
    noise: bool = True,
    workers: int = 1,
    progress: bool = False,
    source_variant: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``3 * n_per_class`` images in memory.

    Args:
        model: ``model_i``, ``model_ii`` or ``model_iii``.
        n_per_class: images per class.
        seed: run seed (>= 0); the result does not depend on ``workers``.
        image_size: pixels per side, 4 to :data:`MAX_IMAGE_SIZE_PX` (None: native 150 for
            model_i, 64 otherwise) at the model's pixel scale.
        noise: add the model's noise (False: noiseless images in the same unit).
        workers: processes to use (1: in this process; at most one per CPU core is started).
        progress: show a tqdm progress bar on stderr.
        source_variant: 0, or ``k > 0`` for the same scenes with another source centre and
            noise (see :func:`simulate_one`).

    Returns:
        images (N, 1, H, W) float32 in the model's unit (see :data:`INSTRUMENTS`), labels (N,)
        int64 (image ``i`` has label ``i % 3``), and params: a dict of (N, ...) arrays named as
        in :data:`PARAM_UNITS`.

    Raises:
        MissingDependencyError: lenstronomy is not installed.
        ConfigError: bad model, counts or sizes, or more images than fit in memory (use
            :func:`simulate_dataset`, which streams them to disk).
    """
    n, size = check_request(model, n_per_class, seed, image_size, workers)
    _require_lenstronomy()
    require_memory(
        n * (4 * size * size + PARAM_BYTES_PER_IMAGE),
        f"simulating {n} images of {size}x{size} px in memory",
        error=ConfigError,
        hint="; simulate fewer images, or write them to disk with simulate_dataset / the CLI",
    )
    _warn_if_ring_cropped(model, size)
    images = np.empty((n, 1, size, size), np.float32)
    labels = np.empty(n, np.int64)
    scenes: list[Scene] = [None] * n  # type: ignore[list-item]
    blocks = _simulate_blocks(model, n, size, seed, (noise, source_variant), workers, progress)
    for start, block, block_labels, block_scenes in blocks:
        stop = start + len(block)
        images[start:stop] = block
        labels[start:stop] = block_labels
        scenes[start:stop] = block_scenes
    return images, labels, _params_from_scenes(scenes)


def simulate_dataset(cfg: SimulateConfig) -> Path:
    """Simulate a dataset and write it to ``cfg.out`` in the package's HDF5 layout, atomically.

    Images are written block by block as they are rendered (memory stays small for any
    ``n_per_class``); the free disk space is checked before the first image is rendered.

    Args:
        cfg: validated :class:`~deeplense_ssl.config.SimulateConfig`.

    Returns:
        The path written. Nothing is left at ``cfg.out`` if anything fails (Ctrl-C included).

    Raises:
        ConfigError: bad settings (see :func:`check_request`).
        OutputError: not enough disk space (before starting, or when the disk fills up).
    """
    cfg.validate()
    n, size = check_request(cfg.model, cfg.n_per_class, cfg.seed, cfg.image_size, cfg.workers)
    _require_lenstronomy()
    require_disk_space(cfg.out, n * (4 * size * size + PARAM_BYTES_PER_IMAGE + 128) + (1 << 20))
    _warn_if_ring_cropped(cfg.model, size)
    attrs = {"provenance": provenance(cfg), "image_unit": INSTRUMENTS[cfg.model].image_unit}
    render = (cfg.noise, cfg.source_variant)
    blocks = _simulate_blocks(cfg.model, n, size, cfg.seed, render, cfg.workers, True)
    # closing(): on any error the progress bar and the worker pool end before the message
    with (
        HDF5Writer(cfg.out, n, (1, size, size), CLASS_NAMES, attrs=attrs) as writer,
        closing(blocks),
    ):
        for start, images, labels, scenes in blocks:
            names = [f"{cfg.model}/{CLASS_NAMES[lab]}/{start + j}" for j, lab in enumerate(labels)]
            writer.append(images, labels, sources=names, params=_params_from_scenes(scenes))
    return Path(cfg.out)


def _warn_if_ring_cropped(model: str, size: int) -> None:
    if size < min_full_ring_size_px(model):
        warnings.warn(
            f'image_size={size} px at {INSTRUMENTS[model].pixel_scale_arcsec}"/px crops the '
            f'Einstein ring (radius {einstein_radius_arcsec(HOST_MASS_MSUN):.2f}"); use at least '
            f"{min_full_ring_size_px(model)} px to see whole rings and arcs.",
            UserWarning,
            stacklevel=3,
        )


def _simulate_blocks(
    model: str,
    n: int,
    size: int,
    seed: int,
    render: tuple[bool, int],
    workers: int,
    progress: bool,
) -> Generator[tuple[int, np.ndarray, np.ndarray, list[Scene]], None, None]:
    """Yield ``(start, images (B, 1, H, W) float32, labels (B,), scenes)`` in image order."""
    workers = min(workers, _cpu_count())
    bar = _progress_bar(n, model, progress)
    try:
        for start, chunk in _run_chunks(model, size, seed, render, n, workers):
            images = np.stack([image for image, _, _ in chunk])[:, None]
            labels = np.array([label for _, label, _ in chunk], np.int64)
            yield start, images, labels, [scene for _, _, scene in chunk]
            bar.update(len(chunk))
    finally:
        bar.close()


def provenance(cfg: SimulateConfig) -> dict[str, Any]:
    """Everything needed to understand and regenerate a simulated file (JSON-safe)."""
    import lenstronomy

    inst = INSTRUMENTS[cfg.model]
    return {
        "generator": "deeplense_ssl.simulate",
        "config": asdict(cfg),
        "lenstronomy_version": lenstronomy.__version__,
        "numpy_version": np.__version__,
        "image_size_px": int(cfg.image_size or inst.native_size_px),
        "instrument": {k: v for k, v in asdict(inst).items()},
        "derived": {
            "total_exposure_s": inst.total_exposure_s if inst.exposure_time_s else None,
            "background_sigma_cps": inst.background_sigma_cps if inst.read_noise_e else None,
            "source_amp": source_amplitude(cfg.model),
        },
        "physics": {
            "z_lens": Z_LENS,
            "z_source": Z_SOURCE,
            "cosmology": COSMOLOGY,
            "host_mass_msun": HOST_MASS_MSUN,
            "host_e1_e2": [HOST_E1, HOST_E2],
            "shear_gamma1_gamma2": [SHEAR_GAMMA1, SHEAR_GAMMA2],
            "source_sersic": {
                "R_sersic_arcsec": SOURCE_R_SERSIC_ARCSEC,
                "n_sersic": SOURCE_N_SERSIC,
                "e1_e2": [SOURCE_E1, SOURCE_E2],
                "center_max_abs_arcsec": SOURCE_CENTER_MAX_ARCSEC,
            },
            "subhalos": {
                "n": N_SUBHALOS,
                "mass_range_msun": list(SUBHALO_MASS_RANGE_MSUN),
                "dn_dm_slope": SUBHALO_MASS_SLOPE,
                "radius_range_arcsec": list(SUBHALO_RADIUS_RANGE_ARCSEC),
            },
            "vortex": {
                "mass_msun": VORTEX_MASS_MSUN,
                "n_point_masses": VORTEX_N_MASSES,
                "log10_axion_mass_range_ev": list(AXION_LOG10_MASS_RANGE_EV),
                "half_length_arcsec": "0.06e-22 / (2 * axion_mass_ev)",
            },
            "seeding": "numpy SeedSequence(seed).spawn(N)[i] per image i; label = i % 3",
        },
        "param_units": PARAM_UNITS,
        "coordinates": "x along columns, y along rows, origin at the image centre (arcsec)",
    }


# ----------------------------------------------------------------------------- helpers


def _instrument(model: str) -> Instrument:
    try:
        return INSTRUMENTS[model]
    except KeyError:
        raise ConfigError(f"model={model!r} is not one of {', '.join(MODELS)}.") from None


def _require_lenstronomy() -> None:
    try:
        import lenstronomy  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "simulation needs lenstronomy, which is not installed. "
            "Install the extra: pip install 'deeplense-ssl[sim]'."
        ) from exc


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _chunk_size(n: int, workers: int) -> int:
    """Images per task: small enough for a smooth bar and load balance."""
    return max(1, min(64, math.ceil(n / (workers * 8))))


_WORKER_RENDERER: Renderer | None = None


def _worker_init(model: str, size: int) -> None:
    global _WORKER_RENDERER
    _WORKER_RENDERER = Renderer(model, size)


def _worker_chunk(args: tuple[int, int, int, tuple[bool, int]]) -> tuple[int, list]:
    start, stop, seed, (noise, variant) = args
    assert _WORKER_RENDERER is not None
    renderer = _WORKER_RENDERER
    return start, [simulate_one(renderer, i, seed, noise, variant) for i in range(start, stop)]


def _run_chunks(
    model: str,
    size: int,
    seed: int,
    render: tuple[bool, int],
    n: int,
    workers: int,
) -> Iterator[tuple[int, list]]:
    step = _chunk_size(n, workers)
    n_tasks = math.ceil(n / step)
    tasks = ((a, min(n, a + step), seed, render) for a in range(0, n, step))  # lazy: any n
    _worker_init(model, size)  # imports lenstronomy once here; forked workers inherit it
    if workers == 1 or n_tasks == 1:
        for task in tasks:
            yield _worker_chunk(task)
        return
    # fork is fast and safe here (workers only run numpy/lenstronomy); spawn elsewhere
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(min(workers, n_tasks), _worker_init, (model, size)) as pool:
        yield from pool.imap(_worker_chunk, tasks)  # ordered; terminate() on exit / Ctrl-C


def _progress_bar(n: int, model: str, enabled: bool) -> Any:
    return tqdm(total=n, desc=f"simulate {model}", unit="img", disable=not enabled, leave=False)


def _params_from_scenes(scenes: Iterable[Scene]) -> dict[str, np.ndarray]:
    scenes = list(scenes)
    n = len(scenes)

    def column(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in scenes], dtype=np.float64)

    def padded(name: str) -> np.ndarray:
        out = np.full((n, N_SUBHALOS), np.nan)
        for i, s in enumerate(scenes):
            values = getattr(s, name)
            out[i, : len(values)] = values
        return out

    return {
        "theta_e_arcsec": column("theta_e_arcsec"),
        "source_x_arcsec": column("source_x_arcsec"),
        "source_y_arcsec": column("source_y_arcsec"),
        "n_subhalos": np.array([len(s.subhalo_mass_msun) for s in scenes], dtype=np.int64),
        "subhalo_mass_msun": padded("subhalo_mass_msun"),
        "subhalo_x_arcsec": padded("subhalo_x_arcsec"),
        "subhalo_y_arcsec": padded("subhalo_y_arcsec"),
        "axion_mass_ev": column("axion_mass_ev"),
        "vortex_angle_rad": column("vortex_angle_rad"),
        "vortex_half_length_arcsec": column("vortex_half_length_arcsec"),
        "vortex_mass_msun": column("vortex_mass_msun"),
        "exposure_time_s": column("exposure_time_s"),
    }


# --------------------------------------------------------------------------------------------
# Where the substructure is: masks for the attribution localisation score
# --------------------------------------------------------------------------------------------


# the params entries that place the substructure (see :func:`substructure_mask`)
MASK_PARAMS = (
    "subhalo_x_arcsec",
    "subhalo_y_arcsec",
    "vortex_angle_rad",
    "vortex_half_length_arcsec",
)


def pixel_coordinates_arcsec(size: int, pixel_scale_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arcsec of every pixel centre of a ``size``-pixel image, each ``(size, size)``:
    ``x`` grows with the column and ``y`` with the row, (0, 0) at the image centre (the frame of
    :class:`Scene` and of lenstronomy's grid here)."""
    axis = (np.arange(size) - (size - 1) / 2.0) * pixel_scale_arcsec
    x, y = np.meshgrid(axis, axis, indexing="xy")
    return x, y


def substructure_mask(
    params: dict[str, Any], size: int, pixel_scale_arcsec: float, radius_arcsec: float
) -> np.ndarray | None:
    """Pixels within ``radius_arcsec`` of the substructure of one scene, ``(size, size)`` bool.

    Args:
        params: one image's entries of the simulated file's ``params`` (:data:`PARAM_UNITS`):
            the subhalo positions (``cdm``) or the vortex angle and half-length (``axion``).
        size: image side in pixels.
        pixel_scale_arcsec: the model's pixel scale.
        radius_arcsec: distance from a subhalo or from the vortex segment that counts as "at
            the substructure" (e.g. a few PSF FWHM).

    Returns:
        The mask, or ``None`` for a scene without substructure (``no_sub``) or with no subhalo
        inside the field.

    Note: this is where the substructure *is*. Its effect on the image is where it deflects
    light: near the ring. A subhalo far from the ring, or a short vortex (heavy axion) at the
    centre, changes pixels away from its mask (the light is on the ring), so read the score of
    such scenes with that in mind; long vortices cross the ring and are covered.
    """
    x, y = pixel_coordinates_arcsec(size, pixel_scale_arcsec)
    sub_x = np.asarray(params.get("subhalo_x_arcsec", []), dtype=float).ravel()
    sub_y = np.asarray(params.get("subhalo_y_arcsec", []), dtype=float).ravel()
    keep = np.isfinite(sub_x) & np.isfinite(sub_y)
    if keep.any():
        d2 = (x[..., None] - sub_x[keep]) ** 2 + (y[..., None] - sub_y[keep]) ** 2
        mask = (d2 <= radius_arcsec**2).any(-1)
        return mask if mask.any() else None
    angle = float(np.asarray(params.get("vortex_angle_rad", np.nan)))
    half = float(np.asarray(params.get("vortex_half_length_arcsec", np.nan)))
    if not (math.isfinite(angle) and math.isfinite(half)):
        return None
    # distance to the segment from -half to +half along (cos a, sin a) through the centre
    along = np.clip(x * math.cos(angle) + y * math.sin(angle), -half, half)
    d2 = (x - along * math.cos(angle)) ** 2 + (y - along * math.sin(angle)) ** 2
    return d2 <= radius_arcsec**2


def substructure_geometry(provenance: Any) -> tuple[int, float, float] | None:
    """``(stored side px, pixel scale arcsec, PSF FWHM arcsec)`` of a file simulated here.

    Args:
        provenance: the file's stored ``provenance`` attribute (JSON text or dict, see
            :func:`provenance`).

    Returns:
        The geometry, or ``None`` for a file that was not simulated by this module (no usable
        provenance), whose substructure positions are then unknown.
    """
    if isinstance(provenance, bytes | str):
        try:
            provenance = json.loads(provenance)
        except ValueError:
            return None
    if not isinstance(provenance, dict) or provenance.get("generator") != "deeplense_ssl.simulate":
        return None
    inst = provenance.get("instrument") or {}
    try:
        size = int(provenance["image_size_px"])
        return size, float(inst["pixel_scale_arcsec"]), float(inst["psf_fwhm_arcsec"])
    except (KeyError, TypeError, ValueError):
        return None


def substructure_masks(
    params: dict[str, np.ndarray],
    indices: np.ndarray,
    geometry: tuple[int, float, float],
    radius_fwhm: float,
) -> list[np.ndarray | None]:
    """:func:`substructure_mask` of the images ``indices`` of a simulated file.

    Args:
        params: the file's per-image ``params`` arrays (rows aligned with the images).
        indices: (M,) rows to mask.
        geometry: :func:`substructure_geometry` of the file.
        radius_fwhm: distance from the substructure that counts, in PSF FWHM.

    Returns:
        M masks ``(S, S)`` bool at the stored side ``S`` (``None`` where an image has no
        substructure in the field).
    """
    size, scale, fwhm = geometry
    keys = [k for k in MASK_PARAMS if k in params]
    return [
        substructure_mask({k: params[k][i] for k in keys}, size, scale, radius_fwhm * fwhm)
        for i in np.asarray(indices, dtype=np.int64)
    ]
