import csv
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from starqso.cli import main
from starqso.io import read_catalog, write_catalog, write_cutout
from starqso.simulate import simulate_survey

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_run):
    # The shared tiny run: its CNNs see the central 16 of the 24 pixels (conftest.py).
    return tiny_run.path


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    path = simulate_survey(tmp_path_factory.mktemp("sim") / "sim", 20, seed=8, size=24,
                           workers=1).catalog
    table = read_catalog(path)
    # Row 3 points at a missing file, row 5 at a cutout smaller than the model input.
    table["image"][3] = "images/missing.fits"
    write_cutout(path.parent / "images" / "small.fits", np.ones((5, 8, 8), "float32"))
    table["image"][5] = "images/small.fits"
    mixed = path.parent / "mixed.csv"
    write_catalog(table, mixed)
    return mixed


def test_fit_exports_every_format_with_checks(run):
    # Every model file's SHA-256 is in metadata.json (predict checks the one it loads).
    from starqso.deploy.folder import file_sha256

    metadata = json.loads((run / "export" / "metadata.json").read_text())
    assert set(metadata["sha256"]) == {"starqso_classifier.keras", "model_fp32.tflite",
                                       "model_fp16.tflite", "model_int8.tflite",
                                       "embedding_reference.npz"}
    for name, digest in metadata["sha256"].items():
        assert file_sha256(run / "export" / name) == digest
    export = run / "export"
    for name in ("saved_model/saved_model.pb", "model_fp32.tflite", "model_fp16.tflite",
                 "model_int8.tflite", "starqso_classifier.keras", "metadata.json",
                 "model_card.md", "export_check.json", "embedding_reference.npz"):
        assert (export / name).exists(), name
    checks = json.loads((export / "export_check.json").read_text())
    assert checks["saved_model"]["max_abs_diff"] < 1e-5
    assert checks["model_fp32.tflite"]["max_abs_diff"] < 1e-4
    assert checks["model_fp16.tflite"]["max_abs_diff"] < 0.05
    assert checks["model_fp16.tflite"]["label_agreement"] >= 0.95
    assert checks["model_int8.tflite"]["max_abs_diff"] < 0.2
    assert checks["model_int8.tflite"]["label_agreement"] >= 0.9
    metadata = json.loads((export / "metadata.json").read_text())
    assert metadata["input_shape"] == [None, 24, 24, 5]
    assert metadata["units"] == "nanomaggy" and metadata["class_names"] == ["STAR", "QSO"]


def test_int8_model_uses_builtin_ops_only_and_keeps_the_stretch_float(run):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(run / "export" / "model_int8.tflite"))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("FlexDelegate") or "Flex" in name for name in ops)
    assert {"CONV_2D", "QUANTIZE", "LOG"} <= ops
    # The aperture photometry works on raw nanomaggies: its sky median and sums stay float.
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    photometry_ops = [op for op in interpreter._get_ops_details()
                      if op["op_name"] in ("TOPK_V2", "SUM", "GATHER")]
    assert {op["op_name"] for op in photometry_ops} == {"TOPK_V2", "SUM", "GATHER"}
    assert all(tensors[op["inputs"][0]]["dtype"] == np.float32 for op in photometry_ops)
    # The photometry branches' first dense layers (export.FLOAT_LAYERS) stay float too.
    dense = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"
             and "photometry_dense0" in tensors[op["outputs"][0]]["name"]]
    assert len(dense) == 2
    assert all(tensors[op["outputs"][0]]["dtype"] == np.float32 for op in dense)
    # So does the photometry's aperture-sum matmul, and nothing else of the network's.
    matmuls = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"
               and re.search(r"/photometry(_\d+)?/", tensors[op["outputs"][0]]["name"])
               and "photometry_dense0" not in tensors[op["outputs"][0]]["name"]]
    assert len(matmuls) == 1
    assert tensors[matmuls[0]["inputs"][0]]["dtype"] == np.float32
    assert tensors[matmuls[0]["outputs"][0]]["dtype"] == np.float32
    quantised = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"
                 and tensors[op["outputs"][0]]["dtype"] == np.int8]
    assert quantised  # the trunks' and heads' dense layers stay int8
    # The scaling's per-band standardisation (a 1 x 1 CONV_2D) stays float; the trunks' convs
    # are int8.
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    scaling = [op for op in convs if "/cutout_scaling" in tensors[op["outputs"][0]]["name"]]
    assert len(scaling) == 1
    assert tensors[scaling[0]["outputs"][0]]["dtype"] == np.float32
    assert all(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs
               if op not in scaling)


def test_saved_model_loads_without_starqso(run):
    code = (
        "import sys, numpy as np, tensorflow as tf, keras\n"
        f"path = {str(run / 'export' / 'saved_model')!r}\n"
        "x = np.abs(np.random.default_rng(0).normal(0, 1, (3, 24, 24, 5))).astype('float32')\n"
        "served = tf.saved_model.load(path).signatures['serving_default']\n"
        "p = served(image=tf.constant(x))['p_qso'].numpy()\n"
        "layer = keras.layers.TFSMLayer(path, call_endpoint='serving_default')\n"
        "q = layer(x)['p_qso'].numpy()\n"
        "assert p.shape == (3, 1) and np.allclose(p, q)\n"
        "assert not any(name.startswith('starqso') for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_predict_keeps_every_row_in_order_and_flags_bad_ones(run, catalogue, runtime, tmp_path):
    output = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", str(catalogue), "--model",
                                       str(run / "export"), "--output", str(output),
                                       "--runtime", runtime, "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    # Rows 3 and 5 are broken files; row 2 is a simulated object too faint to be detected
    # (r-band S/N below 1), which predict flags rather than classifies.
    assert "20 rows" in result.output and "3 flagged" in result.output
    rows = list(csv.DictReader(output.open()))
    assert [row["id"] for row in rows] == list(read_catalog(catalogue)["id"])
    assert rows[3]["flag"] and rows[3]["p_qso"] == "" and rows[3]["label"] == ""
    assert "at least 24x24" in rows[5]["flag"]
    assert "no source detected" in rows[2]["flag"] and rows[2]["p_qso"] == ""
    good = [row for i, row in enumerate(rows) if i not in (2, 3, 5)]
    assert all(0 <= float(row["p_qso"]) <= 1 and row["label"] in ("STAR", "QSO")
               for row in good)


def test_keras_and_litert_agree_and_fits_output(run, catalogue, tmp_path):
    from astropy.table import Table

    outputs = {}
    for runtime, name in (("keras", "k.fits"), ("litert", "l.csv")):
        CliRunner().invoke(main, ["predict", str(catalogue), "--model", str(run / "export"),
                                  "--output", str(tmp_path / name), "--runtime", runtime])
    keras_p = np.array(Table.read(tmp_path / "k.fits")["p_qso"], float)
    litert_p = np.array([float(r["p_qso"]) if r["p_qso"] else np.nan
                         for r in csv.DictReader((tmp_path / "l.csv").open())])
    outputs = np.isfinite(keras_p)
    assert np.array_equal(outputs, np.isfinite(litert_p))
    assert np.nanmax(np.abs(keras_p - litert_p)) < 0.2


def test_litert_prediction_never_imports_tensorflow(run, catalogue, tmp_path):
    code = (
        "import sys\n"
        "from starqso.inference import predict_catalog\n"
        f"summary = predict_catalog({str(catalogue)!r}, {str(tmp_path / 'p.csv')!r}, "
        f"model_dir={str(run / 'export')!r}, runtime='litert')\n"
        "assert summary['rows'] == 20, summary\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_predict_bad_model_folder_is_one_line(tmp_path, catalogue):
    result = CliRunner().invoke(main, ["predict", str(catalogue), "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("starqso: error: model folder must hold")
    assert len(result.output.strip().splitlines()) == 1


def test_predict_uses_the_shipped_model_by_default(catalogue, tmp_path, monkeypatch):
    from starqso.inference import default_model_dir

    shipped = default_model_dir()
    for name in ("metadata.json", "starqso_classifier.keras", "model_int8.tflite"):
        assert (shipped / name).exists(), name
    monkeypatch.chdir(tmp_path)  # any working directory
    result = CliRunner().invoke(main, ["predict", str(catalogue), "--runtime", "litert",
                                       "--output", "out.fits"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.fits").exists() and "20 rows" in result.output


# ------------------------------------------------------- calibration, prior, threshold, TTA


def _p_column(path):
    return np.array([float(row["p_qso"]) if row["p_qso"] else np.nan
                     for row in csv.DictReader(pathlib.Path(path).open())])


def _predict(catalogue, model, output, *options):
    result = CliRunner().invoke(main, ["predict", str(catalogue), "--model", str(model),
                                       "--output", str(output), *map(str, options)])
    assert result.exit_code == 0, result.output
    return result


def test_export_calibrates_on_the_validation_split_and_records_it(run):
    from starqso.deploy.calibration import choose_threshold, fit_temperature
    from starqso.deploy.export import split_objects
    from starqso.deploy.folder import load_keras_model
    from starqso.models import CalibratedClassifier, StarQSOClassifier
    from starqso.probability import calibrate
    from starqso.training.run_folder import RunFolder

    export = run / "export"
    metadata = json.loads((export / "metadata.json").read_text())
    assert metadata["default_prior"] == 0.02
    temperature, threshold = metadata["temperature"], metadata["threshold"]
    assert 0.05 <= temperature <= 20 and 0.05 <= threshold <= 0.95
    folder = RunFolder(run)
    objects = split_objects(folder, folder.load_config(), 48, 16)
    # The run keeps its own model uncalibrated; the export's is the calibrated wrapper.
    raw_model = load_keras_model(folder.deployable_path)
    calibrated_model = load_keras_model(export / "starqso_classifier.keras")
    assert type(raw_model) is StarQSOClassifier
    assert type(calibrated_model) is CalibratedClassifier
    assert calibrated_model.temperature == temperature
    # The metric head the export attaches leaves the blended photometry head in place.
    assert (run / "metric_head.keras").is_file()
    assert calibrated_model.classifier.metric_head is not None
    assert calibrated_model.classifier.head_weight == raw_model.head_weight
    assert (calibrated_model.classifier.photometry_head is None) == (
        raw_model.photometry_head is None)
    validation = objects["validation"]
    known = validation.labels >= 0
    raw = np.asarray(raw_model.predict({"image": validation.images[known]}, verbose=0)).ravel()
    calibrated = np.asarray(calibrated_model.predict({"image": validation.images[known]},
                                                     verbose=0)).ravel()
    np.testing.assert_allclose(calibrated, calibrate(raw, temperature), atol=2e-6)
    labels = validation.labels[known]
    assert temperature == pytest.approx(fit_temperature(labels, raw), rel=1e-4)
    assert threshold == choose_threshold(labels, calibrate(raw, temperature))[0]
    train = objects["train"].labels
    assert metadata["training_qso_fraction"] == pytest.approx(np.mean(train[train >= 0] == 1))
    checks = json.loads((export / "export_check.json").read_text())["calibration"]
    assert checks["temperature"] == temperature and checks["threshold"] == threshold
    assert checks["fitted_on"] == {"split": "validation", "objects": int(known.sum()),
                                   "qso_fraction": pytest.approx(labels.mean())}
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert 0 <= checks["validation"][key] < 10
    # T minimises the NLL on the objects it was fitted on.
    assert checks["validation"]["nll_after"] <= checks["validation"]["nll_before"] + 1e-9
    card = (export / "model_card.md").read_text()
    assert "## Calibration and decision threshold" in card and "ECE before" in card
    assert f"Threshold {threshold:.2f}" in card
    # The card names the PSF-weighted photometry and the photometry head's blend weight.
    weight = json.loads((run / "metrics.json").read_text())["fusion"].get("head_weight")
    assert 'PSF-weighted colours and r at FWHM 0.9", 1.5", 2.4"' in card
    if weight is None:  # the blend chose the fusion classifier alone
        assert "on the head" not in card
    else:
        assert f"weight {weight:g} on the head" in card


def test_prior_correction_and_the_side_car(run, catalogue, tmp_path):
    from starqso.inference import apply_prior

    export = run / "export"
    metadata = json.loads((export / "metadata.json").read_text())
    training = metadata["training_qso_fraction"]
    default = _predict(catalogue, export, tmp_path / "default.csv")
    assert "20 rows" in default.output and ", prior 0.02, " in default.output
    train = _predict(catalogue, export, tmp_path / "train.csv", "--prior", "train")
    assert f"prior train ({training:g})" in train.output
    _predict(catalogue, export, tmp_path / "same.csv", "--prior", repr(training))
    _predict(catalogue, export, tmp_path / "low.csv", "--prior", "0.001")
    # The prior by class name is the same prior.
    _predict(catalogue, export, tmp_path / "named.csv", "--prior", "QSO=0.001")
    assert (tmp_path / "named.csv").read_bytes() == (tmp_path / "low.csv").read_bytes()
    p_train = _p_column(tmp_path / "train.csv")
    p_default, p_low = _p_column(tmp_path / "default.csv"), _p_column(tmp_path / "low.csv")
    # The training fraction as the prior changes nothing.
    assert (tmp_path / "same.csv").read_bytes() == (tmp_path / "train.csv").read_bytes()
    good = np.isfinite(p_train)
    assert good.sum() == 17  # 20 rows: two broken files and one undetected (faint) source
    # A lower prior lowers every p (strictly, where 6 decimals can show it).
    assert np.all(p_low[good] <= p_default[good]) and np.all(p_default[good] <= p_train[good])
    visible = good & (p_train > 1e-3)
    assert visible.any() and np.all(p_low[visible] < p_train[visible])
    shift = np.log(0.02 / 0.98) - np.log(training / (1 - training))
    np.testing.assert_allclose(p_default[good], apply_prior(p_train[good], shift), atol=2e-6)
    # The threshold applies to p under the chosen prior.
    for row in csv.DictReader((tmp_path / "default.csv").open()):
        if row["p_qso"]:
            assert row["label"] == ("QSO" if float(row["p_qso"]) >= metadata["threshold"]
                                    else "STAR")
    record = json.loads((tmp_path / "default.csv.json").read_text())
    assert record["prior"] == 0.02 and record["prior_source"] == "default"
    assert record["threshold"] == metadata["threshold"]
    assert record["temperature"] == metadata["temperature"]
    assert record["training_qso_fraction"] == training
    assert record["runtime"] == "keras" and record["tta"] is False and record["rows"] == 20
    assert record["model"] == str(export.resolve())
    assert json.loads((tmp_path / "train.csv.json").read_text())["prior"] == training
    assert not list(tmp_path.glob(".*partial*"))


def test_fits_output_header_and_tta_on_both_runtimes(run, catalogue, tmp_path):
    from astropy.table import Table

    export = run / "export"
    metadata = json.loads((export / "metadata.json").read_text())
    results = {}
    for runtime in ("keras", "litert"):
        for tta in (False, True):
            name = f"{runtime}{'-tta' if tta else ''}.fits"
            result = _predict(catalogue, export, tmp_path / name, "--runtime", runtime,
                              "--prior", "0.1", *(["--tta"] if tta else []))
            assert "prior 0.1," in result.output
            table = Table.read(tmp_path / name)
            assert table.meta["PRIOR"] == 0.1 and table.meta["PRIORSRC"] == "user"
            assert table.meta["THRESH"] == metadata["threshold"]
            assert table.meta["TEMPER"] == metadata["temperature"]
            assert table.meta["TRNFRAC"] == metadata["training_qso_fraction"]
            assert table.meta["TTA"] is tta and table.meta["RUNTIME"] == runtime
            assert list(table["id"]) == list(read_catalog(catalogue)["id"])
            assert not (tmp_path / f"{name}.json").exists()
            results[runtime, tta] = np.array(table["p_qso"], float)
    for runtime in ("keras", "litert"):
        plain, averaged = results[runtime, False], results[runtime, True]
        assert np.array_equal(np.isfinite(plain), np.isfinite(averaged))
        assert np.nanmax(np.abs(plain - averaged)) < 0.05
        assert np.all((averaged[np.isfinite(averaged)] >= 0) & (averaged[np.isfinite(averaged)]
                                                                 <= 1))
    # Real cutouts are not symmetric: the eight views do not all agree. (The tiny model's
    # calibrated p hardly varies, so the differences are small; the int8 model's steps of
    # 1/256 hide most of them, so only Keras is held to it.)
    assert np.sum(np.abs(results["keras", False] - results["keras", True]) > 1e-6) >= 5


def test_model_folder_without_calibration_keys_still_predicts(run, catalogue, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run / "export", old)
    metadata = json.loads((old / "metadata.json").read_text())
    for key in ("temperature", "training_qso_fraction", "default_prior"):
        metadata.pop(key)
    metadata["threshold"] = 0.5
    (old / "metadata.json").write_text(json.dumps(metadata))
    # No training fraction: no correction by default, p_qso is the model's own.
    result = _predict(catalogue, old, tmp_path / "old.csv")
    assert "prior train," in result.output
    _predict(catalogue, run / "export", tmp_path / "new.csv", "--prior", "train")
    np.testing.assert_array_equal(_p_column(tmp_path / "old.csv"),
                                  _p_column(tmp_path / "new.csv"))
    record = json.loads((tmp_path / "old.csv.json").read_text())
    assert record["prior"] is None and record["prior_source"] == "train"
    assert record["temperature"] is None and record["training_qso_fraction"] is None
    # A prior given for it is applied from the assumed 0.30, and says so.
    given = _predict(catalogue, old, tmp_path / "given.csv", "--prior", "0.3")
    assert "assumed training fraction of 0.3" in given.stderr
    np.testing.assert_array_equal(_p_column(tmp_path / "given.csv"),
                                  _p_column(tmp_path / "old.csv"))
    assert json.loads((tmp_path / "given.csv.json").read_text())[
        "training_qso_fraction_assumed"] is True
