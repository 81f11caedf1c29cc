"""Checks on a ``.keras`` model file, made before any TensorFlow work starts.

A ``.keras`` file is a zip archive holding ``config.json`` (the model's structure),
``metadata.json`` and ``model.weights.h5``. Loading it runs whatever the config names, so
starqso reads the config itself first, with :mod:`zipfile` and :mod:`json` only (at most
:data:`~starqso.io.safe_read.MAX_JSON_BYTES`, nested at most
:data:`~starqso.io.safe_read.MAX_JSON_DEPTH` deep), and refuses a file that names a
``Lambda`` layer, a serialised Python function, a class from a module that is neither Keras
nor starqso, or a starqso class that starqso does not register (:data:`STARQSO_CLASSES`).
Only then does :func:`starqso.deploy.folder.load_keras_model` hand the file to
``keras.saving.load_model(..., safe_mode=True)``, the second line of defence.
"""

from __future__ import annotations

import pathlib
import zipfile

from starqso.errors import InputError
from starqso.io.safe_read import is_int, one_line, parse_json, read_capped, shown, shown_name

KERAS_ARCHIVE_FILES = ("config.json", "metadata.json", "model.weights.h5")
#: Every class starqso registers with Keras (``registered_name``: module), kept here so the
#: model-file check needs no TensorFlow import; tests/test_model_reliability.py compares it
#: with what ``import starqso.models`` really registers.
STARQSO_CLASSES = {
    "starqso>AperturePhotometry": "starqso.models.layers",
    "starqso>CalibratedClassifier": "starqso.models.calibration",
    "starqso>ConditionalDiffusion": "starqso.models.diffusion",
    "starqso>ConditionalGAN": "starqso.models.gan",
    "starqso>ConstantTimestep": "starqso.models.diffusion",
    "starqso>CutoutScaling": "starqso.models.layers",
    "starqso>DDIMStep": "starqso.models.diffusion",
    "starqso>DiffusionGenerator": "starqso.models.diffusion",
    "starqso>FeatureDenoiser": "starqso.models.diffusion",
    "starqso>FeatureDiscriminator": "starqso.models.gan",
    "starqso>FeatureGenerator": "starqso.models.gan",
    "starqso>FineTuner": "starqso.models.fine_tuner",
    "starqso>FusionClassifier": "starqso.models.classifiers",
    "starqso>ImageClassifier": "starqso.models.classifiers",
    "starqso>L2Normalize": "starqso.models.metric",
    "starqso>LogitBlend": "starqso.models.calibration",
    "starqso>MetricHead": "starqso.models.metric",
    "starqso>MetricLearner": "starqso.models.metric",
    "starqso>NoiseFromVelocity": "starqso.models.diffusion",
    "starqso>PhotometryClassifier": "starqso.models.classifiers",
    "starqso>ProxyLogits": "starqso.models.metric",
    "starqso>ProxyNCALoss": "starqso.models.metric",
    "starqso>RelativeSelfAttention": "starqso.models.trunks",
    "starqso>SpectrumClassifier": "starqso.models.spectrum",
    "starqso>SpectrumEncoder": "starqso.models.spectrum",
    "starqso>StarQSOClassifier": "starqso.models.classifiers",
    "starqso>TemperatureScaling": "starqso.models.calibration",
    "starqso>TimestepEmbedding": "starqso.models.diffusion",
    "starqso>ZeroNoise": "starqso.models.layers",
}
# Classes that run Python code given in the file rather than code installed on the machine.
# (A serialised *function* is fine when it names one of Keras' own, e.g. an activation; one
# from any other module is caught by the module check below.)
_CODE_CLASSES = ("Lambda", "TFOpLambda", "__lambda__")
# Values, not code: Keras rebuilds these from their config without looking up any class.
_KERAS_VALUE_CLASSES = ("__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                        "__ellipsis__", "__slice__")


def _named_classes(config):
    """Every dict of ``config`` that names a class (has ``class_name``), without recursion."""
    found, stack = [], [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                found.append(node)
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found  # in document order: a layer before the classes inside it


def _check_class(node: dict, path: pathlib.Path) -> None:
    """Refuse a class entry of a ``.keras`` config that is not Keras' own or starqso's."""
    class_name, module = node.get("class_name"), node.get("module")
    registered = node.get("registered_name")
    if not (isinstance(class_name, str) and isinstance(module, (str, type(None)))
            and isinstance(registered, (str, type(None)))):
        raise InputError(f"model file names a class with a class_name, module or "
                         f"registered_name that is not a string. Received: "
                         f"class_name={shown_name(class_name)} in {path}")
    if class_name in _CODE_CLASSES:
        raise InputError(
            f"model file carries a {class_name} layer or function (Python code stored in "
            f"the file); starqso loads models in safe mode and refuses it: {path}")
    if class_name in _KERAS_VALUE_CLASSES and not module and "registered_name" not in node:
        return
    if ((registered or "").startswith("starqso>") or class_name.startswith("starqso>")
            or (module or "").split(".")[0] == "starqso"):
        # Keras looks a class up by its registered name first: only the names starqso
        # registers, in the modules that register them, are starqso's code.
        if (registered != f"starqso>{class_name}"
                or STARQSO_CLASSES.get(registered, "") != module):
            raise InputError(
                f"model file names a starqso class that this starqso does not register "
                f"(class {shown_name(class_name)} of module {shown_name(module)}, registered_name "
                f"{shown_name(registered)}); starqso refuses to run unknown code: {path}")
        return
    if not module:
        raise InputError(f"model file names class {shown_name(class_name)} without a module; "
                         f"starqso loads only Keras' and its own classes: {path}")
    if module != "keras" and not module.startswith("keras."):
        raise InputError(
            f"model file uses code from outside Keras and starqso (class {shown_name(class_name)} "
            f"of module {shown_name(module)}); starqso refuses to run unknown code: {path}")
    # A Keras built-in is found by module and name; a "package>name" instead resolves to
    # whatever custom object of that name the process has registered.
    name = node.get("config") if class_name == "function" else class_name
    if not isinstance(name, str) or ">" in name or registered not in (None, name):
        raise InputError(
            f"model file names Keras class {shown_name(class_name)} of module {shown_name(module)} "
            f"with a custom registered name {shown_name(registered)}; starqso refuses it: {path}")


def _read_keras_archive(path: pathlib.Path):
    """``(config, metadata)`` of a ``.keras`` archive, each read with a size cap."""
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
            members = {}
            for name in ("config.json", "metadata.json"):
                info = archive.getinfo(name)
                with archive.open(info) as stream:
                    members[name] = read_capped(stream, info.file_size,
                                                 f"model file member {name} of {path}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
            EOFError, RuntimeError) as err:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise InputError(f"model file is not a readable .keras archive ({one_line(err)}): "
                         f"{path}") from None
    config = parse_json(members["config.json"], f"model file member config.json of {path}")
    metadata = parse_json(members["metadata.json"],
                           f"model file member metadata.json of {path}")
    return config, metadata


def check_keras_file(path) -> dict:
    """Check a ``.keras`` archive without loading it; return its ``metadata.json``.

    Args:
        path: ``.keras`` file.

    Returns:
        The archive's metadata dict (``keras_version``, ``date_saved``).

    Raises:
        InputError: the file is missing, empty, not a ``.keras`` zip archive, lacks
            ``config.json``/``metadata.json``/``model.weights.h5``, has one of those JSON
            members over :data:`~starqso.io.safe_read.MAX_JSON_BYTES` or nested deeper
            than :data:`~starqso.io.safe_read.MAX_JSON_DEPTH`, was saved by a Keras
            other than 3.x, or names a Lambda layer, a Python function, a class from a module
            other than Keras or starqso, or a starqso class that starqso does not register
            (:data:`STARQSO_CLASSES`).

    Example:
        >>> check_keras_file("runs/demo/starqso_classifier.keras")  # doctest: +SKIP
        {'keras_version': '3.15.1', 'date_saved': '2026-11-22@08:01:41'}
    """
    return check_keras_archive(pathlib.Path(path))[1]


def check_keras_archive(path: pathlib.Path):
    """:func:`check_keras_file`, returning ``(config, metadata)``."""
    config, metadata = _read_keras_archive(path)
    version = metadata.get("keras_version", "") if isinstance(metadata, dict) else ""
    if not (isinstance(version, str) and version.startswith("3.")):
        raise InputError(f"model file must be saved by Keras 3. Received: keras_version="
                         f"{shown(version) if version else 'none'} in {path}")
    for node in _named_classes(config):
        _check_class(node, path)
    return config, metadata


def keras_input_side(config):
    """The cutout side a starqso ``.keras`` config takes; None where it cannot tell."""
    for node in _named_classes(config):
        if node.get("registered_name") != "starqso>StarQSOClassifier":
            continue
        settings = node.get("config")
        if not isinstance(settings, dict):
            return None
        side = settings.get("image_size")
        if side is None:  # no crop: the generator's input side
            generator = settings.get("generator")
            inner = generator.get("config") if isinstance(generator, dict) else None
            side = inner.get("image_size") if isinstance(inner, dict) else None
        return side if is_int(side) else None
    return None
