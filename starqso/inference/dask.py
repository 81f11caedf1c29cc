"""Survey-scale prediction on Dask: partitions in parallel, one Parquet file each.

``starqso predict INPUT --output OUT --workers N`` (a local Dask cluster of N one-thread
worker processes) or ``--scheduler ADDRESS`` (the user's cluster: dask-jobqueue on Slurm,
dask-kubernetes, ``dask scheduler`` + ``dask worker``) runs :func:`predict_dataset`:

* the input (any layout of :mod:`starqso.io.sources`) is cut into partitions of at most
  ``partition_rows`` rows that never cross a physical piece (a zarr batch, a Parquet file, a
  HATS pixel);
* each partition is one Dask task: the worker reads its rows, flags and classifies them exactly
  as the single-process ``predict`` does (:func:`starqso.inference.classify_block`), and
  writes ``part-NNNNNN.parquet`` atomically into a staging folder beside the output. The model
  is loaded once per worker process (one LiteRT interpreter or Keras model each), the input
  opened once per worker;
* Dask retries the partition of a worker that dies on another worker; since a partition file
  appears only whole, and a retried partition writes the same bytes, no row is lost or doubled;
* ``resume`` skips the partitions whose files are already in the staging folder of the same
  run (same input, model file, threshold, prior, tta, partition size);
* when every partition is done the staging folder becomes ``OUT`` by one rename: a Parquet
  dataset (``part-*.parquet`` in input order, each with starqso's provenance in its key-value
  metadata under ``starqso``, and ``_starqso.json``). When the input was a HATS catalogue, OUT
  is a HATS catalogue written with lsdb instead (``ra``/``dec`` kept, the same partitions),
  with the provenance in ``hats.properties`` (``starqso_*`` keys).

Every worker needs starqso with the ``survey`` extra, and the input, the model folder and the
output's folder on a file system they all see.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import time

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.inference.classify import COUNT_KEYS, OUTPUT_COLUMNS
from starqso.schema import P_QSO_ERR_COLUMN, QFLAG_COLUMN

#: Rows per partition by default: a few MB of Parquet, a minute of one worker's time.
DEFAULT_PARTITION_ROWS = 50_000
RECORD_FILE = "_starqso.json"
_IDENTITY_FILE = ".identity.json"

# Per worker process: the opened model and inputs, loaded by the first task that needs them.
_CACHE = {}


def _keep_freed_memory():
    """Let this worker process reuse freed batch buffers instead of returning them to the OS.

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off
    glibc's adaptive mmap threshold: every batch's multi-MB arrays are then fresh ``mmap``s,
    page-faulted in and unmapped again, which made a worker 35% slower than the same work in
    a plain process (2,600 -> 1,700 rows/s, a third of the time in the kernel). Setting the
    thresholds explicitly (32 MiB, glibc's upper limit for the mmap one) keeps them in the
    heap. Once per process; not glibc (macOS): nothing to do.
    """
    if _CACHE.get("malloc") is not None:
        return
    _CACHE["malloc"] = False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        _CACHE["malloc"] = bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                                and libc.mallopt(m_trim_threshold, 64 * 2**20))
    except (OSError, AttributeError):
        pass


def part_name(index):
    """The file of partition ``index`` in the output dataset: ``part-000012.parquet``."""
    return f"part-{index:06d}.parquet"


def _predictor(model_dir, runtime, model_sha256):
    key = ("model", model_dir, runtime, model_sha256)
    if key not in _CACHE:
        from starqso.deploy.folder import RUNTIME_FILES
        from starqso.inference.model import KerasPredictor, LiteRTPredictor

        # One thread per worker process: parallelism comes from the workers, and more threads
        # per interpreter would only fight over the same cores.
        _CACHE[key] = (KerasPredictor(model_dir, checked=True) if runtime == "keras" else
                       LiteRTPredictor(pathlib.Path(model_dir) / RUNTIME_FILES["litert"],
                                       num_threads=1))
    return _CACHE[key]


def _source(source):
    key = ("source", type(source).__name__, json.dumps(source._arguments(), sort_keys=True,
                                                        default=str))
    return _CACHE.setdefault(key, source)


def _table_bytes(columns, keep, record):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {"id": pa.array(columns["id"], pa.string()),
              "p_qso": pa.array(columns["p_qso"], pa.float64(),
                                mask=np.isnan(np.asarray(columns["p_qso"], np.float64))),
              "label": pa.array(columns["label"], pa.string()),
              "flag": pa.array(columns["flag"], pa.string()),
              QFLAG_COLUMN: pa.array(columns[QFLAG_COLUMN], pa.int32()),
              P_QSO_ERR_COLUMN: pa.array(columns[P_QSO_ERR_COLUMN], pa.float64(),
                                         mask=np.isnan(np.asarray(columns[P_QSO_ERR_COLUMN],
                                                                  np.float64)))}
    for name, values in keep.items():
        arrays[name] = pa.array(values)
    table = pa.table(arrays).replace_schema_metadata(
        {"starqso": json.dumps(record, sort_keys=True)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def run_partition(job, partition):
    """Classify one partition and write its Parquet file (a Dask task; runs on a worker).

    Args:
        job: the run's settings (see :func:`predict_dataset`), the same for every task.
        partition: a :class:`~starqso.io.sources.Partition`.

    Returns:
        dict: ``index`` and the counts of :func:`starqso.inference.label_block`.

    Raises:
        InputError: with ``strict``, the partition's first flagged row.
    """
    from starqso._util.atomic import write_bytes_atomically
    from starqso.inference.classify import classify_block, label_block, refuse_flagged
    from starqso.inference.model import block_ebv

    _keep_freed_memory()
    source = _source(job["source"])
    predictor = _predictor(job["model_dir"], job["runtime"], job["model_sha256"])
    size, threshold = job["size"], job["threshold"]
    columns = {name: [] for name in OUTPUT_COLUMNS}
    keep = {}
    counts = {"index": partition.index, **dict.fromkeys(COUNT_KEYS, 0)}
    for start in range(partition.start, partition.stop, job["batch_size"]):
        block = source.read(partition, size, start=start,
                            stop=min(start + job["batch_size"], partition.stop))
        classified = classify_block(
            block, predictor, size, job["shift"], job["tta"], job["uncertainty"],
            job["quality"], job["training_fraction"], block_ebv(job["ebv"], source, block))
        if job["strict"]:
            refuse_flagged(classified.flags, block.ids, start, job["input"])
        labels = label_block(classified, threshold, counts)
        for ident, p_qso, flag, ok, bits, err, label in zip(block.ids, *classified, labels,
                                                            strict=False):
            columns["id"].append(ident)
            columns["p_qso"].append(float(p_qso) if ok else np.nan)
            columns["label"].append(label)
            columns["flag"].append(flag)
            columns[QFLAG_COLUMN].append(int(bits))
            columns[P_QSO_ERR_COLUMN].append(float(err))
        for name in source.keep_columns:  # block.keep also holds an unkept ebv column
            keep.setdefault(name, []).append(np.asarray(block.keep[name]))
    keep = {name: np.concatenate(parts) for name, parts in keep.items()}
    payload = _table_bytes(columns, keep, job["record"])
    write_bytes_atomically(os.path.join(job["staging"], part_name(partition.index)), payload)
    return counts


def _client(workers, scheduler, log):
    require_survey("starqso predict --workers/--scheduler", "dask", "distributed")
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise InputError(f"could not reach the Dask scheduler ({err}). Received: "
                             f"--scheduler {scheduler}") from err
        return client, None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def _read_identity(staging):
    try:
        return strict_json.read_json(staging / _IDENTITY_FILE)
    except strict_json.DuplicateKeyError:
        raise
    except (OSError, ValueError):
        return None


def _fresh_staging(staging):
    """An empty staging folder at ``staging`` (``.OUT.partial``), made by this run.

    Its name is fixed, since ``resume`` finds an interrupted run's partitions there; so an
    existing one is removed only when it is a staging folder of starqso's (it holds the run
    identity file, or nothing), never a link or a user's folder of that name.

    Raises:
        InputError: ``staging`` is a link, a file, or a folder starqso did not make.
    """
    if os.path.lexists(staging):
        if staging.is_symlink() or not staging.is_dir():
            raise InputError(f"{staging} is in the way of this run's staging folder and is "
                             f"not one starqso made (a link or a file); remove it or choose "
                             f"another --output")
        entries = os.listdir(staging)
        if entries and _IDENTITY_FILE not in entries:
            raise InputError(f"{staging} is in the way of this run's staging folder and is "
                             f"not one starqso made (it holds {', '.join(sorted(entries)[:5])}"
                             f"); remove it or choose another --output")
        shutil.rmtree(staging)
    staging.mkdir()  # exclusive: fails should another process make it meanwhile


_PART_FILE = re.compile(r"part-\d{6}\.parquet")


def _starqso_hats(folder):
    """Whether ``folder`` is a HATS catalogue starqso wrote (its ``hats.properties`` says so)."""
    properties = folder / "hats.properties"
    try:
        return (not folder.is_symlink() and folder.is_dir() and properties.is_file()
                and "starqso_version=" in properties.read_text(errors="replace"))
    except OSError:
        return False


def _foreign_entries(output, entries):
    """The entries of an earlier output that predict's Dask path did not write, or None
    when ``output`` is no starqso output at all.

    A Parquet dataset holds ``_starqso.json`` and ``part-NNNNNN.parquet`` files; a HATS
    catalogue (lsdb's collection layout) ``collection.properties`` and catalogue folders
    whose ``hats.properties`` carries starqso's provenance.
    """
    def plain_file(name):
        return (output / name).is_file() and not (output / name).is_symlink()

    if plain_file(RECORD_FILE):
        return [name for name in entries
                if not (plain_file(name) and (name == RECORD_FILE or _PART_FILE.fullmatch(name)))]
    ours = [name for name in entries if _starqso_hats(output / name)]
    if not ours:
        return None
    return [name for name in entries
            if name not in ours and not (name == "collection.properties" and plain_file(name))]


def _check_output_folder(output):
    """OUT must be new, empty or an earlier starqso output and nothing else: it is replaced
    whole, so a user's file put inside an earlier output (notes, a sub-folder) would go."""
    from starqso._util.ownership import _is_current_or_above, shown_entries

    if _is_current_or_above(output):
        raise InputError(f"--output {output} is the current folder or one above it; a Parquet "
                         f"dataset output is replaced as a whole, so name a new folder (e.g. "
                         f"--output predictions.parquet). Received: --output {output}")
    if not os.path.lexists(output):
        return
    if not output.is_dir():
        kind = "a broken symbolic link" if output.is_symlink() else "a file"
        raise InputError(f"--output {output} is {kind}; a Parquet dataset output is a folder "
                         f"(name it OUT.parquet or without a suffix), or use a .csv/.fits "
                         f"output without --workers")
    try:
        entries = sorted(os.listdir(output))
    except OSError as err:
        raise InputError(f"--output {output} could not be read ({err.strerror or err}); "
                         f"choose another --output") from err
    if not entries:
        return
    foreign = _foreign_entries(output, entries)
    if foreign is None:
        raise InputError(f"--output {output} is a folder that starqso did not write; it "
                         f"is replaced as a whole, so it must be new, empty or an earlier "
                         f"starqso output")
    if foreign:
        shown = shown_entries(foreign)
        raise InputError(f"--output {output} is an earlier starqso output, but it also holds "
                         f"{shown}, which predict did not write; it is replaced as a whole, so "
                         f"move those away or choose another --output")


def predict_dataset(source, output, model_dir=None, runtime="litert", batch_size=256,
                    threshold=None, prior=None, tta=False, workers=None, scheduler=None,
                    partition_rows=DEFAULT_PARTITION_ROWS, resume=False, strict=False,
                    id_column=None, keep=(), progress=None, log=None, command=None,
                    uncertainty=True, ebv=None):
    """Classify every row of ``source`` on Dask into a Parquet dataset (or HATS) ``output``.

    Args:
        source: any input :func:`starqso.io.sources.open_source` reads.
        output: the output folder (a Parquet dataset; a HATS catalogue for a HATS input).
        model_dir: exported model folder; the shipped model when None.
        runtime: "litert" or "keras" (every worker then needs TensorFlow).
        batch_size: rows per model call inside a partition.
        threshold, prior, tta: as for :func:`starqso.inference.predict_catalog`.
        workers: worker processes of the local cluster (default: the usable cores).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); then
            ``workers`` is not used.
        partition_rows: rows per partition (per task and per output file), at most.
        resume: skip the partitions an interrupted run of the same settings finished.
        strict: stop at the first flagged row.
        id_column: the id column of Parquet, HATS, zarr metadata and stack tables.
        keep: input columns copied into the output after ``flag`` (``--keep ra,dec``).
        progress: optional callable receiving the rows done and the total.
        log: optional callable for notes (the dashboard address, resumed partitions).
        command: the command line recorded in ``_starqso.json`` (the CLI's own).
        uncertainty: fill ``p_qso_err`` (see :func:`starqso.inference.predict_views`).
        ebv: the Galactic E(B-V) cutouts are de-reddened by, as for
            :func:`starqso.inference.predict_catalog`.

    Returns:
        dict summary: rows, qso, flagged, repaired, resumed (rows of skipped partitions),
        partitions, workers, output, prior and the provenance ``record``.

    Raises:
        InputError: bad options, model folder or input; another run holds the output's lock;
            with ``resume``, a staging folder of another run; with ``strict``, a flagged row.

    Example:
        >>> predict_dataset("stack/", "predictions.parquet", workers=2)  # doctest: +SKIP
    """
    from starqso import __version__
    from starqso._util.atomic import swap_in_folder, write_json_atomically
    from starqso._util.locking import exclusive_lock
    from starqso.deploy.folder import RUNTIME_FILES, file_sha256
    from starqso.inference.model import (
        EBV_COLUMN,
        ebv_setting,
        evidence_fraction,
        model_settings,
        parse_ebv,
        prior_label,
    )
    from starqso.inference.predict import provenance
    from starqso.io.sources import MAX_CHECKED_IDS, describe, open_source

    require_survey("a Parquet dataset output", "pyarrow", "dask", "distributed")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1. Received: {batch_size}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InputError(f"--workers must be a positive integer. Received: {workers!r}")
    output = pathlib.Path(output)
    if ".." in output.parts:
        # `a/b/..` is folder `a`: its staging folder and lock go beside `a`, not inside it.
        output = pathlib.Path(os.path.abspath(output))
    model_dir, metadata, threshold, settings = model_settings(model_dir, runtime, threshold,
                                                             prior, log)
    ebv = parse_ebv(ebv)
    rows_source = open_source(source, id_column=id_column, keep=keep,
                              ebv=ebv == EBV_COLUMN)
    ebv = ebv_setting(ebv, rows_source)
    partitions = rows_source.partitions(partition_rows)
    if rows_source.num_rows <= MAX_CHECKED_IDS:
        rows_source.ids()  # a repeated id anywhere is one line now, before the cluster starts
    elif log is not None:
        log(f"note: {rows_source.num_rows:,} rows: ids are checked for repeats within each "
            f"partition only (the whole input above {MAX_CHECKED_IDS:,})")
    # The dataset folder is replaced whole: it must not be, nor hold, a file the run reads.
    import itertools

    from starqso._util.output_checks import model_inputs, refuse_output_among_inputs, source_inputs

    inputs, trees = source_inputs(rows_source)
    refuse_output_among_inputs(output, itertools.chain(inputs, model_inputs(model_dir)),
                               trees=trees, folder=True)
    _check_output_folder(output)
    hats_output = rows_source.kind == "hats"
    if hats_output:
        require_survey("a HATS catalogue output", "lsdb")
    common = {"source": str(pathlib.Path(source).resolve()), "input_kind": rows_source.kind,
              "rows": rows_source.num_rows, "catalog_sha256": rows_source.fingerprint(),
              "model": str(model_dir.resolve()),
              "model_sha256": file_sha256(model_dir / RUNTIME_FILES[runtime]),
              "runtime": runtime, "threshold": float(threshold), "prior": settings["prior"],
              "tta": bool(tta), "uncertainty": bool(uncertainty),
              "partition_rows": int(partition_rows),
              "keep": list(rows_source.keep_columns), "ebv": ebv}
    # What each partition file carries: fixed by the settings, so a resumed or retried
    # partition writes the same bytes as an uninterrupted run.
    record = {**common, "prior_source": settings["source"],
              "temperature": metadata.get("temperature"),
              "training_qso_fraction": settings["training_qso_fraction"],
              "training_qso_fraction_assumed": settings["training_qso_fraction_assumed"],
              "starqso_version": __version__, "model_name": model_dir.resolve().name}
    identity = {**common, "prior_shift": settings["shift"]}
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    with exclusive_lock(output):
        saved = _read_identity(staging) if staging.exists() else None
        done = set()
        if resume and saved is not None:
            if {key: value for key, value in saved.items() if key != "started"} != identity:
                from starqso.inference.predict import identity_differences

                raise InputError(f"the partial run {staging} was made for another input, "
                                 f"model, threshold, prior, --tta, --ebv or --partition-rows; "
                                 f"delete it or run without --resume. Received: "
                                 f"{identity_differences(saved, identity)}")
            done = {p.index for p in partitions if (staging / part_name(p.index)).exists()}
            identity["started"] = saved.get("started")
            if log is not None:
                log(f"resuming: {len(done)} of {len(partitions)} partitions already done")
        else:
            if resume and log is not None:
                log("no partial run to resume; starting from the first partition")
            _fresh_staging(staging)
            identity["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_json_atomically(staging / _IDENTITY_FILE, identity)
        counts = {**dict.fromkeys(COUNT_KEYS, 0), "resumed": 0}
        for partition in partitions:
            if partition.index in done:
                counts["resumed"] += partition.stop - partition.start
                _add_counts(counts, _file_counts(staging / part_name(partition.index)))
        if progress is not None and counts["rows"]:
            progress(counts["rows"], rows_source.num_rows)
        if workers is None and scheduler is None:
            workers = max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1, 1)
        job = {"source": rows_source, "model_dir": str(model_dir), "runtime": runtime,
               "model_sha256": common["model_sha256"], "size": int(metadata["input_shape"][1]),
               "threshold": float(threshold), "shift": settings["shift"],
               "training_fraction": evidence_fraction(settings), "tta": bool(tta),
               "uncertainty": bool(uncertainty), "quality": metadata.get("quality"),
               "batch_size": int(batch_size), "strict": bool(strict), "input": str(source),
               "staging": str(staging), "record": record, "ebv": ebv}
        todo = [p for p in partitions if p.index not in done]
        if log is not None:
            log(f"{describe(rows_source)}: {len(partitions)} partitions of at most "
                f"{partition_rows:,} rows, {len(todo)} to run")
        client, cluster = _client(workers, scheduler, log) if todo or hats_output else (None,
                                                                                        None)
        try:
            if client is not None and log is not None:
                log(f"Dask dashboard: {client.dashboard_link} "
                    f"({len(client.scheduler_info()['workers'])} workers)")
            if todo:
                # Every error exit (a --strict stop included) keeps the finished partitions
                # in the staging folder: --resume continues from them.
                _run(client, job, todo, counts, progress, rows_source.num_rows)
            # Beside the partition files (which stay byte-identical whenever they were made):
            # when and by what command.
            full_record = {**record, "output": output.name, "partitions": len(partitions),
                           "started": identity["started"], **provenance(command),
                           "files": [part_name(p.index) for p in partitions]}
            if hats_output:
                # Unique to this run and never an existing path: lsdb makes it.
                target = output.with_name(f".{output.name}.{os.getpid()}-"
                                          f"{secrets.token_hex(4)}.hats-partial")
                _write_hats(rows_source, partitions, staging, target, full_record, output.name)
                swap_in_folder(target, output)
                shutil.rmtree(staging, ignore_errors=True)
            else:
                (staging / _IDENTITY_FILE).unlink()
                write_json_atomically(staging / RECORD_FILE, full_record, sort_keys=False)
                swap_in_folder(staging, output)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    return {**counts, "output": str(output), "prior": prior_label(settings),
            "partitions": len(partitions), "record": record}


def _add_counts(counts, extra):
    for key in COUNT_KEYS:
        counts[key] += extra[key]


def _file_counts(path):
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["p_qso", "label", "flag", QFLAG_COLUMN])
    p_qso = table.column("p_qso").is_null().to_numpy(zero_copy_only=False)
    labels = np.asarray(table.column("label").to_pylist())
    flags = np.asarray(table.column("flag").to_pylist())
    bits = table.column(QFLAG_COLUMN).to_numpy(zero_copy_only=False)
    return {"rows": len(labels), "qso": int(np.sum(labels == "QSO")),
            "flagged": int(p_qso.sum()), "repaired": int(np.sum(~p_qso & (flags != ""))),
            "caveats": int(np.sum(~p_qso & (bits != 0)))}


def _run(client, job, todo, counts, progress, total):
    from distributed import as_completed

    # The source and settings go to the cluster once; each task carries only its partition.
    [job_future] = client.scatter([job], broadcast=True, hash=False)
    futures = [client.submit(run_partition, job_future, partition, pure=False,
                             key=f"starqso-partition-{partition.index}")
               for partition in todo]
    try:
        for future in as_completed(futures):
            _add_counts(counts, future.result())
            if progress is not None:
                progress(counts["rows"], total)
    except BaseException:
        client.cancel(futures)
        raise


def _write_hats(rows_source, partitions, staging, target, record, name):
    """The finished partitions as a HATS catalogue (lsdb), the input's pixels and ra/dec."""
    import lsdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_pixel = {}
    for partition in partitions:
        by_pixel.setdefault(rows_source.pixels[partition.part], []).append(
            str(staging / part_name(partition.index)))
    ra, dec = rows_source.position_columns
    columns = [*OUTPUT_COLUMNS, *rows_source.keep_columns]
    catalog = lsdb.open_catalog(rows_source.path, columns=[ra, dec])

    def attach(frame, pixel):
        files = by_pixel[(int(pixel.order), int(pixel.pixel))]
        results = pa.concat_tables([pq.read_table(name) for name in files])
        results = results.to_pandas(types_mapper=pd.ArrowDtype)
        results.index = frame.index
        return results[columns]

    empty = pq.read_table(str(staging / part_name(partitions[0].index))).schema.empty_table()
    meta = empty.to_pandas(types_mapper=pd.ArrowDtype)[columns]
    meta.index = catalog.meta.index[:0]
    result = catalog.map_partitions(attach, include_pixel=True, meta=meta)
    properties = {f"starqso_{key.removeprefix('starqso_')}": (
        json.dumps(value) if not isinstance(value, str) else value)
        for key, value in record.items() if key not in ("files",)}
    result.write_catalog(str(target), catalog_name=name,
                         addl_hats_properties=properties, progress_bar=False)
