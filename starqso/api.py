"""The Python API for notebooks: NumPy cutouts in, an astropy Table of predictions out.

:func:`load` opens a model once (the shipped one by default) and returns a
:class:`Classifier`; :meth:`Classifier.classify` takes ``(N, 5, H, W)`` ugriz cubes in
nanomaggies and returns the table ``starqso predict`` writes: the columns
``id, p_qso, label, flag, qflag, p_qso_err, p_star, p_galaxy`` with the same values, computed
by the same per-row core (:func:`starqso.inference.classify_block`: crop, repair, source
checks, the model, the prior, the quality bits) and written by the same row helper
(:func:`starqso.inference.output_cells`). The table's ``meta`` holds what predict's side-car
holds: the prior, threshold, temperature, model and runtime.

TensorFlow is imported only by ``runtime="keras"`` (or ``"auto"`` where it is installed);
``import starqso`` imports neither this module nor TensorFlow.

Example:
    >>> import numpy as np, starqso
    >>> classifier = starqso.load(runtime="litert", prior=0.3)
    >>> cubes = np.zeros((2, 5, 40, 40), np.float32)
    >>> table = classifier.classify(cubes, ids=["a", "b"], uncertainty=False)
    >>> table.colnames
    ['id', 'p_qso', 'label', 'flag', 'qflag', 'p_qso_err', 'p_star', 'p_galaxy']
    >>> table["flag"][0][:22], int(table["qflag"][0])
    ('cutout is all zeros in', 1)
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import Table

from starqso.errors import InputError
from starqso.inference import (
    EBV_NONE,
    OUTPUT_COLUMNS,
    block_rows,
    classify_block,
    evidence_fraction,
    model_settings,
    output_cells,
    provenance,
    resolve_runtime,
)
from starqso.inference.model import checked_predictor, model_identity, model_provenance
from starqso.io.sources import Block
from starqso.schema import NUM_BANDS, P_QSO_ERR_COLUMN, QFLAG_COLUMN

__all__ = ["Classifier", "load"]

#: Rows per call of the per-row core: predict's default ``--batch-size``, so a block holds the
#: same rows as predict's.
BATCH_SIZE = 256


def load(model=None, runtime="auto", prior=None):
    """A classifier for NumPy cutouts, with the model opened once.

    Args:
        model: an exported model folder (``starqso export``, ``starqso finetune``); None for
            the pretrained model shipped with starqso (``starqso/pretrained``), as
            ``starqso predict`` without ``--model``.
        runtime: ``"litert"`` (int8 TFLite, no TensorFlow), ``"keras"`` (TensorFlow) or
            ``"auto"``: keras where TensorFlow is installed, else litert (predict's rule).
        prior: the QSO fraction of your sample, in (0, 1); ``"train"`` for none (p at the
            training mix); None for the model's ``default_prior`` (the sky's, 0.02), as
            ``starqso predict --prior``.

    Returns:
        :class:`Classifier`.

    Raises:
        InputError: a bad model folder, runtime or prior (one line).

    Example:
        >>> import starqso
        >>> classifier = starqso.load(runtime="litert", prior=0.3)
        >>> classifier.threshold, classifier.meta["prior"]
        (0.46, 0.3)
    """
    return Classifier(model, runtime, prior)


class Classifier:
    """p(QSO) of NumPy cutouts with one model, as ``starqso predict`` gives it.

    Made by :func:`load`. Attributes: ``model_dir`` (Path), ``runtime``, ``threshold``,
    ``size`` (the model's input side in pixels), ``metadata`` (the folder's
    ``metadata.json``) and ``meta`` (what every table's ``meta`` starts from).

    Args:
        model: as :func:`load`.
        runtime: as :func:`load`.
        prior: as :func:`load`.
    """

    def __init__(self, model=None, runtime="auto", prior=None):
        runtime = resolve_runtime(runtime)
        notes = []
        self.model_dir, self.metadata, self.threshold, self.settings = model_settings(
            model, runtime, None, prior, notes.append)
        for note in notes:
            warnings.warn(note, stacklevel=3)
        self.runtime = runtime
        self.size = int(self.metadata["input_shape"][1])
        # model_settings has checked the folder (and its checksum) already.
        self._predictor = checked_predictor(self.model_dir, runtime)
        # The side-car's keys and order (starqso.inference.predict_catalog's record), less
        # those naming an input file.
        self.meta = {**model_identity(self.model_dir, runtime, self.threshold, self.settings),
                     **model_provenance(self.model_dir, self.metadata, self.settings),
                     "note": self.settings["note"]}

    def __repr__(self):
        return (f"Classifier(model={str(self.model_dir)!r}, runtime={self.runtime!r}, "
                f"prior={self.meta['prior']!r}, threshold={self.threshold!r})")

    def classify(self, cubes, ids=None, tta=False, uncertainty=True):
        """Classify ``(N, 5, H, W)`` ugriz cubes in nanomaggies.

        Each cube is centre-cropped to the model's input (:attr:`size`; ``H, W`` at least
        that), screened, classified and labelled exactly as ``starqso predict`` treats the
        same cubes in a FITS cube stack. A row that cannot be classified keeps its place,
        with ``p_qso`` NaN, an empty label and the reason in ``flag``.

        Args:
            cubes: array-like ``(N, 5, H, W)`` of real numbers, bands u, g, r, i, z.
            ids: N ids (str; blanks and repeats are refused); None for ``"0"`` ... ``"N-1"``.
            tta: average p(QSO) over the eight dihedral views (``--tta``; 8x the model work).
            uncertainty: fill ``p_qso_err`` (``--uncertainty``; one extra model evaluation
                per row without ``tta``); NaN when False.

        Returns:
            astropy ``Table`` with columns ``id`` (str), ``p_qso`` (float64, 6 decimals as
            predict writes it, NaN when not classified), ``label`` (``QSO``, ``STAR``,
            ``GALAXY`` or ""), ``flag`` (str), ``qflag`` (int32 bitmask,
            :data:`starqso.schema.QFLAG_BITS`), ``p_qso_err`` (float64, NaN when not
            computed), ``p_star`` and ``p_galaxy`` (float64, 6 decimals; ``p_star`` is
            1 - p_qso and ``p_galaxy`` NaN for a two-class model); ``meta`` holds the model,
            its classes, runtime, prior (and ``prior_vector``), threshold, temperature,
            ``tta``, ``uncertainty`` and ``created``.

        Raises:
            InputError: (a ``ValueError``) cubes that are not a real ``(N, 5, H, W)`` array
                at least the model's input in ``H`` and ``W``, or bad ids.

        Example:
            >>> import numpy as np, starqso
            >>> table = starqso.load(runtime="litert").classify(np.ones((1, 5, 32, 32)))
            >>> table["id"].tolist(), table.meta["runtime"]
            (['0'], 'litert')
        """
        cubes = self._checked_cubes(cubes)
        ids = _checked_ids(ids, len(cubes))
        rows = []
        for start in range(0, len(cubes), BATCH_SIZE):
            stop = min(start + BATCH_SIZE, len(cubes))
            # float32 as a stack source reads them; rows larger than the model's input are
            # cropped (and repaired) row by row by the core's prepare_object.
            block = Block(ids[start:stop], np.asarray(cubes[start:stop], np.float32),
                          [f"cube {row} of the array" for row in range(start, stop)], {})
            result = classify_block(block, self._predictor, self.size, self.settings["shift"],
                                    tta, uncertainty, self.metadata.get("quality"),
                                    evidence_fraction(self.settings))
            rows.extend(output_cells(*row[:6], self.threshold, row[6])
                        for row in block_rows(block.ids, result))
        meta = {**self.meta, "tta": bool(tta), "uncertainty": bool(uncertainty),
                "ebv": EBV_NONE, "rows": len(rows), **provenance()}
        return _table(rows, meta)

    def _checked_cubes(self, cubes):
        try:
            array = np.asarray(cubes)
        except (TypeError, ValueError) as err:  # ragged nested lists
            raise InputError(f"cubes must be an (N, 5, H, W) array of ugriz nanomaggies. "
                             f"Received: shape=unknown ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
        shape = array.shape
        if array.ndim != 4 or shape[1] != NUM_BANDS:
            raise InputError(f"cubes must be an (N, 5, H, W) array of ugriz nanomaggies "
                             f"(bands on axis 1). Received: shape={shape}")
        if array.dtype.kind not in "iuf":
            raise InputError(f"cubes must be real numbers (integer or float nanomaggies). "
                             f"Received: shape={shape}, dtype={array.dtype}")
        if shape[2] < self.size or shape[3] < self.size:
            raise InputError(f"cubes must be at least {self.size}x{self.size} pixels (the "
                             f"model's input) to crop. Received: shape={shape}")
        return array


def _checked_ids(ids, count):
    """The ids as stripped str, one per cube, none blank or repeated (as predict reads them)."""
    if ids is None:
        return [str(row) for row in range(count)]
    if isinstance(ids, (str, bytes)):
        raise InputError(f"ids must be a sequence of {count} ids, one per cube. Received: "
                         f"ids={ids!r}")
    ids = [value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_))
           else str(value) for value in ids]
    if len(ids) != count:
        raise InputError(f"ids must hold one id per cube. Received: {len(ids)} ids for "
                         f"{count} cubes")
    ids = [value.strip() for value in ids]
    blank = [row for row, value in enumerate(ids) if not value]
    if blank:
        raise InputError(f"ids must not be blank. Received: blank id at position {blank[0]}")
    if len(set(ids)) != count:
        seen = set()
        repeat = next(value for value in ids if value in seen or seen.add(value))
        raise InputError(f"ids must not repeat. Received: id {repeat!r} more than once")
    return ids


def _table(rows, meta):
    """The table of :func:`~starqso.inference.output_cells` rows, typed as predict's FITS
    output types them (text as str here, not bytes)."""
    columns = list(zip(*rows, strict=False)) or [()] * len(OUTPUT_COLUMNS)

    def numbers(cells):
        return np.array([float(cell) if cell else np.nan for cell in cells], np.float64)

    values = dict(zip(OUTPUT_COLUMNS, columns, strict=False))
    return Table({"id": np.array(values["id"], str),
                  "p_qso": numbers(values["p_qso"]),
                  "label": np.array(values["label"], str),
                  "flag": np.array(values["flag"], str),
                  QFLAG_COLUMN: np.array([int(cell) for cell in values[QFLAG_COLUMN]], np.int32),
                  P_QSO_ERR_COLUMN: numbers(values[P_QSO_ERR_COLUMN]),
                  **{name: numbers(values[name]) for name in OUTPUT_COLUMNS[6:]}}, meta=meta)
