"""Simulated galaxies: extended sources observed exactly like the simulator's point sources.

Each galaxy is a real SDSS GALAXY catalogue row (ugriz model magnitudes, spectroscopic
redshift; package data ``galaxy_rows.npz``, see :func:`build_galaxy_rows`) given a Sérsic
profile and rendered by :func:`starqso.simulate.images.render_cutout` with no point source: the
PSF, sky and Poisson noise, correlated-noise resampling, zero points, sky residuals,
saturation, artefacts and neighbours are drawn by the same code, over the same ranges, as for
the stars and QSOs of :func:`starqso.simulate.survey.simulate_object`. What differs is only the
object: no spectrum, and a resolved profile instead of a point.

Shape model (:func:`draw_galaxy_shape`):

* Sérsic index: a disc (n = 1) or a spheroid (n = 4). The probability of a spheroid is 0.8 for
  galaxies on the red sequence and 0.2 in the blue cloud, with a smooth step across a
  dividing line in observed g - r that follows the red sequence with redshift
  (:data:`RED_SEQUENCE_GR`, read off these rows' g - r histograms in redshift bins: the
  4000 A break moves from g into r between z 0 and 0.4, so a fixed colour cut would call
  every z > 0.3 galaxy red and every nearby elliptical blue).
* Half-light radius: the r-band size-luminosity relations of Shen et al. (2003, MNRAS 343,
  978; table 1, Sérsic-index split) for late types (``log R = -0.4 alpha M + (beta - alpha)
  log10(1 + 10^(-0.4 (M - M0))) + gamma``: R ~ L^0.21 below M0 = -20.52, steepening to
  L^0.53 above; 3.8 kpc at M_r = -21) and early types (``log R = -0.4 a M + b``, R ~ L^0.65;
  3.4 kpc at M_r = -21.5), with a log-normal scatter of 0.2 dex, converted to arcsec with
  Planck18 at the row's redshift and clipped to 0.2-15". M_r = r - distance modulus: no
  k-correction and no extinction correction, so galaxies at z > 0.3 come out up to about a
  magnitude too faint and (for spheroids) up to ~1.8x too small, i.e. harder to tell from a
  point source. Shen et al.'s radii are Petrosian R50, used here as the Sérsic Re (for n = 4
  that is ~20-30% smaller than the true Re: the same direction).
* Axis ratio: uniform 0.3-1 for discs, 0.5-1 for spheroids; position angle uniform.

Galaxy ``index`` of seed ``s`` uses its own stream ``default_rng([s, index, 7])``, so it differs
from point source ``index`` of the same seed (``default_rng([s, index])``) and does not depend
on how many galaxies were asked for.
"""

from __future__ import annotations

import csv
import functools
import gzip
import pathlib
from dataclasses import dataclass, field

import numpy as np

from starqso.errors import InputError
from starqso.schema import BANDS
from starqso.simulate import resources
from starqso.simulate.images import render_cutout
from starqso.simulate.photometry import magnitudes_to_nanomaggies
from starqso.simulate.profiles import sersic_b

RESOURCE_NAME = "galaxy_rows.npz"
# Stream tag: the third element of the seed sequence, so galaxies never share a stream with the
# point sources of the same seed and index.
STREAM_TAG = 7
#: The side stream of a galaxy's spectrum (its template mix and spectrograph noise): drawn
#: apart from the image, so that a galaxy's cutout is the same with or without a spectrum.
SPECTRUM_STREAM = 1
#: Fibre radii (arcsec) of the spectrographs (SDSS 3", BOSS 2" diameter).
FIBRE_RADIUS_ARCSEC = {"SDSS": 1.5, "BOSS": 1.0}

# Observed g - r of the red sequence against redshift (peaks of these rows' g - r histograms).
# A galaxy is called red when it lies above the line minus RED_SEQUENCE_WIDTH.
RED_SEQUENCE_GR = (
    np.array([0.0, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 3.0]),
    np.array([0.80, 0.87, 0.95, 1.12, 1.50, 1.75, 1.75, 1.70, 1.70]),
)
RED_SEQUENCE_WIDTH = 0.25
COLOUR_STEP_MAG = 0.08  # width of the logistic step between blue and red
SPHEROID_PROBABILITY = (0.2, 0.8)  # blue cloud, red sequence

# Shen et al. (2003) table 1, r band, Sérsic-index split (h = 0.7), radii in kpc.
LATE_TYPE_SIZE = {"alpha": 0.21, "beta": 0.53, "gamma": -1.31, "m0": -20.52}
EARLY_TYPE_SIZE = {"a": 0.65, "b": -5.06}
SIZE_SCATTER_DEX = 0.2
HALF_LIGHT_RADIUS_RANGE_ARCSEC = (0.2, 15.0)
DISC_AXIS_RATIO = (0.3, 1.0)
SPHEROID_AXIS_RATIO = (0.5, 1.0)
# Common magnitude shift of a drawn row (as for point sources: repeated draws differ), and the
# per-band colour jitter.
MAGNITUDE_JITTER = 0.1
COLOUR_JITTER = 0.02


def build_galaxy_rows(csv_path, out_path):
    """Build the package data ``galaxy_rows.npz`` from the project's labelled SDSS catalogue.

    Source: SDSS DR14/DR17 catalogue rows via Kaggle-derived tables, see
    ``/work/shared/data/README.md`` (``sdss_photometry_labelled.csv.gz``): the "Stellar
    Classification Dataset SDSS17" 10% sample (repository felmateos/stellar-classification-SDSS17,
    MIT) and the SDSS DR14 SkyServer 10k table (repository aditya5545/datasets); SDSS data are
    public (SDSS data policy). Kept: GALAXY rows with all five magnitudes finite and within
    5-30 (drops the -9999 sentinel) and a redshift above 0.

    Args:
        csv_path: the catalogue (``.csv`` or ``.csv.gz``) with columns ``class, redshift, u, g,
            r, i, z``.
        out_path: the ``.npz`` to write: ``mags`` (N x 5 float32, ugriz model magnitudes, not
            dereddened), ``redshift`` (float32), ``row`` (int32: 0-based data-row number in
            ``csv_path``, header not counted).

    Returns:
        the number of rows kept.

    Example:
        >>> build_galaxy_rows("../shared/data/sdss_photometry_labelled.csv.gz",
        ...                   "starqso/resources/galaxy_rows.npz")  # doctest: +SKIP
        8166
    """
    csv_path = pathlib.Path(csv_path)
    opener = gzip.open if csv_path.suffix == ".gz" else open
    mags, redshifts, numbers = [], [], []
    with opener(csv_path, "rt", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            if row["class"].strip().upper() != "GALAXY":
                continue
            try:
                values = [float(row[band]) for band in BANDS]
                redshift = float(row["redshift"])
            except (TypeError, ValueError):
                continue
            if not (np.all(np.isfinite(values)) and all(5.0 < value < 30.0 for value in values)
                    and np.isfinite(redshift) and redshift > 0.0):
                continue
            mags.append(values)
            redshifts.append(redshift)
            numbers.append(number)
    if not numbers:
        raise InputError(f"{csv_path} has no GALAXY rows with finite ugriz and a positive "
                         f"redshift")
    np.savez_compressed(out_path, mags=np.array(mags, dtype=np.float32),
                        redshift=np.array(redshifts, dtype=np.float32),
                        row=np.array(numbers, dtype=np.int32))
    return len(numbers)


#: Rest-frame range kept from the kcorrect templates: the common grid (2999-11002 A) seen
#: from the catalogue galaxies' redshifts (up to about 2) and at rest.
TEMPLATE_REST_RANGE = (600.0, 12500.0)


def build_galaxy_templates(fits_path, out_path):
    """Build the package data ``galaxy_templates.npz`` from kcorrect's default templates.

    Source: ``src/kcorrect/data/templates/kcorrect-default-v4.fits`` of the repository
    blanton144/kcorrect (BSD-3-Clause, Copyright (c) 2016 Michael R. Blanton): the five
    non-negative basis spectra Blanton & Roweis (2007, AJ 133, 734) fitted to SDSS galaxies,
    with nebular lines. Kept: their rest-frame wavelengths within :data:`TEMPLATE_REST_RANGE`,
    each normalised to a median of 1 over 5400-5600 A.

    Args:
        fits_path: ``kcorrect-default-v4.fits`` (HDU ``FLUX``: ``wave`` (N,), ``flux`` (5, N)).
        out_path: the ``.npz`` to write: ``wave`` (N' float64, Angstrom, rest frame) and
            ``flux`` (5 x N' float32).

    Returns:
        the number of wavelengths kept.
    """
    from astropy.io import fits

    with fits.open(fits_path) as hdus:
        table = hdus["FLUX"].data
        wave = np.asarray(table["wave"][0], np.float64)
        flux = np.asarray(table["flux"][0], np.float64)
    keep = (wave >= TEMPLATE_REST_RANGE[0]) & (wave <= TEMPLATE_REST_RANGE[1])
    wave, flux = wave[keep], flux[:, keep]
    window = (wave >= 5400.0) & (wave <= 5600.0)
    flux = flux / np.median(flux[:, window], axis=1, keepdims=True)
    np.savez_compressed(out_path, wave=wave, flux=flux.astype(np.float32))
    return len(wave)


@functools.cache
def galaxy_rows():
    """The real SDSS GALAXY catalogue rows shipped with the package (loaded once).

    Returns:
        dict with ``mags`` (N x 5 float64, ugriz model magnitudes), ``redshift`` (N,) and
        ``row`` (N,: the row number in the source catalogue, see :func:`build_galaxy_rows`).

    Example:
        >>> len(galaxy_rows()["redshift"]) > 8000
        True
    """
    with resources.resource_path(RESOURCE_NAME).open("rb") as handle:
        with np.load(handle) as data:
            return {"mags": data["mags"].astype(np.float64),
                    "redshift": data["redshift"].astype(np.float64),
                    "row": data["row"].astype(np.int64)}


def split_galaxy_rows(fraction=0.5, seed=0):
    """Two disjoint sets of catalogue rows, e.g. one to fit a cut on and one to measure it on.

    Args:
        fraction: share of the rows in the first set, in (0, 1).
        seed: seed of the random permutation.

    Returns:
        ``(first, second)``: sorted int arrays of indices into :func:`galaxy_rows`, disjoint,
        together every row.

    Example:
        >>> fit, test = split_galaxy_rows()
        >>> len(set(fit) & set(test))
        0
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be within (0, 1). Received: fraction={fraction}")
    count = len(galaxy_rows()["redshift"])
    order = np.random.default_rng(seed).permutation(count)
    cut = int(round(fraction * count))
    return np.sort(order[:cut]), np.sort(order[cut:])


@functools.lru_cache(maxsize=1)
def _distance_tables():
    # Distance modulus and proper kpc per arcsec on a log-redshift grid: astropy per galaxy
    # would cost milliseconds each.
    from astropy.cosmology import Planck18

    redshifts = np.geomspace(1e-5, 3.0, 400)
    return (np.log(redshifts), Planck18.distmod(redshifts).value,
            Planck18.kpc_proper_per_arcmin(redshifts).value / 60.0)


def _distance_modulus_and_scale(redshift):
    log_z, distmod, kpc_per_arcsec = _distance_tables()
    log_redshift = np.log(max(float(redshift), 1e-5))
    return (float(np.interp(log_redshift, log_z, distmod)),
            float(np.interp(log_redshift, log_z, kpc_per_arcsec)))


def spheroid_probability(g_minus_r, redshift):
    """Probability that a galaxy of observed colour ``g - r`` at ``redshift`` is a spheroid."""
    line = np.interp(redshift, *RED_SEQUENCE_GR) - RED_SEQUENCE_WIDTH
    step = 1.0 / (1.0 + np.exp(-(g_minus_r - line) / COLOUR_STEP_MAG))
    blue, red = SPHEROID_PROBABILITY
    return float(blue + (red - blue) * step)


def median_half_light_radius_kpc(absolute_mag_r, spheroid):
    """Median r-band half-light radius (kpc) at ``absolute_mag_r`` (Shen et al. 2003)."""
    if spheroid:
        log_radius = -0.4 * EARLY_TYPE_SIZE["a"] * absolute_mag_r + EARLY_TYPE_SIZE["b"]
    else:
        p = LATE_TYPE_SIZE
        log_radius = (-0.4 * p["alpha"] * absolute_mag_r
                      + (p["beta"] - p["alpha"])
                      * np.log10(1.0 + 10.0 ** (-0.4 * (absolute_mag_r - p["m0"])))
                      + p["gamma"])
    return float(10.0 ** log_radius)


def draw_galaxy_shape(rng, mags, redshift):
    """Draw a galaxy's Sérsic index, half-light radius, axis ratio and position angle.

    Args:
        rng: ``numpy.random.Generator``; five draws, always in the same order.
        mags: ugriz magnitudes, shape (5,).
        redshift: spectroscopic redshift.

    Returns:
        dict: ``sersic_index`` (1.0 or 4.0), ``half_light_radius_arcsec``,
        ``half_light_radius_kpc`` (after scatter, before the arcsec clip), ``absolute_mag_r``
        (no k-correction), ``spheroid_probability``, ``axis_ratio`` and ``angle`` (radians).

    Example:
        >>> shape = draw_galaxy_shape(np.random.default_rng(0), [19, 17.5, 16.7, 16.3, 16.0], 0.1)
        >>> sorted(shape)[:3]
        ['absolute_mag_r', 'angle', 'axis_ratio']
    """
    mags = np.asarray(mags, dtype=np.float64)
    probability = spheroid_probability(mags[1] - mags[2], redshift)
    spheroid = bool(rng.random() < probability)
    distance_modulus, kpc_per_arcsec = _distance_modulus_and_scale(redshift)
    absolute_mag_r = float(mags[2] - distance_modulus)
    radius_kpc = median_half_light_radius_kpc(absolute_mag_r, spheroid) * 10.0 ** rng.normal(
        0.0, SIZE_SCATTER_DEX)
    radius_arcsec = float(np.clip(radius_kpc / kpc_per_arcsec, *HALF_LIGHT_RADIUS_RANGE_ARCSEC))
    axis_ratio = float(rng.uniform(*(SPHEROID_AXIS_RATIO if spheroid else DISC_AXIS_RATIO)))
    angle = float(rng.uniform(0.0, np.pi))
    return {
        "sersic_index": 4.0 if spheroid else 1.0,
        "half_light_radius_arcsec": radius_arcsec,
        "half_light_radius_kpc": float(radius_kpc),
        "absolute_mag_r": absolute_mag_r,
        "spheroid_probability": probability,
        "axis_ratio": axis_ratio,
        "angle": angle,
    }


@dataclass
class SimulatedGalaxy:
    """One simulated galaxy; the fields of :class:`starqso.simulate.survey.SimulatedObject`.

    Attributes:
        id: ``gal-NNNNNN``.
        label: "GALAXY".
        redshift: the catalogue row's spectroscopic redshift.
        mags: true ugriz AB (total, model) magnitudes of the galaxy as imaged, shape (5,).
        cutout: float32 (5, size, size) nanomaggies.
        spectrum: None, or with ``simulate_galaxy(..., with_spectrum=True)`` the fibre
            spectrum (:func:`starqso.simulate.spectrograph.observe_spectrum`'s dict).
        info: the catalogue row, the shape parameters and the observing conditions of
            :func:`starqso.simulate.images.render_cutout`.
    """

    id: str
    label: str
    redshift: float
    mags: np.ndarray
    cutout: np.ndarray
    spectrum: dict | None = None
    info: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def neighbour_star_mags():
    """The catalogue stars' ugriz (N x 5) that neighbours take their colours from: the same
    rows the point-source simulator uses."""
    catalogue = resources.sdss_pointsources()
    return catalogue["mags"][np.flatnonzero(catalogue["label"] == "STAR")]


def _candidate_rows(rows):
    count = len(galaxy_rows()["redshift"])
    if rows is None:
        return np.arange(count)
    candidates = np.asarray(rows)
    if candidates.ndim != 1 or len(candidates) == 0 or not np.issubdtype(candidates.dtype,
                                                                          np.integer):
        raise InputError(f"rows must be a non-empty 1-d array of integer row indices. "
                         f"Received: {rows!r}")
    if candidates.min() < 0 or candidates.max() >= count:
        raise InputError(f"rows must index the {count} galaxy rows (0..{count - 1}). "
                         f"Received: min {candidates.min()}, max {candidates.max()}")
    return candidates


def fibre_fraction(half_light_radius_arcsec, sersic_index, fibre_radius_arcsec):
    """The fraction of a circular Sérsic profile's light inside a fibre of that radius (no
    seeing): ``P(2n, b_n (R / Re)^(1/n))``, the regularised lower incomplete gamma function.

    Example:
        >>> round(fibre_fraction(1.5, 1.0, 1.5), 3)  # the half-light radius: half the light
        0.5
    """
    from scipy import special

    b = sersic_b(sersic_index)
    x = b * (fibre_radius_arcsec / half_light_radius_arcsec) ** (1.0 / sersic_index)
    return float(special.gammainc(2.0 * sersic_index, x))


def simulate_galaxy(index, seed, size=48, rows=None, with_spectrum=False):
    """Simulate galaxy number ``index`` of the simulation with ``seed``.

    Args:
        index: galaxy number (0-based).
        seed: simulation seed.
        size: cutout side in pixels.
        rows: indices into :func:`galaxy_rows` to draw the catalogue row from (e.g. one half
            of :func:`split_galaxy_rows`); all rows when None.
        with_spectrum: also observe its fibre spectrum: :func:`starqso.simulate.spectra.
            galaxy_spectrum` of the row, times the light the SDSS or BOSS fibre takes in
            (:func:`fibre_fraction`), through :func:`starqso.simulate.spectrograph.
            observe_spectrum`, from a side stream (the cutout does not change).

    Returns:
        :class:`SimulatedGalaxy`.

    Example:
        >>> galaxy = simulate_galaxy(0, seed=1, size=32)
        >>> galaxy.cutout.shape, galaxy.label
        ((5, 32, 32), 'GALAXY')
    """
    rng = np.random.default_rng([seed, index, STREAM_TAG])
    row, mags, redshift, shape = draw_galaxy(rng, rows)
    cutout, conditions = render_cutout(
        rng, size, np.zeros(5), magnitudes_to_nanomaggies(mags),
        shape["half_light_radius_arcsec"], star_mags=neighbour_star_mags(),
        host_sersic_index=shape["sersic_index"], host_axis_ratio=shape["axis_ratio"],
        host_angle=shape["angle"])
    info = {**galaxy_info(row, shape), **conditions}
    spectrum = None
    if with_spectrum:
        side = np.random.default_rng([seed, index, STREAM_TAG, SPECTRUM_STREAM])
        spectrum = fibre_spectrum(side, mags, redshift, shape, info)
    return SimulatedGalaxy(id=f"gal-{index:06d}", label="GALAXY", redshift=redshift,
                           mags=mags, cutout=cutout, spectrum=spectrum, info=info)


def draw_galaxy(rng, rows=None):
    """A galaxy's catalogue row (jittered) and shape, drawn from ``rng``.

    Args:
        rng: ``numpy.random.Generator``.
        rows: indices into :func:`galaxy_rows` to draw from; all rows when None.

    Returns:
        ``(row, mags, redshift, shape)``: the row index, its ugriz magnitudes with the
        simulator's jitter, its redshift and :func:`draw_galaxy_shape`'s dict.
    """
    candidates = _candidate_rows(rows)
    catalogue = galaxy_rows()
    row = int(candidates[rng.integers(len(candidates))])
    # Jitter: a common magnitude shift and small colour changes, as for point sources.
    mags = (catalogue["mags"][row] + rng.normal(0.0, MAGNITUDE_JITTER)
            + rng.normal(0.0, COLOUR_JITTER, size=5))
    redshift = float(catalogue["redshift"][row])
    return row, mags, redshift, draw_galaxy_shape(rng, mags, redshift)


def galaxy_info(row, shape):
    """The provenance and shape a simulated galaxy records in its ``info``."""
    catalogue = galaxy_rows()
    return {"galaxy_row": row, "source_row": int(catalogue["row"][row]),
            "catalogue_mags": [float(value) for value in catalogue["mags"][row]], **shape}


def fibre_spectrum(rng, mags, redshift, shape, info, dimming=None):
    """A galaxy's spectrum through the SDSS or BOSS fibre: :func:`starqso.simulate.spectra.
    galaxy_spectrum` times :func:`fibre_fraction` (and ``dimming``, f_lambda factors of
    foreground dust, if given), observed by the spectrograph. Records ``template`` and
    ``fibre_fraction`` in ``info``.

    Returns:
        :func:`starqso.simulate.spectrograph.observe_spectrum`'s dict.
    """
    from starqso.simulate.spectra import common_grid, galaxy_spectrum
    from starqso.simulate.spectrograph import observe_spectrum

    spectrograph = "SDSS" if rng.random() < 0.4 else "BOSS"
    model = galaxy_spectrum(mags, redshift, rng)
    fraction = fibre_fraction(shape["half_light_radius_arcsec"], shape["sersic_index"],
                              FIBRE_RADIUS_ARCSEC[spectrograph])
    flux = model.flux * fraction * (1.0 if dimming is None else dimming)
    info.update(template=model.template, fibre_fraction=fraction)
    return observe_spectrum(common_grid(), flux, rng, spectrograph)


def simulate_galaxies(num, seed, size=48, rows=None):
    """Simulate ``num`` galaxies (numbers 0..num-1 of ``seed``) held in memory.

    Args:
        num: number of galaxies (>= 1).
        seed: simulation seed.
        size: cutout side in pixels.
        rows: catalogue rows to draw from (see :func:`simulate_galaxy`).

    Returns:
        ``(cutouts, table)``: float32 (num, 5, size, size) nanomaggies, and a dict of arrays:
        ``id``, ``mags`` (num x 5), ``redshift``, ``sersic_index``,
        ``half_light_radius_arcsec``, ``axis_ratio``, ``psf_fwhm_r`` (arcsec) and
        ``galaxy_row``.

    Example:
        >>> cutouts, table = simulate_galaxies(3, seed=0, size=32)
        >>> cutouts.shape, table["mags"].shape
        ((3, 5, 32, 32), (3, 5))
    """
    if num < 1:
        raise InputError(f"num must be at least 1. Received: num={num}")
    galaxies = [simulate_galaxy(index, seed, size, rows) for index in range(num)]
    table = {
        "id": np.array([galaxy.id for galaxy in galaxies]),
        "mags": np.array([galaxy.mags for galaxy in galaxies]),
        "redshift": np.array([galaxy.redshift for galaxy in galaxies]),
        "sersic_index": np.array([galaxy.info["sersic_index"] for galaxy in galaxies]),
        "half_light_radius_arcsec": np.array([galaxy.info["half_light_radius_arcsec"]
                                              for galaxy in galaxies]),
        "axis_ratio": np.array([galaxy.info["axis_ratio"] for galaxy in galaxies]),
        "psf_fwhm_r": np.array([galaxy.info["psf_fwhm_r"] for galaxy in galaxies]),
        "galaxy_row": np.array([galaxy.info["galaxy_row"] for galaxy in galaxies]),
    }
    return np.stack([galaxy.cutout for galaxy in galaxies]), table


__all__ = [
    "SimulatedGalaxy",
    "build_galaxy_rows",
    "draw_galaxy_shape",
    "galaxy_rows",
    "simulate_galaxies",
    "simulate_galaxy",
    "split_galaxy_rows",
]
