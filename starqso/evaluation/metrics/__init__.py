"""Classification metrics of p(QSO) against true labels: plain Python values, ready for JSON.

Every function takes 0 (STAR) / 1 (QSO) labels and p(QSO) arrays. Only NumPy is needed at
import time; :func:`classification_metrics` imports scikit-learn when it is called. Nothing
here imports matplotlib or TensorFlow.

Binomial rates (completeness, purity, a bin's QSO fraction, an error rate) come with a Wilson
score interval (:func:`wilson_interval`), by default at :data:`WILSON_CONFIDENCE` = 68.27 %,
the 1-sigma-equivalent band that the error bars of survey papers' completeness/purity figures
usually show. Interval keys are the rate's key plus ``_low`` / ``_high``.

One module a job, every public name importable from here:

- :mod:`~starqso.evaluation.metrics.checks`: the shared input checks (labels, p(QSO),
  threshold).
- :mod:`~starqso.evaluation.metrics.intervals`: :func:`wilson_interval`.
- :mod:`~starqso.evaluation.metrics.classification`: :func:`classification_metrics`,
  :func:`reliability_bins`, :func:`expected_calibration_error`, :func:`binned_metrics`.
- :mod:`~starqso.evaluation.metrics.selection`: :func:`selection_function` with
  :func:`format_selection_markdown` / :func:`selection_csv_text`.
- :mod:`~starqso.evaluation.metrics.quality`: :func:`quality_metrics` of flagged vs
  unflagged objects.
- :mod:`~starqso.evaluation.metrics.multiclass`: the STAR / QSO / GALAXY metrics
  (:func:`predicted_classes`, :func:`class_metrics`, :func:`class_reliability`,
  :func:`binned_class_metrics`), on class codes 0 / 1 / 2 rather than 0/1 labels.

Example:
    >>> from starqso.evaluation.metrics import classification_metrics
    >>> classification_metrics([0, 1], [0.2, 0.9])["accuracy"]
    1.0
"""

from starqso.evaluation.metrics.classification import (
    ECE_BINS,
    binned_metrics,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from starqso.evaluation.metrics.intervals import WILSON_CONFIDENCE, wilson_interval
from starqso.evaluation.metrics.multiclass import (
    CLASS_ORDER,
    binned_class_metrics,
    class_metrics,
    class_reliability,
    predicted_classes,
)
from starqso.evaluation.metrics.quality import quality_metrics
from starqso.evaluation.metrics.selection import (
    R_EDGES,
    REDSHIFT_EDGES,
    SELECTION_COLUMNS,
    format_selection_markdown,
    selection_csv_text,
    selection_function,
)

__all__ = [
    "CLASS_ORDER",
    "ECE_BINS",
    "REDSHIFT_EDGES",
    "R_EDGES",
    "SELECTION_COLUMNS",
    "WILSON_CONFIDENCE",
    "binned_class_metrics",
    "binned_metrics",
    "class_metrics",
    "class_reliability",
    "classification_metrics",
    "expected_calibration_error",
    "format_selection_markdown",
    "predicted_classes",
    "quality_metrics",
    "reliability_bins",
    "selection_csv_text",
    "selection_function",
    "wilson_interval",
]
