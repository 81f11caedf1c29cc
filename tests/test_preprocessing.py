import numpy as np
import pytest

from starqso.errors import InputError
from starqso.preprocessing import (
    ENCODER_NUM_PIXELS,
    encoder_wavelength,
    log_uniform_grid,
    pixel_edges,
    resample_spectrum,
)
from starqso.preprocessing.crop import crop_window


@pytest.mark.parametrize("height, width, size, rows, columns", [
    (48, 48, 32, (8, 40), (8, 40)),  # even difference: equal margins
    (33, 35, 32, (0, 32), (1, 33)),  # odd difference: the extra pixel at the bottom/right
    (32, 32, 32, (0, 32), (0, 32)),
])
def test_crop_window_is_centred_with_the_extra_pixel_bottom_right(height, width, size, rows,
                                                                  columns):
    window = crop_window(height, width, size)
    assert [(axis.start, axis.stop) for axis in window] == [rows, columns]


@pytest.mark.parametrize("height, width, size", [(20, 40, 32), (40, 31, 32), (48, 48, 0)])
def test_crop_window_refuses_a_cutout_smaller_than_the_crop_in_one_line(height, width, size):
    with pytest.raises(InputError) as excinfo:
        crop_window(height, width, size, "in file x.fits")
    assert str(excinfo.value) == (
        f"cutout must be at least {size}x{size} pixels to crop to image size {size}. "
        f"Received: {height}x{width} in file x.fits")


def test_encoder_grid_matches_the_shared_data_grid():
    grid = encoder_wavelength()
    assert grid.shape == (ENCODER_NUM_PIXELS,)
    assert grid[0] == 3700.0 and grid[-1] == 9100.0
    steps = np.diff(np.log10(grid))
    np.testing.assert_allclose(steps, 1.0566090e-4, rtol=1e-5)


def _sdss_like(seed=0):
    rng = np.random.default_rng(seed)
    wave = 10 ** (3.55 + 1e-4 * np.arange(4700))  # 3548-10390 A, SDSS step
    flux = 5 + np.sin(wave / 37.0) + rng.normal(0, 0.3, wave.size)
    ivar = np.full(wave.size, 1 / 0.3 ** 2)
    return wave, flux, ivar


def test_resampling_conserves_flux_over_whole_output_pixels():
    wave, flux, ivar = _sdss_like()
    out = resample_spectrum(wave, flux, ivar)
    assert not out.mask.any()
    out_edges = pixel_edges(out.wavelength)
    in_edges = pixel_edges(wave)
    total_out = np.sum(out.flux.astype(np.float64) * np.diff(out_edges))
    # The same range integrated on the input (partial pixels at the two ends).
    cumulative = np.concatenate([[0.0], np.cumsum(flux * np.diff(in_edges))])
    integral = np.interp(out_edges[[0, -1]], in_edges, cumulative)
    np.testing.assert_allclose(total_out, integral[1] - integral[0], rtol=1e-6)


def test_resampling_a_constant_gives_the_constant_and_ivar_predicts_the_scatter():
    rng = np.random.default_rng(3)
    wave = log_uniform_grid(3000.0, 10000.0, 20000)  # finer than the encoder grid
    out = resample_spectrum(wave, np.full(wave.size, 2.5), np.full(wave.size, 4.0))
    np.testing.assert_allclose(out.flux, 2.5, rtol=1e-6)
    # Resample 300 noise realisations (sigma 0.5, ivar 4): the scatter of each output pixel
    # must be what the propagated ivar says.
    trials = np.array([resample_spectrum(wave, rng.normal(0.0, 0.5, wave.size),
                                         np.full(wave.size, 4.0)).flux for _ in range(300)])
    ratio = trials.var(axis=0) * out.ivar
    assert abs(np.median(ratio) - 1.0) < 0.03
    # About 4 input pixels per output pixel: ivar grows about 4-fold.
    assert 14 < np.median(out.ivar) < 20


def test_masked_and_uncovered_pixels_are_masked_not_zero_filled_silently():
    wave, flux, ivar = _sdss_like()
    mask = np.zeros(wave.size, bool)
    mask[1000:1200] = True  # a rejected stretch
    flux[1000:1200] = 1e6  # garbage under the mask must not leak
    out = resample_spectrum(wave, flux, ivar, mask)
    bad_wave = (out.wavelength > wave[1003]) & (out.wavelength < wave[1196])
    assert out.mask[bad_wave].all()
    assert (out.ivar[out.mask] == 0).all() and (out.flux[out.mask] == 0).all()
    assert out.flux.max() < 10
    # A spectrum that stops at 7410 A (like MILES) leaves the red end masked.
    red = resample_spectrum(wave[wave < 7410], flux[wave < 7410], ivar[wave < 7410])
    assert red.mask[red.wavelength > 7411].all()
    assert not red.mask[(red.wavelength < 7400) & (red.wavelength > 4000)].any()


def test_no_valid_pixel_and_bad_grids_raise_input_error():
    wave = np.linspace(9200, 9900, 100)
    with pytest.raises(InputError, match="no valid pixel in 3700-9100"):
        resample_spectrum(wave, np.ones(100), source="x.fits")
    with pytest.raises(InputError, match="strictly increasing.*x.fits"):
        resample_spectrum(np.array([4000.0, 3999.0, 5000.0]), np.ones(3), source="x.fits")
    with pytest.raises(InputError, match="same length"):
        resample_spectrum(np.arange(10.0) + 4000, np.ones(9))


def test_sky_levels_are_shift_invariant_and_ignore_a_neighbour_in_the_border():
    from starqso.preprocessing.photometry import aperture_fluxes, aperture_masks, sky_levels

    rng = np.random.default_rng(5)
    sigma = 0.05
    sky = rng.normal(0.0, sigma, (200, 32, 32, 5))
    np.testing.assert_allclose(sky_levels(sky + 0.7), sky_levels(sky) + 0.7, atol=1e-12)
    # On white noise it is about as precise as the mean of the 484 border pixels (0.91x the
    # median's scatter).
    assert sky_levels(sky).std() < 1.25 * sigma / np.sqrt(484)
    # A 17th-magnitude star (158 nanomaggies) in the border, near a corner: the arcs it
    # brightens are dropped, and the sky under the 3" aperture moves a third as much as the
    # median of the border pixels does (measured 0.55 against 1.77 nanomaggies), where the
    # plain border mean moves by 55.
    yy, xx = np.mgrid[0:32, 0:32]
    star = 158.0 * np.exp(-((xx - 3.0) ** 2 + (yy - 4.0) ** 2) / 4.5) / (2 * np.pi * 2.25)
    crowded = sky + star[None, :, :, None]
    moved = 180 * (sky_levels(crowded) - sky_levels(sky))[:, 2]
    _, border = aperture_masks(32, 3.0)
    median_moved = 180 * (np.median(crowded[:, border], axis=1)
                          - np.median(sky[:, border], axis=1))[:, 2]
    mean_moved = 180 * (crowded[:, border].mean(axis=1) - sky[:, border].mean(axis=1))[:, 2]
    assert np.median(moved) < 0.4 * np.median(median_moved) and np.abs(moved).max() < 1.5
    assert np.median(mean_moved) > 50
    # The fluxes subtract exactly this sky (the star adds 1e-7 inside the aperture).
    np.testing.assert_allclose(aperture_fluxes(crowded) - aperture_fluxes(sky),
                               -(sky_levels(crowded) - sky_levels(sky)) * 180, atol=1e-6)
    with pytest.raises(InputError, match="shape"):
        sky_levels(np.zeros((2, 32, 32)))
