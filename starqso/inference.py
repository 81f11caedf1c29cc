"""Classify cutouts with an exported model: `starqso predict`.

Rows stream through in batches (memory stays flat), each row's cutout is read, centre-cropped
to the model's input size and classified. Every input row keeps its place in the output:

* a row that cannot be classified (missing or broken file, cutout smaller than the model
  input, all zeros, NaN/inf at the object) has an empty ``p_qso`` and the reason in ``flag``;
* a row classified after a repair (a few NaN/inf pixels set to their band median) has its
  ``p_qso`` and a ``flag`` starting with ``repaired``.

``strict=True`` turns the first flagged row into an error instead.

Nothing is lost and nothing is half-written: rows go to a hidden partial file beside the
output (``.NAME.partial`` plus a ``.json`` saying which catalogue, model and threshold it
belongs to), flushed batch by batch, and the partial file becomes the output by a rename only
when every row is done. A killed run therefore leaves no output, or the previous complete one;
``resume=True`` continues from the partial file's last complete row. A ``strict`` stop is
not an interruption: it removes the partial file.

Two runtimes: ``keras`` (TensorFlow, the ``.keras`` model) and ``litert`` (the TFLite model
through ``ai_edge_litert``). The LiteRT path imports neither TensorFlow nor Keras, so it runs
on a machine with only ``pip install ".[litert]"``-style light dependencies.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import os
import pathlib

import numpy as np

from starqso.errors import InputError
from starqso.model_files import RUNTIME_FILES, check_model_dir
from starqso.schema import DEFAULT_THRESHOLD

RUNTIMES = tuple(RUNTIME_FILES)
OUTPUT_COLUMNS = ("id", "p_qso", "label", "flag")


def default_model_dir():
    """The pretrained model shipped inside the package (``starqso/pretrained``)."""
    return pathlib.Path(str(importlib.resources.files("starqso") / "pretrained"))


class KerasPredictor:
    """p(QSO) with the Keras model (imports TensorFlow).

    Args:
        model_dir: exported model folder.
        checked: the folder already passed :func:`~starqso.model_files.check_model_dir`.
    """

    def __init__(self, model_dir, *, checked=False):
        from starqso.model_files import load_keras_model

        self.model = load_keras_model(pathlib.Path(model_dir) / RUNTIME_FILES["keras"],
                                      checked=checked)

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


def open_model(model_dir, runtime="keras"):
    """Check an exported model folder once and load its predictor for ``runtime``.

    Args:
        model_dir: folder written by ``starqso export``; the shipped model when None.
        runtime: "keras" (TensorFlow) or "litert" (``ai_edge_litert``, no TensorFlow).

    Returns:
        ``(metadata, predictor)``: the folder's ``metadata.json`` and a callable mapping raw
        cutouts (N, S, S, 5) to p(QSO) (N,).

    Raises:
        InputError: see :func:`~starqso.model_files.check_model_dir`.

    Example:
        >>> metadata, predictor = open_model(None, "litert")
        >>> metadata["class_names"]
        ['STAR', 'QSO']
    """
    model_dir = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
    return check_model_dir(model_dir, runtime), _checked_predictor(model_dir, runtime)


def _checked_predictor(model_dir, runtime):
    if runtime == "keras":
        return KerasPredictor(model_dir, checked=True)
    return LiteRTPredictor(model_dir / RUNTIME_FILES["litert"])


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
    from starqso.preprocessing.objects import prepare_object
    from starqso.schema import NUM_BANDS

    images = np.zeros((len(paths), size, size, NUM_BANDS), np.float32)
    flags, usable = [""] * len(paths), np.zeros(len(paths), bool)
    for row, path in enumerate(paths):
        try:
            if not path:
                raise InputError("image path is blank; expected a cutout file")
            # The same crop (and repair) as the training arrays: ObjectArrays.from_catalog.
            prepared = prepare_object(read_cutout(path).data, size, source=f"file {path}")
            images[row], flags[row] = prepared.image, prepared.note
            usable[row] = True
        except InputError as err:
            flags[row] = str(err)
    return images, flags, usable


def _partial_paths(output):
    partial = output.with_name(f".{output.name}.partial")
    return partial, partial.with_name(partial.name + ".json")


def _resumed_rows(partial, ids, identity):
    """Rows already in a partial file of the same run, after cutting an unfinished last line."""
    partial_file, identity_file = partial
    if not partial_file.exists() or not identity_file.exists():
        return None
    try:
        saved = json.loads(identity_file.read_text())
    except ValueError:
        saved = None
    if saved != identity:
        raise InputError(f"the partial run {partial_file} was made for another catalogue, model "
                         f"or threshold; delete it or run without --resume. Received: "
                         f"{saved} vs now {identity}")
    content = partial_file.read_bytes()
    content = content[:content.rfind(b"\n") + 1]  # a kill mid-line leaves half a row
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    if not rows or tuple(rows[0]) != OUTPUT_COLUMNS:
        raise InputError(f"the partial run {partial_file} has no header line; delete it or run "
                         f"without --resume")
    rows = rows[1:]
    for number, row in enumerate(rows):
        if len(row) != len(OUTPUT_COLUMNS) or number >= len(ids) or row[0] != ids[number]:
            raise InputError(f"the partial run {partial_file} does not match the catalogue at "
                             f"row {number + 1}; delete it or run without --resume. Received: "
                             f"{row}")
    partial_file.write_bytes(content)
    return rows


def _finish(partial_file, output, fits_output):
    if not fits_output:
        os.replace(partial_file, output)
        return
    from astropy.table import Table

    from starqso.io import write_catalog

    with open(partial_file, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]
    table = Table({"id": [row[0] for row in rows],
                   "p_qso": np.array([float(row[1]) if row[1] else np.nan for row in rows]),
                   "label": [row[2] for row in rows], "flag": [row[3] for row in rows]})
    write_catalog(table, output, overwrite=True)
    partial_file.unlink()


def predict_catalog(source, output, model_dir=None, runtime="keras", batch_size=256,
                    threshold=None, progress=None, strict=False, resume=False, log=None):
    """Classify every row of ``source`` and write ``id, p_qso, label, flag`` to ``output``.

    Args:
        source: catalogue (CSV/FITS with ``id`` and ``image``) or a folder of cutout FITS.
        output: CSV path, or FITS table if it ends in ``.fits``.
        model_dir: exported model folder; the shipped pretrained model when None.
        runtime: "keras" or "litert".
        batch_size: cutouts per batch.
        threshold: p(QSO) at or above which the label is QSO (the model's own when None).
        progress: optional callable receiving the rows done and the total.
        strict: raise on the first row that would be flagged (a repair included).
        resume: continue the partial file an interrupted run left beside ``output``.
        log: optional callable for notes (e.g. where a resumed run continues).

    Returns:
        dict summary: rows, qso, flagged (not classified), repaired, resumed (rows taken
        from the partial file) and the output path.

    Raises:
        InputError: bad options, model folder or catalogue; with ``strict``, a bad row; with
            ``resume``, a partial file from another catalogue, model or threshold.

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
    threshold = metadata.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be in [0, 1]. Received: {threshold}")
    size = int(metadata["input_shape"][1])
    ids, paths = list_inputs(source)
    source_name = str(pathlib.Path(source).resolve())
    identity = {"source": source_name, "rows": len(ids),
                "model": str(model_dir.resolve()), "runtime": runtime, "threshold": threshold}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_paths(output)
    done = _resumed_rows(partial, ids, identity) if resume else None
    if resume and log is not None:
        log(f"resuming after row {len(done)} of {len(ids)}" if done is not None else
            "no partial run to resume; starting from the first row")
    counts = {"rows": 0, "qso": 0, "flagged": 0, "repaired": 0, "resumed": 0}
    for _, p_qso, label, flag in done or []:
        counts["rows"] += 1
        counts["qso"] += label == "QSO"
        counts["flagged"] += bool(flag) and not p_qso
        counts["repaired"] += bool(flag) and bool(p_qso)
    counts["resumed"] = counts["rows"]
    # The folder was checked above, before the catalogue: a bad catalogue fails before
    # TensorFlow is imported, and the model files are read once.
    predictor = _checked_predictor(model_dir, runtime)
    if done is None:
        partial[1].write_text(json.dumps(identity, indent=2) + "\n")
    with open(partial[0], "a" if done is not None else "w", newline="",
              encoding="utf-8") as stream:
        writer = csv.writer(stream)
        if done is None:
            writer.writerow(OUTPUT_COLUMNS)
        for start in range(counts["rows"], len(ids), batch_size):
            batch_ids = ids[start:start + batch_size]
            images, flags, usable = _read_batch(paths[start:start + batch_size], size)
            if strict and any(flags):
                row = next(i for i, flag in enumerate(flags) if flag)
                stream.close()
                # A deliberate stop, not an interruption: nothing is left to resume.
                for path in partial:
                    path.unlink(missing_ok=True)
                raise InputError(f"row {start + row + 1} (id {batch_ids[row]!r}) of {source} "
                                 f"is flagged and --strict is on: {flags[row]}")
            probabilities = np.full(len(batch_ids), np.nan)
            if usable.any():
                probabilities[usable] = predictor(images[usable])
            for ident, p_qso, flag, ok in zip(batch_ids, probabilities, flags, usable):
                label = ("QSO" if p_qso >= threshold else "STAR") if ok else ""
                counts["rows"] += 1
                counts["qso"] += label == "QSO"
                counts["flagged"] += not ok
                counts["repaired"] += ok and bool(flag)
                writer.writerow((ident, f"{p_qso:.6f}" if ok else "", label, flag))
            # Each batch reaches the disk whole before the next starts: what --resume reads.
            stream.flush()
            os.fsync(stream.fileno())
            if progress is not None:
                progress(counts["rows"], len(ids))
    _finish(partial[0], output, suffix == ".fits")
    partial[1].unlink(missing_ok=True)
    return {**counts, "output": str(output)}
