"""Is there a source in this crop, in nanomaggies? Checks before a model answers (NumPy only).

A classifier gives a confident p(QSO) for anything it is shown: blank sky, a constant cube,
a cube in Jy. A survey pipeline would not report a class for a non-detection, so
:func:`check_source` refuses (raises :class:`~starqso.errors.InputError`, which
``starqso predict`` turns into a flagged row) a centre crop that fails any of these rules,
checked in this order:

1. **Bounded values.** Every pixel within ``|value| <= MAX_ABS_NANOMAGGIES`` (1e7 nmgy, an
   AB magnitude of 5 in one pixel: SDSS saturates near r = 14 for a whole star). Larger
   values are no-data fills (1e30 is common, so is -1e30 or 65535 scaled) or another unit;
   a model fed one gives NaN or an arbitrary answer.
2. **Not constant.** A crop with one value everywhere has no sky noise and no source.
3. **Plausible sky noise.** The per-pixel sky sigma of each band (:func:`sky_background`:
   the pixels beyond 4" from the centre, neighbours masked, sigma-clipped; robust to the
   crowding that inflates a plain border estimate), must be inside
   ``SKY_SIGMA_RANGE`` = 1e-4 .. 1e2 nanomaggies. SDSS single-epoch frames have about
   0.01-0.2 nmgy per pixel (u and z the noisiest), deep coadds (Stripe 82, DES, Legacy
   Surveys) about 10x lower, and even a 100x deeper stack or a 100x shallower survey stays
   inside; the same data in Jy are about 3.6e-6 times smaller (sigma ~1e-7), in
   erg/s/cm^2/Hz 3.6e-29 times smaller, in ADU or electrons usually far larger. Quantised
   data (integers with ``BSCALE``) can leave more than half the annulus on one value, so a
   zero MAD falls back to the annulus' standard deviation; a band whose annulus is flat even
   so (zero-filled, masked) has no sky noise and is refused.
4. **A detected source.** The source is at the crop centre. Its flux is the sky-subtracted
   sum in a centred aperture (:func:`~starqso.preprocessing.photometry.aperture_fluxes`,
   the sky level of :func:`sky_background`), its noise ``sky_sigma * sqrt(n + n**2 / m)``
   for ``n`` aperture pixels and a sky level that is the mean of ``m`` annulus pixels
   (sky-limited: the source's own Poisson noise only matters for sources detected anyway),
   in the two apertures of the photometric features,
   1.5" and 3" in radius (``DETECTION_APERTURES_ARCSEC``), keeping the better S/N per band.
   The 3" aperture alone holds 181 pixels of sky noise for a point source whose light is
   mostly within 1.5" (45 pixels) in SDSS seeing: it missed an r = 21.2 QSO (S/N 2.1 in r,
   7.2 at 1.5") and a z = 19.9 M dwarf (4.1 in z, 8.5 at 1.5") of a simulated survey; the
   3" aperture keeps resolved hosts. The object counts as detected when the S/N is at
   least ``DETECTION_SNR_R`` = 4 in r, or at least ``DETECTION_SNR_OTHER`` = 5 in any other
   band (a high-redshift QSO or a cool star can drop out of r but shine in i/z; 5 sigma in
   one band is the usual survey detection limit, while r, SDSS's detection band, gets the
   looser 4 to keep faint real objects), or at least ``DETECTION_SNR_COMBINED`` = 5 in the
   five bands together (:func:`combined_snr`, a chi-square detection): a faint source under
   a noisier sky can stay under every band's own limit while its bands add up to a clear
   detection. White noise passes r at 4 sigma by chance about
   0.05% of the time (two correlated apertures; 0.3% at 3 sigma), another band at 5 sigma
   practically never. Real blank sky holds more than noise: sources below the survey's
   detection limit, and at 3 sigma in r those faint r-only blips were most of the blank
   real sky called QSO (a g-dropout to the network). On the dev fields
   (``benchmarks/real_fields.py``) 4 sigma left 5 of 1,200 blank-sky cutouts called QSO
   where 3 sigma left 12, refused none of 772 real point sources and lost none of 1,861
   real QSOs; 5 sigma removed no more blank sky and lost one QSO.
   A crop too small for a 3" aperture with a sky border (under 22 pixels) skips this rule.
5. **Not narrower than the PSF.** A cosmic ray, a hot pixel or another detector artefact
   puts its light in one pixel; any real source, star or QSO, is spread by the seeing over
   several. A pixel within ``ARTEFACT_RADIUS_ARCSEC`` = 3" of the centre is *sharp*
   (:func:`sharp_pixels`) when it stands at least ``ARTEFACT_MIN_SNR`` = 15 sky sigma above
   the sky and the mean of its four neighbours is under ``ARTEFACT_NEIGHBOUR_RATIO`` = 0.15
   of it, with a noise allowance of two sigma on both (``(neighbours + 2 sigma / 2) <
   0.15 (pixel - 2 sigma)``). A Gaussian PSF of FWHM 0.7" (SDSS's best seeing) centred on a
   pixel gives a ratio of 0.47, the median 1.4" 0.81; on the real SDSS cutouts of
   ``benchmarks/artefacts.py`` the lowest ratio of 772 point sources is 0.25 (a saturated
   star) and of 1,861 QSOs 0.33, so none is sharp. A crop whose source is *only* sharp
   pixels, i.e. that fails rule 4 once each sharp pixel is replaced by its neighbours' mean,
   is refused: it is neither a star nor a QSO. A crop still detected without them keeps its
   answer, with the ARTEFACT quality bit (:mod:`starqso.preprocessing.qflags`). Below 15
   sigma a single pixel cannot make a detection (rule 4 needs about 27 sigma in r), so
   fainter ones do not matter here. A multi-pixel cosmic-ray track is not caught by this
   single-pixel test.

Only the crop the model sees is checked: a no-data fill at the far edge of a large cutout
does not change the answer and is not flagged.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.photometry import aperture_fluxes, aperture_masks
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC

#: Largest plausible |pixel| in nanomaggies (AB 5 mag in one pixel); no-data fills are above.
MAX_ABS_NANOMAGGIES = 1e7
#: Plausible per-pixel sky sigma in nanomaggies, from deep coadds to shallow single epochs.
SKY_SIGMA_RANGE = (1e-4, 1e2)
#: Aperture radii of the detection test (the photometric features' two apertures).
DETECTION_APERTURES_ARCSEC = (1.5, 3.0)
#: Detected when the aperture S/N reaches this in r ...
DETECTION_SNR_R = 4.0
#: ... or this in any other band ...
DETECTION_SNR_OTHER = 5.0
#: ... or when the five bands together reach this (:func:`combined_snr`).
DETECTION_SNR_COMBINED = 5.0
#: A sharp pixel (rule 5): within this radius of the centre ...
ARTEFACT_RADIUS_ARCSEC = 3.0
#: ... at least this many sky sigma above the sky ...
ARTEFACT_MIN_SNR = 15.0
#: ... with its four neighbours' mean under this fraction of it (after a noise allowance).
ARTEFACT_NEIGHBOUR_RATIO = 0.15
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
# The noise allowance of rule 5, in sky sigma of the pixel (and of its neighbours' mean).
_ARTEFACT_ALLOWANCE = 2.0
# MAD to Gaussian sigma.
_MAD_TO_SIGMA = 1.4826
_R = BANDS.index("r")


def _crops(crops):
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
    crops = _crops(crops)
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
    field (a faint star beside a bright one came out at S/N -2 to 1.5). Here, as a survey
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
    crops = _crops(crops)
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


def aperture_snr(crops, sigma=None, radius_arcsec=3.0, background=None):
    """Sky-limited S/N of the sky-subtracted flux in a centred aperture, per band.

    The sky is the screening's (:func:`sky_background`: a clipped annulus, neighbours
    masked). The noise is the sky noise of the aperture pixels and of the sky level
    subtracted from them: ``sigma * sqrt(n + n**2 / m)`` for ``n`` aperture pixels and a sky
    level that is the mean of ``m`` pixels.

    Args:
        crops: (N, S, S, 5) or (S, S, 5) crops, channels last, source at the centre.
        sigma: (N, 5) per-pixel sky sigma; the background's when None.
        radius_arcsec: aperture radius.
        background: the crops' :class:`SkyBackground`, when already measured.

    Returns:
        (N, 5) float64 ``flux / noise``; inf where sigma is 0.

    Raises:
        InputError: the crops are too small for the aperture and a sky border.

    Example:
        >>> crop = np.random.default_rng(1).normal(0, 0.02, (32, 32, 5))
        >>> crop[16, 16] += 10.0
        >>> bool(aperture_snr(crop)[0, 2] > 20)
        True
    """
    crops = _crops(crops)
    inside, _ = aperture_masks(crops.shape[1], radius_arcsec)
    background = sky_background(crops) if background is None else background
    sigma = background.sigma if sigma is None else np.asarray(sigma, np.float64)
    flux = aperture_fluxes(crops, radius_arcsec, background.level)
    pixels = np.count_nonzero(inside)
    noise = sigma * np.sqrt(pixels + pixels ** 2 / np.maximum(background.pixels, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise > 0, flux / np.where(noise > 0, noise, 1.0), np.inf)


def _can_measure(size):
    return size / 2 - 3 > max(DETECTION_APERTURES_ARCSEC) / PIXEL_SCALE_ARCSEC


def _neighbour_mean(values):
    """Mean of each pixel's four edge neighbours, (N, S, S, 5); edge pixels repeat their own."""
    padded = np.pad(values, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1]
            + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]) / 4


def sharp_pixels(crops, sigma=None, background=None):
    """Pixels narrower than any PSF near the crop centre (rule 5 of the module docstring).

    Args:
        crops: (N, S, S, 5) or (S, S, 5) crops, channels last, source at the centre.
        sigma: (N, 5) per-pixel sky sigma; :func:`sky_background`'s when None.

    Returns:
        (N, S, S, 5) bool: True at a pixel within ``ARTEFACT_RADIUS_ARCSEC`` of the centre at
        least ``ARTEFACT_MIN_SNR`` sigma above the sky whose four neighbours hold under
        ``ARTEFACT_NEIGHBOUR_RATIO`` of its light (all False for crops too small for a sky
        border).

    Example:
        >>> crop = np.random.default_rng(3).normal(0, 0.02, (32, 32, 5))
        >>> crop[16, 16, 2] += 5.0  # one hot pixel in r
        >>> np.argwhere(sharp_pixels(crop)[0]).tolist()
        [[16, 16, 2]]
    """
    crops = _crops(crops).astype(np.float64)
    size = crops.shape[1]
    if not len(crops) or size / 2 - 3 <= 1:
        return np.zeros(crops.shape, bool)
    background = sky_background(crops) if background is None else background
    sigma = background.sigma if sigma is None else np.asarray(sigma, np.float64)
    values = crops - background.level[:, None, None, :]
    noise = sigma[:, None, None, :]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    near = (np.hypot(xx, yy) * PIXEL_SCALE_ARCSEC <= ARTEFACT_RADIUS_ARCSEC)[None, :, :, None]
    with np.errstate(invalid="ignore"):
        # The mean of four neighbours has half a pixel's sky noise.
        return near & (values >= ARTEFACT_MIN_SNR * noise) & (
            _neighbour_mean(values) + _ARTEFACT_ALLOWANCE * noise / 2
            < ARTEFACT_NEIGHBOUR_RATIO * (values - _ARTEFACT_ALLOWANCE * noise))


def combined_snr(snr):
    """The five bands' S/N taken together: ``sqrt(sum(max(snr_b, 0) ** 2))`` per row.

    A chi-square detection statistic (Szalay, Connolly & Szokoly 1999, AJ 117, 68): a source
    spread over several bands, each under its own limit, adds up. Negative S/N (a band below
    the sky) add nothing. It is what the detection test's combined rule and the evidence
    weight of p(QSO) (:func:`starqso.probability.evidence_weight`) read.

    Args:
        snr: (N, 5) aperture S/N per band, as the source check measures them.

    Returns:
        (N,) float64; NaN where any band's S/N is NaN.

    Example:
        >>> combined_snr(np.array([[3.0, 4.0, -2.0, 0.0, 0.0]])).tolist()
        [5.0]
    """
    snr = np.asarray(snr, np.float64)
    return np.sqrt((np.clip(snr, 0.0, None) ** 2).sum(axis=1))


def _undetected(snr):
    others = [band for band in range(len(BANDS)) if band != _R]
    with np.errstate(invalid="ignore"):
        return ((snr[:, _R] < DETECTION_SNR_R) & (snr[:, others] < DETECTION_SNR_OTHER).all(axis=1)
                & (combined_snr(snr) < DETECTION_SNR_COMBINED))


def _detection_snr(crops, background):
    return np.max([aperture_snr(crops, None, radius, background)
                   for radius in DETECTION_APERTURES_ARCSEC], axis=0)


def narrower_than_psf(crops, sigma=None, background=None):
    """Which crops hold sharp pixels, and which hold nothing else (rule 5).

    Args:
        crops: (N, S, S, 5) or (S, S, 5) crops, channels last, source at the centre.
        sigma: (N, 5) per-pixel sky sigma; :func:`sky_background`'s when None.

    Returns:
        ``(sharp, only_sharp)``, (N,) bool each: a sharp pixel (:func:`sharp_pixels`) within
        3" of the centre; and no detection (rule 4) once each sharp pixel is replaced by its
        four neighbours' mean (False for crops too small for the detection apertures).

    Example:
        >>> crop = np.random.default_rng(3).normal(0, 0.02, (32, 32, 5))
        >>> crop[16, 16, 2] += 5.0  # a hot pixel on blank sky
        >>> [flags.tolist() for flags in narrower_than_psf(crop)]
        [[True], [True]]
    """
    crops = _crops(crops)
    background = sky_background(crops) if background is None else background
    if sigma is not None:
        background = background._replace(sigma=np.asarray(sigma, np.float64))
    sharp = sharp_pixels(crops, background=background)
    has_sharp = sharp.any(axis=(1, 2, 3))
    only_sharp = np.zeros(len(crops), bool)
    rows = np.flatnonzero(has_sharp)
    if len(rows) and _can_measure(crops.shape[1]):
        cleaned = crops[rows].astype(np.float64)
        cleaned = np.where(sharp[rows], _neighbour_mean(cleaned), cleaned)
        # The sharp pixels lie within 3", inside the sky annulus: the crop's own sky stands.
        with np.errstate(invalid="ignore"):
            only_sharp[rows] = _undetected(_detection_snr(cleaned, _rows(background, rows)))
    return has_sharp, only_sharp


def _rows(background, rows):
    """The :class:`SkyBackground` of some rows."""
    return SkyBackground(*(values[rows] for values in background))


def _measured(crops):
    """The statistics the rules test, for every crop at once: ``(peak |value|, value range,
    sky sigma (N, 5), detection S/N (N, 5) or None when the crops are too small, (N,) bool
    source made of sharp pixels only, the SkyBackground)``."""
    flat = crops.reshape(len(crops), -1)
    with np.errstate(invalid="ignore"):
        peak, spread = np.abs(flat).max(axis=1), np.ptp(flat, axis=1)
        background = sky_background(crops)
        sigma = background.sigma
        snr = None
        if _can_measure(crops.shape[1]):
            snr = _detection_snr(crops, background)
        # No-data fills and other units (rules 1-3) would make pixels "sharp": skip them.
        low, high = SKY_SIGMA_RANGE
        plausible = (peak <= MAX_ABS_NANOMAGGIES) & ((sigma >= low) & (sigma <= high)).all(
            axis=1)
    only_sharp = np.zeros(len(crops), bool)
    if plausible.any():
        only_sharp[plausible] = narrower_than_psf(
            crops[plausible], background=_rows(background, plausible))[1]
    return peak, spread, sigma, snr, only_sharp, background


def _failed_rules(peak, spread, sigma, snr, only_sharp, background=None
                  ) -> dict[str, np.ndarray]:
    """Each rule of the module docstring, in the order check_source reports them: (N,) bool,
    True where a crop fails it."""
    low, high = SKY_SIGMA_RANGE
    with np.errstate(invalid="ignore"):
        rules = {"range": ~(peak <= MAX_ABS_NANOMAGGIES),  # NaN fails too
                 "constant": spread == 0,
                 "flat_band": (sigma == 0).any(axis=1),
                 "sky": ~((sigma >= low) & (sigma <= high)).all(axis=1)}
        rules["undetected"] = (np.zeros(len(peak), bool) if snr is None else
                               _undetected(snr))
        rules["artefact"] = np.asarray(only_sharp, bool)
    return rules


def suspect_crops(crops, measured=False):
    """Which crops :func:`check_source` refuses, for a whole batch at once.

    The same rules on the same statistics, vectorised over the batch (a per-crop call costs
    about 0.3 ms, mostly NumPy call overhead, a third of `predict`'s time per row); only the
    crops flagged here need :func:`check_source` for their message.

    Args:
        crops: (N, S, S, 5) crops, channels last.
        measured: also return the statistics, for the quality bits to reuse.

    Returns:
        (N,) bool; with ``measured``, ``(suspect, sky_sigma (N, 5), snr (N, 5) or None,
        background)`` (``snr`` the better of the two detection apertures, None for crops too
        small; ``background`` the :class:`SkyBackground` both were measured with).
    """
    crops = _crops(crops)
    if not len(crops):
        empty = np.zeros(0, bool)
        none = np.zeros((0, len(BANDS)))
        return (empty, none, None, SkyBackground(none, none, none)) if measured else empty
    statistics = _measured(crops)
    suspect = np.any(list(_failed_rules(*statistics).values()), axis=0)
    return (suspect, statistics[2], statistics[3], statistics[5]) if measured else suspect


def check_source(crop, *, source: str = "cutout") -> dict:
    """Refuse a crop that holds no detected source or no plausible nanomaggies.

    The rules, and why, are in the module docstring: bounded values, not constant, sky sigma
    in :data:`SKY_SIGMA_RANGE`, a detection at the centre, not narrower than the PSF.

    Args:
        crop: (S, S, 5) finite centre crop in nanomaggies, channels last (what the model sees).
        source: what the crop is (e.g. ``"file images/a.fits"``), for messages.

    Returns:
        dict with ``sky_sigma`` and ``snr`` (the better of the two apertures): (5,) float64
        arrays (``snr`` None when the crop is too small for the apertures).

    Raises:
        InputError: one line naming what was found and what was expected.

    Example:
        >>> blank = np.random.default_rng(2).normal(0, 0.02, (32, 32, 5))
        >>> check_source(blank, source="blank.fits")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        starqso.errors.InputError: no source detected at the cutout centre: ...
    """
    crop = _crops(crop)[:1]
    size = crop.shape[1]
    measured = _measured(crop)
    failed = [name for name, fails in _failed_rules(*measured).items() if fails[0]]
    peak, sigma = measured[0][0], measured[2][0]
    snr = None if measured[3] is None else measured[3][0]
    crop = crop[0]
    if not failed:
        return {"sky_sigma": sigma, "snr": snr}
    if failed[0] == "artefact":
        sharp = np.argwhere(sharp_pixels(crop[None], background=measured[5])[0])
        bands = "".join(BANDS[band] for band in sorted(set(sharp[:, 2])))
        pixels = f"{len(sharp)} isolated pixel" + ("s" if len(sharp) > 1 else "")
        raise InputError(f"source is narrower than the PSF (cosmic ray or artefact): its light "
                         f"is in {pixels} near the centre (band {bands}; their neighbours "
                         f"hold under {ARTEFACT_NEIGHBOUR_RATIO:g} of it) and nothing is "
                         f"detected without them; expected a star or QSO spread by the "
                         f"seeing. Received: {source}")
    if failed[0] == "range":
        band = BANDS[int(np.argmax(np.abs(crop).max(axis=(0, 1))))]
        raise InputError(f"cutout has pixel values beyond the plausible range (largest |value| "
                         f"{peak:.3g} in band {band}), expected at most "
                         f"{MAX_ABS_NANOMAGGIES:g} nanomaggies (a no-data fill or another "
                         f"unit?). Received: {source}")
    if failed[0] == "constant":
        raise InputError(f"cutout is constant ({float(crop.flat[0]):.3g} in every pixel of its "
                         f"central {size}x{size} crop): no sky noise and no source, expected "
                         f"nanomaggies with sky noise. Received: {source}")
    if failed[0] == "flat_band":
        band = BANDS[int(np.argmax(sigma == 0))]
        raise InputError(f"cutout band {band} has no sky noise (its crop border is flat), "
                         f"expected nanomaggies with sky noise. Received: {source}")
    low, high = SKY_SIGMA_RANGE
    if failed[0] == "sky":
        found = ", ".join(f"{band} {value:.3g}" for band, value in zip(BANDS, sigma, strict=False)
                          if not low <= value <= high)
        raise InputError(f"cutout sky noise is not plausible in nanomaggies (robust sky sigma "
                         f"per pixel {found}; expected {low:g} to {high:g}: data in Jy or "
                         f"another unit?). Received: {source}")
    others = [band for band in range(len(BANDS)) if band != _R]
    best = max(others, key=lambda band: snr[band])
    raise InputError(f"no source detected at the cutout centre: "
                     f"{' and '.join(f'{radius:g}' for radius in DETECTION_APERTURES_ARCSEC)}"
                     f"\" aperture S/N at most {snr[_R]:.2g} in r "
                     f"(expected >= {DETECTION_SNR_R:g}) and "
                     f"at most {snr[best]:.2g} in the other bands ({BANDS[best]}; expected "
                     f">= {DETECTION_SNR_OTHER:g} in one) and {combined_snr(snr[None])[0]:.2g} "
                     f"in the five together (expected >= {DETECTION_SNR_COMBINED:g}). "
                     f"Received: {source}")
