"""An export folder's ``metadata.json``: the data model it records, and its checks.

``starqso export`` writes the data model starqso expects (:func:`data_model_metadata`:
``survey`` SDSS: ugriz, nanomaggies, 0.396 arcsec/px; ``classes`` STAR/QSO; NHWC);
:func:`check_metadata` reads it back before any TensorFlow work: that data model (a folder
exported before ``survey`` and ``classes`` were recorded is SDSS STAR/QSO,
:func:`model_survey`), a format version this starqso can read, an ``input_shape`` of a
plausible cutout size and, when present, valid calibration keys (``threshold`` in [0, 1],
``temperature`` > 0, ``training_qso_fraction`` and ``default_prior`` in (0, 1)), checksums
and quality reference.
"""

from __future__ import annotations

import math
import pathlib

from starqso import __version__
from starqso.errors import InputError
from starqso.io.safe_read import is_int, is_number, parse_json, read_capped, shown
from starqso.schema import (
    BANDS,
    BUNIT,
    CLASSES,
    DEFAULT_THRESHOLD,
    LAYOUT,
    PIXEL_SCALE_ARCSEC,
    SDSS,
    SUPPORTED_CLASSES,
    SUPPORTED_SURVEYS,
    ClassList,
    Survey,
    output_name,
)

#: The export folder layout this version writes and reads (``metadata.json: format_version``).
MODEL_FORMAT_VERSION = 1
#: The input side (pixels) ``metadata.json: input_shape`` may give: the configs' smallest
#: ``model.image_size`` up to the largest cutout ``starqso simulate`` writes; beyond that one
#: batch of cutouts would need gigabytes.
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 256


def data_model_metadata(image_size: int, classes: ClassList = CLASSES) -> dict:
    """The first keys of an export's ``metadata.json``: its format, the starqso that wrote
    it, the model's input and output names and the data model it takes (input shape, bands,
    units, pixel scale, layout, class names, survey and classes), as :func:`check_metadata`
    reads them back.

    Args:
        image_size: the model's cutout side in pixels.
        classes: the classes the model tells apart (:data:`starqso.schema.CLASSES`, output
            ``p_qso`` (N, 1); or :data:`starqso.schema.THREE_CLASSES`, output
            ``probabilities`` (N, K) in their order).

    Returns:
        dict, in the order ``metadata.json`` lists them.
    """
    return {
        "format_version": MODEL_FORMAT_VERSION, "starqso_version": __version__,
        "input_name": "image", "output_name": output_name(len(classes.names)),
        "input_shape": [None, image_size, image_size, len(BANDS)],
        "bands": "".join(BANDS), "units": BUNIT, "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
        "layout": LAYOUT, "class_names": list(classes.names),
        # The whole data model, read back (and checked) by model_survey.
        "survey": SDSS.to_dict(), "classes": classes.to_dict(),
    }


def _read_metadata(metadata_path: pathlib.Path):
    try:
        with open(metadata_path, "rb") as stream:
            data = read_capped(stream, metadata_path.stat().st_size, str(metadata_path))
    except OSError as err:
        raise InputError(f"{metadata_path} cannot be read ({err.strerror or err})") from None
    return parse_json(data, str(metadata_path))


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


def check_metadata(metadata_path: pathlib.Path) -> dict:
    """Read an export folder's ``metadata.json`` and check it; return it as a dict.

    Raises:
        InputError: the file cannot be read, is not a JSON object of at most
            :data:`~starqso.io.safe_read.MAX_JSON_BYTES`, or any key is not what
            ``starqso export`` writes (see the module's description).
    """
    metadata = _read_metadata(metadata_path)
    if not isinstance(metadata, dict):
        raise InputError(f"{metadata_path} must hold a JSON object. Received: "
                         f"{type(metadata).__name__}")
    version = metadata.get("format_version", 1)
    if not is_int(version) or version > MODEL_FORMAT_VERSION:
        raise InputError(f"model folder was exported in format {shown(version)}; this starqso "
                         f"reads format {MODEL_FORMAT_VERSION} (upgrade starqso). Received: "
                         f"{metadata_path}")
    # Before the single keys below: a model of another survey is named as such, not as a
    # mismatched band string.
    classes = model_survey(metadata, metadata_path)[1]
    expected = {"bands": "".join(BANDS), "units": BUNIT, "layout": LAYOUT,
                "class_names": list(classes.names)}
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise InputError(f"{metadata_path} must say {key}={value!r}. Received: "
                             f"{key}={shown(metadata.get(key))}")
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4
            and (shape[0] is None or (is_int(shape[0]) and shape[0] >= 1))
            and all(is_int(value) for value in shape[1:]) and shape[3] == len(BANDS)
            and shape[1] == shape[2] and MIN_INPUT_SIDE <= shape[1] <= MAX_INPUT_SIDE):
        raise InputError(f"{metadata_path} must give input_shape [null, S, S, {len(BANDS)}] "
                         f"with {MIN_INPUT_SIDE} <= S <= {MAX_INPUT_SIDE}. Received: "
                         f"input_shape={shown(shape)}")
    threshold = metadata.get("threshold", DEFAULT_THRESHOLD)
    if not is_number(threshold) or not 0 <= threshold <= 1:
        raise InputError(f"{metadata_path} must give a threshold in [0, 1] (a number; true "
                         f"and false are not). Received: threshold={shown(threshold)}")
    # The calibration keys (optional: older exports have none of them).
    temperature = metadata.get("temperature")
    if "temperature" in metadata and not (is_number(temperature)
                                          and 0 < temperature < math.inf):
        raise InputError(f"{metadata_path} must give a temperature > 0. Received: "
                         f"temperature={shown(temperature)}")
    for key in ("training_qso_fraction", "default_prior"):
        value = metadata.get(key)
        if key == "default_prior" and isinstance(value, dict) and len(classes.names) > 2:
            if not _class_fractions_ok(value, classes.names[1:], below_one=True):
                raise InputError(f"{metadata_path} must give default_prior as fractions of "
                                 f"classes {', '.join(classes.names[1:])} (each in (0, 1), "
                                 f"summing to less than 1). Received: default_prior="
                                 f"{shown(value)}")
            continue
        if key in metadata and not (is_number(value) and 0 < value < 1):
            raise InputError(f"{metadata_path} must give {key} strictly between 0 and 1. "
                             f"Received: {key}={shown(value)}")
    fractions = metadata.get("training_class_fractions")
    if "training_class_fractions" in metadata and not (
            _class_fractions_ok(fractions, classes.names, below_one=False)
            and abs(sum(fractions.values()) - 1) < 1e-6):
        raise InputError(f"{metadata_path} must give training_class_fractions as a fraction "
                         f"of each class {', '.join(classes.names)} in (0, 1), summing to 1. "
                         f"Received: training_class_fractions={shown(fractions)}")
    if "default_prior" in metadata and "training_qso_fraction" not in metadata:
        raise InputError(f"{metadata_path} gives a default_prior but no training_qso_fraction "
                         f"to correct from. Received: default_prior="
                         f"{shown(metadata['default_prior'])}")
    checksums = metadata.get("sha256")  # optional: exports before it have none
    if "sha256" in metadata and not (
            isinstance(checksums, dict) and all(
                isinstance(name, str) and "/" not in name and isinstance(digest, str)
                and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
                for name, digest in checksums.items())):
        raise InputError(f"{metadata_path} must give sha256 as file names mapped to 64 hex "
                         f"digits. Received: sha256={shown(checksums)}")
    if "quality" in metadata and not _quality_ok(metadata["quality"]):
        raise InputError(f"{metadata_path} must give quality as starqso export writes it "
                         f"(r_range [low, high], ood_threshold, colour_density with weights, "
                         f"4-colour means and 4x4 covariances); re-export the model or remove "
                         f"the key. Received: quality={shown(metadata['quality'])}")
    return metadata


def _class_fractions_ok(fractions, names, *, below_one) -> bool:
    """Whether ``fractions`` maps class names among ``names`` (all of them unless
    ``below_one``) to numbers in (0, 1), summing to below 1 when ``below_one``."""
    if not isinstance(fractions, dict) or not fractions or not all(
            name in names and is_number(value) and 0 < value < 1
            for name, value in fractions.items()):
        return False
    if below_one:
        return sum(fractions.values()) < 1
    return set(fractions) == set(names)


def _quality_ok(quality) -> bool:
    """Whether ``metadata.json: quality`` has the shapes the quality bits read."""
    if not isinstance(quality, dict):
        return False
    r_range, density = quality.get("r_range"), quality.get("colour_density")
    if not (isinstance(r_range, list) and len(r_range) == 2
            and all(is_number(value) for value in r_range) and r_range[0] < r_range[1]
            and is_number(quality.get("ood_threshold")) and isinstance(density, dict)):
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
            and all(is_number(item) for item in row) for row in value))

    return (all(is_number(weight) and weight > 0 for weight in weights)
            and matrix(means, len(means), 4)
            and all(matrix(covariance, 4, 4) for covariance in covariances))
