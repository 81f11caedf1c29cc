"""Tests for starqso.io: round trips in the real file layouts and clear errors on bad input."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from helpers import assert_one_line_error

from starqso.errors import InputError
from starqso.io import (
    BANDS,
    CATALOG_COLUMNS,
    PIXEL_SCALE_ARCSEC,
    Spectrum,
    read_catalog,
    read_cutout,
    read_lamost_spectrum,
    read_sdss_spectrum,
    read_spectrum,
    resolve_path,
    write_catalog,
    write_cutout,
    write_sdss_spectrum,
)

REPO_ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.normal(1.0, 0.5, size=(5, 12, 10)).astype(np.float32)
    data[2, 3, 4] = np.nan  # non-finite pixels must survive reading untouched
    return data


# ---------------------------------------------------------------------------------- cutouts


def test_constants():
    assert BANDS == ("u", "g", "r", "i", "z")
    assert PIXEL_SCALE_ARCSEC == 0.396
    assert CATALOG_COLUMNS[:2] == ("id", "image")


def test_cutout_round_trip(tmp_path, cube):
    path = tmp_path / "cutout.fits"
    returned = write_cutout(path, cube, header={"RA": 150.25, "dec": -2.5, "OBJID": "0012"})
    assert returned == str(path)
    cutout = read_cutout(path)
    assert cutout.data.dtype == np.dtype(np.float32) and cutout.data.dtype.isnative
    assert cutout.data.shape == (5, 12, 10)
    np.testing.assert_array_equal(cutout.data, cube)
    assert np.isnan(cutout.data[2, 3, 4])
    assert cutout.header["BUNIT"] == "nanomaggy"
    assert cutout.header["BANDS"] == "ugriz"
    assert cutout.header["PIXSCALE"] == pytest.approx(0.396)
    assert cutout.header["RA"] == 150.25 and cutout.header["DEC"] == -2.5
    assert cutout.header["OBJID"] == "0012"
    assert "NAXIS" not in cutout.header
    assert cutout.path == str(path)


def test_cutout_bytes_are_deterministic(tmp_path, cube):
    first, second, third = (tmp_path / name for name in ("a.fits", "b.fits", "c.fits"))
    write_cutout(first, cube, header={"RA": 1.0})
    write_cutout(second, cube, header={"RA": 1.0})
    assert first.read_bytes() == second.read_bytes()
    assert b"DATE" not in first.read_bytes()
    cutout = read_cutout(first)
    write_cutout(third, cutout.data, header=cutout.header)
    assert third.read_bytes() == first.read_bytes()


def test_cutout_write_is_atomic_and_respects_overwrite(tmp_path, cube):
    path = tmp_path / "cutout.fits"
    write_cutout(path, cube)
    with pytest.raises(InputError) as excinfo:
        write_cutout(path, cube)
    assert_one_line_error(excinfo, str(path), "overwrite=True")
    write_cutout(path, cube * 2, overwrite=True)
    np.testing.assert_array_equal(read_cutout(path).data, cube * 2)
    assert sorted(os.listdir(tmp_path)) == ["cutout.fits"]  # no temp files left behind


@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f8", np.int16, np.int32])
def test_cutout_any_numeric_dtype_reads_as_native_float32(tmp_path, dtype):
    data = np.arange(5 * 4 * 3).reshape(5, 4, 3).astype(dtype)
    path = tmp_path / "typed.fits"
    fits.PrimaryHDU(data).writeto(path)
    cutout = read_cutout(path)
    assert cutout.data.dtype == np.dtype(np.float32) and cutout.data.dtype.isnative
    np.testing.assert_array_equal(cutout.data, data.astype(np.float32))


def test_cutout_in_first_extension_with_empty_primary(tmp_path, cube):
    path = tmp_path / "ext.fits"
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "SDSS 2.5-M"
    image = fits.ImageHDU(cube, name="CUTOUT")
    image.header["BUNIT"] = "nanomaggies"
    fits.HDUList([primary, image]).writeto(path)
    cutout = read_cutout(path)
    np.testing.assert_array_equal(cutout.data, cube)
    assert cutout.header["TELESCOP"] == "SDSS 2.5-M"


def test_cutout_gzip_round_trip(tmp_path, cube):
    path = tmp_path / "cutout.fits.gz"
    write_cutout(path, cube)
    with gzip.open(path) as stream:
        assert stream.read(6) == b"SIMPLE"
    np.testing.assert_array_equal(read_cutout(path).data, cube)


def _write_image(data, **cards):
    def build(path: Path) -> None:
        hdu = fits.PrimaryHDU(data)
        for keyword, value in cards.items():
            hdu.header[keyword] = value
        hdu.writeto(path)

    return build


def _write_truncated(path: Path) -> None:
    fits.PrimaryHDU(np.zeros((5, 48, 48), dtype=np.float32)).writeto(path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


BAD_CUTOUTS = {
    "empty": (lambda path: path.write_bytes(b""), "empty"),
    "text": (lambda path: path.write_text("id,image\n1,a.fits\n"), "not a readable FITS"),
    "truncated": (_write_truncated, "truncated"),
    "no_image": (lambda path: fits.PrimaryHDU().writeto(path), "no HDU with image data"),
    "2d": (_write_image(np.zeros((48, 48), np.float32)), "shape=(48, 48)"),
    "3_bands": (_write_image(np.zeros((3, 48, 48), np.float32)), "shape=(3, 48, 48)"),
    "channels_last": (_write_image(np.zeros((48, 48, 5), np.float32)), "band axis first"),
    "counts": (_write_image(np.zeros((5, 8, 8), np.float32), BUNIT="counts"), "BUNIT='counts'"),
    "band_names": (_write_image(np.zeros((5, 8, 8), np.float32), BANDS="grizy"), "'grizy'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CUTOUTS))
def test_bad_cutouts_raise_input_error_naming_the_file(tmp_path, case):
    build, fragment = BAD_CUTOUTS[case]
    path = tmp_path / f"bad_{case}.fits"
    build(path)
    with pytest.raises(InputError) as excinfo:
        read_cutout(path)
    assert_one_line_error(excinfo, str(path), fragment)


def test_cutout_in_another_band_order_is_returned_as_ugriz(tmp_path):
    cube = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 4, 4), np.float32)
    path = tmp_path / "zirgu.fits"
    _write_image(cube[::-1].copy(), BANDS="zirgu")(path)
    cutout = read_cutout(path)
    np.testing.assert_array_equal(cutout.data, cube)
    assert cutout.header["BANDS"] == "ugriz"


def test_missing_cutout_raises(tmp_path):
    with pytest.raises(InputError) as excinfo:
        read_cutout(tmp_path / "nope.fits")
    assert_one_line_error(excinfo, "not found", "nope.fits")


@pytest.mark.parametrize(
    "data, header, fragment",
    [
        (np.zeros((3, 8, 8)), None, "shape=(3, 8, 8)"),
        (np.zeros((8, 8, 5)), None, "band axis first"),
        (np.zeros((5, 8, 8)), {"BUNIT": "counts"}, "BUNIT"),
        (np.zeros((5, 8, 8)), {"NAXIS1": 3}, "written by write_cutout"),
        (np.zeros((5, 8, 8)), {"RA": float("nan")}, "finite"),
        (np.zeros((5, 8, 8)), {"NOT A KEY": 1}, "FITS keywords"),
    ],
)
def test_write_cutout_rejects_bad_input(tmp_path, data, header, fragment):
    path = tmp_path / "out.fits"
    with pytest.raises(InputError) as excinfo:
        write_cutout(path, data, header=header)
    assert_one_line_error(excinfo, fragment)
    assert not path.exists()


# ---------------------------------------------------------------------------------- spectra


def _sdss_arrays(pixels: int = 400):
    rng = np.random.default_rng(1)
    loglam = (np.float32(3.5798) + np.float32(1e-4) * np.arange(pixels, dtype=np.float32)).astype(
        np.float32
    )
    flux = rng.normal(10, 2, pixels).astype(np.float32)
    ivar = rng.uniform(0.5, 2, pixels).astype(np.float32)
    and_mask = np.zeros(pixels, dtype=np.int32)
    ivar[10:15] = 0
    flux[20] = np.nan
    ivar[20] = 0
    and_mask[30:33] = 1 << 23  # BRIGHTSKY
    return loglam, flux, ivar, and_mask


def _write_sdss_by_hand(path: Path, *, upper_case: bool = False, specobj_name: str = "SPECOBJ"):
    loglam, flux, ivar, and_mask = _sdss_arrays()
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "SDSS 2.5-M"
    primary.header["PLATEID"] = 4055
    primary.header["MJD"] = 55359
    primary.header["FIBERID"] = 596
    names = ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
    if upper_case:
        names = [name.upper() for name in names]
    arrays = [flux, loglam, ivar, and_mask, and_mask | 2, np.ones_like(flux), flux, flux]
    formats = ["E", "E", "E", "J", "J", "E", "E", "E"]
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column(name=n, format=f, array=a) for n, f, a in zip(names, formats, arrays,
                                                                   strict=False)],
        name="COADD",
    )
    specobj = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="PLATE", format="J", array=[4055]),
            fits.Column(name="CLASS", format="6A", array=["QSO   "]),
            fits.Column(name="Z", format="E", array=[np.float32(2.125)]),
        ],
        name=specobj_name,
    )
    fits.HDUList([primary, coadd, specobj]).writeto(path)
    expected_mask = (and_mask != 0) | (ivar <= 0) | ~np.isfinite(flux)
    return loglam, flux, ivar, expected_mask


@pytest.mark.parametrize("upper_case", [False, True])
@pytest.mark.parametrize("specobj_name", ["SPECOBJ", "SPALL"])
def test_sdss_file_built_by_hand_reads_correctly(tmp_path, upper_case, specobj_name):
    path = tmp_path / "spec-4055-55359-0596.fits"
    loglam, flux, ivar, mask = _write_sdss_by_hand(
        path, upper_case=upper_case, specobj_name=specobj_name
    )
    for reader in (read_sdss_spectrum, read_spectrum):
        spectrum = reader(path)
        assert spectrum.wavelength.dtype == np.float64
        np.testing.assert_allclose(spectrum.wavelength, 10.0 ** loglam.astype(np.float64))
        assert spectrum.flux.dtype == np.float32 and spectrum.flux.dtype.isnative
        np.testing.assert_array_equal(spectrum.flux, flux)
        np.testing.assert_array_equal(spectrum.ivar, ivar)
        np.testing.assert_array_equal(spectrum.mask, mask)
        assert spectrum.mask.dtype == bool and spectrum.mask[[10, 20, 30]].all()
        assert spectrum.meta == {
            "survey": "sdss",
            "plate": 4055,
            "mjd": 55359,
            "fiberid": 596,
            "object_class": "QSO",
            "redshift": 2.125,
            "path": str(path),
        }


def test_sdss_write_read_round_trip_is_exact(tmp_path):
    loglam, flux, ivar, and_mask = _sdss_arrays()
    mask = (and_mask != 0) | (ivar <= 0) | ~np.isfinite(flux)
    meta = {"plate": 266, "mjd": 51602, "fiberid": 1, "object_class": "STAR", "redshift": 0.0001}
    original = Spectrum(10.0 ** loglam.astype(np.float64), flux, ivar, mask, meta)
    first = tmp_path / "first.fits"
    write_sdss_spectrum(first, original)
    spectrum = read_sdss_spectrum(first)
    np.testing.assert_array_equal(spectrum.flux, flux)
    np.testing.assert_array_equal(spectrum.ivar, ivar)
    np.testing.assert_array_equal(spectrum.mask, mask)
    np.testing.assert_allclose(spectrum.wavelength, original.wavelength, rtol=1e-6)
    assert spectrum.meta["plate"] == 266 and spectrum.meta["mjd"] == 51602
    assert spectrum.meta["fiberid"] == 1 and spectrum.meta["object_class"] == "STAR"
    assert spectrum.meta["redshift"] == pytest.approx(0.0001)
    with fits.open(first) as hdulist:
        assert hdulist[0].header["TELESCOP"] == "SDSS 2.5-M"
        assert hdulist["COADD"].columns.names == ["flux", "loglam", "ivar", "and_mask"]
        assert hdulist["COADD"].columns["loglam"].format == "E"
    # Reading back and writing again, or writing twice, gives the same bytes.
    second, third = tmp_path / "second.fits", tmp_path / "third.fits"
    write_sdss_spectrum(second, spectrum)
    write_sdss_spectrum(third, original)
    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    assert read_spectrum(second).meta["survey"] == "sdss"


def test_sdss_write_without_meta_and_rejects_linear_grid(tmp_path):
    wavelength = 10.0 ** (3.6 + 1e-4 * np.arange(50))
    plain = Spectrum(wavelength, np.ones(50), np.ones(50), np.zeros(50, bool))
    path = tmp_path / "plain.fits"
    write_sdss_spectrum(path, plain)
    meta = read_sdss_spectrum(path).meta
    assert meta["plate"] is None and meta["object_class"] is None and meta["redshift"] is None
    linear = Spectrum(np.linspace(3800, 9000, 50), np.ones(50), np.ones(50), np.zeros(50, bool))
    with pytest.raises(InputError) as excinfo:
        write_sdss_spectrum(tmp_path / "linear.fits", linear)
    assert_one_line_error(excinfo, "log-uniform", "linear.fits")


def _lamost_arrays(pixels: int = 300):
    rng = np.random.default_rng(2)
    wavelength = 10.0 ** (3.5682 + 1e-4 * np.arange(pixels))
    flux = rng.normal(500, 50, pixels).astype(np.float32)
    ivar = rng.uniform(1e-3, 1e-2, pixels).astype(np.float32)
    and_mask = np.zeros(pixels, np.float32)
    and_mask[100:104] = 4
    ivar[5] = 0
    return wavelength, flux, ivar, and_mask


def _lamost_header(header: fits.Header, redshift: float) -> None:
    header["TELESCOP"] = "LAMOST"
    header["OBSID"] = 101001
    header["DESIG"] = "LAMOST J000000.00+000000.0"
    header["CLASS"] = "QSO"
    header["Z"] = redshift
    header["VACUUM"] = True


def test_lamost_image_layout_reads_correctly(tmp_path):
    wavelength, flux, ivar, and_mask = _lamost_arrays()
    image = np.vstack([flux, ivar, wavelength, and_mask, and_mask]).astype(np.float32)
    primary = fits.PrimaryHDU(image)
    _lamost_header(primary.header, 1.5)
    path = tmp_path / "spec-55859-F5902_sp01-001.fits"
    primary.writeto(path)
    for reader in (read_lamost_spectrum, read_spectrum):
        spectrum = reader(path)
        np.testing.assert_array_equal(spectrum.flux, flux)
        np.testing.assert_array_equal(spectrum.ivar, ivar)
        # The (5, N) image is float32, so the wavelength row has float32 precision.
        np.testing.assert_allclose(spectrum.wavelength, wavelength, rtol=1e-7)
        np.testing.assert_array_equal(spectrum.mask, (and_mask != 0) | (ivar <= 0))
        assert spectrum.meta == {
            "survey": "lamost",
            "obsid": 101001,
            "designation": "LAMOST J000000.00+000000.0",
            "object_class": "QSO",
            "redshift": 1.5,
            "path": str(path),
        }


def test_lamost_table_layout_reads_correctly(tmp_path):
    wavelength, flux, ivar, and_mask = _lamost_arrays()
    pixels = wavelength.size
    primary = fits.PrimaryHDU()
    _lamost_header(primary.header, -9999.0)
    primary.header.remove("TELESCOP")  # the layout alone must be enough to recognise LAMOST
    arrays = {
        "FLUX": flux,
        "IVAR": ivar,
        "WAVELENGTH": wavelength.astype(np.float32),
        "ANDMASK": and_mask,
        "ORMASK": and_mask,
        "NORMALIZATION": np.ones(pixels, np.float32),
    }
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name=n, format=f"{pixels}E", array=a[None, :]) for n, a in arrays.items()]
    )
    path = tmp_path / "med-lamost.fits"
    fits.HDUList([primary, table]).writeto(path)
    for reader in (read_lamost_spectrum, read_spectrum):
        spectrum = reader(path)
        assert spectrum.flux.shape == (pixels,)
        np.testing.assert_array_equal(spectrum.flux, flux)
        np.testing.assert_array_equal(spectrum.ivar, ivar)
        np.testing.assert_allclose(spectrum.wavelength, wavelength, rtol=1e-7)
        np.testing.assert_array_equal(spectrum.mask, (and_mask != 0) | (ivar <= 0))
        assert spectrum.meta["survey"] == "lamost" and spectrum.meta["redshift"] is None


def test_non_monotonic_wavelengths_raise(tmp_path):
    wavelength, flux, ivar, and_mask = _lamost_arrays()
    wavelength[[50, 51]] = wavelength[[51, 50]]
    primary = fits.PrimaryHDU(np.vstack([flux, ivar, wavelength, and_mask, and_mask]))
    _lamost_header(primary.header, 0.1)
    lamost_path = tmp_path / "lamost_swapped.fits"
    primary.writeto(lamost_path)
    with pytest.raises(InputError) as excinfo:
        read_spectrum(lamost_path)
    assert_one_line_error(excinfo, "not strictly increasing", "wavelength[51]", str(lamost_path))

    sdss_path = tmp_path / "sdss_swapped.fits"
    loglam, flux, ivar, _ = _write_sdss_by_hand(sdss_path)
    with fits.open(sdss_path, mode="update") as hdulist:
        hdulist["COADD"].data["loglam"][[7, 8]] = loglam[[8, 7]]
    with pytest.raises(InputError) as excinfo:
        read_sdss_spectrum(sdss_path)
    assert_one_line_error(excinfo, "not strictly increasing", str(sdss_path))


def test_spectrum_validates_arrays():
    with pytest.raises(InputError) as excinfo:
        Spectrum(np.array([1.0, 2.0]), np.ones(3), np.ones(3), np.zeros(3, bool))
    assert_one_line_error(excinfo, "equal lengths")
    with pytest.raises(InputError) as excinfo:
        Spectrum(np.array([]), np.array([]), np.array([]), np.array([], bool), {"path": "x.fits"})
    assert_one_line_error(excinfo, "empty", "x.fits")


def _empty_coadd(path: Path) -> None:
    columns = [fits.Column(name=name, format="E", array=[]) for name in ("flux", "loglam", "ivar")]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns, name="COADD")]).writeto(
        path
    )


def _coadd_without_ivar(path: Path) -> None:
    columns = [fits.Column(name=name, format="E", array=[1.0, 2.0]) for name in ("flux", "loglam")]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns, name="COADD")]).writeto(
        path
    )


@pytest.mark.parametrize(
    "build, fragment",
    [
        (_empty_coadd, "no rows"),
        (_coadd_without_ivar, "missing ivar"),
        (lambda path: fits.PrimaryHDU(np.ones(10)).writeto(path), "layout not recognised"),
        (lambda path: path.write_text("not fits"), "not a readable FITS"),
        (lambda path: path.write_bytes(b""), "empty"),
    ],
)
def test_bad_spectra_raise(tmp_path, build, fragment):
    path = tmp_path / "bad spectrum.fits"
    build(path)
    with pytest.raises(InputError) as excinfo:
        read_spectrum(path)
    assert_one_line_error(excinfo, fragment, str(path))


# -------------------------------------------------------------------------------- catalogue

CSV_TEXT = (
    "ID, Image ,spectrum,label,redshift,u,g,r,i,z,note\n"
    "001,cut outs/001.fits,spec/001.fits,qso,2.1,19.1,18.9,18.8,18.7,18.6,first\n"
    "002,cutouts/ünï 002.fits,,STAR,,20.5,19.5,19.0,18.8,18.7,\n"
    "\n"
    " 0003 ,,,,0.30000000000000004,,,,,,x\n"
)


@pytest.fixture
def csv_catalog(tmp_path) -> Path:
    folder = tmp_path / "my data ✓"
    folder.mkdir()
    path = folder / "catalog.csv"
    path.write_text(CSV_TEXT, encoding="utf-8")
    return path


def test_read_csv_catalog(csv_catalog):
    table = read_catalog(csv_catalog)
    assert table.colnames == list(CATALOG_COLUMNS) + ["note"]
    assert list(table["id"]) == ["001", "002", "0003"]
    assert table["id"].dtype.kind == "U"
    assert list(table["image"]) == ["cut outs/001.fits", "cutouts/ünï 002.fits", ""]
    assert list(table["spectrum"]) == ["spec/001.fits", "", ""]
    assert list(table["label"]) == ["QSO", "STAR", ""]
    assert table["redshift"].dtype == np.float64
    assert table["redshift"][0] == 2.1 and np.isnan(table["redshift"][1])
    assert table["redshift"][2] == 0.1 + 0.2
    assert list(table["note"]) == ["first", "", "x"]
    assert table.meta["base_dir"] == str(csv_catalog.parent)
    assert table.meta["path"] == str(csv_catalog)
    assert resolve_path(table, table["image"][1]) == str(
        csv_catalog.parent / "cutouts" / "ünï 002.fits"
    )
    assert resolve_path(table, table["image"][2]) == ""
    assert resolve_path(table, "/abs/x.fits") == "/abs/x.fits"


@pytest.mark.parametrize("name", ["copy.csv", "copy.csv.gz", "copy.fits", "copy.fits.gz"])
def test_catalog_round_trip(csv_catalog, name):
    table = read_catalog(csv_catalog)
    path = csv_catalog.parent / name
    assert write_catalog(table, path) == str(path)
    again = read_catalog(path)
    assert again.colnames == table.colnames
    for column in ("id", "image", "spectrum", "label", "note"):
        assert list(again[column]) == list(table[column]), column
    for column in ("redshift", "u", "g", "r", "i", "z"):
        np.testing.assert_array_equal(again[column], table[column])
    assert resolve_path(again, again["image"][1]) == resolve_path(table, table["image"][1])
    # Deterministic bytes: a second write of the same table is identical.
    copy = csv_catalog.parent / f"second_{name}"
    write_catalog(again, copy)
    assert copy.read_bytes() == path.read_bytes()
    with pytest.raises(InputError, match="overwrite=True"):
        write_catalog(table, path)


def test_csv_catalog_written_text(tmp_path):
    table = Table({"id": ["007"], "image": ["a, b.fits"], "redshift": [0.1 + 0.2]})
    path = tmp_path / "out.csv"
    write_catalog(table, path)
    assert path.read_bytes() == b'id,image,redshift\n007,"a, b.fits",0.30000000000000004\n'


def test_fits_catalog_with_upper_case_and_integer_ids(tmp_path):
    table = Table({"ID": np.array([7, 8]), "IMAGE": ["a.fits", "b.fits"], "LABEL": ["star", " "]})
    path = tmp_path / "cat.fits"
    table.write(path)
    read = read_catalog(path)
    assert read.colnames == ["id", "image", "label"]
    assert list(read["id"]) == ["7", "8"] and list(read["label"]) == ["STAR", ""]


def test_require_only_id(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id\nA\n")
    assert list(read_catalog(path, require=("id",))["id"]) == ["A"]


BAD_CATALOGS = {
    "missing_image": ("cat.csv", "id,label\n1,STAR\n", "must have column(s) image"),
    "duplicate": ("cat.csv", "id,image\n001,a\n002,b\n001,c\n", "id '001' in rows 1, 3"),
    "header_only": ("cat.csv", "id,image\n", "has no rows"),
    "zero_bytes": ("cat.csv", "", "empty"),
    "unknown_extension": ("cat.txt", "id,image\n1,a\n", "must end in .csv"),
    "bad_label": ("cat.csv", "id,image,label\n1,a,planet\n", "'PLANET' at row 1"),
    "bad_number": ("cat.csv", "id,image,redshift\n1,a,high\n", "'high' at row 1"),
    "blank_id": ("cat.csv", "id,image\n1,a\n ,b\n", "blank id at row 2"),
    "ragged": ("cat.csv", "id,image\n1,a,extra\n", "line 2 has 3 fields"),
    "duplicate_column": ("cat.csv", "id,image,ID\n1,a,2\n", "'id' 2 times"),
    "not_fits": ("cat.fits", "id,image\n1,a\n", "not a readable FITS"),
}


@pytest.mark.parametrize("case", sorted(BAD_CATALOGS))
def test_bad_catalogs_raise(tmp_path, case):
    name, text, fragment = BAD_CATALOGS[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as excinfo:
        read_catalog(path)
    assert_one_line_error(excinfo, fragment, str(path))


def test_missing_catalog_and_fits_without_rows(tmp_path):
    with pytest.raises(InputError) as excinfo:
        read_catalog(tmp_path / "absent.csv")
    assert_one_line_error(excinfo, "not found", "absent.csv")
    path = tmp_path / "empty.fits"
    Table({"id": np.array([], dtype=str), "image": np.array([], dtype=str)}).write(path)
    with pytest.raises(InputError) as excinfo:
        read_catalog(path)
    assert_one_line_error(excinfo, "has no rows", str(path))


def test_write_catalog_needs_id_and_known_extension(tmp_path):
    with pytest.raises(InputError, match="'id' column"):
        write_catalog(Table({"image": ["a"]}), tmp_path / "x.csv")
    with pytest.raises(InputError, match="must end in"):
        write_catalog(Table({"id": ["a"]}), tmp_path / "x.xlsx")


# ----------------------------------------------------------------------------------- import


def test_importing_io_does_not_import_tensorflow():
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-c", "import starqso.io, sys; assert 'tensorflow' not in sys.modules"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
