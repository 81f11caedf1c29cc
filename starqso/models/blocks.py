"""Building blocks shared by the models (plain functions on Keras tensors)."""

from __future__ import annotations

import keras
from keras import layers

#: The prefix of every image trunk's layer names in the generators and classifiers (the small
#: CNN's ``trunk_conv{stage}_{k}``, ``trunk_bn...``, an application trunk's sub-model): what
#: fine-tuning selects trunk blocks by.
TRUNK = "trunk"
#: The layer of every image trunk whose output is its embedding (the generator's too).
TRUNK_EMBEDDING = f"{TRUNK}_embedding"


def batch_norm(name):
    # Momentum 0.9, not Keras' 0.99: a stage sees only a few hundred steps on CPU budgets, and
    # slow moving averages leave inference-time statistics far from the trained ones (the
    # validation accuracy then collapses to one class while training accuracy climbs).
    return layers.BatchNormalization(momentum=0.9, name=name)


def image_trunk(image, filters, dense_units, dropout, name):
    """A small VGG-style CNN for point-source cutouts: (S, S, 5) -> (dense_units,).

    Two 3x3 convolutions per stage then 2x2 max pooling; global average pooling at the end makes
    it insensitive to the exact centring of the source.

    Args:
        image: Keras tensor (batch, S, S, 5), already scaled by ``CutoutScaling``.
        filters: convolution widths, one per stage.
        dense_units: width of the output embedding.
        dropout: dropout rate before the embedding.
        name: prefix for layer names.

    Returns:
        Keras tensor (batch, dense_units).
    """
    x = image
    for stage, width in enumerate(filters):
        for conv in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                              name=f"{name}_conv{stage}_{conv}")(x)
            x = batch_norm(name=f"{name}_bn{stage}_{conv}")(x)
            x = layers.ReLU(name=f"{name}_relu{stage}_{conv}")(x)
        if stage < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"{name}_pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Dense(dense_units, activation="relu", name=f"{name}_embedding")(x)


def photometry_branch(photometry, units):
    """A dense embedding of the standardised in-model photometry: (P,) -> (units,).

    Two layers let the model form non-linear colour cuts (the QSO locus bends in ugriz) before
    they meet the image embedding.
    """
    x = layers.Dense(units, activation="relu", name="photometry_dense0")(photometry)
    return layers.Dense(units, activation="relu", name="photometry_dense1")(x)


def residual_block_1d(x, filters, stride, name):
    """A 1-D residual block (two kernel-5 convolutions, projection shortcut when needed)."""
    shortcut = x
    y = layers.Conv1D(filters, 5, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv1")(x)
    y = batch_norm(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv1D(filters, 5, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = batch_norm(name=f"{name}_bn2")(y)
    if stride != 1:
        # Average-pool then project (ResNet-D shortcut). A strided 1x1 Conv1D, the classic
        # shortcut, corrupts the heap in TF 2.21's oneDNN CPU kernels.
        shortcut = layers.AveragePooling1D(stride, padding="same", name=f"{name}_pool")(shortcut)
    if shortcut.shape[-1] != filters:
        shortcut = layers.Conv1D(filters, 1, use_bias=False, name=f"{name}_project")(shortcut)
        shortcut = batch_norm(name=f"{name}_project_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


class ConstructorConfig:
    """Mixin for models whose constructor arguments are their config (keras-hub style).

    A subclass names its constructor arguments in ``CONFIG_KEYS`` and keeps each as an
    attribute of the same name; sub-models and layers among them are serialized whole.
    """

    CONFIG_KEYS = ()

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        for key in self.CONFIG_KEYS:
            value = getattr(self, key)
            if isinstance(value, keras.layers.Layer):
                value = keras.saving.serialize_keras_object(value)
            elif isinstance(value, tuple):
                value = list(value)
            config[key] = value
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def replaced(self, **changes):
        """A new model of this class from this one's constructor arguments, ``changes`` applied.

        Sub-models and layers are shared, not copied, so every argument not named keeps its
        trained weights; a new constructor argument is carried over without a caller naming it.

        Example:
            >>> attached = deployable.replaced(metric_head=head)  # doctest: +SKIP
        """
        unknown = set(changes) - set(self.CONFIG_KEYS)
        if unknown:
            raise ValueError(f"{type(self).__name__}.replaced takes only its constructor "
                             f"arguments {', '.join(self.CONFIG_KEYS)}. Received: "
                             f"{', '.join(sorted(unknown))}")
        arguments = {key: getattr(self, key) for key in self.CONFIG_KEYS}
        return type(self)(**{**arguments, **changes}, name=self.name)


class GeneratorInputs:
    """Mixin of the spectral-vector generators (GAN generator, diffusion sampler): how a batch
    and the noise become the generator's input dict. Needs ``photometry_dim``."""

    def generator_inputs(self, inputs, noise):
        """The generator's input dict from a batch's inputs (image [+ photometry]) and noise."""
        selected = {"image": inputs["image"], "noise": noise}
        if self.photometry_dim:
            selected["photometry"] = inputs["photometry"]
        return selected


class CompileFromConfig:
    """Mixin for models whose ``compile()`` has defaults of its own: reloads compile as saved.

    Keras skips ``compile_from_config`` for models that override ``compile()``; this one takes
    the saved optimizer, loss and metrics as they were, so a reloaded model can train on.
    """

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)


#: The output layer of a two-class classifier: p(QSO), (N, 1).
BINARY_OUTPUT = "p_qso"
#: The output layer of a classifier of three or more classes: softmax probabilities (N, K)
#: in the order of the run's class list (``model.classes``).
CLASSES_OUTPUT = "class_probabilities"


def check_num_classes(owner, num_classes) -> int:
    """``num_classes`` as an int >= 2; a one-line ValueError naming ``owner`` otherwise."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{owner} num_classes must be an integer >= 2. Received: "
                         f"num_classes={num_classes!r}")
    return num_classes


def output_layer_name(num_classes) -> str:
    """The name of a classifier's output layer: :data:`BINARY_OUTPUT` for two classes,
    :data:`CLASSES_OUTPUT` for more.

    Example:
        >>> output_layer_name(2), output_layer_name(3)
        ('p_qso', 'class_probabilities')
    """
    return BINARY_OUTPUT if num_classes == 2 else CLASSES_OUTPUT


def class_output(x, num_classes):
    """A classifier's output on ``x``: two classes keep the one sigmoid unit, p(QSO) (N, 1),
    so two-class models and their files are what they were; three or more get a softmax
    over the classes, (N, K). In float32 under mixed precision.
    """
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name=BINARY_OUTPUT)(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32",
                        name=CLASSES_OUTPUT)(x)


class BinaryClassifierDefaults(CompileFromConfig):
    """Mixin: the compile defaults of every classifier, owned by the model class.

    ``model.compile(learning_rate=1e-3)`` gives Adam and, for a two-class model (the
    default; ``num_classes`` 2), binary cross-entropy and the accuracy and AUC metrics the
    stage summaries report; for three or more classes, sparse categorical cross-entropy on
    the integer labels and accuracy. Any argument given explicitly (a saved model's compile
    config, a caller's own optimizer) wins.
    """

    num_classes = 2

    def compile(self, optimizer=None, loss=None, metrics=None, *, learning_rate=1e-3,
                **kwargs):
        binary = self.num_classes == 2
        if loss is None:
            loss = (keras.losses.BinaryCrossentropy() if binary
                    else keras.losses.SparseCategoricalCrossentropy())
        if metrics is None:
            metrics = ([keras.metrics.BinaryAccuracy(name="accuracy"),
                        keras.metrics.AUC(name="auc")] if binary
                       else [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        super().compile(
            optimizer=optimizer if optimizer is not None else keras.optimizers.Adam(
                learning_rate), loss=loss, metrics=metrics, **kwargs)


#: The same mixin under the name that says what it is now (two or more classes).
ClassifierDefaults = BinaryClassifierDefaults



def deserialize_submodel(config):
    """A sub-model stored in a parent's config, or the model itself if already built."""
    if isinstance(config, (keras.Model, keras.layers.Layer)):
        return config
    return keras.saving.deserialize_keras_object(config)
