"""Render five-band SDSS-like cutouts (nanomaggies, 0.396"/px) of a point source.

What varies, per object and per band, and why (numbers: see the constants below and the
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

import functools
from dataclasses import dataclass

import numpy as np

from starqso.schema import PIXEL_SCALE_ARCSEC
from starqso.simulate import resources
from starqso.simulate.dust import band_extinction
from starqso.simulate.photometry import magnitudes_to_nanomaggies

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
# Detected electrons per nanomaggy (gain x counts per nanomaggy), typical SDSS camera values.
ELECTRONS_PER_NANOMAGGY = np.array([170.0, 1000.0, 900.0, 750.0, 150.0])

# Sky-noise scale relative to the nominal (image_sky_sigma, the median over real cutouts).
# Real SDSS QSO cutouts (real_qso_iqvit_dev.npz, 1,861 objects) have per-cutout sigma / median
# of 0.66-0.75 (1%), 0.75-0.89 (5%), 1.15-1.40 (95%), 1.36-1.64 (99%) depending on the band,
# and the bands' log-sigmas correlate by 0.1-0.6: a field term (log-normal, 0.12) times a band
# term (log-normal, 0.12) reproduces that; a further NOISE_BROAD_FRACTION of fields are drawn
# log-uniform over the whole NOISE_SCALE_RANGE (bright moon, twilight, cirrus), which the
# 1,861 real cutouts do not sample.
NOISE_SCALE_RANGE = (0.6, 2.5)
NOISE_FIELD_LOG_SIGMA = 0.12
NOISE_BAND_LOG_SIGMA = 0.12
NOISE_BROAD_FRACTION = 0.1
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

# Sérsic profiles steeper than an exponential (n = 4: the central surface brightness is about
# 2,000x that at the half-light radius and the slope diverges at r = 0) are under-sampled by
# SUPERSAMPLE points per pixel near their centre, which loses flux (10% for n = 4 at
# Re = 0.5 px). Each (HALF, FACTOR) level re-renders the pixels within HALF px of the
# centre's pixel with FACTOR x FACTOR points per subpixel: 5 x 5 pixels at 32 points per
# pixel, then 3 x 3 at 128. An n = 4 or 4.5 profile then holds 99.9% of its flux at
# Re = 0.5 px (the 0.2" floor of the galaxy simulator), wherever its centre falls in a pixel,
# for ~8 ms a band.
SERSIC_REFINE_LEVELS = ((2, 8), (1, 32))

# Artefacts (per object, one band): a cosmic-ray residual, a bad column.
COSMIC_RAY_FRACTION = 0.03
BAD_COLUMN_FRACTION = 0.02


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


def draw_noise_scale(rng):
    """Per-band sky-noise scale (x nominal) of one field, within NOISE_SCALE_RANGE."""
    if rng.random() < NOISE_BROAD_FRACTION:
        field = np.exp(rng.uniform(*np.log(NOISE_SCALE_RANGE)))
    else:
        field = rng.lognormal(0.0, NOISE_FIELD_LOG_SIGMA)
    return np.clip(field * rng.lognormal(0.0, NOISE_BAND_LOG_SIGMA, size=5),
                   *NOISE_SCALE_RANGE)


def resample_bilinear(image, phase_x, phase_y):
    """Bilinear interpolation of ``image`` at ``(x + phase_x, y + phase_y)``, |phase| <= 0.5.

    This is what resampling a band onto another band's grid does: content at position X ends
    up at X - phase. The kernel's weights sum to one, so fluxes and the flux error in an
    aperture of several pixels are kept, while the per-pixel sigma of white noise drops by
    sqrt(sum of squared weights) (to 0.5 at half a pixel on both axes) and neighbouring
    pixels correlate. Edges are repeated.
    """
    padded = np.pad(image, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    weight_x, weight_y = abs(phase_x), abs(phase_y)
    side_x = padded[1:-1, 2:] if phase_x >= 0 else padded[1:-1, :-2]
    along_x = (1 - weight_x) * centre + weight_x * side_x
    padded = np.pad(along_x, 1, mode="edge")
    side_y = padded[2:, 1:-1] if phase_y >= 0 else padded[:-2, 1:-1]
    return (1 - weight_y) * along_x + weight_y * side_y


def saturate(image, level):
    """Flat-top pixels above ``level`` and bleed their excess along columns (axis 0).

    Charge above full well spills into the pixels above and below in the same column (SDSS
    drift-scan CCDs bleed along columns), filling each to ``level`` in turn; the column's
    total flux is kept unless the trail runs off the cutout.

    Returns:
        ``(image, saturated)``: the new image and whether any pixel saturated.
    """
    over = image > level
    if not over.any():
        return image, False
    image = image.copy()
    rows = image.shape[0]
    for column in np.flatnonzero(over.any(axis=0)):
        values = image[:, column]
        hit = np.flatnonzero(values > level)
        excess = float(np.sum(values[hit] - level))
        values[hit] = level
        low, high = hit.min() - 1, hit.max() + 1
        up = True
        while excess > 0 and (low >= 0 or high < rows):
            position = high if (up and high < rows) or low < 0 else low
            room = max(level - values[position], 0.0)
            fill = min(room, excess)
            values[position] += fill
            excess -= fill
            if position == high:
                high += 1
            else:
                low -= 1
            up = not up
        image[:, column] = values
    return image, True


def add_artefact(rng, image, sigma, kind):
    """A cosmic-ray residual (a short, sharp track) or a bad column, in place."""
    size = image.shape[0]
    if kind == "cosmic_ray":
        length = rng.integers(1, 6)
        angle = rng.uniform(0, np.pi)
        x, y = rng.uniform(0, size - 1, size=2)
        amplitude = sigma * rng.uniform(10.0, 100.0)
        for step in range(length):
            column = int(np.clip(round(x + step * np.cos(angle)), 0, size - 1))
            row = int(np.clip(round(y + step * np.sin(angle)), 0, size - 1))
            image[row, column] += amplitude * rng.uniform(0.5, 1.0)
    else:
        column = rng.integers(0, size)
        if rng.random() < 0.5:  # dead or masked-and-zeroed column
            image[:, column] = 0.0
        else:  # hot column: an offset of several sigma
            image[:, column] += sigma * rng.uniform(3.0, 20.0)


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
