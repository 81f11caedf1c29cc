"""Classify cutouts with an exported model: `starqso predict`.

Rows stream through in batches (memory stays flat), each row's cutout is read, centre-cropped
to the model's input size and classified. Every input row keeps its place in the output:

* a row that cannot be classified (missing or broken file, cutout smaller than the model
  input, all zeros, NaN/inf at the object; no source detected at the centre, a pixel beyond
  1e7 nanomaggies such as a 1e30 no-data fill, sky noise not plausible in nanomaggies, see
  :mod:`starqso.preprocessing.quality`; a model output that is not a finite probability)
  has an empty ``p_qso`` and the reason in ``flag``;
* a row classified after a repair (a few NaN/inf pixels set to their band median) has its
  ``p_qso`` and a ``flag`` starting with ``repaired``.

``strict=True`` turns the first flagged row into an error instead, resumed rows included.

**The prior.** An exported model's p(QSO) is calibrated at its training QSO fraction
(``metadata.json: training_qso_fraction``, about 0.30). ``prior`` (``--prior F``) moves it to
a sample where a fraction F of objects are QSOs, by Bayes' rule on the odds::

    logit(p') = logit(p) + log(F / (1 - F)) - log(f_train / (1 - f_train))

in NumPy after the model, for both runtimes. The default is the model's ``default_prior`` (the
sky's QSO fraction, 0.02); ``prior="train"`` keeps p at the training mix. The model's
threshold is applied to p' (p under the chosen prior). A model folder from before these keys
(no ``training_qso_fraction``) is left uncorrected by default; a ``prior`` given for it is
applied from an assumed training fraction of 0.30 (the simulator's, the SDSS spectroscopic
sample's), with a note. Every output records which prior its p_qso assumes: FITS header
keywords, or a JSON side-car ``OUTPUT.json`` beside a CSV output.

**Faint rows lean on the prior.** Before the prior's shift, the network's evidence (its logit
against the training fraction) is scaled by :func:`starqso.probability.evidence_weight` of the
row's combined five-band detection S/N
(:func:`starqso.preprocessing.quality.combined_snr`): 0 at the detection limit, 1 from
:data:`starqso.schema.EVIDENCE_SNR`'s upper end, so a row just above the limit gets p' about
the prior, not the confident QSO that noise, a neighbour's wing or an artefact can look like
(:func:`starqso.probability.temper`). Models that do not record their training fraction are
left as they are.

**Quality bits and uncertainty.** After ``id, p_qso, label, flag`` every output has
``qflag``, the bitmask of :data:`starqso.schema.QFLAG_BITS` (0: no caveat; 1 for a row that
was not classified; extended source, bright neighbour, saturated, low S/N, magnitude outside
the training range, colours out of the training distribution: see
:mod:`starqso.preprocessing.qflags`), and ``p_qso_err``, the spread of p_qso over dihedral
views of the cutout (:func:`predict_views`; blank with ``uncertainty=False``). A FITS output
names the bits in ``QBITn`` header cards.

**Test-time augmentation.** ``tta=True`` (``--tta``) averages p(QSO) over the eight dihedral
views of each cutout (four 90-degree rotations, each also flipped): a point source has no
orientation (Dieleman et al. 2015), so the average removes orientation noise from the
network. It costs eight model evaluations per row.

Nothing is lost and nothing is half-written: rows go to a hidden partial file beside the
output (``.NAME.partial`` plus a ``.json`` saying which catalogue, model and threshold it
belongs to, with SHA-256 hashes of the catalogue file and of the model file the runtime
loads), its header line and then each batch flushed to disk, and the partial file becomes
the output by a rename only when every row is done. A killed run therefore leaves no output,
or the previous complete one; ``resume=True`` continues from the partial file's last
complete row (a partial file without a complete header line, killed before it reached the
disk, is started afresh) and refuses one made for another catalogue, model file, threshold,
prior or ``tta``. Every error exit keeps the partial file, a ``strict`` stop included (at a
new row or at a resumed one): fix the row, or drop ``strict``, and ``resume`` continues. The
partial files are created exclusively and never through a link: a symbolic link at
``.NAME.partial`` (or its ``.json``) is refused, its target untouched.

One writer per output: a run holds an exclusive lock on ``.NAME.lock`` beside the output
from before it reads the partial file until the output is in place
(:func:`starqso.locking.exclusive_lock`); a second run on the same output, with or without
``--resume``, is refused with one line naming the output and the owner's pid. An output that
is one of the inputs (the catalogue, a cutout or spectrum file it names, a cutout of the
folder, a model file; the same file through a link too), or that is a folder, is refused
before anything is written (:mod:`starqso.output_checks`).

Two runtimes: ``keras`` (TensorFlow, the ``.keras`` model) and ``litert`` (the TFLite model
through ``ai_edge_litert``). The LiteRT path imports neither TensorFlow nor Keras, so it runs
on a machine with only ``pip install ".[litert]"``-style light dependencies.
"""

from __future__ import annotations

import csv
import errno
import importlib.resources
import io
import json
import os
import pathlib
from typing import NamedTuple

import numpy as np

from starqso import jsonfile as strict_json
from starqso.errors import InputError
from starqso.model_files import RUNTIME_FILES, check_model_dir, file_sha256
from starqso.probability import logit, sigmoid
from starqso.schema import DEFAULT_THRESHOLD, P_QSO_ERR_COLUMN, QFLAG_BITS, QFLAG_COLUMN

RUNTIMES = tuple(RUNTIME_FILES)
# The first four are the original columns (readers of older outputs find them where they
# were); the quality bitmask and the uncertainty follow (starqso.preprocessing.qflags).
OUTPUT_COLUMNS = ("id", "p_qso", "label", "flag", QFLAG_COLUMN, P_QSO_ERR_COLUMN)
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


class KerasPredictor:
    """p(QSO) with the Keras model (imports TensorFlow).

    Args:
        model_dir: exported model folder.
        checked: the folder already passed :func:`~starqso.model_files.check_model_dir`.
    """

    def __init__(self, model_dir, *, checked=False):
        from starqso.extras import require_tensorflow

        require_tensorflow("--runtime keras", note="the light install runs --runtime litert")
        from starqso.model_files import load_keras_model

        self.model = load_keras_model(pathlib.Path(model_dir) / RUNTIME_FILES["keras"],
                                      checked=checked)

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
        return np.asarray(self.model.predict_on_batch({"image": images})).reshape(-1)[:count]


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


def parse_prior(value):
    """A ``--prior`` value: None (the model's default), ``"train"`` or a fraction in (0, 1).

    Raises:
        InputError: anything else (0, 1, negative, not a number).

    Example:
        >>> parse_prior("0.05"), parse_prior("train"), parse_prior(None)
        (0.05, 'train', None)
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == TRAINING_PRIOR:
        return TRAINING_PRIOR
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(value, bool) or not 0 < fraction < 1:
        raise InputError(f"--prior must be the QSO fraction of your sample, strictly between 0 "
                         f"and 1 (e.g. 0.02), or '{TRAINING_PRIOR}' for the model's training "
                         f"mix. Received: {value!r}")
    return fraction


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
    from starqso.preprocessing.photometry import EBV_RANGE

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


def _bad_ebv(ebv, flags, usable):
    """Rows whose E(B-V) is not a number in the accepted range are not classified."""
    from starqso.preprocessing.photometry import EBV_RANGE

    low, high = EBV_RANGE
    bad = ~((ebv >= low) & (ebv <= high))  # NaN compares False
    for row in np.flatnonzero(bad & usable):
        flags[row] = (f"ebv {ebv[row]:g} is not a Galactic reddening E(B-V) in {low:g}-{high:g} "
                      f"magnitudes; fix the ebv cell, or run with --ebv none or --ebv VALUE")
        usable[row] = False
    return usable


def resolve_prior(metadata, prior=None):
    """Which prior p(QSO) will assume, and the logit shift that gets it there.

    Args:
        metadata: the model folder's ``metadata.json``.
        prior: as :func:`parse_prior` accepts (None: the model's ``default_prior``).

    Returns:
        dict: ``prior`` (the QSO fraction the output p_qso assumes; None when that is the
        training mix of an older model, which is unknown), ``source`` ("default", "user" or
        "train"), ``shift`` (added to logit p; 0 for none), ``training_qso_fraction`` (None
        when unknown), ``training_qso_fraction_assumed`` (the legacy 0.30 was used) and
        ``note`` (None, or a line saying what was assumed).

    Example:
        >>> resolve_prior({"training_qso_fraction": 0.3, "default_prior": 0.02})["prior"]
        0.02
    """
    prior = parse_prior(prior)
    training = metadata.get("training_qso_fraction")
    source = "user"
    if prior is None:
        source = "default"
        prior = metadata.get("default_prior", TRAINING_PRIOR)
    if prior == TRAINING_PRIOR:
        return {"prior": training, "source": TRAINING_PRIOR, "shift": 0.0,
                "training_qso_fraction": training, "training_qso_fraction_assumed": False,
                "note": None}
    note, assumed = None, training is None
    if assumed:
        training = LEGACY_TRAINING_QSO_FRACTION
        note = (f"note: the model's metadata.json gives no training_qso_fraction (an older "
                f"export); --prior {prior} is applied from an assumed training fraction of "
                f"{training}")
    shift = float(np.log(prior / (1 - prior)) - np.log(training / (1 - training)))
    return {"prior": float(prior), "source": source, "shift": shift,
            "training_qso_fraction": float(training), "training_qso_fraction_assumed": assumed,
            "note": note}


def evidence_fraction(settings):
    """The training fraction faint rows lean toward (:func:`classify_block`'s
    ``training_fraction``): None when the model does not record it (no leaning then)."""
    if settings.get("training_qso_fraction_assumed"):
        return None
    return settings.get("training_qso_fraction")


def prior_label(settings):
    """How the summary line names the prior: ``0.02``, ``train (0.3)`` or ``train``."""
    if settings["source"] != TRAINING_PRIOR:
        return f"{settings['prior']:g}"
    training = settings["training_qso_fraction"]
    return TRAINING_PRIOR if training is None else f"{TRAINING_PRIOR} ({training:g})"


def apply_prior(probabilities, shift):
    """p(QSO) moved to another prior: ``sigmoid(logit(p) + shift)`` (NumPy, float64).

    ``shift = log(F / (1 - F)) - log(f_train / (1 - f_train))``; 0 returns p unchanged, and
    p = 0 or 1 stays where it is.

    Example:
        >>> round(float(apply_prior([0.5], np.log(1 / 9))[0]), 12)  # 50% odds at a 10x lower prior
        0.1
    """
    probabilities = np.asarray(probabilities, np.float64)
    if shift == 0:
        return probabilities
    return sigmoid(logit(probabilities) + shift)


def dihedral_views(images):
    """The eight dihedral views of (N, S, S, C) cutouts, stacked view by view: (8N, S, S, C).

    Views 0-3 are the cutouts rotated by 0, 90, 180, 270 degrees, views 4-7 the same after a
    left-right flip; a square crop maps onto itself, its centre stays its centre.
    """
    images = np.asarray(images)
    flipped = images[:, :, ::-1]
    return np.concatenate([np.rot90(view, k, axes=(1, 2))
                           for view in (images, flipped) for k in range(4)])


#: The views of the default uncertainty (no --tta), as quarter turns: the cutout and its
#: 180-degree rotation.
UNCERTAINTY_VIEWS = (0, 2)


def predict_views(predictor, images, tta=False, uncertainty=True, shift=0.0, weight=None,
                  training_fraction=None, outputs=None):
    """p(QSO) and its spread over dihedral views: ``(p, p_err)``, float64 (N,) each.

    ``p`` is the model's p(QSO) of the cutout as given (``tta=False``) or the mean over the
    eight :func:`dihedral_views` (``tta=True``), moved to the prior by ``shift``
    (:func:`apply_prior`). ``p_err`` is the standard deviation of the prior-corrected p over
    the views: all eight with ``tta``, else the cutout and its 180-degree rotation
    (:data:`UNCERTAINTY_VIEWS`, one extra model evaluation); NaN without ``uncertainty``.
    A point source has no orientation, so a network whose answer turns with the cutout is
    unsure of it: the spread grows with noise, blends and artefacts (``tests/test_qflags.py``).

    Args:
        predictor: from :func:`open_model`.
        images: (N, S, S, 5) model inputs.
        tta: average over the eight views.
        uncertainty: compute ``p_err``.
        shift: the prior's logit shift (:func:`resolve_prior`).
        weight: (N,) evidence weights (:func:`starqso.probability.evidence_weight`): each
            view's p is tempered toward ``training_fraction`` before the prior
            (:func:`starqso.probability.temper`); None for none.
        training_fraction: the model's training QSO fraction (needed with ``weight``).
        outputs: a dict that receives a predictor's other outputs, or None. A predictor
            may return a dict, ``{"p_qso": (N,), name: (N, ...), ...}`` (the embedding
            model's: :meth:`starqso.embedding.Embedder.outputs`) instead of p(QSO) alone;
            ``outputs[name]`` is then its ``name`` of the cutouts as given (the first view).

    Returns:
        ``(p, p_err)``, float64 (N,) each.

    Example:
        >>> p, p_err = predict_views(lambda x: np.full(len(x), 0.5), np.ones((2, 4, 4, 5)))
        >>> p.tolist(), p_err.tolist()
        ([0.5, 0.5], [0.0, 0.0])
    """
    from starqso.probability import temper

    images = np.asarray(images, np.float32)
    count = len(images)
    if not count:
        return np.zeros(0), np.zeros(0)

    def evaluate(batch, views):
        raw = predictor(batch)
        if isinstance(raw, dict):
            raw = dict(raw)
            p_qso = raw.pop("p_qso")
            if outputs is not None:
                # The views are stacked view by view and the first is the cutout as given
                # (dihedral_views, UNCERTAINTY_VIEWS): its rows are the first `count`.
                outputs.update({name: np.asarray(value)[:count] for name, value in raw.items()})
            raw = p_qso
        raw = np.asarray(raw, np.float64).reshape(views, count)
        if weight is None or training_fraction is None:
            return raw
        return temper(raw, np.asarray(weight, np.float64)[None, :], training_fraction)

    if tta:
        raw = evaluate(np.ascontiguousarray(dihedral_views(images)), 8)
        p = apply_prior(raw.mean(axis=0), shift)
    elif uncertainty:
        views = np.ascontiguousarray(np.concatenate([np.rot90(images, k, axes=(1, 2))
                                                     for k in UNCERTAINTY_VIEWS]))
        raw = evaluate(views, len(UNCERTAINTY_VIEWS))
        p = apply_prior(raw[0], shift)
    else:
        return apply_prior(evaluate(images, 1)[0], shift), np.full(count, np.nan)
    spread = apply_prior(raw, shift).std(axis=0) if uncertainty else np.full(count, np.nan)
    return p, spread


def _prepare_block(block, size, measured=None):
    """Model inputs of a :class:`~starqso.io.sources.Block`: ``(images, flags, usable)``.

    Every layout goes through here, so a bad row is flagged the same way whatever it was read
    from: the crop and repair of :func:`~starqso.preprocessing.objects.prepare_object`, then
    the source checks of :mod:`starqso.preprocessing.quality`. A stack's clean crops (finite,
    not all zero) skip the per-row call: for them prepare_object is the identity.
    ``measured``, a dict, receives the screen's per-row ``sky_sigma`` and ``snr`` (NaN for
    rows not screened), which the quality bits reuse.
    """
    from starqso.preprocessing.objects import prepare_object
    from starqso.preprocessing.quality import check_source, suspect_crops
    from starqso.schema import NUM_BANDS

    count = len(block.ids)
    images = np.zeros((count, size, size, NUM_BANDS), np.float32)
    flags, usable = [""] * count, np.zeros(count, bool)
    cubes, rows = block.cubes, range(count)
    if isinstance(cubes, np.ndarray) and cubes.shape[2:] == (size, size):
        clean = np.isfinite(cubes).all(axis=(1, 2, 3)) & (cubes != 0).any(axis=(1, 2, 3))
        images[clean] = np.moveaxis(cubes[clean], 1, -1)
        usable[clean] = True
        rows = np.flatnonzero(~clean)
    for row in rows:
        item = cubes[row]
        if isinstance(item, str):
            flags[row] = item
            continue
        try:
            # The same crop (and repair) as the training arrays: ObjectArrays.from_catalog.
            prepared = prepare_object(item, size, source=block.where[row])
            images[row], flags[row] = prepared.image, prepared.note
            usable[row] = True
        except InputError as err:
            flags[row] = str(err)
    # No answer without a source: blank sky, no-data fills and other units are refused. The
    # batch is screened at once; check_source gives the reason for the suspects.
    good = np.flatnonzero(usable)
    suspect, sigma, snr, background = suspect_crops(images[good], measured=True)
    if measured is not None:
        measured["sky_sigma"] = np.full((count, NUM_BANDS), np.nan)
        measured["sky_sigma"][good] = sigma
        measured["background"] = (good, background)
        measured["snr"] = None
        if snr is not None:
            measured["snr"] = np.full((count, NUM_BANDS), np.nan)
            measured["snr"][good] = snr
    for row in good[suspect]:
        try:
            check_source(images[row], source=block.where[row])
        except InputError as err:
            flags[row], usable[row] = str(err), False
    return images, flags, usable


#: The screening every predicted row gets (crop, repair, source checks), public so that
#: ``fit`` and ``finetune`` screen their training rows by the same rules
#: (:meth:`starqso.data.ObjectArrays.from_catalog`).
prepare_block = _prepare_block


class Classified(NamedTuple):
    """What :func:`classify_block` gives for a block of rows (arrays of the block's length)."""

    probabilities: np.ndarray  # float64 p(QSO), NaN where not classified
    flags: list  # human-readable flag strings ("" for none)
    usable: np.ndarray  # bool, classified rows
    qflag: np.ndarray  # int64 quality bitmask (starqso.schema.QFLAG_BITS)
    p_err: np.ndarray  # float64 spread of p(QSO) over dihedral views, NaN when not computed


def classify_block(block, predictor, size, shift=0.0, tta=False, uncertainty=True,
                   reference=None, training_fraction=None, ebv=None, outputs=None):
    """p(QSO), flags, quality bits and uncertainty of a block of rows.

    The per-row core of ``predict`` (one process, Dask partitions), ``embed`` and
    :mod:`starqso.api`: the crop and screen (:data:`prepare_block`), the E(B-V) check, the
    model under the prior, the output check and the quality bits.

    Args:
        block: a :class:`~starqso.io.sources.Block`.
        predictor: from :func:`open_model`.
        size: the model's input side.
        shift: the prior's logit shift (:func:`resolve_prior`).
        tta: average over the eight dihedral views.
        uncertainty: compute ``p_err`` (:func:`predict_views`).
        reference: the model's ``metadata.json: quality`` (None: no magnitude-range and
            out-of-distribution bits), see :mod:`starqso.preprocessing.qflags`.
        training_fraction: the model's training QSO fraction (:func:`resolve_prior`'s
            ``training_qso_fraction``): p(QSO) of a faint row leans on the prior by its
            detection S/N (:func:`starqso.probability.evidence_weight`); None: no leaning
            (an older model, whose training mix is unknown).
        ebv: (N,) Galactic E(B-V) of the rows, or None for none: each classified cutout is
            de-reddened (:func:`starqso.preprocessing.photometry.deredden`) before the model
            and the colour quality bits. The source checks and the S/N see the observed
            pixels (a per-band scale leaves S/N as it is), and so does SATURATED. A row whose
            E(B-V) is NaN, negative or above the range is not classified, with a flag.
        outputs: a dict that receives the other outputs of a predictor that gives them
            (:func:`predict_views`), or None: ``outputs[name]`` is an array of the block's
            length, NaN for the rows not classified. A row with a non-finite value in one is
            not classified, with a flag.

    Returns:
        :class:`Classified`.

    Example:
        >>> classified = classify_block(block, predictor, 32)  # doctest: +SKIP
        >>> classified.probabilities[classified.usable]  # doctest: +SKIP
    """
    from starqso.preprocessing.photometry import deredden
    from starqso.preprocessing.qflags import quality_bits, screened_bits
    from starqso.preprocessing.quality import combined_snr
    from starqso.probability import evidence_weight

    measured = {}
    images, flags, usable = _prepare_block(block, size, measured)
    count = len(block.ids)
    if ebv is not None:
        ebv = np.asarray(ebv, np.float64).reshape(count)
        usable = _bad_ebv(ebv, flags, usable)
    probabilities, p_err = np.full(count, np.nan), np.full(count, np.nan)
    given = {}
    if usable.any():
        weight = None
        if training_fraction is not None and measured["snr"] is not None:
            weight = evidence_weight(combined_snr(measured["snr"][usable]))
        inputs = images[usable] if ebv is None else deredden(images[usable], ebv[usable])
        probabilities[usable], p_err[usable] = predict_views(
            predictor, inputs, tta, uncertainty, shift, weight, training_fraction,
            None if outputs is None else given)
    if outputs is not None:
        for name, values in given.items():
            values = np.asarray(values)
            dtype = values.dtype if values.dtype.kind == "f" else np.float64
            outputs[name] = np.full((count, *values.shape[1:]), np.nan, dtype)
            outputs[name][usable] = values
    usable = _unusable_outputs(probabilities, usable, flags, outputs)
    p_err[~usable] = np.nan
    for values in (outputs or {}).values():
        values[~usable] = np.nan
    qflag = np.full(count, QFLAG_BITS["NOT_CLASSIFIED"], np.int64)
    qflag |= screened_bits(images, usable, measured["sky_sigma"])
    if usable.any():
        rows = np.flatnonzero(usable)
        # The screen's sky of the classified rows (screened rows, in the order of `good`).
        screened, background = measured["background"]
        position = np.searchsorted(screened, rows)
        qflag[rows] = quality_bits(
            images[rows], [bool(flags[row]) for row in rows], reference,
            sigma=measured["sky_sigma"][rows],
            snr=None if measured["snr"] is None else measured["snr"][rows],
            background=type(background)(*(values[position] for values in background)),
            ebv=None if ebv is None else ebv[rows])
    return Classified(probabilities, flags, usable, qflag, p_err)


def _partial_paths(output):
    partial = output.with_name(f".{output.name}.partial")
    return partial, partial.with_name(partial.name + ".json")


# What the resume message calls the identity keys that differ.
_IDENTITY_NAMES = {"source": "catalogue", "rows": "row count",
                   "catalog_sha256": "catalogue content (SHA-256)", "model": "model folder",
                   "model_sha256": "model file content (SHA-256)", "runtime": "runtime",
                   "threshold": "threshold", "prior": "prior", "prior_shift": "prior shift",
                   "tta": "--tta", "uncertainty": "--uncertainty", "ebv": "E(B-V) (--ebv)"}


def identity_differences(saved, identity):
    """What differs between a partial run's saved identity and this run's, in one line.

    Shared by ``predict --resume`` in one process and on Dask (:mod:`starqso.scale`).

    Args:
        saved: the identity the partial run recorded (anything read from its file).
        identity: this run's.

    Returns:
        str: ``"NAME OLD then, NEW now"`` per differing key, joined by ``"; "``.

    Example:
        >>> identity_differences({"prior": 0.02}, {"prior": 0.3})
        'prior 0.02 then, 0.3 now'
    """
    if not isinstance(saved, dict):
        return "its record is unreadable"
    keys = [key for key in identity if saved.get(key) != identity[key]]
    keys += [key for key in saved if key not in identity]

    def short(value):
        text = repr(value)
        return text if len(text) <= 40 else text[:16] + "..." + text[-16:]

    return "; ".join(f"{_IDENTITY_NAMES.get(key, key)} {short(saved.get(key))} then, "
                     f"{short(identity.get(key))} now" for key in keys)


def _resumed_rows(partial, ids, identity, log=None, columns=OUTPUT_COLUMNS):
    """Rows already in a partial file of the same run, after cutting an unfinished last line.

    None when there is nothing to resume: no partial file, or one without a complete header
    line (a run killed before its header reached the disk), which is started afresh.
    """
    partial_file, identity_file = partial
    if not partial_file.exists() or not identity_file.exists():
        return None
    with _open_partial(partial_file, mode="rb") as stream:
        content = stream.read()
    if b"\n" not in content:
        # Killed before the header line was on disk: no row was written, nothing is lost.
        if log is not None:
            log(f"note: the partial run {partial_file} has no complete header line (killed "
                f"before its first row); starting afresh")
        return None
    try:
        saved = strict_json.read_json(identity_file)
    except strict_json.DuplicateKeyError:
        raise
    except ValueError:
        saved = None
    if saved != identity:
        raise InputError(f"the partial run {partial_file} was made for another catalogue, "
                         f"model, threshold, prior, --tta or --ebv; delete it or run without "
                         f"--resume. "
                         f"Received: {identity_differences(saved, identity)}")
    content = content[:content.rfind(b"\n") + 1]  # a kill mid-line leaves half a row
    rows = list(csv.reader(io.StringIO(content.decode("utf-8", errors="replace"),
                                       newline="")))
    if not rows or tuple(rows[0]) != tuple(columns):
        raise InputError(f"the partial run {partial_file} does not start with the header line "
                         f"{','.join(columns)}; delete it or run without --resume. "
                         f"Received: {rows[0] if rows else ''}")
    rows = rows[1:]
    for number, row in enumerate(rows):
        if len(row) != len(columns) or number >= len(ids) or row[0] != ids[number]:
            raise InputError(f"the partial run {partial_file} does not match the catalogue at "
                             f"row {number + 1}; delete it or run without --resume. Received: "
                             f"{row}")
    # Cut the half row in place (no link is followed: _open_partial).
    with _open_partial(partial_file, mode="r+b") as stream:
        stream.truncate(len(content))
    return rows


def _refuse_output_among_inputs(rows_source, output, model_dir, csv_output):
    """The one rule (:mod:`starqso.output_checks`): the output, and a CSV's side-car, are
    neither a folder nor any file the run reads."""
    import itertools

    from starqso.output_checks import model_inputs, refuse_output_among_inputs, source_inputs

    inputs, trees = source_inputs(rows_source)
    refuse_output_among_inputs(output, itertools.chain(inputs, model_inputs(model_dir)),
                               trees=trees, beside=[sidecar_path(output)] if csv_output else [])


def _refuse_linked_partial(partial):
    """Refuse a partial file (or its record) that is a link or not a plain file: starqso
    made neither, and writing through a link would write into its target."""
    for path in partial:
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            kind = (f"a symbolic link to {os.readlink(path)}" if os.path.islink(path)
                    else "not a plain file")
            raise InputError(f"{path} is {kind}, not a partial run starqso wrote; it is not "
                             f"written through: remove it (or choose another output). "
                             f"Received: {path}")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_partial(path, fresh=False, mode="a"):
    """The partial file, opened without following a link: ``fresh`` creates it exclusively
    (a stale one of a killed run, ours, is removed first: the output's lock is held), else
    ``mode`` "a" appends, "rb" reads, "r+b" rewrites in place.

    Raises:
        InputError: a link appeared at ``path`` since :func:`_refuse_linked_partial`.
    """
    flags = {"a": os.O_WRONLY | os.O_APPEND, "rb": os.O_RDONLY, "r+b": os.O_RDWR}[mode]
    if fresh:
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
        flags, mode = os.O_WRONLY | os.O_CREAT | os.O_EXCL, "w"
    try:
        descriptor = os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as err:
        if os.path.islink(path) or err.errno == errno.EEXIST:
            _refuse_linked_partial((path,))
            raise InputError(f"{path} appeared while this run started it; another program "
                             f"writes there. Received: {path}") from err
        raise
    if "b" in mode:
        return os.fdopen(descriptor, mode)
    return os.fdopen(descriptor, mode, newline="", encoding="utf-8")


def _unusable_outputs(probabilities, usable, flags, outputs=None):
    """Flag classified rows whose p(QSO) is not a finite probability (NaN from a 1e30 pixel),
    or whose other outputs (``{name: (N, ...)}``, the embeddings) are not all finite."""
    bad = usable & ~((probabilities >= 0) & (probabilities <= 1))  # NaN compares False
    for row in np.flatnonzero(bad):
        value = probabilities[row]
        reason = "not finite" if not np.isfinite(value) else "not a probability in [0, 1]"
        flags[row] = (f"model output is {reason} for this cutout (p_qso={value:g}); expected "
                      f"a probability in [0, 1]")
        usable[row] = False
    for values in (outputs or {}).values():
        finite = np.isfinite(values).reshape(len(usable), -1).all(axis=1)
        for row in np.flatnonzero(usable & ~finite):
            flags[row] = "the model gave a non-finite output for this cutout"
            usable[row] = False
    return usable


def output_cells(ident, p_qso, flag, usable, bits, err, threshold):
    """One row of the predictions table as ``predict`` writes it: the text of its
    :data:`OUTPUT_COLUMNS` cells.

    Shared by the CSV writer and :mod:`starqso.api`, so a label, a rounding or a blank means
    the same everywhere.

    Args:
        ident: the row's id.
        p_qso: p(QSO) under the prior (ignored when not ``usable``).
        flag: the row's flag ("" for none).
        usable: the row was classified.
        bits: the quality bitmask.
        err: the spread of p(QSO), NaN when not computed.
        threshold: p(QSO) at or above which the label is QSO.

    Returns:
        tuple of six str: id, p_qso (6 decimals; blank when not classified), label (QSO, STAR
        or blank), flag, qflag, p_qso_err (6 decimals; blank when NaN).

    Example:
        >>> output_cells("a", 0.61, "", True, 0, float("nan"), 0.5)
        ('a', '0.610000', 'QSO', '', '0', '')
    """
    label = row_label(p_qso, usable, threshold)
    return (ident, f"{p_qso:.6f}" if usable else "", label, flag, str(int(bits)),
            f"{err:.6f}" if np.isfinite(err) else "")


def row_label(p_qso, usable, threshold):
    """A row's label: ``"QSO"`` at or above ``threshold``, ``"STAR"`` below, ``""`` for a row
    that was not classified.

    Example:
        >>> row_label(0.61, True, 0.5), row_label(0.2, True, 0.5), row_label(0.9, False, 0.5)
        ('QSO', 'STAR', '')
    """
    return ("QSO" if p_qso >= threshold else "STAR") if usable else ""


#: What a predict run counts: rows, QSO labels, rows not classified (flagged), rows classified
#: after a repair, classified rows with a non-zero qflag (caveats).
COUNT_KEYS = ("rows", "qso", "flagged", "repaired", "caveats")


def label_block(classified, threshold, counts):
    """The labels of a classified block (:func:`row_label`), its rows added to ``counts``.

    The one labelling and counting of ``predict``, in one process and on Dask.

    Args:
        classified: :func:`classify_block`'s :class:`Classified`.
        threshold: p(QSO) at or above which the label is QSO.
        counts: a dict holding :data:`COUNT_KEYS` (other keys are left alone), updated in
            place.

    Returns:
        list of str, one label per row.

    Example:
        >>> counts = dict.fromkeys(COUNT_KEYS, 0)
        >>> block = Classified(np.array([0.7, np.nan]), ["", "no source"],
        ...                    np.array([True, False]), np.array([0, 1]), np.full(2, np.nan))
        >>> label_block(block, 0.5, counts), counts["qso"], counts["flagged"]
        (['QSO', ''], 1, 1)
    """
    labels = [row_label(p_qso, ok, threshold)
              for p_qso, ok in zip(classified.probabilities, classified.usable, strict=False)]
    for label, flag, ok, bits in zip(labels, classified.flags, classified.usable,
                                     classified.qflag, strict=False):
        counts["rows"] += 1
        counts["qso"] += label == "QSO"
        counts["flagged"] += not ok
        counts["repaired"] += bool(ok and flag)
        counts["caveats"] += bool(ok and bits)
    return labels


def refuse_flagged(flags, ids, start, source):
    """``--strict``: a block's first flagged row as an error; nothing when none is flagged.

    Args:
        flags: the block's flags (:class:`Classified`'s).
        ids: the block's ids.
        start: the input row number (0-based) of the block's first row.
        source: the input, as the message names it.

    Raises:
        InputError: ``row N (id 'x') of SOURCE is flagged and --strict is on: FLAG``.

    Example:
        >>> refuse_flagged(["", ""], ["a", "b"], 0, "catalog.csv")  # no flag: no error
    """
    if any(flags):
        row = next(number for number, flag in enumerate(flags) if flag)
        raise InputError(f"row {start + row + 1} (id {ids[row]!r}) of {source} is flagged and "
                         f"--strict is on: {flags[row]}")


def sidecar_path(output):
    """The JSON side-car of a CSV output: ``OUTPUT.json`` (``predictions.csv.json``)."""
    output = pathlib.Path(output)
    return output.with_name(output.name + ".json")


def _header_cards(record):
    """FITS header cards of the output record (prior, threshold, temperature, ...)."""
    prior = record["prior"]
    return [
        ("PRIOR", prior, "QSO fraction p_qso assumes" if prior is not None
         else "QSO fraction p_qso assumes: training mix, unknown"),
        ("PRIORSRC", record["prior_source"], "prior from: default, user or train"),
        ("THRESH", record["threshold"], "label QSO when p_qso >= THRESH"),
        ("TEMPER", 1.0 if record["temperature"] is None else record["temperature"],
         "calibration temperature" if record["temperature"] is not None
         else "not calibrated (older export)"),
        ("TRNFRAC", record["training_qso_fraction"],
         "training QSO fraction" + (" (assumed)" if record["training_qso_fraction_assumed"]
                                    else "")),
        ("TTA", record["tta"], "p_qso averaged over 8 dihedral views"),
        ("UNCERT", record.get("uncertainty", False), "p_qso_err: std over dihedral views"),
        ("EBV", record.get("ebv", EBV_NONE), "E(B-V) de-reddened: column ebv, value or none"),
        ("RUNTIME", record["runtime"], "starqso predict --runtime"),
        ("STQVER", record["starqso_version"], "starqso version"),
        ("MODEL", record["model_name"], "model folder name"),
        ("MODELSHA", record["model_sha256"], "SHA-256 of the model file"),
        ("INPUT", record["source"], "input classified"),
        ("INPUTSHA", record["catalog_sha256"], "SHA-256 of the input (or its listing)"),
        ("DATE", record["created"], "UTC time the output was written"),
        ("COMMAND", record["command"] or "", "the command line"),
        *((f"QBIT{bit.bit_length() - 1}", name, f"qflag bit value {bit}")
          for name, bit in QFLAG_BITS.items()),
    ]


def provenance(command=None):
    """When and by what an output was made: ``created`` (UTC, ISO 8601) and ``command``.

    Args:
        command: the command line (the CLI passes its own); None: ``sys.argv`` when it is
            starqso's, else None.
    """
    import shlex
    import sys
    import time

    if command is None and sys.argv and "starqso" in " ".join(sys.argv[:2]):
        command = shlex.join(sys.argv)
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}


def _csv_cells(values):
    """Kept input values as CSV text: numbers as repr (round-trip exact), NaN/None blank."""
    cells = []
    for value in np.asarray(values, dtype=object):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            cells.append("")
        elif isinstance(value, (bytes, np.bytes_)):
            cells.append(value.decode("utf-8", "replace"))
        elif isinstance(value, (float, np.floating)):
            cells.append(repr(float(value)))
        else:
            cells.append(str(value))
    return cells


def _fits_column(texts):
    """A kept column back from the partial CSV: float64 when every cell is a number or
    blank (NaN), else UTF-8 bytes."""
    try:
        return np.array([float(text) if text else np.nan for text in texts], np.float64)
    except ValueError:
        encoded = np.char.encode(np.asarray(texts, dtype=str), "utf-8")
        return encoded.astype(f"S{max(encoded.dtype.itemsize, 1)}")


def _finish(partial_file, output, fits_output, record, keep=()):
    """The partial file becomes the output; then its record (side-car or header) is complete.

    A CSV's side-car is removed before the rename and written after it, so a kill in between
    leaves an output without a side-car, never one beside the record of another run.
    """
    from starqso.atomic import write_bytes_atomically, write_json_atomically

    if not fits_output:
        sidecar = sidecar_path(output)
        sidecar.unlink(missing_ok=True)
        os.replace(partial_file, output)
        write_json_atomically(sidecar, record, sort_keys=False)
        return
    from astropy.io import fits
    from astropy.table import Table

    from starqso.io._fits import hdulist_bytes

    with open(partial_file, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]
    text = {name: np.char.encode(np.asarray([row[column] for row in rows], dtype=str), "utf-8")
            for column, name in ((0, "id"), (2, "label"), (3, "flag"))}
    # Text as UTF-8 bytes, as starqso.io.write_catalog stores it (which writes no header cards).
    table = Table({"id": text["id"].astype(f"S{max(text['id'].dtype.itemsize, 1)}"),
                   "p_qso": np.array([float(row[1]) if row[1] else np.nan for row in rows]),
                   "label": text["label"].astype(f"S{max(text['label'].dtype.itemsize, 1)}"),
                   "flag": text["flag"].astype(f"S{max(text['flag'].dtype.itemsize, 1)}"),
                   QFLAG_COLUMN: np.array([int(row[4]) for row in rows], np.int32),
                   P_QSO_ERR_COLUMN: np.array([float(row[5]) if row[5] else np.nan
                                               for row in rows])})
    for number, name in enumerate(keep, len(OUTPUT_COLUMNS)):
        table[name] = _fits_column([row[number] for row in rows])
    hdu = fits.table_to_hdu(table)
    hdu.name = "CATALOG"
    for keyword, value, comment in _header_cards(record):
        hdu.header[keyword] = (value, comment)
    write_bytes_atomically(output, hdulist_bytes(fits.HDUList([fits.PrimaryHDU(), hdu])))
    partial_file.unlink()


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


def predict_catalog(source, output, model_dir=None, runtime="keras", batch_size=256,
                    threshold=None, progress=None, strict=False, resume=False, log=None,
                    prior=None, tta=False, id_column=None, keep=(), command=None,
                    uncertainty=True, ebv=None):
    """Classify every row of ``source`` and write ``id, p_qso, label, flag`` to ``output``.

    p_qso is the model's calibrated p(QSO), averaged over the eight dihedral views with
    ``tta``, then corrected to ``prior`` (see the module docstring); the label compares it to
    the threshold. A CSV output gets the side-car :func:`sidecar_path` and a FITS output
    header cards (``PRIOR``, ``PRIORSRC``, ``THRESH``, ``TEMPER``, ``TRNFRAC``, ``TTA``,
    ``RUNTIME``) saying which prior, threshold, temperature and runtime p_qso comes from.

    Args:
        source: any input :func:`starqso.io.sources.open_source` reads: a catalogue
            (CSV/FITS with ``id`` and ``image`` or ``image_u`` ... ``image_z``), a folder of
            cutout FITS, a zarr / FITS / HDF5 stack, Parquet or a HATS catalogue.
        output: CSV path, or FITS table if it ends in ``.fits``.
        model_dir: exported model folder; the shipped pretrained model when None.
        runtime: "keras" or "litert".
        batch_size: cutouts per batch.
        threshold: p(QSO) at or above which the label is QSO (the model's own when None).
        progress: optional callable receiving the rows done and the total.
        strict: raise on the first row that would be flagged (a repair included).
        resume: continue the partial file an interrupted run left beside ``output``.
        log: optional callable for notes (e.g. where a resumed run continues).
        prior: the QSO fraction of the sample, in (0, 1); ``"train"`` for none (p at the
            training mix); None for the model's ``default_prior`` (none for older models).
        tta: average p(QSO) over the eight dihedral views of each cutout (8x the model work).
        id_column: the id column of Parquet, HATS, zarr metadata and stack tables.
        keep: input columns copied into the output after ``flag`` (``--keep ra,dec``).
        command: the command line recorded in the output's provenance (the CLI's own).
        uncertainty: fill ``p_qso_err`` (:func:`predict_views`; one extra model evaluation
            per row without ``tta``).
        ebv: the Galactic E(B-V) each cutout is de-reddened by before the model
            (:func:`parse_ebv`): None or ``"none"``, no de-reddening (the default);
            ``"column"``, the input's ``ebv`` column; a number, that value for every row. The
            record's ``ebv`` (FITS ``EBV``) says which: ``"column ebv"``, the value or
            ``"none"``.

    Returns:
        dict summary: rows, qso, flagged (not classified), repaired, caveats (classified rows
        with a non-zero qflag), resumed (rows taken
        from the partial file), the output path and ``record`` (what the side-car holds:
        prior, threshold, temperature, ...).

    Raises:
        InputError: bad options (a prior outside (0, 1) among them), model folder or
            catalogue (two folder cutouts with one id among them); ``output`` is the
            catalogue; another run holds ``output``'s lock; with ``strict``, a bad row (a
            resumed one included); with ``resume``, a partial file from another catalogue,
            model file, threshold, prior or ``tta``.

    Example:
        >>> predict_catalog("demo/catalog.csv", "predictions.csv")  # doctest: +SKIP
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1. Received: {batch_size}")
    output = pathlib.Path(output)
    suffix = "".join(output.suffixes[-1:]).lower()
    if suffix not in (".csv", ".fits"):
        raise InputError(f"output must end in .csv or .fits. Received: {output}")
    model_dir, metadata, threshold, settings = model_settings(model_dir, runtime, threshold,
                                                             prior, log)
    ebv = parse_ebv(ebv)
    size = int(metadata["input_shape"][1])
    from starqso.io.sources import open_source

    rows_source = open_source(source, id_column=id_column, keep=keep, ebv=ebv == EBV_COLUMN)
    ebv = ebv_setting(ebv, rows_source)
    columns = (*OUTPUT_COLUMNS, *rows_source.keep_columns)
    ids = rows_source.ids()
    _refuse_output_among_inputs(rows_source, output, model_dir, suffix != ".fits")
    source_name = str(pathlib.Path(source).resolve())
    from starqso import __version__
    from starqso.locking import exclusive_lock

    # What a partial file must match to be resumed, and what the finished output records:
    # content hashes too, so a replaced model file or an edited catalogue is not continued.
    common = {"source": source_name, "rows": len(ids),
              "catalog_sha256": rows_source.fingerprint(),
              "model": str(model_dir.resolve()),
              "model_sha256": file_sha256(model_dir / RUNTIME_FILES[runtime]),
              "runtime": runtime, "threshold": float(threshold), "prior": settings["prior"],
              "tta": bool(tta), "uncertainty": bool(uncertainty),
              "keep": list(rows_source.keep_columns), "ebv": ebv}
    identity = {**common, "prior_shift": settings["shift"]}
    record = {"output": output.name, **common, "prior_source": settings["source"],
              "temperature": metadata.get("temperature"),
              "training_qso_fraction": settings["training_qso_fraction"],
              "training_qso_fraction_assumed": settings["training_qso_fraction_assumed"],
              "starqso_version": __version__, "model_name": model_dir.resolve().name}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_paths(output)
    # One writer per output, for the whole run (--resume included): see starqso.locking.
    with exclusive_lock(output):
        _refuse_linked_partial(partial)
        done = _resumed_rows(partial, ids, identity, log, columns) if resume else None
        # The resumed rows answer to --strict as the new ones do (a fresh run would stop).
        # The partial file stays: without --strict, --resume continues after these rows.
        for number, (ident, _, _, flag, *_) in enumerate(done if strict and done else []):
            if flag:
                raise InputError(f"row {number + 1} (id {ident!r}) of {source} is flagged and "
                                 f"--strict is on: {flag}")
        if resume and log is not None:
            log(f"resuming after row {len(done)} of {len(ids)}" if done is not None else
                "no partial run to resume; starting from the first row")
        counts = {**dict.fromkeys(COUNT_KEYS, 0), "resumed": 0}
        for _, p_qso, label, flag, qflag, *_ in done or []:
            counts["rows"] += 1
            counts["qso"] += label == "QSO"
            counts["flagged"] += bool(flag) and not p_qso
            counts["repaired"] += bool(flag) and bool(p_qso)
            counts["caveats"] += bool(p_qso) and qflag not in ("", "0")
        counts["resumed"] = counts["rows"]
        # The folder was checked above, before the catalogue: a bad catalogue fails before
        # TensorFlow is imported, and the model files are read once.
        predictor = _checked_predictor(model_dir, runtime)
        if done is None:
            from starqso.atomic import write_text_atomically

            write_text_atomically(partial[1], json.dumps(identity, indent=2) + "\n")
        try:
            with _open_partial(partial[0], fresh=done is None) as stream:
                writer = csv.writer(stream)
                if done is None:
                    # On disk before the first batch: a run killed in it leaves a resumable file.
                    writer.writerow(columns)
                    stream.flush()
                    os.fsync(stream.fileno())
                for partition in rows_source.partitions(batch_size):
                    if partition.stop <= counts["rows"]:
                        continue
                    start = max(partition.start, counts["rows"])
                    block = rows_source.read(partition, size, start=start)
                    batch_ids = block.ids
                    classified = classify_block(
                        block, predictor, size, settings["shift"], tta, uncertainty,
                        metadata.get("quality"), evidence_fraction(settings),
                        block_ebv(ebv, rows_source, block))
                    if strict:
                        # The finished batches stay in the partial file, for --resume.
                        refuse_flagged(classified.flags, batch_ids, start, source)
                    label_block(classified, threshold, counts)
                    kept = [_csv_cells(block.keep[name]) for name in rows_source.keep_columns]
                    for row, (ident, p_qso, flag, ok, bits, err) in enumerate(
                            zip(batch_ids, *classified, strict=False)):
                        writer.writerow((*output_cells(ident, p_qso, flag, ok, bits, err,
                                                       threshold),
                                         *(column[row] for column in kept)))
                    # Each batch reaches the disk whole before the next starts: what --resume reads.
                    stream.flush()
                    os.fsync(stream.fileno())
                    if progress is not None:
                        progress(counts["rows"], len(ids))
        except OSError as err:
            if err.filename is not None:
                raise
            # A failed write or fsync (a full disk) names no file: name the partial file.
            raise type(err)(err.errno, err.strerror, str(partial[0])) from err
        record.update(provenance(command))
        _finish(partial[0], output, suffix == ".fits", record, rows_source.keep_columns)
        partial[1].unlink(missing_ok=True)
    return {**counts, "output": str(output), "prior": prior_label(settings), "record": record}
