"""The embeddings table ``starqso embed`` writes and ``similar`` / ``cluster`` read.

Data model
----------
One row per input row, in input order:

=============  ==========================================================================
``id``         str, unique, not blank (leading/trailing spaces removed on reading, as in
               :mod:`starqso.io.catalog`)
``p_qso``      float, NaN when the row was not classified
``label``      ``STAR``, ``QSO``, ``GALAXY`` or blank
``flag``       str, blank for none; says why a row has no embedding
``qflag``      int, the quality bits of :data:`starqso.schema.QFLAG_BITS`
``outlier``    float, NaN when unknown (:func:`starqso.discovery.outlier_scores`)
``p_star``     float, NaN when not classified (``1 - p_qso`` for a two-class model)
``p_galaxy``   float, NaN when not classified or the model is two-class (STAR/QSO)
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

The table is in :mod:`~starqso.io.embeddings.table`, and each format has its module
(:mod:`~starqso.io.embeddings.csv_file`, :mod:`~starqso.io.embeddings.fits_file`,
:mod:`~starqso.io.embeddings.parquet_file`); this module picks one by the suffix and makes
the checks every format shares.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from starqso._util.atomic import atomic_path, write_json_atomically
from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.io._fits import check_readable_file, missing_reason
from starqso.io.catalog import sidecar_path
from starqso.io.embeddings.csv_file import read_csv, write_csv
from starqso.io.embeddings.fits_file import read_fits, write_fits
from starqso.io.embeddings.parquet_file import read_parquet, write_parquet
from starqso.io.embeddings.table import COLUMNS, SPACES, EmbeddingTable, space_columns
from starqso.schema import LABEL_NAMES

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


def _suffix(path) -> str:
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"an embeddings file name must end in {', '.join(SUFFIXES)}. "
                         f"Received: {path}")
    return suffix


def _require_pyarrow(path) -> None:
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
    writer = {".csv": write_csv, ".fits": write_fits, ".parquet": write_parquet}[suffix]
    sidecar = sidecar_path(path)
    with atomic_path(path) as temporary:
        writer(table, temporary)
        if suffix == ".csv":
            sidecar.unlink(missing_ok=True)
    if suffix == ".csv":
        write_json_atomically(sidecar, table.record)
    return path


def _labels(values, path):
    labels = np.char.upper(np.char.strip(np.asarray(values, dtype=str)))
    bad = np.flatnonzero(~np.isin(labels, [*LABEL_NAMES, ""])) if len(labels) else []
    if len(bad):
        raise InputError(f"embeddings label must be {', '.join(LABEL_NAMES)} or blank. "
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
        case, and missing per-row columns filled (``p_qso``, ``outlier``, ``p_star``,
        ``p_galaxy`` NaN; ``label``,
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
        raise InputError(f"embeddings file {missing_reason(path)}: {path}")

    check_readable_file(path, "embeddings")
    if suffix == ".parquet":
        _require_pyarrow(path)
    reader = {".csv": read_csv, ".fits": read_fits, ".parquet": read_parquet}[suffix]
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

