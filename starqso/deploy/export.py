"""Export a run's deployable model: SavedModel, TFLite (fp32, fp16, int8), checks, model card.

Every format takes a float32 batch of **raw nanomaggie cutouts, channels last, (N, S, S, 5)**
(bands ugriz, S = the model's input size) and returns p(QSO) (N, 1); scaling, generator and
fusion classifier are inside. Each export is checked against the Keras model on the run's own
held-out objects (its recorded test split, or the validation split when the run kept no test
objects; the int8 model is calibrated on training objects), and the numbers are written to
``export_check.json``.

The exported model is calibrated: :func:`fit_temperature` fits one temperature ``T`` on the
run's validation split and the export folder's Keras model is a
:class:`~starqso.models.CalibratedClassifier`, ``sigmoid(logit(p) / T)`` of the run's own
(uncalibrated) ``starqso_classifier.keras``, in every format. :func:`choose_threshold` then
picks the decision threshold on the same objects. Both, the training QSO fraction the
calibrated p(QSO) assumes and the sky prior ``starqso predict`` corrects to by default go into
``metadata.json``; the ECE before and after calibration into ``export_check.json`` and the
model card.

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
"""

from __future__ import annotations

import pathlib
import re
import warnings

import numpy as np

from starqso import __version__
from starqso._util.atomic import replace_folder, write_json_atomically, write_text_atomically
from starqso.deploy.folder import MODEL_FORMAT_VERSION, check_keras_file, file_sha256
from starqso.errors import InputError
from starqso.probability import EPSILON, calibrate, logit
from starqso.schema import (
    BANDS,
    BUNIT,
    CLASS_NAMES,
    CLASSES,
    DEFAULT_THRESHOLD,
    LAYOUT,
    PIXEL_SCALE_ARCSEC,
    SDSS,
)
from starqso.training.run_folder import RunFolder

THRESHOLD = DEFAULT_THRESHOLD
# The QSO fraction `starqso predict` corrects p(QSO) to unless told otherwise (metadata.json
# `default_prior`). The training mix (about 30% QSOs, the spectroscopic sample's) is not the
# sky's: at high Galactic latitude and r < 21, QSOs are about 1-3% of point sources, so a p
# trained at 30% overstates every faint star's chance of being a QSO; 0.02 is the middle of
# that range.
SKY_QSO_PRIOR = 0.02
# The temperature is searched in [1/20, 20] (on log T): beyond that a model is broken, not
# miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The decision-threshold grid of choose_threshold: 0.05, 0.06, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 + 0.01 * step, 2) for step in range(91))
THRESHOLD_RULE = ("best macro-F1 of the calibrated p(QSO) on the validation split, at the "
                  "training QSO fraction, over 0.05..0.95 in steps of 0.01; ties go to the "
                  "value closest to 0.5 (then the lower)")
TFLITE_VARIANTS = ("fp32", "fp16", "int8")
# Kept float in the int8 model: the asinh scaling and the aperture photometry, which work on
# raw nanomaggies (the photometry's arc sky needs RESHAPE/GATHER/TRANSPOSE/TOPK_V2 over 16 arc
# means and slices, its sums SUM; CONCATENATION and STRIDED_SLICE also occur in the network,
# where staying float costs little).
# MAXIMUM floors the scaling's asinh (CutoutScaling) on raw nanomaggies; MINIMUM/MAXIMUM also
# clip the calibrated probability (TemperatureScaling), where float costs nothing.
FLOAT_OPS = ("MUL", "DIV", "ADD", "SUB", "ABS", "SIGN", "SQUARE", "SQRT", "LOG", "SUM",
             "RESHAPE", "GATHER", "TRANSPOSE", "TOPK_V2", "STRIDED_SLICE", "CONCATENATION",
             "MAXIMUM", "MINIMUM")
# Layers kept float in the int8 model by name: the first dense layer of each photometry branch.
# Its input is the six photometric features (colours in magnitudes, r, concentration) as one
# tensor, and one int8 scale over all six steps by about 0.05 mag, coarse where colour cuts
# decide; float, these two 6 x 128 layers cost 2% of the int8 speed and lift its label agreement
# with Keras from 0.9955 to 0.998 (max |dp| 0.14 -> 0.04) on benchmarks/edge.py's cutouts.
# "photometry" is the AperturePhotometry layer: its aperture sums are one matmul on raw
# nanomaggie pixels, a FULLY_CONNECTED that int8 would ruin. "cutout_scaling" is the
# CutoutScaling layer, whose per-band standardisation is a 1 x 1 CONV_2D: float, it feeds the
# network's one QUANTIZE as the stretch did before it (in a test conversion with 300
# calibration cutouts, label agreement 0.9974 vs 0.9961 when int8, and 6% faster).
FLOAT_LAYERS = ("photometry_dense0", "photometry", "cutout_scaling")
# The op types float_nodes looks among: a dense layer (FULLY_CONNECTED) or a 1 x 1 convolution.
FLOAT_NODE_OPS = ("FULLY_CONNECTED", "CONV_2D")
# An int8 model is accepted when it agrees on the label this often (the issue's target).
INT8_MIN_AGREEMENT = 0.995


def write_saved_model(model, path):
    """Write ``model`` as a SavedModel with one serving signature ``image -> p_qso``."""
    import keras
    import tensorflow as tf

    size = model.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {"p_qso": model({"image": image}, training=False)},
        input_signature=[tf.TensorSpec((None, size, size, 5), tf.float32, name="image")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        archive.write_out(str(path), verbose=False)


def float_nodes(float_model: bytes, layers=FLOAT_LAYERS) -> list[str]:
    """Names of the fully connected and convolution ops of ``layers`` in a float TFLite model.

    The converter fuses each Keras dense layer or convolution (with whatever it could fold
    into it) into one op named after every part; these are the names the quantization
    debugger's ``denylisted_nodes`` takes, and they are the same in the float and the int8
    conversion.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_model)
    names = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in FLOAT_NODE_OPS or not len(op["outputs"]):
            continue
        name = interpreter._get_tensor_details(op["outputs"][0], 0)["name"]
        # A layer is a whole scope segment ("photometry" or "photometry_1", the tracing's
        # suffix), so "photometry" does not also name "photometry_dense1".
        if any(re.search(rf"/{re.escape(layer)}(_\d+)?/", name) for layer in layers):
            names.append(name)
    return names


def int8_converter(saved_model_dir, representative):
    """A TFLite converter of a SavedModel to full-integer int8 (float ops allowed where int8
    has no kernel), calibrated on ``representative``: a callable yielding one input batch
    (a list, or a dict by input name) at a time.

    Example:
        >>> flatbuffer = int8_converter(folder, lambda: ([x[None]] for x in images)).convert()
        ... # doctest: +SKIP
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def convert_tflite(saved_model_dir, variant, calibration_images=None, keep_float=()):
    """TFLite flatbuffer of a SavedModel: ``fp32``, ``fp16`` or full-integer ``int8``.

    The int8 model quantises every layer it can (convolutions, dense layers) with statistics
    from ``calibration_images``; the asinh scaling at the input stays float (its LOG/SQRT have
    no int8 kernels), still with builtin ops only, no Flex. Input and output stay float32 so
    callers pass raw nanomaggies to every variant alike. ``keep_float`` names ops (of
    :func:`float_nodes`) the int8 model also keeps float.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":

        def representative():
            for image in calibration_images:
                yield [image[None].astype(np.float32)]

        converter = int8_converter(saved_model_dir, representative)
        # Raw nanomaggies span 1e-2 (sky noise) to 1e4 (bright cores): quantised to int8 at
        # the input, every faint source would be lost. The element-wise ops are the asinh
        # scaling (and the zero noise), so keeping them float leaves the stretch exact and
        # quantises the network behind it, where values are standardised.
        # The debugger is TensorFlow's supported way to denylist ops; it builds a
        # tf.lite.Interpreter of its own (deprecated) while converting. starqso's inference
        # itself runs TFLite through ai_edge_litert only.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_ops=list(FLOAT_OPS), denylisted_nodes=list(keep_float)))
            return debugger.get_nondebug_quantized_model()
    elif variant != "fp32":
        raise InputError(f"TFLite variant must be one of {', '.join(TFLITE_VARIANTS)}. "
                         f"Received: {variant!r}")
    return converter.convert()


def _agreement(reference, other, threshold=THRESHOLD):
    reference, other = np.ravel(reference), np.ravel(other)
    return {
        "max_abs_diff": float(np.max(np.abs(reference - other))),
        "mean_abs_diff": float(np.mean(np.abs(reference - other))),
        "label_agreement": float(np.mean((reference >= threshold) == (other >= threshold))),
    }


def _logits(probabilities):
    # Clipped as the TemperatureScaling layer clips, so NumPy and the model agree.
    return logit(np.ravel(probabilities), EPSILON)


def _nll(labels, logits, temperature):
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(labels, probabilities, bounds=TEMPERATURE_BOUNDS):
    """The temperature T minimising the NLL of ``sigmoid(logit(p) / T)`` against ``labels``.

    Searched on log T within ``bounds`` (:func:`scipy.optimize.minimize_scalar`, bounded);
    ``logit(p)`` is taken after clipping p to [1e-7, 1 - 1e-7], as the
    :class:`~starqso.models.TemperatureScaling` layer does.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object; both classes must occur.
        probabilities: the uncalibrated p(QSO) per object.
        bounds: (lowest, highest) temperature.

    Returns:
        T as a float (> 1: the model was over-confident).

    Raises:
        InputError: fewer than two objects, or only one class.

    Example:
        >>> fit_temperature([0, 1, 1, 0], [0.001, 0.999, 0.001, 0.999]) > 1
        True
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, np.float64).ravel()
    logits = _logits(probabilities)
    if labels.size != logits.size or labels.size < 2 or not (0 < labels.mean() < 1):
        raise InputError(f"temperature scaling needs labelled objects of both classes. "
                         f"Received: {labels.size} objects, {int(labels.sum())} QSO")
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(lambda log_t: _nll(labels, logits, np.exp(log_t)),
                             bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def _macro_f1(labels, predicted):
    scores = []
    for positive in (1, 0):
        tp = np.sum((predicted == positive) & (labels == positive))
        wrong = np.sum(predicted != labels)
        scores.append(2 * tp / (2 * tp + wrong) if 2 * tp + wrong else 0.0)
    return float(np.mean(scores))


def choose_threshold(labels, probabilities, grid=THRESHOLD_GRID):
    """The decision threshold of the rule :data:`THRESHOLD_RULE`.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: calibrated p(QSO) per object (at the training QSO fraction).
        grid: thresholds to try.

    Returns:
        ``(threshold, macro_f1 at it)``; an object is QSO when p >= threshold.

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.2, 0.6, 0.65, 0.9])
        (0.61, 1.0)
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    probabilities = np.asarray(probabilities, np.float64).ravel()
    scores = [_macro_f1(labels, (probabilities >= t).astype(np.int64)) for t in grid]
    best = max(scores)
    chosen = min((abs(t - 0.5), t) for t, score in zip(grid, scores, strict=False)
                 if score >= best - 1e-12)[1]
    return float(chosen), float(best)


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
    from starqso.data.arrays import ObjectArrays

    split = folder.split()
    held_name = "test" if split.get("test") else "validation"
    if arrays is None:
        _, data = folder.data_source()
        if data:
            arrays = ObjectArrays.from_catalog(data, config.model.image_size, strict=False)
        else:
            arrays = ObjectArrays.from_simulation(
                config.data.num_objects, config.data.simulation_seed,
                image_size=config.model.image_size, cutout_size=config.data.cutout_size,
                qso_fraction=config.data.qso_fraction)
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
    validation split (:func:`fit_temperature`); the threshold (:func:`choose_threshold`) is
    chosen on the same objects. Every format is checked against this calibrated Keras model.

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
    from starqso._util.ownership import output_folder

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
    from starqso.inference import LiteRTPredictor

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
    calibration_results, temperature = _calibration(raw_model, objects, held_name, log,
                                                    _finetune_calibration(folder))
    model = CalibratedClassifier(raw_model, temperature, name="starqso_calibrated")
    threshold = calibration_results["threshold"]
    reference = np.asarray(model.predict({"image": check}, batch_size=512, verbose=0)).ravel()

    def build(staging):
        staging = pathlib.Path(staging)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*__array__.*",
                                    category=DeprecationWarning)
            model.save(staging / "starqso_classifier.keras")
        write_saved_model(model, staging / "saved_model")
        served = tf.saved_model.load(str(staging / "saved_model")).signatures["serving_default"]
        saved_p = np.concatenate([
            served(image=tf.constant(check[i:i + 512]))["p_qso"].numpy().ravel()
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
            litert_p = np.concatenate([predictor(check[i:i + 256])
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
            "format_version": MODEL_FORMAT_VERSION, "starqso_version": __version__,
            "input_name": "image", "output_name": "p_qso",
            "input_shape": [None, model.image_size, model.image_size, len(BANDS)],
            "bands": "".join(BANDS), "units": BUNIT, "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
            "layout": LAYOUT, "class_names": list(CLASS_NAMES),
            # The whole data model, read back (and checked) by model_files.model_survey.
            "survey": SDSS.to_dict(), "classes": CLASSES.to_dict(), "threshold": threshold,
            "temperature": temperature,
            "training_qso_fraction": calibration_results["training_qso_fraction"],
            "default_prior": calibration_results["default_prior"],
            # Checked by `starqso predict` before loading (model_files.check_model_dir): a
            # flipped byte in a .tflite often still runs, with different answers.
            "sha256": {path.name: file_sha256(path) for path in sorted(
                [*staging.glob("*.tflite"), staging / "starqso_classifier.keras"])},
        }
        validation = objects["validation"]
        validation_p = np.asarray(model.predict({"image": validation.images}, batch_size=512,
                                                verbose=0), np.float64).ravel()
        quality, selection = quality_reference(objects["train"].images, validation,
                                               validation_p, threshold)
        if quality is not None:
            metadata["quality"] = quality
            results["quality"] = {key: quality[key] for key in ("r_range", "ood_threshold",
                                                                "validation_ood_fraction")}
        from starqso.discovery.embed import EMBEDDING_REFERENCE, write_embedding_reference

        reference_info = write_embedding_reference(
            staging, raw_model.embedding_model(), objects["train"].images)
        metadata["embedding"] = reference_info
        metadata["sha256"][EMBEDDING_REFERENCE] = file_sha256(staging / EMBEDDING_REFERENCE)
        log(f"{EMBEDDING_REFERENCE}: {reference_info['rows']} training objects, spaces "
            f"{', '.join(reference_info['spaces'])}")
        write_json_atomically(staging / "export_check.json", results, sort_keys=False)
        write_json_atomically(staging / "metadata.json", metadata, sort_keys=False)
        from starqso.evaluation.metrics import selection_csv_text

        write_text_atomically(staging / SELECTION_FILE, selection_csv_text(selection))
        write_text_atomically(staging / "model_card.md",
                              _model_card(folder, config, metadata, results)
                              + quality_card(quality, selection))
        build.results = results

    # The finished folder is swapped in whole: a reader never sees half an export.
    replace_folder(build, destination, command="export")
    log(f"exported -> {out}")
    return build.results


#: The model's selection function, beside its metadata.json.
SELECTION_FILE = "selection_function.csv"
#: Every name ``export`` writes into its folder: an existing export folder holding anything
#: else is refused rather than replaced (see :func:`starqso._util.ownership.output_folder`).
EXPORT_FILES = ("starqso_classifier.keras", "saved_model", "export_check.json",
                "metadata.json", "model_card.md", SELECTION_FILE, "embedding_reference.npz",
                *(f"model_{variant}.tflite" for variant in TFLITE_VARIANTS))


def quality_reference(train_images, validation, validation_p, threshold):
    """What a model folder ships for its quality bits and its selection function.

    Args:
        train_images: (N, S, S, 5) training-split crops.
        validation: the validation split's :class:`~starqso.data.ObjectArrays` (labels, true
            r magnitudes, redshifts).
        validation_p: the calibrated model's p(QSO) of those objects (training mix).
        threshold: the model's decision threshold.

    Returns:
        ``(quality, selection)``: the ``metadata.json: quality`` entry
        (:func:`~starqso.preprocessing.qflags.fit_quality_reference`, with
        ``selection_function`` naming :data:`SELECTION_FILE`; None for crops too small for
        its photometry) and the selection-function rows
        (:func:`~starqso.evaluation.metrics.selection_function`: completeness and purity vs
        r, completeness vs redshift, with Wilson intervals) of the labelled validation objects.
    """
    from starqso.evaluation.metrics import selection_function
    from starqso.preprocessing.qflags import fit_quality_reference

    quality = fit_quality_reference(train_images, validation.images)
    known = validation.labels >= 0
    selection = selection_function(validation.labels[known].astype(np.int64),
                                   np.asarray(validation_p)[known], threshold,
                                   r=validation.mags[known, 2],
                                   redshift=validation.redshift[known])
    if quality is not None:
        quality["selection_function"] = {
            "file": SELECTION_FILE, "split": "validation", "objects": int(known.sum()),
            "threshold": float(threshold), "prior": "training mix",
            "note": "completeness and purity at the validation split's QSO fraction, against "
                    "the objects' catalogue r and redshift"}
    return quality, selection


def quality_card(quality, selection):
    """The model card's section on quality bits and the selection function (markdown)."""
    from starqso.evaluation.metrics import format_selection_markdown

    if quality is None:
        return ("\n## Quality bits and selection function\n\nThe model's input is too small "
                "for the 3\" photometry: no magnitude-range or out-of-distribution bits.\n\n"
                + format_selection_markdown(selection) + "\n")
    low, high = quality["r_range"]
    on = quality["selection_function"]
    return "\n".join([
        "", "## Quality bits and selection function", "",
        f"* `qflag` MAG_OUT_OF_RANGE outside r = {low:.2f} .. {high:.2f} (3\" aperture asinh "
        "magnitude; the training objects' 0.1-99.9% range, widened by 0.25 mag).",
        f"* `qflag` OUT_OF_DISTRIBUTION below a colour log-density of "
        f"{quality['ood_threshold']:.3f} (Gaussian mixture of the training colours; "
        f"{quality['validation_ood_fraction']:.1%} of the validation objects).",
        f"* Selection function on the {on['objects']} validation objects (threshold "
        f"{on['threshold']:.2f}, at their own QSO fraction; `{on['file']}` holds it as CSV), "
        "with 68% Wilson intervals:", "",
        format_selection_markdown(selection), ""])


def _finetune_calibration(folder):
    """The calibration ``starqso finetune`` chose (``finetune.json: selection``), or None."""
    path = folder / "finetune.json"
    if not path.is_file():
        return None
    from starqso._util.jsonfile import read_json

    return read_json(path).get("selection", {}).get("calibration")


def _calibration(raw_model, objects, held_name, log, chosen=None):
    """Fit the temperature and the threshold on the validation split; ECE before and after.

    ``chosen``: a fine-tuning run's calibration (:func:`starqso.training.finetune.select_model`:
    temperature, threshold, its rule, training QSO fraction and default prior), used as it is.

    Returns ``(the export_check.json "calibration" entry, temperature)``.
    """
    from starqso.evaluation import classification_metrics

    def labelled(arrays):
        known = arrays.labels >= 0
        if not known.any():
            return None, None
        images = arrays.images[known]
        raw = np.asarray(raw_model.predict({"image": images}, batch_size=512,
                                           verbose=0)).ravel()
        return arrays.labels[known].astype(np.int64), raw

    train_labels = objects["train"].labels
    train_labels = train_labels[train_labels >= 0]
    if not train_labels.size:
        raise InputError("the run's training split has no labelled objects; export needs them "
                         "for the training QSO fraction")
    training_fraction = float(np.mean(train_labels == 1))
    labels, raw = labelled(objects["validation"])
    if labels is None or not 0 < labels.mean() < 1:
        raise InputError("the run's validation split needs labelled STARs and QSOs to fit the "
                         "temperature and the threshold of the export")
    if chosen is not None:
        temperature, threshold = float(chosen["temperature"]), float(chosen["threshold"])
        entry = {**chosen, "temperature": temperature, "threshold": threshold}
        calibrated = calibrate(raw, temperature)
        macro_f1 = classification_metrics(labels, calibrated, threshold)["macro_f1"]
    else:
        entry, temperature = None, fit_temperature(labels, raw)
    if entry is None and not (TEMPERATURE_BOUNDS[0] * 1.01 < temperature
                              < TEMPERATURE_BOUNDS[1] / 1.01):
        log(f"warning: the fitted temperature {temperature:.3g} is at the edge of its range "
            f"{TEMPERATURE_BOUNDS} (too few validation objects, {labels.size}, or a model whose "
            f"p(QSO) hardly separates the classes, or separates them perfectly)")
    if entry is None:
        calibrated = calibrate(raw, temperature)
        threshold, macro_f1 = choose_threshold(labels, calibrated)
        entry = {
            "fitted_on": {"split": "validation", "objects": int(labels.size),
                          "qso_fraction": float(labels.mean())},
            "temperature": temperature, "threshold": threshold,
            "threshold_rule": THRESHOLD_RULE, "training_qso_fraction": training_fraction,
            "default_prior": SKY_QSO_PRIOR,
        }

    def scores(labels, raw, calibrated):
        before = classification_metrics(labels, raw, THRESHOLD)
        after = classification_metrics(labels, calibrated, threshold)
        return {"objects": int(labels.size), "ece_before": before["ece"],
                "ece_after": after["ece"], "nll_before": _nll(labels, _logits(raw), 1.0),
                "nll_after": _nll(labels, _logits(raw), temperature),
                "macro_f1_at_0.5": before["macro_f1"],
                "macro_f1_at_threshold": after["macro_f1"]}

    entry["validation"] = scores(labels, raw, calibrated)
    if held_name == "test":
        # Out of sample: the temperature and threshold never saw these objects.
        test_labels, test_raw = labelled(objects["check"])
        if test_labels is not None:
            entry["test"] = scores(test_labels, test_raw, calibrate(test_raw, temperature))
    shown = entry.get("test", entry["validation"])
    log(f"calibration: temperature {temperature:.3f}, ECE {shown['ece_before']:.4f} -> "
        f"{shown['ece_after']:.4f} ({'test' if 'test' in entry else 'validation'}), threshold "
        f"{threshold:.2f} (macro-F1 {macro_f1:.4f} on validation)")
    return entry, temperature


def _model_card(folder, config, metadata, results):
    metrics = folder.metrics()
    _, data = folder.data_source()
    trained_on = data or (f"{config.data.num_objects} simulated objects (seed "
                          f"{config.data.simulation_seed}) drawn from real SDSS STAR/QSO "
                          f"catalogue rows with real stellar spectra and QSO archetypes")
    skies = folder.sky_backgrounds()
    if skies is not None:
        fields = ", ".join(skies["fields"][:6]) + (", ..." if len(skies["fields"]) > 6 else "")
        trained_on += (f"; a fraction {skies['fraction']:g} of them injected into "
                       f"{skies['cutouts']} real blank-sky cutouts of {len(skies['fields'])} "
                       f"fields ({fields}) from {skies['path']} (SHA-256 {skies['sha256']}), "
                       f"with each field's PSF FWHM")
    if not data and config.data.reddening_fraction > 0:
        trained_on += (f"; a fraction {config.data.reddening_fraction:g} reddened by E(B-V) "
                       f"up to {config.data.max_ebv:g} (SDSS A/E(B-V) of Schlafly & "
                       f"Finkbeiner 2011)")
    if not data and config.data.neighbour_density_fraction > 0:
        trained_on += (f"; a fraction {config.data.neighbour_density_fraction:g} in crowded "
                       f"fields (up to {config.data.max_neighbour_density:g}x the neighbours)")
    if not data and config.data.magnitude_mixing_fraction > 0:
        trained_on += (f"; a fraction {config.data.magnitude_mixing_fraction:g} with r "
                       f"magnitudes drawn from both classes alike (colours kept)")
    lines = [
        "# starqso classifier: model card", "",
        f"* starqso {metadata['starqso_version']}, preset `{config.preset}`",
        f"* Input: raw cutouts, float32 nanomaggies, NHWC {metadata['input_shape']}, bands "
        "ugriz, 0.396\"/px; output calibrated p(QSO) at the training QSO fraction "
        f"({metadata['training_qso_fraction']:.3f}); `starqso predict` labels QSO when p >= "
        f"{metadata['threshold']} after correcting p to the prior it is given (default "
        f"{metadata['default_prior']}, " + (
            "the QSO fraction of the fine-tuning labels, the user's sample"
            if (folder / "finetune.json").is_file() else "the sky's QSO fraction")
        + "; `--prior train`: none).",
        f"* Trained on: {trained_on}.",
        "* Inside: asinh scaling" + ((", aperture photometry (colours, r, concentration)"
                                      + (" and PSF-weighted colours and r at FWHM "
                                         + ", ".join(f'{v:g}"' for v in config.model.weighted_fwhm)
                                         if config.model.weighted_fwhm else ""))
                                     if config.model.photometry else "")
        + (f", the diffusion generator ({config.model.diffusion_steps} deterministic DDIM "
           "steps from x_T = 0)" if config.model.generator == "diffusion"
           else ", the GAN generator (zero noise)")
        + f" and the fusion classifier, on the `{config.model.trunk}` image trunk"
        + (f" (both CNNs see the central {config.model.trunk_size} pixels)"
           if config.model.trunk_size not in (None, config.model.image_size) else "")
        + (f"; p(QSO) blends the fusion classifier's logit with a photometry-only head's, "
           f"weight {metrics['fusion']['head_weight']:g} on the head (fitted on validation)"
           if "head_weight" in metrics.get("fusion", {}) else "") + ".",
        "* Made by: `starqso fit` (config in the run folder's `config.yaml`), then "
        "`starqso export`.", "",
    ]
    finetuned = folder / "finetune.json"
    if finetuned.is_file():
        from starqso._util.jsonfile import read_json

        settings = read_json(finetuned)
        lines[-2] = ("* Made by: `starqso finetune` (settings in the run folder's "
                     "`finetune.json`), then `starqso export`.")
        lines += ["## Fine-tuning", "",
                  f"* Base model: `{settings['base_model']}` (SHA-256 "
                  f"{settings['base_sha256']}).",
                  f"* Fine-tuning data: {data}; trainable depth `{settings['trainable']}`, "
                  f"learning rate {settings['learning_rate']:g} (x {settings['lr_decay']:g} "
                  f"per block deeper), at most {settings['epochs']} epochs."]
        if "selection" in settings:
            lines.append(f"* Model selection on the validation split: "
                         f"{settings['selection']['message']}.")
        lines += ["",
                  "| validation | accuracy | f1_qso | macro_f1 | roc_auc |",
                  "|---|---|---|---|---|"]
        for when in ("before", "after"):
            if when in settings:
                lines.append(f"| {when} fine-tuning | " + " | ".join(
                    f"{settings[when].get(key, float('nan')):.4f}"
                    for key in ("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |")
        lines.append("")
    lines += [
        "## Validation metrics (from `metrics.json`)", "",
        "| stage | " + " | ".join(("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |",
        "|---|---|---|---|---|",
    ]
    for stage in ("encoder", "fusion", "finetune", "image"):
        if stage in metrics:
            lines.append(f"| {stage} | " + " | ".join(
                f"{metrics[stage].get(key, float('nan')):.4f}"
                for key in ("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |")
    lines += ["", "## Export checks against the Keras model", "",
              "| format | max abs dp | label agreement |", "|---|---|---|"]
    for name, result in results.items():
        if "max_abs_diff" in result:
            lines.append(f"| {name} | {result['max_abs_diff']:.2e} | "
                         f"{result['label_agreement']:.4f} |")
    calibration = results["calibration"]
    lines += ["", "## Calibration and decision threshold", "",
              f"* Temperature scaling inside every format: p = sigmoid(logit(p_raw) / T), "
              f"T = {calibration['temperature']:.4f}, fitted (NLL) on the "
              f"{calibration['fitted_on']['objects']} validation objects.",
              f"* Threshold {calibration['threshold']:.2f}: {calibration['threshold_rule']}.",
              f"* p(QSO) assumes the training QSO fraction "
              f"{calibration['training_qso_fraction']:.3f}; `starqso predict` corrects it by "
              f"Bayes' rule to `--prior` (default {calibration['default_prior']}: "
              + ("the QSO fraction of the labels it was fine-tuned on, so that by default "
                 "p(QSO) is the chance of being a QSO in a sample like the user's; give "
                 "`--prior` for another sample, e.g. 0.02 for the sky's point sources)."
                 if (folder / "finetune.json").is_file() else
                 "QSOs are about 1-3% of point sources at high Galactic latitude and r < 21)."),
              "",
              "| objects | n | ECE before | ECE after | macro-F1 at 0.5 (raw) | "
              "macro-F1 at threshold (calibrated) |", "|---|---|---|---|---|---|"]
    for split in ("validation", "test"):
        if split in calibration:
            row = calibration[split]
            lines.append(f"| {split}{' (fitted on)' if split == 'validation' else ''} | "
                         f"{row['objects']} | {row['ece_before']:.4f} | {row['ece_after']:.4f} "
                         f"| {row['macro_f1_at_0.5']:.4f} | {row['macro_f1_at_threshold']:.4f} |")
    lines += ["", "## Limits", "",
              "* Trained on simulated images; real surveys differ in PSF, noise and "
              "neighbours. Check it on your own labelled objects before trusting p(QSO).",
              "* Point sources only (galaxies were not in the training set). A cutout with no "
              "source detected at its centre is flagged by `starqso predict`, not classified; "
              "so is a source narrower than the PSF (a cosmic ray or hot pixel: qflag "
              "NOT_CLASSIFIED + ARTEFACT).",
              "* Validation metrics are on the simulated population (about 30% QSOs); "
              "precision depends on the QSO fraction of your sample: give it to "
              "`starqso predict --prior`.", ""]
    return "\n".join(lines)
