"""Export a run's deployable model: SavedModel, TFLite (fp32, fp16, int8), checks, model card.

Every format takes a float32 batch of **raw nanomaggie cutouts, channels last, (N, S, S, 5)**
(bands ugriz, S = the model's input size) and returns p(QSO) (N, 1); scaling, generator and
fusion classifier are inside. Each export is checked against the Keras model on the run's own
held-out objects (its recorded test split, or the validation split when the run kept no test
objects; the int8 model is calibrated on training objects), and the numbers are written to
``export_check.json``.

The exported model is calibrated (:mod:`starqso.deploy.calibration`):
:func:`~starqso.deploy.calibration.fit_temperature` fits one temperature ``T`` on the run's
validation split and the export folder's Keras model is a
:class:`~starqso.models.CalibratedClassifier`, ``sigmoid(logit(p) / T)`` of the run's own
(uncalibrated) ``starqso_classifier.keras``, in every format.
:func:`~starqso.deploy.calibration.choose_threshold` then picks the decision threshold on the
same objects. Both, the training QSO fraction the calibrated p(QSO) assumes and the sky prior
``starqso predict`` corrects to by default go into ``metadata.json``; the ECE before and after
calibration into ``export_check.json`` and the model card.

The export folder::

    saved_model/               tf.saved_model, signature "serving_default": image -> p_qso
    model_fp32.tflite  model_fp16.tflite  model_int8.tflite
    starqso_classifier.keras   the Keras model (calibrated: CalibratedClassifier)
    metadata.json              version, input size, bands, units, class names, threshold,
                               temperature, training_qso_fraction, default_prior, and the
                               SHA-256 of each .tflite and the .keras (sha256), and the
                               references of the quality bits (quality: training r range,
                               colour density and its out-of-distribution threshold)
    export_check.json          max |dp| and label agreement of each format vs Keras, and the
                               calibration (temperature, ECE before/after, threshold)
    selection_function.csv     completeness and purity vs r, completeness vs redshift, on the
                               validation split, with Wilson intervals
    embedding_reference.npz    the embeddings (generated vector, and the metric head's when
                               the run trained one) of up to 5,000 training objects: the
                               reference of `starqso embed`'s outlier score
    model_card.md              what it was trained on, its metrics, its limits, the selection
                               function

The formats are written by :mod:`starqso.deploy.tflite`, ``metadata.json``'s data model by
:mod:`starqso.deploy.metadata`, and the model card, quality reference and selection function
by :mod:`starqso.deploy.model_card`.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from starqso._util.atomic import replace_folder, write_json_atomically, write_text_atomically
from starqso._util.ownership import output_folder
from starqso.data.arrays import ObjectArrays
from starqso.deploy.calibration import (
    THRESHOLD,
    class_decisions,
    finetune_calibration,
    fit_calibration,
)
from starqso.deploy.keras_file import check_keras_file
from starqso.deploy.metadata import data_model_metadata
from starqso.deploy.model_card import SELECTION_FILE, model_card, quality_card, quality_reference
from starqso.deploy.tflite import (
    INT8_MIN_AGREEMENT,
    TFLITE_VARIANTS,
    convert_tflite,
    float_nodes,
    write_saved_model,
)
from starqso.discovery.embed import EMBEDDING_REFERENCE, write_embedding_reference
from starqso.errors import InputError
from starqso.evaluation.metrics import selection_csv_text
from starqso.inference import LiteRTPredictor
from starqso.io.safe_read import file_sha256
from starqso.schema import CLASSES, THREE_CLASSES, output_name
from starqso.training.run_folder import RunFolder

#: Every name ``export`` writes into its folder: an existing export folder holding anything
#: else is refused rather than replaced (see :func:`starqso._util.ownership.output_folder`).
EXPORT_FILES = ("starqso_classifier.keras", "saved_model", "export_check.json",
                "metadata.json", "model_card.md", SELECTION_FILE, "embedding_reference.npz",
                *(f"model_{variant}.tflite" for variant in TFLITE_VARIANTS))


def _agreement(reference, other, threshold=THRESHOLD):
    """Max and mean |dp| and label agreement of a format's output against Keras': p(QSO)
    (N,), or class probabilities (N, K) labelled by :func:`class_decisions`."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.ndim == 2 and reference.shape[1] > 1:
        other = other.reshape(reference.shape)
        return {
            "max_abs_diff": float(np.max(np.abs(reference - other))),
            "mean_abs_diff": float(np.mean(np.abs(reference - other))),
            "label_agreement": float(np.mean(class_decisions(reference, threshold)
                                              == class_decisions(other, threshold))),
        }
    reference, other = np.ravel(reference), np.ravel(other)
    return {
        "max_abs_diff": float(np.max(np.abs(reference - other))),
        "mean_abs_diff": float(np.mean(np.abs(reference - other))),
        "label_agreement": float(np.mean((reference >= threshold) == (other >= threshold))),
    }


def check_objects(folder, config, num_check, num_calibration, arrays=None):
    """The run's held-out objects for the export checks, and training objects for int8.

    (:func:`split_objects` also gives the validation and all training objects.)

    Args:
        folder: the :class:`~starqso.training.run_folder.RunFolder`.
        config: its configuration.
        num_check: at most this many held-out objects (the test split, else validation).
        num_calibration: at most this many training objects.
        arrays: the run's objects when already in memory (``fit``); otherwise they are read
            again from the recorded catalogue, or simulated again from the recorded seed.

    Returns:
        ``(split name, check ObjectArrays, calibration ObjectArrays)``.

    Raises:
        InputError: the data no longer holds the split's objects.
    """
    objects = split_objects(folder, config, num_check, num_calibration, arrays)
    return objects["held_name"], objects["check"], objects["calibration"]


def split_objects(folder, config, num_check, num_calibration, arrays=None):
    """The run's recorded splits as :class:`~starqso.data.ObjectArrays` for ``export``.

    Args: as :func:`check_objects`.

    Returns:
        dict: ``held_name`` (the check split's name), ``check`` (at most ``num_check``
        held-out objects), ``calibration`` (at most ``num_calibration`` training objects, for
        int8), ``validation`` (the whole validation split: temperature and threshold) and
        ``train`` (every training object: the training QSO fraction).

    Raises:
        InputError: the data no longer holds the split's objects.
    """
    split = folder.split()
    held_name = "test" if split.get("test") else "validation"
    if arrays is None:
        _, data = folder.data_source()
        if data:
            arrays = ObjectArrays.from_catalog(data, config.model.image_size, strict=False)
        else:
            # The run's own simulation: its sky backgrounds (unchanged), dust, crowding,
            # brightness and galaxies, as fit simulated them.
            from starqso.training.fit import recorded_backgrounds, simulation_arguments

            arrays = ObjectArrays.from_simulation(
                config.data.num_objects, config.data.simulation_seed,
                **simulation_arguments(config, recorded_backgrounds(folder, config)))
    position = {str(identifier): row for row, identifier in enumerate(arrays.ids)}

    def rows(ids, limit):
        missing = [identifier for identifier in ids if identifier not in position]
        if missing:
            raise InputError(f"the run's data no longer holds the objects of its split.json "
                             f"(first missing id {missing[0]!r}); export needs the data the "
                             f"run trained on. Received: {folder.root}")
        return arrays.subset(np.array([position[i] for i in ids[:limit]], dtype=np.int64))

    return {"held_name": held_name, "check": rows(split[held_name], num_check),
            "calibration": rows(split["train"], num_calibration),
            "validation": rows(split["validation"], None), "train": rows(split["train"], None)}


def export_run(run_dir, out_dir=None, *, num_check=None, num_calibration=None, log=print,
               arrays=None):
    """Export ``run_dir``'s deployable model in every format and check each against Keras.

    The exported model is the run's ``starqso_classifier.keras`` (left as it is) wrapped in a
    :class:`~starqso.models.CalibratedClassifier` whose temperature is fitted on the run's
    validation split (:func:`~.calibration.fit_temperature`); the threshold
    (:func:`~.calibration.choose_threshold`) is chosen on the same objects. Every format is
    checked against this calibrated Keras model.

    Args:
        run_dir: a complete ``starqso fit`` run folder.
        out_dir: export folder (default ``RUN_DIR/export``); replaced whole if it exists,
            which it may only when it is empty or an earlier export (:data:`EXPORT_FILES`).
        num_check: at most this many of the run's held-out objects for the numeric checks
            (default: the run config's ``data.export_check_objects``).
        num_calibration: at most this many training objects for int8 calibration
            (default: ``data.export_calibration_objects``).
        log: callable for progress lines.
        arrays: the run's :class:`~starqso.data.ObjectArrays` when already in memory.

    Returns:
        dict of check results per format and the ``calibration`` (temperature, threshold,
        ECE and NLL before and after on the validation split, and on the test split when
        the run kept one), also written to ``export_check.json``.

    Raises:
        InputError: an incomplete run folder, or a validation split without labelled STARs
            and QSOs; an ``out_dir`` that is not new, empty or an earlier export, or that
            another run is writing.

    Example:
        >>> export_run("runs/demo")  # doctest: +SKIP
    """
    folder = RunFolder(run_dir)
    # Check the folder before paying for the TensorFlow import.
    if not folder.is_complete():
        raise InputError(f"not a complete `starqso fit` run folder (needs config.yaml and "
                         f"starqso_classifier.keras). Received: {run_dir}")
    out = pathlib.Path(out_dir) if out_dir is not None else folder.export_dir
    # The export folder is replaced whole: it must be new, empty or an earlier export, and
    # one export at a time writes it.
    with output_folder(out, "export", replaced=EXPORT_FILES) as destination:
        return _export_run(folder, out, destination, num_check, num_calibration, log, arrays)


def _export_run(folder, out, destination, num_check, num_calibration, log, arrays):
    from starqso.deploy.folder import load_keras_model

    config = folder.load_config()
    check_keras_file(folder.deployable_path)

    import tensorflow as tf

    from starqso.models import CalibratedClassifier

    raw_model = load_keras_model(folder.deployable_path, checked=True)
    if folder.metric_head_path.exists():
        # The metric stage ran after the fusion stage wrote the deployable model: its head
        # joins the model here (outside the p(QSO) graph, so the TFLite files are unchanged).
        # replaced() keeps every other argument, the blended photometry head included.
        raw_model = raw_model.replaced(metric_head=load_keras_model(folder.metric_head_path))
    num_check = num_check or config.data.export_check_objects
    num_calibration = num_calibration or config.data.export_calibration_objects
    objects = split_objects(folder, config, num_check, num_calibration, arrays)
    held_name, check_arrays = objects["held_name"], objects["check"]
    check, calibration = check_arrays.images, objects["calibration"].images
    # The run's own model stays as the stages wrote it; the export folder gets it calibrated.
    calibration_results, temperature = fit_calibration(raw_model, objects, held_name, log,
                                                       finetune_calibration(folder))
    model = CalibratedClassifier(raw_model, temperature, name="starqso_calibrated")
    threshold = calibration_results["threshold"]
    count = model.num_classes
    classes = THREE_CLASSES if count == 3 else CLASSES

    def outputs(values):
        """A model's output as (N,) p(QSO) for two classes, (N, K) otherwise."""
        values = np.asarray(values, np.float64)
        return values.reshape(-1) if count == 2 else values.reshape(-1, count)

    reference = outputs(model.predict({"image": check}, batch_size=512, verbose=0))

    def build(staging):
        staging = pathlib.Path(staging)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*__array__.*",
                                    category=DeprecationWarning)
            model.save(staging / "starqso_classifier.keras")
        write_saved_model(model, staging / "saved_model")
        served = tf.saved_model.load(str(staging / "saved_model")).signatures["serving_default"]
        saved_p = np.concatenate([
            outputs(served(image=tf.constant(check[i:i + 512]))[output_name(count)].numpy())
            for i in range(0, len(check), 512)])
        results = {"saved_model": _agreement(reference, saved_p, threshold)}
        log(f"saved_model: max |dp| {results['saved_model']['max_abs_diff']:.2e}")
        keep_float = []
        for variant in TFLITE_VARIANTS:  # fp32 first: its op names say what int8 keeps float
            path = staging / f"model_{variant}.tflite"
            path.write_bytes(convert_tflite(staging / "saved_model", variant, calibration,
                                            keep_float))
            if variant == "fp32":
                keep_float = float_nodes(path.read_bytes())
            predictor = LiteRTPredictor(path)
            litert_p = np.concatenate([outputs(predictor(check[i:i + 256]))
                                       for i in range(0, len(check), 256)])
            results[f"model_{variant}.tflite"] = {**_agreement(reference, litert_p, threshold),
                                                  "bytes": path.stat().st_size}
            shown = results[f"model_{variant}.tflite"]
            log(f"model_{variant}.tflite: {shown['bytes'] / 1e3:.0f} kB, max |dp| "
                f"{shown['max_abs_diff']:.2e}, label agreement {shown['label_agreement']:.4f}")
            if variant == "int8" and shown["label_agreement"] < INT8_MIN_AGREEMENT:
                log(f"warning: model_int8.tflite agrees with the Keras model on only "
                    f"{shown['label_agreement']:.2%} of the check cutouts (target "
                    f"{INT8_MIN_AGREEMENT:.1%}); use model_fp16.tflite or model_fp32.tflite")
        results["checked_on"] = {
            "cutouts": int(len(check)), "split": held_name,
            "calibration_cutouts": int(len(calibration)),
            "qso_fraction": float(np.mean(check_arrays.labels == 1))}
        results["calibration"] = calibration_results
        metadata = {
            **data_model_metadata(model.image_size, classes), "threshold": threshold,
            "temperature": temperature,
            "training_qso_fraction": calibration_results["training_qso_fraction"],
            **({"training_class_fractions": calibration_results["training_class_fractions"]}
               if count > 2 else {}),
            "default_prior": calibration_results["default_prior"],
            # Checked by `starqso predict` before loading (folder.check_model_dir): a
            # flipped byte in a .tflite often still runs, with different answers.
            "sha256": {path.name: file_sha256(path) for path in sorted(
                [*staging.glob("*.tflite"), staging / "starqso_classifier.keras"])},
        }
        validation = objects["validation"]
        validation_p = outputs(model.predict({"image": validation.images}, batch_size=512,
                                             verbose=0))
        quality, selection = quality_reference(objects["train"].images, validation,
                                               validation_p, threshold, count)
        if quality is not None:
            metadata["quality"] = quality
            results["quality"] = {key: quality[key] for key in ("r_range", "ood_threshold",
                                                                "validation_ood_fraction")}

        reference_info = write_embedding_reference(
            staging, raw_model.embedding_model(), objects["train"].images)
        metadata["embedding"] = reference_info
        metadata["sha256"][EMBEDDING_REFERENCE] = file_sha256(staging / EMBEDDING_REFERENCE)
        log(f"{EMBEDDING_REFERENCE}: {reference_info['rows']} training objects, spaces "
            f"{', '.join(reference_info['spaces'])}")
        write_json_atomically(staging / "export_check.json", results, sort_keys=False)
        write_json_atomically(staging / "metadata.json", metadata, sort_keys=False)

        write_text_atomically(staging / SELECTION_FILE, selection_csv_text(selection))
        write_text_atomically(staging / "model_card.md",
                              model_card(folder, config, metadata, results)
                              + quality_card(quality, selection))
        build.results = results

    # The finished folder is swapped in whole: a reader never sees half an export.
    replace_folder(build, destination, command="export")
    log(f"exported -> {out}")
    return build.results
