"""Image trunks: (batch, S, S, 5) scaled cutouts -> (batch, dense_units) embedding.

``model.trunk`` (:data:`starqso.config.TRUNKS`) picks one for the generator, the fusion and
the image-only classifiers:

* ``cnn``: the seed paper's small VGG-style CNN (:func:`starqso.models.blocks.image_trunk`).
* ``resnet50``, ``densenet121``, ``vgg16``, ``xception``, ``efficientnetb0``
  (:data:`APPLICATION_TRUNKS`): the ``keras.applications`` architecture, built for 5 bands
  with random weights as one nested sub-model named ``{name}_{trunk}``; cutouts smaller than
  its minimum input are resized (bilinear) in the graph first. :func:`load_trunk_weights`
  loads a user's weights file into it (a 3-band ImageNet file too).
* ``hybrid`` (:func:`hybrid_trunk`): a small CoAtNet-style trunk, convolutions then
  transformer blocks with relative self-attention (:class:`RelativeSelfAttention`), made of
  builtin TFLite ops only so that it exports to int8.
"""

from __future__ import annotations

import math
import os
import warnings

import keras
import numpy as np
from keras import layers, ops

from starqso.config import TRUNKS
from starqso.errors import InputError
from starqso.models.blocks import batch_norm, image_trunk
from starqso.models.layers import PACKAGE

__all__ = [
    "APPLICATION_TRUNKS", "RelativeSelfAttention", "application_trunk", "hybrid_trunk",
    "image_trunk_features", "load_trunk_weights", "relative_position_index",
]

#: The ``keras.applications`` trunks and the smallest input side each accepts (Keras'
#: ``min_size``); smaller cutouts are resized up to it inside the model.
APPLICATION_TRUNKS = {"resnet50": 32, "densenet121": 32, "vgg16": 32, "xception": 71,
                      "efficientnetb0": 32}
_BUILDERS = {"resnet50": "ResNet50", "densenet121": "DenseNet121", "vgg16": "VGG16",
             "xception": "Xception", "efficientnetb0": "EfficientNetB0"}
# The hybrid trunk's attention heads are this wide (CoAtNet's head size), one at least.
HEAD_WIDTH = 32
# Width of the MBConv expansion and of the transformer MLP, relative to the stage width.
MBCONV_EXPANSION = 4
MLP_EXPANSION = 2
TRANSFORMER_BLOCKS = 2


def image_trunk_features(image, trunk, filters, dense_units, dropout, name):
    """The embedding of ``image`` by the trunk called ``trunk``.

    Args:
        image: Keras tensor (batch, S, S, 5), already scaled by ``CutoutScaling``.
        trunk: one of :data:`starqso.config.TRUNKS`.
        filters: widths of the ``cnn`` and ``hybrid`` trunks (the ``keras.applications``
            trunks have fixed widths and ignore it).
        dense_units: width of the output embedding.
        dropout: dropout rate before the embedding.
        name: prefix for layer names.

    Returns:
        Keras tensor (batch, dense_units).

    Example:
        >>> image = keras.Input((24, 24, 5))
        >>> image_trunk_features(image, "hybrid", (16, 32), 8, 0.1, "trunk").shape
        (None, 8)
    """
    if trunk not in TRUNKS:
        raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}. Received: trunk={trunk!r}")
    if trunk == "cnn":
        # Unchanged: the shipped saved models load by these layer names.
        return image_trunk(image, filters, dense_units, dropout, name)
    if trunk == "hybrid":
        return hybrid_trunk(image, filters, dense_units, dropout, name)
    side = _static_side(image)
    minimum = APPLICATION_TRUNKS[trunk]
    x = image
    if side < minimum:
        # RESIZE_BILINEAR is a builtin TFLite op (int8 too): the exported model still takes
        # the run's cutouts as they are. training=False explicitly: Keras' image preprocessing
        # layers default to training=True and hand that on to every later layer of a call made
        # without `training` (model(x)), which put the trunk's batch norms in training mode
        # (batch statistics, moving averages updated) at inference. fit() still passes True.
        x = layers.Resizing(minimum, minimum, interpolation="bilinear",
                            name=f"{name}_resize")(x, training=False)
    x = application_trunk(trunk, max(side, minimum), name=f"{name}_{trunk}")(x)
    return _embedding(x, dense_units, dropout, name)


def _embedding(x, dense_units, dropout, name):
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Dense(dense_units, activation="relu", name=f"{name}_embedding")(x)


def _static_side(image):
    shape = tuple(image.shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 5:
        raise ValueError(f"image trunks take square 5-band images of static size, "
                         f"(batch, S, S, 5). Received: shape={shape}")
    return int(shape[1])


def application_trunk(trunk, side, bands=5, name=None, stock=False):
    """A ``keras.applications`` architecture without its top, random weights, average pooled.

    Args:
        trunk: a key of :data:`APPLICATION_TRUNKS`.
        side: input side in pixels (at least the architecture's minimum).
        bands: input channels (5; 3 for a twin that reads an ImageNet weights file).
        name: the sub-model's name (Keras' default for the architecture when None).
        stock: keep EfficientNetB0's input preprocessing (a twin for files saved from the
            stock Keras model); the trunks never do.

    Returns:
        a functional ``keras.Model`` (batch, side, side, bands) -> (batch, features).

    Example:
        >>> application_trunk("vgg16", 32, name="trunk_vgg16").output_shape
        (None, 512)
    """
    if trunk not in APPLICATION_TRUNKS:
        raise ValueError(f"trunk must be one of {', '.join(APPLICATION_TRUNKS)}. "
                         f"Received: trunk={trunk!r}")
    builder = getattr(keras.applications, _BUILDERS[trunk])
    kwargs = {"name": name} if name else {}
    with warnings.catch_warnings():
        # "This model usually expects 1 or 3 input channels": 5 bands are the point here.
        warnings.filterwarnings("ignore", message=".*expects 1 or 3 input channels.*",
                                category=UserWarning)
        model = builder(include_top=False, weights=None, input_shape=(side, side, bands),
                        pooling="avg", **kwargs)
    if trunk != "efficientnetb0" or stock:
        return model
    # Keras 3's EfficientNet starts with Rescaling(1/255) and a Normalization layer (identity
    # while never adapted, as here; ImageNet's RGB statistics when its file is loaded), with
    # no switch to leave them out (tf.keras' include_preprocessing is gone). Our cutouts are
    # already asinh-stretched and standardised: the 1/255 would shrink them 255-fold into the
    # first convolution and (from a 3-band file) the Normalization would carry 3-channel
    # statistics the 5 bands cannot use. So the graph is cloned onto a fresh input with both
    # layers called as identities: the same architecture and layer names otherwise, a plain
    # functional model in .keras files, two fewer element-wise ops in the TFLite export. The
    # clone makes new layers (fresh random weights, as weights=None gives anyway) rather than
    # reusing the stock model's: reused layers would keep a node in the discarded graph, and
    # `trunk.get_layer(...).output` would point there.
    def call(layer, *args, **kwargs):
        if isinstance(layer, (layers.Rescaling, layers.Normalization)):
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=keras.Input((side, side, bands), name=f"{model.name}_input"),
        call_function=call)


def relative_position_index(height, width):
    """Row of the relative-bias table for each (query, key) pair of an H x W token grid.

    Pair (i, j), tokens in row-major order, reads row ``(dy + H - 1) * (2W - 1) + dx + W - 1``
    with ``(dy, dx)`` the offset of token i from token j: pairs at the same offset share a
    bias, as in CoAtNet's relative attention.

    Args:
        height: grid rows H.
        width: grid columns W.

    Returns:
        int32 array (H*W * H*W,), values in [0, (2H-1)(2W-1)).

    Example:
        >>> relative_position_index(1, 2).tolist()
        [1, 0, 2, 1]
    """
    rows, cols = np.divmod(np.arange(height * width), width)
    dy = rows[:, None] - rows[None, :] + height - 1
    dx = cols[:, None] - cols[None, :] + width - 1
    return (dy * (2 * width - 1) + dx).reshape(-1).astype("int32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class RelativeSelfAttention(keras.layers.Layer):
    """Multi-head self-attention over the H x W positions of a feature map, with a learned
    bias per relative offset (CoAtNet's relative attention).

    ``softmax(q k^T / sqrt(key_dim) + B[i - j]) v`` per head, where ``B`` holds one number per
    head for each of the (2H-1)(2W-1) offsets: the bias gives attention the sense of where
    tokens are relative to each other (plain attention is blind to any shuffle of the tokens),
    translation-equivariantly like a convolution, with no absolute position embedding tied to
    one cutout size. Every op converts to a builtin TFLite op (FULLY_CONNECTED, RESHAPE,
    TRANSPOSE, BATCH_MATMUL, ADD, SOFTMAX; the bias gather reads a weight with a constant
    index, so the converter folds it to a constant).

    Args:
        num_heads: attention heads.
        key_dim: width of each head's queries, keys and values.
        **kwargs: standard layer arguments (``name``, ``dtype``, ...).

    Input: (batch, H, W, C) with static H, W and C. Output: the same shape.

    Example:
        >>> layer = RelativeSelfAttention(2, 8)
        >>> layer(np.zeros((1, 3, 3, 16), "float32")).shape  # doctest: +SKIP
        (1, 3, 3, 16)
    """

    def __init__(self, num_heads, key_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        if self.num_heads < 1 or self.key_dim < 1:
            raise ValueError(f"RelativeSelfAttention needs num_heads >= 1 and key_dim >= 1. "
                             f"Received: num_heads={num_heads}, key_dim={key_dim}")
        width = self.num_heads * self.key_dim
        self.query = layers.Dense(width, name="query", dtype=self.dtype_policy)
        self.key = layers.Dense(width, name="key", dtype=self.dtype_policy)
        self.value = layers.Dense(width, name="value", dtype=self.dtype_policy)
        self.output_dense = None

    def build(self, input_shape):
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(f"RelativeSelfAttention takes (batch, H, W, C) with static H, W "
                             f"and C. Received: input_shape={tuple(input_shape)}")
        height, width, channels = (int(d) for d in input_shape[1:])
        inner = self.num_heads * self.key_dim
        # The projections see (batch * tokens, C): a 2-D Dense is one FULLY_CONNECTED in TFLite,
        # while a 3-D one drags in the dynamic-shape ops of a broadcast BATCH_MATMUL.
        for dense in (self.query, self.key, self.value):
            dense.build((None, channels))
        self.output_dense = layers.Dense(channels, name="output", dtype=self.dtype_policy)
        self.output_dense.build((None, inner))
        self.relative_bias = self.add_weight(
            name="relative_bias", shape=((2 * height - 1) * (2 * width - 1), self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), trainable=True)
        self._grid = (height, width, channels)
        self._index = relative_position_index(height, width)

    def call(self, inputs):
        height, width, channels = self._grid
        tokens, heads, dim = height * width, self.num_heads, self.key_dim
        x = ops.reshape(inputs, (-1, channels))
        # The scale goes on q (tokens x dim numbers), not on the logits (tokens x tokens).
        q = ops.transpose(ops.reshape(self.query(x) * (1.0 / math.sqrt(dim)),
                                      (-1, tokens, heads, dim)), (0, 2, 1, 3))
        k = ops.transpose(ops.reshape(self.key(x), (-1, tokens, heads, dim)), (0, 2, 3, 1))
        v = ops.transpose(ops.reshape(self.value(x), (-1, tokens, heads, dim)), (0, 2, 1, 3))
        logits = ops.matmul(q, k)  # (batch, heads, tokens, tokens)
        # (heads, offsets) gathered to (heads, tokens, tokens), broadcast over the batch.
        bias = ops.reshape(ops.take(ops.transpose(self.relative_bias),
                                    ops.convert_to_tensor(self._index), axis=1),
                           (heads, tokens, tokens))
        attention = ops.softmax(logits + ops.cast(bias, logits.dtype), axis=-1)
        out = ops.transpose(ops.matmul(attention, v), (0, 2, 1, 3))
        out = self.output_dense(ops.reshape(out, (-1, heads * dim)))
        return ops.reshape(out, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim}


def hybrid_trunk(image, filters, dense_units, dropout, name):
    """A CoAtNet-style trunk: convolutions early, transformer blocks on the last stage.

    Stem: 3x3 convolution (stride 1) to ``filters[0]``, batch norm, ReLU. Then one MBConv
    block (1x1 expansion x4, 3x3 depthwise stride 2, 1x1 projection) per width in
    ``filters[1:-1]``. The last stage downsamples (3x3 convolution, stride 2) to
    ``filters[-1]`` and runs two pre-norm transformer blocks (layer norm, relative
    self-attention with ``max(1, width // 32)`` heads, residual; layer norm, MLP 2x wide,
    residual) on its H x W tokens. Global average pooling, dropout and a ReLU dense layer
    give the embedding. Convolutions see the small-scale structure of a point source cheaply;
    attention on the coarse last grid (6x6 for 24-pixel cutouts and three widths) relates the
    core to its surroundings across the whole cutout. ReLU rather than GELU or swish: int8
    kernels fuse it into the convolutions and dense layers.

    Args:
        image: Keras tensor (batch, S, S, 5), already scaled by ``CutoutScaling``.
        filters: widths, one per stage (at least one).
        dense_units: width of the output embedding.
        dropout: dropout rate before the embedding.
        name: prefix for layer names.

    Returns:
        Keras tensor (batch, dense_units).

    Example:
        >>> image = keras.Input((24, 24, 5))
        >>> hybrid_trunk(image, (16, 32, 64), 32, 0.0, "trunk").shape
        (None, 32)
    """
    filters = tuple(int(f) for f in filters)
    if not filters or min(filters) < 1:
        raise ValueError(f"the hybrid trunk needs at least one positive width. "
                         f"Received: filters={filters}")
    _static_side(image)
    x = layers.Conv2D(filters[0], 3, padding="same", use_bias=False,
                      name=f"{name}_stem_conv")(image)
    x = batch_norm(name=f"{name}_stem_bn")(x)
    x = layers.ReLU(name=f"{name}_stem_relu")(x)
    for stage, width in enumerate(filters[1:-1], start=1):
        x = _mbconv(x, width, f"{name}_mbconv{stage}")
    width = filters[-1]
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                      name=f"{name}_down_conv")(x)
    x = batch_norm(name=f"{name}_down_bn")(x)
    heads = max(1, width // HEAD_WIDTH)
    for block in range(TRANSFORMER_BLOCKS):
        x = _transformer_block(x, width, heads, f"{name}_block{block}")
    x = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    return _embedding(x, dense_units, dropout, name)


def _mbconv(x, width, name):
    # No residual: every MBConv here halves the grid and changes the width.
    y = layers.Conv2D(x.shape[-1] * MBCONV_EXPANSION, 1, use_bias=False,
                      name=f"{name}_expand")(x)
    y = batch_norm(name=f"{name}_expand_bn")(y)
    y = layers.ReLU(name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                               name=f"{name}_depthwise")(y)
    y = batch_norm(name=f"{name}_depthwise_bn")(y)
    y = layers.ReLU(name=f"{name}_depthwise_relu")(y)
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_project")(y)
    return batch_norm(name=f"{name}_project_bn")(y)


def _transformer_block(x, width, heads, name):
    y = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm1")(x)
    y = RelativeSelfAttention(heads, width // heads, name=f"{name}_attention")(y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm2")(x)
    # 1x1 convolutions: the token-wise Dense layers of the MLP, but one CONV_2D each in TFLite
    # (a Dense on (batch, H, W, C) converts with dynamic-shape ops around it).
    y = layers.Conv2D(width * MLP_EXPANSION, 1, activation="relu", name=f"{name}_mlp1")(y)
    y = layers.Conv2D(width, 1, name=f"{name}_mlp2")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


# --- weights for the keras.applications trunks ----------------------------------------------


def load_trunk_weights(model, path):
    """Load a weights file into every ``keras.applications`` trunk nested in ``model``.

    The file holds the weights of the trunk's architecture (no top), either

    * for 5 bands: a Keras ``.weights.h5`` file, e.g. ``trunk.save_weights(...)`` of a trunk
      sub-model (``model.get_layer("trunk_resnet50")``), or
    * for 3 bands: e.g. Keras' ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
      (or a ``.weights.h5`` of a 3-band model). Every weight is copied as it is except the first
      convolution's kernel, whose 3 input channels are averaged and repeated over the 5 bands,
      times 3/5, so that a flat input gives the response it gave in 3 bands.

    EfficientNetB0's input Rescaling and Normalization, which the trunk leaves out
    (:func:`application_trunk`), are not copied (ImageNet's are RGB pixel statistics). Note
    that ImageNet weights were trained on 0-255 (or 0-1) RGB pixels; the trunk sees
    standardised asinh cutouts, so they are a starting point to train on, not features to use
    as they are.

    Args:
        model: a Keras model holding one or more trunk sub-models named ``*_{trunk}``
            (:data:`APPLICATION_TRUNKS`), at any depth.
        path: the weights file (``.weights.h5``, ``.h5`` or ``.hdf5``).

    Returns:
        list of str: one log line per trunk loaded.

    Raises:
        InputError: the model has no such trunk, or the file does not exist, is not readable,
            or does not hold weights of the trunk's architecture.

    Example:
        >>> load_trunk_weights(generator, "resnet50_notop.h5")  # doctest: +SKIP
        ['trunk weights resnet50_notop.h5 (3-band resnet50, ...) -> generator/trunk_resnet50']
    """
    trunks = _application_submodels(model)
    if not trunks:
        raise InputError(f"trunk weights need a keras.applications trunk "
                         f"({', '.join(APPLICATION_TRUNKS)}) in the model; this model has none. "
                         f"Received: model={getattr(model, 'name', model)!r}")
    path = os.fspath(path)
    _check_weights_file(path)
    twins = {}
    messages = []
    for where, trunk, architecture in trunks:
        if architecture not in twins:
            twins[architecture] = _loaded_twin(architecture, path)
        twin, bands = twins[architecture]
        _copy_twin_weights(twin, trunk, bands)
        how = (f"3-band {architecture}, first convolution spread over the 5 bands"
               if bands == 3 else f"5-band {architecture}")
        messages.append(f"trunk weights {path} ({how}) -> {where}")
    return messages


def _application_submodels(model):
    """(path, sub-model, architecture) of every keras.applications trunk in ``model`` (the
    model itself included), found by name (``{prefix}_{trunk}``) at any depth."""
    found, seen = [], set()

    def visit(layer, where):
        if id(layer) in seen or not isinstance(layer, keras.Model):
            return
        seen.add(id(layer))
        architecture = next((trunk for trunk in APPLICATION_TRUNKS
                             if layer.name.endswith(f"_{trunk}")), None)
        if architecture is not None:
            found.append((where, layer, architecture))
            return
        for child in layer.layers:
            visit(child, f"{where}/{child.name}")

    visit(model, getattr(model, "name", ""))
    return found


def _check_weights_file(path):
    expected = "expected a Keras weights file (.weights.h5, or .h5 such as keras' ImageNet " \
               "*_notop.h5)"
    if not os.path.exists(path):
        raise InputError(f"trunk weights file {path} does not exist; {expected}. "
                         f"Received: path={path}")
    if not os.path.isfile(path):
        raise InputError(f"trunk weights file {path} is not a file; {expected}. "
                         f"Received: path={path}")
    try:
        with open(path, "rb") as handle:
            signature = handle.read(8)
    except OSError as err:
        raise InputError(f"trunk weights file {path} is not readable "
                         f"({err.strerror or err}); {expected}. Received: path={path}") from None
    # Keras picks its reader by the name, so a weights file of another name would not load.
    if not path.lower().endswith((".h5", ".hdf5")) or signature != b"\x89HDF\r\n\x1a\n":
        raise InputError(f"trunk weights file {path} is not an HDF5 weights file named "
                         f"*.h5; {expected}. Received: path={path}")


def _loaded_twin(architecture, path):
    """A model of ``architecture`` holding the file's weights, and its input bands (5 or 3).

    The file is tried on fresh twins (5- and 3-band, and for EfficientNetB0 with and without
    Keras' input preprocessing), never on the user's model, so a file that does not fit
    leaves the model as it was.
    """
    side = APPLICATION_TRUNKS[architecture]
    order = (5, 3) if path.lower().endswith(".weights.h5") else (3, 5)
    stocks = (False, True) if architecture == "efficientnetb0" else (False,)
    failures = []
    for bands in order:
        for stock in stocks:
            twin = application_trunk(architecture, side, bands, stock=stock)
            try:
                with warnings.catch_warnings():
                    # Keras warns per skipped container while it fails; the error says it all.
                    warnings.simplefilter("ignore")
                    twin.load_weights(path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                failures.append(str(err).strip().splitlines()[0] if str(err).strip()
                                else type(err).__name__)
                continue
            return twin, bands
    reason = failures[0] if len(failures[0]) <= 160 else failures[0][:157] + "..."
    raise InputError(f"trunk weights file {path} does not hold {architecture} weights "
                     f"({reason}); expected weights of keras.applications."
                     f"{_BUILDERS[architecture]} without its top, for 5 bands (.weights.h5) "
                     f"or 3 bands (e.g. keras' ImageNet *_notop.h5). Received: path={path}")


def _weighted_layers(model):
    # EfficientNet's input preprocessing is not part of a trunk (application_trunk).
    return [layer for layer in model.layers if layer.weights
            and not isinstance(layer, (layers.Rescaling, layers.Normalization))]


def _copy_twin_weights(twin, trunk, bands):
    """Copy every weight of ``twin`` into ``trunk`` (same architecture), spreading a 3-band
    first convolution over the 5 bands."""
    sources, targets = _weighted_layers(twin), _weighted_layers(trunk)
    if len(sources) != len(targets):
        raise ValueError(f"{trunk.name} and its twin {twin.name} differ in layers. Received: "
                         f"{len(targets)} and {len(sources)} layers with weights")
    # Everything is checked before anything is assigned: no half-loaded trunk.
    assignments = []
    for position, (source, target) in enumerate(zip(sources, targets, strict=True)):
        values = source.get_weights()
        shapes = [tuple(w.shape) for w in target.weights]
        if position == 0 and bands == 3:
            kernel = values[0]
            # mean over RGB, repeated: a flat 5-band input sums 5 x 3/5 x mean = 3 x mean,
            # what the flat 3-band input gave.
            values[0] = np.repeat(kernel.mean(axis=2, keepdims=True), 5, axis=2) * (3.0 / 5.0)
        if type(source) is not type(target) or [v.shape for v in values] != shapes:
            raise ValueError(f"{trunk.name} layer {target.name} does not match {source.name} "
                             f"of its twin. Received: shapes {shapes} and "
                             f"{[v.shape for v in values]}")
        assignments.append((target, values))
    for target, values in assignments:
        target.set_weights(values)
