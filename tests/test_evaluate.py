"""starqso.evaluation and `starqso evaluate`: metrics checked against hand-computed values."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_error_line

from starqso.cli import main
from starqso.errors import InputError
from starqso.evaluation import (
    PLOT_FILES,
    binned_metrics,
    classification_metrics,
    evaluate_predictions,
    expected_calibration_error,
    reliability_bins,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 4 stars, 3 QSOs. At threshold 0.5: TN = 3 (0.05, 0.1, 0.4), FP = 1 (0.7),
# FN = 1 (0.35), TP = 2 (0.8, 0.9).
LABELS = [0, 0, 0, 1, 1, 1, 0]
PROBABILITIES = [0.05, 0.1, 0.4, 0.35, 0.8, 0.9, 0.7]


def test_classification_metrics_match_hand_computed_values():
    metrics = classification_metrics(LABELS, PROBABILITIES)
    assert metrics["n"] == 7
    assert metrics["confusion"] == [[3, 1], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["error_rate"] == pytest.approx(2 / 7)
    assert metrics["f1_qso"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics["f1_star"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert metrics["precision_qso"] == pytest.approx(2 / 3)
    assert metrics["recall_qso"] == pytest.approx(2 / 3)
    # QSO-star pairs ranked right: 0.35 beats 2 stars, 0.8 and 0.9 beat all 4 -> 10 of 12.
    assert metrics["roc_auc"] == pytest.approx(10 / 12)
    # Ranked by p: Q Q S S Q -> precision 1, 1, 3/5 at the three QSOs.
    assert metrics["average_precision"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    json.dumps(metrics)  # plain Python values only

    strict = classification_metrics(LABELS, np.array(PROBABILITIES)[:, None], threshold=0.85)
    assert strict["confusion"] == [[4, 0], [2, 1]]


def test_expected_calibration_error_matches_hand_computed_value():
    # Two bins: p < 0.5 holds 4 objects, 1 QSO, mean p 0.225 -> gap 0.025;
    # p >= 0.5 holds 3 objects, 2 QSOs, mean p 0.8 -> gap 2/15.
    expected = (4 * 0.025 + 3 * (0.8 - 2 / 3)) / 7
    assert expected_calibration_error(LABELS, PROBABILITIES, num_bins=2) == pytest.approx(
        expected)
    bins = reliability_bins(LABELS, PROBABILITIES, num_bins=2)
    assert bins["count"].tolist() == [4, 3]
    assert bins["fraction_qso"].tolist() == pytest.approx([0.25, 2 / 3])
    assert bins["mean_probability"].tolist() == pytest.approx([0.225, 0.8])
    # An edge value goes to the bin above; 1.0 to the last bin; empty bins are NaN.
    edges = reliability_bins([1, 1, 0], [0.5, 1.0, 0.0], num_bins=4)
    assert edges["count"].tolist() == [1, 0, 1, 1]
    assert np.isnan(edges["mean_probability"][1])
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_classification_metrics_with_one_class_and_bad_input():
    only_stars = classification_metrics([0, 0, 0], [0.1, 0.2, 0.7])
    assert only_stars["roc_auc"] is None and only_stars["average_precision"] is None
    assert only_stars["confusion"] == [[2, 1], [0, 0]] and only_stars["f1_qso"] == 0.0
    only_qsos = classification_metrics([1, 1], [0.6, 0.9])
    assert only_qsos["roc_auc"] is None and only_qsos["average_precision"] == 1.0
    with pytest.raises(InputError) as excinfo:
        classification_metrics([0, 1], [0.2, 1.5])
    assert_one_line_error(excinfo, "[0, 1]", "1.5")
    with pytest.raises(InputError):
        classification_metrics([0, 2], [0.2, 0.5])


def test_binned_metrics_per_bin():
    labels = [0, 0, 0, 1, 1, 1, 0, 1, 1]
    predicted = [0, 1, 0, 1, 0, 1, 1, 1, 1]
    values = [0.5, 0.9, 1.0, 1.5, 1.2, 1.9, 1.3, np.nan, 3.0]
    bins = binned_metrics(labels, predicted, values, [0, 1, 2, 3])
    assert [b["n"] for b in bins] == [2, 5, 0]  # NaN and the upper edge 3.0 are in no bin
    stars_only, mixed, empty = bins
    assert (stars_only["n_qso"], stars_only["n_star"]) == (0, 2)
    assert stars_only["completeness"] is None and stars_only["macro_f1"] is None
    assert stars_only["purity"] == 0.0 and stars_only["f1_qso"] == 0.0  # one false QSO
    # [1, 2): stars at 1.0 (called STAR) and 1.3 (called QSO); QSOs at 1.5 and 1.9 (called
    # QSO) and 1.2 (called STAR): TP 2, FP 1, FN 1, TN 1.
    assert (mixed["lo"], mixed["hi"], mixed["n_qso"], mixed["n_star"]) == (1.0, 2.0, 3, 2)
    assert mixed["completeness"] == pytest.approx(2 / 3)
    assert mixed["purity"] == pytest.approx(2 / 3)
    assert mixed["f1_qso"] == pytest.approx(4 / 6)
    assert mixed["macro_f1"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert all(empty[key] is None for key in ("completeness", "purity", "f1_qso", "macro_f1"))
    quiet = binned_metrics([0, 0], [0, 0], [0.1, 0.2], [0, 1])[0]
    assert quiet["f1_qso"] is None and quiet["purity"] is None


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def files(tmp_path):
    truth = _write(tmp_path / "truth.csv",
                   "id,label,r,redshift\n"
                   "a,STAR,16.5,0.0\n"
                   "b,STAR,18.2,0.0001\n"
                   "c,QSO,19.1,1.2\n"
                   "d,QSO,20.3,2.4\n"
                   "e,STAR,21.0,\n"
                   "f,QSO,17.7,0.8\n"
                   "g,,18.0,\n"
                   "missing1,QSO,19.0,1.0\n")
    predictions = _write(tmp_path / "predictions.csv",
                         "id,p_qso,label,flag\n"
                         "a,0.100000,STAR,\n"
                         "b,0.600000,QSO,\n"
                         "c,0.900000,QSO,\n"
                         "d,,,cutout is not 5 x H x W: d.fits\n"
                         "e,0.200000,STAR,repaired 3 NaN/inf pixels (set to their band median)\n"
                         "f,0.300000,STAR,\n"
                         "g,0.500000,QSO,\n"
                         "extra1,0.700000,QSO,\n")
    return truth, predictions, tmp_path


def test_evaluate_command_writes_metrics_plots_and_join_report(files):
    truth, predictions, tmp_path = files
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", predictions, "--truth", truth,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in PLOT_FILES:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    join = metrics["join"]
    assert (join["truth_rows"], join["prediction_rows"], join["matched"],
            join["evaluated"]) == (8, 8, 7, 5)
    assert join["missing"] == {"count": 1, "first_ids": ["missing1"]}
    assert join["extra"] == {"count": 1, "first_ids": ["extra1"]}
    assert join["flagged"]["count"] == 1 and join["flagged"]["first_ids"] == ["d"]
    assert "not 5 x H x W" in join["flagged"]["first_reasons"][0]
    assert join["unlabelled"] == {"count": 1, "first_ids": ["g"]}
    assert join["no_probability"]["count"] == 0
    # Classified after a repair: scored, and counted apart.
    assert join["repaired"]["count"] == 1 and join["repaired"]["first_ids"] == ["e"]
    # Evaluated a, b, c, e, f: stars 0.1, 0.6, 0.2; QSOs 0.9, 0.3.
    assert metrics["confusion"] == [[2, 1], [1, 1]]
    assert metrics["threshold"] == 0.5
    assert sum(part["n"] for part in metrics["by_r"]) == 5
    assert sum(part["n"] for part in metrics["by_redshift"]) == 4  # e has no redshift
    assert "reliability.png" in metrics["files"]
    text = result.stdout
    assert "missing from predictions: 1 (ids: missing1)" in text
    assert "extra (not in truth): 1 (ids: extra1)" in text
    assert "repaired by predict (scored): 1 (ids: e)" in text
    assert "| F1 (QSO)" in text and "| ECE (15 bins)" in text and str(out) in text

    lenient = CliRunner().invoke(main, ["evaluate", predictions, "--truth", truth,
                                        "--out", str(out), "--threshold", "0.25"])
    assert lenient.exit_code == 0, lenient.output
    assert json.loads((out / "metrics.json").read_text())["confusion"] == [[2, 1], [0, 2]]


def test_evaluate_reads_fits_predictions_and_skips_missing_columns(tmp_path):
    truth = _write(tmp_path / "truth.csv", "id,label\n1,STAR\n2,QSO\n3,QSO\n")
    # As predict writes FITS: p_qso a float column, NaN for a flagged row.
    Table({"id": ["1", "2", "3"], "p_qso": [0.2, 0.7, np.nan], "label": ["STAR", "QSO", ""],
           "flag": ["", "", "unreadable"]}).write(tmp_path / "p.fits")
    metrics = evaluate_predictions(tmp_path / "p.fits", truth, tmp_path / "out")
    assert metrics["n"] == 2 and metrics["accuracy"] == 1.0
    assert metrics["join"]["flagged"]["first_ids"] == ["3"]
    assert metrics["by_r"] is None and metrics["by_redshift"] is None
    assert not (tmp_path / "out" / "completeness_purity_r.png").exists()
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 0


def _one_line_error(result):
    return cli_error_line(result)


def test_non_numeric_p_qso_is_a_one_line_error(files):
    truth, _, tmp_path = files
    bad = _write(tmp_path / "bad.csv", "id,p_qso,label,flag\na,0.1,STAR,\nb,high,QSO,\n")
    result = CliRunner().invoke(main, ["evaluate", bad, "--truth", truth,
                                       "--out", str(tmp_path / "out")])
    line = _one_line_error(result)
    assert "'high'" in line and "row 2" in line and "bad.csv" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError) as excinfo:
        evaluate_predictions(bad, truth, tmp_path / "out")
    assert_one_line_error(excinfo, "p_qso", "'high'", "row 2", "bad.csv")


def test_no_rows_in_common_is_a_one_line_error(files):
    truth, _, tmp_path = files
    other = _write(tmp_path / "other.csv", "id,p_qso,label,flag\nx,0.1,STAR,\ny,0.9,QSO,\n")
    result = CliRunner().invoke(main, ["evaluate", other, "--truth", truth,
                                       "--out", str(tmp_path / "out")])
    assert "0 ids in common" in _one_line_error(result)
    out_of_range = CliRunner().invoke(main, ["evaluate", other, "--truth", truth,
                                             "--out", str(tmp_path / "out"), "--threshold",
                                             "2"])
    assert "--threshold" in _one_line_error(out_of_range)
    with pytest.raises(InputError) as excinfo:
        evaluate_predictions(tmp_path / "predictions.csv", truth, out_dir=truth)
    # An --out that is an input is refused by the one rule (issue 36), naming the input.
    assert_one_line_error(excinfo, "would replace an input", truth)


def test_evaluation_does_not_import_tensorflow(files):
    truth, predictions, tmp_path = files
    code = (
        "import sys\n"
        "from starqso.evaluation import evaluate_predictions\n"
        "metrics = evaluate_predictions(sys.argv[1], sys.argv[2], sys.argv[3])\n"
        "assert metrics['n'] == 5, metrics\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, predictions, truth, str(tmp_path / "out")],
                   check=True, cwd=ROOT)


def test_classification_metrics_has_one_home():
    from starqso import evaluation
    from starqso.evaluation import metrics

    assert metrics.classification_metrics is evaluation.classification_metrics


def test_evaluate_uses_the_threshold_predict_recorded(tmp_path):
    """Without --threshold: the side-car's (CSV) or THRESH card's (FITS), else 0.5."""
    truth = _write(tmp_path / "truth.csv", "id,label\na,STAR\nb,QSO\nc,QSO\n")
    predictions = _write(tmp_path / "p.csv",
                         "id,p_qso,label,flag\na,0.2,STAR,\nb,0.6,QSO,\nc,0.4,STAR,\n")
    out = tmp_path / "out"
    plain = evaluate_predictions(predictions, truth, out)
    assert plain["threshold"] == 0.5 and plain["threshold_source"] == "default"
    (tmp_path / "p.csv.json").write_text(json.dumps({"threshold": 0.35}))
    recorded = evaluate_predictions(predictions, truth, out)
    assert recorded["threshold"] == 0.35 and recorded["threshold_source"] == "predictions"
    assert recorded["confusion"] == [[1, 0], [0, 2]]
    given = evaluate_predictions(predictions, truth, out, threshold=0.7)
    assert given["threshold"] == 0.7 and given["threshold_source"] == "--threshold"
    (tmp_path / "p.csv.json").write_text(json.dumps({"threshold": True}))
    result = CliRunner().invoke(main, ["evaluate", predictions, "--truth", truth,
                                       "--out", str(out)])
    assert result.exit_code == 2 and "p.csv.json" in result.output
    fits_predictions = tmp_path / "p.fits"
    table = Table({"id": ["a", "b", "c"], "p_qso": [0.2, 0.6, 0.4],
                   "label": ["STAR", "QSO", "STAR"], "flag": ["", "", ""]})
    table.meta["THRESH"] = 0.65
    table.write(fits_predictions)
    assert evaluate_predictions(fits_predictions, truth, out)["threshold"] == 0.65
