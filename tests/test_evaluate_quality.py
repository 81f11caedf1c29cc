"""Wilson intervals, the selection function and the flagged/unflagged split of `evaluate`."""

import csv
import io
import json
import math
import pathlib
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from helpers import assert_one_line_error, cli_error_line

from starqso._util.ownership import MARKER
from starqso.cli import main
from starqso.errors import InputError
from starqso.evaluation import (
    PLOT_FILES,
    SELECTION_COLUMNS,
    binned_metrics,
    evaluate_predictions,
    format_report,
    format_selection_markdown,
    join_predictions,
    quality_metrics,
    reliability_bins,
    selection_csv_text,
    selection_function,
    wilson_interval,
)
from starqso.schema import QFLAG_BITS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _textbook_wilson(k, n, confidence):
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10, confidence=0.95)
    assert (float(low), float(high)) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10, confidence=0.95)
    assert float(low) == 0.0 and float(high) == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10, confidence=0.95)
    assert float(low) == pytest.approx(0.7225, abs=1e-4) and float(high) == 1.0
    # Default: 1-sigma equivalent (z = 1), so 0 of 3 -> (0, (1/3) / (1 + 1/3)) = (0, 0.25).
    low, high = wilson_interval(0, 3)
    assert float(high) == pytest.approx(0.25, abs=1e-4)


def test_wilson_interval_is_vectorised_and_matches_the_formula():
    successes = np.array([1, 3, 7, 0, 0])
    trials = np.array([4, 9, 20, 5, 0])
    low, high = wilson_interval(successes, trials, confidence=0.9)
    assert low.shape == high.shape == (5,)
    for k, n, lo, hi in zip(successes[:3], trials[:3], low[:3], high[:3], strict=False):
        assert (lo, hi) == pytest.approx(_textbook_wilson(k, n, 0.9))
        assert lo <= k / n <= hi
    assert low[3] == 0.0 and 0 < high[3] < 1
    assert np.isnan(low[4]) and np.isnan(high[4])  # no trials


@pytest.mark.parametrize("args, fragment", [
    ((11, 10), "11 of 10"),
    ((-1, 10), "non-negative"),
    ((1.5, 10), "whole numbers"),
    ((1, 10, 1.5), "confidence"),
    ((1, 10, 0.0), "confidence"),
])
def test_wilson_interval_refuses_bad_input(args, fragment):
    with pytest.raises(InputError) as excinfo:
        wilson_interval(*args)
    assert_one_line_error(excinfo, fragment, "Received:")


def test_binned_and_reliability_rates_carry_intervals():
    labels = [0, 0, 0, 1, 1, 1, 0, 1, 1]
    predicted = [0, 1, 0, 1, 0, 1, 1, 1, 1]
    values = [0.5, 0.9, 1.0, 1.5, 1.2, 1.9, 1.3, np.nan, 3.0]
    stars_only, mixed, empty = binned_metrics(labels, predicted, values, [0, 1, 2, 3])
    assert (mixed["true_positive"], mixed["called_qso"]) == (2, 3)
    for key in ("completeness", "purity"):
        assert mixed[f"{key}_low"] < mixed[key] < mixed[f"{key}_high"]
        assert (mixed[f"{key}_low"], mixed[f"{key}_high"]) == pytest.approx(
            _textbook_wilson(2, 3, 0.6827))
        assert empty[f"{key}_low"] is None and empty[f"{key}_high"] is None
    assert stars_only["completeness_low"] is None
    assert stars_only["purity"] == 0.0 and stars_only["purity_low"] == 0.0
    assert 0 < stars_only["purity_high"] < 1
    json.dumps([stars_only, mixed, empty])

    bins = reliability_bins([0, 1, 1, 1], [0.2, 0.6, 0.9, 0.1], num_bins=4)
    assert bins["count"].tolist() == [2, 0, 1, 1]
    filled = bins["count"] > 0
    assert np.all(bins["fraction_qso_low"][filled] <= bins["fraction_qso"][filled])
    assert np.all(bins["fraction_qso"][filled] <= bins["fraction_qso_high"][filled])
    assert (bins["fraction_qso_low"][0], bins["fraction_qso_high"][0]) == pytest.approx(
        _textbook_wilson(1, 2, 0.6827))
    assert np.isnan(bins["fraction_qso_low"][1]) and np.isnan(bins["fraction_qso_high"][1])


# r bins [17, 18), [18, 20): QSOs at 17.2 (p 0.9, TP), 17.4 (0.3, FN), 18.5 (0.7, TP),
# 19.0 (0.6, TP); stars at 17.8 (0.8, FP), 18.1 (0.1), 19.9 (0.2); 25.0 in no bin.
SELECTION_LABELS = [1, 1, 1, 1, 0, 0, 0, 1]
SELECTION_P = [0.9, 0.3, 0.7, 0.6, 0.8, 0.1, 0.2, 0.9]
SELECTION_R = [17.2, 17.4, 18.5, 19.0, 17.8, 18.1, 19.9, 25.0]
SELECTION_Z = [0.7, 1.8, 1.2, 2.6, 0.0, 0.0, 0.0, 1.1]


def test_selection_function_counts_and_rates():
    rows = selection_function(SELECTION_LABELS, SELECTION_P, 0.5, r=SELECTION_R,
                              redshift=SELECTION_Z, r_edges=(17, 18, 20),
                              redshift_edges=(0, 1, 2, 3))
    assert [row["axis"] for row in rows] == ["r", "r", "redshift", "redshift", "redshift"]
    assert all(set(row) == set(SELECTION_COLUMNS) for row in rows)
    faint, bright = rows[0], rows[1]
    assert (faint["low"], faint["high"], faint["objects"], faint["qso"], faint["called_qso"],
            faint["true_positive"]) == (17.0, 18.0, 3, 2, 2, 1)
    assert faint["completeness"] == 0.5 and faint["purity"] == 0.5
    assert (bright["objects"], bright["qso"], bright["called_qso"],
            bright["true_positive"]) == (4, 2, 2, 2)
    assert bright["completeness"] == 1.0 and bright["purity"] == 1.0
    assert bright["completeness_high"] == 1.0 and bright["completeness_low"] < 1.0
    assert faint["completeness_low"] < 0.5 < faint["completeness_high"]
    # Redshift: [0, 1) holds the 3 stars and the z 0.7 QSO; [1, 2) z 1.8 (missed) and 1.2 and
    # 1.1 (found); [2, 3) z 2.6 (found). Purity is not defined there.
    by_z = rows[2:]
    assert [(row["qso"], row["true_positive"]) for row in by_z] == [(1, 1), (3, 2), (1, 1)]
    assert by_z[1]["completeness"] == pytest.approx(2 / 3)
    assert by_z[0]["objects"] == 4 and by_z[0]["called_qso"] == 2
    assert all(row[key] is None for row in by_z
               for key in ("purity", "purity_low", "purity_high"))

    only_r = selection_function(SELECTION_LABELS, SELECTION_P, 0.75, r=SELECTION_R,
                                r_edges=(17, 18, 20))
    assert [row["axis"] for row in only_r] == ["r", "r"]
    assert (only_r[0]["true_positive"], only_r[0]["called_qso"]) == (1, 2)
    assert only_r[1]["purity"] is None and only_r[1]["purity_low"] is None
    assert selection_function([0, 1], [0.1, 0.9], 0.5) == []
    with pytest.raises(InputError) as excinfo:
        selection_function([0, 1], [0.1, 0.9], 1.5, r=[17, 18])
    assert_one_line_error(excinfo, "threshold", "1.5")
    with pytest.raises(InputError):
        selection_function([0, 1], [0.1, 0.9], 0.5, r=[17.0])


def test_selection_tables_as_markdown_and_csv():
    rows = selection_function(SELECTION_LABELS, SELECTION_P, 0.5, r=SELECTION_R,
                              redshift=SELECTION_Z, r_edges=(17, 18, 20),
                              redshift_edges=(0, 1, 2, 3))
    text = format_selection_markdown(rows)
    low, high = _textbook_wilson(1, 2, 0.6827)
    assert f"| [17, 18) | 3 | 2 | 2 | 0.500 [{low:.3f}, {high:.3f}] | 0.500 [" in text
    assert "| redshift | objects | QSO | called QSO | completeness |" in text
    assert "purity |" not in text.split("redshift |")[1].splitlines()[0]
    assert "stars sit at z ~ 0" in text and "Wilson" in text

    table = list(csv.DictReader(io.StringIO(selection_csv_text(rows))))
    assert len(table) == 5 and list(table[0]) == list(SELECTION_COLUMNS)
    assert table[0]["axis"] == "r" and table[0]["true_positive"] == "1"
    assert float(table[0]["completeness_low"]) == pytest.approx(low)
    assert table[2]["purity"] == "" and table[2]["purity_low"] == ""
    assert selection_csv_text([]).splitlines() == [",".join(SELECTION_COLUMNS)]
    assert format_selection_markdown([]) == ""


def test_quality_metrics_splits_by_flag():
    labels = [0, 1, 0, 1, 1, 0]
    probabilities = [0.1, 0.9, 0.7, 0.2, 0.8, 0.4]
    qflag = [0, 0, 4, 6, 2 | 256, 0]
    quality = quality_metrics(labels, probabilities, qflag, threshold=0.5)
    assert quality["unflagged"]["objects"] == 3 and quality["unflagged"]["errors"] == 0
    assert quality["flagged"]["objects"] == 3 and quality["flagged"]["errors"] == 2
    assert quality["flagged"]["error_rate"] == pytest.approx(2 / 3)
    assert quality["bits"]["EXTENDED"] == {
        "bit": 4, "objects": 2, "errors": 2, "error_rate": 1.0,
        "error_rate_low": pytest.approx(_textbook_wilson(2, 2, 0.6827)[0]),
        "error_rate_high": 1.0}
    assert quality["bits"]["REPAIRED"]["objects"] == 2  # 6 and 2 | 256
    assert quality["bits"]["SATURATED"]["objects"] == 0
    assert quality["bits"]["SATURATED"]["error_rate"] is None
    assert set(quality["bits"]) == set(QFLAG_BITS)
    assert quality["flagged"]["classification_metrics"]["confusion"] == [[0, 1], [1, 1]]
    only_clean = quality_metrics([0, 1], [0.2, 0.9], [0, 0])
    assert only_clean["flagged"]["objects"] == 0
    assert only_clean["flagged"]["classification_metrics"] is None
    assert only_clean["flagged"]["error_rate"] is None
    with pytest.raises(InputError) as excinfo:
        quality_metrics([0, 1], [0.2, 0.9], [0, -2])
    assert_one_line_error(excinfo, "qflag", "-2")


def _write(path, text):
    path.write_text(text)
    return str(path)


TRUTH = ("id,label,r,redshift\n"
         "a,STAR,16.5,0.0\n"
         "b,STAR,18.2,0.0\n"
         "c,QSO,19.1,1.2\n"
         "d,QSO,20.3,2.4\n"
         "e,STAR,21.0,\n"
         "f,QSO,17.7,0.8\n"
         "g,QSO,18.5,1.7\n")
# At 0.5: a right (qflag 0), b wrong (EXTENDED), c right (0), d not classified, e right
# (REPAIRED), f wrong (REPAIRED | EXTENDED), g right (0).
PREDICTIONS = ("id,p_qso,label,flag,qflag,p_qso_err\n"
               "a,0.100000,STAR,,0,0.01\n"
               "b,0.600000,QSO,,4,0.05\n"
               "c,0.900000,QSO,,0,\n"
               "d,,,unreadable,1,\n"
               "e,0.200000,STAR,repaired 3 NaN/inf pixels,2,\n"
               "f,0.300000,STAR,,6,\n"
               "g,0.800000,QSO,,0,\n")


@pytest.fixture
def files(tmp_path):
    return (_write(tmp_path / "truth.csv", TRUTH),
            _write(tmp_path / "predictions.csv", PREDICTIONS), tmp_path)


def test_evaluate_reports_flagged_and_unflagged_error_rates(files):
    truth, predictions, tmp_path = files
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", predictions, "--truth", truth,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["join"]["qflag_column"] is True
    assert metrics["n"] == 6 and metrics["confusion"] == [[2, 1], [1, 2]]
    quality = metrics["quality"]
    unflagged, flagged = quality["unflagged"], quality["flagged"]
    assert (unflagged["objects"], unflagged["errors"], unflagged["error_rate"]) == (3, 0, 0.0)
    assert (unflagged["n_qso"], unflagged["n_star"]) == (2, 1)
    assert (flagged["objects"], flagged["errors"]) == (3, 2)
    assert flagged["error_rate"] == pytest.approx(2 / 3)
    assert (flagged["error_rate_low"], flagged["error_rate_high"]) == pytest.approx(
        _textbook_wilson(2, 3, 0.6827))
    assert unflagged["error_rate_low"] == 0.0
    assert unflagged["error_rate_high"] == pytest.approx(0.25, abs=1e-4)
    assert unflagged["classification_metrics"]["confusion"] == [[1, 0], [0, 2]]
    assert unflagged["classification_metrics"]["roc_auc"] == 1.0
    assert flagged["classification_metrics"]["confusion"] == [[1, 1], [1, 0]]
    bits = quality["bits"]
    assert (bits["REPAIRED"]["objects"], bits["REPAIRED"]["errors"]) == (2, 1)
    assert (bits["EXTENDED"]["objects"], bits["EXTENDED"]["errors"]) == (2, 2)
    assert bits["NOT_CLASSIFIED"]["objects"] == 0  # d has no p_qso: not evaluated
    assert all(bits[name]["objects"] == 0 for name in QFLAG_BITS
               if name not in ("REPAIRED", "EXTENDED"))
    # Intervals in the binned metrics and the reliability bins of metrics.json too.
    assert all("completeness_low" in part and "purity_high" in part for part in metrics["by_r"])
    assert len(metrics["reliability"]["fraction_qso_low"]) == 15

    text = result.stdout
    assert "unflagged (qflag 0): 3 objects, error rate 0.000 [0.000, 0.250]" in text
    assert "flagged (qflag != 0): 3 objects, error rate 0.667 [" in text
    assert "REPAIRED (2): 2 objects, error rate 0.500 [" in text
    assert "EXTENDED (4): 2 objects, error rate 1.000 [" in text
    assert "SATURATED" not in text
    # The report reads the same from a reloaded metrics.json (bits sorted by name there).
    reloaded = format_report(metrics)
    assert reloaded.index("REPAIRED (2)") < reloaded.index("EXTENDED (4)")
    for name in PLOT_FILES:
        assert (out / name).stat().st_size > 0, name
    # The folder's starqso._util.ownership marker is one of the files evaluate wrote.
    assert sorted(metrics["files"]) == sorted(["metrics.json", *PLOT_FILES, MARKER])

    lenient = evaluate_predictions(predictions, truth, out, threshold=0.25)
    # At 0.25: b and f are QSO; errors b (star) -> flagged 1 error, e right, a/c/g right.
    assert lenient["quality"]["flagged"]["errors"] == 1
    assert lenient["quality"]["bits"]["EXTENDED"]["errors"] == 1


def test_predictions_without_qflag_still_evaluate(files):
    truth, _, tmp_path = files
    old = _write(tmp_path / "old.csv", "".join(
        ",".join(line.split(",")[:4]) + "\n" for line in PREDICTIONS.splitlines()))
    rows, join = join_predictions(old, truth)
    assert join["qflag_column"] is False and rows["has_qflag"] is False
    assert rows["qflag"].dtype == np.int64 and (rows["qflag"] == -1).all()
    result = CliRunner().invoke(main, ["evaluate", old, "--truth", truth,
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["quality"] is None and metrics["n"] == 6
    assert "quality flags: not available" in result.stdout
    # A metrics dict of an older version (no quality key) still formats.
    del metrics["quality"]
    assert "quality flags" not in format_report(metrics)


@pytest.mark.parametrize("cell, shown", [("x", "'x'"), ("", "blank"), ("-1", "'-1'"),
                                         ("1.5", "'1.5'"), ("nan", "'nan'")])
def test_bad_qflag_cell_is_a_one_line_error(files, cell, shown):
    truth, _, tmp_path = files
    lines = PREDICTIONS.splitlines()
    fields = lines[2].split(",")
    fields[4] = cell
    lines[2] = ",".join(fields)
    bad = _write(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["evaluate", bad, "--truth", truth,
                                       "--out", str(tmp_path / "out")])
    cli_error_line(result, "qflag", shown, "row 2", "bad.csv")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError) as excinfo:
        join_predictions(bad, truth)
    assert_one_line_error(excinfo, "qflag", shown, "row 2", "bad.csv")


def test_qflag_as_written_by_pandas_or_fits(files, tmp_path):
    truth, _, _ = files
    # A pandas round trip writes whole numbers as 2.0.
    floats = _write(tmp_path / "floats.csv", PREDICTIONS.replace(",2,", ",2.0,"))
    assert join_predictions(floats, truth)[0]["qflag"].tolist() == [0, 4, 0, 2, 6, 0]
    table = Table({"id": ["a", "b", "c"], "p_qso": [0.2, 0.7, np.nan],
                   "label": ["STAR", "QSO", ""], "flag": ["", "", "unreadable"],
                   "qflag": np.array([0, 4, 1], dtype=np.int16),
                   "p_qso_err": [0.01, np.nan, np.nan]})
    table.write(tmp_path / "p.fits")
    metrics = evaluate_predictions(tmp_path / "p.fits", truth, tmp_path / "fits_out")
    # Evaluated a (0.2, STAR: right) and b (0.7, STAR: wrong, EXTENDED); c has no p_qso.
    assert metrics["quality"]["unflagged"]["errors"] == 0
    assert metrics["quality"]["flagged"]["objects"] == 1
    assert metrics["quality"]["bits"]["EXTENDED"]["errors"] == 1
    table["qflag"] = [0.0, np.nan, 1.0]
    table.write(tmp_path / "nan.fits")
    with pytest.raises(InputError) as excinfo:
        join_predictions(tmp_path / "nan.fits", truth)
    assert_one_line_error(excinfo, "qflag", "row 2", "nan.fits")


def test_selection_and_quality_need_neither_matplotlib_nor_tensorflow():
    code = (
        "import sys\n"
        "from starqso.evaluation.metrics import quality_metrics, selection_function\n"
        "rows = selection_function([0, 1], [0.2, 0.9], 0.5, r=[17.0, 17.5])\n"
        "assert rows[2]['completeness'] == 1.0, rows\n"
        "assert quality_metrics([0, 1], [0.2, 0.9], [0, 2])['flagged']['errors'] == 0\n"
        "for name in ('matplotlib', 'tensorflow', 'keras'):\n"
        "    assert name not in sys.modules, name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
