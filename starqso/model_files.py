"""Checks on model files and folders, made before any TensorFlow work starts.

A ``.keras`` file is a zip archive holding ``config.json`` (the model's structure),
``metadata.json`` and ``model.weights.h5``. Loading it runs whatever the config names, so
starqso reads the config itself first, with :mod:`zipfile` and :mod:`json` only, and refuses a
file that names a ``Lambda`` layer, a serialised Python function, or a class from a module that
is neither Keras nor starqso. Only then does it hand the file to
``keras.saving.load_model(..., safe_mode=True)``, the second line of defence.

An exported model folder (``starqso export``) is checked the same way: every file the chosen
runtime needs, ``metadata.json`` with the data model starqso expects (ugriz, nanomaggies,
NHWC, STAR/QSO), a format version this starqso can read and, when present, valid calibration
keys (``threshold`` in [0, 1], ``temperature`` > 0, ``training_qso_fraction`` and
``default_prior`` in (0, 1)).

Nothing here imports TensorFlow or Keras except :func:`load_keras_model`, after its checks.
"""

from __future__ import annotations

import json
import math
import pathlib
import zipfile

from starqso.errors import InputError
from starqso.schema import BANDS, BUNIT, CLASS_NAMES, DEFAULT_THRESHOLD, LAYOUT

#: The export folder layout this version writes and reads (``metadata.json: format_version``).
MODEL_FORMAT_VERSION = 1
KERAS_ARCHIVE_FILES = ("config.json", "metadata.json", "model.weights.h5")
RUNTIME_FILES = {"keras": "starqso_classifier.keras", "litert": "model_int8.tflite"}
# Classes that run Python code given in the file rather than code installed on the machine.
# (A serialised *function* is fine when it names one of Keras' own, e.g. an activation; one
# from any other module is caught by the module check below.)
_CODE_CLASSES = ("Lambda", "TFOpLambda", "__lambda__")
_TRUSTED_MODULE_PREFIXES = ("keras", "starqso")


def _named_classes(node, found):
    if isinstance(node, dict):
        if "class_name" in node:
            found.append((str(node.get("module") or ""), str(node["class_name"]),
                          str(node.get("registered_name") or "")))
        for value in node.values():
            _named_classes(value, found)
    elif isinstance(node, list):
        for value in node:
            _named_classes(value, found)
    return found


def check_keras_file(path) -> dict:
    """Check a ``.keras`` archive without loading it; return its ``metadata.json``.

    Args:
        path: ``.keras`` file.

    Returns:
        The archive's metadata dict (``keras_version``, ``date_saved``).

    Raises:
        InputError: the file is missing, empty, not a ``.keras`` zip archive, lacks
            ``config.json``/``metadata.json``/``model.weights.h5``, was saved by a Keras
            other than 3.x, or names a Lambda layer, a Python function or a class from a
            module other than Keras or starqso.

    Example:
        >>> check_keras_file("runs/demo/starqso_classifier.keras")  # doctest: +SKIP
        {'keras_version': '3.15.1', 'date_saved': '2026-11-22@08:01:41'}
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"model file is empty (0 bytes): {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in KERAS_ARCHIVE_FILES if name not in names]
            if missing:
                raise InputError(f"model file is not a complete .keras archive (missing "
                                 f"{', '.join(missing)}): {path}")
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json"))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"model file is not a readable .keras archive ({err}): {path}") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"model file has a corrupt config.json or metadata.json ({err}): "
                         f"{path}") from err
    version = str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
    if not version.startswith("3."):
        raise InputError(f"model file must be saved by Keras 3. Received: keras_version="
                         f"{version or 'none'} in {path}")
    for module, class_name, registered in _named_classes(config, []):
        if class_name in _CODE_CLASSES:
            raise InputError(
                f"model file carries a {class_name} layer or function (Python code stored in "
                f"the file); starqso loads models in safe mode and refuses it: {path}")
        trusted = (module.split(".")[0] in _TRUSTED_MODULE_PREFIXES
                   or registered.startswith("starqso>"))
        if module and not trusted:
            raise InputError(
                f"model file uses code from outside Keras and starqso (class {class_name} of "
                f"module {module}); starqso refuses to run unknown code: {path}")
    return metadata


def _check_metadata(metadata_path: pathlib.Path) -> dict:
    try:
        metadata = json.loads(metadata_path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"{metadata_path} is not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise InputError(f"{metadata_path} must hold a JSON object. Received: "
                         f"{type(metadata).__name__}")
    version = metadata.get("format_version", 1)
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise InputError(f"model folder was exported in format {version!r}; this starqso reads "
                         f"format {MODEL_FORMAT_VERSION} (upgrade starqso). Received: "
                         f"{metadata_path}")
    expected = {"bands": "".join(BANDS), "units": BUNIT, "layout": LAYOUT,
                "class_names": list(CLASS_NAMES)}
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise InputError(f"{metadata_path} must say {key}={value!r}. Received: "
                             f"{key}={metadata.get(key)!r}")
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 5
            and isinstance(shape[1], int) and shape[1] == shape[2] and shape[1] > 0):
        raise InputError(f"{metadata_path} must give input_shape [null, S, S, 5]. Received: "
                         f"input_shape={shape!r}")
    threshold = metadata.get("threshold", DEFAULT_THRESHOLD)
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise InputError(f"{metadata_path} must give a threshold in [0, 1]. Received: "
                         f"threshold={threshold!r}")
    # The calibration keys (optional: older exports have none of them).
    temperature = metadata.get("temperature")
    if "temperature" in metadata and not (_is_number(temperature)
                                          and 0 < temperature < math.inf):
        raise InputError(f"{metadata_path} must give a temperature > 0. Received: "
                         f"temperature={temperature!r}")
    for key in ("training_qso_fraction", "default_prior"):
        value = metadata.get(key)
        if key in metadata and not (_is_number(value) and 0 < value < 1):
            raise InputError(f"{metadata_path} must give {key} strictly between 0 and 1. "
                             f"Received: {key}={value!r}")
    if "default_prior" in metadata and "training_qso_fraction" not in metadata:
        raise InputError(f"{metadata_path} gives a default_prior but no training_qso_fraction "
                         f"to correct from. Received: default_prior="
                         f"{metadata['default_prior']!r}")
    return metadata


def _is_number(value) -> bool:
    # JSON true/false load as bool, a subclass of int: not a number here. NaN fails every
    # comparison the callers make.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_model_dir(model_dir, runtime: str) -> dict:
    """Validate an exported model folder for ``runtime``; return its metadata.

    Args:
        model_dir: folder written by ``starqso export`` (or the shipped pretrained model).
        runtime: ``"keras"`` or ``"litert"``.

    Returns:
        The folder's ``metadata.json`` as a dict.

    Raises:
        InputError: the folder, its metadata or the runtime's model file is missing or
            not what starqso writes (see :func:`check_keras_file`).

    Example:
        >>> check_model_dir("runs/demo/export", "litert")["input_shape"]  # doctest: +SKIP
        [None, 32, 32, 5]
    """
    model_dir = pathlib.Path(model_dir)
    if runtime not in RUNTIME_FILES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIME_FILES)}. "
                         f"Received: {runtime!r}")
    if not model_dir.is_dir():
        raise InputError(f"model folder not found: {model_dir}")
    metadata_path = model_dir / "metadata.json"
    if not metadata_path.is_file():
        raise InputError(f"model folder must hold metadata.json (made by `starqso export`). "
                         f"Received: {model_dir}")
    metadata = _check_metadata(metadata_path)
    model_path = model_dir / RUNTIME_FILES[runtime]
    if not model_path.is_file():
        raise InputError(f"model folder has no {RUNTIME_FILES[runtime]} for --runtime "
                         f"{runtime}. Received: {model_dir}")
    if runtime == "keras":
        check_keras_file(model_path)
    else:
        head = model_path.read_bytes()[:8]
        # Every TFLite flatbuffer carries the file identifier "TFL3" at bytes 4-8.
        if head[4:8] != b"TFL3":
            raise InputError(f"model file is not a TFLite model (no TFL3 identifier): "
                             f"{model_path}")
    return metadata


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
