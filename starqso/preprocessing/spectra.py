"""Put any spectrum on the encoder grid: flux-conserving, ivar propagated, bad pixels masked.

The encoder grid is 3700 log-uniform pixels from 3700 to 9100 Angstrom (pixel centres), the
``wave[863:4563]`` window of the project's common grid (delta log10 lambda = 1.0566e-4, about
72.9 km/s, close to SDSS's 1e-4). NumPy only: this module never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starqso.errors import InputError
from starqso.schema import (
    ENCODER_NUM_PIXELS,
    ENCODER_WAVELENGTH_MAX,
    ENCODER_WAVELENGTH_MIN,
    SPECTRUM_CHANNELS,
)

# An output pixel is kept when at least this fraction of it is covered by good input pixels;
# below that the average would be dominated by one side of the pixel and bias line profiles.
MIN_GOOD_COVERAGE = 0.5


@dataclass(frozen=True)
class GriddedSpectrum:
    """A spectrum on a fixed wavelength grid.

    Attributes:
        wavelength: pixel centres in Angstrom, shape (N,).
        flux: mean flux density in each pixel (input units), 0 where masked, float32.
        ivar: inverse variance of ``flux``, 0 where masked, float32.
        mask: True where the pixel carries no usable information.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray


def log_uniform_grid(wavelength_min, wavelength_max, num_pixels):
    """Pixel centres of a log-uniform grid whose first and last centres are the given limits.

    Args:
        wavelength_min: first pixel centre, Angstrom.
        wavelength_max: last pixel centre, Angstrom.
        num_pixels: number of pixels.

    Returns:
        float64 array of shape (num_pixels,).

    Example:
        >>> grid = log_uniform_grid(3700.0, 9100.0, 3700)
        >>> float(grid[0]), float(grid[-1])
        (3700.0, 9100.0)
    """
    exponents = np.arange(num_pixels) / (num_pixels - 1)
    grid = wavelength_min * (wavelength_max / wavelength_min) ** exponents
    grid[-1] = wavelength_max  # exact end point despite rounding in the power
    return grid


def encoder_wavelength():
    """The encoder grid: 3700 log-uniform pixel centres from 3700 to 9100 Angstrom.

    Returns:
        float64 array of shape (3700,).
    """
    return log_uniform_grid(ENCODER_WAVELENGTH_MIN, ENCODER_WAVELENGTH_MAX, ENCODER_NUM_PIXELS)


def pixel_edges(centres):
    """Edges of pixels with the given centres (geometric midpoints, so log grids stay log).

    Args:
        centres: strictly increasing, positive pixel centres, shape (N,), N >= 2.

    Returns:
        float64 array of shape (N + 1,).
    """
    centres = np.asarray(centres, dtype=np.float64)
    inner = np.sqrt(centres[1:] * centres[:-1])
    first = centres[0] ** 2 / inner[0]
    last = centres[-1] ** 2 / inner[-1]
    return np.concatenate([[first], inner, [last]])


def resample_spectrum(wavelength, flux, ivar=None, mask=None, *, target_wavelength=None,
                      source="spectrum"):
    """Resample a spectrum onto a target grid by exact overlap integration.

    Each output pixel is the overlap-weighted mean of the good input pixels it covers, so the
    integral of flux over any range of whole output pixels is conserved. Variances propagate
    as ``sum(overlap**2 * var) / sum(overlap)**2``. An output pixel is masked (flux 0, ivar 0,
    mask True) when it lies partly outside the input's range or when less than half of it is
    covered by good input pixels.

    This is the algorithm of specutils' ``FluxConservingResampler`` (Carnall 2017), kept
    hand-written because it is about 220x faster (0.66 ms against 146 ms for a 4600-pixel
    SDSS spectrum onto the encoder grid) and stricter: specutils has no bad-pixel mask, and
    it extrapolates partly covered edge pixels instead of masking them. Pixel edges are
    geometric midpoints of the centres (the true edges of a log-lambda grid), specutils'
    arithmetic ones; on fully covered, unmasked pixels the two agree to 3e-5 in flux and
    2.4e-4 in ivar, and both conserve the flux integral on their own edges
    (``tests/test_reference_libraries.py``).

    Args:
        wavelength: input pixel centres, Angstrom, strictly increasing, shape (N,).
        flux: input flux density per Angstrom, shape (N,).
        ivar: input inverse variance, shape (N,); ``None`` treats every good input pixel as
            having unit variance.
        mask: input bad-pixel mask (True = bad), shape (N,); non-finite flux and ivar <= 0 are
            treated as bad too.
        target_wavelength: output pixel centres; defaults to :func:`encoder_wavelength`.
        source: name used in error messages (e.g. the file the spectrum came from).

    Returns:
        A :class:`GriddedSpectrum` on the target grid.

    Raises:
        InputError: if the shapes disagree, the grid is not strictly increasing, or no output
            pixel has valid data.

    Example:
        >>> import numpy as np
        >>> wave = np.linspace(3500, 9500, 6001)
        >>> out = resample_spectrum(wave, np.ones_like(wave))
        >>> out.flux.shape, bool(out.mask.any())
        ((3700,), False)
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.shape != flux.shape or wavelength.size < 2:
        raise InputError(
            f"spectrum wavelength and flux must be 1-D arrays of the same length (>= 2). "
            f"Received: wavelength shape={wavelength.shape}, flux shape={flux.shape} in {source}")
    if not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0) or \
            wavelength[0] <= 0:
        raise InputError(
            f"spectrum wavelength grid must be positive and strictly increasing. Received: "
            f"a non-monotonic or non-finite grid from {wavelength[0]:.6g} to "
            f"{wavelength[-1]:.6g} A in {source}")
    if target_wavelength is None:
        target_wavelength = encoder_wavelength()
    target_wavelength = np.asarray(target_wavelength, dtype=np.float64)

    bad = ~np.isfinite(flux)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if ivar is None:
        variance = np.ones_like(flux)
    else:
        ivar = np.asarray(ivar, dtype=np.float64)
        bad |= ~(ivar > 0) | ~np.isfinite(ivar)
        with np.errstate(divide="ignore"):
            variance = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, ivar))
    good = ~bad
    clean_flux = np.where(good, flux, 0.0)

    in_edges = pixel_edges(wavelength)
    out_edges = pixel_edges(target_wavelength)
    # Cut both edge sets at every edge of either: each resulting segment lies inside exactly
    # one input pixel and one output pixel, and each (input, output) pair owns one segment.
    cuts = np.union1d(in_edges, out_edges)
    lengths = np.diff(cuts)
    midpoints = 0.5 * (cuts[1:] + cuts[:-1])
    in_index = np.searchsorted(in_edges, midpoints, side="right") - 1
    out_index = np.searchsorted(out_edges, midpoints, side="right") - 1
    inside = (in_index >= 0) & (in_index < wavelength.size) & \
             (out_index >= 0) & (out_index < target_wavelength.size)
    in_index, out_index, lengths = in_index[inside], out_index[inside], lengths[inside]

    num_out = target_wavelength.size
    good_length = lengths * good[in_index]
    covered = np.bincount(out_index, weights=lengths, minlength=num_out)
    good_covered = np.bincount(out_index, weights=good_length, minlength=num_out)
    flux_sum = np.bincount(out_index, weights=good_length * clean_flux[in_index],
                           minlength=num_out)
    var_sum = np.bincount(out_index, weights=good_length ** 2 * variance[in_index],
                          minlength=num_out)

    widths = np.diff(out_edges)
    ok = (covered >= widths * (1 - 1e-9)) & (good_covered >= MIN_GOOD_COVERAGE * widths)
    safe_covered = np.where(ok, good_covered, 1.0)
    out_flux = np.where(ok, flux_sum / safe_covered, 0.0)
    out_var = np.where(ok, var_sum / safe_covered ** 2, 0.0)
    with np.errstate(divide="ignore"):
        out_ivar = np.where(ok & (out_var > 0), 1.0 / np.where(out_var > 0, out_var, 1.0), 0.0)
    if not ok.any():
        raise InputError(
            f"spectrum has no valid pixel in {target_wavelength[0]:.0f}-"
            f"{target_wavelength[-1]:.0f} A. Received: coverage {wavelength[0]:.0f}-"
            f"{wavelength[-1]:.0f} A with {int(good.sum())} good pixels in {source}")
    return GriddedSpectrum(
        wavelength=target_wavelength,
        flux=out_flux.astype(np.float32),
        ivar=out_ivar.astype(np.float32),
        mask=~ok,
    )


# Beyond 10 RMS a pixel is almost surely a cosmic ray or sky residual, not a spectral feature.
_MAX_ABS_FLUX = 10.0
_MAX_RELIABILITY = 10.0


def encoder_input(gridded: GriddedSpectrum, *, source="spectrum"):
    """Encoder input for a gridded spectrum: scaled flux and a per-pixel reliability weight.

    Channel 0 is ``flux / scale`` clipped to [-10, 10] (cosmic rays, sky residuals), with
    ``scale`` the RMS of the flux over good pixels: unlike a median it stays positive and
    meaningful for faint spectra whose median is near zero or negative. Channel 1 is
    ``clip(sqrt(ivar) * scale, 0, 10) / 10``, the pixel's signal-to-noise relative to the
    spectrum's scale. Both are 0 on masked pixels, so the encoder can tell "no data" (weight
    0) from "flux 0" instead of seeing silently zero-filled flux. Good pixels are those not
    masked with finite flux and ``ivar > 0``. The result does not change when flux is
    multiplied by ``c`` and ivar divided by ``c**2`` (up to float32 rounding).

    Args:
        gridded: spectrum on the encoder grid, from :func:`resample_spectrum`.
        source: what the spectrum is (e.g. its file), for error messages.

    Returns:
        float32 array of shape ``(N, 2)`` (``N = 3700`` on the encoder grid).

    Raises:
        InputError: no good pixel, or zero flux on every good pixel.

    Example:
        >>> wave = np.linspace(3500, 9500, 6001)
        >>> encoder_input(resample_spectrum(wave, np.ones_like(wave))).shape
        (3700, 2)
    """
    flux = np.asarray(gridded.flux, dtype=np.float64)
    ivar = np.asarray(gridded.ivar, dtype=np.float64)
    good = ~np.asarray(gridded.mask, dtype=bool) & np.isfinite(flux) & (ivar > 0)
    scale = float(np.sqrt(np.mean(flux[good] ** 2))) if good.any() else 0.0
    if not scale > 0 or not np.isfinite(scale):
        raise InputError(f"spectrum needs good pixels with non-zero flux to be scaled. Received: "
                         f"{int(good.sum())} good pixels, RMS flux {scale:.3g} in {source}")
    out = np.zeros((flux.size, SPECTRUM_CHANNELS), dtype=np.float32)
    out[good, 0] = np.clip(flux[good] / scale, -_MAX_ABS_FLUX, _MAX_ABS_FLUX)
    out[good, 1] = np.clip(np.sqrt(ivar[good]) * scale, 0, _MAX_RELIABILITY) / _MAX_RELIABILITY
    return out
