"""The :class:`StageContext`: the data, split, fitted inputs and products one run's stages share."""

from __future__ import annotations

import dataclasses

import numpy as np

from starqso.data.splits import split_indices
from starqso.training.inputs import ModelInputs


@dataclasses.dataclass
class StageContext:
    """What the stages of one run share: data, split, fitted inputs, and stage products.

    Attributes:
        config: the run's :class:`~starqso.config.RunConfig`.
        arrays: the objects (:class:`~starqso.data.ObjectArrays`).
        train, validation, test: index arrays of the split.
        inputs: the fitted :class:`~starqso.training.inputs.ModelInputs`.
        products: what completed stages provide (``"spectrum_classifier"``, ``"encoder"``,
            ``"head"``, ``"vectors"``, ``"generator"``, ...).
    """

    config: object
    arrays: object
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    inputs: object
    products: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, config, arrays) -> StageContext:
        """Split the objects (``data.*`` fractions and seed) and fit the input preprocessing."""
        train, validation, test = split_indices(
            arrays.labels.astype(np.int64), config.data.validation_fraction,
            config.data.test_fraction, seed=config.data.split_seed)
        inputs = ModelInputs.fit(arrays.images, train, config.model, config.training.seed)
        return cls(config, arrays, train, validation, test, inputs)

    @property
    def class_names(self) -> tuple:
        """The classes the run's classifiers tell apart (``model.classes``), in code order."""
        return tuple(self.config.model.classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels (:data:`starqso.schema.LABEL_CODES`); an object of a class the run
        does not tell apart (a GALAXY of a STAR/QSO run) is unknown, -1, so no classifier
        trains or is scored on it."""
        labels = self.arrays.labels.astype(np.int64)
        return np.where(labels < self.num_classes, labels, -1)

    @property
    def target(self) -> np.ndarray:
        """Labels as the (N, 1) float32 training target."""
        return self.labels.astype(np.float32).reshape(-1, 1)

    def labelled(self, index) -> np.ndarray:
        """The labelled objects (of the run's classes) among ``index``."""
        return index[self.labels[index] >= 0]

    def with_spectrum(self, index) -> np.ndarray:
        """The labelled objects with a spectrum among ``index``."""
        index = self.labelled(index)
        return index[self.arrays.has_spectrum[index]]

    def datasets(self, inputs, outputs, train_index, validation_index, augment):
        """Shuffled (augmented) training and plain validation datasets of the two subsets."""
        from starqso.data.datasets import make_dataset

        training = self.config.training
        return (make_dataset({k: v[train_index] for k, v in inputs.items()},
                             outputs[train_index], batch_size=training.batch_size,
                             shuffle=True, augment=augment and training.augment,
                             seed=training.seed),
                make_dataset({k: v[validation_index] for k, v in inputs.items()},
                             outputs[validation_index], batch_size=training.batch_size))

    def split_datasets(self, inputs, outputs, select, augment):
        """:meth:`datasets` of the objects ``select`` (:meth:`labelled`, :meth:`with_spectrum`)
        keeps of the training and of the validation split."""
        return self.datasets(inputs, outputs, select(self.train), select(self.validation),
                             augment)
