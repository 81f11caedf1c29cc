import numpy as np
import pytest

from starqso.io import read_catalog, read_cutout, read_spectrum, resolve_path
from starqso.preprocessing import resample_spectrum
from starqso.simulate import real_qso_fraction, simulate_object, simulate_survey
from starqso.simulate.photometry import Photometer, sdss_filters
from starqso.simulate.profiles import PSF, render_exponential, render_point
from starqso.simulate.spectra import common_grid


def test_photometer_agrees_with_speclite():
    import astropy.units as u

    grid = common_grid()
    flux = 3.0 * (grid / 5000.0) ** -1.5 * (1 + 0.3 * np.sin(grid / 300.0))
    ours = Photometer(grid).magnitudes(flux)
    # speclite needs coverage of the whole u and z curves (2939-11141 A): pad both ends flat.
    padded_wave = np.concatenate([[2900.0, 2950.0], grid, [11100.0, 11200.0]])
    padded_flux = np.concatenate([[flux[0], flux[0]], flux, [flux[-1], flux[-1]]])
    theirs = sdss_filters().get_ab_magnitudes(
        padded_flux * 1e-17 * u.erg / u.s / u.cm ** 2 / u.Angstrom, padded_wave * u.Angstrom)
    expected = np.array([theirs[name][0] for name in theirs.colnames])
    np.testing.assert_allclose(ours, expected, atol=0.01)


@pytest.mark.parametrize("kind", ["moffat", "double_gaussian"])
def test_psf_and_galaxy_profiles_hold_their_flux(kind):
    psf = PSF(kind=kind, fwhm=3.5, beta=3.0, ellipticity=0.1, angle=0.4)
    point = render_point(psf, 48, 23.3, 24.1)
    assert point.sum() == pytest.approx(1.0, abs=0.01)
    assert np.unravel_index(point.argmax(), point.shape) == (24, 23)
    galaxy = render_exponential(psf, 48, 23.5, 23.5, 3.0, 0.6, 0.2)
    assert galaxy.sum() == pytest.approx(1.0, abs=0.03)


def test_simulated_objects_are_deterministic_and_match_their_rows():
    first = simulate_object(7, seed=11)
    again = simulate_object(7, seed=11)
    np.testing.assert_array_equal(first.cutout, again.cutout)
    np.testing.assert_array_equal(first.spectrum["flux"], again.spectrum["flux"])
    other = simulate_object(7, seed=12)
    assert not np.array_equal(first.cutout, other.cutout)

    objects = [simulate_object(index, seed=5) for index in range(40)]
    labels = [obj.label for obj in objects]
    assert set(labels) == {"STAR", "QSO"}
    for obj in objects:
        assert obj.cutout.shape == (5, 48, 48) and obj.cutout.dtype == np.float32
        assert np.all(np.isfinite(obj.mags)) and np.all(np.isfinite(obj.cutout))
        if obj.label == "QSO":
            assert 0.1 <= obj.redshift <= 5.0
        else:
            assert abs(obj.redshift) < 0.005
        # The cutout holds the object's flux (nanomaggies): a 3" aperture sees most of r.
        yy, xx = np.mgrid[0:48, 0:48] - 23.5
        aperture = obj.cutout[2][np.hypot(xx, yy) < 7.6].sum()
        # (Not with a bright neighbour's halo: its sky residual can outshine a faint star.)
        if obj.mags[2] < 19 and obj.info["host_fraction"] == 0 and not obj.info["sky_halo"]:
            expected = 10 ** (-0.4 * (obj.mags[2] - 22.5))
            assert aperture == pytest.approx(expected, rel=0.2)


def test_qso_fraction_is_respected():
    assert 0.25 < real_qso_fraction() < 0.35
    labels = [simulate_object(index, seed=1, qso_fraction=1.0).label for index in range(5)]
    assert labels == ["QSO"] * 5


def test_simulate_survey_writes_paired_files_in_the_documented_formats(tmp_path):
    summary = simulate_survey(tmp_path / "sim", 12, seed=4, size=32, workers=1)
    table = read_catalog(summary.catalog)
    assert len(table) == summary.num_objects == 12
    assert summary.num_qso == list(table["label"]).count("QSO") == 12 - summary.num_star
    for name in ("id", "image", "spectrum", "label", "redshift", "u", "g", "r", "i", "z"):
        assert name in table.colnames
    for row in table:
        cutout = read_cutout(resolve_path(table, row["image"]))
        assert cutout.data.shape == (5, 32, 32)
        assert cutout.header["BUNIT"] == "nanomaggy" and cutout.header["BANDS"] == "ugriz"
        spectrum = read_spectrum(resolve_path(table, row["spectrum"]))
        assert spectrum.meta["object_class"] == row["label"]
        gridded = resample_spectrum(spectrum.wavelength, spectrum.flux, spectrum.ivar,
                                    spectrum.mask)
        assert gridded.mask.mean() < 0.2  # SDSS legacy spectra miss 3700-3800 A


def test_same_seed_same_bytes_whatever_the_number_of_workers(tmp_path):
    one = simulate_survey(tmp_path / "a", 6, seed=9, size=24, workers=1).catalog.parent
    two = simulate_survey(tmp_path / "b", 6, seed=9, size=24, workers=2).catalog.parent
    names = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_existing_simulation_is_not_overwritten_by_accident(tmp_path):
    from starqso.errors import InputError

    simulate_survey(tmp_path, 1, seed=0, size=16, workers=1)
    with pytest.raises(InputError, match="already exists"):
        simulate_survey(tmp_path, 1, seed=0, size=16, workers=1)
    simulate_survey(tmp_path, 1, seed=0, size=16, workers=1, overwrite=True)


# --- Variations of the sky simulator (issue 14) ---------------------------------------------

def test_nominal_sky_noise_is_the_real_sdss_one():
    from starqso.simulate.resources import noise_calibration

    # Median per-pixel sky sigma of real SDSS QSO cutouts (nanomaggies), ugriz.
    real = np.array([0.0445, 0.0173, 0.029, 0.0465, 0.170])
    np.testing.assert_allclose(noise_calibration()["image_sky_sigma"], real, rtol=0.05)


def test_noise_scale_varies_over_the_documented_range():
    from starqso.simulate.detector import NOISE_SCALE_RANGE, draw_noise_scale

    rng = np.random.default_rng(0)
    scales = np.array([draw_noise_scale(rng) for _ in range(3000)])
    assert scales.shape == (3000, 5)
    assert scales.min() >= NOISE_SCALE_RANGE[0] and scales.max() <= NOISE_SCALE_RANGE[1]
    assert scales.min() < 0.65 and scales.max() > 2.3
    # Most fields are near nominal, as real ones are (5-95%: about 0.75-1.4).
    assert 0.7 < np.percentile(scales, 5) and np.percentile(scales, 95) < 1.7
    # Bands vary within a field, not only together.
    assert np.std(np.log(scales / scales.mean(axis=1, keepdims=True))) > 0.05


def test_seeing_and_psf_shape_vary_within_bounds():
    from starqso.simulate.profiles import SEEING_RANGE_ARCSEC, draw_psfs

    rng = np.random.default_rng(1)
    psfs = [draw_psfs(rng) for _ in range(2000)]
    fwhm_r = np.array([bands[2].fwhm for bands in psfs]) * 0.396
    assert fwhm_r.min() >= SEEING_RANGE_ARCSEC[0] - 0.2 and fwhm_r.max() <= 3.7
    assert fwhm_r.min() < 0.85 and fwhm_r.max() > 2.6
    wings = [bands[0].wing_fraction for bands in psfs if bands[0].kind == "double_gaussian"]
    assert min(wings) < 0.05 and max(wings) > 0.25
    betas = [bands[0].beta for bands in psfs if bands[0].kind == "moffat"]
    assert min(betas) < 2.0 and max(betas) > 5.5


def test_positions_zero_points_and_artefacts_are_bounded():
    from starqso.simulate.images import render_cutout

    infos = [render_cutout(np.random.default_rng([3, k]), 16, np.full(5, 5.0))[1]
             for k in range(400)]
    offsets = np.array([info["centre_offset_px"] for info in infos])
    assert np.abs(offsets).max() <= 1.0 and np.abs(offsets).max() > 0.6
    zero_points = np.array([info["zero_point_offset"] for info in infos])
    assert np.abs(zero_points).max() <= 0.05 and zero_points.std() > 0.005
    artefacts = [info["artefact"] for info in infos]
    assert set(artefacts) <= {"none", "cosmic_ray", "bad_column"}
    assert 0.01 < 1 - artefacts.count("none") / len(artefacts) < 0.12
    correlated = np.mean([info["correlated_noise"] for info in infos])
    assert 0.2 < correlated < 0.4


def test_an_r12_star_saturates_with_a_flat_core_bleeding_along_columns():
    from starqso.simulate.images import SATURATION_NANOMAGGIES_PER_PIXEL, render_cutout

    r12 = 10 ** (-0.4 * (np.array([13.5, 12.5, 12.0, 11.9, 11.9]) - 22.5))
    cube, info = render_cutout(np.random.default_rng(2), 32, r12)
    assert info["saturated"]
    band = cube[2].astype(np.float64)
    level = SATURATION_NANOMAGGIES_PER_PIXEL[2]
    core = band > 0.9 * level
    assert core.sum() >= 9
    # Flat top: the core pixels agree to the sky-residual level, far below Poisson noise.
    assert band[core].std() < 0.02 * level and band.max() < 1.05 * level
    rows, columns = np.nonzero(core)
    assert np.ptp(rows) > np.ptp(columns)  # the bleed trail runs along the column
    # Charge is conserved along the columns while the trail stays inside the cutout.
    expected = r12[2] * 10 ** (-0.4 * info["zero_point_offset"][2])
    assert band.sum() == pytest.approx(expected, rel=0.1)
    faint, faint_info = render_cutout(np.random.default_rng(2), 32, r12 / 100.0)
    assert not faint_info["saturated"]


def test_correlated_noise_lowers_pixel_sigma_but_keeps_aperture_flux_error():
    from starqso.simulate.images import resample_bilinear

    rng = np.random.default_rng(4)
    white = rng.normal(size=(512, 512))
    resampled = resample_bilinear(white, 0.4, -0.35)
    assert resampled.std() < 0.75 * white.std()
    assert np.corrcoef(resampled[:, :-1].ravel(), resampled[:, 1:].ravel())[0, 1] > 0.2

    def aperture_error(image, side=16):
        blocks = image[:512 // side * side, :512 // side * side].reshape(
            512 // side, side, 512 // side, side).sum(axis=(1, 3))
        return blocks.std()

    assert aperture_error(resampled) == pytest.approx(aperture_error(white), rel=0.1)
    # A point source keeps its flux through the resampling.
    psf = PSF(kind="moffat", fwhm=3.5)
    point = render_point(psf, 32, 15.7, 16.2)
    assert resample_bilinear(point, 0.3, 0.2).sum() == pytest.approx(point.sum(), rel=1e-3)


def test_high_z_qsos_appear_at_the_configured_rate():
    from starqso.simulate.survey import HIGH_Z_RANGE

    objects = [simulate_object(index, seed=8, size=16, qso_fraction=1.0, high_z_fraction=0.5)
               for index in range(40)]
    high_z = [obj for obj in objects if obj.info["population"] == "high_z"]
    assert 10 <= len(high_z) <= 30
    for obj in high_z:
        assert HIGH_Z_RANGE[0] <= obj.redshift <= HIGH_Z_RANGE[1]
        assert np.all(np.isfinite(obj.mags)) and 14 < obj.mags[2] < 24
    none = [simulate_object(index, seed=8, size=16, qso_fraction=1.0, high_z_fraction=0.0)
            for index in range(10)]
    assert all(obj.info["population"] == "catalogue" for obj in none)
    # High-z QSOs are red in u-g (Lyman-limit and forest absorption).
    colours = np.array([obj.mags[0] - obj.mags[1] for obj in high_z if obj.redshift > 3.2])
    assert np.median(colours) > 1.5


def test_default_high_z_fraction_and_determinism():
    from starqso.simulate.survey import HIGH_Z_QSO_FRACTION

    first = simulate_object(3, seed=21, size=24)
    same = simulate_object(3, seed=21, size=24, high_z_fraction=HIGH_Z_QSO_FRACTION)
    np.testing.assert_array_equal(first.cutout, same.cutout)
    assert first.info == same.info
