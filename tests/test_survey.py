"""The survey and the class list as values: round trips, model metadata, cutout header cards."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_error_line, rewrite_metadata, simulated_survey

from starqso.cli import main
from starqso.deploy.folder import check_model_dir
from starqso.deploy.metadata import model_survey
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.io import read_band_cutout, read_cutout
from starqso.schema import (
    BANDS,
    BUNIT,
    CLASS_NAMES,
    CLASSES,
    EXTINCTION_COEFFICIENTS,
    PIXEL_SCALE_ARCSEC,
    SDSS,
    ClassList,
    Survey,
)

CUTOUT = 40  # the shipped model crops 32x32 from it
# Another survey's values, as a later round might add them: six bands at 0.2 arcsec/px.
OTHER_SURVEY = dataclasses.replace(SDSS, name="LSST", bands=("u", "g", "r", "i", "z", "y"),
                                   pixel_scale_arcsec=0.2, zero_point=31.4, unit="nJy",
                                   unit_aliases=(), extinction_coefficients=())


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 1, seed=5, size=CUTOUT)


# ------------------------------------------------------------------------- the values


def test_survey_and_classes_round_trip_through_json():
    for value in (SDSS, OTHER_SURVEY):
        assert Survey.from_dict(json.loads(json.dumps(value.to_dict()))) == value
    assert ClassList.from_dict(json.loads(json.dumps(CLASSES.to_dict()))) == CLASSES
    assert ClassList.from_dict({"names": ["STAR", "QSO", "GALAXY"]}).names[2] == "GALAXY"
    # The module constants the package imports are the values' fields.
    assert (BANDS, PIXEL_SCALE_ARCSEC, BUNIT, EXTINCTION_COEFFICIENTS, CLASS_NAMES) == (
        SDSS.bands, SDSS.pixel_scale_arcsec, SDSS.unit, SDSS.extinction_coefficients,
        CLASSES.names)
    assert (SDSS.name, "".join(SDSS.bands), SDSS.zero_point) == ("SDSS", "ugriz", 22.5)


BAD_SURVEYS = {
    "not_a_dict": ("SDSS", "must be a dict"),
    "missing_key": ({k: v for k, v in SDSS.to_dict().items() if k != "unit"}, "missing: unit"),
    "unknown_key": ({**SDSS.to_dict(), "colour": "red"}, "unknown: colour"),
    "bands_string": ({**SDSS.to_dict(), "bands": "ugriz"}, "Received: 'ugriz'"),
    "bands_twice": ({**SDSS.to_dict(), "bands": ["g", "g"]}, "distinct"),
    "scale_bool": ({**SDSS.to_dict(), "pixel_scale_arcsec": True}, "Received: True"),
    "scale_negative": ({**SDSS.to_dict(), "pixel_scale_arcsec": -0.4}, "> 0"),
    "zero_point_nan": ({**SDSS.to_dict(), "zero_point": float("nan")}, "zero_point"),
    "extinction_count": ({**SDSS.to_dict(), "extinction_coefficients": [1.0]}, "one per band"),
}


@pytest.mark.parametrize("case", sorted(BAD_SURVEYS))
def test_bad_survey_dict_is_a_one_line_value_error(case):
    data, fragment = BAD_SURVEYS[case]
    with pytest.raises(ValueError) as excinfo:
        Survey.from_dict(data)
    assert_one_line_error(excinfo, "survey", fragment)


@pytest.mark.parametrize("data, fragment", [
    (["STAR", "QSO"], "must be a dict"), ({"names": ["STAR"]}, "at least two"),
    ({"names": ["STAR", "STAR"]}, "distinct"), ({"names": ["STAR", ""]}, "non-empty"),
    ({"names": ["STAR", "QSO"], "positive": "QSO"}, "unknown: positive")])
def test_bad_class_list_dict_is_a_one_line_value_error(data, fragment):
    with pytest.raises(ValueError) as excinfo:
        ClassList.from_dict(data)
    assert_one_line_error(excinfo, fragment)


# ------------------------------------------------------------------------- model metadata


def test_export_records_the_survey_and_classes(tiny_run):
    export = tiny_run.path / "export"
    metadata = json.loads((export / "metadata.json").read_text())
    assert metadata["survey"] == SDSS.to_dict()
    assert metadata["classes"] == CLASSES.to_dict() == {"names": ["STAR", "QSO"]}
    # The older keys say the same.
    assert (metadata["bands"], metadata["units"], metadata["pixel_scale_arcsec"],
            metadata["class_names"]) == ("".join(SDSS.bands), SDSS.unit,
                                         SDSS.pixel_scale_arcsec, list(CLASSES.names))
    assert model_survey(check_model_dir(export, "litert")) == (SDSS, CLASSES)


def test_a_model_without_the_keys_is_sdss_star_qso():
    metadata = check_model_dir(default_model_dir(), "litert")
    assert "survey" not in metadata and "classes" not in metadata
    assert model_survey(metadata) == (SDSS, CLASSES)


def _predict(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args), "--runtime", "litert"])


@pytest.mark.parametrize("change, fragments", [
    ({"survey": OTHER_SURVEY.to_dict()},
     ("survey LSST (u g r i z y, 0.2 arcsec/px, nJy)", "SDSS (u g r i z, 0.396 arcsec/px",
      "survey='LSST'")),
    ({"classes": {"names": ["STAR", "QSO", "WHITE_DWARF"]}},
     ("classes STAR/QSO/WHITE_DWARF", "STAR/QSO or STAR/QSO/GALAXY models only",
      "'WHITE_DWARF'")),
    ({"survey": {**SDSS.to_dict(), "pixel_scale_arcsec": "0.396"}},
     ("metadata.json must give survey and classes", "pixel_scale_arcsec", "'0.396'")),
])
def test_a_model_of_another_survey_or_classes_is_refused(change, fragments, tiny_run, survey,
                                                          tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run.path / "export", folder)
    rewrite_metadata(folder, **change)
    output = tmp_path / "p.csv"
    result = _predict(survey / "catalog.csv", "--model", folder, "--output", output)
    cli_error_line(result, *fragments)
    assert not output.exists()


# ------------------------------------------------------------------------- cutout header cards


def _cube():
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 0.05, (5, CUTOUT, CUTOUT)).astype(np.float32)


def _celestial(**cards):
    return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 20.5, "CRPIX2": 20.5,
            "CRVAL1": 150.0, "CRVAL2": 2.0, **cards}


SDSS_DEG = PIXEL_SCALE_ARCSEC / 3600.0
# name: (header cards, fragments of the error); None: read as before.
HEADERS = {
    "no_cards": ({}, None),
    "sdss_cd": (_celestial(CD1_1=-SDSS_DEG, CD2_2=SDSS_DEG), None),
    # An SDSS frame's CD matrix: rotated, 0.39603 arcsec/px.
    "sdss_frame_cd": (_celestial(CD1_1=1.78098e-05, CD1_2=1.085576e-04, CD2_1=1.085507e-04,
                                 CD2_2=-1.78540e-05), None),
    "sdss_cdelt": (_celestial(CDELT1=-SDSS_DEG, CDELT2=SDSS_DEG), None),
    "linear_wcs": ({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CDELT1": 1.0, "CDELT2": 1.0}, None),
    "bunit_plural": ({"BUNIT": "Nanomaggies"}, None),
    "legacy_cd": (_celestial(CD1_1=-0.262 / 3600, CD2_2=0.262 / 3600),
                  ("0.396 arcsec/px (SDSS, within 2%)", "0.262 arcsec/px", "CD1_1=")),
    "binned_cdelt": (_celestial(CDELT1=-2 * SDSS_DEG, CDELT2=2 * SDSS_DEG),
                     ("0.792 arcsec/px", "CDELT1=", "CDELT2=")),
    "pixscale": ({"PIXSCALE": 0.262}, ("0.396 arcsec/px (PIXSCALE)", "PIXSCALE=0.262")),
    "bunit": ({"BUNIT": "Jy"}, ("SDSS units, nanomaggy", "BUNIT='Jy'")),
    "bands": ({"BANDS": "grizy"}, ("u, g, r, i, z, once each", "BANDS='grizy'")),
}


def _write(path, cards, data=None):
    hdu = fits.PrimaryHDU(_cube() if data is None else data)
    for keyword, value in cards.items():
        hdu.header[keyword] = value
    hdu.writeto(path)
    return path


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_cutout_cards_are_checked_against_the_survey(case, tmp_path):
    cards, fragments = HEADERS[case]
    path = _write(tmp_path / f"{case}.fits", cards)
    if fragments is None:
        assert read_cutout(path).data.shape == (5, CUTOUT, CUTOUT)
        return
    with pytest.raises(InputError) as excinfo:
        read_cutout(path)
    assert_one_line_error(excinfo, *fragments, str(path))


def test_a_band_file_whose_filter_names_no_survey_band_is_refused(tmp_path):
    paths = [_write(tmp_path / f"{band}.fits", {"FILTER": f"SDSS {band}"}, _cube()[0])
             for band in BANDS]
    assert read_band_cutout(paths).data.shape == (5, CUTOUT, CUTOUT)
    paths[4] = _write(tmp_path / "y.fits", {"FILTER": "y.00000"}, _cube()[0])
    with pytest.raises(InputError) as excinfo:
        read_band_cutout(paths)
    assert_one_line_error(excinfo, "image_z", "names no SDSS band", "FILTER='y.00000'",
                          str(paths[4]))


def test_a_cutout_contradicting_the_survey_is_refused_through_the_cli(survey, tmp_path):
    bad = _write(tmp_path / "bad.fits", _celestial(CD1_1=-0.262 / 3600, CD2_2=0.262 / 3600))
    good = survey / "images" / "sim-000000.fits"
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"id,image\na,{good}\nb,{bad}\n", encoding="utf-8")
    # The row is flagged in place (one bad file costs one row) ...
    output = tmp_path / "p.csv"
    result = _predict(catalog, "--output", output)
    assert result.exit_code == 0, result.output
    with open(output, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[0]["flag"] == "" and rows[0]["p_qso"] != ""
    assert "0.262 arcsec/px" in rows[1]["flag"] and rows[1]["p_qso"] == "", rows[1]
    # ... and with --strict it is the run's one-line error.
    strict = tmp_path / "strict.csv"
    cli_error_line(_predict(catalog, "--output", strict, "--strict"), "id 'b'",
                   "0.396 arcsec/px (SDSS, within 2%)", "0.262 arcsec/px", "CD1_1=")
