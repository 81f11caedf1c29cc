"""One block of rows made into model inputs: crop, repair and screen, NumPy only.

Every layout ``starqso predict`` reads, and the catalogue rows ``fit`` and ``finetune`` train
on, go through :func:`prepare_block`, so a bad row is flagged the same way wherever it came
from.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.objects import prepare_object
from starqso.preprocessing.screening import check_source, suspect_crops
from starqso.schema import NUM_BANDS

__all__ = ["prepare_block"]


def prepare_block(block, size, measured=None):
    """Model inputs of a :class:`~starqso.io.sources.Block`: ``(images, flags, usable)``.

    Every layout goes through here, so a bad row is flagged the same way whatever it was read
    from: the crop and repair of :func:`~starqso.preprocessing.objects.prepare_object`, then
    the source checks of :mod:`starqso.preprocessing.screening`. A stack's clean crops (finite,
    not all zero) skip the per-row call: for them prepare_object is the identity.
    ``measured``, a dict, receives the screen's per-row ``sky_sigma`` and ``snr`` (NaN for
    rows not screened), which the quality bits reuse. ``fit`` and ``finetune`` screen their
    training rows by the same rules (:meth:`starqso.data.ObjectArrays.from_catalog`).

    Args:
        block: a block of rows: ``ids``, ``cubes`` ((N, 5, H, W) array, or a list of cubes
            and flag strings) and ``where`` (each row's description for messages).
        size: the model's input side.
        measured: a dict to receive the screen's statistics, or None.

    Returns:
        ``(images (N, size, size, 5) float32, flags (N,) list of str, usable (N,) bool)``.
    """
    count = len(block.ids)
    images = np.zeros((count, size, size, NUM_BANDS), np.float32)
    flags, usable = [""] * count, np.zeros(count, bool)
    cubes, rows = block.cubes, range(count)
    if isinstance(cubes, np.ndarray) and cubes.shape[2:] == (size, size):
        clean = np.isfinite(cubes).all(axis=(1, 2, 3)) & (cubes != 0).any(axis=(1, 2, 3))
        images[clean] = np.moveaxis(cubes[clean], 1, -1)
        usable[clean] = True
        rows = np.flatnonzero(~clean)
    for row in rows:
        item = cubes[row]
        if isinstance(item, str):
            flags[row] = item
            continue
        try:
            # The same crop (and repair) as the training arrays: ObjectArrays.from_catalog.
            prepared = prepare_object(item, size, source=block.where[row])
            images[row], flags[row] = prepared.image, prepared.note
            usable[row] = True
        except InputError as err:
            flags[row] = str(err)
    # No answer without a source: blank sky, no-data fills and other units are refused. The
    # batch is screened at once; check_source gives the reason for the suspects.
    good = np.flatnonzero(usable)
    suspect, sigma, snr, background = suspect_crops(images[good], measured=True)
    if measured is not None:
        measured["sky_sigma"] = np.full((count, NUM_BANDS), np.nan)
        measured["sky_sigma"][good] = sigma
        measured["background"] = (good, background)
        measured["snr"] = None
        if snr is not None:
            measured["snr"] = np.full((count, NUM_BANDS), np.nan)
            measured["snr"][good] = snr
    for row in good[suspect]:
        try:
            check_source(images[row], source=block.where[row])
        except InputError as err:
            flags[row], usable[row] = str(err), False
    return images, flags, usable
