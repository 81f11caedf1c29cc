import dataclasses
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
from astropy.io import fits
from click.testing import CliRunner

import starqso.models  # noqa: F401 - registers the model classes for loading
from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_FILES = (
    "config.yaml", "preprocessing.json", "split.json", "metrics.json", "history.json",
    "state.json", "spectrum_classifier.keras", "spectrum_encoder.keras", "generator.keras",
    "discriminator.keras", "photometry_classifier.keras", "fusion_classifier.keras",
    "starqso_classifier.keras", "image_classifier.keras",
)
STAGES = ["encoder", "gan", "photometry_head", "fusion", "image"]
# The shared tiny run (conftest.py) has the optional metric head too.
ALL_STAGES = ["encoder", "gan", "photometry_head", "fusion", "metric", "image"]


def test_fit_tiny_through_the_cli_writes_a_complete_run_folder(tiny_run):
    out = tiny_run.path
    for stage in ALL_STAGES:
        assert f"[{stage}]" in tiny_run.output
    for name in (*RUN_FILES, "metric_head.keras"):
        assert (out / name).exists(), name
    assert (out / "logs" / "fusion").is_dir()
    assert not (out / "backup").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(ALL_STAGES)
    assert 0.0 <= metrics["fusion"]["accuracy"] <= 1.0
    assert json.loads((out / "state.json").read_text())["completed"] == ALL_STAGES

    model = keras.saving.load_model(out / "starqso_classifier.keras", safe_mode=True)
    size = json.loads((out / "preprocessing.json").read_text())["image_size"]
    p_qso = np.asarray(model.predict({"image": np.ones((3, size, size, 5), "float32")},
                                     verbose=0))
    assert p_qso.shape == (3, 1) and np.all((p_qso >= 0) & (p_qso <= 1))

    # A second fit into the same folder is refused, not silently mixed.
    before = sorted(path.name for path in out.iterdir())
    again = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    assert sorted(path.name for path in out.iterdir()) == before


# A second whole fit (a minute on 2 cores). The default run repeats the encoder and GAN stages,
# which hold every kind of layer and input pipeline, weights bit for bit:
# tests/test_determinism.py::test_one_core_and_all_cores_at_once_give_the_same_weights.
@pytest.mark.slow
def test_a_second_fit_with_the_same_seed_gives_the_same_metrics(tiny_run, tmp_path):
    from starqso.config import load_config
    from starqso.training import fit_run

    metrics = json.loads((tiny_run.path / "metrics.json").read_text())
    # Same seed and config on the same machine: the same validation metrics.
    repeated = fit_run(tmp_path / "again", load_config(tiny_run.config), log=lambda line: None,
                       export=False)
    assert repeated == metrics


def test_fit_killed_mid_stage_resumes_from_its_last_epoch(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\ntraining:\n  encoder_epochs: 3\n  gan_epochs: 3\n"
                      "  early_stopping_patience: 3\n")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "cli.py"), "fit", "--preset", "tiny", "--config",
               str(config), "--out", str(out), "--no-export"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Kill as soon as the GAN stage has checkpointed an epoch: mid-stage, after the encoder.
    while not (out / "backup" / "gan" / "training_metadata.json").exists():
        assert process.poll() is None, "fit ended before it could be interrupted"
        assert time.time() < deadline, "the GAN stage never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((out / "state.json").read_text())["completed"] == ["encoder"]

    # The resume in this process (a fresh process only adds TensorFlow's start-up): it reads
    # nothing but the run folder the killed process left.
    resumed = CliRunner().invoke(main, command[2:] + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    epochs = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    # The encoder is not retrained and the GAN continues after its checkpointed epoch.
    assert epochs and epochs[0] != "Epoch 1/3", epochs[:3]
    assert "[encoder]" not in resumed.stdout and "[gan]" in resumed.stdout
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert json.loads((out / "state.json").read_text())["completed"] == STAGES
    # --no-export: the run is complete without its export (`starqso export` makes it later).
    assert not (out / "export").exists() and "exported" not in resumed.stdout


def test_fit_on_a_catalogue_uses_spectra_where_present(tmp_path):
    from starqso.io import read_catalog, write_catalog
    from starqso.simulate import simulate_survey

    path = simulate_survey(tmp_path / "sim", 40, seed=3, size=24, workers=1).catalog
    table = read_catalog(path)
    table["spectrum"][:8] = ""  # photometry-only objects: classifier stages only
    # A broken cutout (row left out) and a spectrum off the encoder's range (image kept).
    table["image"][10] = "images/missing.fits"
    with fits.open(tmp_path / "sim" / table["spectrum"][11]) as hdulist:
        hdulist["COADD"].data["loglam"] = np.log10(
            np.linspace(9500, 9900, len(hdulist["COADD"].data)))
        hdulist.writeto(tmp_path / "sim" / "red.fits")
    table["spectrum"][11] = "red.fits"
    catalogue = tmp_path / "sim" / "mixed.csv"
    write_catalog(table, catalogue)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--data", str(catalogue),
                                       "--out", str(out), "--no-export"])
    assert result.exit_code == 0, result.output
    assert "2 catalogue rows flagged (1 left out, 1 used" in result.output
    flags = (out / "data_flags.csv").read_text().splitlines()
    assert flags[0] == "row,id,used,flag" and len(flags) == 3
    assert flags[1].startswith(f"11,{table['id'][10]},no,") and "missing.fits" in flags[1]
    assert flags[2].startswith(f"12,{table['id'][11]},yes,spectrum not used")
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert table["id"][10] not in sum(split.values(), [])
    no_spectrum = set(table["id"][:8]) | {table["id"][11]}
    validation = split["validation"]
    assert metrics["fusion"]["n"] == len(validation)
    assert metrics["encoder"]["n"] == len([i for i in validation if i not in no_spectrum])


def test_resume_reads_a_config_from_before_the_photometry_key_as_without(tmp_path):
    from starqso.config import get_preset
    from starqso.training.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    folder.save_config(get_preset("tiny"))
    path = folder.config_path
    assert folder.load_config().model.photometry is True
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if "photometry" not in line))
    assert folder.load_config().model.photometry is False


def test_stages_run_alone_and_a_variant_reuses_another_runs_stages(tmp_path):
    """The stage API the benchmarks use: reuse completed stages, run extra stage variants."""
    from starqso.config import get_preset
    from starqso.data.arrays import ObjectArrays
    from starqso.training import EncoderStage, FusionStage, ImageStage, fit_run
    from starqso.training.run_folder import RunFolder

    config = get_preset("tiny")
    arrays = ObjectArrays.from_simulation(config.data.num_objects, 0,
                                          image_size=config.model.image_size,
                                          cutout_size=config.data.cutout_size, workers=1)
    base = tmp_path / "base"
    # The base run has only the stages the variant takes from it.
    fit_run(base, config, arrays=arrays, export=False, log=lambda line: None,
            stages=[EncoderStage(), ImageStage()])

    lines = []
    variant = fit_run(tmp_path / "variant", config, arrays=arrays, export=False,
                      log=lines.append, reuse={"encoder": base, "image": base})
    trained = [line.split("]")[0][1:] for line in lines if line.startswith("[")]
    assert trained == ["gan", "photometry_head", "fusion"]
    assert variant["encoder"] == RunFolder(base).metrics()["encoder"]
    assert RunFolder(tmp_path / "variant").completed_stages() == [
        "encoder", "image", "gan", "photometry_head", "fusion"]

    lines.clear()
    extra = fit_run(base, None, arrays=arrays, resume=True, export=False, log=lines.append,
                    stages=[EncoderStage(), FusionStage("real", name="fusion_real_vector")])
    assert [line.split("]")[0][1:] for line in lines if line.startswith("[")] == [
        "fusion_real_vector"]
    assert (base / "fusion_real_vector.keras").is_file()
    assert 0.0 <= extra["fusion_real_vector"]["accuracy"] <= 1.0


def test_run_folder_refuses_to_adopt_an_incomplete_stage(tmp_path):
    import pytest

    from starqso.errors import InputError
    from starqso.training.run_folder import RunFolder

    other = RunFolder(tmp_path / "other")
    other.root.mkdir()
    with pytest.raises(InputError, match="not complete"):
        RunFolder(tmp_path / "mine").adopt(other, "encoder", ["spectrum_classifier.keras"])
    (other.root / "state.json").write_text('{"completed": ["nonsense"]}')
    with pytest.raises(InputError, match="unknown stages"):
        other.completed_stages(["encoder"])


def test_noisier_cutouts_scale_the_sky_sigma_within_the_range():
    from starqso.preprocessing.screening import sky_sigma
    from starqso.training.inputs import noisier_cutouts

    rng = np.random.default_rng(1)
    clean = np.random.default_rng(0).normal(0, 0.03, (200, 32, 32, 5)).astype("float32")
    ratio = sky_sigma(noisier_cutouts(clean, 2.5, rng)) / sky_sigma(clean)
    assert 0.8 < ratio.min() and ratio.max() < 3.0  # the border sigmas are estimates
    assert 1.5 < ratio.mean() < 2.0  # scales uniform in [1, 2.5]: mean 1.75
    np.testing.assert_array_equal(noisier_cutouts(clean, 1.0, rng), clean)
    with pytest.raises(ValueError, match="max_scale must be >= 1. Received: max_scale=0.5"):
        noisier_cutouts(clean, 0.5, rng)


def test_noise_augment_appends_noisier_copies_of_the_training_objects():
    from starqso.config import get_preset
    from starqso.data.arrays import ObjectArrays
    from starqso.training.stages import PhotometryHeadStage, StageContext

    tiny = get_preset("tiny")
    config = dataclasses.replace(tiny, training=dataclasses.replace(tiny.training,
                                                                    noise_augment=2.0))
    arrays = ObjectArrays.from_simulation(96, 0, image_size=24, cutout_size=24)
    context = StageContext.create(config, arrays)
    stage = PhotometryHeadStage()
    stage.prepare(context, train=True)
    train, count = context.labelled(context.train), len(arrays.images)
    np.testing.assert_array_equal(stage.train_index,
                                  np.concatenate([train, count + np.arange(len(train))]))
    np.testing.assert_array_equal(stage.target[count:], context.target[train])
    photometry = stage.inputs["photometry"]
    assert photometry.shape == (count + len(train), context.inputs.photometry_dim)
    np.testing.assert_array_equal(photometry[:count], context.inputs.arrays["photometry"])
    assert not np.allclose(photometry[count:], photometry[train])
    again = PhotometryHeadStage()
    again.prepare(context, train=True)  # the same copies on every call
    np.testing.assert_array_equal(again.inputs["photometry"], photometry)

    plain = PhotometryHeadStage()
    plain.prepare(StageContext.create(tiny, arrays), train=True)  # noise_augment 1: none
    np.testing.assert_array_equal(plain.train_index, train)
    assert len(plain.inputs["photometry"]) == count
