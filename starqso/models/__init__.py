"""Keras models of the multimodal transfer-learning method (Wang et al. 2023).

* :class:`SpectrumEncoder` / :class:`SpectrumClassifier`: spectrum -> 128-d vector -> p(QSO).
* :class:`FeatureGenerator`, :class:`FeatureDiscriminator`, :class:`ConditionalGAN`: image ->
  generated spectral vector; :class:`FeatureDenoiser`, :class:`ConditionalDiffusion` and the
  sampler :class:`DiffusionGenerator`: the same by conditional diffusion
  (``model.generator: diffusion``).
* :class:`RelativeSelfAttention` and :func:`~starqso.models.trunks.image_trunk_features`: the
  image trunks (``model.trunk``).
* :class:`FusionClassifier`: image + vector -> p(QSO) (or the generator's trunk embedding +
  vector with ``model.shared_trunk``: :func:`~.classifiers.generator_with_embedding`);
  :class:`ImageClassifier`: the image-only baseline with the same trunk.
* :class:`StarQSOClassifier`: raw cutout -> p(QSO), scaling, photometry and generator inside.
* :class:`MetricHead`, :class:`MetricLearner` (with :class:`ProxyLogits`,
  :class:`ProxyNCALoss`): a metric-learning embedding of the generated vector
  (``model.metric_loss``), for ``starqso embed`` / ``similar``.
* :class:`CutoutScaling`, :class:`AperturePhotometry`: the in-graph preprocessing layers.
* :class:`CalibratedClassifier`, :class:`TemperatureScaling`: temperature-scaled p(QSO), the
  model ``starqso export`` writes.
* :class:`FineTuner`: trains the last blocks of a deployable classifier on new labels
  (``starqso finetune``).

All are Keras functional models registered under the ``starqso`` package, so ``.keras`` files
load with ``keras.saving.load_model`` after ``import starqso.models``.
"""

from starqso.models.calibration import CalibratedClassifier, LogitBlend, TemperatureScaling
from starqso.models.classifiers import (
    FusionClassifier,
    ImageClassifier,
    PhotometryClassifier,
    StarQSOClassifier,
)
from starqso.models.diffusion import ConditionalDiffusion, DiffusionGenerator, FeatureDenoiser
from starqso.models.fine_tuner import FineTuner
from starqso.models.gan import ConditionalGAN, FeatureDiscriminator, FeatureGenerator
from starqso.models.layers import AperturePhotometry, CutoutScaling, ZeroNoise
from starqso.models.metric import MetricHead, MetricLearner, ProxyLogits, ProxyNCALoss
from starqso.models.spectrum import SpectrumClassifier, SpectrumEncoder
from starqso.models.trunks import RelativeSelfAttention

__all__ = [
    "AperturePhotometry",
    "CalibratedClassifier",
    "ConditionalDiffusion",
    "ConditionalGAN",
    "CutoutScaling",
    "DiffusionGenerator",
    "FeatureDenoiser",
    "FeatureDiscriminator",
    "FeatureGenerator",
    "FineTuner",
    "FusionClassifier",
    "ImageClassifier",
    "LogitBlend",
    "MetricHead",
    "MetricLearner",
    "PhotometryClassifier",
    "ProxyLogits",
    "ProxyNCALoss",
    "RelativeSelfAttention",
    "SpectrumClassifier",
    "SpectrumEncoder",
    "StarQSOClassifier",
    "TemperatureScaling",
    "ZeroNoise",
]
