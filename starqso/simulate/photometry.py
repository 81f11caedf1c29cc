"""Synthetic SDSS ugriz photometry through the speclite ``sdss2010`` filter curves.

Magnitudes are AB: the photon-weighted mean flux density per unit frequency,
``<f_nu> = int f_lambda R lambda dlambda / (c int R / lambda dlambda)``, in nanomaggies
(1 nanomaggy = 3.631e-6 Jy, AB mag 22.5). The integral is precomputed as one weight matrix per
wavelength grid, so a magnitude is one dot product; :func:`speclite.filters.FilterSequence.
get_ab_magnitudes` gives the same numbers (tests check it) but is far slower per spectrum.
"""

from __future__ import annotations

import functools

import numpy as np

from starqso.preprocessing.spectra import pixel_edges

SPEED_OF_LIGHT_ANGSTROM_PER_S = 2.99792458e18
NANOMAGGY_ERG_S_CM2_HZ = 3.631e-29
FLUX_UNIT_ERG_S_CM2_A = 1e-17  # SDSS spectra: 1e-17 erg/s/cm^2/A


@functools.lru_cache(maxsize=1)
def sdss_filters():
    """The speclite SDSS 2010 filter curves (u, g, r, i, z), loaded once.

    Returns:
        A ``speclite.filters.FilterSequence``.
    """
    import speclite.filters  # imported lazily: it costs about a second

    return speclite.filters.load_filters("sdss2010-*")


def effective_wavelengths():
    """Effective wavelengths of the SDSS filters in Angstrom, shape (5,)."""
    return np.array([f.effective_wavelength.value for f in sdss_filters()])


class Photometer:
    """Synthetic ugriz fluxes for spectra sampled on one wavelength grid.

    Args:
        wavelength: pixel centres in Angstrom (any strictly increasing grid).

    Example:
        >>> import numpy as np
        >>> grid = np.geomspace(2900, 11200, 6000)
        >>> photometer = Photometer(grid)
        >>> flat = np.full_like(grid, 1.0)  # 1e-17 erg/s/cm^2/A
        >>> photometer.magnitudes(flat).shape
        (5,)
    """

    def __init__(self, wavelength):
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        widths = np.diff(pixel_edges(self.wavelength))
        weights = []
        for band_filter in sdss_filters():
            response = np.interp(self.wavelength, band_filter.wavelength, band_filter.response,
                                 left=0.0, right=0.0)
            numerator = response * self.wavelength * widths
            denominator = SPEED_OF_LIGHT_ANGSTROM_PER_S * np.sum(response / self.wavelength
                                                                 * widths)
            weights.append(numerator / denominator)
        self.weights = (np.array(weights) * FLUX_UNIT_ERG_S_CM2_A
                        / NANOMAGGY_ERG_S_CM2_HZ)  # (5, N): f_lambda [1e-17] -> nanomaggies

    def nanomaggies(self, flux):
        """Band fluxes in nanomaggies.

        Args:
            flux: f_lambda in 1e-17 erg/s/cm^2/A on this photometer's grid, shape (..., N).

        Returns:
            Array of shape (..., 5), bands ugriz.
        """
        return np.asarray(flux, dtype=np.float64) @ self.weights.T

    def magnitudes(self, flux):
        """AB magnitudes (22.5 - 2.5 log10 nanomaggies), shape (..., 5); NaN for flux <= 0."""
        return nanomaggies_to_magnitudes(self.nanomaggies(flux))


def nanomaggies_to_magnitudes(nanomaggies):
    """AB magnitude of a flux in nanomaggies; NaN where the flux is not positive."""
    nanomaggies = np.asarray(nanomaggies, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nanomaggies > 0, 22.5 - 2.5 * np.log10(nanomaggies), np.nan)


def magnitudes_to_nanomaggies(magnitudes):
    """Flux in nanomaggies of an AB magnitude."""
    return 10.0 ** (-0.4 * (np.asarray(magnitudes, dtype=np.float64) - 22.5))
