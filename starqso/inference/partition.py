"""One Dask task of ``starqso predict`` on Dask: a partition classified into its Parquet file.

This runs on the workers (:mod:`starqso.inference.dask` submits it): each worker process opens
the model and the input once and keeps them for its later tasks.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from starqso._util.atomic import write_bytes_atomically
from starqso.deploy.folder import RUNTIME_FILES
from starqso.inference.classify import (
    COUNT_KEYS,
    OUTPUT_COLUMNS,
    block_rows,
    classify_block,
    label_block,
    other_classes,
    refuse_flagged,
)
from starqso.inference.dataset_output import part_name
from starqso.inference.model import KerasPredictor, LiteRTPredictor, block_ebv
from starqso.schema import P_QSO_ERR_COLUMN, QFLAG_COLUMN

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


def _predictor(model_dir, runtime, model_sha256):
    key = ("model", model_dir, runtime, model_sha256)
    if key not in _CACHE:
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
                                                                  np.float64))),
              **{name: pa.array(columns[name], pa.float64(),
                                mask=np.isnan(np.asarray(columns[name], np.float64)))
                 for name in ("p_star", "p_galaxy")}}
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
        for (ident, p_qso, flag, ok, bits, err, classes), label in zip(
                block_rows(block.ids, classified), labels, strict=False):
            p_star, p_galaxy = other_classes(p_qso, classes)
            columns["id"].append(ident)
            columns["p_qso"].append(float(p_qso) if ok else np.nan)
            columns["label"].append(label)
            columns["flag"].append(flag)
            columns[QFLAG_COLUMN].append(int(bits))
            columns[P_QSO_ERR_COLUMN].append(float(err))
            columns["p_star"].append(p_star if ok else np.nan)
            columns["p_galaxy"].append(p_galaxy if ok else np.nan)
        for name in source.keep_columns:  # block.keep also holds an unkept ebv column
            keep.setdefault(name, []).append(np.asarray(block.keep[name]))
    keep = {name: np.concatenate(parts) for name, parts in keep.items()}
    payload = _table_bytes(columns, keep, job["record"])
    write_bytes_atomically(os.path.join(job["staging"], part_name(partition.index)), payload)
    return counts

