"""Reading and writing starqso's files: cutouts, spectra and catalogues (NumPy + astropy only).

* :mod:`starqso.io.cutouts`: ``(5, H, W)`` ugriz cubes in nanomaggies, SDSS pixel scale.
* :mod:`starqso.io.spectra`: SDSS/BOSS ``spec`` files and LAMOST low-resolution spectra.
* :mod:`starqso.io.catalog`: CSV or FITS tables listing objects, their files and labels.

Every problem a user can cause with a file raises :class:`starqso.errors.InputError` with a
one-line message naming the file and what was expected. Nothing here imports TensorFlow, so the
readers stay fast to import in tools and tests. Turning a catalogue into model inputs is
:meth:`starqso.data.ObjectArrays.from_catalog`; the data model's constants live in
:mod:`starqso.schema` (``BANDS`` and ``PIXEL_SCALE_ARCSEC`` are re-exported here).
"""

from starqso.io.catalog import CATALOG_COLUMNS, read_catalog, resolve_path, write_catalog
from starqso.io.cutouts import (
    BANDS,
    MAX_CUTOUT_VALUES,
    PIXEL_SCALE_ARCSEC,
    Cutout,
    read_band_cutout,
    read_cutout,
    write_cutout,
)
from starqso.io.spectra import (
    Spectrum,
    read_lamost_spectrum,
    read_sdss_spectrum,
    read_spectrum,
    write_sdss_spectrum,
)

__all__ = [
    "BANDS",
    "CATALOG_COLUMNS",
    "MAX_CUTOUT_VALUES",
    "PIXEL_SCALE_ARCSEC",
    "Cutout",
    "Spectrum",
    "read_catalog",
    "read_band_cutout",
    "read_cutout",
    "read_lamost_spectrum",
    "read_sdss_spectrum",
    "read_spectrum",
    "resolve_path",
    "write_catalog",
    "write_cutout",
    "write_sdss_spectrum",
]
