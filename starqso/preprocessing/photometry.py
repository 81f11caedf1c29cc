"""Aperture photometry on cutouts (NumPy only): the features of the classical peers.

The classical classifiers and the image + photometry model of the paper table see what a
survey pipeline would measure from the same cutouts the CNNs see: sky-subtracted aperture
fluxes in ugriz, turned into asinh magnitudes (SDSS "luptitudes", finite for faint and negative
fluxes), colours, r and a concentration index (resolved QSO hosts are less concentrated).

Hand-written rather than built on photutils: this is the exact NumPy twin of the in-graph
:class:`starqso.models.AperturePhotometry` (same masks, same pixel-centre membership), and one
vectorised pass takes 1.4 s for 15,000 32x32x5 cutouts against 64 s for photutils'
``ApertureStats``/``aperture_photometry`` per image and band (4.5 s even when the cutouts are
tiled into one image per band). photutils is the reference it is tested against
(``tests/test_reference_libraries.py``: ``method="center"`` sums, sky median, concentration).
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.schema import PIXEL_SCALE_ARCSEC as PIXEL_SCALE

# SDSS asinh softening parameters b per band (Lupton, Gunn & Szalay 1999; SDSS DR docs).
SOFTENING = np.array([1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10])
FEATURE_NAMES = ("u-g", "g-r", "r-i", "i-z", "r", "concentration_r")


def asinh_magnitudes(nanomaggies):
    """SDSS asinh magnitudes of fluxes in nanomaggies (any shape, last axis ugriz)."""
    flux = np.asarray(nanomaggies, dtype=np.float64) * 1e-9  # in units of 3631 Jy
    return -2.5 / np.log(10) * (np.arcsinh(flux / (2 * SOFTENING)) + np.log(SOFTENING))


def aperture_fluxes(cutouts, radius_arcsec=3.0):
    """Sky-subtracted fluxes within a circular aperture at the cutout centre.

    Args:
        cutouts: (N, S, S, 5) cutouts in nanomaggies, channels last, source at the centre.
        radius_arcsec: aperture radius; 3" (twice SDSS's fibre-magnitude aperture) holds
            most of the light of a point source in 2" seeing.

    Returns:
        (N, 5) float64 fluxes in nanomaggies. The sky is the median of the pixels more than
        (S/2 - 3) pixels from the centre, per band.

    Raises:
        InputError: for cutouts that are not (N, S, S, 5) or are too small for the aperture.

    Example:
        >>> aperture_fluxes(np.ones((2, 32, 32, 5))).shape
        (2, 5)
    """
    cutouts = np.asarray(cutouts)
    if cutouts.ndim != 4 or cutouts.shape[-1] != 5 or cutouts.shape[1] != cutouts.shape[2]:
        raise InputError(f"cutouts must have shape (N, S, S, 5). Received: shape="
                         f"{cutouts.shape}")
    inside, border = aperture_masks(cutouts.shape[1], radius_arcsec)
    sky = np.median(cutouts[:, border, :], axis=1)
    return (cutouts[:, inside, :] - sky[:, None, :]).sum(axis=1, dtype=np.float64)


def aperture_masks(size, radius_arcsec):
    """(aperture, sky border) boolean (size, size) masks around the cutout centre.

    The sky border is every pixel more than (size/2 - 3) pixels from the centre. Shared by
    :func:`aperture_fluxes` and the in-graph :class:`starqso.models.AperturePhotometry`, so
    both measure the same pixels.

    Raises:
        InputError: if the aperture does not fit inside the sky border.
    """
    radius_px = radius_arcsec / PIXEL_SCALE
    if size / 2 - 3 <= radius_px:
        raise InputError(f"cutouts are too small for a {radius_arcsec}\" aperture with a sky "
                         f"border. Received: side {size} pixels")
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    distance = np.hypot(xx, yy)
    return distance <= radius_px, distance > size / 2 - 3


def photometric_features(cutouts):
    """The classical peers' features from cutouts: 4 colours, r, r-band concentration.

    Args:
        cutouts: (N, S, S, 5) cutouts in nanomaggies, channels last.

    Returns:
        (N, 6) float32 array, columns :data:`FEATURE_NAMES`; colours and r are asinh
        magnitudes in a 3" aperture, the concentration is the r-band magnitude difference
        between 1.5" and 3" apertures.

    Example:
        >>> photometric_features(np.zeros((1, 32, 32, 5))).shape
        (1, 6)
    """
    magnitudes = asinh_magnitudes(aperture_fluxes(cutouts, 3.0))
    inner = asinh_magnitudes(aperture_fluxes(cutouts, 1.5))[:, 2]
    features = np.column_stack([magnitudes[:, :-1] - magnitudes[:, 1:], magnitudes[:, 2],
                                inner - magnitudes[:, 2]])
    return features.astype(np.float32)
