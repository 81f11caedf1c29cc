"""Score ``starqso predict`` output against a labelled catalogue (NumPy, scikit-learn, matplotlib).

The metric functions take 0 (STAR) / 1 (QSO) labels and p(QSO) arrays and return plain Python
values, so their results go straight into JSON. :func:`evaluate_predictions` is the whole
``starqso evaluate`` command: it joins a predictions file to a truth catalogue by ``id``, says
which rows could not be scored and why, and writes ``metrics.json`` and PNG plots.

Nothing here imports TensorFlow: a laptop without it can score predictions made elsewhere.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings

import numpy as np

from starqso.errors import InputError
from starqso.io._fits import write_bytes_atomically

PLOT_FILES = ("confusion_matrix.png", "roc.png", "precision_recall.png",
              "completeness_purity_r.png", "completeness_purity_redshift.png", "reliability.png")
R_EDGES = (14.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
REDSHIFT_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)
ECE_BINS = 15
# How many ids of each kind of skipped row the report lists; the counts are always complete.
SHOWN_IDS = 5


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


def reliability_bins(labels, probabilities, num_bins: int = ECE_BINS) -> dict:
    """Per-bin calibration of p(QSO): equal-width bins on [0, 1].

    A probability on an inner edge goes to the bin above it (``0.5`` is in ``[0.5, ...)``),
    and ``1.0`` goes to the last bin.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: p(QSO) per object, within [0, 1].
        num_bins: Number of equal-width bins.

    Returns:
        dict of NumPy arrays: ``edges`` (``num_bins + 1``), ``mean_probability`` and
        ``fraction_qso`` (NaN for empty bins) and ``count`` (int), one value per bin.

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
        fraction_qso = np.bincount(index, labels.astype(np.float64), num_bins) / count
    return {"edges": edges, "mean_probability": mean_probability,
            "fraction_qso": fraction_qso, "count": count}


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


def binned_metrics(labels, predicted, values, edges) -> list[dict]:
    """QSO completeness, purity and F1 in bins of a quantity such as r magnitude or redshift.

    Objects whose value is NaN, or outside ``[edges[0], edges[-1])``, are in no bin.

    Args:
        labels: True 0 (STAR) / 1 (QSO) per object.
        predicted: Predicted 0 / 1 per object.
        values: The binned quantity per object (float, NaN = unknown).
        edges: Increasing bin edges; bin k is ``[edges[k], edges[k + 1])``.

    Returns:
        One dict per bin: ``lo``, ``hi``, ``n``, ``n_qso``, ``n_star``, ``completeness`` (QSO
        recall; None without QSOs in the bin), ``purity`` (QSO precision; None when nothing
        in the bin is predicted QSO), ``f1_qso`` (None without true or predicted QSOs) and
        ``macro_f1`` (None unless both classes are in the bin).

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
    for lo, hi in zip(edges[:-1], edges[1:]):
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
        rows.append({
            "lo": float(lo), "hi": float(hi), "n": int(truth.size),
            "n_qso": n_qso, "n_star": n_star,
            "completeness": true_positive / n_qso if n_qso else None,
            "purity": (true_positive / (true_positive + false_positive)
                       if true_positive + false_positive else None),
            "f1_qso": f1_qso,
            "macro_f1": (f1_qso + f1_star) / 2 if n_qso and n_star else None,
        })
    return rows


def _parse_probabilities(column, path: str) -> np.ndarray:
    """p_qso as floats (NaN where blank), whatever type the catalogue reader gave it."""
    if getattr(column, "dtype", None) is not None and column.dtype.kind in "fiu":
        # FITS predictions: already numbers, NaN for flagged rows.
        values = np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    else:
        # CSV predictions: read_catalog keeps unknown columns as text.
        values = np.full(len(column), np.nan)
        for row, cell in enumerate(column, start=1):
            text = cell.decode("utf-8", "replace") if isinstance(cell, bytes) else str(cell)
            text = text.strip()
            if not text:
                continue
            try:
                values[row - 1] = float(text)
            except ValueError:
                raise InputError(f"predictions column 'p_qso' must hold numbers (blank for "
                                 f"flagged rows). Received: {text!r} at row {row} in file "
                                 f"{path}") from None
    bad = np.flatnonzero(~np.isnan(values) & ~((values >= 0.0) & (values <= 1.0)))
    if bad.size:
        raise InputError(f"predictions column 'p_qso' must be within [0, 1]. Received: "
                         f"{values[bad[0]]!r} at row {bad[0] + 1} in file {path}")
    return values


def _texts(table, name: str) -> list[str]:
    if name not in table.colnames:
        return [""] * len(table)
    return [(cell.decode("utf-8", "replace") if isinstance(cell, bytes) else str(cell)).strip()
            for cell in table[name]]


def _skipped(ids: list[str], reasons: list[str] | None = None) -> dict:
    part = {"count": len(ids), "first_ids": ids[:SHOWN_IDS]}
    if reasons is not None:
        part["first_reasons"] = reasons[:SHOWN_IDS]
    return part


def join_predictions(predictions_path, truth_path) -> tuple[dict, dict]:
    """Match predictions to truth by ``id`` and keep the rows that can be scored.

    Every row is counted once, in the first category that applies: ``missing`` (truth id
    without prediction) or ``extra`` (prediction id not in truth), then ``flagged``, then
    ``no_probability`` (blank p_qso without a flag), then ``unlabelled`` (blank truth label),
    else ``evaluated``. So ``matched = flagged + no_probability + unlabelled + evaluated``.

    Args:
        predictions_path: ``starqso predict`` output (CSV or FITS): ``id``, ``p_qso`` and
            optionally ``flag``; its ``label`` column is ignored (the threshold is re-applied).
        truth_path: Catalogue with ``id`` and ``label`` (STAR/QSO/blank), optionally ``r`` and
            ``redshift``.

    Returns:
        ``(rows, report)``: ``rows`` holds arrays ``ids``, ``labels`` (0/1),
        ``probabilities``, ``r`` and ``redshift`` (NaN when unknown or absent) of the
        evaluated rows in truth order; ``report`` is the JSON-ready join summary.

    Example:
        >>> rows, report = join_predictions("predictions.csv", "truth.csv")  # doctest: +SKIP
        >>> report["evaluated"], report["missing"]["count"]  # doctest: +SKIP
        (9812, 3)
    """
    from starqso.io import read_catalog

    predictions = read_catalog(predictions_path, require=("id", "p_qso"))
    truth = read_catalog(truth_path, require=("id", "label"))
    probabilities = _parse_probabilities(predictions["p_qso"], predictions.meta["path"])
    flags = _texts(predictions, "flag")
    prediction_ids = _texts(predictions, "id")
    by_id = {identifier: row for row, identifier in enumerate(prediction_ids)}
    truth_ids = _texts(truth, "id")
    truth_set = set(truth_ids)
    labels = _texts(truth, "label")

    missing, flagged, flag_texts, no_probability, unlabelled, keep = [], [], [], [], [], []
    repaired, repair_texts = [], []
    for truth_row, identifier in enumerate(truth_ids):
        row = by_id.get(identifier)
        if row is None:
            missing.append(identifier)
        elif flags[row] and np.isnan(probabilities[row]):
            flagged.append(identifier)
            flag_texts.append(flags[row])
        elif np.isnan(probabilities[row]):
            no_probability.append(identifier)
        elif labels[truth_row] not in ("STAR", "QSO"):
            unlabelled.append(identifier)
        else:
            keep.append((truth_row, row))
            if flags[row]:
                # Classified after a repair (e.g. a few NaN pixels): scored, and counted.
                repaired.append(identifier)
                repair_texts.append(flags[row])
    extra = [identifier for identifier in prediction_ids if identifier not in truth_set]

    truth_rows = np.array([t for t, _ in keep], dtype=np.int64)
    prediction_rows = np.array([p for _, p in keep], dtype=np.int64)

    def truth_floats(name):
        if name not in truth.colnames:
            return np.full(truth_rows.size, np.nan)
        return np.asarray(truth[name], dtype=np.float64)[truth_rows]

    rows = {
        "ids": [truth_ids[t] for t in truth_rows],
        "labels": np.array([labels[t] == "QSO" for t in truth_rows], dtype=np.int64),
        "probabilities": probabilities[prediction_rows],
        "r": truth_floats("r"),
        "redshift": truth_floats("redshift"),
        "has_r": "r" in truth.colnames,
        "has_redshift": "redshift" in truth.colnames,
    }
    report = {
        "predictions": predictions.meta["path"],
        "truth": truth.meta["path"],
        "truth_rows": len(truth_ids),
        "prediction_rows": len(prediction_ids),
        "matched": len(truth_ids) - len(missing),
        "evaluated": len(keep),
        "missing": _skipped(missing),
        "extra": _skipped(extra),
        "flagged": _skipped(flagged, flag_texts),
        "repaired": _skipped(repaired, repair_texts),
        "no_probability": _skipped(no_probability),
        "unlabelled": _skipped(unlabelled),
    }
    return rows, report


def _json_ready(value):
    """NumPy values to Python ones and NaN to None, since JSON has no NaN."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save(figure, path: str) -> None:
    # Rendered in memory, then written by the catalogue writer's temp-file-and-rename, so a
    # reader never sees half a PNG and the umask applies as for a plain open().
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_bytes_atomically(path, buffer.getvalue(), overwrite=True)


def _new_figure(figsize=(5.0, 4.2)):
    # A bare Figure on an Agg canvas rather than pyplot + matplotlib.use("Agg"): no GUI is
    # needed, and a notebook's own backend and open figures are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _note(axes, text):
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, wrap=True)


def _plot_confusion(metrics, path):
    confusion = np.array(metrics["confusion"], dtype=np.float64)
    figure = _new_figure()
    axes = figure.add_subplot()
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    axes.imshow(confusion / totals, cmap="Blues", vmin=0, vmax=1)
    for true in range(2):
        for guess in range(2):
            share = confusion[true, guess] / totals[true, 0]
            axes.text(guess, true, f"{int(confusion[true, guess])}\n({share:.1%} of row)",
                      ha="center", va="center", color="white" if share > 0.5 else "black")
    axes.set_xticks([0, 1], ["STAR", "QSO"])
    axes.set_yticks([0, 1], ["STAR", "QSO"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"confusion matrix (n={metrics['n']}, threshold {metrics['threshold']:g})")
    _save(figure, path)


def _plot_roc(labels, probabilities, metrics, path):
    from sklearn.metrics import roc_curve

    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if metrics["roc_auc"] is None:
        _note(axes, "ROC undefined: only one class among the evaluated rows")
        axes.set_title("ROC")
    else:
        false_rate, true_rate, _ = roc_curve(labels, probabilities)
        axes.plot(false_rate, true_rate, color="C0")
        axes.set_title(f"ROC (AUC = {metrics['roc_auc']:.4f})")
    axes.set_xlabel("false positive rate (stars called QSO)")
    axes.set_ylabel("true positive rate (QSO completeness)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    _save(figure, path)


def _plot_precision_recall(labels, probabilities, metrics, path):
    from sklearn.metrics import precision_recall_curve

    figure = _new_figure()
    axes = figure.add_subplot()
    if metrics["average_precision"] is None:
        _note(axes, "precision-recall undefined: no QSO among the evaluated rows")
        axes.set_title("precision-recall")
    else:
        precision, recall, _ = precision_recall_curve(labels, probabilities)
        axes.step(recall, precision, where="post", color="C0")
        axes.axhline(labels.mean(), color="0.7", linestyle="--", linewidth=1,
                     label=f"chance (QSO fraction {labels.mean():.3f})")
        axes.plot(metrics["recall_qso"], metrics["precision_qso"], "o", color="C3",
                  label=f"threshold {metrics['threshold']:g}")
        axes.legend(loc="lower left")
        axes.set_title(f"precision-recall (AP = {metrics['average_precision']:.4f})")
    axes.set_xlabel("recall (QSO completeness)")
    axes.set_ylabel("precision (QSO purity)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    _save(figure, path)


def _plot_binned(bins, quantity, path, note=""):
    figure = _new_figure(figsize=(6.0, 4.2))
    axes = figure.add_subplot()
    centres = [(part["lo"] + part["hi"]) / 2 for part in bins]
    for key, label, color in (("completeness", "QSO completeness", "C0"),
                              ("purity", "QSO purity", "C1")):
        values = [np.nan if part[key] is None else part[key] for part in bins]
        axes.plot(centres, values, "o-", color=color, label=label)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel(quantity)
    axes.set_ylabel("fraction")
    # Object counts on a second axis: a dip in a bin of five objects means little.
    counts = axes.twinx()
    widths = [part["hi"] - part["lo"] for part in bins]
    counts.bar([part["lo"] for part in bins], [part["n_qso"] for part in bins], width=widths,
               align="edge", color="C0", alpha=0.12, label="QSOs per bin")
    counts.bar([part["lo"] for part in bins], [part["n_star"] for part in bins], width=widths,
               align="edge", color="C1", alpha=0.12, bottom=[part["n_qso"] for part in bins],
               label="stars per bin")
    counts.set_ylabel("objects per bin")
    axes.set_zorder(counts.get_zorder() + 1)
    axes.patch.set_visible(False)
    handles = axes.get_legend_handles_labels()
    extra = counts.get_legend_handles_labels()
    axes.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower left", fontsize=8)
    axes.set_title(f"QSO completeness and purity vs {quantity}" + (f"\n{note}" if note else ""),
                   fontsize=10)
    _save(figure, path)


def _plot_reliability(bins, ece, path):
    figure = _new_figure(figsize=(5.0, 5.2))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect")
    filled = bins["count"] > 0
    top.plot(bins["mean_probability"][filled], bins["fraction_qso"][filled], "o-", color="C0",
             label="model")
    top.set_ylabel("fraction of QSOs")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(f"reliability ({len(bins['count'])} bins, ECE = {ece:.4f})")
    edges = bins["edges"]
    bottom.bar(edges[:-1], bins["count"], width=np.diff(edges), align="edge", color="C0",
               alpha=0.6)
    bottom.set_yscale("symlog")
    bottom.set_xlabel("p(QSO)")
    bottom.set_ylabel("objects")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def evaluate_predictions(predictions_path, truth_path, out_dir, threshold: float = 0.5,
                         strict: bool = False) -> dict:
    """Score a predictions file against a truth catalogue; write metrics.json and plots.

    Writes into ``out_dir`` (created if needed; files replaced atomically): ``metrics.json``,
    ``confusion_matrix.png``, ``roc.png``, ``precision_recall.png``, ``reliability.png``,
    and ``completeness_purity_r.png`` / ``completeness_purity_redshift.png`` when the truth
    catalogue has ``r`` / ``redshift`` values for the evaluated rows.

    Args:
        predictions_path: ``starqso predict`` output, CSV or FITS (``id``, ``p_qso``, ``flag``).
        truth_path: Catalogue with ``id``, ``label`` and optionally ``r`` and ``redshift``.
        out_dir: Folder for the outputs.
        threshold: An object is called QSO when p_qso >= threshold.
        strict: Raise unless every truth row is matched, labelled and scored, with no extra
            or flagged prediction rows.

    Returns:
        The dict written to ``metrics.json``: :func:`classification_metrics` keys plus
        ``threshold``, ``join`` (see :func:`join_predictions`), ``by_r`` and ``by_redshift``
        (:func:`binned_metrics` lists on :data:`R_EDGES` / :data:`REDSHIFT_EDGES`, None without
        that column), ``reliability`` (:func:`reliability_bins`, NaN as None), ``out_dir`` and
        ``files`` (names written).

    Raises:
        InputError: A file is unreadable, p_qso is not a number in [0, 1], the threshold is
            outside [0, 1], no row is left to score, or ``out_dir`` cannot be made.

    Example:
        >>> metrics = evaluate_predictions("predictions.csv", "truth.csv",
        ...                                "evaluation")  # doctest: +SKIP
        >>> print(format_report(metrics))  # doctest: +SKIP
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"--threshold must be within [0, 1]. Received: {threshold}")
    rows, join = join_predictions(predictions_path, truth_path)
    if strict:
        for key in ("missing", "extra", "flagged", "repaired", "no_probability", "unlabelled"):
            if join[key]["count"]:
                raise InputError(
                    f"--strict: {join[key]['count']} {key.replace('_', ' ')} row(s), first ids "
                    f"{', '.join(join[key]['first_ids'])}. Received: predictions "
                    f"{join['predictions']}, truth {join['truth']}")
    if join["evaluated"] == 0:
        raise InputError(
            f"no rows left to evaluate: {join['truth_rows']} truth rows, "
            f"{join['prediction_rows']} prediction rows, {join['matched']} ids in common, "
            f"{join['flagged']['count']} flagged, {join['no_probability']['count']} without "
            f"p_qso, {join['unlabelled']['count']} unlabelled. Received: predictions "
            f"{join['predictions']}, truth {join['truth']}")
    labels, probabilities = rows["labels"], rows["probabilities"]
    predicted = (probabilities >= threshold).astype(np.int64)

    metrics = classification_metrics(labels, probabilities, threshold)
    metrics["threshold"] = float(threshold)
    metrics["n_qso"] = int(labels.sum())
    metrics["n_star"] = int(labels.size - labels.sum())
    metrics["join"] = join
    for key, values, present, edges in (("r", rows["r"], rows["has_r"], R_EDGES),
                                        ("redshift", rows["redshift"], rows["has_redshift"],
                                         REDSHIFT_EDGES)):
        known = present and bool(np.isfinite(values).any())
        metrics[f"by_{key}"] = binned_metrics(labels, predicted, values, edges) if known else None
    bins = reliability_bins(labels, probabilities)
    metrics["reliability"] = _json_ready(bins)

    out = os.fspath(out_dir)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        # FileExistsError (a file named like the folder) is not one of the errors the CLI
        # turns into one line, so say it here.
        raise InputError(f"output folder could not be made ({err.strerror or err}): "
                         f"{out}") from err
    files = []
    with warnings.catch_warnings():
        # Plotting a curve with a single point or an all-NaN line warns; the plot says why.
        warnings.simplefilter("ignore")
        _plot_confusion(metrics, os.path.join(out, "confusion_matrix.png"))
        _plot_roc(labels, probabilities, metrics, os.path.join(out, "roc.png"))
        _plot_precision_recall(labels, probabilities, metrics,
                               os.path.join(out, "precision_recall.png"))
        files += ["confusion_matrix.png", "roc.png", "precision_recall.png"]
        if metrics["by_r"] is not None:
            _plot_binned(metrics["by_r"], "r magnitude",
                         os.path.join(out, "completeness_purity_r.png"))
            files.append("completeness_purity_r.png")
        if metrics["by_redshift"] is not None:
            # Stars sit at z ~ 0, so they can only lower purity in the first bin.
            _plot_binned(metrics["by_redshift"], "redshift",
                         os.path.join(out, "completeness_purity_redshift.png"),
                         note="stars sit at z ~ 0: purity above the first bin is QSOs only")
            files.append("completeness_purity_redshift.png")
        _plot_reliability(bins, metrics["ece"], os.path.join(out, "reliability.png"))
        files.append("reliability.png")
    metrics["out_dir"] = os.path.abspath(out)
    metrics["files"] = ["metrics.json", *files]
    metrics = _json_ready(metrics)
    payload = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(os.path.join(out, "metrics.json"), payload.encode("utf-8"),
                           overwrite=True)
    return metrics


def _cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(metrics: dict) -> str:
    """The headline table and the join report of :func:`evaluate_predictions`, as text.

    Args:
        metrics: The dict returned by :func:`evaluate_predictions`.

    Returns:
        Markdown-style text: a metric | value table, then one line per kind of skipped row
        with the first few ids, then the output folder.

    Example:
        >>> print(format_report(evaluate_predictions("p.csv", "t.csv", "ev")))  # doctest: +SKIP
        | metric | value |
        ...
    """
    (true_negative, false_positive), (false_negative, true_positive) = metrics["confusion"]
    rows = [
        ("n", f"{metrics['n']} ({metrics.get('n_qso', '?')} QSO, "
              f"{metrics.get('n_star', '?')} STAR)"),
        ("threshold", f"{metrics.get('threshold', 0.5):g}"),
        ("accuracy", _cell(metrics["accuracy"])),
        ("F1 (QSO)", _cell(metrics["f1_qso"])),
        ("F1 (STAR)", _cell(metrics["f1_star"])),
        ("macro-F1", _cell(metrics["macro_f1"])),
        ("precision (QSO)", _cell(metrics["precision_qso"])),
        ("recall (QSO)", _cell(metrics["recall_qso"])),
        ("ROC AUC", _cell(metrics["roc_auc"])),
        ("average precision", _cell(metrics["average_precision"])),
        ("ECE (15 bins)", _cell(metrics["ece"])),
        ("error rate", _cell(metrics["error_rate"])),
        ("confusion [[TN, FP], [FN, TP]]",
         f"[[{true_negative}, {false_positive}], [{false_negative}, {true_positive}]]"),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [f"| {'metric'.ljust(width)} | {'value'.ljust(value_width)} |",
             f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|"]
    lines += [f"| {name.ljust(width)} | {value.ljust(value_width)} |" for name, value in rows]
    join = metrics.get("join")
    if join:
        lines += ["", f"join: {join['truth_rows']} truth rows, {join['prediction_rows']} "
                      f"prediction rows, {join['matched']} matched by id, {join['evaluated']} "
                      f"evaluated"]
        for key, text in (("missing", "missing from predictions"),
                          ("extra", "extra (not in truth)"),
                          ("flagged", "flagged by predict (not scored)"),
                          ("repaired", "repaired by predict (scored)"),
                          ("no_probability", "no p_qso and no flag"),
                          ("unlabelled", "unlabelled in truth")):
            part = join[key]
            shown = ""
            if part["count"]:
                more = ", ..." if part["count"] > len(part["first_ids"]) else ""
                shown = f" (ids: {', '.join(part['first_ids'])}{more})"
            lines.append(f"  {text}: {part['count']}{shown}")
    if metrics.get("out_dir"):
        lines += ["", f"wrote {', '.join(metrics.get('files', []))} -> {metrics['out_dir']}"]
    return "\n".join(lines)
