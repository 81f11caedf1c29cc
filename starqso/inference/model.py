"""The model a run classifies with: open a model folder once (Keras or LiteRT
runtime), and its settings: threshold, the prior (its arithmetic is
:mod:`starqso.probability`'s), the E(B-V) setting. No TensorFlow at import."""

from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np

from starqso import __version__
from starqso._util.extras import require_tensorflow
from starqso.deploy.folder import RUNTIME_FILES, check_model_dir, file_sha256
from starqso.errors import InputError
from starqso.preprocessing.photometry import EBV_RANGE
from starqso.probability import class_prior_shifts, prior_shift
from starqso.schema import DEFAULT_THRESHOLD, QSO_CLASS

RUNTIMES = tuple(RUNTIME_FILES)


def resolve_runtime(runtime, dataset=False):
    """The runtime ``"auto"`` stands for: keras where TensorFlow is installed, else litert
    (and litert for a Dask run, ``dataset``); another value is checked and returned.

    Args:
        runtime: ``"auto"`` or one of :data:`RUNTIMES`.
        dataset: the run writes a Parquet dataset on Dask workers.

    Returns:
        ``"keras"`` or ``"litert"``.

    Example:
        >>> resolve_runtime("litert")
        'litert'
    """
    from starqso._util.extras import missing_module

    if runtime == "auto":
        return "litert" if dataset or missing_module("tensorflow", "keras") else "keras"
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be 'auto', {', '.join(map(repr, RUNTIMES))}. "
                         f"Received: runtime={runtime!r}")
    return runtime

#: ``--prior`` value meaning "no correction": p(QSO) at the model's training QSO fraction.
TRAINING_PRIOR = "train"

# The training QSO fraction assumed for a model folder whose metadata.json predates the
# `training_qso_fraction` key (the shipped model among them), used only when a --prior is given:
# those models were all trained on the simulator's default mix, the real SDSS catalogue's
# fraction of about 0.30.
LEGACY_TRAINING_QSO_FRACTION = 0.30


def default_model_dir():
    """The pretrained model shipped inside the package (``starqso/pretrained``)."""
    return pathlib.Path(str(importlib.resources.files("starqso") / "pretrained"))


def _model_output(values, count):
    """A model's output for ``count`` rows: p(QSO), (N,), for a two-class model, whose output
    is (N, 1); the class probabilities, (N, K), for a K-class model (K >= 3)."""
    values = np.asarray(values)
    values = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    return values[:count, 0] if values.shape[1] == 1 else values[:count]


class KerasPredictor:
    """p(QSO), (N,), with a two-class Keras model, or the class probabilities, (N, K), with
    a K-class one (imports TensorFlow).

    Args:
        model_dir: exported model folder.
        checked: the folder already passed :func:`~starqso.deploy.folder.check_model_dir`.
    """

    def __init__(self, model_dir, *, checked=False):
        require_tensorflow("--runtime keras", note="the light install runs --runtime litert")
        from starqso.deploy.folder import load_keras_model

        self.model = load_keras_model(pathlib.Path(model_dir) / RUNTIME_FILES["keras"],
                                      checked=checked)
        #: The classes the model tells apart (its output's width; one column is p(QSO)).
        self.num_classes = max(2, int(self.model.output_shape[-1]))

    #: Batches are padded to a multiple of this many rows: Keras traces its predict function
    #: once per input shape (about a second each), and the rows left after flagging vary
    #: from batch to batch.
    PAD_ROWS = 128

    def __call__(self, images):
        images = np.asarray(images, np.float32)
        count = len(images)
        padded = -(-count // self.PAD_ROWS) * self.PAD_ROWS
        if padded != count:
            images = np.concatenate([images, np.repeat(images[-1:], padded - count, axis=0)])
        return _model_output(self.model.predict_on_batch({"image": images}), count)


class LiteRTPredictor:
    """p(QSO), (N,), or the class probabilities, (N, K), as :class:`KerasPredictor`, with a
    TFLite model through LiteRT (no TensorFlow)."""

    def __init__(self, model_path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        output = self.interpreter.get_output_details()[0]
        self.output_index = output["index"]
        #: The classes the model tells apart (its output's width; one column is p(QSO)).
        self.num_classes = max(2, int(output["shape"][-1]))
        self.shape = None

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input_index, images.shape)
            self.interpreter.allocate_tensors()
            self.shape = images.shape
        self.interpreter.set_tensor(self.input_index, images)
        self.interpreter.invoke()
        return _model_output(self.interpreter.get_tensor(self.output_index), len(images)).copy()


def open_model(model_dir, runtime="keras"):
    """Check an exported model folder once and load its predictor for ``runtime``.

    Args:
        model_dir: folder written by ``starqso export``; the shipped model when None.
        runtime: "keras" (TensorFlow) or "litert" (``ai_edge_litert``, no TensorFlow).

    Returns:
        ``(metadata, predictor)``: the folder's ``metadata.json`` and a callable mapping raw
        cutouts (N, S, S, 5) to p(QSO) (N,) for a two-class model, to the class
        probabilities (N, K) for a K-class one.

    Raises:
        InputError: see :func:`~starqso.deploy.folder.check_model_dir`.

    Example:
        >>> metadata, predictor = open_model(None, "litert")
        >>> metadata["class_names"]
        ['STAR', 'QSO']
    """
    model_dir = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
    return check_model_dir(model_dir, runtime), checked_predictor(model_dir, runtime)


def checked_predictor(model_dir, runtime):
    if runtime == "keras":
        return KerasPredictor(model_dir, checked=True)
    return LiteRTPredictor(model_dir / RUNTIME_FILES["litert"])


def parse_prior(value):
    """A ``--prior`` value: None (the model's default), ``"train"``, a QSO fraction in (0, 1),
    or class fractions by name, ``"QSO=0.02,GALAXY=0.6"`` (``NAME=F`` pairs joined by commas;
    the classes not named, the model's first, STAR, among them, share the rest:
    :func:`resolve_prior` checks the names against the model).

    Raises:
        InputError: anything else: a fraction that is not a number, 0 or below, 1 or above,
            a name given twice, or named fractions that sum to 1 or more.

    Example:
        >>> parse_prior("0.05"), parse_prior("train"), parse_prior(None)
        (0.05, 'train', None)
        >>> parse_prior("QSO=0.02")
        {'QSO': 0.02}
    """
    if value is None:
        return None
    if isinstance(value, dict):  # parsed before: check it again as its text
        value = ",".join(f"{name}={fraction!r}" for name, fraction in value.items())
    if isinstance(value, str) and value.strip().lower() == TRAINING_PRIOR:
        return TRAINING_PRIOR
    if isinstance(value, str) and "=" in value:
        return _named_fractions(value)
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(value, bool) or not 0 < fraction < 1:
        raise InputError(f"--prior must be the QSO fraction of your sample, strictly between 0 "
                         f"and 1 (e.g. 0.02), class fractions by name (e.g. QSO=0.02), or "
                         f"'{TRAINING_PRIOR}' for the model's training mix. Received: {value!r}")
    return fraction


def _named_fractions(value):
    fractions = {}
    for part in value.split(","):
        name, _, number = (piece.strip() for piece in part.partition("="))
        try:
            fraction = float(number)
        except ValueError:
            fraction = float("nan")
        if not name or not np.isfinite(fraction):
            raise InputError(f"--prior by class must be NAME=F pairs joined by commas, each F a "
                             f"number (e.g. QSO=0.02). Received: {value!r}")
        if name in fractions:
            raise InputError(f"--prior names class {name} twice. Received: {value!r}")
        if not 0 < fraction < 1:
            raise InputError(f"--prior gives class {name} the fraction {fraction:g}; each must "
                             f"be strictly between 0 and 1. Received: {value!r}")
        fractions[name] = fraction
    total = sum(fractions.values())
    if total >= 1:
        raise InputError(f"--prior's class fractions sum to {total:g}; they must sum to less "
                         f"than 1, the first class (STAR) taking the rest. Received: {value!r}")
    return fractions


def _model_classes(metadata):
    """The class names a model tells apart (``metadata.json: classes``; STAR/QSO without)."""
    from starqso.deploy.metadata import model_survey

    return model_survey(metadata)[1].names


def _check_prior_names(fractions, names):
    """Refuse a by-name prior that names a class the model does not tell apart, or its first
    class (which takes the rest, so it is not named)."""
    text = ",".join(f"{name}={fraction:g}" for name, fraction in fractions.items())
    for name in fractions:
        if name not in names[1:]:
            known = "which the model does not tell apart" if name not in names else \
                "which takes the rest and is not named"
            raise InputError(f"--prior names class {name}, {known} (the model's classes: "
                             f"{', '.join(names)}; name any of {', '.join(names[1:])}). "
                             f"Received: {text!r}")


def _qso_fraction(fractions, metadata):
    """The output class's fraction of a by-name prior for a two-class model, its names
    checked against the model's classes (the first takes the rest, so it is not named)."""
    names = _model_classes(metadata)
    _check_prior_names(fractions, names)
    # A two-class model has one class to name: its output's.
    return fractions[names[1]]


def _training_fractions(metadata, names):
    """A K-class model's training class fractions (``metadata.json:
    training_class_fractions``) in class order, or None when the metadata gives none.

    Raises:
        InputError: the key is there but is not a fraction in (0, 1) for every class,
            summing to 1.
    """
    if "training_class_fractions" not in metadata:
        return None
    given = metadata["training_class_fractions"]
    if not (isinstance(given, dict) and set(given) == set(names) and all(
            isinstance(given[name], (int, float)) and not isinstance(given[name], bool)
            and 0 < given[name] < 1 for name in names)
            and abs(sum(given.values()) - 1) < 1e-6):
        raise InputError(f"metadata.json must give training_class_fractions as a fraction in "
                         f"(0, 1) for each of {', '.join(names)}, summing to 1. Received: "
                         f"training_class_fractions={given!r}")
    return {name: float(given[name]) for name in names}


def prior_vector(fractions, names, training):
    """The class fractions a by-name prior stands for, every class of the model given one.

    The named classes get their fractions; the classes not named (the first, STAR, always
    among them) share the rest in their training proportions. So a bare QSO fraction,
    ``{"QSO": F}``, keeps the other classes' training proportions of ``1 - F``, and
    ``QSO=0.02,GALAXY=0.6`` leaves STAR the rest.

    Args:
        fractions: ``{name: F}`` as :func:`parse_prior` gives them (names checked).
        names: the model's class names.
        training: ``{name: f}``, the training class fractions.

    Returns:
        dict ``{name: F}`` in class order, summing to 1.

    Example:
        >>> training = {"STAR": 0.4, "QSO": 0.3, "GALAXY": 0.3}
        >>> vector = prior_vector({"QSO": 0.02}, ("STAR", "QSO", "GALAXY"), training)
        >>> {name: round(value, 12) for name, value in vector.items()}
        {'STAR': 0.56, 'QSO': 0.02, 'GALAXY': 0.42}
    """
    rest = 1.0 - sum(fractions.values())
    share = sum(training[name] for name in names if name not in fractions)
    return {name: float(fractions[name]) if name in fractions else
            rest * training[name] / share for name in names}


def _resolve_class_prior(metadata, prior, names):
    """:func:`resolve_prior` for a K-class model (K >= 3): the prior as a class vector."""
    training = _training_fractions(metadata, names)
    source, note = "user", None
    if prior is None:
        source = "default"
        prior = parse_prior(metadata.get("default_prior", TRAINING_PRIOR))
        if training is None and prior != TRAINING_PRIOR:
            note = ("note: the model's metadata.json gives no training_class_fractions; "
                    "its default_prior is not applied (class probabilities at the training "
                    "mix)")
            prior = TRAINING_PRIOR
    if prior != TRAINING_PRIOR and training is None:
        raise InputError(f"--prior needs the model's training class fractions "
                         f"(metadata.json: training_class_fractions), which this model does "
                         f"not give; run with --prior {TRAINING_PRIOR}. Received: --prior "
                         f"{prior!r}")
    if prior == TRAINING_PRIOR:
        vector, source = training, TRAINING_PRIOR
    else:
        fractions = prior if isinstance(prior, dict) else {QSO_CLASS: float(prior)}
        _check_prior_names(fractions, names)
        vector = prior_vector(fractions, names, training)
    shifts = [0.0] * len(names) if source == TRAINING_PRIOR else [
        float(value) for value in class_prior_shifts([vector[name] for name in names],
                                                     [training[name] for name in names])]
    qso_training = None if training is None else training[QSO_CLASS]
    return {"prior": None if vector is None else vector[QSO_CLASS], "source": source,
            "shift": shifts, "training_qso_fraction": qso_training,
            "training_qso_fraction_assumed": False, "note": note, "classes": list(names),
            "prior_vector": vector, "training_class_fractions": training}


#: ``--ebv`` values that ignore an input's ``ebv`` column (no de-reddening): the default.
EBV_NONE = "none"

#: ``--ebv`` value that de-reddens each row by the input's ``ebv`` column.
EBV_COLUMN = "column"


def parse_ebv(value):
    """An ``--ebv`` value: ``"none"`` (also for None, the default), ``"column"`` (the input's
    ``ebv`` column) or one E(B-V) for every row, in
    :data:`~starqso.preprocessing.photometry.EBV_RANGE`.

    De-reddening is opt-in: the model is trained on reddened stars and needs no E(B-V), and
    multiplying a band by its extinction multiplies its noise too (u by 50 at E(B-V) = 1),
    which past E(B-V) ~ 0.5 makes more stars look like QSOs, not fewer
    (``benchmarks/results/real_photometry.md``, the stars behind dust).

    Raises:
        InputError: anything else (negative, above the range, not a number).

    Example:
        >>> parse_ebv("0.05"), parse_ebv("none"), parse_ebv(None), parse_ebv("column")
        (0.05, 'none', 'none', 'column')
    """
    if value is None:
        return EBV_NONE
    if isinstance(value, str) and value.strip().lower() in (EBV_NONE, EBV_COLUMN):
        return value.strip().lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not EBV_RANGE[0] <= number <= EBV_RANGE[1]:
        raise InputError(f"--ebv must be the Galactic reddening E(B-V) of every row, in "
                         f"magnitudes from {EBV_RANGE[0]:g} to {EBV_RANGE[1]:g}, "
                         f"'{EBV_COLUMN}' for the input's ebv column or '{EBV_NONE}'. "
                         f"Received: {value!r}")
    return number


def ebv_setting(ebv, rows_source):
    """Where each row's E(B-V) comes from, as outputs record it: ``"column ebv"``, the
    ``--ebv`` value (float), or ``"none"``; ``ebv`` as :func:`parse_ebv` returns it.

    Raises:
        InputError: ``--ebv column`` for an input without an ``ebv`` column.
    """
    if ebv == EBV_COLUMN:
        column = getattr(rows_source, "ebv_column", None)
        if not column:
            raise InputError(f"--ebv column needs an ebv column in the input; "
                             f"{getattr(rows_source, 'path', 'the input')} has none. Received: "
                             f"--ebv column")
        return f"column {column}"
    return ebv


def block_ebv(setting, rows_source, block):
    """A block's E(B-V) under :func:`ebv_setting`'s ``setting``: (N,) float64, or None for
    none."""
    if setting == EBV_NONE:
        return None
    if isinstance(setting, str):
        return rows_source.ebv_values(block)
    return np.full(len(block.ids), float(setting))


def resolve_prior(metadata, prior=None):
    """Which prior the class probabilities will assume, and the shift that gets them there.

    A two-class model's prior is the QSO fraction F, its shift the logit shift
    (:func:`~starqso.probability.prior_shift`). A K-class model's is a fraction per class
    (:func:`prior_vector`: ``--prior QSO=0.02,GALAXY=0.6``, or a bare QSO fraction, the
    other classes keeping their training proportions of the rest), its shift one log shift
    per class (:func:`~starqso.probability.class_prior_shifts`) from the model's
    ``training_class_fractions``; its ``default_prior`` is a QSO fraction or such fractions
    by name.

    Args:
        metadata: the model folder's ``metadata.json``.
        prior: as :func:`parse_prior` accepts (None: the model's ``default_prior``); class
            names must be the model's.

    Returns:
        dict: ``prior`` (the QSO fraction the output p_qso assumes; None when that is the
        training mix of an older model, which is unknown), ``source`` ("default", "user" or
        "train"), ``shift`` (a two-class model: float added to logit p, 0 for none; a
        K-class model: a list of K log shifts, zeros for none), ``training_qso_fraction``
        (None when unknown), ``training_qso_fraction_assumed`` (the legacy 0.30 was used),
        ``note`` (None, or a line saying what was assumed), ``classes`` (the model's class
        names), ``prior_vector`` (``{name: F}`` for every class; None when unknown) and
        ``training_class_fractions`` (``{name: f}``; None when unknown).

    Raises:
        InputError: a bad prior (:func:`parse_prior`), a class the model does not tell
            apart, or bad training fractions in ``metadata``.

    Example:
        >>> resolve_prior({"training_qso_fraction": 0.3, "default_prior": 0.02})["prior"]
        0.02
        >>> three = {"classes": {"names": ["STAR", "QSO", "GALAXY"]},
        ...          "training_class_fractions": {"STAR": 0.4, "QSO": 0.3, "GALAXY": 0.3}}
        >>> vector = resolve_prior(three, "QSO=0.02,GALAXY=0.6")["prior_vector"]
        >>> {name: round(value, 12) for name, value in vector.items()}
        {'STAR': 0.38, 'QSO': 0.02, 'GALAXY': 0.6}
    """
    prior = parse_prior(prior)
    names = _model_classes(metadata)
    if len(names) > 2:
        return _resolve_class_prior(metadata, prior, names)
    if isinstance(prior, dict):
        prior = _qso_fraction(prior, metadata)
    training = metadata.get("training_qso_fraction")
    source = "user"
    if prior is None:
        source = "default"
        prior = metadata.get("default_prior", TRAINING_PRIOR)
    if prior == TRAINING_PRIOR:
        return {"prior": training, "source": TRAINING_PRIOR, "shift": 0.0,
                "training_qso_fraction": training, "training_qso_fraction_assumed": False,
                "note": None, "classes": list(names),
                **_two_class_vectors(names, training, training)}
    note, assumed = None, training is None
    if assumed:
        training = LEGACY_TRAINING_QSO_FRACTION
        note = (f"note: the model's metadata.json gives no training_qso_fraction (an older "
                f"export); --prior {prior} is applied from an assumed training fraction of "
                f"{training}")
    shift = prior_shift(prior, training)
    return {"prior": float(prior), "source": source, "shift": shift,
            "training_qso_fraction": float(training), "training_qso_fraction_assumed": assumed,
            "note": note, "classes": list(names),
            **_two_class_vectors(names, float(prior), float(training))}


def _two_class_vectors(names, prior, training):
    """A two-class model's prior and training fractions as class vectors (None unknown)."""
    def vector(fraction):
        return None if fraction is None else {names[0]: 1.0 - fraction, names[1]: fraction}

    return {"prior_vector": vector(prior), "training_class_fractions": vector(training)}


def evidence_fraction(settings):
    """The training fraction faint rows lean toward (:func:`classify_block`'s
    ``training_fraction``): the QSO fraction of a two-class model, the list of class
    fractions of a K-class one; None when the model does not record it (no leaning then)."""
    if settings.get("training_qso_fraction_assumed"):
        return None
    classes = settings.get("classes") or ()
    if len(classes) > 2:
        training = settings.get("training_class_fractions")
        return None if training is None else [training[name] for name in classes]
    return settings.get("training_qso_fraction")


def prior_label(settings):
    """How the summary line names the prior: ``0.02``, ``train (0.3)`` or ``train``; for a
    K-class model the fractions of the classes after the first, ``QSO=0.02,GALAXY=0.6``."""
    classes = settings.get("classes") or ()
    if len(classes) > 2:
        vector = settings.get("prior_vector")
        text = None if vector is None else ",".join(f"{name}={vector[name]:g}"
                                                    for name in classes[1:])
        if settings["source"] != TRAINING_PRIOR:
            return text
        return TRAINING_PRIOR if text is None else f"{TRAINING_PRIOR} ({text})"
    if settings["source"] != TRAINING_PRIOR:
        return f"{settings['prior']:g}"
    training = settings["training_qso_fraction"]
    return TRAINING_PRIOR if training is None else f"{TRAINING_PRIOR} ({training:g})"


def two_class_note(settings):
    """The line ``predict`` prints once for a two-class model (its p_galaxy is empty), or
    None for a model that tells GALAXY apart.

    Args:
        settings: :func:`resolve_prior`'s settings, or an output's record (both hold
            ``classes``).

    Example:
        >>> two_class_note({"classes": ["STAR", "QSO"]})
        'note: the model is two-class (STAR/QSO): p_star is 1 - p_qso and p_galaxy is empty'
    """
    classes = settings.get("classes") or ()
    if len(classes) > 2:
        return None
    return (f"note: the model is two-class ({'/'.join(classes) or 'STAR/QSO'}): p_star is "
            f"1 - p_qso and p_galaxy is empty")


def model_identity(model_dir, runtime, threshold, settings):
    """The model part of an output's identity, in the side-car's key order: ``model``,
    ``model_sha256`` (of the runtime's file), ``runtime``, ``threshold``, ``prior``.

    predict and predict --dask resume only a partial run whose identity matches, and the
    Python API's tables carry the same keys, so all three build it here.
    """
    return {"model": str(model_dir.resolve()),
            "model_sha256": file_sha256(model_dir / RUNTIME_FILES[runtime]),
            "runtime": runtime, "threshold": float(threshold), "prior": settings["prior"]}


def model_provenance(model_dir, metadata, settings):
    """What an output records of the model beyond its identity, in the side-car's key order:
    the prior's source, the model's classes, the prior as a fraction per class, the
    temperature, the training QSO fraction (and whether it was assumed), the starqso version
    and the model folder's name."""
    return {"prior_source": settings["source"],
            "classes": settings.get("classes"),
            "prior_vector": settings.get("prior_vector"),
            "temperature": metadata.get("temperature"),
            "training_qso_fraction": settings["training_qso_fraction"],
            "training_qso_fraction_assumed": settings["training_qso_fraction_assumed"],
            "starqso_version": __version__, "model_name": model_dir.resolve().name}


def model_settings(model_dir, runtime, threshold=None, prior=None, log=None):
    """The checked model folder and what its p(QSO) and labels will be made with.

    Args:
        model_dir: exported model folder; the shipped model when None.
        runtime: "keras" or "litert".
        threshold: the label threshold; the model's own when None.
        prior: as :func:`parse_prior` accepts.
        log: optional callable for the prior's note.

    Returns:
        ``(model_dir, metadata, threshold, settings)``: the folder as a Path, its
        ``metadata.json``, the threshold as float and :func:`resolve_prior`'s settings.

    Raises:
        InputError: a bad model folder, threshold or prior.
    """
    prior = parse_prior(prior)
    model_dir = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
    metadata = check_model_dir(model_dir, runtime)
    threshold = metadata.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be in [0, 1]. Received: {threshold}")
    settings = resolve_prior(metadata, prior)
    if settings["note"] and log is not None:
        log(settings["note"])
    return model_dir, metadata, float(threshold), settings
