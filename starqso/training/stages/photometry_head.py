"""The photometry head stage, and the weight of its logit in the deployable model's blend."""

from __future__ import annotations

import numpy as np

from starqso.probability import sigmoid
from starqso.training.inputs import apply_layer
from starqso.training.stages.base import (
    PREDICT_BATCH,
    Stage,
    summary_metrics,
    with_noisier_copies,
)


class PhotometryHeadStage(Stage):
    """The photometry head: the run's standardised in-model photometry -> p(QSO).

    A :class:`~starqso.models.PhotometryClassifier` on the labelled objects' photometry, run
    before the fusion stage, which blends its logit into the deployable model with a weight
    fitted on the validation split (:func:`blend_weight`). With ``training.noise_augment`` it
    also trains on a noisier copy of every training object (:func:`with_noisier_copies`).
    """

    name = "photometry_head"
    files = ("photometry_classifier.keras",)

    def epochs(self, training):
        return training.photometry_epochs

    def prepare(self, context, train):
        self.inputs = {"photometry": context.inputs.arrays["photometry"]}
        self.target, self.train_index = context.target, context.labelled(context.train)
        if train:
            self.inputs, self.target, self.train_index = with_noisier_copies(
                context, self.inputs, self.train_index,
                lambda part, raw: {"photometry": apply_layer(context.inputs.photometry, raw)})

    def build(self, context):
        from starqso.models import PhotometryClassifier

        model_config = context.config.model
        model = PhotometryClassifier(context.inputs.photometry_dim, model_config.dense_units,
                                     model_config.dropout, model_config.photometry_noise,
                                     num_classes=context.num_classes,
                                     name="photometry_classifier")
        model.compile(learning_rate=context.config.training.learning_rate)
        return model

    def datasets(self, context):
        # No dihedral augmentation: the photometry of a cutout does not change under it.
        return context.datasets(self.inputs, self.target, self.train_index,
                                context.labelled(context.validation), augment=False)

    def evaluate(self, context, outputs):
        index = context.labelled(context.validation)
        probabilities = outputs[self.files[0]].predict(
            {"photometry": context.inputs.arrays["photometry"][index]},
            batch_size=PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products["photometry_head"] = outputs[self.files[0]]


#: The head weights :func:`blend_weight` tries.
BLEND_GRID = tuple(round(0.05 * k, 2) for k in range(21))


def blend_weight(labels, p_fusion, p_head):
    """The photometry head's share of the logit with the lowest validation log-loss.

    Args:
        labels: (N,) integer validation labels (0/1 for two classes).
        p_fusion, p_head: (N,) the two classifiers' p(QSO) on them, or (N, K) class
            probabilities for K >= 3 classes (blended as :class:`LogitBlend` does: a weighted
            mean of log-probabilities, then softmax).

    Returns:
        a weight of :data:`BLEND_GRID` (0: the fusion classifier alone, 1: the head alone).

    Example:
        >>> blend_weight(np.array([0, 1]), np.array([0.4, 0.6]), np.array([0.1, 0.9]))
        1.0
    """
    from starqso.models.calibration import BLEND_EPSILON, blend_logit

    p_fusion, p_head = np.asarray(p_fusion, np.float64), np.asarray(p_head, np.float64)
    if p_fusion.ndim == 2 and p_fusion.shape[1] > 1:
        rows = np.arange(len(p_fusion))
        codes = np.asarray(labels, np.int64).ravel()
        first, second = np.log(p_fusion + BLEND_EPSILON), np.log(p_head + BLEND_EPSILON)

        def class_log_loss(weight):
            mixed = (1 - weight) * first + weight * second
            mixed -= mixed.max(axis=1, keepdims=True)
            log_p = mixed - np.log(np.exp(mixed).sum(axis=1, keepdims=True))
            return -np.mean(np.maximum(log_p[rows, codes], np.log(1e-7)))

        return min(BLEND_GRID, key=class_log_loss)
    labels = np.asarray(labels, dtype=float)
    first, second = blend_logit(np.ravel(p_fusion)), blend_logit(np.ravel(p_head))

    def log_loss(weight):
        p = np.clip(sigmoid((1 - weight) * first + weight * second), 1e-7, 1 - 1e-7)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    return min(BLEND_GRID, key=log_loss)
