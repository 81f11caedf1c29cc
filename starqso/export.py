"""Export a run's deployable model: SavedModel, TFLite (fp32, fp16, int8), checks, model card.

Every format takes a float32 batch of **raw nanomaggie cutouts, channels last, (N, S, S, 5)**
(bands ugriz, S = the model's input size) and returns p(QSO) (N, 1); scaling, generator and
fusion classifier are inside. Each export is checked against the Keras model on the run's own
held-out objects (its recorded test split, or the validation split when the run kept no test
objects; the int8 model is calibrated on training objects), and the numbers are written to
``export_check.json``.

The export folder::

    saved_model/               tf.saved_model, signature "serving_default": image -> p_qso
    model_fp32.tflite  model_fp16.tflite  model_int8.tflite
    starqso_classifier.keras   the Keras model
    metadata.json              version, input size, bands, units, class names, threshold
    export_check.json          max |dp| and label agreement of each format vs Keras
    model_card.md              what it was trained on, its metrics, its limits
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from starqso import __version__
from starqso.atomic import replace_folder, write_json_atomically, write_text_atomically
from starqso.errors import InputError
from starqso.model_files import MODEL_FORMAT_VERSION, check_keras_file
from starqso.run_folder import RunFolder
from starqso.schema import (
    BANDS,
    BUNIT,
    CLASS_NAMES,
    DEFAULT_THRESHOLD,
    LAYOUT,
    PIXEL_SCALE_ARCSEC,
)

THRESHOLD = DEFAULT_THRESHOLD
TFLITE_VARIANTS = ("fp32", "fp16", "int8")
# Kept float in the int8 model: the asinh scaling and the aperture photometry, which work on
# raw nanomaggies (the photometry's sky median also needs RESHAPE/GATHER/TRANSPOSE/TOPK_V2 and
# slices, its sums SUM; CONCATENATION and STRIDED_SLICE also occur in the network, where
# staying float costs little).
FLOAT_OPS = ("MUL", "DIV", "ADD", "SUB", "ABS", "SIGN", "SQUARE", "SQRT", "LOG", "SUM",
             "RESHAPE", "GATHER", "TRANSPOSE", "TOPK_V2", "STRIDED_SLICE", "CONCATENATION")
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


def convert_tflite(saved_model_dir, variant, calibration_images=None):
    """TFLite flatbuffer of a SavedModel: ``fp32``, ``fp16`` or full-integer ``int8``.

    The int8 model quantises every layer it can (convolutions, dense layers) with statistics
    from ``calibration_images``; the asinh scaling at the input stays float (its LOG/SQRT have
    no int8 kernels), still with builtin ops only, no Flex. Input and output stay float32 so
    callers pass raw nanomaggies to every variant alike.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for image in calibration_images:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
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
                    denylisted_ops=list(FLOAT_OPS)))
            return debugger.get_nondebug_quantized_model()
    elif variant != "fp32":
        raise InputError(f"TFLite variant must be one of {', '.join(TFLITE_VARIANTS)}. "
                         f"Received: {variant!r}")
    return converter.convert()


def _agreement(reference, other):
    reference, other = np.ravel(reference), np.ravel(other)
    return {
        "max_abs_diff": float(np.max(np.abs(reference - other))),
        "mean_abs_diff": float(np.mean(np.abs(reference - other))),
        "label_agreement": float(np.mean((reference >= THRESHOLD) == (other >= THRESHOLD))),
    }


def check_objects(folder, config, num_check, num_calibration, arrays=None):
    """The run's held-out objects for the export checks, and training objects for int8.

    Args:
        folder: the :class:`~starqso.run_folder.RunFolder`.
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

    return held_name, rows(split[held_name], num_check), rows(split["train"], num_calibration)


def export_run(run_dir, out_dir=None, *, num_check=None, num_calibration=None, log=print,
               arrays=None):
    """Export ``run_dir``'s deployable model in every format and check each against Keras.

    Args:
        run_dir: a complete ``starqso fit`` run folder.
        out_dir: export folder (default ``RUN_DIR/export``); replaced if it exists.
        num_check: at most this many of the run's held-out objects for the numeric checks
            (default: the run config's ``data.export_check_objects``).
        num_calibration: at most this many training objects for int8 calibration
            (default: ``data.export_calibration_objects``).
        log: callable for progress lines.
        arrays: the run's :class:`~starqso.data.ObjectArrays` when already in memory.

    Returns:
        dict of check results per format (also written to ``export_check.json``).

    Raises:
        InputError: an incomplete run folder.

    Example:
        >>> export_run("runs/demo")  # doctest: +SKIP
    """
    from starqso.inference import LiteRTPredictor
    from starqso.model_files import load_keras_model

    folder = RunFolder(run_dir)
    # Check the folder before paying for the TensorFlow import.
    if not folder.is_complete():
        raise InputError(f"not a complete `starqso fit` run folder (needs config.yaml and "
                         f"starqso_classifier.keras). Received: {run_dir}")
    config = folder.load_config()
    check_keras_file(folder.deployable_path)

    import tensorflow as tf

    model = load_keras_model(folder.deployable_path, checked=True)
    num_check = num_check or config.data.export_check_objects
    num_calibration = num_calibration or config.data.export_calibration_objects
    out = pathlib.Path(out_dir) if out_dir is not None else folder.export_dir
    held_name, check_arrays, calibration_arrays = check_objects(
        folder, config, num_check, num_calibration, arrays)
    check, calibration = check_arrays.images, calibration_arrays.images
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
        results = {"saved_model": _agreement(reference, saved_p)}
        log(f"saved_model: max |dp| {results['saved_model']['max_abs_diff']:.2e}")
        for variant in TFLITE_VARIANTS:
            path = staging / f"model_{variant}.tflite"
            path.write_bytes(convert_tflite(staging / "saved_model", variant, calibration))
            predictor = LiteRTPredictor(path)
            litert_p = np.concatenate([predictor(check[i:i + 256])
                                       for i in range(0, len(check), 256)])
            results[f"model_{variant}.tflite"] = {**_agreement(reference, litert_p),
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
        write_json_atomically(staging / "export_check.json", results, sort_keys=False)
        metadata = {
            "format_version": MODEL_FORMAT_VERSION, "starqso_version": __version__,
            "input_name": "image", "output_name": "p_qso",
            "input_shape": [None, model.image_size, model.image_size, len(BANDS)],
            "bands": "".join(BANDS), "units": BUNIT, "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
            "layout": LAYOUT, "class_names": list(CLASS_NAMES), "threshold": THRESHOLD,
        }
        write_json_atomically(staging / "metadata.json", metadata, sort_keys=False)
        write_text_atomically(staging / "model_card.md",
                              _model_card(folder, config, metadata, results))
        build.results = results

    # The finished folder is swapped in whole: a reader never sees half an export.
    replace_folder(build, out)
    log(f"exported -> {out}")
    return build.results


def _model_card(folder, config, metadata, results):
    metrics = folder.metrics()
    _, data = folder.data_source()
    trained_on = data or (f"{config.data.num_objects} simulated objects (seed "
                          f"{config.data.simulation_seed}) drawn from real SDSS STAR/QSO "
                          f"catalogue rows with real stellar spectra and QSO archetypes")
    lines = [
        "# starqso classifier: model card", "",
        f"* starqso {metadata['starqso_version']}, preset `{config.preset}`",
        f"* Input: raw cutouts, float32 nanomaggies, NHWC {metadata['input_shape']}, bands "
        "ugriz, 0.396\"/px; output p(QSO); label QSO when p >= "
        f"{metadata['threshold']}.",
        f"* Trained on: {trained_on}.",
        "* Inside: asinh scaling" + (", aperture photometry (colours, r, concentration)"
                                     if config.model.photometry else "")
        + ", the GAN generator (zero noise) and the fusion classifier.",
        "* Made by: `starqso fit` (config in the run folder's `config.yaml`), then "
        "`starqso export`.", "",
        "## Validation metrics (from `metrics.json`)", "",
        "| stage | " + " | ".join(("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |",
        "|---|---|---|---|---|",
    ]
    for stage in ("encoder", "fusion", "image"):
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
    lines += ["", "## Limits", "",
              "* Trained on simulated images; real surveys differ in PSF, noise and "
              "neighbours. Check it on your own labelled objects before trusting p(QSO).",
              "* Point sources only (galaxies were not in the training set); bright stars "
              "(r < 14) are not saturated in the simulation as they are in SDSS.",
              "* Validation metrics are on the simulated population (about 30% QSOs); "
              "precision depends on the QSO fraction of your sample.", ""]
    return "\n".join(lines)
