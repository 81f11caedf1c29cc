"""The point-spread function and the light profiles it blurs, integrated over pixels.

:class:`PSF` (Moffat or double Gaussian, slightly elliptical), :func:`draw_psfs` (one object's
five bands: shared shape, per-band width and jitter), and unit-flux sources rendered on a
cutout's pixel grid by supersampling: a point (:func:`render_point`), an exponential disc
(:func:`render_exponential`) and a Sérsic profile (:func:`render_sersic`), the extended ones
convolved with the PSF by FFT. :func:`starqso.simulate.images.render_cutout` puts them
together into a cutout; its module docstring says what varies and why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from starqso.schema import PIXEL_SCALE_ARCSEC
from starqso.simulate import resources

SUPERSAMPLE = 4
# r-band seeing median. benchmarks/sim_realism.py --real-qso measures the FWHM of the 228
# real SDSS QSO cutouts with r < 19.5 (half-maximum-area estimator) at a median of 1.14" in r
# (u 1.34, g 1.26, i 1.09, z 1.09); the same estimator reads 1.48" on simulated cutouts of
# true median 1.40", so the real true median is about 1.08". 1.4" (the previous value, SDSS's
# survey-wide typical seeing) made simulated PSFs 0.35" too broad; 1.1" matches the real QSOs.
SEEING_MEDIAN_ARCSEC = 1.1
SEEING_RANGE_ARCSEC = (0.7, 3.0)
# Fraction of fields drawn from a broad (log-uniform over SEEING_RANGE_ARCSEC) seeing
# distribution instead of the log-normal: bad nights and excellent ones.
SEEING_BROAD_FRACTION = 0.1

# Sérsic profiles steeper than an exponential (n = 4: the central surface brightness is about
# 2,000x that at the half-light radius and the slope diverges at r = 0) are under-sampled by
# SUPERSAMPLE points per pixel near their centre, which loses flux (10% for n = 4 at
# Re = 0.5 px). Each (HALF, FACTOR) level re-renders the pixels within HALF px of the
# centre's pixel with FACTOR x FACTOR points per subpixel: 5 x 5 pixels at 32 points per
# pixel, then 3 x 3 at 128. An n = 4 or 4.5 profile then holds 99.9% of its flux at
# Re = 0.5 px (the 0.2" floor of the galaxy simulator), wherever its centre falls in a pixel,
# for ~8 ms a band.
SERSIC_REFINE_LEVELS = ((2, 8), (1, 32))


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
    if rng.random() < SEEING_BROAD_FRACTION:
        seeing = np.exp(rng.uniform(*np.log(SEEING_RANGE_ARCSEC)))
    else:
        seeing = np.clip(rng.lognormal(np.log(SEEING_MEDIAN_ARCSEC), 0.25),
                         *SEEING_RANGE_ARCSEC)
    kind = "moffat" if rng.random() < 0.6 else "double_gaussian"
    beta = rng.uniform(1.8, 6.0)
    wing_fraction = rng.uniform(0.02, 0.3)
    wing_scale = rng.uniform(1.8, 4.0)
    ellipticity = rng.uniform(0.0, 0.12)
    angle = rng.uniform(0.0, np.pi)
    psfs = []
    for ratio in ratios:
        fwhm = np.clip(seeing * ratio * rng.lognormal(0.0, 0.06), 0.6,
                       3.6) / PIXEL_SCALE_ARCSEC
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
    return _convolved(galaxy, psf, size, kernel)


def sersic_b(sersic_index):
    """The Sérsic ``b_n``: half the total flux lies within the half-light radius.

    Exact: ``gammaincinv(2n, 0.5)`` (1.678 for n = 1, 7.669 for n = 4).
    """
    from scipy import special  # lazily: the point-source simulator never needs it

    return float(special.gammaincinv(2.0 * sersic_index, 0.5))


def _sersic_surface_brightness(r2, half_light_radius, sersic_index, b):
    # Unit total flux, normalised analytically: L = 2 pi n Re^2 e^b b^(-2n) Gamma(2n). That is
    # the circular integral; _elliptical_radius2 is area-preserving, so it holds for any axis
    # ratio. Flux beyond the cutout is thus lost, as on the sky (no renormalisation on the
    # grid). Computed in logs, which keeps large n from overflowing.
    from scipy import special

    log_total = (np.log(2.0 * np.pi * sersic_index * half_light_radius ** 2) + b
                 - 2.0 * sersic_index * np.log(b) + special.gammaln(2.0 * sersic_index))
    scaled = (np.sqrt(r2) / half_light_radius) ** (1.0 / sersic_index)
    return np.exp(b * (1.0 - scaled) - log_total)


def _sersic_pixels(size, x, y, half_light_radius, sersic_index, axis_ratio, angle):
    """Unconvolved unit-flux Sérsic profile integrated over the pixels of a (size, size) grid."""
    half_light_radius = max(half_light_radius, 0.05)
    b = sersic_b(sersic_index)
    grid_x, grid_y = _subpixel_grid(size)
    r2 = _elliptical_radius2(grid_x - x, grid_y - y, 1.0 - axis_ratio, angle)
    image = _bin(_sersic_surface_brightness(r2, half_light_radius, sersic_index, b), size)
    # The centre, re-rendered on finer grids (see SERSIC_REFINE_LEVELS).
    column, row = int(round(x)), int(round(y))
    for half, factor in SERSIC_REFINE_LEVELS:
        col0, col1 = max(column - half, 0), min(column + half + 1, size)
        row0, row1 = max(row - half, 0), min(row + half + 1, size)
        if col0 >= col1 or row0 >= row1:
            continue  # centre off the cutout
        fine = SUPERSAMPLE * factor
        offsets = (np.arange(fine) + 0.5) / fine - 0.5
        axis_x = (np.arange(col0, col1)[:, None] + offsets[None, :]).ravel()
        axis_y = (np.arange(row0, row1)[:, None] + offsets[None, :]).ravel()
        fine_x, fine_y = np.meshgrid(axis_x, axis_y, indexing="xy")
        r2 = _elliptical_radius2(fine_x - x, fine_y - y, 1.0 - axis_ratio, angle)
        values = _sersic_surface_brightness(r2, half_light_radius, sersic_index, b)
        image[row0:row1, col0:col1] = values.reshape(
            row1 - row0, fine, col1 - col0, fine).mean(axis=(1, 3))
    return image


def render_sersic(psf, size, x, y, half_light_radius, sersic_index, axis_ratio, angle,
                  kernel=None):
    """Unit-flux Sérsic profile (half-light radius in pixels) convolved with ``psf``.

    ``I(r) = I_e exp(-b_n [(r / Re)^(1/n) - 1])`` with ``b_n`` from :func:`sersic_b`, on the
    area-preserving elliptical radius of :class:`PSF` (so ``Re`` is the circularised
    half-light radius, sqrt(major x minor)). The profile is normalised analytically to a total
    flux of one: what falls outside the cutout is missing from it, as on the sky. For
    ``sersic_index == 1`` this is :func:`render_exponential`, bit for bit.

    Args:
        psf: :class:`PSF` of the band.
        size: cutout side in pixels.
        x, y: centre in pixels (pixel centres at integers).
        half_light_radius: circularised half-light radius in pixels (at least 0.05).
        sersic_index: Sérsic n (1: exponential disc, 4: de Vaucouleurs spheroid).
        axis_ratio: minor / major axis.
        angle: position angle of the major axis, radians.
        kernel: ``render_point(psf, size, size // 2, size // 2)`` when the caller has it.

    Returns:
        float64 array (size, size), pixel-integrated flux fractions.

    Example:
        >>> psf = PSF(kind="moffat", fwhm=3.0)
        >>> image = render_sersic(psf, 64, 31.5, 31.5, 3.0, 4.0, 0.8, 0.3)
        >>> bool(abs(image.sum() - 1.0) < 0.05)
        True
    """
    if sersic_index == 1:
        return render_exponential(psf, size, x, y, half_light_radius, axis_ratio, angle, kernel)
    galaxy = _sersic_pixels(size, x, y, half_light_radius, sersic_index, axis_ratio, angle)
    return _convolved(galaxy, psf, size, kernel)


def _convolved(image, psf, size, kernel=None):
    """``image`` convolved with the PSF's pixel-integrated kernel (FFT, zero-padded)."""
    if kernel is None:
        # Centred on a pixel so the convolution shifts nothing.
        kernel = render_point(psf, size, size // 2, size // 2)
    padded = 2 * size
    product = np.fft.rfft2(image, (padded, padded)) * np.fft.rfft2(
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
