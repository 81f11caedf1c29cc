"""Checks on model files and folders, made before any TensorFlow work starts.

A ``.keras`` file is a zip archive holding ``config.json`` (the model's structure),
``metadata.json`` and ``model.weights.h5``. Loading it runs whatever the config names, so
starqso reads the config itself first, with :mod:`zipfile` and :mod:`json` only (at most
:data:`MAX_JSON_BYTES`, nested at most :data:`MAX_JSON_DEPTH` deep), and refuses a file that
names a ``Lambda`` layer, a serialised Python function, a class from a module that is neither
Keras nor starqso, or a starqso class that starqso does not register (:data:`STARQSO_CLASSES`).
Only then does it hand the file to ``keras.saving.load_model(..., safe_mode=True)``, the second
line of defence.

An exported model folder (``starqso export``) is checked the same way: every file the chosen
runtime needs, ``metadata.json`` with the data model starqso expects (``survey`` SDSS: ugriz,
nanomaggies, 0.396 arcsec/px; ``classes`` STAR/QSO; NHWC; a folder exported before those two
keys were recorded is SDSS STAR/QSO), a format version this starqso can read and, when present,
valid calibration keys (``threshold`` in [0, 1], ``temperature`` > 0, ``training_qso_fraction``
and ``default_prior`` in (0, 1)). The model file must match the SHA-256 that ``starqso export``
recorded in ``metadata.json: sha256`` (folders exported before it have none and still load),
and take the cutout size ``input_shape`` gives: read from the ``.keras`` config, or from the
TFLite flatbuffer by LiteRT, which also refuses a damaged flatbuffer here in one line.

Nothing here imports TensorFlow or Keras except :func:`load_keras_model`, after its checks.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import reprlib
import zipfile

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError
from starqso.schema import (
    BANDS,
    BUNIT,
    CLASS_NAMES,
    CLASSES,
    DEFAULT_THRESHOLD,
    LAYOUT,
    SDSS,
    SUPPORTED_CLASSES,
    SUPPORTED_SURVEYS,
    ClassList,
    Survey,
)

#: The export folder layout this version writes and reads (``metadata.json: format_version``).
MODEL_FORMAT_VERSION = 1
KERAS_ARCHIVE_FILES = ("config.json", "metadata.json", "model.weights.h5")
RUNTIME_FILES = {"keras": "starqso_classifier.keras", "litert": "model_int8.tflite"}
#: The most bytes starqso reads of a ``config.json`` or ``metadata.json`` (in a ``.keras``
#: archive or an export folder). The shipped model's are 4 kB and 0.5 kB; a bigger one is a
#: damaged or hostile file, and reading it whole (a zip member can expand 1000-fold) could
#: exhaust memory.
MAX_JSON_BYTES = 4 << 20
#: The deepest JSON nesting accepted (the shipped config.json nests 13 levels). Keras
#: deserialises a config recursively, so a deeper one would end in a RecursionError.
MAX_JSON_DEPTH = 100
#: The input side (pixels) ``metadata.json: input_shape`` may give: the configs' smallest
#: ``model.image_size`` up to the largest cutout ``starqso simulate`` writes; beyond that one
#: batch of cutouts would need gigabytes.
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 256
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
# Error messages show values through this: a bounded repr, whatever the value's size.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 8


def _shown(value) -> str:
    """``repr(value)``, at most 80 characters, without building the whole repr first."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= 80 else text[:77] + "..."


def _name(value) -> str:
    """A class or module name for a message: as it is when a short string, else bounded."""
    return value if isinstance(value, str) and len(value) <= 80 else _shown(value)


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_depth(node) -> int:
    """Nesting depth of parsed JSON, without recursion (it may be deeper than Python allows)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((value, depth + 1) for value in
                         (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_json(data: bytes, what: str):
    """Parse ``data`` (at most MAX_JSON_BYTES) as JSON; ``what`` names it in messages."""
    try:
        value = strict_json.loads(data, what)
    except strict_json.DuplicateKeyError:
        raise
    except RecursionError:
        value = None
        depth = math.inf
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{what} is not valid JSON ({_one_line(err)})") from None
    else:
        depth = _json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep; starqso "
                         f"refuses it (a damaged or hostile file)")
    return value


def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _read_capped(stream, declared: int, what: str) -> bytes:
    """Read at most MAX_JSON_BYTES from ``stream``; refuse a larger declared or actual size."""
    if declared > MAX_JSON_BYTES:
        raise InputError(f"{what} is {declared / 2**20:.1f} MiB; starqso reads at most "
                         f"{MAX_JSON_BYTES >> 20} MiB of it (a damaged file or a "
                         f"decompression bomb). Received: {declared} bytes")
    # Declared sizes can lie (a zip member's header, a growing file): never read past the cap.
    data = stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise InputError(f"{what} holds more than {MAX_JSON_BYTES >> 20} MiB; starqso reads "
                         f"at most that much of it (a damaged file or a decompression bomb)")
    return data


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
                         f"class_name={_name(class_name)} in {path}")
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
                f"(class {_name(class_name)} of module {_name(module)}, registered_name "
                f"{_name(registered)}); starqso refuses to run unknown code: {path}")
        return
    if not module:
        raise InputError(f"model file names class {_name(class_name)} without a module; "
                         f"starqso loads only Keras' and its own classes: {path}")
    if module != "keras" and not module.startswith("keras."):
        raise InputError(
            f"model file uses code from outside Keras and starqso (class {_name(class_name)} "
            f"of module {_name(module)}); starqso refuses to run unknown code: {path}")
    # A Keras built-in is found by module and name; a "package>name" instead resolves to
    # whatever custom object of that name the process has registered.
    name = node.get("config") if class_name == "function" else class_name
    if not isinstance(name, str) or ">" in name or registered not in (None, name):
        raise InputError(
            f"model file names Keras class {_name(class_name)} of module {_name(module)} "
            f"with a custom registered name {_name(registered)}; starqso refuses it: {path}")


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
                    members[name] = _read_capped(stream, info.file_size,
                                                 f"model file member {name} of {path}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
            EOFError, RuntimeError) as err:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise InputError(f"model file is not a readable .keras archive ({_one_line(err)}): "
                         f"{path}") from None
    config = _parse_json(members["config.json"], f"model file member config.json of {path}")
    metadata = _parse_json(members["metadata.json"],
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
            members over :data:`MAX_JSON_BYTES` or nested deeper than
            :data:`MAX_JSON_DEPTH`, was saved by a Keras other than 3.x, or names a Lambda
            layer, a Python function, a class from a module other than Keras or starqso, or
            a starqso class that starqso does not register (:data:`STARQSO_CLASSES`).

    Example:
        >>> check_keras_file("runs/demo/starqso_classifier.keras")  # doctest: +SKIP
        {'keras_version': '3.15.1', 'date_saved': '2026-11-22@08:01:41'}
    """
    return _check_keras_archive(pathlib.Path(path))[1]


def _check_keras_archive(path: pathlib.Path):
    """:func:`check_keras_file`, returning ``(config, metadata)``."""
    config, metadata = _read_keras_archive(path)
    version = metadata.get("keras_version", "") if isinstance(metadata, dict) else ""
    if not (isinstance(version, str) and version.startswith("3.")):
        raise InputError(f"model file must be saved by Keras 3. Received: keras_version="
                         f"{_shown(version) if version else 'none'} in {path}")
    for node in _named_classes(config):
        _check_class(node, path)
    return config, metadata


def _keras_input_side(config):
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
        return side if _is_int(side) else None
    return None


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
                         f"{_one_line(err)}): {path}") from None
    if len(details) != 1:
        raise InputError(f"model file must have one input (the cutouts). Received: "
                         f"{len(details)} inputs in {path}")
    signature = details[0].get("shape_signature", details[0]["shape"])
    return [int(value) for value in signature]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_metadata(metadata_path: pathlib.Path):
    try:
        with open(metadata_path, "rb") as stream:
            data = _read_capped(stream, metadata_path.stat().st_size, str(metadata_path))
    except OSError as err:
        raise InputError(f"{metadata_path} cannot be read ({err.strerror or err})") from None
    return _parse_json(data, str(metadata_path))


def _survey_text(survey: Survey) -> str:
    return (f"{survey.name} ({' '.join(survey.bands)}, {survey.pixel_scale_arcsec:g} arcsec/px, "
            f"{survey.unit})")


def model_survey(metadata: dict, where="metadata.json") -> tuple[Survey, ClassList]:
    """The survey and class list a model's ``metadata.json`` records.

    A model folder exported before they were recorded (the shipped model among them) has
    neither key and is :data:`~starqso.schema.SDSS` STAR/QSO, the only data model starqso
    wrote then.

    Args:
        metadata: the folder's ``metadata.json`` as a dict.
        where: the file, for messages.

    Returns:
        ``(survey, classes)``.

    Raises:
        InputError: ``survey`` or ``classes`` is not what starqso export writes, or names a
            survey or class list this starqso cannot classify with (it reads SDSS STAR/QSO
            models only).

    Example:
        >>> model_survey({}) == (SDSS, CLASSES)
        True
    """
    try:
        survey = Survey.from_dict(metadata["survey"]) if "survey" in metadata else SDSS
        classes = ClassList.from_dict(metadata["classes"]) if "classes" in metadata \
            else CLASSES
    except ValueError as err:
        raise InputError(f"{where} must give survey and classes as starqso export writes "
                         f"them: {err}") from None
    if survey not in SUPPORTED_SURVEYS:
        raise InputError(f"the model was trained on survey {_survey_text(survey)}; this starqso "
                         f"classifies with {' or '.join(map(_survey_text, SUPPORTED_SURVEYS))} "
                         f"models only. Received: survey={survey.name!r} in {where}")
    if classes not in SUPPORTED_CLASSES:
        supported = " or ".join("/".join(known.names) for known in SUPPORTED_CLASSES)
        raise InputError(f"the model tells apart classes {'/'.join(classes.names)}; this "
                         f"starqso classifies with {supported} models only. Received: "
                         f"classes={list(classes.names)} in {where}")
    return survey, classes


def _check_metadata(metadata_path: pathlib.Path) -> dict:
    metadata = _read_metadata(metadata_path)
    if not isinstance(metadata, dict):
        raise InputError(f"{metadata_path} must hold a JSON object. Received: "
                         f"{type(metadata).__name__}")
    version = metadata.get("format_version", 1)
    if not _is_int(version) or version > MODEL_FORMAT_VERSION:
        raise InputError(f"model folder was exported in format {_shown(version)}; this starqso "
                         f"reads format {MODEL_FORMAT_VERSION} (upgrade starqso). Received: "
                         f"{metadata_path}")
    # Before the single keys below: a model of another survey is named as such, not as a
    # mismatched band string.
    model_survey(metadata, metadata_path)
    expected = {"bands": "".join(BANDS), "units": BUNIT, "layout": LAYOUT,
                "class_names": list(CLASS_NAMES)}
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise InputError(f"{metadata_path} must say {key}={value!r}. Received: "
                             f"{key}={_shown(metadata.get(key))}")
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4
            and (shape[0] is None or (_is_int(shape[0]) and shape[0] >= 1))
            and all(_is_int(value) for value in shape[1:]) and shape[3] == len(BANDS)
            and shape[1] == shape[2] and MIN_INPUT_SIDE <= shape[1] <= MAX_INPUT_SIDE):
        raise InputError(f"{metadata_path} must give input_shape [null, S, S, {len(BANDS)}] "
                         f"with {MIN_INPUT_SIDE} <= S <= {MAX_INPUT_SIDE}. Received: "
                         f"input_shape={_shown(shape)}")
    threshold = metadata.get("threshold", DEFAULT_THRESHOLD)
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise InputError(f"{metadata_path} must give a threshold in [0, 1] (a number; true "
                         f"and false are not). Received: threshold={_shown(threshold)}")
    # The calibration keys (optional: older exports have none of them).
    temperature = metadata.get("temperature")
    if "temperature" in metadata and not (_is_number(temperature)
                                          and 0 < temperature < math.inf):
        raise InputError(f"{metadata_path} must give a temperature > 0. Received: "
                         f"temperature={_shown(temperature)}")
    for key in ("training_qso_fraction", "default_prior"):
        value = metadata.get(key)
        if key in metadata and not (_is_number(value) and 0 < value < 1):
            raise InputError(f"{metadata_path} must give {key} strictly between 0 and 1. "
                             f"Received: {key}={_shown(value)}")
    if "default_prior" in metadata and "training_qso_fraction" not in metadata:
        raise InputError(f"{metadata_path} gives a default_prior but no training_qso_fraction "
                         f"to correct from. Received: default_prior="
                         f"{_shown(metadata['default_prior'])}")
    checksums = metadata.get("sha256")  # optional: exports before it have none
    if "sha256" in metadata and not (
            isinstance(checksums, dict) and all(
                isinstance(name, str) and "/" not in name and isinstance(digest, str)
                and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
                for name, digest in checksums.items())):
        raise InputError(f"{metadata_path} must give sha256 as file names mapped to 64 hex "
                         f"digits. Received: sha256={_shown(checksums)}")
    if "quality" in metadata and not _quality_ok(metadata["quality"]):
        raise InputError(f"{metadata_path} must give quality as starqso export writes it "
                         f"(r_range [low, high], ood_threshold, colour_density with weights, "
                         f"4-colour means and 4x4 covariances); re-export the model or remove "
                         f"the key. Received: quality={_shown(metadata['quality'])}")
    return metadata


def _quality_ok(quality) -> bool:
    """Whether ``metadata.json: quality`` has the shapes the quality bits read."""
    if not isinstance(quality, dict):
        return False
    r_range, density = quality.get("r_range"), quality.get("colour_density")
    if not (isinstance(r_range, list) and len(r_range) == 2
            and all(_is_number(value) for value in r_range) and r_range[0] < r_range[1]
            and _is_number(quality.get("ood_threshold")) and isinstance(density, dict)):
        return False
    weights, means = density.get("weights"), density.get("means")
    covariances = density.get("covariances")
    if not (isinstance(weights, list) and weights and isinstance(means, list)
            and isinstance(covariances, list) and len(weights) == len(means)
            == len(covariances)):
        return False

    def matrix(value, rows, columns):
        return (isinstance(value, list) and len(value) == rows and all(
            isinstance(row, list) and len(row) == columns
            and all(_is_number(item) for item in row) for row in value))

    return (all(_is_number(weight) and weight > 0 for weight in weights)
            and matrix(means, len(means), 4)
            and all(matrix(covariance, 4, 4) for covariance in covariances))


def _is_number(value) -> bool:
    # JSON true/false load as bool, a subclass of int: not a number here. NaN fails every
    # comparison the callers make.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_checksum(metadata: dict, model_path: pathlib.Path, metadata_path) -> None:
    """Compare the model file with the SHA-256 ``starqso export`` recorded, where it did."""
    if "sha256" not in metadata:
        return
    expected = metadata["sha256"].get(model_path.name)
    if expected is None:
        raise InputError(f"{metadata_path} lists checksums but none for {model_path.name}; "
                         f"re-export the model. Received: sha256 for "
                         f"{_shown(sorted(metadata['sha256']))}")
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
                         f"Received: {_shown(runtime)}")
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
    shape = list(metadata["input_shape"])
    if runtime == "keras":
        side = _keras_input_side(_check_keras_archive(model_path)[0])
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
    _check_checksum(metadata, model_path, metadata_path)
    if takes is not None and takes[1:] != shape[1:]:
        raise InputError(f"{metadata_path} says input_shape={metadata['input_shape']} but "
                         f"{model_path.name} takes {takes}; the metadata belongs to another "
                         f"model. Received: {model_dir}")
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


#: The most bytes of array data starqso loads from one ``.npz`` file (all its arrays
#: together): 1 GiB. The largest it writes, an export's ``embedding_reference.npz``, is
#: 1.3 MB; a header declaring more is a damaged or hostile file, refused before allocating.
MAX_NPZ_BYTES = 1 << 30


def _npz_member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str):
    """``(shape, dtype, header_bytes)`` of one ``.npy`` member, from its header alone."""
    import numpy as np
    from numpy.lib import format as npy_format

    with archive.open(info) as stream:
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(stream)
            else:  # 3.0 only differs for structured dtypes, which starqso never writes
                raise ValueError(f".npy format version {version[0]}.{version[1]}")
        except (ValueError, EOFError, OSError, SyntaxError, zipfile.BadZipFile) as err:
            raise InputError(f"{where} is not a NumPy array ({_one_line(err)})") from None
        consumed = stream.tell() if hasattr(stream, "tell") else None
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (dtype {dtype}); starqso reads only "
                         f"numeric arrays and never unpickles")
    if any(not isinstance(side, int) or side < 0 for side in shape):
        raise InputError(f"{where} declares an invalid shape {_shown(shape)}")
    return shape, np.dtype(dtype), consumed


def read_npz(path, what: str, *, max_bytes: int = MAX_NPZ_BYTES) -> dict:
    """All arrays of a NumPy ``.npz`` file, after checking what its headers declare.

    ``np.load`` allocates whatever shape an ``.npy`` header declares, and reads a file that
    is not a zip archive as a pickle. Here the archive is opened with :mod:`zipfile` first,
    and each member's header is read with :mod:`numpy.lib.format`: its declared data size
    must match the member's size in the archive, and all members together must stay under
    ``max_bytes``, before a byte of data is allocated.

    Args:
        path: the ``.npz`` file.
        what: what the file is, for messages (``"embedding reference"``).
        max_bytes: the most bytes of array data accepted (all arrays together).

    Returns:
        ``{name: array}``, names as ``np.savez`` gave them (without ``.npy``).

    Raises:
        InputError: the file is missing, not a zip archive, a member is not an ``.npy``
            array, holds Python objects, declares a size that its member does not hold or
            that is over ``max_bytes``, or is damaged. The message names the file.

    Example:
        >>> spaces = read_npz("export/embedding_reference.npz",
        ...                   "embedding reference")  # doctest: +SKIP
        >>> spaces["vector"].shape  # doctest: +SKIP
        (5000, 128)
    """
    import numpy as np

    from starqso.io._fits import check_readable_file

    path = check_readable_file(path, what)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as err:
        raise InputError(f"{what} file is not a NumPy .npz zip archive ({_one_line(err)}); "
                         f"expected a file written by numpy.savez: {path}") from None
    with archive:
        shapes, total = {}, 0
        for info in archive.infolist():
            where = f"member {_name(info.filename)} of {what} file {path}"
            if not info.filename.endswith(".npy"):
                raise InputError(f"{where} is not an .npy array; expected a file written by "
                                 f"numpy.savez")
            shape, dtype, header = _npz_member_header(archive, info, where)
            declared = math.prod(shape) * dtype.itemsize
            if header is not None and header + declared != info.file_size:
                raise InputError(f"{where} declares shape {_shown(shape)} of {dtype} "
                                 f"({declared:,} bytes) but holds {info.file_size - header:,} "
                                 f"bytes of data (a damaged or altered file)")
            total += declared
            if total > max_bytes:
                raise InputError(f"{where} declares shape {_shown(shape)} of {dtype}: "
                                 f"{total:,} bytes in all, over the limit of {max_bytes:,}")
            shapes[info.filename[:-len(".npy")]] = shape
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in shapes}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise InputError(f"{what} file could not be read ({_one_line(err)}): "
                             f"{path}") from None
