"""Run configuration: a strict, typed, frozen description of one training run, with YAML I/O.

A run is described by :class:`RunConfig`, made of three sections (:class:`ModelConfig`,
:class:`DataConfig`, :class:`TrainingConfig`). A YAML file holds only the keys it changes, on top
of a named preset (``base`` unless the file says ``preset: tiny``)::

    preset: tiny
    training:
      batch_size: 8
      learning_rate: 5.0e-4

Every value is checked when a config is built, from a file or in Python: integers must be
integers (``true`` and ``3.0`` are not), numbers accept integers, lists of integers become tuples,
and ranges are enforced. Unknown keys are errors, so a typo never silently falls back to a
default. Problems are raised as :class:`~starqso.errors.InputError` with a one-line message that
names the file, the dotted key and what was expected.

This module must not import TensorFlow or Keras: the command line imports it at start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import secrets
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from starqso.errors import InputError

__all__ = [
    "PRESETS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainingConfig",
    "config_from_dict",
    "config_to_dict",
    "get_preset",
    "load_config",
    "save_config",
]


def _where(source: str | None) -> str:
    """Message suffix naming where a value came from ("" for configs built in Python)."""
    if source is None:
        return ""
    # "<dict>"-style placeholders are not file names.
    return f" in {source}" if source.startswith("<") else f" in file {source}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(key: str, expected: str, value: Any, where: str) -> typing.NoReturn:
    raise InputError(f"{key} must be {expected}. Received: {_show(value)}{where}")


# PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` loads as the string "1e-3". Accept
# exactly that spelling in number fields, since that is how people write learning rates.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

_GE0 = (lambda v: v >= 0, ">= 0")
_GE1 = (lambda v: v >= 1, ">= 1")
_GT0 = (lambda v: v > 0, "> 0")
_UNIT_CLOSED = (lambda v: 0 <= v <= 1, "in [0, 1]")
_UNIT_HALF_OPEN = (lambda v: 0 <= v < 1, "in [0, 1)")
_UNIT_OPEN = (lambda v: 0 < v < 1, "in (0, 1)")

# Range of each scalar field, by dotted key; fields not listed accept any value of their type.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.image_size": (lambda v: v >= 8, ">= 8"),
    **dict.fromkeys(["model.feature_dim", "model.noise_dim", "model.dense_units"], _GE1),
    "model.dropout": _UNIT_HALF_OPEN,
    "data.num_objects": (lambda v: v >= 2, ">= 2"),  # a split needs at least two objects
    **dict.fromkeys(["data.simulation_seed", "data.split_seed"], _GE0),  # NumPy: seeds >= 0
    "data.cutout_size": (lambda v: v >= 16, ">= 16"),  # the sky simulator's smallest cutout
    "data.qso_fraction": _UNIT_CLOSED,
    "data.validation_fraction": _UNIT_OPEN,
    "data.test_fraction": _UNIT_HALF_OPEN,
    **dict.fromkeys(["data.export_check_objects", "data.export_calibration_objects"], _GE1),
    "training.seed": _GE0,
    "training.batch_size": _GE1,
    "training.early_stopping_patience": _GE1,
    **dict.fromkeys(["training.gan_reconstruction_weight",
                     "training.gan_distillation_weight"], _GE0),
    **dict.fromkeys(["training.learning_rate", "training.gan_learning_rate"], _GT0),
    **{f"training.{stage}_epochs": _GE0 for stage in ("encoder", "gan", "fusion", "image")},
}


def _convert(key: str, hint: Any, value: Any, where: str) -> Any:
    """Return ``value`` as the type ``hint`` asks for, checked against its range."""
    test, limit = _RANGES.get(key, (lambda v: True, ""))
    limit = f" {limit}" if limit else ""
    if hint is bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value, where)
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            _fail(key, "a non-empty string", value, where)
        return value
    if hint is int:
        # bool is an int subclass, and 3.0 would hide a typo; both are rejected.
        if isinstance(value, bool) or not isinstance(value, int) or not test(value):
            _fail(key, f"an integer{limit}", value, where)
        return value
    if hint == tuple[int, ...]:
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 1 for item in value
        )
        if not ok:
            _fail(key, "a non-empty list of integers >= 1", value, where)
        return tuple(value)
    if hint in (float, float | None):
        optional = hint is not float
        if value is None and optional:
            return None
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            number = value.strip()
        with contextlib.suppress(OverflowError, TypeError):
            number = float(number)
        if not isinstance(number, float) or not math.isfinite(number) or not test(number):
            _fail(key, f"a number{limit}" + (" or null" if optional else ""), value, where)
        return number
    raise TypeError(f"{key}: no conversion for type {hint!r}")  # a bug here, not user input


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked_fields(cls: type, section: str, values: Mapping[str, Any], where: str) -> dict:
    """Convert and range-check every field of section dataclass ``cls`` given in ``values``."""
    hints = _hints(cls)
    checked = {name: _convert(f"{section}.{name}", hints[name], value, where)
               for name, value in values.items()}
    if cls is DataConfig:
        total = checked["validation_fraction"] + checked["test_fraction"]
        if not total < 1:
            raise InputError(
                "data.validation_fraction + data.test_fraction must be < 1 to leave objects for "
                f"training. Received: {checked['validation_fraction']!r} + "
                f"{checked['test_fraction']!r}{where}"
            )
    return checked


def _validate_in_place(section_config: Any, section: str) -> None:
    """Check a section built in Python and store the converted values (e.g. list -> tuple)."""
    values = {f.name: getattr(section_config, f.name) for f in dataclasses.fields(section_config)}
    for name, value in _checked_fields(type(section_config), section, values, "").items():
        object.__setattr__(section_config, name, value)  # frozen: bypass __setattr__ once


# The photometry's 3" aperture (7.6 pixels) plus its 3-pixel sky border need 22 pixels.
PHOTOMETRY_MIN_SIZE = 22


def _check_run(model: ModelConfig, data: DataConfig, where: str) -> None:
    if model.photometry and model.image_size < PHOTOMETRY_MIN_SIZE:
        raise InputError(
            f"model.photometry needs model.image_size >= {PHOTOMETRY_MIN_SIZE} (a 3\" aperture "
            f"and a sky border); set photometry: false for smaller cutouts. Received: "
            f"{model.image_size}{where}"
        )
    if data.cutout_size < model.image_size:
        raise InputError(
            f"data.cutout_size must be >= model.image_size ({model.image_size}) because cutouts "
            f"are centre-cropped to the model input. Received: {data.cutout_size}{where}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes shared by the spectrum encoder, the GAN and the image classifier."""

    image_size: int = 32  # model input side in pixels (cutouts are centre-cropped to it)
    image_filters: tuple[int, ...] = (16, 32, 64)  # conv widths of the image trunk, one per stage
    spectrum_filters: tuple[int, ...] = (16, 24, 32, 48)  # 1-D residual stages of the encoder
    feature_dim: int = 128  # spectral feature vector length (the paper's 128)
    noise_dim: int = 16  # GAN generator noise length
    dense_units: int = 128  # width of dense heads
    dropout: float = 0.2  # in [0, 1)
    # Aperture photometry (colours, r, concentration) measured inside the model from the raw
    # cutout, as an extra input of the generator and fusion classifier; false = the paper's.
    photometry: bool = True

    def __post_init__(self) -> None:
        _validate_in_place(self, "model")


@dataclass(frozen=True)
class DataConfig:
    """Where training objects come from and how they are split."""

    num_objects: int = 8000  # demo objects simulated when `fit` has no --data
    simulation_seed: int = 0
    cutout_size: int = 48  # simulated cutout side (>= model.image_size, checked in RunConfig)
    qso_fraction: float | None = None  # None = the real catalogue's fraction
    validation_fraction: float = 0.2  # in (0, 1)
    test_fraction: float = 0.0  # in [0, 1), validation + test < 1
    split_seed: int = 0  # the train/validation/test split; fixed while training seeds vary
    export_check_objects: int = 2000  # held-out simulated cutouts checking each export
    export_calibration_objects: int = 300  # simulated cutouts calibrating the int8 model

    def __post_init__(self) -> None:
        _validate_in_place(self, "data")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of the four training stages."""

    seed: int = 0
    batch_size: int = 128
    learning_rate: float = 1e-3
    encoder_epochs: int = 8
    gan_epochs: int = 10
    fusion_epochs: int = 10
    image_epochs: int = 10
    gan_learning_rate: float = 2e-4
    gan_reconstruction_weight: float = 10.0  # >= 0; L2 pull of generated vectors to real ones
    # >= 0; the frozen spectrum head must classify a generated vector as it does the real one
    # (0 = the paper's recipe; see benchmarks/results/paper_table.md for its effect)
    gan_distillation_weight: float = 0.0
    early_stopping_patience: int = 4  # >= 1
    augment: bool = True  # random flips / 90-degree rotations of cutouts
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        _validate_in_place(self, "training")


@dataclass(frozen=True)
class RunConfig:
    """A complete run: the preset it started from plus the three sections."""

    preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        _convert("preset", str, self.preset, "")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"RunConfig.{name} must be a {cls.__name__}")
        _check_run(self.model, self.data, "")


_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig}

PRESETS: dict[str, RunConfig] = {
    "base": RunConfig(),
    # Small enough that a full `fit` finishes in seconds on a CPU; used by the tests.
    "tiny": RunConfig(
        preset="tiny",
        model=ModelConfig(image_size=24, image_filters=(4, 8), spectrum_filters=(4, 8),
                          feature_dim=8, noise_dim=4, dense_units=8, dropout=0.0),
        data=DataConfig(num_objects=96, cutout_size=24, validation_fraction=0.25,
                        export_check_objects=48, export_calibration_objects=16),
        training=TrainingConfig(batch_size=16, encoder_epochs=2, gan_epochs=2, fusion_epochs=2,
                                image_epochs=2, early_stopping_patience=2),
    ),
}


def _preset_for(name: Any, where: str) -> RunConfig:
    if not isinstance(name, str) or name not in PRESETS:
        _fail("preset", f"one of {', '.join(PRESETS)}", name, where)
    return PRESETS[name]


def get_preset(name: str) -> RunConfig:
    """Return the named preset configuration.

    Args:
        name: A key of :data:`PRESETS` (``"base"`` or ``"tiny"``).

    Returns:
        The preset's :class:`RunConfig` (frozen, so it is safe to share).

    Raises:
        InputError: for an unknown name; the message lists the known presets.

    Example:
        >>> get_preset("tiny").training.batch_size
        16
    """
    return _preset_for(name, "")


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Return ``config`` as nested plain types (dict, list, str, int, float, bool, None).

    Args:
        config: The configuration to convert.

    Returns:
        ``{"preset": ..., "model": {...}, "data": {...}, "training": {...}}`` with tuples as
        lists, ready for ``yaml.safe_dump`` or ``json.dump``.

    Example:
        >>> config_to_dict(get_preset("tiny"))["model"]["image_filters"]
        [4, 8]
    """
    result: dict[str, Any] = {"preset": config.preset}
    for name in _SECTIONS:
        section = getattr(config, name)
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        result[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return result


def _check_keys(values: Mapping, allowed: typing.Iterable[str], prefix: str, where: str) -> None:
    allowed = sorted(allowed)
    for key in values:
        if key not in allowed:
            raise InputError(
                f"unknown key '{prefix}{key}'{where}; allowed: {', '.join(allowed)}"
            )


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", base: RunConfig | None = None
) -> RunConfig:
    """Build a :class:`RunConfig` from nested overrides, checking every key and value.

    Args:
        data: Mapping with optional keys ``preset``, ``model``, ``data`` and ``training``; each
            section maps field names to values. Only the keys present are changed.
        source: What ``data`` came from, used in error messages: a file name (messages say
            ``in file <source>``) or a placeholder in angle brackets such as ``"<dict>"``.
        base: Configuration to start from. When None, start from the preset named by
            ``data["preset"]`` (default ``"base"``). When given, ``data["preset"]`` (if any)
            must still name a known preset but only sets the ``preset`` label of the result.

    Returns:
        The checked, frozen configuration.

    Raises:
        InputError: for an unknown key at any level, a section that is not a mapping, a value of
            the wrong type or out of range, or an unknown preset.

    Example:
        >>> config = config_from_dict({"preset": "tiny", "training": {"batch_size": 8}})
        >>> config.training.batch_size, config.model.image_size
        (8, 16)
    """
    where = _where(source)
    if not isinstance(data, Mapping):
        _fail("the top level", "a mapping of section names to sections", data, where)
    _check_keys(data, ["preset", *_SECTIONS], "", where)
    if "preset" in data:
        preset = _preset_for(data["preset"], where)
        start = base if base is not None else preset
        label = data["preset"]
    else:
        start = base if base is not None else PRESETS["base"]
        label = start.preset
    sections = {}
    for name, cls in _SECTIONS.items():
        current = getattr(start, name)
        overrides = data.get(name)
        if overrides is None:  # absent, or a YAML section whose keys are all commented out
            sections[name] = current
            continue
        if not isinstance(overrides, Mapping):
            _fail(name, "a mapping of keys to values", overrides, where)
        _check_keys(overrides, (f.name for f in dataclasses.fields(cls)), f"{name}.", where)
        values = {f.name: getattr(current, f.name) for f in dataclasses.fields(cls)}
        values.update(overrides)
        sections[name] = cls(**_checked_fields(cls, name, values, where))
    _check_run(sections["model"], sections["data"], where)
    return RunConfig(preset=label, **sections)


def load_config(path: str | os.PathLike, *, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML run configuration (overrides on top of a preset or ``base``).

    Args:
        path: YAML file; an empty file means no overrides.
        base: Configuration to start from instead of the file's preset; see
            :func:`config_from_dict`.

    Returns:
        The checked, frozen configuration.

    Raises:
        InputError: if the file is missing or unreadable, is not valid UTF-8 YAML, its top level
            is not a mapping, or any key or value is wrong; the message names the file.

    Example:
        >>> config = load_config("run.yaml")  # doctest: +SKIP
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file does not exist: {name}") from None
    except IsADirectoryError:
        raise InputError(f"config path is a folder, expected a YAML file: {name}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"config file is not UTF-8 text ({error.reason}): {name}") from None
    except OSError as error:
        raise InputError(f"cannot read config file {name}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(problem).split())  # keep the message on one line
        raise InputError(f"config file {name} is not valid YAML: {problem}{at}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail("the top level", "a mapping such as 'training: {batch_size: 64}'", data,
              _where(name))
    return config_from_dict(data, source=name, base=base)


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as complete YAML (sorted keys, block style), atomically.

    The file lists every value, so it still describes the same run if preset defaults change.

    Args:
        config: The configuration to write.
        path: Destination file; an existing file is replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; ``load_config`` of it gives back an equal config.

    Raises:
        InputError: if the folder does not exist or cannot be written.

    Example:
        >>> save_config(get_preset("tiny"), "run.yaml")  # doctest: +SKIP
        PosixPath('run.yaml')
    """
    target = Path(path)
    text = "# starqso run configuration\n" + yaml.safe_dump(
        config_to_dict(config), sort_keys=True, default_flow_style=False
    )
    # Temp file in the same folder so os.replace is an atomic rename; O_EXCL so two writers never
    # share it; mode 0o666 so the umask applies as for a plain open().
    temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise InputError(f"cannot write config file {target}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temp)
        if isinstance(error, OSError):
            raise InputError(f"cannot write config file {target}: {error.strerror}") from None
        raise
    return target
