"""starqso's hand-written photometry and resampler checked against the field's libraries.

starqso keeps its own vectorised code (see the module docstrings of
:mod:`starqso.preprocessing.photometry` and :mod:`starqso.preprocessing.spectra` for the
measurements); these tests pin it to photutils and specutils on the same data. Both libraries
are test-only dependencies: a machine without them skips this file.
"""

import warnings

import numpy as np
import pytest

from starqso.preprocessing.photometry import (
    PIXEL_SCALE,
    SKY_ARCS,
    SKY_TRIM,
    aperture_fluxes,
    aperture_masks,
    asinh_magnitudes,
    photometric_features,
    sky_levels,
)
from starqso.preprocessing.spectra import encoder_wavelength, pixel_edges, resample_spectrum

SIZE = 32


@pytest.fixture(scope="module")
def cutouts():
    """Sky-subtracted cutouts (like SDSS frames): simulated objects plus Gaussian point
    sources from faint to bright, then the same cutouts again on a sky pedestal."""
    pytest.importorskip("photutils")
    from starqso.simulate import simulate_object

    # simulate_object gives (5, S, S) cutouts in nanomaggies; the photometry wants channels last.
    simulated = np.stack([np.moveaxis(simulate_object(index, 11, size=SIZE).cutout, 0, -1)
                          for index in range(12)])
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2
    profile = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.6 ** 2)) / (2 * np.pi * 1.6 ** 2)
    fluxes = rng.lognormal(1.5, 1.5, (6, 5))  # about 0.05 to 1000 nanomaggies
    synthetic = rng.normal(0.0, 0.05, (6, SIZE, SIZE, 5))
    synthetic += fluxes[:, None, None, :] * profile[None, :, :, None]
    sky_free = np.concatenate([simulated, synthetic.astype(np.float32)])
    pedestal = np.array([0.1, 0.05, 0.2, 0.3, 0.8], np.float32)  # nanomaggies per pixel
    return np.concatenate([sky_free, sky_free + pedestal])


def _sky_border():
    from photutils.aperture import CircularAnnulus

    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    return CircularAnnulus(centre, r_in=SIZE / 2 - 3, r_out=SIZE)


def _sky_arc_masks():
    """The sky border (photutils' annulus from S/2 - 3 pixels out to beyond the corners,
    ``"center"`` membership: exactly starqso's border) as SKY_ARCS boolean (S, S) masks: its
    pixels in order of angle around the centre (from -pi, ties by row-major position), split
    into SKY_ARCS runs of equal count, the first ``count // SKY_ARCS`` pixels of each of
    ``numpy.array_split``'s pieces (starqso drops the few left over)."""
    border = _sky_border().to_mask(method="center").to_image((SIZE, SIZE)).astype(bool)
    rows, cols = np.nonzero(border)  # row-major order
    angle = np.arctan2(rows - (SIZE - 1) / 2, cols - (SIZE - 1) / 2)
    order = np.lexsort((np.arange(rows.size), angle))
    length = rows.size // SKY_ARCS
    masks = np.zeros((SKY_ARCS, SIZE, SIZE), bool)
    for arc, piece in enumerate(np.array_split(order, SKY_ARCS)):
        masks[arc, rows[piece[:length]], cols[piece[:length]]] = True
    return masks


def _photutils_sky(image, arc_masks):
    """The sky estimate with photutils: the mean of the middle SKY_ARCS - 2 SKY_TRIM of the
    arcs' means, each arc's mean from ApertureStats over the annulus with the rest masked."""
    from photutils.aperture import ApertureStats

    border = _sky_border()
    means = np.sort([ApertureStats(image, border, mask=~arc).mean for arc in arc_masks])
    return means[SKY_TRIM:SKY_ARCS - SKY_TRIM].mean()


def _photutils_photometry(cutouts):
    """Sky-subtracted 3" and 1.5" aperture fluxes measured with photutils, (N, 5) each, and
    the sky per pixel (N, 5).

    Apertures are centred where starqso centres them, (S - 1) / 2 in both pixel coordinates
    (photutils puts pixel centres on integers, like starqso's masks); ``"center"`` membership
    is starqso's. The sky is :func:`_photutils_sky`.
    """
    from photutils.aperture import ApertureStats, CircularAperture

    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    apertures = [CircularAperture(centre, r=radius / PIXEL_SCALE) for radius in (3.0, 1.5)]
    arc_masks = _sky_arc_masks()
    fluxes = np.empty((2, len(cutouts), 5))
    skies = np.empty((len(cutouts), 5))
    for n, cutout in enumerate(cutouts):
        for band in range(5):
            image = cutout[:, :, band].astype(np.float64)
            skies[n, band] = sky = _photutils_sky(image, arc_masks)
            for k, aperture in enumerate(apertures):
                fluxes[k, n, band] = ApertureStats(image, aperture, sum_method="center",
                                                   local_bkg=sky).sum
    return fluxes, skies


@pytest.fixture(scope="module")
def reference(cutouts):
    return _photutils_photometry(cutouts)


def _features(outer, inner):
    magnitudes = asinh_magnitudes(outer)
    return np.column_stack([magnitudes[:, :-1] - magnitudes[:, 1:], magnitudes[:, 2],
                            asinh_magnitudes(inner)[:, 2] - magnitudes[:, 2]])


def test_aperture_sums_are_photutils_center_method_sums(cutouts):
    pytest.importorskip("photutils")
    from photutils.aperture import CircularAperture, aperture_photometry

    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    for radius in (3.0, 1.5):
        inside, border = aperture_masks(SIZE, radius)
        aperture = CircularAperture(centre, r=radius / PIXEL_SCALE)
        assert aperture.to_mask(method="center").to_image((SIZE, SIZE)).astype(bool).tolist() \
            == inside.tolist()
        ours = cutouts[:, inside, :].sum(axis=1, dtype=np.float64)  # raw sums, no sky
        theirs = np.array([[aperture_photometry(cutout[:, :, band].astype(np.float64),
                                                aperture, method="center")["aperture_sum"][0]
                            for band in range(5)] for cutout in cutouts])
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_sky_estimate_matches_photutils_arc_means(cutouts, reference):
    _, skies = reference
    border = _sky_border().to_mask(method="center").to_image((SIZE, SIZE)).astype(bool)
    assert border.tolist() == aperture_masks(SIZE, 3.0)[1].tolist()
    arcs = _sky_arc_masks()
    assert arcs.sum() == border.sum() // SKY_ARCS * SKY_ARCS and not (arcs.sum(0) > 1).any()
    np.testing.assert_allclose(sky_levels(cutouts), skies, rtol=1e-12, atol=1e-12)


def test_sky_subtracted_fluxes_and_concentration_match_photutils(cutouts, reference):
    (outer, inner), _ = reference
    # starqso subtracts the sky from the pixels in float64: float64 rounding only.
    np.testing.assert_allclose(aperture_fluxes(cutouts, 3.0), outer, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(aperture_fluxes(cutouts, 1.5), inner, rtol=1e-9, atol=1e-9)
    # Colours, r and the 1.5"/3" concentration: float32 output of ~20 mag values.
    np.testing.assert_allclose(photometric_features(cutouts), _features(outer, inner),
                               atol=1e-5)


def test_in_graph_aperture_photometry_layer_matches_photutils(cutouts, reference):
    # The raw layer output (mean 0, std 1) held to the 1e-5 mag contract against photutils,
    # on a sky pedestal too: the layer subtracts an offset and the sky from every pixel before
    # its float32 sums (a sum(pixels) - area * sky cancelled to 2.6e-5 mag).
    from starqso.models import AperturePhotometry

    (outer, inner), _ = reference
    expected = _features(outer, inner)
    got = np.asarray(AperturePhotometry(SIZE)(cutouts.astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _sdss_like_spectrum():
    rng = np.random.default_rng(1)
    wave = 10 ** (3.5600 + 1e-4 * np.arange(4600))  # SDSS log-lambda step, 3631-10466 A
    flux = 5 + 3 * np.sin(wave / 300) + 20 * np.exp(-0.5 * ((wave - 6563) / 4) ** 2)
    flux += rng.normal(0, 0.5, wave.size)
    ivar = rng.uniform(2.0, 6.0, wave.size)
    return wave, flux, ivar


def _specutils_resample(wave, flux, ivar, target):
    import astropy.units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum
    from specutils.manipulation import FluxConservingResampler

    spectrum = Spectrum(flux=flux * u.Unit("1e-17 erg / (s cm2 Angstrom)"),
                        spectral_axis=wave * u.AA, uncertainty=InverseVariance(ivar))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ivar 1/0 on NaN-filled output pixels
        out = FluxConservingResampler()(spectrum, target * u.AA)
    return out.flux.value, out.uncertainty.array


def _arithmetic_edges(centres):
    """specutils' pixel edges: arithmetic midpoints of the centres (SpectralAxis.bin_edges)."""
    before = np.insert(centres, 0, 2 * centres[0] - centres[1])
    after = np.append(centres, 2 * centres[-1] - centres[-2])
    return (before + after) / 2


def test_resampler_matches_specutils_flux_conserving_resampler():
    pytest.importorskip("specutils")
    wave, flux, ivar = _sdss_like_spectrum()
    target = encoder_wavelength()
    ours = resample_spectrum(wave, flux, ivar)
    flux_s, ivar_s = _specutils_resample(wave, flux, ivar, target)
    assert not ours.mask.any() and np.isfinite(flux_s).all()
    # Same algorithm (overlap-weighted mean, variance sum(p^2 var) / sum(p)^2); the only
    # difference is where pixel edges lie: starqso takes geometric midpoints of the centres
    # (the edges of a log-lambda grid), specutils arithmetic ones, at most 2e-4 A (2e-4 of a
    # pixel) apart on this grid. Measured: flux 3e-5, ivar 2.4e-4 relative at most.
    np.testing.assert_allclose(ours.flux, flux_s, rtol=3e-4)
    np.testing.assert_allclose(ours.ivar, ivar_s, rtol=2e-3)
    # Both conserve flux exactly over whole output pixels, each on its own edges.
    for edges_in, edges_out, out in ((pixel_edges(wave), pixel_edges(target), ours.flux),
                                     (_arithmetic_edges(wave), _arithmetic_edges(target),
                                      flux_s)):
        cumulative = np.concatenate([[0.0], np.cumsum(flux * np.diff(edges_in))])
        for lo, hi in ((0, 3700), (1500, 1530), (2000, 2001)):
            integral = np.diff(np.interp(edges_out[[lo, hi]], edges_in, cumulative))[0]
            total = np.sum(out[lo:hi].astype(np.float64) * np.diff(edges_out)[lo:hi])
            np.testing.assert_allclose(total, integral, rtol=1e-6)


def test_resampler_matches_specutils_where_covered_and_unmasked_and_is_stricter():
    pytest.importorskip("specutils")
    wave, flux, ivar = _sdss_like_spectrum()
    keep = wave > 3800.3  # starts inside the encoder grid: partly covered first pixel
    wave, flux, ivar = wave[keep], flux[keep].copy(), ivar[keep].copy()
    bad = np.zeros(wave.size, bool)
    bad[[500, 501, 2000]] = True
    bad[3000:3040] = True
    target = encoder_wavelength()
    ours = resample_spectrum(wave, flux, ivar, bad)
    # specutils' resampler has no mask: bad pixels go in as NaN, which marks every output
    # pixel they touch.
    flux_s, ivar_s = _specutils_resample(wave, np.where(bad, np.nan, flux), ivar, target)
    compared = ~ours.mask & np.isfinite(flux_s)
    assert compared.sum() > 3500
    np.testing.assert_allclose(ours.flux[compared], flux_s[compared], rtol=3e-4)
    np.testing.assert_allclose(ours.ivar[compared], ivar_s[compared], rtol=2e-3)
    # Where they differ, starqso is the stricter one: the partly covered first pixel is
    # masked, not extrapolated, and pixels mostly covered by good data keep a value.
    first = np.flatnonzero(~ours.mask)[0]
    assert np.isfinite(flux_s[first - 1]) and ours.mask[first - 1]
    assert (~ours.mask & ~np.isfinite(flux_s)).any()
