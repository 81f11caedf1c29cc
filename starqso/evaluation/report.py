"""The ``starqso evaluate`` command: join, metrics, plots, ``metrics.json`` and the text report.

Example:
    >>> from starqso.evaluation.report import evaluate_predictions, format_report
    >>> print(format_report(evaluate_predictions("p.csv", "t.csv", "ev")))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os

import numpy as np

from starqso._util.atomic import replace_folder, write_json_atomically
from starqso._util.jsonfile import read_json
from starqso._util.output_checks import refuse_output_among_inputs
from starqso._util.ownership import MARKER, output_folder
from starqso.errors import InputError
from starqso.evaluation.join import join_predictions, recorded_threshold
from starqso.evaluation.metrics import (
    R_EDGES,
    REDSHIFT_EDGES,
    binned_class_metrics,
    binned_metrics,
    class_metrics,
    class_reliability,
    classification_metrics,
    predicted_classes,
    quality_metrics,
    reliability_bins,
)
from starqso.evaluation.plots import CLASS_PLOT_FILES, PLOT_FILES, write_class_plots, write_plots

#: The names ``evaluate`` writes into ``--out``: the only entries a folder it replaces may hold.
OUTPUT_FILES = ("metrics.json", *PLOT_FILES, *CLASS_PLOT_FILES)
#: How ``three_class`` calls a class: the QSO threshold first, so that "called QSO" is the
#: same set as in the two-class metrics.
CLASS_RULE = "QSO when p_qso >= threshold, else the larger of p_star and p_galaxy"
# A metrics.json is a few kilobytes; anything far larger is not one of ours (and is not read).
_METRICS_MAX_BYTES = 16 * 1024 * 1024


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


def _is_our_metrics(path: str) -> bool:
    """Whether ``path`` is a ``metrics.json`` that ``starqso evaluate`` wrote."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > _METRICS_MAX_BYTES:
            return False
        payload = read_json(path)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and all(key in payload for key in ("confusion", "join",
                                                                          "files"))


def check_output_folder(out_dir) -> str:
    """Check that ``out_dir`` may be replaced by an evaluation.

    ``evaluate`` replaces ``--out`` as a whole, so the previous run's plots never stay beside
    the new ``metrics.json``. Replacing deletes what the folder held, so only a folder that
    is missing, empty, or holds an earlier evaluation and nothing else (a starqso
    ``metrics.json`` plus the names in :data:`OUTPUT_FILES`) is accepted: a user's unrelated
    folder given as ``--out`` by mistake is refused, never emptied.

    Args:
        out_dir: the ``--out`` folder.

    Returns:
        The folder to swap: ``out_dir``, or the folder a symbolic link ``out_dir`` points to
        (so the link stays a link and its target gets the new evaluation).

    Raises:
        InputError: ``out_dir`` is a file or holds anything else.
    """
    out = os.fspath(out_dir)
    if not out:
        raise InputError("--out is blank; expected a folder name. Received: out=''")
    if os.path.islink(out) and not os.path.exists(out):
        # Its target would be created: starqso writes only what it made, never through links.
        raise InputError(f"--out {out} is a broken symbolic link (to {os.readlink(out)}), not "
                         f"a folder; remove it or choose another --out. Received: out={out}")
    # Absolute and without a trailing separator: the staging folder goes beside OUT, never
    # inside it.
    destination = os.path.realpath(out) if os.path.islink(out) else os.path.abspath(out)
    if os.path.isdir(destination):
        try:
            entries = sorted(os.listdir(destination))
        except OSError as err:
            raise InputError(f"output folder could not be read ({err.strerror or err}): "
                             f"{out}") from err
        foreign = [name for name in entries if name not in (*OUTPUT_FILES, MARKER)
                   or not os.path.isfile(os.path.join(destination, name))]
        if entries and (foreign or not _is_our_metrics(os.path.join(destination,
                                                                     "metrics.json"))):
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            what = f"holds {shown}" if foreign else "has no metrics.json of starqso evaluate"
            raise InputError(
                f"--out is replaced as a whole, so it must be a new or empty folder or an "
                f"earlier evaluation (metrics.json and plots only); this one {what}. Choose "
                f"another --out. Received: out={out}")
        return destination
    if os.path.lexists(destination):
        raise InputError(f"output folder could not be made (a file of that name exists): "
                         f"{out}")
    # Its parent is made under the lock (starqso._util.ownership.output_folder), and removed
    # again should the evaluation fail.
    return destination


def evaluate_predictions(predictions_path, truth_path, out_dir, threshold: float | None = None,
                         strict: bool = False) -> dict:
    """Score a predictions file against a truth catalogue; write metrics.json and plots.

    Writes ``out_dir`` as a whole: ``metrics.json``, ``confusion_matrix.png``, ``roc.png``,
    ``precision_recall.png``, ``reliability.png``, and ``completeness_purity_r.png`` /
    ``completeness_purity_redshift.png`` when the truth catalogue has ``r`` / ``redshift``
    values for the evaluated rows, the three-class figures (:data:`CLASS_PLOT_FILES`) when
    there is a ``three_class`` section, and the marker of :mod:`starqso._util.ownership`.
    Everything is written into a staging folder beside it (hidden, unique to the run) that
    replaces ``out_dir`` only once complete
    (:func:`starqso._util.atomic.replace_folder`): no plot of an earlier run stays beside the new
    ``metrics.json``, and a failure or a kill midway leaves the previous folder as it was.
    An existing ``out_dir`` must be empty or an earlier evaluation
    (:func:`check_output_folder`).

    Args:
        predictions_path: ``starqso predict`` output, CSV, FITS or Parquet (``id``, ``p_qso``,
            ``flag``, and ``qflag``, ``p_star``, ``p_galaxy`` from versions that write them).
        truth_path: Catalogue with ``id``, ``label`` (STAR, QSO, GALAXY or blank) and
            optionally ``r`` and ``redshift``.
        out_dir: Folder for the outputs.
        threshold: An object is called QSO when p_qso >= threshold. None: the threshold
            ``starqso predict`` labelled the file with (its side-car or FITS header,
            :func:`~starqso.evaluation.join.recorded_threshold`), else 0.5.
        strict: Raise unless every truth row is matched, labelled and scored, with no extra
            or flagged prediction rows.

    Returns:
        The dict written to ``metrics.json``: :func:`classification_metrics` keys plus
        ``threshold``, ``join`` (see :func:`join_predictions`), ``by_r`` and ``by_redshift``
        (:func:`binned_metrics` lists on :data:`R_EDGES` / :data:`REDSHIFT_EDGES`, None without
        that column; rates with ``_low`` / ``_high`` Wilson intervals), ``reliability``
        (:func:`reliability_bins`, NaN as None), ``quality``, ``out_dir`` and ``files``
        (names written). ``quality`` is :func:`~starqso.evaluation.metrics.quality_metrics`
        of the evaluated rows at the same threshold (``unflagged`` = qflag 0, ``flagged``,
        ``bits``), or None when the predictions have no ``qflag`` column (older files).
        The two-class keys score the STAR/QSO truth rows as QSO vs not QSO from p_qso (a
        GALAXY answer is not QSO); with GALAXY truth rows only they are None (``n`` 0).
        ``three_class`` (:func:`three_class_metrics`) is there only when the predictions give
        p_galaxy or the truth has GALAXY rows, so a two-class evaluation of STAR/QSO truth
        is as before.

    Raises:
        InputError: A file is unreadable, p_qso (p_star, p_galaxy) is not a number in
            [0, 1], a row's class probabilities do not sum to 1, a qflag is not a
            non-negative whole number, the threshold is outside [0, 1], no row is left to
            score, ``out_dir`` cannot be made, or it holds something other than an earlier
            evaluation.

    Example:
        >>> metrics = evaluate_predictions("predictions.csv", "truth.csv",
        ...                                "evaluation")  # doctest: +SKIP
        >>> print(format_report(metrics))  # doctest: +SKIP
    """
    threshold_source = "--threshold"
    if threshold is None:
        threshold = recorded_threshold(predictions_path)
        threshold_source = "predictions" if threshold is not None else "default"
        threshold = 0.5 if threshold is None else threshold
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"--threshold must be within [0, 1]. Received: {threshold}")

    # --out is replaced whole: it must not be, nor hold, a file this run reads.
    refuse_output_among_inputs(out_dir, [
        (predictions_path, f"the predictions {predictions_path}"),
        (f"{predictions_path}.json", f"the side-car {predictions_path}.json of the predictions"),
        (truth_path, f"the --truth catalogue {truth_path}")], option="--out", folder=True)
    # Before the (slow) join: a refused --out is reported at once; then one evaluation at a
    # time writes it (three at once would race for the same folder).
    destination = check_output_folder(out_dir)
    with output_folder(destination, "evaluate", replaced=OUTPUT_FILES) as destination:
        return _evaluate_into(predictions_path, truth_path, out_dir, destination, threshold,
                              threshold_source, strict)


# classification_metrics' keys, None when no STAR/QSO truth row is left (GALAXY rows only).
_TWO_CLASS_KEYS = ("n", "accuracy", "error_rate", "f1_qso", "f1_star", "macro_f1",
                   "precision_qso", "recall_qso", "roc_auc", "average_precision", "ece",
                   "confusion")


def three_class_metrics(codes, probabilities, r, redshift, threshold: float,
                        three_class_predictions: bool) -> dict:
    """The ``three_class`` section of ``metrics.json``: STAR / QSO / GALAXY scores.

    Args:
        codes: True class codes (0 STAR, 1 QSO, 2 GALAXY) per object.
        probabilities: ``(N, 3)`` p(STAR), p(QSO), p(GALAXY) per object (p(GALAXY) NaN for
            two-class predictions, which then never call GALAXY).
        r: r magnitude per object (NaN where unknown).
        redshift: Redshift per object (NaN where unknown).
        threshold: Decision threshold on p(QSO) (:data:`CLASS_RULE`).
        three_class_predictions: Whether the predictions give p(GALAXY).

    Returns:
        JSON-ready dict: :func:`~starqso.evaluation.metrics.class_metrics` keys plus
        ``threshold``, ``rule``, ``predictions_classes`` (3, or 2 for a two-class model),
        ``called_galaxy`` (how many truth STAR and QSO rows were called GALAXY),
        ``by_r`` / ``by_redshift`` (:func:`~starqso.evaluation.metrics.binned_class_metrics`
        on :data:`R_EDGES` / :data:`REDSHIFT_EDGES`; None without known values) and
        ``reliability`` (:func:`~starqso.evaluation.metrics.class_reliability`, NaN as None).

    Example:
        >>> section = three_class_metrics([0, 2], [[0.7, 0.1, 0.2], [0.2, 0.1, 0.7]],
        ...                               [18.0, 19.0], [0.0, 0.1], 0.5, True)
        >>> section["confusion"], section["macro_f1"]
        ([[1, 0, 0], [0, 0, 0], [0, 0, 1]], 1.0)
    """
    codes = np.asarray(codes, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(codes.size, 3)
    predicted = predicted_classes(probabilities[:, 0], probabilities[:, 1],
                                  probabilities[:, 2], threshold)
    section = class_metrics(codes, predicted, probabilities)
    section.update({"threshold": float(threshold), "rule": CLASS_RULE,
                    "predictions_classes": 3 if three_class_predictions else 2})
    galaxy = section["classes"].index("GALAXY")
    section["called_galaxy"] = {name: int(np.sum((codes == code) & (predicted == galaxy)))
                                for code, name in enumerate(section["classes"])
                                if code != galaxy}
    for key, values, edges in (("r", r, R_EDGES), ("redshift", redshift, REDSHIFT_EDGES)):
        values = np.asarray(values, dtype=np.float64)
        section[f"by_{key}"] = (binned_class_metrics(codes, predicted, values, edges)
                                if np.isfinite(values).any() else None)
    section["reliability"] = _json_ready(class_reliability(codes, probabilities))
    return _json_ready(section)


def _evaluate_into(predictions_path, truth_path, out_dir, destination, threshold,
                   threshold_source, strict):
    rows, join = join_predictions(predictions_path, truth_path)
    if strict:
        unscored_galaxies = ("galaxy_truth",) if not join.get("galaxy_truth", {}).get(
            "scored", True) else ()
        for key in ("missing", "extra", "flagged", "repaired", "no_probability", "unlabelled",
                    *unscored_galaxies):
            if join[key]["count"]:
                raise InputError(
                    f"--strict: {join[key]['count']} {key.replace('_', ' ')} row(s), first ids "
                    f"{', '.join(join[key]['first_ids'])}. Received: predictions "
                    f"{join['predictions']}, truth {join['truth']}")
    galaxies = join.get("galaxy_truth", {}).get("count", 0)
    # Truth GALAXY rows alone are still scored, by the three-class metrics.
    if join["evaluated"] == 0 and not galaxies:
        raise InputError(
            f"no rows left to evaluate: {join['truth_rows']} truth rows, "
            f"{join['prediction_rows']} prediction rows, {join['matched']} ids in common, "
            f"{join['flagged']['count']} flagged, {join['no_probability']['count']} without "
            f"p_qso, {join['unlabelled']['count']} unlabelled. Received: predictions "
            f"{join['predictions']}, truth {join['truth']}")
    labels, probabilities = rows["labels"], rows["probabilities"]
    predicted = (probabilities >= threshold).astype(np.int64)
    two_class = join["evaluated"] > 0

    # STAR/QSO truth rows only: "QSO vs not QSO" from p_qso, so with three-class predictions
    # a GALAXY answer counts as not QSO.
    metrics = (classification_metrics(labels, probabilities, threshold) if two_class
               else dict.fromkeys(_TWO_CLASS_KEYS, None) | {"n": 0})
    metrics["threshold"] = float(threshold)
    metrics["threshold_source"] = threshold_source
    metrics["n_qso"] = int(labels.sum())
    metrics["n_star"] = int(labels.size - labels.sum())
    metrics["join"] = join
    for key, values, present, edges in (("r", rows["r"], rows["has_r"], R_EDGES),
                                        ("redshift", rows["redshift"], rows["has_redshift"],
                                         REDSHIFT_EDGES)):
        known = two_class and present and bool(np.isfinite(values).any())
        metrics[f"by_{key}"] = binned_metrics(labels, predicted, values, edges) if known else None
    bins = reliability_bins(labels, probabilities) if two_class else None
    metrics["reliability"] = _json_ready(bins)
    metrics["quality"] = (quality_metrics(labels, probabilities, rows["qflag"], threshold)
                          if rows.get("has_qflag") and two_class else None)
    classes = rows["classes"]
    if rows["three_class"] or galaxies:
        # Only then: a STAR/QSO evaluation of two-class predictions is as it always was.
        metrics["three_class"] = three_class_metrics(classes["codes"],
                                                     classes["probabilities"], classes["r"],
                                                     classes["redshift"], threshold,
                                                     rows["three_class"])

    metrics["out_dir"] = os.path.abspath(os.fspath(out_dir))

    def build(staging):
        files = write_plots(staging, metrics, labels, probabilities, bins) if two_class else []
        if "three_class" in metrics:
            files += write_class_plots(staging, metrics["three_class"], classes["codes"],
                                       classes["probabilities"])
        # The marker too: the list is everything in the folder.
        metrics["files"] = ["metrics.json", *files, MARKER]
        # Same bytes as before the split: indent 2, sorted keys, one trailing newline, UTF-8.
        write_json_atomically(os.path.join(staging, "metrics.json"), _json_ready(metrics))

    replace_folder(build, destination, command="evaluate")
    return _json_ready(metrics)


def _cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _error_rate(part: dict) -> str:
    """``error rate 0.061 [0.059, 0.064]`` of a quality subset, or ``no objects``."""
    if part.get("error_rate") is None:
        return "no objects"
    text = f"error rate {part['error_rate']:.3f}"
    if part.get("error_rate_low") is not None and part.get("error_rate_high") is not None:
        text += f" [{part['error_rate_low']:.3f}, {part['error_rate_high']:.3f}]"
    return text


def _quality_lines(metrics: dict) -> list[str]:
    """The flagged/unflagged block of :func:`format_report`; none for older metrics dicts."""
    if "quality" not in metrics:
        return []
    quality = metrics["quality"]
    if quality is None:
        return ["", "quality flags: not available (the predictions have no qflag column)"]
    unflagged, flagged = quality["unflagged"], quality["flagged"]
    confidence = quality.get("confidence")
    interval = f"; [low, high]: {100 * confidence:.4g} % Wilson interval" if confidence else ""
    lines = ["", f"quality flags (qflag{interval}):",
             f"  unflagged (qflag 0): {unflagged['objects']:,} objects, "
             f"{_error_rate(unflagged)}",
             f"  flagged (qflag != 0): {flagged['objects']:,} objects, {_error_rate(flagged)}"]
    # By bit value, whether the dict came from evaluate_predictions or a sorted metrics.json.
    for name, part in sorted(quality.get("bits", {}).items(), key=lambda item: item[1]["bit"]):
        if part["objects"]:
            lines.append(f"    {name} ({part['bit']}): {part['objects']:,} objects, "
                         f"{_error_rate(part)}")
    return lines


def format_report(metrics: dict) -> str:
    """The headline table and the join report of :func:`evaluate_predictions`, as text.

    Args:
        metrics: The dict returned by :func:`evaluate_predictions`.

    Returns:
        Markdown-style text: a metric | value table (or a line saying there is none, for
        GALAXY truth rows only), then, with a ``three_class`` section, its confusion matrix,
        per-class F1, macro-F1, ROC AUC, ECE and how many STAR/QSO rows were called GALAXY,
        then one line per kind of skipped row with the first few ids (and the GALAXY truth
        rows with why), then the error rates of unflagged and flagged objects and one
        line per quality bit that occurs (or a line saying the predictions have no qflag),
        then the output folder.

    Example:
        >>> print(format_report(evaluate_predictions("p.csv", "t.csv", "ev")))  # doctest: +SKIP
        | metric | value |
        ...
    """
    if metrics["confusion"] is None:
        # GALAXY truth rows only: the three-class block below is the whole evaluation.
        return _format_without_two_class(metrics)
    (true_negative, false_positive), (false_negative, true_positive) = metrics["confusion"]
    rows = [
        ("n", f"{metrics['n']} ({metrics.get('n_qso', '?')} QSO, "
              f"{metrics.get('n_star', '?')} STAR)"),
        ("threshold", f"{metrics.get('threshold', 0.5):g}" + {
            "predictions": " (the one predict labelled with)",
            "default": " (default)"}.get(metrics.get("threshold_source"), "")),
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
    return "\n".join(lines + _tail_lines(metrics))


def _format_without_two_class(metrics: dict) -> str:
    return "\n".join(["no STAR/QSO truth rows: the two-class metrics are not computed "
                      "(GALAXY truth rows only)", *_tail_lines(metrics)])


def _three_class_lines(metrics: dict) -> list[str]:
    """The confusion matrix and per-class F1 of ``metrics["three_class"]``; none without."""
    section = metrics.get("three_class")
    if not section:
        return []
    names, per_class = section["classes"], section["per_class"]
    kind = ("three-class predictions" if section["predictions_classes"] == 3 else
            "two-class predictions (no p_galaxy: nothing is called GALAXY)")
    rule = section["rule"].replace("threshold", f"{section['threshold']:g}")
    lines = ["", f"three classes (n={section['n']}, {kind}; {rule}):"]
    if metrics.get("confusion") is not None and section["predictions_classes"] == 3:
        lines.append("  the two-class metrics above are QSO vs not QSO on STAR/QSO truth rows "
                     "(a GALAXY answer counts as not QSO)")
    width = max(len(name) for name in names)
    cells = [[str(count) for count in row] for row in section["confusion"]]
    cell = max(len(text) for row in cells for text in row)
    lines.append(f"  confusion (rows true, columns predicted {' / '.join(names)}):")
    lines += [f"    {name.ljust(width)}  [{', '.join(text.rjust(cell) for text in row)}]"
              for name, row in zip(names, cells, strict=False)]
    lines.append("  F1: " + ", ".join(f"{name} {_cell(per_class[name]['f1'])}"
                                      for name in names)
                 + f"; macro-F1 {_cell(section['macro_f1'])} (classes in the truth); accuracy "
                   f"{_cell(section['accuracy'])}")
    lines.append("  one-vs-rest ROC AUC: " + ", ".join(
        f"{name} {_cell(per_class[name].get('roc_auc'))}" for name in names)
                 + "; ECE: " + ", ".join(f"{name} {_cell(per_class[name].get('ece'))}"
                                         for name in names))
    called = section.get("called_galaxy", {})
    if section["predictions_classes"] == 3:
        lines.append(f"  truth STAR/QSO called GALAXY: {sum(called.values())} ("
                     + ", ".join(f"{name} {count}" for name, count in called.items()) + ")")
    return lines


def _tail_lines(metrics: dict) -> list[str]:
    """Everything of :func:`format_report` after the headline table."""
    lines = _three_class_lines(metrics)
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
        galaxies = join.get("galaxy_truth")
        if galaxies:
            more = ", ..." if galaxies["count"] > len(galaxies["first_ids"]) else ""
            lines.append(f"  truth GALAXY ({galaxies['reason']}): {galaxies['count']} (ids: "
                         f"{', '.join(galaxies['first_ids'])}{more})")
    lines += _quality_lines(metrics)
    if metrics.get("out_dir"):
        lines += ["", f"wrote {', '.join(metrics.get('files', []))} -> {metrics['out_dir']}"]
    return lines
