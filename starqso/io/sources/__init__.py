"""Where ``starqso predict`` gets its rows: one small reader per input layout.

Every layout becomes the same thing, a :class:`Source`: a row count, contiguous
:class:`Partition` s of rows, and :meth:`Source.read` giving one block of rows at a time as
ids plus raw ``(5, H, W)`` cubes (or, per row, the reason it could not be read). What happens
to a cube after that (the centre crop, repairs, the source checks, the model) is the same for
every layout, so a bad row is flagged exactly as it is for a FITS file per object.

=====================  ========================================================================
layout                 what :func:`open_source` is given
=====================  ========================================================================
files                  a catalogue (CSV/FITS) with ``id`` and ``image`` (a cube per object,
                       or a multi-extension file with one image HDU per band), or with
                       ``image_u`` ... ``image_z`` (one FITS file per band); or a folder of
                       cutout FITS files
zarr (Cutana)          a folder holding ``images.zarr`` (array ``images``, (N, H, W, C)) and
                       ``images_metadata.parquet`` (row i describes image i; ``source_id``),
                       or a folder of such batch folders, as ESA's Cutana writes them
FITS cube stack        a FITS file whose first image HDU is (N, 5, H, W), with a table HDU
                       holding ``id`` (N rows)
HDF5 cube stack        an ``.h5``/``.hdf5`` file with datasets ``images`` (N, 5, H, W) and
                       ``id`` (N)
Parquet                a ``.parquet`` file or a folder of them, with ``id`` and ``image`` or
                       ``image_u`` ... ``image_z`` paths, or a ``cutout`` column holding each
                       cube as nested lists (5, H, W) or one flat list of 5 x S x S values
HATS                   a HATS catalogue (HEALPix-partitioned Parquet, IVOA HATS 1.0), opened
                       with ``lsdb``, with the Parquet columns above; a partition per pixel
=====================  ========================================================================

Channels of a zarr stack are u, g, r, i, z unless the array (or its group) has a ``bands``
attribute naming another order (``"zirgu"``). Pixels are nanomaggies, as for cutout files.

Nothing here imports TensorFlow. zarr, pyarrow, h5py and lsdb are imported only by the layouts
that need them (the ``survey`` extra).
"""

from starqso.io.sources.base import (
    BAND_COLUMNS,
    CUTOUT_COLUMN,
    EBV_COLUMN,
    ID_COLUMNS,
    MAX_CHECKED_IDS,
    Block,
    Partition,
    Source,
    ebv_numbers,
)
from starqso.io.sources.files import FITS_SUFFIX, FileSource, cutout_id
from starqso.io.sources.identify import describe, open_source
from starqso.io.sources.parquet import HatsSource, ParquetSource, is_hats
from starqso.io.sources.stacks import (
    FitsStackSource,
    Hdf5StackSource,
    check_real_pixels,
    native_column,
)
from starqso.io.sources.zarr_stacks import MAX_CACHED_ROWS, ZarrSource, zarr_batches

__all__ = [
    "BAND_COLUMNS",
    "CUTOUT_COLUMN",
    "EBV_COLUMN",
    "FITS_SUFFIX",
    "ID_COLUMNS",
    "MAX_CACHED_ROWS",
    "MAX_CHECKED_IDS",
    "Block",
    "FileSource",
    "FitsStackSource",
    "HatsSource",
    "Hdf5StackSource",
    "ParquetSource",
    "Partition",
    "Source",
    "ZarrSource",
    "check_real_pixels",
    "cutout_id",
    "describe",
    "ebv_numbers",
    "is_hats",
    "native_column",
    "open_source",
    "zarr_batches",
]
