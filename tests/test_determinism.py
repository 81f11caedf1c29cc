"""Training repeats bit for bit with the same thread count, whatever the load and however many
cores a run may use.

The kernels split their reductions by thread, so the pool size decides the last bits. The
runner sets it (:func:`starqso.training.strategies.fix_thread_pools`) to ``STARQSO_THREADS``
or the cores the process may use; with the same number, a run confined to one core and a run
on two, started side by side (each under the other's load), agree bit for bit.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from starqso.errors import InputError
from starqso.training.strategies import THREADS_VARIABLE, training_threads

# A child process: confine itself to the given cores (before TensorFlow starts, which is when
# TensorFlow reads them), train, and print the metrics and a digest of every model's weights.
CHILD = textwrap.dedent("""
    import hashlib, json, os, pathlib, sys

    def main():
        out, cores, full = sys.argv[1], sys.argv[2], sys.argv[3] == "full"
        if cores != "all":
            os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
        import keras
        import numpy as np

        import starqso.models  # noqa: F401 - registers the classes for loading
        from starqso.config import get_preset
        from starqso.training.fit import fit_run
        from starqso.training.stages import EncoderStage, GANStage

        # Encoder and GAN cover every kind of layer and input pipeline the stages use
        # (Conv1D, Conv2D, dense, shuffling, augmentation, GAN noise) in half the time.
        stages = None if full else [EncoderStage(), GANStage()]
        metrics = fit_run(out, get_preset("tiny"), log=lambda line: None, export=full,
                          stages=stages)
        digests = {}
        for path in sorted(pathlib.Path(out).glob("*.keras")):
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
            digest = hashlib.sha256()
            for weights in model.get_weights():
                digest.update(np.ascontiguousarray(weights).tobytes())
            digests[path.name] = digest.hexdigest()
        print("RESULT " + json.dumps({"metrics": metrics, "weights": digests}))

    if __name__ == "__main__":
        main()
""")


def _start(tmp_path, name, cores, full=False, **environment):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # The default pool size, unless a test sets one.
    env = {key: value for key, value in os.environ.items() if key != THREADS_VARIABLE}
    env.update(environment)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / name), cores, "full" if full else "part"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0][len("RESULT "):]), stderr


def _cores():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity (Linux)")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs at least two cores to confine one run to fewer of them")
    return cores


def test_one_core_and_all_cores_at_once_give_the_same_weights(tmp_path):
    cores = _cores()
    # Started together: each one also runs beside the other's load.
    confined = _start(tmp_path, "one_core", str(cores[0]), **{THREADS_VARIABLE: "2"})
    free = _start(tmp_path, "all_cores", "all", **{THREADS_VARIABLE: "2"})
    one, one_stderr = _result(confined)
    every, every_stderr = _result(free)
    assert set(one["weights"]) == {"spectrum_classifier.keras", "spectrum_encoder.keras",
                                   "generator.keras", "discriminator.keras"}
    assert one["weights"] == every["weights"]
    assert one["metrics"] == every["metrics"]
    # fit() is not told to shuffle a dataset that shuffles itself (Keras warned about it).
    for stderr in (one_stderr, every_stderr):
        assert "`shuffle=True` was passed" not in stderr


def test_training_threads_come_from_the_machine_or_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert training_threads() == (allowed or os.cpu_count() or 1)
    monkeypatch.setenv(THREADS_VARIABLE, " 3 ")
    assert training_threads() == 3
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(THREADS_VARIABLE, bad)
        with pytest.raises(InputError) as excinfo:
            training_threads()
        assert_one_line_error(excinfo, THREADS_VARIABLE, repr(bad))


def test_a_bad_thread_count_is_a_one_line_error_before_training(tmp_path, monkeypatch):
    from starqso.cli import main

    monkeypatch.setenv(THREADS_VARIABLE, "many")
    result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert THREADS_VARIABLE in result.stderr and "'many'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_whole_fit_repeats_on_one_core_under_load(tmp_path):
    """Every stage and the export, one run confined to one core beside a busy process."""
    cores = _cores()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        confined = _start(tmp_path, "one_core", str(cores[0]), full=True,
                          **{THREADS_VARIABLE: "2"})
        one, _ = _result(confined, timeout=1800)
    finally:
        busy.kill()
        busy.wait()
    every, _ = _result(_start(tmp_path, "all_cores", "all", full=True,
                              **{THREADS_VARIABLE: "2"}), timeout=1800)
    assert one["weights"] == every["weights"] and one["metrics"] == every["metrics"]
    assert len(one["weights"]) == 7
    for name in ("metrics.json", "history.json"):
        assert ((tmp_path / "one_core" / name).read_bytes()
                == (tmp_path / "all_cores" / name).read_bytes()), name
    # The calibration fitted at export (temperature, threshold) repeats too. (The TFLite
    # files are not compared: the converter's own output is not part of this promise.)
    first, second = (json.loads((tmp_path / run / "export" / "export_check.json").read_text())
                     for run in ("one_core", "all_cores"))
    assert first["calibration"] == second["calibration"]
