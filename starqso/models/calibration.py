"""Temperature scaling inside the graph: the exported model's p(QSO) is calibrated.

A classifier trained with cross-entropy and early stopping is usually over-confident: its
p(QSO) sits nearer 0 and 1 than the observed frequencies (Guo et al. 2017, "On calibration of
modern neural networks"). Temperature scaling divides the logit by one number ``T`` fitted on
held-out objects (``starqso export`` fits it on the run's validation split)::

    p_calibrated = sigmoid(logit(p) / T)

``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one; ``T``
never changes the ranking of objects, nor the label at 0.5. Both classes here carry ``T`` in
their config, so the ``.keras`` file, the SavedModel and every TFLite model calibrate alike,
with builtin ops only (MINIMUM/MAXIMUM, LOG, SUB, MUL, LOGISTIC).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from starqso.models.blocks import ConstructorConfig, deserialize_submodel
from starqso.models.layers import PACKAGE
from starqso.probability import EPSILON

#: Added to p and 1 - p before LogitBlend's log-odds (about a quarter of an int8 step).
BLEND_EPSILON = 1e-3


def blend_logit(p):
    """NumPy twin of :class:`LogitBlend`'s log-odds, float64.

    Example:
        >>> float(blend_logit(0.5))
        0.0
    """
    p = np.asarray(p, np.float64)
    return np.log(p + BLEND_EPSILON) - np.log(1.0 + BLEND_EPSILON - p)


def _check_temperature(temperature):
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a finite number > 0. Received: {temperature!r}")
    return value


@keras.saving.register_keras_serializable(package=PACKAGE)
class TemperatureScaling(keras.layers.Layer):
    """p(QSO) (N, 1) -> sigmoid(logit(p) / temperature) (N, 1); class probabilities (N, K),
    K >= 3 -> softmax(log(p) / temperature) (N, K), temperature on the softmax logits (which
    ``log p`` equals up to a per-row constant that softmax ignores).

    Args:
        temperature: the fitted temperature, > 0 (1: no change).

    Example:
        >>> layer = TemperatureScaling(2.0)
        >>> float(layer(np.array([[0.5]], "float32"))[0, 0])  # doctest: +SKIP
        0.5
    """

    def __init__(self, temperature=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = _check_temperature(temperature)

    def call(self, probability):
        if probability.shape[-1] != 1:
            p = ops.clip(ops.cast(probability, "float32"), EPSILON, 1.0)
            return ops.softmax(ops.log(p) * (1.0 / self.temperature), axis=-1)
        p = ops.clip(ops.cast(probability, "float32"), EPSILON, 1.0 - EPSILON)
        logit = ops.log(p) - ops.log(1.0 - p)
        return ops.sigmoid(logit * (1.0 / self.temperature))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LogitBlend(keras.layers.Layer):
    """[p_a, p_b] (N, 1) each -> sigmoid((1 - weight) * logit(p_a) + weight * logit(p_b));
    class probabilities (N, K) each, K >= 3 -> softmax((1 - weight) * log(p_a + eps) + weight
    * log(p_b + eps)), the same product of experts over K classes.

    How the deployed model combines the fusion classifier with its photometry head: a
    weighted mean of log-odds (a product of experts). The log-odds are
    ``log(p + BLEND_EPSILON) - log(1 + BLEND_EPSILON - p)``: finite at p = 0 and 1 (an int8
    model's sigmoid outputs reach both, in steps of 1/256), bounded by +-6.9, and no
    clipping ops; :func:`blend_logit` is the NumPy twin.

    Args:
        weight: share of ``p_b``'s logit, in [0, 1].

    Example:
        >>> p_a, p_b = np.array([[0.9]], "float32"), np.array([[0.1]], "float32")
        >>> float(LogitBlend(0.5)([p_a, p_b])[0, 0])  # doctest: +SKIP
        0.5
    """

    def __init__(self, weight=0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        weight = float(weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"LogitBlend weight must be in [0, 1]. Received: weight={weight}")
        self.weight = weight

    def call(self, inputs):
        def logit(probability):
            p = ops.cast(probability, "float32")
            return ops.log(p + BLEND_EPSILON) - ops.log((1.0 + BLEND_EPSILON) - p)

        first, second = inputs
        if first.shape[-1] != 1:
            def log(probability):
                return ops.log(ops.cast(probability, "float32") + BLEND_EPSILON)

            return ops.softmax(log(first) * (1.0 - self.weight) + log(second) * self.weight,
                               axis=-1)
        return ops.sigmoid(logit(first) * (1.0 - self.weight) + logit(second) * self.weight)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CalibratedClassifier(ConstructorConfig, keras.Model):
    """A deployable classifier with temperature scaling on its output.

    Same interface as :class:`~starqso.models.StarQSOClassifier`: input ``{"image": raw
    nanomaggie cutouts (N, S, S, 5)}``, output calibrated p(QSO) (N, 1), or calibrated class
    probabilities (N, K) for a classifier of K >= 3 classes.

    Args:
        classifier: the uncalibrated deployable model (a ``StarQSOClassifier``, or its config).
        temperature: the fitted temperature, > 0.

    Example:
        >>> model = CalibratedClassifier(starqso_classifier, 1.7)  # doctest: +SKIP
        >>> p_qso = model.predict({"image": cutouts_nhwc})  # doctest: +SKIP
    """

    CONFIG_KEYS = ("classifier", "temperature")

    def __init__(self, classifier, temperature=1.0, **kwargs):
        classifier = deserialize_submodel(classifier)
        temperature = _check_temperature(temperature)
        size = int(classifier.image_size)
        cutout = keras.Input((size, size, 5), name="image")
        probability = classifier({"image": cutout})
        calibrated = TemperatureScaling(temperature, name="temperature_scaling")(probability)
        super().__init__(inputs={"image": cutout}, outputs=calibrated, **kwargs)
        self.classifier = classifier
        self.temperature = temperature
        self.image_size = size

    @property
    def num_classes(self) -> int:
        """The wrapped classifier's :attr:`~starqso.models.StarQSOClassifier.num_classes`."""
        return getattr(self.classifier, "num_classes", 2)


__all__ = ["EPSILON", "CalibratedClassifier", "TemperatureScaling"]
