"""The spectrum encoder (1-D residual CNN -> 128-d vector) and its STAR/QSO head."""

from __future__ import annotations

import keras
from keras import layers

from starqso.models.blocks import (
    BinaryClassifierDefaults,
    ConstructorConfig,
    batch_norm,
    check_num_classes,
    class_output,
    deserialize_submodel,
    residual_block_1d,
)
from starqso.models.layers import PACKAGE
from starqso.schema import ENCODER_NUM_PIXELS as SPECTRUM_PIXELS
from starqso.schema import SPECTRUM_CHANNELS


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpectrumEncoder(ConstructorConfig, keras.Model):
    """Spectrum on the encoder grid -> spectral feature vector.

    The input has two channels per pixel (:func:`starqso.preprocessing.encoder_input`):
    normalised flux (0 where masked) and a reliability weight (scaled sqrt(ivar), 0 where
    masked), so the network knows a zero is missing data, not zero flux.

    Args:
        filters: widths of the residual stages; each halves the length.
        feature_dim: length of the output vector (the paper's 128).
        num_pixels: spectrum length (3700 on the encoder grid).

    Example:
        >>> encoder = SpectrumEncoder(filters=(8, 16), feature_dim=16)
        >>> encoder({"spectrum": np.zeros((2, 3700, 2), "float32")}).shape  # doctest: +SKIP
        (2, 16)
    """

    CONFIG_KEYS = ("filters", "feature_dim", "num_pixels")

    def __init__(self, filters=(16, 32, 48, 64), feature_dim=128, num_pixels=SPECTRUM_PIXELS,
                 **kwargs):
        spectrum = keras.Input((num_pixels, SPECTRUM_CHANNELS), name="spectrum")
        x = layers.Conv1D(filters[0], 7, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(spectrum)
        x = batch_norm(name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        for stage, width in enumerate(filters):
            x = residual_block_1d(x, width, stride=2, name=f"stage{stage}")
        x = layers.GlobalAveragePooling1D(name="gap")(x)
        # tanh bounds the vector, which keeps the GAN's regression target well scaled.
        features = layers.Dense(feature_dim, activation="tanh", dtype="float32",
                                name="features")(x)
        super().__init__(inputs={"spectrum": spectrum}, outputs=features, **kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.feature_dim = int(feature_dim)
        self.num_pixels = int(num_pixels)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpectrumClassifier(BinaryClassifierDefaults, ConstructorConfig, keras.Model):
    """Spectrum -> p(QSO): the encoder with a logistic head (a spectrum-only classifier), or
    with a softmax head over three or more classes.

    Args:
        encoder: a :class:`SpectrumEncoder` (or its serialized config).
        dropout: dropout before the head.
        num_classes: 2 (p(QSO), (N, 1)) or the number of classes (softmax, (N, K)).

    Example:
        >>> classifier = SpectrumClassifier(SpectrumEncoder(filters=(8,), feature_dim=8))
    """

    CONFIG_KEYS = ("encoder", "dropout", "num_classes")

    def __init__(self, encoder, dropout=0.2, num_classes=2, **kwargs):
        num_classes = check_num_classes("SpectrumClassifier", num_classes)
        encoder = deserialize_submodel(encoder)
        spectrum = keras.Input((encoder.num_pixels, SPECTRUM_CHANNELS), name="spectrum")
        x = encoder({"spectrum": spectrum})
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        probability = class_output(x, num_classes)
        super().__init__(inputs={"spectrum": spectrum}, outputs=probability, **kwargs)
        self.encoder = encoder
        self.dropout = float(dropout)
        self.num_classes = num_classes


