"""`fit` and `finetune` screen their training rows as `predict` screens its rows (issue 36, 7).

A catalogue whose QSO rows point to blank sky: `predict` flags those rows "no source
detected"; `finetune` must leave them out of training and list them in OUT/data_flags.csv, and
with --strict refuse the catalogue in one line, as `fit --strict` does.
"""

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey

from starqso.cli import main
from starqso.io import read_catalog, write_catalog, write_cutout

BLANK_ROWS = 11


@pytest.fixture(scope="module")
def blank_sky(tmp_path_factory):
    """A 100-object survey whose first 11 QSO rows point to blank-sky cutouts (sky noise only).

    Returns ``(catalogue path, the ids of the blank rows)``.
    """
    folder = simulated_survey(tmp_path_factory, 100, seed=36, size=24)
    table = read_catalog(folder / "catalog.csv")
    rng = np.random.default_rng(36)
    blank_ids = []
    for row in np.flatnonzero(np.asarray(table["label"]) == "QSO")[:BLANK_ROWS]:
        name = f"images/blank-{row:03d}.fits"
        write_cutout(folder / name, rng.normal(0.0, 0.05, (5, 24, 24)).astype(np.float32))
        table["image"][row] = name
        blank_ids.append(str(table["id"][row]))
    return write_catalog(table, folder / "blank_sky.csv", overwrite=True), blank_ids


def _flags(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_finetune_leaves_out_blank_sky_rows_and_lists_them_as_predict_flags_them(
        tmp_path, tiny_run, blank_sky):
    catalog, blank_ids = blank_sky
    predicted = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(catalog), "--model",
                                       str(tiny_run.path / "export"), "--output",
                                       str(predicted)])
    assert result.exit_code == 0, result.output
    predict_flags = {row["id"]: row["flag"] for row in _flags(predicted) if not row["p_qso"]}
    assert sorted(predict_flags) == sorted(blank_ids)

    out = tmp_path / "ft"
    result = CliRunner().invoke(main, ["finetune", "--data", str(catalog), "--model",
                                       str(tiny_run.path / "export"), "--out", str(out),
                                       "--epochs", "1", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert f"{BLANK_ROWS} catalogue rows flagged ({BLANK_ROWS} left out" in result.output
    flags = _flags(out / "data_flags.csv")
    assert sorted(row["id"] for row in flags) == sorted(blank_ids)
    for row in flags:
        assert row["used"] == "no"
        # The reason predict gives for the same row, word for word.
        assert "no source detected" in row["flag"]
        assert predict_flags[row["id"]] in row["flag"]
    from starqso.training.run_folder import RunFolder

    split = RunFolder(out).split()
    assert not set(blank_ids) & {ident for ids in split.values() for ident in ids}


def test_finetune_strict_refuses_a_blank_sky_row_before_training(tmp_path, tiny_run,
                                                                blank_sky):
    catalog, blank_ids = blank_sky
    out = tmp_path / "ft"
    result = CliRunner().invoke(main, ["finetune", "--data", str(catalog), "--model",
                                       str(tiny_run.path / "export"), "--out", str(out),
                                       "--epochs", "1", "--strict"])
    line = cli_error_line(result, "no source detected", str(catalog))
    assert any(repr(ident) in line for ident in blank_ids), line
    assert not (out / "config.yaml").exists() and not (out / "finetune.json").exists()


def test_fit_strict_refuses_a_blank_sky_row_before_training(tmp_path, blank_sky):
    catalog, blank_ids = blank_sky
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: tiny\n")
    result = CliRunner().invoke(main, ["fit", "--data", str(catalog), "--config", str(config),
                                       "--out", str(out), "--strict"])
    line = cli_error_line(result, "no source detected", str(catalog))
    assert any(repr(ident) in line for ident in blank_ids), line
    assert not (out / "starqso_classifier.keras").exists()


def test_training_arrays_flag_the_rows_predict_flags(blank_sky):
    from starqso.data import ObjectArrays

    catalog, blank_ids = blank_sky
    arrays = ObjectArrays.from_catalog(catalog, 24, strict=False)
    assert len(arrays) == 100 - BLANK_ROWS
    assert not set(blank_ids) & set(arrays.ids.tolist())
    assert sorted(flag["id"] for flag in arrays.flags) == sorted(blank_ids)


def test_finetune_refuses_a_three_class_model_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: tiny\nmodel:\n  classes: [STAR, QSO, GALAXY]\n")
    (run / "starqso_classifier.keras").write_bytes(b"not read: refused before loading")
    catalog = tmp_path / "labels.csv"
    catalog.write_text("id,image,label\n1,a.fits,STAR\n")
    out = tmp_path / "tuned"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run), "--data", str(catalog),
                                       "--out", str(out)])
    assert result.exit_code != 0
    line = cli_error_line(result)
    assert "two-class (STAR/QSO) models" in line and "STAR/QSO/GALAXY" in line
    assert str(run) in line and not out.exists()
