"""Error rates of objects with and without quality caveats (the ``qflag`` bitmask)."""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.evaluation.metrics.checks import as_labels, as_probabilities, check_threshold
from starqso.evaluation.metrics.classification import classification_metrics
from starqso.evaluation.metrics.intervals import WILSON_CONFIDENCE, rate_with_interval
from starqso.schema import QFLAG_BITS


def _as_qflag(qflag) -> np.ndarray:
    qflag = np.asarray(qflag).ravel()
    kind = qflag.dtype.kind
    if kind in "iu":
        bad = (qflag < 0) | (qflag > np.iinfo(np.int64).max)
    elif kind == "f":
        bad = ~(np.isfinite(qflag) & (qflag >= 0) & (qflag == np.round(qflag))
                & (qflag < 2.0 ** 63))
    else:
        bad = np.ones(qflag.size, dtype=bool)
    if qflag.size and bad.any():
        raise InputError(f"qflag must hold non-negative whole numbers. Received: "
                         f"{qflag[bad][:3].tolist()}")
    return qflag.astype(np.int64)


def quality_metrics(labels, probabilities, qflag, threshold: float = 0.5, bits=None,
                    confidence: float = WILSON_CONFIDENCE) -> dict:
    """Error rates of objects with and without quality caveats (the ``qflag`` bitmask).

    An error is an object whose predicted label (QSO when p(QSO) >= threshold) is not its
    true label. ``unflagged`` are the objects with ``qflag == 0``, ``flagged`` the others;
    an object carrying several bits counts once in ``flagged`` and once under each bit. Bits
    not in ``bits`` still make an object flagged but are not itemised.

    Args:
        labels: True 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1].
        qflag: Non-negative integer bitmask per object (:data:`starqso.schema.QFLAG_BITS`).
        threshold: Decision threshold on p(QSO), as for the overall metrics.
        bits: ``{name: bit value}`` to itemise; None: :data:`starqso.schema.QFLAG_BITS`.
        confidence: Coverage of the Wilson intervals on the error rates.

    Returns:
        JSON-ready dict: ``unflagged`` and ``flagged``, each with ``objects``, ``n_qso``,
        ``n_star``, ``errors``, ``error_rate`` with ``error_rate_low`` / ``error_rate_high``
        (None without objects) and ``classification_metrics``
        (:func:`classification_metrics` of the subset at ``threshold``; None without objects,
        and its ``roc_auc`` / ``average_precision`` None where the subset lacks a class);
        ``bits``: for each name, ``{"bit", "objects", "errors", "error_rate",
        "error_rate_low", "error_rate_high"}`` of the objects carrying that bit; and
        ``confidence``.

    Raises:
        InputError: the arrays differ in length, a qflag is negative or not a whole number,
            labels are not 0/1, probabilities or the threshold are outside [0, 1].

    Example:
        >>> quality = quality_metrics([0, 1, 1], [0.2, 0.9, 0.3], [0, 0, 2])
        >>> quality["unflagged"]["errors"], quality["flagged"]["error_rate"]
        (0, 1.0)
        >>> quality["bits"]["REPAIRED"]["objects"]
        1
    """
    threshold = check_threshold(threshold)
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, labels.size)
    qflag = _as_qflag(qflag)
    if qflag.size != labels.size:
        raise InputError(f"labels and qflag must have the same length. Received: "
                         f"{labels.size} labels and {qflag.size} qflag values")
    bits = QFLAG_BITS if bits is None else bits
    wrong = (probabilities >= threshold).astype(np.int64) != labels

    def summary(mask) -> dict:
        objects, errors = int(mask.sum()), int(wrong[mask].sum())
        error_rate, low, high = rate_with_interval(errors, objects, confidence)
        return {"objects": objects, "errors": errors, "error_rate": error_rate,
                "error_rate_low": low, "error_rate_high": high}

    split = {}
    for name, mask in (("unflagged", qflag == 0), ("flagged", qflag != 0)):
        part = summary(mask)
        part["n_qso"] = int(labels[mask].sum())
        part["n_star"] = int(mask.sum() - labels[mask].sum())
        part["classification_metrics"] = (
            classification_metrics(labels[mask], probabilities[mask], threshold)
            if mask.any() else None)
        split[name] = part
    split["bits"] = {name: {"bit": int(bit), **summary((qflag & int(bit)) != 0)}
                     for name, bit in bits.items()}
    split["confidence"] = float(confidence)
    return split
