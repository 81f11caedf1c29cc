"""Bounded reads of hostile files, catalogue ids with spaces, and full-disk messages.

The oversized-cutout cases are measured in a fresh subprocess (time and peak resident memory
from ``resource.getrusage``), since a read that loads too much shows up only there.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from helpers import assert_one_line_error

from starqso._util import atomic
from starqso.errors import InputError
from starqso.io import read_catalog, read_cutout, write_catalog, write_cutout
from starqso.io.cutouts import MAX_CUTOUT_VALUES
from starqso.preprocessing import center_crop

REPO_ROOT = Path(__file__).resolve().parents[1]
HUGE_SHAPE = (5, 40000, 40000)  # 32 GB of float32 claimed by a 2,880-byte header
BOMB_SHAPE = (5, 3000, 3000)  # 180 MB of float32 zeros, about 175 KB gzipped


def _cube_header(shape, bitpix=-32) -> fits.Header:
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = bitpix
    header["NAXIS"] = len(shape)
    for axis, length in enumerate(reversed(shape), start=1):
        header[f"NAXIS{axis}"] = length
    header["BUNIT"] = "nanomaggy"
    return header


def _data_bytes(shape, bitpix=-32) -> int:
    return math.prod(shape) * abs(bitpix) // 8


def _header_only(path: Path, shape=HUGE_SHAPE) -> Path:
    """A header claiming ``shape`` and no data at all (a 'sparse' file cut after its header)."""
    _cube_header(shape).tofile(path)
    return path


def _sparse(path: Path, shape=HUGE_SHAPE) -> Path:
    """A complete file of the claimed size whose data is a hole: 2,880 bytes on disk."""
    _cube_header(shape).tofile(path)
    padded = -(-_data_bytes(shape) // 2880) * 2880
    with open(path, "r+b") as stream:
        stream.truncate(2880 + padded)
    return path


def _gzip_bomb(path: Path, shape=BOMB_SHAPE) -> Path:
    """Zeros in a gzip file: small on disk, written in chunks so the test stays small too."""
    chunk = bytes(2880 * 1000)
    remaining = -(-_data_bytes(shape) // 2880) * 2880
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(_cube_header(shape).tostring().encode("ascii"))
        while remaining:
            step = min(remaining, len(chunk))
            stream.write(chunk[:step])
            remaining -= step
    return path


def _measured_read(path: Path, crop_size=None) -> dict:
    """Read ``path`` in a fresh interpreter; return the outcome, seconds and peak memory in MB.

    ``ru_maxrss`` is reported as asked for, but on Linux it keeps the high-water mark of the
    forked pytest process (TensorFlow loaded) across ``exec``; ``VmHWM`` belongs to the new
    process image alone, so the assertions use it.
    """
    script = textwrap.dedent(f"""
        import json, resource, time
        from starqso.errors import InputError
        from starqso.io import read_cutout

        def hwm_mb():
            with open("/proc/self/status") as status:
                line = next(line for line in status if line.startswith("VmHWM"))
            return int(line.split()[1]) / 1024

        before = hwm_mb()
        start = time.perf_counter()
        try:
            shape, error = list(read_cutout({str(path)!r}, crop_size={crop_size!r}).data.shape), ""
        except InputError as err:
            shape, error = None, str(err)
        seconds = time.perf_counter() - start
        print(json.dumps({{"shape": shape, "error": error, "seconds": round(seconds, 4),
                          "import_mb": before, "peak_mb": hwm_mb(),
                          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                          / 1024}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ oversized cutouts


def test_header_claiming_more_than_the_file_holds_is_truncated(tmp_path):
    path = _header_only(tmp_path / "huge.fits")
    assert path.stat().st_size == 2880
    for crop_size in (None, 32):
        with pytest.raises(InputError) as excinfo:
            read_cutout(path, crop_size=crop_size)
        assert_one_line_error(excinfo, "truncated", str(path), "shape=(5, 40000, 40000)")


def test_sparse_huge_cutout_reads_only_the_centre(tmp_path):
    path = _sparse(tmp_path / "sparse.fits")
    # A full read is refused at once, saying how to read it...
    with pytest.raises(InputError) as excinfo:
        read_cutout(path)
    assert_one_line_error(excinfo, "too large", "crop_size", f"{MAX_CUTOUT_VALUES:,}",
                          "shape=(5, 40000, 40000)", str(path))
    # ...and the crop touches only its own rows of the 32 GB file.
    measured = _measured_read(path, crop_size=64)
    print(f"sparse 5x40000x40000, crop 64: {measured}")
    assert measured["shape"] == [5, 64, 64], measured
    assert measured["seconds"] < 10 and measured["peak_mb"] - measured["import_mb"] < 100


def test_gzip_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    path = _gzip_bomb(tmp_path / "bomb.fits.gz")
    assert path.stat().st_size < 2_000_000
    for crop_size in (None, 64):
        measured = _measured_read(path, crop_size=crop_size)
        print(f"gzip bomb {BOMB_SHAPE} ({path.stat().st_size:,} bytes), "
              f"crop {crop_size}: {measured}")
        assert measured["shape"] is None
        assert "too large" in measured["error"] and "gzip-compressed" in measured["error"]
        assert str(path) in measured["error"] and "\n" not in measured["error"]
        assert measured["seconds"] < 5 and measured["peak_mb"] - measured["import_mb"] < 50


def test_compressed_image_under_the_cap_is_read(tmp_path):
    cube = np.random.default_rng(1).normal(size=(5, 41, 40)).astype(np.float32)
    path = tmp_path / "small.fits.gz"
    write_cutout(path, cube)
    np.testing.assert_array_equal(read_cutout(path).data, cube)
    np.testing.assert_array_equal(read_cutout(path, crop_size=32).data,
                                  np.moveaxis(center_crop(cube, 32), -1, 0))


def test_truncated_gzip_cutout_is_one_line(tmp_path):
    path = tmp_path / "cut.fits.gz"
    write_cutout(path, np.ones((5, 64, 64), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError) as excinfo:
        read_cutout(path)
    assert_one_line_error(excinfo, str(path))


@pytest.mark.parametrize("height, width", [(48, 48), (49, 47), (33, 64)])
def test_crop_size_equals_center_crop_of_the_full_read(tmp_path, height, width):
    cube = np.random.default_rng(0).normal(size=(5, height, width)).astype(np.float32)
    path = tmp_path / "cut.fits"
    write_cutout(path, cube)
    full = read_cutout(path).data
    cropped = read_cutout(path, crop_size=32)
    assert cropped.data.shape == (5, 32, 32) and cropped.data.dtype == np.float32
    np.testing.assert_array_equal(cropped.data, np.moveaxis(center_crop(full, 32), -1, 0))


def test_crop_size_keeps_band_order_and_scaling(tmp_path):
    cube = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 40, 40), np.float32)
    hdu = fits.PrimaryHDU(np.round(cube[::-1] * 100).astype(np.int16))
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BANDS"] = 0.01, 0.0, "zirgu"
    hdu.writeto(tmp_path / "scaled.fits")
    read = read_cutout(tmp_path / "scaled.fits", crop_size=8).data
    np.testing.assert_allclose(read, cube[:, 16:24, 16:24], atol=1e-6)


def test_crop_larger_than_the_cutout_names_both_sizes(tmp_path):
    path = tmp_path / "small.fits"
    write_cutout(path, np.ones((5, 20, 30), np.float32))
    with pytest.raises(InputError) as excinfo:
        read_cutout(path, crop_size=32)
    assert_one_line_error(excinfo, "at least 32x32", "20x30", str(path))


@pytest.mark.parametrize("crop_size", [0, -3, 2.5, True, "32"])
def test_bad_crop_size_is_refused(tmp_path, crop_size):
    path = tmp_path / "cut.fits"
    write_cutout(path, np.ones((5, 8, 8), np.float32))
    with pytest.raises(InputError) as excinfo:
        read_cutout(path, crop_size=crop_size)
    assert_one_line_error(excinfo, "crop_size", repr(crop_size))


def test_tile_compressed_cutout_round_trip(tmp_path):
    cube = np.random.default_rng(2).normal(size=(5, 50, 45)).astype(np.float32)
    path = tmp_path / "cut.fits.fz"
    # Lossless (no quantisation) so the pixels compare exactly.
    compressed = fits.CompImageHDU(cube, compression_type="GZIP_1", quantize_level=0.0)
    compressed.header["BUNIT"] = "nanomaggy"
    fits.HDUList([fits.PrimaryHDU(), compressed]).writeto(path)
    full = read_cutout(path)
    np.testing.assert_array_equal(full.data, cube)
    assert full.header["BUNIT"] == "nanomaggy"
    np.testing.assert_array_equal(read_cutout(path, crop_size=32).data,
                                  np.moveaxis(center_crop(cube, 32), -1, 0))


def test_tile_compressed_crop_decompresses_only_its_tiles(tmp_path):
    path = tmp_path / "big.fits.fz"
    big = np.zeros((5, 1000, 1000), np.float32)
    big[:, 500, 500] = 7.0
    # One row per tile (fpack's default): the crop needs 5 x 64 rows, not 5 x 1000.
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(big, quantize_level=0.0,
                                                       compression_type="GZIP_1")]).writeto(path)
    crop = read_cutout(path, crop_size=64).data
    assert crop.shape == (5, 64, 64) and crop[0, 32, 32] == 7.0
    # A single tile holding the whole image must be decompressed whole: over the cap, refused.
    one_tile = tmp_path / "one_tile.fits.fz"
    wide = np.zeros((5, 1300, 1300), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        wide, compression_type="GZIP_1", tile_shape=(5, 1300, 1300))]).writeto(one_tile)
    with pytest.raises(InputError) as excinfo:
        read_cutout(one_tile, crop_size=64)
    assert_one_line_error(excinfo, "too large", "tiles", str(one_tile))


# ------------------------------------------------------------------------ catalogue ids


def test_ids_equal_after_stripping_are_duplicates_naming_both_spellings(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text('id,image\n" x",a.fits\ny,b.fits\n"x ",c.fits\n')
    with pytest.raises(InputError) as excinfo:
        read_catalog(path)
    assert_one_line_error(excinfo, "unique", "id 'x' in rows 1 (' x'), 3 ('x ')", str(path))


def test_ids_are_stripped_once_and_written_back_stripped(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text('id,image\n" a b ",a.fits\n"007",b.fits\n')
    table = read_catalog(path)
    assert list(table["id"]) == ["a b", "007"]
    copy = tmp_path / "copy.csv"
    write_catalog(table, copy)
    assert copy.read_text() == "id,image\na b,a.fits\n007,b.fits\n"


def test_exact_duplicate_message_is_unchanged(tmp_path):
    path = tmp_path / "cat.fits"
    Table({"id": ["001", "002", "001"], "image": ["a", "b", "c"]}).write(path)
    with pytest.raises(InputError) as excinfo:
        read_catalog(path)
    assert_one_line_error(excinfo, "id '001' in rows 1, 3", str(path))


# ------------------------------------------------------------------------ full disk


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_full_disk_names_the_destination(tmp_path, monkeypatch, failing):
    monkeypatch.setattr(atomic.os, failing, _disk_full)
    destination = tmp_path / "out.csv"
    with pytest.raises(OSError) as excinfo:
        atomic.write_bytes_atomically(destination, b"id\n1\n")
    assert excinfo.value.errno == errno.ENOSPC
    assert excinfo.value.filename == str(destination)
    assert f"No space left on device: {destination}" in f"{excinfo.value.strerror}: " \
                                                        f"{excinfo.value.filename}"
    assert os.listdir(tmp_path) == []  # the temporary file is removed


def test_full_disk_in_atomic_path_names_the_destination(tmp_path):
    destination = tmp_path / "weights.h5"
    with pytest.raises(OSError) as excinfo, atomic.atomic_path(destination):
        _disk_full()
    assert excinfo.value.errno == errno.ENOSPC
    assert excinfo.value.filename == str(destination)


def test_gzip_header_without_end_is_refused_after_a_bounded_prefix(tmp_path):
    path = tmp_path / "endless.fits.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        cards = "".join(str(card) for card in _cube_header((5, 8, 8)).cards)  # no END card
        stream.write(cards.encode("ascii"))
        stream.write(b" " * (80 * 100_000))  # 8 MB of blank cards and no END card
    with pytest.raises(InputError) as excinfo:
        read_cutout(path)
    assert_one_line_error(excinfo, "headers must end within", str(path))


@pytest.mark.parametrize("error", [MemoryError(), OSError(errno.EIO, "Input/output error")])
def test_memory_and_os_errors_while_reading_name_the_file(tmp_path, monkeypatch, error):
    from starqso.io import cutouts

    path = tmp_path / "cut.fits"
    write_cutout(path, np.ones((5, 40, 40), np.float32))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cutouts, "_pixels", fail)
    for crop_size in (None, 32):
        with pytest.raises(InputError) as excinfo:
            read_cutout(path, crop_size=crop_size)
        assert_one_line_error(excinfo, str(path), "could not be read")
