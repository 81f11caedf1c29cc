"""Tests for the data path: crops, encoder inputs, catalogue/simulation arrays, splits, tf.data."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starqso.data import make_dataset, split_indices
from starqso.errors import InputError
from starqso.io import load_catalog_arrays, read_catalog
from starqso.preprocessing import (
    ENCODER_NUM_PIXELS,
    GriddedSpectrum,
    center_crop,
    encoder_input,
    encoder_wavelength,
)
from starqso.simulate import simulate_survey
from starqso.simulate.arrays import simulate_arrays

REPO_ROOT = Path(__file__).resolve().parents[1]
N_SIM, SEED, CUTOUT, IMAGE = 6, 1, 24, 16


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulate_survey(tmp_path_factory.mktemp("sim") / "sim", N_SIM, seed=SEED, size=CUTOUT,
                           workers=1)


@pytest.fixture(scope="module")
def loaded(survey):
    return load_catalog_arrays(survey, IMAGE)


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

def test_load_catalog_arrays_from_a_simulated_survey(survey, loaded):
    catalog = read_catalog(survey)
    n = len(catalog)
    expected = {"ids": (n,), "images": (n, IMAGE, IMAGE, 5), "spectra": (n, 3700, 2),
                "has_spectrum": (n,), "labels": (n,), "redshift": (n,), "mags": (n, 5)}
    assert {key: loaded[key].shape for key in expected} == expected
    assert loaded["images"].dtype == np.float32 and loaded["spectra"].dtype == np.float32
    assert loaded["labels"].dtype == np.int8 and loaded["has_spectrum"].dtype == bool
    assert loaded["ids"].tolist() == list(catalog["id"])
    assert loaded["labels"].tolist() == [int(label == "QSO") for label in catalog["label"]]
    assert loaded["has_spectrum"].all() and np.abs(loaded["spectra"][:, :, 0]).sum(1).min() > 0
    np.testing.assert_allclose(loaded["redshift"], catalog["redshift"], rtol=1e-6)
    np.testing.assert_allclose(loaded["mags"][:, 2], catalog["r"], rtol=1e-6)


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
    data = load_catalog_arrays(_write_csv(folder / "hand.csv", rows), IMAGE, progress=counts.append)
    assert data["has_spectrum"].tolist() == [True, False] and counts == [1, 2]
    assert not data["spectra"][1].any() and data["labels"].tolist() == [1, -1]
    assert np.isnan(data["redshift"]).all() and np.isnan(data["mags"]).all()
    np.testing.assert_array_equal(data["images"], loaded["images"][:2])
    np.testing.assert_array_equal(data["spectra"][0], loaded["spectra"][0])

    rows.append(["lost-1", "images/nope.fits", "", "STAR"])
    with pytest.raises(InputError, match="row 3 \\(id 'lost-1'\\)") as excinfo:
        load_catalog_arrays(_write_csv(folder / "lost.csv", rows), IMAGE)
    assert "nope.fits" in str(excinfo.value) and "\n" not in str(excinfo.value)
    lenient = load_catalog_arrays(_write_csv(folder / "lost.csv", rows), IMAGE, strict=False)
    assert lenient["ids"].tolist() == ["a", "b"] and len(lenient["images"]) == 2
    [flag] = lenient["flags"]
    assert flag["row"] == 3 and flag["id"] == "lost-1" and not flag["used"]
    assert "nope.fits" in flag["flag"]
    rows[1][3] = ""
    with pytest.raises(InputError, match="at least one usable row labelled"):
        load_catalog_arrays(_write_csv(folder / "unlabelled.csv", rows[:3]), IMAGE,
                            require_labels=True)


def test_too_small_cutout_names_row_and_file(survey):
    with pytest.raises(InputError, match="row 1 .*must be at least 32x32.*sim-000000.fits"):
        load_catalog_arrays(survey, 32)


# --- simulated arrays --------------------------------------------------------------------------

def test_simulate_arrays_matches_files_and_ignores_workers(loaded):
    serial = simulate_arrays(N_SIM, SEED, image_size=IMAGE, cutout_size=CUTOUT, workers=1)
    parallel = simulate_arrays(N_SIM, SEED, image_size=IMAGE, cutout_size=CUTOUT, workers=2)
    assert serial.keys() == loaded.keys() - {"flags"} and loaded["flags"] == []
    for key in serial:
        np.testing.assert_array_equal(serial[key], parallel[key], err_msg=key)
    for key in ("ids", "images", "labels", "has_spectrum"):
        np.testing.assert_array_equal(serial[key], loaded[key], err_msg=key)
    np.testing.assert_allclose(serial["redshift"], loaded["redshift"], atol=1e-6)
    np.testing.assert_allclose(serial["mags"], loaded["mags"], atol=1e-5)
    # Files store wavelength as float32 log10: the same pixels, values within float32 noise.
    np.testing.assert_array_equal(serial["spectra"][..., 1] > 0, loaded["spectra"][..., 1] > 0)
    np.testing.assert_allclose(serial["spectra"], loaded["spectra"], rtol=1e-3, atol=2e-3)


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
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
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
    assert all(np.array_equal(a, b) for a, b in zip(orders(3), (first, second)))
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
    code = ("import sys, starqso.io.dataset, starqso.simulate.arrays, starqso.preprocessing, "
            "starqso.data.splits; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
