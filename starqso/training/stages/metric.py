"""The metric stage: a metric-learning head on the generated vector, for ``starqso embed``."""

from __future__ import annotations

import numpy as np

from starqso.discovery import average_precision_at_r, precision_at_k
from starqso.errors import InputError
from starqso.schema import fine_class_codes, fine_class_names
from starqso.training.stages.base import PREDICT_BATCH, Stage, generate_vectors


class MetricStage(Stage):
    """The metric-learning head: the generated vector (+ photometry) -> a unit-norm embedding.

    Trained with Proxy-NCA or Normalised-Softmax (:mod:`starqso.models.metric`) on the fine
    classes of :func:`starqso.schema.fine_class_codes` (STAR and the QSO redshift bins, and
    GALAXY in a three-class run) of the
    labelled objects, on the vectors the deployed generator makes (noise while training, zero
    noise for validation, as the fusion stage). The export puts the head inside the deployable
    model, where ``starqso embed`` reads its output.

    Args:
        loss: ``"proxy_nca"`` or ``"norm_softmax"``; None for the run's ``model.metric_loss``.
        name: the stage's name (and model file ``NAME_head.keras``) for a variant; default
            ``metric``.
    """

    monitor = "val_loss"
    epoch_key = "loss"

    def __init__(self, loss=None, name=None):
        from starqso.models.metric import METRIC_LOSSES

        if loss is not None and loss not in METRIC_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(METRIC_LOSSES)} or None. "
                             f"Received: loss={loss!r}")
        self.loss = loss
        self.name = name or "metric"
        self.files = (f"{self.name}_head.keras",)

    def epochs(self, training):
        return training.metric_epochs

    def _loss(self, context):
        loss = self.loss or context.config.model.metric_loss
        if loss == "none":
            raise InputError("the metric stage needs model.metric_loss proxy_nca or "
                             "norm_softmax. Received: none")
        return loss

    def _index(self, context, index):
        return index[self.classes[index] >= 0]

    def prepare(self, context, train):
        self._loss(context)
        self.classes = fine_class_codes(context.arrays.labels, context.arrays.redshift,
                                        context.num_classes)
        if not train:
            return
        train_index = self._index(context, context.train)
        validation_index = self._index(context, context.validation)
        if len(np.unique(self.classes[train_index])) < 2 or not len(validation_index):
            raise InputError(f"the metric stage needs labelled objects of at least two classes "
                             f"(STAR, QSO redshift bins) to train and some to validate. "
                             f"Received: {len(train_index)} train, {len(validation_index)} "
                             f"validation")
        generator = context.products["generator"]
        rng = np.random.default_rng(context.config.training.seed)
        vectors = np.zeros((len(context.arrays), generator.feature_dim), np.float32)
        vectors[train_index] = generate_vectors(generator, context.inputs.arrays, train_index,
                                                rng=rng)
        vectors[validation_index] = generate_vectors(generator, context.inputs.arrays,
                                                     validation_index, zero_noise=True)
        self.inputs = {"features": vectors}
        if generator.photometry_dim:
            self.inputs["photometry"] = context.inputs.arrays["photometry"]

    def build(self, context):
        from starqso.models.metric import MetricHead, MetricLearner

        model_config = context.config.model
        head = MetricHead(model_config.feature_dim,
                          self.inputs["photometry"].shape[1] if "photometry" in self.inputs
                          else 0, model_config.dense_units, model_config.metric_dim,
                          model_config.dropout, name=self.files[0][:-len(".keras")])
        learner = MetricLearner(head, len(fine_class_names(context.num_classes)),
                                self._loss(context),
                                name=f"{self.name}_learner")
        learner.compile(learning_rate=context.config.training.learning_rate)
        return learner

    def datasets(self, context):
        return context.datasets(self.inputs, self.classes.astype(np.int32).reshape(-1, 1),
                                self._index(context, context.train),
                                self._index(context, context.validation), augment=False)

    def outputs(self, context, model):
        return {self.files[0]: model.head}

    def evaluate(self, context, outputs):
        index = self._index(context, context.validation)
        generator = context.products["generator"]
        inputs = {"features": generate_vectors(generator, context.inputs.arrays, index,
                                               zero_noise=True)}
        if generator.photometry_dim and outputs[self.files[0]].photometry_dim:
            inputs["photometry"] = context.inputs.arrays["photometry"][index]
        embedding = outputs[self.files[0]].predict(inputs, batch_size=PREDICT_BATCH, verbose=0)
        classes = self.classes[index]
        return {"n": int(len(index)),
                "map_at_r": float(average_precision_at_r(embedding, classes)),
                "precision_at_10": float(precision_at_k(embedding, classes, k=10))}

    def provide(self, context, outputs):
        context.products[self.name] = outputs[self.files[0]]
