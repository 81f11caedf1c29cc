"""Image trunks: (batch, S, S, 5) scaled cutouts -> (batch, dense_units) embedding.

``model.trunk`` (:data:`starqso.config.TRUNKS`) picks one for the generator, the fusion and
the image-only classifiers:

* ``cnn``: the seed paper's small VGG-style CNN (:func:`starqso.models.blocks.image_trunk`).
* ``resnet50``, ``densenet121``, ``vgg16``, ``xception``, ``efficientnetb0``
  (:data:`APPLICATION_TRUNKS`): the ``keras.applications`` architecture, built for 5 bands
  with random weights as one nested sub-model named ``{name}_{trunk}``; cutouts smaller than
  its minimum input are resized (bilinear) in the graph first. :func:`load_trunk_weights`
  loads a user's weights file into it (a 3-band ImageNet file too); both live in
  :mod:`starqso.models.application_trunks`.
* ``hybrid`` (:func:`hybrid_trunk`): a small CoAtNet-style trunk, convolutions then
  transformer blocks with relative self-attention (:class:`RelativeSelfAttention`), made of
  builtin TFLite ops only so that it exports to int8.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from starqso.config import TRUNKS
from starqso.models.application_trunks import (
    APPLICATION_TRUNKS,
    application_trunk,
    load_trunk_weights,
)
from starqso.models.blocks import batch_norm, image_trunk
from starqso.models.layers import PACKAGE

__all__ = [
    "APPLICATION_TRUNKS", "RelativeSelfAttention", "application_trunk", "hybrid_trunk",
    "image_trunk_features", "keep_trunk_arguments", "load_trunk_weights",
    "relative_position_index",
]

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


def keep_trunk_arguments(model, image_size, filters, dense_units, dropout, trunk):
    """Keep a model's image-trunk constructor arguments as its attributes of the same names
    (what its config saves): ``image_size`` and ``dense_units`` as ints, ``filters`` as a
    tuple of ints, ``dropout`` as a float and ``trunk`` as a string."""
    model.image_size = int(image_size)
    model.filters = tuple(int(f) for f in filters)
    model.dense_units = int(dense_units)
    model.dropout = float(dropout)
    model.trunk = str(trunk)


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
        filters: widths, one per stage (at least one).
        image, dense_units, dropout, name: as for :func:`image_trunk_features`.

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
