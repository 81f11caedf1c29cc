"""`starqso predict` reliability, round two (issue 15), through the command line.

No answer without a source (blank sky, constant cubes, other units, no-data fills, non-finite
model outputs are flagged rows), one writer per output (a lock, checked with real processes),
``--resume`` that checks ``--strict`` and content hashes, stable folder ids, an output that is
the catalogue refused, and a kill in the first batch that resumes.
"""

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey, wait_for

import starqso.inference
from starqso.cli import main
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.io import read_cutout
from starqso.io.sources import cutout_id

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
CUTOUT = 40  # the shipped model crops 32x32 from it


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 8, seed=5, size=CUTOUT)


@pytest.fixture(scope="module")
def good_cube(survey):
    return read_cutout(survey / "images" / "sim-000000.fits").data


def _many(survey, name, rows):
    """A catalogue of ``rows`` rows over the survey's 8 cutouts (slow enough to interrupt)."""
    path = survey / name
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(("id", "image"))
        writer.writerows((f"row{i:05d}", f"images/sim-{i % 8:06d}.fits") for i in range(rows))
    return path


def _one_line_error(result, *fragments):
    cli_error_line(result, *fragments)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _catalog(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("id", "image"), *rows])
    return path


def _predict(*args, runtime="litert"):
    return CliRunner().invoke(main, ["predict", *map(str, args), "--runtime", runtime])


def _write(path, cube):
    fits.PrimaryHDU(np.asarray(cube, np.float32)).writeto(path)
    return path.name




# ------------------------------------------------------------- 1, 2: no answer without a source


def _blank(good):
    return np.random.default_rng(3).normal(0.0, 0.02, good.shape)


def _centre_value(value):
    def change(good):
        cube = good.copy()
        cube[:, CUTOUT // 2, CUTOUT // 2] = value
        return cube
    return change


# name: (cube from the good one, fragment of the flag)
NO_SOURCE = {
    "blank_sky": (_blank, "no source detected"),
    "constant": (lambda good: np.full(good.shape, 0.7), "constant"),
    "jansky": (lambda good: good * 3.631e-6, "not plausible in nanomaggies"),
    "scaled_1e-38": (lambda good: good * 1e-38, "nanomaggies"),
    "no_data_1e30": (_centre_value(1e30), "beyond the plausible"),
    "no_data_minus_1e30": (_centre_value(-1e30), "beyond the plausible"),
    "flat_band": (lambda good: np.concatenate([good[:4], np.zeros_like(good[4:])]),
                  "band z has no sky noise"),
}


def test_cutouts_without_a_plausible_source_are_flagged(survey, good_cube, tmp_path):
    rows = [("good", str(survey / "images" / "sim-000000.fits"))]
    for case, (build, _) in NO_SOURCE.items():
        rows.append((case, _write(tmp_path / f"{case}.fits", build(good_cube))))
    rows.append(("last", str(survey / "images" / "sim-000001.fits")))
    catalog = _catalog(tmp_path / "catalog.csv", rows)
    result = _predict(catalog, "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    got = {row["id"]: row for row in _rows(tmp_path / "p.csv")}
    assert list(got) == [row[0] for row in rows]
    for ident in ("good", "last"):
        assert got[ident]["flag"] == "" and got[ident]["p_qso"] != "", got[ident]
    for case, (_, fragment) in NO_SOURCE.items():
        row = got[case]
        assert fragment in row["flag"] and row["p_qso"] == "" and row["label"] == "", row
        assert "\n" not in row["flag"] and "expected" in row["flag"], row
    assert f"{len(NO_SOURCE)} flagged" in result.stdout

    strict = _predict(catalog, "--output", tmp_path / "strict.csv", "--strict")
    _one_line_error(strict, "row 2", "id 'blank_sky'", "no source detected")
    assert not (tmp_path / "strict.csv").exists()


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_a_no_data_pixel_at_the_object_is_flagged_in_both_runtimes(runtime, survey, good_cube,
                                                                  tmp_path):
    name = _write(tmp_path / "nodata.fits", _centre_value(1e30)(good_cube))
    catalog = _catalog(tmp_path / "catalog.csv",
                       [("good", str(survey / "images" / "sim-000002.fits")), ("bad", name)])
    result = _predict(catalog, "--output", tmp_path / "p.csv", runtime=runtime)
    assert result.exit_code == 0, result.output
    good, bad = _rows(tmp_path / "p.csv")
    assert good["flag"] == "" and 0 <= float(good["p_qso"]) <= 1
    assert bad["p_qso"] == bad["label"] == "" and "1e+30" in bad["flag"], bad


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_a_non_finite_model_output_is_a_flagged_row(runtime, survey, tmp_path, monkeypatch):
    real = starqso.inference.predict.checked_predictor

    def nan_for_the_second_row(model_dir, runtime):
        predictor = real(model_dir, runtime)

        def predict(images):
            p = np.array(predictor(images), np.float64)
            p[1::3] = np.nan  # the model breaks on some input it was never trained for
            return p
        return predict

    monkeypatch.setattr(starqso.inference.predict, "checked_predictor", nan_for_the_second_row)
    images = survey / "images"
    catalog = _catalog(tmp_path / "catalog.csv", [(f"r{i}", str(images / f"sim-00000{i}.fits"))
                                                  for i in range(3)])
    result = _predict(catalog, "--output", tmp_path / "p.csv", runtime=runtime)
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "p.csv")
    assert rows[1]["flag"].startswith("model output is not finite") and rows[1]["p_qso"] == ""
    assert rows[1]["label"] == "" and "1 flagged" in result.stdout
    assert rows[0]["flag"] == rows[2]["flag"] == "" and rows[0]["label"] in ("STAR", "QSO")
    strict = _predict(catalog, "--output", tmp_path / "s.csv", "--strict", runtime=runtime)
    _one_line_error(strict, "row 2", "id 'r1'", "model output is not finite")


def test_simulated_stars_and_qsos_are_not_flagged():
    """Real-looking objects pass: none flagged to r = 22 (measured 0 of 489, seed 0)."""
    from starqso.preprocessing import center_crop, check_source
    from starqso.simulate import simulate_object

    flagged, bright = [], 0
    for index in range(150):
        simulated = simulate_object(index, 21, size=CUTOUT)
        if simulated.mags[2] > 22:
            continue
        bright += 1
        try:
            check_source(center_crop(simulated.cutout, 32), source=simulated.id)
        except InputError as err:
            flagged.append(str(err))
    assert bright > 100 and len(flagged) <= 0.01 * bright, flagged


def test_quantised_data_keep_their_sky_noise(good_cube):
    from starqso.preprocessing import check_source, sky_sigma

    # int16 with BSCALE 0.01: more than half the border of a quiet band on one value.
    quantised = np.round(good_cube / 0.01) * 0.01
    crop = np.moveaxis(quantised[:, 4:36, 4:36], 0, -1)
    assert np.all(sky_sigma(crop) > 0)
    check_source(crop)


# -------------------------------------------------------------------- 3: one writer per output


def test_a_locked_output_is_refused_naming_the_owner(survey, tmp_path, monkeypatch):
    import starqso._util.locking
    from starqso._util.locking import exclusive_lock, lock_path

    output = tmp_path / "p.csv"
    for fallback in (False, True):
        if fallback:  # no fcntl (Windows): an O_EXCL lock file with the owner's pid
            monkeypatch.setattr(starqso._util.locking, "fcntl", None)
        with exclusive_lock(output):
            for extra in ([], ["--resume"]):
                result = _predict(survey / "catalog.csv", "--output", output, *extra)
                _one_line_error(result, str(output), f"pid {os.getpid()}")
        assert not lock_path(output).exists()
    # A lock file left by a killed run (its pid no longer runs) is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(output).write_text(f"{dead.pid}\n")
    result = _predict(survey / "catalog.csv", "--output", output)
    assert result.exit_code == 0, result.output
    assert not lock_path(output).exists()


def test_two_processes_on_one_output_cannot_mix_rows(survey, tmp_path):
    catalogue = _many(survey, "lock.csv", 2500)
    output = tmp_path / "p.csv"
    partial = tmp_path / ".p.csv.partial"
    command = [sys.executable, str(ROOT / "cli.py"), "predict", str(catalogue), "--runtime",
               "litert", "--output", str(output)]
    log = open(tmp_path / "first.log", "w+")  # a file, not a pipe that could fill up
    first = subprocess.Popen(command + ["--batch-size", "1"], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(partial.exists, first, "the first run started writing")
        # Another prior: rows of the second run would have other p_qso for the same cutout.
        for extra in ([], ["--resume"]):
            second = subprocess.run(command + ["--prior", "train", *extra], env=ENV,
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and str(output) in lines[0], second.stderr
            assert f"pid {first.pid}" in lines[0], second.stderr
            assert first.poll() is None, "the first run ended before the second was refused"
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    rows = _rows(output)
    assert [row["id"] for row in rows] == [f"row{i:05d}" for i in range(2500)]
    # One model and one prior: every row of the same cutout has the same p_qso.
    values = {}
    for number, row in enumerate(rows):
        values.setdefault(number % 8, set()).add(row["p_qso"])
    assert all(len(found) == 1 for found in values.values()), values
    assert json.loads((tmp_path / "p.csv.json").read_text())["prior"] == 0.02
    assert not list(tmp_path.glob(".p.csv*"))


# --------------------------------------------------------------- 5, 7: what --resume checks


def _interrupted(monkeypatch, *args, after_batches=1):
    """A predict interrupted (Ctrl-C) after its first batch(es): the partial file stays."""
    real, calls = starqso.inference.classify._prepare_block, []

    def prepare_block(block, size, *rest):
        calls.append(1)
        if len(calls) > after_batches:
            raise KeyboardInterrupt
        return real(block, size, *rest)

    monkeypatch.setattr(starqso.inference.classify, "_prepare_block", prepare_block)
    result = _predict(*args)
    monkeypatch.setattr(starqso.inference.classify, "_prepare_block", real)
    assert result.exit_code == 130, result.output
    return result


def test_resume_with_strict_checks_the_resumed_rows(survey, good_cube, tmp_path, monkeypatch):
    images = survey / "images"
    blank = _write(tmp_path / "blank.fits", _blank(good_cube))
    catalog = _catalog(tmp_path / "catalog.csv", [
        ("a", str(images / "sim-000000.fits")), ("b", blank),
        ("c", str(images / "sim-000001.fits")), ("d", str(images / "sim-000002.fits"))])
    output = tmp_path / "p.csv"
    _interrupted(monkeypatch, catalog, "--output", output, "--batch-size", "2")
    assert len(_rows(tmp_path / ".p.csv.partial")) == 2
    strict = _predict(catalog, "--output", output, "--batch-size", "2", "--resume", "--strict")
    _one_line_error(strict, "row 2", "id 'b'", "--strict", "no source detected")
    # The partial file stays for a --resume without --strict (issue 36, item 6).
    assert not output.exists() and len(_rows(tmp_path / ".p.csv.partial")) == 2


def test_resume_refuses_a_changed_model_or_catalogue(survey, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    catalog = shutil.copy(_many(survey, "hash.csv", 6), tmp_path / "catalog.csv")
    images = tmp_path / "images"
    shutil.copytree(survey / "images", images)
    output = tmp_path / "p.csv"
    args = ("--output", output, "--batch-size", "2", "--model", model)

    _interrupted(monkeypatch, catalog, *args)
    # Another valid model under the same name (the fp32 export instead of the int8 one),
    # its checksum in metadata.json updated as a re-export would.
    shutil.copy(model / "model_fp32.tflite", model / "model_int8.tflite")
    metadata = json.loads((model / "metadata.json").read_text())
    if "sha256" in metadata:
        metadata["sha256"]["model_int8.tflite"] = metadata["sha256"]["model_fp32.tflite"]
        (model / "metadata.json").write_text(json.dumps(metadata))
    changed = _predict(catalog, *args, "--resume")
    _one_line_error(changed, "another catalogue, model", "model file content (SHA-256)")

    _interrupted(monkeypatch, catalog, *args)
    text = pathlib.Path(catalog).read_text()
    pathlib.Path(catalog).write_text(text.replace("row00005,images/sim-000005",
                                                  "row00005,images/sim-000006"))
    changed = _predict(catalog, *args, "--resume")
    _one_line_error(changed, "catalogue content (SHA-256)")
    assert "model file" not in changed.stderr

    # A folder input: its listing (names, sizes, modification times) is what is hashed.
    _interrupted(monkeypatch, images, *args)
    stat = os.stat(images / "sim-000007.fits")
    os.utime(images / "sim-000007.fits", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = _predict(images, *args, "--resume")
    _one_line_error(changed, "catalogue content (SHA-256)")
    unchanged = _interrupted(monkeypatch, images, *args)
    assert unchanged.exit_code == 130
    resumed = _predict(images, *args, "--resume")
    assert resumed.exit_code == 0 and "resuming after row 2 of 8" in resumed.stderr
    assert len(_rows(output)) == 8


# ------------------------------------------------------------------------- 8: folder mode ids


def test_folder_ids_are_the_names_without_fits_suffixes(good_cube, tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for name in ("obj.a.fits", "obj.b.fits", "y.fit", "z.FTS"):
        _write(folder / name, good_cube)
    fits.PrimaryHDU(good_cube).writeto(folder / "g.fits.gz")
    # Tile-compressed (fpack) cube in the first extension.
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(good_cube)]).writeto(folder / "x.fits.fz")
    (folder / "._obj.fits").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    (folder / ".hidden.fits").write_bytes(b"not a cutout")
    (folder / "notes.txt").write_text("not a cutout")
    assert cutout_id("J1.fits.bz2") == "J1" and cutout_id("J1.fits.xz") == "J1"
    assert cutout_id("fits") is None and cutout_id("a.fits.txt") is None
    result = _predict(folder, "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "p.csv")
    assert [row["id"] for row in rows] == ["g", "obj.a", "obj.b", "x", "y", "z"]
    assert all(row["flag"] == "" and row["p_qso"] for row in rows), rows

    (folder / "obj.a.fits.gz").write_bytes((folder / "g.fits.gz").read_bytes())
    duplicate = _predict(folder, "--output", tmp_path / "d.csv")
    _one_line_error(duplicate, "id 'obj.a'", "obj.a.fits and obj.a.fits.gz")
    assert not (tmp_path / "d.csv").exists()


# ---------------------------------------------------------------- 9: output is the catalogue


def test_output_that_is_the_catalogue_is_refused(survey, tmp_path):
    catalog = shutil.copy(survey / "catalog.csv", tmp_path / "catalog.csv")
    before = pathlib.Path(catalog).read_bytes()
    (tmp_path / "hard.csv").hardlink_to(catalog)
    (tmp_path / "soft.csv").symlink_to(catalog)
    for output in (catalog, tmp_path / "hard.csv", tmp_path / "soft.csv",
                   tmp_path / "." / "catalog.csv"):
        result = _predict(catalog, "--output", output)
        _one_line_error(result, "is the input catalogue", "catalog.csv")
        assert pathlib.Path(catalog).read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "catalog.csv", "hard.csv", "soft.csv"], "nothing written, not even a lock file"


# ------------------------------------------------------- 10: a kill during the first batch


def test_kill_during_the_first_batch_is_resumable(survey, tmp_path):
    catalogue = _many(survey, "first.csv", 1500)
    output = tmp_path / "p.csv"
    partial = tmp_path / ".p.csv.partial"
    command = [sys.executable, str(ROOT / "cli.py"), "predict", str(catalogue), "--runtime",
               "litert", "--batch-size", "1500", "--output", str(output)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, process,
              "predict wrote its header")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert partial.read_bytes() == b"id,p_qso,label,flag,qflag,p_qso_err,p_star,p_galaxy\r\n", \
        "killed in the first batch"
    resumed = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after row 0 of 1500" in resumed.stderr
    assert len(_rows(output)) == 1500 and not partial.exists()


@pytest.mark.parametrize("content", [b"", b"id,p_q"])
def test_partial_without_a_complete_header_starts_afresh(content, survey, tmp_path):
    partial = tmp_path / ".p.csv.partial"
    partial.write_bytes(content)
    partial.with_name(partial.name + ".json").write_text("{\"source\": \"half")
    result = _predict(survey / "catalog.csv", "--output", tmp_path / "p.csv", "--resume")
    assert result.exit_code == 0, result.output
    assert "no complete header line" in result.stderr and "starting afresh" in result.stderr
    assert len(_rows(tmp_path / "p.csv")) == 8
