"""The models' input preprocessing, fitted once on the training cutouts and applied in one place.

Raw nanomaggie cutouts become the named model inputs here and nowhere else: ``"image"`` (the
asinh-scaled cutout, :class:`~starqso.models.CutoutScaling`) and, with ``model.photometry``,
``"photometry"`` (standardised aperture photometry, :class:`~starqso.models.AperturePhotometry`).
The layers that compute them are the very ones placed inside the deployable
:class:`~starqso.models.StarQSOClassifier`, so training inputs and deployed inputs cannot drift
apart. Stages train on the arrays these layers produce; the statistics go to the run folder's
``preprocessing.json``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from starqso.preprocessing.crop import crop_window
from starqso.preprocessing.scaling import cutout_statistics
from starqso.preprocessing.screening import sky_sigma
from starqso.schema import BANDS, BUNIT

_BATCH = 2048


def apply_layer(layer, images: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    """``layer`` over ``images`` in batches, as one NumPy array (bounded memory)."""
    return np.concatenate([np.asarray(layer(images[start:start + batch]))
                           for start in range(0, len(images), batch)])


def trunk_side(model_config) -> int:
    """Side of the centre the image CNNs see: ``model.trunk_size``, else ``model.image_size``."""
    return model_config.trunk_size or model_config.image_size


def centre(images: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` pixels of channels-last cutouts (N, S, S, 5): the crop
    :class:`~starqso.models.StarQSOClassifier` takes before its scaling (equal margins)."""
    rows, columns = crop_window(images.shape[1], images.shape[2], side)
    return images[:, rows, columns]


def fit_photometry(images: np.ndarray, train: np.ndarray, image_size: int, name="photometry",
                   weighted_fwhm=()):
    """An :class:`AperturePhotometry` layer standardised with the training objects' statistics.

    Args:
        images: raw cutouts (N, S, S, 5).
        train: indices of the training objects.
        image_size: S.
        name: the layer's name.
        weighted_fwhm: FWHMs (arcsec) of the layer's PSF-weighted fluxes
            (``model.weighted_fwhm``).

    Returns:
        ``(layer, features)``: the fitted layer and its output for every cutout
        (N, ``layer.NUM_FEATURES``).
    """
    from starqso.models import AperturePhotometry

    raw = apply_layer(AperturePhotometry(image_size, weighted_fwhm=weighted_fwhm), images)
    layer = AperturePhotometry(image_size, raw[train].mean(axis=0),
                               raw[train].std(axis=0) + 1e-6, weighted_fwhm=weighted_fwhm,
                               name=name)
    return layer, apply_layer(layer, images)


@dataclasses.dataclass
class ModelInputs:
    """The fitted preprocessing of one run and the model inputs it gives for every object.

    Attributes:
        scaling: the :class:`CutoutScaling` layer.
        photometry: the :class:`AperturePhotometry` layer, or None without ``model.photometry``.
        statistics: the scaling statistics (``softening``, ``mean``, ``std`` per band).
        arrays: ``{"image": (N, T, T, 5)[, "photometry": (N, P)]}`` for every object (T the
            trunk side, :func:`trunk_side`).
    """

    scaling: object
    photometry: object | None
    statistics: dict
    arrays: dict[str, np.ndarray]

    @classmethod
    def fit(cls, images: np.ndarray, train: np.ndarray, model_config, seed: int) -> ModelInputs:
        """Fit the statistics on ``images[train]`` and apply them to every image.

        Args:
            images: raw cutouts (N, S, S, 5) in nanomaggies.
            train: indices of the training objects.
            model_config: :class:`starqso.config.ModelConfig` (``image_size``, ``trunk_size``,
                ``photometry``).
            seed: seed of the statistics' subsample.

        Returns:
            :class:`ModelInputs`.

        Example:
            >>> inputs = ModelInputs.fit(arrays.images, train, config.model, 0)  # doctest: +SKIP
            >>> inputs.arrays["image"].shape
            (96, 24, 24, 5)
        """
        from starqso.models import CutoutScaling

        statistics = cutout_statistics(images[train], seed=seed)
        scaling = CutoutScaling(**statistics, name="cutout_scaling")
        arrays = {"image": apply_layer(scaling, centre(images, trunk_side(model_config)))}
        photometry = None
        if model_config.photometry:
            photometry, arrays["photometry"] = fit_photometry(
                images, train, model_config.image_size,
                weighted_fwhm=model_config.weighted_fwhm)
        return cls(scaling, photometry, statistics, arrays)

    @property
    def photometry_dim(self) -> int:
        """Length of the photometry input (0 without photometry)."""
        return 0 if self.photometry is None else self.photometry.NUM_FEATURES

    def record(self, image_size: int) -> dict:
        """What ``preprocessing.json`` holds."""
        record = {**self.statistics, "image_size": image_size,
                  "trunk_size": int(self.arrays["image"].shape[1]), "units": BUNIT,
                  "bands": "".join(BANDS)}
        if self.photometry is not None:
            record.update(photometry_mean=self.photometry.mean,
                          photometry_std=self.photometry.std)
        return record


def noisier_cutouts(images: np.ndarray, max_scale: float, rng) -> np.ndarray:
    """Copies of raw cutouts with extra white sky noise, as if observed at a shallower depth.

    Each cutout's per-pixel sky sigma (its border's,
    :func:`~starqso.preprocessing.screening.sky_sigma`) is scaled by a factor uniform in
    ``[1, max_scale]``, times 0.9-1.1 per band (kept in ``[1, max_scale]``): Gaussian noise of sigma
    ``sigma * sqrt(scale**2 - 1)`` is added to every pixel.

    Args:
        images: raw cutouts (N, S, S, 5) in nanomaggies.
        max_scale: the largest total noise scale (>= 1; 1 returns an unchanged copy).
        rng: a ``numpy.random.Generator``.

    Returns:
        (N, S, S, 5) float32 noisier copies.

    Example:
        >>> clean = np.random.default_rng(0).normal(0, 0.03, (4, 32, 32, 5))
        >>> noisy = noisier_cutouts(clean, 2.0, np.random.default_rng(1))
        >>> bool((noisy.std(axis=(1, 2)) >= 0.95 * clean.std(axis=(1, 2))).all())
        True
    """
    if not max_scale >= 1:
        raise ValueError(f"noisier_cutouts max_scale must be >= 1. Received: "
                         f"max_scale={max_scale!r}")
    images = np.asarray(images, np.float32)
    scale = np.clip(rng.uniform(1.0, max_scale, (len(images), 1))
                    * rng.uniform(0.9, 1.1, (len(images), 5)), 1.0, max_scale)
    extra = sky_sigma(images) * np.sqrt(np.clip(scale ** 2 - 1.0, 0.0, None))  # (N, 5)
    return (images + rng.normal(size=images.shape).astype(np.float32)
            * extra[:, None, None, :].astype(np.float32))


def noisier_chunks(images: np.ndarray, index: np.ndarray, max_scale: float, seed: int,
                   chunk: int = 4096):
    """:func:`noisier_cutouts` of ``images[index]``, chunk by chunk (bounded memory), the same
    copies on every call with the same seed.

    Yields:
        ``(part, noisier)``: the chunk's indices into ``images`` and their noisier copies.
    """
    index = np.asarray(index)
    for number, start in enumerate(range(0, len(index), chunk)):
        part = index[start:start + chunk]
        yield part, noisier_cutouts(images[part], max_scale,
                                    np.random.default_rng([seed, number]))
