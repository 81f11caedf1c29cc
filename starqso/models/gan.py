"""The conditional GAN that learns to generate spectral feature vectors from images.

Generator: (scaled image[, aperture photometry], noise) -> feature vector. Discriminator:
(feature vector, scaled image) -> real/fake logit. The real vectors are the frozen spectrum
encoder's outputs for the paired spectra. :class:`ConditionalGAN` trains both with its own
``train_step`` inside plain ``fit()``; on top of the adversarial loss an L2 reconstruction term
(weight ``reconstruction_weight``, as in pix2pix) pulls each generated vector towards its
object's real one, which keeps the generator from collapsing to a class-average vector. With a
``teacher`` (the spectrum classifier's frozen head, vector -> p(QSO)) a distillation term
(weight ``distillation_weight``) asks the teacher to classify each generated vector as it
classifies the object's real one: the L2 term spreads its effort over all 128 dimensions, most
of which carry no class information, while this term spends it where the classes differ."""

from __future__ import annotations

import keras
from keras import layers, ops

from starqso.models.blocks import (
    TRUNK,
    ConstructorConfig,
    GeneratorInputs,
    deserialize_submodel,
    image_trunk,
    photometry_branch,
)
from starqso.models.layers import PACKAGE
from starqso.models.trunks import image_trunk_features, keep_trunk_arguments


def unscale(loss):
    """Undo Keras' per-replica loss scaling, for reporting a loss under tf.distribute."""
    import tensorflow as tf

    return loss * tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package=PACKAGE)
class FeatureGenerator(GeneratorInputs, ConstructorConfig, keras.Model):
    """(image, noise) -> generated spectral feature vector.

    Args:
        image_size: cutout side in pixels.
        filters: image-trunk widths.
        feature_dim: length of the generated vector.
        noise_dim: length of the noise input.
        dense_units: width of the hidden layers.
        dropout: dropout in the image trunk.
        photometry_dim: length of an extra ``"photometry"`` input (the standardised output of
            :class:`AperturePhotometry`), fed through a dense branch beside the trunk;
            0 (the paper's generator) for none.
        trunk: the image trunk, one of :data:`starqso.config.TRUNKS`.

    Example:
        >>> generator = FeatureGenerator(16, filters=(4, 8), feature_dim=8, noise_dim=4)
    """

    CONFIG_KEYS = ("image_size", "filters", "feature_dim", "noise_dim", "dense_units", "dropout",
                   "photometry_dim", "trunk")

    def __init__(self, image_size=32, filters=(32, 64, 96), feature_dim=128, noise_dim=16,
                 dense_units=128, dropout=0.2, photometry_dim=0, trunk="cnn", **kwargs):
        image = keras.Input((image_size, image_size, 5), name="image")
        noise = keras.Input((noise_dim,), name="noise")
        inputs = {"image": image, "noise": noise}
        x = image_trunk_features(image, trunk, filters, dense_units, dropout, name=TRUNK)
        branches = [x, noise]
        if photometry_dim:
            inputs["photometry"] = keras.Input((photometry_dim,), name="photometry")
            branches.append(photometry_branch(inputs["photometry"], dense_units))
        x = layers.Concatenate(name="with_noise")(branches)
        x = layers.Dense(dense_units, activation="relu", name="hidden")(x)
        features = layers.Dense(feature_dim, activation="tanh", dtype="float32",
                                name="features")(x)
        super().__init__(inputs=inputs, outputs=features, **kwargs)
        keep_trunk_arguments(self, image_size, filters, dense_units, dropout, trunk)
        self.feature_dim = int(feature_dim)
        self.noise_dim = int(noise_dim)
        self.photometry_dim = int(photometry_dim)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FeatureDiscriminator(ConstructorConfig, keras.Model):
    """(feature vector, image) -> logit that the vector is the object's real spectral vector.

    Conditioning on the image makes the discriminator judge whether the vector fits this
    object, not just whether it looks like some spectrum's vector.

    Args:
        image_size, filters, feature_dim, dense_units: as for :class:`FeatureGenerator` (the
            image trunk is always the ``cnn`` one).
        dropout: dropout in the hidden layers.
    """

    CONFIG_KEYS = ("image_size", "filters", "feature_dim", "dense_units", "dropout")

    def __init__(self, image_size=32, filters=(32, 64, 96), feature_dim=128, dense_units=128,
                 dropout=0.2, **kwargs):
        features = keras.Input((feature_dim,), name="features")
        image = keras.Input((image_size, image_size, 5), name="image")
        x = image_trunk(image, filters, dense_units, dropout, name=TRUNK)
        v = layers.Dense(dense_units, name="features_dense")(features)
        v = layers.LeakyReLU(0.2, name="features_relu")(v)
        x = layers.Concatenate(name="joint")([x, v])
        x = layers.Dense(dense_units, name="hidden")(x)
        x = layers.LeakyReLU(0.2, name="hidden_relu")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        logit = layers.Dense(1, dtype="float32", name="logit")(x)
        super().__init__(inputs={"features": features, "image": image}, outputs=logit, **kwargs)
        self.image_size = int(image_size)
        self.filters = tuple(int(f) for f in filters)
        self.feature_dim = int(feature_dim)
        self.dense_units = int(dense_units)
        self.dropout = float(dropout)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalGAN(ConstructorConfig, keras.Model):
    """Trains a :class:`FeatureGenerator` against a :class:`FeatureDiscriminator`.

    Data: ``({"image": scaled images[, "photometry": ...]}, real feature vectors)``. Compile with
    ``compile(generator_optimizer=..., discriminator_optimizer=...)``; the losses are Keras
    loss objects, which scale correctly across replicas under ``tf.distribute``.

    Args:
        generator: the generator.
        discriminator: the discriminator.
        reconstruction_weight: weight of the L2 term between generated and real vectors.
        seed: seed of the generator noise.
        teacher: optional frozen layer or model, feature vector -> p(QSO) (the spectrum
            classifier's head); never trained here.
        distillation_weight: weight of the cross-entropy between the teacher's p(QSO) on the
            generated and on the real vector (used only with a teacher).

    Example:
        >>> gan = ConditionalGAN(FeatureGenerator(16, (4,), 8, 4),
        ...                      FeatureDiscriminator(16, (4,), 8))
        >>> gan.compile(keras.optimizers.Adam(2e-4), keras.optimizers.Adam(2e-4))
    """

    CONFIG_KEYS = ("generator", "discriminator", "reconstruction_weight", "seed", "teacher",
                   "distillation_weight")

    def __init__(self, generator, discriminator, reconstruction_weight=10.0, seed=0,
                 teacher=None, distillation_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        self.generator = deserialize_submodel(generator)
        self.discriminator = deserialize_submodel(discriminator)
        self.reconstruction_weight = float(reconstruction_weight)
        self.seed = int(seed)
        self.teacher = None if teacher is None else deserialize_submodel(teacher)
        if self.teacher is not None:
            self.teacher.trainable = False
        self.distillation_weight = float(distillation_weight)
        self.noise_dim = self.generator.noise_dim
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.adversarial_loss = keras.losses.BinaryCrossentropy(from_logits=True)
        self.reconstruction_loss = keras.losses.MeanSquaredError()
        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.discriminator_loss_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        # The teacher's p(QSO) (one unit) or its class probabilities (a softmax over K).
        self.distillation_loss = (
            keras.losses.CategoricalCrossentropy()
            if getattr(teacher, "units", 1) > 1 else keras.losses.BinaryCrossentropy())
        self.distillation_tracker = keras.metrics.Mean(name="distillation")
        # Both sub-models are functional, hence already built; so is this wrapper (callbacks
        # such as BackupAndRestore insist on a built model).
        self.built = True

    def compile(self, generator_optimizer=None, discriminator_optimizer=None, *,
                learning_rate=2e-4, **kwargs):
        """Two optimizers; by default Adam(``learning_rate``, beta_1=0.5) each (DCGAN's)."""
        generator_optimizer = generator_optimizer or keras.optimizers.Adam(learning_rate,
                                                                           beta_1=0.5)
        discriminator_optimizer = discriminator_optimizer or keras.optimizers.Adam(
            learning_rate, beta_1=0.5)
        super().compile(**kwargs)
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer

    def build_optimizers(self):
        """Build both optimizers' slots now (needed inside ``strategy.scope()``)."""
        self.generator_optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        trackers = [self.generator_loss_tracker, self.discriminator_loss_tracker,
                    self.reconstruction_tracker]
        return trackers + ([self.distillation_tracker] if self.teacher is not None else [])

    def call(self, inputs, training=False):
        noise = self._noise(ops.shape(inputs["image"])[0])
        return self.generator(self.generator.generator_inputs(inputs, noise),
                              training=training)

    def _noise(self, batch):
        return keras.random.normal((batch, self.noise_dim), seed=self.seed_generator)

    def train_step(self, data):
        import tensorflow as tf  # the TF backend's GradientTape; this model trains on TF only

        inputs, real = data
        image = inputs["image"]
        batch = ops.shape(image)[0]
        ones = ops.ones((batch, 1))
        zeros = ops.zeros((batch, 1))

        noise = self._noise(batch)
        with tf.GradientTape() as tape:
            fake = self.generator(self.generator.generator_inputs(inputs, noise),
                                  training=True)
            real_logit = self.discriminator({"features": real, "image": image}, training=True)
            fake_logit = self.discriminator({"features": fake, "image": image}, training=True)
            # One-sided label smoothing (0.9) keeps the discriminator from overpowering early.
            d_loss = (self.adversarial_loss(0.9 * ones, real_logit)
                      + self.adversarial_loss(zeros, fake_logit))
        gradients = tape.gradient(d_loss, self.discriminator.trainable_variables)
        self.discriminator_optimizer.apply_gradients(
            zip(gradients, self.discriminator.trainable_variables, strict=False))

        noise = self._noise(batch)
        with tf.GradientTape() as tape:
            fake = self.generator(self.generator.generator_inputs(inputs, noise),
                                  training=True)
            fake_logit = self.discriminator({"features": fake, "image": image}, training=True)
            reconstruction = self.reconstruction_loss(real, fake)
            g_loss = (self.adversarial_loss(ones, fake_logit)
                      + self.reconstruction_weight * reconstruction)
            if self.teacher is not None:
                distillation = self.distillation_loss(
                    ops.stop_gradient(self.teacher(real, training=False)),
                    self.teacher(fake, training=False))
                g_loss = g_loss + self.distillation_weight * distillation
        gradients = tape.gradient(g_loss, self.generator.trainable_variables)
        self.generator_optimizer.apply_gradients(
            zip(gradients, self.generator.trainable_variables, strict=False))

        self.discriminator_loss_tracker.update_state(unscale(d_loss))
        self.generator_loss_tracker.update_state(unscale(g_loss))
        self.reconstruction_tracker.update_state(unscale(reconstruction))
        if self.teacher is not None:
            self.distillation_tracker.update_state(unscale(distillation))
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        inputs, real = data
        image = inputs["image"]
        fake = self.generator(self.generator.generator_inputs(
            inputs, self._noise(ops.shape(image)[0])), training=False)
        self.reconstruction_tracker.update_state(unscale(self.reconstruction_loss(real, fake)))
        return {"reconstruction": self.reconstruction_tracker.result()}


