import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from starqso.cli import main
from starqso.config import get_preset
from starqso.io import read_catalog, write_catalog, write_cutout
from starqso.simulate import simulate_survey
from starqso.training import fit_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    fit_run(out, get_preset("tiny"), log=lambda line: None)
    return out


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
    export = run / "export"
    for name in ("saved_model/saved_model.pb", "model_fp32.tflite", "model_fp16.tflite",
                 "model_int8.tflite", "starqso_classifier.keras", "metadata.json",
                 "model_card.md", "export_check.json"):
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
    assert "20 rows" in result.output and "2 flagged" in result.output
    rows = list(csv.DictReader(output.open()))
    assert [row["id"] for row in rows] == list(read_catalog(catalogue)["id"])
    assert rows[3]["flag"] and rows[3]["p_qso"] == "" and rows[3]["label"] == ""
    assert "at least 24x24" in rows[5]["flag"]
    good = [row for i, row in enumerate(rows) if i not in (3, 5)]
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
