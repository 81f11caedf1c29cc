"""The metric-learning head (starqso.models.metric): losses, round trips, training, TFLite."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from starqso.models.metric import (
    DEFAULT_TEMPERATURE,
    METRIC_LOSSES,
    L2Normalize,
    MetricHead,
    MetricLearner,
    ProxyLogits,
    ProxyNCALoss,
    class_balanced_weights,
)

FEATURES = 128


def _unit_rows(rng, shape):
    x = rng.normal(size=shape).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_logits(embedding, proxies, loss, temperature):
    proxies = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    if loss == "norm_softmax":
        embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
        return embedding @ proxies.T / temperature
    squared = ((embedding[:, None, :] - proxies[None, :, :]) ** 2).sum(axis=-1)
    return -squared / temperature


def _numpy_proxy_nca(logits, labels):
    """-logit_y + log sum_{z != y} exp(logit_z), row by row."""
    return np.array([np.log(np.exp(np.delete(row, label)).sum()) - row[label]
                     for row, label in zip(logits.astype(np.float64), labels, strict=False)])


# --- the layers and the loss against NumPy --------------------------------------------------


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_proxy_logits_match_numpy_and_round_trip_their_config(loss):
    rng = np.random.default_rng(0)
    embedding = _unit_rows(rng, (6, 4))
    layer = ProxyLogits(3, loss)
    assert layer.temperature == DEFAULT_TEMPERATURE[loss]
    layer.build((None, 4))
    # Random (not unit) proxies: the layer normalises them itself.
    layer.proxies.assign(rng.normal(size=(3, 4)) * 3)
    got = np.asarray(layer(embedding))
    expected = _numpy_logits(embedding, np.asarray(layer.proxies), loss, layer.temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    clone = ProxyLogits.from_config(layer.get_config())
    assert (clone.num_classes, clone.loss, clone.temperature) == (3, loss, layer.temperature)
    custom = ProxyLogits(3, loss, temperature=0.5)
    custom.build((None, 4))
    custom.proxies.assign(layer.proxies)
    np.testing.assert_allclose(np.asarray(custom(embedding)),
                               expected * layer.temperature / 0.5, rtol=1e-4, atol=1e-4)


def test_norm_softmax_logits_are_cosines_of_any_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 4)).astype("float32") * 7
    layer = ProxyLogits(2, "norm_softmax", temperature=1.0)
    got = np.asarray(layer(x))
    assert np.all(np.abs(got) <= 1 + 1e-5)
    np.testing.assert_allclose(got, _numpy_logits(x, np.asarray(layer.proxies), "norm_softmax",
                                                  1.0), atol=1e-5)


def test_l2_normalize_gives_unit_rows_and_keeps_a_zero_row_finite():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 2e-3]], "float32")
    got = np.asarray(L2Normalize()(x))
    np.testing.assert_allclose(got[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(got[1], [0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(got[2]), 1, rtol=1e-5)


@pytest.mark.parametrize("label_shape", [(-1,), (-1, 1)])
def test_proxy_nca_matches_numpy_with_the_positive_out_of_the_denominator(label_shape):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)).astype("float32") * 3
    labels = np.array([0, 3, 1, 2, 3])
    expected = _numpy_proxy_nca(logits, labels)
    per_object = np.asarray(ProxyNCALoss(reduction=None)(labels.reshape(label_shape), logits))
    np.testing.assert_allclose(per_object, expected, rtol=1e-5, atol=1e-6)
    mean = float(ProxyNCALoss()(labels.reshape(label_shape), logits))
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-5)
    # Not softmax cross-entropy, whose denominator holds the positive too.
    softmax = np.asarray(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                      from_logits=True))
    assert np.all(per_object < softmax)
    # ...and, unlike it, falls below 0 as the positive wins.
    assert float(ProxyNCALoss()(np.array([0]), np.array([[10.0, -10.0]]))) == pytest.approx(-20)


def test_proxy_nca_gradients_are_finite_and_skip_the_positive_in_the_denominator():
    logits = tf.Variable([[2.0, 1.0, -1.0]])
    with tf.GradientTape() as tape:
        loss = ProxyNCALoss()(np.array([0]), logits)
    gradient = tape.gradient(loss, logits).numpy()[0]
    # d/dlogit_y = -1 exactly; the others get their softmax over the negatives only.
    others = np.exp([1.0, -1.0]) / np.exp([1.0, -1.0]).sum()
    np.testing.assert_allclose(gradient, [-1.0, *others], rtol=1e-5)


def test_proxy_nca_loss_round_trips_through_keras_serialization():
    loss = ProxyNCALoss(reduction="sum")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(clone, ProxyNCALoss) and clone.reduction == "sum"
    assert clone.name == "proxy_nca"


# --- the head: config, .keras, SavedModel, TFLite -------------------------------------------


def _head_inputs(head, count=5, seed=2):
    rng = np.random.default_rng(seed)
    inputs = {"features": rng.normal(size=(count, head.feature_dim)).astype("float32")}
    if head.photometry_dim:
        inputs["photometry"] = rng.normal(size=(count, head.photometry_dim)).astype("float32")
    return inputs


def test_head_inputs_outputs_and_config_round_trip():
    plain = MetricHead()
    assert set(plain.input) == {"features"}
    assert tuple(plain.output.shape) == (None, 32)
    head = MetricHead(feature_dim=8, photometry_dim=3, hidden_units=16, embedding_dim=4,
                      dropout=0.2, name="metric_head")
    assert set(head.input) == {"features", "photometry"}
    config = head.get_config()
    assert {key: config[key] for key in MetricHead.CONFIG_KEYS} == {
        "feature_dim": 8, "photometry_dim": 3, "hidden_units": 16, "embedding_dim": 4,
        "dropout": 0.2}
    clone = MetricHead.from_config(config)
    assert clone.get_config() == config
    embedding = np.asarray(head(_head_inputs(head)))
    assert embedding.shape == (5, 4) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, atol=1e-5)
    # The photometry is used (concatenated after the features).
    inputs = _head_inputs(head)
    moved = {**inputs, "photometry": inputs["photometry"] + 5}
    assert not np.allclose(np.asarray(head(inputs)), np.asarray(head(moved)))


def _saved_model(head, path):
    archive = keras.export.ExportArchive()
    archive.track(head)
    signature = [tf.TensorSpec((None, head.feature_dim), tf.float32, name="features")]
    if head.photometry_dim:
        signature.append(tf.TensorSpec((None, head.photometry_dim), tf.float32,
                                       name="photometry"))
        fn = lambda features, photometry: {  # noqa: E731
            "embedding": head({"features": features, "photometry": photometry},
                              training=False)}
    else:
        fn = lambda features: {  # noqa: E731
            "embedding": head({"features": features}, training=False)}
    archive.add_endpoint(name="serving_default", fn=fn, input_signature=signature)
    archive.write_out(str(path), verbose=False)


def _run_tflite(flatbuffer, inputs):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default XNNPACK delegate every op stays visible to _get_ops_details.
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    # The signature's inputs come back as "serving_default_<name>:0".
    index = {name: next(d["index"] for d in interpreter.get_input_details()
                        if name in d["name"]) for name in inputs}
    for name, value in inputs.items():
        interpreter.resize_tensor_input(index[name], value.shape)
    interpreter.allocate_tensors()
    for name, value in inputs.items():
        interpreter.set_tensor(index[name], value)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return output, {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.parametrize("photometry_dim", [0, 3])
def test_head_round_trips_keras_savedmodel_and_fp32_tflite(photometry_dim, tmp_path):
    from starqso.deploy.tflite import convert_tflite

    head = MetricHead(feature_dim=8, photometry_dim=photometry_dim, hidden_units=16,
                      embedding_dim=4)
    inputs = _head_inputs(head)
    expected = np.asarray(head(inputs))

    head.save(tmp_path / "head.keras")
    reloaded = keras.saving.load_model(tmp_path / "head.keras", safe_mode=True)
    assert isinstance(reloaded, MetricHead) and reloaded.get_config() == head.get_config()
    np.testing.assert_allclose(np.asarray(reloaded(inputs)), expected, atol=1e-6)

    _saved_model(head, tmp_path / "saved")
    served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    got = served(**{key: tf.constant(value) for key, value in inputs.items()})["embedding"]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)

    got, ops = _run_tflite(convert_tflite(tmp_path / "saved", "fp32"), inputs)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Builtin ops only (no Flex, no custom ops); the converter fuses the normalisation's
    # MUL, SUM and RSQRT into its own L2_NORMALIZATION.
    assert not any("Flex" in name or name in ("CUSTOM", "DELEGATE") for name in ops), ops
    assert "FULLY_CONNECTED" in ops and ("L2_NORMALIZATION" in ops or "RSQRT" in ops), ops


# --- the task model: compile defaults, training, reload, tf.distribute ----------------------


@pytest.mark.parametrize("loss, loss_class", [
    ("proxy_nca", ProxyNCALoss),
    ("norm_softmax", keras.losses.SparseCategoricalCrossentropy),
])
def test_learner_compile_defaults_and_explicit_arguments(loss, loss_class):
    learner = MetricLearner(MetricHead(8, hidden_units=8, embedding_dim=4), 3, loss)
    assert learner.temperature == DEFAULT_TEMPERATURE[loss]
    assert tuple(learner.output.shape) == (None, 3)
    learner.compile()
    assert isinstance(learner.optimizer, keras.optimizers.Adam)
    assert float(learner.optimizer.learning_rate) == pytest.approx(1e-3)
    assert isinstance(learner.loss, loss_class)
    if loss == "norm_softmax":
        assert learner.loss.get_config()["from_logits"]
    assert [m.name for m in learner._compile_metrics._user_metrics] == ["accuracy"]
    sgd = keras.optimizers.SGD(0.1)
    learner.compile(optimizer=sgd, loss="sparse_categorical_crossentropy", metrics=[])
    assert learner.optimizer is sgd and learner.loss == "sparse_categorical_crossentropy"
    # The config's "loss" is the constructor's, whatever the compiled loss.
    assert learner.get_config()["loss"] == loss


def _toy(seed, per_class, dim=FEATURES, spread=0.3):
    """Three Gaussian clusters in ``dim`` dimensions, the same centres for every seed.

    With spread 0.3 the clusters overlap: raw-vector precision@5 is about 0.7 on held-out
    objects, so the head has to learn the directions that separate them.
    """
    centres = np.random.default_rng(0).normal(size=(3, dim)) * spread
    rng = np.random.default_rng(seed)
    x = np.concatenate([centre + rng.normal(size=(per_class, dim)) for centre in centres])
    return x.astype("float32"), np.repeat(np.arange(3), per_class)


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_training_gathers_each_class_and_the_learner_reloads(loss, tmp_path):
    from starqso.discovery import precision_at_k

    keras.utils.set_random_seed(0)
    x, y = _toy(1, 150)
    held_out, held_out_y = _toy(2, 50)
    head = MetricHead(feature_dim=FEATURES, hidden_units=32, embedding_dim=8, dropout=0.1)
    learner = MetricLearner(head, 3, loss, name="learner")
    learner.compile(learning_rate=3e-3)

    def held_out_precision():
        return precision_at_k(head.predict({"features": held_out}, verbose=0), held_out_y, k=5)

    before = held_out_precision()
    # (N, 1) labels, as the metric stage's datasets give them.
    history = learner.fit({"features": x}, y.reshape(-1, 1), epochs=8, batch_size=32,
                          verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    embedding = np.asarray(head({"features": held_out}))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, atol=1e-5)
    after = held_out_precision()
    # Chance is 1/3; the untrained head 0.36-0.44, the raw vectors 0.7. Trained, over seeds
    # 0-6: proxy_nca 0.96-0.98, norm_softmax 0.81-0.89.
    assert after > 0.75 and after > before + 0.3, (before, after)

    learner.save(tmp_path / "learner.keras")
    reloaded = keras.saving.load_model(tmp_path / "learner.keras", safe_mode=True)
    assert isinstance(reloaded, MetricLearner) and isinstance(reloaded.head, MetricHead)
    assert reloaded.get_config() == learner.get_config()
    assert reloaded.get_config()["loss"] == loss
    np.testing.assert_allclose(np.asarray(reloaded({"features": held_out[:8]})),
                               np.asarray(learner({"features": held_out[:8]})), atol=1e-5)
    np.testing.assert_allclose(np.asarray(reloaded.head({"features": held_out[:8]})),
                               embedding[:8], atol=1e-6)
    # The compiled loss and optimizer come back, so the reloaded learner trains on.
    assert isinstance(reloaded.loss, type(learner.loss))
    assert int(reloaded.optimizer.iterations) == int(learner.optimizer.iterations)
    reloaded.fit({"features": x[:64]}, y[:64], epochs=1, batch_size=32, verbose=0)
    assert int(reloaded.optimizer.iterations) == int(learner.optimizer.iterations) + 2


def test_learner_with_photometry_and_sample_weights_trains():
    head = MetricHead(feature_dim=8, photometry_dim=3, hidden_units=8, embedding_dim=4)
    learner = MetricLearner(MetricHead.from_config(head.get_config()), 4, "proxy_nca")
    assert set(learner.input) == {"features", "photometry"}
    learner.compile()
    inputs = _head_inputs(head, count=16)
    classes = np.array([0] * 10 + [1, 1, 2, 2, 3, 3])
    weights = class_balanced_weights(classes)
    history = learner.fit(inputs, classes, sample_weight=weights, epochs=2, batch_size=8,
                          verbose=0).history
    assert np.all(np.isfinite(history["loss"]))


def _mirrored():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest should configure two logical CPUs"
    # ReductionToOneDevice, not the default collectives: collective ops of one 2-replica
    # MirroredStrategy leave state behind that breaks any later one in the same process
    # (see tests/test_diffusion.py).
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def test_learner_trains_under_a_two_replica_mirrored_strategy():
    strategy = _mirrored()
    with strategy.scope():
        learner = MetricLearner(MetricHead(16, hidden_units=8, embedding_dim=4, dropout=0.0),
                                3, "proxy_nca")
        learner.compile()
    x, y = _toy(3, 16, dim=16, spread=1.0)
    dataset = tf.data.Dataset.from_tensor_slices(({"features": x}, y.reshape(-1, 1))).batch(8)
    before = [w.copy() for w in learner.get_weights()]
    history = learner.fit(dataset, validation_data=dataset, epochs=2, shuffle=False,
                          verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["val_loss"]))
    assert all(not np.array_equal(a, b) for a, b in zip(before, learner.get_weights(),
                                                        strict=False))
    # The head shares the trained weights (the proxies are the learner's only others).
    assert len(learner.get_weights()) == len(learner.head.get_weights()) + 1
    assert all(np.array_equal(a, b) for a, b in zip(learner.head.get_weights(),
                                                    learner.get_weights(), strict=False))
    # The loss object reduces over the global batch: two replicas give one device's loss.
    single = MetricLearner.from_config(learner.get_config())
    single.set_weights(learner.get_weights())
    single.compile()
    distributed = learner.evaluate(dataset, verbose=0, return_dict=True)
    alone = single.evaluate(dataset, verbose=0, return_dict=True)
    assert distributed["loss"] == pytest.approx(alone["loss"], rel=1e-5)
    assert distributed["accuracy"] == pytest.approx(alone["accuracy"])


# --- bad arguments, class weights -----------------------------------------------------------


@pytest.mark.parametrize("build, fragment", [
    (lambda: MetricLearner(MetricHead(8), 3, "triplet"), "loss='triplet'"),
    (lambda: ProxyLogits(3, "arcface"), "loss='arcface'"),
    (lambda: MetricHead(8, embedding_dim=0), "embedding_dim=0"),
    (lambda: MetricHead(8, embedding_dim=2.5), "embedding_dim=2.5"),
    (lambda: MetricHead(0), "feature_dim=0"),
    (lambda: MetricHead(8, photometry_dim=-1), "photometry_dim=-1"),
    (lambda: MetricHead(8, dropout=1.0), "dropout=1.0"),
    (lambda: MetricLearner(MetricHead(8), 1, "proxy_nca"), "num_classes=1"),
    (lambda: ProxyLogits(True, "proxy_nca"), "num_classes=True"),
    (lambda: ProxyLogits(3, "norm_softmax", temperature=0.0), "temperature=0.0"),
    (lambda: ProxyLogits(3, "norm_softmax", temperature=-1), "temperature=-1"),
    (lambda: MetricLearner(keras.Sequential([keras.layers.Dense(2)]), 3), "head=Sequential"),
    (lambda: class_balanced_weights([0.5, 1.0]), "dtype=float64"),
])
def test_bad_arguments_are_value_errors(build, fragment):
    with pytest.raises(ValueError, match="Received:") as excinfo:
        build()
    assert fragment in str(excinfo.value)


def test_numpy_integers_are_fine():
    learner = MetricLearner(MetricHead(np.int64(8), embedding_dim=np.int32(4)), np.int64(3))
    assert learner.get_config()["num_classes"] == 3
    assert isinstance(learner.get_config()["num_classes"], int)


def test_class_balanced_weights_give_each_class_the_same_total():
    classes = np.array([0, 0, 0, 0, 1, 2, 2, -1])
    weights = class_balanced_weights(classes)
    assert weights.dtype == np.float32 and weights[-1] == 0
    totals = [weights[classes == c].sum() for c in (0, 1, 2)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-6)
    np.testing.assert_allclose(weights[:-1].mean(), 1, rtol=1e-6)
    np.testing.assert_array_equal(class_balanced_weights(np.array([-1, -1])), [0, 0])


# --- inside the deployable model ------------------------------------------------------------


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
