"""The stages of the method as units, each run by :class:`~starqso.training.runner.StageRunner`.

1. :class:`EncoderStage`: :class:`SpectrumClassifier` (encoder + head) on objects with a spectrum.
2. :class:`GANStage`: :class:`ConditionalGAN` learns the frozen encoder's vectors from images
   (and the aperture photometry measured from them, with ``model.photometry``); or, with
   ``model.generator: diffusion``, :class:`DiffusionStage`: a conditional diffusion model
   (:class:`ConditionalDiffusion`) learns them, sampled in a few deterministic DDIM steps.
3. :class:`FusionStage`: :class:`FusionClassifier` on image + generated vector (+ photometry),
   for every labelled object, and the deployable :class:`StarQSOClassifier`. Its ``features``
   option trains the benchmark variants on the real spectral vector or on photometry instead.
4. :class:`MetricStage` (with ``model.metric_loss``): a metric-learning head on the generated
   vector, for ``starqso embed``.
5. :class:`ImageStage`: the image-only baseline with the same trunk.

A stage says what it needs and makes; the runner owns the rest (strategy scope, ``fit`` or the
multi-worker loop, checkpoints, resume, saving, metrics, the one-line summary). Every stage
has the same five methods:

* ``prepare(context, train)``: checks and inputs needed whether or not it trains;
* ``build(context)``: the compiled model (called inside the strategy scope);
* ``datasets(context)``: ``(train, validation)`` ``tf.data`` datasets;
* ``outputs(context, model)``: ``{file name: model}`` to save;
* ``evaluate(context, outputs)``: the validation metrics of the summary;
* ``provide(context, outputs)``: what later stages take from it (after a resume, ``outputs``
  holds only ``files[0]``, loaded from the run folder).

Data flows one way: the :class:`StageContext` holds the NumPy arrays (raw objects, the fitted
:class:`~starqso.training.inputs.ModelInputs`, and what earlier stages provided); stages turn
them into ``tf.data`` datasets and models, and read no files but one: a user's trunk weights
(``model.trunk_weights``), loaded into each fresh keras.applications trunk in ``build``.
"""

from __future__ import annotations

from starqso.training.stages.base import (
    Stage,
    generate_vectors,
    summary_metrics,
    with_noisier_copies,
    with_trunk_weights,
)
from starqso.training.stages.context import StageContext
from starqso.training.stages.encoder import EncoderStage
from starqso.training.stages.fusion import FusionStage, shared_trunk_inputs
from starqso.training.stages.generator import DiffusionStage, GANStage, discriminator_filters
from starqso.training.stages.image import ImageStage
from starqso.training.stages.metric import MetricStage
from starqso.training.stages.photometry_head import BLEND_GRID, PhotometryHeadStage, blend_weight

__all__ = ["BLEND_GRID", "STAGES", "DiffusionStage", "EncoderStage", "FusionStage", "GANStage",
           "ImageStage", "MetricStage", "PhotometryHeadStage", "Stage", "StageContext",
           "blend_weight", "default_stages", "discriminator_filters", "generate_vectors",
           "shared_trunk_inputs", "summary_metrics", "with_noisier_copies", "with_trunk_weights"]

#: The stages ``starqso fit`` runs, in order (the generator stage is "gan" or "diffusion").
STAGES = ("encoder", "gan", "diffusion", "photometry_head", "fusion", "metric", "image")


def default_stages(config=None) -> list[Stage]:
    """The method's stages in order: encoder, generator, photometry head (with
    ``model.photometry_head``), fusion (+ deployable), metric head (with
    ``model.metric_loss``), image-only.

    Args:
        config: the run's :class:`~starqso.config.RunConfig`; its ``model.generator`` picks
            the GAN (the default) or the diffusion generator stage.

    Example:
        >>> [stage.name for stage in default_stages()]
        ['encoder', 'gan', 'fusion', 'image']
    """
    diffusion = config is not None and config.model.generator == "diffusion"
    metric = config is not None and config.model.metric_loss != "none"
    head = config is not None and config.model.photometry and config.model.photometry_head
    return [EncoderStage(), DiffusionStage() if diffusion else GANStage(),
            *([PhotometryHeadStage()] if head else []), FusionStage(),
            *([MetricStage()] if metric else []), ImageStage()]
