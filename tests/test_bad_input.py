"""Broken input through the command line: flagged rows or one line on stderr, never a traceback.

Per-row problems (one bad cutout in a catalogue) keep the row, in order, with the reason in
``flag``; ``--strict`` turns them into an error. Whole-input problems (a bad catalogue, config
or model folder) are one line naming the file and what was expected, with exit status 2.
"""

import csv
import json
import shutil
import warnings
import zipfile

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line, rewrite_metadata, simulated_survey

from starqso.cli import main
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.io import read_cutout, write_cutout

CUTOUT = 40  # the shipped model crops 32x32 from it


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 4, seed=11, size=CUTOUT)


@pytest.fixture(scope="module")
def good_cube(survey):
    return read_cutout(survey / "images" / "sim-000000.fits").data


def _one_line_error(result, *fragments):
    cli_error_line(result, *fragments)


def _predictions(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _write_catalog(path, rows):
    path.write_text("\n".join(",".join(row) for row in rows) + "\n", encoding="utf-8")
    return path


def _predict(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args), "--runtime", "litert"])


# --------------------------------------------------------------------------- bad cutouts


def _image(data, **cards):
    def build(path, good):
        hdu = fits.PrimaryHDU(data(good) if callable(data) else data)
        for keyword, value in cards.items():
            hdu.header[keyword] = value
        hdu.writeto(path)
    return build


def _truncated(path, good):
    fits.PrimaryHDU(good).writeto(path)
    path.write_bytes(path.read_bytes()[:4000])


def _with(value, where):
    def change(good):
        cube = good.copy()
        cube[where] = value
        return cube
    return change


# name: (how to write the file, fragment of the flag, classified anyway)
BAD_CUTOUTS = {
    "truncated": (_truncated, "truncated", False),
    "not_fits": (lambda path, good: path.write_text("id,image\n1,a.fits\n"),
                 "not a readable FITS", False),
    "empty": (lambda path, good: path.write_bytes(b""), "empty (0 bytes)", False),
    "missing": (lambda path, good: None, "not found", False),
    "nan_pixels": (_image(_with(np.nan, (slice(None), 6, slice(6, 11)))),
                   "repaired 25 NaN/inf pixels", True),
    "inf_pixels": (_image(_with(np.inf, (2, slice(30, 33), 5))), "repaired 3 NaN/inf", True),
    "nan_at_object": (_image(_with(np.nan, (1, 20, 20))), "at the object", False),
    "all_nan": (_image(_with(np.nan, slice(None))), "NaN/inf pixels", False),
    "all_zero": (_image(np.zeros((5, CUTOUT, CUTOUT), np.float32)), "all zeros", False),
    "3_bands": (_image(lambda good: good[:3]), "shape=(3, 40, 40)", False),
    "6_bands": (_image(lambda good: np.concatenate([good, good[:1]])), "shape=(6, 40, 40)",
                False),
    "2d": (_image(lambda good: good[2]), "2-D shape=(40, 40)", False),
    "channels_last": (_image(lambda good: np.moveaxis(good, 0, -1).copy()), "band axis first",
                      False),
    "too_small": (_image(lambda good: good[:, 10:30, 10:30].copy()), "at least 32x32", False),
    "bunit_counts": (_image(lambda good: good, BUNIT="counts"), "BUNIT='counts'", False),
    "bands_not_ugriz": (_image(lambda good: good, BANDS="grizy"), "BANDS='grizy'", False),
}


@pytest.mark.parametrize("case", sorted(BAD_CUTOUTS))
def test_bad_cutout_is_a_flagged_row_in_place(case, survey, good_cube, tmp_path):
    build, fragment, classified = BAD_CUTOUTS[case]
    bad = tmp_path / f"{case}.fits"
    build(bad, good_cube)
    good = survey / "images" / "sim-000000.fits"
    catalog = _write_catalog(tmp_path / "catalog.csv",
                             [("id", "image"), ("a", str(good)), ("b", bad.name),
                              ("c", str(good))])
    output = tmp_path / "p.csv"
    result = _predict(catalog, "--output", output)
    assert result.exit_code == 0, result.output
    rows = _predictions(output)
    assert [row["id"] for row in rows] == ["a", "b", "c"]
    assert rows[0]["flag"] == rows[2]["flag"] == "" and rows[0]["p_qso"] == rows[2]["p_qso"]
    assert fragment in rows[1]["flag"], rows[1]
    assert (rows[1]["p_qso"] != "") is classified and (rows[1]["label"] != "") is classified
    if classified:
        assert abs(float(rows[1]["p_qso"]) - float(rows[0]["p_qso"])) < 0.2

    # --strict: the same row is an error that names it; no output is written.
    strict_output = tmp_path / "strict.csv"
    strict = _predict(catalog, "--output", strict_output, "--strict")
    _one_line_error(strict, "row 2", "id 'b'", fragment)
    assert not strict_output.exists()
    # The partial file (the batches before the row) stays for --resume (issue 36, item 6).
    assert not list(tmp_path.glob(".strict.csv.lock")), "the lock is released"


# name: (how to write the file) -- recoverable without changing the answer: no flag
RECOVERED_CUTOUTS = {
    "float64_big_endian": _image(lambda good: good.astype(">f8")),
    "bands_reordered": _image(lambda good: good[::-1].copy(), BANDS="zirgu"),
    "bunit_plural": _image(lambda good: good, BUNIT="nanomaggies"),
}


@pytest.mark.parametrize("case", sorted(RECOVERED_CUTOUTS))
def test_recoverable_cutout_gives_the_same_answer_unflagged(case, survey, good_cube, tmp_path):
    path = tmp_path / f"{case}.fits"
    RECOVERED_CUTOUTS[case](path, good_cube)
    good = survey / "images" / "sim-000000.fits"
    catalog = _write_catalog(tmp_path / "catalog.csv",
                             [("id", "image"), ("good", str(good)), ("same", path.name)])
    result = _predict(catalog, "--output", tmp_path / "p.csv", "--strict")
    assert result.exit_code == 0, result.output
    good_row, same_row = _predictions(tmp_path / "p.csv")
    assert same_row["flag"] == "" and same_row["p_qso"] == good_row["p_qso"]


def test_integer_cutouts_are_read_as_float(good_cube, tmp_path):
    scaled = fits.PrimaryHDU(good_cube.copy())
    scaled.scale("int16", bscale=0.01, bzero=0.0)
    scaled.writeto(tmp_path / "int16.fits")
    fits.PrimaryHDU(np.round(good_cube * 100).astype(">i4")).writeto(tmp_path / "int32.fits")
    for name in ("int16.fits", "int32.fits"):
        cutout = read_cutout(tmp_path / name)
        assert cutout.data.dtype == np.float32 and cutout.data.dtype.isnative
    np.testing.assert_allclose(read_cutout(tmp_path / "int16.fits").data, good_cube, atol=0.006)
    catalog = _write_catalog(tmp_path / "catalog.csv",
                             [("id", "image"), ("a", "int16.fits"), ("b", "int32.fits")])
    result = _predict(catalog, "--output", tmp_path / "p.csv", "--strict")
    assert result.exit_code == 0, result.output
    assert all(0 <= float(row["p_qso"]) <= 1 for row in _predictions(tmp_path / "p.csv"))


# ----------------------------------------------------------------------- bad catalogues


def _catalog_file(case, folder, image):
    texts = {
        "empty_file": "",
        "header_only": "id,image\n",
        "no_id_column": f"name,image\nx,{image}\n",
        "no_image_column": "id,label\nx,STAR\n",
        "duplicate_ids": f"id,image,label\nx,{image},STAR\ny,{image},QSO\nx,{image},STAR\n",
    }
    if case == "missing":
        return folder / "missing.csv"
    if case == "unknown_extension":
        path = folder / "catalog.txt"
        path.write_text(f"id,image\nx,{image}\n")
        return path
    path = folder / f"{case}.csv"
    path.write_text(texts[case])
    return path


BAD_CATALOGUES = {
    "missing": "not found",
    "empty_file": "empty (0 bytes)",
    "header_only": "has no rows",
    "no_id_column": "must have column(s) id",
    "no_image_column": "must have column(s) image",
    "duplicate_ids": "id 'x' in rows 1, 3",
    "unknown_extension": "must end in .csv",
}


@pytest.mark.parametrize("command", ["predict", "fit", "evaluate"])
@pytest.mark.parametrize("case", sorted(BAD_CATALOGUES))
def test_bad_catalogue_is_one_line_naming_the_file(case, command, survey, tmp_path):
    image = survey / "images" / "sim-000000.fits"
    path = _catalog_file(case, tmp_path, image)
    fragment = BAD_CATALOGUES[case]
    if command == "predict":
        result = _predict(path, "--output", tmp_path / "p.csv")
    elif command == "fit":
        result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--data", str(path),
                                           "--out", str(tmp_path / "run")])
        assert not (tmp_path / "run").exists()
    else:
        # The catalogue as the truth of evaluate; it needs label where predict needs image.
        if case == "no_image_column":
            path.write_text("id,image\nx,a.fits\n")
            fragment = "must have column(s) label"
        predictions = _write_catalog(tmp_path / "pred.csv", [("id", "p_qso"), ("x", "0.3")])
        result = CliRunner().invoke(main, ["evaluate", str(predictions), "--truth", str(path),
                                           "--out", str(tmp_path / "evaluation")])
    _one_line_error(result, path.name, fragment)


def test_blank_and_unusual_paths(survey, tmp_path):
    folder = tmp_path / "cut outs ünï"
    folder.mkdir()
    unusual = folder / "obj 1 ✓.fits"
    shutil.copy(survey / "images" / "sim-000001.fits", unusual)
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("id", "image"), ("spaces", f"{folder.name}/{unusual.name}"),
                                      ("blank", ""), ("last", str(unusual))])
    result = _predict(catalog, "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    rows = _predictions(tmp_path / "p.csv")
    assert [row["id"] for row in rows] == ["spaces", "blank", "last"]
    assert rows[0]["flag"] == "" and rows[0]["p_qso"] == rows[2]["p_qso"] != ""
    assert "blank" in rows[1]["flag"] and rows[1]["p_qso"] == ""


# ---------------------------------------------------------------- fit --data rows, spectra


def _spectrum_variant(survey, tmp_path, name, change):
    with fits.open(survey / "spectra" / "sim-000000.fits") as hdulist:
        loglam = np.array(hdulist["COADD"].data["loglam"], dtype=np.float64)
        hdulist["COADD"].data["loglam"] = change(loglam)
        hdulist.writeto(tmp_path / name)
    return tmp_path / name


SPECTRUM_CASES = {
    # 10,000-11,000 A: no pixel inside the encoder's 3700-9100 A
    "no_valid_pixel": (lambda loglam: np.log10(np.linspace(10000, 11000, loglam.size)),
                       "no valid pixel in 3700-9100"),
    "non_monotonic": (lambda loglam: np.where(np.arange(loglam.size) == 100, loglam[90],
                                              loglam),
                      "not strictly increasing"),
}


@pytest.mark.parametrize("case", sorted(SPECTRUM_CASES))
def test_bad_spectrum_in_fit_data_is_named_with_strict(case, survey, tmp_path):
    change, fragment = SPECTRUM_CASES[case]
    spectrum = _spectrum_variant(survey, tmp_path, f"{case}.fits", change)
    catalog = _write_catalog(tmp_path / "catalog.csv", [
        ("id", "image", "spectrum", "label"),
        ("a", str(survey / "images" / "sim-000000.fits"), str(spectrum), "STAR"),
    ])
    result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--data", str(catalog),
                                       "--out", str(tmp_path / "run"), "--strict"])
    _one_line_error(result, "row 1", "id 'a'", spectrum.name, fragment)
    assert not (tmp_path / "run").exists()


def test_bad_cutout_in_fit_data_with_strict_names_the_row(survey, tmp_path):
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =                    T")
    catalog = _write_catalog(tmp_path / "catalog.csv", [
        ("id", "image", "label"),
        ("a", str(survey / "images" / "sim-000000.fits"), "STAR"),
        ("b", "broken.fits", "QSO"),
    ])
    result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--data", str(catalog),
                                       "--out", str(tmp_path / "run"), "--strict"])
    _one_line_error(result, "row 2", "id 'b'", "broken.fits")


# ------------------------------------------------------------------------ bad evaluate input


def test_bad_predictions_for_evaluate(tmp_path):
    truth = _write_catalog(tmp_path / "truth.csv", [("id", "label"), ("x", "QSO"),
                                                    ("y", "STAR")])
    cases = {
        "missing.csv": (None, "not found"),
        "empty.csv": ("", "empty (0 bytes)"),
        "text.csv": ("id,p_qso\nx,high\ny,0.2\n", "'high'"),
        "range.csv": ("id,p_qso\nx,2.0\ny,0.2\n", "2.0"),
    }
    for name, (text, fragment) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        result = CliRunner().invoke(main, ["evaluate", str(tmp_path / name), "--truth",
                                           str(truth), "--out", str(tmp_path / "ev")])
        _one_line_error(result, name, fragment)
    partial = _write_catalog(tmp_path / "partial.csv", [("id", "p_qso"), ("x", "0.9")])
    lenient = CliRunner().invoke(main, ["evaluate", str(partial), "--truth", str(truth),
                                        "--out", str(tmp_path / "ev")])
    assert lenient.exit_code == 0 and "missing from predictions: 1 (ids: y)" in lenient.output
    strict = CliRunner().invoke(main, ["evaluate", str(partial), "--truth", str(truth),
                                       "--out", str(tmp_path / "ev2"), "--strict"])
    _one_line_error(strict, "1 missing row(s)", "first ids y")


# ------------------------------------------------------------------------------ bad config


@pytest.mark.parametrize("text, fragment", [
    ("training:\n  encoder_epochz: 3\n", "encoder_epochz"),
    ("training:\n  batch_size: lots\n", "batch_size"),
    ("model: [1, 2]\n", "model"),
])
def test_bad_config_yaml(text, fragment, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out",
                                       str(tmp_path / "run")])
    _one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ bad model folders


def _model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    return folder




def _edit_keras_config(folder, edit):
    path = folder / "starqso_classifier.keras"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)


def _foreign_class(config):
    config["module"] = "evil.payload"
    config["registered_name"] = "evil>Payload"


BAD_MODEL_FOLDERS = {
    "no_metadata": (lambda f: (f / "metadata.json").unlink(), "keras",
                    "must hold metadata.json"),
    "no_tflite": (lambda f: (f / "model_int8.tflite").unlink(), "litert",
                  "no model_int8.tflite"),
    "no_keras": (lambda f: (f / "starqso_classifier.keras").unlink(), "keras",
                 "no starqso_classifier.keras"),
    "newer_format": (lambda f: rewrite_metadata(f, format_version=99), "litert",
                     "format 99"),
    "other_bands": (lambda f: rewrite_metadata(f, bands="grizy"), "litert", "bands='ugriz'"),
    "not_tflite": (lambda f: (f / "model_int8.tflite").write_bytes(b"0" * 64), "litert",
                   "not a TFLite model"),
    "truncated_keras": (lambda f: (f / "starqso_classifier.keras").write_bytes(
        (f / "starqso_classifier.keras").read_bytes()[:500]), "keras",
        "not a readable .keras archive"),
    "foreign_class": (lambda f: _edit_keras_config(f, _foreign_class), "keras",
                      "module evil.payload"),
    "prior_out_of_range": (lambda f: rewrite_metadata(f, training_qso_fraction=0.3,
                                                       default_prior=1.5), "litert",
                           "default_prior=1.5"),
    "prior_not_a_number": (lambda f: rewrite_metadata(f, training_qso_fraction=0.3,
                                                       default_prior="sky"), "litert",
                           "default_prior='sky'"),
    "training_fraction_zero": (lambda f: rewrite_metadata(f, training_qso_fraction=0),
                               "litert", "training_qso_fraction=0"),
    "prior_without_training_fraction": (lambda f: rewrite_metadata(
        f, default_prior=0.02, training_qso_fraction=None),
                                        "litert", "no training_qso_fraction"),
    "negative_temperature": (lambda f: rewrite_metadata(f, temperature=-1.0), "keras",
                             "temperature=-1.0"),
    "threshold_above_one": (lambda f: rewrite_metadata(f, threshold=1.2), "litert",
                            "threshold=1.2"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FOLDERS))
def test_bad_model_folder_is_refused_before_tensorflow_work(case, survey, tmp_path,
                                                            monkeypatch):
    import starqso.deploy.folder

    damage, runtime, fragment = BAD_MODEL_FOLDERS[case]
    folder = _model_copy(tmp_path)
    damage(folder)

    def no_keras_loading(path):
        raise AssertionError("keras loading was reached before the folder was checked")

    monkeypatch.setattr(starqso.deploy.folder, "load_keras_model", no_keras_loading)
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--model", str(folder), "--runtime", runtime,
        "--output", str(tmp_path / "p.csv")])
    _one_line_error(result, fragment)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("prior", ["0", "1", "-1", "abc", "1.5", "nan"])
@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_bad_prior_is_one_line(prior, runtime, survey, tmp_path):
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--prior", prior, "--runtime", runtime,
        "--output", str(tmp_path / "p.csv")])
    _one_line_error(result, "--prior must be", "strictly between 0 and 1", repr(prior))
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.json").exists()


@pytest.mark.parametrize("prior, fragments", [
    ("GALAXY=0.6", ("names class GALAXY, which the model does not tell apart", "STAR, QSO")),
    ("QSO=0.02,GALAXY=0.6", ("names class GALAXY",)),
    ("STAR=0.9", ("names class STAR, which takes the rest",)),
    ("QSO=-0.1", ("gives class QSO the fraction -0.1", "strictly between 0 and 1")),
    ("QSO=0.6,QSO=0.5", ("names class QSO twice",)),
    ("QSO=0.6,GALAXY=0.5", ("fractions sum to 1.1", "less than 1")),
    ("QSO=abc", ("NAME=F pairs",)),
    ("=0.2", ("NAME=F pairs",)),
])
def test_bad_prior_by_class_name_is_one_line(prior, fragments, survey, tmp_path):
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--prior", prior, "--runtime", "litert",
        "--output", str(tmp_path / "p.csv")])
    _one_line_error(result, *fragments)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.json").exists()


def _lambda_model_file(path):
    import keras

    inputs = keras.Input((32, 32, 5), name="image")
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2, 3)))(inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__array__.*", category=DeprecationWarning)
        keras.Model(inputs, outputs).save(path)


def test_lambda_layer_is_refused_by_the_check_and_by_keras_safe_mode(survey, tmp_path,
                                                                       monkeypatch):
    import starqso.deploy.folder
    from starqso.deploy.folder import load_keras_model

    folder = _model_copy(tmp_path)
    _lambda_model_file(folder / "starqso_classifier.keras")
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--model", str(folder), "--runtime", "keras",
        "--output", str(tmp_path / "p.csv")])
    _one_line_error(result, "Lambda", "safe mode")
    # A plain Keras model (built-in layers and activation functions) passes the check.
    import keras

    from starqso.deploy.folder import check_keras_file

    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, activation=keras.activations.gelu)(inputs))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__array__.*", category=DeprecationWarning)
        plain.save(tmp_path / "plain.keras")
    assert check_keras_file(tmp_path / "plain.keras")["keras_version"].startswith("3.")
    # Second line of defence: without starqso's own check, Keras' safe mode still refuses.
    monkeypatch.setattr(starqso.deploy.folder, "check_keras_file", lambda path: {})
    with pytest.raises(InputError, match="could not be loaded safely.*[Ll]ambda"):
        load_keras_model(folder / "starqso_classifier.keras")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "predict", str(tmp_path / "nope.csv")])
    assert isinstance(result.exception, InputError) and "not found" in str(result.exception)


def test_unexpected_errors_are_one_line_too(tmp_path, monkeypatch):
    import starqso.inference

    def broken(*args, **kwargs):
        raise RuntimeError("something deep\nwent wrong")

    monkeypatch.setattr(starqso.inference, "predict_catalog", broken)
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "x.csv")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "starqso: internal error: RuntimeError: something deep went wrong (rerun with "
        "`starqso --debug ...` for the traceback and please report it)"]


def test_write_cutout_refuses_what_read_cutout_would_flag(tmp_path):
    with pytest.raises(InputError, match="shape=\\(6, 8, 8\\)"):
        write_cutout(tmp_path / "six.fits", np.zeros((6, 8, 8), np.float32))
