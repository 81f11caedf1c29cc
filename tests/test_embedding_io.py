"""The embeddings table of ``starqso embed``: CSV / FITS / Parquet round trips, atomic writes,
and one clear line for every way a file can be wrong."""

import json
import os

import numpy as np
import pytest
from helpers import assert_one_line_error

from starqso.errors import InputError
from starqso.inference import sidecar_path
from starqso.io import embeddings
from starqso.io.embeddings import (
    EmbeddingTable,
    csv_file,
    read_embeddings,
    space_columns,
    write_embeddings,
)

FORMATS = ("csv", "fits", "parquet")
ROWS = 12


def make_table(rows=ROWS, metric=True, seed=0):
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=(rows, 128)).astype(np.float32)
    vector[0] *= 1e-30  # tiny values must survive the text format too
    spaces = {"vector": vector}
    if metric:
        unit = rng.normal(size=(rows, 32))
        spaces["metric"] = (unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(
            np.float32)
    p_qso = rng.random(rows)
    outlier = rng.random(rows) * 3
    flag = np.array([""] * rows, dtype=object)
    # Row 3 could not be classified: NaN embeddings, no p_qso, a reason with a comma, quotes
    # and a non-ASCII character (the CSV must quote it, FITS must store it as UTF-8).
    for space in spaces.values():
        space[3] = np.nan
    p_qso[3], outlier[3] = np.nan, np.nan
    flag[3] = 'cutout unreadable, "truncated" (é)'
    # Three classes: p_galaxy takes part of the rest (NaN where not classified).
    p_galaxy = (1 - p_qso) * rng.random(rows)
    p_star = 1 - p_qso - p_galaxy
    label = np.where(p_qso >= 0.5, "QSO", np.where(p_galaxy > p_star, "GALAXY", "STAR"))
    label[3] = ""
    ids = [f"obj-{i:03d}" for i in range(rows)]
    if rows > 5:
        ids[5] = "Ωmega, 5"
    return EmbeddingTable(
        ids=ids, spaces=spaces,
        columns={"p_qso": p_qso, "label": label, "flag": flag.astype(str),
                 "qflag": np.arange(rows) * 3, "outlier": outlier, "p_star": p_star,
                 "p_galaxy": p_galaxy},
        record={"model": "/models/prés", "prior": 0.1, "note": "it's & ok " * 20,
                "spaces": {name: int(value.shape[1]) for name, value in spaces.items()}})


def assert_same(read, written):
    np.testing.assert_array_equal(read.ids, written.ids)
    assert set(read.spaces) == set(written.spaces)
    for name, value in written.spaces.items():
        assert read.spaces[name].dtype == np.float32
        # Bit for bit, NaN rows included.
        np.testing.assert_array_equal(read.spaces[name], value)
    for name in ("p_qso", "outlier", "p_star", "p_galaxy"):
        np.testing.assert_array_equal(read.columns[name], written.columns[name])
    for name in ("label", "flag", "qflag"):
        assert read.columns[name].tolist() == written.columns[name].tolist(), name
    assert read.record == written.record


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    table = make_table()
    path = tmp_path / f"embeddings.{fmt}"
    assert write_embeddings(table, path) == str(path)
    read = read_embeddings(path, space="metric")
    assert_same(read, table)
    assert read.usable("vector").tolist() == [row != 3 for row in range(ROWS)]
    assert read.usable("metric").tolist() == read.usable("vector").tolist()
    # Only the output (and a CSV's side-car): no temporary files left behind.
    expected = {path.name} | ({sidecar_path(path).name} if fmt == "csv" else set())
    assert {entry.name for entry in tmp_path.iterdir()} == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_vector_only(tmp_path, fmt):
    table = make_table(metric=False)
    path = tmp_path / f"embeddings.{fmt}"
    write_embeddings(table, path)
    assert_same(read_embeddings(path), table)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path, space="metric")
    assert_one_line_error(excinfo, "'metric'", "spaces vector", str(path))


def test_csv_layout_and_sidecar(tmp_path):
    table = make_table()
    path = tmp_path / "embeddings.csv"
    write_embeddings(table, path)
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:8] == ["id", "p_qso", "label", "flag", "qflag", "outlier", "p_star",
                          "p_galaxy"]
    assert header[8] == "vector_000" and header[8 + 127] == "vector_127"
    assert header[8 + 128] == "metric_00" and header[-1] == "metric_31"
    assert json.loads(sidecar_path(path).read_text()) == table.record
    assert space_columns("vector", 1000)[-1] == "vector_999"
    assert space_columns("vector", 1001)[-1] == "vector_1000"


def test_csv_blocks_name_rows_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_file, "_CSV_BLOCK", 4)
    table = make_table()
    path = tmp_path / "embeddings.csv"
    write_embeddings(table, path)
    assert_same(read_embeddings(path), table)
    lines = path.read_text(encoding="utf-8").splitlines()
    cells = lines[10].split(",")
    cells[8 + 7] = "abc"
    lines[10] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'vector_007'", "'abc'", "row 10", str(path))


def test_foreign_layouts(tmp_path):
    """Flat vector_NNN columns in Parquet with integer ids, lower-case/upper-case names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    arrays = {"ID": pa.array([7, 8, 9])}
    for column, name in enumerate(space_columns("vector", 4)):
        arrays[name] = pa.array(values[:, column])
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table(arrays), path)
    table = read_embeddings(path)
    assert table.ids.tolist() == ["7", "8", "9"]
    np.testing.assert_array_equal(table.spaces["vector"], values)
    assert np.isnan(table.columns["p_qso"]).all() and table.record == {}
    assert table.columns["qflag"].tolist() == [0, 0, 0]


def test_parquet_list_with_null_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vector = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32()))
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "vector": vector}), path)
    table = read_embeddings(path)
    np.testing.assert_array_equal(table.spaces["vector"],
                                  [[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    assert table.usable().tolist() == [True, False, True]


# --- atomic writes -----------------------------------------------------------------------------


def _fail_half_way(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _leftovers(folder):
    return sorted(entry.name for entry in folder.iterdir())


def test_failed_csv_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "embeddings.csv"
    old = make_table(seed=1)
    write_embeddings(old, path)
    before = (path.read_bytes(), sidecar_path(path).read_bytes())

    def half(table):
        blocks = original(table)
        yield next(blocks)
        yield next(blocks)
        _fail_half_way()

    original = csv_file._csv_blocks
    monkeypatch.setattr(csv_file, "_csv_blocks", half)
    with pytest.raises(OSError, match="No space left"):
        write_embeddings(make_table(seed=2), path)
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before
    assert _leftovers(tmp_path) == ["embeddings.csv", "embeddings.csv.json"]
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(OSError):
        write_embeddings(make_table(), fresh)
    assert not fresh.exists() and not sidecar_path(fresh).exists()


@pytest.mark.parametrize("fmt", ("fits", "parquet"))
def test_failed_binary_write_leaves_nothing(tmp_path, monkeypatch, fmt):
    if fmt == "parquet":
        import pyarrow.parquet as pq

        def partial(table, where, *args, **kwargs):
            with open(where, "wb") as stream:
                stream.write(b"PAR1 half")
            _fail_half_way()

        monkeypatch.setattr(pq, "write_table", partial)
    else:
        from astropy.io import fits

        def partial(self, where, *args, **kwargs):
            with open(where, "wb") as stream:
                stream.write(b"SIMPLE  = half")
            _fail_half_way()

        monkeypatch.setattr(fits.HDUList, "writeto", partial)
    path = tmp_path / f"embeddings.{fmt}"
    with pytest.raises(OSError) as excinfo:
        write_embeddings(make_table(), path)
    assert str(path) in str(excinfo.value)
    assert _leftovers(tmp_path) == []


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_suffix(tmp_path):
    for call in (lambda path: write_embeddings(make_table(), path), read_embeddings):
        path = tmp_path / "embeddings.npz"
        with pytest.raises(InputError) as excinfo:
            call(path)
        assert_one_line_error(excinfo, ".csv, .fits, .parquet", str(path))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_empty_and_unreadable(tmp_path, fmt):
    path = tmp_path / f"embeddings.{fmt}"
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "not found", str(path))
    path.write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "empty", str(path))
    path.write_bytes(b"\xff\xfe\x00garbage" * 50)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, str(path))


@pytest.mark.parametrize("fmt", ("fits", "parquet"))
def test_truncated_binary_file(tmp_path, fmt):
    path = tmp_path / f"embeddings.{fmt}"
    write_embeddings(make_table(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, str(path))


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(row) for row in rows)]) + "\n",
                    encoding="utf-8")


def test_missing_id_column(tmp_path):
    path = tmp_path / "noid.csv"
    write_csv(path, ["name", "vector_000", "vector_001"], [["a", "1", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "id column", "name, vector_000", str(path))

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"name": ["a"], "vector": pa.array([[1.0]])}), path)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "id column", "name", str(path))


def test_no_vector_columns_names_spaces_present(tmp_path):
    path = tmp_path / "metric_only.csv"
    write_csv(path, ["id", "metric_00", "metric_01"], [["a", "1", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'vector'", "spaces metric", str(path))
    path = tmp_path / "none.csv"
    write_csv(path, ["id", "p_qso"], [["a", "0.5"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'vector'", "spaces none", str(path))


def test_gap_in_vector_columns(tmp_path):
    path = tmp_path / "gap.csv"
    write_csv(path, ["id", "vector_000", "vector_002"], [["a", "1", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "vector_000 ... vector_002", "component 1", str(path))


def test_ragged_rows(tmp_path):
    path = tmp_path / "short.csv"
    write_csv(path, ["id", "vector_000", "vector_001"], [["a", "1", "2"], ["b", "1"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "row 2", "2 fields", "3", str(path))

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ragged.parquet"
    vector = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ["a", "b", "c"], "vector": vector}), path)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "ragged", "2 numbers at row 1", "1 at row 3", str(path))


def test_dimension_unlike_record(tmp_path):
    path = tmp_path / "embeddings.csv"
    write_embeddings(make_table(), path)
    record = json.loads(sidecar_path(path).read_text())
    record["spaces"]["vector"] = 64
    sidecar_path(path).write_text(json.dumps(record))
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "128", "64", "wrong dimensions", str(path))


def test_bad_sidecar(tmp_path):
    path = tmp_path / "embeddings.csv"
    write_embeddings(make_table(), path)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "side-car", str(sidecar_path(path)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_ids(tmp_path, fmt, monkeypatch):
    table = make_table(rows=4)
    path = tmp_path / f"embeddings.{fmt}"
    for ids in (["a", "b", "c", "b"], ["a", "b", "c", " b"]):  # " b" reads back as "b"
        with pytest.raises(InputError) as excinfo:
            write_embeddings(EmbeddingTable(ids, table.spaces, table.columns), path)
        assert_one_line_error(excinfo, "'b'", "rows 2 and 4", str(path))
        assert not path.exists()
    # A file with a repeat, as another tool might write it.
    with monkeypatch.context() as patch:
        patch.setattr(embeddings, "_check_unique", lambda ids, where: None)
        write_embeddings(EmbeddingTable(["a", "b", "c", "b"], table.spaces, table.columns),
                         path)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "unique", "'b'", "rows 2 and 4", str(path))


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import starqso._util.extras

    monkeypatch.setattr(starqso._util.extras, "missing_module",
                        lambda *names: "pyarrow" if "pyarrow" in names else None)
    path = tmp_path / "embeddings.parquet"
    with pytest.raises(InputError) as excinfo:
        write_embeddings(make_table(), path)
    assert_one_line_error(excinfo, "pyarrow", "starqso[survey]", str(path))
    assert not path.exists()


def test_bad_cells(tmp_path):
    path = tmp_path / "cells.csv"
    write_csv(path, ["id", "p_qso", "vector_000"], [["a", "0.5", "1"], ["b", "high", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'p_qso'", "'high'", "row 2", str(path))
    write_csv(path, ["id", "qflag", "vector_000"], [["a", "1.5", "1"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'qflag'", "'1.5'", "row 1", str(path))
    write_csv(path, ["id", "label", "vector_000"], [["a", "star", "1"], ["b", "GALAXY", "2"]])
    assert read_embeddings(path).columns["label"].tolist() == ["STAR", "GALAXY"]
    write_csv(path, ["id", "label", "vector_000"], [["a", "star", "1"], ["b", "PLANET", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "'PLANET'", "row 2", str(path))
    write_csv(path, ["id", "vector_000"], [["a", "1"], ["", "2"]])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "blank id", "row 2", str(path))
    write_csv(path, ["id", "vector_000"], [])
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert_one_line_error(excinfo, "no rows", str(path))


def test_table_checks_shapes():
    with pytest.raises(ValueError, match="vector"):
        EmbeddingTable(["a"], {"metric": np.zeros((1, 2))})
    with pytest.raises(ValueError, match=r"\(2, d\)"):
        EmbeddingTable(["a", "b"], {"vector": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="p_qso"):
        EmbeddingTable(["a", "b"], {"vector": np.zeros((2, 2))}, {"p_qso": [0.1]})
    table = EmbeddingTable(["a"], {"vector": [[1, 2]]})
    assert table.spaces["vector"].dtype == np.float32 and len(table) == 1
    with pytest.raises(InputError) as excinfo:
        table.usable("metric")
    assert_one_line_error(excinfo, "'metric'", "Received:")


def test_no_tensorflow_imported():
    import subprocess
    import sys

    code = ("import sys, starqso.io.embeddings, starqso.discovery; "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.stdout.strip() == "False"
