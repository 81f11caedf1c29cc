"""Inputs that parse but mean two things, and sources that are not stars or QSOs.

Issue 36, items 9 and 10, through the command line:

* a JSON or YAML file with one key twice (``threshold`` in a model's ``metadata.json``,
  ``num_objects`` in a run config, ``threshold`` in a predictions side-car) is one error line
  naming the file and the key, not the last value silently;
* a source narrower than the PSF (one hot pixel: a cosmic ray or a detector artefact) gets no
  STAR/QSO answer: it is flagged, with the ARTEFACT qflag bit.
"""

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey

from starqso.cli import main
from starqso.inference import default_model_dir
from starqso.schema import QFLAG_BITS

CUTOUT = 40  # the shipped model crops 32x32 from it


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 4, seed=36, size=CUTOUT)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# ------------------------------------------------------------------- duplicate keys (item 9)


def test_strict_json_names_the_repeated_key_at_any_depth():
    from starqso._util.jsonfile import DuplicateKeyError, loads

    assert loads('{"a": 1, "b": {"c": [1, {"d": 2}]}}', "x.json") == {
        "a": 1, "b": {"c": [1, {"d": 2}]}}
    with pytest.raises(DuplicateKeyError, match=r"x\.json has the key 'd' more than once"):
        loads('{"a": 1, "b": {"c": [1, {"d": 2, "d": 3}]}}', "x.json")


def test_predict_refuses_a_model_whose_metadata_repeats_threshold(survey, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    metadata = model / "metadata.json"
    text = metadata.read_text(encoding="utf-8")
    assert text.lstrip().startswith("{") and '"threshold"' in text
    # The second value is the one Python's json would keep.
    metadata.write_text(text.replace("{", '{"threshold": 0.99, ', 1), encoding="utf-8")
    output = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", str(survey / "catalog.csv"), "--model",
                                       str(model), "--output", str(output),
                                       "--runtime", "litert"])
    cli_error_line(result, str(metadata), "'threshold' more than once")
    assert not output.exists()


def test_fit_refuses_a_config_that_repeats_a_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\ndata:\n  num_objects: 200\n  num_objects: 900\n",
                      encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out", str(out)])
    cli_error_line(result, str(config), "'num_objects' more than once", "line 4")
    assert not out.exists()


def test_evaluate_refuses_a_side_car_that_repeats_threshold(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("id,label\na,STAR\nb,QSO\n", encoding="utf-8")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("id,p_qso,label,flag\na,0.2,STAR,\nb,0.7,QSO,\n", encoding="utf-8")
    sidecar = tmp_path / "predictions.csv.json"
    sidecar.write_text('{"threshold": 0.5, "threshold": 0.9}', encoding="utf-8")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", str(predictions), "--truth", str(truth),
                                       "--out", str(out)])
    cli_error_line(result, str(sidecar), "'threshold' more than once")
    assert not out.exists()


# ------------------------------------------------- sources narrower than the PSF (item 10)


def _hot_pixel_folder(survey, folder):
    """Blank sky with the survey's noise, plus one hot pixel at the centre; and the survey's
    own cutouts (real simulated stars and QSOs) beside them."""
    from starqso.io import read_cutout, write_cutout
    from starqso.preprocessing.screening import sky_sigma

    folder.mkdir()
    real = sorted((survey / "images").glob("*.fits"))
    for path in real:
        shutil.copy(path, folder / path.name)
    sigma = sky_sigma(np.moveaxis(read_cutout(real[0]).data, 0, -1))[0]
    rng = np.random.default_rng(36)
    centre = CUTOUT // 2
    hot = {"hot-r-5": (5.0, [2]), "hot-r-5000": (5000.0, [2]), "hot-all-50": (50.0, range(5))}
    for name, (value, bands) in hot.items():
        cube = rng.normal(0.0, sigma[:, None, None], (5, CUTOUT, CUTOUT)).astype(np.float32)
        for band in bands:
            cube[band, centre, centre] += value
        write_cutout(folder / f"{name}.fits", cube)
    return [path.stem for path in real], list(hot)


def test_predict_gives_no_answer_for_a_hot_pixel_on_blank_sky(survey, tmp_path):
    real, hot = _hot_pixel_folder(survey, tmp_path / "cutouts")
    output = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "cutouts"), "--output",
                                       str(output), "--runtime", "litert"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in _rows(output)}
    for name in hot:
        row = rows[name]
        assert row["label"] == "" and row["p_qso"] == "", row
        assert "narrower than the PSF (cosmic ray or artefact)" in row["flag"], row
        bits = int(row["qflag"])
        assert bits & QFLAG_BITS["ARTEFACT"] and bits & QFLAG_BITS["NOT_CLASSIFIED"], row
    for name in real:  # simulated stars and QSOs are not artefacts
        row = rows[name]
        assert row["label"] in ("STAR", "QSO") and not row["flag"], row
        assert not int(row["qflag"]) & QFLAG_BITS["ARTEFACT"], row


def test_embed_flags_a_hot_pixel_as_predict_does(survey, tmp_path):
    _, hot = _hot_pixel_folder(survey, tmp_path / "cutouts")
    output = tmp_path / "embeddings.csv"
    result = CliRunner().invoke(main, ["embed", str(tmp_path / "cutouts"), "--output",
                                       str(output)])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in _rows(output)}
    for name in hot:
        row = rows[name]
        assert row["label"] == "" and row["p_qso"] == "", row
        assert "narrower than the PSF (cosmic ray or artefact)" in row["flag"], row
        assert int(row["qflag"]) & QFLAG_BITS["ARTEFACT"], row
