"""Nothing lost: runs killed with a real SIGKILL, then continued with ``--resume``."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers import wait_for

from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
RUN_FILES = (
    "config.yaml", "preprocessing.json", "split.json", "metrics.json", "history.json",
    "state.json", "spectrum_classifier.keras", "spectrum_encoder.keras", "generator.keras",
    "discriminator.keras", "photometry_classifier.keras", "fusion_classifier.keras",
    "starqso_classifier.keras", "image_classifier.keras", "export/metadata.json",
    "export/model_int8.tflite",
)
STAGES = ["encoder", "gan", "photometry_head", "fusion", "image"]




def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def large_catalogue(tmp_path_factory):
    from starqso.simulate import simulate_survey

    folder = tmp_path_factory.mktemp("many")
    simulate_survey(folder, 8, seed=5, size=40, workers=1)
    # Many rows over a few files: long enough to be killed half-way.
    with open(folder / "many.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(("id", "image"))
        writer.writerows((f"row{i:05d}", f"images/sim-{i % 8:06d}.fits") for i in range(6000))
    return folder / "many.csv"


def test_killed_predict_leaves_no_output_and_resumes_to_the_same_rows(large_catalogue, tmp_path):
    output = tmp_path / "predictions.csv"
    partial = tmp_path / ".predictions.csv.partial"
    command = [sys.executable, str(ROOT / "cli.py"), "predict", str(large_catalogue),
               "--runtime", "litert", "--batch-size", "32", "--output", str(output)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: partial.exists() and partial.stat().st_size > 20_000, process,
              "predict wrote its first rows")
    _kill(process)
    assert not output.exists(), "a killed predict must not leave an output"
    done_before = len(partial.read_text().splitlines()) - 1
    assert 0 < done_before < 6000

    resumed = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after row" in resumed.stderr
    assert not partial.exists() and not partial.with_name(partial.name + ".json").exists()

    reference = tmp_path / "reference.csv"
    result = CliRunner().invoke(main, ["predict", str(large_catalogue), "--runtime", "litert",
                                       "--batch-size", "32", "--output", str(reference)])
    assert result.exit_code == 0, result.output
    got, expected = _rows(output), _rows(reference)
    assert [row["id"] for row in got] == [f"row{i:05d}" for i in range(6000)]
    assert [(r["id"], r["label"], r["flag"]) for r in got] == [
        (r["id"], r["label"], r["flag"]) for r in expected]
    assert max(abs(float(a["p_qso"]) - float(b["p_qso"])) for a, b in zip(got, expected,
                                                                          strict=False)) < 1e-5


def test_resume_refuses_a_partial_run_of_another_catalogue(large_catalogue, tmp_path):
    output = tmp_path / "p.csv"
    partial = tmp_path / ".p.csv.partial"
    partial.write_text("id,p_qso,label,flag\nrow00000,0.1,STAR,\n")
    partial.with_name(partial.name + ".json").write_text(json.dumps({"source": "other.csv"}))
    result = CliRunner().invoke(main, ["predict", str(large_catalogue), "--runtime", "litert",
                                       "--output", str(output), "--resume"])
    assert result.exit_code == 2 and "another catalogue" in result.stderr
    assert not output.exists()


@pytest.mark.slow  # six fit processes and two exports: 66 s on 2 cores (measured 2026-12-01)
def test_fit_killed_in_every_stage_resumes_to_a_complete_run(tmp_path):
    """The default run kills fit once (tests/test_fit.py); this kills it in every stage."""
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\ntraining:\n  encoder_epochs: 4\n  gan_epochs: 4\n"
                      "  fusion_epochs: 4\n  image_epochs: 4\n  early_stopping_patience: 4\n")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(config),
               "--out", str(out)]

    def completed():
        state = out / "state.json"
        return json.loads(state.read_text())["completed"] if state.exists() else []

    for number, stage in enumerate(("encoder", "gan", "fusion", "image")):
        process = subprocess.Popen(command + (["--resume"] if number else []), env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Killed once the stage has checkpointed an epoch: mid-stage, never between stages.
        wait_for(lambda stage=stage: (out / "backup" / stage / "training_metadata.json").exists(),
                  process, f"the {stage} stage checkpointed an epoch")
        _kill(process)
        assert stage not in completed(), f"{stage} finished before it could be killed"
        assert completed() == STAGES[:STAGES.index(stage)]

    # Killed while exporting: the export folder is swapped in whole or not at all.
    process = subprocess.Popen(command + ["--resume"], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: (out / "export.partial").exists(), process, "the export started")
    _kill(process)
    assert not (out / "export").exists()

    resumed = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not any(f"[{stage}]" in resumed.stdout for stage in STAGES)
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert completed() == STAGES
    assert not (out / "backup").exists() and not (out / "export.partial").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(STAGES)
