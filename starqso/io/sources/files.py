"""The ``files`` layout: a CSV/FITS catalogue of cutout files, or a folder of them."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from starqso.errors import InputError
from starqso.io.catalog import read_catalog, resolve_path
from starqso.io.cutouts import read_band_cutout, read_cutout
from starqso.io.safe_read import file_sha256
from starqso.io.sources.base import (
    BAND_COLUMNS,
    Block,
    Source,
    ebv_numbers,
    keep_names,
    listing_sha256,
)
from starqso.schema import BANDS

# Cutout file names in folder mode: a FITS suffix, optionally compressed the ways astropy
# opens (gzip, bzip2, xz, zip) or tile-compressed by fpack (.fz). The id is the name without them.
FITS_SUFFIX = re.compile(r"\.(fits|fit|fts)(\.(gz|bz2|xz|zip|fz))?$", re.IGNORECASE)


def cutout_id(name):
    """The id of a cutout file in folder mode: its name without the FITS suffixes.

    Leading and trailing white space is not part of the id, as it is not for a catalogue's
    ids (nor for ``evaluate``'s join): ``"a .fits"`` is the id ``"a"``.

    Args:
        name: file name (no folder).

    Returns:
        The id ("" for a name that is only white space before its suffix), or None when
        ``name`` is not a cutout file name (no FITS suffix, or hidden: starting with ``.``,
        as macOS' ``._obj.fits`` resource files do).

    Example:
        >>> cutout_id("obj.a.fits"), cutout_id("J1234.fits.fz"), cutout_id("._obj.fits")
        ('obj.a', 'J1234', None)
    """
    match = FITS_SUFFIX.search(name)
    if name.startswith(".") or match is None or match.start() == 0:
        return None
    return name[:match.start()].strip()


class FileSource(Source):
    """A catalogue of cutout files (``image`` or ``image_u`` ... ``image_z``) or a folder."""

    kind = "files"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path)
        self.id_column = id_column
        self._keep = {}
        source = pathlib.Path(path)
        if source.is_dir():
            if keep:
                raise InputError(f"a folder of cutouts has no columns to keep; --keep needs a "
                                 f"catalogue, a table or a stack. Received: --keep "
                                 f"{','.join(keep)} for folder {source}")
            found = sorted((p.name, cutout_id(p.name)) for p in source.iterdir())
            found = [(name, ident) for name, ident in found if ident is not None]
            if not found:
                raise InputError(f"folder has no cutout FITS files (*.fits, *.fit, *.fts, also "
                                 f"compressed), nor a zarr stack (images.zarr + "
                                 f"images_metadata.parquet). Received: {source}")
            first = {}
            for name, ident in found:
                if not ident:
                    raise InputError(f"a cutout file name gives a blank id (its name before "
                                     f"the FITS suffix is white space): {name!r}; rename it. "
                                     f"Received: {source}")
                if ident in first:
                    # Names that differ only by white space are quoted: it is the difference.
                    spaced = any(char.isspace() for char in first[ident] + name)
                    shown = (repr(first[ident]), repr(name)) if spaced else (first[ident], name)
                    raise InputError(f"folder has two cutouts with the id {ident!r}: "
                                     f"{shown[0]} and {shown[1]}; rename or remove one. "
                                     f"Received: {source}")
                first[ident] = name
            self._ids = [ident for _, ident in found]
            self.files = [str(source / name) for name, _ in found]
        else:
            table = read_catalog(source, require=("id",))
            if id_column is not None and id_column.lower() != "id":
                raise InputError(f"a CSV/FITS catalogue's ids are its id column; --id-column "
                                 f"is for Parquet, HATS and zarr inputs. Received: "
                                 f"--id-column {id_column}")
            names = set(table.colnames)
            if "image" in names:
                self.files = [resolve_path(table, str(value)) if str(value).strip() else ""
                              for value in table["image"]]
            elif all(column in names for column in BAND_COLUMNS):
                self.files = [tuple(resolve_path(table, str(table[column][row]))
                                    if str(table[column][row]).strip() else ""
                                    for column in BAND_COLUMNS) for row in range(len(table))]
            else:
                raise InputError(f"catalogue must have column(s) image (one cutout per object), "
                                 f"or {', '.join(BAND_COLUMNS)} (one FITS file per band). "
                                 f"Received: columns {', '.join(table.colnames)} in file "
                                 f"{source}")
            self._ids = [str(value) for value in table["id"]]
            # Not read here, but files of the user's: an output must not replace one.
            self.spectra = ([resolve_path(table, str(value)) for value in table["spectrum"]]
                            if "spectrum" in names else [])
            self.keep_columns = keep_names(keep, table.colnames, f"catalogue {source}")
            self._find_ebv(ebv, table.colnames)
            self._keep = {name: np.asarray(table[name]) for name in self.read_columns}
            if self.ebv_column:
                # Checked whole here: a text column fails before anything is classified.
                ebv_numbers(table[self.ebv_column], f"column {self.ebv_column} of catalogue "
                            f"{source}")
        self.num_rows = len(self._ids)

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "keep": self.keep_columns,
                "ebv": self.ebv_column is not None}

    def ids(self):
        return list(self._ids)

    def read_ids(self, partition):
        return self._ids[partition.start:partition.stop]

    def read(self, partition, size, start=None, stop=None):
        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        cubes, where = [], []
        for files in self.files[start:stop]:
            label = f"file {files}" if isinstance(files, str) else f"files {', '.join(files)}"
            where.append(label)
            try:
                if isinstance(files, str):
                    if not files:
                        raise InputError("image path is blank; expected a cutout file")
                    cubes.append(read_cutout(files, crop_size=size).data)
                else:
                    blank = [band for band, name in zip(BANDS, files, strict=False) if not name]
                    if blank:
                        raise InputError(f"image_{blank[0]} path is blank; expected one FITS "
                                         f"file per band")
                    cubes.append(read_band_cutout(files, crop_size=size).data)
            except InputError as err:
                cubes.append(str(err))
        return Block(self._ids[start:stop], cubes, where,
                     {name: values[start:stop] for name, values in self._keep.items()})

    def fingerprint(self):
        if pathlib.Path(self.path).is_dir():
            return listing_sha256(self.files)

        return file_sha256(self.path)
