"""A catalogue and its files as NumPy arrays, ready for ``starqso.data`` (NumPy + astropy only).

Every object is read into memory: about 30 KB per object at image size 32 (20 KB of
``(3700, 2)`` float32 spectrum, 20 KB of image at 32x32x5), so 100,000 objects take about 4 GB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from starqso.errors import InputError
from starqso.io.catalog import read_catalog, resolve_path
from starqso.io.cutouts import BANDS, read_cutout
from starqso.io.spectra import read_spectrum
from starqso.preprocessing.images import usable_crop
from starqso.preprocessing.spectra import (
    ENCODER_NUM_PIXELS,
    SPECTRUM_CHANNELS,
    encoder_input,
    resample_spectrum,
)

ARRAY_KEYS = ("ids", "images", "spectra", "has_spectrum", "labels", "redshift", "mags")
LABEL_CODES = {"STAR": 0, "QSO": 1, "": -1}


def empty_arrays(ids: Sequence[str], image_size: int) -> dict:
    """Arrays for ``len(ids)`` objects with the keys of :func:`load_catalog_arrays`.

    Args:
        ids: object ids.
        image_size: side of the image crops.

    Returns:
        dict with zero images and spectra, ``has_spectrum`` False, labels -1, NaN redshift
        and magnitudes.

    Example:
        >>> empty_arrays(["a", "b"], 16)["images"].shape
        (2, 16, 16, 5)
    """
    n = len(ids)
    return {
        "ids": np.array(list(ids), dtype=str),
        "images": np.zeros((n, image_size, image_size, len(BANDS)), np.float32),
        "spectra": np.zeros((n, ENCODER_NUM_PIXELS, SPECTRUM_CHANNELS), np.float32),
        "has_spectrum": np.zeros(n, bool),
        "labels": np.full(n, -1, np.int8),
        "redshift": np.full(n, np.nan, np.float32),
        "mags": np.full((n, len(BANDS)), np.nan, np.float32),
    }


def _image(path: str, image_size: int) -> tuple[np.ndarray, str]:
    return usable_crop(read_cutout(path).data, image_size, source=f"file {path}")


def _spectrum(path: str) -> np.ndarray:
    spectrum = read_spectrum(path)
    gridded = resample_spectrum(spectrum.wavelength, spectrum.flux, spectrum.ivar,
                                spectrum.mask, source=f"file {path}")
    return encoder_input(gridded, source=f"file {path}")


def load_catalog_arrays(path: str | os.PathLike, image_size: int, *,
                        require_labels: bool = False,
                        progress: Callable[[int], None] | None = None,
                        strict: bool = True) -> dict:
    """Read a catalogue (CSV or FITS) and all its cutouts and spectra into arrays.

    A row whose cutout cannot be used (missing or broken file, too small, all zeros, NaN/inf
    at the object) is left out; a row whose spectrum cannot be used keeps its image without a
    spectrum; a few NaN/inf pixels are repaired (:func:`starqso.preprocessing.usable_crop`).
    Each of these is reported in ``flags``, or raised when ``strict``.

    Args:
        path: catalogue file, see :func:`starqso.io.read_catalog` (``id`` and ``image``
            columns required; ``spectrum``, ``label``, ``redshift``, ``u..z`` optional).
        image_size: side of the centre crop taken from each cutout.
        require_labels: raise unless at least one usable row is labelled STAR or QSO.
        progress: called with the number of rows read so far, after each row.
        strict: raise on the first row that would be flagged.

    Returns:
        dict of the usable rows, in catalogue order: ``ids`` (str, N), ``images`` float32
        (N, S, S, 5) raw nanomaggies, ``spectra`` float32 (N, 3700, 2) from
        :func:`starqso.preprocessing.encoder_input` (zeros without a spectrum),
        ``has_spectrum`` bool (N,), ``labels`` int8 (N,) (1 QSO, 0 STAR, -1 unknown),
        ``redshift`` float32 (N,) and ``mags`` float32 (N, 5), NaN where unknown; and
        ``flags``, one dict per flagged catalogue row (``row`` from 1, ``id``, ``used``
        bool, ``flag`` the reason).

    Raises:
        InputError: the catalogue is invalid, no usable row is labelled (``require_labels``),
            or (``strict``) a row's cutout/spectrum cannot be used as it is (the message
            names row, id and file).

    Example:
        >>> data = load_catalog_arrays("sim/catalog.csv", 32, strict=False)  # doctest: +SKIP
        >>> data["images"].shape, data["labels"][:3], len(data["flags"])
        ((998, 32, 32, 5), array([0, 1, 0], dtype=int8), 2)
    """
    catalog = read_catalog(path)
    source = catalog.meta["path"]
    ids = [str(value) for value in catalog["id"]]
    arrays = empty_arrays(ids, image_size)
    if "label" in catalog.colnames:
        arrays["labels"][:] = [LABEL_CODES[label] for label in catalog["label"]]
    if "redshift" in catalog.colnames:
        arrays["redshift"][:] = catalog["redshift"]
    for band_index, band in enumerate(BANDS):
        if band in catalog.colnames:
            arrays["mags"][:, band_index] = catalog[band]
    spectra = catalog["spectrum"] if "spectrum" in catalog.colnames else [""] * len(ids)
    usable = np.ones(len(ids), bool)
    flags = []

    def flag(row, identifier, reason, used):
        message = f"catalogue row {row + 1} (id {identifier!r}) of {source}: {reason}"
        if strict:
            raise InputError(message + " (strict: no row may be flagged)" if used else message)
        flags.append({"row": row + 1, "id": identifier, "used": used, "flag": reason})

    for row, (identifier, image, spectrum) in enumerate(zip(ids, catalog["image"], spectra)):
        try:
            image_path = resolve_path(catalog, image)
            if not image_path:
                raise InputError("image path is blank; expected a cutout file")
            arrays["images"][row], note = _image(image_path, image_size)
        except InputError as err:
            usable[row] = False
            flag(row, identifier, str(err), False)
        else:
            if note:
                flag(row, identifier, f"{note} in file {image_path}", True)
            try:
                spectrum_path = resolve_path(catalog, spectrum)
                if spectrum_path:
                    arrays["spectra"][row] = _spectrum(spectrum_path)
                    arrays["has_spectrum"][row] = True
            except InputError as err:
                flag(row, identifier, f"spectrum not used: {err}", True)
        if progress is not None:
            progress(row + 1)
    if not usable.all():
        arrays = {key: value[usable] for key, value in arrays.items()}
    if require_labels and not (arrays["labels"] >= 0).any():
        raise InputError(f"catalogue needs at least one usable row labelled STAR or QSO for "
                         f"training. Received: no labels in {int(usable.sum())} usable of "
                         f"{len(ids)} rows of file {source}")
    arrays["flags"] = flags
    return arrays
