"""Embeddings of cutouts for discovery: ``starqso embed``, and the reference of the outlier score.

Every row of an input (any layout ``starqso predict`` reads) gets:

* ``vector``: the generated spectral feature vector (the generator's, zero noise, as inside the
  deployed classifier), the method's own embedding: the 128 numbers that the spectrum encoder
  would give the object's spectrum, predicted from its image;
* ``metric``: the metric-learning head's unit-norm embedding of that vector (and the
  photometry), when the model has one (``model.metric_loss``: Proxy-NCA or
  Normalised-Softmax on STAR and the QSO redshift bins of :data:`starqso.schema.FINE_CLASS_NAMES`);
* ``p_qso``, ``label``, ``p_star`` and ``p_galaxy`` exactly as ``predict`` gives them
  (calibrated, at the chosen prior, the model's threshold; p_galaxy NaN for a two-class
  model), ``flag`` and ``qflag`` as ``predict`` sets them;
* ``outlier``: the distance to the 10th nearest of the model's training objects in the
  metric space (the vector space without a head), over the median of that distance among the
  training objects themselves (:func:`starqso.discovery.outlier_scores`): about 1 for a
  typical object, larger for an unusual one. The training objects' embeddings travel in the
  export folder (``embedding_reference.npz``).

Rows that cannot be classified keep their place, with empty (NaN) embeddings and the reason in
``flag``. The table is written by :func:`starqso.io.embeddings.write_embeddings` (CSV, FITS or
Parquet), whole and at once. Embedding needs the Keras model (TensorFlow): the TFLite files
hold p(QSO) only.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

from starqso import __version__
from starqso._util.atomic import write_bytes_atomically, write_json_atomically
from starqso._util.extras import require_tensorflow
from starqso._util.jsonfile import read_json
from starqso._util.locking import exclusive_lock
from starqso._util.output_checks import model_inputs, refuse_output_among_inputs, source_inputs
from starqso.deploy.folder import RUNTIME_FILES, check_checksum, file_sha256
from starqso.discovery import outlier_scores
from starqso.errors import InputError
from starqso.inference import (
    EBV_COLUMN,
    block_ebv,
    block_rows,
    classify_block,
    default_model_dir,
    ebv_setting,
    evidence_fraction,
    model_settings,
    other_classes,
    parse_ebv,
    predict_views,
    prior_label,
    provenance,
    row_label,
    sidecar_path,
)
from starqso.io.embeddings import EmbeddingTable, write_embeddings
from starqso.io.safe_read import read_npz
from starqso.io.sources import Source, open_source
from starqso.probability import calibrate, calibrate_classes, evidence_weight
from starqso.schema import QFLAG_BITS

#: The training objects' embeddings in an export folder.
EMBEDDING_REFERENCE = "embedding_reference.npz"
#: At most this many training objects in the reference (5,000 x 128 float16 = 1.3 MB).
REFERENCE_ROWS = 5000
#: The neighbour whose distance is the outlier score.
OUTLIER_K = 10
_BATCH = 512


def _spaces(embedder, images, batch_size=_BATCH):
    """``{"p_qso", "vector"[, "metric"]}`` of the embedding model on ``images``."""
    outputs = {}
    for start in range(0, len(images), batch_size):
        batch = embedder.predict_on_batch({"image": np.asarray(images[start:start + batch_size],
                                                               np.float32)})
        for name, value in batch.items():
            outputs.setdefault(name, []).append(np.asarray(value, np.float32))
    return {name: np.concatenate(parts).reshape(len(images), -1)
            for name, parts in outputs.items()}


def write_embedding_reference(folder, embedder, images, rows=REFERENCE_ROWS):
    """Write ``folder/embedding_reference.npz``: embeddings of (up to ``rows``) training cutouts.

    Args:
        folder: the export folder being built.
        embedder: :meth:`~starqso.models.StarQSOClassifier.embedding_model` of the model.
        images: raw training cutouts (N, S, S, 5); the first ``rows`` are used (the recorded
            split's order, already shuffled).
        rows: the most objects kept.

    Returns:
        dict for ``metadata.json: embedding``: ``file``, ``rows``, ``spaces`` (name ->
        dimension) and ``outlier_k``.
    """
    spaces = _spaces(embedder, images[:rows])
    for key in ("p_qso", "probabilities"):  # the class output, not an embedding space
        spaces.pop(key, None)
    buffer = io.BytesIO()
    # float16 halves the file (the shipped model's: 1.3 MB); the k-th-neighbour distances
    # the outlier score divides change by well under 1%.
    np.savez(buffer, **{name: value.astype(np.float16) for name, value in spaces.items()})
    write_bytes_atomically(pathlib.Path(folder) / EMBEDDING_REFERENCE, buffer.getvalue())
    return {"file": EMBEDDING_REFERENCE, "rows": int(len(spaces["vector"])),
            "spaces": {name: int(value.shape[1]) for name, value in spaces.items()},
            "outlier_k": OUTLIER_K}


def load_embedding_reference(model_dir, metadata):
    """The training embeddings of an export folder, ``{space: (N, d) float32}``; None without.

    The file's SHA-256 is checked against ``metadata.json`` like the model files.

    Raises:
        InputError: the file is listed but missing, damaged or changed, declares more data
            than it holds (:func:`~starqso.deploy.folder.read_npz`), or a space is not a finite
            (rows, dimension) matrix of more than ``OUTLIER_K`` rows and the dimension
            ``metadata.json`` gives.
    """
    path = pathlib.Path(model_dir) / EMBEDDING_REFERENCE
    if "embedding" not in metadata:
        return None
    if not path.is_file():
        raise InputError(f"{model_dir}/metadata.json lists {EMBEDDING_REFERENCE} but the file "
                         f"is missing; restore or re-export the model. Received: {model_dir}")
    check_checksum(metadata, path, pathlib.Path(model_dir) / "metadata.json")
    declared = metadata["embedding"].get("spaces", {}) \
        if isinstance(metadata["embedding"], dict) else {}
    spaces = {}
    for name, values in read_npz(path, "embedding reference").items():
        shape = values.shape
        if len(shape) != 2 or shape[1] < 1:
            raise InputError(f"embedding reference space {name!r} must be a (rows, dimension) "
                             f"matrix. Received: shape={shape} in file {path}")
        if name in declared and declared[name] != shape[1]:
            raise InputError(f"embedding reference space {name!r} must have the dimension "
                             f"metadata.json gives ({declared[name]}). Received: "
                             f"shape={shape} in file {path}")
        # The outlier score compares each row with its OUTLIER_K nearest others.
        if shape[0] <= OUTLIER_K:
            raise InputError(f"embedding reference space {name!r} needs more than "
                             f"{OUTLIER_K} rows (the outlier score's neighbours). Received: "
                             f"{shape[0]} row{'s' * (shape[0] != 1)} in file {path}")
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"embedding reference space {name!r} must hold finite numbers. "
                             f"Received: {int((~np.isfinite(values)).sum())} NaN/inf "
                             f"values in file {path}")
        spaces[name] = values
    return spaces


class Embedder:
    """The exported Keras model's embeddings and calibrated p(QSO) (imports TensorFlow).

    Args:
        model_dir: export folder; the shipped model when None.
        prior: as ``predict --prior`` (None: the model's default prior).
        threshold: label threshold; the model's own when None.
        log: optional callable for the prior's note.

    Example:
        >>> embedder = Embedder(None)  # doctest: +SKIP
        >>> embedder(cutouts)["vector"].shape  # doctest: +SKIP
        (N, 128)
    """

    def __init__(self, model_dir=None, prior=None, threshold=None, log=None):
        self.model_dir, self.metadata, self.threshold, self.settings = model_settings(
            model_dir, "keras", threshold, prior, log)
        self.reference = load_embedding_reference(self.model_dir, self.metadata)
        require_tensorflow("starqso embed", note="embeddings come from the Keras model")
        from starqso.deploy.folder import load_keras_model

        model = load_keras_model(self.model_dir / RUNTIME_FILES["keras"], checked=True)
        # The export's model is the calibrated wrapper of the run's StarQSOClassifier.
        classifier = getattr(model, "classifier", model)
        if not hasattr(classifier, "embedding_model"):
            raise InputError(f"the model has no generated spectral vector to embed (a "
                             f"{type(classifier).__name__}). Received: {self.model_dir}")
        self.embedder = classifier.embedding_model()
        self.temperature = float(self.metadata.get("temperature") or 1.0)
        self.size = int(self.metadata["input_shape"][1])

    @property
    def spaces(self):
        """The embedding spaces this model gives, in output order."""
        return ("vector", "metric") if "metric" in self.embedder.output else ("vector",)

    def outputs(self, images):
        """The model's outputs for raw cutouts (N, S, S, 5): ``{"p_qso", "vector"[,
        "metric"]}``, p_qso calibrated at the training mix as the exported classifier gives it
        (:func:`starqso.probability.calibrate` by the model's temperature); a K-class model's
        ``{"probabilities", ...}``, (N, K), calibrated the same way
        (:func:`starqso.probability.calibrate_classes`).

        The predictor :func:`starqso.inference.classify_block` runs for ``embed``: it moves
        p_qso to the prior and flags rows as ``predict`` does, and hands the spaces back.
        """
        outputs = _spaces(self.embedder, images)
        if "probabilities" in outputs:
            outputs["probabilities"] = calibrate_classes(outputs["probabilities"],
                                                         self.temperature)
            outputs.pop("p_qso", None)
        else:
            outputs["p_qso"] = calibrate(outputs["p_qso"], self.temperature)
        return outputs

    def __call__(self, images, snr=None):
        """``{"p_qso", "vector"[, "metric"]}`` for raw cutouts (N, S, S, 5), p_qso under the
        prior as ``predict`` gives it (:func:`starqso.inference.predict_views`).

        ``snr``, the rows' combined five-band detection S/N, makes a faint row's p_qso lean on the
        prior as ``predict``'s does (:func:`starqso.probability.evidence_weight`).
        """
        fraction = evidence_fraction(self.settings)
        weight = None if snr is None or fraction is None else evidence_weight(snr)
        outputs = {}
        p_qso, _ = predict_views(self.outputs, images, uncertainty=False,
                                 shift=self.settings["shift"], weight=weight,
                                 training_fraction=fraction, outputs=outputs)
        return {"p_qso": p_qso, **outputs}


def outlier_space(spaces):
    """The space the outlier score is measured in: the metric head's when there is one."""
    return "metric" if "metric" in spaces else "vector"


def embed_catalog(source, output, model_dir=None, batch_size=256, prior=None,
                  id_column=None, progress=None, log=None, command=None, ebv=None):
    """Embed every row of ``source`` and write the table to ``output`` (see module docstring).

    Args:
        source: any input ``starqso predict`` reads (:func:`starqso.io.sources.open_source`).
        output: ``.csv`` (+ side-car ``.json``), ``.fits`` or ``.parquet`` file.
        model_dir: export folder; the shipped model when None.
        batch_size: cutouts per batch.
        prior: the sample's QSO fraction for p_qso, as ``predict --prior``.
        id_column: the id column of Parquet, HATS, zarr metadata and stack tables.
        progress: optional callable receiving rows done and the total.
        log: optional callable for notes.
        command: the command line for the provenance record.
        ebv: the Galactic E(B-V) cutouts are de-reddened by, as ``predict --ebv``
            (:func:`starqso.inference.predict_catalog`).

    Returns:
        dict summary: rows, embedded, flagged, spaces (name -> dimension), output, record.

    Raises:
        InputError: bad options, model folder, input, or an output that is the input.

    Example:
        >>> embed_catalog("demo/catalog.csv", "embeddings.parquet")  # doctest: +SKIP
    """
    import itertools

    output = pathlib.Path(output)
    if output.suffix.lower() not in (".csv", ".fits", ".parquet"):
        raise InputError(f"--output must end in .csv, .fits or .parquet. Received: {output}")
    ebv = parse_ebv(ebv)
    rows_source = open_source(source, id_column=id_column, ebv=ebv == EBV_COLUMN)
    # Before the model loads: an output that is one of the files read (or a folder) is refused.
    inputs, trees = source_inputs(rows_source)
    model_files = model_inputs(model_dir if model_dir is not None else default_model_dir())
    refuse_output_among_inputs(
        output, itertools.chain(inputs, model_files), trees=trees,
        beside=[sidecar_path(output)] if output.suffix.lower() == ".csv" else [])
    embedder = Embedder(model_dir, prior=prior, log=log)
    with exclusive_lock(output):
        table = embed_rows(rows_source, embedder, batch_size=batch_size, id_column=id_column,
                           progress=progress, command=command, ebv=ebv)
        write_embeddings(table, output)
    embedded = np.isfinite(table.columns["p_qso"])
    return {"rows": int(len(table.ids)), "embedded": int(embedded.sum()),
            "flagged": int((~embedded).sum()), "spaces": table.record["spaces"],
            "prior": prior_label(embedder.settings), "output": str(output),
            "record": table.record}


def embed_rows(source, embedder, batch_size=256, id_column=None, progress=None, command=None,
               ebv=None):
    """The :class:`~starqso.io.embeddings.EmbeddingTable` of every row of ``source``.

    Args:
        source: any input ``starqso predict`` reads, or its opened
            :class:`~starqso.io.sources.Source`.
        embedder: an :class:`Embedder`.
        batch_size, id_column, progress, command, ebv: as :func:`embed_catalog`.

    Returns:
        an :class:`~starqso.io.embeddings.EmbeddingTable` in input order.

    Example:
        >>> table = embed_rows("cutouts/", Embedder(None))  # doctest: +SKIP
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1. Received: {batch_size}")
    ebv = parse_ebv(ebv)
    rows_source = (source if isinstance(source, Source) else
                   open_source(source, id_column=id_column, ebv=ebv == EBV_COLUMN))
    ebv = ebv_setting(ebv, rows_source)
    ids = np.asarray(rows_source.ids(), dtype=str)
    size, count = embedder.size, len(ids)
    dims = (embedder.embedder.output[name].shape[-1] for name in embedder.spaces)
    spaces = {name: np.full((count, dim), np.nan, np.float32)
              for name, dim in zip(embedder.spaces, dims, strict=False)}
    p_qso = np.full(count, np.nan)
    labels = np.full(count, "", dtype=object)
    others = np.full((count, 2), np.nan)  # p_star, p_galaxy
    flags = np.full(count, "", dtype=object)
    qflag = np.full(count, QFLAG_BITS["NOT_CLASSIFIED"], np.int64)
    done = 0
    for partition in rows_source.partitions(batch_size):
        block = rows_source.read(partition, size, start=partition.start)
        rows = np.arange(partition.start, partition.start + len(block.ids))
        # predict's per-row core, with the embedding model as its predictor.
        outputs = {}
        classified = classify_block(
            block, embedder.outputs, size, embedder.settings["shift"], uncertainty=False,
            reference=embedder.metadata.get("quality"),
            training_fraction=evidence_fraction(embedder.settings),
            ebv=block_ebv(ebv, rows_source, block), outputs=outputs)
        usable = classified.usable
        p_qso[rows[usable]] = classified.probabilities[usable]
        for row, (_, p, _, ok, _, _, classes) in zip(rows, block_rows(block.ids, classified),
                                                    strict=False):
            # predict's labels and p_star / p_galaxy (GALAXY below the threshold too).
            labels[row] = row_label(p, ok, embedder.threshold, classes)
            if ok:
                others[row] = other_classes(p, classes)
        flags[rows] = classified.flags
        qflag[rows] = classified.qflag
        for name in spaces:
            if name in outputs:
                spaces[name][rows[usable]] = outputs[name][usable]
        done += len(block.ids)
        if progress is not None:
            progress(done, count)
    embedded = np.isfinite(p_qso)
    outlier = np.full(count, np.nan)
    space = outlier_space(spaces)
    if embedder.reference is not None and embedded.any() and space in embedder.reference:
        outlier[embedded] = outlier_scores(embedder.reference[space],
                                           spaces[space][embedded], k=OUTLIER_K)
    record = {"source": str(pathlib.Path(rows_source.path).resolve()), "rows": int(count),
              "model": str(embedder.model_dir.resolve()),
              "prior": embedder.settings["prior"], "prior_source":
              embedder.settings["source"], "classes": embedder.settings.get("classes"),
              "prior_vector": embedder.settings.get("prior_vector"),
              "threshold": embedder.threshold,
              "temperature": embedder.temperature, "ebv": ebv,
              "spaces": {name: int(value.shape[1]) for name, value in spaces.items()},
              "outlier_space": space if np.isfinite(outlier).any() else None,
              "outlier_k": OUTLIER_K, "starqso_version": __version__,
              **provenance(command)}
    table = EmbeddingTable(
        ids=ids, spaces=spaces,
        columns={"p_qso": p_qso, "label": labels.astype(str), "flag": flags.astype(str),
                 "qflag": qflag, "outlier": outlier, "p_star": others[:, 0],
                 "p_galaxy": others[:, 1]},
        record=record)
    return table


def add_embedding_reference(model_dir, images, rows=REFERENCE_ROWS):
    """Give an export folder made before embeddings its ``embedding_reference.npz``.

    Writes the reference of ``images`` (training-like cutouts: the run's training split, or
    the simulator's objects for a model trained on simulations) and adds ``embedding`` and
    its SHA-256 to ``metadata.json``. The model files are not touched.

    Args:
        model_dir: the export folder.
        images: raw cutouts (N, S, S, 5).
        rows: the most objects kept.

    Returns:
        the ``metadata.json: embedding`` entry.

    Example:
        >>> add_embedding_reference("runs/old/export", train_images)  # doctest: +SKIP
    """
    embedder = Embedder(model_dir, prior="train")
    info = write_embedding_reference(embedder.model_dir, embedder.embedder, images, rows)
    metadata_path = embedder.model_dir / "metadata.json"
    metadata = read_json(metadata_path)
    metadata["embedding"] = info
    metadata.setdefault("sha256", {})[EMBEDDING_REFERENCE] = file_sha256(
        embedder.model_dir / EMBEDDING_REFERENCE)
    write_json_atomically(metadata_path, metadata, sort_keys=False)
    return info
