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
from starqso.probability import apply_prior, evidence_weight, temper
from starqso.schema import P_QSO_ERR_COLUMN, QFLAG_BITS, QFLAG_COLUMN

# The first four are the original columns (readers of older outputs find them where they
# were); the quality bitmask and the uncertainty follow (starqso.preprocessing.qflags).
OUTPUT_COLUMNS = ("id", "p_qso", "label", "flag", QFLAG_COLUMN, P_QSO_ERR_COLUMN)


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
            model's: :meth:`starqso.discovery.embed.Embedder.outputs`) instead of p(QSO) alone;
            ``outputs[name]`` is then its ``name`` of the cutouts as given (the first view).

    Returns:
        ``(p, p_err)``, float64 (N,) each.

    Example:
        >>> p, p_err = predict_views(lambda x: np.full(len(x), 0.5), np.ones((2, 4, 4, 5)))
        >>> p.tolist(), p_err.tolist()
        ([0.5, 0.5], [0.0, 0.0])
    """
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


# The module-level name the per-row core calls (tests replace it to count calls).
_prepare_block = prepare_block


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
