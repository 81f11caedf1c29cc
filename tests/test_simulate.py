import numpy as np
import pytest

from starqso.io import read_catalog, read_cutout, read_spectrum, resolve_path
from starqso.preprocessing import resample_spectrum
from starqso.simulate import real_qso_fraction, simulate_object, simulate_survey
from starqso.simulate.images import PSF, render_exponential, render_point
from starqso.simulate.photometry import Photometer, sdss_filters
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
        if obj.mags[2] < 19 and obj.info["host_fraction"] == 0:
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
