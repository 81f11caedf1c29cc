"""Nearest neighbours, outlier scores, retrieval metrics and voting clusters of embeddings.

No TensorFlow here: everything works on NumPy arrays of embeddings (``starqso embed``,
:mod:`starqso.io.embeddings`); scikit-learn, SciPy, faiss and matplotlib are imported only by
the functions that need them.

* :class:`NeighbourIndex`: exact search (float64 BLAS, in blocks) for small sets; a faiss
  HNSW graph (Malkov & Yashunin 2018, through the maintained faiss library) for large ones,
  saved and loaded so a 10^6-row index is built once.
* :func:`outlier_scores`: distance to the k-th nearest reference row, over its typical value.
* :func:`average_precision_at_r`, :func:`precision_at_k`: leave-one-out retrieval scores
  (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check").
* :func:`voting_clusters`: the seed paper's unsupervised classification (ConvNeXt + PCA +
  bagging-based multi-clustering voting, 2024) on these embeddings; :func:`cluster_purity`,
  :func:`plot_clusters`.

Every input a user can get wrong (an empty set, NaN rows, mismatched dimensions, a ``k`` or a
number of clusters out of range) raises a one-line :class:`~starqso.errors.InputError` ending
in ``Received: ...``. Rows without an embedding must be left out by the caller
(:meth:`starqso.io.embeddings.EmbeddingTable.usable`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError

__all__ = [
    "METHODS",
    "METRICS",
    "Clusters",
    "NeighbourIndex",
    "average_precision_at_r",
    "cluster_purity",
    "outlier_scores",
    "plot_clusters",
    "precision_at_k",
    "voting_clusters",
]

METRICS = ("euclidean", "cosine")
METHODS = ("auto", "exact", "hnsw")
#: Rows from which ``method="auto"`` builds an HNSW graph instead of searching exactly.
EXACT_LIMIT = 200_000
# Doubles in one block of exact distances (128 MB): bounds memory whatever the set size.
_BLOCK_VALUES = 1 << 24
_MAX_BLOCK_ROWS = 4096
# Above this many rows k-means is MiniBatchKMeans, so 10^6 rows cluster in minutes.
_MINIBATCH_ROWS = 50_000
_SILHOUETTE_ROWS = 5000
_PLOT_POINTS = 50_000
_FILE_MAGIC = b"STARQSO-NEIGHBOURS\n"
_FILE_VERSION = 1


def _matrix(vectors, what="vectors") -> np.ndarray:
    """``vectors`` as a finite, non-empty float32 (N, d) array, or one InputError."""
    try:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be an (N, d) array of numbers. Received: {err}") from None
    if vectors.ndim != 2 or not vectors.shape[0] or not vectors.shape[1]:
        raise InputError(f"{what} must be a non-empty (N, d) array. Received: shape "
                         f"{vectors.shape}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{what} must be finite; leave out rows without an embedding "
                         f"(EmbeddingTable.usable). Received: NaN/inf in {len(bad)} rows, "
                         f"the first row {bad[0] + 1}")
    return vectors


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


def _whole(value, name, low, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name} must be a whole number {bound}. Received: {name}={value!r}")
    return int(value)


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
        vectors = _matrix(vectors)
        self.metric = metric
        self.rows, self.dim = vectors.shape
        self.info: dict = {}
        if method == "auto":
            method = "hnsw" if self.rows >= _whole(exact_limit, "exact_limit", 1) else "exact"
        self.method = method
        self._index = None
        self._base = self._base_norms = None
        if metric == "cosine":
            vectors = _unit(vectors, "vectors")
        if method == "exact":
            self._base = np.asarray(vectors, np.float64)
            return
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, _whole(hnsw_m, "hnsw_m", 2))
        index.hnsw.efConstruction = _whole(ef_construction, "ef_construction", 1)
        index.hnsw.efSearch = _whole(ef_search, "ef_search", 1)
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
            self._index.hnsw.efSearch = _whole(value, "ef_search", 1)

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
        queries = _matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise InputError(f"queries must have {self.dim} numbers per row like the index. "
                             f"Received: {queries.shape[1]} numbers per row")
        own = self._own_rows(exclude_self, len(queries))
        limit = self.rows - (own is not None)
        k = _whole(k, "k", 1, limit)
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

    def _squared(self, block) -> np.ndarray:
        """float64 (B, rows) squared Euclidean distances of ``block`` to every index row."""
        base = self._base
        if self._base_norms is None:
            self._base_norms = np.einsum("ij,ij->i", base, base)
        block = np.asarray(block, np.float64)
        return (np.einsum("ij,ij->i", block, block)[:, None] + self._base_norms[None, :]
                - 2.0 * (block @ base.T))

    def _block_rows(self) -> int:
        """Queries per block, so one block of distances holds about _BLOCK_VALUES doubles."""
        return int(max(1, min(_MAX_BLOCK_ROWS, _BLOCK_VALUES // self.rows)))

    def _exact(self, queries, k):
        distances = np.empty((len(queries), k))
        found = np.empty((len(queries), k), np.int64)
        step = self._block_rows()
        for start in range(0, len(queries), step):
            squared = self._squared(queries[start:start + step])
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
        from starqso._util.atomic import write_bytes_atomically

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


def outlier_scores(reference, vectors, k=10, exclude_self=False, metric="euclidean"):
    """How unusual each vector is among ``reference``: about 1 typical, larger unusual.

    The score is the distance to the ``k``-th nearest reference row, divided by the median
    of the same distance among the reference rows themselves (each left out of its own
    neighbours). A vector as far from the reference as a typical reference row is from the
    others scores about 1; one in an empty region scores many times that. Search is exact
    (``reference`` is a few thousand training objects).

    Args:
        reference: (M, d) finite embeddings, e.g. of the training objects.
        vectors: (N, d) finite embeddings to score.
        k: the neighbour whose distance counts, 1 <= k <= M - 1.
        exclude_self: True when ``vectors`` are reference rows 0 .. N-1 (each is left out of
            its own neighbours), or an int array of the reference row of each vector.
        metric: ``"euclidean"`` or ``"cosine"``.

    Returns:
        float64 (N,) scores. Should more than half of the reference rows have k exact
        duplicates (median 0), the median of the positive k-th distances is the scale.

    Raises:
        InputError: empty or non-finite inputs, different dimensions, ``k`` out of range.

    Example:
        >>> reference = np.random.default_rng(0).normal(size=(500, 4))
        >>> bool(outlier_scores(reference, np.full((1, 4), 10.0))[0] > 5)
        True
    """
    reference = _matrix(reference, "reference")
    vectors = _matrix(vectors, "vectors")
    if vectors.shape[1] != reference.shape[1]:
        raise InputError(f"vectors must have as many numbers per row as the reference "
                         f"({reference.shape[1]}). Received: {vectors.shape[1]}")
    if len(reference) < 2:
        raise InputError(f"the reference needs at least 2 rows (each is compared with the "
                         f"others). Received: {len(reference)} row")
    k = _whole(k, "k", 1, len(reference) - 1)
    index = NeighbourIndex(reference, metric=metric, method="exact")
    own, _ = index.query(reference, k, exclude_self=True)
    typical = own[:, -1]
    scale = float(np.median(typical))
    if not scale > 0:
        positive = typical[typical > 0]
        scale = float(np.median(positive)) if len(positive) else 1.0
    distances, _ = index.query(vectors, k, exclude_self=exclude_self)
    return distances[:, -1] / scale


# --- retrieval metrics -------------------------------------------------------------------------


def _labelled(vectors, labels):
    vectors = _matrix(vectors)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(vectors):
        raise InputError(f"labels must have one entry per vector ({len(vectors)}). Received: "
                         f"shape {labels.shape}")
    if len(vectors) < 2:
        raise InputError(f"leave-one-out retrieval needs at least 2 rows. Received: "
                         f"{len(vectors)} row")
    classes, codes = np.unique(labels, return_inverse=True)
    return vectors, classes, codes.reshape(-1), np.bincount(codes.reshape(-1))


def _leave_one_out(vectors, metric, depth):
    """``(rows, neighbours)`` blocks: each row's ``depth`` nearest other rows, exactly."""
    index = NeighbourIndex(vectors, metric=metric, method="exact")
    step = int(max(1, min(_MAX_BLOCK_ROWS, _BLOCK_VALUES // max(depth, len(vectors)))))
    for start in range(0, len(vectors), step):
        rows = np.arange(start, min(start + step, len(vectors)))
        _, found = index.query(vectors[rows], depth, exclude_self=rows)
        yield rows, found


def _class_means(per_row, codes, classes, valid):
    means = {}
    for code, name in enumerate(classes):
        chosen = valid & (codes == code)
        if chosen.any():
            means[name.item() if hasattr(name, "item") else name] = float(per_row[chosen].mean())
    return means


def average_precision_at_r(vectors, labels, metric="euclidean", per_class=False):
    """MAP@R, leave-one-out over the set (Musgrave et al. 2020).

    For each row, R is the number of other rows of its class; its score is
    ``(1/R) * sum_{i<=R} P(i) * [neighbour i is of the class]``, where P(i) is the precision
    among its first i neighbours (itself left out). Unlike precision@k, it rewards ranking
    the whole class first; 1.0 means every class is retrieved before any other row, a
    random embedding scores about the class's fraction. Rows whose class has no other member
    have no R and are left out. A row of another class at exactly the same distance as one
    of the class ranks before it, so a collapsed embedding (all rows equal) gets no credit.

    Exact and in blocks of query rows: each block's distances to all N rows are sorted per
    class, and the rank of the class's i-th nearest member is i plus the other rows not
    farther, so no (N, N) matrix is ever held (20,000 rows take seconds and ~300 MB).

    Args:
        vectors: (N, d) finite embeddings.
        labels: (N,) class of each row (any comparable values: ints, strings).
        metric: ``"euclidean"`` or ``"cosine"``.
        per_class: also return the mean per class.

    Returns:
        float MAP@R over the rows; with ``per_class``, ``(map_at_r, {class: mean})``.

    Raises:
        InputError: bad vectors, labels not one per row, no class with two rows.

    Example:
        >>> vectors = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> average_precision_at_r(vectors, [0, 0, 1, 1])
        1.0
    """
    vectors, classes, codes, counts = _labelled(vectors, labels)
    r_of_row = counts[codes] - 1
    if r_of_row.max() < 1:
        raise InputError(f"MAP@R needs a class with at least two rows. Received: "
                         f"{len(classes)} classes of one row each")
    index = NeighbourIndex(vectors, metric=metric, method="exact")
    step = index._block_rows()
    scores = np.zeros(len(vectors))
    for code in np.flatnonzero(counts > 1):
        members = np.flatnonzero(codes == code)
        others = np.flatnonzero(codes != code)
        r = len(members) - 1
        ranks_in_class = np.arange(1, r + 1)
        for start in range(0, len(members), step):
            rows = members[start:start + step]
            # Squared distances rank as distances do (and as 1 - cos for unit vectors).
            squared = index._squared(vectors[rows])
            same = squared[:, members]
            same[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
            same = np.sort(same, axis=1)[:, :r]
            other = np.sort(squared[:, others], axis=1)
            before = np.stack([np.searchsorted(other[i], same[i], side="right")
                               for i in range(len(rows))])
            rank = ranks_in_class[None, :] + before
            scores[rows] = np.where(rank <= r, ranks_in_class / rank, 0.0).sum(axis=1) / r
    valid = r_of_row >= 1
    mean = float(scores[valid].mean())
    if per_class:
        return mean, _class_means(scores, codes, classes, valid)
    return mean


def precision_at_k(vectors, labels, k=10, metric="euclidean", per_class=False):
    """Precision@k, leave-one-out: the fraction of each row's k nearest other rows that
    share its class, averaged over the rows.

    Args:
        vectors: (N, d) finite embeddings.
        labels: (N,) class of each row.
        k: neighbours per row, 1 <= k <= N - 1.
        metric: ``"euclidean"`` or ``"cosine"``.
        per_class: also return the mean per class.

    Returns:
        float; with ``per_class``, ``(precision, {class: mean})``.

    Raises:
        InputError: bad vectors, labels not one per row, ``k`` out of range.

    Example:
        >>> precision_at_k(np.array([[0.0], [0.1], [5.0], [5.1]]), [0, 0, 1, 1], k=1)
        1.0
    """
    vectors, classes, codes, _ = _labelled(vectors, labels)
    k = _whole(k, "k", 1, len(vectors) - 1)
    scores = np.zeros(len(vectors))
    for rows, found in _leave_one_out(vectors, metric, k):
        scores[rows] = (codes[found] == codes[rows][:, None]).mean(axis=1)
    mean = float(scores.mean())
    if per_class:
        return mean, _class_means(scores, codes, classes, np.ones(len(scores), bool))
    return mean


# --- voting clusters ---------------------------------------------------------------------------


@dataclasses.dataclass
class Clusters:
    """What :func:`voting_clusters` gives.

    Attributes:
        labels: int64 (N,) cluster of each row, 0 .. n_clusters - 1 by decreasing size.
        agreement: float64 (N,) fraction of the bags whose (aligned) cluster is the vote.
        n_clusters: number of clusters.
        n_components: PCA components the clustering used.
        explained_variance: fraction of the (standardised) variance they hold.
        projection: float32 (N, 2) the first two PCA components, for plots.
        silhouette: ``{k: silhouette score}`` of the k tried when ``n_clusters`` was None;
            empty when it was given.
    """

    labels: np.ndarray
    agreement: np.ndarray
    n_clusters: int
    n_components: int
    explained_variance: float
    projection: np.ndarray
    silhouette: dict


def _kmeans(k, seed, rows):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if rows > _MINIBATCH_ROWS:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=3)


def _fraction(value, name) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 1:
        raise InputError(f"{name} must be in (0, 1]. Received: {name}={value}")
    return value


def voting_clusters(vectors, n_clusters=None, n_bags=25, sample_fraction=0.8,
                    pca_variance=0.95, max_components=50, seed=0, k_range=range(2, 13)):
    """PCA + bagged k-means voting: clusters with a per-row agreement score.

    The vectors are standardised (zero mean, unit variance per component) and reduced by PCA
    to the fewest components holding ``pca_variance`` of the variance (at least 2, at most
    ``max_components``). Each of ``n_bags`` k-means runs is fitted on a bootstrap sample
    (``sample_fraction`` of the rows, drawn with replacement) and assigns every row; each
    bag's cluster numbers are matched to the first bag's by the Hungarian algorithm on their
    contingency table (:func:`scipy.optimize.linear_sum_assignment`), and each row takes its
    majority cluster. The agreement (fraction of bags that voted for it) says how stable the
    row's cluster is. With more than 50,000 rows per bag, k-means is MiniBatchKMeans, so
    10^6 rows take minutes. The result depends only on the input and ``seed``.

    Args:
        vectors: (N, d) finite embeddings.
        n_clusters: k, 2 <= k <= N; None picks the best silhouette score over ``k_range``
            (measured on at most 5,000 rows).
        n_bags: k-means runs that vote (>= 1).
        sample_fraction: bootstrap sample size, as a fraction of N, in (0, 1].
        pca_variance: variance fraction the PCA keeps, in (0, 1].
        max_components: most PCA components kept (>= 1).
        seed: random seed.
        k_range: the k tried when ``n_clusters`` is None.

    Returns:
        :class:`Clusters`.

    Raises:
        InputError: empty or non-finite vectors, ``n_clusters`` < 2 or > N, fewer than 3
            rows for automatic k, other options out of range.

    Example:
        >>> result = voting_clusters(np.random.rand(300, 8), n_clusters=3, n_bags=5)
        >>> result.labels.shape, result.n_clusters
        ((300,), 3)
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.decomposition import PCA

    vectors = _matrix(vectors).astype(np.float64)
    rows = len(vectors)
    n_bags = _whole(n_bags, "n_bags", 1)
    max_components = _whole(max_components, "max_components", 1)
    sample_fraction = _fraction(sample_fraction, "sample_fraction")
    pca_variance = _fraction(pca_variance, "pca_variance")
    if n_clusters is not None:
        n_clusters = _whole(n_clusters, "n_clusters", 2)
        if n_clusters > rows:
            raise InputError(f"n_clusters must be at most the number of rows ({rows}). "
                             f"Received: n_clusters={n_clusters}")
    rng = np.random.default_rng(seed)
    spread = vectors.std(axis=0)
    standard = (vectors - vectors.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    pca = PCA(n_components=min(max_components, standard.shape[1], rows), random_state=seed)
    reduced = pca.fit_transform(standard)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    # float sums fall just short of 1.0, so "all the variance" would otherwise ask for more
    # components than there are.
    components = int(np.searchsorted(cumulative, pca_variance - 1e-9) + 1)
    components = min(len(cumulative), max(components, 2))
    projection = np.zeros((rows, 2), np.float32)
    projection[:, :min(2, reduced.shape[1])] = reduced[:, :2]
    reduced = np.ascontiguousarray(reduced[:, :components])
    silhouette = {}
    if n_clusters is None:
        n_clusters, silhouette = _best_k(reduced, k_range, seed, rng)
    votes = np.zeros((rows, n_clusters), np.int64)
    reference = None
    size = max(n_clusters, int(round(sample_fraction * rows)))
    for bag in range(n_bags):
        sample = rng.choice(rows, size, replace=True)
        model = _kmeans(n_clusters, seed + bag, size).fit(reduced[sample])
        assigned = model.predict(reduced)
        if reference is None:
            reference = assigned
        else:
            table = np.zeros((n_clusters, n_clusters), np.int64)
            np.add.at(table, (assigned, reference), 1)
            mine, theirs = linear_sum_assignment(-table)
            mapping = np.empty(n_clusters, np.int64)
            mapping[mine] = theirs
            assigned = mapping[assigned]
        votes[np.arange(rows), assigned] += 1
    labels = votes.argmax(axis=1)
    agreement = votes[np.arange(rows), labels] / n_bags
    # Numbered by decreasing size, so the numbering does not depend on k-means' own.
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    renumber = np.empty(n_clusters, np.int64)
    renumber[order] = np.arange(n_clusters)
    return Clusters(renumber[labels], agreement.astype(np.float64), int(n_clusters),
                    components, float(cumulative[components - 1]), projection, silhouette)


def _best_k(reduced, k_range, seed, rng):
    from sklearn.metrics import silhouette_score

    rows = len(reduced)
    sample = np.sort(rng.choice(rows, min(rows, _SILHOUETTE_ROWS), replace=False))
    tried = sorted({int(k) for k in k_range})
    silhouette = {}
    for k in tried:
        # The silhouette is defined for 2 .. n - 1 clusters.
        if not 2 <= k < len(sample):
            continue
        assigned = _kmeans(k, seed, len(sample)).fit_predict(reduced[sample])
        if len(np.unique(assigned)) > 1:
            silhouette[k] = float(silhouette_score(reduced[sample], assigned))
    if not silhouette:
        raise InputError(f"no number of clusters in k_range fits {rows} rows (the silhouette "
                         f"needs 2 <= k < rows). Received: k_range={tried}")
    return max(silhouette, key=lambda k: (silhouette[k], -k)), silhouette


def _known(labels):
    """``(text labels, known mask)``: unknown is "", None, NaN or -1."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        return labels.astype(str), labels.astype(np.int64) != -1
    if labels.dtype.kind == "f":
        return labels.astype(str), np.isfinite(labels) & (labels != -1)
    if labels.dtype.kind == "O":
        text = np.array(["" if value is None or (isinstance(value, float) and value != value)
                         else str(value) for value in labels.tolist()], dtype=str)
    else:
        text = labels.astype(str)
    stripped = np.char.strip(text)
    return stripped, (stripped != "") & (stripped != "-1")


def cluster_purity(clusters, labels):
    """Weighted purity: the fraction of (labelled) rows in their cluster's majority label.

    ``sum over clusters of (count of the cluster's commonest label) / N``, where N and the
    counts leave out rows whose label is unknown (``""``, None, NaN or -1). 1.0 means every
    cluster holds one label; it never falls below the commonest label's fraction.

    Args:
        clusters: (N,) cluster of each row.
        labels: (N,) label of each row (``"STAR"``/``"QSO"``/``""`` or int codes).

    Returns:
        float purity; NaN when no row has a known label.

    Raises:
        InputError: ``clusters`` and ``labels`` of different lengths.

    Example:
        >>> cluster_purity([0, 0, 1, 1], ["STAR", "STAR", "QSO", "STAR"])
        0.75
    """
    clusters = np.asarray(clusters).reshape(-1)
    text, known = _known(np.asarray(labels).reshape(-1))
    if len(text) != len(clusters):
        raise InputError(f"clusters and labels must have one entry per row. Received: "
                         f"{len(clusters)} clusters, {len(text)} labels")
    if not known.any():
        return float("nan")
    _, cluster_codes = np.unique(clusters[known], return_inverse=True)
    _, label_codes = np.unique(text[known], return_inverse=True)
    table = np.zeros((cluster_codes.max() + 1, label_codes.max() + 1), np.int64)
    np.add.at(table, (cluster_codes.reshape(-1), label_codes.reshape(-1)), 1)
    return float(table.max(axis=1).sum() / known.sum())


_LABEL_COLOURS = {"STAR": "tab:blue", "QSO": "tab:red"}


def plot_clusters(projection, clusters, labels, path, title="", max_points=_PLOT_POINTS,
                  seed=0) -> str:
    """Two panels of the 2-D projection, coloured by cluster and by label, saved as PNG.

    Drawn on matplotlib's Agg canvas (no screen, no change to pyplot's backend); at most
    ``max_points`` rows, a seeded random subset, are drawn so 10^6 rows plot in seconds. The
    file is written atomically.

    Args:
        projection: (N, 2) coordinates (:attr:`Clusters.projection`).
        clusters: (N,) cluster of each row.
        labels: (N,) label of each row (``"STAR"``, ``"QSO"``, ``""`` unknown, or codes).
        path: the PNG file to write.
        title: a title over both panels.
        max_points: most points drawn.
        seed: seed of the subset drawn.

    Returns:
        The path as ``str``.

    Raises:
        InputError: a projection that is not (N, 2), or clusters/labels not one per row.

    Example:
        >>> plot_clusters(result.projection, result.labels, labels, "c.png")  # doctest: +SKIP
        'c.png'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from starqso._util.atomic import write_bytes_atomically

    projection = np.asarray(projection, np.float64)
    clusters = np.asarray(clusters).reshape(-1)
    text, known = _known(np.asarray(labels).reshape(-1))
    if projection.ndim != 2 or projection.shape[1] != 2 or not len(projection):
        raise InputError(f"projection must be a non-empty (N, 2) array. Received: shape "
                         f"{projection.shape}")
    if len(clusters) != len(projection) or len(text) != len(projection):
        raise InputError(f"clusters and labels must have one entry per projected row "
                         f"({len(projection)}). Received: {len(clusters)} clusters, "
                         f"{len(text)} labels")
    shown = np.arange(len(projection))
    max_points = _whole(max_points, "max_points", 1)
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    x, y = projection[shown, 0], projection[shown, 1]
    size = 3 if len(shown) > 5000 else 10
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    by_cluster, by_label = figure.subplots(1, 2)
    names = np.unique(clusters[shown])
    colours = _colours(len(names))
    for number, cluster in enumerate(names):
        mask = clusters[shown] == cluster
        by_cluster.scatter(x[mask], y[mask], s=size, color=colours[number], linewidths=0,
                           label=f"{cluster} ({int((clusters == cluster).sum())})")
    by_cluster.set_title("by cluster")
    if len(names) <= 20:
        by_cluster.legend(title="cluster (rows)", fontsize=7, markerscale=2, loc="best")
    kinds = np.unique(text[shown][known[shown]]).tolist()
    others = iter(_colours(len(kinds) + 2)[2:])
    if (~known[shown]).any():
        mask = ~known[shown]
        by_label.scatter(x[mask], y[mask], s=size, color="0.7", linewidths=0,
                         label="no label")
    for kind in kinds:
        mask = known[shown] & (text[shown] == kind)
        by_label.scatter(x[mask], y[mask], s=size, linewidths=0, label=str(kind),
                         color=_LABEL_COLOURS.get(str(kind)) or next(others))
    by_label.set_title("by label")
    if len(kinds) <= 20:
        by_label.legend(fontsize=8, markerscale=2, loc="best")
    for axes in (by_cluster, by_label):
        axes.set_xlabel("PC 1")
        axes.set_ylabel("PC 2")
    if title:
        figure.suptitle(title)
    # Rendered in memory, then renamed into place: a reader never sees half a PNG.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_bytes_atomically(path, buffer.getvalue())


def _colours(count):
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["viridis"](i / max(count - 1, 1)) for i in range(count)]
