"""The metric-learning head (starqso.models.metric): losses, round trips, training, TFLite."""

import keras
import numpy as np
import pytest

from starqso.models.metric import (
    MetricHead,
    MetricLearner,
    ProxyLogits,
    ProxyNCALoss,
)


def _numpy_logits(embedding, proxies, loss, temperature):
    proxies = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    if loss == "norm_softmax":
        return embedding @ proxies.T / temperature
    squared = ((embedding[:, None, :] - proxies[None, :, :]) ** 2).sum(axis=-1)
    return -squared / temperature


@pytest.mark.parametrize("loss", ["proxy_nca", "norm_softmax"])
def test_proxy_logits_match_numpy(loss):
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(6, 4)).astype("float32")
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    layer = ProxyLogits(3, loss)
    got = np.asarray(layer(embedding))
    expected = _numpy_logits(embedding, np.asarray(layer.proxies), loss, layer.temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_proxy_nca_leaves_the_positive_out_of_the_denominator():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 3, 1, 2, 3])
    got = np.asarray(ProxyNCALoss(reduction=None)(labels, logits))
    expected = []
    for row, label in zip(logits, labels):
        others = np.delete(row, label)
        expected.append(np.log(np.exp(others).sum()) - row[label])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Unlike softmax cross-entropy, it keeps falling below log(1) as the positive wins.
    assert np.asarray(ProxyNCALoss()(np.array([0]), np.array([[10.0, -10.0]]))) < -15


def _toy(seed=0, per_class=60, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 1.5
    x = np.concatenate([centre + rng.normal(size=(per_class, dim)) for centre in centres])
    y = np.repeat(np.arange(3), per_class)
    return x.astype("float32"), y


@pytest.mark.parametrize("loss", ["proxy_nca", "norm_softmax"])
def test_training_gathers_each_class(loss, tmp_path):
    from starqso.discovery import precision_at_k

    x, y = _toy()
    head = MetricHead(feature_dim=16, hidden_units=32, embedding_dim=4, dropout=0.0)
    learner = MetricLearner(head, 3, loss)
    learner.compile(learning_rate=3e-3)
    before = precision_at_k(np.asarray(head({"features": x})), y, k=5)
    learner.fit({"features": x}, y, epochs=25, batch_size=32, verbose=0)
    embedding = np.asarray(head({"features": x}))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, atol=1e-5)
    after = precision_at_k(embedding, y, k=5)
    assert after > 0.95 and after >= before
    learner.save(tmp_path / "learner.keras")
    reloaded = keras.saving.load_model(tmp_path / "learner.keras")
    np.testing.assert_allclose(np.asarray(reloaded({"features": x[:8]})),
                               np.asarray(learner({"features": x[:8]})), atol=1e-5)
    assert reloaded.get_config()["loss"] == loss


def test_head_round_trips_keras_savedmodel_and_tflite(tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    head = MetricHead(feature_dim=8, photometry_dim=3, hidden_units=16, embedding_dim=4)
    rng = np.random.default_rng(2)
    inputs = {"features": rng.normal(size=(5, 8)).astype("float32"),
              "photometry": rng.normal(size=(5, 3)).astype("float32")}
    expected = np.asarray(head(inputs))
    clone = MetricHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    head.save(tmp_path / "head.keras")
    np.testing.assert_allclose(
        np.asarray(keras.saving.load_model(tmp_path / "head.keras")(inputs)), expected,
        atol=1e-6)
    archive = keras.export.ExportArchive()
    archive.track(head)
    archive.add_endpoint(
        name="serving_default", fn=lambda features, photometry: {
            "embedding": head({"features": features, "photometry": photometry})},
        input_signature=[tf.TensorSpec((None, 8), tf.float32, name="features"),
                         tf.TensorSpec((None, 3), tf.float32, name="photometry")])
    archive.write_out(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    np.testing.assert_allclose(served(**{k: tf.constant(v) for k, v in inputs.items()})[
        "embedding"].numpy(), expected, atol=1e-6)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    interpreter = Interpreter(model_content=converter.convert())
    details = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, value in inputs.items():
        index = next(i for key, i in details.items() if name in key)
        interpreter.resize_tensor_input(index, value.shape)
    interpreter.allocate_tensors()
    for name, value in inputs.items():
        index = next(i for key, i in details.items() if name in key)
        interpreter.set_tensor(index, value)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("build, fragment", [
    (lambda: MetricLearner(MetricHead(8), 3, "triplet"), "loss="),
    (lambda: MetricHead(8, embedding_dim=0), "embedding_dim="),
    (lambda: MetricLearner(MetricHead(8), 1, "proxy_nca"), "num_classes="),
    (lambda: ProxyLogits(3, "norm_softmax", temperature=0.0), "temperature="),
])
def test_bad_arguments_are_value_errors(build, fragment):
    with pytest.raises(ValueError, match="Received:") as excinfo:
        build()
    assert fragment in str(excinfo.value)


def test_the_deployable_model_carries_the_head(tmp_path):
    """StarQSOClassifier keeps a metric head through .keras reload; p(QSO) is unchanged."""
    from starqso.models import (
        AperturePhotometry,
        CutoutScaling,
        FeatureGenerator,
        FusionClassifier,
        StarQSOClassifier,
    )

    scaling = CutoutScaling([0.03, 0.01, 0.03, 0.03, 0.1], [0.1] * 5, [2.0] * 5)
    generator = FeatureGenerator(24, (4,), feature_dim=8, noise_dim=2, dense_units=8,
                                 dropout=0.0, photometry_dim=6)
    fusion = FusionClassifier(24, (4,), feature_dim=8, dense_units=8, dropout=0.0,
                              photometry_dim=6)
    photometry = AperturePhotometry(24, [0.1] * 6, [2.0] * 6)
    plain = StarQSOClassifier(scaling, generator, fusion, photometry)
    head = MetricHead(feature_dim=8, photometry_dim=6, hidden_units=8, embedding_dim=4)
    model = StarQSOClassifier(scaling, generator, fusion, photometry, metric_head=head)
    cutouts = np.random.default_rng(3).normal(size=(4, 24, 24, 5)).astype("float32")
    np.testing.assert_allclose(np.asarray(model({"image": cutouts})),
                               np.asarray(plain({"image": cutouts})), atol=1e-6)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    outputs = reloaded.embedding_model()({"image": cutouts})
    expected = model.embedding_model()({"image": cutouts})
    for name in ("p_qso", "vector", "metric"):
        np.testing.assert_allclose(np.asarray(outputs[name]), np.asarray(expected[name]),
                                   atol=1e-5)
    assert set(plain.embedding_model()({"image": cutouts})) == {"p_qso", "vector"}
    with pytest.raises(ValueError, match="metric_head"):
        StarQSOClassifier(scaling, generator, fusion, photometry,
                          metric_head=MetricHead(feature_dim=5))
