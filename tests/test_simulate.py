"""Simulation: physics against independent references, noise models, determinism, CLI, errors."""

from __future__ import annotations

import json
import math
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from deeplense_ssl import simulate as sim
from deeplense_ssl.config import SimulateConfig
from deeplense_ssl.errors import ConfigError, DeepLenseError, MissingDependencyError

# tests use tiny images on purpose; the warning about cropped rings is tested once below
pytestmark = pytest.mark.filterwarnings("ignore:image_size=.*crops the Einstein ring")


# ----------------------------------------------------------------------------- references


def reference_einstein_radius_arcsec(mass_msun: float, z_l: float = 0.5, z_s: float = 1.0) -> float:
    """Point-mass Einstein radius from a hand-written flat LambdaCDM integral (no astropy)."""
    h0_si = 70.0 * 1000.0 / 3.0856775814913673e22  # 1/s
    c = 299_792_458.0
    g = 6.6743e-11
    msun = 1.988409870698051e30
    om = 0.3

    def comoving(z: float) -> float:  # metres
        val, _ = integrate.quad(lambda zz: 1.0 / math.sqrt(om * (1 + zz) ** 3 + 1 - om), 0, z)
        return c / h0_si * val

    d_l = comoving(z_l) / (1 + z_l)
    d_s = comoving(z_s) / (1 + z_s)
    d_ls = (comoving(z_s) - comoving(z_l)) / (1 + z_s)  # flat universe
    theta = math.sqrt(4 * g * mass_msun * msun / c**2 * d_ls / (d_l * d_s))
    return math.degrees(theta) * 3600.0


def angle_mod_pi_diff(a: float, b: float) -> float:
    """Smallest difference between two undirected line angles, radians."""
    d = (a - b) % math.pi
    return min(d, math.pi - d)


@pytest.fixture(scope="module")
def renderer_ii():
    return sim.Renderer("model_ii", 64)


def centred_no_sub(theta_e: float) -> sim.Scene:
    return sim.Scene(label=0, theta_e_arcsec=theta_e, source_x_arcsec=0.0, source_y_arcsec=0.0)


# ----------------------------------------------------------------------------- physics


def test_einstein_radius_matches_hand_written_cosmology():
    for mass in (1e12, 3e8, 1e6):
        assert sim.einstein_radius_arcsec(mass) == pytest.approx(
            reference_einstein_radius_arcsec(mass), rel=1e-3
        )
    # the host: about 1.66" with angular-diameter distances (DOMAIN: "about 1.2-1.7")
    assert 1.2 < sim.einstein_radius_arcsec(1e12) < 1.7


def test_no_sub_ring_radius_matches_analytic_einstein_radius(renderer_ii):
    theta_e = reference_einstein_radius_arcsec(1e12)
    pixel = renderer_ii.instrument.pixel_scale_arcsec
    image = renderer_ii.noiseless(centred_no_sub(theta_e))  # PSF-convolved, noiseless
    x, y = renderer_ii.x_grid_arcsec, renderer_ii.y_grid_arcsec
    radius, phi = np.hypot(x, y), np.arctan2(y, x)
    edges = np.linspace(-np.pi, np.pi, 37)
    ridge = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (phi >= lo) & (phi < hi) & (radius > 0.3)
        ridge.append(radius[sel][np.argmax(image[sel])])
    assert abs(np.mean(ridge) - theta_e) < pixel
    # SIE (q ~ 0.82) + 5% shear: the ring is an ellipse, each direction within ~15% of theta_E
    assert np.all(np.abs(np.array(ridge) / theta_e - 1) < 0.15)


def test_surface_brightness_and_flux_between_no_sub_and_cdm(renderer_ii):
    """Lensing conserves surface brightness, not total flux.

    Expected: (1) no unconvolved pixel exceeds the source's peak surface brightness times the
    pixel area (Sersic centre, with b_n from the exact Gamma-function condition), and the
    centred-source ring reaches close to it; (2) the PSF (normalised) conserves total flux;
    (3) cdm subhalos (~4% of the host mass) change the magnification, hence the total flux, by
    a few per cent but not zero, for the very same source.
    """
    inst = renderer_ii.instrument
    b_n = special.gammaincinv(2 * sim.SOURCE_N_SERSIC, 0.5)
    peak = sim.source_amplitude("model_ii") * math.exp(b_n) * inst.pixel_scale_arcsec**2
    # cross-check the amplitude: the unlensed source's total flux is its magnitude (zero point);
    # n = 1 Sersic: L = 2 pi R^2 I_e e^b / b^2 (lenstronomy's ellipse keeps the area pi R^2)
    r = sim.SOURCE_R_SERSIC_ARCSEC
    total = sim.source_amplitude("model_ii") * r**2 * 2 * math.pi * math.exp(b_n) / b_n**2
    assert total == pytest.approx(10 ** (-0.4 * (20.0 - inst.zero_point_mag)), rel=0.02)

    ring = renderer_ii.noiseless(centred_no_sub(sim.einstein_radius_arcsec(1e12)), False)
    assert 0.8 * peak < ring.max() <= peak * 1.01

    rng = np.random.default_rng(7)
    ratios = []
    for _ in range(12):
        cdm = sim.draw_scene("model_ii", 1, rng)
        no_sub = sim.Scene(
            label=0,
            theta_e_arcsec=cdm.theta_e_arcsec,
            source_x_arcsec=cdm.source_x_arcsec,
            source_y_arcsec=cdm.source_y_arcsec,
        )
        cdm_u, no_sub_u = (renderer_ii.noiseless(s, convolved=False) for s in (cdm, no_sub))
        cdm_c, no_sub_c = (renderer_ii.noiseless(s, convolved=True) for s in (cdm, no_sub))
        assert cdm_u.max() <= peak * 1.01 and no_sub_u.max() <= peak * 1.01
        assert cdm_c.sum() == pytest.approx(cdm_u.sum(), rel=0.01)  # PSF conserves flux
        assert no_sub_c.sum() == pytest.approx(no_sub_u.sum(), rel=0.01)
        ratios.append(cdm_c.sum() / no_sub_c.sum())
    ratios = np.array(ratios)
    assert np.all(np.abs(ratios - 1) < 0.15)
    assert abs(np.mean(ratios) - 1) < 0.05
    assert np.max(np.abs(ratios - 1)) > 1e-3  # substructure really changes the magnification


def test_vortex_lies_along_stored_angle(renderer_ii):
    from lenstronomy.LensModel.lens_model import LensModel

    rng = np.random.default_rng(3)
    checked = 0
    while checked < 3:
        scene = sim.draw_scene("model_ii", 2, rng)
        if scene.vortex_half_length_arcsec < 0.6:
            continue
        names, kwargs = sim.lens_kwargs(scene)
        assert names[2:] == ["POINT_MASS"] * sim.VORTEX_N_MASSES
        vortex = LensModel(names[2:])
        ax, ay = vortex.alpha(renderer_ii.x_grid_arcsec, renderer_ii.y_grid_arcsec, kwargs[2:])
        strength = np.hypot(ax, ay)
        rows, cols = np.unravel_index(np.argsort(strength, axis=None)[-20:], strength.shape)
        pts = np.stack([cols - cols.mean(), rows - rows.mean()], axis=1).astype(float)
        direction = np.linalg.svd(pts, full_matrices=False)[2][0]  # (d_col, d_row)
        measured = math.atan2(direction[1], direction[0])
        assert angle_mod_pi_diff(measured, scene.vortex_angle_rad) < math.radians(4)
        # total vortex deflection mass: sum of theta_E^2 is that of 3e10 Msun
        theta2 = sum(k["theta_E"] ** 2 for k in kwargs[2:])
        assert theta2 == pytest.approx(reference_einstein_radius_arcsec(3e10) ** 2, rel=2e-3)
        checked += 1


def test_subhalo_draws_follow_the_stated_distributions():
    rng = np.random.default_rng(0)
    masses = sim.sample_subhalo_masses(rng, 4000)
    lo, hi, a = 1e6, 1e10, -0.9 + 1

    def cdf(m):
        return (m**a - lo**a) / (hi**a - lo**a)

    assert masses.min() >= lo and masses.max() <= hi
    assert stats.kstest(masses, cdf).pvalue > 1e-3
    scene = sim.draw_scene("model_i", 1, rng)
    radius = np.hypot(scene.subhalo_x_arcsec, scene.subhalo_y_arcsec)
    assert len(radius) == 25 and radius.min() >= 0.25 and radius.max() <= 2.0
    log_m = np.log10([sim.draw_scene("model_ii", 2, rng).axion_mass_ev for _ in range(200)])
    assert log_m.min() >= -24 and log_m.max() <= -22 and np.ptp(log_m) > 1.5


@settings(max_examples=40, deadline=None)
@given(
    slope=st.floats(-2.5, 0.5),
    log_lo=st.floats(3, 9),
    decades=st.floats(0.1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_subhalo_masses_stay_in_range_and_follow_the_slope(slope, log_lo, decades, seed):
    lo, hi = 10**log_lo, 10 ** (log_lo + decades)
    masses = sim.sample_subhalo_masses(np.random.default_rng(seed), 400, lo, hi, slope)
    assert np.all((masses >= lo) & (masses <= hi))
    # median of dN/dm ~ m^slope from the analytic CDF, compared on a log scale
    a = slope + 1
    median = lo * (hi / lo) ** 0.5 if abs(a) < 1e-12 else ((lo**a + hi**a) / 2) ** (1 / a)
    assert abs(np.log10(np.median(masses)) - np.log10(median)) < 0.25 * decades + 1e-9


def test_image_size_changes_field_of_view_not_pixel_scale():
    small, large = sim.Renderer("model_iii", 16), sim.Renderer("model_iii", 32)
    scene = sim.draw_scene("model_iii", 1, np.random.default_rng(1))
    np.testing.assert_allclose(
        large.noiseless(scene, convolved=False)[8:24, 8:24],
        small.noiseless(scene, convolved=False),
        rtol=1e-12,
        atol=0,
    )


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("model", ["model_ii", "model_iii"])
def test_ccd_noise_sigma_matches_lenstronomy_and_samples(model):
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    inst = sim.INSTRUMENTS[model]
    band = SingleBand(
        pixel_scale=inst.pixel_scale_arcsec,
        exposure_time=inst.exposure_time_s,
        magnitude_zero_point=inst.zero_point_mag,
        read_noise=inst.read_noise_e,
        ccd_gain=inst.ccd_gain_e_per_adu,
        sky_brightness=inst.sky_brightness_mag_arcsec2,
        seeing=inst.psf_fwhm_arcsec,
        num_exposures=inst.num_exposures,
        psf_type="GAUSSIAN",
        data_count_unit="e-",
    )
    flux = np.full((200, 200), 0.5)
    expected = math.sqrt(band.background_noise**2 + band.flux_noise(0.5) ** 2)
    np.testing.assert_allclose(sim.noise_sigma(model, flux), expected, rtol=1e-10)
    for level in (0.0, 0.5):
        flux = np.full((200, 200), level)
        noisy = sim.observe(model, flux, inst.total_exposure_s, np.random.default_rng(2))
        resid = (noisy - flux) / sim.noise_sigma(model, flux)
        assert abs(resid.mean()) < 4 / 200  # 4 standard errors
        assert resid.std() == pytest.approx(1.0, abs=0.02)
        assert stats.normaltest(resid.ravel()).pvalue > 1e-4
    assert np.array_equal(sim.observe(model, flux, inst.total_exposure_s, None), flux)


def test_model_i_poisson_counts_match_stated_model():
    t, sigma = 2000.0, sim.INSTRUMENTS["model_i"].background_rms_cps
    for f in (0.0, 0.05):
        flux = np.full((250, 250), f)
        counts = sim.observe("model_i", flux, t, np.random.default_rng(4))
        assert np.all(counts >= 0) and np.array_equal(counts, np.round(counts))
        # lam = t * max(f + g, 0), g ~ N(0, sigma): rectified-normal moments
        z = f / sigma
        m1 = f * stats.norm.cdf(z) + sigma * stats.norm.pdf(z)
        m2 = (f**2 + sigma**2) * stats.norm.cdf(z) + f * sigma * stats.norm.pdf(z)
        mean, var = t * m1, t * m1 + t**2 * (m2 - m1**2)
        n = counts.size
        assert abs(counts.mean() - mean) < 4 * math.sqrt(var / n)
        assert counts.var() == pytest.approx(var, rel=0.05)
    np.testing.assert_allclose(sim.observe("model_i", flux, t, None), t * flux)


def test_noise_is_really_added_in_datasets():
    clean_i = sim.simulate_arrays("model_i", 1, 5, image_size=32, noise=False)
    noisy_i = sim.simulate_arrays("model_i", 1, 5, image_size=32, noise=True)
    assert np.array_equal(noisy_i[0], np.round(noisy_i[0])) and noisy_i[0].min() >= 0
    assert not np.array_equal(noisy_i[0], clean_i[0])
    np.testing.assert_array_equal(noisy_i[2]["exposure_time_s"], clean_i[2]["exposure_time_s"])
    clean, _, _ = sim.simulate_arrays("model_ii", 1, 5, image_size=32, noise=False)
    noisy, _, _ = sim.simulate_arrays("model_ii", 1, 5, image_size=32, noise=True)
    resid = (noisy - clean) / sim.noise_sigma("model_ii", clean.astype(np.float64))
    assert abs(resid.mean()) < 0.1 and resid.std() == pytest.approx(1.0, abs=0.1)


# ----------------------------------------------------------------------------- datasets


def test_deterministic_and_worker_invariant():
    a = sim.simulate_arrays("model_ii", 2, seed=11, image_size=24, workers=1)
    b = sim.simulate_arrays("model_ii", 2, seed=11, image_size=24, workers=2)
    c = sim.simulate_arrays("model_ii", 3, seed=11, image_size=24, workers=1)
    d = sim.simulate_arrays("model_ii", 2, seed=12, image_size=24, workers=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        np.testing.assert_array_equal(a[2][key], b[2][key])
    np.testing.assert_array_equal(a[0], c[0][:6])  # per-image seeds: a prefix is stable
    assert not np.array_equal(a[0], d[0])
    images, labels, params = a
    assert images.shape == (6, 1, 24, 24) and images.dtype == np.float32
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert params["n_subhalos"].tolist() == [0, 25, 0, 0, 25, 0]
    assert np.isnan(params["axion_mass_ev"][labels != 2]).all()
    assert np.isfinite(params["vortex_angle_rad"][labels == 2]).all()
    assert np.isnan(params["subhalo_mass_msun"][labels != 1]).all()
    assert np.isfinite(params["subhalo_mass_msun"][labels == 1]).all()


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError):
        sim.simulate_arrays("model_x", 1)
    with pytest.raises(ConfigError):
        sim.simulate_arrays("model_ii", 0)
    with pytest.raises(ConfigError):
        SimulateConfig(model="model_ii", n_per_class=1, workers=0).validate()


def test_missing_lenstronomy_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from deeplense_ssl_cli.main import main

    monkeypatch.setitem(sys.modules, "lenstronomy", None)
    with pytest.raises(MissingDependencyError, match=r"deeplense-ssl\[sim\]") as info:
        sim.simulate_arrays("model_ii", 1)
    assert isinstance(info.value, DeepLenseError)
    out = tmp_path / "sim.h5"
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--n-per-class", "1", "--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "pip install 'deeplense-ssl[sim]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_writes_the_hdf5_layout(tmp_path):
    from deeplense_ssl_cli.main import cli

    out = tmp_path / "sim.h5"
    result = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--model",
            "model_iii",
            "--n-per-class",
            "2",
            "--out",
            str(out),
            "--image-size",
            "20",
            "--seed",
            "3",
            "--no-noise",
        ],
    )
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["images"].shape == (6, 1, 20, 20) and f["images"].dtype == np.float32
        assert f["labels"][:].tolist() == [0, 1, 2, 0, 1, 2]
        assert json.loads(f.attrs["class_names"]) == ["no_sub", "cdm", "axion"]
        assert f.attrs["format"] == "deeplense_ssl.v1"
        prov = json.loads(f.attrs["provenance"])
        assert prov["config"]["model"] == "model_iii" and prov["config"]["noise"] is False
        assert prov["instrument"]["pixel_scale_arcsec"] == 0.08
        assert prov["image_size_px"] == 20
        assert set(sim.PARAM_UNITS) == set(f["params"])
        assert f["params/subhalo_mass_msun"].shape == (6, 25)
        images = f["images"][:]
    direct, _, _ = sim.simulate_arrays("model_iii", 2, 3, image_size=20, noise=False)
    np.testing.assert_array_equal(images, direct)
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5"]


def test_cli_config_file_then_explicit_flags(tmp_path):
    from deeplense_ssl_cli.main import cli

    cfg = tmp_path / "sim.yaml"
    cfg.write_text("model: model_iii\nn_per_class: 1\nimage_size: 12\nseed: 9\n")
    out = tmp_path / "sim.h5"
    args = ["simulate", "--config", str(cfg), "--seed", "4", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["config"]["model"] == "model_iii"  # from the file, not the flag default
    assert prov["config"]["seed"] == 4  # explicit flag wins
    assert prov["image_size_px"] == 12


def test_interrupt_leaves_no_partial_output(monkeypatch, tmp_path):
    calls = {"n": 0}
    original = sim.Renderer.noiseless

    def flaky(self, scene, convolved=True):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, scene, convolved)

    monkeypatch.setattr(sim.Renderer, "noiseless", flaky)
    out = tmp_path / "sim.h5"
    cfg = SimulateConfig(out=str(out), model="model_ii", n_per_class=2, image_size=16)
    with pytest.raises(KeyboardInterrupt):
        sim.simulate_dataset(cfg)
    assert list(tmp_path.iterdir()) == []


def test_small_images_warn_that_the_ring_is_cropped():
    assert sim.min_full_ring_size_px("model_ii") <= 64  # native sizes hold the whole ring
    assert sim.min_full_ring_size_px("model_iii") <= 64
    assert sim.min_full_ring_size_px("model_i") <= 150
    with pytest.warns(UserWarning, match="crops the Einstein ring"):
        sim.simulate_arrays("model_ii", 1, image_size=16, noise=False)


def test_source_variant_keeps_the_scene_and_moves_only_the_source():
    simulate_arrays = sim.simulate_arrays
    a_img, a_lab, a = simulate_arrays("model_ii", 2, seed=5, image_size=32)
    b_img, b_lab, b = simulate_arrays("model_ii", 2, seed=5, image_size=32, source_variant=1)
    c_img, _, c = simulate_arrays("model_ii", 2, seed=5, image_size=32, source_variant=2)
    assert np.array_equal(a_lab, b_lab)
    for key in a:  # every physical parameter but the source centre is shared
        if key.startswith("source_"):
            assert not np.allclose(a[key], b[key]) and not np.allclose(b[key], c[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.allclose(a_img, b_img) and not np.allclose(b_img, c_img)
    again, _, _ = simulate_arrays("model_ii", 2, seed=5, image_size=32, source_variant=1, workers=2)
    np.testing.assert_array_equal(again, b_img)  # deterministic for any number of workers


def test_pixel_coordinates_follow_the_scene_frame():
    x, y = sim.pixel_coordinates_arcsec(4, 0.5)
    assert x[0, 0] == -0.75 and x[0, -1] == 0.75 and y[-1, 0] == 0.75  # x: columns, y: rows
    mask = sim.substructure_mask(
        {"subhalo_x_arcsec": [0.5, np.nan], "subhalo_y_arcsec": [0.0, np.nan]}, 9, 0.25, 0.1
    )
    assert mask.sum() == 1 and mask[4, 6]  # row 4 is y = 0, column 6 is x = +0.5
    assert sim.substructure_mask({"vortex_angle_rad": np.nan}, 9, 0.25, 0.1) is None


@pytest.mark.parametrize("label", [1, 2])
def test_substructure_mask_covers_where_the_substructure_changes_the_image(label):
    """Independent check with lenstronomy: the pixels where the subhalos / vortex change the
    noiseless image lie inside the mask far more than its area alone would give."""
    renderer = sim.Renderer("model_ii", 64)
    scene = sim.draw_scene("model_ii", label, np.random.default_rng(3))
    if label == 2:  # a long vortex (light axion) that crosses the ring, where light is
        scene.axion_mass_ev = 1e-24
        scene.vortex_half_length_arcsec = float(sim.vortex_half_length_arcsec(1e-24))
    smooth = sim.Scene(label=0, theta_e_arcsec=scene.theta_e_arcsec,
                       source_x_arcsec=scene.source_x_arcsec, source_y_arcsec=scene.source_y_arcsec,
                       exposure_time_s=scene.exposure_time_s)  # fmt: skip
    residual = np.abs(renderer.noiseless(scene) - renderer.noiseless(smooth))
    params = sim._params_from_scenes([scene])
    row = {k: v[0] for k, v in params.items()}
    inst = sim.INSTRUMENTS["model_ii"]
    mask = sim.substructure_mask(row, 64, inst.pixel_scale_arcsec, 3 * inst.psf_fwhm_arcsec)
    assert mask is not None and 0 < mask.mean() < 0.6
    inside = residual[mask].sum() / residual.sum()
    assert inside > 1.3 * mask.mean(), (inside, mask.mean())
