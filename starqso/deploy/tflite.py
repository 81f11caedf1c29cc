"""The exported model's graph formats: a SavedModel, and TFLite flatbuffers converted from it.

Every format takes a float32 batch of raw nanomaggie cutouts, channels last, (N, S, S, 5),
and returns p(QSO) (N, 1). :func:`write_saved_model` writes the SavedModel (one serving
signature ``image -> p_qso``); :func:`convert_tflite` converts it to ``fp32``, ``fp16`` or
full-integer ``int8`` TFLite, where the ops of :data:`FLOAT_OPS` and the layers of
:data:`FLOAT_LAYERS` (found by :func:`float_nodes`) stay float and every op is a TFLite
builtin (no Flex).
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from starqso.errors import InputError

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
# An int8 model is accepted when it agrees on the label this often (the target).
INT8_MIN_AGREEMENT = 0.995


def write_saved_model(model, path):
    """Write ``model`` as a SavedModel with one serving signature ``image -> p_qso`` (a
    two-class model) or ``image -> probabilities`` (K >= 3 classes, (N, K))."""
    import keras
    import tensorflow as tf

    from starqso.models.classifiers import probability_key

    size = model.image_size
    key = probability_key(getattr(model, "num_classes", 2))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {key: model({"image": image}, training=False)},
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
