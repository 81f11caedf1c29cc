"""Training: the stages of the method under tf.distribute, and the distributed loop."""

from starqso.training.pipeline import STAGES, classification_metrics, fit_run

__all__ = ["STAGES", "classification_metrics", "fit_run"]
