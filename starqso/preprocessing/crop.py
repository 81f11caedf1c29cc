"""The centre crop: which pixels of a larger image a square crop keeps (NumPy only).

Centring convention: the crop keeps the image's geometric centre ``((H-1)/2, (W-1)/2)``, where
the simulator and cutout services put the object. When ``H - size`` (or ``W - size``) is odd the
crop cannot be exactly centred; the extra pixel is always cut from the bottom/right, so the
object lands half a pixel below/right of the crop's centre, the same way for every cutout.

Every reader and every model input takes its crop from :func:`crop_window`, so a cube cropped
while it is read from disk, from a stack or in memory shows the same pixels. It lives here, not
in :mod:`starqso.io`, because importing ``starqso.io`` loads astropy and this needs only Python.
"""

from __future__ import annotations

from starqso.errors import InputError


def crop_window(height: int, width: int, size: int, where: str = "") -> tuple[slice, slice]:
    """The rows and columns of the centred ``size`` x ``size`` crop of an image.

    For an odd size difference the extra pixel is cut at the bottom/right (module docstring).

    Args:
        height: image height in pixels.
        width: image width in pixels.
        size: side of the square crop in pixels.
        where: what the image is (e.g. ``"in file x.fits"``), appended to the error message.

    Returns:
        ``(rows, columns)``: slices to index the last two axes with, e.g.
        ``cube[:, rows, columns]``.

    Raises:
        InputError: ``size`` is below 1, or the image is smaller than ``size`` on a side.

    Example:
        >>> crop_window(48, 47, 32)
        (slice(8, 40, None), slice(7, 39, None))
    """
    if size < 1 or height < size or width < size:
        raise InputError(f"cutout must be at least {size}x{size} pixels to crop to image size "
                         f"{size}. Received: {height}x{width}" + (f" {where}" if where else ""))
    top, left = (height - size) // 2, (width - size) // 2
    return slice(top, top + size), slice(left, left + size)
