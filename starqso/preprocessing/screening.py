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
3. **Plausible sky noise.** The per-pixel sky sigma of each band (:func:`sky_background`: the
   pixels beyond 4" from the centre, neighbours masked, sigma-clipped; robust to the crowding
   that inflates a plain border estimate), must be inside ``SKY_SIGMA_RANGE`` = 1e-4 .. 1e2
   nanomaggies: wide enough for SDSS single-epoch frames, deep coadds (Stripe 82, DES, Legacy
   Surveys) and stacks much deeper or surveys much shallower than either, while the same data
   in Jy or erg/s/cm^2/Hz fall far below it and data in ADU or electrons usually far above.
   Quantised data (integers with ``BSCALE``) can leave more than half the annulus on one value,
   so a zero MAD falls back to the annulus' standard deviation; a band whose annulus is flat
   even so (zero-filled, masked) has no sky noise and is refused.
4. **A detected source.** The source is at the crop centre. Its flux is the sky-subtracted sum
   in a centred aperture (:func:`~starqso.preprocessing.photometry.aperture_fluxes`, the sky
   level of :func:`sky_background`), its noise ``sky_sigma * sqrt(n + n**2 / m)`` for ``n``
   aperture pixels and a sky level that is the mean of ``m`` annulus pixels (sky-limited: the
   source's own Poisson noise only matters for sources detected anyway), in the two apertures
   of the photometric features, 1.5" and 3" in radius (``DETECTION_APERTURES_ARCSEC``), keeping
   the better S/N per band. The 3" aperture alone holds four times the sky noise pixels of the
   1.5" one, for a point source whose light is mostly within 1.5" in SDSS seeing, so a faint
   point source can be clear at 1.5" and lost at 3"; the 3" aperture keeps resolved hosts. The
   object counts as detected when the S/N is at least ``DETECTION_SNR_R`` = 4 in r, or at least
   ``DETECTION_SNR_OTHER`` = 5 in any other band (a high-redshift QSO or a cool star can drop
   out of r but shine in i/z; 5 sigma in one band is the usual survey detection limit, while r,
   SDSS's detection band, gets the looser 4 to keep faint real objects), or at least
   ``DETECTION_SNR_COMBINED`` = 5 in the five bands together (:func:`combined_snr`, a
   chi-square detection): a faint source under a noisier sky can stay under every band's own
   limit while its bands add up to a clear detection. White noise rarely passes r at 4 sigma by
   chance (two correlated apertures), another band at 5 sigma practically never. Real blank sky
   holds more than noise: sources below the survey's detection limit, and at 3 sigma in r those
   faint r-only blips are what blank real sky called QSO is made of (a g-dropout to the
   network). 4 sigma in r is where they stop without refusing real point sources or QSOs, and 5
   sigma costs real QSOs without removing more blank sky (measured on the dev fields by
   ``benchmarks/real_fields.py``). A crop too small for a 3" aperture with a sky border (under
   22 pixels) skips this rule.
5. **Not narrower than the PSF.** A cosmic ray, a hot pixel or another detector artefact puts
   its light in one pixel; any real source, star or QSO, is spread by the seeing over several.
   A pixel within ``ARTEFACT_RADIUS_ARCSEC`` = 3" of the centre is *sharp*
   (:func:`sharp_pixels`) when it stands at least ``ARTEFACT_MIN_SNR`` = 15 sky sigma above the
   sky and the mean of its four neighbours is under ``ARTEFACT_NEIGHBOUR_RATIO`` = 0.15 of it,
   with a noise allowance of two sigma on both (``(neighbours + 2 sigma / 2) < 0.15 (pixel - 2
   sigma)``). A Gaussian PSF centred on a pixel, even in SDSS's best seeing, puts far more than
   that into the neighbours, and so do the real point sources (saturated stars included) and
   QSOs of ``benchmarks/artefacts.py``: none is sharp. A crop whose source is *only* sharp
   pixels, i.e. that fails rule 4 once each sharp pixel is replaced by its neighbours' mean, is
   refused: it is neither a star nor a QSO. A crop still detected without them keeps its
   answer, with the ARTEFACT quality bit (:mod:`starqso.preprocessing.qflags`). Below 15 sigma
   a single pixel cannot make a detection on its own (rule 4 needs much more of one pixel in
   r), so fainter ones do not matter here. A multi-pixel cosmic-ray track is not caught by this
   single-pixel test.

Only the crop the model sees is checked: a no-data fill at the far edge of a large cutout
does not change the answer and is not flagged.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.local_sky import (
    SkyBackground,
    checked_crops,
    sky_background,
    sky_sigma,  # noqa: F401 (importers use it here)
)
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
# The noise allowance of rule 5, in sky sigma of the pixel (and of its neighbours' mean).
_ARTEFACT_ALLOWANCE = 2.0
_R = BANDS.index("r")


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
    crops = checked_crops(crops)
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
    crops = checked_crops(crops).astype(np.float64)
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
    crops = checked_crops(crops)
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

    The same rules on the same statistics, vectorised over the batch (a per-crop call is
    mostly NumPy call overhead); only the crops flagged here need :func:`check_source` for
    their message.

    Args:
        crops: (N, S, S, 5) crops, channels last.
        measured: also return the statistics, for the quality bits to reuse.

    Returns:
        (N,) bool; with ``measured``, ``(suspect, sky_sigma (N, 5), snr (N, 5) or None,
        background)`` (``snr`` the better of the two detection apertures, None for crops too
        small; ``background`` the :class:`SkyBackground` both were measured with).
    """
    crops = checked_crops(crops)
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
    crop = checked_crops(crop)[:1]
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
