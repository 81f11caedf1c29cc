"""Cutouts for the image models: ``(5, H, W)`` cubes to channels-last centre crops (NumPy only).

The crop's pixels and its centring convention are :func:`starqso.preprocessing.crop.crop_window`'s.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.crop import crop_window
from starqso.schema import NUM_BANDS


def channels_last(cube) -> np.ndarray:
    """A ``(5, H, W)`` cube as a float32 ``(H, W, 5)`` array, the layout Keras convolutions use.

    Args:
        cube: array of shape ``(5, H, W)``.

    Returns:
        float32 array of shape ``(H, W, 5)`` (a copy when a conversion was needed).

    Example:
        >>> channels_last(np.zeros((5, 4, 4))).shape
        (4, 4, 5)
    """
    return np.moveaxis(np.asarray(cube, dtype=np.float32), 0, -1)


def center_crop(cube, size: int, *, source: str = "cutout") -> np.ndarray:
    """Centre crop of a ``(5, H, W)`` cube, channels last, float32.

    Args:
        cube: ugriz cube of shape ``(5, H, W)`` with ``H, W >= size``.
        size: side of the square crop in pixels.
        source: what the cube is (e.g. its file), for error messages.

    Returns:
        Contiguous float32 array of shape ``(size, size, 5)``; for an odd size difference
        the extra pixel is dropped at the bottom/right (:mod:`starqso.preprocessing.crop`).

    Raises:
        InputError: the cube is not ``(5, H, W)`` or is smaller than ``size``.

    Example:
        >>> cube = np.zeros((5, 48, 48), np.float32); cube[:, 24, 24] = 1
        >>> crop = center_crop(cube, 32)
        >>> crop.shape, float(crop[16, 16, 0])
        ((32, 32, 5), 1.0)
    """
    cube = np.asarray(cube)
    if cube.ndim != 3 or cube.shape[0] != NUM_BANDS:
        raise InputError(f"cutout must have 5 bands (ugriz) as (5, H, W). Received: "
                         f"shape={cube.shape} in {source}")
    rows, columns = crop_window(*cube.shape[1:], size, f"in {source}")
    return np.ascontiguousarray(channels_last(cube[:, rows, columns]))


# Above this share of NaN/inf pixels a cutout is treated as having no usable data: a median
# fill would then be inventing the object rather than patching a few bad columns or cosmic rays.
MAX_REPAIRED_FRACTION = 0.1


def usable_crop(cube, size: int, *, source: str = "cutout") -> tuple[np.ndarray, str]:
    """The centre crop of a cube, with a few NaN/inf pixels repaired, or a clear refusal.

    Survey cutouts carry masked pixels (bad columns, saturation bleed, chip edges) as NaN. A
    handful away from the object are set to their band's median, which is close to the sky
    level, and the returned note says so; this is how astropy's FITS verification treats
    fixable problems, fixed and reported. Non-finite pixels at the object itself (the central
    3x3), in more than 10% of the crop, or filling a whole band, and an all-zero crop, cannot
    be classified and raise.

    Args:
        cube: ugriz cube of shape ``(5, H, W)`` with ``H, W >= size``.
        size: side of the square crop in pixels.
        source: what the cube is (e.g. its file), for messages.

    Returns:
        ``(crop, note)``: float32 ``(size, size, 5)`` crop without NaN/inf, and ``""`` or a
        one-line note of the repair.

    Raises:
        InputError: the cube is not ``(5, H, W)``, is smaller than ``size``, is all zeros, or
            has non-finite pixels that cannot be repaired.

    Example:
        >>> cube = np.ones((5, 40, 40), np.float32); cube[0, 0, 0] = np.nan
        >>> crop, note = usable_crop(cube, 40)
        >>> bool(np.isfinite(crop).all()), note
        (True, 'repaired 1 NaN/inf pixels (set to their band median)')
    """
    crop = center_crop(cube, size, source=source)
    bad = ~np.isfinite(crop)
    count = int(np.count_nonzero(bad))
    if count:
        centre = slice(max(size // 2 - 1, 0), size // 2 + 2)
        if bad[centre, centre].any() or count > MAX_REPAIRED_FRACTION * crop.size or \
                bad.all(axis=(0, 1)).any():
            raise InputError(f"cutout has {count} NaN/inf pixels in its central {size}x{size} "
                             f"crop, too many or at the object to repair (at most "
                             f"{MAX_REPAIRED_FRACTION:.0%}, none in the central 3x3). Received: "
                             f"{source}")
        crop = crop.copy()
        medians = np.array([np.median(crop[..., band][~bad[..., band]])
                            for band in range(crop.shape[-1])], np.float32)
        crop[bad] = np.broadcast_to(medians, crop.shape)[bad]
    if not np.any(crop):
        raise InputError(f"cutout is all zeros in its central {size}x{size} crop (no data). "
                         f"Received: {source}")
    note = f"repaired {count} NaN/inf pixels (set to their band median)" if count else ""
    return crop, note
