"""The input checks every metric shares: 0/1 labels, p(QSO) in [0, 1], a threshold.

Each raises :class:`~starqso.errors.InputError` with one line saying what was received.

Example:
    >>> from starqso.evaluation.metrics.checks import as_labels
    >>> as_labels([0, 1, 1]).tolist()
    [0, 1, 1]
"""

from __future__ import annotations

import math

import numpy as np

from starqso.errors import InputError


def plain_value(value):
    """A NumPy scalar as the Python number it holds, so that a message shows ``1.5``, not
    ``np.float64(1.5)``; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def as_labels(labels) -> np.ndarray:
    """``labels`` as an int64 array of 0 (STAR) / 1 (QSO); anything else is an InputError."""
    labels = np.asarray(labels).ravel()
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][:3].tolist()
        raise InputError(f"labels must be 0 (STAR) or 1 (QSO). Received: {bad}")
    return labels.astype(np.int64)


def as_probabilities(probabilities, size: int) -> np.ndarray:
    """``probabilities`` as a float64 array of ``size`` values within [0, 1], else an
    InputError."""
    # ravel: Keras models return (N, 1), and callers should not have to squeeze first.
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if probabilities.size != size:
        raise InputError(f"labels and probabilities must have the same length. Received: "
                         f"{size} labels and {probabilities.size} probabilities")
    outside = ~((probabilities >= 0.0) & (probabilities <= 1.0))
    if outside.any():
        raise InputError(f"probabilities must be finite and within [0, 1]. Received: "
                         f"{probabilities[outside][:3].tolist()}")
    return probabilities


def check_threshold(threshold) -> float:
    """``threshold`` as a float within [0, 1] (a bool is refused), else an InputError."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
        raise InputError(f"threshold must be within [0, 1]. Received: {plain_value(threshold)!r}")
    return value
