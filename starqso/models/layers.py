"""Custom layers: cutout scaling inside the graph and the inference-time GAN noise.

Both are registered for serialization and carry their numbers in their config, so a `.keras`
file, a SavedModel and a TFLite model all scale cutouts identically, with builtin ops only.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

PACKAGE = "starqso"


@keras.saving.register_keras_serializable(package=PACKAGE)
class CutoutScaling(keras.layers.Layer):
    """Raw nanomaggie cutouts -> asinh-stretched, per-band standardised pixels.

    ``y = (asinh(x / softening) - mean) / std`` per band. The asinh stretch (like SDSS
    luptitudes) is linear near the sky noise and logarithmic for bright cores, so one network
    sees 14th- and 22nd-magnitude objects on a comparable scale while colours survive as
    differences between bands. The statistics are measured on the training cutouts at fit time
    (:func:`starqso.preprocessing.scaling.cutout_statistics`) and stored here, so no side file
    is needed at inference.

    Args:
        softening: per-band softening in nanomaggies (about the sky noise), length 5.
        mean: per-band mean of the stretched training pixels, length 5.
        std: per-band standard deviation of the stretched training pixels, length 5.

    Example:
        >>> layer = CutoutScaling([0.03] * 5, [0.0] * 5, [1.0] * 5)
        >>> layer(np.zeros((1, 8, 8, 5), "float32")).shape  # doctest: +SKIP
        (1, 8, 8, 5)
    """

    def __init__(self, softening, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.softening = [float(v) for v in softening]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        for name, values in (("softening", self.softening), ("std", self.std)):
            if len(values) != 5 or min(values) <= 0:
                raise ValueError(f"CutoutScaling {name} must be 5 positive numbers. "
                                 f"Received: {name}={values}")

    def call(self, inputs):
        x = ops.divide(ops.cast(inputs, "float32"), ops.convert_to_tensor(self.softening))
        # asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)): builtin TFLite ops only (no ASINH),
        # and no cancellation for large negative x.
        stretched = ops.sign(x) * ops.log(ops.abs(x) + ops.sqrt(ops.square(x) + 1.0))
        return (stretched - ops.convert_to_tensor(self.mean)) / ops.convert_to_tensor(self.std)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "softening": self.softening, "mean": self.mean,
                "std": self.std}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroNoise(keras.layers.Layer):
    """The generator's noise input at inference: zeros of shape (batch, noise_dim).

    The mean of the training noise gives the generator's most typical feature vector and makes
    p(QSO) deterministic, which exported models and their numeric checks need.

    Args:
        noise_dim: length of the noise vector.
    """

    def __init__(self, noise_dim, **kwargs):
        super().__init__(**kwargs)
        self.noise_dim = int(noise_dim)

    def call(self, inputs):
        # Multiplying a slice of the input by zero keeps the batch size dynamic with builtin
        # ops only (no Fill/shape gymnastics for TFLite).
        first = ops.reshape(inputs, (-1, int(np.prod(inputs.shape[1:]))))[:, :1]
        return ops.zeros_like(first) * ops.ones((1, self.noise_dim), dtype=first.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.noise_dim)

    def get_config(self):
        return {**super().get_config(), "noise_dim": self.noise_dim}
