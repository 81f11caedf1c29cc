"""The image stage: the image-only baseline with the fusion classifier's trunk."""

from __future__ import annotations

from starqso.config import TRUNKS
from starqso.training.inputs import trunk_side
from starqso.training.stages.base import (
    PREDICT_BATCH,
    Stage,
    summary_metrics,
    with_trunk_weights,
)


class ImageStage(Stage):
    """The image-only baseline: the same trunk as the fusion classifier, no vector.

    Args:
        trunk: another image trunk (:data:`starqso.config.TRUNKS`) than the run's
            ``model.trunk``, as a variant stage ``image_TRUNK`` writing
            ``image_classifier_TRUNK.keras`` (how the paper table compares trunks on one run's
            split); None for the run's own.
    """

    name = "image"
    files = ("image_classifier.keras",)

    def __init__(self, trunk=None):
        if trunk is not None and trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {', '.join(TRUNKS)} or None. Received: "
                             f"trunk={trunk!r}")
        self.trunk = trunk
        # the model's name, also its key in the context's products
        self.model_name = "image_classifier" if trunk is None else f"image_classifier_{trunk}"
        if trunk is not None:
            self.name = f"image_{trunk}"
            self.files = (f"{self.model_name}.keras",)

    def epochs(self, training):
        return training.image_epochs

    def build(self, context):
        from starqso.models import ImageClassifier

        model_config = context.config.model
        trunk = self.trunk or model_config.trunk
        model = ImageClassifier(trunk_side(model_config), model_config.image_filters,
                                model_config.dense_units, model_config.dropout,
                                trunk=trunk, num_classes=context.num_classes,
                                name=self.model_name)
        if trunk == model_config.trunk:
            with_trunk_weights(model, model_config)
        model.compile(learning_rate=context.config.training.learning_rate)
        return model

    def datasets(self, context):
        return context.split_datasets({"image": context.inputs.arrays["image"]},
                                      context.target, context.labelled, augment=True)

    def evaluate(self, context, outputs):
        index = context.labelled(context.validation)
        probabilities = outputs[self.files[0]].predict(
            {"image": context.inputs.arrays["image"][index]}, batch_size=PREDICT_BATCH,
            verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products[self.model_name] = outputs[self.files[0]]
