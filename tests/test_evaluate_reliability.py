"""`starqso evaluate --out`: the folder is replaced as a whole, and only when it is ours."""

import json
import os

import pytest
from click.testing import CliRunner
from helpers import cli_error_line

from starqso.cli import main
from starqso.evaluation import report

TRUTH = ("id,label,r,redshift\n"
         "a,STAR,16.5,0.0\n"
         "b,STAR,18.2,0.0001\n"
         "c,QSO,19.1,1.2\n"
         "d,QSO,20.3,2.4\n")
PREDICTIONS = ("id,p_qso,label,flag\n"
               "a,0.100000,STAR,\n"
               "b,0.600000,QSO,\n"
               "c,0.900000,QSO,\n"
               "d,0.300000,STAR,\n")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "predictions.csv").write_text(PREDICTIONS)
    # The same ids and labels without r and redshift: no completeness/purity plots.
    (tmp_path / "bare.csv").write_text("id,label\n" + "".join(
        ",".join(line.split(",")[:2]) + "\n" for line in TRUTH.splitlines()[1:]))
    return tmp_path


def _evaluate(files, truth, out, *extra):
    return CliRunner().invoke(main, ["evaluate", str(files / "predictions.csv"), "--truth",
                                     str(files / truth), "--out", str(out), *extra])


def _one_line_error(result):
    return cli_error_line(result)


def test_a_second_evaluation_leaves_no_plot_of_the_first(files):
    out = files / "report"
    first = _evaluate(files, "truth.csv", out)
    assert first.exit_code == 0, first.output
    assert (out / "completeness_purity_r.png").exists()
    second = _evaluate(files, "bare.csv", out)
    assert second.exit_code == 0, second.output
    metrics = json.loads((out / "metrics.json").read_text())
    # The folder holds exactly what metrics.json lists: the r/redshift plots are gone.
    assert sorted(os.listdir(out)) == sorted(metrics["files"])
    assert "completeness_purity_r.png" not in metrics["files"]
    assert not (files / "report.partial").exists() and not (files / "report.old").exists()
    # A trailing separator names the same folder (staging beside it, not inside it).
    third = _evaluate(files, "truth.csv", f"{out}{os.sep}")
    assert third.exit_code == 0, third.output
    assert sorted(os.listdir(out)) == sorted(
        json.loads((out / "metrics.json").read_text())["files"])


def test_a_failure_midway_leaves_the_previous_evaluation(files, monkeypatch):
    out = files / "report"
    assert _evaluate(files, "truth.csv", out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def broken(staging, *args):
        # One figure written, then the disk fills up.
        path = os.path.join(staging, "roc.png")
        with open(path, "wb"):
            pass
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(report, "write_plots", broken)
    result = _evaluate(files, "bare.csv", out, "--threshold", "0.25")
    assert "No space left on device" in _one_line_error(result)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert not (files / "report.partial").exists()


def test_an_unrelated_folder_is_refused_not_emptied(files):
    mine = files / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    line = _one_line_error(_evaluate(files, "truth.csv", mine))
    assert "chapter1.tex" in line and str(mine) in line and "--out" in line
    assert (mine / "chapter1.tex").read_text() == "precious"
    assert os.listdir(mine) == ["chapter1.tex"]

    # Our file names, but no metrics.json of ours: refused too.
    lookalike = files / "lookalike"
    lookalike.mkdir()
    (lookalike / "roc.png").write_bytes(b"a user's own figure")
    assert "no metrics.json" in _one_line_error(_evaluate(files, "truth.csv", lookalike))
    (lookalike / "metrics.json").write_text('{"accuracy": 1.0}\n')
    assert "no metrics.json" in _one_line_error(_evaluate(files, "truth.csv", lookalike))
    assert (lookalike / "roc.png").read_bytes() == b"a user's own figure"

    # An earlier evaluation with a user's file added: refused, nothing removed.
    out = files / "report"
    assert _evaluate(files, "truth.csv", out).exit_code == 0
    (out / "notes.txt").write_text("keep me")
    assert "notes.txt" in _one_line_error(_evaluate(files, "truth.csv", out))
    assert (out / "notes.txt").read_text() == "keep me"


def test_an_empty_folder_or_a_link_to_an_evaluation_is_accepted(files):
    empty = files / "empty"
    empty.mkdir()
    result = _evaluate(files, "truth.csv", empty)
    assert result.exit_code == 0, result.output
    assert (empty / "metrics.json").exists()

    # A link stays a link; its target gets the new evaluation.
    link = files / "latest"
    link.symlink_to(empty, target_is_directory=True)
    result = _evaluate(files, "bare.csv", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and not (empty / "completeness_purity_r.png").exists()
    assert "completeness_purity_r.png" not in json.loads(
        (empty / "metrics.json").read_text())["files"]

    # A new folder in a new parent is made.
    nested = files / "a" / "b"
    assert _evaluate(files, "truth.csv", nested).exit_code == 0
    assert (nested / "metrics.json").exists()
