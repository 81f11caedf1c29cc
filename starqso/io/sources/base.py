"""What every input layout of :mod:`starqso.io.sources` shares.

A :class:`Source` (row count, :class:`Partition` s, :meth:`Source.read` giving a
:class:`Block`), the registry workers reopen a pickled source from, and the checks every
layout makes the same way: ids (blank or repeated), ``--keep`` columns, the id column, E(B-V)
cells, and the listing fingerprint ``--resume`` compares.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from starqso.errors import InputError
from starqso.schema import BANDS, P_QSO_ERR_COLUMN, QFLAG_COLUMN

#: Catalogue columns holding one FITS file per band.
BAND_COLUMNS = tuple(f"image_{band}" for band in BANDS)
#: The Parquet / HATS column holding the cutout pixels themselves.
CUTOUT_COLUMN = "cutout"
#: The input column ``predict`` takes each row's Galactic E(B-V) from (any case).
EBV_COLUMN = "ebv"
#: Id columns tried, in order, when none is named: starqso's, then Cutana's.
ID_COLUMNS = ("id", "source_id")

#: Inputs up to this many rows have their ids checked for repeats across the whole input
#: before a Dask run starts (a set of 10^7 ids is about 1 GB); larger ones within each
#: partition only, as they are read.
MAX_CHECKED_IDS = 10_000_000


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


def text_ids(values, where, first=1):
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


def keep_names(keep, available, where):
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


def listing_sha256(paths):
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


#: Each layout's :class:`Source` class by name: what a worker reopens a pickled source with.
KINDS = {}


class Source:
    """A set of rows to classify (see :mod:`starqso.io.sources` for the layouts).

    Attributes:
        path: what the user gave.
        kind: the layout's name (``files``, ``zarr``, ``fits-stack``, ``hdf5-stack``,
            ``parquet``, ``hats``).
        num_rows: rows in input order.
    """

    kind = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        KINDS[cls.__name__] = cls

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
    return KINDS[name](**arguments)


def find_id_column(names, id_column, where):
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
