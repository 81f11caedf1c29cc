"""SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` files (SDSS-III/IV, DR9 onwards): the reader
and the writer.

Data model: https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html

* HDU 0: header only; ``PLATEID`` (older files ``PLATE``), ``MJD``, ``FIBERID``,
  ``TELESCOP = 'SDSS 2.5-M'``.
* HDU 1 (``COADD``): binary table, one row per pixel, lower-case column names as SDSS writes
  them: ``flux`` (float32, 1e-17 erg/s/cm^2/A), ``loglam`` (float32, log10 of the vacuum
  wavelength in Angstrom, uniform steps of 1e-4 dex), ``ivar``, ``and_mask`` (int32 bits set
  when the pixel was bad in *every* exposure; ``or_mask`` is set when bad in *any* exposure,
  which is too strict for coadds and is ignored), plus ``wdisp``, ``sky``, ``model`` (ignored).
* HDU 2 (``SPECOBJ`` in this package and DR9, ``SPALL`` in later releases): one-row table with
  the pipeline's ``CLASS`` and ``Z`` among many other columns.

Quirks handled: column names are looked up case-insensitively (DR8-era tools wrote upper case);
the wavelength is ``10 ** loglam`` computed in float64 so it is monotonic even though ``loglam``
is float32; ``and_mask`` is optional (if absent, only ``ivar`` and finiteness set the mask).
The writer stores the mask as ``and_mask = 1`` where ``mask`` is True: SDSS bit meanings
are not kept, only "bad or not".
"""

from __future__ import annotations

import os

import numpy as np
from astropy.io import fits

from starqso._util.atomic import write_bytes_atomically
from starqso.errors import InputError
from starqso.io._fits import hdu_data, hdulist_bytes, native, open_fits
from starqso.io.spectra.spectrum import (
    Spectrum,
    as_float,
    as_int,
    bad_pixels,
    column_lookup,
    plain,
    require_columns,
)

SDSS_TELESCOPE = "SDSS 2.5-M"
SDSS_FLUX_UNIT = "1E-17 erg/cm^2/s/Ang"


def sdss_coadd_hdu(hdulist: fits.HDUList):
    """The COADD table (or an HDU 1 table with ``loglam``) of an SDSS file; None if none."""
    if "COADD" in hdulist:
        return hdulist["COADD"]
    if len(hdulist) > 1 and isinstance(hdulist[1], fits.BinTableHDU):
        if "loglam" in {name.lower() for name in hdulist[1].columns.names}:
            return hdulist[1]
    return None


def _sdss_specobj(hdulist: fits.HDUList, path: str) -> dict:
    candidates = [hdulist[name] for name in ("SPECOBJ", "SPALL") if name in hdulist]
    if not candidates and len(hdulist) > 2 and isinstance(hdulist[2], fits.BinTableHDU):
        candidates = [hdulist[2]]
    for hdu in candidates:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        columns = column_lookup(hdu)
        table = hdu_data(hdu, path, "SDSS spectrum")
        if table is None or len(table) == 0:
            continue
        row = table[0]
        return {
            "object_class": plain(row[columns["class"]]) if "class" in columns else None,
            "redshift": as_float(row[columns["z"]]) if "z" in columns else None,
        }
    return {"object_class": None, "redshift": None}


def read_sdss_hdus(hdulist: fits.HDUList, path: str) -> Spectrum:
    """The :class:`Spectrum` of an open SDSS/BOSS spec file."""
    what = "SDSS spectrum"
    hdu = sdss_coadd_hdu(hdulist)
    if hdu is None or not isinstance(hdu, fits.BinTableHDU):
        raise InputError(
            f"{what} must have a COADD binary table in HDU 1. Received: "
            f"HDUs {[h.name for h in hdulist]} in file {path}"
        )
    columns = require_columns(hdu, ("flux", "loglam", "ivar"), path, what)
    table = hdu_data(hdu, path, what)
    if table is None or len(table) == 0:
        raise InputError(
            f"{what} COADD table has no rows; expected one row per pixel in file {path}"
        )
    flux = native(table[columns["flux"]], np.float32)
    ivar = native(table[columns["ivar"]], np.float32)
    # float64 before exponentiating so the grid keeps the float32 loglam ordering exactly.
    wavelength = 10.0 ** native(table[columns["loglam"]], np.float64)
    and_mask = native(table[columns["and_mask"]], np.int64) if "and_mask" in columns else None
    header = hdulist[0].header
    meta = {
        "survey": "sdss",
        "plate": as_int(header.get("PLATEID", header.get("PLATE"))),
        "mjd": as_int(header.get("MJD")),
        "fiberid": as_int(header.get("FIBERID")),
        **_sdss_specobj(hdulist, path),
        "path": path,
    }
    return Spectrum(wavelength, flux, ivar, bad_pixels(flux, ivar, and_mask), meta)


def read_sdss_spectrum(path: str | os.PathLike) -> Spectrum:
    """Read an SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` file.

    Args:
        path: The spec file (``.fits`` or ``.fits.gz``).

    Returns:
        A :class:`Spectrum` with ``meta`` keys ``survey="sdss"``, ``plate``, ``mjd``,
        ``fiberid``, ``object_class``, ``redshift`` and ``path``.

    Raises:
        InputError: The file is missing, empty, not FITS or truncated; it has no COADD table or
            the table lacks ``flux``, ``loglam`` or ``ivar``; or the grid is not increasing.

    Example:
        >>> spectrum = read_sdss_spectrum("spec-0266-51602-0001.fits")  # doctest: +SKIP
        >>> spectrum.meta["object_class"], spectrum.wavelength[0]
        ('GALAXY', 3799.2...)
    """
    path = os.fspath(path)
    with open_fits(path, "SDSS spectrum") as hdulist:
        return read_sdss_hdus(hdulist, path)


def _sdss_loglam(spectrum: Spectrum, path: str) -> np.ndarray:
    where = f"for file {path}"
    loglam = np.log10(spectrum.wavelength).astype(np.float32)
    if loglam.size > 1:
        steps = np.diff(loglam.astype(np.float64))
        typical = float(np.median(steps))
        # float32 loglam near 3.6-4 carries ~2.4e-7 dex rounding per value, so the steps of a
        # truly log-uniform grid read back from SDSS jitter by up to ~5e-7 dex.
        tolerance = 1e-6 + 1e-3 * abs(typical)
        worst = int(np.argmax(np.abs(steps - typical)))
        if typical <= 0 or abs(steps[worst] - typical) > tolerance or np.any(steps <= 0):
            raise InputError(
                "SDSS spectra need a log-uniform wavelength grid (constant step in log10 "
                f"Angstrom, SDSS uses 1e-4) that float32 loglam can hold. Received: step "
                f"{steps[worst]:.3g} dex at pixel {worst} vs typical {typical:.3g} dex {where}"
            )
    return loglam


def write_sdss_spectrum(
    path: str | os.PathLike,
    spectrum: Spectrum,
    *,
    and_mask: np.ndarray | None = None,
    overwrite: bool = False,
) -> str:
    """Write a spectrum in the SDSS ``spec`` layout (primary header, COADD, SPECOBJ).

    The file mirrors SDSS: ``loglam`` is float32, ``flux``/``ivar`` float32 and ``and_mask``
    int32 (1 where ``mask`` is True). Reading it back gives identical ``flux`` and ``ivar``,
    the same ``mask`` (given the mask already covers ``ivar <= 0`` and non-finite flux, as
    every reader's mask does), and ``wavelength`` to float32-``loglam`` precision; writing that
    read-back spectrum again gives identical bytes.

    Args:
        path: Output file; written atomically. A ``.gz`` suffix gives a gzip-compressed file.
        spectrum: Spectrum on a log-uniform wavelength grid. ``meta`` keys ``plate``, ``mjd``,
            ``fiberid``, ``object_class`` and ``redshift`` are written when not None.
        and_mask: Optional SDSS ``spPixMask`` bits to store (int, same length as the
            spectrum); pixels masked in ``spectrum`` but with no bit set get bit 0.
        overwrite: Replace an existing file if True.

    Returns:
        The output path as a ``str``.

    Raises:
        InputError: The grid is not log-uniform, a meta value has the wrong type, or the file
            exists and ``overwrite`` is False.

    Example:
        >>> write_sdss_spectrum("spec-0266-51602-0001.fits", spectrum)  # doctest: +SKIP
        'spec-0266-51602-0001.fits'
    """
    path = os.fspath(path)
    loglam = _sdss_loglam(spectrum, path)
    meta = spectrum.meta

    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = SDSS_TELESCOPE
    for keyword, key in (("PLATEID", "plate"), ("MJD", "mjd"), ("FIBERID", "fiberid")):
        value = meta.get(key)
        if value is not None:
            if as_int(value) is None or as_int(value) != as_float(value):
                raise InputError(
                    f"spectrum meta['{key}'] must be an integer. "
                    f"Received: {value!r} for file {path}"
                )
            primary.header[keyword] = as_int(value)
    primary.header["BUNIT"] = (SDSS_FLUX_UNIT, "flux unit")
    mask_bits = spectrum.mask.astype(np.int32)
    if and_mask is not None:
        and_mask = np.asarray(and_mask)
        if and_mask.shape != spectrum.mask.shape:
            raise InputError(
                f"and_mask must have the spectrum's length {spectrum.mask.size}. "
                f"Received: shape={and_mask.shape} for file {path}"
            )
        mask_bits = np.where(spectrum.mask & (and_mask == 0), 1, and_mask).astype(np.int32)

    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="flux", format="E", array=spectrum.flux),
            fits.Column(name="loglam", format="E", array=loglam),
            fits.Column(name="ivar", format="E", array=spectrum.ivar),
            fits.Column(name="and_mask", format="J", array=mask_bits),
        ],
        name="COADD",
    )
    hdus = [primary, coadd]

    object_class = plain(meta.get("object_class"))
    redshift = meta.get("redshift")
    specobj_columns = []
    if object_class is not None:
        text = str(object_class)
        if not (text.isascii() and text.isprintable()):
            raise InputError(
                "spectrum meta['object_class'] must be printable ASCII. "
                f"Received: {object_class!r} for file {path}"
            )
        specobj_columns.append(
            fits.Column(name="CLASS", format=f"{len(text)}A", array=np.array([text]))
        )
    if redshift is not None:
        if as_float(redshift) is None:
            raise InputError(
                f"spectrum meta['redshift'] must be a finite number. Received: {redshift!r} "
                f"for file {path}"
            )
        specobj_columns.append(
            fits.Column(name="Z", format="E", array=np.array([as_float(redshift)]))
        )
    if specobj_columns:
        hdus.append(fits.BinTableHDU.from_columns(specobj_columns, name="SPECOBJ"))
    return write_bytes_atomically(path, hdulist_bytes(fits.HDUList(hdus)), overwrite=overwrite)

