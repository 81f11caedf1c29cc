"""Metrics of STAR / QSO / GALAXY labels against per-class probabilities.

Class codes are those of :data:`starqso.schema.LABEL_CODES` (STAR 0, QSO 1, GALAXY 2), so
``THREE_CLASSES.names[code]`` names a code. A two-class model has no p(GALAXY): its column is
NaN, it never calls GALAXY, and the GALAXY ROC AUC and reliability are None.

Rates follow :func:`~starqso.evaluation.metrics.binned_metrics`: None where undefined (no true
member of a class, nothing called it), with Wilson intervals as ``_low`` / ``_high``.

Example:
    >>> from starqso.evaluation.metrics.multiclass import class_metrics
    >>> class_metrics([0, 1, 2], [0, 1, 1])["confusion"]
    [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.evaluation.metrics.checks import check_threshold
from starqso.evaluation.metrics.classification import (
    _f1,
    checked_bins,
    expected_calibration_error,
    reliability_bins,
)
from starqso.evaluation.metrics.intervals import WILSON_CONFIDENCE, rate_with_interval
from starqso.schema import THREE_CLASSES

#: The class names of the three-class metrics, in code order.
CLASS_ORDER = THREE_CLASSES.names
_QSO = CLASS_ORDER.index("QSO")
_STAR = CLASS_ORDER.index("STAR")
_GALAXY = CLASS_ORDER.index("GALAXY")


def _codes(values, what: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    allowed = np.arange(len(CLASS_ORDER))
    if values.size and not np.isin(values, allowed).all():
        bad = values[~np.isin(values, allowed)][:3].tolist()
        raise InputError(f"{what} must be class codes 0 (STAR), 1 (QSO) or 2 (GALAXY). "
                         f"Received: {bad}")
    return values.astype(np.int64)


def predicted_classes(p_star, p_qso, p_galaxy, threshold: float = 0.5) -> np.ndarray:
    """The class each object is called: QSO when p_qso >= threshold, else the more probable of
    STAR and GALAXY.

    The QSO threshold comes first so that "called QSO" is the same set of objects as in the
    two-class metrics (p_qso >= threshold) whatever the galaxy probability. A NaN p_galaxy
    (a two-class model) never wins, and a tie goes to STAR.

    Args:
        p_star: p(STAR) per object.
        p_qso: p(QSO) per object, finite.
        p_galaxy: p(GALAXY) per object, NaN for a two-class model.
        threshold: Decision threshold on p(QSO).

    Returns:
        int64 codes: 0 STAR, 1 QSO, 2 GALAXY.

    Example:
        >>> predicted_classes([0.5, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.5, 0.3]).tolist()
        [0, 2, 1]
    """
    threshold = check_threshold(threshold)
    p_star = np.asarray(p_star, dtype=np.float64).ravel()
    p_qso = np.asarray(p_qso, dtype=np.float64).ravel()
    p_galaxy = np.asarray(p_galaxy, dtype=np.float64).ravel()
    from starqso.probability import class_decisions

    return class_decisions(np.stack([p_star, p_qso, p_galaxy], axis=1),
                           threshold).astype(np.int64)


def _class_rates(confusion: np.ndarray, code: int, confidence: float) -> dict:
    true_positive = int(confusion[code, code])
    members = int(confusion[code].sum())
    called = int(confusion[:, code].sum())
    precision, precision_low, precision_high = rate_with_interval(true_positive, called,
                                                                  confidence)
    recall, recall_low, recall_high = rate_with_interval(true_positive, members, confidence)
    return {"n": members, "called": called, "true_positive": true_positive,
            "precision": precision, "precision_low": precision_low,
            "precision_high": precision_high, "recall": recall, "recall_low": recall_low,
            "recall_high": recall_high,
            "f1": _f1(true_positive, called - true_positive, members - true_positive)}


def _confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    size = len(CLASS_ORDER)
    return np.bincount(labels * size + predicted, minlength=size * size).reshape(size, size)


def _macro_f1(per_class: dict) -> float | None:
    # Over the classes present in the truth: a STAR/QSO truth catalogue is not marked down
    # for a GALAXY F1 it cannot have (its GALAXY answers already lower STAR/QSO recall).
    scores = [part["f1"] for part in per_class.values() if part["n"]]
    return float(np.mean(scores)) if scores else None


def class_metrics(labels, predicted, probabilities=None,
                  confidence: float = WILSON_CONFIDENCE) -> dict:
    """The 3x3 confusion matrix, per-class precision / recall / F1, macro-F1, one-vs-rest ROC
    AUC and expected calibration error.

    Args:
        labels: True class codes (0 STAR, 1 QSO, 2 GALAXY) per object.
        predicted: Predicted class codes per object (:func:`predicted_classes`).
        probabilities: Optional ``(N, 3)`` array of p(STAR), p(QSO), p(GALAXY) per object; a
            column that is NaN (p(GALAXY) of a two-class model) gives None for that class's
            ``roc_auc`` and ``ece``.
        confidence: Coverage of the Wilson intervals on precision and recall.

    Returns:
        JSON-ready dict: ``classes`` (names in code order), ``n``, ``accuracy``, ``confusion``
        (rows: true class, columns: predicted, in code order), ``per_class`` (name ->
        ``n``, ``called``, ``true_positive``, ``precision``, ``recall`` with ``_low`` /
        ``_high``, ``f1``, and with ``probabilities`` ``roc_auc`` and ``ece``; None where
        undefined) and ``macro_f1`` (mean F1 of the classes present in the truth).

    Example:
        >>> metrics = class_metrics([0, 0, 1, 2], [0, 2, 1, 2])
        >>> metrics["per_class"]["GALAXY"]["precision"], round(metrics["macro_f1"], 4)
        (0.5, 0.7778)
    """
    labels = _codes(labels, "labels")
    predicted = _codes(predicted, "predicted classes")
    if labels.size != predicted.size:
        raise InputError(f"labels and predicted classes must have the same length. Received: "
                         f"{labels.size} and {predicted.size}")
    if labels.size == 0:
        raise InputError("class metrics need at least one object. Received: none")
    confusion = _confusion(labels, predicted)
    per_class = {name: _class_rates(confusion, code, confidence)
                 for code, name in enumerate(CLASS_ORDER)}
    if probabilities is not None:
        from sklearn.metrics import roc_auc_score

        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(labels.size, -1)
        for code, name in enumerate(CLASS_ORDER):
            member = (labels == code).astype(np.int64)
            scores = probabilities[:, code]
            known = bool(np.isfinite(scores).all())
            both = bool(member.any() and not member.all())
            per_class[name]["roc_auc"] = (float(roc_auc_score(member, scores))
                                          if known and both else None)
            per_class[name]["ece"] = (expected_calibration_error(member, scores)
                                      if known else None)
    return {"classes": list(CLASS_ORDER), "n": int(labels.size),
            "accuracy": float(np.trace(confusion) / labels.size),
            "confusion": confusion.astype(int).tolist(), "per_class": per_class,
            "macro_f1": _macro_f1(per_class)}


def class_reliability(labels, probabilities, num_bins: int | None = None) -> dict:
    """:func:`~starqso.evaluation.metrics.reliability_bins` of each class, one-vs-rest.

    Args:
        labels: True class codes per object.
        probabilities: ``(N, 3)`` p(STAR), p(QSO), p(GALAXY) per object.
        num_bins: Bins on [0, 1]; default that of :func:`reliability_bins`.

    Returns:
        name -> dict of NumPy arrays ``edges``, ``mean_probability``, ``fraction`` (of the
        bin's objects that are of the class) with ``fraction_low`` / ``fraction_high``, and
        ``count``; None for a class whose probability is not known for every object.

    Example:
        >>> bins = class_reliability([0, 2], [[0.8, 0.1, 0.1], [0.3, 0.1, 0.6]], num_bins=2)
        >>> bins["GALAXY"]["fraction"].tolist()
        [0.0, 1.0]
    """
    labels = _codes(labels, "labels")
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(labels.size, -1)
    result = {}
    for code, name in enumerate(CLASS_ORDER):
        scores = probabilities[:, code]
        if not np.isfinite(scores).all():
            result[name] = None
            continue
        member = (labels == code).astype(np.int64)
        bins = (reliability_bins(member, scores) if num_bins is None
                else reliability_bins(member, scores, num_bins))
        result[name] = {key.replace("fraction_qso", "fraction"): value
                        for key, value in bins.items()}
    return result


def binned_class_metrics(labels, predicted, values, edges,
                         confidence: float = WILSON_CONFIDENCE) -> list[dict]:
    """Per-class precision, recall and F1 in bins of a quantity such as r or redshift.

    Binned like :func:`~starqso.evaluation.metrics.binned_metrics`: bin k is
    ``[edges[k], edges[k + 1])``, and NaN values are in no bin.

    Args:
        labels: True class codes per object.
        predicted: Predicted class codes per object.
        values: The binned quantity per object (NaN = unknown).
        edges: Increasing bin edges.
        confidence: Coverage of the Wilson intervals.

    Returns:
        One dict per bin: ``lo``, ``hi``, ``n``, ``macro_f1`` (over the classes in the bin;
        None for an empty bin) and ``classes`` (name -> the ``per_class`` entry of
        :func:`class_metrics`, without ROC AUC and ECE).

    Example:
        >>> bins = binned_class_metrics([0, 2, 2], [0, 2, 0], [17.5, 18.5, 18.6], [17, 18, 19])
        >>> bins[1]["classes"]["GALAXY"]["recall"], bins[1]["classes"]["STAR"]["precision"]
        (0.5, 0.0)
    """
    labels = _codes(labels, "labels")
    predicted = _codes(predicted, "predicted classes")
    values, edges = checked_bins(labels, predicted, values, edges)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        inside = (values >= lo) & (values < hi)
        confusion = _confusion(labels[inside], predicted[inside])
        per_class = {name: _class_rates(confusion, code, confidence)
                     for code, name in enumerate(CLASS_ORDER)}
        rows.append({"lo": float(lo), "hi": float(hi), "n": int(inside.sum()),
                     "macro_f1": _macro_f1(per_class), "classes": per_class})
    return rows
