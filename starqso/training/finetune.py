"""``starqso finetune``: move a trained model onto a user's own labelled cutouts.

The starting model is the shipped one, or any run or export folder. Its deployable classifier
(scaling, photometry, generator and fusion classifier, with the preprocessing statistics of
its own training kept inside: refitting them on a few hundred objects would move every input
the network learned on) is trained to the depth ``--trainable`` asks for
(:class:`~starqso.models.FineTuner`) by the same :class:`~starqso.training.runner.StageRunner`
as ``fit`` (checkpoints, ``--resume``, strategies, the one-line summary), on the catalogue's
training split; the validation split (stratified, ``--validation-fraction``) early-stops it.
The catalogue's rows are screened as ``starqso predict`` screens them (no source detected,
no-data fills, broken files...): a flagged row is left out and listed in
``data_flags.csv``, or with ``strict`` is an error.

**Fine-tuning never makes the model worse on the user's data**
(:func:`~starqso.training.finetune_selection.select_model`). On the validation split, which
neither model trained on, the fine-tuned model, with its temperature and threshold chosen by
cross-validation (:func:`~starqso.training.finetune_selection.cross_validated_calibration`),
is compared with the base model as it is (its weights, temperature and threshold, p(QSO)
moved to the labels' QSO fraction): the fine-tuned one is kept only when it beats the base
there (a higher macro-F1 and a log loss no higher). Otherwise the run's model is the base
model with its own temperature and threshold, and the command says so in one line and in
``finetune.json``. Either way ``starqso predict``'s default prior becomes the labels' QSO
fraction, the user's sample. ``starqso export`` then writes the chosen model with the chosen
calibration (``finetune.json: calibration``). The run folder is ``fit``'s, plus
``finetune.json`` (the base model, its SHA-256, the depth, learning rates, the validation
metrics before and after, the selection and the calibration).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time

import numpy as np

from starqso._util.atomic import atomic_path, write_json_atomically
from starqso._util.jsonfile import read_json
from starqso.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from starqso.data.arrays import ObjectArrays
from starqso.data.splits import split_indices
from starqso.deploy.export import export_run
from starqso.deploy.folder import check_model_dir, file_sha256
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.training.finetune_selection import base_calibration, select_model
from starqso.training.fit import report_flags
from starqso.training.run_folder import RunFolder
from starqso.training.runner import StageRunner
from starqso.training.stages import Stage, StageContext, summary_metrics
from starqso.training.stages.base import PREDICT_BATCH

FINETUNE_FILE = "finetune.json"
#: Fewest labelled objects of each class a fine-tuning catalogue must hold.
MIN_PER_CLASS = 5


def base_model_file(model_dir) -> tuple[pathlib.Path, int]:
    """The deployable ``.keras`` file of a run or export folder, and its input side.

    Raises:
        InputError: the folder is neither a complete run folder nor an export folder.
    """
    folder = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
    run = RunFolder(folder)
    if run.is_complete():
        model_config = run.load_config().model
        _two_classes(model_config.classes, folder)
        return run.deployable_path, model_config.image_size
    metadata = folder / "metadata.json"
    keras_file = folder / "starqso_classifier.keras"
    if metadata.is_file() and keras_file.is_file():
        checked = check_model_dir(folder, "keras")
        _two_classes(checked.get("class_names", ["STAR", "QSO"]), folder)
        return keras_file, int(checked["input_shape"][1])
    raise InputError(f"--model must be a starqso run folder (config.yaml and "
                     f"starqso_classifier.keras) or an export folder (metadata.json and "
                     f"starqso_classifier.keras). Received: {folder}"
                     + ("" if folder.exists() else " (does not exist)"))


def _two_classes(names, folder):
    """Fine-tuning trains STAR/QSO models: a model of more classes is refused in one line."""
    if len(names) != 2:
        raise InputError(f"finetune trains two-class (STAR/QSO) models in this release; the "
                         f"model tells apart {'/'.join(names)}. Received: --model {folder}")


def deployable(model):
    """The uncalibrated StarQSOClassifier inside an exported (calibrated) model, or ``model``."""
    from starqso.models import CalibratedClassifier

    return model.classifier if isinstance(model, CalibratedClassifier) else model


def model_config_of(classifier, base):
    """The :class:`~starqso.config.ModelConfig` a deployable classifier was built with."""
    generator, fusion = classifier.generator, classifier.fusion
    trunk = generator.image_size
    return dataclasses.replace(
        base, image_size=int(classifier.image_size),
        trunk_size=None if trunk == classifier.image_size else int(trunk),
        image_filters=tuple(fusion.filters), feature_dim=int(fusion.feature_dim),
        noise_dim=int(generator.noise_dim), dense_units=int(fusion.dense_units),
        dropout=float(fusion.dropout), photometry=classifier.photometry is not None,
        shared_trunk=bool(getattr(fusion, "embedding_dim", 0)))


class FinetuneStage(Stage):
    """The base model's deployable classifier, trained to ``train_depth`` on labelled cutouts."""

    name = "finetune"
    files = ("starqso_classifier.keras",)

    def __init__(self, base_file, train_depth="head", lr_decay=0.75, epochs=10):
        self.base_file = pathlib.Path(base_file)
        self.train_depth = train_depth
        self.lr_decay = float(lr_decay)
        self.num_epochs = int(epochs)

    def epochs(self, training) -> int:
        return self.num_epochs

    def prepare(self, context, train):
        for name, index in (("training", context.train), ("validation", context.validation)):
            labels = context.labels[context.labelled(index)]
            counts = [int((labels == value).sum()) for value in (0, 1)]
            if min(counts) < 1:
                raise InputError(f"finetune needs STARs and QSOs in its {name} split. "
                                 f"Received: {counts[0]} STAR, {counts[1]} QSO")

    def build(self, context):
        from starqso.deploy.folder import load_keras_model
        from starqso.models import FineTuner

        classifier = deployable(load_keras_model(self.base_file, checked=True))
        tuner = FineTuner(classifier, self.train_depth, self.lr_decay, name="finetuner")
        tuner.compile(learning_rate=context.config.training.learning_rate)
        tuner.build_optimizers()
        return tuner

    def datasets(self, context):
        return context.split_datasets({"image": context.arrays.images}, context.target,
                                      context.labelled, augment=True)

    def outputs(self, context, model):
        return {self.files[0]: model.classifier}

    def evaluate(self, context, outputs):
        return validation_metrics(outputs[self.files[0]], context)


def validation_metrics(classifier, context) -> dict:
    """:func:`summary_metrics` of a deployable classifier on the labelled validation objects."""
    index = context.labelled(context.validation)
    probabilities = classifier.predict({"image": context.arrays.images[index]},
                                       batch_size=PREDICT_BATCH, verbose=0)
    return summary_metrics(context.labels[index], probabilities)


#: Where the fine-tuned weights go when the base model is kept (the run's model is the base).
REJECTED_FILE = "finetune_rejected.keras"


def _select(folder, base_file, context, labels, seed) -> dict:
    """:func:`select_model` on the validation split; the run's model becomes the chosen one."""
    import os

    from starqso.deploy.folder import load_keras_model

    index = context.labelled(context.validation)
    images = {"image": context.arrays.images[index]}
    raws = []
    for path in (base_file, folder.deployable_path):
        model = deployable(load_keras_model(path, checked=True))
        raws.append(np.asarray(model.predict(images, batch_size=PREDICT_BATCH, verbose=0),
                               np.float64).ravel())
    known = labels[labels >= 0]
    selection = select_model(labels[index], raws[0], raws[1], base_calibration(base_file),
                             float(np.mean(known == 1)), seed=seed)
    if selection["kept"] == "base":
        # The run's model is what its export ships: the base's weights; the fine-tuned ones
        # stay beside it for inspection.
        os.replace(folder.deployable_path, folder / REJECTED_FILE)
        base = deployable(load_keras_model(base_file, checked=True))
        with atomic_path(folder.deployable_path) as temporary:
            base.save(temporary)
    return selection


def _settings(base_file, train_depth, lr_decay, epochs, learning_rate):
    return {"base_model": str(base_file.resolve()), "base_sha256": file_sha256(base_file),
            "trainable": train_depth, "lr_decay": float(lr_decay), "epochs": int(epochs),
            "learning_rate": float(learning_rate)}


def finetune_run(out_dir, data, model_dir=None, *, trainable="head", lr_decay=0.75,
                 epochs=20, learning_rate=1e-4, validation_fraction=0.2, batch_size=64,
                 seed=0, strategy="default", resume=False, strict=False, export=True,
                 log=print):
    """Fine-tune a model on a labelled catalogue into a run folder, then export it.

    Args:
        out_dir: the new run folder.
        data: catalogue (CSV/FITS) with ``id``, ``image`` and ``label`` (STAR/QSO).
        model_dir: run or export folder to start from; the shipped model when None.
        trainable: ``"head"``, a number of trunk blocks (1 to the trunk's stages) or
            ``"all"`` (see :class:`~starqso.models.FineTuner`).
        lr_decay: learning-rate factor per block deeper than the head, in (0, 1].
        epochs: at most this many epochs (early stopping on the validation loss).
        learning_rate: the head's learning rate.
        validation_fraction: stratified share of the labelled objects held out for early
            stopping, calibration and the threshold.
        batch_size: objects per step, at most; smaller for small catalogues (about a tenth
            of the training split, at least 8), recorded in ``config.yaml``.
        seed: seed of the split, the shuffles and the augmentation.
        strategy: "default", "mirrored" or "multiworker".
        resume: continue an interrupted fine-tuning in ``out_dir`` (with its own settings).
        strict: fail on any catalogue row that would be flagged.
        export: export the result into ``out_dir/export``.
        log: callable receiving progress lines.

    Returns:
        dict: ``before`` and ``after`` validation metrics, and the settings.

    Raises:
        InputError: a bad option, model folder or catalogue; too few labels or one class
            only; an existing run folder without ``resume``.

    Example:
        >>> finetune_run("runs/mine", "my_labels.csv", trainable=1)  # doctest: +SKIP
    """
    folder = RunFolder(out_dir)
    settings_path = folder / FINETUNE_FILE
    if resume:
        if not settings_path.is_file():
            raise InputError(f"--resume needs a finetune run folder ({FINETUNE_FILE}). "
                             f"Received: {folder.root}")
        saved = read_json(settings_path)
        base_file = pathlib.Path(saved["base_model"])
        trainable, lr_decay = saved["trainable"], saved["lr_decay"]
        epochs, learning_rate = saved["epochs"], saved["learning_rate"]
        config = folder.load_config()
        _, data_path = folder.data_source()
        if data is not None and str(pathlib.Path(data).resolve()) != data_path:
            raise InputError(f"--resume continues {folder.root} on the data it started with. "
                             f"Received: --data {data}, but the run used {data_path}")
        data = data_path
        image_size = config.model.image_size
    else:
        if folder.holds_run():
            raise InputError(f"{folder.root} already holds a run; pass --resume to continue "
                             f"it or choose another --out. Received: out={folder.root}")
        if data is None:
            raise InputError("finetune needs --data: a catalogue with id, image and label")
        for name, value, accept, expected in (
                ("--lr-decay", lr_decay, lambda v: 0 < v <= 1, "in (0, 1]"),
                ("--learning-rate", learning_rate, lambda v: 0 < v <= 1, "in (0, 1]"),
                ("--validation-fraction", validation_fraction, lambda v: 0 < v < 1,
                 "in (0, 1)")):
            if not accept(float(value)):
                raise InputError(f"{name} must be {expected}. Received: {value}")
        for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
            if int(value) < 1:
                raise InputError(f"{name} must be at least 1. Received: {value}")
        if trainable not in ("head", "all"):
            try:
                trainable = int(trainable)
            except (TypeError, ValueError):
                raise InputError(f"--trainable must be head, all or a number of trunk "
                                 f"blocks. Received: {trainable!r}") from None
        base_file, image_size = base_model_file(model_dir)
        config = None
    began = time.perf_counter()
    log(f"reading catalogue {data} ...")
    arrays = ObjectArrays.from_catalog(data, image_size, require_labels=True, strict=strict)
    labels = arrays.labels.astype(np.int64)
    counts = [int((labels == value).sum()) for value in (0, 1)]
    if min(counts) < MIN_PER_CLASS:
        raise InputError(f"finetune needs at least {MIN_PER_CLASS} usable labelled objects of "
                         f"each class. Received: {counts[0]} STAR, {counts[1]} QSO in {data}")

    from starqso.deploy.folder import load_keras_model

    fraction = config.data.validation_fraction if config is not None else validation_fraction
    split_seed = config.data.split_seed if config is not None else seed
    train, validation, test = split_indices(labels, fraction, 0.0, seed=split_seed)
    stage = FinetuneStage(base_file, trainable, lr_decay, epochs)
    if config is None:
        # A few hundred labels at batch 64 would be a handful of steps per epoch: the batch
        # shrinks to about a tenth of the training split (at least 8) so that even 100
        # labels give ~10 optimizer steps per epoch.
        batch_size = int(min(batch_size, max(8, len(train) // 10)))
        config = RunConfig(
            preset="base", model=ModelConfig(image_size=image_size, photometry=False),
            data=DataConfig(validation_fraction=validation_fraction, split_seed=seed,
                            cutout_size=max(image_size, 16)),
            training=TrainingConfig(seed=seed, batch_size=batch_size,
                                    learning_rate=learning_rate, fusion_epochs=epochs))
        # The runner first: it starts TensorFlow (thread pools, and the collectives of a
        # multi-worker strategy, which must come before any other TensorFlow work).
        runner = StageRunner(folder, config, strategy, resume, log, known_stages=[stage.name])
        base = deployable(load_keras_model(base_file, checked=True))
        from starqso.models.fine_tuner import checked_depth

        try:  # the depth against the base model's blocks, before anything is written
            checked_depth(base, trainable)
        except ValueError as error:
            raise InputError(str(error)) from None
        # The model section says what the base model is (the runner reads training only).
        config = dataclasses.replace(config, model=model_config_of(base, ModelConfig()))
        runner.config = config
    else:
        runner = StageRunner(folder, config, strategy, resume, log, known_stages=[stage.name])
    context = StageContext(config, arrays, train, validation, test, inputs=None)
    if not resume:
        # The base model as loaded for the config (outside the strategy scope); the stage
        # loads its own copy inside it to train.
        saved = {**_settings(base_file, trainable, lr_decay, epochs, learning_rate),
                 "before": validation_metrics(base, context)}
        if runner.chief:
            folder.save_config(config)
            folder.save_data_source(str(pathlib.Path(data).resolve()))
            folder.save_split({name: arrays.ids[index] for name, index in (
                ("train", train), ("validation", validation), ("test", test))})
            if arrays.flags:
                report_flags(folder, arrays.flags, log)
            write_json_atomically(settings_path, saved)
    log(f"[base] validation (n={saved['before']['n']}) before fine-tuning: " + " ".join(
        f"{key}={value:.4f}" for key, value in saved["before"].items() if key != "n"))
    runner.run(stage, context)
    saved["after"] = runner.metrics[stage.name]
    if runner.chief:
        if "selection" not in saved:  # a resumed run that chose already keeps its choice
            saved["selection"] = _select(folder, base_file, context, labels, split_seed)
        log(f"[finetune] {saved['selection']['message']}")
        write_json_atomically(settings_path, saved)
        shutil.rmtree(folder / "backup", ignore_errors=True)
        if export:
            export_run(folder.root, folder.export_dir, log=log, arrays=arrays)
    log(f"done in {time.perf_counter() - began:.0f} s -> {folder.root}")
    return saved
