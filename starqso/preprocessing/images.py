"""Cutouts for the image models: ``(5, H, W)`` cubes to channels-last centre crops (NumPy only).

Centring convention: the crop keeps the cube's geometric centre ``((H-1)/2, (W-1)/2)``, where
the simulator and cutout services put the object. When ``H - size`` (or ``W - size``) is odd the
crop cannot be exactly centred; the extra pixel is always cut from the bottom/right, so the
object lands half a pixel below/right of the crop's centre, the same way for every cutout.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError

NUM_BANDS = 5


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
        the extra pixel is dropped at the bottom/right (see the module docstring).

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
    height, width = cube.shape[1:]
    if size < 1 or height < size or width < size:
        raise InputError(f"cutout must be at least {size}x{size} pixels to crop to image size "
                         f"{size}. Received: {height}x{width} in {source}")
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(channels_last(cube[:, top:top + size, left:left + size]))
