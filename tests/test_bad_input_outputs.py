"""An output is never one of the inputs; predict's partial file survives every error exit.

Issue 36, items 2, 3, 5 (the partial-file half), 6, 18 and 19, through the command line:

* an output that is one of the files a command reads (a cutout the catalogue names, a cutout
  of the input folder, a spectrum, a model file, the ``--index`` of ``similar``, the
  catalogue inside a Dask output folder, the truth inside ``evaluate --out``, the embeddings
  inside ``cluster --out``), also through a symbolic or hard link, is refused with one line
  naming the output and the input, before anything is read or written;
* ``--output`` naming a folder is refused before the first row;
* a link at ``.OUT.partial`` (or its ``.json``) is refused, its target untouched;
* a ``--strict`` stop (at a resumed row or a new one) keeps the partial file for ``--resume``;
* folder-mode cutouts whose ids differ only by white space are refused, naming both files.
"""

import csv
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey

import starqso.inference
from starqso.cli import main
from starqso.inference import default_model_dir

CUTOUT = 40  # the shipped model crops 32x32 from it


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 6, seed=7, size=CUTOUT)


@pytest.fixture()
def sim(survey, tmp_path):
    """A private copy of the survey (catalogue, cutouts, spectra) that a test may break."""
    return pathlib.Path(shutil.copytree(survey, tmp_path / "sim"))


def _run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _predict(*args):
    return _run("predict", *args, "--runtime", "litert")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _snapshot(folder):
    """Every file under ``folder``, name -> bytes (links as their target name)."""
    found = {}
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def _count_rows(monkeypatch):
    """Count the blocks predict classifies (none may be before a refusal)."""
    real, calls = starqso.inference.classify._prepare_block, []

    def prepare_block(block, size, *rest):
        calls.append(len(block.ids))
        return real(block, size, *rest)

    monkeypatch.setattr(starqso.inference.classify, "_prepare_block", prepare_block)
    return calls


# ------------------------------------------------------------- 2: predict never writes an input


def test_predict_output_that_is_a_cutout_of_the_catalogue_is_refused(sim, monkeypatch):
    calls = _count_rows(monkeypatch)
    cutout = sim / "images" / "sim-000002.fits"
    (sim / "link.fits").symlink_to(cutout)
    (sim / "hard.fits").hardlink_to(cutout)
    before = _snapshot(sim)
    for output in (cutout, sim / "link.fits", sim / "hard.fits",
                   sim / "images" / ".." / "images" / "sim-000002.fits"):
        result = _predict(sim / "catalog.csv", "--output", output)
        cli_error_line(result, f"--output {output} is the cutout", "sim-000002.fits",
                       "row 3", "id 'sim-000002'", "catalog.csv")
        assert _snapshot(sim) == before, f"{output}: an input changed"
    assert calls == [], "refused before the first row"


def test_predict_output_that_is_a_cutout_of_the_folder_is_refused(sim):
    before = _snapshot(sim)
    output = sim / "images" / "sim-000001.fits"
    result = _predict(sim / "images", "--output", output)
    cli_error_line(result, f"--output {output} is the cutout", "id 'sim-000001'",
                   "input folder")
    assert _snapshot(sim) == before


def test_predict_output_that_is_a_spectrum_or_a_model_file_is_refused(sim, tmp_path):
    table = sim / "catalog.csv"
    spectrum = sim / next(row["spectrum"] for row in _rows(table) if row["spectrum"])
    result = _predict(table, "--output", spectrum)
    cli_error_line(result, f"--output {spectrum} is the spectrum", "catalog.csv")

    # A model file can only be named through a link (its suffix is not .csv/.fits).
    model = pathlib.Path(shutil.copytree(default_model_dir(), tmp_path / "model"))
    (tmp_path / "m.csv").symlink_to(model / "metadata.json")
    before = _snapshot(model)
    result = _predict(table, "--output", tmp_path / "m.csv", "--model", model)
    cli_error_line(result, "is the model file", "metadata.json")
    assert _snapshot(model) == before
    # A CSV output's side-car OUTPUT.json is written too: it may not be an input either.
    (tmp_path / "s.csv.json").symlink_to(model / "metadata.json")
    result = _predict(table, "--output", tmp_path / "s.csv", "--model", model)
    cli_error_line(result, "its side-car", "is the model file", "metadata.json")
    assert _snapshot(model) == before and not (tmp_path / "s.csv").exists()


def test_predict_output_that_is_a_cutout_named_by_a_parquet_input_is_refused(sim):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(sim / "catalog.csv")
    pq.write_table(pa.table({"id": [row["id"] for row in rows],
                             "image": [row["image"] for row in rows]}), sim / "rows.parquet")
    before = _snapshot(sim)
    output = sim / "images" / "sim-000003.fits"
    result = _predict(sim / "rows.parquet", "--output", output)
    cli_error_line(result, f"--output {output} is the cutout", "row 4", "rows.parquet")
    assert _snapshot(sim) == before


def test_an_output_that_is_no_input_is_written(sim, tmp_path):
    """The rule refuses inputs only: an output beside them, in their folder, is fine."""
    result = _predict(sim / "images", "--output", sim / "images" / "predictions.csv")
    assert result.exit_code == 0, result.output
    assert len(_rows(sim / "images" / "predictions.csv")) == 6


# -------------------------------------------------------------------- 3: the other commands


def _embeddings(path, rows=12):
    from starqso.io.embeddings import EmbeddingTable, write_embeddings

    vectors = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    table = EmbeddingTable([f"obj{i:02d}" for i in range(rows)], {"vector": vectors},
                           {"p_qso": np.linspace(0, 1, rows),
                            "label": np.where(np.arange(rows) % 2, "QSO", "STAR")},
                           {"model": "test"})
    write_embeddings(table, path)
    return path


def test_similar_output_that_is_the_index_is_refused(tmp_path):
    index = _embeddings(tmp_path / "emb.csv")
    (tmp_path / "link.csv").symlink_to(index)
    before = _snapshot(tmp_path)
    for output in (index, tmp_path / "link.csv", index.with_name("emb.csv.json")):
        result = _run("similar", "obj03", "--index", index, "-k", "3", "--output", output)
        cli_error_line(result, f"--output {output} is the", "emb.csv")
        assert _snapshot(tmp_path) == before
    fine = _run("similar", "obj03", "--index", index, "-k", "3", "--output",
                tmp_path / "n.csv")
    assert fine.exit_code == 0, fine.output
    assert len(_rows(tmp_path / "n.csv")) == 3


def test_embed_output_that_is_a_cutout_is_refused(sim):
    before = _snapshot(sim)
    output = sim / "images" / "sim-000004.fits"
    result = _run("embed", sim / "catalog.csv", "--output", output)
    cli_error_line(result, f"--output {output} is the cutout", "row 5")
    assert _snapshot(sim) == before


def test_evaluate_out_holding_an_input_is_refused(sim, tmp_path):
    predictions = tmp_path / "p.csv"
    assert _predict(sim / "catalog.csv", "--output", predictions).exit_code == 0
    before = _snapshot(sim)
    result = _run("evaluate", predictions, "--truth", sim / "catalog.csv", "--out", sim)
    cli_error_line(result, f"--out {sim} holds the --truth catalogue", "catalog.csv")
    assert _snapshot(sim) == before
    # Through a link: the truth is a link whose target is inside --out.
    (tmp_path / "truth.csv").symlink_to(sim / "catalog.csv")
    result = _run("evaluate", predictions, "--truth", tmp_path / "truth.csv", "--out", sim)
    cli_error_line(result, f"--out {sim} holds the --truth catalogue")
    assert _snapshot(sim) == before


def test_evaluate_out_sharing_a_file_with_the_truth_through_a_hard_link_is_refused(
        sim, tmp_path):
    predictions = tmp_path / "p.csv"
    assert _predict(sim / "catalog.csv", "--output", predictions).exit_code == 0
    truth = tmp_path / "truth.csv"
    truth.hardlink_to(sim / "catalog.csv")
    result = _run("evaluate", predictions, "--truth", truth, "--out", sim)
    cli_error_line(result, f"--out {sim} holds the --truth catalogue", "hard link")


def test_cluster_out_holding_the_embeddings_is_refused(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    index = _embeddings(folder / "emb.csv")
    before = _snapshot(tmp_path)
    result = _run("cluster", index, "--out", folder)
    cli_error_line(result, f"--out {folder} holds the embeddings file", "emb.csv")
    assert _snapshot(tmp_path) == before


def test_dask_output_folder_holding_the_catalogue_is_refused(sim):
    # An earlier starqso dataset output (its record file) that now also holds the catalogue
    # and its cutouts: replacing it whole would delete them.
    (sim / "_starqso.json").write_text(json.dumps({"starqso_version": "0"}))
    before = _snapshot(sim)
    result = _predict(sim / "catalog.csv", "--output", sim, "--workers", "1")
    cli_error_line(result, f"--output {sim} holds the input", "catalog.csv")
    assert _snapshot(sim) == before


# --------------------------------------------------------------- 18: --output that is a folder


def test_predict_output_that_is_a_folder_is_refused_before_the_first_row(sim, tmp_path,
                                                                         monkeypatch):
    calls = _count_rows(monkeypatch)
    output = tmp_path / "out.csv"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = _predict(sim / "catalog.csv", "--output", output)
    cli_error_line(result, f"--output {output} is a folder")
    assert calls == [], "refused before the first row"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv", "sim"]
    assert (output / "keep.txt").read_text() == "mine"
    # The side-car of a CSV output too.
    (tmp_path / "p.csv.json").mkdir()
    result = _predict(sim / "catalog.csv", "--output", tmp_path / "p.csv")
    cli_error_line(result, "its side-car", "p.csv.json", "is a folder")
    assert calls == [] and not (tmp_path / "p.csv").exists()


# --------------------------------------------------- 5: no link at the partial file is followed


@pytest.mark.parametrize("name", [".p.csv.partial", ".p.csv.partial.json"])
@pytest.mark.parametrize("resume", [False, True])
def test_a_link_at_the_partial_file_is_refused_and_its_target_untouched(sim, tmp_path, name,
                                                                        resume):
    target = tmp_path / "precious.txt"
    target.write_text("not yours\n")
    (tmp_path / name).symlink_to(target)
    result = _predict(sim / "catalog.csv", "--output", tmp_path / "p.csv",
                      *(("--resume",) if resume else ()))
    cli_error_line(result, name, "is a symbolic link to", "precious.txt")
    assert target.read_text() == "not yours\n"
    assert (tmp_path / name).is_symlink() and not (tmp_path / "p.csv").exists()


def test_a_stale_partial_file_of_a_killed_run_is_started_afresh(sim, tmp_path):
    """A plain partial file (ours, left by a kill) is replaced by a fresh run as before."""
    (tmp_path / ".p.csv.partial").write_text("id,p_qso\nhalf")
    result = _predict(sim / "catalog.csv", "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "p.csv")) == 6 and not list(tmp_path.glob(".p.csv.partial*"))


# ----------------------------------------------------- 6: every error exit keeps the partial


def _blank_cutout(sim):
    """A cutout of blank sky (a flagged row: no source detected)."""
    cube = np.random.default_rng(3).normal(0.0, 0.02, (5, CUTOUT, CUTOUT)).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(sim / "images" / "blank.fits")
    return "images/blank.fits"


def _catalog(sim, images):
    path = sim / "rows.csv"
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows([("id", "image"), *((f"r{i}", image)
                                                         for i, image in enumerate(images))])
    return path


def test_resume_strict_stop_at_a_resumed_row_keeps_the_partial(sim, tmp_path, monkeypatch):
    images = [f"images/sim-00000{i}.fits" for i in range(6)]
    images[1] = _blank_cutout(sim)  # row 2, in the first batch
    catalog = _catalog(sim, images)
    output = tmp_path / "p.csv"
    args = (catalog, "--output", output, "--batch-size", "2")
    # Interrupt after the first batch: rows 1-2 are in the partial file.
    real, calls = starqso.inference.classify._prepare_block, []

    def interrupted(block, size, *rest):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(block, size, *rest)

    monkeypatch.setattr(starqso.inference.classify, "_prepare_block", interrupted)
    assert _predict(*args).exit_code == 130
    monkeypatch.setattr(starqso.inference.classify, "_prepare_block", real)
    partial = tmp_path / ".p.csv.partial"
    kept = {path.name: path.read_bytes() for path in tmp_path.glob(".p.csv.partial*")}
    assert len(kept) == 2 and len(_rows(partial)) == 2

    strict = _predict(*args, "--resume", "--strict")
    cli_error_line(strict, "row 2", "id 'r1'", "--strict", "no source detected")
    assert {path.name: path.read_bytes() for path in tmp_path.glob(".p.csv.partial*")} == kept
    assert not output.exists()
    resumed = _predict(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after row 2 of 6" in resumed.stderr
    rows = _rows(output)
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(6)]
    assert rows[1]["flag"] and not rows[1]["p_qso"]


def test_strict_stop_at_a_new_row_keeps_the_finished_batches(sim, tmp_path):
    images = [f"images/sim-00000{i}.fits" for i in range(6)]
    images[4] = _blank_cutout(sim)  # row 5, in the third batch
    catalog = _catalog(sim, images)
    output = tmp_path / "p.csv"
    args = (catalog, "--output", output, "--batch-size", "2")
    strict = _predict(*args, "--strict")
    # Two batches were classified: the progress bar had appeared; the error is the last line.
    assert strict.exit_code == 2 and "Traceback" not in strict.output, strict.output
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith("starqso: error: row 5 (id 'r4')") and "--strict" in last, last
    assert [row["id"] for row in _rows(tmp_path / ".p.csv.partial")] == ["r0", "r1", "r2", "r3"]
    resumed = _predict(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after row 4 of 6" in resumed.stderr and len(_rows(output)) == 6


# ---------------------------------------------- 19: folder ids that differ only by white space


def test_folder_cutouts_whose_ids_differ_only_by_white_space_are_refused(sim, tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    shutil.copy(sim / "images" / "sim-000000.fits", folder / "a.fits")
    shutil.copy(sim / "images" / "sim-000001.fits", folder / "a .fits")
    result = _predict(folder, "--output", tmp_path / "p.csv")
    cli_error_line(result, "two cutouts with the id 'a'", "'a .fits'", "'a.fits'")
    assert not (tmp_path / "p.csv").exists()

    # Alone, "a .fits" is the id "a" (ids are compared without surrounding white space, as
    # evaluate compares them), and " .fits" gives no id at all.
    (folder / "a.fits").unlink()
    result = _predict(folder, "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in _rows(tmp_path / "p.csv")] == ["a"]
    shutil.copy(folder / "a .fits", folder / " .fits")
    result = _predict(folder, "--output", tmp_path / "q.csv")
    cli_error_line(result, "blank id", "' .fits'")
