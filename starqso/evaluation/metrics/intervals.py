"""Wilson score intervals on binomial rates (completeness, purity, error rates).

By default at :data:`WILSON_CONFIDENCE` = 68.27 %, the 1-sigma-equivalent band that the error
bars of survey papers' completeness/purity figures usually show.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from starqso.errors import InputError
from starqso.evaluation.metrics.checks import plain_value

#: Default confidence of :func:`wilson_interval`: the probability mass within 1 sigma of a
#: normal distribution, so an interval reads like a paper figure's 1-sigma error bar.
WILSON_CONFIDENCE = 0.6827


def wilson_interval(successes, trials, confidence: float = WILSON_CONFIDENCE):
    """Wilson score interval of a binomial rate ``successes / trials``, vectorised.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and does not collapse to zero
    width at 0 or ``trials`` successes, which matters for the small bins of a completeness or
    purity curve. The default confidence, 0.6827, is the 1-sigma-equivalent interval, like
    the error bars of survey papers' figures; pass 0.95 for a 95 % interval.

    Args:
        successes: Number of successes, a non-negative integer or array of them.
        trials: Number of trials, same shape (or broadcastable); ``successes <= trials``.
        confidence: Two-sided coverage in (0, 1).

    Returns:
        ``(low, high)``: float64 arrays of the broadcast shape (NumPy scalars for scalar
        input), NaN where ``trials`` is 0.

    Raises:
        InputError: a count is negative, not a whole number, or ``successes > trials``, or
            ``confidence`` is outside (0, 1).

    Example:
        >>> low, high = wilson_interval(5, 10, confidence=0.95)
        >>> round(float(low), 4), round(float(high), 4)
        (0.2366, 0.7634)
    """
    try:
        coverage = float(confidence)
    except (TypeError, ValueError):
        coverage = math.nan
    if isinstance(confidence, bool) or not 0.0 < coverage < 1.0:
        raise InputError(f"confidence must be within (0, 1). Received: "
                         f"{plain_value(confidence)!r}")
    try:
        successes = np.asarray(successes, dtype=np.float64)
        trials = np.asarray(trials, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"successes and trials must be whole numbers. Received: "
                         f"{str(successes)[:50]!r} and {str(trials)[:50]!r}") from None
    try:
        successes, trials = np.broadcast_arrays(successes, trials)
    except ValueError:
        raise InputError(f"successes and trials must have the same shape. Received: shapes "
                         f"{successes.shape} and {trials.shape}") from None
    counts = np.concatenate([successes.ravel(), trials.ravel()])
    bad = ~(np.isfinite(counts) & (counts >= 0) & (counts == np.round(counts)))
    if bad.any():
        raise InputError(f"successes and trials must be non-negative whole numbers. "
                         f"Received: {counts[bad][:3].tolist()}")
    if np.any(successes > trials):
        where = np.flatnonzero((successes > trials).ravel())[0]
        raise InputError(f"successes must not exceed trials. Received: "
                         f"{successes.ravel()[where]:g} of {trials.ravel()[where]:g}")
    z = NormalDist().inv_cdf(0.5 + coverage / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = successes / trials
        z2n = z * z / trials
        centre = (rate + z2n / 2) / (1 + z2n)
        half = z / (1 + z2n) * np.sqrt(rate * (1 - rate) / trials + z2n / (4 * trials))
    low = np.where(successes == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(successes == trials, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = trials == 0
    low, high = np.where(empty, np.nan, low), np.where(empty, np.nan, high)
    return low[()], high[()]


def rate_with_interval(successes: int, trials: int, confidence: float) -> tuple:
    """``(rate, low, high)`` as Python floats, all None without trials."""
    if not trials:
        return None, None, None
    low, high = wilson_interval(successes, trials, confidence)
    return successes / trials, float(low), float(high)
