"""The embeddings table ``starqso embed`` writes and ``similar`` / ``cluster`` read.

One row per input row, in input order: ``id``, ``p_qso``, ``label``, ``flag``, ``qflag``,
``outlier`` and one or two embedding spaces: ``vector`` (the generated spectral vector) and,
for models with a metric-learning head, ``metric``. A row that could not be embedded has NaN
(empty) embeddings and a non-empty ``flag``. Three formats, by the output's suffix:

* ``.csv``: the columns above, then ``vector_000`` ... and ``metric_00`` ...; the record
  (model, prior, provenance) in the side-car ``OUTPUT.json`` as ``predict`` writes it;
* ``.fits``: a binary table with the spaces as fixed-length array columns ``vector`` and
  ``metric``; the record as JSON in the ``STARQSO`` extension's header;
* ``.parquet``: one file, the spaces as fixed-size list columns; the record as JSON in the
  schema metadata (key ``starqso``).

Writes are atomic: nothing is at the output (or its side-car) until it is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib

import numpy as np

from starqso.errors import InputError

SUFFIXES = (".csv", ".fits", ".parquet")
#: The per-row columns, in order, before the embeddings.
COLUMNS = ("id", "p_qso", "label", "flag", "qflag", "outlier")
SPACES = ("vector", "metric")
_FLOAT_COLUMNS = ("p_qso", "outlier")
_TEXT_COLUMNS = ("label", "flag")


def _width(space, dim):
    return 3 if space == "vector" and dim <= 1000 else max(2, len(str(dim - 1)))


def space_columns(space, dim):
    """The CSV column names of a space: ``vector_000`` ... or ``metric_00`` ...."""
    width = _width(space, dim)
    return [f"{space}_{i:0{width}d}" for i in range(dim)]


@dataclasses.dataclass
class EmbeddingTable:
    """Embeddings of N rows.

    Attributes:
        ids: str ``(N,)``.
        spaces: ``{"vector": float32 (N, d)[, "metric": float32 (N, m)]}``; NaN rows for
            objects without an embedding.
        columns: ``p_qso`` (float, NaN when not classified), ``label`` (str), ``flag`` (str),
            ``qflag`` (int), ``outlier`` (float, NaN when unknown), each ``(N,)``.
        record: provenance (model, prior, ...), a JSON-serialisable dict.
    """

    ids: np.ndarray
    spaces: dict
    columns: dict
    record: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=str)
        count = len(self.ids)
        if "vector" not in self.spaces or set(self.spaces) - set(SPACES):
            raise ValueError(f"spaces must be vector and optionally metric. Received: "
                             f"{sorted(self.spaces)}")
        for name, value in self.spaces.items():
            value = np.asarray(value, np.float32)
            if value.ndim != 2 or len(value) != count:
                raise ValueError(f"space {name} must be ({count}, d). Received: {value.shape}")
            self.spaces[name] = value
        defaults = {"p_qso": np.full(count, np.nan), "label": np.full(count, ""),
                    "flag": np.full(count, ""), "qflag": np.zeros(count, np.int64),
                    "outlier": np.full(count, np.nan)}
        columns = {**defaults, **self.columns}
        for name in _FLOAT_COLUMNS:
            columns[name] = np.asarray(columns[name], np.float64)
        for name in _TEXT_COLUMNS:
            columns[name] = np.asarray(columns[name], dtype=str)
        columns["qflag"] = np.asarray(columns["qflag"], np.int64)
        for name, value in columns.items():
            if value.shape != (count,):
                raise ValueError(f"column {name} must be ({count},). Received: {value.shape}")
        self.columns = columns

    def usable(self, space="vector"):
        """Rows with a finite embedding in ``space``."""
        return np.isfinite(self.spaces[space]).all(axis=1)


def _suffix(path):
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"an embeddings file must end in {', '.join(SUFFIXES)}. Received: "
                         f"{path}")
    return suffix


def _float_cell(value):
    return repr(float(value)) if np.isfinite(value) else ""


def _csv_bytes(table):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = {space: space_columns(space, value.shape[1]) for space, value in table.spaces.items()}
    writer.writerow([*COLUMNS, *(name for space in names.values() for name in space)])
    columns = table.columns
    for row, identifier in enumerate(table.ids):
        cells = [identifier, _float_cell(columns["p_qso"][row]), columns["label"][row],
                 columns["flag"][row], str(int(columns["qflag"][row])),
                 _float_cell(columns["outlier"][row])]
        for space in names:
            vector = table.spaces[space][row]
            cells += ([""] * len(vector) if not np.isfinite(vector).all()
                      else [f"{value:.7g}" for value in vector])
        writer.writerow(cells)
    return buffer.getvalue().encode("utf-8")


def _fits_bytes(table):
    from astropy.io import fits

    def width(texts):
        return f"{max([1, *(len(text.encode('utf-8')) for text in texts)])}A"

    columns = [fits.Column("id", width(table.ids), array=table.ids),
               fits.Column("p_qso", "D", array=table.columns["p_qso"]),
               fits.Column("label", "4A", array=table.columns["label"]),
               fits.Column("flag", width(table.columns["flag"]), array=table.columns["flag"]),
               fits.Column("qflag", "K", array=table.columns["qflag"]),
               fits.Column("outlier", "D", array=table.columns["outlier"])]
    for space, value in table.spaces.items():
        columns.append(fits.Column(space, f"{value.shape[1]}E", array=value))
    hdu = fits.BinTableHDU.from_columns(columns, name="STARQSO")
    # Long JSON becomes CONTINUE cards; astropy reads it back whole.
    hdu.header["RECORD"] = json.dumps(table.record, sort_keys=True)
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def _parquet_bytes(table):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {"id": pa.array(table.ids.tolist(), pa.string()),
              "p_qso": pa.array(table.columns["p_qso"], pa.float64()),
              "label": pa.array(table.columns["label"].tolist(), pa.string()),
              "flag": pa.array(table.columns["flag"].tolist(), pa.string()),
              "qflag": pa.array(table.columns["qflag"], pa.int64()),
              "outlier": pa.array(table.columns["outlier"], pa.float64())}
    for space, value in table.spaces.items():
        arrays[space] = pa.FixedSizeListArray.from_arrays(
            pa.array(value.reshape(-1), pa.float32()), value.shape[1])
    arrow = pa.table(arrays).replace_schema_metadata(
        {"starqso": json.dumps(table.record, sort_keys=True)})
    buffer = pa.BufferOutputStream()
    pq.write_table(arrow, buffer)
    return buffer.getvalue().to_pybytes()


def write_embeddings(table, path):
    """Write ``table`` to ``path`` (``.csv`` + side-car ``.json``, ``.fits`` or ``.parquet``).

    Args:
        table: an :class:`EmbeddingTable`.
        path: the output file; its folder is created.

    Returns:
        the path as ``str``.

    Raises:
        InputError: another suffix.

    Example:
        >>> write_embeddings(table, "embeddings.parquet")  # doctest: +SKIP
    """
    from starqso.atomic import write_bytes_atomically, write_json_atomically

    suffix = _suffix(path)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {".csv": _csv_bytes, ".fits": _fits_bytes, ".parquet": _parquet_bytes}[suffix](
        table)
    if suffix == ".csv":
        # The side-car first: a CSV is never there without what it was made with.
        write_json_atomically(_sidecar(path), table.record)
    write_bytes_atomically(path, payload)
    return str(path)


def _sidecar(path):
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def _bad(path, what):
    return InputError(f"embeddings file {path}: {what}")


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _bad(path, f"could not be read ({err})") from err
    if not rows:
        raise _bad(path, "is empty (expected a header with id and vector_000 ...)")
    header, body = rows[0], rows[1:]
    if "id" not in header:
        raise _bad(path, f"has no id column (expected the columns of `starqso embed`). "
                         f"Received: {', '.join(header[:8])}")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise _bad(path, f"line {number} has {len(row)} cells, the header {len(header)}")
    cells = {name: [row[i] for row in body] for i, name in enumerate(header)}
    spaces = {}
    for space in SPACES:
        names = [name for name in header if name.startswith(f"{space}_")
                 and name[len(space) + 1:].isdigit()]
        if not names:
            continue
        if [int(name[len(space) + 1:]) for name in names] != list(range(len(names))):
            raise _bad(path, f"its {space} columns are not {space}_0 ... {space}_"
                             f"{len(names) - 1} in order")
        values = np.full((len(body), len(names)), np.nan, np.float32)
        for column, name in enumerate(names):
            for row, text in enumerate(cells[name]):
                if text.strip():
                    try:
                        values[row, column] = float(text)
                    except ValueError:
                        raise _bad(path, f"line {row + 2}, column {name}: expected a number. "
                                         f"Received: {text[:40]!r}") from None
        spaces[space] = values
    columns = {}
    for name in _FLOAT_COLUMNS:
        if name in cells:
            columns[name] = np.array([_number(path, row, name, text)
                                      for row, text in enumerate(cells[name])])
    for name in _TEXT_COLUMNS:
        if name in cells:
            columns[name] = np.array(cells[name], dtype=str)
    if "qflag" in cells:
        columns["qflag"] = np.array([int(_number(path, row, "qflag", text) or 0)
                                     if text.strip() else 0
                                     for row, text in enumerate(cells["qflag"])])
    record = {}
    sidecar = _sidecar(path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"side-car {sidecar} is not valid JSON ({err})") from err
    return np.array(cells["id"], dtype=str), spaces, columns, record


def _number(path, row, name, text):
    if not text.strip():
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise _bad(path, f"line {row + 2}, column {name}: expected a number. Received: "
                         f"{text[:40]!r}") from None


def _read_fits(path):
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            hdu = next((h for h in hdus if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise _bad(path, "has no binary table (expected the STARQSO extension)")
            data, header = hdu.data, hdu.header
            names = [name.lower() for name in data.columns.names]
            if "id" not in names:
                raise _bad(path, f"has no id column. Received: {', '.join(names[:8])}")
            get = {name.lower(): name for name in data.columns.names}
            ids = np.char.strip(np.asarray(data[get["id"]]).astype(str))
            spaces = {space: np.asarray(data[get[space]], np.float32).reshape(len(ids), -1)
                      for space in SPACES if space in get}
            columns = {}
            for name in (*_FLOAT_COLUMNS, "qflag"):
                if name in get:
                    columns[name] = np.asarray(data[get[name]])
            for name in _TEXT_COLUMNS:
                if name in get:
                    columns[name] = np.char.strip(np.asarray(data[get[name]]).astype(str))
            record = json.loads(header["RECORD"]) if "RECORD" in header else {}
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise _bad(path, f"could not be read as FITS ({err})") from err
    return ids, spaces, columns, record


def _read_parquet(path):
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise _bad(path, f"could not be read as Parquet ({err})") from err
    names = arrow.column_names
    if "id" not in names:
        raise _bad(path, f"has no id column. Received: {', '.join(names[:8])}")
    ids = np.array(arrow.column("id").to_pylist(), dtype=str)
    spaces = {}
    for space in SPACES:
        if space in names:
            values = arrow.column(space).to_pylist()
            lengths = {len(v) for v in values if v is not None}
            if len(lengths) > 1:
                raise _bad(path, f"its {space} rows have different lengths {sorted(lengths)}")
            dim = lengths.pop() if lengths else 0
            spaces[space] = np.array([v if v is not None else [np.nan] * dim for v in values],
                                     np.float32).reshape(len(ids), dim)
    columns = {name: np.array(arrow.column(name).to_pylist(), dtype=object)
               for name in (*_FLOAT_COLUMNS, *_TEXT_COLUMNS, "qflag") if name in names}
    for name in _FLOAT_COLUMNS:
        if name in columns:
            columns[name] = np.array([np.nan if v is None else v for v in columns[name]],
                                     np.float64)
    if "qflag" in columns:
        columns["qflag"] = np.array([0 if v is None else v for v in columns["qflag"]],
                                    np.int64)
    for name in _TEXT_COLUMNS:
        if name in columns:
            columns[name] = np.array(["" if v is None else v for v in columns[name]], str)
    metadata = arrow.schema.metadata or {}
    record = json.loads(metadata[b"starqso"]) if b"starqso" in metadata else {}
    return ids, spaces, columns, record


def read_embeddings(path):
    """Read an embeddings file (any of the three formats) into an :class:`EmbeddingTable`.

    Args:
        path: ``.csv``, ``.fits`` or ``.parquet`` file written by ``starqso embed`` (or by
            anyone, with an ``id`` column and ``vector_000`` ... / a ``vector`` array column).

    Returns:
        :class:`EmbeddingTable` (missing per-row columns filled: p_qso and outlier NaN,
        label and flag empty, qflag 0).

    Raises:
        InputError: a missing or unreadable file, another suffix, no id column, no vector
            embedding, ragged embeddings or a duplicate id (both rows named).

    Example:
        >>> table = read_embeddings("embeddings.parquet")  # doctest: +SKIP
        >>> table.spaces["vector"].shape  # doctest: +SKIP
        (1000, 128)
    """
    suffix = _suffix(path)
    if not os.path.isfile(path):
        raise InputError(f"embeddings file not found: {path}")
    reader = {".csv": _read_csv, ".fits": _read_fits, ".parquet": _read_parquet}[suffix]
    ids, spaces, columns, record = reader(path)
    if "vector" not in spaces:
        present = ", ".join(sorted(spaces)) or "none"
        raise _bad(path, f"has no vector embedding (columns vector_000 ... or a vector "
                         f"column, as `starqso embed` writes). Received spaces: {present}")
    seen = {}
    for row, identifier in enumerate(ids):
        if identifier in seen:
            raise _bad(path, f"id {identifier!r} is in rows {seen[identifier] + 1} and "
                             f"{row + 1}; ids must be unique")
        seen[identifier] = row
    try:
        return EmbeddingTable(ids, spaces, columns, record)
    except ValueError as err:
        raise _bad(path, str(err)) from err
