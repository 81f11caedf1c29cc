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

import numbers

import keras
import numpy as np
from keras import layers, ops

from starqso.models.blocks import CompileFromConfig, ConstructorConfig, deserialize_submodel
from starqso.models.layers import PACKAGE

#: The losses :class:`ProxyLogits` and :class:`MetricLearner` take.
METRIC_LOSSES = ("proxy_nca", "norm_softmax")
#: Default temperatures. Norm-softmax: 0.05, Zhai & Wu's choice for unit vectors (cosines in
#: [-1, 1] -> logits in [-20, 20]). Proxy-NCA: squared distances of unit vectors lie in [0, 4];
#: over 0.25 they give logits in [-16, 0], sharp enough to separate proxies (the unscaled
#: distances of the original paper train slowly on unit vectors; the common reference code's
#: factor-3 scaling of both vectors is a temperature of 1/9, which saturates sooner on the few
#: classes here).
DEFAULT_TEMPERATURE = {"proxy_nca": 0.25, "norm_softmax": 0.05}
# Keeps the normalisations finite on an all-zero row (which then stays zero).
_EPSILON = 1e-12


def _check_int(name, value, minimum):
    # numbers.Integral: NumPy integers (a class count from np.unique) are fine; bools are not.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_loss(loss):
    if loss not in METRIC_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(METRIC_LOSSES)}. Received: "
                         f"loss={loss!r}")
    return loss


def _l2_normalize(x):
    # rsqrt of the summed squares: MUL, SUM and RSQRT are builtin TFLite ops (the converter
    # fuses them into its L2_NORMALIZATION), and the epsilon keeps a zero row at zero, not NaN.
    return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + _EPSILON)


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(layers.Layer):
    """Scale each row to unit Euclidean norm (TFLite: the builtin L2_NORMALIZATION).

    Example:
        >>> L2Normalize()(np.array([[3.0, 4.0]], "float32")).numpy()
        array([[0.6, 0.8]], dtype=float32)
    """

    def call(self, inputs):
        return _l2_normalize(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetricHead(ConstructorConfig, keras.Model):
    """Generated vector (+ photometry) -> unit-norm embedding (N, embedding_dim).

    ``Dense(hidden_units, relu) -> Dropout -> Dense(embedding_dim) -> L2 normalisation``, on the
    vector with the photometry concatenated after it. The output is float32 under any dtype
    policy, so distances between embeddings are comparable across models.

    Args:
        feature_dim: length of the generated vector (input ``"features"``).
        photometry_dim: length of the aperture photometry (input ``"photometry"``), 0 for none.
        hidden_units: width of the hidden layer.
        embedding_dim: length of the embedding.
        dropout: dropout rate after the hidden layer, in [0, 1).

    Example:
        >>> head = MetricHead(feature_dim=8, embedding_dim=4)
        >>> head({"features": np.zeros((2, 8), "float32")}).shape
        TensorShape([2, 4])
    """

    CONFIG_KEYS = ("feature_dim", "photometry_dim", "hidden_units", "embedding_dim", "dropout")

    def __init__(self, feature_dim=128, photometry_dim=0, hidden_units=128, embedding_dim=32,
                 dropout=0.1, **kwargs):
        feature_dim = _check_int("feature_dim", feature_dim, 1)
        photometry_dim = _check_int("photometry_dim", photometry_dim, 0)
        hidden_units = _check_int("hidden_units", hidden_units, 1)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
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
    """Logits of unit-norm embeddings against one learned proxy per class: (N, D) -> (N, C).

    The proxies (``num_classes`` x D, trainable) are normalised at every call, so only their
    directions matter, as in both papers. With ``p`` a normalised proxy:

    * ``proxy_nca``: ``-||x - p||^2 / T``, computed as ``-(|x|^2 + 1 - 2 x.p) / T``;
    * ``norm_softmax``: ``cos(x, p) / T`` (``x`` is normalised too, so any input works).

    Args:
        num_classes: number of classes (proxies), at least 2.
        loss: one of :data:`METRIC_LOSSES`.
        temperature: ``T`` > 0; None for :data:`DEFAULT_TEMPERATURE` of the loss.

    Example:
        >>> layer = ProxyLogits(3, "proxy_nca")
        >>> layer(np.eye(4, dtype="float32")).shape, layer.temperature
        (TensorShape([4, 3]), 0.25)
    """

    def __init__(self, num_classes, loss="norm_softmax", temperature=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_int("num_classes", num_classes, 2)
        self.loss = _check_loss(loss)
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE[loss]
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not 0 < temperature < np.inf):
            raise ValueError(f"temperature must be a number > 0. Received: "
                             f"temperature={temperature!r}")
        self.temperature = float(temperature)

    def build(self, input_shape):
        # Glorot-normal proxies: random directions, close to orthogonal in D >= 8 dimensions,
        # so no two classes start on the same proxy.
        self.proxies = self.add_weight(shape=(self.num_classes, int(input_shape[-1])),
                                       initializer="glorot_normal", name="proxies")

    def call(self, embedding):
        proxies = _l2_normalize(ops.cast(self.proxies, embedding.dtype))
        if self.loss == "norm_softmax":
            return ops.matmul(_l2_normalize(embedding), ops.transpose(proxies)) / self.temperature
        # The expanded square, not the (N, C, D) differences: one matmul, and |p| = 1.
        dot = ops.matmul(embedding, ops.transpose(proxies))
        squared = ops.sum(ops.square(embedding), axis=-1, keepdims=True) + 1.0 - 2.0 * dot
        return -squared / self.temperature

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "loss": self.loss,
                "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProxyNCALoss(keras.losses.Loss):
    """Proxy-NCA on :class:`ProxyLogits`: ``-logit_y + logsumexp_{z != y} logit_z``.

    This is ``-log(exp(-d(x, p_y)) / sum_{z != y} exp(-d(x, p_z)))`` of Movshovitz-Attias et
    al. (2017): the positive proxy is left out of the denominator, so (unlike softmax
    cross-entropy) the loss is unbounded below and keeps pushing the other proxies away.

    Args:
        name: the loss's name.
        **kwargs: ``reduction`` and ``dtype`` of :class:`keras.losses.Loss`.

    Call arguments:
        y_true: integer class indices, shape (N,) or (N, 1).
        y_pred: logits (N, C).

    Returns:
        the reduced loss (per object (N,) with ``reduction=None``).

    Example:
        >>> round(float(ProxyNCALoss()(np.array([0]), np.array([[0.0, -1.0, -1.0]]))), 4)
        -0.3069
    """

    def __init__(self, name="proxy_nca", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        positive = ops.sum(y_pred * one_hot, axis=-1)
        # The positive is masked out of the denominator by a large negative, not -inf, which
        # keeps the gradients finite (exp(-1e9) is exactly 0 in float32).
        negatives = ops.logsumexp(y_pred - one_hot * 1e9, axis=-1)
        return negatives - positive


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetricLearner(CompileFromConfig, ConstructorConfig, keras.Model):
    """The trainable task model: ``ProxyLogits(head(inputs))``, the head's inputs -> (N, C).

    Train it on ``(inputs, class indices)`` with ``fit()`` (also inside a ``tf.distribute``
    strategy's scope); keep :attr:`head`, which shares the trained weights. ``compile()`` with
    no arguments gives Adam(1e-3), the loss of ``loss`` (:class:`ProxyNCALoss`, or sparse
    categorical cross-entropy from logits for ``norm_softmax``) and the accuracy of the
    nearest proxy ("accuracy"); any argument given explicitly (a saved model's compile
    config, a caller's own optimizer) wins.

    Args:
        head: a :class:`MetricHead` (or its config).
        num_classes: number of classes, at least 2.
        loss: one of :data:`METRIC_LOSSES`.
        temperature: the logits' temperature; None for :data:`DEFAULT_TEMPERATURE` of the loss
            (the config then holds that value).

    Attributes:
        head: the :class:`MetricHead`.
        proxy_logits: the :class:`ProxyLogits` layer (its ``proxies`` are the class proxies).
        loss_name: ``loss`` (``model.loss`` is Keras' compiled loss).

    Example:
        >>> learner = MetricLearner(MetricHead(8, embedding_dim=4), 3, "proxy_nca")
        >>> learner.compile()
        >>> learner.fit({"features": x}, classes, epochs=5)  # doctest: +SKIP
    """

    # "loss" is in the config (see get_config) but not here: on a Keras model, ``self.loss``
    # is the compiled loss object.
    CONFIG_KEYS = ("head", "num_classes", "temperature")

    def __init__(self, head, num_classes, loss="norm_softmax", temperature=None, **kwargs):
        head = deserialize_submodel(head)
        if not isinstance(head, MetricHead):
            raise ValueError(f"MetricLearner needs a MetricHead (or its config). Received: "
                             f"head={type(head).__name__}")
        loss = _check_loss(loss)
        num_classes = _check_int("num_classes", num_classes, 2)
        # Inputs of its own, the head called on them like a layer (as the diffusion models
        # do), so the head stays a whole sub-model to save and deploy alone.
        inputs = {"features": keras.Input((head.feature_dim,), name="features")}
        if head.photometry_dim:
            inputs["photometry"] = keras.Input((head.photometry_dim,), name="photometry")
        proxy_logits = ProxyLogits(num_classes, loss, temperature, name="proxy_logits",
                                   dtype="float32")
        super().__init__(inputs=inputs, outputs=proxy_logits(head(inputs)), **kwargs)
        self.head = head
        self.proxy_logits = proxy_logits
        self.num_classes = num_classes
        self.loss_name = loss
        self.temperature = proxy_logits.temperature

    def get_config(self):
        return {**super().get_config(), "loss": self.loss_name}

    def default_loss(self):
        """The loss ``compile()`` uses when given none: a new Keras loss object."""
        if self.loss_name == "proxy_nca":
            return ProxyNCALoss()
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                          name="norm_softmax")

    def compile(self, optimizer=None, loss=None, metrics=None, *, learning_rate=1e-3,
                **kwargs):
        """Keras' compile with this model's defaults for what is not given.

        Args:
            optimizer: default ``Adam(learning_rate)``.
            loss: default :meth:`default_loss`.
            metrics: default ``[SparseCategoricalAccuracy(name="accuracy")]``.
            learning_rate: the default optimizer's learning rate.
            **kwargs: the rest of :meth:`keras.Model.compile`.
        """
        super().compile(
            optimizer=optimizer if optimizer is not None else keras.optimizers.Adam(
                learning_rate),
            loss=loss if loss is not None else self.default_loss(),
            metrics=metrics if metrics is not None else [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            **kwargs)



def class_balanced_weights(classes):
    """Per-object sample weights that give every class present the same total weight.

    The fine classes are far from balanced (stars outnumber each QSO redshift bin), and both
    proxy losses would otherwise place the rare classes' proxies mostly by the common ones.
    Pass the result as ``sample_weight`` to ``fit()``.

    Args:
        classes: integer class index of each object (N,); negative indices (unknown) get
            weight 0.

    Returns:
        float32 (N,): ``N_known / (n_classes * count(class))`` per known object, so the
        weights of the known objects average 1 (the loss keeps its scale).

    Example:
        >>> class_balanced_weights([0, 0, 0, 1]).tolist()
        [0.6666666865348816, 0.6666666865348816, 0.6666666865348816, 2.0]
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be a 1-d array of integer class indices. Received: "
                         f"shape={classes.shape}, dtype={classes.dtype}")
    weights = np.zeros(len(classes), np.float32)
    known = classes >= 0
    if known.any():
        values, inverse, counts = np.unique(classes[known], return_inverse=True,
                                            return_counts=True)
        weights[known] = known.sum() / (len(values) * counts[inverse])
    return weights


__all__ = [
    "DEFAULT_TEMPERATURE",
    "METRIC_LOSSES",
    "L2Normalize",
    "MetricHead",
    "MetricLearner",
    "ProxyLogits",
    "ProxyNCALoss",
    "class_balanced_weights",
]
