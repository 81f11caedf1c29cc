"""THE per-row core shared by ``predict`` (one process and Dask), ``embed`` and the
Python API: crop once and screen a block of cutouts (:data:`prepare_block`), run
the model over its dihedral views (:func:`predict_views`), apply the prior, set
the quality bits (:func:`classify_block`), then label and count the rows
(:func:`output_cells`, :func:`label_block`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from starqso.errors import InputError
from starqso.preprocessing.blocks import prepare_block
from starqso.preprocessing.photometry import EBV_RANGE, deredden
from starqso.preprocessing.qflags import quality_bits, screened_bits
from starqso.preprocessing.screening import combined_snr
from starqso.probability import (
    apply_class_prior,
    apply_prior,
    class_decisions,
    evidence_weight,
    temper,
    temper_classes,
)
from starqso.schema import (
    LABEL_CODES,
    LABEL_NAMES,
    P_QSO_ERR_COLUMN,
    QFLAG_BITS,
    QFLAG_COLUMN,
    QSO_CLASS,
)

# The first four are the original columns (readers of older outputs find them where they
# were); the quality bitmask and the uncertainty follow (starqso.preprocessing.qflags), then
# the other classes' probabilities (p_galaxy blank for a two-class model).
OUTPUT_COLUMNS = ("id", "p_qso", "label", "flag", QFLAG_COLUMN, P_QSO_ERR_COLUMN, "p_star",
                  "p_galaxy")

#: The column of QSO, and of GALAXY, in a model's class probabilities: every supported class
#: list (:data:`starqso.schema.SUPPORTED_CLASSES`) gives a class its code of
#: :data:`starqso.schema.LABEL_CODES` as its place (STAR 0, QSO 1, GALAXY 2).
QSO_INDEX = LABEL_CODES[QSO_CLASS]
GALAXY_INDEX = LABEL_CODES["GALAXY"]


def _bad_ebv(ebv, flags, usable):
    """Rows whose E(B-V) is not a number in the accepted range are not classified."""
    low, high = EBV_RANGE
    bad = ~((ebv >= low) & (ebv <= high))  # NaN compares False
    for row in np.flatnonzero(bad & usable):
        flags[row] = (f"ebv {ebv[row]:g} is not a Galactic reddening E(B-V) in {low:g}-{high:g} "
                      f"magnitudes; fix the ebv cell, or run with --ebv none or --ebv VALUE")
        usable[row] = False
    return usable


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
                  training_fraction=None, outputs=None, classes=False):
    """p(QSO) (or the class probabilities) and the spread of p(QSO) over dihedral views:
    ``(p, p_err)``, float64.

    ``p`` is the model's p(QSO) of the cutout as given (``tta=False``) or the mean over the
    eight :func:`dihedral_views` (``tta=True``), moved to the prior by ``shift``
    (:func:`apply_prior`). ``p_err`` is the standard deviation of the prior-corrected p over
    the views: all eight with ``tta``, else the cutout and its 180-degree rotation
    (:data:`UNCERTAINTY_VIEWS`, one extra model evaluation); NaN without ``uncertainty``.
    A point source has no orientation, so a network whose answer turns with the cutout is
    unsure of it: the spread grows with noise, blends and artefacts (``tests/test_qflags.py``).

    A two-class predictor gives p(QSO), (N,), and the arithmetic is on its log-odds, as it
    always was. A K-class predictor gives the class probabilities, (N, K) (QSO in column
    :data:`QSO_INDEX`); each view's row is tempered and moved to the prior as a whole
    (:func:`~starqso.probability.temper_classes`,
    :func:`~starqso.probability.apply_class_prior`), and p(QSO) is its QSO column.

    Args:
        predictor: from :func:`open_model`, or any callable from (N, S, S, 5) cutouts to
            p(QSO) (N,) or class probabilities (N, K).
        images: (N, S, S, 5) model inputs.
        tta: average over the eight views.
        uncertainty: compute ``p_err``.
        shift: the prior's shift (:func:`resolve_prior`): a float, the logit shift, for a
            two-class predictor; K log shifts for a K-class one (0 for none).
        weight: (N,) evidence weights (:func:`starqso.probability.evidence_weight`): each
            view's p is tempered toward ``training_fraction`` before the prior
            (:func:`starqso.probability.temper`); None for none.
        training_fraction: the model's training QSO fraction, or its K training class
            fractions for a K-class predictor (needed with ``weight``).
        outputs: a dict that receives a predictor's other outputs, or None. A predictor
            may return a dict, ``{"p_qso": (N,), name: (N, ...), ...}`` or
            ``{"probabilities": (N, K), name: ...}`` (the embedding model's:
            :meth:`starqso.discovery.embed.Embedder.outputs`) instead of the probabilities
            alone; ``outputs[name]`` is then its ``name`` of the cutouts as given (the first
            view).
        classes: give ``p`` as the (N, K) class probabilities (K = 2, ``[1 - p, p]``, for a
            two-class predictor) instead of p(QSO).

    Returns:
        ``(p, p_err)``: p(QSO), float64 (N,), or with ``classes`` the class probabilities,
        float64 (N, K); and p_err, float64 (N,).

    Example:
        >>> p, p_err = predict_views(lambda x: np.full(len(x), 0.5), np.ones((2, 4, 4, 5)))
        >>> p.tolist(), p_err.tolist()
        ([0.5, 0.5], [0.0, 0.0])
        >>> three = lambda x: np.tile([0.2, 0.7, 0.1], (len(x), 1))
        >>> p, _ = predict_views(three, np.ones((1, 4, 4, 5)), classes=True)
        >>> p.round(6).tolist()
        [[0.2, 0.7, 0.1]]
    """
    images = np.asarray(images, np.float32)
    count = len(images)
    if not count:
        return (np.zeros((0, 2)) if classes else np.zeros(0)), np.zeros(0)
    kinds = []  # the number of classes the predictor answered with

    def evaluate(batch, views):
        raw = predictor(batch)
        if isinstance(raw, dict):
            raw = dict(raw)
            # A K-class embedding model names its (N, K) output "probabilities".
            given = raw.pop("probabilities", None)
            p_qso = raw.pop("p_qso", None)
            if outputs is not None:
                # The views are stacked view by view and the first is the cutout as given
                # (dihedral_views, UNCERTAINTY_VIEWS): its rows are the first `count`.
                outputs.update({name: np.asarray(value)[:count] for name, value in raw.items()})
            raw = p_qso if given is None else given
        raw = np.asarray(raw, np.float64)
        if raw.ndim == 2 and raw.shape[1] > 1:
            kinds.append(raw.shape[1])
            raw = raw.reshape(views, count, raw.shape[1])
            if weight is None or training_fraction is None:
                return raw
            return temper_classes(raw, np.asarray(weight, np.float64)[None, :],
                                  _per_class(training_fraction, raw.shape[-1], "training"))
        kinds.append(2)
        raw = raw.reshape(views, count)
        if weight is None or training_fraction is None:
            return raw
        return temper(raw, np.asarray(weight, np.float64)[None, :], training_fraction)

    def prior(values):
        if values.ndim == 2:  # two-class: p(QSO), views x rows (or rows)
            return apply_prior(values, _scalar_shift(shift))
        return apply_class_prior(values, _per_class(shift, values.shape[-1], "shift"))

    def qso(values):
        return values if kinds[0] == 2 else values[..., QSO_INDEX]

    if tta:
        raw = evaluate(np.ascontiguousarray(dihedral_views(images)), 8)
        p = prior(raw.mean(axis=0)[None])[0]
    elif uncertainty:
        views = np.ascontiguousarray(np.concatenate([np.rot90(images, k, axes=(1, 2))
                                                     for k in UNCERTAINTY_VIEWS]))
        raw = evaluate(views, len(UNCERTAINTY_VIEWS))
        p = prior(raw[:1])[0]
    else:
        raw = None
        p = prior(evaluate(images, 1)[:1])[0]
    spread = qso(prior(raw)).std(axis=0) if raw is not None else np.full(count, np.nan)
    if kinds[0] == 2:
        return (np.stack([1.0 - p, p], axis=1) if classes else p), spread
    return (p if classes else p[:, QSO_INDEX]), spread


def _scalar_shift(shift):
    """A two-class model's logit shift: one number (a K-class shift is refused)."""
    values = np.asarray(shift, np.float64)
    if values.ndim:
        raise ValueError(f"a two-class model's prior shift is one logit shift. Received: "
                         f"shift={shift!r}")
    return float(values)


def _per_class(values, count, what):
    """K per-class values for a K-class model's arithmetic; 0 (no shift) stands for K zeros."""
    values = np.asarray(values, np.float64)
    if values.ndim == 0 and what == "shift" and values == 0:
        return np.zeros(count)
    if values.shape != (count,):
        raise ValueError(f"a {count}-class model needs {count} values of its {what} (one per "
                         f"class). Received: {what}={values.tolist()!r}")
    return values


# The module-level name the per-row core calls (tests replace it to count calls).
_prepare_block = prepare_block


class Classified(NamedTuple):
    """What :func:`classify_block` gives for a block of rows (arrays of the block's length).

    ``probabilities`` stays p(QSO) (N,), as it always was; ``classes`` holds every class's
    probability, (N, K) in the model's class order (K = 2, ``[1 - p, p]``, for a two-class
    model), or None (a :class:`Classified` made without it: two-class).
    """

    probabilities: np.ndarray  # float64 p(QSO), NaN where not classified
    flags: list  # human-readable flag strings ("" for none)
    usable: np.ndarray  # bool, classified rows
    qflag: np.ndarray  # int64 quality bitmask (starqso.schema.QFLAG_BITS)
    p_err: np.ndarray  # float64 spread of p(QSO) over dihedral views, NaN when not computed
    classes: np.ndarray | None = None  # float64 (N, K) class probabilities, NaN rows unclassified

    def class_matrix(self):
        """The (N, K) class probabilities: :attr:`classes`, or ``[1 - p, p]`` from
        :attr:`probabilities` when the block was made without them."""
        if self.classes is not None:
            return self.classes
        p = np.asarray(self.probabilities, np.float64)
        return np.stack([1.0 - p, p], axis=1)


def classify_block(block, predictor, size, shift=0.0, tta=False, uncertainty=True,
                   reference=None, training_fraction=None, ebv=None, outputs=None):
    """p(QSO), the class probabilities, flags, quality bits and uncertainty of a block of rows.

    The per-row core of ``predict`` (one process, Dask partitions), ``embed`` and
    :mod:`starqso.api`: the crop and screen (:data:`prepare_block`), the E(B-V) check, the
    model under the prior, the output check and the quality bits.

    Args:
        block: a :class:`~starqso.io.sources.Block`.
        predictor: from :func:`open_model`.
        size: the model's input side.
        shift: the prior's shift (:func:`resolve_prior`): the logit shift of a two-class
            model, K log shifts of a K-class one.
        tta: average over the eight dihedral views.
        uncertainty: compute ``p_err`` (:func:`predict_views`).
        reference: the model's ``metadata.json: quality`` (None: no magnitude-range and
            out-of-distribution bits), see :mod:`starqso.preprocessing.qflags`.
        training_fraction: the model's training QSO fraction (:func:`resolve_prior`'s
            ``training_qso_fraction``): p(QSO) of a faint row leans on the prior by its
            detection S/N (:func:`starqso.probability.evidence_weight`); None: no leaning
            (an older model, whose training mix is unknown); a K-class model's K training
            class fractions.
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
    measured = {}
    images, flags, usable = _prepare_block(block, size, measured)
    count = len(block.ids)
    if ebv is not None:
        ebv = np.asarray(ebv, np.float64).reshape(count)
        usable = _bad_ebv(ebv, flags, usable)
    p_err = np.full(count, np.nan)
    # As wide as the model's answer even when no row is classified, so blocks stack.
    width = getattr(predictor, "num_classes", None) or (len(shift) if np.ndim(shift) else 2)
    classes = np.full((count, width), np.nan)
    given = {}
    if usable.any():
        weight = None
        if training_fraction is not None and measured["snr"] is not None:
            weight = evidence_weight(combined_snr(measured["snr"][usable]))
        inputs = images[usable] if ebv is None else deredden(images[usable], ebv[usable])
        answered, p_err[usable] = predict_views(
            predictor, inputs, tta, uncertainty, shift, weight, training_fraction,
            None if outputs is None else given, classes=True)
        classes = np.full((count, answered.shape[1]), np.nan)
        classes[usable] = answered
    # A copy: p(QSO) is the column itself, bit for bit.
    probabilities = classes[:, QSO_INDEX].copy()
    if outputs is not None:
        for name, values in given.items():
            values = np.asarray(values)
            dtype = values.dtype if values.dtype.kind == "f" else np.float64
            outputs[name] = np.full((count, *values.shape[1:]), np.nan, dtype)
            outputs[name][usable] = values
    usable = _unusable_outputs(probabilities, usable, flags, outputs, classes)
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
    return Classified(probabilities, flags, usable, qflag, p_err, classes)


def _unusable_outputs(probabilities, usable, flags, outputs=None, classes=None):
    """Flag classified rows whose p(QSO) (or another class's probability) is not a finite
    probability (NaN from a 1e30 pixel), or whose other outputs (``{name: (N, ...)}``, the
    embeddings) are not all finite."""
    bad = usable & ~((probabilities >= 0) & (probabilities <= 1))  # NaN compares False
    for row in np.flatnonzero(bad):
        value = probabilities[row]
        reason = "not finite" if not np.isfinite(value) else "not a probability in [0, 1]"
        flags[row] = (f"model output is {reason} for this cutout (p_qso={value:g}); expected "
                      f"a probability in [0, 1]")
        usable[row] = False
    if classes is not None:
        # A K-class row whose p(QSO) is fine may still hold a NaN in another class.
        for row in np.flatnonzero(usable & ~((classes >= 0) & (classes <= 1)).all(axis=1)):
            flags[row] = (f"model output is not a probability in [0, 1] for every class for "
                          f"this cutout (p={classes[row].tolist()}); expected probabilities "
                          f"in [0, 1]")
            usable[row] = False
    for values in (outputs or {}).values():
        finite = np.isfinite(values).reshape(len(usable), -1).all(axis=1)
        for row in np.flatnonzero(usable & ~finite):
            flags[row] = "the model gave a non-finite output for this cutout"
            usable[row] = False
    return usable


def output_cells(ident, p_qso, flag, usable, bits, err, threshold, classes=None):
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
        classes: the row's class probabilities, (K,) in the model's class order, or None for
            a two-class model (p_star is then ``1 - p_qso``).

    Returns:
        tuple of eight str: id, p_qso (6 decimals; blank when not classified), label (QSO,
        STAR, GALAXY or blank: :func:`row_label`), flag, qflag, p_qso_err (6 decimals; blank
        when NaN), p_star (6 decimals; blank when not classified) and p_galaxy (6 decimals;
        blank when not classified or the model is two-class).

    Example:
        >>> output_cells("a", 0.61, "", True, 0, float("nan"), 0.5)
        ('a', '0.610000', 'QSO', '', '0', '', '0.390000', '')
        >>> output_cells("b", 0.2, "", True, 0, 0.01, 0.5, [0.3, 0.2, 0.5])
        ('b', '0.200000', 'GALAXY', '', '0', '0.010000', '0.300000', '0.500000')
    """
    label = row_label(p_qso, usable, threshold, classes)
    p_star, p_galaxy = other_classes(p_qso, classes)
    return (ident, f"{p_qso:.6f}" if usable else "", label, flag, str(int(bits)),
            f"{err:.6f}" if np.isfinite(err) else "",
            f"{p_star:.6f}" if usable else "",
            f"{p_galaxy:.6f}" if usable and np.isfinite(p_galaxy) else "")


def other_classes(p_qso, classes):
    """A row's p(STAR) and p(GALAXY) as floats: ``1 - p_qso`` and NaN for a two-class model
    (``classes`` None or of two classes), else its class probabilities' (STAR first,
    GALAXY at :data:`GALAXY_INDEX`).

    Example:
        >>> other_classes(0.25, None), other_classes(0.2, [0.3, 0.2, 0.5])
        ((0.75, nan), (0.3, 0.5))
    """
    if classes is None or len(classes) <= GALAXY_INDEX:
        star = classes[0] if classes is not None else 1.0 - p_qso
        return float(star), float("nan")
    return float(classes[0]), float(classes[GALAXY_INDEX])


def row_label(p_qso, usable, threshold, classes=None):
    """A row's label: ``"QSO"`` at or above ``threshold``; below it the most probable of the
    other classes (``"STAR"`` for a two-class model, ``classes`` None); ``""`` for a row that
    was not classified.

    Args:
        p_qso: p(QSO) under the prior.
        usable: the row was classified.
        threshold: p(QSO) at or above which the label is QSO.
        classes: the row's class probabilities, (K,) in the order of
            :data:`starqso.schema.LABEL_NAMES` (every supported class list's), or None.

    Example:
        >>> row_label(0.61, True, 0.5), row_label(0.2, True, 0.5), row_label(0.9, False, 0.5)
        ('QSO', 'STAR', '')
        >>> row_label(0.2, True, 0.5, [0.3, 0.2, 0.5])
        'GALAXY'
    """
    if not usable:
        return ""
    if p_qso >= threshold:
        return QSO_CLASS
    if classes is None or len(classes) <= 2:
        return LABEL_NAMES[0]
    return LABEL_NAMES[int(class_decisions(np.asarray(classes, np.float64)[None, :],
                                           threshold)[0])]


#: What a predict run counts: rows, QSO labels, GALAXY labels, rows not classified (flagged),
#: rows classified after a repair, classified rows with a non-zero qflag (caveats).
COUNT_KEYS = ("rows", "qso", "galaxy", "flagged", "repaired", "caveats")


def label_block(classified, threshold, counts):
    """The labels of a classified block (:func:`row_label`), its rows added to ``counts``.

    The one labelling and counting of ``predict``, in one process and on Dask, and of
    ``embed``.

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
    matrix = classified.classes
    rows = matrix if matrix is not None and matrix.shape[1] > 2 else [None] * len(
        classified.usable)
    labels = [row_label(p_qso, ok, threshold, classes) for p_qso, ok, classes in zip(
        classified.probabilities, classified.usable, rows, strict=False)]
    for label, flag, ok, bits in zip(labels, classified.flags, classified.usable,
                                     classified.qflag, strict=False):
        counts["rows"] += 1
        counts["qso"] += label == QSO_CLASS
        counts["galaxy"] += label == "GALAXY"
        counts["flagged"] += not ok
        counts["repaired"] += bool(ok and flag)
        counts["caveats"] += bool(ok and bits)
    return labels


def block_rows(block_ids, classified):
    """The rows of a classified block, one tuple each, as :func:`output_cells` takes them
    (less the threshold): ``(id, p_qso, flag, usable, qflag, p_err, classes)``, ``classes``
    the row's class probabilities for a K-class model and None for a two-class one.

    Example:
        >>> block = Classified(np.array([0.7]), [""], np.array([True]), np.array([0]),
        ...                    np.full(1, np.nan))
        >>> [(row[0], float(row[1]), row[6]) for row in block_rows(["a"], block)]
        [('a', 0.7, None)]
    """
    matrix = classified.classes
    rows = matrix if matrix is not None and matrix.shape[1] > 2 else [None] * len(block_ids)
    return [(ident, p_qso, flag, ok, bits, err, classes) for ident, p_qso, flag, ok, bits, err,
            classes in zip(block_ids, classified.probabilities, classified.flags,
                           classified.usable, classified.qflag, classified.p_err, rows,
                           strict=False)]


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
