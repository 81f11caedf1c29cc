"""The zarr layout: Cutana's batch folders of ``images.zarr`` + ``images_metadata.parquet``.

Channels are u, g, r, i, z unless the array (or its group) has a ``bands`` attribute naming
another order (``"zirgu"``); each zarr chunk is decompressed once for the rows read from it.
"""

from __future__ import annotations

import os

import numpy as np

from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.io.sources.base import Block, find_id_column, keep_names, listing_sha256, text_ids
from starqso.io.sources.parquet import parquet_columns, parquet_rows, parquet_slice
from starqso.io.sources.stacks import StackSource, check_real_pixels
from starqso.schema import BANDS, NUM_BANDS

#: The most zarr rows whose crops a reader keeps between reads (a few chunks: 4096 32x32
#: crops are 80 MB); a chunk larger than that is read in pieces.
MAX_CACHED_ROWS = 4096


class ZarrSource(StackSource):
    """Cutana's zarr output: batch folders of ``images.zarr`` + ``images_metadata.parquet``."""

    kind = "zarr"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path, id_column)
        require_survey("a zarr stack input", "zarr")
        self.batches = zarr_batches(path)
        if not self.batches:
            raise InputError(f"no zarr stack found: expected images.zarr and "
                             f"images_metadata.parquet in the folder or in its batch folders. "
                             f"Received: {path}")
        self._lengths = []
        self._orders = []
        for batch in self.batches:
            array, order = self._array(batch)
            metadata_rows = parquet_rows(os.path.join(batch, "images_metadata.parquet"))
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
        self.keep_columns = keep_names(keep, parquet_columns(first), f"file {first}")
        self._find_ebv(ebv, parquet_columns(first))

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
            column = find_id_column(parquet_columns(where), self.id_column, where)
            table = parquet_slice(where, [column, *self.read_columns],
                                   partition.start - partition.offset,
                                   partition.stop - partition.offset)
            keep = {name: table.column(1 + number).to_numpy(zero_copy_only=False)
                    for number, name in enumerate(self.read_columns)}
            self._id_cache = (key, text_ids(table.column(0).to_pylist(), where,
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
        return listing_sha256(files)


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
