"""Nearest neighbours of embeddings: :class:`NeighbourIndex`, exact search (float64 BLAS, in
blocks) for small sets; a faiss HNSW graph (Malkov & Yashunin 2018, through the maintained
faiss library) for large ones, saved and loaded (in starqso's own file format) so a 10^6-row
index is built once. faiss is imported only when an HNSW graph is built or loaded.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso._util.atomic import write_bytes_atomically
from starqso.discovery.checks import finite_matrix, whole_number
from starqso.errors import InputError

__all__ = ["EXACT_LIMIT", "METHODS", "METRICS", "NeighbourIndex"]

METRICS = ("euclidean", "cosine")
METHODS = ("auto", "exact", "hnsw")
#: Rows from which ``method="auto"`` builds an HNSW graph instead of searching exactly.
EXACT_LIMIT = 200_000
# Doubles in one block of exact distances (128 MB): bounds memory whatever the set size.
_BLOCK_VALUES = 1 << 24
_MAX_BLOCK_ROWS = 4096
_FILE_MAGIC = b"STARQSO-NEIGHBOURS\n"
_FILE_VERSION = 1


def _unit(vectors, what) -> np.ndarray:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    if not (norms > 0).all():
        row = int(np.flatnonzero(norms[:, 0] <= 0)[0])
        raise InputError(f"cosine distances need non-zero {what}. Received: a zero vector in "
                         f"row {row + 1}")
    return vectors / norms


def _check_metric(metric) -> None:
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}. Received: {metric!r}")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("approximate neighbour search needs faiss: pip install faiss-cpu (or "
                         "pip install \"starqso[discovery]\"); method='exact' works without "
                         "it. Received: no module named 'faiss'") from None
    return faiss


class NeighbourIndex:
    """k-nearest-neighbour search over a fixed set of vectors.

    Exact search computes all distances in float64 in blocks of queries (memory stays near
    128 MB per block, whatever the set size). HNSW (faiss ``IndexHNSWFlat``) is approximate:
    its graph is built once, in seconds per 10^5 rows, and answers in well under a
    millisecond per query with recall@10 near 1 at the default ``ef_search``. Cosine search
    normalises the vectors, so it is Euclidean search on the unit sphere, and returns
    ``1 - cos``.

    Args:
        vectors: (N, d) finite vectors.
        metric: ``"euclidean"`` or ``"cosine"``.
        method: ``"exact"``, ``"hnsw"`` or ``"auto"`` (HNSW from ``exact_limit`` rows).
        exact_limit: see ``method``.
        seed: seed of the HNSW level assignment (faiss builds with several threads, so two
            builds can still differ in a few links).
        hnsw_m: graph degree of HNSW (links per node).
        ef_construction, ef_search: HNSW's build and search beam widths (larger: better
            recall, slower).

    Attributes:
        method: ``"exact"`` or ``"hnsw"``, what was used.
        metric, rows, dim: as given / found.
        info: a JSON-serialisable dict kept with :meth:`save` (e.g. a fingerprint of the
            embeddings file the index was built from), ``{}`` by default.

    Raises:
        InputError: an unknown metric or method, empty or non-finite vectors, zero vectors
            under cosine, HNSW without faiss.

    Example:
        >>> index = NeighbourIndex(np.random.rand(100, 8))
        >>> distances, rows = index.query(np.random.rand(2, 8), 5)
        >>> index.method, rows.shape
        ('exact', (2, 5))
    """

    def __init__(self, vectors, metric="euclidean", method="auto", exact_limit=EXACT_LIMIT,
                 seed=0, hnsw_m=32, ef_construction=80, ef_search=128):
        _check_metric(metric)
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}. Received: "
                             f"{method!r}")
        vectors = finite_matrix(vectors)
        self.metric = metric
        self.rows, self.dim = vectors.shape
        self.info: dict = {}
        if method == "auto":
            method = "hnsw" if self.rows >= whole_number(exact_limit, "exact_limit", 1) else "exact"
        self.method = method
        self._index = None
        self._base = self._base_norms = None
        if metric == "cosine":
            vectors = _unit(vectors, "vectors")
        if method == "exact":
            self._base = np.asarray(vectors, np.float64)
            return
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, whole_number(hnsw_m, "hnsw_m", 2))
        index.hnsw.efConstruction = whole_number(ef_construction, "ef_construction", 1)
        index.hnsw.efSearch = whole_number(ef_search, "ef_search", 1)
        # Kept on self: the SWIG object must outlive the graph build that draws from it.
        self._rng = faiss.RandomGenerator(int(seed))
        index.hnsw.rng = self._rng
        index.add(np.ascontiguousarray(vectors, np.float32))
        self._index = index

    def __len__(self) -> int:
        return self.rows

    @property
    def ef_search(self) -> int | None:
        """HNSW's search beam width (settable); None for an exact index."""
        return None if self._index is None else int(self._index.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value) -> None:
        if self._index is not None:
            self._index.hnsw.efSearch = whole_number(value, "ef_search", 1)

    def query(self, queries, k, exclude_self=False):
        """The ``k`` nearest index rows of each query, nearest first.

        Args:
            queries: (Q, d) finite vectors.
            k: neighbours per query, 1 <= k <= rows (rows - 1 when excluding self).
            exclude_self: True when the queries are this index's own rows 0 .. Q-1 in order,
                or an int array (Q,) of the index row each query is: each query's own row is
                left out of its answer (ties at distance 0 with other rows are kept).

        Returns:
            ``(distances, rows)``: float64 (Q, k) Euclidean distances or ``1 - cos``, and
            int64 (Q, k) index rows. HNSW may, rarely, find fewer than ``k``; the missing
            places hold row -1 and distance inf.

        Raises:
            InputError: bad queries, a dimension unlike the index's, or ``k`` out of range.

        Example:
            >>> vectors = np.random.rand(50, 4)
            >>> _, rows = NeighbourIndex(vectors).query(vectors, 3, exclude_self=True)
            >>> bool((rows != np.arange(50)[:, None]).all())
            True
        """
        queries = finite_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise InputError(f"queries must have {self.dim} numbers per row like the index. "
                             f"Received: {queries.shape[1]} numbers per row")
        own = self._own_rows(exclude_self, len(queries))
        limit = self.rows - (own is not None)
        k = whole_number(k, "k", 1, limit)
        if self.metric == "cosine":
            queries = _unit(queries, "queries")
        wanted = min(k + (own is not None), self.rows)
        if self._index is not None:
            squared, found = self._index.search(np.ascontiguousarray(queries, np.float32),
                                                wanted)
            squared = squared.astype(np.float64)
            squared[found < 0] = np.inf
        else:
            squared, found = self._exact(queries, wanted)
        found = found.astype(np.int64)
        if own is not None:
            # Each row's first k entries other than its own, in order: a stable sort moves
            # the own entry (where found) to the end.
            keep = np.argsort(found == own[:, None], axis=1, kind="stable")[:, :k]
            found = np.take_along_axis(found, keep, axis=1)
            squared = np.take_along_axis(squared, keep, axis=1)
        squared = np.maximum(squared, 0.0)
        distances = squared / 2.0 if self.metric == "cosine" else np.sqrt(squared)
        return distances, found

    def _own_rows(self, exclude_self, count):
        if exclude_self is False or exclude_self is None:
            return None
        if exclude_self is True:
            if count > self.rows:
                raise InputError(f"exclude_self=True means the queries are the index's rows "
                                 f"0 .. Q-1, so at most {self.rows} queries. Received: "
                                 f"{count} queries")
            return np.arange(count)
        own = np.asarray(exclude_self).reshape(-1)
        if own.shape != (count,) or own.dtype.kind not in "iu" or (own < 0).any() \
                or (own >= self.rows).any():
            raise InputError(f"exclude_self must be True/False or one index row (0 .. "
                             f"{self.rows - 1}) per query. Received: {own[:5].tolist()} for "
                             f"{count} queries")
        return own.astype(np.int64)

    def squared_distances(self, block) -> np.ndarray:
        """float64 (B, rows) squared Euclidean distances of ``block`` to every index row
        (an exact index only; its blocks are :meth:`block_rows` queries)."""
        base = self._base
        if self._base_norms is None:
            self._base_norms = np.einsum("ij,ij->i", base, base)
        block = np.asarray(block, np.float64)
        return (np.einsum("ij,ij->i", block, block)[:, None] + self._base_norms[None, :]
                - 2.0 * (block @ base.T))

    def block_rows(self) -> int:
        """Queries per block, so one block of distances holds about _BLOCK_VALUES doubles."""
        return int(max(1, min(_MAX_BLOCK_ROWS, _BLOCK_VALUES // self.rows)))

    def _exact(self, queries, k):
        distances = np.empty((len(queries), k))
        found = np.empty((len(queries), k), np.int64)
        step = self.block_rows()
        for start in range(0, len(queries), step):
            squared = self.squared_distances(queries[start:start + step])
            if k < self.rows:
                part = np.argpartition(squared, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(self.rows), squared.shape)
            values = np.take_along_axis(squared, part, axis=1)
            # Ties by index row, so the answer does not depend on argpartition's order.
            order = np.lexsort((part, values), axis=1)
            found[start:start + len(squared)] = np.take_along_axis(part, order, axis=1)
            distances[start:start + len(squared)] = np.take_along_axis(values, order, axis=1)
        return distances, found

    def save(self, path) -> str:
        """Write the index to ``path`` (atomically), to :meth:`load` instead of rebuilding.

        An HNSW index is stored as faiss serialises it, an exact one as its float32 vectors;
        the metric, method, shape and :attr:`info` travel with it.

        Args:
            path: the output file (e.g. ``.NAME.vector.euclidean.hnsw`` beside the
                embeddings).

        Returns:
            The path as ``str``.

        Example:
            >>> index.info = {"source_sha256": "..."}  # doctest: +SKIP
            >>> index.save("embeddings.parquet.hnsw")  # doctest: +SKIP
        """
        if self._index is not None:
            payload = _faiss().serialize_index(self._index).tobytes()
        else:
            payload = np.ascontiguousarray(self._base, np.float32).tobytes()
        header = json.dumps({"version": _FILE_VERSION, "rows": self.rows, "dim": self.dim,
                             "metric": self.metric, "method": self.method,
                             "info": self.info}, sort_keys=True).encode("utf-8")
        data = _FILE_MAGIC + len(header).to_bytes(8, "little") + header + payload
        return write_bytes_atomically(path, data)

    @classmethod
    def load(cls, path, ef_search=None) -> NeighbourIndex:
        """An index written by :meth:`save`.

        Args:
            path: the file.
            ef_search: HNSW search beam width to use instead of the saved one.

        Returns:
            :class:`NeighbourIndex` answering exactly as the saved one did.

        Raises:
            InputError: the file is missing, not an index written by starqso, cut short or
                corrupt, or an HNSW index without faiss installed.

        Example:
            >>> index = NeighbourIndex.load("embeddings.parquet.hnsw")  # doctest: +SKIP
        """
        path = os.fspath(path)
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as err:
            raise InputError(f"neighbour index could not be read ({err.strerror}): "
                             f"{path}") from err
        start = len(_FILE_MAGIC) + 8
        try:
            if not data.startswith(_FILE_MAGIC):
                raise ValueError("no starqso header")
            length = int.from_bytes(data[len(_FILE_MAGIC):start], "little")
            header = strict_json.loads(data[start:start + length].decode("utf-8"), path)
            payload = data[start + length:]
            rows, dim, metric, method = (int(header["rows"]), int(header["dim"]),
                                         header["metric"], header["method"])
            if header["version"] != _FILE_VERSION or metric not in METRICS \
                    or method not in ("exact", "hnsw"):
                raise ValueError(f"unknown version/metric/method {header}")
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"file is not a neighbour index written by starqso ({err}): "
                             f"{path}") from err
        index = cls.__new__(cls)
        index.rows, index.dim, index.metric, index.method = rows, dim, metric, method
        index.info = header.get("info") or {}
        index._index = index._base = index._base_norms = None
        if method == "exact":
            if len(payload) != rows * dim * 4:
                raise InputError(f"neighbour index is cut short or corrupt (expected "
                                 f"{rows * dim * 4} bytes of vectors, found {len(payload)}): "
                                 f"{path}")
            index._base = np.frombuffer(payload, np.float32).reshape(rows, dim).astype(
                np.float64)
            return index
        faiss = _faiss()
        try:
            graph = faiss.deserialize_index(np.frombuffer(payload, np.uint8))
        except RuntimeError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"neighbour index is cut short or corrupt ({reason}): "
                             f"{path}") from err
        if graph.ntotal != rows or graph.d != dim:
            raise InputError(f"neighbour index is inconsistent (header {rows} x {dim}, graph "
                             f"{graph.ntotal} x {graph.d}): {path}")
        index._index = graph
        if ef_search is not None:
            index.ef_search = ef_search
        return index

