"""Match a ``starqso predict`` output to a truth catalogue by ``id``, counting what is skipped.

Every row of either file ends up in exactly one category of the join report (missing, extra,
flagged, no p_qso, unlabelled, evaluated), so the report says why each unscored row was left
out. The evaluated rows carry their ``qflag`` bitmask when the predictions have that column
(files of older versions do not: then ``qflag`` is -1 throughout and ``has_qflag`` False).

Example:
    >>> from starqso.evaluation.join import join_predictions
    >>> rows, report = join_predictions("predictions.csv", "truth.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import re

import numpy as np

from starqso._util.extras import require_survey
from starqso._util.jsonfile import DuplicateKeyError, loads
from starqso.errors import InputError
from starqso.io import read_catalog
from starqso.io.catalog import sidecar_path
from starqso.schema import CLASS_NAMES, LABEL_CODES, QFLAG_COLUMN

GALAXY_CLASS = "GALAXY"

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
    import pathlib

    path = pathlib.Path(predictions_path)
    if _is_parquet(path):
        record = _parquet_record(path)
        value = record.get("threshold")
        where = f"starqso record of {path}"
    elif path.suffix.lower() in (".fits", ".fit", ".fts"):
        from astropy.io import fits

        try:
            with fits.open(path, memmap=False) as hdulist:
                value = hdulist[1].header.get("THRESH") if len(hdulist) > 1 else None
        except (OSError, ValueError, IndexError):
            return None  # unreadable: join_predictions names the problem
        where = f"THRESH card of {path}"
    else:
        sidecar = sidecar_path(path)
        if not sidecar.is_file():
            return None
        try:
            record = loads(sidecar.read_text(encoding="utf-8")[:1 << 20], sidecar)
        except DuplicateKeyError:
            raise
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


def _is_parquet(path) -> bool:
    """A Parquet predictions file, or a dataset folder ``starqso predict`` wrote on Dask."""
    import pathlib

    path = pathlib.Path(path)
    return path.suffix.lower() == ".parquet" or path.is_dir()


def _parquet_record(path) -> dict:
    """The provenance record of a Parquet output: ``_starqso.json`` of a dataset folder, or
    the ``starqso`` key-value metadata of a file; {} when there is none."""
    import pathlib

    path = pathlib.Path(path)
    try:
        if path.is_dir():
            record = loads((path / "_starqso.json").read_text(encoding="utf-8")[:1 << 22],
                           path / "_starqso.json")
        else:
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
            record = loads(metadata.get(b"starqso", b"{}"), f"starqso metadata of {path}")
    except DuplicateKeyError:
        raise
    except (OSError, ValueError, ImportError):
        return {}
    return record if isinstance(record, dict) else {}


def read_parquet_predictions(path):
    """A Parquet ``starqso predict`` output (one file, or a dataset folder) as a Table.

    Columns keep their names in lower case; text columns become ``str`` (null as blank),
    p_qso and p_qso_err ``float64`` (null as NaN). A HATS output folder reads the same way
    (its pixel columns come along and are ignored).

    Raises:
        InputError: pyarrow is missing (the ``survey`` extra), or the file or folder is not
            readable Parquet.
    """
    import os

    from astropy.table import Table

    require_survey("reading Parquet predictions", "pyarrow")
    import pathlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pathlib.Path(path)
    if (source / "hats.properties").is_file():
        source = source / "dataset"  # a HATS catalogue: its Parquet files are in dataset/
    try:
        table = pq.read_table(source)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise InputError(f"predictions {path} are not readable Parquet ({err}); expected a "
                         f"`starqso predict` output. Received: {path}") from None
    result = Table()
    for name, column in zip(table.column_names, table.columns, strict=False):
        values = column.to_pylist()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            result[name.lower()] = np.array(["" if v is None else v for v in values], dtype=str)
        elif pa.types.is_floating(column.type):
            result[name.lower()] = np.array([np.nan if v is None else v for v in values],
                                            np.float64)
        elif pa.types.is_integer(column.type):
            if None in values:
                result[name.lower()] = np.array(["" if v is None else str(v) for v in values])
            else:
                result[name.lower()] = np.array(values, np.int64)
    result.meta["path"] = os.path.abspath(path)
    if not len(result):
        raise InputError(f"predictions {path} have no rows; expected a `starqso predict` "
                         f"output")
    missing = [name for name in ("id", "p_qso") if name not in result.colnames]
    if missing:
        raise InputError(f"predictions must have column(s) {', '.join(missing)}. Received: "
                         f"columns {', '.join(result.colnames)} in {path}")
    return result


def _parse_probabilities(column, path: str, name: str = "p_qso") -> np.ndarray:
    """A probability column (p_qso, p_star, p_galaxy) as floats (NaN where blank), whatever
    type the catalogue reader gave it."""
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
                raise InputError(f"predictions column '{name}' must hold numbers (blank for "
                                 f"flagged rows). Received: {text!r} at row {row} in file "
                                 f"{path}") from None
    bad = np.flatnonzero(~np.isnan(values) & ~((values >= 0.0) & (values <= 1.0)))
    if bad.size:
        raise InputError(f"predictions column '{name}' must be within [0, 1]. Received: "
                         f"{float(values[bad[0]])!r} at row {bad[0] + 1} in file {path}")
    return values


#: How far p_star + p_qso (+ p_galaxy) may be from 1: predict rounds each to 6 decimals, so
#: an honest row is off by a few 1e-6; 1e-3 still catches a column that is not a probability.
SUM_TOLERANCE = 1e-3


def _class_probabilities(predictions, p_qso: np.ndarray, path: str):
    """p(STAR), p(GALAXY) per predictions row, and whether the file is three-class.

    Files of older versions have neither column: p(STAR) is then 1 - p_qso and p(GALAXY) NaN.
    A two-class model's new outputs have p_star and a blank p_galaxy. On every classified row
    (finite p_qso) the probabilities given must sum to 1 within :data:`SUM_TOLERANCE`, and
    p_galaxy must be given on all of them or on none.
    """
    classified = np.isfinite(p_qso)
    has_star = "p_star" in predictions.colnames
    has_galaxy = "p_galaxy" in predictions.colnames
    p_star = (_parse_probabilities(predictions["p_star"], path, "p_star") if has_star
              else np.full(p_qso.size, np.nan))
    p_galaxy = (_parse_probabilities(predictions["p_galaxy"], path, "p_galaxy") if has_galaxy
                else np.full(p_qso.size, np.nan))
    galaxy_given = classified & np.isfinite(p_galaxy)
    three_class = bool(galaxy_given.any())
    if three_class and not galaxy_given[classified].all():
        row = int(np.flatnonzero(classified & ~galaxy_given)[0])
        raise InputError(f"predictions column 'p_galaxy' must be given on every classified "
                         f"row of a three-class file (or on none, for a two-class model). "
                         f"Received: blank at row {row + 1} in file {path}")
    if three_class and has_star and not np.isfinite(p_star[classified]).all():
        row = int(np.flatnonzero(classified & ~np.isfinite(p_star))[0])
        raise InputError(f"predictions column 'p_star' must be given on every classified row "
                         f"of a three-class file. Received: blank at row {row + 1} in file "
                         f"{path}")
    galaxy = p_galaxy if three_class else 0.0
    if has_star:
        terms, total = ("p_star + p_qso" + (" + p_galaxy" if three_class else ""),
                        p_star + p_qso + galaxy)
        bad = classified & np.isfinite(p_star) & ~(np.abs(total - 1.0) <= SUM_TOLERANCE)
    else:
        # No p_star column: p_star is what is left, so only an excess can be caught.
        terms, total = "p_qso + p_galaxy", p_qso + galaxy
        bad = classified & ~(total <= 1.0 + SUM_TOLERANCE)
        p_star = np.clip(1.0 - total, 0.0, 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"predictions' class probabilities must sum to 1 ({terms}, within "
                         f"{SUM_TOLERANCE:g}). Received: {float(total[row]):.6g} at row "
                         f"{row + 1} in file {path}")
    p_star = np.where(np.isfinite(p_star), p_star, 1.0 - p_qso)
    return p_star, p_galaxy, three_class


_WHOLE_NUMBER = re.compile(r"\+?[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max


def _parse_qflag(column, path: str) -> np.ndarray:
    """qflag as int64, whatever type the catalogue reader gave it; refuses anything else.

    Every cell must be a non-negative whole number: a blank (or masked) cell is refused like
    text, since ``starqso predict`` writes a qflag on every row (``NOT_CLASSIFIED`` where there
    is no p_qso), so a blank means the file was edited or cut, not "no caveat". ``3.0`` is
    read as 3 (a pandas round trip writes integers that way).
    """
    rule = (f"predictions column '{QFLAG_COLUMN}' must hold non-negative whole numbers "
            f"(a bitmask, 0 = no caveat)")
    dtype = getattr(column, "dtype", None)
    if dtype is not None and dtype.kind in "iuf":
        # FITS predictions: already numbers.
        mask = np.ma.getmaskarray(column)
        raw = np.ma.getdata(column)
        numbers = np.asarray(raw, dtype=np.float64)
        if dtype.kind in "iu":
            bad = mask | (raw < 0) | (raw > _INT64_MAX)
        else:
            bad = mask | ~(np.isfinite(numbers) & (numbers >= 0) & (numbers == np.round(numbers))
                           & (numbers < 2.0 ** 63))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            shown = "blank" if mask[row] else repr(raw[row].item())
            raise InputError(f"{rule}. Received: {shown} at row {row + 1} in file {path}")
        return np.asarray(raw).astype(np.int64)
    # CSV predictions: read_catalog keeps unknown columns as text.
    values = np.zeros(len(column), dtype=np.int64)
    mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else None
    for row, cell in enumerate(column, start=1):
        text = "" if mask is not None and mask[row - 1] else (
            cell.decode("utf-8", "replace") if isinstance(cell, bytes) else str(cell)).strip()
        value = None
        if len(text) <= 20 and _WHOLE_NUMBER.fullmatch(text):
            value = int(text)
        elif text:
            try:
                number = float(text)
            except ValueError:
                number = -1.0
            if number >= 0 and number.is_integer():
                value = int(number)
        if value is None or value > _INT64_MAX:
            shown = repr(text[:50]) if text else "blank"
            raise InputError(f"{rule}. Received: {shown} at row {row} in file {path}")
        values[row - 1] = value
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
    ``no_probability`` (blank p_qso without a flag), then ``galaxy_truth`` (truth label
    GALAXY: not STAR/QSO, so not in the two-class metrics), then ``unlabelled`` (blank truth
    label), else ``evaluated``. So ``matched = flagged + no_probability + galaxy_truth +
    unlabelled + evaluated``.

    Args:
        predictions_path: ``starqso predict`` output, in a format
            :func:`starqso.io.read_catalog` reads (CSV or FITS): ``id``, ``p_qso`` and
            optionally ``flag``, ``qflag``, ``p_star`` and ``p_galaxy`` (blank for a
            two-class model); its ``label`` column is ignored (the threshold is re-applied).
        truth_path: Catalogue with ``id`` and ``label`` (STAR/QSO/GALAXY/blank), optionally
            ``r`` and ``redshift``.

    Returns:
        ``(rows, report)``: ``rows`` holds arrays ``ids``, ``labels`` (0/1),
        ``probabilities``, ``r`` and ``redshift`` (NaN when unknown or absent) and ``qflag``
        (int64 bitmask, :data:`starqso.schema.QFLAG_BITS`; -1 on every row when the
        predictions have no qflag column, as files of older versions do) of the evaluated
        rows in truth order, and ``has_r`` / ``has_redshift`` / ``has_qflag`` (whether the
        column exists); ``three_class`` (whether the predictions give p_galaxy) and
        ``classes``: the rows of every STAR, QSO or GALAXY truth label (GALAXY ones too), as
        ``ids``, ``codes`` (:data:`~starqso.schema.LABEL_CODES`), ``probabilities`` ``(N, 3)``
        p_star, p_qso, p_galaxy (p_star 1 - p_qso where the file has none; p_galaxy NaN for
        two-class predictions), ``r`` and ``redshift``. ``report`` is the JSON-ready join
        summary, with ``qflag_column`` saying whether the predictions had a qflag column,
        and, only when the truth has GALAXY rows, ``galaxy_truth`` (count, first ids,
        ``scored``: whether the three-class metrics score them, and the ``reason``).

    Raises:
        InputError: A file is unreadable or lacks a required column, a p_qso, p_star or
            p_galaxy cell is not a number in [0, 1], a classified row's class probabilities
            do not sum to 1 (within :data:`SUM_TOLERANCE`), p_galaxy is given on some
            classified rows but not others, or a qflag cell is not a non-negative whole
            number (blank included); the message names the file, the row and the value.

    Example:
        >>> rows, report = join_predictions("predictions.csv", "truth.csv")  # doctest: +SKIP
        >>> report["evaluated"], report["missing"]["count"]  # doctest: +SKIP
        (9812, 3)
    """
    predictions = (read_parquet_predictions(predictions_path) if _is_parquet(predictions_path)
                   else read_catalog(predictions_path, require=("id", "p_qso")))
    truth = read_catalog(truth_path, require=("id", "label"))
    probabilities = _parse_probabilities(predictions["p_qso"], predictions.meta["path"])
    p_star, p_galaxy, three_class = _class_probabilities(predictions, probabilities,
                                                         predictions.meta["path"])
    has_qflag = QFLAG_COLUMN in predictions.colnames
    qflag = (_parse_qflag(predictions[QFLAG_COLUMN], predictions.meta["path"]) if has_qflag
             else np.full(len(predictions), -1, dtype=np.int64))
    flags = _texts(predictions, "flag")
    prediction_ids = _texts(predictions, "id")
    by_id = {identifier: row for row, identifier in enumerate(prediction_ids)}
    truth_ids = _texts(truth, "id")
    truth_set = set(truth_ids)
    labels = _texts(truth, "label")

    missing, flagged, flag_texts, no_probability, unlabelled, keep = [], [], [], [], [], []
    galaxies = []
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
        elif labels[truth_row] == GALAXY_CLASS:
            # Not STAR/QSO, so out of the two-class metrics either way; scored by the
            # three-class ones (rows["classes"]).
            galaxies.append((truth_row, row))
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

    def truth_floats(name, rows_of_truth=truth_rows):
        if name not in truth.colnames:
            return np.full(rows_of_truth.size, np.nan)
        return np.asarray(truth[name], dtype=np.float64)[rows_of_truth]

    # Every classified row with a STAR, QSO or GALAXY truth label, in truth order.
    every = sorted(keep + galaxies)
    class_truth = np.array([t for t, _ in every], dtype=np.int64)
    class_rows = np.array([p for _, p in every], dtype=np.int64)

    rows = {
        "ids": [truth_ids[t] for t in truth_rows],
        "labels": np.array([labels[t] == "QSO" for t in truth_rows], dtype=np.int64),
        "probabilities": probabilities[prediction_rows],
        "r": truth_floats("r"),
        "redshift": truth_floats("redshift"),
        "has_r": "r" in truth.colnames,
        "has_redshift": "redshift" in truth.colnames,
        "qflag": qflag[prediction_rows],
        "has_qflag": has_qflag,
        "three_class": three_class,
        "classes": {
            "ids": [truth_ids[t] for t in class_truth],
            "codes": np.array([LABEL_CODES[labels[t]] for t in class_truth], dtype=np.int64),
            "probabilities": np.column_stack([p_star[class_rows], probabilities[class_rows],
                                              p_galaxy[class_rows]]).reshape(-1, 3),
            "r": truth_floats("r", class_truth),
            "redshift": truth_floats("redshift", class_truth),
        },
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
        "qflag_column": has_qflag,
    }
    if galaxies:
        # Only when there are some: a STAR/QSO evaluation's report is as it always was.
        report["galaxy_truth"] = {
            **_skipped([truth_ids[t] for t, _ in galaxies]),
            "scored": three_class,
            "reason": ("not in the two-class STAR/QSO metrics; scored in the three-class "
                       "ones" if three_class else
                       "not scorable: the STAR/QSO metrics have no GALAXY class and the "
                       "predictions are two-class (no p_galaxy)")}
    return rows, report
