"""Match a ``starqso predict`` output to a truth catalogue by ``id``, counting what is skipped.

Every row of either file ends up in exactly one category of the join report (missing, extra,
flagged, no p_qso, unlabelled, evaluated), so the report says why each unscored row was left
out.

Example:
    >>> from starqso.evaluation.join import join_predictions
    >>> rows, report = join_predictions("predictions.csv", "truth.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError
from starqso.schema import CLASS_NAMES

# How many ids of each kind of skipped row the report lists; the counts are always complete.
SHOWN_IDS = 5


def recorded_threshold(predictions_path):
    """The threshold ``starqso predict`` labelled a predictions file with, or None.

    A CSV's is in its side-car ``FILE.json`` (``threshold``), a FITS table's in the
    ``THRESH`` card of its table header; files from elsewhere have neither.

    Args:
        predictions_path: a ``starqso predict`` output.

    Returns:
        The threshold, a float in [0, 1], or None when the file records none.

    Raises:
        InputError: the side-car or card holds something other than a number in [0, 1].
    """
    import json
    import pathlib

    path = pathlib.Path(predictions_path)
    if path.suffix.lower() in (".fits", ".fit", ".fts"):
        from astropy.io import fits

        try:
            with fits.open(path, memmap=False) as hdulist:
                value = hdulist[1].header.get("THRESH") if len(hdulist) > 1 else None
        except (OSError, ValueError, IndexError):
            return None  # unreadable: join_predictions names the problem
        where = f"THRESH card of {path}"
    else:
        from starqso.inference import sidecar_path

        sidecar = sidecar_path(path)
        if not sidecar.is_file():
            return None
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8")[:1 << 20])
        except (OSError, ValueError) as err:
            raise InputError(f"the predictions' side-car is not readable JSON ({err}); pass "
                             f"--threshold or delete it. Received: {sidecar}") from None
        value = record.get("threshold") if isinstance(record, dict) else None
        where = f"side-car {sidecar}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"the threshold recorded in the {where} must be a number in [0, 1]. "
                         f"Received: {str(value)[:50]!r}")
    return float(value)


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
        elif labels[truth_row] not in CLASS_NAMES:
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
