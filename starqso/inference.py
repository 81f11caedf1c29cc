"""Classify cutouts with an exported model: `starqso predict`.

Rows stream through in batches (memory stays flat), each row's cutout is read, centre-cropped
to the model's input size and classified; a row that cannot be classified (missing or broken
file, cutout smaller than the model input, non-finite pixels) keeps its place in the output
with an empty ``p_qso`` and the reason in ``flag``. The output is written to a temporary file
and renamed when complete.

Two runtimes: ``keras`` (TensorFlow, the ``.keras`` model) and ``litert`` (the TFLite model
through ``ai_edge_litert``). The LiteRT path imports neither TensorFlow nor Keras, so it runs
on a machine with only ``pip install ".[litert]"``-style light dependencies.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import pathlib
import tempfile

import numpy as np

from starqso.errors import InputError

RUNTIMES = ("keras", "litert")
OUTPUT_COLUMNS = ("id", "p_qso", "label", "flag")
MODEL_FILES = {"keras": "starqso_classifier.keras", "litert": "model_int8.tflite"}


def default_model_dir():
    """The pretrained model shipped inside the package (``starqso/pretrained``)."""
    return pathlib.Path(str(importlib.resources.files("starqso") / "pretrained"))


def check_model_dir(model_dir, runtime):
    """Validate a model folder before any heavy import; return its metadata.

    Raises:
        InputError: the folder, its ``metadata.json`` or the runtime's model file is missing.
    """
    model_dir = pathlib.Path(model_dir)
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}. "
                         f"Received: {runtime!r}")
    metadata_path = model_dir / "metadata.json"
    if not metadata_path.is_file():
        raise InputError(f"model folder must hold metadata.json (made by `starqso export`). "
                         f"Received: {model_dir}")
    try:
        metadata = json.loads(metadata_path.read_text())
        int(metadata["input_shape"][1])
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(f"{metadata_path} is not a starqso model metadata file. Received: "
                         f"{err}") from err
    if not (model_dir / MODEL_FILES[runtime]).is_file():
        raise InputError(f"model folder has no {MODEL_FILES[runtime]} for --runtime {runtime}. "
                         f"Received: {model_dir}")
    return metadata


class KerasPredictor:
    """p(QSO) with the Keras model (imports TensorFlow)."""

    def __init__(self, model_dir):
        import keras

        import starqso.models  # noqa: F401 - registers the classes

        self.model = keras.saving.load_model(pathlib.Path(model_dir) / MODEL_FILES["keras"],
                                             safe_mode=True)

    def __call__(self, images):
        return np.asarray(self.model.predict_on_batch({"image": images})).reshape(-1)


class LiteRTPredictor:
    """p(QSO) with a TFLite model through LiteRT (no TensorFlow)."""

    def __init__(self, model_path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.shape = None

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input_index, images.shape)
            self.interpreter.allocate_tensors()
            self.shape = images.shape
        self.interpreter.set_tensor(self.input_index, images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).reshape(-1).copy()


def list_inputs(source):
    """``(ids, paths)`` of a catalogue (CSV/FITS with ``id``, ``image``) or a folder of FITS."""
    from starqso.io import read_catalog, resolve_path

    source = pathlib.Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir()
                       if p.name.lower().endswith((".fits", ".fit", ".fits.gz")))
        if not paths:
            raise InputError(f"folder has no cutout FITS files (*.fits). Received: {source}")
        return [p.name.split(".")[0] for p in paths], [str(p) for p in paths]
    table = read_catalog(source)
    return ([str(i) for i in table["id"]],
            [resolve_path(table, str(value)) if str(value).strip() else ""
             for value in table["image"]])


def _read_batch(paths, size):
    from starqso.io import read_cutout
    from starqso.preprocessing.images import center_crop

    images = np.zeros((len(paths), size, size, 5), np.float32)
    flags = [""] * len(paths)
    for row, path in enumerate(paths):
        try:
            if not path:
                raise InputError("blank image path")
            images[row] = center_crop(read_cutout(path).data, size, source=path)
            if not np.all(np.isfinite(images[row])):
                raise InputError("non-finite pixels in the central crop")
        except InputError as err:
            flags[row] = str(err)
    return images, flags


def predict_catalog(source, output, model_dir=None, runtime="keras", batch_size=256,
                    threshold=None, progress=None):
    """Classify every row of ``source`` and write ``id, p_qso, label, flag`` to ``output``.

    Args:
        source: catalogue (CSV/FITS with ``id`` and ``image``) or a folder of cutout FITS.
        output: CSV path, or FITS table if it ends in ``.fits``.
        model_dir: exported model folder; the shipped pretrained model when None.
        runtime: "keras" or "litert".
        batch_size: cutouts per batch.
        threshold: p(QSO) at or above which the label is QSO (the model's own when None).
        progress: optional callable receiving the rows done and the total.

    Returns:
        dict summary: rows, qso, flagged, output path.

    Example:
        >>> predict_catalog("demo/catalog.csv", "predictions.csv")  # doctest: +SKIP
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1. Received: {batch_size}")
    output = pathlib.Path(output)
    suffix = "".join(output.suffixes[-1:]).lower()
    if suffix not in (".csv", ".fits"):
        raise InputError(f"output must end in .csv or .fits. Received: {output}")
    model_dir = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
    metadata = check_model_dir(model_dir, runtime)
    threshold = metadata.get("threshold", 0.5) if threshold is None else threshold
    size = int(metadata["input_shape"][1])
    ids, paths = list_inputs(source)
    predictor = (KerasPredictor(model_dir) if runtime == "keras"
                 else LiteRTPredictor(model_dir / MODEL_FILES["litert"]))

    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    counts = {"rows": 0, "qso": 0, "flagged": 0}
    columns = {name: [] for name in OUTPUT_COLUMNS} if suffix == ".fits" else None
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            writer = csv.writer(stream)
            if columns is None:
                writer.writerow(OUTPUT_COLUMNS)
            for start in range(0, len(ids), batch_size):
                batch_ids, batch_paths = ids[start:start + batch_size], paths[
                    start:start + batch_size]
                images, flags = _read_batch(batch_paths, size)
                good = np.array([not flag for flag in flags])
                probabilities = np.full(len(batch_ids), np.nan)
                if good.any():
                    probabilities[good] = predictor(images[good])
                for ident, p_qso, flag in zip(batch_ids, probabilities, flags):
                    label = "" if flag else ("QSO" if p_qso >= threshold else "STAR")
                    counts["rows"] += 1
                    counts["qso"] += label == "QSO"
                    counts["flagged"] += bool(flag)
                    row = (ident, "" if flag else f"{p_qso:.6f}", label, flag)
                    if columns is None:
                        writer.writerow(row)
                    else:
                        for name, value in zip(OUTPUT_COLUMNS, (ident, p_qso, label, flag)):
                            columns[name].append(value)
                if progress is not None:
                    progress(counts["rows"], len(ids))
        if columns is not None:
            from astropy.table import Table

            table = Table({"id": columns["id"], "p_qso": np.array(columns["p_qso"], float),
                           "label": columns["label"], "flag": columns["flag"]})
            table.write(temporary, format="fits", overwrite=True)
        os.replace(temporary, output)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return {**counts, "output": str(output)}
