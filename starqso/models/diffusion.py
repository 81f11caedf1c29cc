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
"""

from __future__ import annotations

import math

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
from starqso.models.gan import unscale
from starqso.models.layers import PACKAGE
from starqso.models.trunks import image_trunk_features

#: The cosine schedule's offset s (Nichol & Dhariwal 2021): keeps beta_1 from vanishing, so the
#: first steps still add noise a network can detect.
COSINE_OFFSET = 0.008
#: Their clip on beta_t, which keeps alpha_bar_T above zero (no singularity at t = T).
MAX_BETA = 0.999
#: Length of the sinusoidal timestep embedding inside the head (16 frequencies).
TIMESTEP_EMBEDDING_DIM = 32


def alpha_bar_schedule(timesteps=1000):
    """The cosine noise schedule: alpha_bar_t, the signal variance left at step t.

    ``alpha_bar_t = f(t) / f(0)``, ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``, with each
    ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` clipped to 0.999 (Nichol & Dhariwal 2021).
    Unlike the linear schedule it destroys information evenly over t, so few sampling steps
    still cover the whole range of noise levels.

    Args:
        timesteps: T, the number of diffusion steps.

    Returns:
        float64 array of length T + 1: alpha_bar_0 = 1, strictly decreasing, alpha_bar_T > 0
        (about 2.4e-9 for T = 1000).

    Example:
        >>> alpha_bar = alpha_bar_schedule(1000)
        >>> float(alpha_bar[0]), bool(alpha_bar[-1] < 1e-6)
        (1.0, True)
    """
    timesteps = _positive_int(timesteps, "timesteps")
    t = np.arange(timesteps + 1, dtype=np.float64)
    f = np.cos((t / timesteps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def sampling_timesteps(steps, timesteps=1000):
    """The DDIM sampler's timesteps: ``steps + 1`` integers evenly spaced from T down to 0.

    Step k goes from ``t[k]`` to ``t[k + 1]``; the last lands on t = 0 (alpha_bar = 1), where
    the DDIM update returns its x0 estimate itself.

    Args:
        steps: number of sampling steps, 1 to ``timesteps``.
        timesteps: T.

    Returns:
        int64 array ``[T, ..., 0]`` of length ``steps + 1``, strictly decreasing.

    Example:
        >>> sampling_timesteps(4, 1000).tolist()
        [1000, 750, 500, 250, 0]
    """
    steps = _positive_int(steps, "steps")
    timesteps = _positive_int(timesteps, "timesteps")
    if steps > timesteps:
        raise ValueError(f"steps must be at most timesteps. Received: steps={steps}, "
                         f"timesteps={timesteps}")
    return np.round(np.linspace(timesteps, 0, steps + 1)).astype(np.int64)


def _positive_int(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TimestepEmbedding(keras.layers.Layer):
    """(batch, 1) timestep t / T in [0, 1] -> (batch, dim) sinusoidal embedding.

    ``sin(w_i t)`` and ``cos(w_i t)`` for ``dim / 2`` angular frequencies ``w_i`` spaced
    geometrically from 1 (nearly linear in t) to ``max_frequency``. Lower frequencies than the
    transformer embedding of the integer step (up to one radian per step, 1000 per unit t):
    the denoiser needs only smooth functions of the noise level, and features that oscillate
    with every step are noise to a small MLP (on the tiny test problem the denoising loss
    after ten epochs was 0.39 with frequencies up to 50, 0.42 up to 1000, mean of three
    seeds). The cosines are sines shifted by pi / 2, so the graph has one SIN op (builtin in
    TFLite, kept float in int8).

    Args:
        dim: embedding length, even.
        max_frequency: highest angular frequency, in radians per unit t (>= 1).

    Example:
        >>> TimestepEmbedding(8)(np.full((2, 1), 0.5, "float32")).shape  # doctest: +SKIP
        (2, 8)
    """

    def __init__(self, dim, max_frequency=50.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(dim, bool) or int(dim) != dim or dim < 2 or dim % 2:
            raise ValueError(f"TimestepEmbedding dim must be an even integer >= 2. "
                             f"Received: dim={dim!r}")
        if not max_frequency >= 1.0:
            raise ValueError(f"TimestepEmbedding max_frequency must be >= 1. "
                             f"Received: max_frequency={max_frequency!r}")
        self.dim = int(dim)
        self.max_frequency = float(max_frequency)
        half = self.dim // 2
        frequencies = np.geomspace(1.0, self.max_frequency, half)
        self._frequencies = np.concatenate([frequencies, frequencies]).astype("float32")
        self._phases = np.concatenate([np.zeros(half), np.full(half, np.pi / 2)]).astype(
            "float32")

    def call(self, inputs):
        angles = (ops.cast(inputs, "float32") * ops.convert_to_tensor(self._frequencies)
                  + ops.convert_to_tensor(self._phases))
        return ops.sin(angles)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "max_frequency": self.max_frequency}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantTimestep(keras.layers.Layer):
    """A (batch, 1) tensor filled with one timestep, batch size taken from ``inputs``.

    The sampler's timesteps are fixed, but the head takes them as a per-object input. Like
    :class:`~starqso.models.ZeroNoise`, a slice of the input times zero plus the value keeps
    the batch dynamic with MUL/ADD only (no FILL or SHAPE for TFLite; both stay float in int8).

    Args:
        value: the timestep t / T.

    Example:
        >>> ConstantTimestep(0.75)(np.zeros((3, 8), "float32"))  # doctest: +SKIP
    """

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = float(value)

    def call(self, inputs):
        first = ops.reshape(inputs, (-1, int(np.prod(inputs.shape[1:]))))[:, :1]
        return ops.cast(first, "float32") * 0.0 + self.value

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "value": self.value}


def _clip_unit(x):
    """clip(x, -1, 1) as (|x + 1| - |x - 1|) / 2: ADD/SUB/ABS/MUL, which the int8 export keeps
    float (export.FLOAT_OPS; MINIMUM/MAXIMUM joined them later, and before that would have been
    quantised with the scale of an unclipped input that reaches 1e4 at the first step,
    1 / sqrt(alpha_bar_T) = 2e4)."""
    return (ops.abs(x + 1.0) - ops.abs(x - 1.0)) * 0.5


@keras.saving.register_keras_serializable(package=PACKAGE)
class DDIMStep(keras.layers.Layer):
    """One deterministic DDIM step (eta = 0) from noise level ``alpha_bar`` to ``alpha_bar_next``.

    ``call([x_t, eps])``: ``x0 = clip((x_t - sqrt(1 - a) eps) / sqrt(a), -1, 1)`` (the
    spectral vectors are tanh outputs, in [-1, 1]), then returns
    ``sqrt(a_next) x0 + sqrt(1 - a_next) eps``; with ``alpha_bar_next = 1`` that is ``x0``.
    The coefficients are computed in float64 once, and the graph multiplies by them (no DIV).

    Args:
        alpha_bar: alpha_bar of the current step, in (0, 1].
        alpha_bar_next: alpha_bar of the step it goes to, in (0, 1].

    Example:
        >>> step = DDIMStep(0.5, 1.0)
        >>> step([np.zeros((1, 4), "float32"), np.zeros((1, 4), "float32")])  # doctest: +SKIP
    """

    def __init__(self, alpha_bar, alpha_bar_next, **kwargs):
        super().__init__(**kwargs)
        self.alpha_bar = float(alpha_bar)
        self.alpha_bar_next = float(alpha_bar_next)
        for name, value in (("alpha_bar", self.alpha_bar),
                            ("alpha_bar_next", self.alpha_bar_next)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"DDIMStep {name} must be in (0, 1]. Received: {name}={value}")
        self._signal = 1.0 / math.sqrt(self.alpha_bar)
        self._noise = math.sqrt(1.0 - self.alpha_bar) / math.sqrt(self.alpha_bar)
        self._signal_next = math.sqrt(self.alpha_bar_next)
        self._noise_next = math.sqrt(1.0 - self.alpha_bar_next)

    def call(self, inputs):
        x_t, eps = (ops.cast(value, "float32") for value in inputs)
        x0 = _clip_unit(x_t * self._signal - eps * self._noise)
        if self._noise_next == 0.0:
            return x0 if self._signal_next == 1.0 else x0 * self._signal_next
        return x0 * self._signal_next + eps * self._noise_next

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "alpha_bar": self.alpha_bar,
                "alpha_bar_next": self.alpha_bar_next}


@keras.saving.register_keras_serializable(package=PACKAGE)
class NoiseFromVelocity(keras.layers.Layer):
    """The head's output: ``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``.

    The network predicts the velocity ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0``
    (Salimans & Ho 2022), which has unit variance at every noise level, and this fixed skip
    turns it into eps exactly. Trained on the same MSE to eps, this learns far faster than a
    network predicting eps itself (denoising loss 0.39-0.44 against 0.55-0.86 after ten
    epochs of the tiny test problem, dense_units 8 and 32), because at high noise eps is
    mostly x_t and the skip already carries it. It also makes the first DDIM step well
    conditioned: at t = T the step divides by sqrt(alpha_bar_T) = 5e-5, and the x0 it then
    finds is ``sqrt(alpha_bar_T) x_T - v``, not the network's error times 2e4.

    ``call([x_t, t / T, v])``. The coefficients are the schedule of
    :func:`alpha_bar_schedule` computed in the graph with sines of angles that stay
    accurate in float32 at both ends (``sqrt(alpha_bar) = sin(a (1 - t)) / cos(theta0)`` and
    ``1 - alpha_bar = sin(a t) sin(a (t + 2 s)) / cos^2(theta0)``, ``a = pi / 2 / (1 + s)``),
    with sqrt(alpha_bar) floored at sqrt(alpha_bar_T), where Nichol and Dhariwal's beta clip
    leaves it.

    Args:
        timesteps: T of the schedule.

    Example:
        >>> layer = NoiseFromVelocity(1000)
    """

    def __init__(self, timesteps=1000, **kwargs):
        super().__init__(**kwargs)
        self.timesteps = _positive_int(timesteps, "timesteps")
        self._floor = float(np.sqrt(alpha_bar_schedule(self.timesteps)[-1]))
        self._rate = np.pi / 2 / (1 + COSINE_OFFSET)
        self._scale = 1.0 / math.cos(COSINE_OFFSET * self._rate)

    def call(self, inputs):
        noisy, timestep, velocity = (ops.cast(value, "float32") for value in inputs)
        signal = ops.sin((1.0 - timestep) * self._rate) * self._scale
        # max(signal, floor) as (s + f + |s - f|) / 2: float ops of export.FLOAT_OPS.
        signal = (signal + self._floor + ops.abs(signal - self._floor)) * 0.5
        spread = ops.sqrt(ops.abs(ops.sin(timestep * self._rate) * ops.sin(
            (timestep + 2 * COSINE_OFFSET) * self._rate))) * self._scale
        return spread * noisy + signal * velocity

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "timesteps": self.timesteps}


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
    if _positive_int(timesteps, "timesteps") != denoiser.timesteps:
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
        self.image_size = int(image_size)
        self.filters = tuple(int(f) for f in filters)
        self.feature_dim = int(feature_dim)
        self.dense_units = int(dense_units)
        self.dropout = float(dropout)
        self.photometry_dim = int(photometry_dim)
        self.trunk = str(trunk)
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
