"""The method's variants end to end: the diffusion generator and the other image trunks train
with ``fit`` (a trunk also under MirroredStrategy), resume, export (fp32/int8 with the
agreement check; slow for the diffusion/hybrid variant) and predict, with tiny configs."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import starqso.models  # noqa: F401 - registers the model classes for loading
from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
# No input noise on the photometry head: with it the tiny run's blend weight (fitted on 24
# validation objects) lands on 1, the head alone, which leaves the hybrid trunk out of the graph.
VARIANT_YAML = ("preset: tiny\nmodel:\n  generator: diffusion\n  trunk: hybrid\n"
                "  metric_loss: proxy_nca\n  photometry_noise: 0.0\n")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from starqso.simulate import simulate_survey

    return simulate_survey(tmp_path_factory.mktemp("survey") / "sim", 12, seed=5, size=24,
                           workers=1).catalog


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory):
    """The diffusion generator on the hybrid trunk, trained by ``starqso fit --no-export``."""
    folder = tmp_path_factory.mktemp("variant")
    (folder / "variant.yaml").write_text(VARIANT_YAML)
    result = CliRunner().invoke(main, ["fit", "--config", str(folder / "variant.yaml"),
                                       "--no-export", "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder / "run", result.stdout


@pytest.fixture(scope="module")
def variant_export(variant_run):
    """The variant run exported by ``starqso export`` (its TFLite conversions take 20-30 s)."""
    run, _ = variant_run
    result = CliRunner().invoke(main, ["export", str(run)])
    assert result.exit_code == 0, result.output
    return run / "export"


def test_hybrid_trunk_classifier_trains_under_a_two_replica_mirrored_strategy():
    from starqso.models import ImageClassifier

    # Two replicas on conftest's two logical CPUs.
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    # ReductionToOneDevice, not the default collectives: collective ops of one 2-replica
    # MirroredStrategy leave state behind (instance keys bound to the first model's
    # gradient shapes) that breaks any later one in the same pytest process.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (8, 16, 16, 5)).astype("float32")
    labels = rng.integers(0, 2, (8, 1)).astype("float32")
    with strategy.scope():
        model = ImageClassifier(16, (8, 16), 8, 0.0, trunk="hybrid")
        model.compile(learning_rate=1e-3)
    before = [w.copy() for w in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices(({"image": images}, labels)).batch(8)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=False))


def test_fit_trains_the_diffusion_stage_on_the_hybrid_trunk(variant_run):
    run, output = variant_run
    for stage in ("encoder", "diffusion", "photometry_head", "fusion", "metric", "image"):
        assert f"[{stage}]" in output
    assert "[gan]" not in output
    assert json.loads((run / "state.json").read_text())["completed"] == [
        "encoder", "diffusion", "photometry_head", "fusion", "metric", "image"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["diffusion"]["reconstruction_mse"])
    deployable = keras.saving.load_model(run / "starqso_classifier.keras", safe_mode=True)
    from starqso.models.diffusion import DiffusionGenerator

    assert isinstance(deployable.generator, DiffusionGenerator)
    assert deployable.generator.trunk == "hybrid" and deployable.fusion.trunk == "hybrid"
    assert any("relative_self_attention" in layer.name or "attention" in layer.name
               for layer in deployable.fusion._flatten_layers())


@pytest.mark.slow  # the hybrid trunk's three TFLite conversions and their checks: 20-30 s
def test_the_variant_exports_with_the_agreement_check_and_predicts(variant_export, survey,
                                                                   tmp_path):
    card = (variant_export / "model_card.md").read_text()
    assert "diffusion generator" in card and "`hybrid` image trunk" in card
    checks = json.loads((variant_export / "export_check.json").read_text())
    assert checks["model_fp32.tflite"]["max_abs_diff"] < 1e-4
    assert checks["model_int8.tflite"]["label_agreement"] >= 0.9
    from ai_edge_litert.interpreter import Interpreter

    ops = {op["op_name"] for op in Interpreter(
        model_path=str(variant_export / "model_int8.tflite"))._get_ops_details()}
    assert not any("Flex" in name for name in ops) and "BATCH_MATMUL" in ops
    for runtime in ("keras", "litert"):
        out = tmp_path / f"{runtime}.csv"
        result = CliRunner().invoke(main, ["predict", str(survey), "--model",
                                           str(variant_export), "--runtime", runtime,
                                           "--output", str(out)])
        assert result.exit_code == 0, result.output
        with open(out, newline="") as stream:
            rows = list(csv.DictReader(stream))
        assert len(rows) == 12
        p_qso = np.array([float(row["p_qso"]) for row in rows])
        assert np.all((p_qso >= 0) & (p_qso <= 1))
    # The Proxy-NCA head embeds with the sampler.
    result = CliRunner().invoke(main, ["embed", str(survey), "--model", str(variant_export),
                                       "--output", str(tmp_path / "emb.parquet")])
    assert result.exit_code == 0, result.output
    assert "12 rows, 12 embedded" in result.stdout and "metric (32)" in result.stdout


# The encoder and diffusion stages alone (no fusion, image or export): the stage being
# resumed is what this checks, and the rest would only add a minute to the test run.
RESUMED_FIT = """
import sys
from starqso.config import config_from_dict
from starqso.training import fit_run
from starqso.training.stages import default_stages

config = config_from_dict({"preset": "tiny", "model": {"generator": "diffusion"},
                           "training": {"diffusion_epochs": 4,
                                        "early_stopping_patience": 4}})
resume = sys.argv[2] == "resume"
fit_run(sys.argv[1], None if resume else config, resume=resume, export=False,
        stages=default_stages(config)[:2])
"""


@pytest.mark.slow  # the default run kills fit once (tests/test_fit.py): the same StageRunner
def test_a_killed_diffusion_stage_resumes_from_its_last_epoch(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-c", RESUMED_FIT, str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command + ["new"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "backup" / "diffusion" / "training_metadata.json").exists():
        assert process.poll() is None, "fit ended before it could be interrupted"
        assert time.time() < deadline, "the diffusion stage never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((out / "state.json").read_text())["completed"] == ["encoder"]
    resumed = subprocess.run(command + ["resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    epochs = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    # The encoder is not retrained and the diffusion stage continues after its checkpoint.
    assert epochs and epochs[0] != "Epoch 1/4", epochs[:3]
    assert "[encoder]" not in resumed.stdout and "[diffusion]" in resumed.stdout
    assert json.loads((out / "state.json").read_text())["completed"] == [
        "encoder", "diffusion"]
    assert (out / "generator.keras").is_file() and (out / "denoiser.keras").is_file()


def test_an_image_stage_variant_trains_another_trunk_on_the_same_run(tmp_path):
    from starqso.config import get_preset
    from starqso.data.arrays import ObjectArrays
    from starqso.training import EncoderStage, ImageStage, fit_run

    config = get_preset("tiny")
    arrays = ObjectArrays.from_simulation(config.data.num_objects, 0,
                                          image_size=config.model.image_size,
                                          cutout_size=config.data.cutout_size, workers=1)
    lines = []
    metrics = fit_run(tmp_path / "run", config, arrays=arrays, export=False, log=lines.append,
                      stages=[EncoderStage(), ImageStage("hybrid")])
    assert "image_hybrid" in metrics and 0 <= metrics["image_hybrid"]["accuracy"] <= 1
    model = keras.saving.load_model(tmp_path / "run" / "image_classifier_hybrid.keras",
                                    safe_mode=True)
    assert model.trunk == "hybrid" and model.name == "image_classifier_hybrid"
    with pytest.raises(ValueError, match="trunk must be one of"):
        ImageStage("resnet18")


def test_trunk_weights_are_loaded_before_training(tmp_path):
    """``model.trunk_weights``: a user's file goes into every keras.applications trunk."""
    from starqso.config import config_from_dict
    from starqso.errors import InputError
    from starqso.training.stages import with_trunk_weights

    config = config_from_dict({"preset": "tiny", "model": {
        "trunk": "efficientnetb0", "trunk_weights": str(tmp_path / "missing.weights.h5")}})
    from starqso.models import ImageClassifier

    model = ImageClassifier(24, (4, 8), 8, 0.0, trunk="efficientnetb0")
    with pytest.raises(InputError, match="missing.weights.h5"):
        with_trunk_weights(model, config.model)


def test_finetuning_a_hybrid_model_trains_its_whole_trunk_as_one_block():
    from starqso.models import (
        CutoutScaling,
        FeatureGenerator,
        FineTuner,
        FusionClassifier,
        StarQSOClassifier,
    )
    from starqso.models.fine_tuner import trainable_blocks

    classifier = StarQSOClassifier(
        CutoutScaling([0.03] * 5, [0.0] * 5, [1.0] * 5),
        FeatureGenerator(16, (4, 8), 8, 4, 8, 0.0, trunk="hybrid"),
        FusionClassifier(16, (4, 8), 8, 8, 0.0, trunk="hybrid"))
    blocks = trainable_blocks(classifier)
    assert len(blocks) == 3
    attention = [layer for layer in blocks[1] if "attention" in layer.name]
    assert attention, [layer.name for layer in blocks[1]]
    tuner = FineTuner(classifier, train_depth=1)
    assert all(layer.trainable for layer in blocks[1])
    assert not any(layer.trainable for layer in classifier.generator.layers if layer.weights)
    assert len(tuner.blocks) == 2
    with pytest.raises(ValueError, match="from 1 to 1"):
        FineTuner(classifier, train_depth=2)


@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["efficientnetb0", "resnet50", "densenet121", "vgg16",
                                   "xception"])
def test_a_keras_applications_trunk_fits_exports_and_predicts(trunk, survey, tmp_path):
    """Each ImageNet architecture through the whole method (one epoch per stage)."""
    config = tmp_path / "run.yaml"
    config.write_text(f"preset: tiny\nmodel:\n  trunk: {trunk}\ntraining:\n"
                      "  encoder_epochs: 1\n  gan_epochs: 1\n  fusion_epochs: 1\n"
                      "  image_epochs: 1\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    checks = json.loads((run / "export" / "export_check.json").read_text())
    assert checks["model_fp32.tflite"]["max_abs_diff"] < 1e-3
    assert checks["model_int8.tflite"]["label_agreement"] >= 0.8
    deployable = keras.saving.load_model(run / "starqso_classifier.keras", safe_mode=True)
    assert deployable.fusion.trunk == trunk
    assert deployable.fusion.get_layer(f"trunk_{trunk}") is not None
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(survey), "--model", str(run / "export"),
                                       "--runtime", "litert", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 12


def test_trunk_weights_errors_come_before_training(tmp_path):
    from starqso.config import config_from_dict
    from starqso.errors import InputError

    with pytest.raises(InputError, match="model.trunk_weights loads a keras.applications"):
        config_from_dict({"model": {"trunk_weights": "w.h5"}})
    (tmp_path / "run.yaml").write_text(
        "preset: tiny\nmodel:\n  trunk: resnet50\n  trunk_weights: nowhere.weights.h5\n")
    result = CliRunner().invoke(main, ["fit", "--config", str(tmp_path / "run.yaml"),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "nowhere.weights.h5 (no such file)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
