"""Keras models of the multimodal transfer-learning method (Wang et al. 2023).

* :class:`SpectrumEncoder` / :class:`SpectrumClassifier`: spectrum -> 128-d vector -> p(QSO).
* :class:`FeatureGenerator`, :class:`FeatureDiscriminator`, :class:`ConditionalGAN`: image ->
  generated spectral vector.
* :class:`FusionClassifier`: image + vector -> p(QSO); :class:`ImageClassifier`: the
  image-only baseline with the same trunk.
* :class:`StarQSOClassifier`: raw cutout -> p(QSO), scaling and generator inside.

All are Keras functional models registered under the ``starqso`` package, so ``.keras`` files
load with ``keras.saving.load_model`` after ``import starqso.models``.
"""

from starqso.models.classifiers import FusionClassifier, ImageClassifier, StarQSOClassifier
from starqso.models.gan import ConditionalGAN, FeatureDiscriminator, FeatureGenerator
from starqso.models.layers import CutoutScaling, ZeroNoise
from starqso.models.spectrum import SpectrumClassifier, SpectrumEncoder

__all__ = [
    "ConditionalGAN",
    "CutoutScaling",
    "FeatureDiscriminator",
    "FeatureGenerator",
    "FusionClassifier",
    "ImageClassifier",
    "SpectrumClassifier",
    "SpectrumEncoder",
    "StarQSOClassifier",
    "ZeroNoise",
]
