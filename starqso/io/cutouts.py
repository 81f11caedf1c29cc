"""Five-band image cutouts: the FITS layout starqso reads and writes.

Data model
----------
A cutout is a FITS file holding one float cube of shape ``(5, H, W)`` in NumPy order (so
``NAXIS3 = 5``, ``NAXIS2 = H``, ``NAXIS1 = W`` in the header):

* The cube lives in the primary HDU, or, when the primary HDU is empty (as many survey tools
  write it), in the first image extension.
* Bands are SDSS ``u, g, r, i, z`` in that order along the first axis.
* Pixels are in nanomaggies, so an AB magnitude is ``22.5 - 2.5 * log10(flux)``; sky-subtracted
  pixels can be zero or negative.
* The pixel scale is the SDSS one, 0.396 arcsec per pixel.
* Header cards written: ``BUNIT = 'nanomaggy'``, ``BANDS = 'ugriz'``, ``PIXSCALE = 0.396``.

Reading is tolerant where that is safe: integer or big-endian data become native ``float32``,
a missing ``BUNIT`` or ``BANDS`` card is accepted (many cutout services omit them),
``BUNIT = 'nanomaggies'`` is taken to mean the same as ``'nanomaggy'``, and a cube whose
``BANDS`` card names the five bands in another order (``'zirgu'``) is returned in ``ugriz``
order. Non-finite pixels are
returned untouched; flagging them is left to the caller, which knows the object's context.

Writing is deterministic: the same cube and cards always give the same bytes (no ``DATE`` card,
no checksum), and the file is written atomically.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from starqso.atomic import write_bytes_atomically
from starqso.errors import InputError
from starqso.io._fits import hdu_data, hdulist_bytes, native, open_fits
from starqso.schema import BANDS, BUNIT, PIXEL_SCALE_ARCSEC

_ACCEPTED_BUNITS = (BUNIT, "nanomaggies")
# Cards that describe the FITS structure itself: astropy writes them, so they are neither
# returned in Cutout.header nor accepted from the caller.
_STRUCTURAL_KEYWORD = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|BSCALE|BZERO|BLANK|"
    r"CHECKSUM|DATASUM|EXTNAME|EXTVER|EXTLEVEL)$"
)
_FITS_KEYWORD = re.compile(r"^[A-Z0-9_-]{1,8}$")


@dataclass(frozen=True, eq=False)
class Cutout:
    """A five-band cutout as read from disk.

    Attributes:
        data: ``float32`` cube in native byte order, shape ``(5, H, W)``, bands ``ugriz``,
            nanomaggies. Non-finite pixels are kept as they were in the file.
        header: Plain ``dict`` of the file's header cards (upper-case keyword to ``str``,
            ``int``, ``float`` or ``bool``), primary HDU first and the image extension's cards
            on top; structural cards (``NAXIS``, ``BITPIX``, ...) and ``COMMENT``/``HISTORY``
            are left out, so it can be passed straight back to :func:`write_cutout`.
        path: The file the cutout was read from.
    """

    data: np.ndarray
    header: dict
    path: str


def _header_cards(header: fits.Header) -> dict:
    cards = {}
    for keyword, value in header.items():
        # HIERARCH and commentary cards are skipped so the dict can be written back as is.
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            continue
        if _STRUCTURAL_KEYWORD.match(keyword):
            continue
        if isinstance(value, (bool, int, float, str)):
            cards[keyword] = value
    return cards


def _find_image_hdu(hdulist: fits.HDUList, path: str):
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    for hdu in hdulist:
        if isinstance(hdu, image_types) and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    raise InputError(
        "cutout must hold a (5, H, W) image in the primary HDU or an image extension. "
        f"Received: no HDU with image data in file {path}"
    )


def _check_cube_shape(shape: tuple, where: str) -> None:
    expected = "cutout must have 5 bands (ugriz) as (5, H, W)"
    if len(shape) != 3:
        raise InputError(f"{expected}. Received: {len(shape)}-D shape={shape} {where}")
    if shape[0] != len(BANDS):
        hint = ""
        if shape[-1] == len(BANDS):
            hint = " (looks like (H, W, 5): put the band axis first, e.g. np.moveaxis(data, -1, 0))"
        raise InputError(f"{expected}. Received: shape={shape}{hint} {where}")
    if shape[1] == 0 or shape[2] == 0:
        raise InputError(f"{expected} with H, W >= 1. Received: shape={shape} {where}")


def _check_unit_and_bands(cards: Mapping, where: str) -> None:
    unit = cards.get("BUNIT")
    if unit is not None and str(unit).strip().lower() not in _ACCEPTED_BUNITS:
        raise InputError(
            f"cutout pixels must be in nanomaggies (BUNIT='nanomaggy'). "
            f"Received: BUNIT={unit!r} {where}"
        )
    bands = cards.get("BANDS")
    if bands is not None and sorted(str(bands).strip().lower()) != sorted(BANDS):
        raise InputError(
            f"cutout bands must be u, g, r, i, z, once each (BANDS='ugriz'). "
            f"Received: BANDS={bands!r} {where}"
        )
    scale = cards.get("PIXSCALE")
    if scale is not None and (
        not isinstance(scale, (int, float)) or not math.isclose(scale, PIXEL_SCALE_ARCSEC)
    ):
        raise InputError(
            f"cutout pixel scale must be {PIXEL_SCALE_ARCSEC} arcsec/px (PIXSCALE). "
            f"Received: PIXSCALE={scale!r} {where}"
        )


def read_cutout(path: str | os.PathLike) -> Cutout:
    """Read a ``(5, H, W)`` ugriz cutout in nanomaggies from a FITS file.

    Args:
        path: FITS file (``.fits`` or ``.fits.gz``) with the cube in the primary HDU, or in the
            first image extension when the primary HDU is empty.

    Returns:
        A :class:`Cutout` with ``float32`` native-order data, the header cards and the path.

    Raises:
        InputError: The file is missing, empty, not FITS or truncated; it has no image; the
            image is not ``(5, H, W)``; or ``BUNIT``/``BANDS``/``PIXSCALE`` contradict the
            data model.

    Example:
        >>> cutout = read_cutout("cutouts/J123456.78+123456.7.fits")  # doctest: +SKIP
        >>> cutout.data.shape, cutout.data.dtype
        ((5, 64, 64), dtype('float32'))
    """
    path = os.fspath(path)
    where = f"in file {path}"
    with open_fits(path, "cutout") as hdulist:
        hdu = _find_image_hdu(hdulist, path)
        cards = _header_cards(hdulist[0].header)
        if hdu is not hdulist[0]:
            cards.update(_header_cards(hdu.header))
        # The header alone gives the shape, so a bad cube is rejected without loading it.
        _check_cube_shape(tuple(hdu.shape), where)
        _check_unit_and_bands(cards, where)
        data = native(hdu_data(hdu, path, "cutout"), np.float32)
    bands = str(cards.get("BANDS", "".join(BANDS))).strip().lower()
    if bands != "".join(BANDS):
        # The card says which plane is which band, so another order is recoverable.
        data = np.ascontiguousarray(data[[bands.index(band) for band in BANDS]])
        cards["BANDS"] = "".join(BANDS)
    return Cutout(data=data, header=cards, path=path)


def _validated_cards(header: Mapping | None) -> list[tuple[str, object]]:
    cards = []
    for key, value in (header or {}).items():
        keyword = str(key).strip().upper()
        if isinstance(value, np.generic):
            value = value.item()
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            raise InputError(
                "cutout header keys must be FITS keywords (1-8 of A-Z, 0-9, '_', '-'). "
                f"Received: {key!r}"
            )
        if _STRUCTURAL_KEYWORD.match(keyword):
            raise InputError(
                f"cutout header card {keyword} is written by write_cutout itself; "
                f"remove it from header. Received: {keyword}={value!r}"
            )
        if not isinstance(value, (bool, int, float, str)):
            raise InputError(
                f"cutout header values must be str, int, float or bool. "
                f"Received: {keyword}={value!r} of type {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"cutout header values must be finite. Received: {keyword}={value!r}")
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            raise InputError(
                f"cutout header strings must be printable ASCII. Received: {keyword}={value!r}"
            )
        cards.append((keyword, value))
    return cards


def write_cutout(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    header: Mapping | None = None,
    overwrite: bool = False,
) -> str:
    """Write a ``(5, H, W)`` ugriz cube in nanomaggies as a deterministic FITS file.

    Args:
        path: Output file; written via a temporary file in the same folder and renamed, so
            readers never see half a file. A ``.gz`` suffix gives a gzip-compressed file.
        data: Cube of shape ``(5, H, W)``, bands ``ugriz``, nanomaggies; stored as ``float32``.
        header: Extra header cards (FITS keyword to ``str``/``int``/``float``/``bool``), e.g.
            ``{"RA": 150.1, "DEC": 2.2, "OBJID": "1237648720693755918"}``. ``BUNIT``,
            ``BANDS`` and ``PIXSCALE`` may be given only with the data model's values.
        overwrite: Replace an existing file if True.

    Returns:
        The output path as a ``str``.

    Raises:
        InputError: ``data`` is not a numeric ``(5, H, W)`` array, a header card is invalid or
            contradicts the data model, or the file exists and ``overwrite`` is False.

    Example:
        >>> cube = np.zeros((5, 64, 64), dtype=np.float32)
        >>> write_cutout("J1234.fits", cube, header={"RA": 188.6, "DEC": 12.1})  # doctest: +SKIP
        'J1234.fits'
    """
    path = os.fspath(path)
    where = f"for file {path}"
    array = np.asarray(data)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(
            f"cutout data must be numeric (5, H, W). Received: dtype={array.dtype} {where}"
        )
    _check_cube_shape(array.shape, where)
    cards = _validated_cards(header)
    _check_unit_and_bands(dict(cards), where)

    hdu = fits.PrimaryHDU(native(array, np.float32))
    hdu.header["BUNIT"] = (BUNIT, "AB mag = 22.5 - 2.5 log10(flux)")
    hdu.header["BANDS"] = ("".join(BANDS), "order of the first (slowest) axis")
    hdu.header["PIXSCALE"] = (PIXEL_SCALE_ARCSEC, "[arcsec/pixel] SDSS pixel scale")
    for keyword, value in cards:
        if keyword not in ("BUNIT", "BANDS", "PIXSCALE"):
            hdu.header[keyword] = value
    return write_bytes_atomically(path, hdulist_bytes(fits.HDUList([hdu])), overwrite=overwrite)
