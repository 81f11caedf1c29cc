"""Export a run's deployable model: SavedModel, TFLite (fp32, fp16, int8), checks, model card.

Every format takes a float32 batch of **raw nanomaggie cutouts, channels last, (N, S, S, 5)**
(bands ugriz, S = the model's input size) and returns p(QSO) (N, 1); scaling, generator and
fusion classifier are inside. Each export is checked against the Keras model on held-out
simulated cutouts and the numbers are written to ``export_check.json``.

The export folder::

    saved_model/               tf.saved_model, signature "serving_default": image -> p_qso
    model_fp32.tflite  model_fp16.tflite  model_int8.tflite
    starqso_classifier.keras   the Keras model
    metadata.json              version, input size, bands, units, class names, threshold
    export_check.json          max |dp| and label agreement of each format vs Keras
    model_card.md              what it was trained on, its metrics, its limits
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import warnings

import numpy as np

from starqso import __version__
from starqso.errors import InputError
from starqso.model_files import MODEL_FORMAT_VERSION, check_keras_file

THRESHOLD = 0.5
CLASS_NAMES = ("STAR", "QSO")
TFLITE_VARIANTS = ("fp32", "fp16", "int8")
# Kept float in the int8 model: the asinh scaling and the aperture photometry, which work on
# raw nanomaggies (the photometry's sky median also needs RESHAPE/GATHER/TRANSPOSE/TOPK_V2 and
# slices, its sums SUM; CONCATENATION and STRIDED_SLICE also occur in the network, where
# staying float costs little).
FLOAT_OPS = ("MUL", "DIV", "ADD", "SUB", "ABS", "SIGN", "SQUARE", "SQRT", "LOG", "SUM",
             "RESHAPE", "GATHER", "TRANSPOSE", "TOPK_V2", "STRIDED_SLICE", "CONCATENATION")
# An int8 model is accepted when it agrees on the label this often (the issue's target).
INT8_MIN_AGREEMENT = 0.995


def _load_keras(run_dir):
    from starqso.model_files import load_keras_model

    path = pathlib.Path(run_dir) / "starqso_classifier.keras"
    if not path.exists():
        raise InputError(f"run folder has no starqso_classifier.keras (run `starqso fit` to the "
                         f"end, or `--resume` it). Received: {run_dir}")
    return load_keras_model(path)


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


def export_run(run_dir, out_dir=None, *, num_check=None, num_calibration=None, log=print):
    """Export ``run_dir``'s deployable model in every format and check each against Keras.

    Args:
        run_dir: a complete ``starqso fit`` run folder.
        out_dir: export folder (default ``RUN_DIR/export``); replaced if it exists.
        num_check: held-out simulated cutouts for the numeric checks (default: the run
            config's ``data.export_check_objects``).
        num_calibration: simulated cutouts for int8 calibration, disjoint from the checks
            (default: ``data.export_calibration_objects``).
        log: callable for progress lines.

    Returns:
        dict of check results per format (also written to ``export_check.json``).

    Raises:
        InputError: an incomplete run folder.

    Example:
        >>> export_run("runs/demo")  # doctest: +SKIP
    """
    from starqso.config import load_config
    from starqso.inference import LiteRTPredictor
    from starqso.simulate.arrays import simulate_arrays

    run_dir = pathlib.Path(run_dir)
    # Check the folder before paying for the TensorFlow import.
    if not (run_dir / "config.yaml").is_file() or not (
            run_dir / "starqso_classifier.keras").is_file():
        raise InputError(f"not a complete `starqso fit` run folder (needs config.yaml and "
                         f"starqso_classifier.keras). Received: {run_dir}")
    config = load_config(run_dir / "config.yaml")
    check_keras_file(run_dir / "starqso_classifier.keras")

    import tensorflow as tf

    model = _load_keras(run_dir)
    num_check = num_check or config.data.export_check_objects
    num_calibration = num_calibration or config.data.export_calibration_objects
    out = pathlib.Path(out_dir) if out_dir is not None else run_dir / "export"
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # Held-out cutouts: a seed the training simulation never used.
    seed = config.data.simulation_seed + 1_000_003
    arrays = simulate_arrays(num_check + num_calibration, seed, image_size=model.image_size,
                             cutout_size=config.data.cutout_size)
    check, calibration = arrays["images"][:num_check], arrays["images"][num_check:]
    reference = np.asarray(model.predict({"image": check}, batch_size=512, verbose=0)).ravel()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__array__.*", category=DeprecationWarning)
        model.save(staging / "starqso_classifier.keras")
    write_saved_model(model, staging / "saved_model")
    served = tf.saved_model.load(str(staging / "saved_model")).signatures["serving_default"]
    saved_p = np.concatenate([served(image=tf.constant(check[i:i + 512]))["p_qso"].numpy().ravel()
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
    results["checked_on"] = {"cutouts": int(num_check), "simulation_seed": int(seed),
                             "qso_fraction": float(np.mean(arrays["labels"][:num_check] == 1))}
    (staging / "export_check.json").write_text(json.dumps(results, indent=2) + "\n")
    metadata = {
        "format_version": MODEL_FORMAT_VERSION, "starqso_version": __version__,
        "input_name": "image", "output_name": "p_qso",
        "input_shape": [None, model.image_size, model.image_size, 5], "bands": "ugriz",
        "units": "nanomaggy", "pixel_scale_arcsec": 0.396, "layout": "NHWC",
        "class_names": list(CLASS_NAMES), "threshold": THRESHOLD,
    }
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (staging / "model_card.md").write_text(_model_card(run_dir, config, metadata, results))
    # Swap the finished folder in whole: a reader never sees half an export.
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    log(f"exported -> {out}")
    return results


def _model_card(run_dir, config, metadata, results):
    metrics_path = pathlib.Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    data_path = pathlib.Path(run_dir) / "data.json"
    data = json.loads(data_path.read_text())["data"] if data_path.exists() else None
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
