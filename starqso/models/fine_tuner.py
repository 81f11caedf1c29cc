"""Fine-tuning a deployable classifier on a user's labels, to a chosen depth.

:class:`FineTuner` wraps a :class:`~starqso.models.StarQSOClassifier` and trains only its
last blocks: the **head** (the fusion classifier's dense layers: the vector, photometry and
hidden layers and p(QSO); and the photometry head, when the model blends one in), then,
counting back from the output, the fusion classifier's CNN stages (the last one with the
trunk's embedding; the generator's trunk, which the fusion reads, with ``model.shared_trunk``),
then, with ``"all"``, the GAN generator too. Block ``k`` (0 = head) learns
at ``learning_rate * lr_decay**k``: one Adam per block, since Adam divides out any scaling of
the gradients. Frozen layers are set non-trainable (batch normalisation there keeps its
statistics). This is Zoobot's ``n_blocks`` / ``lr_decay`` finetuning scheme (Walmsley et al.
2024) on starqso's deployable model; the scaling and photometry layers hold no weights and are
kept as they are.
"""

from __future__ import annotations

import re

import keras
from keras import ops

from starqso.models.blocks import (
    TRUNK,
    TRUNK_EMBEDDING,
    ConstructorConfig,
    deserialize_submodel,
)
from starqso.models.gan import unscale
from starqso.models.layers import PACKAGE

#: The fusion classifier's layers after its trunk (the head, block 0).
HEAD_LAYERS = ("features_dense", "photometry_dense0", "photometry_dense1", "hidden", "p_qso",
               "embedding_dense")
_TRUNK_LAYER = re.compile(rf"{TRUNK}_(?:conv|bn|relu)(\d+)_\d+$")


def trainable_blocks(classifier) -> list[list]:
    """The blocks of a deployable classifier that fine-tuning can train, head first.

    Args:
        classifier: a :class:`~starqso.models.StarQSOClassifier`.

    Returns:
        list of lists of layers: ``[head, last trunk stage (+ embedding), ..., first trunk
        stage, generator layers]``. A trunk other than the small CNN (``model.trunk``) is one
        block: ``[head, trunk, generator layers]``.
    """
    fusion, generator = classifier.fusion, classifier.generator
    # The photometry head's dense layers (when its logit is blended in) belong to the head.
    extra = [layer for layer in _blended_head_layers(classifier) if layer.weights]
    head = [layer for layer in fusion.layers if layer.name in HEAD_LAYERS] + extra
    # With a shared trunk (model.shared_trunk) the trunk is the generator's: training its
    # stages changes the generated vector too, as the fusion classifier reads both.
    shared = bool(getattr(fusion, "embedding_dim", 0))
    owner = generator if shared else fusion
    # The trunk's layers (its embedding included) are the ones named trunk_*.
    trunk_layers = [layer for layer in owner.layers
                    if layer.weights and layer.name.startswith(f"{TRUNK}_")]
    taken = {id(layer) for layer in head + trunk_layers}
    rest = [layer for layer in generator.layers if layer.weights and id(layer) not in taken]
    if getattr(fusion, "trunk", "cnn") != "cnn":
        if not shared:  # the fusion's whole trunk: every layer outside the head
            trunk_layers = [layer for layer in fusion.layers
                            if layer.weights and layer.name not in HEAD_LAYERS]
        return [head, trunk_layers, rest]
    stages = len(fusion.filters)
    blocks = [[] for _ in range(stages + 2)]
    blocks[0] = head
    for layer in trunk_layers:
        if layer.name == TRUNK_EMBEDDING:
            blocks[1].append(layer)
        elif match := _TRUNK_LAYER.match(layer.name):
            blocks[stages - int(match.group(1))].append(layer)
    blocks[-1] = rest
    return blocks


def _blended_head_layers(classifier) -> list:
    """The layers of the deployed graph's photometry head; none when no head is blended in."""
    head = getattr(classifier, "photometry_head", None)
    if head is None or getattr(classifier, "head_weight", 0.0) <= 0:
        return []
    return list(head.layers)


def depth_of(train_depth, num_stages: int) -> int:
    """The deepest block trained for ``train_depth``: ``"head"`` 0, N (1..stages) N, ``"all"``
    everything (the generator included).

    Raises:
        ValueError: anything else.
    """
    if train_depth == "head":
        return 0
    if train_depth == "all":
        return num_stages + 1
    try:
        blocks = int(train_depth)
    except (TypeError, ValueError):
        blocks = -1
    if not 1 <= blocks <= num_stages or isinstance(train_depth, bool):
        raise ValueError(f"--trainable must be 'head', 'all' or a number of trunk blocks from "
                         f"1 to {num_stages}. Received: {train_depth!r}")
    return blocks


def checked_depth(classifier, train_depth) -> int:
    """The deepest block :class:`FineTuner` trains on ``classifier`` for ``train_depth``.

    Args:
        classifier: a :class:`~starqso.models.StarQSOClassifier`.
        train_depth: ``"head"``, a number of trunk blocks or ``"all"``.

    Returns:
        int, 0 for the head (see :func:`depth_of`).

    Raises:
        ValueError: a depth the classifier does not have, or deeper than the head on a model
            whose p(QSO) is its photometry head alone (blend weight 1: deeper blocks get no
            gradients, and a head-only run under another name would mislead).

    Example:
        >>> checked_depth(classifier, "head")  # doctest: +SKIP
        0
    """
    depth = depth_of(train_depth, len(trainable_blocks(classifier)) - 2)
    if depth and float(getattr(classifier, "head_weight", 0.0)) >= 1.0:
        raise ValueError(f"This model's p(QSO) is its photometry head alone (head_weight=1), "
                         f"so only --trainable head changes it. Received: "
                         f"train_depth={train_depth!r}")
    return depth


@keras.saving.register_keras_serializable(package=PACKAGE)
class FineTuner(ConstructorConfig, keras.Model):
    """Trains the last blocks of a deployable classifier, each at its own learning rate.

    Data: ``({"image": raw cutouts (N, S, S, 5)}, labels (N, 1))``. The trained model is
    ``self.classifier`` (the same object, updated in place).

    Args:
        classifier: a :class:`~starqso.models.StarQSOClassifier` (or its config).
        train_depth: ``"head"``, a number of trunk blocks (1..stages) or ``"all"``.
        lr_decay: learning-rate factor per block deeper than the head, in (0, 1].

    Example:
        >>> tuner = FineTuner(classifier, train_depth=1, lr_decay=0.75)  # doctest: +SKIP
        >>> tuner.compile(learning_rate=1e-4)  # doctest: +SKIP
    """

    CONFIG_KEYS = ("classifier", "train_depth", "lr_decay")

    def __init__(self, classifier, train_depth="head", lr_decay=0.75, **kwargs):
        super().__init__(**kwargs)
        self.classifier = deserialize_submodel(classifier)
        blocks = trainable_blocks(self.classifier)
        depth = checked_depth(self.classifier, train_depth)
        if not 0 < float(lr_decay) <= 1:
            raise ValueError(f"lr_decay must be in (0, 1]. Received: lr_decay={lr_decay!r}")
        self.train_depth = train_depth if train_depth in ("head", "all") else int(train_depth)
        self.lr_decay = float(lr_decay)
        chosen = {id(layer) for block in blocks[:depth + 1] for layer in block}
        for layer in (*self.classifier.generator.layers, *self.classifier.fusion.layers,
                      *_blended_head_layers(self.classifier)):
            layer.trainable = id(layer) in chosen
        self.blocks = [block for block in blocks[:depth + 1] if block]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
        self.auc = keras.metrics.AUC(name="auc")
        self.loss_fn = keras.losses.BinaryCrossentropy()
        self.built = True

    def block_variables(self) -> list[list]:
        """The trainable variables of each trained block, head first."""
        return [[v for layer in block for v in layer.trainable_variables]
                for block in self.blocks]

    def compile(self, *, learning_rate=1e-4, **kwargs):
        """One Adam per block: the head at ``learning_rate``, block k at ``learning_rate *
        lr_decay**k``."""
        super().compile(**kwargs)
        self.block_optimizers = [keras.optimizers.Adam(learning_rate * self.lr_decay ** k)
                                 for k in range(len(self.blocks))]

    def build_optimizers(self):
        """Build every optimizer's slots now (needed inside ``strategy.scope()``)."""
        for optimizer, variables in zip(self.block_optimizers, self.block_variables(),
                                        strict=False):
            optimizer.build(variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy, self.auc]

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def train_step(self, data):
        import tensorflow as tf  # the TF backend's GradientTape

        inputs, labels = data
        groups = self.block_variables()
        with tf.GradientTape() as tape:
            probabilities = self.classifier(inputs, training=True)
            loss = self.loss_fn(labels, probabilities)
        gradients = tape.gradient(loss, [v for group in groups for v in group])
        start = 0
        for optimizer, group in zip(self.block_optimizers, groups, strict=False):
            # A variable outside the deployed graph's path has no gradient: the fusion
            # head's when the blend weight is 1 (p(QSO) is the photometry head alone).
            pairs = [(gradient, variable) for gradient, variable
                     in zip(gradients[start:start + len(group)], group,
                            strict=False) if gradient is not None]
            if pairs:
                optimizer.apply_gradients(pairs)
            start += len(group)
        return self._update(unscale(loss), labels, probabilities)

    def test_step(self, data):
        inputs, labels = data
        probabilities = self.classifier(inputs, training=False)
        return self._update(unscale(self.loss_fn(labels, probabilities)), labels,
                            probabilities)

    def _update(self, loss, labels, probabilities):
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, probabilities)
        self.auc.update_state(labels, ops.cast(probabilities, "float32"))
        return {metric.name: metric.result() for metric in self.metrics}


__all__ = ["FineTuner", "HEAD_LAYERS", "checked_depth", "depth_of", "trainable_blocks"]
