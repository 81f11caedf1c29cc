"""Parquet inputs: one ``.parquet`` file or a folder of them, and HATS catalogues.

Rows hold an id and ``image`` or ``image_u`` ... ``image_z`` paths, or a ``cutout`` column with
each cube as nested lists (5, H, W) or one flat list of 5 x S x S values. A HATS catalogue
(HEALPix-partitioned Parquet) is opened with ``lsdb``, a partition (at least) per pixel.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.io.cutouts import read_band_cutout, read_cutout
from starqso.io.sources.base import (
    BAND_COLUMNS,
    CUTOUT_COLUMN,
    Block,
    Partition,
    Source,
    find_id_column,
    keep_names,
    listing_sha256,
    text_ids,
)
from starqso.preprocessing.crop import crop_window
from starqso.schema import BANDS, NUM_BANDS


def parquet_columns(path):
    import pyarrow.parquet as pq

    try:
        return [name.lower() for name in pq.read_schema(path).names]
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InputError(f"Parquet file could not be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}): {path}") from err


def parquet_rows(path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:
        raise InputError(f"Parquet file could not be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}): {path}") from err


#: The largest decoded row groups kept between slices (ids and kept columns; pixels are not).
MAX_KEPT_GROUP_BYTES = 256 * 2**20
# The row groups read last (per process): a table written as one big row group (pandas'
# default for up to 10^6 rows) is then decoded once, not once per partition of it.
_LAST_GROUPS = {}


def parquet_slice(path, columns, start, stop):
    """Rows start..stop of ``columns`` (a name or a list) of a Parquet file, row groups read
    only where they overlap (and kept for the next slice of the same groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    single = isinstance(columns, str)
    wanted = [columns] if single else list(columns)
    handle = pq.ParquetFile(path)
    schema_names = handle.schema_arrow.names
    actual = [next(name for name in schema_names if name.lower() == column)
              for column in wanted]
    groups, first, offset = [], None, 0
    for group in range(handle.metadata.num_row_groups):
        length = handle.metadata.row_group(group).num_rows
        if offset + length > start and offset < stop:
            groups.append(group)
            first = offset if first is None else first
        offset += length
    if not groups:
        table = pa.table({name: [] for name in actual})
    else:
        key = (os.path.abspath(path), tuple(groups), tuple(actual))
        table = _LAST_GROUPS.get(key)
        if table is None:
            _LAST_GROUPS.clear()
            table = handle.read_row_groups(groups, columns=actual)
            if table.nbytes <= MAX_KEPT_GROUP_BYTES:  # ids and columns, not pixel columns
                _LAST_GROUPS[key] = table
        table = table.slice(start - first, stop - start)
    if single:
        return table.column(0).to_pylist()
    return table


def _array_cubes(values, where):
    """Per row, a (5, H, W) float32 cube from a nested (5, H, W) or flat (5*S*S) list cell."""
    cubes = []
    for row, value in enumerate(values):
        try:
            if value is None:
                raise ValueError("the cutout cell is empty")
            cube = np.asarray(value, dtype=np.float32)
            if cube.ndim == 1:
                side = int(round((cube.size / NUM_BANDS) ** 0.5))
                if side < 1 or NUM_BANDS * side * side != cube.size:
                    raise ValueError(f"a flat cutout must hold 5 x S x S values, not "
                                     f"{cube.size}")
                cube = cube.reshape(NUM_BANDS, side, side)
            if cube.ndim != 3 or cube.shape[0] != NUM_BANDS:
                raise ValueError(f"expected (5, H, W), got shape {cube.shape}")
            cubes.append(cube)
        except (ValueError, TypeError) as err:
            cubes.append(f"cutout column cannot be read as a (5, H, W) ugriz cube ({err}). "
                         f"Received: {where[row]}")
    return cubes


class ParquetSource(Source):
    """Parquet files (one, or a folder of them) of ids with image paths or cutout arrays."""

    kind = "parquet"

    def __init__(self, path, id_column=None, files=None, keep=(), ebv=False):
        super().__init__(path)
        require_survey("a Parquet input", "pyarrow")
        self.id_column = id_column
        self.keep_columns = tuple(keep)
        if files is None:
            if os.path.isdir(path):
                files = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.parquet"),
                                         recursive=True))
                files = [name for name in files
                         if not os.path.basename(name).startswith(("_", "."))]
                if not files:
                    raise InputError(f"folder has no .parquet files. Received: {path}")
            else:
                files = [path]
        self.files = list(files)
        columns = parquet_columns(self.files[0])
        self._id = find_id_column(columns, id_column, f"file {self.files[0]}")
        self.keep_columns = keep_names(self.keep_columns, columns, f"file {self.files[0]}")
        self._find_ebv(ebv, columns)
        if CUTOUT_COLUMN in columns:
            self.layout = CUTOUT_COLUMN
        elif "image" in columns:
            self.layout = "image"
        elif all(column in columns for column in BAND_COLUMNS):
            self.layout = "bands"
        else:
            raise InputError(f"a Parquet input needs a column {CUTOUT_COLUMN} (the pixels), "
                             f"image (a cutout file per row) or {', '.join(BAND_COLUMNS)}. "
                             f"Received: columns {', '.join(columns)} in file {self.files[0]}")
        self._lengths = [parquet_rows(name) for name in self.files]
        self.num_rows = sum(self._lengths)

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "files": self.files,
                "keep": self.keep_columns, "ebv": self.ebv_column is not None}

    def pieces(self):
        return list(self._lengths)

    def read_ids(self, partition):
        name = self.files[partition.part]
        return text_ids(parquet_slice(name, self._id, partition.start - partition.offset,
                                        partition.stop - partition.offset), f"file {name}",
                         partition.start - partition.offset + 1)

    def read(self, partition, size, start=None, stop=None):
        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        name = self.files[partition.part]
        local = start - partition.offset
        data = {"image": ["image"], "bands": list(BAND_COLUMNS),
                CUTOUT_COLUMN: [CUTOUT_COLUMN]}[self.layout]
        table = parquet_slice(name, [self._id, *data, *self.read_columns], local,
                               local + stop - start)
        ids = text_ids(table.column(0).to_pylist(), f"file {name}", local + 1)
        where = [f"row {local + row + 1} of file {name}" for row in range(len(ids))]
        keep = {column: table.column(1 + len(data) + number).to_numpy(zero_copy_only=False)
                for number, column in enumerate(self.read_columns)}
        if self.layout == CUTOUT_COLUMN:
            cubes = _array_cubes(table.column(1).to_pylist(), where)
            if size is not None:
                cubes = [_centre(cube, size, where[row]) for row, cube in enumerate(cubes)]
            return Block(ids, cubes, where, keep)
        base = os.path.dirname(os.path.abspath(name))
        columns = [table.column(1 + number).to_pylist() for number in range(len(data))]
        cubes = []
        for row in range(len(ids)):
            files = [os.path.join(base, str(column[row])) if column[row] else ""
                     for column in columns]
            where[row] += f" ({', '.join(files)})"
            try:
                blank = [band for band, value in zip(BANDS, files, strict=False) if not value]
                if blank:
                    raise InputError("image path is blank; expected a cutout file" if
                                     self.layout == "image" else
                                     f"image_{blank[0]} path is blank; expected one FITS "
                                     f"file per band")
                cubes.append(read_cutout(files[0], crop_size=size).data
                             if self.layout == "image" else
                             read_band_cutout(files, crop_size=size).data)
            except InputError as err:
                cubes.append(str(err))
        return Block(ids, cubes, where, keep)

    def fingerprint(self):
        return listing_sha256(self.files)


def _centre(cube, size, where):
    if isinstance(cube, str):
        return cube
    try:
        rows, columns = crop_window(cube.shape[1], cube.shape[2], size, where)
    except InputError as err:
        return str(err)
    return cube[:, rows, columns]


def is_hats(path):
    """True when ``path`` is a HATS catalogue folder (``hats.properties`` or ``properties``)."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name))
        for name in ("hats.properties", "properties", "collection.properties"))


class HatsSource(ParquetSource):
    """A HATS catalogue, opened with lsdb; one partition (at least) per HEALPix pixel."""

    kind = "hats"

    def __init__(self, path, id_column=None, files=None, keep=None, pixels=None, ebv=False):
        require_survey("a HATS catalogue input", "lsdb")
        if files is None:
            import lsdb
            from hats.io import pixel_catalog_file

            try:
                catalog = lsdb.open_catalog(path)
            except Exception as err:
                raise InputError(f"HATS catalogue could not be opened with lsdb "
                                 f"({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}): "
                                 f"{path}") from err
            info = catalog.hc_structure.catalog_info
            base = catalog.hc_structure.catalog_base_dir
            healpix = list(catalog.get_healpix_pixels())
            files = [str(pixel_catalog_file(base, pixel)) for pixel in healpix]
            pixels = [(int(pixel.order), int(pixel.pixel)) for pixel in healpix]
            keep = [info.ra_column, info.dec_column, *(keep or ())]
            if not files:
                raise InputError(f"HATS catalogue has no partitions. Received: {path}")
        self.pixels = [tuple(pixel) for pixel in pixels]
        super().__init__(path, id_column=id_column, files=files, keep=keep, ebv=ebv)
        #: The catalogue's ra and dec columns: kept in every row, the HATS output needs them.
        self.position_columns = self.keep_columns[:2]

    def _arguments(self):
        return {**super()._arguments(), "pixels": self.pixels}

    def partitions(self, rows):
        partitions = super().partitions(rows)
        return [Partition(p.index, p.start, p.stop, p.part, p.offset,
                          "Norder={}/Npix={}".format(*self.pixels[p.part]))
                for p in partitions]
