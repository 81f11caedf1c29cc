"""`starqso evaluate` with STAR / QSO / GALAXY: the three-class section checked by hand, binary
truth against three-class predictions, GALAXY truth against two-class ones, and bad input."""

import json

import pytest
from astropy.table import Table
from click.testing import CliRunner
from helpers import cli_error_line

from starqso._util.ownership import MARKER
from starqso.cli import main
from starqso.evaluation import PLOT_FILES, evaluate_predictions, format_report
from starqso.evaluation.plots import CLASS_PLOT_FILES

TRUTH_HEADER = "id,label,r,redshift\n"
TRUTH_ROWS = {
    "s1": "STAR,17.0,0.0", "s2": "STAR,18.0,0.0", "s3": "STAR,19.5,0.0", "s4": "STAR,20.5,0.0",
    "q1": "QSO,18.5,1.0", "q2": "QSO,19.5,2.0", "q3": "QSO,20.5,2.5",
    "g1": "GALAXY,18.5,0.1", "g2": "GALAXY,19.5,0.2", "g3": "GALAXY,20.5,0.3",
}
# p_qso, p_star, p_galaxy. At threshold 0.5 (QSO first, else the larger of STAR / GALAXY):
# s1 s2 STAR, s3 GALAXY, s4 QSO | q1 q2 QSO, q3 STAR | g1 g2 GALAXY, g3 STAR.
PROBABILITIES = {
    "s1": (0.1, 0.8, 0.1), "s2": (0.2, 0.7, 0.1), "s3": (0.1, 0.4, 0.5), "s4": (0.6, 0.3, 0.1),
    "q1": (0.9, 0.05, 0.05), "q2": (0.7, 0.2, 0.1), "q3": (0.3, 0.4, 0.3),
    "g1": (0.1, 0.2, 0.7), "g2": (0.05, 0.15, 0.8), "g3": (0.2, 0.5, 0.3),
}


def _truth(tmp_path, ids=tuple(TRUTH_ROWS), name="truth.csv", binned=True):
    """The truth catalogue; ``binned=False``: id and label only (no r / redshift plots, which
    keeps the tests fast)."""
    path = tmp_path / name
    rows = [(i, TRUTH_ROWS[i] if binned else TRUTH_ROWS[i].split(",")[0]) for i in ids]
    path.write_text((TRUTH_HEADER if binned else "id,label\n")
                    + "".join(f"{i},{row}\n" for i, row in rows))
    return str(path)


def _predictions(tmp_path, three_class=True, name="predictions.csv", edit=None,
                 ids=tuple(PROBABILITIES)):
    """As predict writes them: id, p_qso, label, flag, qflag, p_qso_err, p_star, p_galaxy
    (``three_class=False``: a two-class model's, p_galaxy blank); ``edit`` replaces cells."""
    lines = ["id,p_qso,label,flag,qflag,p_qso_err,p_star,p_galaxy"]
    for identifier in ids:
        p_qso, p_star, p_galaxy = PROBABILITIES[identifier]
        if not three_class:
            p_star, p_galaxy = 1.0 - p_qso, None
        cells = [identifier, f"{p_qso:.6f}", "", "", "0", "0.010000", f"{p_star:.6f}",
                 "" if p_galaxy is None else f"{p_galaxy:.6f}"]
        for column, value in (edit or {}).get(identifier, {}).items():
            cells[lines[0].split(",").index(column)] = value
        lines.append(",".join(cells))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_three_class_confusion_and_f1_match_hand_computed_values(tmp_path):
    out = tmp_path / "out"
    result = _run(_predictions(tmp_path), "--truth", _truth(tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics["three_class"]
    assert section["classes"] == ["STAR", "QSO", "GALAXY"] and section["n"] == 10
    assert section["predictions_classes"] == 3
    assert section["confusion"] == [[2, 1, 1], [1, 2, 0], [1, 0, 2]]
    per_class = section["per_class"]
    # STAR: TP 2, called 4 (s1 s2 q3 g3), 4 true -> F1 4/8; QSO: TP 2 of 3 called, 3 true;
    # GALAXY: TP 2 of 3 called (s3 g1 g2), 3 true.
    assert per_class["STAR"]["precision"] == pytest.approx(0.5)
    assert per_class["STAR"]["f1"] == pytest.approx(0.5)
    assert per_class["QSO"]["f1"] == pytest.approx(2 / 3)
    assert per_class["GALAXY"]["recall"] == pytest.approx(2 / 3)
    assert per_class["GALAXY"]["f1"] == pytest.approx(2 / 3)
    assert section["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert section["accuracy"] == pytest.approx(0.6)
    # p_qso of the 3 QSOs (0.9, 0.7, 0.3) against the 7 others: 20 of 21 pairs ranked right.
    assert per_class["QSO"]["roc_auc"] == pytest.approx(20 / 21)
    assert section["called_galaxy"] == {"STAR": 1, "QSO": 0}
    assert sum(part["n"] for part in section["by_r"]) == 10
    assert sum(part["classes"]["GALAXY"]["n"] for part in section["by_redshift"]) == 3
    assert set(section["reliability"]) == {"STAR", "QSO", "GALAXY"}
    # The two-class metrics: STAR/QSO truth rows, QSO vs not QSO (s3's GALAXY is not QSO).
    assert metrics["confusion"] == [[3, 1], [1, 2]] and metrics["n"] == 7
    assert metrics["join"]["galaxy_truth"]["count"] == 3
    assert metrics["join"]["galaxy_truth"]["scored"] is True
    assert metrics["join"]["unlabelled"]["count"] == 0
    for name in (*PLOT_FILES, *CLASS_PLOT_FILES):
        assert (out / name).stat().st_size > 0, name
    text = result.stdout
    assert "    STAR    [2, 1, 1]" in text and "    GALAXY  [1, 0, 2]" in text
    assert "F1: STAR 0.5000, QSO 0.6667, GALAXY 0.6667; macro-F1 0.6111" in text
    assert "truth STAR/QSO called GALAXY: 1 (STAR 1, QSO 0)" in text

    # The QSO threshold moves s4 (p_qso 0.6) to the larger of STAR 0.3 / GALAXY 0.1.
    strict = _run(_predictions(tmp_path), "--truth", _truth(tmp_path, binned=False), "--out",
                  out, "--threshold", "0.65")
    assert strict.exit_code == 0, strict.output
    again = json.loads((out / "metrics.json").read_text())
    assert again["three_class"]["confusion"] == [[3, 0, 1], [1, 2, 0], [1, 0, 2]]
    assert again["confusion"] == [[4, 0], [1, 2]]


def test_binary_truth_scores_against_three_class_predictions(tmp_path):
    truth = _truth(tmp_path, ids=("s1", "s2", "s3", "s4", "q1", "q2", "q3"), binned=False)
    out = tmp_path / "out"
    result = _run(_predictions(tmp_path), "--truth", truth, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # As from p_qso alone: s3, called GALAXY, is a true "not QSO".
    assert metrics["confusion"] == [[3, 1], [1, 2]]
    assert "galaxy_truth" not in metrics["join"]
    section = metrics["three_class"]
    assert section["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 0, 0]]
    assert section["called_galaxy"] == {"STAR": 1, "QSO": 0}
    galaxy = section["per_class"]["GALAXY"]
    assert galaxy["n"] == 0 and galaxy["recall"] is None and galaxy["roc_auc"] is None
    # Macro-F1 over the classes in the truth: STAR 2 * 2 / (4 + 1 + 2), QSO 2 / 3.
    assert section["macro_f1"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert "truth STAR/QSO called GALAXY: 1 (STAR 1, QSO 0)" in result.stdout
    assert "a GALAXY answer counts as not QSO" in result.stdout


def test_galaxy_truth_against_two_class_predictions_is_skipped_with_a_reason(tmp_path):
    truth = _truth(tmp_path, binned=False)
    old = tmp_path / "old.csv"  # an older version's file: no p_star / p_galaxy at all
    old.write_text("id,p_qso,label,flag\n" + "".join(
        f"{i},{p[0]:.6f},,\n" for i, p in PROBABILITIES.items()))
    out = tmp_path / "out"
    result = _run(old, "--truth", truth, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 7 and metrics["confusion"] == [[3, 1], [1, 2]]
    skipped = metrics["join"]["galaxy_truth"]
    assert skipped["count"] == 3 and skipped["first_ids"] == ["g1", "g2", "g3"]
    assert skipped["scored"] is False and "two-class" in skipped["reason"]
    assert metrics["join"]["unlabelled"]["count"] == 0
    # What the two-class model called the galaxies: never GALAXY.
    section = metrics["three_class"]
    assert section["predictions_classes"] == 2
    assert section["confusion"][2] == [3, 0, 0] and section["per_class"]["GALAXY"]["called"] == 0
    assert section["reliability"]["GALAXY"] is None
    assert section["per_class"]["GALAXY"]["roc_auc"] is None
    assert "truth GALAXY (not scorable" in result.stdout and "ids: g1, g2, g3" in result.stdout
    refused = _run(old, "--truth", truth, "--out", out, "--strict")
    cli_error_line(refused, "--strict", "3 galaxy truth row(s)", "g1")


def test_two_class_predictions_with_star_qso_truth_are_unchanged(tmp_path):
    binary = ("s1", "s2", "s3", "s4", "q1", "q2", "q3")
    truth = _truth(tmp_path, ids=binary)
    new = evaluate_predictions(_predictions(tmp_path, three_class=False, ids=binary), truth,
                               tmp_path / "new")
    old = tmp_path / "old.csv"
    old.write_text("id,p_qso,label,flag,qflag\n" + "".join(
        f"{i},{p[0]:.6f},,,0\n" for i, p in PROBABILITIES.items() if i[0] != "g"))
    before = evaluate_predictions(old, truth, tmp_path / "old")
    assert "three_class" not in new and "galaxy_truth" not in new["join"]
    assert sorted(new["files"]) == sorted(before["files"])
    for key in ("confusion", "f1_qso", "roc_auc", "ece", "by_r", "reliability", "quality"):
        assert new[key] == before[key], key
    assert format_report(new).replace(new["out_dir"], "OUT") == format_report(
        before).replace(before["out_dir"], "OUT")


def test_galaxy_truth_alone_is_scored_by_the_three_class_metrics(tmp_path):
    truth = _truth(tmp_path, ids=("g1", "g2", "g3"), binned=False)
    # As predict writes FITS: the probabilities are float columns.
    ids = list(PROBABILITIES)
    Table({"id": ids, "p_qso": [PROBABILITIES[i][0] for i in ids], "label": [""] * len(ids),
           "flag": [""] * len(ids), "qflag": [0] * len(ids),
           "p_star": [PROBABILITIES[i][1] for i in ids],
           "p_galaxy": [PROBABILITIES[i][2] for i in ids]}).write(tmp_path / "predictions.fits")
    metrics = evaluate_predictions(tmp_path / "predictions.fits", truth, tmp_path / "out")
    assert metrics["n"] == 0 and metrics["confusion"] is None
    assert metrics["three_class"]["per_class"]["GALAXY"]["recall"] == pytest.approx(2 / 3)
    assert set(metrics["files"]) == {"metrics.json", *CLASS_PLOT_FILES[:3], MARKER}
    assert "no STAR/QSO truth rows" in format_report(metrics)


@pytest.mark.parametrize("edit, fragments", [
    ({"q2": {"p_galaxy": "lots"}}, ("'p_galaxy'", "'lots'", "row 6")),
    ({"s3": {"p_star": "n/a"}}, ("'p_star'", "'n/a'", "row 3")),
    ({"s2": {"p_star": "0.600000"}}, ("sum to 1", "0.9", "row 2")),
    ({"g1": {"p_galaxy": ""}}, ("'p_galaxy'", "blank", "row 8")),
])
def test_bad_class_probabilities_are_one_line_errors(tmp_path, edit, fragments):
    predictions = _predictions(tmp_path, name="bad.csv", edit=edit)
    result = _run(predictions, "--truth", _truth(tmp_path, binned=False), "--out",
                  tmp_path / "out")
    cli_error_line(result, *fragments, "bad.csv")
    assert not (tmp_path / "out").exists()
