"""Multi-worker training with two real worker processes on this machine.

The workers are started the way a cluster launcher starts them: one process per worker, each
with its own ``TF_CONFIG``, worker 0 being the chief. In the ``starqso fit`` test the chief
writes its ``--out``; worker 1 writes its models into a scratch folder (``tempfile.mkdtemp``
under its own ``TMPDIR``), which is where the test reads them to check that both workers end
with the same weights.
"""

import contextlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
RUN_FILES = ("config.yaml", "preprocessing.json", "split.json", "metrics.json", "history.json",
             "state.json")
COMPARED_MODELS = ("spectrum_classifier.keras", "generator.keras", "discriminator.keras",
                   "fusion_classifier.keras", "image_classifier.keras")

# 33 objects in global batches of 16: the last batch has one object, so one of the two
# replicas would get an empty slice of it. The workers save their final weights to
# $WEIGHTS_PATH.
EMPTY_SLICE_SCRIPT = """
import os
import keras
import numpy as np
import tensorflow as tf
from starqso.data.datasets import make_dataset
from starqso.training.loop import distributed_fit

strategy = tf.distribute.MultiWorkerMirroredStrategy()
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse", metrics=["mae"])
x = np.random.default_rng(0).normal(size=(33, 3)).astype("float32")
dataset = make_dataset({"x": x}, x.sum(axis=1), batch_size=16, shuffle=True)
dataset = dataset.map(lambda inputs, target: (inputs["x"], target))
history = distributed_fit(model, strategy, dataset, dataset, 3, monitor="val_loss", patience=3)
np.savez(os.environ["WEIGHTS_PATH"], loss=history.history["val_loss"], *model.get_weights())
"""


# The encoder and image-only stages of the tiny preset through fit_run, as `starqso fit
# --strategy multiworker` runs them: the default run's check of the chief-only writing and the
# identical weights (the full CLI fit, every stage, is the slow test below).
TWO_STAGE_SCRIPT = """
import sys
from starqso.config import get_preset
from starqso.training import EncoderStage, ImageStage, fit_run
fit_run(sys.argv[1], get_preset("tiny"), strategy="multiworker", export=False,
        stages=[EncoderStage(), ImageStage()])
"""


def _free_ports(count):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _start_workers(tmp_path, command, num_workers=2, env=None):
    """Start ``command(index)`` once per worker, each with its TF_CONFIG and own TMPDIR."""
    ports = _free_ports(num_workers)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = []
    for index in range(num_workers):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        worker_env = {**os.environ, **(env or {}),
                      "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}}),
                      "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                      "TMPDIR": str(scratch), "CUDA_VISIBLE_DEVICES": "",
                      "WEIGHTS_PATH": str(tmp_path / f"weights{index}.npz")}
        log_path = tmp_path / f"worker{index}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, *command(index)], cwd=tmp_path,
                                       env=worker_env, stdout=log, stderr=subprocess.STDOUT)
        workers.append((process, log_path))
    return workers


def _wait(workers):
    """Wait for every worker; stop them all at the deadline or as soon as one fails (the
    others would otherwise block in their next collective until the deadline)."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            codes = [process.poll() for process, _ in workers]
            if all(code is not None for code in codes) or any(codes):
                break
            time.sleep(0.5)
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()  # SIGKILL: TensorFlow's coordination service catches SIGTERM
                process.wait()
    return [(process.returncode, log_path.read_text()) for process, log_path in workers]


def _progress_lines(output):
    """The stage/epoch lines a worker printed, without timings."""
    lines = [line for line in output.splitlines() if re.match(r"\[\w+\] ", line)]
    return [re.sub(r"\b\d+(\.\d+)? ?s\b", "<time>", line) for line in lines]


def _weights(path):
    import keras

    import starqso.models  # noqa: F401 - registers the model classes

    model = keras.saving.load_model(path, safe_mode=True)
    return [(variable.path, np.asarray(variable)) for variable in model.weights]


def _check_chief_only_and_identical(tmp_path, results, stages, models):
    """Both workers logged the same global values for ``stages``; only the chief wrote its
    --out (``out0``), worker 1 a scratch folder; ``models`` have the same weights on both."""
    for index, (returncode, output) in enumerate(results):
        assert returncode == 0, f"worker {index} exited {returncode}:\n{output[-4000:]}"
    chief_lines, other_lines = (_progress_lines(output) for _, output in results)
    for stage in stages:
        assert any(line.startswith(f"[{stage}] epoch 1/") for line in chief_lines), stage
    assert chief_lines == other_lines
    chief_out = tmp_path / "out0"
    for name in RUN_FILES + models:
        assert (chief_out / name).is_file(), name
    assert not (chief_out / "backup").exists() and not (chief_out / "export").exists()
    assert not (tmp_path / "out1").exists()
    assert not list((tmp_path / "tmp0").glob("starqso-worker-*"))
    scratch = list((tmp_path / "tmp1").glob("starqso-worker-*"))
    assert len(scratch) == 1
    assert not any((scratch[0] / name).exists() for name in RUN_FILES)
    for name in models:
        chief, other = _weights(chief_out / name), _weights(scratch[0] / name)
        assert [path for path, _ in chief] == [path for path, _ in other], name
        for (path, mine), (_, theirs) in zip(chief, other, strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{name}: {path}")


def test_two_workers_train_two_stages_identically_and_only_the_chief_writes(tmp_path):
    results = _wait(_start_workers(
        tmp_path, lambda index: ["-c", TWO_STAGE_SCRIPT, str(tmp_path / f"out{index}")]))
    _check_chief_only_and_identical(tmp_path, results, ("encoder", "image"),
                                    ("spectrum_classifier.keras", "image_classifier.keras"))


@pytest.mark.slow  # every stage in two processes: about 75 s on 2 cores beside another test
def test_two_workers_train_identical_models_and_only_the_chief_writes(tmp_path):
    def fit(index):
        return [str(ROOT / "cli.py"), "fit", "--preset", "tiny", "--strategy", "multiworker",
                "--no-export", "--out", str(tmp_path / f"out{index}")]

    results = _wait(_start_workers(tmp_path, fit))
    # Every stage ran through the distributed loop on both workers, logging the same global
    # values; every weight, trainable or not (BatchNormalization statistics included), is the
    # same on both.
    _check_chief_only_and_identical(tmp_path, results, ("encoder", "gan", "fusion", "image"),
                                    COMPARED_MODELS)
    chief_out = tmp_path / "out0"
    assert (chief_out / "starqso_classifier.keras").is_file()
    history = json.loads((chief_out / "history.json").read_text())
    assert all(np.isfinite(value) for stage in history.values()
               for values in stage.values() for value in values)


def test_a_replica_with_an_empty_slice_of_the_last_batch_does_not_poison_the_model(tmp_path):
    # An empty slice gives NaN BatchNormalization statistics; the loop skips global batches
    # smaller than the number of replicas, and averages the statistics over the replicas.
    results = _wait(_start_workers(tmp_path, lambda index: ["-c", EMPTY_SLICE_SCRIPT]))
    for index, (returncode, output) in enumerate(results):
        assert returncode == 0, f"worker {index} exited {returncode}:\n{output[-4000:]}"
    chief, other = (np.load(tmp_path / f"weights{index}.npz") for index in range(2))
    assert np.all(np.isfinite(chief["loss"]))
    assert sorted(chief.files) == sorted(other.files)
    for name in chief.files:
        assert np.all(np.isfinite(chief[name])), name
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
