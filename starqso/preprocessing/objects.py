"""One object's model inputs: its image crop and encoder spectrum (NumPy only).

:func:`prepare_object` is the one place a cutout becomes an image and a spectrum becomes an
encoder input, for every path that feeds a model: catalogue arrays and simulated arrays
(:class:`starqso.data.ObjectArrays`) and prediction (:func:`starqso.inference.predict_catalog`
uses the image half). It reads no file, so it serves files and in-memory simulations alike.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.images import usable_crop
from starqso.preprocessing.spectra import encoder_input, resample_spectrum


class PreparedObject(NamedTuple):
    """The model inputs of one object, from :func:`prepare_object`.

    Attributes:
        image: float32 ``(S, S, 5)`` centre crop in nanomaggies, channels last, finite.
        spectrum: float32 ``(3700, 2)`` encoder input, or None when no spectrum was given or
            it could not be used.
        note: ``""``, or a one-line note that a few NaN/inf pixels were repaired.
        spectrum_error: ``""``, or why the given spectrum could not be used (the message of
            the :class:`InputError` it raised).
    """

    image: np.ndarray
    spectrum: np.ndarray | None
    note: str
    spectrum_error: str


def prepare_object(cutout, image_size: int, spectrum=None, *, source: str,
                   spectrum_source: str | None = None) -> PreparedObject:
    """The image crop and encoder spectrum of one object.

    The image is :func:`starqso.preprocessing.usable_crop` of the cutout: the centre crop,
    with a few NaN/inf pixels set to their band median (and a note saying so). On a clean
    cutout (finite, not all zeros: every simulated one) it is exactly
    :func:`starqso.preprocessing.center_crop`. The spectrum is resampled onto the encoder grid
    (:func:`starqso.preprocessing.resample_spectrum`) and turned into the encoder input
    (:func:`starqso.preprocessing.encoder_input`).

    An unusable cutout raises: the object cannot be classified. An unusable spectrum does not:
    the object keeps its image and the reason is returned in ``spectrum_error``, so the caller
    decides whether that is an error (simulation) or a flag (catalogues).

    Args:
        cutout: ugriz cube of shape ``(5, H, W)`` in nanomaggies, ``H, W >= image_size``.
        image_size: side of the square crop in pixels.
        spectrum: None, or ``(wavelength, flux, ivar, mask)``: 1-D arrays of the same length,
            wavelength in Angstrom, strictly increasing; ``mask`` True for a bad pixel (None
            for ``ivar``/``mask`` treats every finite pixel as good with unit variance).
        source: what the object or its cutout is (e.g. ``"file images/a.fits"``), for
            messages.
        spectrum_source: what the spectrum is, for messages; ``source`` when None.

    Returns:
        A :class:`PreparedObject`.

    Raises:
        InputError: the cutout is not ``(5, H, W)``, is smaller than ``image_size``, is all
            zeros in the crop, or has NaN/inf pixels that cannot be repaired.

    Example:
        >>> cube = np.ones((5, 48, 48), np.float32)
        >>> wave = np.linspace(3500, 9500, 6001)
        >>> spectrum = (wave, np.ones_like(wave), np.ones_like(wave), None)
        >>> prepared = prepare_object(cube, 32, spectrum, source="example")
        >>> prepared.image.shape, prepared.spectrum.shape, prepared.note
        ((32, 32, 5), (3700, 2), '')
    """
    image, note = usable_crop(cutout, image_size, source=source)
    encoded, error = None, ""
    if spectrum is not None:
        wavelength, flux, ivar, mask = spectrum
        where = source if spectrum_source is None else spectrum_source
        try:
            encoded = encoder_input(resample_spectrum(wavelength, flux, ivar, mask,
                                                      source=where), source=where)
        except InputError as err:
            error = str(err)
    return PreparedObject(image, encoded, note, error)
