"""Unsupervised classes of embeddings: :func:`voting_clusters`, the seed paper's
unsupervised classification (ConvNeXt + PCA + bagging-based multi-clustering voting, 2024) on
these embeddings, and :func:`cluster_purity`. scikit-learn and SciPy are imported only by the
functions that need them."""

from __future__ import annotations

import dataclasses

import numpy as np

from starqso.discovery.checks import finite_matrix, whole_number
from starqso.errors import InputError

__all__ = ["Clusters", "cluster_purity", "voting_clusters"]

# Above this many rows k-means is MiniBatchKMeans, so 10^6 rows cluster in minutes.
_MINIBATCH_ROWS = 50_000
_SILHOUETTE_ROWS = 5000


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

    vectors = finite_matrix(vectors).astype(np.float64)
    rows = len(vectors)
    n_bags = whole_number(n_bags, "n_bags", 1)
    max_components = whole_number(max_components, "max_components", 1)
    sample_fraction = _fraction(sample_fraction, "sample_fraction")
    pca_variance = _fraction(pca_variance, "pca_variance")
    if n_clusters is not None:
        n_clusters = whole_number(n_clusters, "n_clusters", 2)
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


def known_labels(labels):
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
    text, known = known_labels(np.asarray(labels).reshape(-1))
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

