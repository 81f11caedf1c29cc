import os
import types

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    # Two logical CPU devices, so MirroredStrategy runs two replicas on a CPU-only machine.
    # This must happen before TensorFlow initialises its devices, hence here.
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


# The longest files first, so that pytest-xdist (``--dist loadfile --no-loadscope-reorder`` in
# setup.cfg) does not end the run on one worker with a long file while the other idles. The
# second file trains the shared tiny run; the first does not need it, so neither worker waits.
LONGEST_FILES = ("test_variants.py", "test_finetune.py", "test_models.py", "test_fit.py",
                 "test_input_layouts.py", "test_scale.py", "test_trunks.py",
                 "test_distributed.py", "test_diffusion.py", "test_injection.py",
                 "test_determinism.py", "test_predict_reliability.py", "test_interrupted.py",
                 "test_export.py", "test_bad_input_training.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: number for number, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# One tiny run through the CLI, shared by the tests that only read a finished, exported run
# (test_fit checks the folder, test_export the formats, test_finetune adapts it, test_embed
# embeds with it): each full
# fit costs about a minute on two cores.
# Its CNNs see the central 16 of the 24 pixels (as the shipped preset crops 32 to 24), so every
# format's checks cover the in-model crop; it has every optional stage (a 4-d Normalised-Softmax
# metric head, for test_embed). No input noise on the photometry head: with it, this run's blend
# weight (fitted on 24 validation objects) lands on 1, the head alone, and the export tests
# need the CNNs in the graph.
TINY_RUN_CONFIG = ("preset: tiny\nmodel:\n  trunk_size: 16\n  metric_loss: norm_softmax\n"
                   "  metric_dim: 4\n  photometry_noise: 0.0\n")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run (16-pixel trunk, metric head), exported; read-only.

    Under pytest-xdist the first worker to need it trains it into the folder all workers share
    (``getbasetemp().parent``), under a file lock; the others wait and read it, so the run is
    trained once per test run however many workers there are.

    Returns:
        A namespace with ``path`` (the run folder), ``config`` (its YAML file) and
        ``output`` (what ``starqso fit`` printed).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _train_tiny_run(tmp_path_factory.mktemp("tiny-run"))
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / "tiny-run-shared"
    with FileLock(str(folder) + ".lock"):
        done = folder / "fit-output.txt"
        if done.is_file():
            return types.SimpleNamespace(path=folder / "run", config=folder / "tiny.yaml",
                                         output=done.read_text())
        folder.mkdir(exist_ok=True)
        run = _train_tiny_run(folder)
        done.write_text(run.output)
        return run


def _train_tiny_run(folder):
    from click.testing import CliRunner

    from starqso.cli import main

    config = folder / "tiny.yaml"
    config.write_text(TINY_RUN_CONFIG)
    out = folder / "run"
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return types.SimpleNamespace(path=out, config=config, output=result.output)


@pytest.fixture(scope="module", autouse=True)
def _fresh_keras_state_per_module():
    """Keras' global state (layer-name counters, the default graph, kernel caches) reset after
    each test file: it grows with every model built, and later files ran up to three times
    slower in one pytest process than alone. Each file then starts as it does alone."""
    yield
    import keras

    keras.backend.clear_session()
