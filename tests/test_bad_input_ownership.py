"""Issue 36, hostile round three: no command destroys or writes into a folder it did not make.

Items 1, 4, 5 (the lock file), 13, 14, 15, 16, 17, 21 (TensorFlow / converter lines) and 22,
each through the command line (click's CliRunner, or a subprocess where stderr's file
descriptor matters).
"""

import errno
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli_error_line, folder_tree

from starqso._util.ownership import MARKER
from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRUTH = "id,label\na,STAR\nb,STAR\nc,QSO\nd,QSO\n"
PREDICTIONS = "id,p_qso,label,flag\na,0.1,STAR,\nb,0.6,QSO,\nc,0.9,QSO,\nd,0.3,STAR,\n"


def _invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """A simulation made by `starqso simulate` (catalogue, 3 cutouts, 3 spectra)."""
    folder = tmp_path_factory.mktemp("made") / "sim"
    result = _invoke("simulate", folder, "--n", 3, "--size", 16, "--workers", 1)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """A small embeddings file in `starqso embed`'s format: two well separated groups."""
    from starqso.io.embeddings import EmbeddingTable, write_embeddings

    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(0, 0.1, (12, 4)), rng.normal(5, 0.1, (12, 4))])
    path = tmp_path_factory.mktemp("embeddings") / "emb.csv"
    write_embeddings(EmbeddingTable([f"o{i}" for i in range(24)], {"vector": vectors},
                                    {"label": ["STAR"] * 12 + ["QSO"] * 12,
                                     "p_qso": np.r_[np.full(12, 0.1), np.full(12, 0.9)]}),
                     path)
    return path


@pytest.fixture
def scored(tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "predictions.csv").write_text(PREDICTIONS)
    return tmp_path


def _evaluate(folder, out):
    return _invoke("evaluate", folder / "predictions.csv", "--truth", folder / "truth.csv",
                   "--out", out)


def _cluster(embeddings, out):
    return _invoke("cluster", embeddings, "--out", out, "--clusters", 2, "--bags", 2)


# --- item 1: a folder another command (or nobody) made is refused, never replaced ------------
def test_cluster_refuses_a_simulation_and_leaves_it_whole(simulation, embeddings):
    before = folder_tree(simulation)
    line = cli_error_line(_cluster(embeddings, simulation), str(simulation), "simulate")
    assert "cluster" in line
    assert folder_tree(simulation) == before


@pytest.mark.parametrize("command", ["evaluate", "export", "fit", "finetune"])
def test_every_folder_writer_refuses_a_simulation(command, simulation, scored, tmp_path):
    before = folder_tree(simulation)
    if command == "evaluate":
        result = _evaluate(scored, simulation)
    elif command == "export":
        run = tmp_path / "run"  # complete enough for export to reach its --out
        run.mkdir()
        (run / "config.yaml").write_text("preset: tiny\n")
        (run / "starqso_classifier.keras").write_bytes(b"")
        result = _invoke("export", run, "--out", simulation)
    elif command == "fit":
        result = _invoke("fit", "--preset", "tiny", "--out", simulation)
    else:
        result = _invoke("finetune", "--data", simulation / "catalog.csv", "--out", simulation)
    # evaluate refused it before markers existed (its own, stricter check names the entries)
    cli_error_line(result, str(simulation),
                   *(() if command == "evaluate" else ("made by `starqso simulate`",)))
    assert folder_tree(simulation) == before


def test_a_user_folder_without_a_marker_is_refused_by_every_writer(tmp_path, embeddings):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    cli_error_line(_cluster(embeddings, mine), "chapter1.tex", MARKER)
    cli_error_line(_invoke("simulate", mine, "--n", 1, "--size", 16, "--workers", 1),
                   "chapter1.tex", MARKER)
    cli_error_line(_invoke("fit", "--preset", "tiny", "--out", mine), "chapter1.tex")
    assert folder_tree(mine) == {"chapter1.tex": b"precious"}


def test_cluster_reruns_into_its_own_output_but_not_a_fit_run(tmp_path, embeddings):
    out = tmp_path / "clusters"
    assert _cluster(embeddings, out).exit_code == 0
    assert json.loads((out / MARKER).read_text())["command"] == "cluster"
    again = _cluster(embeddings, out)
    assert again.exit_code == 0, again.output
    assert sorted(os.listdir(out)) == sorted([MARKER, "clusters.csv", "clusters.png",
                                              "summary.json"])
    # A user's file added to the output: the folder is no longer cluster's alone.
    (out / "notes.txt").write_text("keep me")
    cli_error_line(_cluster(embeddings, out), "notes.txt")
    assert (out / "notes.txt").read_text() == "keep me"

    # A run folder of `fit` (made before markers existed: its layout says so).
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: tiny\n")
    (run / "state.json").write_text('{"completed": []}\n')
    before = folder_tree(run)
    cli_error_line(_cluster(embeddings, run), "made by `starqso fit`")
    assert folder_tree(run) == before
    # ... and a simulation cannot go into a cluster output either.
    cli_error_line(_invoke("simulate", tmp_path / "clusters", "--n", 1, "--size", 16),
                   "made by `starqso cluster`")


# --- item 4: staging and .old names are the run's own ------------------------------------------
def test_evaluate_never_removes_folders_named_like_its_staging(scored):
    out = scored / "evx"
    for name in ("evx.partial", "evx.old"):
        (scored / name).mkdir()
        (scored / name / "data.txt").write_text(f"a user's {name}")
    assert _evaluate(scored, out).exit_code == 0  # creates evx
    assert _evaluate(scored, out).exit_code == 0  # replaces it
    for name in ("evx.partial", "evx.old"):
        assert (scored / name / "data.txt").read_text() == f"a user's {name}"
    # Nothing of the runs' own staging is left beside it.
    assert sorted(os.listdir(scored)) == ["evx", "evx.old", "evx.partial", "predictions.csv",
                                          "truth.csv"]


# --- item 5: a link at the lock path is refused, its target untouched ------------------------
def test_a_symlink_at_the_lock_path_is_refused_not_followed(simulation, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("do not overwrite")
    output = tmp_path / "out.csv"
    (tmp_path / ".out.csv.lock").symlink_to(target)
    result = _invoke("predict", simulation / "catalog.csv", "--output", output,
                     "--runtime", "litert")
    cli_error_line(result, ".out.csv.lock", "symbolic link")
    assert target.read_text() == "do not overwrite"
    assert not output.exists()

    # The same for a folder writer's lock beside its --out.
    (tmp_path / ".ev.lock").symlink_to(target)
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "predictions.csv").write_text(PREDICTIONS)
    cli_error_line(_evaluate(tmp_path, tmp_path / "ev"), ".ev.lock", "symbolic link")
    assert target.read_text() == "do not overwrite" and not (tmp_path / "ev").exists()


# --- item 13: a negative seed -----------------------------------------------------------------
def test_simulate_negative_seed_is_one_line_and_makes_nothing(tmp_path):
    out = tmp_path / "sim"
    cli_error_line(_invoke("simulate", out, "--seed", -1, "--n", 2), "--seed", "-1")
    assert not out.exists() and os.listdir(tmp_path) == []


# --- item 14: one writer per output folder -----------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "cluster", "finetune", "simulate"])
def test_a_second_writer_of_a_folder_is_refused(command, scored, embeddings):
    from starqso._util.locking import exclusive_lock

    out = scored / "out"
    with exclusive_lock(out):  # another run holds the folder
        if command == "evaluate":
            result = _evaluate(scored, out)
        elif command == "cluster":
            result = _cluster(embeddings, out)
        elif command == "finetune":
            result = _invoke("finetune", "--data", scored / "truth.csv", "--out", out)
        else:
            result = _invoke("simulate", out, "--n", 1, "--size", 16, "--workers", 1)
        cli_error_line(result, "in use by another starqso run", str(out), str(os.getpid()))
    assert not out.exists()


# --- item 15: option errors are one line --------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["predict", "cat.csv", "--batch-size", "abc"], ["--batch-size", "abc"]),
    (["predict", "cat.csv", "--no-such-option"], ["--no-such-option"]),
    (["predict"], ["CATALOG"]),
    (["predict", "cat.csv", "--model", "{file}"], ["--model", "{file}", "is a file"]),
    (["--no-such-option"], ["--no-such-option"]),
    (["simulate", "out", "--n", "many"], ["--n", "many"]),
])
def test_option_errors_are_one_line(args, fragments, tmp_path):
    afile = tmp_path / "model.txt"
    afile.write_text("not a folder")
    result = _invoke(*(arg.format(file=afile) for arg in args))
    line = cli_error_line(result, *(fragment.format(file=afile) for fragment in fragments))
    assert "--help" in line and "Usage:" not in result.output


def test_help_still_works():
    result = _invoke("predict", "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


# --- item 16: a full disk at the lock file names it ---------------------------------------------
def test_disk_full_at_the_lock_file_names_the_path(simulation, tmp_path, monkeypatch):
    real_write = os.write
    pid_line = f"{os.getpid()}\n".encode()

    def full(descriptor, data):
        if bytes(data) == pid_line:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", full)
    output = tmp_path / "out.csv"
    result = _invoke("predict", simulation / "catalog.csv", "--output", output,
                     "--runtime", "litert")
    line = cli_error_line(result, "No space left on device", ".out.csv.lock")
    assert "None" not in line
    assert os.listdir(tmp_path) == []  # neither the output nor the lock file


# --- item 17: `cluster --out .` -----------------------------------------------------------------
@pytest.mark.parametrize("out", [".", "..", "./"])
def test_cluster_into_the_current_folder_is_one_line_and_leaves_nothing(out, tmp_path,
                                                                        embeddings,
                                                                        monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cli_error_line(_cluster(embeddings, out), "current folder")
    assert os.listdir(tmp_path) == ["work"] and os.listdir(work) == []


# --- item 22: simulate --overwrite --------------------------------------------------------------
def test_simulate_overwrite_removes_all_it_made_and_only_that(tmp_path):
    out = tmp_path / "sim"
    assert _invoke("simulate", out, "--n", 4, "--size", 16, "--workers", 1).exit_code == 0
    result = _invoke("simulate", out, "--n", 2, "--size", 16, "--workers", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out / "images")) == ["sim-000000.fits", "sim-000001.fits"]
    assert sorted(os.listdir(out / "spectra")) == ["sim-000000.fits", "sim-000001.fits"]
    assert sorted(os.listdir(out)) == [MARKER, "catalog.csv", "images", "spectra"]

    # A user's file in the simulation: refused, and nothing at all removed.
    (out / "images" / "my_notes.txt").write_text("mine")
    before = folder_tree(out)
    cli_error_line(_invoke("simulate", out, "--n", 1, "--size", 16, "--overwrite"),
                   "images/my_notes.txt")
    assert folder_tree(out) == before

    # A folder with a catalogue that simulate did not write: refused, untouched.
    other = tmp_path / "catalogue"
    other.mkdir()
    (other / "catalog.csv").write_text("id,image,label\na,a.fits,STAR\n")
    (other / "a.fits").write_bytes(b"a user's cutout")
    before = folder_tree(other)
    cli_error_line(_invoke("simulate", other, "--n", 1, "--size", 16, "--overwrite"),
                   MARKER)
    assert folder_tree(other) == before


# --- item 21: no TensorFlow / converter lines --------------------------------------------------
def test_export_prints_no_tensorflow_or_converter_lines(tiny_run, tmp_path):
    # A subprocess: the converter writes to file descriptor 2, which CliRunner does not see.
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "export", str(tiny_run.path),
                             "--out", str(tmp_path / "export")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    for noise in ("fully_quantize", "inference_type", "WARNING:tensorflow", "retracing"):
        assert noise not in result.stderr, result.stderr
    assert json.loads((tmp_path / "export" / MARKER).read_text())["command"] == "export"
