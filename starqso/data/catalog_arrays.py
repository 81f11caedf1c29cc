"""A catalogue's rows as :class:`~starqso.data.ObjectArrays`: cutouts and spectra read, screened
and flagged as ``starqso predict`` screens its rows (no TensorFlow)."""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.io.catalog import read_catalog, resolve_path
from starqso.io.cutouts import read_cutout
from starqso.io.sources import Block
from starqso.io.spectra import read_spectrum
from starqso.preprocessing.blocks import prepare_block
from starqso.preprocessing.spectra import encoder_input, resample_spectrum
from starqso.schema import BANDS, LABEL_CODES

# Catalogue rows screened at once (predict's screening is vectorised over a block).
_SCREEN_ROWS = 256


def read_catalog_arrays(cls, path, image_size, *, require_labels, progress, strict):
    """:meth:`ObjectArrays.from_catalog <starqso.data.ObjectArrays.from_catalog>`'s work:
    ``cls`` (the arrays' class) holding the usable rows of the catalogue ``path``, with
    ``flags`` for the flagged rows."""
    catalog = read_catalog(path)
    source = catalog.meta["path"]
    ids = [str(value) for value in catalog["id"]]
    arrays = cls.empty(ids, image_size)
    if "label" in catalog.colnames:
        arrays.labels[:] = [LABEL_CODES[label] for label in catalog["label"]]
    if "redshift" in catalog.colnames:
        arrays.redshift[:] = catalog["redshift"]
    for band_index, band in enumerate(BANDS):
        if band in catalog.colnames:
            arrays.mags[:, band_index] = catalog[band]
    spectra = catalog["spectrum"] if "spectrum" in catalog.colnames else [""] * len(ids)
    usable = np.ones(len(ids), bool)
    flags = []

    def flag(row, identifier, reason, used):
        message = f"catalogue row {row + 1} (id {identifier!r}) of {source}: {reason}"
        if strict:
            raise InputError(message + " (strict: no row may be flagged)" if used
                             else message)
        flags.append({"row": row + 1, "id": identifier, "used": used, "flag": reason})

    # Rows are screened in blocks by `starqso predict`'s own screening (crop, repair and
    # the source checks: no source detected, no-data fills, implausible sky), so a row
    # predict would flag is flagged, and left out of training, here too.
    for start in range(0, len(ids), _SCREEN_ROWS):
        rows = range(start, min(start + _SCREEN_ROWS, len(ids)))
        read = [_catalog_cutout(catalog, catalog["image"][row], image_size) for row in rows]
        block = Block([ids[row] for row in rows], [cube for cube, _ in read],
                      [f"file {path}" if path else "a blank image path" for _, path in read],
                      {})
        images, notes, screened = prepare_block(block, image_size)
        for offset, row in enumerate(rows):
            identifier, image_path = ids[row], read[offset][1]
            if not screened[offset]:
                usable[row] = False
                flag(row, identifier, notes[offset], False)
            else:
                arrays.images[row] = images[offset]
                if notes[offset]:
                    flag(row, identifier, f"{notes[offset]} in file {image_path}", True)
                encoded, error = _catalog_spectrum(catalog, spectra[row])
                if encoded is not None:
                    arrays.spectra[row] = encoded
                    arrays.has_spectrum[row] = True
                elif error:
                    flag(row, identifier, f"spectrum not used: {error}", True)
            if progress is not None:
                progress(row + 1)
    if not usable.all():
        arrays = arrays.subset(usable)
    if require_labels and not (arrays.labels >= 0).any():
        raise InputError(f"catalogue needs at least one usable row labelled STAR or QSO for "
                         f"training. Received: no labels in {int(usable.sum())} usable of "
                         f"{len(ids)} rows of file {source}")
    arrays.flags = flags
    return arrays


def _catalog_cutout(catalog, image, image_size):
    """``(the row's cutout centre crop, or the str reason it cannot be read; its file)``."""
    image_path = ""
    try:
        image_path = resolve_path(catalog, image)
        if not image_path:
            raise InputError("image path is blank; expected a cutout file")
        # Only the centre crop is read (bounded memory for any file size).
        return read_cutout(image_path, crop_size=image_size).data, image_path
    except InputError as err:
        return str(err), image_path


def _catalog_spectrum(catalog, spectrum):
    """``(the row's encoder spectrum or None, "" or why it cannot be used)``."""
    spectrum_path = ""
    try:
        spectrum_path = resolve_path(catalog, spectrum)
        if not spectrum_path:
            return None, ""
        read = read_spectrum(spectrum_path)
        where = f"file {spectrum_path}"
        return encoder_input(resample_spectrum(read.wavelength, read.flux, read.ivar,
                                               read.mask, source=where), source=where), ""
    except InputError as err:
        return None, str(err)
