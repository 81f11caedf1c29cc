"""Probabilities and log-odds in NumPy: the one logit and sigmoid of export and predict.

NumPy only (no TensorFlow), so the LiteRT path of ``predict`` can use it.
"""

from __future__ import annotations

import numpy as np

#: p(QSO) is clipped to [EPSILON, 1 - EPSILON] before the calibration's logit: float32 rounds
#: a confident p to exactly 0 or 1, whose logit is infinite.
EPSILON = 1e-7

__all__ = ["EPSILON", "logit", "sigmoid"]


def logit(p, epsilon: float = 0.0) -> np.ndarray:
    """``log(p / (1 - p))`` in float64; ``epsilon`` > 0 clips p to [epsilon, 1 - epsilon] first
    (without it, p = 0 or 1 gives -inf or +inf).

    Example:
        >>> float(logit([0.5])[0])
        0.0
    """
    p = np.asarray(p, np.float64)
    if epsilon:
        p = np.clip(p, epsilon, 1.0 - epsilon)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def sigmoid(x) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64, exact at +-inf and without overflow warnings.

    Example:
        >>> float(sigmoid([0.0])[0])
        0.5
    """
    # tanh form: no exp overflow for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))
