"""Classify cutouts with an exported model: `starqso predict`.

Rows stream through in batches (memory stays flat), each row's cutout is read, centre-cropped
to the model's input size and classified. Every input row keeps its place in the output:

* a row that cannot be classified (missing or broken file, cutout smaller than the model
  input, all zeros, NaN/inf at the object; no source detected at the centre, a pixel beyond
  1e7 nanomaggies such as a 1e30 no-data fill, sky noise not plausible in nanomaggies, see
  :mod:`starqso.preprocessing.screening`; a model output that is not a finite probability)
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
(:func:`starqso.preprocessing.screening.combined_snr`): 0 at the detection limit, 1 from
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
(:func:`starqso._util.locking.exclusive_lock`); a second run on the same output, with or without
``--resume``, is refused with one line naming the output and the owner's pid. An output that
is one of the inputs (the catalogue, a cutout or spectrum file it names, a cutout of the
folder, a model file; the same file through a link too), or that is a folder, is refused
before anything is written (:mod:`starqso._util.output_checks`).

Two runtimes: ``keras`` (TensorFlow, the ``.keras`` model) and ``litert`` (the TFLite model
through ``ai_edge_litert``). The LiteRT path imports neither TensorFlow nor Keras, so it runs
on a machine with only ``pip install ".[litert]"``-style light dependencies.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib

from starqso._util.atomic import write_text_atomically
from starqso._util.locking import exclusive_lock
from starqso._util.output_checks import model_inputs, refuse_output_among_inputs, source_inputs
from starqso.errors import InputError
from starqso.inference.classify import (
    COUNT_KEYS,
    OUTPUT_COLUMNS,
    block_rows,
    classify_block,
    label_block,
    output_cells,
    refuse_flagged,
)
from starqso.inference.model import (
    EBV_COLUMN,
    block_ebv,
    checked_predictor,
    ebv_setting,
    evidence_fraction,
    model_identity,
    model_provenance,
    model_settings,
    parse_ebv,
    prior_label,
)
from starqso.inference.output_table import csv_cells, finish_output, provenance
from starqso.inference.resume import (
    open_partial,
    partial_paths,
    refuse_linked_partial,
    resumed_rows,
)
from starqso.io.catalog import sidecar_path
from starqso.io.sources import open_source


def _refuse_output_among_inputs(rows_source, output, model_dir, csv_output):
    """The one rule (:mod:`starqso._util.output_checks`): the output, and a CSV's side-car, are
    neither a folder nor any file the run reads."""
    import itertools

    inputs, trees = source_inputs(rows_source)
    refuse_output_among_inputs(output, itertools.chain(inputs, model_inputs(model_dir)),
                               trees=trees, beside=[sidecar_path(output)] if csv_output else [])


def predict_catalog(source, output, model_dir=None, runtime="keras", batch_size=256,
                    threshold=None, progress=None, strict=False, resume=False, log=None,
                    prior=None, tta=False, id_column=None, keep=(), command=None,
                    uncertainty=True, ebv=None):
    """Classify every row of ``source`` and write ``id, p_qso, label, flag, qflag,
    p_qso_err, p_star, p_galaxy`` to ``output``.

    p_qso is the model's calibrated p(QSO), averaged over the eight dihedral views with
    ``tta``, then corrected to ``prior`` (see the module docstring); the label is QSO where
    it reaches the threshold, else the most probable other class (STAR for a two-class
    model, whose p_star is 1 - p_qso and whose p_galaxy is blank; the record's ``classes``
    says which: :func:`~starqso.inference.two_class_note`).
    A CSV output gets the side-car :func:`sidecar_path` and a FITS output header cards
    (``PRIOR``, ``PRIORVEC``, ``PRIORSRC``, ``THRESH``, ``TEMPER``, ``TRNFRAC``, ``TTA``,
    ``RUNTIME``) saying which prior (QSO fraction, and fraction per class), threshold,
    temperature and runtime the probabilities come from.

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
        prior: the QSO fraction of the sample, in (0, 1), or class fractions by name
            (``"QSO=0.02,GALAXY=0.6"``, :func:`~starqso.inference.resolve_prior`); ``"train"``
            for none (p at the training mix); None for the model's ``default_prior`` (none
            for older models).
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
        dict summary: rows, qso, galaxy (GALAXY labels), flagged (not classified), repaired,
        caveats (classified rows with a non-zero qflag), resumed (rows taken
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

    rows_source = open_source(source, id_column=id_column, keep=keep, ebv=ebv == EBV_COLUMN)
    ebv = ebv_setting(ebv, rows_source)
    columns = (*OUTPUT_COLUMNS, *rows_source.keep_columns)
    ids = rows_source.ids()
    _refuse_output_among_inputs(rows_source, output, model_dir, suffix != ".fits")
    source_name = str(pathlib.Path(source).resolve())

    # What a partial file must match to be resumed, and what the finished output records:
    # content hashes too, so a replaced model file or an edited catalogue is not continued.
    common = {"source": source_name, "rows": len(ids),
              "catalog_sha256": rows_source.fingerprint(),
              **model_identity(model_dir, runtime, threshold, settings),
              "tta": bool(tta), "uncertainty": bool(uncertainty),
              "keep": list(rows_source.keep_columns), "ebv": ebv}
    identity = {**common, "prior_shift": settings["shift"]}
    record = {"output": output.name, **common,
              **model_provenance(model_dir, metadata, settings)}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_paths(output)
    # One writer per output, for the whole run (--resume included): see starqso._util.locking.
    with exclusive_lock(output):
        refuse_linked_partial(partial)
        done = resumed_rows(partial, ids, identity, log, columns) if resume else None
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
            counts["galaxy"] += label == "GALAXY"
            counts["flagged"] += bool(flag) and not p_qso
            counts["repaired"] += bool(flag) and bool(p_qso)
            counts["caveats"] += bool(p_qso) and qflag not in ("", "0")
        counts["resumed"] = counts["rows"]
        # The folder was checked above, before the catalogue: a bad catalogue fails before
        # TensorFlow is imported, and the model files are read once.
        predictor = checked_predictor(model_dir, runtime)
        if done is None:
            write_text_atomically(partial[1], json.dumps(identity, indent=2) + "\n")
        try:
            with open_partial(partial[0], fresh=done is None) as stream:
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
                    kept = [csv_cells(block.keep[name]) for name in rows_source.keep_columns]
                    for row, (ident, p_qso, flag, ok, bits, err, classes) in enumerate(
                            block_rows(batch_ids, classified)):
                        writer.writerow((*output_cells(ident, p_qso, flag, ok, bits, err,
                                                       threshold, classes),
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
        finish_output(partial[0], output, suffix == ".fits", record, rows_source.keep_columns)
        partial[1].unlink(missing_ok=True)
    return {**counts, "output": str(output), "prior": prior_label(settings), "record": record}
