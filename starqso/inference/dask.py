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

import os
import pathlib
import secrets
import shutil
import time

from starqso._util.atomic import swap_in_folder, write_json_atomically
from starqso._util.extras import require_survey
from starqso._util.locking import exclusive_lock
from starqso._util.output_checks import model_inputs, refuse_output_among_inputs, source_inputs
from starqso.errors import InputError
from starqso.inference.classify import COUNT_KEYS
from starqso.inference.dataset_output import (
    IDENTITY_FILE,
    RECORD_FILE,
    check_output_folder,
    file_counts,
    fresh_staging,
    part_name,
    read_identity,
    write_hats,
)
from starqso.inference.model import (
    EBV_COLUMN,
    ebv_setting,
    evidence_fraction,
    model_identity,
    model_provenance,
    model_settings,
    parse_ebv,
    prior_label,
)
from starqso.inference.output_table import provenance
from starqso.inference.partition import run_partition
from starqso.inference.resume import identity_differences
from starqso.io.sources import MAX_CHECKED_IDS, describe, open_source

#: Rows per partition by default: a few MB of Parquet, a minute of one worker's time.
DEFAULT_PARTITION_ROWS = 50_000


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
        dict summary: rows, qso, galaxy, flagged, repaired, resumed (rows of skipped partitions),
        partitions, workers, output, prior and the provenance ``record``.

    Raises:
        InputError: bad options, model folder or input; another run holds the output's lock;
            with ``resume``, a staging folder of another run; with ``strict``, a flagged row.

    Example:
        >>> predict_dataset("stack/", "predictions.parquet", workers=2)  # doctest: +SKIP
    """
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

    inputs, trees = source_inputs(rows_source)
    refuse_output_among_inputs(output, itertools.chain(inputs, model_inputs(model_dir)),
                               trees=trees, folder=True)
    check_output_folder(output)
    hats_output = rows_source.kind == "hats"
    if hats_output:
        require_survey("a HATS catalogue output", "lsdb")
    common = {"source": str(pathlib.Path(source).resolve()), "input_kind": rows_source.kind,
              "rows": rows_source.num_rows, "catalog_sha256": rows_source.fingerprint(),
              **model_identity(model_dir, runtime, threshold, settings),
              "tta": bool(tta), "uncertainty": bool(uncertainty),
              "partition_rows": int(partition_rows),
              "keep": list(rows_source.keep_columns), "ebv": ebv}
    # What each partition file carries: fixed by the settings, so a resumed or retried
    # partition writes the same bytes as an uninterrupted run.
    record = {**common, **model_provenance(model_dir, metadata, settings)}
    identity = {**common, "prior_shift": settings["shift"]}
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    with exclusive_lock(output):
        saved = read_identity(staging) if staging.exists() else None
        done = set()
        if resume and saved is not None:
            if {key: value for key, value in saved.items() if key != "started"} != identity:
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
            fresh_staging(staging)
            identity["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_json_atomically(staging / IDENTITY_FILE, identity)
        counts = {**dict.fromkeys(COUNT_KEYS, 0), "resumed": 0}
        for partition in partitions:
            if partition.index in done:
                counts["resumed"] += partition.stop - partition.start
                _add_counts(counts, file_counts(staging / part_name(partition.index)))
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
                write_hats(rows_source, partitions, staging, target, full_record, output.name)
                swap_in_folder(target, output)
                shutil.rmtree(staging, ignore_errors=True)
            else:
                (staging / IDENTITY_FILE).unlink()
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


