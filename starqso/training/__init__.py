"""Training: stages as units, the runner that owns resume and checkpoints, the distributed loop.

* :mod:`~starqso.training.fit`: ``starqso fit`` (:func:`fit_run`): data in, stages in order,
  export.
* :mod:`~starqso.training.stages`: :class:`EncoderStage`, :class:`GANStage`,
  :class:`PhotometryHeadStage`, :class:`FusionStage`, :class:`MetricStage`,
  :class:`ImageStage` and the :class:`StageContext` they share.
* :mod:`~starqso.training.runner`: :class:`StageRunner` (strategy, seeds, resume, checkpoints,
  saving, the one-line summary).
* :mod:`~starqso.training.inputs`: the input preprocessing, fitted once.
* :mod:`~starqso.training.loop`, :mod:`~starqso.training.strategies`,
  :mod:`~starqso.training.callbacks`: multi-worker loop, ``tf.distribute`` strategies,
  atomic checkpoints.
"""

from starqso.training.fit import fit_run
from starqso.training.stages import (
    STAGES,
    EncoderStage,
    FusionStage,
    GANStage,
    ImageStage,
    MetricStage,
    PhotometryHeadStage,
    Stage,
    StageContext,
    default_stages,
)

__all__ = ["STAGES", "EncoderStage", "FusionStage", "GANStage", "ImageStage", "MetricStage",
           "PhotometryHeadStage", "Stage", "StageContext", "default_stages", "fit_run"]
