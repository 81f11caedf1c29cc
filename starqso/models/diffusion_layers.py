"""The diffusion sampler's pieces: the cosine noise schedule and the layers of its graph.

* :func:`alpha_bar_schedule` (Nichol & Dhariwal 2021) and :func:`sampling_timesteps` (the DDIM
  sampler's steps), in NumPy.
* :class:`TimestepEmbedding`, :class:`NoiseFromVelocity`: the denoiser head's input and output.
* :class:`ConstantTimestep`, :class:`DDIMStep`: one step of the unrolled sampler.

The layers convert to builtin TFLite ops. They are registered, and saved in ``.keras`` files,
as classes of :mod:`starqso.models.diffusion` (:data:`SAVED_MODULE`), which imports them:
files saved before they moved here name that module, and the model-file check
(:data:`starqso.deploy.keras_file.STARQSO_CLASSES`) accepts a starqso class only from the
module it was saved from.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from starqso.models.layers import PACKAGE

#: The module a ``.keras`` config names for the layers here (their ``__module__``).
SAVED_MODULE = "starqso.models.diffusion"
#: The cosine schedule's offset s (Nichol & Dhariwal 2021): keeps beta_1 from vanishing, so the
#: first steps still add noise a network can detect.
COSINE_OFFSET = 0.008
#: Their clip on beta_t, which keeps alpha_bar_T above zero (no singularity at t = T).
MAX_BETA = 0.999


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
    timesteps = positive_int(timesteps, "timesteps")
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
    steps = positive_int(steps, "steps")
    timesteps = positive_int(timesteps, "timesteps")
    if steps > timesteps:
        raise ValueError(f"steps must be at most timesteps. Received: steps={steps}, "
                         f"timesteps={timesteps}")
    return np.round(np.linspace(timesteps, 0, steps + 1)).astype(np.int64)


def positive_int(value, name):
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

    __module__ = SAVED_MODULE

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

    __module__ = SAVED_MODULE

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
    float (deploy.tflite.FLOAT_OPS; MINIMUM/MAXIMUM joined them later, and before that would
    have been quantised with the scale of an unclipped input that reaches 1e4 at the first
    step, 1 / sqrt(alpha_bar_T) = 2e4)."""
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

    __module__ = SAVED_MODULE

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

    __module__ = SAVED_MODULE

    def __init__(self, timesteps=1000, **kwargs):
        super().__init__(**kwargs)
        self.timesteps = positive_int(timesteps, "timesteps")
        self._floor = float(np.sqrt(alpha_bar_schedule(self.timesteps)[-1]))
        self._rate = np.pi / 2 / (1 + COSINE_OFFSET)
        self._scale = 1.0 / math.cos(COSINE_OFFSET * self._rate)

    def call(self, inputs):
        noisy, timestep, velocity = (ops.cast(value, "float32") for value in inputs)
        signal = ops.sin((1.0 - timestep) * self._rate) * self._scale
        # max(signal, floor) as (s + f + |s - f|) / 2: float ops of deploy.tflite.FLOAT_OPS.
        signal = (signal + self._floor + ops.abs(signal - self._floor)) * 0.5
        spread = ops.sqrt(ops.abs(ops.sin(timestep * self._rate) * ops.sin(
            (timestep + 2 * COSINE_OFFSET) * self._rate))) * self._scale
        return spread * noisy + signal * velocity

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "timesteps": self.timesteps}
