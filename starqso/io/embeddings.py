"""The embeddings table ``starqso embed`` writes and ``similar`` / ``cluster`` read.

Data model
----------
One row per input row, in input order:

=============  ==========================================================================
``id``         str, unique, not blank (leading/trailing spaces removed on reading, as in
               :mod:`starqso.io.catalog`)
``p_qso``      float, NaN when the row was not classified
``label``      ``STAR``, ``QSO`` or blank
``flag``       str, blank for none; says why a row has no embedding
``qflag``      int, the quality bits of :data:`starqso.schema.QFLAG_BITS`
``outlier``    float, NaN when unknown (:func:`starqso.discovery.outlier_scores`)
``vector``     float32 ``(N, d)``: the generated spectral vector (always)
``metric``     float32 ``(N, m)``: the metric-learning head's embedding (optional)
=============  ==========================================================================

A row that could not be embedded keeps its place with NaN embeddings and a non-empty
``flag``; :meth:`EmbeddingTable.usable` is the mask of rows that have one.

Three formats, chosen by the file name's suffix:

* ``.csv``: the columns above, then ``vector_000`` ... ``vector_127`` and ``metric_00`` ...
  (blank cells for NaN); the record (model, prior, provenance) in the side-car
  ``OUTPUT.json`` (:func:`starqso.inference.sidecar_path`, as ``predict`` writes it);
* ``.fits``: a binary table (extension ``EMBEDDINGS``) with the spaces as fixed-length array
  columns ``vector`` and ``metric``, text as UTF-8 bytes, and the record as JSON in the
  ``RECORD`` header keyword (ASCII-escaped, long values in ``CONTINUE`` cards);
* ``.parquet``: one file, the spaces as fixed-size list columns of float32, the record as JSON
  under the schema metadata key ``starqso`` (needs pyarrow: ``starqso[survey]``).

CSV is for people and spreadsheets: 10^6 rows of 160 numbers take about a minute and a half
each way (Python parses every cell); Parquet and FITS take seconds.

Readers also take the other layout of each space where the format allows it (flat
``vector_NNN`` columns in FITS and Parquet, variable-length list columns with equal lengths),
so tables written by other tools load too. Writes are atomic: nothing is at the output until
it is complete, and a CSV's side-car is removed before the CSV is replaced and written after,
so a CSV is never beside the record of another run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import re

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError
from starqso.io.catalog import sidecar_path
from starqso.schema import CLASS_NAMES

__all__ = [
    "COLUMNS",
    "SPACES",
    "SUFFIXES",
    "EmbeddingTable",
    "read_embeddings",
    "space_columns",
    "write_embeddings",
]

SUFFIXES = (".csv", ".fits", ".parquet")
#: The per-row columns, in file order, before the embeddings.
COLUMNS = ("id", "p_qso", "label", "flag", "qflag", "outlier")
#: The embedding spaces, in file order; ``vector`` is always there.
SPACES = ("vector", "metric")
_FLOAT_COLUMNS = ("p_qso", "outlier")
_TEXT_COLUMNS = ("label", "flag")
_PER_ROW = ("p_qso", "label", "flag", "qflag", "outlier")
_FLAT_NAME = re.compile(r"^(vector|metric)_(\d+)$")
# Rows per block when formatting or parsing CSV: bounds the Python objects alive at once
# (a 10^6-row file would otherwise hold ~10^8 cell strings).
_CSV_BLOCK = 8192
_FITS_EXTNAME = "EMBEDDINGS"
_PARQUET_KEY = b"starqso"


def space_columns(space: str, dim: int) -> list[str]:
    """The CSV column names of a space: ``vector_000`` ... or ``metric_00`` ....

    Args:
        space: ``"vector"`` or ``"metric"``.
        dim: the space's dimension.

    Returns:
        ``dim`` names, zero-padded to the same width (3 digits for ``vector``, 2 for
        ``metric``, more when the dimension needs them).

    Example:
        >>> space_columns("metric", 3)
        ['metric_00', 'metric_01', 'metric_02']
    """
    width = max(3 if space == "vector" else 2, len(str(max(dim - 1, 0))))
    return [f"{space}_{i:0{width}d}" for i in range(dim)]


@dataclasses.dataclass
class EmbeddingTable:
    """Embeddings of N rows and their per-row columns.

    Shapes and types are checked (and converted) on construction; a mismatch is a
    programming error (``ValueError``), not a user's.

    Attributes:
        ids: str ``(N,)``.
        spaces: ``{"vector": float32 (N, d)[, "metric": float32 (N, m)]}``; NaN rows for
            objects without an embedding.
        columns: ``p_qso`` (float64, NaN when not classified), ``label`` (str), ``flag``
            (str), ``qflag`` (int64), ``outlier`` (float64, NaN when unknown), each ``(N,)``;
            missing ones are filled with those defaults (``qflag`` 0).
        record: provenance (model, prior, ...), a JSON-serialisable dict.

    Example:
        >>> table = EmbeddingTable(["a", "b"], {"vector": np.zeros((2, 4))}, {})
        >>> table.usable().tolist(), table.columns["qflag"].tolist()
        ([True, True], [0, 0])
    """

    ids: np.ndarray
    spaces: dict
    columns: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=str)
        if self.ids.ndim != 1:
            raise ValueError(f"ids must be one-dimensional. Received: shape {self.ids.shape}")
        count = len(self.ids)
        if "vector" not in self.spaces or set(self.spaces) - set(SPACES):
            raise ValueError(f"spaces must be vector and optionally metric. Received: "
                             f"{sorted(self.spaces)}")
        spaces = {}
        for name in SPACES:
            if name not in self.spaces:
                continue
            value = np.asarray(self.spaces[name], np.float32)
            if value.ndim != 2 or len(value) != count or not value.shape[1]:
                raise ValueError(f"space {name} must be ({count}, d) with d >= 1. Received: "
                                 f"{value.shape}")
            spaces[name] = value
        self.spaces = spaces
        unknown = set(self.columns) - set(_PER_ROW)
        if unknown:
            raise ValueError(f"columns must be among {', '.join(_PER_ROW)}. Received: "
                             f"{sorted(unknown)}")
        defaults = {"p_qso": np.full(count, np.nan), "label": np.full(count, "", dtype=str),
                    "flag": np.full(count, "", dtype=str), "qflag": np.zeros(count, np.int64),
                    "outlier": np.full(count, np.nan)}
        columns = {**defaults, **self.columns}
        for name in _FLOAT_COLUMNS:
            columns[name] = np.asarray(columns[name], np.float64)
        for name in _TEXT_COLUMNS:
            columns[name] = np.asarray(columns[name], dtype=str)
        columns["qflag"] = np.asarray(columns["qflag"], np.int64)
        for name in _PER_ROW:
            if columns[name].shape != (count,):
                raise ValueError(f"column {name} must be ({count},). Received: "
                                 f"{columns[name].shape}")
        self.columns = {name: columns[name] for name in _PER_ROW}
        if not isinstance(self.record, dict):
            raise ValueError(f"record must be a dict. Received: {type(self.record).__name__}")

    def __len__(self) -> int:
        return len(self.ids)

    def usable(self, space: str = "vector") -> np.ndarray:
        """The rows with a finite embedding in ``space``: bool ``(N,)``.

        Example:
            >>> table = EmbeddingTable(["a", "b"], {"vector": [[1.0], [np.nan]]})
            >>> table.usable("vector").tolist()
            [True, False]
        """
        if space not in self.spaces:
            raise InputError(f"the table has no {space!r} embeddings (it has "
                             f"{', '.join(self.spaces)}). Received: space={space}")
        return np.isfinite(self.spaces[space]).all(axis=1)


def _suffix(path) -> str:
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"an embeddings file name must end in {', '.join(SUFFIXES)}. "
                         f"Received: {path}")
    return suffix


def _require_pyarrow(path) -> None:
    from starqso._util.extras import require_survey

    require_survey(f"the Parquet embeddings file {path}", "pyarrow",
                   note="or write .csv or .fits")


def _check_unique(ids, where: str) -> None:
    """Refuse a blank or repeated id, naming the id and both rows (numbered from 1)."""
    blank = np.flatnonzero(np.char.str_len(ids) == 0) if len(ids) else []
    if len(blank):
        raise InputError(f"embeddings ids must not be blank. Received: blank id at row "
                         f"{blank[0] + 1} {where}")
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):
        # The first repeat in file order, so the message names the earliest pair.
        second = min(order[repeated + 1])
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise InputError(f"embeddings ids must be unique. Received: id {str(ids[second])!r} "
                         f"in rows {first + 1} and {second + 1} {where}")


# --- writing -----------------------------------------------------------------------------------


def _fsync(path: str) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _float_text(values) -> list[str]:
    # repr is the shortest text that reads back to the same float64; NaN is blank, as in
    # every starqso CSV ("unknown").
    return ["" if value != value else repr(value) for value in values.tolist()]


def _csv_field(text: str) -> str:
    # csv.QUOTE_MINIMAL by hand: quote a field holding a comma, a quote or a line break.
    if any(mark in text for mark in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_blocks(table):
    """The CSV text of ``table``, a block of rows at a time (what csv.writer would write)."""
    names = [name for space, value in table.spaces.items()
             for name in space_columns(space, value.shape[1])]
    yield ",".join(_csv_field(name) for name in (*COLUMNS, *names)) + "\n"
    columns = table.columns
    matrix = np.concatenate(list(table.spaces.values()), axis=1)
    # One %-format per row is ~3x faster than a format() per cell; ".9g" reads back to the
    # same float32 (9 significant digits always suffice).
    row_format = ",".join(["%.9g"] * matrix.shape[1])
    for start in range(0, len(table), _CSV_BLOCK):
        stop = min(start + _CSV_BLOCK, len(table))
        p_qso = _float_text(columns["p_qso"][start:stop])
        outlier = _float_text(columns["outlier"][start:stop])
        block = matrix[start:stop]
        finite = np.isfinite(block).all(axis=1)
        lines = []
        for offset, values in enumerate(block.tolist()):
            row = start + offset
            if finite[offset]:
                vector = row_format % tuple(values)
            else:
                # NaN is a blank cell ("no embedding"); inf stays "inf".
                vector = ",".join("" if value != value else format(value, ".9g")
                                  for value in values)
            lines.append(f"{_csv_field(table.ids[row])},{p_qso[offset]},"
                         f"{_csv_field(columns['label'][row])},"
                         f"{_csv_field(columns['flag'][row])},{int(columns['qflag'][row])},"
                         f"{outlier[offset]},{vector}\n")
        yield "".join(lines)


def _write_csv(table, temporary: str) -> None:
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        for text in _csv_blocks(table):
            stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _utf8(values):
    encoded = np.char.encode(np.asarray(values, dtype=str), "utf-8")
    return encoded.astype(f"S{max(encoded.dtype.itemsize, 1)}")


def _write_fits(table, temporary: str) -> None:
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
               fits.Column("outlier", "D", array=table.columns["outlier"])]
    for space, value in table.spaces.items():
        columns.append(fits.Column(space, f"{value.shape[1]}E", array=value))
    hdu = fits.BinTableHDU.from_columns(columns, name=_FITS_EXTNAME)
    # ensure_ascii: header cards are ASCII; a Unicode path in the record becomes \\u escapes,
    # and astropy splits the long value over CONTINUE cards and joins it back on reading.
    hdu.header["RECORD"] = json.dumps(table.record, sort_keys=True)
    for space, value in table.spaces.items():
        hdu.header[f"DIM{space.upper()}"[:8]] = (value.shape[1], f"dimension of {space}")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(temporary, output_verify="exception")
    _fsync(temporary)


def _write_parquet(table, temporary: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {"id": pa.array(table.ids.tolist(), pa.string()),
              "p_qso": pa.array(table.columns["p_qso"], pa.float64()),
              "label": pa.array(table.columns["label"].tolist(), pa.string()),
              "flag": pa.array(table.columns["flag"].tolist(), pa.string()),
              "qflag": pa.array(table.columns["qflag"], pa.int64()),
              "outlier": pa.array(table.columns["outlier"], pa.float64())}
    for space, value in table.spaces.items():
        # NaN stays a NaN value (not null), so the vector round-trips bit for bit.
        arrays[space] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(value).reshape(-1), pa.float32()), value.shape[1])
    arrow = pa.table(arrays).replace_schema_metadata(
        {_PARQUET_KEY: json.dumps(table.record, sort_keys=True)})
    pq.write_table(arrow, temporary)
    _fsync(temporary)


def write_embeddings(table: EmbeddingTable, path: str | os.PathLike) -> str:
    """Write ``table`` to ``path`` as CSV (+ side-car JSON), FITS or Parquet, by its suffix.

    The file appears whole or not at all (temporary file + rename; an existing file is
    replaced). For CSV the side-car ``PATH.json`` holds ``table.record``; it is removed just
    before the CSV is renamed into place and written right after, so a kill in between leaves
    a CSV without a record, never one beside another run's.

    Args:
        table: an :class:`EmbeddingTable`.
        path: the output file (``.csv``, ``.fits`` or ``.parquet``); its folder is created.

    Returns:
        The path as ``str``.

    Raises:
        InputError: another suffix, a blank or repeated id, or ``.parquet`` without pyarrow.

    Example:
        >>> table = EmbeddingTable(["a"], {"vector": np.zeros((1, 128))})
        >>> write_embeddings(table, "embeddings.parquet")  # doctest: +SKIP
        'embeddings.parquet'
    """
    from starqso._util.atomic import atomic_path, write_json_atomically

    if not isinstance(table, EmbeddingTable):
        raise TypeError(f"table must be an EmbeddingTable. Received: {type(table).__name__}")
    path = os.fspath(path)
    suffix = _suffix(path)
    # Compared as the reader will see them (stripped), so what is written reads back.
    _check_unique(np.char.strip(table.ids), f"for file {path}")
    if suffix == ".parquet":
        _require_pyarrow(path)
    # Fails here, before anything is written, when the record is not JSON.
    json.dumps(table.record)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = {".csv": _write_csv, ".fits": _write_fits, ".parquet": _write_parquet}[suffix]
    sidecar = sidecar_path(path)
    with atomic_path(path) as temporary:
        writer(table, temporary)
        if suffix == ".csv":
            sidecar.unlink(missing_ok=True)
    if suffix == ".csv":
        write_json_atomically(sidecar, table.record)
    return path


# --- reading -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Raw:
    """What a format reader found, before the checks every format shares."""

    ids: np.ndarray
    spaces: dict
    columns: dict
    record: dict
    names: list


def _flat_spaces(names, path) -> dict:
    """``{space: [column name of component 0, 1, ...]}`` of flat ``vector_NNN`` columns."""
    found: dict = {}
    for name in names:
        match = _FLAT_NAME.match(name)
        if match:
            found.setdefault(match.group(1), {}).setdefault(int(match.group(2)), []).append(name)
    result = {}
    for space, by_index in found.items():
        twice = [spellings for spellings in by_index.values() if len(spellings) > 1]
        if twice:
            raise InputError(f"embeddings file has two columns for one {space} component. "
                             f"Received: columns {', '.join(twice[0])} in file {path}")
        dim = max(by_index) + 1
        missing = [index for index in range(dim) if index not in by_index]
        if missing:
            width = len(by_index[max(by_index)][0]) - len(space) - 1
            raise InputError(
                f"embeddings file's {space} columns must be {space}_{0:0{width}d} ... "
                f"{space}_{dim - 1:0{width}d} without gaps (ragged or wrong dimensions). "
                f"Received: no {space} component {missing[0]} among {len(by_index)} columns "
                f"in file {path}")
        result[space] = [by_index[index][0] for index in range(dim)]
    return result


def _number(text, path, name, row) -> float:
    try:
        return float(text) if text.strip() else np.nan
    except ValueError:
        raise InputError(f"embeddings column '{name}' must hold numbers (blank = unknown). "
                         f"Received: {text[:40]!r} at row {row} in file {path}") from None


def _numbers(texts, path, name, first_row) -> np.ndarray:
    """One CSV column of numbers (blank = NaN) as float64."""
    values = np.empty(len(texts))
    for offset, text in enumerate(texts):
        values[offset] = _number(text, path, name, first_row + offset)
    return values


def _vectors(rows, path, names, first_row) -> np.ndarray:
    """Rows of CSV cells (the columns ``names``) as float32, blank = NaN.

    float() per row through map is several times faster than NumPy's string-to-float cast;
    only a row with a blank or bad cell takes the cell-by-cell path that names the cell.
    """
    values = np.empty((len(rows), len(names)), np.float32)
    for offset, cells in enumerate(rows):
        try:
            values[offset] = list(map(float, cells))
        except ValueError:
            values[offset] = [_number(text, path, name, first_row + offset)
                              for text, name in zip(cells, names, strict=False)]
    return values


def _integers(texts, path, name, first_row):
    values = []
    for row, text in enumerate(texts, start=first_row):
        text = text.strip()
        try:
            values.append(int(text) if text else 0)
        except ValueError:
            raise InputError(f"embeddings column '{name}' must hold whole numbers (blank = 0)."
                             f" Received: {text[:40]!r} at row {row} in file {path}") from None
    return values


def _csv_header(header, path):
    names = [name.strip().lower() for name in header]
    for position, name in enumerate(names, start=1):
        if not name:
            raise InputError(f"embeddings CSV column {position} has a blank name. Received: "
                             f"header {header[:8]} in file {path}")
        if names.count(name) > 1:
            raise InputError(f"embeddings CSV column names must be unique (ignoring case). "
                             f"Received: '{name}' {names.count(name)} times in file {path}")
    return names


def _read_csv(path) -> _Raw:
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put at the start.
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise InputError(f"embeddings CSV has no header line; expected id, p_qso, ..., "
                                 f"vector_000 ...: {path}")
            names = _csv_header(header, path)
            flat = _flat_spaces(names, path)
            position = {name: index for index, name in enumerate(names)}
            plain = [name for name in ("id", *_PER_ROW) if name in position]
            cells = {name: [] for name in plain}
            blocks = {space: [] for space in flat}
            row_number = 0
            block = []

            def flush():
                for name in plain:
                    column = position[name]
                    cells[name].extend(row[column] for row in block)
                for space, space_names in flat.items():
                    columns = [position[name] for name in space_names]
                    if columns == list(range(columns[0], columns[0] + len(columns))):
                        # starqso's own layout: one slice per row instead of d look-ups.
                        low, high = columns[0], columns[0] + len(columns)
                        texts = [row[low:high] for row in block]
                    else:
                        texts = [[row[column] for column in columns] for row in block]
                    blocks[space].append(_vectors(texts, path, space_names,
                                                  row_number - len(block) + 1))
                block.clear()

            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines (often one at the end) carry no row
                row_number += 1
                if len(row) != len(names):
                    raise InputError(f"embeddings CSV row {row_number} (line {reader.line_num})"
                                     f" has {len(row)} fields but the header has "
                                     f"{len(names)}. Received: {len(row)} fields in file {path}")
                block.append(row)
                if len(block) == _CSV_BLOCK:
                    flush()
            flush()
    except UnicodeDecodeError as err:
        raise InputError(f"embeddings CSV must be UTF-8 text. Received: undecodable byte at "
                         f"position {err.start} in file {path}") from err
    except (OSError, csv.Error) as err:
        raise InputError(f"embeddings CSV could not be read ({err}): {path}") from err
    columns = {}
    for name in _FLOAT_COLUMNS:
        if name in cells:
            columns[name] = _numbers(cells[name], path, name, 1)
    for name in _TEXT_COLUMNS:
        if name in cells:
            columns[name] = cells[name]
    if "qflag" in cells:
        columns["qflag"] = _integers(cells["qflag"], path, "qflag", 1)
    spaces = {space: np.concatenate(parts) if parts else np.zeros((0, len(flat[space])),
                                                                  np.float32)
              for space, parts in blocks.items()}
    record = {}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            record = strict_json.read_json(sidecar)
        except strict_json.DuplicateKeyError:
            raise
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"embeddings side-car must be JSON ({reason}). Received: file "
                             f"{sidecar}") from err
        if not isinstance(record, dict):
            raise InputError(f"embeddings side-car must hold a JSON object. Received: "
                             f"{type(record).__name__} in file {sidecar}")
    return _Raw(cells.get("id"), spaces, columns, record, names)


def _record(text, path, where):
    try:
        record = strict_json.loads(text, f"embeddings record ({where}) of {path}")
    except strict_json.DuplicateKeyError:
        raise
    except ValueError as err:
        raise InputError(f"embeddings record ({where}) must be JSON ({err}). Received: file "
                         f"{path}") from err
    if not isinstance(record, dict):
        raise InputError(f"embeddings record ({where}) must be a JSON object. Received: "
                         f"{type(record).__name__} in file {path}")
    return record


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


def _read_fits(path) -> _Raw:
    from astropy.io import fits
    from astropy.table import Table

    from starqso.io._fits import hdu_data, open_fits

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
        record = _record(header["RECORD"], path, "RECORD card") if "RECORD" in header else {}
    original = {name.lower(): name for name in table.colnames}
    names = list(original)
    ids = _text_column(table[original["id"]]) if "id" in original else None
    spaces = {space: _array_space(list(table[original[space]]) if table[original[space]].dtype
                                  == object else np.asarray(table[original[space]]), space, path)
              for space in SPACES if space in original}
    for space, space_names in _flat_spaces(names, path).items():
        if space not in spaces:
            spaces[space] = np.column_stack([np.asarray(table[original[name]], np.float32)
                                             for name in space_names])
    columns = {}
    for name in _FLOAT_COLUMNS:
        if name in original:
            columns[name] = _fits_numbers(table[original[name]], name, path, np.float64)
    if "qflag" in original:
        columns["qflag"] = _fits_numbers(table[original["qflag"]], "qflag", path, np.int64)
    for name in _TEXT_COLUMNS:
        if name in original:
            columns[name] = _text_column(table[original[name]])
    return _Raw(ids, spaces, columns, record, names)


def _fits_numbers(column, name, path, dtype):
    values = np.asarray(column)
    if values.ndim != 1 or values.dtype.kind not in "fiub":
        raise InputError(f"embeddings column '{name}' must hold one number per row. Received: "
                         f"dtype {values.dtype}, shape {values.shape} in file {path}")
    return values.astype(dtype)


def _arrow_space(column, space, path):
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
            or pa.types.is_large_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise InputError(f"embeddings column '{space}' must be a list of numbers per row. "
                         f"Received: type {kind} in file {path}")
    count = len(column)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        known = np.flatnonzero(~nulls)
        distinct = np.unique(lengths[known]) if len(known) else np.array([0])
        if len(distinct) > 1:
            first = int(known[0])
            other = int(known[np.flatnonzero(lengths[known] != lengths[first])[0]])
            raise InputError(f"embeddings column '{space}' must have the same length in every "
                             f"row (ragged dimensions). Received: {int(lengths[first])} "
                             f"numbers at row {first + 1}, {int(lengths[other])} at row "
                             f"{other + 1} in file {path}")
        dim = int(distinct[0])
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    result = np.full((count, dim), np.nan, np.float32)
    # flatten() leaves out null rows' slots (pyarrow >= 13 for fixed-size lists as well);
    # should a version keep them, the sizes say which.
    if flat.size == count * dim:
        result[:] = flat.reshape(count, dim)
        result[nulls] = np.nan
    else:
        result[~nulls] = flat.reshape(-1, dim) if dim else flat.reshape(int((~nulls).sum()), 0)
    return result


def _arrow_numbers(column, name, path, dtype):
    import pyarrow as pa

    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
        raise InputError(f"embeddings column '{name}' must hold one number per row. Received: "
                         f"type {column.type} in file {path}")
    values = column.to_numpy(zero_copy_only=False)
    if dtype is np.int64:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        values = np.where(nulls, 0, np.nan_to_num(values.astype(np.float64)))
    return values.astype(dtype)


def _arrow_text(column):
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    return ["" if value is None else value for value in column.to_pylist()]


def _read_parquet(path) -> _Raw:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from starqso.io._fits import check_readable_file

    check_readable_file(path, "embeddings")
    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"embeddings file is not a readable Parquet file ({reason}): "
                         f"{path}") from err
    original = {}
    for name in arrow.column_names:
        if name.lower() in original:
            raise InputError(f"embeddings Parquet column names must be unique (ignoring case)."
                             f" Received: {original[name.lower()]!r} and {name!r} in file {path}")
        original[name.lower()] = name
    names = list(original)
    ids = np.array(_arrow_text(arrow.column(original["id"])), dtype=str) \
        if "id" in original else None
    spaces = {space: _arrow_space(arrow.column(original[space]), space, path)
              for space in SPACES if space in original}
    for space, space_names in _flat_spaces(names, path).items():
        if space not in spaces:
            spaces[space] = np.column_stack([
                _arrow_numbers(arrow.column(original[name]).combine_chunks(), name, path,
                               np.float32) for name in space_names])
    columns = {}
    for name in _FLOAT_COLUMNS:
        if name in original:
            columns[name] = _arrow_numbers(arrow.column(original[name]).combine_chunks(), name,
                                           path, np.float64)
    if "qflag" in original:
        columns["qflag"] = _arrow_numbers(arrow.column(original["qflag"]).combine_chunks(),
                                          "qflag", path, np.int64)
    for name in _TEXT_COLUMNS:
        if name in original:
            columns[name] = _arrow_text(arrow.column(original[name]))
    metadata = arrow.schema.metadata or {}
    record = (_record(metadata[_PARQUET_KEY].decode("utf-8", errors="replace"), path,
                      "schema metadata 'starqso'") if _PARQUET_KEY in metadata else {})
    return _Raw(ids, spaces, columns, record, names)


def _labels(values, path):
    labels = np.char.upper(np.char.strip(np.asarray(values, dtype=str)))
    bad = np.flatnonzero(~np.isin(labels, [*CLASS_NAMES, ""])) if len(labels) else []
    if len(bad):
        raise InputError(f"embeddings label must be {', '.join(CLASS_NAMES)} or blank. "
                         f"Received: {str(labels[bad[0]])!r} at row {bad[0] + 1} in file {path}")
    return labels


def read_embeddings(path: str | os.PathLike, space: str = "vector") -> EmbeddingTable:
    """Read an embeddings file (``.csv``, ``.fits`` or ``.parquet``) into an EmbeddingTable.

    Rows without an embedding (NaN) stay in the table in their place;
    :meth:`EmbeddingTable.usable` says which rows have one.

    Args:
        path: a file written by ``starqso embed`` (or by anyone: an ``id`` column and the
            ``vector`` embedding as ``vector_000`` ... columns or an array column).
        space: a space that must be in the file besides ``vector`` (``"vector"`` or
            ``"metric"``), e.g. the one the caller is about to search.

    Returns:
        :class:`EmbeddingTable` with ids stripped of leading/trailing spaces, labels upper
        case, and missing per-row columns filled (``p_qso``, ``outlier`` NaN; ``label``,
        ``flag`` blank; ``qflag`` 0). ``record`` is the side-car (CSV), the ``RECORD`` card
        (FITS) or the schema metadata (Parquet); ``{}`` when there is none.

    Raises:
        InputError: a missing, empty or unreadable file; another suffix; no rows; no ``id``
            column; no columns of ``vector`` or of ``space`` (the spaces present are named);
            ragged embeddings or gaps in ``vector_NNN``; dimensions other than the record's
            ``spaces``; a non-numeric cell; a bad label; a blank id or a duplicate id (the id
            and both rows are named).

    Example:
        >>> table = read_embeddings("embeddings.parquet", space="metric")  # doctest: +SKIP
        >>> table.spaces["metric"][table.usable("metric")].shape  # doctest: +SKIP
        (998, 32)
    """
    path = os.fspath(path)
    suffix = _suffix(path)
    if space not in SPACES:
        raise InputError(f"space must be one of {', '.join(SPACES)}. Received: space={space}")
    if not os.path.exists(path):
        from starqso.io._fits import missing_reason

        raise InputError(f"embeddings file {missing_reason(path)}: {path}")
    from starqso.io._fits import check_readable_file

    check_readable_file(path, "embeddings")
    if suffix == ".parquet":
        _require_pyarrow(path)
    reader = {".csv": _read_csv, ".fits": _read_fits, ".parquet": _read_parquet}[suffix]
    raw = reader(path)
    if raw.ids is None:
        raise InputError(f"embeddings file must have an id column. Received: columns "
                         f"{', '.join(raw.names[:10])}{' ...' if len(raw.names) > 10 else ''} "
                         f"in file {path}")
    ids = np.char.strip(np.asarray(raw.ids, dtype=str))
    if not len(ids):
        raise InputError(f"embeddings file {path} has no rows; expected at least one object")
    present = ", ".join(sorted(raw.spaces)) or "none"
    for needed in dict.fromkeys(("vector", space)):
        if needed not in raw.spaces:
            example = space_columns(needed, 1)[0]
            raise InputError(f"embeddings file has no {needed!r} embedding (columns "
                             f"{example} ... or a {needed} array column, as `starqso embed` "
                             f"writes). Received: spaces {present} in file {path}")
    expected = raw.record.get("spaces")
    for name, value in raw.spaces.items():
        if not value.shape[1]:
            raise InputError(f"embeddings column '{name}' holds no numbers in any row. "
                             f"Received: dimension 0 in file {path}")
        if isinstance(expected, dict) and isinstance(expected.get(name), int) \
                and expected[name] != value.shape[1]:
            raise InputError(f"embeddings file's {name} has {value.shape[1]} numbers per row "
                             f"but its record says {expected[name]} (wrong dimensions). "
                             f"Received: {value.shape[1]} in file {path}")
    _check_unique(ids, f"in file {path}")
    columns = dict(raw.columns)
    if "label" in columns:
        columns["label"] = _labels(columns["label"], path)
    try:
        return EmbeddingTable(ids, raw.spaces, columns, raw.record)
    except ValueError as err:
        raise InputError(f"embeddings file is inconsistent ({err}): {path}") from err

