"""Broken input files through the command line: the readers name the fault and the file.

Per-band catalogues whose band files disagree (shape, WCS), a zarr stack with a corrupted
chunk and a cutout a FITS image cannot hold a pixel of become flagged rows, kept in order, the
run going on; ``--strict`` turns them into an error. A complex-valued stack, an ``.npz`` whose
header declares more than it holds (or is no zip at all), a symbolic link loop, a FITS header
with an impossible BITPIX and a cutout given as a catalogue are each one line naming the file
and the real reason, exit status 2.
"""

import csv
import hashlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey

from starqso.cli import main
from starqso.inference import default_model_dir
from starqso.io import read_cutout

CUTOUT = 40  # the shipped model crops 32x32 from it
BANDS = "ugriz"


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 6, seed=13, size=CUTOUT)


@pytest.fixture(scope="module")
def cubes(survey):
    return np.stack([read_cutout(survey / "images" / f"sim-{row:06d}.fits").data
                     for row in range(6)])


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def _predict(source, output, *extra):
    return _invoke("predict", source, "--runtime", "litert", "--prior", "0.3", "--output",
                   output, *extra)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _catalog(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- item 20: accurate reasons ---------------------------------------------------------------

def test_symlink_loop_is_named_a_loop_not_missing(survey, tmp_path):
    (tmp_path / "a.fits").symlink_to(tmp_path / "b.fits")
    (tmp_path / "b.fits").symlink_to(tmp_path / "a.fits")
    catalog = _catalog(tmp_path / "cat.csv", ["id", "image"],
                       [["loop", "a.fits"], ["good", survey / "images" / "sim-000000.fits"]])
    result = _predict(catalog, tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "out.csv")
    assert [row["id"] for row in rows] == ["loop", "good"]
    assert "symbolic link loop" in rows[0]["flag"] and "a.fits" in rows[0]["flag"]
    assert "not found" not in rows[0]["flag"] and rows[1]["label"] in ("STAR", "QSO")
    line = cli_error_line(_predict(tmp_path / "a.fits", tmp_path / "out2.csv"),
                          "symbolic link loop", "a.fits")
    assert "not found" not in line


def _with_bitpix(source, target, bitpix):
    raw = bytearray(source.read_bytes())
    start = raw.index(b"BITPIX  =")
    raw[start:start + 80] = f"BITPIX  = {bitpix:>20}".ljust(80).encode()
    target.write_bytes(bytes(raw))
    return target


def test_impossible_bitpix_is_named(survey, tmp_path):
    bad = _with_bitpix(survey / "images" / "sim-000001.fits", tmp_path / "b17.fits", 17)
    catalog = _catalog(tmp_path / "cat.csv", ["id", "image"], [["b17", "b17.fits"]])
    result = _predict(catalog, tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    flag = _rows(tmp_path / "out.csv")[0]["flag"]
    assert "BITPIX must be one of 8, 16, 32, 64, -32, -64" in flag and "BITPIX=17" in flag
    assert "b17.fits" in flag and "truncated" not in flag
    # The same header where a catalogue is expected.
    cli_error_line(_predict(bad, tmp_path / "out2.csv"),
                   "BITPIX must be one of 8, 16, 32, 64, -32, -64", "b17.fits")


def test_cutout_given_as_catalogue_says_how_to_classify_it(survey, tmp_path):
    cutout = survey / "images" / "sim-000002.fits"
    line = cli_error_line(_predict(cutout, tmp_path / "out.csv"), "is a cutout",
                          f"starqso predict {survey / 'images'}", str(cutout))
    assert "must hold a table" not in line


def test_evaluate_shows_an_out_of_range_p_as_a_plain_number(survey, tmp_path):
    rows = [{"id": f"sim-{row:06d}", "p_qso": "0.2", "label": "STAR", "flag": "", "qflag": "0"}
            for row in range(6)]
    rows[2]["p_qso"] = "1.5"
    predictions = tmp_path / "pred.csv"
    with open(predictions, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    line = cli_error_line(_invoke("evaluate", predictions, "--truth", survey / "catalog.csv",
                                  "--out", tmp_path / "ev"), "Received: 1.5 at row 3",
                          str(predictions))
    assert "np.float64" not in line
    assert not (tmp_path / "ev").exists()


# --- items 12 and 20: every .npz is checked before it is loaded ------------------------------

def _npy(shape, dtype, data: bytes) -> bytes:
    """An .npy member whose header declares ``shape`` whatever ``data`` holds."""
    from numpy.lib import format as npy_format

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str,
                                               "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _model_with_reference(folder, content: bytes):
    """A copy of the shipped model whose embedding_reference.npz is ``content``, its
    checksum in metadata.json updated to match (a consistent, deliberately altered folder)."""
    shutil.copytree(default_model_dir(), folder)
    (folder / "embedding_reference.npz").write_bytes(content)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["sha256"]["embedding_reference.npz"] = hashlib.sha256(content).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip(**members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


REFERENCE_CASES = {
    # name: (content of embedding_reference.npz, fragments of the error line)
    "absurd-shape": (lambda: _zip(vector=_npy((10**12, 128), np.float16,
                                              np.zeros((10, 128), np.float16).tobytes())),
                     ["(1000000000000, 128)", "holds 2,560 bytes"]),
    "not-a-zip": (lambda: b"\x80\x04not a zip archive at all" * 40,
                  ["not a NumPy .npz zip archive"]),
    "pickled-object": (lambda: _npz(vector=np.array([{"a": 1}] * 20, dtype=object)),
                       ["Python objects"]),
    "wrong-dimension": (lambda: _npz(vector=np.zeros((50, 64), np.float16)),
                        ["dimension", "(50, 64)"]),
    "nan": (lambda: _npz(vector=np.full((50, 128), np.nan, np.float16)), ["finite", "NaN"]),
    "one-row": (lambda: _npz(vector=np.zeros((1, 128), np.float16)), ["1 row "]),
    "one-dimensional": (lambda: _npz(vector=np.zeros(128, np.float16)), ["(rows, dimension)"]),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_embed_checks_the_embedding_reference_and_names_it(case, survey, tmp_path):
    build, fragments = REFERENCE_CASES[case]
    model = _model_with_reference(tmp_path / "model", build())
    output = tmp_path / "emb.csv"
    result = _invoke("embed", survey / "catalog.csv", "--model", model, "--output", output)
    line = cli_error_line(result, "embedding_reference.npz", *fragments)
    assert "pickled" not in line and "MemoryError" not in line
    assert not output.exists()


def test_object_arrays_cache_is_checked_the_same_way(tmp_path):
    from starqso.data.arrays import ObjectArrays
    from starqso.errors import InputError

    path = tmp_path / "arrays.npz"
    path.write_bytes(_zip(images=_npy((10**9, 5, 32, 32), np.float32, bytes(64))))
    with pytest.raises(InputError, match="arrays.npz.*declares shape"):
        ObjectArrays.load(path)


def test_read_npz_refuses_arrays_over_its_limit(tmp_path):
    from starqso.errors import InputError
    from starqso.model_files import read_npz

    path = tmp_path / "big.npz"
    path.write_bytes(_npz(a=np.zeros(100, np.float64), b=np.zeros(100, np.float64)))
    assert set(read_npz(path, "test", max_bytes=1600)) == {"a", "b"}
    with pytest.raises(InputError, match="big.npz.*1,600 bytes in all, over the limit of 1,000"):
        read_npz(path, "test", max_bytes=1000)
