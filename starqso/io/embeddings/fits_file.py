"""The embeddings table as FITS: a binary table (extension ``EMBEDDINGS``), the record as
JSON in the ``RECORD`` header card."""

from __future__ import annotations

import json

import numpy as np

from starqso.errors import InputError
from starqso.io._fits import hdu_data, open_fits
from starqso.io.embeddings.formats import RawTable, flat_spaces, fsync, parse_record
from starqso.io.embeddings.table import FLOAT_COLUMNS, SPACES, TEXT_COLUMNS

_FITS_EXTNAME = "EMBEDDINGS"


def _utf8(values):
    encoded = np.char.encode(np.asarray(values, dtype=str), "utf-8")
    return encoded.astype(f"S{max(encoded.dtype.itemsize, 1)}")


def write_fits(table, temporary: str) -> None:
    """Write ``table`` as a FITS binary table, its record in the ``RECORD`` card."""
    from astropy.io import fits

    text = {name: _utf8(values) for name, values in
            (("id", table.ids), ("label", table.columns["label"]),
             ("flag", table.columns["flag"]))}
    # Text as UTF-8 bytes, as starqso.io.write_catalog stores it: FITS strings are ASCII.
    columns = [fits.Column("id", f"{text['id'].dtype.itemsize}A", array=text["id"]),
               fits.Column("p_qso", "D", array=table.columns["p_qso"]),
               fits.Column("label", f"{text['label'].dtype.itemsize}A", array=text["label"]),
               fits.Column("flag", f"{text['flag'].dtype.itemsize}A", array=text["flag"]),
               fits.Column("qflag", "K", array=table.columns["qflag"]),
               fits.Column("outlier", "D", array=table.columns["outlier"]),
               fits.Column("p_star", "D", array=table.columns["p_star"]),
               fits.Column("p_galaxy", "D", array=table.columns["p_galaxy"])]
    for space, value in table.spaces.items():
        columns.append(fits.Column(space, f"{value.shape[1]}E", array=value))
    hdu = fits.BinTableHDU.from_columns(columns, name=_FITS_EXTNAME)
    # ensure_ascii: header cards are ASCII; a Unicode path in the record becomes \\u escapes,
    # and astropy splits the long value over CONTINUE cards and joins it back on reading.
    hdu.header["RECORD"] = json.dumps(table.record, sort_keys=True)
    for space, value in table.spaces.items():
        hdu.header[f"DIM{space.upper()}"[:8]] = (value.shape[1], f"dimension of {space}")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(temporary, output_verify="exception")
    fsync(temporary)


def _array_space(values, space, path):
    """An ``(N, d)`` float32 array from an array column: 2-D already, or one array per row."""
    values = np.asarray(values) if not isinstance(values, list) else values
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.dtype.kind not in "fiu":
            raise InputError(f"embeddings column '{space}' must hold numbers, one array per "
                             f"row. Received: dtype {values.dtype}, shape {values.shape} in "
                             f"file {path}")
        return values.astype(np.float32)
    lengths = [None if cell is None else len(cell) for cell in values]
    known = [length for length in lengths if length is not None]
    if len(set(known)) > 1:
        first = lengths.index(known[0])
        other = next(row for row, length in enumerate(lengths)
                     if length is not None and length != known[0])
        raise InputError(f"embeddings column '{space}' must have the same length in every row "
                         f"(ragged dimensions). Received: {known[0]} numbers at row "
                         f"{first + 1}, {lengths[other]} at row {other + 1} in file {path}")
    dim = known[0] if known else 0
    result = np.full((len(values), dim), np.nan, np.float32)
    for row, cell in enumerate(values):
        if cell is not None:
            result[row] = np.asarray(cell, np.float32)
    return result


def _text_column(values):
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace")
    return values.astype(str)


def read_fits(path) -> RawTable:
    """The columns, spaces and record of a FITS file's (``EMBEDDINGS``) binary table."""
    from astropy.io import fits
    from astropy.table import Table

    with open_fits(path, "embeddings") as hdulist:
        tables = [hdu for hdu in hdulist if isinstance(hdu, fits.BinTableHDU)]
        named = [hdu for hdu in tables if hdu.name == _FITS_EXTNAME]
        if not tables:
            raise InputError(f"embeddings FITS file must hold a binary table. Received: HDUs "
                             f"{[hdu.name for hdu in hdulist]} in file {path}")
        hdu = (named or tables)[0]
        hdu_data(hdu, path, "embeddings")
        try:
            table = Table.read(hdu, character_as_bytes=True, mask_invalid=False)
        except (ValueError, TypeError, KeyError, OSError) as err:
            raise InputError(f"embeddings FITS table could not be read ({err}): {path}") from err
        header = hdu.header
        record = parse_record(header["RECORD"], path, "RECORD card") if "RECORD" in header else {}
    original = {name.lower(): name for name in table.colnames}
    names = list(original)
    ids = _text_column(table[original["id"]]) if "id" in original else None
    spaces = {space: _array_space(list(table[original[space]]) if table[original[space]].dtype
                                  == object else np.asarray(table[original[space]]), space, path)
              for space in SPACES if space in original}
    for space, space_names in flat_spaces(names, path).items():
        if space not in spaces:
            spaces[space] = np.column_stack([np.asarray(table[original[name]], np.float32)
                                             for name in space_names])
    columns = {}
    for name in FLOAT_COLUMNS:
        if name in original:
            columns[name] = _fits_numbers(table[original[name]], name, path, np.float64)
    if "qflag" in original:
        columns["qflag"] = _fits_numbers(table[original["qflag"]], "qflag", path, np.int64)
    for name in TEXT_COLUMNS:
        if name in original:
            columns[name] = _text_column(table[original[name]])
    return RawTable(ids, spaces, columns, record, names)


def _fits_numbers(column, name, path, dtype):
    values = np.asarray(column)
    if values.ndim != 1 or values.dtype.kind not in "fiub":
        raise InputError(f"embeddings column '{name}' must hold one number per row. Received: "
                         f"dtype {values.dtype}, shape {values.shape} in file {path}")
    return values.astype(dtype)
