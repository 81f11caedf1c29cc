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
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
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
    from starqso.io.safe_read import read_npz

    path = tmp_path / "big.npz"
    path.write_bytes(_npz(a=np.zeros(100, np.float64), b=np.zeros(100, np.float64)))
    assert set(read_npz(path, "test", max_bytes=1600)) == {"a", "b"}
    with pytest.raises(InputError, match="big.npz.*1,600 bytes in all, over the limit of 1,000"):
        read_npz(path, "test", max_bytes=1000)


# --- item 8: the band files of a row must show the same sky ---------------------------------

def _band_header(band, crpix):
    header = fits.Header()
    header["BAND"] = band
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    header["CRPIX1"], header["CRPIX2"] = crpix
    header["CD1_1"], header["CD2_2"] = -0.396 / 3600, 0.396 / 3600
    header["CD1_2"] = header["CD2_1"] = 0.0
    return header


# row: (the r file's pixels as a slice of the 40x40 cube, its CRPIX); the other bands are
# 40x40 with CRPIX (20.5, 20.5).
BAND_ROWS = {
    "aligned": (slice(0, 40), (20.5, 20.5)),
    "r-smaller": (slice(0, 34), (20.5, 20.5)),
    "r-wcs-offset": (slice(0, 40), (24.5, 20.5)),
    "r-subpixel": (slice(0, 40), (21.0, 20.5)),
}


@pytest.fixture(scope="module")
def band_catalog(cubes, tmp_path_factory):
    """A per-band catalogue (one FITS file per band): one row per BAND_ROWS case."""
    folder = tmp_path_factory.mktemp("bands")
    rows = []
    for number, (name, (window, crpix)) in enumerate(BAND_ROWS.items()):
        files = []
        for index, band in enumerate(BANDS):
            plane = cubes[number, index]
            header = _band_header(band, (20.5, 20.5))
            if band == "r":
                plane, header = plane[window, window], _band_header(band, crpix)
            fits.PrimaryHDU(plane, header=header).writeto(folder / f"{name}_{band}.fits")
            files.append(f"{name}_{band}.fits")
        rows.append([name, *files])
    return _catalog(folder / "bands.csv", ["id", *(f"image_{band}" for band in BANDS)], rows)


def test_band_files_of_different_shape_or_offset_wcs_are_flagged_rows(band_catalog, tmp_path):
    output = tmp_path / "out.csv"
    result = _predict(band_catalog, output)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in _rows(output)}
    assert list(rows) == list(BAND_ROWS)
    for name in ("aligned", "r-subpixel"):
        assert rows[name]["flag"] == "" and rows[name]["label"] in ("STAR", "QSO")
    smaller = rows["r-smaller"]
    assert "must have one shape" in smaller["flag"] and "r (34, 34)" in smaller["flag"]
    assert "r-smaller_r.fits" in smaller["flag"] and smaller["p_qso"] == ""
    offset = rows["r-wcs-offset"]
    assert "same sky" in offset["flag"] and "4.0 pixels" in offset["flag"]
    assert "r-wcs-offset_r.fits" in offset["flag"] and offset["p_qso"] == ""
    assert int(offset["qflag"]) & 1 and int(smaller["qflag"]) & 1


def test_band_files_that_disagree_fail_with_strict(band_catalog, tmp_path):
    output = tmp_path / "out.csv"
    result = _predict(band_catalog, output, "--strict")
    cli_error_line(result, "r-smaller", "must have one shape")
    assert not output.exists()


# --- items 11 and 21: zarr and HDF5 stacks ----------------------------------------------------

def _zarr_batch(folder, cubes, dtype=np.float32, bands=BANDS):
    """A Cutana batch folder, two images per zarr chunk, channels in ``bands`` order."""
    import zarr

    folder.mkdir(parents=True)
    images = np.moveaxis(cubes, 1, -1)[..., [BANDS.index(band) for band in bands]]
    group = zarr.open_group(str(folder / "images.zarr"), mode="w")
    array = group.create_array("images", data=np.ascontiguousarray(images).astype(dtype),
                               chunks=(2, CUTOUT, CUTOUT, 5))
    array.attrs["bands"] = bands
    pd.DataFrame({"source_id": [f"sim-{row:06d}" for row in range(len(cubes))]}).to_parquet(
        folder / "images_metadata.parquet")
    return folder


def test_zarr_chunk_with_corrupt_bytes_flags_its_rows_and_the_run_goes_on(survey, cubes,
                                                                          tmp_path):
    stack = _zarr_batch(tmp_path / "cutana", cubes, bands="zirgu")
    chunk = stack / "images.zarr" / "images" / "c" / "1" / "0" / "0" / "0"
    content = bytearray(chunk.read_bytes())
    content[20:80] = b"\xff" * 60  # inside the compressed stream, past its frame header
    chunk.write_bytes(bytes(content))
    reference = tmp_path / "reference.csv"
    assert _predict(survey / "catalog.csv", reference).exit_code == 0
    output = tmp_path / "out.csv"
    result = _predict(stack, output, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    rows, expected = _rows(output), _rows(reference)
    assert [row["id"] for row in rows] == [row["id"] for row in expected]
    for number, (row, want) in enumerate(zip(rows, expected, strict=False)):
        if number in (2, 3):
            assert row["flag"].startswith("zarr chunk 1 (images 2-3) could not be read"), row
            assert "decompression" in row["flag"].lower() and "images.zarr" in row["flag"]
            assert row["p_qso"] == "" and int(row["qflag"]) & 1
        else:
            assert row["flag"] == want["flag"] and row["label"] == want["label"]
            assert abs(float(row["p_qso"]) - float(want["p_qso"])) < 1e-6
    result = _predict(stack, tmp_path / "strict.csv", "--strict")
    cli_error_line(result, "sim-000002", "zarr chunk 1 (images 2-3)")
    assert not (tmp_path / "strict.csv").exists()


def test_complex_zarr_stack_is_refused_not_cast(cubes, tmp_path):
    stack = _zarr_batch(tmp_path / "cutana", cubes, dtype=np.complex64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        result = _predict(stack, tmp_path / "out.csv")
    cli_error_line(result, "complex numbers", "dtype=complex64", "images.zarr")
    assert not (tmp_path / "out.csv").exists()


def test_complex_hdf5_stack_is_refused_not_cast(cubes, tmp_path):
    import h5py

    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = cubes.astype(np.complex64)
        handle["id"] = np.array([f"sim-{row:06d}" for row in range(len(cubes))], dtype="S")
    result = _predict(path, tmp_path / "out.csv")
    cli_error_line(result, "complex numbers", "dtype=complex64", "stack.h5")
    assert not (tmp_path / "out.csv").exists()
