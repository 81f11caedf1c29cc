"""`starqso finetune`: a tiny base run adapted to a labelled catalogue, through the CLI."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey

from starqso.cli import main
from starqso.io import read_catalog, write_catalog

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tiny_run):
    return tiny_run.path


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 60, seed=21, size=24) / "catalog.csv"


def _finetune(tmp_path, base, labels, *options):
    return CliRunner().invoke(main, ["finetune", "--data", str(labels), "--model",
                                     str(base / "export"), "--out", str(tmp_path / "ft"),
                                     "--epochs", "2", "--batch-size", "16", *options])


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, base, labels):
    """One fine-tuning of the head (the default --trainable), exported; read-only (copy it
    to change it). Returns the CLI result and the run folder."""
    folder = tmp_path_factory.mktemp("head-run")
    return _finetune(folder, base, labels), folder / "ft"


def _weights(model, names):
    return {name: [np.array(w) for w in model.get_layer(name).get_weights()] for name in names}


def test_finetune_head_trains_only_the_head_and_exports(tmp_path, base, labels, head_run):
    import keras

    import starqso.models  # noqa: F401 - registers the classes

    result, out = head_run
    assert result.exit_code == 0, result.output
    assert "[base] validation" in result.output and "[finetune]" in result.output
    settings = json.loads((out / "finetune.json").read_text())
    assert settings["trainable"] == "head" and len(settings["base_sha256"]) == 64
    assert {"before", "after"} <= set(settings) and settings["after"]["n"] > 0
    card = (out / "export" / "model_card.md").read_text()
    assert "## Fine-tuning" in card and settings["base_sha256"] in card
    metadata = json.loads((out / "export" / "metadata.json").read_text())
    assert 0 < metadata["temperature"] and 0 <= metadata["threshold"] <= 1
    # Whichever model won on validation, predict's default prior is the labels' QSO fraction.
    selection = settings["selection"]
    assert f"[finetune] {selection['message']}" in result.output
    fraction = np.mean(np.asarray(read_catalog(labels)["label"]) == "QSO")
    assert metadata["default_prior"] == pytest.approx(fraction)
    assert "the QSO fraction of the labels it was fine-tuned on" in card

    before = keras.saving.load_model(base / "starqso_classifier.keras", safe_mode=True)
    # The fine-tuned weights: the run's model, or beside it when the base model was kept.
    tuned = "finetune_rejected.keras" if selection["kept"] == "base" else \
        "starqso_classifier.keras"
    after = keras.saving.load_model(out / tuned, safe_mode=True)
    trunk = ["trunk_conv0_0", "trunk_conv1_1", "trunk_embedding"]
    for name, values in _weights(before.fusion, trunk).items():
        for old, new in zip(values, _weights(after.fusion, trunk)[name], strict=False):
            np.testing.assert_array_equal(old, new)
    old_head, new_head = (_weights(m.fusion, ["p_qso"])["p_qso"][0] for m in (before, after))
    assert not np.array_equal(old_head, new_head)
    np.testing.assert_array_equal(before.generator.get_weights()[0],
                                  after.generator.get_weights()[0])

    predictions = tmp_path / "p.csv"
    predicted = CliRunner().invoke(main, ["predict", str(labels), "--model", str(out / "export"),
                                          "--output", str(predictions), "--prior", "0.3"])
    assert predicted.exit_code == 0, predicted.output
    assert len(read_catalog(predictions, require=("id", "p_qso"))) == 60


@pytest.mark.slow  # a full fine-tuning and export (about 20 s); the selection rule itself is
# test_selection_keeps_the_base_unless_tuning_beats_it_out_of_fold, in the default run.
def test_finetune_keeps_the_base_model_when_tuning_does_not_beat_it(tmp_path, base, labels,
                                                                    monkeypatch):
    import starqso.training.finetune_selection as finetune

    def worse(labels, raw, **kwargs):  # the fine-tuned model loses on validation
        return {"temperature": 2.0, "threshold": 0.3, "threshold_rule": "test", "folds": 3,
                "macro_f1": 0.0, "log_loss": 9.0}

    monkeypatch.setattr(finetune, "cross_validated_calibration", worse)
    result = _finetune(tmp_path, base, labels)
    assert result.exit_code == 0, result.output
    out = tmp_path / "ft"
    kept = [line for line in result.output.splitlines() if "kept the base model" in line]
    assert len(kept) == 1 and "fine-tuning did not beat it" in kept[0]
    settings = json.loads((out / "finetune.json").read_text())
    assert settings["selection"]["kept"] == "base"
    assert "macro_f1" in settings["selection"]["base"]
    # The export ships the base model as it was: weights, temperature, threshold.
    base_metadata = json.loads((base / "export" / "metadata.json").read_text())
    metadata = json.loads((out / "export" / "metadata.json").read_text())
    for key in ("temperature", "threshold", "training_qso_fraction"):
        assert metadata[key] == pytest.approx(base_metadata[key]), key
    fraction = np.mean(np.asarray(read_catalog(labels)["label"]) == "QSO")
    assert metadata["default_prior"] == pytest.approx(fraction)
    assert (out / "finetune_rejected.keras").is_file()
    from starqso.inference import open_model

    images = np.random.default_rng(0).normal(0, 1, (4, 24, 24, 5)).astype("float32")
    np.testing.assert_allclose(open_model(out / "export")[1](images),
                               open_model(base / "export")[1](images), atol=1e-6)
    assert "kept the base model" in (out / "export" / "model_card.md").read_text()


def test_selection_keeps_the_base_unless_tuning_beats_it_out_of_fold():
    from starqso.training.finetune_selection import cross_validated_calibration, select_model

    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(int)
    good = np.clip(0.45 * labels + rng.uniform(0.05, 0.5, 300), 0.01, 0.99)
    poor = np.clip(0.2 * labels + rng.uniform(0.05, 0.75, 300), 0.01, 0.99)
    base = {"temperature": 1.0, "threshold": 0.5, "training_qso_fraction": 0.3}
    worse = select_model(labels, good, poor, base, 0.3)
    assert worse["kept"] == "base" and worse["calibration"]["threshold"] == 0.5
    assert worse["calibration"]["default_prior"] == 0.3
    better = select_model(labels, poor, good, base, 0.25)
    assert better["kept"] == "fine-tuned"
    assert better["calibration"]["training_qso_fraction"] == 0.25
    assert "cross-validation" in better["calibration"]["threshold_rule"]
    # A tie is no win: the same model on both sides keeps the base.
    assert select_model(labels, good, good, base, 0.3)["kept"] == "base"
    # One QSO in validation: nothing to cross-validate, the base stays.
    few = select_model(np.r_[1, np.zeros(20, int)], good[:21], good[:21], base, 0.3)
    assert few["kept"] == "base" and "too few" in few["message"]
    # Out-of-fold: a threshold that only fits noise does not beat 0.5.
    noise = cross_validated_calibration(labels, rng.uniform(0.01, 0.99, 300))
    assert noise["macro_f1"] < 0.6 and noise["folds"] == 5


def test_deeper_blocks_learn_at_decayed_rates(base):
    import keras

    from starqso.models import FineTuner

    classifier = keras.saving.load_model(base / "starqso_classifier.keras", safe_mode=True)
    tuner = FineTuner(classifier, train_depth="all", lr_decay=0.5)
    tuner.compile(learning_rate=1e-3)
    # The tiny preset's trunk has 2 stages: head, stage 1 (+ embedding), stage 0, generator.
    assert len(tuner.blocks) == 4
    rates = [float(np.array(opt.learning_rate)) for opt in tuner.block_optimizers]
    np.testing.assert_allclose(rates, [1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert all(layer.trainable for block in tuner.blocks for layer in block)
    one = FineTuner(keras.saving.load_model(base / "starqso_classifier.keras", safe_mode=True),
                    train_depth=1)
    assert len(one.blocks) == 2
    assert not one.classifier.fusion.get_layer("trunk_conv0_0").trainable
    assert one.classifier.fusion.get_layer("trunk_conv1_0").trainable
    with pytest.raises(ValueError, match="--trainable must be"):
        FineTuner(classifier, train_depth=3)


@pytest.mark.slow  # a fit, an export and a fine-tuning: 35-45 s on 2 cores beside another test
# (test_models checks the shared trunk's deployable graph and its fine-tuning in-process).
def test_a_shared_trunk_run_exports_one_cnn_and_finetunes_the_generator_trunk(tmp_path,
                                                                              labels):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from starqso.models import FineTuner

    config = tmp_path / "shared.yaml"
    # No photometry head: a blend weight of 1 would leave no CNN in the graph to count.
    # noise_augment: the fusion's trunk inputs for the noisier copies go through the same path.
    config.write_text("preset: tiny\nmodel:\n  shared_trunk: true\n  photometry_head: false\n"
                      "training:\n  noise_augment: 2.0\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    fusion = keras.saving.load_model(run / "fusion_classifier.keras", safe_mode=True)
    assert set(fusion.input) == {"embedding", "features", "photometry"}
    assert not any(layer.name.startswith("trunk_conv") for layer in fusion.layers)
    ops = [op["op_name"] for op in Interpreter(
        model_path=str(run / "export" / "model_int8.tflite"))._get_ops_details()]
    assert ops.count("CONV_2D") == 2 * 2 + 1  # one 2-stage trunk and the scaling's 1 x 1

    classifier = keras.saving.load_model(run / "starqso_classifier.keras", safe_mode=True)
    one = FineTuner(classifier, train_depth=1)
    # The trunk block is the generator's: the one trunk both read.
    assert one.classifier.generator.get_layer("trunk_conv1_0").trainable
    assert not one.classifier.generator.get_layer("trunk_conv0_0").trainable
    assert not one.classifier.generator.get_layer("features").trainable
    assert one.classifier.fusion.get_layer("embedding_dense").trainable
    tuned = _finetune(tmp_path, run, labels, "--trainable", "1")
    assert tuned.exit_code == 0, tuned.output
    # The fine-tuned weights: the run's model, or beside it when the base model was kept.
    tuned_file = tmp_path / "ft" / "finetune_rejected.keras"
    if not tuned_file.exists():
        tuned_file = tmp_path / "ft" / "starqso_classifier.keras"
    after = keras.saving.load_model(tuned_file, safe_mode=True)
    assert not np.array_equal(classifier.generator.get_layer("trunk_conv1_0").get_weights()[0],
                              after.generator.get_layer("trunk_conv1_0").get_weights()[0])
    np.testing.assert_array_equal(classifier.generator.get_layer("trunk_conv0_0").get_weights()[0],
                                  after.generator.get_layer("trunk_conv0_0").get_weights()[0])


def _relabelled(tmp_path, labels, change):
    table = read_catalog(labels)
    change(table)
    path = labels.parent / f"{tmp_path.name}.csv"
    write_catalog(table, path)
    return path


@pytest.mark.parametrize(("case", "fragment"), [
    ("one_class", "at least 5 usable labelled objects of each class"),
    ("few", "at least 5 usable labelled objects of each class"),
    ("trainable", "--trainable must be"),
    ("deep", "a number of trunk blocks from 1 to 2. Received: 9"),
    ("decay", "--lr-decay must be in (0, 1]"),
    ("small", "usable row labelled STAR or QSO"),
])
def test_bad_finetune_inputs_are_one_line_errors(tmp_path, base, labels, case, fragment):
    data, options = labels, []
    if case == "one_class":
        data = _relabelled(tmp_path, labels, lambda t: t.__setitem__("label", ["STAR"] * len(t)))
    elif case == "few":
        def keep_few(table):
            qso = np.flatnonzero(np.asarray(table["label"]) == "QSO")[3:]
            table.remove_rows(qso)
        data = _relabelled(tmp_path, labels, keep_few)
    elif case == "trainable":
        options = ["--trainable", "deep"]
    elif case == "deep":  # deeper than the tiny base model's two trunk stages
        options = ["--trainable", "9"]
    elif case == "decay":
        options = ["--lr-decay", "1.5"]
    elif case == "small":
        from starqso.io import write_cutout

        small = labels.parent / "images" / "small.fits"
        write_cutout(small, np.ones((5, 8, 8), "float32"))
        data = labels.parent / "small.csv"
        write_catalog(Table({"id": [f"s{i}" for i in range(12)],
                             "image": ["images/small.fits"] * 12,
                             "label": ["STAR", "QSO"] * 6}), data)
    result = _finetune(tmp_path, base, data, *options)
    cli_error_line(result, fragment)
    assert not (tmp_path / "ft" / "export").exists()


def test_finetune_resume_continues_its_own_run(tmp_path, base, labels, head_run):
    import shutil

    first, run = head_run
    assert first.exit_code == 0, first.output
    # A copy of the shared run (this test changes it): the same folder a first call here
    # would have written.
    shutil.copytree(run, tmp_path / "ft", symlinks=True)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["trainable"] == "head"
    out = tmp_path / "ft"
    model = (out / "starqso_classifier.keras").read_bytes()
    again = _finetune(tmp_path, base, labels)
    cli_error_line(again, "already holds a run", "--resume")
    # A run killed after its stage: --resume keeps the trained model and exports again.
    (out / "export" / "metadata.json").unlink()
    resumed = CliRunner().invoke(main, ["finetune", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "starqso_classifier.keras").read_bytes() == model
    assert (out / "export" / "metadata.json").is_file()
    missing = CliRunner().invoke(main, ["finetune", "--out", str(tmp_path / "none"),
                                        "--resume"])
    cli_error_line(missing, "--resume needs a finetune run folder")


def test_finetune_trains_under_a_two_replica_mirrored_strategy(tmp_path, base, labels):
    # In its own process (two logical CPU devices, so two replicas): collective ops of one
    # MirroredStrategy leave state behind that breaks other strategies later in a process.
    code = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from starqso.training.finetune import finetune_run
        result = finetune_run({str(tmp_path / "ft")!r}, {str(labels)!r}, {str(base)!r},
                              trainable="all", epochs=1, batch_size=16, strategy="mirrored",
                              export=False, log=print)
        print("RESULT", json.dumps(result["after"]))
    """)
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "RESULT" in process.stdout
    settings = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert settings["trainable"] == "all" and settings["base_model"].endswith(
        "starqso_classifier.keras")


@pytest.mark.slow
def test_finetune_killed_mid_training_resumes_to_a_complete_run(tmp_path, base, labels):
    import signal

    from helpers import wait_for

    out = tmp_path / "ft"
    command = [sys.executable, str(ROOT / "cli.py"), "finetune", "--data", str(labels),
               "--model", str(base), "--out", str(out), "--epochs", "40", "--batch-size", "8",
               "--learning-rate", "1e-5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # Killed once an epoch is checkpointed: mid-stage.
    wait_for(lambda: (out / "backup" / "finetune" / "training_metadata.json").exists(),
             process, "the finetune stage checkpointed an epoch")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "starqso_classifier.keras").exists()
    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "finetune", "--out",
                              str(out), "--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert (out / "export" / "metadata.json").is_file() and not (out / "backup").exists()
    settings = json.loads((out / "finetune.json").read_text())
    assert {"before", "after"} <= set(settings)


@pytest.mark.slow
def test_two_workers_finetune_identical_models_and_only_the_chief_writes(tmp_path, base, labels):
    from test_distributed import _progress_lines, _start_workers, _wait

    def finetune(index):
        return [str(ROOT / "cli.py"), "finetune", "--data", str(labels), "--model", str(base),
                "--out", str(tmp_path / f"out{index}"), "--epochs", "2", "--batch-size", "16",
                "--strategy", "multiworker"]

    results = _wait(_start_workers(tmp_path, finetune))
    for index, (returncode, output) in enumerate(results):
        assert returncode == 0, f"worker {index} exited {returncode}:\n{output[-4000:]}"
    chief = tmp_path / "out0"
    assert (chief / "export" / "metadata.json").is_file() and (chief / "finetune.json").is_file()
    assert not (tmp_path / "out1").exists()
    # The logged metrics are global (the same on both workers), timings aside.
    lines = [[line for line in _progress_lines(output) if line.startswith("[finetune] epoch")]
             for _, output in results]
    assert len(lines[0]) == 2 and lines[0] == lines[1]
