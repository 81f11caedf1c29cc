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
    from starqso.jsonfile import DuplicateKeyError, loads

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
