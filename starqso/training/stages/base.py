"""What every stage shares: the :class:`Stage` shape, its summary metrics and helpers.

The generator's vectors (:func:`generate_vectors`), a user's trunk weights
(:func:`with_trunk_weights`) and the noisier copies of the training objects
(:func:`with_noisier_copies`) serve several stages; see :mod:`starqso.training.stages`.
"""

from __future__ import annotations

import numpy as np

from starqso.evaluation import classification_metrics
from starqso.training.inputs import noisier_chunks

#: Objects per batch when a stage predicts (evaluation, vectors for later stages).
PREDICT_BATCH = 512


def summary_metrics(labels, probabilities, threshold=0.5) -> dict:
    """A stage's summary: n, accuracy, F1(QSO), macro-F1 and ROC AUC (when both classes).

    ``probabilities`` is p(QSO), (N,) or (N, 1), for a two-class model, or (N, K) class
    probabilities (K >= 3, classes in :data:`starqso.schema.LABEL_NAMES` order): then an
    object is QSO when p(QSO) >= ``threshold`` and otherwise the more probable other class;
    accuracy and macro-F1 are over the K classes, F1(QSO) and the ROC AUC of QSO against the
    rest, and ``f1_<class>`` is added for each class.

    Example:
        >>> summary_metrics([0, 1, 2], np.eye(3))["macro_f1"]
        1.0
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] > 1:
        return _class_summary(np.asarray(labels, np.int64).ravel(), probabilities, threshold)
    metrics = classification_metrics(labels, probabilities, threshold)
    return {key: metrics[key] for key in ("n", "accuracy", "f1_qso", "macro_f1", "roc_auc")
            if metrics[key] is not None}


def _class_summary(labels, probabilities, threshold) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    from starqso.probability import class_decisions
    from starqso.schema import LABEL_CODES, LABEL_NAMES

    qso = LABEL_CODES["QSO"]
    count = probabilities.shape[1]
    predicted = class_decisions(probabilities, threshold)
    scores = f1_score(labels, predicted, labels=range(count), average=None, zero_division=0)
    is_qso = labels == qso
    metrics = {"n": int(labels.size), "accuracy": float(np.mean(predicted == labels)),
               "f1_qso": float(scores[qso]), "macro_f1": float(np.mean(scores))}
    if is_qso.any() and not is_qso.all():
        metrics["roc_auc"] = float(roc_auc_score(is_qso, probabilities[:, qso]))
    metrics.update({f"f1_{LABEL_NAMES[code].lower()}": float(scores[code])
                    for code in range(count)})
    return metrics


def with_trunk_weights(model, model_config):
    """``model`` with the user's ``model.trunk_weights`` loaded into its trunk, if any."""
    if model_config.trunk_weights is not None:
        from starqso.models.trunks import load_trunk_weights

        load_trunk_weights(model, model_config.trunk_weights)
    return model


def generate_vectors(generator, inputs, index, *, zero_noise=False, rng=None):
    """The generator's vectors for ``inputs[...][index]``: zero noise (as deployed) or noise
    drawn from ``rng`` (the GAN's spread as augmentation while training the fusion stage).

    Example:
        >>> vectors = generate_vectors(generator, model_inputs.arrays, test,  # doctest: +SKIP
        ...                            zero_noise=True)
    """
    noise_shape = (len(index), generator.noise_dim)
    noise = np.zeros(noise_shape, np.float32) if zero_noise else rng.normal(
        size=noise_shape).astype(np.float32)
    return generator.predict(generator.generator_inputs(
        {key: value[index] for key, value in inputs.items()}, noise),
        batch_size=PREDICT_BATCH, verbose=0)


class Stage:
    """The shape every stage has (see :mod:`starqso.training.stages`); subclasses fill it in.

    Attributes:
        name: the stage's name in ``state.json``, ``metrics.json`` and the summary line.
        files: its model files in the run folder; ``files[0]`` is the one reloaded on resume.
        monitor: the validation metric early stopping minimises.
        epoch_key: the history key whose length is the number of epochs trained.
    """

    name = ""
    files: tuple[str, ...] = ()
    monitor = "val_loss"
    epoch_key = "loss"

    def epochs(self, training) -> int:
        return getattr(training, f"{self.name}_epochs")

    def prepare(self, context, train: bool) -> None:
        """Checks and inputs needed whether or not the stage trains (default: none)."""

    def build(self, context):
        raise NotImplementedError

    def datasets(self, context):
        raise NotImplementedError

    def outputs(self, context, model) -> dict:
        return {self.files[0]: model}

    def evaluate(self, context, outputs) -> dict:
        raise NotImplementedError

    def provide(self, context, outputs) -> None:
        """Hand later stages what they need (default: nothing)."""


def with_noisier_copies(context, inputs, train_index, measure):
    """A stage's inputs plus noisier copies of its training objects (``training.noise_augment``).

    Args:
        context: the :class:`StageContext`.
        inputs: ``{name: (N, ...)}`` arrays over every object.
        train_index: the stage's training objects.
        measure: ``measure(part, raw)`` -> ``{name: array}`` for the noisier raw cutouts
            ``raw`` of objects ``part`` (:func:`~starqso.training.inputs.noisier_chunks`).

    Returns:
        ``(inputs, target, train_index)``: with ``noise_augment`` > 1 the copies' rows follow
        the N objects' (validation indices keep their meaning) and the training index covers
        both; otherwise ``inputs``, ``context.target`` and ``train_index`` as given.
    """
    training = context.config.training
    train_index = np.asarray(train_index)
    if training.noise_augment <= 1 or not len(train_index):
        return inputs, context.target, train_index
    pieces = {key: [] for key in inputs}
    copied = []
    for part, raw in noisier_chunks(context.arrays.images, train_index, training.noise_augment,
                                    training.seed):
        measured = measure(part, raw)
        for key in inputs:
            pieces[key].append(measured[key])
        copied.append(part)
    copied = np.concatenate(copied)
    count = len(context.arrays.images)
    extended = {key: np.concatenate([value, *pieces[key]]).astype(value.dtype)
                for key, value in inputs.items()}
    return (extended, np.concatenate([context.target, context.target[copied]]),
            np.concatenate([train_index, count + np.arange(len(copied))]))
