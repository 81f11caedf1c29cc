"""Classification metrics of p(QSO) against true labels: plain Python values, ready for JSON.

Every function takes 0 (STAR) / 1 (QSO) labels and p(QSO) arrays. Only NumPy is needed at
import time; :func:`classification_metrics` imports scikit-learn when it is called. Nothing
here imports matplotlib or TensorFlow.

Binomial rates (completeness, purity, a bin's QSO fraction, an error rate) come with a Wilson
score interval (:func:`wilson_interval`), by default at :data:`WILSON_CONFIDENCE` = 68.27 %,
the 1-sigma-equivalent band that the error bars of survey papers' completeness/purity figures
usually show. Interval keys are the rate's key plus ``_low`` / ``_high``.

Example:
    >>> from starqso.evaluation.metrics import classification_metrics
    >>> classification_metrics([0, 1], [0.2, 0.9])["accuracy"]
    1.0
"""

from __future__ import annotations

import csv
import io
import math
from statistics import NormalDist

import numpy as np

from starqso.errors import InputError
from starqso.schema import QFLAG_BITS

R_EDGES = (14.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
REDSHIFT_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)
ECE_BINS = 15
#: Default confidence of :func:`wilson_interval`: the probability mass within 1 sigma of a
#: normal distribution, so an interval reads like a paper figure's 1-sigma error bar.
WILSON_CONFIDENCE = 0.6827

#: Columns of :func:`selection_function` rows, in the order :func:`selection_csv_text`
#: writes them.
SELECTION_COLUMNS = ("axis", "low", "high", "objects", "qso", "called_qso", "true_positive",
                     "completeness", "completeness_low", "completeness_high",
                     "purity", "purity_low", "purity_high")


def _plain(value):
    """A NumPy scalar as the Python number it holds, so that a message shows ``1.5``, not
    ``np.float64(1.5)``; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


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
                         f"{_plain(confidence)!r}")
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


def _rate(successes: int, trials: int, confidence: float) -> tuple:
    """``(rate, low, high)`` as Python floats, all None without trials."""
    if not trials:
        return None, None, None
    low, high = wilson_interval(successes, trials, confidence)
    return successes / trials, float(low), float(high)


def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][:3].tolist()
        raise InputError(f"labels must be 0 (STAR) or 1 (QSO). Received: {bad}")
    return labels.astype(np.int64)


def _as_probabilities(probabilities, size: int) -> np.ndarray:
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
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, labels.size)
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
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, labels.size)
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
    labels = _as_labels(labels)
    predicted = _as_labels(predicted)
    values = np.asarray(values, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if not labels.size == predicted.size == values.size:
        raise InputError(f"labels, predicted and values must have the same length. Received: "
                         f"{labels.size}, {predicted.size} and {values.size}")
    if edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise InputError(f"edges must be at least two increasing numbers. Received: "
                         f"{edges.tolist()}")
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
        completeness, completeness_low, completeness_high = _rate(true_positive, n_qso,
                                                                  confidence)
        purity, purity_low, purity_high = _rate(true_positive, called_qso, confidence)
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


def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
        raise InputError(f"threshold must be within [0, 1]. Received: {_plain(threshold)!r}")
    return value


def selection_function(labels, probabilities, threshold: float, r=None, redshift=None,
                       r_edges=R_EDGES, redshift_edges=REDSHIFT_EDGES,
                       confidence: float = WILSON_CONFIDENCE) -> list[dict]:
    """QSO completeness and purity, with Wilson intervals, in bins of r and of redshift.

    The selection function of "p(QSO) >= threshold" as a survey paper tabulates it. On the
    ``r`` axis, completeness in a bin is the fraction of that bin's QSOs called QSO, and
    purity the fraction of that bin's objects called QSO that are QSOs. On the ``redshift``
    axis only completeness is given: stars sit at z ~ 0, so every star falls in the first
    redshift bin (or none, without a redshift) and a per-redshift purity would be the purity
    of the QSOs alone above it; ``purity`` and its interval are None there. The counts are
    those of :func:`binned_metrics`, which does the binning.

    Args:
        labels: True 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1].
        threshold: An object is called QSO when p(QSO) >= threshold.
        r: r magnitude per object (NaN = unknown), or None for no r axis.
        redshift: Redshift per object (NaN = unknown), or None for no redshift axis.
        r_edges: Increasing r bin edges; bin k is ``[edges[k], edges[k + 1])``.
        redshift_edges: Increasing redshift bin edges, same rule.
        confidence: Coverage of the Wilson intervals (default 1-sigma-equivalent).

    Returns:
        One dict per bin, r bins first, with the keys of :data:`SELECTION_COLUMNS`: ``axis``
        (``"r"`` or ``"redshift"``), ``low`` / ``high`` (bin edges), ``objects``, ``qso``,
        ``called_qso``, ``true_positive`` (counts in the bin), ``completeness`` and
        ``purity`` (None where undefined) with ``_low`` / ``_high`` interval bounds. An empty
        list when both ``r`` and ``redshift`` are None.

    Raises:
        InputError: labels are not 0/1, probabilities are outside [0, 1], the arrays differ
            in length, the threshold is outside [0, 1], or edges are not increasing.

    Example:
        >>> rows = selection_function([1, 1, 0, 1], [0.9, 0.2, 0.7, 0.8], 0.5,
        ...                           r=[17.5, 17.6, 17.7, 19.5], r_edges=(17, 18, 20))
        >>> [(row["qso"], row["true_positive"], row["called_qso"]) for row in rows]
        [(2, 1, 2), (1, 1, 1)]
        >>> rows[0]["completeness"], rows[0]["purity"]
        (0.5, 0.5)
    """
    threshold = _check_threshold(threshold)
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, labels.size)
    predicted = (probabilities >= threshold).astype(np.int64)
    rows = []
    for axis, values, edges in (("r", r, r_edges), ("redshift", redshift, redshift_edges)):
        if values is None:
            continue
        for part in binned_metrics(labels, predicted, values, edges, confidence):
            row = {"axis": axis, "low": part["lo"], "high": part["hi"], "objects": part["n"],
                   "qso": part["n_qso"], "called_qso": part["called_qso"],
                   "true_positive": part["true_positive"]}
            for key in ("completeness", "completeness_low", "completeness_high",
                        "purity", "purity_low", "purity_high"):
                row[key] = part[key] if axis == "r" or key.startswith("completeness") else None
            rows.append(row)
    return rows


def _with_interval(value, low, high) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def format_selection_markdown(rows: list[dict], confidence: float = WILSON_CONFIDENCE) -> str:
    """:func:`selection_function` rows as markdown tables, one per axis.

    Args:
        rows: Rows of :func:`selection_function`.
        confidence: The coverage the rows' intervals were computed with; only named in the
            heading lines.

    Returns:
        Markdown text: for each axis present, a heading line and a table with the bin,
        objects, QSOs, objects called QSO, completeness and purity, each rate written with
        its interval as ``0.912 [0.903, 0.920]`` and ``-`` where undefined; the redshift
        table has no purity column (see :func:`selection_function`). ``""`` for no rows.

    Example:
        >>> rows = selection_function([1, 0], [0.9, 0.1], 0.5, r=[17.5, 17.6],
        ...                           r_edges=(17, 18))
        >>> print(format_selection_markdown(rows))  # doctest: +NORMALIZE_WHITESPACE
        QSO selection function vs r magnitude ([low, high]: 68.27 % Wilson interval)
        <BLANKLINE>
        | r | objects | QSO | called QSO | completeness | purity |
        |---|---|---|---|---|---|
        | [17, 18) | 2 | 1 | 1 | 1.000 [0.500, 1.000] | 1.000 [0.500, 1.000] |
    """
    blocks = []
    for axis, title in (("r", "r magnitude"), ("redshift", "redshift")):
        part = [row for row in rows if row["axis"] == axis]
        if not part:
            continue
        with_purity = axis == "r"
        header = [axis, "objects", "QSO", "called QSO", "completeness"]
        header += ["purity"] if with_purity else []
        lines = [f"QSO selection function vs {title} ([low, high]: {100 * confidence:.4g} % "
                 f"Wilson interval)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in part:
            cells = [f"[{row['low']:g}, {row['high']:g})", f"{row['objects']}", f"{row['qso']}",
                     f"{row['called_qso']}",
                     _with_interval(row["completeness"], row["completeness_low"],
                                    row["completeness_high"])]
            if with_purity:
                cells.append(_with_interval(row["purity"], row["purity_low"],
                                            row["purity_high"]))
            lines.append("| " + " | ".join(cells) + " |")
        if not with_purity:
            lines += ["", "Purity per redshift bin is not given: stars sit at z ~ 0."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def selection_csv_text(rows: list[dict]) -> str:
    """:func:`selection_function` rows as CSV text: a header line, then one line per bin.

    Args:
        rows: Rows of :func:`selection_function`.

    Returns:
        CSV text with the columns of :data:`SELECTION_COLUMNS`, ``\\n`` line ends, numbers
        at full precision and blank cells where a value is None; the header alone for no
        rows.

    Example:
        >>> rows = selection_function([1, 0], [0.9, 0.1], 0.5, r=[17.5, 17.6],
        ...                           r_edges=(17, 18))
        >>> print(selection_csv_text(rows).splitlines()[1])  # doctest: +ELLIPSIS
        r,17.0,18.0,2,1,1,1,1.0,0.4999...,1.0,1.0,0.4999...,1.0
    """
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(SELECTION_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(key) is None else
                         repr(row[key]) if isinstance(row[key], float) else row[key]
                         for key in SELECTION_COLUMNS])
    return stream.getvalue()


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
    threshold = _check_threshold(threshold)
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, labels.size)
    qflag = _as_qflag(qflag)
    if qflag.size != labels.size:
        raise InputError(f"labels and qflag must have the same length. Received: "
                         f"{labels.size} labels and {qflag.size} qflag values")
    bits = QFLAG_BITS if bits is None else bits
    wrong = (probabilities >= threshold).astype(np.int64) != labels

    def summary(mask) -> dict:
        objects, errors = int(mask.sum()), int(wrong[mask].sum())
        error_rate, low, high = _rate(errors, objects, confidence)
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
