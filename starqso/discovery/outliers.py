"""Outlier scores of embeddings: :func:`outlier_scores`, the distance to the k-th nearest
reference row, over its typical value."""

from __future__ import annotations

import numpy as np

from starqso.discovery.checks import finite_matrix, whole_number
from starqso.discovery.index import NeighbourIndex
from starqso.errors import InputError

__all__ = ["outlier_scores"]


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
    reference = finite_matrix(reference, "reference")
    vectors = finite_matrix(vectors, "vectors")
    if vectors.shape[1] != reference.shape[1]:
        raise InputError(f"vectors must have as many numbers per row as the reference "
                         f"({reference.shape[1]}). Received: {vectors.shape[1]}")
    if len(reference) < 2:
        raise InputError(f"the reference needs at least 2 rows (each is compared with the "
                         f"others). Received: {len(reference)} row")
    k = whole_number(k, "k", 1, len(reference) - 1)
    index = NeighbourIndex(reference, metric=metric, method="exact")
    own, _ = index.query(reference, k, exclude_self=True)
    typical = own[:, -1]
    scale = float(np.median(typical))
    if not scale > 0:
        positive = typical[typical > 0]
        scale = float(np.median(positive)) if len(positive) else 1.0
    distances, _ = index.query(vectors, k, exclude_self=exclude_self)
    return distances[:, -1] / scale
