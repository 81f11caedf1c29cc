"""Score ``starqso predict`` output against a labelled catalogue (NumPy, scikit-learn, matplotlib).

Four modules, one job each:

- :mod:`starqso.evaluation.metrics`: the metrics of 0 (STAR) / 1 (QSO) labels against p(QSO)
  (:func:`classification_metrics`, :func:`binned_metrics`, :func:`reliability_bins`,
  :func:`expected_calibration_error`, :func:`quality_metrics` of flagged vs unflagged objects,
  :func:`selection_function` with :func:`format_selection_markdown` /
  :func:`selection_csv_text`), with Wilson intervals (:func:`wilson_interval`) on the rates,
  as plain Python values that go straight into JSON.
- :mod:`starqso.evaluation.join`: :func:`join_predictions`, the ``id`` join of a predictions
  file with a truth catalogue, saying which rows could not be scored and why.
- :mod:`starqso.evaluation.plots`: the PNG figures (:data:`PLOT_FILES`); the only module that
  imports matplotlib.
- :mod:`starqso.evaluation.report`: :func:`evaluate_predictions`, the whole ``starqso
  evaluate`` command (join, metrics, plots, ``metrics.json``), and :func:`format_report`.

Nothing here imports TensorFlow: a laptop without it can score predictions made elsewhere.

Example:
    >>> from starqso.evaluation import evaluate_predictions, format_report
    >>> print(format_report(evaluate_predictions("p.csv", "t.csv", "ev")))  # doctest: +SKIP
"""

from starqso.evaluation.join import SHOWN_IDS, join_predictions
from starqso.evaluation.metrics import (
    ECE_BINS,
    R_EDGES,
    REDSHIFT_EDGES,
    SELECTION_COLUMNS,
    WILSON_CONFIDENCE,
    binned_metrics,
    classification_metrics,
    expected_calibration_error,
    format_selection_markdown,
    quality_metrics,
    reliability_bins,
    selection_csv_text,
    selection_function,
    wilson_interval,
)
from starqso.evaluation.plots import PLOT_FILES, write_plots
from starqso.evaluation.report import evaluate_predictions, format_report

__all__ = [
    "ECE_BINS",
    "PLOT_FILES",
    "REDSHIFT_EDGES",
    "R_EDGES",
    "SELECTION_COLUMNS",
    "SHOWN_IDS",
    "WILSON_CONFIDENCE",
    "binned_metrics",
    "classification_metrics",
    "evaluate_predictions",
    "expected_calibration_error",
    "format_report",
    "format_selection_markdown",
    "join_predictions",
    "quality_metrics",
    "reliability_bins",
    "selection_csv_text",
    "selection_function",
    "wilson_interval",
    "write_plots",
]
