"""Issue 36, the hostile round after the fixes: what a new user's tries still broke.

Each test is one finding of that round (the list is /tmp/h5/hostile_log.md of the session),
tried through the command line: a command that destroyed or wrote into something it did not
make, crashed with an internal error, or gave a misleading reason.
"""

import os
import pathlib

import pytest
from click.testing import CliRunner
from helpers import cli_error_line, folder_tree, simulated_survey

from starqso._util.ownership import MARKER
from starqso.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Four simulated objects (catalogue, cutouts, spectra)."""
    return simulated_survey(tmp_path_factory, 4, seed=3, size=24)


# --- predict's Parquet dataset output (Dask) ----------------------------------------------------
def test_predict_dataset_output_never_replaces_a_users_file_put_inside_it(survey, tmp_path):
    out = tmp_path / "predictions.parquet"
    first = _invoke("predict", survey / "catalog.csv", "--runtime", "litert", "--output", out,
                    "--workers", 1)
    assert first.exit_code == 0, first.output
    # The user keeps notes in the earlier output: the folder is no longer predict's alone,
    # and replacing it whole would delete them.
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "a.txt").write_text("mine")
    before = folder_tree(out)
    cli_error_line(_invoke("predict", survey / "catalog.csv", "--runtime", "litert",
                           "--output", out, "--workers", 1), str(out), "notes.txt", "mine")
    assert folder_tree(out) == before


def test_predict_dataset_output_that_is_the_current_folder_is_one_line(survey, tmp_path,
                                                                         monkeypatch):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    # It was `internal error: ValueError: PosixPath('.') has an empty name`.
    cli_error_line(_invoke("predict", survey / "catalog.csv", "--runtime", "litert",
                           "--output", ".", "--workers", 1), "--output .", "current folder")
    assert os.listdir(here) == []


# --- fit: a user's folder with a config.yaml is not a run folder --------------------------------
def test_fit_refuses_a_users_folder_that_has_a_config_yaml(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("services:\n  web: {image: nginx}\n")
    (mine / "README.md").write_text("my project")
    before = folder_tree(mine)
    cli_error_line(_invoke("fit", "--preset", "tiny", "--out", mine), "config.yaml", MARKER)
    # Nothing added either: no marker claiming the folder for fit.
    assert folder_tree(mine) == before


def test_a_refused_fit_leaves_no_marker_in_an_old_run_folder(tmp_path):
    # A run folder made before markers existed (its layout says fit), refused without
    # --resume: it must not be left holding a new marker.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: tiny\n")
    (run / "state.json").write_text('{"completed": []}\n')
    before = folder_tree(run)
    cli_error_line(_invoke("fit", "--preset", "tiny", "--out", run), "already holds a run")
    assert folder_tree(run) == before


# --- simulate never writes through a link -------------------------------------------------------
def test_simulate_never_writes_into_a_linked_images_folder(tmp_path):
    out = tmp_path / "sim"
    assert _invoke("simulate", out, "--n", 1, "--size", 16, "--workers", 1).exit_code == 0
    # A killed rerun's folder (no catalogue yet) whose images/ is now a link to a user's
    # folder holding a file of simulate's naming.
    (out / "catalog.csv").unlink()
    for path in (out / "images").iterdir():
        path.unlink()
    (out / "images").rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sim-000000.fits").write_text("a user's file")
    (out / "images").symlink_to(elsewhere)
    cli_error_line(_invoke("simulate", out, "--n", 1, "--size", 16, "--workers", 1),
                   str(out / "images"), "symbolic link")
    assert folder_tree(elsewhere) == {"sim-000000.fits": b"a user's file"}


# --- a folder another run is writing is reported as busy ----------------------------------------
def test_a_folder_another_run_is_making_is_reported_as_busy(tmp_path):
    from starqso._util.locking import exclusive_lock

    out = tmp_path / "sim"
    out.mkdir()
    # What a first simulate holds for an instant: its lock, and its marker's temporary file.
    (out / f".{MARKER}.0123456789ab.tmp").write_text("{}")
    with exclusive_lock(out, what="OUTDIR folder"):
        line = cli_error_line(_invoke("simulate", out, "--n", 1, "--size", 16),
                              str(out), "in use by another starqso run")
    assert "no starqso marker" not in line


# --- accurate reasons: a broken link as the folder, a folder as the lock file -------------------
def test_a_broken_link_as_output_folder_is_named_as_such(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    # It was "is a file, not a folder".
    cli_error_line(_invoke("simulate", link, "--n", 1, "--size", 16),
                   str(link), "broken symbolic link", str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()


def test_a_folder_at_the_lock_path_is_named_as_such(survey, tmp_path):
    (tmp_path / ".p.csv.lock").mkdir()
    (tmp_path / ".p.csv.lock" / "mine.txt").write_text("keep me")
    # It was "Is a directory: .p.csv.lock".
    cli_error_line(_invoke("predict", survey / "catalog.csv", "--runtime", "litert",
                           "--output", tmp_path / "p.csv"),
                   str(tmp_path / ".p.csv.lock"), "is a folder")
    assert (tmp_path / ".p.csv.lock" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "p.csv").exists()


# --- JSON nested deeper than the parser follows: one line, not an internal error ----------------
@pytest.mark.parametrize("command", ["evaluate", "similar", "cluster"])
def test_a_side_car_nested_too_deeply_is_one_line(command, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    if command == "evaluate":
        (tmp_path / "p.csv").write_text("id,p_qso,label,flag\na,0.9,QSO,\n")
        (tmp_path / "p.csv.json").write_text(deep)
        (tmp_path / "truth.csv").write_text("id,label\na,QSO\n")
        result = _invoke("evaluate", tmp_path / "p.csv", "--truth", tmp_path / "truth.csv",
                         "--out", tmp_path / "ev")
        side_car = tmp_path / "p.csv.json"
    else:
        (tmp_path / "emb.csv").write_text("id,vector_000,vector_001\na,0,1\nb,1,0\nc,1,1\n")
        (tmp_path / "emb.csv.json").write_text(deep)
        result = (_invoke("similar", "a", "--index", tmp_path / "emb.csv", "-k", 1)
                  if command == "similar" else
                  _invoke("cluster", tmp_path / "emb.csv", "--out", tmp_path / "cl"))
        side_car = tmp_path / "emb.csv.json"
    # It was `internal error: RecursionError: maximum recursion depth exceeded ...`.
    cli_error_line(result, str(side_car), "too deeply")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "cl").exists()


# --- predict's CSV side-car, and outputs that are not regular files ----------------------------
def test_predict_never_replaces_a_users_file_at_the_side_car_name(survey, tmp_path):
    output = tmp_path / "p.csv"
    users = tmp_path / "p.csv.json"
    users.write_text('{"my": "notes"}\n', encoding="utf-8")
    result = _invoke("predict", survey / "catalog.csv", "--output", output, "--runtime", "litert")
    cli_error_line(result, "side-car", str(users), "did not write")
    assert users.read_text(encoding="utf-8") == '{"my": "notes"}\n' and not output.exists()
    users.unlink()
    # starqso's own side-car of an earlier run is replaced as before.
    for _ in range(2):
        assert _invoke("predict", survey / "catalog.csv", "--output", output, "--runtime",
                       "litert").exit_code == 0
    assert "starqso_version" in users.read_text(encoding="utf-8")


def test_predict_refuses_a_fifo_or_a_broken_link_as_output(survey, tmp_path):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    cli_error_line(_invoke("predict", survey / "catalog.csv", "--output", fifo, "--runtime",
                           "litert"), "not a regular file", str(fifo))
    assert pathlib.Path(fifo).is_fifo()
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere" / "target.csv")
    cli_error_line(_invoke("predict", survey / "catalog.csv", "--output", link, "--runtime",
                           "litert"), "broken link", str(link))
    assert not (tmp_path / "elsewhere").exists() and link.is_symlink()


def test_evaluate_refuses_a_broken_link_as_out_and_creates_nothing(tmp_path):
    predictions = tmp_path / "p.csv"
    predictions.write_text("id,p_qso,label,flag\na,0.1,STAR,\nb,0.9,QSO,\n", encoding="utf-8")
    truth = tmp_path / "t.csv"
    truth.write_text("id,label\na,STAR\nb,QSO\n", encoding="utf-8")
    link = tmp_path / "evx"
    link.symlink_to(tmp_path / "nowhere" / "deep")
    cli_error_line(_invoke("evaluate", predictions, "--truth", truth, "--out", link),
                   "broken symbolic link", str(link))
    assert not (tmp_path / "nowhere").exists() and link.is_symlink()
