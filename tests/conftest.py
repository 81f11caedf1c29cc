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

    Returns:
        A namespace with ``path`` (the run folder), ``config`` (its YAML file) and
        ``output`` (what ``starqso fit`` printed).
    """
    from click.testing import CliRunner

    from starqso.cli import main

    folder = tmp_path_factory.mktemp("tiny-run")
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
