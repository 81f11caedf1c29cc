"""Simulated objects straight to arrays, without files (NumPy only).

The arrays have the keys and meaning of :func:`starqso.io.load_catalog_arrays`, so a model can
train on a simulation held in memory: about 30 KB per object at image size 32 (mostly the
``(3700, 2)`` float32 spectrum), i.e. about 3 GB for 100,000 objects.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable

import numpy as np

from starqso.errors import InputError
from starqso.io.dataset import LABEL_CODES, empty_arrays
from starqso.preprocessing.images import center_crop
from starqso.preprocessing.spectra import encoder_input, resample_spectrum
from starqso.simulate.survey import simulate_object

_CHUNK = 50


def _simulate_chunk(task) -> dict:
    indices, seed, image_size, cutout_size, qso_fraction, id_width = task
    objects = [simulate_object(index, seed, cutout_size, qso_fraction, id_width=id_width)
               for index in indices]
    arrays = empty_arrays([obj.id for obj in objects], image_size)
    for row, obj in enumerate(objects):
        spectrum = obj.spectrum
        source = f"simulated object {obj.id} (seed {seed})"
        arrays["images"][row] = center_crop(obj.cutout, image_size, source=source)
        arrays["spectra"][row] = encoder_input(resample_spectrum(
            spectrum["wavelength"], spectrum["flux"], spectrum["ivar"],
            spectrum["and_mask"] != 0, source=source), source=source)
        arrays["labels"][row] = LABEL_CODES[obj.label]
        arrays["redshift"][row] = obj.redshift
        arrays["mags"][row] = obj.mags
    arrays["has_spectrum"][:] = True
    return arrays


def simulate_arrays(num_objects: int, seed: int, *, image_size: int, cutout_size: int = 48,
                    qso_fraction: float | None = None, workers: int | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Simulate objects ``0 .. num_objects-1`` of ``seed`` as in-memory arrays.

    Object ``i`` is :func:`simulate_object` ``(i, seed, cutout_size, qso_fraction)``, exactly
    the object :func:`simulate_survey` writes with the same arguments, and it has its own
    random stream, so the result is the same whatever ``workers`` is. Memory: about 30 KB per
    object at ``image_size`` 32.

    Args:
        num_objects: number of objects (>= 1).
        seed: simulation seed.
        image_size: side of the centre crop (<= ``cutout_size``).
        cutout_size: side of the simulated cutout (>= 16), before cropping.
        qso_fraction: QSO probability; the real catalogue's (about 0.30) when None.
        workers: processes; all CPU cores (at most 8) when None. Workers are spawned, not
            forked, because forking a process that has imported TensorFlow is unsafe.
        progress: called with the number of objects done so far, after each chunk.

    Returns:
        dict with the keys of :func:`starqso.io.load_catalog_arrays`; every object has a
        spectrum and a label.

    Raises:
        InputError: for an out-of-range argument.

    Example:
        >>> data = simulate_arrays(100, seed=1, image_size=32)  # doctest: +SKIP
        >>> data["images"].shape, data["spectra"].shape
        ((100, 32, 32, 5), (100, 3700, 2))
    """
    if num_objects < 1:
        raise InputError(f"number of objects must be at least 1. Received: {num_objects}")
    if cutout_size < 16:
        raise InputError(f"cutout size must be at least 16 pixels. Received: {cutout_size}")
    if not 1 <= image_size <= cutout_size:
        raise InputError(f"image size must be within [1, cutout size {cutout_size}]. "
                         f"Received: {image_size}")
    if qso_fraction is not None and not 0.0 <= qso_fraction <= 1.0:
        raise InputError(f"QSO fraction must be within [0, 1]. Received: {qso_fraction}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1. Received: {workers}")
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    # Chunks of at most 50, but enough of them to keep every worker busy on small runs.
    chunk = max(1, min(_CHUNK, -(-num_objects // workers)))
    id_width = max(6, len(str(num_objects - 1)))  # as simulate_survey, so ids match its files
    tasks = [(range(start, min(start + chunk, num_objects)), seed, image_size, cutout_size,
              qso_fraction, id_width) for start in range(0, num_objects, chunk)]
    workers = min(workers, len(tasks))
    executor = None
    if workers == 1:
        results = map(_simulate_chunk, tasks)
    else:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
        results = executor.map(_simulate_chunk, tasks)
    # Filled in place rather than concatenated at the end, which would need twice the memory.
    arrays, ids, done = empty_arrays([""] * num_objects, image_size), [], 0
    try:
        for part in results:
            ids.extend(part.pop("ids"))
            for key, values in part.items():
                arrays[key][done:len(ids)] = values
            done = len(ids)
            if progress is not None:
                progress(done)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    arrays["ids"] = np.array(ids, dtype=str)
    return arrays
