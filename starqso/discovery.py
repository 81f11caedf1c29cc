"""Nearest neighbours, outlier scores, retrieval metrics and voting clusters of embeddings.

No TensorFlow here: everything works on NumPy arrays of embeddings (``starqso embed``).

* :class:`NeighbourIndex`: exact search (BLAS, in blocks) for small sets; a faiss HNSW graph
  (Malkov & Yashunin 2018, a maintained library) for large ones.
* :func:`outlier_scores`: distance to the k-th nearest reference row, over its typical value.
* :func:`average_precision_at_r`, :func:`precision_at_k`: leave-one-out retrieval scores
  (Musgrave et al. 2020, "A Metric Learning Reality Check").
* :func:`voting_clusters`: the seed paper's unsupervised classification (ConvNeXt + PCA +
  bagging-based multi-clustering voting, 2024) on these embeddings; :func:`cluster_purity`,
  :func:`plot_clusters`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from starqso.errors import InputError

METRICS = ("euclidean", "cosine")
METHODS = ("auto", "exact", "hnsw")
_BLOCK = 2048


def _matrix(vectors, what="vectors"):
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not len(vectors) or not vectors.shape[1]:
        raise InputError(f"{what} must be a non-empty (N, d) array. Received: shape "
                         f"{vectors.shape}")
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise InputError(f"{what} must be finite (leave out rows without an embedding). "
                         f"Received: NaN/inf in row {bad + 1}")
    return vectors


def _normalised(vectors):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("approximate search needs faiss: pip install faiss-cpu (or "
                         "starqso[discovery]); --method exact works without it. Received: "
                         "no module faiss") from None
    return faiss


class NeighbourIndex:
    """k-nearest-neighbour search over a fixed set of vectors.

    Args:
        vectors: (N, d) finite vectors.
        metric: ``"euclidean"`` or ``"cosine"`` (distances 1 - cos).
        method: ``"exact"``, ``"hnsw"`` (faiss ``IndexHNSWFlat``) or ``"auto"`` (HNSW from
            ``exact_limit`` rows).
        exact_limit: see ``method``.
        hnsw_m: graph degree of HNSW.
        ef_construction, ef_search: HNSW's build and search beam widths (larger: better
            recall, slower).
        seed: faiss' random seed for the graph levels.

    Example:
        >>> index = NeighbourIndex(np.random.rand(100, 8))
        >>> distances, rows = index.query(np.random.rand(2, 8), 5)
        >>> rows.shape
        (2, 5)
    """

    def __init__(self, vectors, metric="euclidean", method="auto", exact_limit=200_000,
                 hnsw_m=32, ef_construction=80, ef_search=128, seed=0):
        if metric not in METRICS:
            raise InputError(f"metric must be one of {', '.join(METRICS)}. Received: {metric}")
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}. Received: {method}")
        vectors = _matrix(vectors)
        self.metric = metric
        self.rows, self.dim = vectors.shape
        if method == "auto":
            method = "hnsw" if self.rows >= exact_limit else "exact"
        self.method = method
        self._vectors = _normalised(vectors) if metric == "cosine" else vectors
        self._index = None
        if method == "hnsw":
            faiss = _faiss()
            index = faiss.IndexHNSWFlat(self.dim, int(hnsw_m))
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            index.add(self._vectors)
            self._index = index
            self._vectors = None  # the index holds them

    def _distances(self, squared):
        squared = np.maximum(squared, 0.0)
        if self.metric == "cosine":
            return squared / 2.0  # |a - b|^2 = 2 - 2 cos for unit vectors
        return np.sqrt(squared)

    def query(self, queries, k, exclude_self=False):
        """The ``k`` nearest rows of each query, nearest first.

        Args:
            queries: (Q, d) vectors.
            k: neighbours per query, 1 <= k <= rows (- 1 with ``exclude_self``).
            exclude_self: the queries are this index's own rows 0..Q-1 (in order): leave each
                row out of its own answer.

        Returns:
            ``(distances, rows)``: float64 (Q, k) and int64 (Q, k).
        """
        queries = _matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise InputError(f"queries must have {self.dim} numbers per row like the index. "
                             f"Received: {queries.shape[1]}")
        limit = self.rows - bool(exclude_self)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
            raise InputError(f"k must be between 1 and {limit} (the rows searched). "
                             f"Received: {k}")
        if self.metric == "cosine":
            queries = _normalised(queries)
        wanted = int(k) + bool(exclude_self)
        if self._index is not None:
            squared, found = self._index.search(queries, wanted)
            squared = squared.astype(np.float64)
        else:
            squared, found = self._exact(queries, wanted)
        if exclude_self:
            keep = np.empty((len(queries), k), np.int64)
            dist = np.empty((len(queries), k))
            for row in range(len(queries)):
                mask = found[row] != row
                keep[row] = found[row][mask][:k]
                dist[row] = squared[row][mask][:k]
            found, squared = keep, dist
        return self._distances(squared), found.astype(np.int64)

    def _exact(self, queries, k):
        base = self._vectors
        base_norms = np.einsum("ij,ij->i", base, base)
        distances = np.empty((len(queries), k))
        found = np.empty((len(queries), k), np.int64)
        # Blocks of queries small enough that their distance matrix stays near 800 MB.
        step = int(max(1, min(_BLOCK, 2e8 // max(len(base), 1))))
        for start in range(0, len(queries), step):
            block = queries[start:start + step]
            squared = (np.einsum("ij,ij->i", block, block)[:, None] + base_norms[None, :]
                       - 2.0 * block @ base.T)
            part = np.argpartition(squared, k - 1, axis=1)[:, :k] if k < len(base) else \
                np.tile(np.arange(len(base)), (len(block), 1))
            values = np.take_along_axis(squared, part, axis=1)
            order = np.argsort(values, axis=1, kind="stable")
            found[start:start + len(block)] = np.take_along_axis(part, order, axis=1)
            distances[start:start + len(block)] = np.take_along_axis(values, order, axis=1)
        return distances, found

    def save(self, path):
        """Write an HNSW index to ``path`` (atomically), to load instead of rebuilding."""
        if self._index is None:
            raise ValueError("only an HNSW index is saved; an exact one is rebuilt at once")
        from starqso.atomic import write_bytes_atomically

        faiss = _faiss()
        header = np.array([self.rows, self.dim, METRICS.index(self.metric)], np.int64)
        payload = header.tobytes() + faiss.serialize_index(self._index).tobytes()
        write_bytes_atomically(path, payload)

    @classmethod
    def load(cls, path):
        """An HNSW index written by :meth:`save`."""
        faiss = _faiss()
        data = pathlib.Path(path).read_bytes()
        rows, dim, metric = np.frombuffer(data[:24], np.int64)
        index = cls.__new__(cls)
        index.rows, index.dim, index.metric = int(rows), int(dim), METRICS[int(metric)]
        index.method, index._vectors = "hnsw", None
        index._index = faiss.deserialize_index(np.frombuffer(data[24:], np.uint8))
        if index._index.ntotal != index.rows or index._index.d != index.dim:
            raise ValueError(f"the HNSW index file {path} is inconsistent")
        return index


def outlier_scores(reference, vectors, k=10, exclude_self=False):
    """How unusual each vector is among ``reference``: ~1 typical, larger unusual.

    The distance to the ``k``-th nearest reference row, divided by the median of the same
    distance among the reference rows themselves (each left out of its own neighbours).

    Args:
        reference: (M, d) embeddings of the training objects.
        vectors: (N, d) embeddings to score.
        k: the neighbour whose distance counts (at most M - 1).
        exclude_self: ``vectors`` are ``reference`` (rows in order): leave each out.

    Returns:
        float64 (N,) scores.

    Example:
        >>> reference = np.random.default_rng(0).normal(size=(500, 4))
        >>> outlier_scores(reference, np.full((1, 4), 10.0))[0] > 5
        True
    """
    reference = _matrix(reference, "reference")
    if not 1 <= k < len(reference):
        raise InputError(f"k must be between 1 and {len(reference) - 1} (the reference rows "
                         f"- 1). Received: {k}")
    index = NeighbourIndex(reference, method="exact")
    own, _ = index.query(reference, k, exclude_self=True)
    scale = float(np.median(own[:, -1]))
    distances, _ = index.query(vectors, k, exclude_self=exclude_self)
    return distances[:, -1] / max(scale, 1e-12)


def _retrieval(vectors, labels, k=None):
    vectors = _matrix(vectors)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(vectors):
        raise InputError(f"labels must have one entry per vector ({len(vectors)}). Received: "
                         f"{len(labels)}")
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    return vectors, codes, counts


def average_precision_at_r(vectors, labels, metric="euclidean"):
    """MAP@R, leave-one-out: for each row, R = the other rows of its class; the mean over the
    first R neighbours of (precision at rank i if neighbour i is of the class, else 0).

    Rows whose class has no other member are skipped. 1.0 means every class is retrieved
    before any other; a random embedding scores about the class fraction.

    Returns:
        float.

    Example:
        >>> vectors = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> average_precision_at_r(vectors, [0, 0, 1, 1])
        1.0
    """
    vectors, codes, counts = _retrieval(vectors, labels)
    index = NeighbourIndex(vectors, metric=metric, method="exact")
    r_max = int(counts.max()) - 1
    if r_max < 1:
        raise InputError("MAP@R needs a class with at least two rows. Received: all "
                         "classes single")
    scores = []
    for start in range(0, len(vectors), _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, len(vectors)))
        found = _neighbours_excluding(index, vectors, rows, r_max)
        for row, neighbours in zip(rows, found):
            r = counts[codes[row]] - 1
            if r < 1:
                continue
            hits = codes[neighbours[:r]] == codes[row]
            precision = np.cumsum(hits) / np.arange(1, r + 1)
            scores.append(float(np.sum(precision * hits) / r))
    return float(np.mean(scores))


def _neighbours_excluding(index, vectors, rows, k):
    """The k nearest other rows of ``rows`` (leave-one-out), via the exact index."""
    _, found = index._exact(vectors[rows], min(k + 1, index.rows))
    result = np.empty((len(rows), k), np.int64)
    for i, row in enumerate(rows):
        others = found[i][found[i] != row]
        result[i] = others[:k]
    return result


def precision_at_k(vectors, labels, k=10, metric="euclidean"):
    """Precision@k, leave-one-out: the fraction of each row's k nearest other rows that share
    its class, averaged over rows.

    Example:
        >>> precision_at_k(np.array([[0.0], [0.1], [5.0], [5.1]]), [0, 0, 1, 1], k=1)
        1.0
    """
    vectors, codes, _ = _retrieval(vectors, labels)
    if not 1 <= k < len(vectors):
        raise InputError(f"k must be between 1 and {len(vectors) - 1}. Received: {k}")
    index = NeighbourIndex(vectors, metric=metric, method="exact")
    hits = []
    for start in range(0, len(vectors), _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, len(vectors)))
        found = _neighbours_excluding(index, vectors, rows, k)
        hits.append((codes[found] == codes[rows][:, None]).mean(axis=1))
    return float(np.mean(np.concatenate(hits)))


@dataclasses.dataclass
class Clusters:
    """What :func:`voting_clusters` gives.

    Attributes:
        labels: int64 (N,) cluster of each row (0 .. n_clusters - 1, by decreasing size).
        agreement: float64 (N,) fraction of the bags whose (aligned) cluster is the vote.
        n_clusters: number of clusters.
        n_components: PCA components kept.
        explained_variance: their total explained variance fraction.
        projection: float32 (N, 2) the first two PCA components, for plots.
        silhouette: {k: silhouette score} when k was chosen automatically, else None.
    """

    labels: np.ndarray
    agreement: np.ndarray
    n_clusters: int
    n_components: int
    explained_variance: float
    projection: np.ndarray
    silhouette: dict | None


def _kmeans(k, seed, rows):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if rows > 50_000:
        return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(k, random_state=seed, n_init=3)


def voting_clusters(vectors, n_clusters=None, n_bags=25, sample_fraction=0.8,
                    pca_variance=0.95, max_components=50, seed=0, k_range=range(2, 13)):
    """PCA + bagged k-means voting: clusters with a per-row agreement score.

    The vectors are standardised and reduced by PCA to the components holding
    ``pca_variance`` of the variance (at most ``max_components``). Each of ``n_bags`` k-means
    runs is fitted on a bootstrap sample (``sample_fraction`` of the rows, with replacement)
    and assigns every row; each bag's cluster numbers are matched to the first bag's by the
    Hungarian algorithm on their contingency table, and each row takes its majority cluster.

    Args:
        vectors: (N, d) finite embeddings.
        n_clusters: k; None picks the best silhouette over ``k_range`` (on <= 5,000 rows).
        n_bags: k-means runs that vote.
        sample_fraction: bootstrap sample size, as a fraction of N.
        pca_variance, max_components: the PCA.
        seed: random seed (the result is deterministic for a seed).
        k_range: the k tried when ``n_clusters`` is None.

    Returns:
        :class:`Clusters`.

    Example:
        >>> result = voting_clusters(np.random.rand(300, 8), n_clusters=3, n_bags=5)
        >>> result.labels.shape, result.n_clusters
        ((300,), 3)
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    vectors = _matrix(vectors).astype(np.float64)
    rows = len(vectors)
    if n_bags < 1:
        raise InputError(f"n_bags must be at least 1. Received: {n_bags}")
    if n_clusters is not None and not 2 <= n_clusters < rows:
        raise InputError(f"the number of clusters must be between 2 and {rows - 1} (the rows "
                         f"- 1). Received: {n_clusters}")
    rng = np.random.default_rng(seed)
    spread = vectors.std(axis=0)
    standard = (vectors - vectors.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    pca = PCA(n_components=min(max_components, standard.shape[1], rows), random_state=seed)
    reduced = pca.fit_transform(standard)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    components = int(min(len(cumulative), np.searchsorted(cumulative, pca_variance) + 1))
    components = max(components, min(2, len(cumulative)))
    projection = reduced[:, :2].astype(np.float32)
    if projection.shape[1] < 2:
        projection = np.column_stack([projection, np.zeros(rows, np.float32)])
    reduced = reduced[:, :components]
    silhouette = None
    if n_clusters is None:
        sample = rng.choice(rows, min(rows, 5000), replace=False)
        silhouette = {}
        for k in k_range:
            if not 2 <= k < len(sample):
                continue
            assigned = _kmeans(k, seed, len(sample)).fit_predict(reduced[sample])
            if len(np.unique(assigned)) > 1:
                silhouette[int(k)] = float(silhouette_score(reduced[sample], assigned))
        if not silhouette:
            raise InputError(f"no number of clusters in {list(k_range)} fits {rows} rows. "
                             f"Received: {rows} rows")
        n_clusters = max(silhouette, key=silhouette.get)
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
    # Number the clusters by decreasing size, so the numbering does not depend on k-means' own.
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    renumber = np.empty(n_clusters, np.int64)
    renumber[order] = np.arange(n_clusters)
    return Clusters(renumber[labels], agreement.astype(np.float64), int(n_clusters),
                    components, float(cumulative[components - 1]), projection, silhouette)


def cluster_purity(clusters, labels):
    """Weighted purity: the fraction of rows in their cluster's majority label.

    Rows labelled ``""``, ``None`` or -1 (unknown) are left out.

    Example:
        >>> cluster_purity([0, 0, 1, 1], ["STAR", "STAR", "QSO", "STAR"])
        0.75
    """
    clusters = np.asarray(clusters).reshape(-1)
    labels = np.asarray(labels, dtype=object).reshape(-1)
    known = np.array([value not in ("", None, -1) and not (isinstance(value, float)
                                                         and np.isnan(value))
                      for value in labels], bool)
    if not known.any():
        return float("nan")
    clusters, labels = clusters[known], labels[known].astype(str)
    total = 0
    for cluster in np.unique(clusters):
        _, counts = np.unique(labels[clusters == cluster], return_counts=True)
        total += counts.max()
    return float(total / len(labels))


def plot_clusters(projection, clusters, labels, path, title="", max_points=50_000, seed=0):
    """Two panels of the PCA projection: coloured by cluster, and by label. Saved as PNG.

    Example:
        >>> plot_clusters(result.projection, result.labels, labels, "c.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from starqso.atomic import atomic_path

    projection = np.asarray(projection)
    clusters = np.asarray(clusters)
    labels = np.asarray(labels, dtype=str)
    shown = np.arange(len(projection))
    if len(shown) > max_points:
        shown = np.random.default_rng(seed).choice(shown, max_points, replace=False)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    size = 4 if len(shown) > 5000 else 12
    colours = plt.get_cmap("tab10" if clusters.max() < 10 else "tab20")
    for cluster in np.unique(clusters[shown]):
        mask = clusters[shown] == cluster
        axes[0].scatter(projection[shown][mask, 0], projection[shown][mask, 1], s=size,
                        color=colours(int(cluster) % colours.N), label=str(cluster),
                        linewidths=0)
    axes[0].set_title("by cluster")
    # Plain-text legend labels (legend_elements would write mathtext, which needs fonts).
    axes[0].legend(title="cluster", fontsize=7, loc="best")
    for name, colour in (("STAR", "tab:blue"), ("QSO", "tab:red"), ("", "0.6")):
        mask = labels[shown] == name
        if mask.any():
            axes[1].scatter(projection[shown][mask, 0], projection[shown][mask, 1], s=size,
                            c=colour, label=name or "no label", linewidths=0)
    axes[1].set_title("by label")
    axes[1].legend(fontsize=8, loc="best")
    for axis in axes:
        axis.set_xlabel("PC 1")
        axis.set_ylabel("PC 2")
    if title:
        figure.suptitle(title)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return str(path)
