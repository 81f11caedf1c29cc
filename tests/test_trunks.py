import math

import h5py
import keras
import numpy as np
import pytest
from helpers import assert_one_line_error

from starqso.config import TRUNKS
from starqso.errors import InputError
from starqso.models.blocks import image_trunk
from starqso.models.trunks import (
    APPLICATION_TRUNKS,
    RelativeSelfAttention,
    application_trunk,
    image_trunk_features,
    load_trunk_weights,
    relative_position_index,
)

DENSE = 16
FILTERS = (8, 16, 32)
# keras.applications trunks that build and run in about a second; the others are slow tests.
CHEAP = ("vgg16", "efficientnetb0")


def images(size, count=4, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (count, size, size, 5)).astype("float32")


def trunk_model(trunk, size, filters=FILTERS, dense=DENSE, dropout=0.1, name="trunk",
                model_name=None):
    """A functional model around one trunk: {"image": (S, S, 5)} -> (dense,)."""
    image = keras.Input((size, size, 5), name="image")
    features = image_trunk_features(image, trunk, filters, dense, dropout, name)
    model = keras.Model({"image": image}, features, name=model_name)
    model.image_size = size  # what export.write_saved_model reads
    return model


def randomise(weights, seed):
    """Non-default values in every weight (positive, so variances stay variances)."""
    rng = np.random.default_rng(seed)
    for weight in weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype))


def set_random_relative_bias(model, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    layers = [layer for layer in model.layers if isinstance(layer, RelativeSelfAttention)]
    for layer in layers:
        layer.relative_bias.assign(rng.normal(0, scale, layer.relative_bias.shape))
    return layers


def tflite_run(blob, inputs):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    # The model's own ops, read before allocation hands some to the XNNPACK delegate.
    details = interpreter._get_ops_details()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = {op["op_name"] for op in details}
    int8_ops = {op["op_name"] for op in details
                if len(op["outputs"]) and tensors[op["outputs"][0]]["dtype"] == np.int8}
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), ops, int8_ops


def assert_builtin_only(ops):
    assert not any("Flex" in name or name in ("CUSTOM", "DELEGATE") for name in ops), ops


# --- every trunk builds ------------------------------------------------------------------------


def _trunk_cases():
    cases = [pytest.param("cnn", 24, id="cnn-24"), pytest.param("hybrid", 24, id="hybrid-24")]
    for trunk in APPLICATION_TRUNKS:
        marks = () if trunk in CHEAP else (pytest.mark.slow,)
        for size in (32, 24):
            cases.append(pytest.param(trunk, size, marks=marks, id=f"{trunk}-{size}"))
    return cases


def test_the_cases_cover_every_trunk():
    assert {case.values[0] for case in _trunk_cases()} == set(TRUNKS)


@pytest.mark.parametrize("trunk, size", _trunk_cases())
def test_every_trunk_builds_and_gives_a_finite_embedding(trunk, size):
    model = trunk_model(trunk, size)
    out = np.asarray(model({"image": images(size, count=2)}))
    assert out.shape == (2, DENSE) and np.all(np.isfinite(out))
    assert model.get_layer("trunk_embedding").units == DENSE
    if trunk in APPLICATION_TRUNKS:
        minimum = APPLICATION_TRUNKS[trunk]
        backbone = model.get_layer(f"trunk_{trunk}")
        assert isinstance(backbone, keras.Model)
        assert backbone.input_shape == (None, max(size, minimum), max(size, minimum), 5)
        names = [layer.name for layer in model.layers]
        # Resized in the graph exactly when the cutout is below the architecture's minimum.
        assert ("trunk_resize" in names) == (size < minimum)


def test_cnn_trunk_is_the_blocks_image_trunk_with_the_same_layer_names():
    image = keras.Input((24, 24, 5), name="image")
    expected = keras.Model(image, image_trunk(image, FILTERS, DENSE, 0.1, "trunk"))
    model = trunk_model("cnn", 24)
    assert [layer.name for layer in model.layers] == [layer.name for layer in expected.layers]
    assert model.count_params() == expected.count_params()


@pytest.mark.parametrize("filters, grid", [((8,), 12), ((8, 16), 12), ((8, 16, 32), 6),
                                           ((8, 16, 32, 64), 3)])
def test_hybrid_trunk_stages(filters, grid):
    model = trunk_model("hybrid", 24, filters=filters)
    names = [layer.name for layer in model.layers]
    attention = [layer for layer in model.layers if isinstance(layer, RelativeSelfAttention)]
    assert len(attention) == 2
    width = filters[-1]
    for layer in attention:
        # The transformer runs on the last stage's grid at its width, 32-wide heads.
        assert layer.input.shape[1:] == (grid, grid, width)
        assert layer.num_heads == max(1, width // 32)
        assert layer.num_heads * layer.key_dim == width
        assert layer.relative_bias.shape == ((2 * grid - 1) ** 2, layer.num_heads)
    assert sum(name.endswith("_depthwise") for name in names) == len(filters[1:-1])
    assert not any("gelu" in str(layer.get_config().get("activation", "")) for layer in
                   model.layers)
    out = np.asarray(model({"image": images(24, count=3)}))
    assert out.shape == (3, DENSE) and np.all(np.isfinite(out))


def test_unknown_trunk_is_a_library_error():
    with pytest.raises(ValueError, match="trunk must be one of"):
        trunk_model("vit", 24)


def test_efficientnet_trunk_sees_the_scaled_cutout_unchanged():
    model = trunk_model("efficientnetb0", 32)
    backbone = model.get_layer("trunk_efficientnetb0")
    # Keras' Rescaling(1/255) and Normalization at the stock model's input are left out: the
    # input goes straight into the stem's padding and convolution.
    assert not [layer for layer in backbone.layers
                if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
    x = images(32, count=2)
    stem = keras.Model(backbone.input, backbone.get_layer("stem_conv").output)
    direct = backbone.get_layer("stem_conv")(backbone.get_layer("stem_conv_pad")(x))
    np.testing.assert_allclose(np.asarray(stem(x)), np.asarray(direct), rtol=1e-6, atol=1e-6)
    # The same weights in the stock architecture (its Normalization unadapted, an identity)
    # give the same features from 255 x the input, and others from the input itself.
    stock = application_trunk("efficientnetb0", 32, stock=True)
    for layer in stock.layers:
        if layer.weights and not isinstance(layer, keras.layers.Normalization):
            layer.set_weights(backbone.get_layer(layer.name).get_weights())
    features = np.asarray(backbone(x))
    # (random-init EfficientNet features are ~1e-6: each squeeze-excitation gate halves them)
    scale = np.abs(features).max()
    np.testing.assert_allclose(np.asarray(stock(255.0 * x)), features, atol=1e-4 * scale)
    assert np.abs(np.asarray(stock(x)) - features).max() > 0.1 * scale


def test_efficientnet_trunk_reloads_from_a_keras_file(tmp_path):
    # 24 pixels: resized to 32 first.
    model = trunk_model("efficientnetb0", 24)
    x = images(24, count=2)
    moving = [w.numpy().copy() for w in model.non_trainable_weights]
    inference = np.asarray(model({"image": x}, training=False))
    # A call without `training` is inference: the Resizing layer (whose own default is
    # training=True) must not switch the batch norms behind it to batch statistics ...
    np.testing.assert_allclose(np.asarray(model({"image": x})), inference, rtol=1e-6,
                               atol=1e-6 * np.abs(inference).max())
    for got, want in zip(model.non_trainable_weights, moving, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # ... while training still is training.
    assert np.abs(np.asarray(model({"image": x}, training=True)) - inference).max() > 1e-3
    path = tmp_path / "efficientnet.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    expected = np.asarray(model({"image": x}))
    # (random-init EfficientNet embeddings are tiny, ~1e-5: tolerances relative to them)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(np.asarray(reloaded({"image": x})), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


# --- relative self-attention -------------------------------------------------------------------


def attention_reference(layer, x):
    """NumPy multi-head attention with CoAtNet's relative bias, by explicit offsets."""
    batch, height, width, channels = x.shape
    heads, dim = layer.num_heads, layer.key_dim
    tokens = x.reshape(batch, height * width, channels).astype(np.float64)

    def project(dense, values):
        kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
        return values @ kernel + bias

    q, k, v = (project(d, tokens).reshape(batch, -1, heads, dim)
               for d in (layer.query, layer.key, layer.value))
    table = np.asarray(layer.relative_bias, np.float64)
    n = height * width
    bias = np.zeros((heads, n, n))
    for i in range(n):
        for j in range(n):
            dy = i // width - j // width + height - 1
            dx = i % width - j % width + width - 1
            bias[:, i, j] = table[dy * (2 * width - 1) + dx]
    logits = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(dim) + bias
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.einsum("bhij,bjhd->bihd", weights, v).reshape(batch, n, heads * dim)
    return project(layer.output_dense, out).reshape(x.shape)


def attention_layer(table):
    # A 3 x 4 grid (H != W catches a transposed index), 2 heads of 4.
    layer = RelativeSelfAttention(2, 4, name="attention")
    layer.build((None, 3, 4, 6))
    rng = np.random.default_rng(5)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape))
    layer.relative_bias.assign(table(layer.relative_bias.shape))
    return layer


def test_relative_position_index_matches_the_offsets():
    index = relative_position_index(3, 4).reshape(12, 12)
    offsets = {}
    for i in range(12):
        for j in range(12):
            offset = (i // 4 - j // 4, i % 4 - j % 4)
            # one row per offset, and one offset per row
            assert offsets.setdefault(offset, index[i, j]) == index[i, j]
    assert len(set(offsets.values())) == len(offsets) == 5 * 7
    assert sorted(offsets.values()) == list(range(35))


def test_relative_attention_is_plain_multi_head_attention_when_the_table_is_zero():
    layer = attention_layer(np.zeros)
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 4, 6)).astype("float32")
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, attention_reference(layer, x), rtol=1e-4, atol=1e-5)
    # The reference with no bias at all is keras' own multi-head attention, too.
    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    tokens = x.reshape(2, 12, 6)
    mha(tokens, tokens)
    for dense, einsum in ((layer.query, mha.query_dense), (layer.key, mha.key_dense),
                          (layer.value, mha.value_dense)):
        kernel, bias = dense.get_weights()
        einsum.set_weights([kernel.reshape(6, 2, 4), bias.reshape(2, 4)])
    kernel, bias = layer.output_dense.get_weights()
    mha.output_dense.set_weights([kernel.reshape(2, 4, 6), bias])
    np.testing.assert_allclose(out.reshape(2, 12, 6), np.asarray(mha(tokens, tokens)),
                               rtol=1e-4, atol=1e-5)
    # ... so it cannot tell where tokens are: shuffling them shuffles the output alike.
    order = np.random.default_rng(1).permutation(12)
    shuffled = x.reshape(2, 12, 6)[:, order].reshape(x.shape)
    np.testing.assert_allclose(np.asarray(layer(shuffled)).reshape(2, 12, 6),
                               out.reshape(2, 12, 6)[:, order], rtol=1e-4, atol=1e-5)


def test_relative_bias_makes_attention_position_aware():
    layer = attention_layer(lambda shape: np.random.default_rng(2).normal(0, 2, shape))
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 4, 6)).astype("float32")
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, attention_reference(layer, x), rtol=1e-4, atol=1e-5)
    order = np.random.default_rng(1).permutation(12)
    shuffled = np.asarray(layer(x.reshape(2, 12, 6)[:, order].reshape(x.shape)))
    # Unlike plain attention (the test above), a shuffle changes what each token attends to.
    gap = np.abs(shuffled.reshape(2, 12, 6) - out.reshape(2, 12, 6)[:, order]).max()
    assert gap > 0.05 * np.abs(out).max(), gap


def test_relative_attention_config_round_trip():
    layer = RelativeSelfAttention(3, 8, name="attention")
    config = layer.get_config()
    assert config["num_heads"] == 3 and config["key_dim"] == 8
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is RelativeSelfAttention and clone.get_config() == config
    for bad in ((0, 8), (2, 0)):
        with pytest.raises(ValueError, match="num_heads >= 1"):
            RelativeSelfAttention(*bad)
    with pytest.raises(ValueError, match="static H, W"):
        RelativeSelfAttention(1, 4)(keras.Input((None, 4, 8)))


def test_hybrid_model_reloads_from_a_keras_file_with_identical_outputs(tmp_path):
    model = trunk_model("hybrid", 24)
    set_random_relative_bias(model)  # non-default, so a bias lost on reload would show
    x = images(24)
    expected = np.asarray(model({"image": x}))
    path = tmp_path / "hybrid.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded({"image": x})), expected, rtol=1e-6,
                               atol=1e-6)
    for layer in reloaded.layers:
        if isinstance(layer, RelativeSelfAttention):
            np.testing.assert_array_equal(np.asarray(layer.relative_bias),
                                          np.asarray(model.get_layer(layer.name).relative_bias))


# --- TFLite ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_saved_model(tmp_path_factory):
    from starqso.deploy.tflite import write_saved_model

    keras.utils.set_random_seed(0)
    model = trunk_model("hybrid", 24, dropout=0.2)
    set_random_relative_bias(model)
    path = tmp_path_factory.mktemp("hybrid") / "saved_model"
    write_saved_model(model, path)
    return model, path


def test_hybrid_trunk_converts_to_fp32_tflite(hybrid_saved_model):
    from starqso.deploy.tflite import convert_tflite

    model, path = hybrid_saved_model
    x = images(24, count=8, seed=3)
    got, ops, _ = tflite_run(convert_tflite(path, "fp32"), x)
    assert_builtin_only(ops)
    # The attention is matmuls and a softmax; its bias gather is folded to a constant.
    assert {"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED", "CONV_2D"} <= ops
    assert "GATHER" not in ops
    # float32 both ways, only the summation order differs
    np.testing.assert_allclose(got, np.asarray(model({"image": x})), rtol=1e-4, atol=1e-5)


def test_hybrid_trunk_converts_to_int8_tflite(hybrid_saved_model):
    from starqso.deploy.tflite import convert_tflite

    model, path = hybrid_saved_model
    calibration = images(24, count=32, seed=2)
    x = images(24, count=16, seed=3)
    got, ops, int8_ops = tflite_run(convert_tflite(path, "int8", calibration), x)
    assert_builtin_only(ops)
    # The convolutions, projections and attention itself run in int8.
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL",
            "SOFTMAX"} <= int8_ops
    expected = np.asarray(model({"image": x}))
    spread = expected.max() - expected.min()
    # Each int8 tensor has 255 steps over its calibrated range, and about 20 quantised ops
    # lie between input and embedding, each adding up to half a step of its own range: the
    # embedding stays within a few percent of its range (3.8% max here, 0.3% mean). The bounds
    # leave room for other seeds but not for a broken graph (a wrong scale, a lost bias).
    assert np.abs(got - expected).max() < 0.1 * spread
    assert np.abs(got - expected).mean() < 0.02 * spread
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_efficientnet_trunk_converts_to_int8_tflite(tmp_path):
    from starqso.deploy.tflite import convert_tflite, write_saved_model

    keras.utils.set_random_seed(0)
    model = trunk_model("efficientnetb0", 24, dense=32)
    write_saved_model(model, tmp_path / "saved_model")
    calibration = images(24, count=32, seed=2)
    x = images(24, count=16, seed=3)
    expected = np.asarray(model({"image": x}))
    got, ops, _ = tflite_run(convert_tflite(tmp_path / "saved_model", "fp32"), x)
    assert_builtin_only(ops)
    assert "RESIZE_BILINEAR" in ops
    # Random-init EfficientNet embeddings are ~1e-6 (each squeeze-excitation gate halves the
    # signal): tolerances are relative to their spread.
    spread = expected.max() - expected.min()
    assert spread > 0
    assert np.abs(got - expected).max() < 1e-4 * spread
    got, ops, int8_ops = tflite_run(convert_tflite(tmp_path / "saved_model", "int8",
                                                   calibration), x)
    assert_builtin_only(ops)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR"} <= int8_ops
    # About 80 quantised convolutions deep (the swish and squeeze-excitation products in
    # between stay float, export.FLOAT_OPS), so looser than the hybrid's bounds: 1.1% mean and
    # 8% max of the spread here, correlation 0.995.
    assert np.abs(got - expected).mean() < 0.03 * spread
    assert np.abs(got - expected).max() < 0.2 * spread
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


# --- load_trunk_weights ------------------------------------------------------------------------


def nested(trunk, size, name):
    """A model holding the trunk two levels down: outer -> inner (name) -> trunk sub-model."""
    inner = trunk_model(trunk, size, dropout=0.0, model_name=name)
    image = keras.Input((size, size, 5), name="image")
    return keras.Model(image, keras.layers.Dense(1, name="head")(inner({"image": image})),
                       name=f"outer_{name}")


@pytest.fixture(scope="module")
def efficientnet_file(tmp_path_factory):
    """A 5-band efficientnetb0 trunk with non-default weights and its .weights.h5 file (each
    EfficientNet build costs seconds); read-only."""
    source = trunk_model("efficientnetb0", 32)
    trunk = source.get_layer("trunk_efficientnetb0")
    randomise(trunk.weights, seed=1)
    path = tmp_path_factory.mktemp("efficientnet") / "trunk.weights.h5"
    trunk.save_weights(path)
    return trunk, path


def test_load_trunk_weights_round_trips_a_5_band_file(efficientnet_file):
    trunk, path = efficientnet_file
    # Two trunks in one model (generator and fusion alike), each two levels down; the
    # second reads 24-pixel cutouts (resized to 32): the weights do not depend on the side.
    first, second = nested("efficientnetb0", 32, "generator"), nested("efficientnetb0", 24,
                                                                      "fusion")
    image = keras.Input((32, 32, 5))
    both = keras.Model(image, [first(image), second(keras.layers.CenterCrop(24, 24)(image))])
    head = [w.numpy().copy() for w in both.get_layer("outer_generator").get_layer(
        "head").weights]
    messages = load_trunk_weights(both, path)
    assert len(messages) == 2 and all(str(path) in m and "5-band efficientnetb0" in m
                                      for m in messages)
    assert any("outer_generator/generator/trunk_efficientnetb0" in m for m in messages)
    for outer in (first, second):
        loaded = outer.get_layer(outer.name[len("outer_"):]).get_layer("trunk_efficientnetb0")
        assert len(loaded.weights) == len(trunk.weights)
        for got, want in zip(loaded.weights, trunk.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Only the trunks: the rest of the model keeps its weights.
    for got, want in zip(first.get_layer("head").weights, head, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_load_trunk_weights_spreads_a_3_band_imagenet_style_file(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    # The stock 3-band model, Rescaling and Normalization included, written as Keras'
    # ImageNet files are (tf.keras' weights-only HDF5 layout, layer_names at the root).
    rgb = application_trunk("efficientnetb0", 32, bands=3, stock=True)
    randomise(rgb.weights, seed=2)
    path = tmp_path / "efficientnetb0_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, rgb)
    model = nested("efficientnetb0", 32, "fusion")
    messages = load_trunk_weights(model, path)
    assert messages == [f"trunk weights {path} (3-band efficientnetb0, first convolution "
                        f"spread over the 5 bands) -> outer_fusion/fusion/trunk_efficientnetb0"]
    trunk = model.get_layer("fusion").get_layer("trunk_efficientnetb0")
    rgb_kernel = rgb.get_layer("stem_conv").kernel.numpy()
    kernel = trunk.get_layer("stem_conv").kernel.numpy()
    assert kernel.shape == rgb_kernel.shape[:2] + (5,) + rgb_kernel.shape[3:]
    for band in range(5):
        np.testing.assert_allclose(kernel[:, :, band], rgb_kernel.mean(axis=2) * 0.6,
                                   rtol=1e-6)
    # A flat input gives the 3-band response: the kernels sum alike.
    np.testing.assert_allclose(kernel.sum(axis=(0, 1, 2)), rgb_kernel.sum(axis=(0, 1, 2)),
                               rtol=1e-5)
    compared = 0
    for layer in trunk.layers:
        if layer.weights and layer.name != "stem_conv":
            for got, want in zip(layer.weights, rgb.get_layer(layer.name).weights, strict=True):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
                compared += 1
    assert compared == len(trunk.weights) - 1


@pytest.fixture(scope="module")
def vgg_model():
    return trunk_model("vgg16", 32)


def test_load_trunk_weights_refuses_a_missing_or_unreadable_file(vgg_model, tmp_path):
    before = [w.numpy().copy() for w in vgg_model.weights[:4]]
    text = tmp_path / "notes.weights.h5"
    text.write_text("not weights")
    other = tmp_path / "dense.weights.h5"
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    dense.save_weights(other)
    renamed = tmp_path / "dense.bin"
    renamed.write_bytes(other.read_bytes())
    cases = [(tmp_path / "missing.weights.h5", "does not exist"),
             (tmp_path, "is not a file"),
             (text, "is not an HDF5 weights file"),
             (renamed, "is not an HDF5 weights file"),
             (other, "does not hold vgg16 weights")]
    for path, reason in cases:
        with pytest.raises(InputError) as excinfo:
            load_trunk_weights(vgg_model, path)
        assert_one_line_error(excinfo, str(path), reason, f"Received: path={path}")
    # A file that does not fit never touches the model.
    for got, want in zip(vgg_model.weights[:4], before, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_load_trunk_weights_refuses_another_architecture(vgg_model, efficientnet_file):
    _, path = efficientnet_file  # an application_trunk("efficientnetb0", 32)'s weights
    with pytest.raises(InputError) as excinfo:
        load_trunk_weights(vgg_model, path)
    assert_one_line_error(excinfo, str(path), "does not hold vgg16 weights",
                          "keras.applications.VGG16", "3 bands")


def test_load_trunk_weights_needs_a_keras_applications_trunk(tmp_path):
    path = tmp_path / "trunk.weights.h5"
    path.write_bytes(b"")
    for trunk in ("cnn", "hybrid"):
        with pytest.raises(InputError) as excinfo:
            load_trunk_weights(trunk_model(trunk, 24, model_name=f"{trunk}_model"), path)
        assert_one_line_error(excinfo, "keras.applications trunk", f"model='{trunk}_model'")
