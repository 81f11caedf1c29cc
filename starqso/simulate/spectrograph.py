"""Observe a noise-free spectrum as the SDSS or BOSS spectrograph would.

The output is on the spectrograph's own grid (log10 lambda step 1e-4; SDSS-I/II 3800-9200 A,
BOSS 3600-10400 A), with per-pixel variance ``k * sky(lambda) + a * flux``: ``sky`` is the sky
and read-noise variance curve and ``a`` the photon term, both fitted to real SDSS/BOSS spectra
(``tools/build_package_data.py``), ``k`` an observing-conditions factor. Noise therefore follows
the object's magnitude the way SDSS's does (S/N per pixel about 3 at r = 21). Pixels on bright
sky lines carry the BRIGHTSKY bit and a few rejected stretches FULLREJECT (ivar = 0), as in
SDSS ``and_mask``.
"""

from __future__ import annotations

import functools

import numpy as np

from starqso.preprocessing.spectra import resample_spectrum
from starqso.simulate import resources

# SDSS spPixMask bits.
FULLREJECT = 1 << 18
BRIGHTSKY = 1 << 23

SPECTROGRAPHS = {
    # name: (first log10 lambda, last log10 lambda, relative sky-noise level)
    "SDSS": (np.log10(3800.0), np.log10(9200.0), 1.1),
    "BOSS": (np.log10(3600.0), np.log10(10400.0), 1.0),
}


def spectrograph_grid(name):
    """Pixel centres (Angstrom) of a spectrograph's coadd grid (log10 lambda step 1e-4)."""
    first, last, _ = SPECTROGRAPHS[name]
    num = int(round((last - first) / 1e-4)) + 1
    return 10.0 ** (first + 1e-4 * np.arange(num))


@functools.cache
def _sky(spectrograph):
    """Sky variance on the spectrograph grid and the pixels on bright sky lines."""
    from scipy.ndimage import median_filter

    calibration = resources.noise_calibration()
    grid = spectrograph_grid(spectrograph)
    sky = np.interp(grid, calibration["spectrum_wave"], calibration["spectrum_sky_variance"])
    # A line stands well above the local continuum of the sky; the noisy blue and red ends of
    # the spectrograph do not count (SDSS does not flag them either).
    continuum = median_filter(sky, size=151, mode="nearest")
    return sky, sky > 3.0 * continuum


def observe_spectrum(wavelength, flux, rng, spectrograph=None):
    """A noisy observed spectrum with ivar and and_mask.

    Args:
        wavelength: common-grid pixel centres of ``flux`` (Angstrom).
        flux: noise-free f_lambda in 1e-17 erg/s/cm^2/A.
        rng: ``numpy.random.Generator``.
        spectrograph: "SDSS" or "BOSS"; random (40/60) when None.

    Returns:
        dict with ``wavelength``, ``flux``, ``ivar`` (float32), ``and_mask`` (int32) and
        ``spectrograph``.
    """
    if spectrograph is None:
        spectrograph = "SDSS" if rng.random() < 0.4 else "BOSS"
    grid = spectrograph_grid(spectrograph)
    true_flux = resample_spectrum(wavelength, flux, target_wavelength=grid).flux.astype(
        np.float64)
    calibration = resources.noise_calibration()
    sky, bright_sky = _sky(spectrograph)
    conditions = SPECTROGRAPHS[spectrograph][2] * rng.lognormal(0.0, 0.3)
    variance = conditions * sky + calibration["spectrum_photon_coefficient"] * np.clip(
        true_flux, 0.0, None)
    observed = true_flux + rng.normal(size=grid.size) * np.sqrt(variance)
    ivar = 1.0 / variance
    and_mask = np.zeros(grid.size, dtype=np.int32)
    and_mask[bright_sky] |= BRIGHTSKY
    for _ in range(rng.poisson(0.5)):
        # A rejected stretch (bad column, cosmic-ray cluster, dead fibre segment).
        start = rng.integers(0, grid.size - 60)
        length = rng.integers(3, 60)
        and_mask[start:start + length] |= FULLREJECT
        ivar[start:start + length] = 0.0
    return {
        "wavelength": grid,
        "flux": observed.astype(np.float32),
        "ivar": ivar.astype(np.float32),
        "and_mask": and_mask,
        "spectrograph": spectrograph,
    }
