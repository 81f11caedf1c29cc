"""Render five-band SDSS-like cutouts (nanomaggies, 0.396"/px) of a point source.

What varies, per object and per band, and why:

* PSF: Moffat (beta 2-5) or double Gaussian (core + 5-20% wing at 2-3x the width), small
  ellipticity; r-band FWHM log-normal around 1.4" within 0.75-2.8" (SDSS's seeing spans about
  0.8-2.6"), other bands scaled by the band-to-band ratios measured on real SDSS fields, each
  with its own jitter (the five bands are exposed at different moments of the drift scan).
* Position: sub-pixel centring, a small catalogue-position error, band misregistration.
* Noise: sky noise per band measured on real SDSS cutouts, varied with conditions; Poisson
  noise of the source; sky-subtraction residuals (offset + gradient, sometimes a bright
  neighbour's halo).
* Neighbours: Poisson-distributed faint stars and galaxies (number counts rising to 23.5 mag),
  sometimes blended; QSO host galaxies at low redshift as a resolved exponential disc.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from starqso.schema import PIXEL_SCALE_ARCSEC
from starqso.simulate import resources
from starqso.simulate.photometry import magnitudes_to_nanomaggies

SUPERSAMPLE = 4
SEEING_MEDIAN_ARCSEC = 1.4
SEEING_RANGE_ARCSEC = (0.75, 2.8)
# Detected electrons per nanomaggy (gain x counts per nanomaggy), typical SDSS camera values.
ELECTRONS_PER_NANOMAGGY = np.array([170.0, 1000.0, 900.0, 750.0, 150.0])


@dataclass
class PSF:
    """One band's point-spread function.

    Attributes:
        kind: "moffat" or "double_gaussian".
        fwhm: full width at half maximum in pixels (of the Moffat or the Gaussian core).
        beta: Moffat power index.
        wing_fraction: flux fraction in the wide Gaussian (double Gaussian only).
        wing_scale: wide-to-core width ratio (double Gaussian only).
        ellipticity: 1 - axis ratio.
        angle: position angle of the major axis, radians.
    """

    kind: str
    fwhm: float
    beta: float = 3.0
    wing_fraction: float = 0.1
    wing_scale: float = 2.5
    ellipticity: float = 0.0
    angle: float = 0.0

    def __call__(self, dx, dy):
        """Surface brightness (per pixel^2) of a unit-flux source at offsets (dx, dy) pixels."""
        r2 = _elliptical_radius2(dx, dy, self.ellipticity, self.angle)
        if self.kind == "moffat":
            alpha = self.fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))
            return (self.beta - 1.0) / (np.pi * alpha ** 2) * (1.0 + r2 / alpha ** 2) ** (
                -self.beta)
        sigma = self.fwhm / 2.3548
        wide = sigma * self.wing_scale
        return ((1.0 - self.wing_fraction) * np.exp(-0.5 * r2 / sigma ** 2) / (
            2 * np.pi * sigma ** 2) + self.wing_fraction * np.exp(-0.5 * r2 / wide ** 2) / (
            2 * np.pi * wide ** 2))


def _elliptical_radius2(dx, dy, ellipticity, angle):
    # Area-preserving stretch, so a profile normalised in r stays normalised.
    cos, sin = np.cos(angle), np.sin(angle)
    major = dx * cos + dy * sin
    minor = -dx * sin + dy * cos
    axis_ratio = 1.0 - ellipticity
    return major ** 2 * axis_ratio + minor ** 2 / axis_ratio


def draw_psfs(rng):
    """PSFs for the five bands of one object (shared shape, per-band width and jitter)."""
    ratios = resources.noise_calibration()["psf_fwhm_band_ratio"]
    seeing = np.clip(rng.lognormal(np.log(SEEING_MEDIAN_ARCSEC), 0.25), *SEEING_RANGE_ARCSEC)
    kind = "moffat" if rng.random() < 0.6 else "double_gaussian"
    beta = rng.uniform(2.0, 5.0)
    wing_fraction = rng.uniform(0.05, 0.2)
    wing_scale = rng.uniform(2.0, 3.0)
    ellipticity = rng.uniform(0.0, 0.12)
    angle = rng.uniform(0.0, np.pi)
    psfs = []
    for ratio in ratios:
        fwhm = seeing * ratio * rng.lognormal(0.0, 0.06) / PIXEL_SCALE_ARCSEC
        psfs.append(PSF(kind=kind, fwhm=float(fwhm), beta=beta, wing_fraction=wing_fraction,
                        wing_scale=wing_scale,
                        ellipticity=float(np.clip(ellipticity + rng.normal(0, 0.02), 0, 0.2)),
                        angle=angle + rng.normal(0.0, 0.2)))
    return psfs


@functools.lru_cache(maxsize=4)
def _subpixel_grid(size):
    # Coordinates of SUPERSAMPLE x SUPERSAMPLE points inside each pixel, pixel centres at
    # integers 0..size-1, shape (size*S, size*S).
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    axis = (np.arange(size)[:, None] + offsets[None, :]).ravel()
    return np.meshgrid(axis, axis, indexing="xy")


def _bin(image, size):
    return image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render_point(psf, size, x, y):
    """Unit-flux point source at pixel position (x, y) integrated over pixels."""
    grid_x, grid_y = _subpixel_grid(size)
    return _bin(psf(grid_x - x, grid_y - y), size)


def render_exponential(psf, size, x, y, half_light_radius, axis_ratio, angle, kernel=None):
    """Unit-flux exponential disc (half-light radius in pixels) convolved with ``psf``.

    ``kernel`` is ``render_point(psf, size, size // 2, size // 2)`` when the caller has it.
    """
    grid_x, grid_y = _subpixel_grid(size)
    r2 = _elliptical_radius2(grid_x - x, grid_y - y, 1.0 - axis_ratio, angle)
    scale = max(half_light_radius, 0.05) / 1.678
    galaxy = _bin(np.exp(-np.sqrt(r2) / scale) / (2 * np.pi * scale ** 2), size)
    if kernel is None:
        # Centred on a pixel so the convolution shifts nothing.
        kernel = render_point(psf, size, size // 2, size // 2)
    padded = 2 * size
    product = np.fft.rfft2(galaxy, (padded, padded)) * np.fft.rfft2(
        _centred_kernel(kernel, padded))
    return np.fft.irfft2(product, (padded, padded))[:size, :size]


def _centred_kernel(kernel, padded):
    # Place the kernel's centre pixel at (0, 0) with wrap-around, for FFT convolution.
    size = kernel.shape[0]
    half = size // 2
    out = np.zeros((padded, padded))
    out[:size - half, :size - half] = kernel[half:, half:]
    out[:size - half, -half:] = kernel[half:, :half]
    out[-half:, :size - half] = kernel[:half, half:]
    out[-half:, -half:] = kernel[:half, :half]
    return out


@dataclass
class Neighbour:
    """A field object in the cutout: position (pixels), ugriz nanomaggies, size (0 = star)."""

    x: float
    y: float
    nanomaggies: np.ndarray
    half_light_radius: float = 0.0
    axis_ratio: float = 1.0
    angle: float = 0.0


def draw_neighbours(rng, size, star_mags):
    """Faint field stars and galaxies scattered over the cutout.

    Args:
        rng: ``numpy.random.Generator``.
        size: cutout side in pixels.
        star_mags: real catalogue star magnitudes (N x 5) to borrow star colours from.

    Returns:
        list of :class:`Neighbour`.
    """
    area_arcmin2 = (size * PIXEL_SCALE_ARCSEC / 60.0) ** 2
    # About 6 objects per arcmin^2 to r = 23.5 (SDSS depth), counts rising ~0.35 dex per mag.
    count = rng.poisson(6.0 * area_arcmin2)
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
        if rng.random() < 0.3:
            colours = star_mags[rng.integers(len(star_mags))]
            mags = colours - colours[2] + r_mag
            neighbours.append(Neighbour(x, y, magnitudes_to_nanomaggies(mags)))
        else:
            colours = np.array([rng.normal(1.5, 0.4), rng.normal(0.9, 0.3),
                                rng.normal(0.4, 0.15), rng.normal(0.3, 0.15)])
            offsets = np.concatenate([np.cumsum(colours[::-1])[::-1], [0.0]])
            mags = r_mag + offsets - offsets[2]
            neighbours.append(Neighbour(
                x, y, magnitudes_to_nanomaggies(mags),
                half_light_radius=rng.lognormal(np.log(0.8), 0.5) / PIXEL_SCALE_ARCSEC,
                axis_ratio=rng.uniform(0.3, 1.0), angle=rng.uniform(0, np.pi)))
    return neighbours


def render_cutout(rng, size, point_nanomaggies, host_nanomaggies=None, host_radius_arcsec=1.0,
                  star_mags=None):
    """A noisy five-band cutout of one object with its surroundings.

    Args:
        rng: ``numpy.random.Generator``.
        size: side in pixels.
        point_nanomaggies: ugriz fluxes of the point source (nanomaggies), shape (5,).
        host_nanomaggies: ugriz fluxes of a resolved host galaxy, or None.
        host_radius_arcsec: the host's half-light radius.
        star_mags: catalogue star magnitudes used for neighbour colours (N x 5), or None for
            no neighbours.

    Returns:
        ``(cube, info)``: float32 array (5, size, size) in nanomaggies, and a dict describing
        the observing conditions (r-band FWHM in arcsec, r-band sky sigma, PSF kind,
        number of neighbours).
    """
    psfs = draw_psfs(rng)
    centre = (size - 1) / 2.0
    # Sub-pixel centring plus a catalogue-position error of ~0.06".
    x0 = centre + rng.uniform(-0.5, 0.5) + rng.normal(0.0, 0.15)
    y0 = centre + rng.uniform(-0.5, 0.5) + rng.normal(0.0, 0.15)
    neighbours = draw_neighbours(rng, size, star_mags) if star_mags is not None else []
    sky_sigma = resources.noise_calibration()["image_sky_sigma"] * rng.lognormal(0.0, 0.25)
    host_axis_ratio = rng.uniform(0.4, 1.0)
    host_angle = rng.uniform(0, np.pi)
    bright_halo = rng.random() < 0.05
    extended = host_nanomaggies is not None or any(n.half_light_radius > 0 for n in neighbours)
    halo_direction = rng.uniform(0, 2 * np.pi)

    cube = np.empty((5, size, size), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] - centre
    for band, psf in enumerate(psfs):
        shift_x, shift_y = rng.normal(0.0, 0.1, size=2)  # band-to-band registration
        signal = point_nanomaggies[band] * render_point(psf, size, x0 + shift_x, y0 + shift_y)
        kernel = render_point(psf, size, size // 2, size // 2) if extended else None
        if host_nanomaggies is not None and host_nanomaggies[band] > 0:
            signal += host_nanomaggies[band] * render_exponential(
                psf, size, x0 + shift_x, y0 + shift_y, host_radius_arcsec / PIXEL_SCALE_ARCSEC,
                host_axis_ratio, host_angle, kernel)
        for neighbour in neighbours:
            if neighbour.half_light_radius > 0:
                signal += neighbour.nanomaggies[band] * render_exponential(
                    psf, size, neighbour.x, neighbour.y, neighbour.half_light_radius,
                    neighbour.axis_ratio, neighbour.angle, kernel)
            else:
                signal += neighbour.nanomaggies[band] * render_point(psf, size, neighbour.x,
                                                                     neighbour.y)
        electrons = ELECTRONS_PER_NANOMAGGY[band] * rng.lognormal(0.0, 0.15)
        variance = sky_sigma[band] ** 2 + np.clip(signal, 0.0, None) / electrons
        noise = rng.normal(size=signal.shape) * np.sqrt(variance)
        # Sky-subtraction residual: an offset and a gradient, occasionally a bright star's halo.
        residual = sky_sigma[band] * (rng.normal(0.0, 0.3) + rng.normal(0.0, 0.3) * xx / size
                                      + rng.normal(0.0, 0.3) * yy / size)
        if bright_halo:
            along = (xx * np.cos(halo_direction) + yy * np.sin(halo_direction)) / size
            residual += sky_sigma[band] * rng.uniform(1.0, 4.0) * np.exp(along)
        cube[band] = signal + noise + residual
    info = {
        "psf_fwhm_r": psfs[2].fwhm * PIXEL_SCALE_ARCSEC,
        "sky_sigma_r": float(sky_sigma[2]),
        "psf_kind": psfs[0].kind,
        "n_neighbours": len(neighbours),
    }
    return cube.astype(np.float32), info
