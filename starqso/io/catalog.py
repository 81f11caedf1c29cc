"""Object catalogues: which cutout (and spectrum) belongs to which object, and what it is.

Data model
----------
A catalogue is a CSV file (``.csv`` or ``.csv.gz``, UTF-8, header line first) or a FITS table
(``.fits``, ``.fit``, ``.fits.gz``, ``.fit.gz``; the first table extension) with columns:

=============  ==========================================================================
``id``         required, unique, kept as written (``"001"`` stays ``"001"``) except for
               leading/trailing spaces, which are removed (see below)
``image``      cutout path, relative to the catalogue's folder or absolute
               (required by :func:`read_catalog` by default; blank allowed per row)
``spectrum``   optional spectrum path, same rule; blank means no spectrum
``label``      optional ``STAR`` or ``QSO`` (any case, stored upper case); blank = unknown
``redshift``   optional float; blank = NaN
``u g r i z``  optional float AB magnitudes; blank = NaN
=============  ==========================================================================

Leading and trailing spaces are removed from every text cell, ids included: CSV writers put
a space after the comma and FITS pads strings with blanks, so ``" 0003 "`` is the id
``"0003"`` and is written back that way. Two ids that differ only in such spaces (``" x"``
and ``"x "``) are therefore the same id, and are refused as a duplicate with both spellings
and their rows in the message.

Column names are matched case-insensitively and stored lower case. Other columns are kept
(as strings when read from CSV). Rows are numbered from 1, counting data rows only, in every
message. Paths may contain spaces and any Unicode character; in FITS files text columns are
stored as UTF-8 bytes because FITS strings are otherwise ASCII-only.

The table returned by :func:`read_catalog` carries ``meta["base_dir"]`` (absolute folder of the
catalogue, what relative paths are relative to) and ``meta["path"]`` (absolute path of the
catalogue). :func:`write_catalog` writes path values as they are, so relative paths keep
meaning the same files only when the catalogue is written to the same folder.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from astropy.io import fits
from astropy.table import Column, Table

from starqso._util.atomic import write_bytes_atomically
from starqso.errors import InputError
from starqso.io._fits import check_readable_file, hdu_data, hdulist_bytes, open_fits
from starqso.schema import BANDS, LABEL_NAMES

CATALOG_COLUMNS = ("id", "image", "spectrum", "label", "redshift", *BANDS)

_PATH_COLUMNS = ("image", "spectrum")
_FLOAT_COLUMNS = ("redshift", *BANDS)
_CSV_SUFFIXES = (".csv", ".csv.gz")
_FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")


def _catalog_format(path: str) -> str:
    name = path.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    raise InputError(
        f"catalogue file name must end in {', '.join(_CSV_SUFFIXES + _FITS_SUFFIXES)}. "
        f"Received: {path}"
    )


def _column_names(raw_names: Sequence[str], path: str) -> list[str]:
    names = [str(name).strip().lower() for name in raw_names]
    for position, name in enumerate(names, start=1):
        if not name:
            raise InputError(
                f"catalogue column {position} has a blank name; every column needs a name "
                f"(a trailing comma in the header line adds one). Received: {list(raw_names)} "
                f"in file {path}"
            )
        if names.count(name) > 1:
            raise InputError(
                f"catalogue column names must be unique (ignoring case). Received: '{name}' "
                f"{names.count(name)} times in {list(raw_names)} in file {path}"
            )
    return names


def _read_csv(path: str) -> tuple[list[str], dict[str, list[str]], int]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put at the start.
        with opener(path, "rt", encoding="utf-8-sig", newline="") as stream:
            lines = list(_csv_rows(stream))
    except UnicodeDecodeError as err:
        raise InputError(
            f"catalogue CSV must be UTF-8 text. Received: undecodable byte at position "
            f"{err.start} in file {path}"
        ) from err
    except (OSError, EOFError, csv.Error) as err:
        raise InputError(f"catalogue CSV could not be read ({err}): {path}") from err
    if not lines:
        raise InputError(f"catalogue {path} has no rows; expected a header line and data rows")
    names = _column_names(lines[0][0], path)
    columns: dict[str, list[str]] = {name: [] for name in names}
    for cells, line_number in lines[1:]:
        if len(cells) != len(names):
            raise InputError(
                f"catalogue line {line_number} has {len(cells)} fields but the header has "
                f"{len(names)} ({', '.join(names)}). Received: {cells} in file {path}"
            )
        for name, cell in zip(names, cells, strict=False):
            columns[name].append(cell)
    return names, columns, len(lines) - 1


def _csv_rows(stream):
    reader = csv.reader(stream)
    for cells in reader:
        # Blank lines (often one at the end of hand-edited files) carry no row.
        if any(cell.strip() for cell in cells):
            yield cells, reader.line_num


def _read_fits(path: str) -> tuple[list[str], dict[str, object], int]:
    with open_fits(path, "catalogue") as hdulist:
        table_hdus = [hdu for hdu in hdulist if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))]
        if not table_hdus:
            images = [tuple(hdu.shape) for hdu in hdulist
                      if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2]
            if images:
                # A cutout passed where a catalogue goes: say what it is and what reads it.
                folder = os.path.dirname(path) or "."
                raise InputError(
                    f"catalogue FITS file holds an image of shape {images[0]} and no table: it "
                    f"is a cutout, not a catalogue. To classify it run `starqso predict "
                    f"{folder}` (every cutout in its folder), or give a catalogue (CSV with "
                    f"columns id, image) naming it. Received: file {path}"
                )
            raise InputError(
                f"catalogue FITS file must hold a table extension. Received: HDUs "
                f"{[hdu.name for hdu in hdulist]} in file {path}"
            )
        hdu = table_hdus[0]
        hdu_data(hdu, path, "catalogue")
        try:
            # mask_invalid=False: NaN magnitudes stay NaN instead of becoming masked entries.
            table = Table.read(hdu, character_as_bytes=True, mask_invalid=False)
        except (ValueError, TypeError, KeyError, OSError) as err:
            raise InputError(f"catalogue FITS table could not be read ({err}): {path}") from err
    names = _column_names(table.colnames, path)
    columns = {name: table[original] for name, original in zip(names, table.colnames, strict=False)}
    return names, columns, len(table)


def _cells(column) -> list:
    """Column values as Python objects, with masked entries as None."""
    mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else None
    values = list(np.asarray(column)) if not isinstance(column, list) else column
    if mask is not None:
        values = [None if masked else value for value, masked in zip(values, mask, strict=False)]
    return values


def _text(value, path: str, row: int, name: str, *, strip: bool = True) -> str:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"catalogue text must be UTF-8. Received: {value!r} at row {row} column "
                f"'{name}' in file {path}"
            ) from err
    return str(value).strip() if strip else str(value)


def _number(value, path: str, row: int, name: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (int, float)):
        return float(value)
    text = _text(value, path, row, name)
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError as err:
        raise InputError(
            f"catalogue column '{name}' must hold numbers (blank = unknown). Received: "
            f"{text!r} at row {row} in file {path}"
        ) from err


def _check_one_value_per_row(column, name: str, path: str) -> None:
    if getattr(column, "ndim", 1) != 1:
        raise InputError(
            f"catalogue column '{name}' must hold one value per row. Received: shape "
            f"{column.shape} in file {path}"
        )


def _check_unique_ids(ids: list[str], written: list[str], path: str) -> None:
    """Refuse repeated ids, naming the rows and, where they differ, the spellings as written.

    Ids are compared after stripping (see the module docstring), so ``" x"`` and ``"x "`` are
    the same id; the message shows both spellings, or it would read as ``'x'`` twice.
    """
    seen: set[str] = set()
    for identifier in ids:
        if identifier in seen:
            rows = [row for row, other in enumerate(ids, start=1) if other == identifier]
            spellings = {written[row - 1] for row in rows}
            if len(spellings) == 1:
                where = ", ".join(str(row) for row in rows)
                rule = "catalogue ids must be unique"
            else:
                where = ", ".join(f"{row} ({written[row - 1]!r})" for row in rows)
                rule = ("catalogue ids must be unique once leading/trailing spaces are "
                        "removed (they are not part of an id)")
            raise InputError(
                f"{rule}. Received: id {identifier!r} in rows {where} in file {path}"
            )
        seen.add(identifier)


def _normalised_column(name: str, column, path: str, from_csv: bool):
    if name in _FLOAT_COLUMNS:
        _check_one_value_per_row(column, name, path)
        values = [_number(value, path, row, name) for row, value in enumerate(_cells(column), 1)]
        return np.array(values, dtype=np.float64)
    if name in ("id", "label", *_PATH_COLUMNS) or from_csv:
        _check_one_value_per_row(column, name, path)
        texts = [_text(value, path, row, name) for row, value in enumerate(_cells(column), 1)]
        if name == "id":
            written = [_text(value, path, row, name, strip=False)
                       for row, value in enumerate(_cells(column), 1)]
            for row, identifier in enumerate(texts, start=1):
                if not identifier:
                    raise InputError(
                        f"catalogue id must not be blank. Received: blank id at row {row} "
                        f"in file {path}"
                    )
            _check_unique_ids(texts, written, path)
        if name == "label":
            texts = [text.upper() for text in texts]
            for row, label in enumerate(texts, start=1):
                if label and label not in LABEL_NAMES:
                    raise InputError(
                        f"catalogue label must be {', '.join(LABEL_NAMES)} or blank. "
                        f"Received: {label!r} at row {row} in file {path}"
                    )
        return np.array(texts, dtype=str)
    if getattr(column, "dtype", None) is not None and column.dtype.kind == "S":
        return np.char.decode(np.asarray(column), "utf-8", errors="replace")
    return column


def read_catalog(path: str | os.PathLike, *, require: Sequence[str] = ("id", "image")) -> Table:
    """Read an object catalogue from CSV or FITS into an astropy Table.

    Args:
        path: Catalogue file (``.csv``, ``.csv.gz``, ``.fits``, ``.fit``, ``.fits.gz``).
        require: Columns that must be present (case-insensitive). ``id`` is always required.

    Returns:
        Table with lower-case column names in file order; ``id``, ``image``, ``spectrum`` and
        ``label`` as ``str`` (stripped; ``label`` upper case), ``redshift`` and ``u..z`` as
        ``float64`` (blank = NaN). ``meta["base_dir"]`` is the catalogue's absolute folder and
        ``meta["path"]`` its absolute path.

    Raises:
        InputError: The file is missing, empty or unreadable, its extension is unknown, it has
            no rows, a required column is missing, an id is blank or repeated, a label is not
            STAR/QSO/blank, or a numeric column holds text.

    Example:
        >>> catalog = read_catalog("train/catalog.csv")  # doctest: +SKIP
        >>> catalog["id"][0], resolve_path(catalog, catalog["image"][0])
        ('001', '/data/train/cutouts/001.fits')
    """
    path = check_readable_file(path, "catalogue")
    catalog_format = _catalog_format(path)
    if catalog_format == "csv":
        names, columns, row_count = _read_csv(path)
    else:
        names, columns, row_count = _read_fits(path)
    if row_count == 0:
        raise InputError(f"catalogue {path} has no rows; expected at least one object")
    required = list(dict.fromkeys(["id", *(str(name).strip().lower() for name in require)]))
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(
            f"catalogue must have column(s) {', '.join(missing)}. Received: columns "
            f"{', '.join(names)} in file {path}"
        )
    table = Table()
    for name in names:
        values = _normalised_column(name, columns[name], path, catalog_format == "csv")
        table[name] = values if isinstance(values, Column) else Column(values, name=name)
    table.meta["base_dir"] = os.path.dirname(os.path.abspath(path))
    table.meta["path"] = os.path.abspath(path)
    return table


def resolve_path(table: Table, value) -> str:
    """Absolute path of an ``image`` or ``spectrum`` value of a catalogue row.

    Args:
        table: Catalogue from :func:`read_catalog`; relative values are taken relative to
            ``table.meta["base_dir"]`` (the current folder if the table has none).
        value: The cell, e.g. ``table["image"][row]``.

    Returns:
        ``''`` for a blank value, the value itself if it is absolute, else the joined and
        normalised absolute path.

    Example:
        >>> catalog = read_catalog("/data/train/catalog.csv")  # doctest: +SKIP
        >>> resolve_path(catalog, "cutouts/001.fits")
        '/data/train/cutouts/001.fits'
    """
    if value is None or value is np.ma.masked:
        return ""
    text = _text(value, "<table>", 0, "path")
    if not text:
        return ""
    if os.path.isabs(text):
        return text
    base_dir = table.meta.get("base_dir") or os.getcwd()
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), text))


def _csv_strings(column, name: str, path: str) -> list[str]:
    _check_one_value_per_row(column, name, f"output file {path} (CSV)")
    strings = []
    for value in _cells(column):
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            strings.append("")
        elif isinstance(value, bytes):
            strings.append(value.decode("utf-8", errors="replace"))
        elif isinstance(value, float):
            # repr gives the shortest text that parses back to the same float; NaN is blank
            # so that it reads back as "unknown" like a hand-written blank cell.
            strings.append("" if value != value else repr(value))
        else:
            strings.append(str(value))
    return strings


def _csv_bytes(table: Table, path: str) -> bytes:
    columns = [_csv_strings(table[name], name, path) for name in table.colnames]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.colnames)
    writer.writerows(zip(*columns, strict=False))
    return buffer.getvalue().encode("utf-8")


def _fits_bytes(table: Table, path: str) -> bytes:
    # A fresh table without meta: base_dir/path would land in the header as cards and make
    # the bytes depend on where the catalogue was read from.
    plain = Table()
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind == "U":
            encoded = np.char.encode(np.asarray(column), "utf-8")
            column = encoded.astype(f"S{max(encoded.dtype.itemsize, 1)}")
        elif column.dtype.kind == "O":
            raise InputError(
                f"catalogue column '{name}' holds Python objects; FITS needs numbers or text. "
                f"Received: dtype=object for file {path}"
            )
        plain[name] = column
    try:
        hdu = fits.table_to_hdu(plain)
    except (ValueError, TypeError) as err:
        raise InputError(f"catalogue could not be written as FITS ({err}): {path}") from err
    hdu.name = "CATALOG"
    return hdulist_bytes(fits.HDUList([fits.PrimaryHDU(), hdu]))


def write_catalog(table: Table, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write a catalogue as CSV or FITS, chosen by the file name's extension.

    CSV output is UTF-8 with ``\\n`` line ends, floats written with ``repr`` (they read back
    bit for bit) and NaN or masked values as blank cells, so the same table always gives the
    same bytes. FITS output puts the table in HDU 1 (``EXTNAME = 'CATALOG'``) with text as
    UTF-8 bytes. Either way the file is written atomically.

    Args:
        table: Catalogue with at least an ``id`` column, e.g. from :func:`read_catalog`.
        path: Output file (``.csv``, ``.csv.gz``, ``.fits``, ``.fit``, ``.fits.gz``).
        overwrite: Replace an existing file if True.

    Returns:
        The output path as a ``str``.

    Raises:
        InputError: Unknown extension, no ``id`` column, a column that cannot be stored in the
            format (e.g. multi-valued cells in CSV), or an existing file without ``overwrite``.

    Example:
        >>> catalog = read_catalog("train/catalog.csv")  # doctest: +SKIP
        >>> write_catalog(catalog, "train/catalog.fits", overwrite=True)
        'train/catalog.fits'
    """
    path = os.fspath(path)
    catalog_format = _catalog_format(path)
    if "id" not in table.colnames:
        raise InputError(
            f"catalogue to write must have an 'id' column. Received: columns "
            f"{', '.join(table.colnames)} for file {path}"
        )
    payload = _csv_bytes(table, path) if catalog_format == "csv" else _fits_bytes(table, path)
    return write_bytes_atomically(path, payload, overwrite=overwrite)


def sidecar_path(output):
    """The JSON side-car of a CSV output: ``OUTPUT.json`` (``predictions.csv.json``).

    The predictions and embeddings tables written as CSV carry their settings (prior,
    threshold, model) in this file beside them.

    Args:
        output: the CSV output's path.

    Returns:
        ``pathlib.Path``.

    Example:
        >>> sidecar_path("out/predictions.csv").name
        'predictions.csv.json'
    """
    output = pathlib.Path(output)
    return output.with_name(output.name + ".json")
