"""Discovery on embeddings: :mod:`~starqso.discovery.embed` (``starqso embed``: the
model's embeddings of every row), :mod:`~starqso.discovery.index` (neighbour index,
outlier scores, MAP@R, clustering, plots; NumPy/faiss only) and
:mod:`~starqso.discovery.explore` (``starqso similar`` / ``starqso cluster``).

The index's public names are re-exported here; ``embed`` and ``explore`` are
imported on demand."""

from starqso.discovery.index import (
    EXACT_LIMIT,
    METHODS,
    METRICS,
    Clusters,
    NeighbourIndex,
    average_precision_at_r,
    cluster_purity,
    outlier_scores,
    plot_clusters,
    precision_at_k,
    voting_clusters,
)

__all__ = [
    "Clusters",
    "EXACT_LIMIT",
    "METHODS",
    "METRICS",
    "NeighbourIndex",
    "average_precision_at_r",
    "cluster_purity",
    "outlier_scores",
    "plot_clusters",
    "precision_at_k",
    "voting_clusters",
]
