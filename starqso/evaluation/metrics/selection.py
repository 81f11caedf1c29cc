"""The selection function: QSO completeness and purity vs r magnitude and redshift.

:func:`selection_function` tabulates "p(QSO) >= threshold" as a survey paper does, with Wilson
intervals; :func:`format_selection_markdown` and :func:`selection_csv_text` write its rows.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from starqso.evaluation.metrics.checks import as_labels, as_probabilities, check_threshold
from starqso.evaluation.metrics.classification import binned_metrics
from starqso.evaluation.metrics.intervals import WILSON_CONFIDENCE

R_EDGES = (14.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
REDSHIFT_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)

#: Columns of :func:`selection_function` rows, in the order :func:`selection_csv_text`
#: writes them.
SELECTION_COLUMNS = ("axis", "low", "high", "objects", "qso", "called_qso", "true_positive",
                     "completeness", "completeness_low", "completeness_high",
                     "purity", "purity_low", "purity_high")


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
    threshold = check_threshold(threshold)
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, labels.size)
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
