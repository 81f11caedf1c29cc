"""The stages of the method as units, each run by :class:`~starqso.training.runner.StageRunner`.

1. :class:`EncoderStage`: :class:`SpectrumClassifier` (encoder + head) on objects with a spectrum.
2. :class:`GANStage`: :class:`ConditionalGAN` learns the frozen encoder's vectors from images
   (and the aperture photometry measured from them, with ``model.photometry``); or, with
   ``model.generator: diffusion``, :class:`DiffusionStage`: a conditional diffusion model
   (:class:`ConditionalDiffusion`) learns them, sampled in a few deterministic DDIM steps.
3. :class:`FusionStage`: :class:`FusionClassifier` on image + generated vector (+ photometry),
   for every labelled object, and the deployable :class:`StarQSOClassifier`. Its ``features``
   option trains the benchmark variants on the real spectral vector or on photometry instead.
4. :class:`MetricStage` (with ``model.metric_loss``): a metric-learning head on the generated
   vector, for ``starqso embed``.
5. :class:`ImageStage`: the image-only baseline with the same trunk.

A stage says what it needs and makes; the runner owns the rest (strategy scope, ``fit`` or the
multi-worker loop, checkpoints, resume, saving, metrics, the one-line summary). Every stage
has the same five methods:

* ``prepare(context, train)``: checks and inputs needed whether or not it trains;
* ``build(context)``: the compiled model (called inside the strategy scope);
* ``datasets(context)``: ``(train, validation)`` ``tf.data`` datasets;
* ``outputs(context, model)``: ``{file name: model}`` to save;
* ``evaluate(context, outputs)``: the validation metrics of the summary;
* ``provide(context, outputs)``: what later stages take from it (after a resume, ``outputs``
  holds only ``files[0]``, loaded from the run folder).

Data flows one way: the :class:`StageContext` holds the NumPy arrays (raw objects, the fitted
:class:`~starqso.training.inputs.ModelInputs`, and what earlier stages provided); stages turn
them into ``tf.data`` datasets and models, and read no files but one: a user's trunk weights
(``model.trunk_weights``), loaded into each fresh keras.applications trunk in ``build``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from starqso.errors import InputError
from starqso.training.inputs import trunk_side

_PREDICT_BATCH = 512


def summary_metrics(labels, probabilities, threshold=0.5) -> dict:
    """A stage's summary: n, accuracy, F1(QSO), macro-F1 and ROC AUC (when both classes)."""
    from starqso.evaluation import classification_metrics

    metrics = classification_metrics(labels, probabilities, threshold)
    return {key: metrics[key] for key in ("n", "accuracy", "f1_qso", "macro_f1", "roc_auc")
            if metrics[key] is not None}


def discriminator_filters(model_config):
    """The discriminator's image trunk: half the generator's widths.

    It only has to judge whether a vector fits an image; a lighter trunk halves the GAN's cost
    per step (the GAN stage dominates `fit` on CPUs) and keeps it from overpowering the
    generator.
    """
    return tuple(max(4, width // 2) for width in model_config.image_filters)


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
        batch_size=_PREDICT_BATCH, verbose=0)


@dataclasses.dataclass
class StageContext:
    """What the stages of one run share: data, split, fitted inputs, and stage products.

    Attributes:
        config: the run's :class:`~starqso.config.RunConfig`.
        arrays: the objects (:class:`~starqso.data.ObjectArrays`).
        train, validation, test: index arrays of the split.
        inputs: the fitted :class:`~starqso.training.inputs.ModelInputs`.
        products: what completed stages provide (``"spectrum_classifier"``, ``"encoder"``,
            ``"head"``, ``"vectors"``, ``"generator"``, ...).
    """

    config: object
    arrays: object
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    inputs: object
    products: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, config, arrays) -> StageContext:
        """Split the objects (``data.*`` fractions and seed) and fit the input preprocessing."""
        from starqso.data.splits import split_indices
        from starqso.training.inputs import ModelInputs

        train, validation, test = split_indices(
            arrays.labels.astype(np.int64), config.data.validation_fraction,
            config.data.test_fraction, seed=config.data.split_seed)
        inputs = ModelInputs.fit(arrays.images, train, config.model, config.training.seed)
        return cls(config, arrays, train, validation, test, inputs)

    @property
    def labels(self) -> np.ndarray:
        return self.arrays.labels.astype(np.int64)

    @property
    def target(self) -> np.ndarray:
        """Labels as the (N, 1) float32 training target."""
        return self.labels.astype(np.float32).reshape(-1, 1)

    def labelled(self, index) -> np.ndarray:
        """The labelled objects (STAR or QSO) among ``index``."""
        return index[self.labels[index] >= 0]

    def with_spectrum(self, index) -> np.ndarray:
        """The labelled objects with a spectrum among ``index``."""
        index = self.labelled(index)
        return index[self.arrays.has_spectrum[index]]

    def datasets(self, inputs, outputs, train_index, validation_index, augment):
        """Shuffled (augmented) training and plain validation datasets of the two subsets."""
        from starqso.data.datasets import make_dataset

        training = self.config.training
        return (make_dataset({k: v[train_index] for k, v in inputs.items()},
                             outputs[train_index], batch_size=training.batch_size,
                             shuffle=True, augment=augment and training.augment,
                             seed=training.seed),
                make_dataset({k: v[validation_index] for k, v in inputs.items()},
                             outputs[validation_index], batch_size=training.batch_size))


class Stage:
    """The shape every stage has (see the module docstring); subclasses fill it in.

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
                                        name="spectrum_classifier")
        classifier.compile(learning_rate=context.config.training.learning_rate)
        return classifier

    def datasets(self, context):
        return context.datasets({"spectrum": context.arrays.spectra}, context.target,
                                context.with_spectrum(context.train),
                                context.with_spectrum(context.validation), augment=False)

    def outputs(self, context, model):
        return {"spectrum_classifier.keras": model, "spectrum_encoder.keras": model.encoder}

    def evaluate(self, context, outputs):
        index = context.with_spectrum(context.validation)
        probabilities = outputs["spectrum_classifier.keras"].predict(
            {"spectrum": context.arrays.spectra[index]}, batch_size=_PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        model = outputs["spectrum_classifier.keras"]
        arrays, feature_dim = context.arrays, context.config.model.feature_dim
        with_spectrum = arrays.has_spectrum & (arrays.labels >= 0)
        vectors = np.zeros((len(arrays), feature_dim), np.float32)
        vectors[with_spectrum] = model.encoder.predict(
            {"spectrum": arrays.spectra[with_spectrum]}, batch_size=_PREDICT_BATCH, verbose=0)
        context.products.update(spectrum_classifier=model, encoder=model.encoder,
                                head=model.get_layer("p_qso"), vectors=vectors)


class GANStage(Stage):
    """The conditional GAN: image (+ photometry) -> the frozen encoder's vector."""

    name = "gan"
    files = ("generator.keras", "discriminator.keras")
    monitor = "val_reconstruction"
    epoch_key = "generator_loss"

    def build(self, context):
        from starqso.models import ConditionalGAN, FeatureDiscriminator, FeatureGenerator

        model_config, training = context.config.model, context.config.training
        generator = FeatureGenerator(trunk_side(model_config), model_config.image_filters,
                                     model_config.feature_dim, model_config.noise_dim,
                                     model_config.dense_units, model_config.dropout,
                                     context.inputs.photometry_dim, trunk=model_config.trunk,
                                     name="generator")
        with_trunk_weights(generator, model_config)
        discriminator = FeatureDiscriminator(
            trunk_side(model_config), discriminator_filters(model_config),
            model_config.feature_dim, model_config.dense_units, model_config.dropout,
            name="discriminator")
        distill = training.gan_distillation_weight > 0
        gan = ConditionalGAN(generator, discriminator, training.gan_reconstruction_weight,
                             seed=training.seed,
                             teacher=context.products["head"] if distill else None,
                             distillation_weight=training.gan_distillation_weight,
                             name="conditional_gan")
        gan.compile(learning_rate=training.gan_learning_rate)
        # Under MirroredStrategy both optimizers must own their slots before the first
        # distributed step, or the second replica fails to create them.
        gan.build_optimizers()
        return gan

    def datasets(self, context):
        return context.datasets(context.inputs.arrays, context.products["vectors"],
                                context.with_spectrum(context.train),
                                context.with_spectrum(context.validation), augment=True)

    def outputs(self, context, model):
        return {"generator.keras": model.generator, "discriminator.keras": model.discriminator}

    def evaluate(self, context, outputs):
        index = context.with_spectrum(context.validation)
        generated = generate_vectors(outputs["generator.keras"], context.inputs.arrays, index,
                                     zero_noise=True)
        head = context.products["head"]
        return {
            "n": int(len(index)),
            "reconstruction_mse": float(np.mean(
                (generated - context.products["vectors"][index]) ** 2)),
            **{f"head_on_generated_{key}": value for key, value in summary_metrics(
                context.labels[index], np.asarray(head(generated))).items() if key != "n"},
        }

    def provide(self, context, outputs):
        context.products["generator"] = outputs["generator.keras"]


class DiffusionStage(GANStage):
    """The diffusion generator: image (+ photometry) -> the frozen encoder's vector.

    The alternative to the GAN (``model.generator: diffusion``): a denoiser (an MLP over the
    noisy vector, conditioned on the image trunk and the photometry) trained to predict the
    noise, and a sampler of ``model.diffusion_steps`` deterministic DDIM steps, unrolled in the
    graph, which takes the GAN generator's place everywhere (the fusion stage, the deployable
    model, export). Trains for ``training.diffusion_epochs`` at ``training.learning_rate``.
    """

    name = "diffusion"
    files = ("generator.keras", "denoiser.keras")
    monitor = "val_reconstruction"
    epoch_key = "denoising_loss"

    def build(self, context):
        from starqso.models.diffusion import ConditionalDiffusion, FeatureDenoiser

        model_config, training = context.config.model, context.config.training
        denoiser = FeatureDenoiser(trunk_side(model_config), model_config.image_filters,
                                   model_config.feature_dim, model_config.dense_units,
                                   model_config.dropout, context.inputs.photometry_dim,
                                   trunk=model_config.trunk, name="denoiser")
        with_trunk_weights(denoiser, model_config)
        diffusion = ConditionalDiffusion(denoiser, model_config.diffusion_steps,
                                         seed=training.seed, name="conditional_diffusion")
        diffusion.compile(learning_rate=training.learning_rate)
        diffusion.build_optimizers()  # as the GAN's, before the first distributed step
        return diffusion

    def outputs(self, context, model):
        return {"generator.keras": model.generator, "denoiser.keras": model.denoiser}


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
                from starqso.training.inputs import fit_photometry

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
                                     batch_size=_PREDICT_BATCH, verbose=0)
            p_head = head.predict({"photometry": context.inputs.arrays["photometry"][index]},
                                  batch_size=_PREDICT_BATCH, verbose=0)
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
                {"image": context.arrays.images[index]}, batch_size=_PREDICT_BATCH, verbose=0)
            metrics = summary_metrics(context.labels[index], probabilities)
            if deployable.photometry_head is not None:  # the blend fitted on these objects
                metrics["head_weight"] = deployable.head_weight
            return metrics
        else:
            probabilities = outputs[self.files[0]].predict(
                {key: value[index] for key, value in self.inputs.items()},
                batch_size=_PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products[self.name] = outputs[self.files[0]]


def _trunk_outputs(generator, tapped, images, photometry, rng, train, augment):
    """One chunk's ``{"embedding", "features"}`` (see :func:`shared_trunk_inputs`)."""
    from starqso.inference import dihedral_views

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
    result = tapped.predict(generator.generator_inputs(batch, noise), batch_size=_PREDICT_BATCH,
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
    from starqso.training.inputs import apply_layer, centre

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
    from starqso.training.inputs import noisier_chunks

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
        from starqso.training.inputs import apply_layer

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
            batch_size=_PREDICT_BATCH, verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products["photometry_head"] = outputs[self.files[0]]


#: The head weights :func:`blend_weight` tries.
BLEND_GRID = tuple(round(0.05 * k, 2) for k in range(21))


def blend_weight(labels, p_fusion, p_head):
    """The photometry head's share of the logit with the lowest validation log-loss.

    Args:
        labels: (N,) 0/1 validation labels.
        p_fusion, p_head: (N,) the two classifiers' p(QSO) on them.

    Returns:
        a weight of :data:`BLEND_GRID` (0: the fusion classifier alone, 1: the head alone).

    Example:
        >>> blend_weight(np.array([0, 1]), np.array([0.4, 0.6]), np.array([0.1, 0.9]))
        1.0
    """
    from starqso.models.calibration import blend_logit
    from starqso.probability import sigmoid

    labels = np.asarray(labels, dtype=float)
    first, second = blend_logit(np.ravel(p_fusion)), blend_logit(np.ravel(p_head))

    def log_loss(weight):
        p = np.clip(sigmoid((1 - weight) * first + weight * second), 1e-7, 1 - 1e-7)
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    return min(BLEND_GRID, key=log_loss)


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
        from starqso.config import TRUNKS

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
                                trunk=trunk, name=self.model_name)
        if trunk == model_config.trunk:
            with_trunk_weights(model, model_config)
        model.compile(learning_rate=context.config.training.learning_rate)
        return model

    def datasets(self, context):
        return context.datasets({"image": context.inputs.arrays["image"]}, context.target,
                                context.labelled(context.train),
                                context.labelled(context.validation), augment=True)

    def evaluate(self, context, outputs):
        index = context.labelled(context.validation)
        probabilities = outputs[self.files[0]].predict(
            {"image": context.inputs.arrays["image"][index]}, batch_size=_PREDICT_BATCH,
            verbose=0)
        return summary_metrics(context.labels[index], probabilities)

    def provide(self, context, outputs):
        context.products[self.model_name] = outputs[self.files[0]]


class MetricStage(Stage):
    """The metric-learning head: the generated vector (+ photometry) -> a unit-norm embedding.

    Trained with Proxy-NCA or Normalised-Softmax (:mod:`starqso.models.metric`) on the fine
    classes of :func:`starqso.schema.fine_class_codes` (STAR and the QSO redshift bins) of the
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
        from starqso.schema import fine_class_codes

        self._loss(context)
        self.classes = fine_class_codes(context.arrays.labels, context.arrays.redshift)
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
        from starqso.schema import FINE_CLASS_NAMES

        model_config = context.config.model
        head = MetricHead(model_config.feature_dim,
                          self.inputs["photometry"].shape[1] if "photometry" in self.inputs
                          else 0, model_config.dense_units, model_config.metric_dim,
                          model_config.dropout, name=self.files[0][:-len(".keras")])
        learner = MetricLearner(head, len(FINE_CLASS_NAMES), self._loss(context),
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
        from starqso.discovery import average_precision_at_r, precision_at_k

        index = self._index(context, context.validation)
        generator = context.products["generator"]
        inputs = {"features": generate_vectors(generator, context.inputs.arrays, index,
                                               zero_noise=True)}
        if generator.photometry_dim and outputs[self.files[0]].photometry_dim:
            inputs["photometry"] = context.inputs.arrays["photometry"][index]
        embedding = outputs[self.files[0]].predict(inputs, batch_size=_PREDICT_BATCH, verbose=0)
        classes = self.classes[index]
        return {"n": int(len(index)),
                "map_at_r": float(average_precision_at_r(embedding, classes)),
                "precision_at_10": float(precision_at_k(embedding, classes, k=10))}

    def provide(self, context, outputs):
        context.products[self.name] = outputs[self.files[0]]


#: The stages ``starqso fit`` runs, in order (the generator stage is "gan" or "diffusion").
STAGES = ("encoder", "gan", "diffusion", "photometry_head", "fusion", "metric", "image")


def default_stages(config=None) -> list[Stage]:
    """The method's stages in order: encoder, generator, photometry head (with
    ``model.photometry_head``), fusion (+ deployable), metric head (with
    ``model.metric_loss``), image-only.

    Args:
        config: the run's :class:`~starqso.config.RunConfig`; its ``model.generator`` picks
            the GAN (the default) or the diffusion generator stage.

    Example:
        >>> [stage.name for stage in default_stages()]
        ['encoder', 'gan', 'fusion', 'image']
    """
    diffusion = config is not None and config.model.generator == "diffusion"
    metric = config is not None and config.model.metric_loss != "none"
    head = config is not None and config.model.photometry and config.model.photometry_head
    return [EncoderStage(), DiffusionStage() if diffusion else GANStage(),
            *([PhotometryHeadStage()] if head else []), FusionStage(),
            *([MetricStage()] if metric else []), ImageStage()]
