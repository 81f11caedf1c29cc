"""The PNG figures of ``starqso evaluate``, drawn with matplotlib on its Agg canvas.

Rates (completeness, purity, a reliability bin's QSO fraction) are drawn with asymmetric
error bars from their Wilson intervals (:func:`starqso.evaluation.metrics.wilson_interval`,
1-sigma equivalent by default); metrics without intervals are drawn without bars.

matplotlib is imported here only, and only when a figure is drawn, so the metrics and the
join work without it.

The three-class section (STAR / QSO / GALAXY) has its own figures, :data:`CLASS_PLOT_FILES`,
drawn by :func:`write_class_plots`.

Example:
    >>> from starqso.evaluation.plots import write_plots
    >>> write_plots("evaluation", metrics, labels, probabilities, bins)  # doctest: +SKIP
    ['confusion_matrix.png', 'roc.png', 'precision_recall.png', 'reliability.png']
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np

from starqso._util.atomic import write_bytes_atomically
from starqso.schema import CLASS_NAMES

PLOT_FILES = ("confusion_matrix.png", "roc.png", "precision_recall.png",
              "completeness_purity_r.png", "completeness_purity_redshift.png", "reliability.png")
#: The figures of the three-class section (STAR / QSO / GALAXY), drawn only when there is one.
CLASS_PLOT_FILES = ("confusion_matrix_classes.png", "roc_classes.png",
                    "reliability_classes.png", "class_f1_r.png", "class_f1_redshift.png")


def _save(figure, path: str) -> None:
    # Rendered in memory, then written by starqso._util.atomic's temp-file-and-rename, so a
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


def _draw_confusion(confusion, names, title, path, figsize=(5.0, 4.2)):
    """A confusion matrix coloured by each row's share (rows true, columns predicted)."""
    confusion = np.array(confusion, dtype=np.float64)
    figure = _new_figure(figsize)
    axes = figure.add_subplot()
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    axes.imshow(confusion / totals, cmap="Blues", vmin=0, vmax=1)
    for true in range(len(names)):
        for guess in range(len(names)):
            share = confusion[true, guess] / totals[true, 0]
            axes.text(guess, true, f"{int(confusion[true, guess])}\n({share:.1%} of row)",
                      ha="center", va="center", color="white" if share > 0.5 else "black")
    ticks = list(range(len(names)))
    axes.set_xticks(ticks, names)
    axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    _save(figure, path)


def _plot_confusion(metrics, path):
    _draw_confusion(metrics["confusion"], CLASS_NAMES,
                    f"confusion matrix (n={metrics['n']}, threshold {metrics['threshold']:g})",
                    path)


def _save_rate_axes(figure, axes, xlabel, ylabel, path):
    """Label a plot of two rates in [0, 1] and save it."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
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
    _save_rate_axes(figure, axes, "false positive rate (stars called QSO)",
                    "true positive rate (QSO completeness)", path)


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
    _save_rate_axes(figure, axes, "recall (QSO completeness)", "precision (QSO purity)", path)


def _asymmetric_errors(values, lows, highs):
    """``yerr`` for ``errorbar`` from interval bounds: (2, N) distances below and above, or
    None when no bound is known (metrics of an older version). Unknown bounds draw no bar."""
    lows = np.array([np.nan if low is None else low for low in lows], dtype=np.float64)
    highs = np.array([np.nan if high is None else high for high in highs], dtype=np.float64)
    if not (np.isfinite(lows).any() or np.isfinite(highs).any()):
        return None
    below = np.nan_to_num(np.clip(values - lows, 0.0, None), nan=0.0)
    above = np.nan_to_num(np.clip(highs - values, 0.0, None), nan=0.0)
    return np.vstack([below, above])


def _plot_binned(bins, quantity, path, note=""):
    figure = _new_figure(figsize=(6.0, 4.2))
    axes = figure.add_subplot()
    centres = [(part["lo"] + part["hi"]) / 2 for part in bins]
    for key, label, color in (("completeness", "QSO completeness", "C0"),
                              ("purity", "QSO purity", "C1")):
        values = np.array([np.nan if part[key] is None else part[key] for part in bins],
                          dtype=np.float64)
        yerr = _asymmetric_errors(values, [part.get(f"{key}_low") for part in bins],
                                  [part.get(f"{key}_high") for part in bins])
        axes.errorbar(centres, values, yerr=yerr, fmt="o-", color=color, capsize=3,
                      elinewidth=1, label=label)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel(quantity)
    axes.set_ylabel("fraction (bars: 68 % Wilson interval)")
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
    fraction = np.asarray(bins["fraction_qso"], dtype=np.float64)[filled]
    low, high = bins.get("fraction_qso_low"), bins.get("fraction_qso_high")
    yerr = None if low is None or high is None else _asymmetric_errors(
        fraction, np.asarray(low, dtype=np.float64)[filled],
        np.asarray(high, dtype=np.float64)[filled])
    top.errorbar(bins["mean_probability"][filled], fraction, yerr=yerr, fmt="o-", color="C0",
                 capsize=3, elinewidth=1, label="model")
    top.set_ylabel("fraction of QSOs (68 % Wilson)")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(f"reliability ({len(bins['count'])} bins, ECE = {ece:.4f})")
    edges = bins["edges"]
    bottom.bar(edges[:-1], bins["count"], width=np.diff(edges), align="edge", color="C0",
               alpha=0.6)
    bottom.set_yscale("symlog")
    # Plain numbers: the default 10^k labels need mathtext (and its fonts) for a few ticks.
    from matplotlib.ticker import FuncFormatter

    bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.set_xlabel("p(QSO)")
    bottom.set_ylabel("objects")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def write_plots(out_dir: str, metrics: dict, labels, probabilities, bins) -> list[str]:
    """Draw the figures of :func:`~starqso.evaluation.report.evaluate_predictions` into a folder.

    The r and redshift figures are drawn only when ``metrics["by_r"]`` /
    ``metrics["by_redshift"]`` is not None; each file is replaced atomically.

    Args:
        out_dir: Existing folder for the PNG files.
        metrics: :func:`~starqso.evaluation.metrics.classification_metrics` keys plus
            ``threshold``, ``by_r`` and ``by_redshift``.
        labels: 0 (STAR) / 1 (QSO) NumPy array of the evaluated rows.
        probabilities: p(QSO) NumPy array of the evaluated rows.
        bins: :func:`~starqso.evaluation.metrics.reliability_bins` of those rows.

    Returns:
        The names written, in :data:`PLOT_FILES` order less the figures that were skipped.

    Example:
        >>> write_plots("evaluation", metrics, labels, probabilities, bins)  # doctest: +SKIP
        ['confusion_matrix.png', 'roc.png', 'precision_recall.png', 'reliability.png']
    """
    files = []
    with warnings.catch_warnings():
        # Plotting a curve with a single point or an all-NaN line warns; the plot says why.
        warnings.simplefilter("ignore")
        _plot_confusion(metrics, os.path.join(out_dir, "confusion_matrix.png"))
        _plot_roc(labels, probabilities, metrics, os.path.join(out_dir, "roc.png"))
        _plot_precision_recall(labels, probabilities, metrics,
                               os.path.join(out_dir, "precision_recall.png"))
        files += ["confusion_matrix.png", "roc.png", "precision_recall.png"]
        if metrics["by_r"] is not None:
            _plot_binned(metrics["by_r"], "r magnitude",
                         os.path.join(out_dir, "completeness_purity_r.png"))
            files.append("completeness_purity_r.png")
        if metrics["by_redshift"] is not None:
            # Stars sit at z ~ 0, so they can only lower purity in the first bin.
            _plot_binned(metrics["by_redshift"], "redshift",
                         os.path.join(out_dir, "completeness_purity_redshift.png"),
                         note="stars sit at z ~ 0: purity above the first bin is QSOs only")
            files.append("completeness_purity_redshift.png")
        _plot_reliability(bins, metrics["ece"], os.path.join(out_dir, "reliability.png"))
        files.append("reliability.png")
    return files


def _plot_class_roc(section, codes, probabilities, path):
    from sklearn.metrics import roc_curve

    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    skipped = []
    for code, name in enumerate(section["classes"]):
        auc = section["per_class"][name].get("roc_auc")
        if auc is None:
            skipped.append(name)
            continue
        false_rate, true_rate, _ = roc_curve(codes == code, probabilities[:, code])
        axes.plot(false_rate, true_rate, color=f"C{code}", label=f"{name} (AUC = {auc:.4f})")
    if len(skipped) < len(section["classes"]):
        axes.legend(loc="lower right", fontsize=8)
    else:
        _note(axes, "ROC undefined: no class has both members and non-members with a "
                    "probability")
    # Why a class has no curve: absent from the truth, or no p(GALAXY) (two-class model).
    axes.set_title("one-vs-rest ROC" + (f" (none for {', '.join(skipped)})" if skipped else ""),
                   fontsize=10)
    _save_rate_axes(figure, axes, "false positive rate", "true positive rate", path)


def _plot_class_reliability(section, path):
    names = section["classes"]
    figure = _new_figure(figsize=(4.0 * len(names), 4.0))
    for code, (axes, name) in enumerate(zip(figure.subplots(1, len(names)), names,
                                            strict=False)):
        axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        bins = section["reliability"].get(name)
        if bins is None:
            _note(axes, f"no p({name}) in the predictions")
        else:
            count = np.asarray(bins["count"])
            filled = count > 0
            mean = np.array([np.nan if v is None else v for v in bins["mean_probability"]],
                            dtype=np.float64)[filled]
            fraction = np.array([np.nan if v is None else v for v in bins["fraction"]],
                                dtype=np.float64)[filled]
            yerr = _asymmetric_errors(fraction, np.asarray(bins["fraction_low"],
                                                           dtype=object)[filled],
                                      np.asarray(bins["fraction_high"], dtype=object)[filled])
            axes.errorbar(mean, fraction, yerr=yerr, fmt="o-", color=f"C{code}", capsize=3,
                          elinewidth=1)
        ece = section["per_class"][name].get("ece")
        axes.set_title(f"{name}" + ("" if ece is None else f" (ECE = {ece:.4f})"), fontsize=10)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"p({name})")
        axes.set_ylabel(f"fraction that are {name} (68 % Wilson)")
    _save(figure, path)


def _plot_class_binned(bins, names, quantity, path):
    figure = _new_figure(figsize=(12.0, 3.8))
    centres = [(part["lo"] + part["hi"]) / 2 for part in bins]
    for axes, key in zip(figure.subplots(1, 3, sharey=True), ("precision", "recall", "f1"),
                         strict=False):
        for code, name in enumerate(names):
            values = np.array([np.nan if part["classes"][name][key] is None
                               else part["classes"][name][key] for part in bins],
                              dtype=np.float64)
            yerr = None if key == "f1" else _asymmetric_errors(
                values, [part["classes"][name][f"{key}_low"] for part in bins],
                [part["classes"][name][f"{key}_high"] for part in bins])
            axes.errorbar(centres, values, yerr=yerr, fmt="o-", color=f"C{code}", capsize=3,
                          elinewidth=1, label=name)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel(quantity)
        axes.set_title({"f1": "F1"}.get(key, key), fontsize=10)
    axes.legend(loc="lower left", fontsize=8)
    _save(figure, path)


def write_class_plots(out_dir: str, section: dict, codes, probabilities) -> list[str]:
    """Draw the three-class figures of :func:`~starqso.evaluation.report.evaluate_predictions`.

    Args:
        out_dir: Existing folder for the PNG files.
        section: The ``three_class`` dict of ``metrics.json``
            (:func:`~starqso.evaluation.metrics.class_metrics` keys plus ``reliability``,
            ``by_r``, ``by_redshift`` and ``threshold``).
        codes: True class codes (0 STAR, 1 QSO, 2 GALAXY) of its rows.
        probabilities: ``(N, 3)`` p(STAR), p(QSO), p(GALAXY) of its rows (NaN p(GALAXY) for
            two-class predictions).

    Returns:
        The names written, in :data:`CLASS_PLOT_FILES` order less the r / redshift figures
        when ``section["by_r"]`` / ``section["by_redshift"]`` is None.

    Example:
        >>> write_class_plots("evaluation", section, codes, probabilities)  # doctest: +SKIP
        ['confusion_matrix_classes.png', 'roc_classes.png', 'reliability_classes.png']
    """
    codes = np.asarray(codes)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(codes.size, -1)
    names = section["classes"]
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _draw_confusion(section["confusion"], names,
                        f"confusion matrix (n={section['n']}, QSO at p_qso >= "
                        f"{section['threshold']:g})",
                        os.path.join(out_dir, "confusion_matrix_classes.png"),
                        figsize=(6.0, 5.0))
        _plot_class_roc(section, codes, probabilities, os.path.join(out_dir, "roc_classes.png"))
        _plot_class_reliability(section, os.path.join(out_dir, "reliability_classes.png"))
        files += ["confusion_matrix_classes.png", "roc_classes.png", "reliability_classes.png"]
        for key, quantity in (("r", "r magnitude"), ("redshift", "redshift")):
            if section[f"by_{key}"] is not None:
                _plot_class_binned(section[f"by_{key}"], names, quantity,
                                   os.path.join(out_dir, f"class_f1_{key}.png"))
                files.append(f"class_f1_{key}.png")
    return files
