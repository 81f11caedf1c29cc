"""The embeddings table as CSV: the writer (a block of rows at a time) and the reader; the
record is in the side-car ``OUTPUT.json``."""

from __future__ import annotations

import csv
import os

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError
from starqso.io.catalog import sidecar_path
from starqso.io.embeddings.formats import RawTable, flat_spaces
from starqso.io.embeddings.table import COLUMNS, FLOAT_COLUMNS, PER_ROW, TEXT_COLUMNS, space_columns

# Rows per block when formatting or parsing CSV: bounds the Python objects alive at once
# (a 10^6-row file would otherwise hold ~10^8 cell strings).
_CSV_BLOCK = 8192


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
        p_star = _float_text(columns["p_star"][start:stop])
        p_galaxy = _float_text(columns["p_galaxy"][start:stop])
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
                         f"{outlier[offset]},{p_star[offset]},{p_galaxy[offset]},"
                         f"{vector}\n")
        yield "".join(lines)


def write_csv(table, temporary: str) -> None:
    """Write ``table`` as CSV to the temporary file (the side-car is the caller's)."""
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        for text in _csv_blocks(table):
            stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


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


def read_csv(path) -> RawTable:
    """The columns, spaces and side-car record of a CSV file."""
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put at the start.
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise InputError(f"embeddings CSV has no header line; expected id, p_qso, ..., "
                                 f"vector_000 ...: {path}")
            names = _csv_header(header, path)
            flat = flat_spaces(names, path)
            position = {name: index for index, name in enumerate(names)}
            plain = [name for name in ("id", *PER_ROW) if name in position]
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
    for name in FLOAT_COLUMNS:
        if name in cells:
            columns[name] = _numbers(cells[name], path, name, 1)
    for name in TEXT_COLUMNS:
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
    return RawTable(cells.get("id"), spaces, columns, record, names)
