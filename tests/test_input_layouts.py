"""`starqso predict` reads every input layout of :mod:`starqso.io.sources` the same way.

One small simulated survey (24 objects, 40 px cubes; the shipped model crops the centre 32 px)
is written in each layout: one 2-D FITS file per band, multi-extension FITS (one HDU per band,
any order), Cutana zarr (one batch, batch folders, the store itself; channel orders from a
``bands`` attribute), FITS and HDF5 cube stacks, Parquet (paths, nested and flat pixel lists, a
folder of files) and a HATS catalogue. Each must give the per-object-file catalogue's answer:
the same ids in input order, p_qso, labels and flags. A bad row (all zeros, NaN at the object,
a missing file; a few NaN pixels are repaired) is flagged in its place with the reason the
per-file layout gives, and so is an object whose band files contradict themselves (a band
missing or twice, a FILTER card naming another band). A broken layout is one error line, exit
2. The Dask path (a Parquet dataset, a HATS catalogue for a HATS input) gives the same rows.
"""

import csv
import os

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line

from starqso.cli import main

BANDS = "ugriz"
COUNT, SIZE = 24, 40  # the shipped model crops the centre 32x32 of the 40x40 cubes
CENTRE = SIZE // 2
# The spoilt rows of the "bad" variant of each layout: all zeros, NaN at the object (both
# flagged), a file that is not there (file-based layouts), a few NaN pixels away from the
# object (repaired and classified).
ZERO, NAN, MISSING, REPAIRED = 3, 17, 11, 20


def _predict(source, output, *extra):
    return CliRunner().invoke(main, ["predict", str(source), "--runtime", "litert",
                                     "--prior", "0.3", "--output", str(output),
                                     *map(str, extra)])


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _reason(flag):
    """A flag without its ``Received: <where>`` tail, which names the layout's file/row."""
    return flag.split(" Received:")[0]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """The simulated survey: its folder, ids, cube files and (24, 5, 40, 40) cubes."""
    from starqso.io import read_catalog, read_cutout, resolve_path

    folder = tmp_path_factory.mktemp("survey") / "sim"
    result = CliRunner().invoke(main, ["simulate", str(folder), "--n", str(COUNT), "--size",
                                       str(SIZE), "--seed", "5", "--workers", "1"])
    assert result.exit_code == 0, result.output
    table = read_catalog(folder / "catalog.csv")
    files = [resolve_path(table, str(value)) for value in table["image"]]
    cubes = np.stack([read_cutout(name).data for name in files])
    assert cubes.shape == (COUNT, 5, SIZE, SIZE) and cubes.dtype == np.float32
    return {"folder": folder, "ids": [str(value) for value in table["id"]], "files": files,
            "cubes": cubes}


@pytest.fixture(scope="module")
def reference(survey, tmp_path_factory):
    """Today's contract: the CSV catalogue with one FITS cube per object."""
    output = tmp_path_factory.mktemp("reference") / "ref.csv"
    result = _predict(survey["folder"] / "catalog.csv", output)
    assert result.exit_code == 0, result.output
    rows = _rows(output)
    assert [row["id"] for row in rows] == survey["ids"]
    assert all(row["p_qso"] and row["label"] in ("STAR", "QSO") and not row["flag"]
               for row in rows)
    assert {row["label"] for row in rows} == {"STAR", "QSO"}
    return rows


def _bad_cubes(cubes):
    cubes = cubes.copy()
    cubes[ZERO] = 0.0
    cubes[NAN, :, CENTRE, CENTRE] = np.nan
    cubes[REPAIRED, :, 6, 6] = np.nan  # inside the 32 px crop (it starts at 4), off the object
    return cubes


@pytest.fixture(scope="module")
def bad_reference(survey, reference, tmp_path_factory):
    """The per-file layout's rows with the spoilt cubes and a missing file: what every layout
    must give for them (flags compared without their ``Received:`` tail)."""
    folder = tmp_path_factory.mktemp("bad-reference")
    cubes = _bad_cubes(survey["cubes"])
    files = list(survey["files"])
    for row in (ZERO, NAN, REPAIRED):
        files[row] = _write_cube(folder / f"bad{row}.fits", cubes[row])
    files[MISSING] = str(folder / "missing.fits")
    catalog = _catalog(folder / "catalog.csv", ["id", "image"],
                       [[ident, name] for ident, name in zip(survey["ids"], files, strict=False)])
    result = _predict(catalog, folder / "out.csv")
    assert result.exit_code == 0, result.output
    assert "3 flagged, 1 repaired" in result.stdout
    rows = _rows(folder / "out.csv")
    assert _reason(rows[ZERO]["flag"]) == \
        "cutout is all zeros in its central 32x32 crop (no data)."
    assert "NaN/inf pixels in its central 32x32 crop, too many or at the object" in \
        rows[NAN]["flag"]
    assert "not found" in rows[MISSING]["flag"]
    assert rows[REPAIRED]["flag"] == "repaired 5 NaN/inf pixels (set to their band median)"
    for row in (ZERO, NAN, MISSING):
        assert rows[row]["p_qso"] == rows[row]["label"] == "", rows[row]
    # The other rows are untouched (the repaired one keeps a p_qso, if not the same).
    assert rows[REPAIRED]["p_qso"] and rows[REPAIRED]["label"]
    spoilt = (ZERO, NAN, MISSING, REPAIRED)
    assert [row for number, row in enumerate(rows) if number not in spoilt] == \
        [row for number, row in enumerate(reference) if number not in spoilt]
    return rows


@pytest.fixture
def dask_scratch(tmp_path):
    """Dask's worker scratch space inside tmp_path (not /tmp/dask-scratch-space)."""
    import dask

    with dask.config.set({"temporary-directory": str(tmp_path / "dask-scratch")}):
        yield


def _expected(bad_reference, reference, file_based):
    """The rows a layout's bad variant must give: without a file to miss, row MISSING is a
    good row."""
    rows = list(bad_reference)
    if not file_based:
        rows[MISSING] = reference[MISSING]
    return rows


def _same(rows, expected, order=None):
    """``rows`` are the ``expected`` rows (in ``order`` of ids if given, else theirs): the
    same p_qso (to 1e-6), label and flag reason; a "not found" flag names the layout's own
    missing file."""
    by_id = {row["id"]: row for row in expected}
    assert [row["id"] for row in rows] == (order or [row["id"] for row in expected])
    for row in rows:
        want = by_id[row["id"]]
        if want["p_qso"] == "":
            assert row["p_qso"] == "" or np.isnan(row["p_qso"]), row
        else:
            assert abs(float(row["p_qso"]) - float(want["p_qso"])) <= 1e-6, (row, want)
        assert row["label"] == want["label"], (row, want)
        if "not found" in want["flag"]:
            assert "not found" in row["flag"], (row, want)
        else:
            assert _reason(row["flag"]) == _reason(want["flag"]), (row, want)


# ------------------------------------------------------------------------ the layouts


def _write_cube(path, cube):
    fits.PrimaryHDU(np.asarray(cube, np.float32)).writeto(path)
    return str(path)


def _catalog(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([header, *rows])
    return path


def _band_files(folder, ids, cubes, missing=()):
    """Layout 2: a catalogue with image_u ... image_z, one 2-D FITS file per band."""
    (folder / "bands").mkdir()
    rows = []
    for number, (ident, cube) in enumerate(zip(ids, cubes, strict=False)):
        names = [f"bands/{ident}_{band}.fits" for band in BANDS]
        for band, name, plane in zip(BANDS, names, cube, strict=False):
            if number in missing and band == "r":
                continue
            header = fits.Header({"BUNIT": "nanomaggy", "FILTER": f"SDSS {band}"})
            fits.PrimaryHDU(plane, header).writeto(folder / name)
        rows.append([ident, *names])
    return _catalog(folder / "catalog.csv", ["id", *(f"image_{b}" for b in BANDS)], rows)


def _mef(path, cube, order, card="FILTER", bands=None):
    """A multi-extension cutout: empty primary, one ImageHDU per band in ``order``."""
    hdus = [fits.PrimaryHDU()]
    for index, band in zip(order, bands or [BANDS[index] for index in order], strict=False):
        hdus.append(fits.ImageHDU(cube[index], fits.Header({card: band, "BUNIT": "nanomaggy"}),
                                  name=f"IMG_{band.upper()}"))
    fits.HDUList(hdus).writeto(path)
    return str(path)


def _mef_files(folder, ids, cubes, missing=()):
    """Layout 3: a catalogue whose image is a multi-extension FITS file, HDUs in any order."""
    (folder / "mef").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for number, (ident, cube) in enumerate(zip(ids, cubes, strict=False)):
        name = f"mef/{ident}.fits"
        if number not in missing:
            _mef(folder / name, cube, rng.permutation(5), "BAND" if number % 2 else "FILTER")
        rows.append([ident, name])
    return _catalog(folder / "catalog.csv", ["id", "image"], rows)


def _zarr_batch(folder, ids, cubes, bands=None, channels=5, metadata_rows=None,
                bands_on="array"):
    """A Cutana batch folder: images.zarr (N, H, W, C) + images_metadata.parquet; ``bands``
    (the channel order) as an attribute of the array or of its group."""
    import zarr

    folder.mkdir(parents=True)
    images = np.moveaxis(cubes, 1, -1)
    if bands is not None:
        images = images[..., [BANDS.index(band) for band in bands]]
    group = zarr.open_group(str(folder / "images.zarr"), mode="w")
    array = group.create_array("images", data=np.ascontiguousarray(images[..., :channels]),
                               chunks=(8, SIZE, SIZE, channels))
    if bands is not None:
        (array if bands_on == "array" else group).attrs["bands"] = bands
    metadata_ids = list(ids)[:metadata_rows]
    pd.DataFrame({"source_id": metadata_ids,
                  "ra": np.linspace(10, 20, len(metadata_ids))}).to_parquet(
        folder / "images_metadata.parquet")
    return folder


def _zarr(folder, ids, cubes, missing=()):
    """Layout 4: one Cutana batch folder."""
    return _zarr_batch(folder / "cutana", ids, cubes)


def _zarr_store(folder, ids, cubes, missing=()):
    """Layout 4: the images.zarr store itself named, the group saying bands g, z, r, u, i."""
    return _zarr_batch(folder / "cutana", ids, cubes, bands="gzrui",
                       bands_on="group") / "images.zarr"


def _zarr_batches(folder, ids, cubes, missing=()):
    """Layout 4: a folder of batch folders, the second with channels in z, i, r, g, u order."""
    parent = folder / "cutana"
    _zarr_batch(parent / "batch_000", ids[:10], cubes[:10])
    _zarr_batch(parent / "batch_001", ids[10:], cubes[10:], bands="zirgu")
    return parent


def _fits_stack(folder, ids, cubes, missing=()):
    """Layout 5: primary HDU (N, 5, H, W) + a table of ids."""
    path = folder / "stack.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="id", format="20A", array=ids)])
    fits.HDUList([fits.PrimaryHDU(cubes), table]).writeto(path)
    return path


def _hdf5(folder, ids, cubes, missing=()):
    """Layout 6: datasets images (N, 5, H, W) and id."""
    import h5py

    path = folder / "stack.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=cubes, chunks=(4, 5, SIZE, SIZE))
        handle.create_dataset("id", data=np.array(ids, dtype="S"))
    return path


def _parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=7)
    return path


def _parquet_paths(folder, ids, cubes, missing=()):
    """Layout 7: id + image paths, relative to the Parquet file's folder or absolute."""
    (folder / "cubes").mkdir()
    (folder / "table").mkdir()
    paths = []
    for number, (ident, cube) in enumerate(zip(ids, cubes, strict=False)):
        name = folder / "cubes" / f"{ident}.fits"
        if number not in missing:
            _write_cube(name, cube)
        paths.append(str(name) if number % 2 else os.path.relpath(name, folder / "table"))
    assert any(path.startswith("..") for path in paths)
    return _parquet(folder / "table" / "objects.parquet", {"id": ids, "image": paths})


def _parquet_nested(folder, ids, cubes, missing=()):
    """Layout 7: a cutout column of nested (5, H, W) lists."""
    import pyarrow as pa

    kind = pa.list_(pa.list_(pa.list_(pa.float32())))
    return _parquet(folder / "objects.parquet",
                    {"id": ids, "cutout": pa.array([cube.tolist() for cube in cubes], kind)})


def _parquet_flat(folder, ids, cubes, missing=()):
    """Layout 7: a cutout column of flat 5 x S x S lists (and a column starqso ignores)."""
    import pyarrow as pa

    kind = pa.list_(pa.float32())
    return _parquet(folder / "objects.parquet",
                    {"mag_r": np.arange(len(ids), dtype=float), "id": ids,
                     "cutout": pa.array([cube.ravel() for cube in cubes], kind)})


def _parquet_folder(folder, ids, cubes, missing=()):
    """Layout 7: a folder of Parquet files (10 + 14 rows) with flat cutout lists."""
    (folder / "table").mkdir()
    _parquet_flat(folder / "table", ids[:10], cubes[:10])
    (folder / "table" / "objects.parquet").rename(folder / "table" / "part-0.parquet")
    _parquet_flat(folder / "table", ids[10:], cubes[10:])
    (folder / "table" / "objects.parquet").rename(folder / "table" / "part-1.parquet")
    return folder / "table"


def _sky(count):
    rng = np.random.default_rng(2)
    return rng.uniform(0, 360, count), np.degrees(np.arcsin(rng.uniform(-1, 1, count)))


def _hats(folder, ids, cubes, missing=(), sky=None):
    """Layout 8: a HATS catalogue (lsdb) with id, ra, dec and absolute image paths."""
    import lsdb

    (folder / "cubes").mkdir()
    paths = []
    for number, cube in enumerate(cubes):
        name = folder / "cubes" / f"row{number:02d}.fits"
        if number not in missing:
            _write_cube(name, cube)
        paths.append(str(name))
    ra, dec = sky or _sky(len(ids))
    frame = pd.DataFrame({"id": ids, "ra": ra, "dec": dec, "image": paths})
    catalog = lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", lowest_order=0,
                                  highest_order=2, partition_rows=20)
    catalog.write_catalog(str(folder / "hats"), catalog_name="objects")
    return folder / "hats"


def _hats_order(path):
    """The ids of a HATS catalogue in its own (HEALPix) order: its input order."""
    import lsdb

    return [str(value) for value in lsdb.open_catalog(str(path)).compute()["id"]]


# name: (builder, file based: a row without its file is flagged "not found")
LAYOUTS = {
    "band-files": (_band_files, True),
    "multi-extension": (_mef_files, True),
    "zarr": (_zarr, False),
    "zarr-batches": (_zarr_batches, False),
    "zarr-store": (_zarr_store, False),
    "fits-stack": (_fits_stack, False),
    "hdf5-stack": (_hdf5, False),
    "parquet-paths": (_parquet_paths, True),
    "parquet-nested": (_parquet_nested, False),
    "parquet-flat": (_parquet_flat, False),
    "parquet-folder": (_parquet_folder, False),
    "hats": (_hats, True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_the_per_file_answer(layout, survey, reference, tmp_path):
    build, _ = LAYOUTS[layout]
    (tmp_path / "in").mkdir()
    source = build(tmp_path / "in", survey["ids"], survey["cubes"])
    result = _predict(source, tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert f"{COUNT} rows" in result.stdout and "0 flagged, 0 repaired" in result.stdout
    order = _hats_order(source) if layout == "hats" else None
    if order is not None:
        assert sorted(order) == sorted(survey["ids"]) and order != survey["ids"]
    _same(_rows(tmp_path / "out.csv"), reference, order=order)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_rows_are_flagged_in_place_as_for_files(layout, survey, reference, bad_reference,
                                                    tmp_path):
    build, file_based = LAYOUTS[layout]
    (tmp_path / "in").mkdir()
    missing = {MISSING} if file_based else set()
    source = build(tmp_path / "in", survey["ids"], _bad_cubes(survey["cubes"]), missing)
    result = _predict(source, tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert f"{2 + len(missing)} flagged, 1 repaired" in result.stdout
    order = _hats_order(source) if layout == "hats" else None
    _same(_rows(tmp_path / "out.csv"), _expected(bad_reference, reference, file_based),
          order=order)


# ------------------------------------------------------------------------ broken layouts


def _zarr_short_metadata(folder, survey):
    return _zarr_batch(folder / "cutana", survey["ids"], survey["cubes"], metadata_rows=23)


def _zarr_three_channels(folder, survey):
    return _zarr_batch(folder / "cutana", survey["ids"], survey["cubes"], channels=3)


def _fits_stack_without_ids(folder, survey):
    path = folder / "stack.fits"
    fits.PrimaryHDU(survey["cubes"]).writeto(path)
    return path


def _hdf5_without_images(folder, survey):
    import h5py

    path = folder / "stack.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("cubes", data=survey["cubes"][:4])
        handle.create_dataset("id", data=np.array(survey["ids"][:4], dtype="S"))
    return path


def _parquet_without_id(folder, survey):
    return _parquet(folder / "objects.parquet",
                    {"name": survey["ids"], "image": survey["files"]})


def _parquet_without_pixels(folder, survey):
    return _parquet(folder / "objects.parquet",
                    {"id": survey["ids"], "ra": np.zeros(COUNT), "path": survey["files"]})


def _parquet_duplicate_ids(folder, survey):
    ids = list(survey["ids"])
    ids[15] = ids[4]
    return _parquet(folder / "objects.parquet", {"id": ids, "image": survey["files"]})


def _some_band_columns(folder, survey):
    return _catalog(folder / "catalog.csv", ["id", "image_u", "image_g", "image_r"],
                    [[ident, "u.fits", "g.fits", "r.fits"] for ident in survey["ids"]])


BROKEN = {
    "zarr-metadata-rows": (_zarr_short_metadata,
                           ["images_metadata.parquet has 23 rows but images.zarr holds 24"]),
    "zarr-three-channels": (_zarr_three_channels,
                            ["(N, H, W, 5)", "shape=(24, 40, 40, 3)"]),
    "fits-stack-without-ids": (_fits_stack_without_ids, ["needs a table HDU", "stack.fits"]),
    "hdf5-without-images": (_hdf5_without_images, ["needs a dataset 'images'", "cubes"]),
    "parquet-without-id": (_parquet_without_id, ["needs an id column", "name, image"]),
    "parquet-without-pixels": (_parquet_without_pixels,
                               ["needs a column cutout", "image_u", "id, ra, path"]),
    "parquet-duplicate-ids": (_parquet_duplicate_ids,
                              ["ids must be unique", "'sim-000004' at rows 5 and 16"]),
    "catalog-some-bands": (_some_band_columns,
                           ["image_u, image_g, image_r, image_i, image_z",
                            "columns id, image_u, image_g, image_r"]),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_layouts_are_one_error_line(case, survey, tmp_path):
    build, fragments = BROKEN[case]
    (tmp_path / "in").mkdir()
    source = build(tmp_path / "in", survey)
    result = _predict(source, tmp_path / "out.csv")
    cli_error_line(result, *fragments)
    assert not (tmp_path / "out.csv").exists()


# Ids are unique across the pieces of an input too (batches, files, HEALPix pixels), as they are
# in one catalogue, one stack or one Parquet file.
DUPLICATE = (4, 15)


def _duplicated(survey):
    ids = list(survey["ids"])
    ids[DUPLICATE[1]] = ids[DUPLICATE[0]]
    return ids


def _zarr_batches_duplicate(folder, survey):
    return _zarr_batches(folder, _duplicated(survey), survey["cubes"])


def _parquet_files_duplicate(folder, survey):
    ids, files = _duplicated(survey), survey["files"]
    (folder / "table").mkdir()
    _parquet(folder / "table" / "part-0.parquet", {"id": ids[:10], "image": files[:10]})
    _parquet(folder / "table" / "part-1.parquet", {"id": ids[10:], "image": files[10:]})
    return folder / "table"


def _hats_duplicate(folder, survey):
    ra, dec = _sky(COUNT)
    dec[DUPLICATE[0]], dec[DUPLICATE[1]] = 60.0, -60.0  # in two HEALPix pixels
    return _hats(folder, _duplicated(survey), survey["cubes"], sky=(ra, dec))


SPLIT_DUPLICATES = {"zarr-batches": _zarr_batches_duplicate,
                    "parquet-files": _parquet_files_duplicate,
                    "hats": _hats_duplicate}

@pytest.mark.parametrize("layout", SPLIT_DUPLICATES)
def test_an_id_repeated_in_two_pieces_is_refused(layout, survey, tmp_path):
    (tmp_path / "in").mkdir()
    source = SPLIT_DUPLICATES[layout](tmp_path / "in", survey)
    result = _predict(source, tmp_path / "out.csv")
    cli_error_line(result, "ids must be unique", repr(survey["ids"][DUPLICATE[0]]))


@pytest.mark.usefixtures("dask_scratch")
def test_dask_refuses_an_id_repeated_in_two_partitions(survey, tmp_path):
    source = _parquet_duplicate_ids(tmp_path, survey)
    result = _predict(source, tmp_path / "out.parquet", "--workers", 1, "--partition-rows", 10)
    cli_error_line(result, "ids must be unique", repr(survey["ids"][4]))
    assert not (tmp_path / "out.parquet").exists()


# One object's files that contradict themselves: a cutout file as broken as any other, so the
# row is flagged in its place (one line, the reason naming the file) and the run goes on.
def _mef_band_missing(folder, cube, ident):
    path = folder / "mef" / f"{ident}.fits"
    path.unlink()
    return _mef(path, cube, [3, 0, 2, 1], "FILTER")


def _mef_band_twice(folder, cube, ident):
    path = folder / "mef" / f"{ident}.fits"
    path.unlink()
    return _mef(path, cube, [0, 1, 2, 3, 4], "BAND", bands=["u", "g", "r", "r", "z"])


def _band_file_of_another_band(folder, cube, ident):
    path = folder / "bands" / f"{ident}_g.fits"
    path.unlink()
    fits.PrimaryHDU(cube[1], fits.Header({"FILTER": "SDSS i"})).writeto(path)
    return path


CONTRADICTORY = {
    "mef-band-missing": (_mef_files, _mef_band_missing,
                         ["a cutout with one image HDU per band needs all of u, g, r, i, z",
                          "no HDU for z in file", "sim-000002.fits"]),
    "mef-band-twice": (_mef_files, _mef_band_twice,
                       ["has band 'r' twice (HDUs 3 and 4)", "sim-000002.fits"]),
    "band-file-of-another-band": (_band_files, _band_file_of_another_band,
                                  ["the image_g file holds another band: its BAND/FILTER "
                                   "card says 'i'", "sim-000002_g.fits"]),
}


@pytest.mark.parametrize("case", CONTRADICTORY)
def test_contradictory_band_files_flag_their_row(case, survey, reference, tmp_path):
    layout, spoil, fragments = CONTRADICTORY[case]
    (tmp_path / "in").mkdir()
    catalog = layout(tmp_path / "in", survey["ids"], survey["cubes"])
    row = 2
    path = spoil(tmp_path / "in", survey["cubes"][row], survey["ids"][row])
    result = _predict(catalog, tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "out.csv")
    flag = rows[row]["flag"]
    assert "\n" not in flag
    for fragment in fragments:
        assert fragment in flag, flag
    expected = list(reference)
    expected[row] = {"id": survey["ids"][row], "p_qso": "", "label": "", "flag": flag}
    _same(rows, expected)
    # The reader says the same in one line.
    from starqso.errors import InputError
    from starqso.io.cutouts import read_band_cutout, read_cutout

    with pytest.raises(InputError) as excinfo:
        if layout is _band_files:
            read_band_cutout([tmp_path / "in" / "bands" / f"{survey['ids'][row]}_{band}.fits"
                              for band in BANDS], crop_size=32)
        else:
            read_cutout(path, crop_size=32)
    assert str(excinfo.value) == flag


# ------------------------------------------------------------------------ on Dask


def _records(frame):
    """Output rows as the CSV reader gives them; an unclassified p_qso is null (NaN, NA)."""
    return [{"id": str(row.id), "p_qso": np.nan if pd.isna(row.p_qso) else float(row.p_qso),
             "label": str(row.label), "flag": str(row.flag)} for row in frame.itertuples()]


@pytest.mark.usefixtures("dask_scratch")
def test_zarr_batches_on_dask_give_the_same_rows(survey, reference, bad_reference, tmp_path):
    (tmp_path / "in").mkdir()
    source = _zarr_batches(tmp_path / "in", survey["ids"], _bad_cubes(survey["cubes"]))
    output = tmp_path / "out.parquet"
    result = _predict(source, output, "--workers", 1, "--partition-rows", 10)
    assert result.exit_code == 0, result.output
    assert f"{COUNT} rows" in result.stdout and "2 flagged, 1 repaired" in result.stdout
    # Partitions never cross a batch: rows 0-9 | 10-19, 20-23.
    files = sorted(output.glob("part-*.parquet"))
    assert [path.name for path in files] == [f"part-{i:06d}.parquet" for i in range(3)]
    parts = [pd.read_parquet(path) for path in files]
    assert [len(part) for part in parts] == [10, 10, 4]
    _same(_records(pd.concat(parts, ignore_index=True)),
          _expected(bad_reference, reference, file_based=False))


@pytest.mark.usefixtures("dask_scratch")
def test_hats_on_dask_is_a_hats_catalogue_of_the_same_rows(survey, reference, bad_reference,
                                                           tmp_path):
    import lsdb

    (tmp_path / "in").mkdir()
    source = _hats(tmp_path / "in", survey["ids"], _bad_cubes(survey["cubes"]), {MISSING})
    output = tmp_path / "predictions"
    result = _predict(source, output, "--workers", 1, "--partition-rows", 10)
    assert result.exit_code == 0, result.output
    assert f"{COUNT} rows" in result.stdout and "3 flagged, 1 repaired" in result.stdout
    found = lsdb.open_catalog(str(output)).compute()
    assert sorted(found["id"]) == sorted(survey["ids"])
    records = _records(found)
    order = [record["id"] for record in records]
    _same(records, _expected(bad_reference, reference, file_based=True), order=order)
    # ra/dec carried through, by id.
    ra, dec = _sky(COUNT)
    sky = {ident: (r, d) for ident, r, d in zip(survey["ids"], ra, dec, strict=False)}
    assert all(np.allclose(sky[str(row.id)], (row.ra, row.dec)) for row in found.itertuples())
    properties = (output / output.name / "hats.properties").read_text()
    assert "starqso_model_sha256=" in properties


# --------------------------------------------------------------- --keep: input columns carried


def _catalog_with_sky(folder, survey):
    ra, dec = _sky(COUNT)
    rows = [[ident, name, repr(float(r)), repr(float(d)), f"field {number % 3}"]
            for number, (ident, name, r, d)
            in enumerate(zip(survey["ids"], survey["files"], ra, dec, strict=False))]
    return _catalog(folder / "catalog.csv", ["id", "image", "ra", "dec", "field"], rows), ra, dec


def test_keep_copies_input_columns_into_every_output(survey, reference, tmp_path):
    catalog, ra, dec = _catalog_with_sky(tmp_path, survey)
    result = _predict(catalog, tmp_path / "out.csv", "--keep", "ra,DEC,field")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "out.csv")
    assert list(rows[0]) == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err", "p_star",
                            "p_galaxy", "ra", "dec", "field"]
    assert [float(row["ra"]) for row in rows] == list(ra)  # exact: repr round-trips
    assert [row["field"] for row in rows][:4] == ["field 0", "field 1", "field 2", "field 0"]
    assert [row["p_qso"] for row in rows] == [row["p_qso"] for row in reference]
    result = _predict(catalog, tmp_path / "out.fits", "--keep", "ra,dec,field")
    assert result.exit_code == 0, result.output
    with fits.open(tmp_path / "out.fits") as hdulist:
        table = hdulist[1].data
        assert table["ra"].dtype.kind == "f" and np.array_equal(table["ra"], ra)
        assert table["field"][1] == "field 1"
    # A zarr stack's metadata column, in a Parquet dataset written on Dask.
    stack = _zarr(tmp_path / "z", survey["ids"], survey["cubes"])
    result = _predict(stack, tmp_path / "out.parquet", "--keep", "ra", "--workers", 1)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "out.parquet")
    assert list(frame.columns) == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err",
                                   "p_star", "p_galaxy", "ra"]
    assert np.allclose(frame["ra"], np.linspace(10, 20, COUNT))


@pytest.mark.parametrize("keep, fragment", [
    ("ra,nope", "--keep column 'nope' is not in catalogue"),
    ("label", "--keep label: the output has a column 'label' of its own"),
])
def test_keep_errors_are_one_line(keep, fragment, survey, tmp_path):
    catalog, _, _ = _catalog_with_sky(tmp_path, survey)
    result = _predict(catalog, tmp_path / "out.csv", "--keep", keep)
    cli_error_line(result, fragment)
    assert not (tmp_path / "out.csv").exists()


def test_keep_in_stacks(survey, tmp_path):
    import h5py

    path = _hdf5(tmp_path, survey["ids"], survey["cubes"])
    with h5py.File(path, "a") as handle:
        handle.create_dataset("mag_r", data=np.arange(COUNT, dtype=">f8"))
    result = _predict(path, tmp_path / "h.csv", "--keep", "mag_r")
    assert result.exit_code == 0, result.output
    assert [float(row["mag_r"]) for row in _rows(tmp_path / "h.csv")] == list(range(COUNT))
    stack = _fits_stack(tmp_path, survey["ids"], survey["cubes"])
    result = _predict(stack, tmp_path / "f.csv", "--keep", "id2")
    cli_error_line(result, "--keep column 'id2' is not in the id table of file")


def test_provenance_in_every_output(survey, tmp_path):
    """Model SHA-256, version, input, date and command line in the side-car, FITS header,
    Parquet metadata and _starqso.json."""
    import json

    import pyarrow.parquet as pq

    catalog = survey["folder"] / "catalog.csv"
    result = _predict(catalog, tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "p.csv.json").read_text())
    assert len(side["model_sha256"]) == 64 and side["model_name"] == "pretrained"
    assert side["created"].endswith("Z") and side["starqso_version"]
    assert side["source"] == str(catalog.resolve()) and len(side["catalog_sha256"]) == 64
    result = _predict(catalog, tmp_path / "p.fits")
    assert result.exit_code == 0, result.output
    header = fits.getheader(tmp_path / "p.fits", 1)
    assert header["MODELSHA"] == side["model_sha256"] and header["INPUT"] == side["source"]
    assert header["DATE"].endswith("Z") and header["STQVER"] == side["starqso_version"]
    stack = _zarr(tmp_path / "z", survey["ids"], survey["cubes"])
    result = _predict(stack, tmp_path / "out", "--workers", 1)
    assert result.exit_code == 0, result.output
    record = json.loads(pq.read_schema(tmp_path / "out" / "part-000000.parquet")
                        .metadata[b"starqso"])
    assert record["model_sha256"] == side["model_sha256"] and "created" not in record
    beside = json.loads((tmp_path / "out" / "_starqso.json").read_text())
    assert beside["created"].endswith("Z") and beside["files"] == ["part-000000.parquet"]


def test_embed_reads_every_layout_as_the_catalogue(survey, tmp_path):
    """`starqso embed` rows come from the same reader: one embedder, every layout."""
    from starqso.discovery.embed import Embedder, embed_rows

    embedder = Embedder(None, prior=0.3)
    reference = embed_rows(survey["folder"] / "catalog.csv", embedder)
    assert list(reference.ids) == survey["ids"] and reference.usable().all()
    for layout, (build, _) in LAYOUTS.items():
        (tmp_path / layout).mkdir()
        source = build(tmp_path / layout, survey["ids"], survey["cubes"])
        table = embed_rows(source, embedder)
        order = _hats_order(source) if layout == "hats" else survey["ids"]
        assert list(table.ids) == order, layout
        rows = [survey["ids"].index(identifier) for identifier in order]
        np.testing.assert_allclose(table.spaces["vector"], reference.spaces["vector"][rows],
                                   atol=1e-5, err_msg=layout)
        np.testing.assert_allclose(table.columns["p_qso"], reference.columns["p_qso"][rows],
                                   atol=1e-6, err_msg=layout)
