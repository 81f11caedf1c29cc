"""Custom layers: cutout scaling inside the graph and the inference-time GAN noise.

Both are registered for serialization and carry their numbers in their config, so a `.keras`
file, a SavedModel and a TFLite model all scale cutouts identically, with builtin ops only.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from starqso.errors import InputError
from starqso.preprocessing.photometry import (
    SKY_ARCS,
    SKY_TRIM,
    SOFTENING,
    aperture_masks,
    psf_weights,
    sky_arcs,
)
from starqso.preprocessing.scaling import ASINH_FLOOR

PACKAGE = "starqso"


def asinh(x):
    """asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)): builtin TFLite ops only (no ASINH), and no
    cancellation for large negative x."""
    return ops.sign(x) * ops.log(ops.abs(x) + ops.sqrt(ops.square(x) + 1.0))


@keras.saving.register_keras_serializable(package=PACKAGE)
class CutoutScaling(keras.layers.Layer):
    """Raw nanomaggie cutouts -> asinh-stretched, per-band standardised pixels.

    ``y = (max(asinh(x / softening), -6) - mean) / std`` per band. The asinh stretch (like SDSS
    luptitudes) is linear near the sky noise and logarithmic for bright cores, so one network
    sees 14th- and 22nd-magnitude objects on a comparable scale while colours survive as
    differences between bands. The statistics are measured on the training cutouts at fit time
    (:func:`starqso.preprocessing.scaling.cutout_statistics`) and stored here, so no side file
    is needed at inference.

    Args:
        softening: per-band softening in nanomaggies (about the sky noise), length 5.
        mean: per-band mean of the stretched training pixels, length 5.
        std: per-band standard deviation of the stretched training pixels, length 5.

    Example:
        >>> layer = CutoutScaling([0.03] * 5, [0.0] * 5, [1.0] * 5)
        >>> layer(np.zeros((1, 8, 8, 5), "float32")).shape  # doctest: +SKIP
        (1, 8, 8, 5)
    """

    def __init__(self, softening, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.softening = [float(v) for v in softening]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        for name, values in (("softening", self.softening), ("std", self.std)):
            if len(values) != 5 or min(values) <= 0:
                raise ValueError(f"CutoutScaling {name} must be 5 positive numbers. "
                                 f"Received: {name}={values}")

    def call(self, inputs):
        # This runs float on every pixel of an int8 export, before the int8 network. In TFLite
        # an element-wise op with a per-band (5-vector) operand costs 2-4x one with a scalar
        # (0.65 vs 0.4 ms on a batch of 256 24-pixel cutouts; the 8 ops of
        # log(x + sqrt(x^2 + s^2)) * a + b with per-band s, a, b took 4.6 ms, an eighth of
        # the whole int8 model). So the band enters once, in u = x / s; asinh(u) = log(u +
        # sqrt(u^2 + 1)) is all scalars (no ABS/SIGN: SIGN also splits the XNNPACK partition;
        # the floor (MAXIMUM) stops its cancellation at very negative u); and the per-band
        # standardisation is a 1 x 1 convolution with a diagonal kernel, one GEMM-backed op
        # (kept float in int8 exports, tflite.FLOAT_LAYERS): 1.7 ms in all (2.4-2.6 ms with
        # the trunk crop before it, benchmarks/edge.py --parts).
        inverse = (1.0 / np.asarray(self.softening, "float64")).astype("float32")
        scale = 1.0 / np.asarray(self.std, "float64")
        u = ops.cast(inputs, "float32") * ops.convert_to_tensor(inverse)
        stretched = ops.log(ops.maximum(u + ops.sqrt(ops.square(u) + 1.0),
                                        float(np.exp(-ASINH_FLOOR))))
        kernel = np.diag(scale).astype("float32")[None, None]  # (1, 1, 5, 5)
        bias = (-np.asarray(self.mean, "float64") * scale).astype("float32")
        return (ops.conv(stretched, ops.convert_to_tensor(kernel), padding="valid")
                + ops.convert_to_tensor(bias))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "softening": self.softening, "mean": self.mean,
                "std": self.std}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroNoise(keras.layers.Layer):
    """The generator's noise input at inference: zeros of shape (batch, noise_dim).

    The mean of the training noise gives the generator's most typical feature vector and makes
    p(QSO) deterministic, which exported models and their numeric checks need.

    Args:
        noise_dim: length of the noise vector.
    """

    def __init__(self, noise_dim, **kwargs):
        super().__init__(**kwargs)
        self.noise_dim = int(noise_dim)

    def call(self, inputs):
        # Multiplying a slice of the input by zero keeps the batch size dynamic with builtin
        # ops only (no Fill/shape gymnastics for TFLite).
        first = ops.reshape(inputs, (-1, int(np.prod(inputs.shape[1:]))))[:, :1]
        return ops.zeros_like(first) * ops.ones((1, self.noise_dim), dtype=first.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.noise_dim)

    def get_config(self):
        return {**super().get_config(), "noise_dim": self.noise_dim}


def _median3(a, b, c):
    """Element-wise median of three tensors: MAXIMUM/MINIMUM, float ops of tflite.FLOAT_OPS."""
    return ops.maximum(ops.minimum(a, b), ops.minimum(ops.maximum(a, b), c))


@keras.saving.register_keras_serializable(package=PACKAGE)
class AperturePhotometry(keras.layers.Layer):
    """Raw nanomaggie cutouts -> standardised aperture photometry, inside the graph.

    The same features as :func:`starqso.preprocessing.photometry.photometric_features` (u-g,
    g-r, r-i, i-z and r as SDSS asinh magnitudes in a 3" aperture, minus the robust sky of
    :func:`~starqso.preprocessing.photometry.sky_levels`: the interquartile mean of 16 arc
    means of the border; r-band concentration between 1.5" and 3"), then ``(f - mean) / std``.
    The image CNN learns colours only approximately from a few thousand cutouts, while colours
    and brightness are what separates stars from QSOs; measuring them explicitly in the model
    keeps the model image-only (one input, raw cutouts) and exportable with builtin ops.

    Args:
        image_size: cutout side in pixels (at least 22, ``config.PHOTOMETRY_MIN_SIZE``: the 3"
            aperture and its 3-pixel sky border).
        mean: per-feature mean on the training cutouts, length ``NUM_FEATURES`` (default
            zeros).
        std: per-feature standard deviation, length ``NUM_FEATURES`` (default ones).
        weighted_fwhm: FWHMs (arcsec) of PSF-weighted fluxes (Gaussian weights on the 3"
            aperture's pixels, :func:`~starqso.preprocessing.photometry.weighted_fluxes`),
            whose 4 colours and r follow the 6 aperture features: ``NUM_FEATURES`` is
            ``6 + 5 * len(weighted_fwhm)``. At the faint, sky-limited end they have about
            three times the aperture's S/N. Default none (the 6 aperture features).

    Example:
        >>> layer = AperturePhotometry(32)
        >>> layer(np.zeros((2, 32, 32, 5), "float32")).shape  # doctest: +SKIP
        (2, 6)
    """

    NUM_FEATURES = 6  # without weighted_fwhm; an instance has its own

    def __init__(self, image_size, mean=None, std=None, weighted_fwhm=(), **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        if not isinstance(weighted_fwhm, (list, tuple)) or not all(
                isinstance(v, (int, float)) and 0 < v <= 6 for v in weighted_fwhm):
            raise ValueError(f"AperturePhotometry weighted_fwhm must be a list of FWHMs in "
                             f"(0, 6] arcsec. Received: weighted_fwhm={weighted_fwhm!r}")
        self.weighted_fwhm = [float(v) for v in weighted_fwhm]
        self.NUM_FEATURES = 6 + 5 * len(self.weighted_fwhm)
        count = self.NUM_FEATURES
        self.mean = [float(v) for v in (mean if mean is not None else [0.0] * count)]
        self.std = [float(v) for v in (std if std is not None else [1.0] * count)]
        if len(self.mean) != count or len(self.std) != count or min(self.std) <= 0:
            raise ValueError(f"AperturePhotometry mean and std must be {count} numbers "
                             f"(6 + 5 per weighted_fwhm), std > 0. Received: "
                             f"mean={self.mean}, std={self.std}")
        try:
            outer, _ = aperture_masks(self.image_size, 3.0)
            inner, _ = aperture_masks(self.image_size, 1.5)
        except InputError as error:  # a cutout too small for the aperture and sky border
            raise ValueError(f"{error}. Received: image_size={image_size}") from None
        self._pixels = self.image_size * self.image_size
        # Only the 3" aperture's pixels are gathered (180 of 1,024 for 32 pixels); the 1.5"
        # aperture is a 0/1 weight on them, and the PSF weights are on the same pixels: one
        # (A, K) matrix of K = 2 + len(weighted_fwhm) sums. Raw nanomaggies do not survive
        # int8, so the int8 export keeps its matmul float (export.float_nodes).
        self._aperture = np.flatnonzero(outer.ravel()).astype("int32")
        self._sums = np.stack(
            [np.ones(self._aperture.size), inner.ravel()[self._aperture]]
            + [psf_weights(self.image_size, fwhm) for fwhm in self.weighted_fwhm],
            axis=1).astype("float32")
        arcs = sky_arcs(self.image_size)  # (16, L) border pixels, arc by arc
        self._arcs = arcs.shape
        self._sky_index = arcs.ravel()
        # Three border pixels a third of the border apart, for the float32 offset (call).
        self._offset_pixels = tuple(int(arcs[k, 0]) for k in (0, len(arcs) // 3,
                                                             2 * len(arcs) // 3))
        # asinh magnitude m = -2.5/ln10 (asinh(f / 2b) + ln b), f in units of 3631 Jy.
        self._flux_scale = (1e-9 / (2 * SOFTENING)).astype("float32")
        self._map, self._offset = self._feature_map(np.log(SOFTENING))

    def _feature_map(self, log_b):
        """(5 K, F) matrix and (F,) offset: asinh(f / 2b) of the K fluxes (outer, inner,
        weighted...; band-major) -> standardised features, ``(features - mean) / std``."""
        fluxes = 2 + len(self.weighted_fwhm)
        to_mag = -2.5 / np.log(10.0)
        rows = []  # each feature as weights on the 5 K magnitudes

        def magnitude(k, band):
            row = np.zeros(5 * fluxes)
            row[band * fluxes + k] = 1.0  # the band-major order of call's fluxes
            return row

        colours = [magnitude(0, b) - magnitude(0, b + 1) for b in range(4)]
        rows += colours + [magnitude(0, 2), magnitude(1, 2) - magnitude(0, 2)]
        for k in range(2, fluxes):
            rows += [magnitude(k, b) - magnitude(k, b + 1) for b in range(4)]
            rows.append(magnitude(k, 2))
        linear = np.array(rows).T * to_mag  # (5 K, F), on asinh values
        offset = np.repeat(log_b, fluxes) @ linear  # the ln b terms of the magnitudes
        std = np.asarray(self.std, "float64")
        return ((linear / std).astype("float32"),
                ((offset - np.asarray(self.mean, "float64")) / std).astype("float32"))

    def call(self, inputs):
        flat = ops.reshape(ops.cast(inputs, "float32"), (-1, self._pixels, 5))
        # Float32 on a sky pedestal: an offset near the sky (the median of three border
        # pixels) is subtracted from every pixel first, then the rest of the sky from each
        # aperture pixel, so that sums work on noise-sized numbers and the sky is never one
        # float32 number times the area (sum(pixels) - area * sky cancelled to 2.6e-5 mag on
        # faint sources). The estimate commutes with a constant shift, so the result is that
        # of sky_levels whatever the offset.
        offset = _median3(*(flat[:, j, :] for j in self._offset_pixels))[:, None, :]
        border = (ops.take(flat, ops.convert_to_tensor(self._sky_index), axis=1)
                  - offset)  # (N, arcs * L, 5), arc by arc
        arcs, length = self._arcs
        # The arc sums are transposed, not the border: TOPK_V2 ranks along the last axis.
        sums = ops.transpose(ops.sum(ops.reshape(border, (-1, arcs, length, 5)), axis=2),
                             (0, 2, 1))  # (N, 5, arcs)
        # TOPK_V2 over the 16 arc sums per band, descending: drop the SKY_TRIM highest (where
        # neighbours are) and as many of the lowest; the sky is the mean of the rest.
        top = ops.top_k(sums, SKY_ARCS - SKY_TRIM, sorted=True)[0][:, :, SKY_TRIM:]
        sky = ops.sum(top, axis=2) * (1.0 / ((SKY_ARCS - 2 * SKY_TRIM) * length))  # - offset
        pixels = (ops.take(flat, ops.convert_to_tensor(self._aperture), axis=1)
                  - (offset + sky[:, None, :]))  # one SUB on the aperture's pixels
        # All K aperture sums (outer, inner, PSF-weighted) as one (A, K) matmul on the
        # band-major pixels: a float FULLY_CONNECTED (tflite.FLOAT_LAYERS keeps it float), 5x
        # faster here than K MUL + SUM pairs.
        # (2-D: a 3-D matmul becomes Tensordot, with shape arithmetic in the graph.)
        area, count = self._sums.shape
        fluxes = ops.reshape(ops.matmul(ops.reshape(ops.transpose(pixels, (0, 2, 1)),
                                                    (-1, area)),
                                        ops.convert_to_tensor(self._sums)),
                             (-1, 5 * count))  # (N, 5 K), band-major
        # One asinh on all the fluxes and one linear map (MUL + SUM, float) to the colours, r,
        # the concentration and their standardisation: a few element-wise ops instead of a
        # hundred on (N, 5) tensors, each with its own overhead.
        stretched = asinh(fluxes * ops.convert_to_tensor(np.repeat(self._flux_scale, count)))
        return (ops.sum(stretched[:, :, None] * ops.convert_to_tensor(self._map), axis=1)
                + ops.convert_to_tensor(self._offset))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.NUM_FEATURES)

    def get_config(self):
        config = {**super().get_config(), "image_size": self.image_size, "mean": self.mean,
                  "std": self.std}
        if self.weighted_fwhm:  # absent for the 6 aperture features, as models before it
            config["weighted_fwhm"] = self.weighted_fwhm
        return config
