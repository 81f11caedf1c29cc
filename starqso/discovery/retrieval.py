"""Leave-one-out retrieval scores of embeddings: :func:`average_precision_at_r` (MAP@R) and
:func:`precision_at_k` (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check"),
exact and in blocks of query rows."""

from __future__ import annotations

import numpy as np

from starqso.discovery.checks import finite_matrix, whole_number
from starqso.discovery.index import NeighbourIndex
from starqso.errors import InputError

__all__ = ["average_precision_at_r", "precision_at_k"]


def _labelled(vectors, labels):
    vectors = finite_matrix(vectors)
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
    # depth < len(vectors), so this is the blocking of the index's own exact search.
    step = index.block_rows()
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
    step = index.block_rows()
    scores = np.zeros(len(vectors))
    for code in np.flatnonzero(counts > 1):
        members = np.flatnonzero(codes == code)
        others = np.flatnonzero(codes != code)
        r = len(members) - 1
        ranks_in_class = np.arange(1, r + 1)
        for start in range(0, len(members), step):
            rows = members[start:start + step]
            # Squared distances rank as distances do (and as 1 - cos for unit vectors).
            squared = index.squared_distances(vectors[rows])
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
    k = whole_number(k, "k", 1, len(vectors) - 1)
    scores = np.zeros(len(vectors))
    for rows, found in _leave_one_out(vectors, metric, k):
        scores[rows] = (codes[found] == codes[rows][:, None]).mean(axis=1)
    mean = float(scores.mean())
    if per_class:
        return mean, _class_means(scores, codes, classes, np.ones(len(scores), bool))
    return mean
