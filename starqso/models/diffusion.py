"""A conditional diffusion model of the spectral feature vector: an alternative to the cGAN.

As in "Can AI Dream of Unseen Galaxies?" (arXiv:2506.16233), the image (and aperture
photometry) conditions a denoiser that learns to predict the noise added to the real spectral
vector (DDPM, Ho et al. 2020, with the cosine schedule of Nichol & Dhariwal 2021);
a few deterministic DDIM steps (Song et al. 2021, eta = 0) then turn noise into a vector.

* :class:`FeatureDenoiser`: (image[, photometry], noisy vector x_t, timestep t / T) -> eps.
  Two sub-models: the ``conditioner`` (image trunk [+ photometry branch] -> condition) and the
  small ``head`` (x_t, t, condition -> eps), so a sampler runs the trunk once and the head once
  per step.
* :class:`DiffusionGenerator`: the deployable sampler, with :class:`FeatureGenerator`'s
  interface ({"image", "noise"[, "photometry"]} -> vector; the noise is x_T), the steps
  unrolled into one graph of builtin TFLite ops. Zero noise (as
  :class:`~starqso.models.StarQSOClassifier` feeds it) gives one deterministic vector per
  object; random noise gives samples.
* :class:`ConditionalDiffusion`: trains the denoiser with its own ``train_step`` inside plain
  ``fit()``, ``tf.distribute`` strategies and :func:`starqso.training.loop.distributed_fit`, and
  validates the deterministic sampler against the real vectors (``val_reconstruction``).

The noise schedule and the sampler's layers (:class:`TimestepEmbedding`,
:class:`NoiseFromVelocity`, :class:`ConstantTimestep`, :class:`DDIMStep`) are in
:mod:`starqso.models.diffusion_layers`; they are saved as classes of this module.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from starqso.models.blocks import (
    TRUNK,
    ConstructorConfig,
    GeneratorInputs,
    deserialize_submodel,
    photometry_branch,
)
from starqso.models.diffusion_layers import (
    ConstantTimestep,
    DDIMStep,
    NoiseFromVelocity,
    TimestepEmbedding,
    alpha_bar_schedule,
    positive_int,
    sampling_timesteps,
)
from starqso.models.gan import unscale
from starqso.models.layers import PACKAGE
from starqso.models.trunks import image_trunk_features, keep_trunk_arguments

#: Length of the sinusoidal timestep embedding inside the head (16 frequencies).
TIMESTEP_EMBEDDING_DIM = 32


def _denoiser_head(feature_dim, dense_units, timesteps):
    """The head: {"noisy", "timestep", "condition"} -> eps.

    An MLP over the concatenated noisy vector, timestep embedding and condition: one dense
    layer, then two residual blocks, all ReLU (it fuses into the dense layers in TFLite, int8
    included) and ``max(dense_units, 2 feature_dim)`` wide, so the noisy vector's signs both
    pass the first ReLU. It predicts the velocity, which :class:`NoiseFromVelocity` turns
    into eps.
    """
    width = max(int(dense_units), 2 * int(feature_dim))
    noisy = keras.Input((feature_dim,), name="noisy")
    timestep = keras.Input((1,), name="timestep")
    condition = keras.Input((dense_units,), name="condition")
    embedding = TimestepEmbedding(TIMESTEP_EMBEDDING_DIM, name="timestep_embedding")(timestep)
    x = layers.Concatenate(name="head_inputs")([noisy, embedding, condition])
    x = layers.Dense(width, activation="relu", name="head_dense0")(x)
    for block in (1, 2):
        y = layers.Dense(width, activation="relu", name=f"head_dense{block}")(x)
        x = layers.Add(name=f"head_residual{block}")([x, y])
    velocity = layers.Dense(feature_dim, dtype="float32", name="velocity")(x)
    eps = NoiseFromVelocity(timesteps, dtype="float32", name="eps")([noisy, timestep, velocity])
    return keras.Model({"noisy": noisy, "timestep": timestep, "condition": condition}, eps,
                       name="head")


def _same_timesteps(timesteps, denoiser, owner):
    """The schedule length of a sampler or trainer: the denoiser's unless given, and equal."""
    if timesteps is None:
        return denoiser.timesteps
    if positive_int(timesteps, "timesteps") != denoiser.timesteps:
        raise ValueError(f"{owner} timesteps must be its denoiser's ({denoiser.timesteps}), the "
                         f"schedule it was built for. Received: timesteps={timesteps}")
    return int(timesteps)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FeatureDenoiser(ConstructorConfig, keras.Model):
    """(image[, photometry], noisy vector, timestep) -> the predicted noise eps.

    Inputs ``{"image": (S, S, 5) scaled cutouts, "noisy": x_t (feature_dim,), "timestep":
    t / T (1,)[, "photometry": (photometry_dim,)]}``. Built from two sub-models kept as
    attributes: ``conditioner`` ({"image"[, "photometry"]} -> (dense_units,) condition: the
    image trunk and the photometry branch, concatenated, then a dense layer) and ``head``
    ({"noisy", "timestep", "condition"} -> eps). The split lets :class:`DiffusionGenerator` run
    the trunk once per object and only the head at every step.

    Args:
        image_size: cutout side in pixels.
        filters: image-trunk widths.
        feature_dim: length of the spectral vector.
        dense_units: width of the condition and of the trunk's embedding.
        dropout: dropout in the image trunk.
        photometry_dim: length of an extra ``"photometry"`` input (standardised aperture
            photometry); 0 for none.
        trunk: the image trunk, one of :data:`starqso.config.TRUNKS`.
        timesteps: T of the noise schedule (the head's eps skip depends on it).

    Example:
        >>> denoiser = FeatureDenoiser(16, filters=(4, 8), feature_dim=8, dense_units=8)
    """

    CONFIG_KEYS = ("image_size", "filters", "feature_dim", "dense_units", "dropout",
                   "photometry_dim", "trunk", "timesteps")

    def __init__(self, image_size=32, filters=(32, 64, 96), feature_dim=128, dense_units=128,
                 dropout=0.2, photometry_dim=0, trunk="cnn", timesteps=1000, **kwargs):
        image = keras.Input((image_size, image_size, 5), name="image")
        condition_inputs = {"image": image}
        branches = [image_trunk_features(image, trunk, filters, dense_units, dropout,
                                         name=TRUNK)]
        if photometry_dim:
            condition_inputs["photometry"] = keras.Input((photometry_dim,), name="photometry")
            branches.append(photometry_branch(condition_inputs["photometry"], dense_units))
        x = branches[0] if len(branches) == 1 else layers.Concatenate(
            name="condition_inputs")(branches)
        condition = layers.Dense(dense_units, activation="relu", name="condition")(x)
        conditioner = keras.Model(condition_inputs, condition, name="conditioner")
        head = _denoiser_head(feature_dim, dense_units, timesteps)

        # The outer graph has inputs of its own (the sub-models' are theirs): a sub-model is
        # called on them like a layer, which is also how the sampler shares its weights.
        inputs = {key: keras.Input(tensor.shape[1:], name=key)
                  for key, tensor in condition_inputs.items()}
        inputs["noisy"] = keras.Input((feature_dim,), name="noisy")
        inputs["timestep"] = keras.Input((1,), name="timestep")
        eps = head({"noisy": inputs["noisy"], "timestep": inputs["timestep"],
                    "condition": conditioner({key: inputs[key] for key in condition_inputs})})
        super().__init__(inputs=inputs, outputs=eps, **kwargs)
        self.conditioner = conditioner
        self.head = head
        keep_trunk_arguments(self, image_size, filters, dense_units, dropout, trunk)
        self.feature_dim = int(feature_dim)
        self.photometry_dim = int(photometry_dim)
        self.timesteps = int(timesteps)

    def denoiser_inputs(self, inputs, noisy, timestep):
        """The denoiser's input dict from a batch's inputs (image [+ photometry]), x_t, t / T."""
        selected = {"image": inputs["image"], "noisy": noisy, "timestep": timestep}
        if self.photometry_dim:
            selected["photometry"] = inputs["photometry"]
        return selected


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiffusionGenerator(GeneratorInputs, ConstructorConfig, keras.Model):
    """(image[, photometry], noise) -> spectral vector, by ``steps`` deterministic DDIM steps.

    The same interface as :class:`~starqso.models.FeatureGenerator`: inputs ``{"image",
    "noise"[, "photometry"]}``, attributes ``image_size``, ``photometry_dim``, ``noise_dim``,
    ``feature_dim`` and :meth:`generator_inputs`, so it drops into
    :class:`~starqso.models.StarQSOClassifier` and the fusion stage. The noise is x_T
    (``noise_dim == feature_dim``): zero noise, the mean of x_T, gives one deterministic
    vector per object (the deployed model's); N(0, I) noise gives samples.

    The graph runs the denoiser's conditioner once, then for k = 0 .. steps - 1 (t_k from
    :func:`sampling_timesteps`) ``eps = head(x, t_k / T, condition)`` and
    ``x = DDIMStep(alpha_bar[t_k], alpha_bar[t_k+1])([x, eps])``; the last step lands on
    t = 0 and returns its x0 estimate. The steps are unrolled (no loops, no random ops), so it
    exports to TFLite with builtin ops. It shares the denoiser's weights.

    Args:
        denoiser: a :class:`FeatureDenoiser` (or its config).
        steps: number of DDIM steps (1 to T).
        timesteps: T; None (or equal) for the denoiser's.

    Example:
        >>> generator = DiffusionGenerator(FeatureDenoiser(16, (4, 8), 8, 8), steps=4)
        >>> StarQSOClassifier(scaling, generator, fusion)  # doctest: +SKIP
    """

    CONFIG_KEYS = ("denoiser", "steps", "timesteps")

    def __init__(self, denoiser, steps=4, timesteps=None, **kwargs):
        denoiser = deserialize_submodel(denoiser)
        timesteps = _same_timesteps(timesteps, denoiser, "DiffusionGenerator")
        times = sampling_timesteps(steps, timesteps)
        alpha_bar = alpha_bar_schedule(timesteps)
        feature_dim = denoiser.feature_dim
        image = keras.Input((denoiser.image_size, denoiser.image_size, 5), name="image")
        noise = keras.Input((feature_dim,), name="noise")
        inputs = {"image": image, "noise": noise}
        condition_inputs = {"image": image}
        if denoiser.photometry_dim:
            inputs["photometry"] = condition_inputs["photometry"] = keras.Input(
                (denoiser.photometry_dim,), name="photometry")
        condition = denoiser.conditioner(condition_inputs)
        x = noise
        for k in range(len(times) - 1):
            t = ConstantTimestep(times[k] / timesteps, name=f"timestep{k}")(noise)
            eps = denoiser.head({"noisy": x, "timestep": t, "condition": condition})
            x = DDIMStep(alpha_bar[times[k]], alpha_bar[times[k + 1]],
                         name="features" if k == len(times) - 2 else f"ddim_step{k}")([x, eps])
        super().__init__(inputs=inputs, outputs=x, **kwargs)
        self.denoiser = denoiser
        self.steps = int(steps)
        self.timesteps = timesteps
        self.image_size = denoiser.image_size
        self.photometry_dim = denoiser.photometry_dim
        self.feature_dim = feature_dim
        self.noise_dim = feature_dim
        self.trunk = denoiser.trunk


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalDiffusion(ConstructorConfig, keras.Model):
    """Trains a :class:`FeatureDenoiser` by denoising (DDPM's simple loss).

    Data: ``({"image": scaled images[, "photometry": ...]}, real feature vectors)``, as for
    :class:`~starqso.models.ConditionalGAN`. Each training step draws t ~ U{1, ..., T} and
    eps ~ N(0, I) per object, forms ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``
    and minimises ``MSE(eps, denoiser(image, x_t, t / T))`` ("denoising_loss"). Each test
    step runs the deterministic sampler (zero noise) and tracks its MSE to the real vectors as
    "reconstruction", so a stage can early-stop on "val_reconstruction" as the GAN stage does.
    The losses are Keras loss objects, which scale correctly across replicas under
    ``tf.distribute``.

    Args:
        denoiser: the :class:`FeatureDenoiser` (or its config).
        steps: DDIM steps of the sampler (``generator``).
        timesteps: T; None (or equal) for the denoiser's.
        seed: seed of the timesteps and noise.

    Attributes:
        generator: the :class:`DiffusionGenerator` sampling with the denoiser's weights (what
            a stage saves and deploys).

    Example:
        >>> diffusion = ConditionalDiffusion(FeatureDenoiser(16, (4, 8), 8, 8), steps=4)
        >>> diffusion.compile(learning_rate=1e-3)
    """

    CONFIG_KEYS = ("denoiser", "steps", "timesteps", "seed")

    def __init__(self, denoiser, steps=4, timesteps=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.denoiser = deserialize_submodel(denoiser)
        self.timesteps = _same_timesteps(timesteps, self.denoiser, "ConditionalDiffusion")
        self.steps = int(steps)
        self.seed = int(seed)
        self.generator = DiffusionGenerator(self.denoiser, self.steps, self.timesteps,
                                            name="generator")
        self.noise_dim = self.generator.noise_dim
        alpha_bar = alpha_bar_schedule(self.timesteps)
        # Square roots in float64, then float32: alpha_bar_T is 2.4e-9.
        self._sqrt_alpha_bar = np.sqrt(alpha_bar).astype("float32")
        self._sqrt_one_minus_alpha_bar = np.sqrt(1.0 - alpha_bar).astype("float32")
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.denoising_loss = keras.losses.MeanSquaredError()
        self.reconstruction_loss = keras.losses.MeanSquaredError()
        self.denoising_loss_tracker = keras.metrics.Mean(name="denoising_loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        # The denoiser is functional, hence already built; so is this wrapper (callbacks such
        # as BackupAndRestore insist on a built model).
        self.built = True

    def compile(self, optimizer=None, *, learning_rate=1e-3, **kwargs):
        """One optimizer for the denoiser; by default Adam(``learning_rate``)."""
        super().compile(optimizer=optimizer if optimizer is not None else
                        keras.optimizers.Adam(learning_rate), **kwargs)

    def compile_from_config(self, config):
        # Keras skips models whose compile() is overridden; this one takes the saved optimizer
        # as it was, so a reloaded trainer can train on.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.build_optimizers()

    def build_optimizers(self):
        """Build the optimizer's slots now (needed inside ``strategy.scope()``)."""
        self.optimizer.build(self.denoiser.trainable_variables)

    @property
    def metrics(self):
        return [self.denoising_loss_tracker, self.reconstruction_tracker]

    def call(self, inputs, training=False):
        noise = keras.random.normal((ops.shape(inputs["image"])[0], self.noise_dim),
                                    seed=self.seed_generator)
        return self.generator(self.generator.generator_inputs(inputs, noise),
                              training=training)

    def replica_seeds(self):
        """Two seeds for this step's timesteps and noise, different on every replica.

        The seed generator's state is the same on every replica (it advances in lock-step), so
        keras.random would give each replica's slice of the batch the same timesteps and
        noise; folding in the replica's id (global across workers) keeps the draws of the
        whole global batch independent, as on one device.
        """
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        return tuple(tf.random.experimental.stateless_fold_in(
            self.seed_generator.next(), tf.cast(replica, "int64")) for _ in range(2))

    def train_step(self, data):
        import tensorflow as tf  # the TF backend's GradientTape; this model trains on TF only

        inputs, real = data
        real = ops.cast(real, "float32")
        batch = ops.shape(real)[0]
        timestep_seed, noise_seed = self.replica_seeds()
        t = tf.random.stateless_uniform((batch,), timestep_seed, 1, self.timesteps + 1,
                                        dtype="int32")
        eps = tf.random.stateless_normal(tf.shape(real), noise_seed)
        signal = ops.take(ops.convert_to_tensor(self._sqrt_alpha_bar), t)[:, None]
        spread = ops.take(ops.convert_to_tensor(self._sqrt_one_minus_alpha_bar), t)[:, None]
        noisy = signal * real + spread * eps
        timestep = ops.cast(t, "float32")[:, None] * (1.0 / self.timesteps)
        variables = self.denoiser.trainable_variables
        with tf.GradientTape() as tape:
            predicted = self.denoiser(self.denoiser.denoiser_inputs(inputs, noisy, timestep),
                                      training=True)
            loss = self.denoising_loss(eps, predicted)
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=False))
        self.denoising_loss_tracker.update_state(unscale(loss))
        return {"denoising_loss": self.denoising_loss_tracker.result()}

    def test_step(self, data):
        inputs, real = data
        noise = ops.zeros((ops.shape(real)[0], self.noise_dim))
        generated = self.generator(self.generator.generator_inputs(inputs, noise),
                                   training=False)
        self.reconstruction_tracker.update_state(
            unscale(self.reconstruction_loss(real, generated)))
        return {"reconstruction": self.reconstruction_tracker.result()}
