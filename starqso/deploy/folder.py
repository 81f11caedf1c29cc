"""The export folder: its files, checked before any TensorFlow work starts, and safe loading.

An exported model folder (``starqso export``) is checked file by file: every file the chosen
runtime needs (:data:`RUNTIME_FILES`), ``metadata.json`` with the data model starqso expects
(:func:`~starqso.deploy.metadata.check_metadata`). The model file must match the SHA-256 that
``starqso export`` recorded in ``metadata.json: sha256`` (folders exported before it have none
and still load), and take the cutout size ``input_shape`` gives: read from the ``.keras``
config (:mod:`starqso.deploy.keras_file`), or from the TFLite flatbuffer by LiteRT, which also
refuses a damaged flatbuffer here in one line.

Nothing here imports TensorFlow or Keras except :func:`load_keras_model`, after the checks of
:func:`~starqso.deploy.keras_file.check_keras_file`.
"""

from __future__ import annotations

import pathlib

from starqso.deploy.keras_file import check_keras_archive, check_keras_file, keras_input_side
from starqso.deploy.metadata import check_metadata
from starqso.errors import InputError
from starqso.io.safe_read import file_sha256, one_line, shown
from starqso.schema import BANDS

RUNTIME_FILES = {"keras": "starqso_classifier.keras", "litert": "model_int8.tflite"}


def check_checksum(metadata: dict, model_path: pathlib.Path, metadata_path) -> None:
    """Compare the model file with the SHA-256 ``starqso export`` recorded, where it did."""
    if "sha256" not in metadata:
        return
    expected = metadata["sha256"].get(model_path.name)
    if expected is None:
        raise InputError(f"{metadata_path} lists checksums but none for {model_path.name}; "
                         f"re-export the model. Received: sha256 for "
                         f"{shown(sorted(metadata['sha256']))}")
    actual = file_sha256(model_path)
    if actual != expected:
        raise InputError(f"model file checksum does not match metadata.json (changed or "
                         f"damaged since `starqso export`; restore or re-export it): "
                         f"{model_path}. Received: sha256={actual[:16]}..., expected "
                         f"{expected[:16]}...")


def check_model_dir(model_dir, runtime: str) -> dict:
    """Validate an exported model folder for ``runtime``; return its metadata.

    Args:
        model_dir: folder written by ``starqso export`` (or the shipped pretrained model).
        runtime: ``"keras"`` or ``"litert"``.

    Returns:
        The folder's ``metadata.json`` as a dict.

    Raises:
        InputError: the folder, its metadata or the runtime's model file is missing or
            not what starqso writes (see :func:`check_keras_file`); the model file's
            SHA-256 differs from the one in ``metadata.json: sha256``; or the model takes
            cutouts of another size than ``metadata.json: input_shape`` says.

    Example:
        >>> check_model_dir("runs/demo/export", "litert")["input_shape"]  # doctest: +SKIP
        [None, 32, 32, 5]
    """
    model_dir = pathlib.Path(model_dir)
    if runtime not in RUNTIME_FILES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIME_FILES)}. "
                         f"Received: {shown(runtime)}")
    if not model_dir.is_dir():
        raise InputError(f"model folder not found: {model_dir}")
    metadata_path = model_dir / "metadata.json"
    if not metadata_path.is_file():
        raise InputError(f"model folder must hold metadata.json (made by `starqso export`). "
                         f"Received: {model_dir}")
    metadata = check_metadata(metadata_path)
    model_path = model_dir / RUNTIME_FILES[runtime]
    if not model_path.is_file():
        raise InputError(f"model folder has no {RUNTIME_FILES[runtime]} for --runtime "
                         f"{runtime}. Received: {model_dir}")
    shape = list(metadata["input_shape"])
    if runtime == "keras":
        side = keras_input_side(check_keras_archive(model_path)[0])
        takes = None if side is None else [None, side, side, len(BANDS)]
    else:
        with open(model_path, "rb") as stream:
            head = stream.read(8)
        # Every TFLite flatbuffer carries the file identifier "TFL3" at bytes 4-8.
        if head[4:8] != b"TFL3":
            raise InputError(f"model file is not a TFLite model (no TFL3 identifier): "
                             f"{model_path}")
        takes = _tflite_input_shape(model_path)
        shape = [-1 if value is None else value for value in shape]
    # After the checks of what the file is (which name a hostile or truncated file for what
    # it is), before trusting what it says: any other change since export.
    check_checksum(metadata, model_path, metadata_path)
    if takes is not None and takes[1:] != shape[1:]:
        raise InputError(f"{metadata_path} says input_shape={metadata['input_shape']} but "
                         f"{model_path.name} takes {takes}; the metadata belongs to another "
                         f"model. Received: {model_dir}")
    return metadata


def _tflite_input_shape(path: pathlib.Path):
    """The input tensor shape LiteRT reads from a TFLite file; None without LiteRT."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the Keras-only install: the TFL3 identifier is all that is checked
        return None
    try:
        details = Interpreter(model_path=str(path)).get_input_details()
    except (ValueError, RuntimeError) as err:
        raise InputError(f"model file is not a valid TFLite model (LiteRT: "
                         f"{one_line(err)}): {path}") from None
    if len(details) != 1:
        raise InputError(f"model file must have one input (the cutouts). Received: "
                         f"{len(details)} inputs in {path}")
    signature = details[0].get("shape_signature", details[0]["shape"])
    return [int(value) for value in signature]


def load_keras_model(path, *, checked=False):
    """Load a ``.keras`` model after :func:`check_keras_file`, with Keras safe mode on.

    Args:
        path: ``.keras`` file made by starqso (its classes are registered on import).
        checked: the caller already ran :func:`check_keras_file` on it (before importing
            TensorFlow), so it is not read twice.

    Returns:
        The Keras model.

    Raises:
        InputError: the checks fail, or Keras refuses or cannot build the model.

    Example:
        >>> model = load_keras_model("runs/demo/starqso_classifier.keras")  # doctest: +SKIP
    """
    if not checked:
        check_keras_file(path)
    import keras

    import starqso.models  # noqa: F401 - registers the classes

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"model file could not be loaded safely ({reason}): {path}") from err
