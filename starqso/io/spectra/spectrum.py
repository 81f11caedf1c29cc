"""The :class:`Spectrum` every spectrum reader returns, and the FITS value helpers the SDSS
and LAMOST readers share (column look-ups, the bad-pixel mask, header scalars as plain
Python values). The data model is described in :mod:`starqso.io.spectra`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from starqso.errors import InputError
from starqso.io._fits import native


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


def bad_pixels(flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray | None) -> np.ndarray:
    """The bad-pixel mask of the data model: no ivar, non-finite flux or ivar, an and-mask bit."""
    mask = (ivar <= 0) | ~np.isfinite(flux) | ~np.isfinite(ivar)
    if and_mask is not None:
        mask |= and_mask != 0
    return mask


def column_lookup(hdu) -> dict[str, str]:
    """``{lower-case name: name}`` of a FITS table's columns (look-ups ignore case)."""
    return {name.lower(): name for name in hdu.columns.names}


def require_columns(hdu, required: tuple[str, ...], path: str, what: str) -> dict[str, str]:
    """:func:`column_lookup`, or one InputError naming the ``required`` columns missing."""
    columns = column_lookup(hdu)
    missing = [name for name in required if name not in columns]
    if missing:
        raise InputError(
            f"{what} table {hdu.name or 'HDU'} must have columns {', '.join(required)}. "
            f"Received: missing {', '.join(missing)} (has {', '.join(hdu.columns.names)}) "
            f"in file {path}"
        )
    return columns


def plain(value):
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


def _as_number(value, kind):
    value = plain(value)
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def as_int(value):
    """A header/table scalar as an int, or None (blank, NaN or not a number)."""
    return _as_number(value, int)


def as_float(value):
    """A header/table scalar as a float, or None (blank, NaN or not a number)."""
    return _as_number(value, float)
