"""Cutout scaling statistics, measured on training cutouts at fit time (NumPy only).

The model scales pixels as ``(asinh(x / softening) - mean) / std`` per band
(:class:`starqso.models.CutoutScaling`). The softening is the band's typical sky noise (the
robust scatter of the cutouts' outer pixels), so the stretch is linear at the noise level and
logarithmic above it, the way SDSS luptitudes are.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError

# The stretch is floored at -ASINH_FLOOR (pixels more than ~200 softenings below the sky: dead
# or corrupt pixels, never sky noise). The model computes asinh(x / s) without SIGN/ABS as
# log(x + sqrt(x^2 + s^2)) - log(s), which cancels in float32 for very negative x; the floor
# keeps it exact to 0.5% above it, and an int8 model saturates far above it anyway (its input
# range ends near -8 softenings).
ASINH_FLOOR = 6.0


def asinh_stretch(images, softening):
    """``max(asinh(images / softening), -ASINH_FLOOR)``: the model's stretch, in float64."""
    x = np.asarray(images, dtype=np.float64) / np.asarray(softening, dtype=np.float64)
    return np.maximum(np.arcsinh(x), -ASINH_FLOOR)


def cutout_statistics(images, max_images=5000, seed=0):
    """Per-band softening, mean and std for :class:`starqso.models.CutoutScaling`.

    Args:
        images: raw nanomaggie cutouts, channels last, shape (N, S, S, 5).
        max_images: at most this many cutouts (a seeded random subset) are used.
        seed: seed of that subset.

    Returns:
        dict with ``softening``, ``mean`` and ``std``: lists of 5 floats.

    Raises:
        InputError: if there are no images or they are not (N, S, S, 5) with finite pixels.

    Example:
        >>> stats = cutout_statistics(np.random.default_rng(0).normal(0, 0.03, (10, 16, 16, 5)))
        >>> len(stats["softening"])
        5
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 5 or len(images) == 0:
        raise InputError(f"cutout statistics need images of shape (N, S, S, 5) with N >= 1. "
                         f"Received: shape={images.shape}")
    if len(images) > max_images:
        pick = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        images = images[np.sort(pick)]
    size = images.shape[1]
    border = np.ones((size, size), bool)
    edge = max(2, size // 6)
    border[edge:-edge, edge:-edge] = False
    outer = images[:, border, :]  # (N, pixels, 5)
    finite = np.isfinite(outer)
    softening = []
    for band in range(5):
        values = outer[..., band][finite[..., band]]
        if values.size == 0:
            raise InputError("cutout statistics: no finite pixel in band "
                             f"{'ugriz'[band]}. Received: {len(images)} cutouts")
        median = np.median(values)
        softening.append(max(1.4826 * np.median(np.abs(values - median)), 1e-6))
    stretched = asinh_stretch(images, softening)
    mean = np.nanmean(stretched, axis=(0, 1, 2))
    std = np.maximum(np.nanstd(stretched, axis=(0, 1, 2)), 1e-6)
    return {"softening": [float(v) for v in softening], "mean": [float(v) for v in mean],
            "std": [float(v) for v in std]}
