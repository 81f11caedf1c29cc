"""LAMOST low-resolution spectra: the reader of both layouts.

Data model: https://www.lamost.org/dr7/v2.0/doc/lr-data-production-description

* DR1-DR7 layout: the primary HDU is a float image of shape ``(5, N)`` whose rows are
  flux, inverse variance, wavelength (vacuum Angstrom), and-mask and or-mask; the header has
  ``OBSID``, ``DESIG``, ``CLASS``, ``Z`` and ``TELESCOP = 'LAMOST'``.
* DR8+ layout: HDU 1 is a binary table with a single row whose array columns are ``FLUX``,
  ``IVAR``, ``WAVELENGTH``, ``ANDMASK``, ``ORMASK`` and ``NORMALIZATION``; the primary header
  has ``OBSID``, ``DESIG``, ``CLASS``, ``Z``.

LAMOST writes ``Z = -9999`` when there is no redshift; that becomes ``redshift = None``.
A header with ``VACUUM = F`` (air wavelengths) is rejected rather than silently mixed in.
"""

from __future__ import annotations

import math
import os

import numpy as np
from astropy.io import fits

from starqso.errors import InputError
from starqso.io._fits import hdu_data, native, open_fits
from starqso.io.spectra.spectrum import (
    Spectrum,
    as_float,
    as_int,
    bad_pixels,
    plain,
    require_columns,
)

_LAMOST_MISSING_REDSHIFT = -9999.0
_LAMOST_IMAGE_ROWS = ("flux", "ivar", "wavelength", "andmask", "ormask")


def _lamost_meta(header: fits.Header, path: str) -> dict:
    redshift = as_float(header.get("Z"))
    if redshift is not None and math.isclose(redshift, _LAMOST_MISSING_REDSHIFT):
        redshift = None
    return {
        "survey": "lamost",
        "obsid": as_int(header.get("OBSID")),
        "designation": plain(header.get("DESIG")),
        "object_class": plain(header.get("CLASS")),
        "redshift": redshift,
        "path": path,
    }


def is_lamost_image(hdulist: fits.HDUList) -> bool:
    """Whether the primary HDU is a ``(5, N)`` image (the DR1-DR7 layout)."""
    header = hdulist[0].header
    return header.get("NAXIS", 0) == 2 and header.get("NAXIS2") == len(_LAMOST_IMAGE_ROWS)


def lamost_table_hdu(hdulist: fits.HDUList):
    """HDU 1 when it is a table with ``flux`` and ``wavelength`` (the DR8+ layout); else None."""
    if len(hdulist) > 1 and isinstance(hdulist[1], fits.BinTableHDU):
        names = {name.lower() for name in hdulist[1].columns.names}
        if {"flux", "wavelength"} <= names:
            return hdulist[1]
    return None


def read_lamost_hdus(hdulist: fits.HDUList, path: str) -> Spectrum:
    """The :class:`Spectrum` of an open LAMOST file, in either layout."""
    what = "LAMOST spectrum"
    header = hdulist[0].header
    if header.get("VACUUM") is False:
        raise InputError(
            f"{what} must have vacuum wavelengths. Received: VACUUM=F (air) in file {path}"
        )
    table_hdu = lamost_table_hdu(hdulist)
    if table_hdu is not None:
        columns = require_columns(table_hdu, ("flux", "ivar", "wavelength"), path, what)
        table = hdu_data(table_hdu, path, what)
        if table is None or len(table) != 1:
            rows = 0 if table is None else len(table)
            raise InputError(
                f"{what} table in HDU 1 must have exactly 1 row of arrays. "
                f"Received: {rows} rows in file {path}"
            )
        row = table[0]
        flux = native(np.ravel(row[columns["flux"]]), np.float32)
        ivar = native(np.ravel(row[columns["ivar"]]), np.float32)
        wavelength = native(np.ravel(row[columns["wavelength"]]), np.float64)
        and_mask = None
        if "andmask" in columns:
            and_mask = native(np.ravel(row[columns["andmask"]]), np.float64)
    elif header.get("NAXIS", 0) > 0:
        image = hdu_data(hdulist[0], path, what)
        if image.ndim != 2 or image.shape[0] != len(_LAMOST_IMAGE_ROWS):
            raise InputError(
                f"{what} primary image must have shape (5, N) with rows "
                f"{', '.join(_LAMOST_IMAGE_ROWS)}. Received: shape={image.shape} in file {path}"
            )
        flux = native(image[0], np.float32)
        ivar = native(image[1], np.float32)
        wavelength = native(image[2], np.float64)
        # Kept as float: a NaN in the float image's mask row must count as bad, not cast.
        and_mask = native(image[3], np.float64)
    else:
        raise InputError(
            f"{what} must have a (5, N) primary image (DR1-DR7) or a one-row table with FLUX, "
            f"IVAR, WAVELENGTH in HDU 1 (DR8+). Received: neither in file {path}"
        )
    meta = _lamost_meta(header, path)
    return Spectrum(wavelength, flux, ivar, bad_pixels(flux, ivar, and_mask), meta)


def read_lamost_spectrum(path: str | os.PathLike) -> Spectrum:
    """Read a LAMOST low-resolution spectrum in the DR1-DR7 image or DR8+ table layout.

    Args:
        path: The LAMOST FITS file (``.fits`` or ``.fits.gz``).

    Returns:
        A :class:`Spectrum` (flux in LAMOST's relative units) with ``meta`` keys
        ``survey="lamost"``, ``obsid``, ``designation``, ``object_class``, ``redshift``, ``path``.

    Raises:
        InputError: The file is missing, empty, not FITS or truncated; it matches neither
            layout; it has air wavelengths; or the grid is not strictly increasing.

    Example:
        >>> spectrum = read_lamost_spectrum("spec-55859-F5902_sp01-001.fits")  # doctest: +SKIP
        >>> spectrum.meta["survey"], spectrum.meta["object_class"]
        ('lamost', 'STAR')
    """
    path = os.fspath(path)
    with open_fits(path, "LAMOST spectrum") as hdulist:
        return read_lamost_hdus(hdulist, path)

