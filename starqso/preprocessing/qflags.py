"""The ``qflag`` quality bitmask of every prediction row (NumPy only).

A published classification says where it should not be trusted. Each row's ``qflag`` is the
bitwise OR of :data:`starqso.schema.QFLAG_BITS` (0: no caveat); the ``flag`` column keeps
the human-readable reason for the first two. How each bit is measured, on the crop the model
sees:

* ``NOT_CLASSIFIED`` (1): the row has no p_qso (unreadable, no source, implausible pixels).
* ``REPAIRED`` (2): a few NaN/inf pixels were set to their band median before classifying.
* ``EXTENDED`` (4): a galaxy or a blend, outside the point-source domain the model was
  trained on: :class:`~starqso.preprocessing.morphology.ExtendedScorer` (the light profile
  in each band and the aperture colours) at or above its threshold, set so that 2.5% of
  simulated point sources carry it.
* ``BRIGHT_NEIGHBOUR`` (8): outside 3" from the centre, a pixel of the band-combined image
  (:func:`~starqso.preprocessing.morphology.combined_image`) reaches half the target's peak
  and at least 10 sigma: another source bright enough to bias the photometry and the CNN.
* ``SATURATED`` (16): in some band, at least three pixels within 3 px of the centre sit
  within 0.2% of the band's peak at a peak S/N above 50 (a flat top: SDSS CCDs saturate near
  r = 14 and bleed along columns), or the 3" aperture magnitude is brighter than the band's
  documented SDSS saturation limit (u 12.0, g 14.1, r 14.1, i 13.8, z 12.3).
* ``LOW_SNR`` (32): the best aperture S/N (1.5" or 3") of g, r and i is below
  :data:`~starqso.schema.QFLAG_LOW_SNR`.
* ``MAG_OUT_OF_RANGE`` (64): the 3" aperture r (asinh magnitude) is outside the model's
  training range (``metadata.json: quality.r_range``, the 0.1-99.9% quantiles of its
  training objects widened by 0.25 mag).
* ``OUT_OF_DISTRIBUTION`` (128): the four aperture colours are unlikely under the training
  objects' colour distribution: a Gaussian mixture fitted to the training split
  (``quality.colour_density``) gives a log-density below ``quality.ood_threshold``, the
  :data:`OOD_QUANTILE` quantile of the validation split's, so about 2% of in-domain objects
  carry it.
* ``ARTEFACT`` (256): a pixel within 3" of the centre is narrower than any PSF (a cosmic
  ray, a hot pixel: :func:`~starqso.preprocessing.screening.sharp_pixels`, at least 15 sky
  sigma with its four neighbours under 0.15 of it). When nothing is detected without such
  pixels the row is not classified (NOT_CLASSIFIED too, flag "source is narrower than the
  PSF (cosmic ray or artefact)"): it is neither a star nor a QSO. Otherwise the row keeps
  its answer, whose pixels the artefact may have changed. None of 772 real SDSS point
  sources and 1,861 real QSOs carries it (``benchmarks/results/artefacts.md``).

The model-dependent references (``r_range``, ``colour_density``, ``ood_threshold``) come
from the model folder's ``metadata.json: quality`` (:func:`fit_quality_reference`, run at
export). A model folder without them (an older export) gets neither MAG_OUT_OF_RANGE nor
OUT_OF_DISTRIBUTION; the pixel-only bits are always measured. A crop too small for an
aperture with a sky border (the photometry's rule: ``S / 2 - 3`` pixels must exceed the
radius) skips the bits that need it: EXTENDED needs S >= 27 (a 4" aperture), the S/N, the
magnitude range, the colours and the saturation magnitudes S >= 22 (3"), BRIGHT_NEIGHBOUR
S >= 17 (2"); every model starqso ships or trains by default sees 32 pixels.
"""

from __future__ import annotations

import numpy as np

from starqso.preprocessing.morphology import ExtendedScorer, combined_image, profile_features
from starqso.preprocessing.photometry import (
    aperture_fluxes,
    asinh_magnitudes,
    extinction_factors,
    photometric_features,
    sky_levels,
)
from starqso.preprocessing.screening import (
    DETECTION_APERTURES_ARCSEC,
    aperture_snr,
    narrower_than_psf,
    sky_background,
    sky_sigma,
)
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC, QFLAG_BITS, QFLAG_LOW_SNR

#: SDSS's documented bright limits (PSF photometry saturates), ugriz magnitudes.
SATURATION_MAGNITUDES = np.array([12.0, 14.1, 14.1, 13.8, 12.3])
#: A flat top: this many pixels within SATURATION_TOLERANCE of the band's central peak ...
SATURATION_PIXELS = 3
SATURATION_TOLERANCE = 0.002
#: ... within this many pixels of the centre, at a peak of at least this S/N.
SATURATION_RADIUS_PX = 3.0
SATURATION_MIN_SNR = 50.0
#: A neighbour outside this radius at this fraction of the target's peak (and NEIGHBOUR_MIN_SNR).
NEIGHBOUR_RADIUS_ARCSEC = 3.0
NEIGHBOUR_PEAK_FRACTION = 0.5
NEIGHBOUR_MIN_SNR = 10.0
#: Fraction of in-domain (validation) objects the OUT_OF_DISTRIBUTION bit is set for.
OOD_QUANTILE = 0.02
#: Components of the colour density.
OOD_COMPONENTS = 8
#: The training r range: these quantiles of the training objects, widened by R_RANGE_MARGIN.
R_RANGE_QUANTILES = (0.001, 0.999)
R_RANGE_MARGIN = 0.25
#: Band indices of g, r and i: LOW_SNR uses their best S/N.
GRI_BANDS = tuple(BANDS.index(band) for band in "gri")
_GRI = list(GRI_BANDS)


def best_gri_snr(snr):
    """The best aperture S/N of g, r and i per row, (N,), from the source check's (N, 5) S/N:
    what LOW_SNR reads."""
    return np.asarray(snr)[:, _GRI].max(axis=1)


def _log_density(colours, density):
    """Log-density of (N, 4) colours under a stored Gaussian mixture (NumPy)."""
    colours = np.asarray(colours, np.float64)
    terms = []
    for weight, mean, covariance in zip(density["weights"], density["means"],
                                        density["covariances"], strict=False):
        covariance = np.asarray(covariance, np.float64)
        inverse = np.linalg.inv(covariance)
        _, log_det = np.linalg.slogdet(covariance)
        offset = colours - np.asarray(mean, np.float64)
        mahalanobis = np.einsum("ni,ij,nj->n", offset, inverse, offset)
        terms.append(np.log(weight) - 0.5 * (mahalanobis + log_det
                                             + len(mean) * np.log(2 * np.pi)))
    terms = np.array(terms)
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def fit_quality_reference(train_crops, validation_crops, seed=0):
    """The model-dependent references of the quality bits, from its training objects.

    Args:
        train_crops: (N, S, S, 5) crops of the training split (what the model saw).
        validation_crops: (M, S, S, 5) crops of the validation split.
        seed: the Gaussian mixture's seed.

    Returns:
        JSON-ready dict for ``metadata.json: quality``: ``r_range``, ``colour_density``
        (``features``, ``weights``, ``means``, ``covariances``), ``ood_threshold``,
        ``ood_quantile``, ``fitted_on`` and the rates measured on the validation split;
        None for crops too small for the 3" photometry (S < 22).

    Example:
        >>> reference = fit_quality_reference(train, validation)  # doctest: +SKIP
    """
    from sklearn.mixture import GaussianMixture

    train_crops = np.asarray(train_crops)
    if train_crops.ndim != 4 or not _fits(train_crops.shape[1], 3.0):
        return None
    train = photometric_features(train_crops)
    validation = photometric_features(np.asarray(validation_crops))
    colours = train[:, :4].astype(np.float64)
    finite = np.isfinite(colours).all(axis=1)
    mixture = GaussianMixture(n_components=min(OOD_COMPONENTS, max(1, finite.sum() // 50)),
                              covariance_type="full", reg_covar=1e-4, random_state=seed)
    mixture.fit(colours[finite])
    density = {"features": ["u-g", "g-r", "r-i", "i-z"],
               "weights": mixture.weights_.tolist(), "means": mixture.means_.tolist(),
               "covariances": mixture.covariances_.tolist()}
    validation_density = _log_density(validation[:, :4], density)
    threshold = float(np.quantile(validation_density, OOD_QUANTILE))
    low, high = np.quantile(train[:, 4], R_RANGE_QUANTILES)
    r_range = [float(low - R_RANGE_MARGIN), float(high + R_RANGE_MARGIN)]
    return {"r_range": r_range, "colour_density": density, "ood_threshold": threshold,
            "ood_quantile": OOD_QUANTILE,
            "fitted_on": {"train_objects": int(len(train)),
                          "validation_objects": int(len(validation))},
            "validation_ood_fraction": float(np.mean(validation_density < threshold))}


def _fits(size, radius_arcsec):
    return size / 2 - 3 > radius_arcsec / PIXEL_SCALE_ARCSEC


def _saturated(crops, sky, sigma, magnitudes=None):
    """Flat-topped cores; with the 3" aperture ``magnitudes``, also the SDSS bright limits."""
    size = crops.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    core = np.hypot(xx, yy) <= SATURATION_RADIUS_PX
    pixels = crops[:, core, :].astype(np.float64) - sky[:, None, :]  # (N, P, 5)
    peak = pixels.max(axis=1)
    near = pixels >= peak[:, None, :] - SATURATION_TOLERANCE * np.abs(peak[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        bright = peak / np.where(sigma > 0, sigma, np.inf) >= SATURATION_MIN_SNR
    flat = ((near.sum(axis=1) >= SATURATION_PIXELS) & bright).any(axis=1)
    if magnitudes is None:
        return flat
    return flat | (magnitudes < SATURATION_MAGNITUDES).any(axis=1)


def _bright_neighbour(combined):
    size = combined.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    distance = np.hypot(xx, yy) * PIXEL_SCALE_ARCSEC
    target = (combined * (distance <= 1.5)).max(axis=(1, 2))
    outer = np.where(distance > NEIGHBOUR_RADIUS_ARCSEC, combined, -np.inf).max(axis=(1, 2))
    return (outer >= NEIGHBOUR_PEAK_FRACTION * np.clip(target, 0, None)) & (
        outer >= NEIGHBOUR_MIN_SNR)


def quality_bits(crops, repaired=None, reference=None, scorer=None, sigma=None, snr=None,
                 background=None, ebv=None):
    """The measured bits of classified crops (all but NOT_CLASSIFIED), as int64 (N,).

    Args:
        crops: (N, S, S, 5) crops the model saw, nanomaggies, channels last.
        repaired: optional (N,) bool, rows classified after a repair.
        reference: ``metadata.json: quality`` of the model, or None (then neither
            MAG_OUT_OF_RANGE nor OUT_OF_DISTRIBUTION).
        scorer: an :class:`~starqso.preprocessing.morphology.ExtendedScorer`; the shipped
            one when None.
        sigma, snr, background: the (N, 5) sky sigma, detection S/N and
            :class:`~starqso.preprocessing.screening.SkyBackground` of
            :func:`~starqso.preprocessing.screening.suspect_crops`, when already measured.
        ebv: optional (N,) Galactic E(B-V) (NaN: none). The crops are the observed ones;
            EXTENDED (its aperture colours), MAG_OUT_OF_RANGE and OUT_OF_DISTRIBUTION are
            measured on them de-reddened
            (:func:`~starqso.preprocessing.photometry.extinction_factors`), as the model sees
            them; SATURATED on the observed fluxes (the
            detector saturates on what arrives). The other bits are ratios to the sky noise,
            which a per-band scale leaves as they are.

    Returns:
        (N,) int64 bitmasks.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> crop = rng.normal(0, 0.02, (1, 32, 32, 5))
        >>> crop[0, 15:17, 15:17] += 0.05  # a faint source
        >>> bool(quality_bits(crop)[0] & QFLAG_BITS["LOW_SNR"])
        True
    """
    crops = np.asarray(crops, np.float32)
    bits = np.zeros(len(crops), np.int64)
    if repaired is not None and len(crops):
        bits |= np.where(np.asarray(repaired, bool), QFLAG_BITS["REPAIRED"], 0)
    size = crops.shape[1] if crops.ndim == 4 else 0
    if not len(crops) or not _fits(size, 0.0):
        return bits
    sky = sky_levels(crops)
    background = sky_background(crops) if background is None else background
    sigma = background.sigma if sigma is None else np.asarray(sigma, np.float64)
    # The light profile keeps the border sky it was fitted with: with the annulus sigma,
    # which masks a large galaxy's own light, simulated r 14-17 galaxies kept EXTENDED
    # 0.958 of the time instead of 0.990 (benchmarks/quality_flags.py).
    border_sigma = sky_sigma(crops)
    factors = None if ebv is None else extinction_factors(ebv)
    combined = None
    if _fits(size, 4.0):
        scorer = ExtendedScorer.load() if scorer is None else scorer
        if factors is None:
            features, combined = profile_features(crops, sky, border_sigma, with_combined=True)
        else:
            features, combined = profile_features(crops * factors[:, None, None, :].astype(
                np.float32), sky * factors, border_sigma * factors, with_combined=True)
        bits |= np.where(scorer.score_features(features) >= scorer.threshold,
                         QFLAG_BITS["EXTENDED"], 0)
    if _fits(size, 2.0):
        if combined is None:
            combined, _ = combined_image(crops, sky, border_sigma)
        bits |= np.where(_bright_neighbour(combined), QFLAG_BITS["BRIGHT_NEIGHBOUR"], 0)
    # The 3" aperture magnitudes, once: the saturation limits, the r range and the colours.
    fluxes = aperture_fluxes(crops, 3.0, sky) if _fits(size, 3.0) else None
    magnitudes = None if fluxes is None else asinh_magnitudes(fluxes)
    bits |= np.where(_saturated(crops, sky, sigma, magnitudes), QFLAG_BITS["SATURATED"], 0)
    bits |= artefact_bits(crops, sigma, background)
    if magnitudes is None:
        return bits
    if snr is None:
        snr = np.max([aperture_snr(crops, sigma, radius, background)
                      for radius in DETECTION_APERTURES_ARCSEC], axis=0)
    bits |= np.where(best_gri_snr(snr) < QFLAG_LOW_SNR, QFLAG_BITS["LOW_SNR"], 0)
    if reference:
        if factors is not None:
            magnitudes = asinh_magnitudes(fluxes * factors)
        measured = np.column_stack([magnitudes[:, :-1] - magnitudes[:, 1:], magnitudes[:, 2]])
        low, high = reference["r_range"]
        r_mag = measured[:, 4]
        bits |= np.where(~((r_mag >= low) & (r_mag <= high)), QFLAG_BITS["MAG_OUT_OF_RANGE"], 0)
        density = _log_density(measured[:, :4], reference["colour_density"])
        bits |= np.where(~(density >= reference["ood_threshold"]),
                         QFLAG_BITS["OUT_OF_DISTRIBUTION"], 0)
    return bits


def artefact_bits(crops, sigma=None, background=None):
    """The ARTEFACT bit of each crop: a pixel narrower than the PSF within 3" of the centre.

    Also for rows that are not classified (their flag says whether the artefact is why).

    Args:
        crops: (N, S, S, 5) crops, nanomaggies, channels last.
        sigma: (N, 5) sky sigma, when already measured.
        background: the crops' :class:`~starqso.preprocessing.screening.SkyBackground`, when
            already measured.

    Returns:
        (N,) int64: ``QFLAG_BITS["ARTEFACT"]`` or 0.

    Example:
        >>> crop = np.random.default_rng(0).normal(0, 0.02, (1, 32, 32, 5))
        >>> crop[0, 16, 16, 2] += 5.0  # a cosmic ray in r
        >>> bit_names(artefact_bits(crop)[0])
        ['ARTEFACT']
    """
    crops = np.asarray(crops, np.float32)
    if not len(crops):
        return np.zeros(0, np.int64)
    return np.where(narrower_than_psf(crops, sigma, background)[0], QFLAG_BITS["ARTEFACT"],
                    0).astype(
        np.int64)


def screened_bits(crops, usable, sigma):
    """The ARTEFACT bit of the rows the source checks refused, for their NOT_CLASSIFIED qflag.

    ``predict`` (:func:`starqso.inference.classify_block`) and ``embed`` both call it, so a
    cosmic ray refused by one carries the same bits in the other.

    Args:
        crops: (N, S, S, 5) crops of a block (any values where no crop was read).
        usable: (N,) bool, the rows classified (they get 0 here; :func:`quality_bits` gives
            their bits).
        sigma: (N, 5) sky sigma of the screen, NaN for rows never screened (unreadable).

    Returns:
        (N,) int64: ``QFLAG_BITS["ARTEFACT"]`` for a refused row with a sharp pixel, else 0.
    """
    sigma = np.asarray(sigma, np.float64)
    bits = np.zeros(len(sigma), np.int64)
    screened = ~np.asarray(usable, bool) & np.isfinite(sigma).all(axis=1)
    if screened.any():
        bits[screened] = artefact_bits(np.asarray(crops)[screened], sigma[screened])
    return bits


def bit_names(value):
    """The names of the bits set in one qflag value.

    Example:
        >>> bit_names(4 | 32)
        ['EXTENDED', 'LOW_SNR']
    """
    return [name for name, bit in QFLAG_BITS.items() if int(value) & bit]
