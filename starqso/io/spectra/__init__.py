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

The file layouts, and the quirks each reader handles, are described in
:mod:`starqso.io.spectra.sdss` (SDSS/BOSS ``spec`` files, read and written) and
:mod:`starqso.io.spectra.lamost` (LAMOST low-resolution spectra);
:mod:`starqso.io.spectra.spectrum` holds the :class:`Spectrum` class itself.
"""

from __future__ import annotations

import os

from starqso.errors import InputError
from starqso.io._fits import open_fits
from starqso.io.spectra.lamost import (
    is_lamost_image,
    lamost_table_hdu,
    read_lamost_hdus,
    read_lamost_spectrum,
)
from starqso.io.spectra.sdss import (
    SDSS_FLUX_UNIT,
    SDSS_TELESCOPE,
    read_sdss_hdus,
    read_sdss_spectrum,
    sdss_coadd_hdu,
    write_sdss_spectrum,
)
from starqso.io.spectra.spectrum import Spectrum

__all__ = [
    "SDSS_FLUX_UNIT",
    "SDSS_TELESCOPE",
    "Spectrum",
    "read_lamost_spectrum",
    "read_sdss_spectrum",
    "read_spectrum",
    "write_sdss_spectrum",
]


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
        if sdss_coadd_hdu(hdulist) is not None:
            return read_sdss_hdus(hdulist, path)
        telescope = str(hdulist[0].header.get("TELESCOP", ""))
        if (
            "LAMOST" in telescope.upper()
            or is_lamost_image(hdulist)
            or lamost_table_hdu(hdulist) is not None
        ):
            return read_lamost_hdus(hdulist, path)
    raise InputError(
        "spectrum layout not recognised; expected an SDSS/BOSS spec file (COADD table with "
        "flux, loglam, ivar) or a LAMOST file ((5, N) primary image, or one-row table with "
        f"FLUX, IVAR, WAVELENGTH in HDU 1). Received: file {path}"
    )
