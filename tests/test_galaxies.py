"""Sérsic rendering and the galaxy simulator (extended sources observed like point sources)."""

import numpy as np
import pytest
from scipy import special

from starqso.errors import InputError
from starqso.schema import PIXEL_SCALE_ARCSEC
from starqso.simulate import resources
from starqso.simulate.galaxies import (
    draw_galaxy_shape,
    galaxy_rows,
    simulate_galaxies,
    simulate_galaxy,
    split_galaxy_rows,
)
from starqso.simulate.images import render_cutout
from starqso.simulate.profiles import (
    PSF,
    _sersic_pixels,
    render_exponential,
    render_sersic,
    sersic_b,
)

PSFS = [PSF(kind="moffat", fwhm=3.0, beta=3.0, ellipticity=0.05, angle=0.3),
        PSF(kind="double_gaussian", fwhm=2.5, wing_fraction=0.1, wing_scale=2.5)]


@pytest.mark.parametrize("psf", PSFS, ids=["moffat", "double_gaussian"])
def test_sersic_n1_is_the_exponential_bit_for_bit(psf):
    for args in [(40, 19.3, 20.1, 2.5, 0.6, 0.3), (48, -2.0, 50.0, 1.0, 1.0, 0.0)]:
        size, x, y, radius, axis_ratio, angle = args
        expected = render_exponential(psf, size, x, y, radius, axis_ratio, angle)
        got = render_sersic(psf, size, x, y, radius, 1.0, axis_ratio, angle)
        assert got.tobytes() == expected.tobytes()


def _box_fraction_bounds(n, radius, size, x, y):
    # Analytic flux of a circular Sérsic profile inside the circles inscribed in and
    # circumscribing the cutout, seen from the centre: the box holds between the two.
    b = sersic_b(n)
    inner = min(x + 0.5, y + 0.5, size - 0.5 - x, size - 0.5 - y)
    outer = np.hypot(max(x + 0.5, size - 0.5 - x), max(y + 0.5, size - 0.5 - y))
    return (special.gammainc(2 * n, b * (inner / radius) ** (1 / n)),
            special.gammainc(2 * n, b * (outer / radius) ** (1 / n)))


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_sersic_keeps_its_flux_and_loses_what_falls_outside(n):
    psf = PSFS[0]
    image = render_sersic(psf, 64, 31.3, 32.2, 3.0, n, 0.7, 0.4)
    assert image.sum() == pytest.approx(1.0, abs=0.02 if n == 1 else 0.04)
    # n = 4 has 3% of its flux beyond 10 Re: what is outside the cutout stays outside.
    low, high = _box_fraction_bounds(n, 3.0, 64, 31.3, 32.2)
    assert low - 0.01 < image.sum() < high + 0.01
    big = render_sersic(psf, 192, 95.3, 96.2, 3.0, n, 0.7, 0.4)
    assert big.sum() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("radius", [2.0, 3.0, 5.0])
@pytest.mark.parametrize("centre", [32.0, 32.5, 32.27])
def test_de_vaucouleurs_holds_half_its_flux_within_re(radius, centre):
    image = _sersic_pixels(64, centre, centre, radius, 4.0, 1.0, 0.0)
    # Aperture weights from a 16x16 supersampled mask: close to the exact overlap.
    offsets = (np.arange(16) + 0.5) / 16 - 0.5
    axis = (np.arange(64)[:, None] + offsets).ravel()
    grid_x, grid_y = np.meshgrid(axis, axis)
    inside = (np.hypot(grid_x - centre, grid_y - centre) <= radius).reshape(
        64, 16, 64, 16).mean(axis=(1, 3))
    assert (image * inside).sum() == pytest.approx(0.5, rel=0.05)
    low, high = _box_fraction_bounds(4.0, radius, 64, centre, centre)
    assert low - 0.005 < image.sum() < high + 0.005


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_larger_radius_is_less_concentrated(n):
    yy, xx = np.mgrid[0:48, 0:48] - 23.5
    distance = np.hypot(xx, yy)

    def concentration(radius):
        image = render_sersic(PSFS[0], 48, 23.5, 23.5, radius, n, 0.8, 0.2)
        return image[distance < 2].sum() / image[distance < 8].sum()

    assert concentration(1.5) > concentration(3.0) > concentration(6.0)


def test_render_cutout_default_host_is_the_exponential_one():
    stars = resources.sdss_pointsources()["mags"][:200]
    for seed in range(3):
        default = render_cutout(np.random.default_rng(seed), 32, np.full(5, 20.0),
                                np.full(5, 40.0), 1.2, star_mags=stars)
        explicit = render_cutout(np.random.default_rng(seed), 32, np.full(5, 20.0),
                                 np.full(5, 40.0), 1.2, star_mags=stars,
                                 host_sersic_index=1.0)
        assert default[0].tobytes() == explicit[0].tobytes()
        assert default[1] == explicit[1]
        # Overriding the shape or the index changes the host only, not the other draws.
        spheroid = render_cutout(np.random.default_rng(seed), 32, np.full(5, 20.0),
                                 np.full(5, 40.0), 1.2, star_mags=stars,
                                 host_sersic_index=4.0, host_axis_ratio=0.9, host_angle=1.0)
        assert spheroid[1] == default[1]
        assert not np.array_equal(spheroid[0], default[0])


def test_galaxy_rows_resource():
    rows = galaxy_rows()
    assert len(rows["redshift"]) > 8000
    assert rows["mags"].shape == (len(rows["redshift"]), 5)
    assert np.isfinite(rows["mags"]).all() and (rows["mags"] > 5).all()
    assert (rows["redshift"] > 0).all()
    assert len(np.unique(rows["row"])) == len(rows["row"])


def test_shape_draws_are_physical():
    rows = galaxy_rows()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(rows["redshift"]), 400, replace=False)
    shapes = [draw_galaxy_shape(rng, rows["mags"][k], rows["redshift"][k]) for k in picks]
    radius = np.array([shape["half_light_radius_arcsec"] for shape in shapes])
    assert ((radius >= 0.2) & (radius <= 15.0)).all()
    index = np.array([shape["sersic_index"] for shape in shapes])
    assert set(index) == {1.0, 4.0}
    bright = rows["mags"][picks, 2] < 17.8
    # SDSS main-sample galaxies: median r-band half-light radius about 2".
    assert 1.2 < np.median(radius[bright]) < 3.5
    assert np.median(radius[~bright]) < np.median(radius[bright])


def test_simulated_galaxies_look_right():
    cutouts, table = simulate_galaxies(40, seed=5, size=48)
    assert cutouts.shape == (40, 5, 48, 48) and cutouts.dtype == np.float32
    assert np.isfinite(cutouts).all()
    assert table["mags"].shape == (40, 5)
    for key in ["id", "redshift", "sersic_index", "half_light_radius_arcsec", "psf_fwhm_r"]:
        assert len(table[key]) == 40
    assert table["id"][3] == "gal-000003"
    assert np.isfinite(table["psf_fwhm_r"]).all()
    # The r-band flux in a 3" aperture: at most the total, and close to it for compact ones.
    yy, xx = np.mgrid[0:48, 0:48] - 23.5
    aperture = np.hypot(xx, yy) <= 3.0 / PIXEL_SCALE_ARCSEC
    flux = cutouts[:, 2][:, aperture].sum(axis=1)
    mag = 22.5 - 2.5 * np.log10(np.clip(flux, 1e-3, None))
    bright = table["mags"][:, 2] < 19.5
    delta = (mag - table["mags"][:, 2])[bright]
    assert (delta > -0.3).all()
    compact = bright & (table["half_light_radius_arcsec"] < 1.0)
    assert compact.sum() >= 3
    assert np.abs(mag - table["mags"][:, 2])[compact].max() < 0.5
    again = simulate_galaxy(3, seed=5, size=48)
    assert again.cutout.tobytes() == cutouts[3].tobytes()
    assert again.label == "GALAXY" and again.spectrum is None
    assert again.info["galaxy_row"] == table["galaxy_row"][3]


def test_rows_restriction_and_split():
    first, second = split_galaxy_rows(0.5, seed=1)
    count = len(galaxy_rows()["redshift"])
    assert len(np.intersect1d(first, second)) == 0
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(count))
    assert abs(len(first) - len(second)) <= 1
    _, table = simulate_galaxies(12, seed=2, size=24, rows=second[:5])
    assert set(table["galaxy_row"]) <= set(second[:5])
    with pytest.raises(InputError):
        simulate_galaxy(0, seed=0, rows=[count])
    with pytest.raises(InputError):
        split_galaxy_rows(1.0)


def test_galaxy_spectra_match_real_rows_and_carry_the_templates_lines():
    # Each real galaxy row gets the kcorrect mix that fits its colours: at low redshift the
    # fit alone is within a few hundredths of a magnitude in g-r (the smooth correction does
    # little), the final spectrum reaches the row's magnitudes, there is no point source,
    # and a star-forming mix shows H-alpha in emission at the row's redshift.
    from starqso.simulate.spectra import (
        common_grid,
        galaxy_mix,
        galaxy_spectrum,
        photometer,
    )

    templates = resources.galaxy_templates()
    assert templates["flux"].shape[0] == 5 and np.all(templates["flux"] >= 0)
    rows = galaxy_rows()
    nearby = np.flatnonzero((rows["redshift"] > 0.02) & (rows["redshift"] < 0.15))[:40]
    fit_errors = []
    for row in nearby:
        mags = rows["mags"][row].astype(np.float64)
        mix, shapes = galaxy_mix(mags, float(rows["redshift"][row]))
        fitted = photometer().magnitudes(mix @ shapes)
        fit_errors.append(abs((fitted[1] - fitted[2]) - (mags[1] - mags[2])))
        model = galaxy_spectrum(mags, float(rows["redshift"][row]), np.random.default_rng(row))
        assert np.abs(photometer().magnitudes(model.flux) - mags).max() < 0.05
        assert not model.point_flux.any() and model.host_fraction == 1.0
        assert model.template.startswith("kcorrect:") and np.all(model.flux >= 0)
    assert np.median(fit_errors) < 0.03
    # Two draws of one row differ in their mix, not in their magnitudes.
    mags, redshift = rows["mags"][nearby[0]].astype(np.float64), float(rows["redshift"][nearby[0]])
    first = galaxy_spectrum(mags, redshift, np.random.default_rng(1))
    second = galaxy_spectrum(mags, redshift, np.random.default_rng(2))
    assert first.template != second.template
    # A blue (star-forming) row: H-alpha in emission above the continuum beside it.
    blue = nearby[np.argmin(rows["mags"][nearby, 1] - rows["mags"][nearby, 2])]
    redshift = float(rows["redshift"][blue])
    model = galaxy_spectrum(rows["mags"][blue].astype(np.float64), redshift,
                            np.random.default_rng(0))
    wave = common_grid() / (1.0 + redshift)
    line = model.flux[np.abs(wave - 6564.6) < 4].max()
    continuum = np.median(model.flux[(np.abs(wave - 6564.6) > 30) & (np.abs(wave - 6564.6) < 80)])
    assert line > 1.3 * continuum


def test_a_simulated_galaxy_can_carry_its_fibre_spectrum_without_changing_its_cutout():
    from starqso.simulate.galaxies import fibre_fraction

    # A large disc loses most of its light outside a 3" fibre; a compact one almost none.
    assert fibre_fraction(6.0, 1.0, 1.5) < 0.2 < 0.85 < fibre_fraction(0.3, 4.0, 1.5)
    assert fibre_fraction(0.3, 1.0, 1.5) > 0.99  # a compact disc: almost all of it
    assert fibre_fraction(3.0, 4.0, 1.0) < fibre_fraction(3.0, 4.0, 1.5)
    for index in range(6):
        imaged = simulate_galaxy(index, seed=4, size=32)
        both = simulate_galaxy(index, seed=4, size=32, with_spectrum=True)
        assert imaged.spectrum is None
        np.testing.assert_array_equal(imaged.cutout, both.cutout)
        spectrum = both.spectrum
        assert spectrum["spectrograph"] in ("SDSS", "BOSS")
        assert spectrum["flux"].shape == spectrum["ivar"].shape == spectrum["wavelength"].shape
        assert 0.0 < both.info["fibre_fraction"] <= 1.0
        assert both.info["template"].startswith("kcorrect:")
    again = simulate_galaxy(2, seed=4, size=32, with_spectrum=True)
    assert np.array_equal(again.spectrum["flux"],
                          simulate_galaxy(2, seed=4, size=32, with_spectrum=True).spectrum["flux"])


def test_simulate_object_draws_galaxies_from_a_side_stream_seen_like_point_sources():
    # galaxy_fraction turns some objects into GALAXY ones (a real galaxy row, a Sérsic shape,
    # a fibre spectrum); every other object is bit for bit a plain simulation's, and a
    # galaxy seen through dust is dimmer, most in u.
    from starqso.simulate import simulate_object
    from starqso.simulate.dust import Reddening

    plain = [simulate_object(index, 6, 32) for index in range(30)]
    mixed = [simulate_object(index, 6, 32, galaxy_fraction=0.5) for index in range(30)]
    galaxies = [obj for obj in mixed if obj.label == "GALAXY"]
    assert 5 <= len(galaxies) <= 25
    for before, after in zip(plain, mixed, strict=True):
        if after.label != "GALAXY":
            np.testing.assert_array_equal(before.cutout, after.cutout)
            assert before.label == after.label and before.id == after.id
    for galaxy in galaxies:
        assert galaxy.info["population"] == "galaxy" and galaxy.redshift > 0
        assert galaxy.spectrum["flux"].shape == galaxy.spectrum["ivar"].shape
        assert galaxy.cutout.shape == (5, 32, 32) and np.isfinite(galaxy.cutout).all()
    dusty = [simulate_object(index, 6, 32, galaxy_fraction=0.5,
                             reddening=Reddening(1.0, 1.0)) for index in range(30)]
    reddened = 0
    for clear, seen in zip(mixed, dusty, strict=True):
        if clear.label == "GALAXY" and seen.info["galactic_ebv"] > 0.05:
            dimmed = seen.mags - clear.mags
            assert seen.label == "GALAXY" and np.all(dimmed > 0) and dimmed[0] > dimmed[4]
            reddened += 1
    assert reddened >= 3
