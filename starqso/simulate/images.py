"""Render five-band SDSS-like cutouts (nanomaggies, 0.396"/px) of a point source.

What varies, per object and per band, and why (numbers: see the constants below, those of
:mod:`starqso.simulate.profiles` (PSF) and :mod:`starqso.simulate.detector` (noise), and the
README section "What the simulator varies, and over what range"):

* PSF: Moffat (beta 1.8-6) or double Gaussian (core + 2-30% wing at 1.8-4x the width), small
  ellipticity; r-band FWHM log-normal around 1.1" within 0.7-3.0" (SDSS's seeing spans about
  0.8-2.6", with a tail of bad fields), other bands scaled by the band-to-band ratios measured
  on real SDSS spectra's fields, each with its own jitter (the five bands are exposed at
  different moments of the drift scan).
* Position: sub-pixel centring plus a catalogue-position error (at most 1 px per axis), band
  misregistration (a fraction of a pixel).
* Photometric calibration: a per-band zero-point offset of a few hundredths of a magnitude.
* Noise: sky noise per band measured on 1,861 real SDSS QSO cutouts, scaled per field and per
  band over 0.6-2.5x nominal; Poisson noise of the source. Per object the noise is either
  white (each band cut from its own frame, as SDSS cutouts are) or correlated (the four
  non-r bands resampled onto the r grid by bilinear interpolation with a random sub-pixel
  phase, as cutout services and co-adds do: the per-pixel sigma drops by up to 2x while the
  flux error in an aperture stays that of the frame). Sky-subtraction residuals (offset +
  gradient, sometimes a bright neighbour's halo).
* Saturation: pixels above the band's saturation level (derived from SDSS's documented bright
  limits, below) are flat-topped and the excess charge bleeds along the column.
* Artefacts: a few % of objects get a cosmic-ray residual or a bad column in one band.
* Neighbours: Poisson-distributed faint stars and galaxies (number counts rising to 23.5 mag),
  sometimes blended; QSO host galaxies at low redshift as a resolved exponential disc.

The same observing model renders extended sources on their own (a Sérsic host with no point
source: :mod:`starqso.simulate.galaxies`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starqso.schema import PIXEL_SCALE_ARCSEC
from starqso.simulate import resources
from starqso.simulate.detector import add_artefact, draw_noise_scale, resample_bilinear, saturate
from starqso.simulate.dust import band_extinction
from starqso.simulate.photometry import magnitudes_to_nanomaggies
from starqso.simulate.profiles import draw_psfs, render_exponential, render_point, render_sersic

# Detected electrons per nanomaggy (gain x counts per nanomaggy), typical SDSS camera values.
ELECTRONS_PER_NANOMAGGY = np.array([170.0, 1000.0, 900.0, 750.0, 150.0])

# Fraction of objects whose u, g, i, z are resampled onto the r grid (correlated noise). The
# real SDSS QSO cutouts are white (lag-1 autocorrelation 0.007-0.020 per band); the Kim &
# Brunner cutouts are resampled (0.24-0.44 in u, g, i, z; 0.05 in r).
CORRELATED_NOISE_FRACTION = 0.3
REFERENCE_BAND = 2  # r: the grid the other bands are resampled onto

# Position: sub-pixel phase (uniform +-0.5 px) plus a catalogue error; at most 1 px per axis.
# Band-to-band registration: per band, normal with REGISTRATION_SIGMA_PX, at most +-0.5 px.
CENTROID_ERROR_SIGMA_PX = 0.2
CENTROID_MAX_OFFSET_PX = 1.0
REGISTRATION_SIGMA_PX = 0.15
REGISTRATION_MAX_PX = 0.5
# Per-band zero-point error (SDSS ubercalibration: ~1% in g, r, i, ~2% in u, z; a few
# hundredths at most): normal, clipped.
ZERO_POINT_SIGMA_MAG = np.array([0.02, 0.01, 0.01, 0.01, 0.02])
ZERO_POINT_MAX_MAG = 0.05

# Saturation level, nanomaggies per pixel, ugriz. SDSS documents its bright limits (PSF
# photometry starts to saturate) as u 12.0, g 14.1, r 14.1, i 13.8, z 12.3 in typical seeing.
# A star at those magnitudes, 1.4" r-band FWHM (other bands by psf_fwhm_band_ratio), centred
# at (0.25, 0.25) px, has a peak pixel of 511, 81, 113, 170, 596 nanomaggies (Moffat beta 3)
# or 627, 99, 139, 210, 733 (double Gaussian); the levels are the means. Cross-check: about
# 55,000 DN of full well x gain (1.6, 3.9, 4.7, 5.1, 4.8 e-/DN) / ELECTRONS_PER_NANOMAGGY gives
# 520, 215, 290, 375, 1760: the same order (full well is reached before the ADC limit).
SATURATION_NANOMAGGIES_PER_PIXEL = np.array([570.0, 90.0, 125.0, 190.0, 665.0])

# Artefacts (per object, one band): a cosmic-ray residual, a bad column.
COSMIC_RAY_FRACTION = 0.03
BAD_COLUMN_FRACTION = 0.02


@dataclass
class Neighbour:
    """A field object in the cutout: position (pixels), ugriz nanomaggies, size (0 = star)."""

    x: float
    y: float
    nanomaggies: np.ndarray
    half_light_radius: float = 0.0
    axis_ratio: float = 1.0
    angle: float = 0.0


def draw_neighbours(rng, size, star_mags, density=1.0, ebv=0.0):
    """Faint field stars and galaxies scattered over the cutout.

    Args:
        rng: ``numpy.random.Generator``.
        size: cutout side in pixels.
        star_mags: real catalogue star magnitudes (N x 5) to borrow star colours from.
        density: the number of neighbours relative to a high-latitude field (1); above 1
            the extra neighbours are stars (a low-latitude field: the galaxies' density
            stays, the stars' grows), and close blends grow in proportion.
        ebv: the field's E(B-V): galaxies lie behind all of it, each star behind a uniform
            fraction of it (stars sit at all distances along the sight line).

    Returns:
        list of :class:`Neighbour`.
    """
    area_arcmin2 = (size * PIXEL_SCALE_ARCSEC / 60.0) ** 2
    # About 6 objects per arcmin^2 to r = 23.5 (SDSS depth), counts rising ~0.35 dex per mag.
    count = rng.poisson(6.0 * area_arcmin2 * density)
    star_probability = 0.3 if density <= 1.0 else 1.0 - 0.7 / density
    # The stars' share of the dust comes from a child stream (spawning does not advance
    # ``rng``): the same field with and without dust then differs only in the dimming.
    dust_rng = rng.spawn(1)[0] if ebv > 0 else None
    centre = (size - 1) / 2.0
    neighbours = []
    for _ in range(count):
        u = rng.random()
        low, high = 10 ** (0.35 * 17.0), 10 ** (0.35 * 23.5)
        r_mag = np.log10(low + u * (high - low)) / 0.35
        if rng.random() < 0.07:
            radius = rng.uniform(2.0, 4.0)  # a close blend
        else:
            radius = rng.uniform(4.0, size / 2.0 * np.sqrt(2))
        angle = rng.uniform(0, 2 * np.pi)
        x = float(np.clip(centre + radius * np.cos(angle), -2, size + 1))
        y = float(np.clip(centre + radius * np.sin(angle), -2, size + 1))
        if rng.random() < star_probability:
            colours = star_mags[rng.integers(len(star_mags))]
            mags = colours - colours[2] + r_mag
            if ebv > 0:
                mags = mags + band_extinction(dust_rng.uniform(0.0, ebv))
            neighbours.append(Neighbour(x, y, magnitudes_to_nanomaggies(mags)))
        else:
            colours = np.array([rng.normal(1.5, 0.4), rng.normal(0.9, 0.3),
                                rng.normal(0.4, 0.15), rng.normal(0.3, 0.15)])
            offsets = np.concatenate([np.cumsum(colours[::-1])[::-1], [0.0]])
            mags = r_mag + offsets - offsets[2]
            if ebv > 0:
                mags = mags + band_extinction(ebv)
            neighbours.append(Neighbour(
                x, y, magnitudes_to_nanomaggies(mags),
                half_light_radius=rng.lognormal(np.log(0.8), 0.5) / PIXEL_SCALE_ARCSEC,
                axis_ratio=rng.uniform(0.3, 1.0), angle=rng.uniform(0, np.pi)))
    return neighbours


def render_cutout(rng, size, point_nanomaggies, host_nanomaggies=None, host_radius_arcsec=1.0,
                  star_mags=None, host_sersic_index=1.0, host_axis_ratio=None, host_angle=None,
                  background=None, neighbour_density=1.0, neighbour_ebv=0.0):
    """A noisy five-band cutout of one object with its surroundings.

    Args:
        rng: ``numpy.random.Generator``.
        size: side in pixels.
        point_nanomaggies: ugriz fluxes of the point source (nanomaggies), shape (5,).
        host_nanomaggies: ugriz fluxes of a resolved host galaxy, or None.
        host_radius_arcsec: the host's half-light radius.
        star_mags: catalogue star magnitudes used for neighbour colours (N x 5), or None for
            no neighbours.
        host_sersic_index: Sérsic n of the host (1: the exponential disc of
            :func:`render_exponential`; see :func:`render_sersic`).
        host_axis_ratio, host_angle: the host's axis ratio and position angle (radians);
            None: drawn here (uniform 0.4-1 and 0-pi). They are drawn in any case and
            only then replaced, so the random stream, and everything else in the cutout, is
            the same whatever is passed.
        background: a real blank-sky cutout to inject the source into
            (:class:`starqso.simulate.injection.Background`, ``(5, size, size)``), or None
            for simulated sky. With one, the PSF takes the field's measured FWHM per band,
            the noise added is the source's own photon noise only, and there are no
            simulated neighbours, sky residuals, artefacts or resampling: the real sky has
            its own.
        neighbour_density, neighbour_ebv: the field's crowding (x a high-latitude field's
            neighbours) and E(B-V) (:func:`draw_neighbours`); 1 and 0: high latitude.

    Returns:
        ``(cube, info)``: float32 array (5, size, size) in nanomaggies, and a dict describing
        the observing conditions: r-band and per-band PSF FWHM (arcsec), r-band and per-band
        sky sigma (nanomaggies per pixel, of the frame before any resampling), the per-band
        noise scale (x nominal), whether the noise is correlated (bands resampled onto r),
        whether any pixel saturated, the per-band zero-point offsets (mag), the artefact
        ("none", "cosmic_ray" or "bad_column"), PSF kind and number of neighbours.
    """
    psfs = draw_psfs(rng)
    if background is not None:
        psfs = background.psfs(psfs)
    centre = (size - 1) / 2.0
    # Sub-pixel centring plus a catalogue-position error, at most 1 px from the centre.
    x0, y0 = centre + np.clip(rng.uniform(-0.5, 0.5, size=2)
                              + rng.normal(0.0, CENTROID_ERROR_SIGMA_PX, size=2),
                              -CENTROID_MAX_OFFSET_PX, CENTROID_MAX_OFFSET_PX)
    neighbours = draw_neighbours(rng, size, star_mags, neighbour_density, neighbour_ebv) if (
        star_mags is not None and background is None) else []
    noise_scale = draw_noise_scale(rng)
    sky_sigma = resources.noise_calibration()["image_sky_sigma"] * noise_scale
    if background is not None:  # the field's measured noise, where it was measured
        measured = np.asarray(background.sky_sigma, np.float64)
        sky_sigma = np.where(np.isfinite(measured) & (measured > 0), measured, sky_sigma)
        noise_scale = sky_sigma / resources.noise_calibration()["image_sky_sigma"]
    # A real background keeps its own pixel grid: no resampling of its bands.
    correlated = bool(rng.random() < CORRELATED_NOISE_FRACTION) and background is None
    zero_point = np.clip(rng.normal(0.0, ZERO_POINT_SIGMA_MAG), -ZERO_POINT_MAX_MAG,
                         ZERO_POINT_MAX_MAG)
    artefact = "none"
    chance = rng.random()
    if chance < COSMIC_RAY_FRACTION:
        artefact = "cosmic_ray"
    elif chance < COSMIC_RAY_FRACTION + BAD_COLUMN_FRACTION:
        artefact = "bad_column"
    if background is not None:
        artefact = "none"  # a real background has its own
    artefact_band = int(rng.integers(5))
    drawn_axis_ratio = rng.uniform(0.4, 1.0)
    drawn_angle = rng.uniform(0, np.pi)
    # Overrides come after the draws: the stream (and so every other draw) stays the same.
    host_axis_ratio = drawn_axis_ratio if host_axis_ratio is None else host_axis_ratio
    host_angle = drawn_angle if host_angle is None else host_angle
    bright_halo = bool(rng.random() < 0.05) and background is None
    extended = host_nanomaggies is not None or any(n.half_light_radius > 0 for n in neighbours)
    halo_direction = rng.uniform(0, 2 * np.pi)

    cube = np.empty((5, size, size), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] - centre
    saturated = False
    band_shift = []
    for band, psf in enumerate(psfs):
        shift_x, shift_y = np.clip(rng.normal(0.0, REGISTRATION_SIGMA_PX, size=2),
                                   -REGISTRATION_MAX_PX, REGISTRATION_MAX_PX)
        # A resampled band's own frame sits at a sub-pixel phase from the r grid; the
        # scene is rendered there and interpolated back (see resample_bilinear).
        phase_x, phase_y = rng.uniform(-0.5, 0.5, size=2)
        resampled = correlated and band != REFERENCE_BAND
        if not resampled:
            phase_x = phase_y = 0.0
        shift_x, shift_y = shift_x + phase_x, shift_y + phase_y
        band_shift.append([float(shift_x), float(shift_y)])
        signal = point_nanomaggies[band] * render_point(psf, size, x0 + shift_x, y0 + shift_y)
        kernel = render_point(psf, size, size // 2, size // 2) if extended else None
        if host_nanomaggies is not None and host_nanomaggies[band] > 0:
            if host_sersic_index == 1:  # the QSO hosts' disc, exactly as before
                host = render_exponential(
                    psf, size, x0 + shift_x, y0 + shift_y,
                    host_radius_arcsec / PIXEL_SCALE_ARCSEC, host_axis_ratio, host_angle, kernel)
            else:
                host = render_sersic(
                    psf, size, x0 + shift_x, y0 + shift_y,
                    host_radius_arcsec / PIXEL_SCALE_ARCSEC, host_sersic_index,
                    host_axis_ratio, host_angle, kernel)
            signal += host_nanomaggies[band] * host
        for neighbour in neighbours:
            if neighbour.half_light_radius > 0:
                signal += neighbour.nanomaggies[band] * render_exponential(
                    psf, size, neighbour.x + phase_x, neighbour.y + phase_y,
                    neighbour.half_light_radius, neighbour.axis_ratio, neighbour.angle, kernel)
            else:
                signal += neighbour.nanomaggies[band] * render_point(
                    psf, size, neighbour.x + phase_x, neighbour.y + phase_y)
        signal *= 10.0 ** (-0.4 * zero_point[band])
        electrons = ELECTRONS_PER_NANOMAGGY[band] * rng.lognormal(0.0, 0.15)
        # A real background already holds the sky's noise: only the source's is added.
        sky_variance = sky_sigma[band] ** 2 if background is None else 0.0
        variance = sky_variance + np.clip(signal, 0.0, None) / electrons
        noise = rng.normal(size=signal.shape) * np.sqrt(variance)
        if background is None:
            # Sky-subtraction residual: an offset and a gradient, occasionally a bright
            # star's halo.
            residual = sky_sigma[band] * (rng.normal(0.0, 0.3)
                                          + rng.normal(0.0, 0.3) * xx / size
                                          + rng.normal(0.0, 0.3) * yy / size)
            if bright_halo:
                along = (xx * np.cos(halo_direction) + yy * np.sin(halo_direction)) / size
                residual += sky_sigma[band] * rng.uniform(1.0, 4.0) * np.exp(along)
            exposed = signal + noise
        else:
            residual, exposed = 0.0, signal + noise + background.image[band]
        # The frame: saturation happens on the detector, before any resampling.
        frame, band_saturated = saturate(exposed,
                                         SATURATION_NANOMAGGIES_PER_PIXEL[band])
        saturated |= band_saturated
        if artefact != "none" and band == artefact_band:
            add_artefact(rng, frame, sky_sigma[band], artefact)
        if resampled:
            frame = resample_bilinear(frame, phase_x, phase_y)
        cube[band] = frame + residual
    info = {
        "psf_fwhm_r": psfs[2].fwhm * PIXEL_SCALE_ARCSEC,
        "psf_fwhm": [psf.fwhm * PIXEL_SCALE_ARCSEC for psf in psfs],
        "sky_sigma_r": float(sky_sigma[2]),
        "sky_sigma": [float(value) for value in sky_sigma],
        "noise_scale": [float(value) for value in noise_scale],
        "correlated_noise": correlated,
        "saturated": saturated,
        "zero_point_offset": [float(value) for value in zero_point],
        "artefact": artefact,
        "sky_halo": bright_halo,
        "centre_offset_px": [float(x0 - centre), float(y0 - centre)],
        "band_shift_px": band_shift,  # each band's source offset from centre_offset_px
        "psf_kind": psfs[0].kind,
        "n_neighbours": len(neighbours),
        "background": -1 if background is None else background.number,
    }
    return cube.astype(np.float32), info
