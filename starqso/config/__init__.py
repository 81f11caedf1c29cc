"""Run configuration: a strict, typed, frozen description of one training run, with YAML I/O.

A run is a :class:`RunConfig` of three sections (:class:`ModelConfig`, :class:`DataConfig`,
:class:`TrainingConfig`). A YAML file holds only the keys it changes, on top of one preset: the
``preset`` argument (``fit --preset``) if given, else the file's ``preset:`` key, else ``base``::

    preset: tiny
    training:
      batch_size: 8
      learning_rate: 5.0e-4

Every value is checked when a config is built, from a file or in Python, by the check declared
beside its field (:func:`setting`); the checks between fields sit in :func:`_check_run`. Integers
must be integers (``true`` and ``3.0`` are not), numbers accept integers, lists of integers
become tuples, unknown keys are errors. Problems raise :class:`~starqso.errors.InputError` with a
one-line message naming the file, the dotted key and what was expected.

Why plain dataclasses and not a validation library (pydantic with ``extra="forbid"``, as gammapy
does): the messages users see must stay exactly as they are (tests and docs quote them), PyYAML
1.1 loads ``1e-3`` as a string so custom validators would be needed anyway, and the light
inference install (no TensorFlow) should not gain a dependency.

This module must not import TensorFlow or Keras: the command line imports it at start-up.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from starqso._util.atomic import write_text_atomically
from starqso.config.fields import (
    check_fields,
    choice,
    class_names,
    fail,
    flag,
    fwhm_tuple,
    int_tuple,
    integer,
    number,
    optional_integer,
    optional_number,
    optional_text,
    setting,
    shown_value,
    source_suffix,
    text,
)
from starqso.config.yaml_io import load_yaml
from starqso.errors import InputError

__all__ = [
    "GENERATORS", "METRIC_LOSSES", "PHOTOMETRY_MIN_SIZE", "PRESETS", "TRUNKS", "DataConfig",
    "ModelConfig",
    "RunConfig", "TrainingConfig",
    "config_from_dict", "config_to_dict", "get_preset", "load_config", "load_yaml",
    "save_config",
]

#: Image trunks (``model.trunk``): the seed paper's small CNN, the ImageNet architectures seed
#: 001 compares (``keras.applications``, built for 5-band cutouts with random weights), and a
#: CoAtNet-style convolution + relative self-attention hybrid. Names stay stable: run folders
#: and saved models record them.
TRUNKS = ("cnn", "resnet50", "densenet121", "vgg16", "xception", "efficientnetb0", "hybrid")

#: Generators of the spectral vector (``model.generator``): the paper's conditional GAN, or a
#: conditional diffusion model sampled in a few deterministic DDIM steps.
GENERATORS = ("gan", "diffusion")

# the metric-learning head's loss (model.metric_loss): none, or the two of
# starqso.models.metric
METRIC_LOSSES = ("none", "proxy_nca", "norm_softmax")

# The photometry's 3" aperture (7.6 pixels) plus its 3-pixel sky border need 22 pixels.
PHOTOMETRY_MIN_SIZE = 22


# --- The configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Network sizes shared by the spectrum encoder, the GAN and the image classifier."""

    # model input side in pixels (cutouts are centre-cropped to it)
    image_size: int = setting(32, integer(minimum=8))
    # conv widths of the image trunk, one per stage
    image_filters: tuple[int, ...] = setting((16, 32, 64), int_tuple())
    # 1-D residual stages of the encoder
    spectrum_filters: tuple[int, ...] = setting((16, 24, 32, 48), int_tuple())
    feature_dim: int = setting(128, integer(minimum=1))  # spectral feature vector (paper: 128)
    noise_dim: int = setting(16, integer(minimum=1))  # GAN generator noise length
    dense_units: int = setting(128, integer(minimum=1))  # width of dense heads
    dropout: float = setting(0.2, number(minimum=0, maximum=1, open_max=True))
    # Aperture photometry (colours, r, concentration) measured inside the model from the raw
    # cutout, as an extra input of the generator and fusion classifier; false = the paper's.
    photometry: bool = setting(True, flag())
    # FWHMs (arcsec) of PSF-weighted fluxes the in-model photometry adds: Gaussian weights on
    # the 3" aperture, 4 colours + r each (starqso.preprocessing.photometry.weighted_fluxes);
    # about 3x the aperture's S/N on faint sources. [] = the 6 aperture features alone.
    weighted_fwhm: tuple[float, ...] = setting((0.9, 1.5, 2.4), fwhm_tuple())
    # a photometry-only head (PhotometryClassifier) whose logit the deployed model blends with
    # the fusion classifier's, by a weight chosen on the validation split (needs photometry)
    photometry_head: bool = setting(True, flag())
    # standard deviation of the Gaussian noise on the head's standardised photometry while it
    # trains (none at inference): a head that has seen blurred colours degrades less on
    # noisier images (benchmarks/head_noise.py; docs/training.md, stage 3)
    photometry_noise: float = setting(0.2, number(minimum=0, maximum=10, open_max=True))
    # side of the centre the image CNNs see (null = image_size); the photometry still measures
    # the whole input. A point source and its profile fit in far less than the sky border the
    # photometry needs, and the CNNs' cost grows with the square of this side.
    trunk_size: int | None = setting(None, optional_integer(minimum=8))
    # the image trunk of the generator, fusion and image-only classifiers (TRUNKS); the
    # discriminator, which only trains, keeps the small CNN. `image_filters` sets the widths of
    # cnn and hybrid; the keras.applications trunks have their own.
    trunk: str = setting("cnn", choice(TRUNKS))
    # the fusion classifier reads the GAN generator's trunk embedding instead of a trunk of
    # its own, so the deployed model runs one image CNN, not two (about half the int8 cost,
    # benchmarks/edge.py); its stage then trains dense layers only (needs model.generator gan)
    shared_trunk: bool = setting(False, flag())
    # a Keras weights file for a keras.applications trunk (e.g. ImageNet weights fetched
    # elsewhere; a 3-band first convolution is spread over the 5 bands), loaded before training
    trunk_weights: str | None = setting(None, optional_text())
    generator: str = setting("gan", choice(GENERATORS))  # GENERATORS
    # deterministic DDIM steps of the diffusion generator inside the deployed model
    diffusion_steps: int = setting(4, integer(minimum=1))
    # a metric-learning head on the generated vector (+ photometry), trained on STAR and the
    # QSO redshift bins (starqso.schema.FINE_CLASS_NAMES) with Proxy-NCA or Normalised-Softmax;
    # exported inside the model for `starqso embed` (none: no head, the vector alone)
    metric_loss: str = setting("none", choice(METRIC_LOSSES))
    metric_dim: int = setting(32, integer(minimum=2))  # the head's unit-norm embedding
    # the classes every stage tells apart (starqso.schema.SUPPORTED_CLASSES), in the order of
    # their codes: [STAR, QSO] (sigmoid heads, p(QSO)) or [STAR, QSO, GALAXY] (softmax
    # heads); training objects of another class are left out of the classifiers
    classes: tuple[str, ...] = setting(("STAR", "QSO"), class_names())

    def __post_init__(self) -> None:
        check_fields(self, "model")


@dataclass(frozen=True)
class DataConfig:
    """Where training objects come from and how they are split."""

    # demo objects simulated when `fit` has no --data; a split needs at least two
    num_objects: int = setting(8000, integer(minimum=2))
    simulation_seed: int = setting(0, integer(minimum=0))  # NumPy seeds are >= 0
    # simulated cutout side: the sky simulator's smallest is 16, and it must be >= model.image_size
    cutout_size: int = setting(48, integer(minimum=16))
    # None = the real catalogue's fraction
    qso_fraction: float | None = setting(None, optional_number(minimum=0, maximum=1))
    validation_fraction: float = setting(
        0.2, number(minimum=0, maximum=1, open_min=True, open_max=True))
    # validation + test < 1
    test_fraction: float = setting(0.0, number(minimum=0, maximum=1, open_max=True))
    # the train/validation/test split; fixed while training seeds vary
    split_seed: int = setting(0, integer(minimum=0))
    # held-out simulated cutouts checking each export
    export_check_objects: int = setting(2000, integer(minimum=1))
    # training cutouts calibrating the int8 model's ranges: too few miss the activations'
    # tails and the int8 labels drift from Keras's (300 against 1,000: CHANGELOG.md)
    export_calibration_objects: int = setting(1000, integer(minimum=1))
    # with `fit --sky-backgrounds`: the fraction of simulated objects injected into the real
    # blank-sky cutouts (the rest fully simulated); null = 0.5. Without the option, unused.
    sky_backgrounds_fraction: float | None = setting(
        None, optional_number(minimum=0, maximum=1))
    # the fraction of simulated objects seen through Galactic dust (stars, and QSOs behind
    # the same dust), with E(B-V) uniform in [0, max_ebv] (starqso.schema.EXTINCTION_COEFFICIENTS);
    # 0 keeps the simulation as it was
    reddening_fraction: float = setting(0.0, number(minimum=0, maximum=1))
    max_ebv: float = setting(1.5, number(minimum=0, maximum=10))
    # the fraction of simulated objects in crowded (low-latitude) fields: up to
    # max_neighbour_density times the neighbours of a high-latitude field, the extra ones
    # stars; 0 keeps the simulation as it was
    neighbour_density_fraction: float = setting(0.0, number(minimum=0, maximum=1))
    max_neighbour_density: float = setting(20.0, number(minimum=1, maximum=1000))
    # the fraction of simulated objects whose r magnitude is drawn from the STAR and QSO rows
    # pooled, colours kept (starqso.simulate.brightness): the spectroscopic rows' QSOs are
    # fainter than their stars, which taught the network that faint means QSO; 0 keeps the
    # simulation as it was (and is the default: see benchmarks/results/brightness_mixing.md)
    magnitude_mixing_fraction: float = setting(0.0, number(minimum=0, maximum=1))
    # the fraction of the synthetic high-redshift QSOs whose r magnitude is uniform over the
    # survey's range (starqso.simulate.brightness.HIGH_Z_R_RANGE) instead of a catalogue
    # high-z QSO's (median r 20.8): otherwise a bright source with high-z colours means a star
    high_z_magnitude_fraction: float = setting(0.0, number(minimum=0, maximum=1))
    # the fraction of simulated objects that are galaxies (bulge + disc Sersic profiles with
    # real catalogue colours and kcorrect fibre spectra: starqso.simulate.galaxies), drawn
    # from a side stream so that 0 keeps the simulation as it was; needs model.classes with
    # GALAXY
    galaxy_fraction: float = setting(0.0, number(minimum=0, maximum=1, open_max=True))

    def __post_init__(self) -> None:
        check_fields(self, "data")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of the four training stages."""

    seed: int = setting(0, integer(minimum=0))
    batch_size: int = setting(128, integer(minimum=1))
    learning_rate: float = setting(1e-3, number(minimum=0, open_min=True))
    encoder_epochs: int = setting(8, integer(minimum=0))
    gan_epochs: int = setting(10, integer(minimum=0))
    # the diffusion generator stage (model.generator: diffusion), at learning_rate
    diffusion_epochs: int = setting(10, integer(minimum=0))
    fusion_epochs: int = setting(10, integer(minimum=0))
    photometry_epochs: int = setting(30, integer(minimum=0))  # the photometry head
    image_epochs: int = setting(10, integer(minimum=0))
    metric_epochs: int = setting(10, integer(minimum=0))  # the metric-learning head's stage
    gan_learning_rate: float = setting(2e-4, number(minimum=0, open_min=True))
    # L2 pull of generated vectors to real ones
    gan_reconstruction_weight: float = setting(10.0, number(minimum=0))
    # the frozen spectrum head must classify a generated vector as it does the real one
    # (0 = the paper's recipe; see benchmarks/results/paper_table.md for its effect)
    gan_distillation_weight: float = setting(0.0, number(minimum=0))
    early_stopping_patience: int = setting(4, integer(minimum=1))
    augment: bool = setting(True, flag())  # random flips / 90-degree rotations of cutouts
    # The stages trained on precomputed inputs (the photometry head; the fusion classifier
    # with model.shared_trunk) also see every labelled training object a second time with
    # extra white sky noise: its own per-pixel sky sigma times a scale uniform in
    # [1, noise_augment]. The simulator's fields sit near SDSS's median depth (90% within
    # ~0.8-1.3x), so users' deeper-than-median and resampled cutouts are otherwise rare in
    # training. 1: no noisier copies.
    noise_augment: float = setting(1.0, number(minimum=1.0, maximum=10.0))
    mixed_precision: bool = setting(False, flag())

    def __post_init__(self) -> None:
        check_fields(self, "training")


@dataclass(frozen=True)
class RunConfig:
    """A complete run: the preset it started from plus the three sections."""

    preset: str = setting("base", text())
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        check_fields(self, "")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"RunConfig.{name} must be a {cls.__name__}")  # a bug, not input
        _check_run(self)


def _check_run(config: RunConfig) -> None:
    """The checks between fields; each message ends with the value, so a file name can follow."""
    model, data = config.model, config.data
    if not data.validation_fraction + data.test_fraction < 1:
        raise InputError(
            "data.validation_fraction + data.test_fraction must be < 1 to leave objects for "
            f"training. Received: {data.validation_fraction!r} + {data.test_fraction!r}")
    if model.photometry and model.image_size < PHOTOMETRY_MIN_SIZE:
        raise InputError(
            f"model.photometry needs model.image_size >= {PHOTOMETRY_MIN_SIZE} (a 3\" aperture "
            f"and a sky border); set photometry: false for smaller cutouts. Received: "
            f"{model.image_size}")
    if model.trunk_size is not None and (model.trunk_size > model.image_size
                                         or (model.image_size - model.trunk_size) % 2):
        raise InputError(
            f"model.trunk_size must be <= model.image_size ({model.image_size}) and differ from "
            f"it by an even number of pixels (a centred crop). Received: {model.trunk_size}")
    if model.trunk_weights is not None and model.trunk in ("cnn", "hybrid"):
        raise InputError(
            f"model.trunk_weights loads a keras.applications trunk (model.trunk one of "
            f"{', '.join(t for t in TRUNKS if t not in ('cnn', 'hybrid'))}); model.trunk is "
            f"{model.trunk}. Received: {model.trunk_weights!r}")
    if model.shared_trunk and model.generator != "gan":
        raise InputError(
            f"model.shared_trunk reads the GAN generator's trunk embedding, so it needs "
            f"model.generator: gan. Received: model.generator={model.generator}")
    if data.galaxy_fraction > 0 and "GALAXY" not in model.classes:
        raise InputError(
            f"data.galaxy_fraction simulates galaxies, which a model of classes "
            f"{', '.join(model.classes)} does not tell apart; set model.classes: [STAR, QSO, "
            f"GALAXY]. Received: {data.galaxy_fraction!r}")
    if data.cutout_size < model.image_size:
        raise InputError(
            f"data.cutout_size must be >= model.image_size ({model.image_size}) because cutouts "
            f"are centre-cropped to the model input. Received: {data.cutout_size}")


_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig}

PRESETS: dict[str, RunConfig] = {
    "base": RunConfig(),
    # The shipped model: the base network on nine times the demo's simulated objects, because
    # a simulator that varies noise, seeing and populations needs more of them to score well
    # on real rows (benchmarks/results/training_size.md), with a 7,200-object validation split
    # for calibration, threshold and export checks. Three times the objects per epoch, so
    # fewer epochs (still more steps than 24,000 objects had) keep its fit near an hour on 2
    # cores. Its CNNs see the central 24 pixels (9.5") so that the int8 model runs faster on
    # one CPU thread, while the photometry keeps the 32-pixel sky border; one CNN shared by
    # the generator and the fusion classifier halves the int8 network again at the same
    # accuracy (docs/deployment.md, "Edge numbers"). Noisier copies of the training cutouts
    # for the head and the fusion stage (noise_augment 2.5) keep it accurate on skies noisier
    # than the simulator's (benchmarks/results/noise_augment.md).
    "large": RunConfig(
        preset="large",
        model=ModelConfig(trunk_size=24, shared_trunk=True),
        data=DataConfig(num_objects=72000, validation_fraction=0.1),
        training=TrainingConfig(encoder_epochs=6, gan_epochs=8, image_epochs=6,
                                fusion_epochs=8, noise_augment=2.5),
    ),
    # Small enough that a full `fit` finishes in seconds on a CPU; used by the tests.
    "tiny": RunConfig(
        preset="tiny",
        model=ModelConfig(image_size=24, image_filters=(4, 8), spectrum_filters=(4, 8),
                          feature_dim=8, noise_dim=4, dense_units=8, dropout=0.0),
        data=DataConfig(num_objects=96, cutout_size=24, validation_fraction=0.25,
                        export_check_objects=48, export_calibration_objects=16),
        training=TrainingConfig(batch_size=16, encoder_epochs=2, gan_epochs=2,
                                diffusion_epochs=2, fusion_epochs=2, image_epochs=2,
                                photometry_epochs=2,
                                metric_epochs=2, early_stopping_patience=2),
    ),
}


def _preset_for(name: Any, where: str = "") -> RunConfig:
    if not isinstance(name, str) or name not in PRESETS:
        fail("preset", f"one of {', '.join(PRESETS)}", name, where)
    return PRESETS[name]


def get_preset(name: str) -> RunConfig:
    """Return the preset called ``name``, a key of :data:`PRESETS` (frozen, so safe to share).

    An unknown name raises :class:`~starqso.errors.InputError` listing the known presets.

    Example:
        >>> get_preset("tiny").training.batch_size
        16
    """
    return _preset_for(name)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Return ``config`` as nested dicts of plain values, tuples as lists, for YAML or JSON.

    Example:
        >>> config_to_dict(get_preset("tiny"))["model"]["image_filters"]
        [4, 8]
    """
    def plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in pairs}
    return dataclasses.asdict(config, dict_factory=plain)


def _check_keys(values: Mapping, allowed: typing.Iterable[str], prefix: str, where: str) -> None:
    allowed = sorted(allowed)
    for key in values:
        if key not in allowed:
            shown = ((key if len(key) <= 80 else key[:77] + "...") if isinstance(key, str)
                     else shown_value(key))
            raise InputError(f"unknown key '{prefix}{shown}'{where}; allowed: "
                             f"{', '.join(allowed)}")


def _start_preset(data: Mapping, preset: str | None, source: str, where: str) -> str:
    """The preset to start from: ``preset`` if given, else ``data["preset"]``, else base."""
    if "preset" in data:
        _preset_for(data["preset"], where)
    if preset is None:
        return data.get("preset", "base")
    _preset_for(preset)
    if "preset" in data and data["preset"] != preset:
        origin = source if source.startswith("<") else f"config file {source}"
        raise InputError(f"{origin} says preset: {data['preset']} but --preset {preset} was "
                         f"given; use one. Received: {data['preset']!r} and {preset!r}")
    return preset


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", preset: str | None = None
) -> RunConfig:
    """Build a :class:`RunConfig` from nested overrides, checking every key and value.

    Args:
        data: Mapping with optional keys ``preset``, ``model``, ``data`` and ``training``; each
            section maps field names to values. Only the keys present are changed.
        source: What ``data`` came from, for error messages: a file name (messages say
            ``in file <source>``) or a placeholder in angle brackets such as ``"<dict>"``.
        preset: The preset to start from; when None, ``data["preset"]``, else ``"base"``. When
            both are given they must agree. The result's ``preset`` is the one used.

    Raises:
        InputError: an unknown key or preset, a wrong or out-of-range value, two presets.

    Example:
        >>> config = config_from_dict({"preset": "tiny", "training": {"batch_size": 8}})
        >>> config.training.batch_size, config.model.image_size
        (8, 24)
    """
    where = source_suffix(source)
    if not isinstance(data, Mapping):
        fail("the top level", "a mapping of section names to sections", data, where)
    _check_keys(data, ["preset", *_SECTIONS], "", where)
    name = _start_preset(data, preset, source, where)
    overrides = {}
    for section, cls in _SECTIONS.items():
        values = data.get(section)
        if values is None:  # absent, or a YAML section whose keys are all commented out
            values = {}
        if not isinstance(values, Mapping):
            fail(section, "a mapping of keys to values", values, where)
        _check_keys(values, (f.name for f in dataclasses.fields(cls)), f"{section}.", where)
        overrides[section] = values
    try:  # the field and run checks name the key and the value; add where they came from
        sections = {section: dataclasses.replace(getattr(PRESETS[name], section), **values)
                    for section, values in overrides.items()}
        return RunConfig(preset=name, **sections)
    except InputError as error:
        raise InputError(f"{error}{where}") from None


def load_config(path: str | os.PathLike, *, preset: str | None = None) -> RunConfig:
    """Read a YAML run configuration: overrides on top of a preset.

    Args:
        path: YAML file; an empty file means no overrides.
        preset: The preset to start from (``fit --preset``); when None, the file's ``preset:``
            key, else ``"base"``. A file naming another preset is an error.

    Raises:
        InputError: the file is missing, unreadable, larger than :data:`MAX_CONFIG_BYTES`,
            not UTF-8 YAML, uses YAML anchors/aliases, repeats a key, nests deeper than
            :data:`MAX_CONFIG_DEPTH`, or its content is wrong (see :func:`config_from_dict`);
            the message names the file.

    Example:
        >>> config = load_config("run.yaml", preset="tiny")  # doctest: +SKIP
    """
    return config_from_dict(load_yaml(path), source=os.fspath(path), preset=preset)


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write every value of ``config`` as YAML (sorted keys, block style), atomically.

    The file still describes the same run if preset defaults change, and ``load_config`` of it
    gives back an equal config. A missing or unwritable folder raises InputError.

    Example:
        >>> save_config(get_preset("tiny"), "run.yaml")  # doctest: +SKIP
        PosixPath('run.yaml')
    """
    target = Path(path)
    content = "# starqso run configuration\n" + yaml.safe_dump(
        config_to_dict(config), sort_keys=True, default_flow_style=False)
    try:
        write_text_atomically(target, content)
    except OSError as error:
        raise InputError(f"cannot write config file {target}: {error.strerror}") from None
    return target
