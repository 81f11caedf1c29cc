"""The embeddings table as Parquet (pyarrow): fixed-size list columns of float32, the
record as JSON under the schema metadata key ``starqso``."""

from __future__ import annotations

import json

import numpy as np

from starqso.errors import InputError
from starqso.io._fits import check_readable_file
from starqso.io.embeddings.formats import RawTable, flat_spaces, fsync, parse_record
from starqso.io.embeddings.table import FLOAT_COLUMNS, SPACES, TEXT_COLUMNS

_PARQUET_KEY = b"starqso"


def write_parquet(table, temporary: str) -> None:
    """Write ``table`` as one Parquet file, its record in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {"id": pa.array(table.ids.tolist(), pa.string()),
              "p_qso": pa.array(table.columns["p_qso"], pa.float64()),
              "label": pa.array(table.columns["label"].tolist(), pa.string()),
              "flag": pa.array(table.columns["flag"].tolist(), pa.string()),
              "qflag": pa.array(table.columns["qflag"], pa.int64()),
              "outlier": pa.array(table.columns["outlier"], pa.float64()),
              "p_star": pa.array(table.columns["p_star"], pa.float64()),
              "p_galaxy": pa.array(table.columns["p_galaxy"], pa.float64())}
    for space, value in table.spaces.items():
        # NaN stays a NaN value (not null), so the vector round-trips bit for bit.
        arrays[space] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(value).reshape(-1), pa.float32()), value.shape[1])
    arrow = pa.table(arrays).replace_schema_metadata(
        {_PARQUET_KEY: json.dumps(table.record, sort_keys=True)})
    pq.write_table(arrow, temporary)
    fsync(temporary)


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


def read_parquet(path) -> RawTable:
    """The columns, spaces and record of a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    for space, space_names in flat_spaces(names, path).items():
        if space not in spaces:
            spaces[space] = np.column_stack([
                _arrow_numbers(arrow.column(original[name]).combine_chunks(), name, path,
                               np.float32) for name in space_names])
    columns = {}
    for name in FLOAT_COLUMNS:
        if name in original:
            columns[name] = _arrow_numbers(arrow.column(original[name]).combine_chunks(), name,
                                           path, np.float64)
    if "qflag" in original:
        columns["qflag"] = _arrow_numbers(arrow.column(original["qflag"]).combine_chunks(),
                                          "qflag", path, np.int64)
    for name in TEXT_COLUMNS:
        if name in original:
            columns[name] = _arrow_text(arrow.column(original[name]))
    metadata = arrow.schema.metadata or {}
    record = (parse_record(metadata[_PARQUET_KEY].decode("utf-8", errors="replace"), path,
                      "schema metadata 'starqso'") if _PARQUET_KEY in metadata else {})
    return RawTable(ids, spaces, columns, record, names)
