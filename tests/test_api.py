"""The Python API (:mod:`starqso.api`) gives the table ``starqso predict`` writes.

A small simulated survey (24 objects, 40 px cubes; the shipped model crops the centre 32 px),
three rows spoilt (all zeros and NaN at the object: flagged; a few NaN pixels: repaired), is
classified by ``starqso.load(...).classify`` and by ``starqso predict --runtime litert`` on the
same cubes saved as a FITS cube stack: every cell of the CSV read back equals the table's, and
the table's ``meta`` the side-car's record. Also: the prior, bad input (one ``ValueError``
line) and that ``import starqso`` imports no TensorFlow.
"""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import simulated_survey

import starqso
from starqso.cli import main

COUNT, SIZE = 24, 40
CENTRE = SIZE // 2
ZERO, NAN, REPAIRED = 3, 17, 20
# The side-car keys the table's meta carries with the same value.
RECORD_KEYS = ("model", "model_sha256", "runtime", "threshold", "prior", "prior_source",
               "temperature", "training_qso_fraction", "training_qso_fraction_assumed", "tta",
               "uncertainty", "ebv", "starqso_version", "model_name")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Ids and (24, 5, 40, 40) float32 cubes of a simulated survey, three rows spoilt."""
    from starqso.io import read_catalog, read_cutout, resolve_path

    folder = simulated_survey(tmp_path_factory, COUNT, seed=5, size=SIZE)
    table = read_catalog(folder / "catalog.csv")
    cubes = np.stack([read_cutout(resolve_path(table, str(value))).data
                      for value in table["image"]])
    cubes[ZERO] = 0
    cubes[NAN, :, CENTRE, CENTRE] = np.nan
    cubes[REPAIRED, 1, 8:11, 10] = np.nan  # inside the 32 px crop, off the object
    return {"ids": [f"obj{value}" for value in table["id"]], "cubes": cubes}


@pytest.fixture(scope="module")
def stack(survey, tmp_path_factory):
    """The cubes as a FITS cube stack: primary HDU (N, 5, H, W) and a table of ids."""
    path = tmp_path_factory.mktemp("stack") / "stack.fits"
    ids = fits.Column(name="id", format="20A", array=survey["ids"])
    fits.HDUList([fits.PrimaryHDU(survey["cubes"]),
                  fits.BinTableHDU.from_columns([ids])]).writeto(path)
    return path


@pytest.fixture(scope="module")
def classifiers():
    """One litert classifier per prior, loaded once."""
    return {prior: starqso.load(runtime="litert", prior=prior)
            for prior in (None, "0.3", "train")}


def _predict(stack, output, *options):
    result = CliRunner().invoke(main, ["predict", str(stack), "--runtime", "litert",
                                       "--output", str(output), *options])
    assert result.exit_code == 0, result.output
    with open(output, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    return rows, json.loads(output.with_name(output.name + ".json").read_text())


def _number(cell):
    return float(cell) if cell else math.nan


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("options, prior, tta, uncertainty", [
    ((), None, False, True),
    (("--prior", "0.3"), "0.3", False, True),
    (("--prior", "train", "--tta", "--no-uncertainty"), "train", True, False),
])
def test_table_equals_predict_output(survey, stack, classifiers, tmp_path, options, prior, tta,
                                     uncertainty):
    rows, record = _predict(stack, tmp_path / "out.csv", *options)
    table = classifiers[prior].classify(survey["cubes"], ids=survey["ids"], tta=tta,
                                        uncertainty=uncertainty)
    assert table.colnames == list(rows[0]) == ["id", "p_qso", "label", "flag", "qflag",
                                               "p_qso_err", "p_star", "p_galaxy"]
    assert [table[name].dtype.kind for name in table.colnames] == ["U", "f", "U", "U", "i", "f",
                                                                   "f", "f"]
    assert len(table) == len(rows) == COUNT
    for number, (row, line) in enumerate(zip(table, rows, strict=False)):
        assert row["id"] == line["id"]
        assert _same(row["p_qso"], _number(line["p_qso"])), (number, row["p_qso"], line)
        assert row["label"] == line["label"]
        assert row["qflag"] == int(line["qflag"])
        assert _same(row["p_qso_err"], _number(line["p_qso_err"]))
        assert _same(row["p_star"], _number(line["p_star"]))
        assert math.isnan(row["p_galaxy"]) and line["p_galaxy"] == ""  # a two-class model
        if number in (ZERO, NAN):
            # The same reason; only the ``Received:`` tail names where the cube came from.
            assert row["flag"].split(" Received:")[0] == line["flag"].split(" Received:")[0]
            assert row["flag"].endswith(f"cube {number} of the array")
            assert math.isnan(row["p_qso"]) and row["label"] == "" and row["qflag"] & 1
        else:
            assert row["flag"] == line["flag"]
    assert table["flag"][REPAIRED].startswith("repaired")
    assert set(table["label"]) == {"QSO", "STAR", ""}
    assert {key: table.meta[key] for key in RECORD_KEYS} == {key: record[key]
                                                             for key in RECORD_KEYS}
    assert table.meta["rows"] == COUNT and table.meta["created"]


def test_prior(survey, classifiers):
    default, sample, train = (classifiers[prior] for prior in (None, "0.3", "train"))
    metadata = default.metadata
    assert default.meta["prior"] == metadata["default_prior"] == 0.02
    assert default.meta["prior_source"] == "default"
    assert (sample.meta["prior"], sample.meta["prior_source"]) == (0.3, "user")
    assert train.meta["prior_source"] == "train" and train.settings["shift"] == 0
    assert train.meta["prior"] == metadata["training_qso_fraction"]
    tables = [model.classify(survey["cubes"], uncertainty=False)
              for model in (default, sample)]
    assert tables[0]["id"].tolist() == [str(row) for row in range(COUNT)]
    usable = ~np.isnan(tables[0]["p_qso"])
    assert usable.sum() == COUNT - 2
    # Bayes' rule on the odds: the logits differ by the priors' log-odds (up to the
    # 6-decimal rounding), so a higher prior moves p(QSO) up and labels more rows QSO.
    low, high = (np.asarray(table["p_qso"][usable]) for table in tables)
    assert np.all(high >= low)
    inside = (low > 1e-3) & (high < 1 - 1e-3)
    assert inside.sum() >= 5
    shift = np.log(0.3 / 0.7) - np.log(0.02 / 0.98)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(logit(high[inside]) - logit(low[inside]), shift, atol=1e-2)
    assert (tables[1]["label"] == "QSO").sum() > (tables[0]["label"] == "QSO").sum()
    with pytest.raises(ValueError, match="Received: 1.5"):
        starqso.load(runtime="litert", prior=1.5)


@pytest.mark.parametrize("cubes, fragment", [
    (np.zeros((5, 40, 40), np.float32), "Received: shape=(5, 40, 40)"),
    (np.zeros((2, 4, 40, 40), np.float32), "Received: shape=(2, 4, 40, 40)"),
    (np.zeros((2, 40, 40, 5), np.float32), "Received: shape=(2, 40, 40, 5)"),
    (np.full((1, 5, 40, 40), "x"), "Received: shape=(1, 5, 40, 40), dtype=<U1"),
    (np.zeros((1, 5, 40, 40), np.complex64), "dtype=complex64"),
    (np.zeros((1, 5, 40, 20), np.float32), "Received: shape=(1, 5, 40, 20)"),
    ([[[[1.0]]], [[[1.0, 2.0]]]], "Received: shape=unknown"),
])
def test_bad_cubes(classifiers, cubes, fragment):
    with pytest.raises(ValueError) as error:
        classifiers[None].classify(cubes)
    message = str(error.value)
    assert fragment in message and "\n" not in message, message
    assert isinstance(error.value, starqso.errors.InputError)


@pytest.mark.parametrize("ids, fragment", [
    (["a"], "Received: 1 ids for 2 cubes"),
    (["a", " "], "blank id at position 1"),
    (["a", "a "], "id 'a' more than once"),
    ("ab", "Received: ids='ab'"),
])
def test_bad_ids(classifiers, ids, fragment):
    with pytest.raises(ValueError, match=fragment):
        classifiers[None].classify(np.zeros((2, 5, 40, 40), np.float32), ids=ids)


def test_bad_runtime_and_empty_input(classifiers):
    with pytest.raises(ValueError, match="Received: runtime='tf'"):
        starqso.load(runtime="tf")
    table = classifiers[None].classify(np.zeros((0, 5, 32, 32), np.float32))
    assert table.colnames == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err", "p_star",
                              "p_galaxy"]
    assert len(table) == 0 and table.meta["rows"] == 0


def test_import_starqso_imports_no_tensorflow():
    """``import starqso`` stays light; the API with litert imports no TensorFlow either."""
    code = ("import sys, numpy as np, starqso\n"
            "light = 'tensorflow' not in sys.modules and 'starqso.api' not in sys.modules\n"
            "assert set(starqso.__all__) >= {'load', 'Classifier'}\n"
            "table = starqso.load(runtime='litert').classify(np.ones((1, 5, 32, 32)))\n"
            "print(light, 'tensorflow' in sys.modules, starqso.Classifier.__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["True", "False", "Classifier"]
