"""Readers (and an SDSS writer) for one-dimensional optical spectra: SDSS/BOSS and LAMOST.

Every reader returns a :class:`Spectrum` with the same data model, whatever the survey:

* ``wavelength``: ``float64`` Angstrom, **vacuum**, strictly increasing. SDSS and LAMOST both
  publish vacuum wavelengths, so no air-to-vacuum conversion is done.
* ``flux``: ``float32`` in the survey's flux unit. For SDSS that is
  1e-17 erg/s/cm^2/Angstrom. LAMOST low-resolution spectra are only relatively flux-calibrated
  (the overall scale is arbitrary, the shape is right), and their flux is kept as given.
* ``ivar``: ``float32`` inverse variance of ``flux`` (1 / flux_unit^2); 0 means "no information".
* ``mask``: ``bool``, True marks a pixel not to be trusted:
  ``(and_mask != 0) | (ivar <= 0) | ~isfinite(flux)`` (a NaN ``ivar`` is masked too).
* ``meta``: ``dict`` with ``survey`` (``"sdss"`` or ``"lamost"``), ``object_class`` (pipeline
  class, e.g. ``"QSO"``, ``"STAR"``, ``"GALAXY"``; None if unknown), ``redshift`` (float or
  None) and ``path``, plus ``plate``, ``mjd``, ``fiberid`` for SDSS and ``obsid``,
  ``designation`` for LAMOST (None when the file does not say).

SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` (SDSS-III/IV, DR9 onwards)
------------------------------------------------------------------
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

LAMOST low-resolution spectra
-----------------------------
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
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from starqso._util.atomic import write_bytes_atomically
from starqso.errors import InputError
from starqso.io._fits import hdu_data, hdulist_bytes, native, open_fits

SDSS_TELESCOPE = "SDSS 2.5-M"
SDSS_FLUX_UNIT = "1E-17 erg/cm^2/s/Ang"
_LAMOST_MISSING_REDSHIFT = -9999.0
_LAMOST_IMAGE_ROWS = ("flux", "ivar", "wavelength", "andmask", "ormask")


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A one-dimensional spectrum on a strictly increasing vacuum wavelength grid.

    Arrays are converted on construction (``float64`` wavelength, ``float32`` flux and ivar,
    ``bool`` mask, all native byte order) and checked to be 1-D, non-empty, of equal length
    and with a strictly increasing finite wavelength; otherwise :class:`InputError` is raised,
    naming ``meta["path"]`` when there is one.

    Attributes:
        wavelength: Vacuum wavelength in Angstrom, ``float64``, strictly increasing.
        flux: Flux density, ``float32`` (SDSS: 1e-17 erg/s/cm^2/Angstrom; LAMOST: relative).
        ivar: Inverse variance of ``flux``, ``float32``; 0 means no information.
        mask: ``bool``, True for a bad pixel.
        meta: Survey, identifiers, pipeline class and redshift, source path.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        meta = dict(self.meta or {})
        source = meta.get("path")
        where = f"in file {source}" if source else "in spectrum given in memory"
        arrays = {}
        for name, dtype in (
            ("wavelength", np.float64),
            ("flux", np.float32),
            ("ivar", np.float32),
            ("mask", bool),
        ):
            try:
                array = native(getattr(self, name), dtype)
            except (TypeError, ValueError) as err:
                raise InputError(
                    f"spectrum {name} must be a numeric 1-D array. Received: "
                    f"{type(getattr(self, name)).__name__} {where}"
                ) from err
            if array.ndim != 1:
                raise InputError(
                    f"spectrum {name} must be 1-D. Received: shape={array.shape} {where}"
                )
            arrays[name] = array
        lengths = {name: array.size for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(
                f"spectrum arrays must have equal lengths. Received: {lengths} {where}"
            )
        if lengths["wavelength"] == 0:
            raise InputError(f"spectrum is empty (0 pixels); expected at least 1 pixel {where}")
        _check_wavelength(arrays["wavelength"], where)
        for name, array in arrays.items():
            object.__setattr__(self, name, array)
        object.__setattr__(self, "meta", meta)


def _check_wavelength(wavelength: np.ndarray, where: str) -> None:
    bad = np.flatnonzero(~np.isfinite(wavelength) | (wavelength <= 0))
    if bad.size:
        index = int(bad[0])
        raise InputError(
            "wavelength must be finite and positive (Angstrom). "
            f"Received: wavelength[{index}]={wavelength[index]!r} {where}"
        )
    steps = np.diff(wavelength)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        index = int(bad[0]) + 1
        raise InputError(
            "wavelength grid is not strictly increasing. Received: "
            f"wavelength[{index}]={wavelength[index]!r} <= "
            f"wavelength[{index - 1}]={wavelength[index - 1]!r} {where}"
        )


def _bad_pixels(flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray | None) -> np.ndarray:
    mask = (ivar <= 0) | ~np.isfinite(flux) | ~np.isfinite(ivar)
    if and_mask is not None:
        mask |= and_mask != 0
    return mask


def _column_lookup(hdu) -> dict[str, str]:
    return {name.lower(): name for name in hdu.columns.names}


def _require_columns(hdu, required: tuple[str, ...], path: str, what: str) -> dict[str, str]:
    columns = _column_lookup(hdu)
    missing = [name for name in required if name not in columns]
    if missing:
        raise InputError(
            f"{what} table {hdu.name or 'HDU'} must have columns {', '.join(required)}. "
            f"Received: missing {', '.join(missing)} (has {', '.join(hdu.columns.names)}) "
            f"in file {path}"
        )
    return columns


def _plain(value):
    """Header/table scalars as plain Python values; blank strings and NaN become None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _as_int(value):
    value = _plain(value)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_float(value):
    value = _plain(value)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# SDSS


def _sdss_coadd_hdu(hdulist: fits.HDUList):
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
        columns = _column_lookup(hdu)
        table = hdu_data(hdu, path, "SDSS spectrum")
        if table is None or len(table) == 0:
            continue
        row = table[0]
        return {
            "object_class": _plain(row[columns["class"]]) if "class" in columns else None,
            "redshift": _as_float(row[columns["z"]]) if "z" in columns else None,
        }
    return {"object_class": None, "redshift": None}


def _read_sdss(hdulist: fits.HDUList, path: str) -> Spectrum:
    what = "SDSS spectrum"
    hdu = _sdss_coadd_hdu(hdulist)
    if hdu is None or not isinstance(hdu, fits.BinTableHDU):
        raise InputError(
            f"{what} must have a COADD binary table in HDU 1. Received: "
            f"HDUs {[h.name for h in hdulist]} in file {path}"
        )
    columns = _require_columns(hdu, ("flux", "loglam", "ivar"), path, what)
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
        "plate": _as_int(header.get("PLATEID", header.get("PLATE"))),
        "mjd": _as_int(header.get("MJD")),
        "fiberid": _as_int(header.get("FIBERID")),
        **_sdss_specobj(hdulist, path),
        "path": path,
    }
    return Spectrum(wavelength, flux, ivar, _bad_pixels(flux, ivar, and_mask), meta)


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
        return _read_sdss(hdulist, path)


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
            if _as_int(value) is None or _as_int(value) != _as_float(value):
                raise InputError(
                    f"spectrum meta['{key}'] must be an integer. "
                    f"Received: {value!r} for file {path}"
                )
            primary.header[keyword] = _as_int(value)
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

    object_class = _plain(meta.get("object_class"))
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
        if _as_float(redshift) is None:
            raise InputError(
                f"spectrum meta['redshift'] must be a finite number. Received: {redshift!r} "
                f"for file {path}"
            )
        specobj_columns.append(
            fits.Column(name="Z", format="E", array=np.array([_as_float(redshift)]))
        )
    if specobj_columns:
        hdus.append(fits.BinTableHDU.from_columns(specobj_columns, name="SPECOBJ"))
    return write_bytes_atomically(path, hdulist_bytes(fits.HDUList(hdus)), overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# LAMOST


def _lamost_meta(header: fits.Header, path: str) -> dict:
    redshift = _as_float(header.get("Z"))
    if redshift is not None and math.isclose(redshift, _LAMOST_MISSING_REDSHIFT):
        redshift = None
    return {
        "survey": "lamost",
        "obsid": _as_int(header.get("OBSID")),
        "designation": _plain(header.get("DESIG")),
        "object_class": _plain(header.get("CLASS")),
        "redshift": redshift,
        "path": path,
    }


def _is_lamost_image(hdulist: fits.HDUList) -> bool:
    header = hdulist[0].header
    return header.get("NAXIS", 0) == 2 and header.get("NAXIS2") == len(_LAMOST_IMAGE_ROWS)


def _lamost_table_hdu(hdulist: fits.HDUList):
    if len(hdulist) > 1 and isinstance(hdulist[1], fits.BinTableHDU):
        names = {name.lower() for name in hdulist[1].columns.names}
        if {"flux", "wavelength"} <= names:
            return hdulist[1]
    return None


def _read_lamost(hdulist: fits.HDUList, path: str) -> Spectrum:
    what = "LAMOST spectrum"
    header = hdulist[0].header
    if header.get("VACUUM") is False:
        raise InputError(
            f"{what} must have vacuum wavelengths. Received: VACUUM=F (air) in file {path}"
        )
    table_hdu = _lamost_table_hdu(hdulist)
    if table_hdu is not None:
        columns = _require_columns(table_hdu, ("flux", "ivar", "wavelength"), path, what)
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
    return Spectrum(wavelength, flux, ivar, _bad_pixels(flux, ivar, and_mask), meta)


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
        return _read_lamost(hdulist, path)


def read_spectrum(path: str | os.PathLike) -> Spectrum:
    """Read an SDSS/BOSS or LAMOST spectrum, recognising the survey from the file's layout.

    A COADD table (or an HDU 1 table with ``loglam``) means SDSS; ``TELESCOP`` containing
    ``LAMOST``, a ``(5, N)`` primary image or a one-row HDU 1 table with ``FLUX`` and
    ``WAVELENGTH`` means LAMOST.

    Args:
        path: The spectrum file.

    Returns:
        The :class:`Spectrum`, as :func:`read_sdss_spectrum` or :func:`read_lamost_spectrum`
        would return it.

    Raises:
        InputError: The file is unreadable or matches no known layout.

    Example:
        >>> read_spectrum("spec-0266-51602-0001.fits").meta["survey"]  # doctest: +SKIP
        'sdss'
    """
    path = os.fspath(path)
    with open_fits(path, "spectrum") as hdulist:
        if _sdss_coadd_hdu(hdulist) is not None:
            return _read_sdss(hdulist, path)
        telescope = str(hdulist[0].header.get("TELESCOP", ""))
        if (
            "LAMOST" in telescope.upper()
            or _is_lamost_image(hdulist)
            or _lamost_table_hdu(hdulist) is not None
        ):
            return _read_lamost(hdulist, path)
    raise InputError(
        "spectrum layout not recognised; expected an SDSS/BOSS spec file (COADD table with "
        "flux, loglam, ivar) or a LAMOST file ((5, N) primary image, or one-row table with "
        f"FLUX, IVAR, WAVELENGTH in HDU 1). Received: file {path}"
    )
