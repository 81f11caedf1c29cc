"""Headline metrics of p(QSO) against true labels, calibration bins, and metrics per bin.

:func:`classification_metrics` (accuracy, F1, ROC AUC, ECE, confusion matrix: scikit-learn,
imported when called), :func:`reliability_bins` and :func:`expected_calibration_error`, and
:func:`binned_metrics`: completeness, purity and F1 in bins of r magnitude or redshift.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.evaluation.metrics.checks import as_labels, as_probabilities
from starqso.evaluation.metrics.intervals import (
    WILSON_CONFIDENCE,
    rate_with_interval,
    wilson_interval,
)

ECE_BINS = 15


def _f1(true_positive: int, false_positive: int, false_negative: int) -> float | None:
    denominator = 2 * true_positive + false_positive + false_negative
    return None if denominator == 0 else 2 * true_positive / denominator


def reliability_bins(labels, probabilities, num_bins: int = ECE_BINS,
                     confidence: float = WILSON_CONFIDENCE) -> dict:
    """Per-bin calibration of p(QSO): equal-width bins on [0, 1].

    A probability on an inner edge goes to the bin above it (``0.5`` is in ``[0.5, ...)``),
    and ``1.0`` goes to the last bin.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1].
        num_bins: Number of equal-width bins.
        confidence: Coverage of the Wilson interval on each bin's QSO fraction.

    Returns:
        dict of NumPy arrays: ``edges`` (``num_bins + 1``), ``mean_probability`` and
        ``fraction_qso`` (NaN for empty bins), ``fraction_qso_low`` / ``fraction_qso_high``
        (its :func:`wilson_interval`, NaN for empty bins) and ``count`` (int), one value per
        bin.

    Example:
        >>> bins = reliability_bins([0, 1, 1], [0.2, 0.6, 0.9], num_bins=2)
        >>> bins["count"].tolist(), bins["fraction_qso"].tolist()
        ([1, 2], [0.0, 1.0])
    """
    if int(num_bins) < 1:
        raise InputError(f"num_bins must be at least 1. Received: {num_bins}")
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, labels.size)
    edges = np.linspace(0.0, 1.0, int(num_bins) + 1)
    # searchsorted on the same edges that are reported, rather than floor(p * num_bins), so
    # a probability printed as an edge value lands in the bin the edges say it does.
    index = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.bincount(index, probabilities, num_bins) / count
        qso = np.bincount(index, labels.astype(np.float64), num_bins)
        fraction_qso = qso / count
    low, high = wilson_interval(qso, count, confidence)
    return {"edges": edges, "mean_probability": mean_probability,
            "fraction_qso": fraction_qso, "fraction_qso_low": low, "fraction_qso_high": high,
            "count": count}


def expected_calibration_error(labels, probabilities, num_bins: int = ECE_BINS) -> float:
    """Expected calibration error of p(QSO), binary form.

    ``sum over bins of count / n * |fraction of QSOs - mean p(QSO)|`` with the bins of
    :func:`reliability_bins`. 0 is perfect calibration.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1].
        num_bins: Number of equal-width bins on [0, 1].

    Returns:
        The ECE as a float; 0.0 for no objects.

    Example:
        >>> round(expected_calibration_error([0, 1], [0.1, 0.7], num_bins=2), 3)
        0.2
    """
    bins = reliability_bins(labels, probabilities, num_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return 0.0
    filled = bins["count"] > 0
    gaps = np.abs(bins["fraction_qso"][filled] - bins["mean_probability"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / total)


def classification_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Headline metrics of p(QSO) against true labels; an object is QSO when p >= threshold.

    F1, precision and recall are 0.0 where they are undefined (scikit-learn's
    ``zero_division=0``), so averages over seeds stay numbers; :func:`binned_metrics` says
    None instead.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1]; shape (N,) or (N, 1).
        threshold: Decision threshold on p(QSO).

    Returns:
        dict of JSON-ready values: ``n``, ``accuracy``, ``error_rate``, ``f1_qso``, ``f1_star``,
        ``macro_f1``, ``precision_qso``, ``recall_qso``, ``roc_auc`` (None with only one class
        present), ``average_precision`` (None without QSOs), ``ece`` (15 bins) and
        ``confusion`` ``[[TN, FP], [FN, TP]]`` (rows: true STAR, QSO; columns: predicted).

    Example:
        >>> metrics = classification_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
        >>> metrics["accuracy"], metrics["confusion"]
        (0.5, [[1, 1], [1, 1]])
    """
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold must be within [0, 1]. Received: {threshold}")
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, labels.size)
    if labels.size == 0:
        raise InputError("classification metrics need at least one object. Received: none")
    predicted = (probabilities >= threshold).astype(np.int64)
    confusion = confusion_matrix(labels, predicted, labels=[0, 1])
    accuracy = float(np.trace(confusion) / labels.size)
    both_classes = bool(labels.min() == 0 and labels.max() == 1)
    f1_qso = float(f1_score(labels, predicted, pos_label=1, zero_division=0))
    f1_star = float(f1_score(labels, predicted, pos_label=0, zero_division=0))
    return {
        "n": int(labels.size),
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "f1_qso": f1_qso,
        "f1_star": f1_star,
        "macro_f1": (f1_qso + f1_star) / 2,
        "precision_qso": float(precision_score(labels, predicted, zero_division=0)),
        "recall_qso": float(recall_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "average_precision": (float(average_precision_score(labels, probabilities))
                              if labels.any() else None),
        "ece": expected_calibration_error(labels, probabilities),
        "confusion": confusion.astype(int).tolist(),
    }


def checked_bins(labels, predicted, values, edges):
    """``(values, edges)`` as float64 arrays for binning ``labels`` and ``predicted`` (the
    one check of :func:`binned_metrics` and the per-class bins of ``evaluate``).

    Raises:
        InputError: the three lengths differ, or ``edges`` are not at least two increasing
            numbers (one line).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if not np.size(labels) == np.size(predicted) == values.size:
        raise InputError(f"labels, predicted and values must have the same length. Received: "
                         f"{np.size(labels)}, {np.size(predicted)} and {values.size}")
    if edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise InputError(f"edges must be at least two increasing numbers. Received: "
                         f"{edges.tolist()}")
    return values, edges


def binned_metrics(labels, predicted, values, edges,
                   confidence: float = WILSON_CONFIDENCE) -> list[dict]:
    """QSO completeness, purity and F1 in bins of a quantity such as r magnitude or redshift.

    Objects whose value is NaN, or outside ``[edges[0], edges[-1])``, are in no bin.

    Args:
        labels: True 0 (STAR) / 1 (QSO) per object.
        predicted: Predicted 0 / 1 per object.
        values: The binned quantity per object (float, NaN = unknown).
        edges: Increasing bin edges; bin k is ``[edges[k], edges[k + 1])``.
        confidence: Coverage of the Wilson intervals (:func:`wilson_interval`).

    Returns:
        One dict per bin: ``lo``, ``hi``, ``n``, ``n_qso``, ``n_star``, ``called_qso``
        (predicted QSO), ``true_positive``, ``completeness`` (QSO recall; None without QSOs in
        the bin), ``purity`` (QSO precision; None when nothing in the bin is predicted QSO),
        ``completeness_low`` / ``completeness_high`` and ``purity_low`` / ``purity_high``
        (their Wilson intervals; None where the rate is), ``f1_qso`` (None without true or
        predicted QSOs) and ``macro_f1`` (None unless both classes are in the bin).

    Example:
        >>> bins = binned_metrics([0, 1, 1], [0, 1, 0], [17.5, 18.2, 18.9], [17, 18, 19])
        >>> bins[0]["completeness"], bins[1]["completeness"], bins[1]["purity"]
        (None, 0.5, 1.0)
    """
    labels = as_labels(labels)
    predicted = as_labels(predicted)
    values, edges = checked_bins(labels, predicted, values, edges)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        # NaN compares False both ways, so unknown values fall out here.
        inside = (values >= lo) & (values < hi)
        truth, guess = labels[inside], predicted[inside]
        true_positive = int(np.sum((truth == 1) & (guess == 1)))
        false_positive = int(np.sum((truth == 0) & (guess == 1)))
        false_negative = int(np.sum((truth == 1) & (guess == 0)))
        true_negative = int(np.sum((truth == 0) & (guess == 0)))
        n_qso, n_star = int(np.sum(truth == 1)), int(np.sum(truth == 0))
        f1_qso = _f1(true_positive, false_positive, false_negative)
        f1_star = _f1(true_negative, false_negative, false_positive)
        called_qso = true_positive + false_positive
        completeness, completeness_low, completeness_high = rate_with_interval(
            true_positive, n_qso, confidence)
        purity, purity_low, purity_high = rate_with_interval(true_positive, called_qso, confidence)
        rows.append({
            "lo": float(lo), "hi": float(hi), "n": int(truth.size),
            "n_qso": n_qso, "n_star": n_star,
            "called_qso": called_qso, "true_positive": true_positive,
            "completeness": completeness,
            "completeness_low": completeness_low, "completeness_high": completeness_high,
            "purity": purity, "purity_low": purity_low, "purity_high": purity_high,
            "f1_qso": f1_qso,
            "macro_f1": (f1_qso + f1_star) / 2 if n_qso and n_star else None,
        })
    return rows
