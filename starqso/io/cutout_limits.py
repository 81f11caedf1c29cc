"""Size caps of a cutout read: what one file may make :mod:`starqso.io.cutouts` decompress or load.

Every check here works from the headers alone, before any pixel is touched: a crop size that
is not a positive integer, a read that would decompress or load more than
:data:`MAX_CUTOUT_VALUES` pixel values, and a header claiming more data than the file holds.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

from starqso.errors import InputError

#: The most pixel values one :func:`read_cutout` call may decompress or load: 2**23, which is
#: 64 MiB as float64 (FITS' widest pixel type) and 32 MiB as the float32 it returns. That is a
#: 5-band float64 cube of 1,295 x 1,295 pixels (8.5 arcmin at 0.396 arcsec/px) or a float32
#: one of 1,832 x 1,832, far more than an object cutout needs, while a batch of bad rows can
#: never take more than a few hundred MB however large their headers claim they are.
MAX_CUTOUT_VALUES = 2**23
#: The decompressed bytes read to find the image header of a compressed file: 360 FITS
#: blocks, about 13,000 header cards (survey cutout headers have a few hundred).
MAX_HEADER_BYTES = 360 * 2880


def checked_crop_size(crop_size) -> int | None:
    """``crop_size`` as an int (None stays None); refuses one that is not a positive integer."""
    if crop_size is None:
        return None
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) \
            or crop_size < 1:
        raise InputError(f"crop_size must be a positive integer or None. "
                         f"Received: crop_size={crop_size!r}")
    return int(crop_size)


def data_bytes(hdu) -> int:
    """Bytes of the HDU's data block as its header claims them, without padding."""
    bintable = getattr(hdu, "_bintable", None)
    if isinstance(hdu, fits.CompImageHDU) and bintable is not None:
        header = bintable.header
        return int(header["NAXIS1"]) * int(header["NAXIS2"]) + int(header.get("PCOUNT", 0))
    if isinstance(hdu, fits.CompImageHDU):
        # No table header to hand: the padded span is the best bound the HDU gives.
        return max(int(hdu.fileinfo()["datSpan"]) - 2879, 0)
    return math.prod(hdu.shape) * abs(int(hdu.header["BITPIX"])) // 8


def _tile_values(hdu, shape: tuple, window) -> int:
    """Pixel values decompressed to read the crop: every tile that overlaps it, in full."""
    tiles = tuple(int(size) for size in hdu.tile_shape)
    spans = tuple((0, length) for length in shape[:-2]) + tuple(
        (axis.start, axis.stop) for axis in window)
    values = 1
    for (start, stop), tile, length in zip(spans, tiles, shape, strict=False):
        count = (stop - 1) // tile - start // tile + 1
        values *= min(count * tile, length)
    return values


def _refuse_size(shape: tuple, values: int, why: str, path: str) -> None:
    if values > MAX_CUTOUT_VALUES:
        raise InputError(
            f"cutout is too large to read: {why} needs {values:,} pixel values, over the "
            f"limit of {MAX_CUTOUT_VALUES:,} (64 MiB as float64). Received: "
            f"shape={shape} in file {path}"
        )


def check_size(hdu, shape: tuple, window, crop_size, whole_file: str | None,
               path: str) -> None:
    """Refuse, before any pixel is read, a read that would decompress or load too much."""
    if whole_file is not None:
        # gzip and friends have no random access: the crop costs inflating all before it.
        _refuse_size(shape, math.prod(shape), f"a {whole_file}-compressed file is read in "
                     f"full, which", path)
    elif window is None:
        _refuse_size(shape, math.prod(shape), "reading the whole image (pass crop_size to "
                     "read only the centre)", path)
    elif isinstance(hdu, fits.CompImageHDU):
        _refuse_size(shape, _tile_values(hdu, shape, window),
                     "decompressing the tiles under the centre crop", path)
    else:
        _refuse_size(shape, math.prod(shape[:-2]) * crop_size * crop_size, "the centre crop",
                     path)


def check_complete(hdu, available: int, path: str) -> None:
    """Refuse an image whose header claims more bytes than the file holds."""
    needed = int(hdu.fileinfo()["datLoc"]) + data_bytes(hdu)
    if needed > available:
        raise InputError(
            f"cutout file is truncated (shorter than its FITS headers say): its header claims "
            f"{needed:,} bytes, the file holds {available:,}. Received: shape={tuple(hdu.shape)} "
            f"in file {path}"
        )

