"""Noise-free star, QSO and galaxy spectra whose synthetic ugriz match real SDSS catalogue rows.

Every simulated object starts from a real SDSS catalogue row (its class, magnitudes and, for
QSOs, redshift). The spectral shape comes from real data:

* stars: one of the 8 library spectra (real MILES/STELIB stars, stacked SDSS/BOSS and MaStar
  templates) nearest to the row in colour, picked at random;
* QSOs: a redrock archetype (weighted by how many DR12Q quasars it represents, so about one
  in ten is a BAL), redshifted, with redshift-dependent Lyman-alpha forest and Lyman-limit
  absorption, SMC-like dust in the host, and host-galaxy light at low redshift.
* high-redshift QSOs (:func:`high_z_qso_spectrum`, z 2.7-5): the same archetypes with the
  Madau (1995) mean IGM transmission (Lyman alpha to delta forest and the Lyman-limit
  continuum of the intervening systems), scaled to an r magnitude only: their colours are
  the model's, not a catalogue row's.
* galaxies (:func:`galaxy_spectrum`): the non-negative mix of the five kcorrect templates
  (Blanton & Roweis 2007), redshifted to the row's redshift, whose synthetic ugriz fit the
  row best (as kcorrect fits SDSS galaxies), with a small random change of the mix so that
  repeated draws of a row differ in their lines.

A smooth correction (piecewise linear in log wavelength between the filters' effective
wavelengths) then brings the synthetic magnitudes onto the row's, so the simulated population
has the real catalogue's colours and magnitudes by construction while keeping each
template's lines. Spectra are in 1e-17 erg/s/cm^2/A on the common grid
(2999-11002 A, delta log10 lambda = 1.0566e-4).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from starqso.preprocessing.spectra import resample_spectrum
from starqso.simulate import resources
from starqso.simulate.photometry import Photometer, effective_wavelengths

LYMAN_ALPHA = 1215.67
LYMAN_LIMIT = 911.75
# Mean redshift of the DR12Q quasars behind the archetypes: their forest is averaged there.
ARCHETYPE_FOREST_REDSHIFT = 2.5
MAX_COLOUR_CORRECTION_MAG = 1.5
NEAREST_STARS = 8


@dataclass
class SpectrumModel:
    """A noise-free spectrum and what went into it.

    Attributes:
        flux: f_lambda (1e-17 erg/s/cm^2/A) on the common grid; the total light.
        point_flux: the part that is a point source (all of it for stars; the nucleus for QSOs).
        template: id of the library spectrum or archetype used.
        host_fraction: fraction of the r-band light from the host galaxy (0 for stars).
        ebv: rest-frame E(B-V) of the QSO's own dust (0 for stars).
    """

    flux: np.ndarray
    point_flux: np.ndarray
    template: str
    host_fraction: float = 0.0
    ebv: float = 0.0


@functools.lru_cache(maxsize=1)
def common_grid():
    """The common wavelength grid of the package data (float64, Angstrom)."""
    return resources.star_library()["wave"]


@functools.lru_cache(maxsize=1)
def photometer():
    """A :class:`Photometer` on the common grid."""
    return Photometer(common_grid())


def smc_extinction(wavelength_angstrom):
    """A_lambda / E(B-V) of SMC-like dust (Prevot et al. 1984 power-law fit), rest frame."""
    microns = np.asarray(wavelength_angstrom) / 1e4
    return 1.39 * microns ** -1.2


def lyman_alpha_optical_depth(absorber_redshift):
    """Mean Lyman-alpha forest effective optical depth (Faucher-Giguere et al. 2008)."""
    return 0.0018 * (1.0 + np.clip(absorber_redshift, 0.0, None)) ** 3.92


def igm_transmission(rest_wave, redshift, rng):
    """Transmission relative to the archetypes' built-in (z ~ 2.5) forest.

    The archetypes already carry the DR12Q-averaged forest; a QSO at lower redshift sees less
    absorption and one at higher redshift more. Sightlines vary (a log-normal scale on the
    optical depth, a forest texture of unresolved lines) and some hit a Lyman-limit system.
    """
    transmission = np.ones_like(rest_wave)
    forest = rest_wave < LYMAN_ALPHA
    observed = rest_wave[forest] * (1.0 + redshift)
    absorber = observed / LYMAN_ALPHA - 1.0
    reference = rest_wave[forest] * (1.0 + ARCHETYPE_FOREST_REDSHIFT) / LYMAN_ALPHA - 1.0
    scale = rng.lognormal(0.0, 0.25)
    tau = scale * lyman_alpha_optical_depth(absorber) - lyman_alpha_optical_depth(reference)
    # Unresolved forest lines: gamma-distributed depth fluctuations, a few pixels wide.
    texture = rng.gamma(2.0, 0.5, size=observed.size)
    texture = np.convolve(texture, np.ones(3) / 3.0, mode="same")
    tau = tau + lyman_alpha_optical_depth(absorber) * (texture - 1.0)
    transmission[forest] = np.exp(-tau)
    below_limit = rest_wave < LYMAN_LIMIT
    tau_limit = rng.exponential(2.0)
    if rng.random() < min(0.1 * redshift, 0.6):
        # A Lyman-limit system between us and the QSO blocks everything blueward of its edge.
        system_redshift = rng.uniform(0.0, redshift)
        below_limit = rest_wave * (1.0 + redshift) < LYMAN_LIMIT * (1.0 + system_redshift)
        tau_limit = rng.uniform(2.0, 8.0)
    transmission[below_limit] *= np.exp(-tau_limit)
    return transmission


# Madau (1995, ApJ 441, 18) Lyman-series line-blanketing coefficients: tau_j = A_j
# (lambda_obs / lambda_j)^3.46 blueward of each line (Lyman alpha, beta, gamma, delta).
MADAU_SERIES = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.54, 1.2e-3), (949.74, 9.3e-4))
# Sightline-to-sightline scatter of the forest and Lyman-limit optical depths (log-normal).
IGM_SIGHTLINE_LOG_SIGMA = 0.25
# The archetypes' own forest is deep (median flux at rest 1100 A is 0.6x that at 1300-1400 A,
# where a lambda^-1.5 continuum would be 1.36x): for the high-z path it is treated as the Madau
# mean at this redshift, and the Lyman-limit continuum optical depth is scaled by
# HIGH_Z_LYMAN_LIMIT_SCALE. Both were chosen on a grid (reference z 2.5-5.5, scale 0.25-1)
# against the median g-r and r-i of the 1,861 real SDSS QSOs at z 2.75-5 of
# real_qso_iqvit_dev.npz (catalogue magnitudes). With the sightline scatter, 1,200 draws give
# median g-r within 0.01-0.22 mag and r-i within 0.07 of the real ones in z bins 2.7-4.5; at
# z 4.5-5 g-r is 0.9 mag redder (the real g there is near SDSS's detection limit).
HIGH_Z_FOREST_REFERENCE_REDSHIFT = 3.8
HIGH_Z_LYMAN_LIMIT_SCALE = 0.5


def madau_series_optical_depth(rest_wave, redshift):
    """Mean Lyman alpha-delta forest optical depth (Madau 1995) seen by a QSO at ``redshift``."""
    observed = np.asarray(rest_wave, dtype=np.float64) * (1.0 + redshift)
    tau = np.zeros_like(observed)
    for line, coefficient in MADAU_SERIES:
        blue = rest_wave < line
        tau[blue] += coefficient * (observed[blue] / line) ** 3.46
    return tau


def madau_continuum_optical_depth(rest_wave, redshift):
    """Mean photoelectric optical depth of intervening Lyman-limit systems (Madau 1995, the
    usual analytic approximation of his eq. 16), zero redward of the QSO's Lyman limit."""
    rest_wave = np.asarray(rest_wave, dtype=np.float64)
    x_c = rest_wave * (1.0 + redshift) / LYMAN_LIMIT
    x_em = 1.0 + redshift
    tau = (0.25 * x_c ** 3 * (x_em ** 0.46 - x_c ** 0.46)
           + 9.4 * x_c ** 1.5 * (x_em ** 0.18 - x_c ** 0.18)
           - 0.7 * x_c ** 3 * (x_c ** -1.32 - x_em ** -1.32)
           - 0.023 * (x_em ** 1.68 - x_c ** 1.68))
    return np.where(rest_wave < LYMAN_LIMIT, np.clip(tau, 0.0, None), 0.0)


def high_z_igm_transmission(rest_wave, redshift, rng):
    """IGM transmission for an archetype at ``redshift`` (Madau 1995 mean, varied per sightline).

    Redward of the Lyman limit the archetypes carry their own (deep) forest: the transmission
    applied is the ratio of the Madau mean at ``redshift`` (scaled by a log-normal sightline
    factor) to that at HIGH_Z_FOREST_REFERENCE_REDSHIFT, with unresolved-line
    texture. Blueward of it (where the archetypes carry no usable flux) the caller substitutes
    a continuum and this returns the full forest x Lyman-limit-continuum transmission.
    """
    scale = rng.lognormal(0.0, IGM_SIGHTLINE_LOG_SIGMA)
    tau = scale * madau_series_optical_depth(rest_wave, redshift)
    above_limit = rest_wave >= LYMAN_LIMIT
    tau[above_limit] -= madau_series_optical_depth(rest_wave[above_limit],
                                                   HIGH_Z_FOREST_REFERENCE_REDSHIFT)
    forest = rest_wave < LYMAN_ALPHA
    texture = rng.gamma(2.0, 0.5, size=int(forest.sum()))
    texture = np.convolve(texture, np.ones(3) / 3.0, mode="same")
    tau[forest] += scale * madau_series_optical_depth(rest_wave[forest], redshift) * (
        texture - 1.0) * 0.5
    tau += HIGH_Z_LYMAN_LIMIT_SCALE * rng.lognormal(
        0.0, IGM_SIGHTLINE_LOG_SIGMA) * madau_continuum_optical_depth(rest_wave, redshift)
    return np.exp(-tau)


def match_magnitudes(flux, target_mags, components=(), iterations=4):
    """Scale ``flux`` by a smooth curve so its synthetic ugriz equal ``target_mags``.

    Args:
        flux: f_lambda on the common grid.
        target_mags: ugriz AB magnitudes to reach, shape (5,).
        components: other arrays (parts of ``flux``) to multiply by the same curve.
        iterations: fixed-point iterations (the correction is not constant inside a band).

    Returns:
        ``(flux, components)`` corrected.
    """
    log_wave = np.log(common_grid())
    log_band = np.log(effective_wavelengths())
    target_mags = np.asarray(target_mags, dtype=np.float64)
    # Grey scaling first (templates are normalised, not calibrated), so that only the colour
    # change is limited by MAX_COLOUR_CORRECTION_MAG.
    grey = 10.0 ** (-0.4 * (target_mags[2] - photometer().magnitudes(flux)[2]))
    flux = flux * grey
    components = tuple(component * grey for component in components)
    total = np.zeros(5)
    for _ in range(iterations):
        delta = np.nan_to_num(target_mags - photometer().magnitudes(flux), nan=0.0)
        step = np.clip(total + delta, -MAX_COLOUR_CORRECTION_MAG,
                       MAX_COLOUR_CORRECTION_MAG) - total
        total += step
        factor = 10.0 ** (-0.4 * np.interp(log_wave, log_band, step))
        flux = flux * factor
        components = tuple(component * factor for component in components)
    return flux, components


@functools.lru_cache(maxsize=1)
def _star_colours():
    return resources.star_library()["colours"]


def star_spectrum(target_mags, rng):
    """A star matching ``target_mags``: a random one of the nearest library spectra in colour.

    Args:
        target_mags: ugriz AB magnitudes, shape (5,).
        rng: ``numpy.random.Generator``.

    Returns:
        :class:`SpectrumModel`.
    """
    library = resources.star_library()
    colours = np.asarray(target_mags[:-1]) - np.asarray(target_mags[1:])
    weights = np.array([0.5, 1.0, 1.0, 1.0])  # catalogue u is the noisiest
    distance = np.sqrt((((_star_colours() - colours) * weights) ** 2).sum(axis=1))
    nearest = np.argpartition(distance, NEAREST_STARS)[:NEAREST_STARS]
    chance = 1.0 / (distance[nearest] + 0.05)
    pick = nearest[rng.choice(NEAREST_STARS, p=chance / chance.sum())]
    flux = library["flux"][pick].astype(np.float64)
    flux, _ = match_magnitudes(flux, target_mags)
    return SpectrumModel(flux=flux, point_flux=flux, template=str(library["id"][pick]))


#: Relative weights of the bands in a galaxy's template fit: 1 / (fractional flux error);
#: catalogue u is the noisiest.
GALAXY_FIT_ERRORS = np.array([0.1, 0.03, 0.03, 0.03, 0.05])
#: Log-normal scatter of each template's share of a galaxy's mix between draws.
GALAXY_MIX_SCATTER = 0.1


def galaxy_templates_at(redshift):
    """The five galaxy templates seen at ``redshift`` on the common grid: (5, N) f_lambda,
    each scaled to 1 nanomaggy in r."""
    templates = resources.galaxy_templates()
    observed = np.array([np.interp(common_grid(), templates["wave"] * (1.0 + redshift), flux)
                         for flux in templates["flux"]])
    return observed / photometer().nanomaggies(observed)[:, 2:3]


def galaxy_mix(target_mags, redshift):
    """The non-negative mix of the galaxy templates at ``redshift`` whose synthetic ugriz fit
    ``target_mags`` best (weighted by :data:`GALAXY_FIT_ERRORS`), as kcorrect fits SDSS
    galaxies.

    Args:
        target_mags: ugriz AB magnitudes, shape (5,).
        redshift: the galaxy's redshift.

    Returns:
        ``(mix, templates)``: (5,) non-negative weights and :func:`galaxy_templates_at`'s
        (5, N) spectra; ``mix @ templates`` is the fitted spectrum.
    """
    from scipy.optimize import nnls

    templates = galaxy_templates_at(redshift)
    bands = photometer().nanomaggies(templates).T  # (5 bands, 5 templates), r = 1
    target = 10.0 ** (-0.4 * (np.asarray(target_mags, np.float64) - 22.5))
    weight = 1.0 / (target * GALAXY_FIT_ERRORS)
    # Positive fluxes and non-negative templates: the fit is never all zero.
    mix, _ = nnls(bands * weight[:, None], target * weight, maxiter=500)
    return mix, templates


def galaxy_spectrum(target_mags, redshift, rng):
    """A galaxy at ``redshift`` matching ``target_mags``: :func:`galaxy_mix`, each share
    scattered by :data:`GALAXY_MIX_SCATTER`, then :func:`match_magnitudes`.

    Args:
        target_mags: ugriz AB magnitudes of the galaxy, shape (5,).
        redshift: the galaxy's redshift (> 0).
        rng: ``numpy.random.Generator``.

    Returns:
        :class:`SpectrumModel` with no point source (``point_flux`` zero, ``host_fraction``
        1) and ``template`` naming the mix, e.g. ``"kcorrect:0.00,0.61,0.00,0.39,0.00"``
        (each template's share of the r-band light).

    Example:
        >>> import numpy as np
        >>> mags = np.array([19.8, 18.2, 17.4, 17.0, 16.7])
        >>> model = galaxy_spectrum(mags, 0.1, np.random.default_rng(0))
        >>> bool(np.allclose(photometer().magnitudes(model.flux), mags, atol=0.01))
        True
    """
    mix, templates = galaxy_mix(target_mags, redshift)
    mix = mix * rng.lognormal(0.0, GALAXY_MIX_SCATTER, len(mix))
    flux, _ = match_magnitudes(mix @ templates, target_mags)
    shares = mix / mix.sum()
    return SpectrumModel(flux=flux, point_flux=np.zeros_like(flux),
                         template="kcorrect:" + ",".join(f"{share:.2f}" for share in shares),
                         host_fraction=1.0)


@functools.lru_cache(maxsize=1)
def _archetype_weights():
    responsibility = resources.qso_archetypes()["responsibility"].astype(np.float64)
    return responsibility / responsibility.sum()


def qso_spectrum(target_mags, redshift, rng):
    """A QSO at ``redshift`` matching ``target_mags``.

    Args:
        target_mags: ugriz AB magnitudes of the whole object (nucleus + host), shape (5,).
        redshift: the QSO's redshift.
        rng: ``numpy.random.Generator``.

    Returns:
        :class:`SpectrumModel` whose ``point_flux`` is the nucleus alone.
    """
    archetypes = resources.qso_archetypes()
    pick = rng.choice(len(_archetype_weights()), p=_archetype_weights())
    rest_wave = archetypes["wave_rest"]
    rest_flux = archetypes["flux_rest"][pick].astype(np.float64)
    rest_flux = rest_flux * igm_transmission(rest_wave, redshift, rng)
    # Dust in the QSO host: mostly little, a tail of red quasars.
    ebv = min(rng.exponential(0.15) if rng.random() < 0.1 else rng.exponential(0.02), 0.6)
    rest_flux = rest_flux * 10.0 ** (-0.4 * ebv * smc_extinction(rest_wave))
    grid = common_grid()
    nucleus = resample_spectrum(rest_wave * (1.0 + redshift), rest_flux,
                                target_wavelength=grid).flux.astype(np.float64)
    # A residual floor (0.1% of the median) beyond the Lyman limit: a black u band has no
    # magnitude, and real photometry of high-z QSOs always measures some (noisy) u flux.
    nucleus = np.maximum(nucleus, 1e-3 * np.median(nucleus[nucleus > 0]))

    host = np.zeros_like(nucleus)
    host_fraction = 0.0
    if redshift < 1.0 and rng.random() < 0.8:
        host_sed = resources.host_galaxy()
        young = rng.uniform(0.0, 0.5)
        sed = (1.0 - young) * host_sed["old"] + young * host_sed["young"]
        host = resample_spectrum(host_sed["wave_rest"] * (1.0 + redshift), sed,
                                 target_wavelength=grid).flux.astype(np.float64)
        # Host-to-nucleus ratio near rest 5100 A falls with redshift (the nuclei selected at
        # higher z are more luminous); scatter covers host-dominated Seyferts at low z.
        ratio = rng.lognormal(np.log(0.6) - 2.5 * redshift, 0.7)
        r_band = photometer().nanomaggies(np.stack([nucleus, host]))[:, 2]
        if r_band[1] > 0 and r_band[0] > 0:
            host *= ratio * r_band[0] / r_band[1]
            host_fraction = float(ratio / (1.0 + ratio))
    flux, (nucleus, host) = match_magnitudes(nucleus + host, target_mags, (nucleus, host))
    return SpectrumModel(flux=flux, point_flux=nucleus, template=str(archetypes["id"][pick]),
                         host_fraction=host_fraction, ebv=float(ebv))


def high_z_qso_spectrum(r_mag, redshift, rng):
    """A QSO at ``redshift`` (2.7-5) with the model's own colours, scaled to ``r_mag``.

    A redrock archetype (as in :func:`qso_spectrum`) below the Lyman limit continued by its
    median flux at 912-960 A rest, times :func:`high_z_igm_transmission`, SMC-like dust; no
    host galaxy (negligible at these redshifts). Only the r magnitude is imposed.

    Returns:
        :class:`SpectrumModel`.
    """
    archetypes = resources.qso_archetypes()
    pick = rng.choice(len(_archetype_weights()), p=_archetype_weights())
    rest_wave = archetypes["wave_rest"]
    rest_flux = archetypes["flux_rest"][pick].astype(np.float64)
    edge = (rest_wave >= LYMAN_LIMIT) & (rest_wave < 960.0)
    rest_flux = np.where(rest_wave < LYMAN_LIMIT, np.median(rest_flux[edge]), rest_flux)
    rest_flux = rest_flux * high_z_igm_transmission(rest_wave, redshift, rng)
    ebv = min(rng.exponential(0.15) if rng.random() < 0.1 else rng.exponential(0.02), 0.6)
    rest_flux = rest_flux * 10.0 ** (-0.4 * ebv * smc_extinction(rest_wave))
    nucleus = resample_spectrum(rest_wave * (1.0 + redshift), rest_flux,
                                target_wavelength=common_grid()).flux.astype(np.float64)
    nucleus = np.maximum(nucleus, 1e-4 * np.median(nucleus[nucleus > 0]))
    nucleus = nucleus * 10.0 ** (-0.4 * (r_mag - photometer().magnitudes(nucleus)[2]))
    return SpectrumModel(flux=nucleus, point_flux=nucleus,
                         template=str(archetypes["id"][pick]), ebv=float(ebv))
