"""Tests for the data path: crops, encoder inputs, catalogue/simulation arrays, splits, tf.data."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import starqso.io
import starqso.preprocessing
import starqso.preprocessing.images
import starqso.preprocessing.photometry
import starqso.simulate.images
from starqso import schema
from starqso.data import ObjectArrays, make_dataset, split_indices
from starqso.errors import InputError
from starqso.io import read_catalog
from starqso.preprocessing import (
    ENCODER_NUM_PIXELS,
    GriddedSpectrum,
    center_crop,
    encoder_input,
    encoder_wavelength,
)
from starqso.simulate import simulate_survey

REPO_ROOT = Path(__file__).resolve().parents[1]
N_SIM, SEED, CUTOUT, IMAGE = 6, 1, 24, 16


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulate_survey(tmp_path_factory.mktemp("sim") / "sim", N_SIM, seed=SEED, size=CUTOUT,
                           workers=1).catalog


@pytest.fixture(scope="module")
def loaded(survey):
    return ObjectArrays.from_catalog(survey, IMAGE)


# --- crops -------------------------------------------------------------------------------------

def test_center_crop_keeps_the_centre_pixel_at_the_centre():
    cube = np.zeros((5, 48, 48), np.float64)
    cube[:, 24, 24] = np.arange(1, 6)
    crop = center_crop(cube, 32)
    assert crop.shape == (32, 32, 5) and crop.dtype == np.float32 and crop.flags.c_contiguous
    assert np.argwhere(crop[..., 0]).tolist() == [[16, 16]]
    np.testing.assert_array_equal(crop[16, 16], np.arange(1, 6))
    # Odd difference: the extra pixel goes at the bottom/right, the same way in both axes.
    odd = np.zeros((5, 33, 35), np.float32)
    odd[:, 16, 17] = 1  # geometric centre of 33x35
    assert np.argwhere(center_crop(odd, 32)[..., 0]).tolist() == [[16, 16]]


@pytest.mark.parametrize("shape, fragment", [((5, 20, 40), "20x40"), ((4, 48, 48), "5 bands"),
                                             ((48, 48, 5), "5 bands")])
def test_center_crop_rejects_small_or_wrong_cubes(shape, fragment):
    with pytest.raises(InputError, match=fragment) as excinfo:
        center_crop(np.zeros(shape), 32, source="file x.fits")
    assert "x.fits" in str(excinfo.value) and "Received:" in str(excinfo.value)


# --- encoder input -----------------------------------------------------------------------------

def _gridded(flux, ivar, mask):
    return GriddedSpectrum(encoder_wavelength(), np.where(mask, 0, flux).astype(np.float32),
                           np.where(mask, 0, ivar).astype(np.float32), mask)


def test_encoder_input_marks_masked_pixels_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    flux = rng.normal(0.2, 1.0, ENCODER_NUM_PIXELS)  # faint: median near zero
    ivar = rng.uniform(0.5, 4.0, ENCODER_NUM_PIXELS)
    mask = np.zeros(ENCODER_NUM_PIXELS, bool)
    mask[100:200] = True
    flux[500] = 1e4  # cosmic ray
    out = encoder_input(_gridded(flux, ivar, mask))
    assert out.shape == (ENCODER_NUM_PIXELS, 2) and out.dtype == np.float32
    assert not out[mask].any() and (out[~mask, 1] > 0).all()
    assert out[500, 0] == 10.0 and np.abs(out[:, 0]).max() <= 10 and out[:, 1].max() <= 1
    scaled = encoder_input(_gridded(flux * 7, ivar / 49, mask))
    np.testing.assert_allclose(scaled, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flux_value, masked", [(1.0, True), (0.0, False)])
def test_encoder_input_needs_good_non_zero_pixels(flux_value, masked):
    mask = np.full(ENCODER_NUM_PIXELS, masked)
    gridded = _gridded(np.full(ENCODER_NUM_PIXELS, flux_value), np.ones(ENCODER_NUM_PIXELS), mask)
    with pytest.raises(InputError, match="good pixels") as excinfo:
        encoder_input(gridded, source="file s.fits")
    assert "s.fits" in str(excinfo.value) and "\n" not in str(excinfo.value)


# --- catalogue arrays --------------------------------------------------------------------------

def test_from_catalog_reads_a_simulated_survey(survey, loaded):
    catalog = read_catalog(survey)
    n = len(catalog)
    assert isinstance(loaded, ObjectArrays) and len(loaded) == n and loaded.image_size == IMAGE
    expected = {"ids": (n,), "images": (n, IMAGE, IMAGE, 5), "spectra": (n, 3700, 2),
                "has_spectrum": (n,), "labels": (n,), "redshift": (n,), "mags": (n, 5)}
    assert {key: getattr(loaded, key).shape for key in expected} == expected
    assert loaded.images.dtype == np.float32 and loaded.spectra.dtype == np.float32
    assert loaded.labels.dtype == np.int8 and loaded.has_spectrum.dtype == bool
    assert loaded.ids.tolist() == list(catalog["id"])
    assert loaded.labels.tolist() == [int(label == "QSO") for label in catalog["label"]]
    assert loaded.has_spectrum.all() and np.abs(loaded.spectra[:, :, 0]).sum(1).min() > 0
    np.testing.assert_allclose(loaded.redshift, catalog["redshift"], rtol=1e-6)
    np.testing.assert_allclose(loaded.mags[:, 2], catalog["r"], rtol=1e-6)
    assert loaded.flags == []


def _write_csv(path, rows):
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    return path


def test_rows_without_spectrum_or_label_and_missing_files(survey, loaded):
    folder = Path(survey).parent
    rows = [["id", "image", "spectrum", "label"],
            ["a", "images/sim-000000.fits", "spectra/sim-000000.fits", "qso"],
            ["b", "images/sim-000001.fits", "", ""]]
    counts = []
    data = ObjectArrays.from_catalog(_write_csv(folder / "hand.csv", rows), IMAGE,
                                     progress=counts.append)
    assert data.has_spectrum.tolist() == [True, False] and counts == [1, 2]
    assert not data.spectra[1].any() and data.labels.tolist() == [1, -1]
    assert np.isnan(data.redshift).all() and np.isnan(data.mags).all()
    np.testing.assert_array_equal(data.images, loaded.images[:2])
    np.testing.assert_array_equal(data.spectra[0], loaded.spectra[0])

    rows.append(["lost-1", "images/nope.fits", "", "STAR"])
    with pytest.raises(InputError, match="row 3 \\(id 'lost-1'\\)") as excinfo:
        ObjectArrays.from_catalog(_write_csv(folder / "lost.csv", rows), IMAGE)
    assert "nope.fits" in str(excinfo.value) and "\n" not in str(excinfo.value)
    lenient = ObjectArrays.from_catalog(_write_csv(folder / "lost.csv", rows), IMAGE,
                                        strict=False)
    assert lenient.ids.tolist() == ["a", "b"] and len(lenient.images) == 2
    [flag] = lenient.flags
    assert flag["row"] == 3 and flag["id"] == "lost-1" and not flag["used"]
    assert "nope.fits" in flag["flag"]
    rows[1][3] = ""
    with pytest.raises(InputError, match="at least one usable row labelled"):
        ObjectArrays.from_catalog(_write_csv(folder / "unlabelled.csv", rows[:3]), IMAGE,
                                  require_labels=True)


def test_repaired_cutouts_and_unusable_spectra_are_flagged_in_order(survey, loaded, tmp_path):
    from starqso.io import read_cutout, write_cutout

    folder = Path(survey).parent
    cube = read_cutout(folder / "images" / "sim-000002.fits").data.copy()
    cube[0, 6, 6], cube[1, 5, 9] = np.nan, np.inf  # inside the crop, away from the object
    write_cutout(tmp_path / "nan.fits", cube)
    write_cutout(tmp_path / "zero.fits", np.zeros_like(cube))
    (tmp_path / "junk.fits").write_bytes(b"not a FITS file")
    image = str(folder / "images" / "sim-000003.fits")
    rows = [["id", "image", "spectrum"],
            ["nan", str(tmp_path / "nan.fits"), str(tmp_path / "junk.fits")],
            ["zero", str(tmp_path / "zero.fits"), str(tmp_path / "junk.fits")],
            ["good", image, str(folder / "spectra" / "sim-000003.fits")]]
    data = ObjectArrays.from_catalog(_write_csv(tmp_path / "messy.csv", rows), IMAGE,
                                     strict=False)
    assert data.ids.tolist() == ["nan", "good"] and data.has_spectrum.tolist() == [False, True]
    assert np.isfinite(data.images).all()
    np.testing.assert_array_equal(data.spectra[1], loaded.spectra[3])
    assert [(f["row"], f["used"], f["flag"].split(" ")[0]) for f in data.flags] == [
        (1, True, "repaired"), (1, True, "spectrum"), (2, False, "cutout")]
    assert "junk.fits" in data.flags[1]["flag"] and "zero.fits" in data.flags[2]["flag"]
    with pytest.raises(InputError, match="row 1 .*repaired 2 NaN/inf.*strict"):
        ObjectArrays.from_catalog(tmp_path / "messy.csv", IMAGE)


def test_too_small_cutout_names_row_and_file(survey):
    with pytest.raises(InputError, match="row 1 .*must be at least 32x32.*sim-000000.fits"):
        ObjectArrays.from_catalog(survey, 32)


# --- simulated arrays --------------------------------------------------------------------------

def test_from_simulation_matches_files_and_ignores_workers(loaded):
    serial = ObjectArrays.from_simulation(N_SIM, SEED, image_size=IMAGE, cutout_size=CUTOUT,
                                          workers=1)
    parallel = ObjectArrays.from_simulation(N_SIM, SEED, image_size=IMAGE, cutout_size=CUTOUT,
                                            workers=2)
    assert serial.flags == [] and parallel.flags == []
    for key in ROW_FIELDS:
        np.testing.assert_array_equal(getattr(serial, key), getattr(parallel, key), err_msg=key)
        assert getattr(serial, key).dtype == getattr(loaded, key).dtype, key
    for key in ("ids", "images", "labels", "has_spectrum"):
        np.testing.assert_array_equal(getattr(serial, key), getattr(loaded, key), err_msg=key)
    np.testing.assert_allclose(serial.redshift, loaded.redshift, atol=1e-6)
    np.testing.assert_allclose(serial.mags, loaded.mags, atol=1e-5)
    # Files store wavelength as float32 log10: the same pixels, values within float32 noise.
    np.testing.assert_array_equal(serial.spectra[..., 1] > 0, loaded.spectra[..., 1] > 0)
    np.testing.assert_allclose(serial.spectra, loaded.spectra, rtol=1e-3, atol=2e-3)


def test_from_simulation_is_the_simulated_objects_prepared():
    from starqso.preprocessing.objects import prepare_object
    from starqso.simulate import simulate_object

    arrays = ObjectArrays.from_simulation(3, SEED, image_size=IMAGE, cutout_size=CUTOUT,
                                          workers=1)
    for row in range(3):
        obj = simulate_object(row, SEED, CUTOUT)
        spectrum = obj.spectrum
        prepared = prepare_object(obj.cutout, IMAGE, (
            spectrum["wavelength"], spectrum["flux"], spectrum["ivar"], spectrum["and_mask"] != 0),
            source="test")
        assert prepared.note == "" and prepared.spectrum_error == ""
        # Simulated cutouts are clean, so the repairing crop is exactly the plain centre crop.
        np.testing.assert_array_equal(prepared.image, center_crop(obj.cutout, IMAGE))
        np.testing.assert_array_equal(arrays.images[row], prepared.image)
        np.testing.assert_array_equal(arrays.spectra[row], prepared.spectrum)
        assert arrays.ids[row] == obj.id
        assert arrays.labels[row] == schema.LABEL_CODES[obj.label]
    with pytest.raises(InputError, match="image size must be within"):
        ObjectArrays.from_simulation(2, SEED, image_size=CUTOUT + 1, cutout_size=CUTOUT)


# --- the ObjectArrays container ----------------------------------------------------------------

ROW_FIELDS = ("ids", "images", "spectra", "has_spectrum", "labels", "redshift", "mags")


def test_subset_keeps_rows_aligned(loaded):
    assert len(loaded) == N_SIM
    index = np.array([4, 1, 1])
    part = loaded.subset(index)
    assert isinstance(part, ObjectArrays) and len(part) == 3 and part.flags == []
    for key in ROW_FIELDS:
        np.testing.assert_array_equal(getattr(part, key), getattr(loaded, key)[index],
                                      err_msg=key)
    qso = loaded.subset(loaded.labels == 1)
    assert qso.ids.tolist() == loaded.ids[loaded.labels == 1].tolist()
    assert (qso.labels == 1).all() and len(loaded.subset([])) == 0
    assert loaded.subset(slice(1, 3)).ids.tolist() == loaded.ids[1:3].tolist()
    with pytest.raises(ValueError, match="1-D index"):
        loaded.subset(np.zeros((2, 2), int))


def test_save_and_load_round_trip(loaded, tmp_path):
    flagged = loaded.subset(slice(None))
    flagged.flags = [{"row": 1, "id": "x", "used": True, "flag": "repaired"}]
    path = flagged.save(tmp_path / "cache.npz")
    assert path == str(tmp_path / "cache.npz")
    assert list(tmp_path.iterdir()) == [tmp_path / "cache.npz"]  # no temporary file left
    again = ObjectArrays.load(path)
    assert again.flags == [] and again.image_size == IMAGE
    for key in ROW_FIELDS:
        value = getattr(again, key)
        assert value.dtype == getattr(loaded, key).dtype, key
        np.testing.assert_array_equal(value, getattr(loaded, key), err_msg=key)
    np.save(tmp_path / "one.npy", np.zeros(3))
    for bad in (tmp_path / "missing.npz", tmp_path / "one.npy"):
        with pytest.raises(InputError, match="ObjectArrays.save") as excinfo:
            ObjectArrays.load(bad)
        assert bad.name in str(excinfo.value)


def test_mismatched_fields_raise_value_error():
    empty = ObjectArrays.empty(["a", "b"], 8)
    assert len(empty) == 2 and empty.image_size == 8 and empty.flags == []
    assert empty.labels.tolist() == [schema.UNKNOWN_LABEL] * 2 and np.isnan(empty.mags).all()
    fields = {key: getattr(empty, key) for key in ROW_FIELDS}
    for key, value in [("labels", np.zeros(3, np.int8)), ("images", np.zeros((2, 8, 6, 5),
                                                                             np.float32)),
                       ("mags", np.zeros((2, 5))), ("spectra", np.zeros((2, 100, 2), np.float32)),
                       ("ids", ["a", "b"])]:
        with pytest.raises(ValueError, match=f"Received: .*{key}"):
            ObjectArrays(**{**fields, key: value})


# --- one schema --------------------------------------------------------------------------------

def test_schema_constants_are_shared_not_copied():
    from starqso.models import spectrum  # imports Keras

    assert starqso.io.BANDS is schema.BANDS and schema.NUM_BANDS == len(schema.BANDS) == 5
    assert starqso.io.PIXEL_SCALE_ARCSEC is schema.PIXEL_SCALE_ARCSEC
    assert starqso.preprocessing.photometry.PIXEL_SCALE is schema.PIXEL_SCALE_ARCSEC
    assert starqso.simulate.images.PIXEL_SCALE_ARCSEC is schema.PIXEL_SCALE_ARCSEC
    assert starqso.preprocessing.images.NUM_BANDS is schema.NUM_BANDS
    for name in ("ENCODER_WAVELENGTH_MIN", "ENCODER_WAVELENGTH_MAX", "ENCODER_NUM_PIXELS",
                 "SPECTRUM_CHANNELS"):
        assert getattr(starqso.preprocessing, name) is getattr(schema, name), name
    assert spectrum.SPECTRUM_PIXELS is schema.ENCODER_NUM_PIXELS
    assert spectrum.SPECTRUM_CHANNELS is schema.SPECTRUM_CHANNELS
    assert schema.LABEL_CODES == {"STAR": 0, "QSO": 1, "GALAXY": 2, "": -1}
    assert [schema.LABEL_CODES[name] for name in schema.CLASS_NAMES] == [0, 1]


# Distinctive values of the data model: a module-level literal equal to one of them is a copy.
_SCHEMA_VALUES = [schema.BANDS, schema.PIXEL_SCALE_ARCSEC, schema.BUNIT, schema.LAYOUT,
                  schema.ENCODER_WAVELENGTH_MIN, schema.ENCODER_WAVELENGTH_MAX,
                  schema.CLASS_NAMES, schema.LABEL_CODES]


def test_schema_constants_are_assigned_only_in_schema():
    names = {name for name in vars(schema) if name.isupper()}
    package = REPO_ROOT / "starqso"
    copies = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == "schema.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    name = getattr(target, "id", None)
                    try:
                        value = ast.literal_eval(node.value) if node.value else None
                    except Exception:  # not a literal: a computed value, not a copy
                        value = None
                    copied = name in names or any(
                        type(value) is type(known) and value == known for known in _SCHEMA_VALUES)
                    if copied:
                        copies.append(f"{relative}:{node.lineno} {name}")
    assert not copies, copies


# --- splits ------------------------------------------------------------------------------------

def test_split_indices_is_stratified_disjoint_and_deterministic():
    labels = np.array([0] * 70 + [1] * 20 + [-1] * 10, np.int8)
    train, val, test = split_indices(labels, 0.2, 0.1, seed=5)
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(100))
    for part, size in ((train, 70), (val, 20), (test, 10)):
        assert [np.sum(labels[part] == v) for v in (0, 1, -1)] == [size * 7 // 10, size // 5,
                                                                    size // 10]
    again = split_indices(labels, 0.2, 0.1, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=False))
    assert not np.array_equal(split_indices(labels, 0.2, 0.1, seed=6)[1], val)
    assert [len(part) for part in split_indices([0, 1, 0, 1], 0.1)] == [2, 2, 0]
    with pytest.raises(InputError, match="too few objects"):
        split_indices([0, 1, 0], 0.3)
    with pytest.raises(InputError, match="validation fraction"):
        split_indices(labels, 0.6, 0.5)


# --- tf.data -----------------------------------------------------------------------------------

def _images(n=10, size=4):
    return np.random.default_rng(1).normal(size=(n, size, size, 5)).astype(np.float32)


def test_make_dataset_batches_and_shuffles_deterministically():
    images, features = _images(), np.arange(20, dtype=np.float64).reshape(10, 2)
    inputs = {"image": images, "features": features}
    batches = list(make_dataset(inputs, np.arange(10) % 2, batch_size=4))
    assert [b["image"].shape[0] for b, _ in batches] == [4, 4, 2]
    assert batches[0][0]["features"].dtype.name == "float32" and batches[0][1].shape == (4,)
    np.testing.assert_array_equal(batches[0][0]["image"], images[:4])
    only = list(make_dataset(inputs, None, batch_size=4, drop_remainder=True))
    assert len(only) == 2 and isinstance(only[0], dict)

    def orders(seed):
        ds = make_dataset({"features": features}, None, batch_size=3, shuffle=True, seed=seed)
        return [np.concatenate([b["features"][:, 0] for b in ds]) for _ in range(2)]

    first, second = orders(3)
    assert sorted(first) == list(range(0, 20, 2)) and not np.array_equal(first, second)
    assert all(np.array_equal(a, b) for a, b in zip(orders(3), (first, second), strict=False))
    with pytest.raises(InputError, match="same, non-zero number of rows"):
        make_dataset(inputs, np.zeros(9), batch_size=2)


def test_augmentation_flips_and_rotates_reproducibly():
    images = _images(32)

    def run(seed):
        ds = make_dataset({"image": images, "index": np.arange(32)}, None, batch_size=8,
                          augment=True, seed=seed)
        return np.concatenate([b["image"] for b in ds])

    out = run(0)
    symmetries = [np.rot90(flip, k, axes=(1, 2)) for flip in (images, images[:, :, ::-1])
                  for k in range(4)]
    matches = [[np.array_equal(out[i], s[i]) for s in symmetries] for i in range(32)]
    assert all(any(row) for row in matches)  # each image is a flip/rotation of itself
    assert len({row.index(True) for row in matches}) >= 4  # and they are not all the same
    np.testing.assert_array_equal(run(0), out)
    assert not np.array_equal(run(1), out)


def test_numpy_modules_do_not_import_tensorflow():
    code = ("import sys, starqso.schema, starqso.data.arrays, starqso.preprocessing.objects, "
            "starqso.preprocessing, starqso.io, starqso.simulate, starqso.data.splits; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
