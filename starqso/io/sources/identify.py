"""Which layout an input path is: :func:`open_source` and :func:`describe`."""

from __future__ import annotations

import glob
import os

from starqso.errors import InputError
from starqso.io._fits import missing_reason
from starqso.io.sources.files import FileSource, cutout_id
from starqso.io.sources.parquet import HatsSource, ParquetSource, is_hats
from starqso.io.sources.stacks import FitsStackSource, Hdf5StackSource
from starqso.io.sources.zarr_stacks import ZarrSource, zarr_batches


def _fits_stack(path):
    """True for a FITS file whose first image HDU is 4-D (a cube stack), else False."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdulist:
            for hdu in hdulist:
                if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) > 0:
                    return hdu.header.get("NAXIS") == 4
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    return False
    except (OSError, ValueError, TypeError, EOFError, IndexError):
        return False
    return False


def open_source(path, id_column=None, keep=(), ebv=False):
    """The :class:`Source` of an input, its layout told from the path.

    Args:
        path: catalogue, folder, stack, Parquet file/folder or HATS catalogue (see the
            module docstring).
        id_column: the id column of Parquet, HATS, zarr metadata and stack tables (default:
            ``id``, then ``source_id``).
        keep: input columns to carry into the output (``--keep ra,dec``): catalogue or
            Parquet/HATS columns, zarr metadata columns, stack id-table columns (HDF5: 1-D
            datasets).
        ebv: read the input's ``ebv`` column (any case; the same places as ``keep``) when it
            has one: :meth:`Source.ebv_values` gives each block's E(B-V). A folder of cutouts
            has no columns.

    Returns:
        A :class:`Source`.

    Raises:
        InputError: the path does not exist, or its layout is broken (a message naming the
            file and what was expected).

    Example:
        >>> source = open_source("cutouts/")  # doctest: +SKIP
        >>> source.kind, source.num_rows
        ('zarr', 1000000)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"input {missing_reason(path)}: {path}")
    lower = path.lower().rstrip("/")
    if os.path.isdir(path):
        if is_hats(path):
            return HatsSource(path, id_column=id_column, keep=keep, ebv=ebv)
        if zarr_batches(path):
            return ZarrSource(path, id_column=id_column, keep=keep, ebv=ebv)
        if lower.endswith(".parquet") or (glob.glob(os.path.join(glob.escape(path), "*.parquet"))
                                          and not any(cutout_id(name)
                                                      for name in os.listdir(path))):
            return ParquetSource(path, id_column=id_column, keep=keep, ebv=ebv)
        return FileSource(path, id_column=id_column, keep=keep, ebv=ebv)
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        return ParquetSource(path, id_column=id_column, keep=keep, ebv=ebv)
    if lower.endswith((".h5", ".hdf5", ".hdf")):
        return Hdf5StackSource(path, id_column=id_column, keep=keep, ebv=ebv)
    if lower.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")) and _fits_stack(path):
        return FitsStackSource(path, id_column=id_column, keep=keep, ebv=ebv)
    return FileSource(path, id_column=id_column, keep=keep, ebv=ebv)


def describe(source):
    """One line saying what a source is: ``zarr input, 1,000,000 rows in 4 batches``."""
    pieces = len(source.pieces())
    unit = {"zarr": "batches", "parquet": "files", "hats": "HEALPix partitions"}.get(
        source.kind, "")
    return (f"{source.kind} input, {source.num_rows:,} rows"
            + (f" in {pieces} {unit}" if unit else ""))
