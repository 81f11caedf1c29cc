"""The light profile of the object at the crop centre: the extended-source scorer's features.

:func:`profile_features` measures the profile's shape on an optimally weighted sum of the five
bands (weights ``flux / sigma^2`` per band, the matched filter for a source of the measured
colours): the curve of growth at 0.6, 1.0, 1.5, 2.0 and 3.0" relative to 4", around the light's
centroid (a centroid error of up to 1 px must not look like a resolved source), the
second-moment size and ellipticity within 3", the peak pixel's share of the light, and the S/N
(so the score knows how noisy the other features are); then each band's own curve of growth at
0.8, 1.2, 1.6, 2.4 and 3.2" relative to 4". The per-band curves carry what the sum cannot: a
point source is narrower in z than in u by the seeing's wavelength dependence, a resolved
galaxy about as wide in every band (and redder in its core), and their noise is independent.
Last, the four 3" aperture colours: a galaxy smaller than the seeing has the shape of a point
source but not its colours (the stellar locus and the QSOs' loci are narrow, real SDSS galaxy
colours are elsewhere). What each group of features adds to the scorer is measured by
``benchmarks/quality_flags.py`` (its results file). NumPy only.
"""

from __future__ import annotations

import functools

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.local_sky import sky_sigma
from starqso.preprocessing.photometry import (
    aperture_masks,
    asinh_magnitudes,
    sky_levels,
)
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC

#: Curve-of-growth radii (arcsec), each relative to the flux within NORM_RADIUS_ARCSEC.
GROWTH_RADII_ARCSEC = (0.6, 1.0, 1.5, 2.0, 3.0)
NORM_RADIUS_ARCSEC = 4.0
#: Window of the centroid and second moments.
MOMENT_RADIUS_ARCSEC = 3.0
#: Per-band curve-of-growth radii (arcsec, crop-centred apertures), relative to 4".
BAND_GROWTH_RADII_ARCSEC = (0.8, 1.2, 1.6, 2.4, 3.2)
FEATURE_NAMES = (*(f"growth_{radius:g}" for radius in GROWTH_RADII_ARCSEC), "size_arcsec",
                 "ellipticity", "peak_fraction", "log10_snr",
                 *(f"growth_{band}_{radius:g}" for radius in BAND_GROWTH_RADII_ARCSEC
                   for band in BANDS), "u-g", "g-r", "r-i", "i-z")


def _checked(crops):
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 5 or crops.shape[1] != crops.shape[2]:
        raise InputError(f"crops must have shape (N, S, S, 5). Received: shape={crops.shape}")
    aperture_masks(crops.shape[1], NORM_RADIUS_ARCSEC)  # raises when too small
    return crops


@functools.lru_cache(maxsize=8)
def _aperture_matrix(size, radii):
    # (R, S*S) float64: row k is the centred aperture mask of radii[k] (aperture_masks').
    matrix = np.stack([aperture_masks(size, radius)[0].ravel() for radius in radii]).astype(
        np.float64)
    matrix.flags.writeable = False
    return matrix


def band_fluxes(crops, sky, radii):
    """Sky-subtracted fluxes in several centred apertures at once: (N, len(radii), 5).

    The same pixels as :func:`~starqso.preprocessing.photometry.aperture_fluxes` at each
    radius, in one matrix product (a quarter of the time of one call per radius).
    """
    crops = np.asarray(crops, np.float64)
    matrix = _aperture_matrix(crops.shape[1], tuple(radii))
    # A batched matrix product (BLAS); einsum of these shapes is 3x slower.
    raw = matrix @ crops.reshape(len(crops), -1, crops.shape[-1])
    return raw - matrix.sum(axis=1)[None, :, None] * np.asarray(sky, np.float64)[:, None, :]


def combined_image(crops, sky=None, sigma=None):
    """Sky-subtracted sum of the five bands weighted by ``flux / sigma^2`` (the matched filter).

    Args:
        crops: (N, S, S, 5) crops in nanomaggies, channels last.
        sky: (N, 5) sky levels; :func:`~starqso.preprocessing.photometry.sky_levels` when None.
        sigma: (N, 5) per-pixel sky sigma; the border's robust sigma when None.

    Returns:
        ``(image, noise)``: (N, S, S) float64 images in units of their own per-pixel noise
        (white-noise sigma 1 on the sky) and (N,) the per-pixel sky sigma of that sum before
        the division (for callers that need it).
    """
    crops = np.asarray(crops)
    sky = sky_levels(crops) if sky is None else sky
    sigma = sky_sigma(crops) if sigma is None else np.asarray(sigma, np.float64)
    flux = np.clip(band_fluxes(crops, sky, (2.0,))[:, 0], 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(sigma > 0, flux / np.where(sigma > 0, sigma, 1.0) ** 2, 0.0)
    # A source that is negative everywhere (none is classified) still gets a defined image.
    weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, 1.0)
    noise = np.sqrt(np.sum(weights ** 2 * sigma ** 2, axis=1))
    # sum_b w_b (x - sky_b) = sum_b w_b x - sum_b w_b sky_b, without an (N, S, S, 5) copy.
    flat = np.asarray(crops, np.float64).reshape(len(crops), -1, crops.shape[-1])
    image = ((flat @ weights[:, :, None])[:, :, 0].reshape(crops.shape[:3])
             - np.sum(weights * sky, axis=1)[:, None, None])
    noise = np.where(noise > 0, noise, 1.0)
    return image / noise[:, None, None], noise


def profile_features(crops, sky=None, sigma=None, with_combined=False):
    """Shape features of the light at the crop centre, :data:`FEATURE_NAMES`.

    Args:
        crops: (N, S, S, 5) crops in nanomaggies, channels last, S >= 27 (a 4" aperture
            inside a sky border).
        sky, sigma: optional (N, 5) sky levels and sigmas already measured.
        with_combined: also return the :func:`combined_image` the features were measured on.

    Returns:
        (N, 38) float64 features, :data:`FEATURE_NAMES` (finite: a source without positive
        flux gets zeros).

    Raises:
        InputError: crops of another shape or too small.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> crops = rng.normal(0, 0.02, (2, 32, 32, 5))
        >>> profile_features(crops).shape
        (2, 38)
    """
    crops = _checked(crops)
    size = crops.shape[1]
    sky = sky_levels(crops) if sky is None else sky
    image, _ = combined_image(crops, sky, sigma)
    centre = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - centre
    window = np.hypot(xx, yy) <= 2.0 / PIXEL_SCALE_ARCSEC
    positive = np.clip(image, 0.0, None) * window
    total = positive.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    # The centroid within 2", at most 1.5 px from the centre (the simulator's, and a
    # catalogue's, positions are good to 1 px): a neighbour must not pull it away.
    cx = np.clip((positive * xx).sum(axis=(1, 2)) / safe, -1.5, 1.5)
    cy = np.clip((positive * yy).sum(axis=(1, 2)) / safe, -1.5, 1.5)
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    distance = np.hypot(dx, dy) * PIXEL_SCALE_ARCSEC
    norm = (image * (distance <= NORM_RADIUS_ARCSEC)).sum(axis=(1, 2))
    good = norm > 0
    norm_safe = np.where(good, norm, 1.0)
    growth = [np.where(good, (image * (distance <= radius)).sum(axis=(1, 2)) / norm_safe, 0.0)
              for radius in GROWTH_RADII_ARCSEC]
    inside = distance <= MOMENT_RADIUS_ARCSEC
    weight = np.clip(image, 0.0, None) * inside
    weight_sum = weight.sum(axis=(1, 2))
    weight_safe = np.where(weight_sum > 0, weight_sum, 1.0)
    ixx = (weight * dx ** 2).sum(axis=(1, 2)) / weight_safe
    iyy = (weight * dy ** 2).sum(axis=(1, 2)) / weight_safe
    ixy = (weight * dx * dy).sum(axis=(1, 2)) / weight_safe
    trace = ixx + iyy
    trace_safe = np.where(trace > 0, trace, 1.0)
    ellipticity = np.where(trace > 0, np.sqrt((ixx - iyy) ** 2 + 4 * ixy ** 2) / trace_safe, 0.0)
    size_arcsec = np.sqrt(np.clip(trace, 0.0, None)) * PIXEL_SCALE_ARCSEC
    peak = (image * inside).max(axis=(1, 2))
    peak_fraction = np.where(good, peak / norm_safe, 0.0)
    # Each row's own aperture around its own centroid: a row's features must not depend on
    # which row leads its batch (a single row counts exactly what it always did).
    pixels = np.count_nonzero(distance <= NORM_RADIUS_ARCSEC, axis=(1, 2))
    snr = np.clip(norm, 1e-3, None) / np.sqrt(pixels)  # the image is in units of its noise
    fluxes = band_fluxes(crops, sky, (NORM_RADIUS_ARCSEC, 3.0, *BAND_GROWTH_RADII_ARCSEC))
    band_norm = fluxes[:, 0]
    band_safe = np.where(band_norm > 0, band_norm, 1.0)
    band_growth = [np.where(band_norm > 0, fluxes[:, 2 + k] / band_safe, 0.0)
                   for k in range(len(BAND_GROWTH_RADII_ARCSEC))]
    magnitudes = asinh_magnitudes(fluxes[:, 1])
    features = np.column_stack([*growth, size_arcsec, ellipticity, peak_fraction,
                                np.log10(snr), *band_growth,
                                magnitudes[:, :-1] - magnitudes[:, 1:]])
    features = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)
    return (features, image) if with_combined else features
