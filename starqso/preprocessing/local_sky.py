"""The sky of a crop, as the source checks measure it: level and noise per band (NumPy only).

The screening (:mod:`starqso.preprocessing.screening`) and the quality bits need the sky under
the object: its level, subtracted before aperture photometry, and its per-pixel noise, which
sets every S/N. Both come from the pixels away from the centre, with the light of neighbours
masked and the rest sigma-clipped, so that a crowded field does not inflate them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.photometry import aperture_masks
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC

#: The screening's sky annulus: every crop pixel beyond this radius (or beyond the photometry's
#: border radius, ``S / 2 - 3`` pixels, in a crop too small for it) ...
SKY_INNER_RADIUS_ARCSEC = 4.0
#: ... less the pixels of neighbours: a 3x3 box mean at least this many of its own sigma above
#: the sky in any band ...
SKY_MASK_SNR = 4.0
#: ... grown by this many pixels (a square), for the wings below the threshold;
SKY_MASK_GROW_PX = 2
#: then clipped at this many sigma, this many times.
SKY_CLIP_SIGMA = 3.0
SKY_CLIP_ITERATIONS = 2
#: Mask and clip this many times, each mask from the sky of the pass before.
SKY_MASK_PASSES = 2
#: Fewer pixels than this left after the mask and the clip: the unmasked annulus' median and
#: MAD instead (a galaxy or a cluster fills the crop).
SKY_MIN_PIXELS = 40
# The standard deviation of a unit Gaussian clipped at +-3 sigma; its interquartile range.
_CLIPPED_STD = 0.98658
_IQR_TO_SIGMA = 1.34898
# MAD to Gaussian sigma.
_MAD_TO_SIGMA = 1.4826


def checked_crops(crops):
    """``crops`` as (N, S, S, 5) (one (S, S, 5) crop gets a leading axis), or InputError."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    if crops.ndim != 4 or crops.shape[-1] != len(BANDS) or crops.shape[1] != crops.shape[2]:
        raise InputError(f"crops must have shape (N, S, S, 5) or (S, S, 5). Received: "
                         f"shape={crops.shape}")
    return crops


def _border(size):
    """The sky border pixels of a ``size`` crop: those of aperture_masks, or the outer ring."""
    try:
        return aperture_masks(size, 0.0)[1]
    except InputError:
        # Too small for photometry's 3-pixel-deep border: the outermost ring of pixels.
        ring = np.ones((size, size), bool)
        ring[1:-1, 1:-1] = False
        return ring


def sky_sigma(crops):
    """Robust per-pixel sky sigma of each band from the crop border, float64.

    1.4826 times the median absolute deviation of the border pixels; the standard deviation
    where that is 0 (quantised data), so 0 means a flat border.

    Args:
        crops: (N, S, S, 5) or (S, S, 5) crops, channels last.

    Returns:
        (N, 5) float64 sigmas in the crops' unit (nanomaggies for real input).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> sigma = sky_sigma(rng.normal(0, 0.02, (1, 32, 32, 5)))
        >>> bool(np.allclose(sigma, 0.02, rtol=0.15))
        True
    """
    crops = checked_crops(crops)
    pixels = crops[:, _border(crops.shape[1]), :].astype(np.float64)  # (N, border, 5)
    deviation = np.abs(pixels - np.median(pixels, axis=1, keepdims=True))
    sigma = _MAD_TO_SIGMA * np.median(deviation, axis=1)
    return np.where(sigma > 0, sigma, pixels.std(axis=1))


class SkyBackground(NamedTuple):
    """The screening's sky of each crop and band (:func:`sky_background`), float64 (N, 5)."""

    level: np.ndarray  # per-pixel sky level
    sigma: np.ndarray  # per-pixel sky sigma (0: a flat annulus)
    pixels: np.ndarray  # how many pixels the level is the mean of


@functools.lru_cache(maxsize=16)
def sky_annulus(size):
    """The pixels of a ``size`` crop the screening's sky is measured on, (S, S) bool.

    Every pixel beyond ``SKY_INNER_RADIUS_ARCSEC`` from the centre, or beyond the photometry's
    border radius (``S / 2 - 3`` pixels) when that is smaller; the outermost ring of pixels
    for a crop too small for either.

    Example:
        >>> int(sky_annulus(32).sum())
        708
    """
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    inner = min(SKY_INNER_RADIUS_ARCSEC / PIXEL_SCALE_ARCSEC, size / 2 - 3)
    annulus = np.hypot(xx, yy) > inner if inner > 1 else _border(size)
    annulus.flags.writeable = False  # cached: shared, read-only
    return annulus


def _box_mean(values):
    """3x3 box mean of (N, S, S, B) images (edges repeat their pixels)."""
    padded = np.pad(values, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _grown(mask, pixels):
    """(N, S, S) bool mask grown by ``pixels`` in x and y (a square structuring element)."""
    grown = mask.copy()
    for _ in range(pixels):
        step = grown.copy()
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        step[:, :, 1:] |= step[:, :, :-1]
        step[:, :, :-1] |= step[:, :, 1:]
        grown = step
    return grown


def sky_background(crops):
    """Sky level and sigma of each band from a sigma-clipped annulus with neighbours masked.

    The crop border alone, the sky before, is inflated by a neighbour's light in a crowded
    field (a faint star beside a bright one could come out undetected). Here, as a survey
    pipeline does (photutils ``Background2D`` with a source mask): start from the median and
    the interquartile sigma (IQR / 1.349) of the :func:`sky_annulus` pixels; mask every pixel
    whose 3x3 box mean stands ``SKY_MASK_SNR`` of the box's own sigma (a third of a pixel's)
    above that level in any band, grown by ``SKY_MASK_GROW_PX`` pixels for the wings; clip
    the rest at ``SKY_CLIP_SIGMA`` around their mean, ``SKY_CLIP_ITERATIONS`` times. The level
    is the clipped mean, the sigma the clipped standard deviation corrected for the clip
    (x 1/0.987), ``pixels`` the number kept. Quantised data whose IQR is 0 start from the
    standard deviation; a band flat even so gets sigma 0. Where fewer than
    ``SKY_MIN_PIXELS`` survive, the start values.

    Args:
        crops: (N, S, S, 5) or (S, S, 5) crops, channels last.

    Returns:
        :class:`SkyBackground` of (N, 5) float64 arrays.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> crop = rng.normal(0.1, 0.02, (1, 32, 32, 5))
        >>> crop[0, 1:9, 1:9] += 1.0  # a bright neighbour in a corner
        >>> sky = sky_background(crop)
        >>> bool(np.allclose(sky.level, 0.1, atol=0.004) and np.allclose(sky.sigma, 0.02, rtol=0.1))
        True
    """
    crops = checked_crops(crops)
    count, size = len(crops), crops.shape[1]
    annulus = sky_annulus(size)
    # (N, 5, P): each band's annulus pixels contiguous, for the reductions below.
    pixels = np.ascontiguousarray(np.moveaxis(crops[:, annulus, :], 1, 2), np.float64)
    total = pixels.shape[2]
    with np.errstate(invalid="ignore"):
        # The median and the quartiles' sigma (IQR / 1.349) in one partial sort.
        ranks = [(total - 1) // 4, (total - 1) // 2, (3 * (total - 1)) // 4]
        quartiles = np.partition(pixels, ranks, axis=2)[:, :, ranks]
        level = quartiles[:, :, 1]
        sigma = (quartiles[:, :, 2] - quartiles[:, :, 0]) / _IQR_TO_SIGMA
        sigma = np.where(sigma > 0, sigma, pixels.std(axis=2))
        start = SkyBackground(level, sigma, np.full(level.shape, float(total)))
        if not count:
            return start
        centre, scale = level, sigma
        # The mask is remade once from the clipped sky: the start's sigma, inflated by the
        # neighbours, sets too high a threshold to reach their faint wings.
        for _ in range(SKY_MASK_PASSES):
            box = _box_mean(crops - centre[:, None, None, :].astype(np.float32))
            seeds = (box >= SKY_MASK_SNR / 3.0 * scale[:, None, None, :]).any(axis=3)
            keep = ~_grown(seeds, SKY_MASK_GROW_PX)[:, annulus][:, None, :]  # (N, 1, P)
            for _ in range(SKY_CLIP_ITERATIONS):
                offset = pixels - centre[:, :, None]
                chosen = keep & (np.abs(offset) <= SKY_CLIP_SIGMA * scale[:, :, None])
                kept = chosen.sum(axis=2)
                safe = np.maximum(kept, 1)
                shift = np.where(chosen, offset, 0.0).sum(axis=2) / safe
                centre = centre + shift
                spread = np.where(chosen, offset, 0.0)
                spread = (spread * spread).sum(axis=2) / safe - shift ** 2
                scale = np.sqrt(np.clip(spread, 0.0, None) * safe / np.maximum(kept - 1, 1)
                                ) / _CLIPPED_STD
        enough = (kept >= SKY_MIN_PIXELS) & np.isfinite(centre) & np.isfinite(scale)
        return SkyBackground(np.where(enough, centre, start.level),
                             np.where(enough, scale, start.sigma),
                             np.where(enough, kept, start.pixels).astype(np.float64))
