"""The light install (``pip install starqso``, no TensorFlow): what runs, and what says why not.

Each command runs in a subprocess whose ``sitecustomize`` makes ``tensorflow``, ``keras`` and
``tf_keras`` unimportable (an import hook that refuses them and records every attempt), as on a
machine where only the light runtime is installed.
"""

import configparser
import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import types

import pytest
from helpers import assert_one_line_error, cli_error_line

from starqso.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "tf_keras")
SITECUSTOMIZE = textwrap.dedent(f"""
    import os
    import sys

    BLOCKED = {BLOCKED!r}


    class _NoTensorFlow:
        \"\"\"Refuse TensorFlow and Keras, as if they were not installed; record each try.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in BLOCKED:
                return None
            with open(os.environ["STARQSO_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


    sys.meta_path.insert(0, _NoTensorFlow())
""")
NUM_OBJECTS = 20


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """Run ``python -m starqso.cli ARGS`` without TensorFlow; returns (completed, attempted):
    the completed process and the blocked modules it tried to import."""
    folder = tmp_path_factory.mktemp("light")
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    runs = iter(range(1_000_000))

    def run(*args):
        log = folder / f"attempts-{next(runs)}.txt"
        log.touch()
        env = dict(os.environ, STARQSO_BLOCKED_LOG=str(log),
                   PYTHONPATH=os.pathsep.join(filter(None, [
                       str(folder / "site"), os.environ.get("PYTHONPATH")])))
        completed = subprocess.run([sys.executable, "-m", "starqso.cli", *map(str, args)],
                                   capture_output=True, text=True, env=env, cwd=folder,
                                   timeout=120)
        return completed, log.read_text().split()

    return run


@pytest.fixture(scope="module")
def survey(light, tmp_path_factory):
    """A 20-object simulation and the shipped model's LiteRT predictions of it, both made
    without TensorFlow."""
    folder = tmp_path_factory.mktemp("light-survey")
    simulated = light("simulate", folder / "sim", "--n", NUM_OBJECTS, "--size", 32,
                      "--workers", 1)
    predictions = folder / "predictions.csv"
    predicted = light("predict", folder / "sim" / "catalog.csv", "--runtime", "litert",
                      "--output", predictions)
    return types.SimpleNamespace(folder=folder, catalog=folder / "sim" / "catalog.csv",
                                 predictions=predictions, simulated=simulated,
                                 predicted=predicted)


def _succeeded(run):
    completed, attempted = run
    assert completed.returncode == 0, completed.stderr
    assert attempted == [], f"tried to import {attempted}"
    return completed


def _as_result(completed):
    """A subprocess result in the shape :func:`tests.helpers.cli_error_line` reads."""
    return types.SimpleNamespace(exit_code=completed.returncode, stderr=completed.stderr,
                                 output=completed.stdout + completed.stderr)


def test_the_blocker_really_blocks(light, tmp_path):
    # Without this, every other test here could pass with TensorFlow importable.
    completed, attempted = light("fit", "--out", tmp_path / "run")
    assert completed.returncode == 2 and attempted, completed.stderr


def test_help_works_without_tensorflow(light):
    for args in (["--help"], ["--version"], *([name, "--help"] for name in (
            "simulate", "fit", "finetune", "export", "predict", "evaluate"))):
        _succeeded(light(*args))


def test_simulate_works_without_tensorflow(survey):
    assert f"simulated {NUM_OBJECTS} objects" in _succeeded(survey.simulated).stdout
    assert len(list((survey.catalog.parent / "images").glob("*.fits"))) == NUM_OBJECTS


def test_litert_predict_works_without_tensorflow(survey):
    assert f"{NUM_OBJECTS} rows" in _succeeded(survey.predicted).stdout
    with open(survey.predictions, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == NUM_OBJECTS
    assert all(0 <= float(row["p_qso"]) <= 1 for row in rows if row["p_qso"])


def test_evaluate_works_without_tensorflow(light, survey):
    out = survey.folder / "evaluation"
    _succeeded(light("evaluate", survey.predictions, "--truth", survey.catalog, "--out", out))
    assert json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("command", ["fit", "finetune", "export"])
def test_training_commands_name_the_train_extra(light, tmp_path, command):
    args = {"fit": ["--out", tmp_path / "run"],
            "finetune": ["--data", tmp_path / "labels.csv", "--out", tmp_path / "run"],
            "export": [tmp_path / "run"]}[command]
    completed, _ = light(command, *args)
    cli_error_line(_as_result(completed), f"starqso {command} needs TensorFlow",
                   'pip install "starqso[train]"', "no module named 'tensorflow'")
    assert not (tmp_path / "run").exists()


def test_keras_runtime_names_the_train_extra_and_litert(light, survey):
    output = survey.folder / "keras.csv"
    completed, _ = light("predict", survey.catalog, "--runtime", "keras", "--output", output)
    cli_error_line(_as_result(completed), "--runtime keras needs TensorFlow",
                   'pip install "starqso[train]"', "--runtime litert")
    assert not output.exists()


def test_require_survey_names_the_survey_extra():
    from starqso._util.extras import require_survey

    require_survey("--scheduler", "json")  # present: nothing happens
    with pytest.raises(InputError) as excinfo:
        require_survey("--scheduler", "json", "no_such_survey_module")
    assert_one_line_error(excinfo, "--scheduler needs no_such_survey_module",
                          'pip install "starqso[survey]"',
                          "no module named 'no_such_survey_module'")


def test_setup_cfg_keeps_tensorflow_out_of_the_light_install():
    config = configparser.RawConfigParser()
    config.read(ROOT / "setup.cfg")

    def names(text):
        return [line.strip() for line in text.strip().splitlines()
                if line.strip() and not line.strip().startswith("#")]

    base = names(config["options"]["install_requires"])
    extras = {key: names(value) for key, value in config["options.extras_require"].items()}
    assert not [req for req in base if req.split(">")[0].split("<")[0].split("[")[0]
                in ("tensorflow", "tensorboard", "keras")], base
    assert any(req.startswith("ai-edge-litert") for req in base)
    assert any(req.startswith("tensorflow") for req in extras["train"])
    assert extras["all"] == extras["train"] + extras["survey"] + extras["discovery"]
