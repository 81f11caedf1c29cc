"""Three classes on the inference side: the K-class probability arithmetic, the prior as a
class vector, the per-row core with a K-class predictor, and the p_star / p_galaxy columns of
a two-class model's outputs through the command line.

A K-class predictor here is a plain callable returning an (N, 3) softmax; the end-to-end test
of a trained three-class model lives with the model side.
"""

import csv
import json

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_error_line, simulated_survey

from starqso.cli import main
from starqso.errors import InputError
from starqso.inference import (
    COUNT_KEYS,
    OUTPUT_COLUMNS,
    block_rows,
    classify_block,
    evidence_fraction,
    label_block,
    output_cells,
    predict_views,
    prior_label,
    resolve_prior,
)
from starqso.io.sources import Block
from starqso.probability import (
    apply_class_prior,
    apply_prior,
    calibrate,
    calibrate_classes,
    class_prior_shifts,
    prior_shift,
    temper,
    temper_classes,
)

NAMES = ["STAR", "QSO", "GALAXY"]
TRAINING = {"STAR": 0.4, "QSO": 0.3, "GALAXY": 0.3}
THREE = {"classes": {"names": NAMES}, "training_class_fractions": TRAINING,
         "training_qso_fraction": 0.3}
SIZE = 16
rng = np.random.default_rng(7)
CUTOUTS = np.abs(rng.normal(0, 1, (6, SIZE, SIZE, 5))).astype("float32")
P = rng.dirichlet([1.0, 1.0, 1.0], 50)


# --- the arithmetic --------------------------------------------------------------------------


def test_two_class_vectors_agree_with_the_scalar_functions():
    p = np.concatenate([rng.random(40), [1e-9, 0.5, 1 - 1e-9]])
    pair = np.stack([1 - p, p], axis=1)
    weight = rng.random(len(p))
    np.testing.assert_allclose(temper_classes(pair, weight, [0.7, 0.3])[:, 1],
                               temper(p, weight, 0.3), rtol=1e-9, atol=1e-12)
    shifts = class_prior_shifts([0.98, 0.02], [0.7, 0.3])
    np.testing.assert_allclose(apply_class_prior(pair, shifts)[:, 1],
                               apply_prior(p, prior_shift(0.02, 0.3)), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(calibrate_classes(pair, 1.7)[:, 1], calibrate(p, 1.7),
                               rtol=1e-7, atol=1e-12)


def test_temper_at_zero_and_full_weight():
    training = list(TRAINING.values())
    at_zero = temper_classes(P, np.zeros(len(P)), training)
    np.testing.assert_allclose(at_zero, np.tile(training, (len(P), 1)), rtol=1e-12)
    edge = np.vstack([P, [[0.0, 1.0, 0.0]]])
    full = temper_classes(edge, np.ones(len(edge)), training)
    assert np.array_equal(full, edge)  # bit for bit, a zero probability included
    assert np.array_equal(apply_class_prior(edge, np.zeros(3)), edge)


def test_prior_round_trip_and_rows_summing_to_one():
    sky = [0.5, 0.05, 0.45]
    training = list(TRAINING.values())
    moved = apply_class_prior(P, class_prior_shifts(sky, training))
    np.testing.assert_allclose(moved.sum(axis=1), 1.0, rtol=1e-12)
    back = apply_class_prior(moved, class_prior_shifts(training, sky))
    np.testing.assert_allclose(back, P, rtol=1e-10, atol=1e-14)
    # The training mix itself moves to the new prior exactly (Bayes).
    np.testing.assert_allclose(apply_class_prior([training], class_prior_shifts(sky, training)),
                               [sky], rtol=1e-12)


# --- the prior vector -----------------------------------------------------------------------


def test_class_prior_by_name_bare_train_and_default():
    named = resolve_prior(THREE, "QSO=0.02,GALAXY=0.6")
    assert named["prior"] == 0.02 and named["source"] == "user"
    assert named["prior_vector"] == pytest.approx({"STAR": 0.38, "QSO": 0.02, "GALAXY": 0.6})
    np.testing.assert_allclose(named["shift"], np.log([0.38 / 0.4, 0.02 / 0.3, 0.6 / 0.3]))
    json.dumps(named)  # the side-car records it
    # A bare fraction (or QSO alone) keeps the others' training proportions of the rest.
    bare = resolve_prior(THREE, "0.02")["prior_vector"]
    assert bare == pytest.approx({"STAR": 0.98 * 4 / 7, "QSO": 0.02, "GALAXY": 0.98 * 3 / 7})
    assert resolve_prior(THREE, "QSO=0.02")["prior_vector"] == pytest.approx(bare)
    train = resolve_prior(THREE, "train")
    assert train["shift"] == [0.0, 0.0, 0.0] and train["prior_vector"] == TRAINING
    assert prior_label(train) == "train (QSO=0.3,GALAXY=0.3)"
    default = resolve_prior({**THREE, "default_prior": {"QSO": 0.05, "GALAXY": 0.5}})
    assert default["source"] == "default" and default["prior_vector"] == pytest.approx(
        {"STAR": 0.45, "QSO": 0.05, "GALAXY": 0.5})
    assert prior_label(default) == "QSO=0.05,GALAXY=0.5"
    assert resolve_prior({**THREE, "default_prior": 0.02})["prior_vector"] == pytest.approx(bare)
    assert evidence_fraction(default) == [0.4, 0.3, 0.3]
    # A two-class model keeps its settings, the vector added.
    two = resolve_prior({"training_qso_fraction": 0.3, "default_prior": 0.02})
    assert two["shift"] == prior_shift(0.02, 0.3) and evidence_fraction(two) == 0.3
    assert two["prior_vector"] == {"STAR": 0.98, "QSO": 0.02} and prior_label(two) == "0.02"


@pytest.mark.parametrize(("prior", "fragments"), [
    ("PLANET=0.1", ["PLANET", "does not tell apart", "STAR, QSO, GALAXY"]),
    ("STAR=0.5", ["STAR", "takes the rest"]),
    ("QSO=0.5,GALAXY=0.6", ["sum to 1.1"]),
    ("QSO=-0.1", ["strictly between 0 and 1"]),
    ("GALAXY=0", ["strictly between 0 and 1"]),
    ("QSO=abc", ["NAME=F pairs"]),
    ("abc", ["--prior must be"]),
    ("1", ["--prior must be"]),
])
def test_bad_class_priors_are_one_line(prior, fragments):
    with pytest.raises(InputError) as excinfo:
        resolve_prior(THREE, prior)
    assert_one_line_error(excinfo, *fragments, "Received:")


def test_a_two_class_model_refuses_galaxy_and_bad_training_fractions_are_named():
    with pytest.raises(InputError) as excinfo:
        resolve_prior({"training_qso_fraction": 0.3}, "GALAXY=0.5")
    assert_one_line_error(excinfo, "GALAXY", "does not tell apart", "STAR, QSO")
    with pytest.raises(InputError) as excinfo:
        resolve_prior({**THREE, "training_class_fractions": {"STAR": 0.5, "QSO": 0.3}}, "0.1")
    assert_one_line_error(excinfo, "training_class_fractions", "Received:")


# --- the per-row core -----------------------------------------------------------------------


def _softmax(images):
    """A 3-class predictor: softmax of per-band means, the same for every dihedral view (and
    for a row whichever rows it is called with)."""
    means = np.asarray(images, np.float64).mean(axis=(1, 2))
    logits = 40.0 * (means[:, [0, 2, 4]] - means[:, [1]])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _block(cutouts):
    return Block([f"row{k}" for k in range(len(cutouts))],
                 np.ascontiguousarray(np.moveaxis(cutouts, -1, 1)),
                 [f"row {k}" for k in range(len(cutouts))], {})


@pytest.mark.parametrize("tta", [False, True])
def test_the_core_carries_three_classes(tta):
    settings = resolve_prior(THREE, "QSO=0.1,GALAXY=0.5")
    cutouts = CUTOUTS.copy()
    cutouts[1] = 0.0  # all zeros: not classified
    classified = classify_block(_block(cutouts), _softmax, SIZE, settings["shift"], tta=tta)
    usable = classified.usable
    np.testing.assert_array_equal(usable, [True, False, True, True, True, True])
    classes = classified.classes
    assert classes.shape == (6, 3) and np.isnan(classes[1]).all()
    raw = _softmax(cutouts[usable])
    expected = apply_class_prior(raw, class_prior_shifts(
        [settings["prior_vector"][name] for name in NAMES], list(TRAINING.values())))
    np.testing.assert_allclose(classes[usable], expected, rtol=1e-6, atol=1e-9)
    assert np.array_equal(classified.probabilities[usable], classes[usable, 1])
    # The views agree (the predictor ignores orientation): no spread.
    np.testing.assert_allclose(classified.p_err[usable], 0.0, atol=1e-7)

    counts = dict.fromkeys(COUNT_KEYS, 0)
    threshold = 0.4
    labels = label_block(classified, threshold, counts)
    best_other = np.where(classes[:, 2] > classes[:, 0], "GALAXY", "STAR")
    expected_labels = np.where(classes[:, 1] >= threshold, "QSO", best_other)
    assert labels == [label if ok else "" for label, ok in
                      zip(expected_labels, usable, strict=True)]
    assert counts["galaxy"] == labels.count("GALAXY") > 0
    assert counts["qso"] == labels.count("QSO") and counts["flagged"] == 1
    assert counts["rows"] == 6
    cells = [output_cells(*row[:6], threshold, row[6])
             for row in block_rows(_block(cutouts).ids, classified)]
    assert all(len(row) == len(OUTPUT_COLUMNS) for row in cells)
    assert [row[2] for row in cells] == labels
    assert cells[0][6:] == (f"{classes[0, 0]:.6f}", f"{classes[0, 2]:.6f}")
    assert cells[1][1] == cells[1][6] == cells[1][7] == ""


def test_a_block_with_no_classified_row_is_as_wide_as_the_model():
    # Blocks stack (benchmarks, Dask partitions): an all-refused block of a 3-class model has
    # three NaN columns, from the predictor's num_classes or the prior's vector.
    blank = np.zeros_like(CUTOUTS)
    settings = resolve_prior(THREE, None)

    class Predictor:
        num_classes = 3

        def __call__(self, images):
            return _softmax(images)

    for predictor, shift in ((Predictor(), 0.0), (_softmax, settings["shift"])):
        classified = classify_block(_block(blank), predictor, SIZE, shift)
        assert not classified.usable.any()
        assert classified.classes.shape == (6, 3) and np.isnan(classified.classes).all()


def test_the_core_on_a_two_class_predictor_is_unchanged():
    def predictor(images):
        return _softmax(images)[:, 1]

    shift = prior_shift(0.02, 0.3)
    classified = classify_block(_block(CUTOUTS), predictor, SIZE, shift, uncertainty=False)
    expected = apply_prior(predictor(CUTOUTS), shift)
    assert np.array_equal(classified.probabilities, expected)  # bit for bit
    assert np.array_equal(classified.classes[:, 0], 1.0 - expected)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    assert set(label_block(classified, 0.5, counts)) <= {"STAR", "QSO"}
    assert counts["galaxy"] == 0
    cells = output_cells("a", expected[0], "", True, 0, float("nan"), 0.5)
    assert cells[6:] == (f"{1 - expected[0]:.6f}", "")


def test_a_k_class_embedding_dict_and_bad_rows():
    training = list(TRAINING.values())

    def predictor(images):
        p = _softmax(images)
        p[images[:, 0, 0, 0] == -7.0] = [np.nan, 0.5, np.nan]  # a NaN class, p_qso fine
        return {"probabilities": p, "vector": np.asarray(images[:, 0, 1, :], np.float32)}

    cutouts = CUTOUTS[:3].copy()
    cutouts[2, 0, 0, 0] = -7.0
    outputs = {}
    classified = classify_block(_block(cutouts), predictor, SIZE, [0.0, 0.0, 0.0],
                                uncertainty=False, outputs=outputs)
    np.testing.assert_array_equal(classified.usable, [True, True, False])
    assert "every class" in classified.flags[2]
    assert set(outputs) == {"vector"} and np.isnan(outputs["vector"][2]).all()
    np.testing.assert_allclose(classified.classes[:2], _softmax(cutouts[:2]), rtol=1e-12)
    # Tempering at zero weight gives the training mix; p_qso is the plain column.
    p, _ = predict_views(_softmax, cutouts[:2], uncertainty=False, weight=[0.0, 1.0],
                         training_fraction=training, classes=True)
    np.testing.assert_allclose(p[0], training, rtol=1e-12)
    assert np.array_equal(p[1], _softmax(cutouts[1:2])[0])
    with pytest.raises(ValueError, match="3 values of its shift"):
        predict_views(_softmax, cutouts[:1], shift=0.5)


# --- a two-class model through the command line ---------------------------------------------


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 4, seed=11, size=40)


def test_two_class_outputs_get_p_star_and_a_blank_p_galaxy(survey, tmp_path):
    output = tmp_path / "out.csv"
    result = CliRunner().invoke(main, ["predict", str(survey / "catalog.csv"), "--output",
                                       str(output), "--runtime", "litert"])
    assert result.exit_code == 0, result.output
    note = "note: the model is two-class (STAR/QSO): p_star is 1 - p_qso and p_galaxy is empty"
    assert result.stderr.count(note) == 1, result.stderr
    assert " 0 GALAXY, " in result.stdout
    with open(output, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == list(OUTPUT_COLUMNS)
    assert list(rows[0])[:6] == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err"]
    for row in rows:
        assert row["p_galaxy"] == "" and row["label"] in ("STAR", "QSO", "")
        if row["p_qso"]:
            assert float(row["p_star"]) == pytest.approx(1 - float(row["p_qso"]), abs=1.5e-6)
    record = json.loads(output.with_name("out.csv.json").read_text())
    assert record["classes"] == ["STAR", "QSO"]
    assert record["prior_vector"] == pytest.approx({"STAR": 1 - record["prior"],
                                                    "QSO": record["prior"]})

    fits_output = tmp_path / "out.fits"
    result = CliRunner().invoke(main, ["predict", str(survey / "catalog.csv"), "--output",
                                       str(fits_output), "--runtime", "litert", "--prior",
                                       "QSO=0.1"])
    assert result.exit_code == 0, result.output
    with fits.open(fits_output) as hdulist:
        table, header = hdulist[1].data, hdulist[1].header
        assert list(table.names) == list(OUTPUT_COLUMNS)
        assert np.isnan(table["p_galaxy"]).all()
        classified = np.isfinite(table["p_qso"])
        np.testing.assert_allclose(table["p_star"][classified],
                                   1 - table["p_qso"][classified], atol=1.5e-6)
        assert header["PRIORVEC"] == "STAR=0.9,QSO=0.1" and header["CLASSES"] == "STAR,QSO"


def test_a_galaxy_prior_for_the_two_class_model_is_one_line(survey, tmp_path):
    result = CliRunner().invoke(main, ["predict", str(survey / "catalog.csv"), "--output",
                                       str(tmp_path / "out.csv"), "--runtime", "litert",
                                       "--prior", "QSO=0.02,GALAXY=0.6"])
    cli_error_line(result, "GALAXY", "does not tell apart", "Received:")
    assert not (tmp_path / "out.csv").exists()
