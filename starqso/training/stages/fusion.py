"""The fusion stage: the fusion classifier on image + vector, and the deployable model.

With ``model.shared_trunk`` the fusion classifier reads the generator's trunk
(:func:`shared_trunk_inputs`).
"""

from __future__ import annotations

import numpy as np

from starqso.inference import dihedral_views
from starqso.training.inputs import apply_layer, centre, fit_photometry, trunk_side
from starqso.training.stages.base import (
    PREDICT_BATCH,
    Stage,
    generate_vectors,
    summary_metrics,
    with_noisier_copies,
    with_trunk_weights,
)
from starqso.training.stages.photometry_head import blend_weight


class FusionStage(Stage):
    """The fusion classifier on image + a feature vector, for every labelled object.

    Args:
        features: the vector beside the image: ``"generated"`` (the GAN's; the method, which
            also writes the deployable model), ``"real"`` (the encoder's vector of the real
            spectrum: the upper bound, needs the spectrum at inference) or ``"photometry"``
            (standardised aperture photometry: the image + photometric-features peer).
        name: the stage's name (and model file ``NAME.keras`` for the variants).
    """

    epoch_key = "loss"

    def __init__(self, features="generated", name=None):
        if features not in ("generated", "real", "photometry"):
            raise ValueError(f"features must be 'generated', 'real' or 'photometry'. "
                             f"Received: features={features!r}")
        self.features = features
        self.name = name or ("fusion" if features == "generated" else f"fusion_{features}")
        self.files = (("fusion_classifier.keras", "starqso_classifier.keras")
                      if features == "generated" else (f"{self.name}.keras",))

    def epochs(self, training):
        return training.fusion_epochs

    def _train_index(self, context):
        return context.labelled(context.train), context.labelled(context.validation)

    def prepare(self, context, train):
        if not train:
            return
        labelled_train, labelled_validation = self._train_index(context)
        self.target, self.train_index = context.target, labelled_train
        if self._shared(context):
            self.inputs, self.target, self.train_index = shared_trunk_inputs(
                context, labelled_train, labelled_validation)
        elif self.features == "generated":
            generator = context.products["generator"]
            rng = np.random.default_rng(context.config.training.seed)
            vectors = np.zeros_like(context.products["vectors"])
            # Noise while training (the GAN's spread acts as augmentation); zero noise for
            # validation, exactly as the deployed model runs.
            vectors[labelled_train] = generate_vectors(generator, context.inputs.arrays,
                                                       labelled_train, rng=rng)
            vectors[labelled_validation] = generate_vectors(
                generator, context.inputs.arrays, labelled_validation, zero_noise=True)
            self.inputs = {**context.inputs.arrays, "features": vectors}
        elif self.features == "real":
            self.inputs = {"image": context.inputs.arrays["image"],
                           "features": context.products["vectors"]}
        else:
            # The run's own standardised photometry when it has one; the same fit otherwise.
            features = context.inputs.arrays.get("photometry")
            if features is None:
                _, features = fit_photometry(
                    context.arrays.images, context.train, context.config.model.image_size,
                    weighted_fwhm=context.config.model.weighted_fwhm)
            self.inputs = {"image": context.inputs.arrays["image"], "features": features}

    def _shared(self, context):
        """Whether the fusion classifier reads the generator's trunk (``model.shared_trunk``)."""
        return self.features == "generated" and context.config.model.shared_trunk

    def build(self, context):
        from starqso.models import FusionClassifier

        model_config = context.config.model
        generated = self.features == "generated"
        shared = self._shared(context)
        model = FusionClassifier(
            trunk_side(model_config), model_config.image_filters,
            self.inputs["features"].shape[1], model_config.dense_units, model_config.dropout,
            context.inputs.photometry_dim if generated else 0, trunk=model_config.trunk,
            embedding_dim=model_config.dense_units if shared else 0,
            num_classes=context.num_classes,
            name="fusion_classifier" if generated else self.name)
        if not shared:
            with_trunk_weights(model, model_config)
        model.compile(learning_rate=context.config.training.learning_rate)
        return model

    def datasets(self, context):
        # A shared trunk's embeddings were computed on augmented cutouts (prepare).
        return context.datasets(self.inputs, self.target, self.train_index,
                                context.labelled(context.validation),
                                augment=not self._shared(context))

    def outputs(self, context, model):
        if self.features != "generated":
            return {self.files[0]: model}
        from starqso.models import StarQSOClassifier

        head = context.products.get("photometry_head")
        weight = 0.5
        if head is not None:
            index = context.labelled(context.validation)
            p_fusion = model.predict({k: v[index] for k, v in self.inputs.items()},
                                     batch_size=PREDICT_BATCH, verbose=0)
            p_head = head.predict({"photometry": context.inputs.arrays["photometry"][index]},
                                  batch_size=PREDICT_BATCH, verbose=0)
            weight = blend_weight(context.labels[index], p_fusion, p_head)
            if weight == 0:  # the fusion classifier alone: no head in the deployed graph
                head = None
        deployable = StarQSOClassifier(context.inputs.scaling, context.products["generator"],
                                       model, context.inputs.photometry,
                                       image_size=context.config.model.image_size,
                                       photometry_head=head, head_weight=weight,
                                       name="starqso_classifier")
        return {"fusion_classifier.keras": model, "starqso_classifier.keras": deployable}

    def evaluate(self, context, outputs):
        index = context.labelled(context.validation)
        if self.features == "generated":
            deployable = outputs["starqso_classifier.keras"]
            probabilities = deployable.predict(
                {"image": context.arrays.images[index]}, batch_size=PREDICT_BATCH, verbose=0)
            metrics = summary_metrics(context.labels[index], probabilities)
            if deployable.photometry_head is not None:  # the blend fitted on these objects
                metrics["head_weight"] = deployable.head_weight
            return metrics
        else:
            probabilities = outputs[self.files[0]].predict(
                {key: value[index] for key, value in self.inputs.items()},
                batch_size=PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products[self.name] = outputs[self.files[0]]


def _trunk_outputs(generator, tapped, images, photometry, rng, train, augment):
    """One chunk's ``{"embedding", "features"}`` (see :func:`shared_trunk_inputs`)."""
    noise = np.zeros((len(images), generator.noise_dim), np.float32)
    if train and augment:
        images = images.copy()
        choice = rng.integers(0, 8, len(images))
        for view in range(8):
            chosen = np.flatnonzero(choice == view)
            images[chosen] = dihedral_views(images[chosen])[
                view * len(chosen):(view + 1) * len(chosen)]
    if train:
        noise = rng.normal(size=noise.shape).astype(np.float32)
    batch = {"image": images}
    if photometry is not None:
        batch["photometry"] = photometry
    result = tapped.predict(generator.generator_inputs(batch, noise), batch_size=PREDICT_BATCH,
                            verbose=0)
    return {"embedding": result["embedding"], "features": result["features"]}


def shared_trunk_inputs(context, train_index, validation_index, chunk=8192):
    """The fusion stage's inputs with ``model.shared_trunk``: ``{"embedding", "features"[,
    "photometry"]}`` for every object, the generator's trunk embedding and vector.

    Training objects get one random dihedral view each (the augmentation the fusion's own
    trunk would have had) and noise (the GAN's spread); validation objects are seen as the
    deployed model sees them: as they are, zero noise. Objects in neither index keep zeros.
    With ``training.noise_augment`` the training objects' noisier copies are appended
    (:func:`with_noisier_copies`).

    Returns:
        ``(inputs, target, train_index)`` as :func:`with_noisier_copies` returns them.
    """
    from starqso.models.classifiers import generator_with_embedding

    generator = context.products["generator"]
    tapped = generator_with_embedding(generator)
    arrays = context.inputs.arrays
    count = len(arrays["image"])
    rng = np.random.default_rng(context.config.training.seed)
    augment = context.config.training.augment
    outputs = {"embedding": np.zeros((count, generator.dense_units), np.float32),
               "features": np.zeros((count, generator.feature_dim), np.float32)}
    for index, train in ((np.asarray(train_index), True),
                         (np.asarray(validation_index), False)):
        for start in range(0, len(index), chunk):
            part = index[start:start + chunk]
            result = _trunk_outputs(generator, tapped, arrays["image"][part],
                                    arrays["photometry"][part] if "photometry" in arrays
                                    else None, rng, train, augment)
            for key in outputs:
                outputs[key][part] = result[key]
    if "photometry" in arrays:
        outputs["photometry"] = arrays["photometry"]

    side = trunk_side(context.config.model)
    copies_rng = np.random.default_rng([context.config.training.seed, 1])

    def measure(part, raw):
        photometry = (apply_layer(context.inputs.photometry, raw) if "photometry" in arrays
                      else None)
        result = _trunk_outputs(generator, tapped,
                                apply_layer(context.inputs.scaling, centre(raw, side)),
                                photometry, copies_rng, True, augment)
        return result if photometry is None else {**result, "photometry": photometry}

    return with_noisier_copies(context, outputs, np.asarray(train_index), measure)
