"""``starqso fit``: the stages of the method, in order, into one run folder.

1. ``encoder``: :class:`SpectrumClassifier` (encoder + head) on objects with a spectrum.
2. ``gan``: :class:`ConditionalGAN` learns the frozen encoder's vectors from images (and the
   aperture photometry measured from them, with ``model.photometry``).
3. ``fusion``: :class:`FusionClassifier` on image + generated vector (+ photometry), for every
   labelled object.
4. ``image``: the image-only baseline with the same trunk.

The run folder::

    config.yaml              the run configuration (strict; reload with --config)
    data.json                the catalogue trained on (null: simulated demo data)
    data_flags.csv           catalogue rows left out or repaired, with the reason (if any)
    preprocessing.json       cutout scaling statistics (also inside every model)
    split.json               ids of the train / validation / test objects
    spectrum_classifier.keras, spectrum_encoder.keras, generator.keras,
    discriminator.keras, fusion_classifier.keras, image_classifier.keras
    starqso_classifier.keras the deployable image -> p(QSO) model
    metrics.json             validation metrics per stage
    history.json             per-epoch training history per stage
    state.json               completed stages (for --resume)
    export/                  SavedModel, TFLite fp32/fp16/int8, checks, model card
    logs/STAGE/              TensorBoard logs
    backup/STAGE/            last-epoch checkpoints while a stage runs (--resume)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from starqso.config import RunConfig, config_to_dict, load_config, save_config
from starqso.errors import InputError

STAGES = ("encoder", "gan", "fusion", "image")
MODEL_FILES = {
    "encoder": ("spectrum_classifier.keras", "spectrum_encoder.keras"),
    "gan": ("generator.keras", "discriminator.keras"),
    "fusion": ("fusion_classifier.keras", "starqso_classifier.keras"),
    "image": ("image_classifier.keras",),
}


def discriminator_filters(model_config):
    """The discriminator's image trunk: half the generator's widths.

    It only has to judge whether a vector fits an image; a lighter trunk halves the GAN's cost
    per step (the GAN stage dominates `fit` on CPUs) and keeps it from overpowering the
    generator.
    """
    return tuple(max(4, width // 2) for width in model_config.image_filters)


def _write_json(path, payload):
    temporary = pathlib.Path(f"{path}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def classification_metrics(labels, probabilities, threshold=0.5):
    """The stage summary: n, accuracy, F1(QSO), macro-F1 and ROC AUC (when both classes)."""
    from starqso.evaluation import classification_metrics as full_metrics

    metrics = full_metrics(labels, probabilities, threshold)
    return {key: metrics[key] for key in ("n", "accuracy", "f1_qso", "macro_f1", "roc_auc")
            if metrics[key] is not None}


def _summary(stage, metrics, seconds, epochs):
    shown = " ".join(f"{key}={value:.4f}" for key, value in metrics.items()
                     if key != "n" and isinstance(value, float))
    return f"[{stage}] {epochs} epochs, {seconds:.0f} s, validation (n={metrics.get('n')}): {shown}"


class _Run:
    """State shared by the stages of one ``fit``."""

    def __init__(self, out_dir, config, strategy_name, resume, log):
        import keras

        from starqso.training.strategies import is_chief, make_strategy

        self.config = config
        self.log = log
        self.strategy = make_strategy(strategy_name)
        self.multi_worker = strategy_name == "multiworker"
        self.chief = is_chief(self.strategy)
        self.out = pathlib.Path(out_dir)
        # Non-chief workers write to a scratch folder: only the chief's files are the run.
        self.write_dir = self.out if self.chief else pathlib.Path(
            tempfile.mkdtemp(prefix="starqso-worker-"))
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "state.json"
        self.completed = []
        if resume and self.state_path.exists():
            self.completed = json.loads(self.state_path.read_text())["completed"]
        self.metrics = {}
        self.history = {}
        if resume and (self.out / "metrics.json").exists():
            self.metrics = json.loads((self.out / "metrics.json").read_text())
            if (self.out / "history.json").exists():
                self.history = json.loads((self.out / "history.json").read_text())
        # Same seed, same config, same machine -> same metrics. (tf.config.experimental.
        # enable_op_determinism is not used: under TF 2.21 on CPU it corrupts the heap in
        # Conv1D training; seeded CPU kernels are reproducible without it.)
        keras.utils.set_random_seed(config.training.seed)
        if config.training.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        self.verbose = 1 if sys.stdout.isatty() else 2

    def save_model(self, model, name):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*__array__.*",
                                    category=DeprecationWarning)
            model.save(self.write_dir / name)

    def finish_stage(self, stage, metrics, history, seconds, epochs):
        self.metrics[stage] = metrics
        self.history[stage] = history
        if stage not in self.completed:
            self.completed.append(stage)
        if self.chief:
            _write_json(self.out / "metrics.json", self.metrics)
            _write_json(self.out / "history.json", self.history)
            _write_json(self.state_path, {"completed": self.completed})
            shutil.rmtree(self.out / "backup" / stage, ignore_errors=True)
        self.log(_summary(stage, metrics, seconds, epochs))

    def train(self, model, stage, train_dataset, validation_dataset, epochs, monitor):
        """``fit()`` (or the distributed loop across workers) with the run's callbacks."""
        import keras

        from starqso.training.callbacks import AtomicBackupAndRestore

        backup = self.out / "backup" / stage
        patience = self.config.training.early_stopping_patience
        if self.multi_worker:
            from starqso.training.loop import distributed_fit

            history = distributed_fit(
                model, self.strategy, train_dataset, validation_dataset, epochs,
                monitor=monitor, patience=patience, backup_dir=backup,
                write_backup=self.chief, log=lambda line: self.log(f"[{stage}] {line}"))
            return history.history
        callbacks = [
            AtomicBackupAndRestore(str(backup)),
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=patience,
                                          restore_best_weights=True),
            keras.callbacks.TensorBoard(str(self.write_dir / "logs" / stage)),
        ]
        history = model.fit(train_dataset, validation_data=validation_dataset, epochs=epochs,
                            callbacks=callbacks, verbose=self.verbose)
        return {key: [float(v) for v in values] for key, values in history.history.items()}


def _check_resumable(out):
    """A run folder's state and the models of its completed stages, checked before TF."""
    from starqso.model_files import check_keras_file

    state_path = out / "state.json"
    if not state_path.exists():
        return
    try:
        completed = json.loads(state_path.read_text())["completed"]
        unknown = [stage for stage in completed if stage not in STAGES]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{state_path} is not a starqso run state ({err}); start a new --out")
    if unknown:
        raise InputError(f"{state_path} lists unknown stages. Received: {unknown}")
    for stage in completed:
        for name in MODEL_FILES[stage]:
            check_keras_file(out / name)


def _saved_config(path):
    """A run folder's config; folders from before ``model.photometry`` existed trained without."""
    import dataclasses

    import yaml

    config = load_config(path)
    model = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {}
    if "photometry" not in model:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                       photometry=False))
    return config


def _load_arrays(config, data, log, strict=False):
    from starqso.io.dataset import load_catalog_arrays
    from starqso.simulate.arrays import simulate_arrays

    if data is None:
        log(f"simulating {config.data.num_objects} demo objects (seed "
            f"{config.data.simulation_seed}) ...")
        return simulate_arrays(config.data.num_objects, config.data.simulation_seed,
                               image_size=config.model.image_size,
                               cutout_size=config.data.cutout_size,
                               qso_fraction=config.data.qso_fraction)
    log(f"reading catalogue {data} ...")
    return load_catalog_arrays(data, config.model.image_size, require_labels=True,
                               strict=strict)


def _report_flags(out, flags, log):
    """``data_flags.csv``: every catalogue row that was left out, or used after a repair."""
    if not flags:
        return
    import csv
    import io

    from starqso.io._fits import write_bytes_atomically

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("row", "id", "used", "flag"))
    writer.writerows((f["row"], f["id"], "yes" if f["used"] else "no", f["flag"])
                     for f in flags)
    write_bytes_atomically(out / "data_flags.csv", buffer.getvalue().encode(), overwrite=True)
    left_out = sum(not f["used"] for f in flags)
    first = flags[0]
    log(f"{len(flags)} catalogue rows flagged ({left_out} left out, {len(flags) - left_out} "
        f"used with a repair or without their spectrum), listed in {out / 'data_flags.csv'}; "
        f"first: row {first['row']} (id {first['id']!r}): {first['flag']}")


def _scale(scaling, images, batch=2048):
    return np.concatenate([np.asarray(scaling(images[start:start + batch]))
                           for start in range(0, len(images), batch)])


def fit_run(out_dir, config: RunConfig | None = None, data=None, strategy="default",
            resume=False, log=print, arrays=None, export=True, strict=False):
    """Train every stage and write the run folder.

    Args:
        out_dir: run folder.
        config: run configuration (``PRESETS["base"]`` when None). With ``resume`` the run
            folder's own ``config.yaml`` is used.
        data: catalogue path (CSV/FITS) or None for freshly simulated demo data.
        strategy: "default", "mirrored" or "multiworker".
        resume: continue an interrupted run in ``out_dir``.
        log: callable receiving progress lines.
        arrays: objects already in memory (the dict of :func:`starqso.io.load_catalog_arrays`
            or :func:`starqso.simulate.simulate_arrays`) instead of ``data``; for benchmarks
            that train several runs on one simulation (``resume`` then needs the same
            arrays again).
        export: export the deployable model into ``out_dir/export`` at the end.
        strict: fail on any catalogue row that would be flagged; otherwise unusable rows
            are left out and every flagged row is listed in ``out_dir/data_flags.csv``.

    Returns:
        dict of validation metrics per stage.

    Raises:
        InputError: a bad configuration, data, or an existing run folder without ``resume``.

    Example:
        >>> metrics = fit_run("runs/demo", get_preset("tiny"))  # doctest: +SKIP
    """
    from starqso.config import PRESETS

    out = pathlib.Path(out_dir)
    config_path = out / "config.yaml"
    if arrays is not None and data is not None:
        raise InputError(f"fit takes --data or in-memory arrays, not both. Received: "
                         f"data={data}")
    if resume:
        if not config_path.exists():
            raise InputError(f"--resume needs a run folder with config.yaml. Received: "
                             f"{out} has none")
        saved = _saved_config(config_path)
        if config is not None and config_to_dict(config) != config_to_dict(saved):
            raise InputError(f"--resume continues {out} with its own config.yaml; drop "
                             f"--config/--preset or start a new --out. Received: a different "
                             f"configuration")
        config = saved
        _check_resumable(out)
    else:
        if (out / "state.json").exists() or config_path.exists():
            raise InputError(f"{out} already holds a run; pass --resume to continue it or "
                             f"choose another --out. Received: out={out}")
        config = config or PRESETS["base"]
    # The data a run trains on is part of it: --resume must not silently switch to demo data.
    data_path = out / "data.json"
    given = str(pathlib.Path(data).resolve()) if data is not None else None
    if resume and data_path.exists():
        saved_data = json.loads(data_path.read_text())["data"]
        if data is not None and given != saved_data:
            raise InputError(f"--resume continues {out} on the data it started with. Received: "
                             f"--data {data}, but the run used "
                             f"{saved_data or 'simulated demo data'}")
        data = saved_data
    began = time.perf_counter()
    # The data first: a bad catalogue stops the run before it leaves a folder behind.
    flags = []
    if arrays is None:
        arrays = _load_arrays(config, data, log, strict)
        flags = arrays.get("flags", [])
    run = _Run(out, config, strategy, resume, log)
    if run.chief:
        save_config(config, config_path)
        if not data_path.exists():
            _write_json(data_path, {"data": given})
        _report_flags(out, flags, log)
    _stages(run, arrays)
    if run.chief:
        shutil.rmtree(out / "backup", ignore_errors=True)
    if run.chief and export:
        from starqso.export import export_run

        export_run(out, out / "export", log=log)
    log(f"done in {time.perf_counter() - began:.0f} s -> {out}")
    return run.metrics


def _stages(run, arrays):
    import keras

    from starqso.data.pipeline import make_dataset, split_indices
    from starqso.models import (
        AperturePhotometry,
        ConditionalGAN,
        CutoutScaling,
        FeatureDiscriminator,
        FeatureGenerator,
        FusionClassifier,
        ImageClassifier,
        SpectrumClassifier,
        SpectrumEncoder,
        StarQSOClassifier,
    )
    from starqso.preprocessing.scaling import cutout_statistics

    config, model_config, training = run.config, run.config.model, run.config.training
    labels = arrays["labels"].astype(np.int64)
    train, validation, test = split_indices(labels, config.data.validation_fraction,
                                            config.data.test_fraction,
                                            seed=config.data.split_seed)
    if run.chief:
        _write_json(run.out / "split.json", {
            name: [str(i) for i in arrays["ids"][index]]
            for name, index in (("train", train), ("validation", validation), ("test", test))})
    stats = cutout_statistics(arrays["images"][train], seed=training.seed)
    scaling = CutoutScaling(**stats, name="cutout_scaling")
    scaled = _scale(scaling, arrays["images"])
    images = {"image": scaled}  # the inputs of the generator and the fusion classifier
    photometry = None
    if model_config.photometry:
        raw = _scale(AperturePhotometry(model_config.image_size), arrays["images"])
        photometry = AperturePhotometry(model_config.image_size, raw[train].mean(axis=0),
                                        raw[train].std(axis=0) + 1e-6, name="photometry")
        images["photometry"] = _scale(photometry, arrays["images"])
    photometry_dim = AperturePhotometry.NUM_FEATURES if model_config.photometry else 0
    if run.chief:
        _write_json(run.out / "preprocessing.json", {
            **stats, "image_size": model_config.image_size, "units": "nanomaggy",
            "bands": "ugriz", **({"photometry_mean": photometry.mean,
                                  "photometry_std": photometry.std} if photometry else {})})
    target = labels.astype(np.float32).reshape(-1, 1)
    batch_size = training.batch_size

    def datasets(inputs, outputs, train_index, validation_index, augment):
        return (make_dataset({k: v[train_index] for k, v in inputs.items()},
                             outputs[train_index], batch_size=batch_size, shuffle=True,
                             augment=augment and training.augment, seed=training.seed),
                make_dataset({k: v[validation_index] for k, v in inputs.items()},
                             outputs[validation_index], batch_size=batch_size))

    def load(name):
        from starqso.model_files import load_keras_model

        return load_keras_model(run.out / name)

    def classifier_metrics():
        return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]

    # Stage 1: spectrum encoder (+ head), on labelled objects with a spectrum.
    with_spectrum = arrays["has_spectrum"] & (labels >= 0)
    spec_train, spec_validation = train[with_spectrum[train]], validation[
        with_spectrum[validation]]
    if len(spec_train) < 2 or len(spec_validation) < 1:
        raise InputError("the encoder and GAN stages need labelled objects with spectra in "
                         f"both splits. Received: {len(spec_train)} train, "
                         f"{len(spec_validation)} validation")
    spectra = {"spectrum": arrays["spectra"]}
    if "encoder" in run.completed:
        spectrum_classifier = load("spectrum_classifier.keras")
    else:
        began = time.perf_counter()
        with run.strategy.scope():
            encoder = SpectrumEncoder(model_config.spectrum_filters, model_config.feature_dim,
                                      name="spectrum_encoder")
            spectrum_classifier = SpectrumClassifier(encoder, model_config.dropout,
                                                     name="spectrum_classifier")
            spectrum_classifier.compile(keras.optimizers.Adam(training.learning_rate),
                                        keras.losses.BinaryCrossentropy(),
                                        metrics=classifier_metrics())
        history = run.train(spectrum_classifier, "encoder",
                            *datasets(spectra, target, spec_train, spec_validation, False),
                            training.encoder_epochs, "val_loss")
        run.save_model(spectrum_classifier, "spectrum_classifier.keras")
        run.save_model(spectrum_classifier.encoder, "spectrum_encoder.keras")
        probabilities = spectrum_classifier.predict(
            {"spectrum": arrays["spectra"][spec_validation]}, batch_size=512, verbose=0)
        run.finish_stage("encoder", classification_metrics(labels[spec_validation],
                                                           probabilities),
                         history, time.perf_counter() - began, len(history.get("loss", [])))
    encoder = spectrum_classifier.encoder
    vectors = np.zeros((len(labels), model_config.feature_dim), np.float32)
    vectors[with_spectrum] = encoder.predict({"spectrum": arrays["spectra"][with_spectrum]},
                                             batch_size=512, verbose=0)
    head = spectrum_classifier.get_layer("p_qso")

    # Stage 2: the conditional GAN, image (+ photometry) -> the encoder's vector.
    if "gan" in run.completed:
        generator = load("generator.keras")
    else:
        began = time.perf_counter()
        with run.strategy.scope():
            generator = FeatureGenerator(model_config.image_size, model_config.image_filters,
                                         model_config.feature_dim, model_config.noise_dim,
                                         model_config.dense_units, model_config.dropout,
                                         photometry_dim, name="generator")
            discriminator = FeatureDiscriminator(
                model_config.image_size, discriminator_filters(model_config),
                model_config.feature_dim,
                model_config.dense_units, model_config.dropout, name="discriminator")
            distill = training.gan_distillation_weight > 0
            gan = ConditionalGAN(generator, discriminator, training.gan_reconstruction_weight,
                                 seed=training.seed, teacher=head if distill else None,
                                 distillation_weight=training.gan_distillation_weight,
                                 name="conditional_gan")
            gan.compile(keras.optimizers.Adam(training.gan_learning_rate, beta_1=0.5),
                        keras.optimizers.Adam(training.gan_learning_rate, beta_1=0.5))
            # Under MirroredStrategy both optimizers must own their slots before the first
            # distributed step, or the second replica fails to create them.
            gan.build_optimizers()
        history = run.train(gan, "gan", *datasets(images, vectors, spec_train, spec_validation,
                                                  True),
                            training.gan_epochs, "val_reconstruction")
        run.save_model(generator, "generator.keras")
        run.save_model(discriminator, "discriminator.keras")
        generated = _generate(generator, images, spec_validation, zero_noise=True)
        metrics = {
            "n": int(len(spec_validation)),
            "reconstruction_mse": float(np.mean((generated - vectors[spec_validation]) ** 2)),
            **{f"head_on_generated_{key}": value for key, value in classification_metrics(
                labels[spec_validation], np.asarray(head(generated))).items() if key != "n"},
        }
        run.finish_stage("gan", metrics, history, time.perf_counter() - began,
                         len(history.get("generator_loss", [])))

    # Stage 3: fusion classifier on image + generated vector, all labelled objects.
    labelled_train, labelled_validation = train[labels[train] >= 0], validation[
        labels[validation] >= 0]
    rng = np.random.default_rng(training.seed)
    generated = np.zeros_like(vectors)
    # Noise while training (the GAN's spread acts as augmentation); zero noise for
    # validation, exactly as the deployed model runs.
    generated[labelled_train] = _generate(generator, images, labelled_train, rng=rng)
    generated[labelled_validation] = _generate(generator, images, labelled_validation,
                                               zero_noise=True)
    fused = {**images, "features": generated}
    if "fusion" not in run.completed:
        began = time.perf_counter()
        with run.strategy.scope():
            fusion = FusionClassifier(model_config.image_size, model_config.image_filters,
                                      model_config.feature_dim, model_config.dense_units,
                                      model_config.dropout, photometry_dim,
                                      name="fusion_classifier")
            fusion.compile(keras.optimizers.Adam(training.learning_rate),
                           keras.losses.BinaryCrossentropy(), metrics=classifier_metrics())
        history = run.train(fusion, "fusion", *datasets(fused, target, labelled_train,
                                                        labelled_validation, True),
                            training.fusion_epochs, "val_loss")
        run.save_model(fusion, "fusion_classifier.keras")
        deployable = StarQSOClassifier(scaling, generator, fusion, photometry,
                                       name="starqso_classifier")
        run.save_model(deployable, "starqso_classifier.keras")
        probabilities = deployable.predict({"image": arrays["images"][labelled_validation]},
                                           batch_size=512, verbose=0)
        run.finish_stage("fusion", classification_metrics(labels[labelled_validation],
                                                          probabilities),
                         history, time.perf_counter() - began, len(history.get("loss", [])))

    # Stage 4: the image-only baseline (same trunk, no vector).
    if "image" not in run.completed:
        began = time.perf_counter()
        with run.strategy.scope():
            image_classifier = ImageClassifier(model_config.image_size,
                                               model_config.image_filters,
                                               model_config.dense_units, model_config.dropout,
                                               name="image_classifier")
            image_classifier.compile(keras.optimizers.Adam(training.learning_rate),
                                     keras.losses.BinaryCrossentropy(),
                                     metrics=classifier_metrics())
        history = run.train(image_classifier, "image",
                            *datasets({"image": scaled}, target, labelled_train,
                                      labelled_validation, True),
                            training.image_epochs, "val_loss")
        run.save_model(image_classifier, "image_classifier.keras")
        probabilities = image_classifier.predict({"image": scaled[labelled_validation]},
                                                 batch_size=512, verbose=0)
        run.finish_stage("image", classification_metrics(labels[labelled_validation],
                                                         probabilities),
                         history, time.perf_counter() - began, len(history.get("loss", [])))


def _generate(generator, inputs, index, *, zero_noise=False, rng=None):
    noise_shape = (len(index), generator.noise_dim)
    noise = np.zeros(noise_shape, np.float32) if zero_noise else rng.normal(
        size=noise_shape).astype(np.float32)
    return generator.predict(generator.generator_inputs(
        {key: value[index] for key, value in inputs.items()}, noise), batch_size=512,
        verbose=0)
