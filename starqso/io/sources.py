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

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.preprocessing.crop import crop_window
from starqso.schema import BANDS, NUM_BANDS, P_QSO_ERR_COLUMN, QFLAG_COLUMN

#: Catalogue columns holding one FITS file per band.
BAND_COLUMNS = tuple(f"image_{band}" for band in BANDS)
#: The Parquet / HATS column holding the cutout pixels themselves.
CUTOUT_COLUMN = "cutout"
#: The input column ``predict`` takes each row's Galactic E(B-V) from (any case).
EBV_COLUMN = "ebv"
#: Id columns tried, in order, when none is named: starqso's, then Cutana's.
ID_COLUMNS = ("id", "source_id")
# Cutout file names in folder mode: a FITS suffix, optionally compressed the ways astropy
# opens (gzip, bzip2, xz, zip) or tile-compressed by fpack (.fz). The id is the name without them.
FITS_SUFFIX = re.compile(r"\.(fits|fit|fts)(\.(gz|bz2|xz|zip|fz))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Partition:
    """Rows ``start`` to ``stop`` (global row numbers, stop excluded) of a source.

    Attributes:
        index: position of the partition in :meth:`Source.partitions`.
        start, stop: the rows.
        part: which physical piece holds them (a zarr batch, a Parquet file, a HATS pixel),
            an index into the source's own list; 0 for single-piece layouts.
        offset: row number of the piece's first row, so ``start - offset`` is local.
        name: a human name of the piece (a HATS pixel ``"Norder=3/Npix=42"``), or "".
    """

    index: int
    start: int
    stop: int
    part: int = 0
    offset: int = 0
    name: str = ""


class Block(NamedTuple):
    """Rows read from a source.

    Attributes:
        ids: one str per row.
        cubes: float32 ``(n, 5, S, S)`` array of centre crops when every row could be read
            at the crop size, else a list with, per row, a ``(5, H, W)`` array or the str
            reason it could not be read.
        where: per row, what it is for messages (``"file a.fits"``, ``"row 12 of X"``).
        keep: columns carried to the output (HATS: ``ra``, ``dec``), name -> array.
    """

    ids: list
    cubes: object
    where: list
    keep: dict


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


def _contiguous(pieces, rows):
    """Partitions of at most ``rows`` rows that never cross a piece: ``pieces`` = lengths."""
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise InputError(f"--partition-rows must be a positive integer. Received: {rows!r}")
    partitions, offset = [], 0
    for part, length in enumerate(pieces):
        for start in range(offset, offset + length, rows):
            partitions.append(Partition(len(partitions), start, min(start + rows,
                                                                     offset + length),
                                        part, offset))
        offset += length
    return partitions


def _text_ids(values, where, first=1):
    """Ids as stripped str, none blank or repeated; ``first`` is the row number of values[0]."""
    ids = []
    for row, value in enumerate(values, first):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if not text or value is None:
            raise InputError(f"id must not be blank. Received: blank id at row {row} of {where}")
        ids.append(text)
    if len(set(ids)) != len(ids):
        _refuse_repeats(ids, where, first)
    return ids


def _refuse_repeats(ids, where, first=1):
    seen = {}
    for row, ident in enumerate(ids, first):
        if ident in seen:
            raise InputError(f"ids must be unique. Received: {ident!r} at rows {seen[ident]} "
                             f"and {row} of {where}")
        seen[ident] = row


def _keep_names(keep, available, where):
    """The ``--keep`` columns, lower case, each in ``available`` (lower-case names)."""
    names = [str(name).strip().lower() for name in keep or () if str(name).strip()]
    for name in names:
        if name in ("id", "p_qso", "label", "flag", QFLAG_COLUMN, P_QSO_ERR_COLUMN):
            raise InputError(f"--keep {name}: the output has a column {name!r} of its own; keep "
                             f"other columns. Received: --keep {','.join(names)}")
        if name not in available:
            raise InputError(f"--keep column {name!r} is not in {where}. Received: columns "
                             f"{', '.join(available)}")
    return tuple(dict.fromkeys(names))


#: The most zarr rows whose crops a reader keeps between reads (a few chunks: 4096 32x32
#: crops are 80 MB); a chunk larger than that is read in pieces.
MAX_CACHED_ROWS = 4096

#: Inputs up to this many rows have their ids checked for repeats across the whole input
#: before a Dask run starts (a set of 10^7 ids is about 1 GB); larger ones within each
#: partition only, as they are read.
MAX_CHECKED_IDS = 10_000_000


def _listing_sha256(paths):
    """SHA-256 of files' names, sizes and mtimes: what --resume checks a folder input by."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size = mtime = -1
        digest.update(f"{path}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class Source:
    """A set of rows to classify (see the module docstring for the layouts).

    Attributes:
        path: what the user gave.
        kind: the layout's name (``files``, ``zarr``, ``fits-stack``, ``hdf5-stack``,
            ``parquet``, ``hats``).
        num_rows: rows in input order.
    """

    kind = ""

    def __init__(self, path):
        self.path = str(path)
        self.num_rows = 0
        self.keep_columns = ()
        #: The input's E(B-V) column (``EBV_COLUMN``) when it has one and it is used, else None.
        self.ebv_column = None

    @property
    def read_columns(self):
        """The input columns every :class:`Block` carries in ``keep``: the ``--keep``
        columns, then the E(B-V) column when it is used and not kept."""
        extra = (self.ebv_column,) if self.ebv_column and \
            self.ebv_column not in self.keep_columns else ()
        return (*self.keep_columns, *extra)

    def _find_ebv(self, ebv, available):
        """Use the ``ebv`` column when ``ebv`` is on and ``available`` (lower-case names)
        has it."""
        self.ebv_column = EBV_COLUMN if ebv and EBV_COLUMN in available else None

    def ebv_values(self, block):
        """A block's E(B-V), float64 (N,) (NaN for a blank cell), or None when the
        input's column is not used.

        Raises:
            InputError: a cell that is not a number (naming the input and the column).
        """
        if self.ebv_column is None:
            return None
        return ebv_numbers(block.keep[self.ebv_column], f"column {self.ebv_column} of "
                           f"{self.path}", block.where)

    def pieces(self):
        """Row counts of the physical pieces, in order."""
        return [self.num_rows]

    def partitions(self, rows):
        """Contiguous partitions of at most ``rows`` rows, in input order."""
        return _contiguous(self.pieces(), rows)

    def read(self, partition, size, start=None, stop=None):
        """A :class:`Block` of rows ``start..stop`` (default: the whole partition)."""
        raise NotImplementedError

    def fingerprint(self):
        """SHA-256 that changes when the input changes: what ``--resume`` checks."""
        raise NotImplementedError

    def ids(self):
        """Every id, in input order; an id repeated anywhere in the input is refused.

        Raises:
            InputError: a blank or repeated id, with its rows (counted from the first row of
                the whole input) and where it is.
        """
        out = []
        for partition in self.partitions(max(self.num_rows, 1)):
            out += self.read_ids(partition)
        if len(set(out)) != len(out):
            _refuse_repeats(out, self.path)
        return out

    def read_ids(self, partition):
        return self.read(partition, None).ids

    def __reduce__(self):
        # Workers reopen the source from its arguments: no open file crosses processes.
        return (_reopen, (type(self).__name__, self._arguments()))

    def _arguments(self):
        return {"path": self.path}


def ebv_numbers(values, what, where=None):
    """E(B-V) cells as float64 (blank: NaN).

    Raises:
        InputError: a cell that is not a number, naming ``what`` (the column and input) and
            the row (``where``, when given).
    """
    values = np.ma.filled(np.ma.asarray(values, dtype=object), None) \
        if np.ma.isMaskedArray(values) else np.asarray(values)
    if values.dtype.kind in "fiu":
        return values.astype(np.float64)
    numbers = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        if isinstance(value, (bytes, np.bytes_)):
            value = value.decode("utf-8", "replace")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            if isinstance(value, (bool, np.bool_)):
                raise TypeError
            numbers[row] = float(value)
        except (TypeError, ValueError):
            place = where[row] if where is not None else f"row {row + 1}"
            raise InputError(f"{what} must hold E(B-V) numbers in magnitudes (or be blank); "
                             f"use --ebv none to ignore it. Received: {value!r} at "
                             f"{place}") from None
    return numbers


def _reopen(name, arguments):
    return _KINDS[name](**arguments)


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
            from starqso.io.catalog import read_catalog, resolve_path

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
            self.keep_columns = _keep_names(keep, table.colnames, f"catalogue {source}")
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
        from starqso.io.cutouts import read_band_cutout, read_cutout

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
            return _listing_sha256(self.files)
        from starqso.deploy.folder import file_sha256

        return file_sha256(self.path)


class _StackSource(Source):
    """Shared by the array stacks: cubes come as crops of one (N, ...) array per piece.

    The FITS and HDF5 stacks hold their ids (``_id_values``) and kept columns (``_keep``) in
    memory and give their (N, 5, H, W) array by :meth:`_images`.
    """

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "keep": self.keep_columns,
                "ebv": self.ebv_column is not None}

    def read_ids(self, partition):
        return self._id_values[partition.start:partition.stop]

    def _images(self):
        raise NotImplementedError

    def read(self, partition, size, start=None, stop=None):
        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        cubes = self._crop(self._images(), start, stop, size, f"in file {self.path}",
                           channels_last=False)
        where = [f"cube {row} of file {self.path}" for row in range(start, stop)]
        return Block(self._id_values[start:stop], cubes, where,
                     {name: values[start:stop] for name, values in self._keep.items()})

    def fingerprint(self):
        from starqso.deploy.folder import file_sha256

        return file_sha256(self.path)

    def _crop(self, array, start, stop, size, where, channels_last):
        height, width = (array.shape[1:3] if channels_last else array.shape[2:4])
        if size is None:
            rows, columns = slice(None), slice(None)
        else:
            try:
                rows, columns = crop_window(height, width, size, where)
            except InputError as err:
                return [str(err)] * (stop - start)
        if channels_last:
            cubes = np.asarray(array[start:stop, rows, columns, :])
            cubes = np.moveaxis(cubes, -1, 1)
        else:
            cubes = np.asarray(array[start:stop, :, rows, columns])
        return np.ascontiguousarray(cubes, dtype=np.float32)


class ZarrSource(_StackSource):
    """Cutana's zarr output: batch folders of ``images.zarr`` + ``images_metadata.parquet``."""

    kind = "zarr"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path)
        require_survey("a zarr stack input", "zarr")
        self.id_column = id_column
        self.batches = zarr_batches(path)
        if not self.batches:
            raise InputError(f"no zarr stack found: expected images.zarr and "
                             f"images_metadata.parquet in the folder or in its batch folders. "
                             f"Received: {path}")
        self._lengths = []
        self._orders = []
        for batch in self.batches:
            array, order = self._array(batch)
            metadata_rows = _parquet_rows(os.path.join(batch, "images_metadata.parquet"))
            if metadata_rows != array.shape[0]:
                raise InputError(f"images_metadata.parquet has {metadata_rows} rows but "
                                 f"images.zarr holds {array.shape[0]} images; expected one row "
                                 f"per image. Received: {batch}")
            self._lengths.append(int(array.shape[0]))
            self._orders.append(order)
        self.num_rows = sum(self._lengths)
        self._open = {}
        self._id_cache = (None, [], {})
        self._chunk_cache = (None, 0, 0, None)
        first = os.path.join(self.batches[0], "images_metadata.parquet")
        self.keep_columns = _keep_names(keep, _parquet_columns(first), f"file {first}")
        self._find_ebv(ebv, _parquet_columns(first))

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "keep": self.keep_columns,
                "ebv": self.ebv_column is not None}

    def _array(self, batch):
        import zarr

        store = os.path.join(batch, "images.zarr")
        try:
            node = zarr.open(store, mode="r")
            array = node["images"] if hasattr(node, "keys") and "images" in node else node
        except Exception as err:  # zarr raises many types for a damaged store
            raise InputError(f"zarr stack could not be opened ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}): {store}") from err
        if not hasattr(array, "shape") or len(array.shape) != 4 or array.shape[3] != NUM_BANDS:
            shape = getattr(array, "shape", None)
            raise InputError(f"zarr stack images must be (N, H, W, 5) with channels u, g, r, "
                             f"i, z. Received: shape={shape} in {store}")
        check_real_pixels(array.dtype, f"zarr stack images in {store}")
        bands = array.attrs.get("bands") or (node.attrs.get("bands") if node is not array
                                             else None)
        order = None
        if bands is not None:
            bands = "".join(bands).lower() if not isinstance(bands, str) else bands.lower()
            if sorted(bands) != sorted(BANDS):
                raise InputError(f"zarr stack 'bands' attribute must name u, g, r, i, z once "
                                 f"each. Received: bands={bands!r} in {store}")
            if bands != "".join(BANDS):
                order = [bands.index(band) for band in BANDS]
        return array, order

    def pieces(self):
        return list(self._lengths)

    def _opened(self, part):
        if part not in self._open:
            self._open[part] = self._array(self.batches[part])[0]
        return self._open[part]

    def read_ids(self, partition):
        return self._ids(partition, partition.start, partition.stop)

    def _ids(self, partition, start, stop):
        # The partition's ids are read once (a Parquet read per batch of rows would cost more
        # than the pixels) and kept while its batches are read.
        key = (partition.part, partition.start, partition.stop)
        if self._id_cache[0] != key:
            batch = self.batches[partition.part]
            where = os.path.join(batch, "images_metadata.parquet")
            column = _id_column(_parquet_columns(where), self.id_column, where)
            table = _parquet_slice(where, [column, *self.read_columns],
                                   partition.start - partition.offset,
                                   partition.stop - partition.offset)
            keep = {name: table.column(1 + number).to_numpy(zero_copy_only=False)
                    for number, name in enumerate(self.read_columns)}
            self._id_cache = (key, _text_ids(table.column(0).to_pylist(), where,
                                             partition.start - partition.offset + 1), keep)
        return self._id_cache[1][start - partition.start:stop - partition.start]

    def _kept(self, partition, start, stop):
        self._ids(partition, start, stop)
        return {name: values[start - partition.start:stop - partition.start]
                for name, values in self._id_cache[2].items()}

    def read(self, partition, size, start=None, stop=None):
        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        batch = self.batches[partition.part]
        store = os.path.join(batch, "images.zarr")
        local = start - partition.offset
        where = [f"image {local + row} of {store}" for row in range(stop - start)]
        cubes = self._chunk_rows(partition.part, local, local + stop - start, size, store)
        order = self._orders[partition.part]
        if order is not None and isinstance(cubes, np.ndarray):
            cubes = np.ascontiguousarray(cubes[:, order])
        elif order is not None:
            cubes = [cube if isinstance(cube, str) else np.ascontiguousarray(cube[order])
                     for cube in cubes]
        return Block(self._ids(partition, start, stop), cubes, where,
                     self._kept(partition, start, stop))

    def _chunk_rows(self, part, start, stop, size, store):
        """Crops of rows start..stop of a batch, decompressing each zarr chunk once.

        A chunk (Cutana writes hundreds to thousands of images per chunk) is decompressed
        whole for any row of it, so a read of a few hundred rows would decompress its chunk
        again and again; the crops of the chunks under the last read are kept instead.
        """
        array = self._opened(part)
        chunk = int(array.chunks[0]) if getattr(array, "chunks", None) else 1
        first, last = start // chunk * chunk, -(-stop // chunk) * chunk
        held = self._chunk_cache
        if not (held[0] == (part, size) and held[1] <= start and stop <= held[2]):
            if last - first > MAX_CACHED_ROWS:
                first, last = start, stop
            last = min(last, array.shape[0])
            self._chunk_cache = held = ((part, size), first, last,
                                        self._chunk_crops(array, first, last, size, store))
        cubes = held[3]
        return cubes[start - held[1]:stop - held[1]] if isinstance(cubes, np.ndarray) else \
            cubes[start - held[1]:stop - held[1]]

    def _chunk_crops(self, array, first, last, size, store):
        """:meth:`_crop` of rows first..last; when a chunk cannot be read (corrupt bytes,
        a decompression error), its rows become that reason and the other chunks are read."""
        try:
            return self._crop(array, first, last, size, f"in {store}", channels_last=True)
        except MemoryError:
            raise
        except Exception:  # zarr and its codecs raise many types for a damaged chunk
            pass
        chunk = int(array.chunks[0]) if getattr(array, "chunks", None) else 1
        cubes, begin = [], first
        while begin < last:
            end = min((begin // chunk + 1) * chunk, last)
            try:
                crops = self._crop(array, begin, end, size, f"in {store}", channels_last=True)
            except MemoryError:
                raise
            except Exception as err:
                reason = " ".join(str(err).split())[:120] or type(err).__name__
                crops = [f"zarr chunk {begin // chunk} (images {begin}-{end - 1}) could not "
                         f"be read ({type(err).__name__}: {reason}) in {store}"] * (end - begin)
            cubes.extend(list(crops))
            begin = end
        return cubes

    def fingerprint(self):
        files = []
        for batch in self.batches:
            files.append(os.path.join(batch, "images_metadata.parquet"))
            for root, _, names in sorted(os.walk(os.path.join(batch, "images.zarr"))):
                files += [os.path.join(root, name) for name in sorted(names)]
        return _listing_sha256(files)


def zarr_batches(path):
    """Cutana batch folders under ``path`` (itself, or its sub-folders), in name order."""
    path = os.fspath(path)

    def is_batch(folder):
        return (os.path.isdir(os.path.join(folder, "images.zarr"))
                and os.path.isfile(os.path.join(folder, "images_metadata.parquet")))

    if path.rstrip("/").endswith("images.zarr") and is_batch(os.path.dirname(path.rstrip("/"))):
        return [os.path.dirname(path.rstrip("/"))]
    if is_batch(path):
        return [path]
    if not os.path.isdir(path):
        return []
    return [os.path.join(path, name) for name in sorted(os.listdir(path))
            if not name.startswith(".") and is_batch(os.path.join(path, name))]


class FitsStackSource(_StackSource):
    """A FITS file holding an (N, 5, H, W) image and a table with the N ids."""

    kind = "fits-stack"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path)
        from astropy.io import fits

        self.id_column = id_column
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdulist:
            image, table = None, None
            for number, hdu in enumerate(hdulist):
                if image is None and getattr(hdu, "is_image", False) and \
                        hdu.header.get("NAXIS", 0) == 4:
                    image = number
                if table is None and isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    table = number
            shape = tuple(hdulist[image].shape) if image is not None else None
            if shape is None or shape[1] != NUM_BANDS:
                raise InputError(f"a FITS cube stack must hold an (N, 5, H, W) image (NAXIS4 = "
                                 f"N). Received: shape={shape} in file {path}")
            if table is None:
                raise InputError(f"a FITS cube stack needs a table HDU with the id of each "
                                 f"cube. Received: no table in file {path}")
            names = [name.lower() for name in hdulist[table].columns.names]
            column = _id_column(names, id_column, f"file {path}")
            data = hdulist[table].data
            values = data[hdulist[table].columns.names[names.index(column)]]
            self._id_values = _text_ids(list(values), f"the id table of file {path}")
            self.keep_columns = _keep_names(keep, names, f"the id table of file {path}")
            self._find_ebv(ebv, names)
            self._keep = {name: native_column(data[hdulist[table].columns.names[
                names.index(name)]]) for name in self.read_columns}
            if self.ebv_column:
                ebv_numbers(self._keep[self.ebv_column], f"column {self.ebv_column} of the id "
                            f"table of file {path}")
        if len(self._id_values) != shape[0]:
            raise InputError(f"a FITS cube stack needs one id per cube. Received: "
                             f"{len(self._id_values)} ids for {shape[0]} cubes in file {path}")
        self.image_hdu, self.num_rows = image, shape[0]
        self._hdulist = None

    def _images(self):
        from astropy.io import fits

        if self._hdulist is None:
            self._hdulist = fits.open(self.path, memmap=False, lazy_load_hdus=True)
        return self._hdulist[self.image_hdu].section


class Hdf5StackSource(_StackSource):
    """An HDF5 file with datasets ``images`` (N, 5, H, W) and ``id`` (N)."""

    kind = "hdf5-stack"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path)
        require_survey("an HDF5 stack input", "h5py")
        import h5py

        self.id_column = id_column
        try:
            with h5py.File(path, "r") as handle:
                if "images" not in handle:
                    raise InputError(f"an HDF5 cube stack needs a dataset 'images' (N, 5, H, "
                                     f"W). Received: datasets {sorted(handle)} in file {path}")
                shape, dtype = handle["images"].shape, handle["images"].dtype
                column = _id_column([str(name).lower() for name in handle], id_column,
                                    f"file {path}")
                ids = [name for name in handle if str(name).lower() == column][0]
                self._id_values = _text_ids(handle[ids][()], f"dataset {ids} of file {path}")
                names = {str(name).lower(): name for name in handle}
                self.keep_columns = _keep_names(keep, list(names), f"file {path}")
                self._find_ebv(ebv, list(names))
                self._keep = {name: native_column(handle[names[name]][()])
                              for name in self.read_columns}
        except OSError as err:
            raise InputError(f"HDF5 file could not be read ({err}): {path}") from err
        if len(shape) != 4 or shape[1] != NUM_BANDS:
            raise InputError(f"an HDF5 cube stack's images must be (N, 5, H, W). Received: "
                             f"shape={shape} in file {path}")
        check_real_pixels(dtype, f"an HDF5 cube stack's images in file {path}")
        if len(self._id_values) != shape[0]:
            raise InputError(f"an HDF5 cube stack needs one id per cube. Received: "
                             f"{len(self._id_values)} ids for {shape[0]} cubes in file {path}")
        self.num_rows = shape[0]
        self._handle = None
        for name, values in self._keep.items():
            if values.shape[:1] != (self.num_rows,):
                raise InputError(f"--keep {name}: the dataset must hold one value per cube. "
                                 f"Received: shape={values.shape} in file {path}")
        if self.ebv_column:
            ebv_numbers(self._keep[self.ebv_column], f"dataset {self.ebv_column} of file {path}")

    def _images(self):
        import h5py

        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle["images"]


def check_real_pixels(dtype, what):
    """Refuse pixels that are not real numbers (complex, text, objects) before any is read.

    Casting complex pixels to float32 would drop the imaginary part with only a NumPy
    ComplexWarning; nanomaggies are real.

    Args:
        dtype: the stored dtype.
        what: what holds the pixels, naming the file (``"zarr stack images in X"``).

    Raises:
        InputError: the dtype is not an integer, unsigned or float type.

    Example:
        >>> check_real_pixels(np.dtype("float32"), "images in a.zarr")
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        kind = "complex numbers" if dtype.kind == "c" else f"dtype {dtype}"
        raise InputError(f"{what} must be real numbers (integer or float nanomaggies); "
                         f"{kind} are refused rather than cast. Received: dtype={dtype}")


def native_column(values):
    """A table column as a native-endian NumPy array, text decoded to str."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace")
    if values.dtype.kind in "iuf" and not values.dtype.isnative:
        return values.astype(values.dtype.newbyteorder("="))
    return values


def _parquet_columns(path):
    import pyarrow.parquet as pq

    try:
        return [name.lower() for name in pq.read_schema(path).names]
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InputError(f"Parquet file could not be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}): {path}") from err


def _parquet_rows(path):
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


def _parquet_slice(path, columns, start, stop):
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


def _id_column(names, id_column, where):
    if id_column is not None:
        if id_column.lower() not in names:
            raise InputError(f"the id column {id_column!r} is not in {where}. Received: columns "
                             f"{', '.join(names)}")
        return id_column.lower()
    for name in ID_COLUMNS:
        if name in names:
            return name
    raise InputError(f"{where} needs an id column ({' or '.join(ID_COLUMNS)}, or name one with "
                     f"--id-column). Received: columns {', '.join(names)}")


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
        columns = _parquet_columns(self.files[0])
        self._id = _id_column(columns, id_column, f"file {self.files[0]}")
        self.keep_columns = _keep_names(self.keep_columns, columns, f"file {self.files[0]}")
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
        self._lengths = [_parquet_rows(name) for name in self.files]
        self.num_rows = sum(self._lengths)

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "files": self.files,
                "keep": self.keep_columns, "ebv": self.ebv_column is not None}

    def pieces(self):
        return list(self._lengths)

    def read_ids(self, partition):
        name = self.files[partition.part]
        return _text_ids(_parquet_slice(name, self._id, partition.start - partition.offset,
                                        partition.stop - partition.offset), f"file {name}",
                         partition.start - partition.offset + 1)

    def read(self, partition, size, start=None, stop=None):
        from starqso.io.cutouts import read_band_cutout, read_cutout

        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        name = self.files[partition.part]
        local = start - partition.offset
        data = {"image": ["image"], "bands": list(BAND_COLUMNS),
                CUTOUT_COLUMN: [CUTOUT_COLUMN]}[self.layout]
        table = _parquet_slice(name, [self._id, *data, *self.read_columns], local,
                               local + stop - start)
        ids = _text_ids(table.column(0).to_pylist(), f"file {name}", local + 1)
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
        return _listing_sha256(self.files)


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


_KINDS = {cls.__name__: cls for cls in (FileSource, ZarrSource, FitsStackSource,
                                        Hdf5StackSource, ParquetSource, HatsSource)}


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
        from starqso.io._fits import missing_reason

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

