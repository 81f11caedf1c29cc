"""Deep metric learning on the generated spectral vector (``model.metric_loss``).

A :class:`MetricHead` maps the 128-d vector (and the aperture photometry) to a short unit-norm
embedding in which objects of one class lie close together, so nearest-neighbour search
(``starqso similar``) finds objects like a query. It is trained as in "Transfer Learning and
Deep Metric Learning for Galaxy Morphology" (IEEE Access 2022) with one of two proxy losses, a
learned proxy vector per class (:class:`ProxyLogits`):

* ``proxy_nca`` (Movshovitz-Attias et al. 2017): logits are minus the squared distance to each
  normalised proxy over a temperature, and the loss (:class:`ProxyNCALoss`) pulls an embedding
  to its class's proxy against the *other* proxies only (the positive is not in the
  denominator);
* ``norm_softmax`` (Zhai & Wu 2018): logits are the cosine similarity to each normalised proxy
  over a temperature, with the ordinary softmax cross-entropy.

:class:`MetricLearner` is the task model (head + proxies) that a stage trains; only the head
is kept and deployed.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from starqso.models.blocks import ConstructorConfig, deserialize_submodel
from starqso.models.layers import PACKAGE

METRIC_LOSSES = ("proxy_nca", "norm_softmax")
#: Default temperatures. Norm-softmax: 0.05, Zhai & Wu's choice for unit vectors (cosines in
#: [-1, 1] -> logits in [-20, 20]). Proxy-NCA: squared distances of unit vectors lie in [0, 4];
#: over 0.25 they give logits in [-16, 0], sharp enough to separate proxies (the unscaled
#: distances of the original paper train slowly on unit vectors).
DEFAULT_TEMPERATURE = {"proxy_nca": 0.25, "norm_softmax": 0.05}


def _check_positive_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_loss(loss):
    if loss not in METRIC_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(METRIC_LOSSES)}. Received: "
                         f"loss={loss!r}")
    return loss


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(layers.Layer):
    """Scale each row to unit Euclidean norm (builtin TFLite ops: MUL, SUM, RSQRT)."""

    def call(self, inputs):
        return inputs * ops.rsqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True) + 1e-12)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetricHead(ConstructorConfig, keras.Model):
    """Generated vector (+ photometry) -> unit-norm embedding.

    Args:
        feature_dim: length of the generated vector (input ``features``).
        photometry_dim: length of the aperture photometry (input ``photometry``), 0 for none.
        hidden_units: width of the hidden layer.
        embedding_dim: length of the embedding.
        dropout: dropout rate after the hidden layer.

    Example:
        >>> head = MetricHead(feature_dim=8, embedding_dim=4)
        >>> head({"features": np.zeros((2, 8), "float32")}).shape
        (2, 4)
    """

    CONFIG_KEYS = ("feature_dim", "photometry_dim", "hidden_units", "embedding_dim", "dropout")

    def __init__(self, feature_dim=128, photometry_dim=0, hidden_units=128, embedding_dim=32,
                 dropout=0.1, **kwargs):
        feature_dim = _check_positive_int("feature_dim", feature_dim, 1)
        photometry_dim = _check_positive_int("photometry_dim", photometry_dim, 0)
        hidden_units = _check_positive_int("hidden_units", hidden_units, 1)
        embedding_dim = _check_positive_int("embedding_dim", embedding_dim, 1)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        inputs = {"features": keras.Input((feature_dim,), name="features")}
        x = inputs["features"]
        if photometry_dim:
            inputs["photometry"] = keras.Input((photometry_dim,), name="photometry")
            x = layers.Concatenate(name="metric_inputs")([x, inputs["photometry"]])
        x = layers.Dense(hidden_units, activation="relu", name="metric_hidden")(x)
        if dropout:
            x = layers.Dropout(dropout, name="metric_dropout")(x)
        x = layers.Dense(embedding_dim, name="metric_projection")(x)
        embedding = L2Normalize(name="metric_embedding", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=embedding, **kwargs)
        self.feature_dim = feature_dim
        self.photometry_dim = photometry_dim
        self.hidden_units = hidden_units
        self.embedding_dim = embedding_dim
        self.dropout = float(dropout)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProxyLogits(layers.Layer):
    """Logits of unit-norm embeddings against one learned proxy per class.

    Args:
        num_classes: number of classes (proxies).
        loss: ``"proxy_nca"`` (``-||x - p||^2 / T``) or ``"norm_softmax"`` (``cos(x, p) / T``),
            with ``p`` the normalised proxies.
        temperature: ``T``; None for :data:`DEFAULT_TEMPERATURE`.
    """

    def __init__(self, num_classes, loss="norm_softmax", temperature=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_positive_int("num_classes", num_classes, 2)
        self.loss = _check_loss(loss)
        temperature = DEFAULT_TEMPERATURE[loss] if temperature is None else float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}")
        self.temperature = temperature

    def build(self, input_shape):
        self.proxies = self.add_weight(shape=(self.num_classes, int(input_shape[-1])),
                                       initializer="glorot_normal", name="proxies")

    def call(self, embedding):
        proxies = self.proxies / ops.sqrt(
            ops.sum(ops.square(self.proxies), axis=-1, keepdims=True) + 1e-12)
        cosine = ops.matmul(embedding, ops.transpose(proxies))
        if self.loss == "norm_softmax":
            return cosine / self.temperature
        # ||x - p||^2 = |x|^2 + 1 - 2 x.p, with |x| = 1 for the head's embeddings
        squared = ops.sum(ops.square(embedding), axis=-1, keepdims=True) + 1.0 - 2.0 * cosine
        return -squared / self.temperature

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "loss": self.loss,
                "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProxyNCALoss(keras.losses.Loss):
    """Proxy-NCA on :class:`ProxyLogits`: ``-logit_y + logsumexp_{z != y} logit_z``.

    Labels are integer class indices, shape (N,) or (N, 1).
    """

    def __init__(self, name="proxy_nca", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        positive = ops.sum(y_pred * one_hot, axis=-1)
        # The positive is masked out of the denominator (a large negative, not -inf, keeps
        # the gradients finite).
        negatives = ops.logsumexp(y_pred - one_hot * 1e9, axis=-1)
        return negatives - positive


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetricLearner(ConstructorConfig, keras.Model):
    """The trainable task model: :class:`MetricHead` + :class:`ProxyLogits`.

    ``compile()`` with no arguments gives Adam, the loss of ``loss`` and a sparse accuracy of
    the nearest proxy.

    Args:
        head: a :class:`MetricHead` (or its config).
        num_classes: number of classes.
        loss: ``"proxy_nca"`` or ``"norm_softmax"``.
        temperature: the logits' temperature; None for the loss's default.

    Example:
        >>> learner = MetricLearner(MetricHead(8, embedding_dim=4), 3, "proxy_nca")
        >>> learner.compile()
    """

    CONFIG_KEYS = ("head", "num_classes", "loss", "temperature")

    def __init__(self, head, num_classes, loss="norm_softmax", temperature=None, **kwargs):
        head = deserialize_submodel(head)
        loss = _check_loss(loss)
        num_classes = _check_positive_int("num_classes", num_classes, 2)
        inputs = {"features": keras.Input((head.feature_dim,), name="features")}
        if head.photometry_dim:
            inputs["photometry"] = keras.Input((head.photometry_dim,), name="photometry")
        proxies = ProxyLogits(num_classes, loss, temperature, name="proxy_logits",
                              dtype="float32")
        super().__init__(inputs=inputs, outputs=proxies(head(inputs)), **kwargs)
        self.head = head
        self.num_classes = num_classes
        self.loss_name = loss
        self.temperature = proxies.temperature

    def get_config(self):
        config = super().get_config()
        config["loss"] = self.loss_name
        return config

    def compile(self, optimizer=None, loss=None, metrics=None, *, learning_rate=1e-3,
                **kwargs):
        default_loss = (ProxyNCALoss() if self.loss_name == "proxy_nca" else
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        super().compile(
            optimizer=optimizer if optimizer is not None else keras.optimizers.Adam(
                learning_rate),
            loss=loss if loss is not None else default_loss,
            metrics=metrics if metrics is not None else [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            **kwargs)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)


__all__ = ["METRIC_LOSSES", "L2Normalize", "MetricHead", "MetricLearner", "ProxyLogits",
           "ProxyNCALoss"]
