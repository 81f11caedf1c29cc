"""The encoder stage: the spectrum encoder and its logistic head, on objects with a spectrum."""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.training.stages.base import PREDICT_BATCH, Stage, summary_metrics


class EncoderStage(Stage):
    """Spectrum encoder + logistic head, on labelled objects with a spectrum."""

    name = "encoder"
    files = ("spectrum_classifier.keras", "spectrum_encoder.keras")

    def prepare(self, context, train):
        spec_train = context.with_spectrum(context.train)
        spec_validation = context.with_spectrum(context.validation)
        if len(spec_train) < 2 or len(spec_validation) < 1:
            raise InputError("the encoder and GAN stages need labelled objects with spectra in "
                             f"both splits. Received: {len(spec_train)} train, "
                             f"{len(spec_validation)} validation")

    def build(self, context):
        from starqso.models import SpectrumClassifier, SpectrumEncoder

        model_config = context.config.model
        encoder = SpectrumEncoder(model_config.spectrum_filters, model_config.feature_dim,
                                  name="spectrum_encoder")
        classifier = SpectrumClassifier(encoder, model_config.dropout,
                                        num_classes=context.num_classes,
                                        name="spectrum_classifier")
        classifier.compile(learning_rate=context.config.training.learning_rate)
        return classifier

    def datasets(self, context):
        return context.split_datasets({"spectrum": context.arrays.spectra}, context.target,
                                      context.with_spectrum, augment=False)

    def outputs(self, context, model):
        return {"spectrum_classifier.keras": model, "spectrum_encoder.keras": model.encoder}

    def evaluate(self, context, outputs):
        index = context.with_spectrum(context.validation)
        probabilities = outputs["spectrum_classifier.keras"].predict(
            {"spectrum": context.arrays.spectra[index]}, batch_size=PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        from starqso.models.blocks import output_layer_name

        model = outputs["spectrum_classifier.keras"]
        arrays, feature_dim = context.arrays, context.config.model.feature_dim
        with_spectrum = arrays.has_spectrum & (context.labels >= 0)
        vectors = np.zeros((len(arrays), feature_dim), np.float32)
        vectors[with_spectrum] = model.encoder.predict(
            {"spectrum": arrays.spectra[with_spectrum]}, batch_size=PREDICT_BATCH, verbose=0)
        context.products.update(spectrum_classifier=model, encoder=model.encoder,
                                head=model.get_layer(output_layer_name(model.num_classes)),
                                vectors=vectors)
