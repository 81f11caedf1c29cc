"""Score ``starqso predict`` output against a labelled catalogue (NumPy, scikit-learn, matplotlib).

Four modules, one job each:

- :mod:`starqso.evaluation.metrics`: the metrics of 0 (STAR) / 1 (QSO) labels against p(QSO)
  (:func:`classification_metrics`, :func:`binned_metrics`, :func:`reliability_bins`,
  :func:`expected_calibration_error`, :func:`quality_metrics` of flagged vs unflagged objects,
  :func:`selection_function` with :func:`format_selection_markdown` /
  :func:`selection_csv_text`), with Wilson intervals (:func:`wilson_interval`) on the rates,
  as plain Python values that go straight into JSON; and the STAR / QSO / GALAXY metrics
  (:func:`class_metrics`, :func:`binned_class_metrics`, :func:`class_reliability`,
  :func:`predicted_classes`).
- :mod:`starqso.evaluation.join`: :func:`join_predictions`, the ``id`` join of a predictions
  file with a truth catalogue, saying which rows could not be scored and why.
- :mod:`starqso.evaluation.plots`: the PNG figures (:data:`PLOT_FILES`, and
  :data:`CLASS_PLOT_FILES` of the three-class section); the only module that imports
  matplotlib.
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
    binned_class_metrics,
    binned_metrics,
    class_metrics,
    class_reliability,
    classification_metrics,
    expected_calibration_error,
    format_selection_markdown,
    predicted_classes,
    quality_metrics,
    reliability_bins,
    selection_csv_text,
    selection_function,
    wilson_interval,
)
from starqso.evaluation.plots import CLASS_PLOT_FILES, PLOT_FILES, write_class_plots, write_plots
from starqso.evaluation.report import evaluate_predictions, format_report, three_class_metrics

__all__ = [
    "CLASS_PLOT_FILES",
    "ECE_BINS",
    "PLOT_FILES",
    "REDSHIFT_EDGES",
    "R_EDGES",
    "SELECTION_COLUMNS",
    "SHOWN_IDS",
    "WILSON_CONFIDENCE",
    "binned_class_metrics",
    "binned_metrics",
    "class_metrics",
    "class_reliability",
    "classification_metrics",
    "evaluate_predictions",
    "expected_calibration_error",
    "format_report",
    "format_selection_markdown",
    "join_predictions",
    "predicted_classes",
    "quality_metrics",
    "reliability_bins",
    "selection_csv_text",
    "selection_function",
    "three_class_metrics",
    "wilson_interval",
    "write_class_plots",
    "write_plots",
]
