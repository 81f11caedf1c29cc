"""Objects as NumPy arrays, from a catalogue or a simulation: :class:`ObjectArrays` (no TensorFlow).

This is the arrays contract between reading (``starqso.io``, ``starqso.simulate``) and training,
evaluation and export: one typed container instead of a dict of strings. Every object goes
through :func:`starqso.preprocessing.objects.prepare_object`, so catalogue and simulated arrays
hold the same kind of image and spectrum. Every object is held in memory: about 30 KB per
object at image size 32 (20 KB of ``(3700, 2)`` float32 spectrum, 20 KB of 32x32x5 image), so
100,000 objects take about 3-4 GB.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Sequence

import numpy as np

from starqso._util.atomic import atomic_path
from starqso.data.catalog_arrays import read_catalog_arrays
from starqso.data.simulated_arrays import simulate_chunk, simulation_cache_path
from starqso.errors import InputError
from starqso.io.safe_read import read_npz
from starqso.schema import ENCODER_NUM_PIXELS, NUM_BANDS, SPECTRUM_CHANNELS, UNKNOWN_LABEL

__all__ = ["ObjectArrays"]

# The per-object fields, in order: what subset/save/load carry (flags name catalogue rows).
_ROW_FIELDS = ("ids", "images", "spectra", "has_spectrum", "labels", "redshift", "mags")
_CHUNK = 50
# A spawned worker costs about 1.5 s to start (it imports NumPy, astropy and the simulator),
# as much as simulating some 150 objects in-process: with workers=None, each worker gets at
# least this many objects, so small runs (tests, tiny configs) stay in one process.
_MIN_OBJECTS_PER_WORKER = 400


@dataclasses.dataclass(eq=False)
class ObjectArrays:
    """N objects as aligned arrays: row ``i`` of every field is object ``i``.

    Build one with :meth:`from_catalog`, :meth:`from_simulation`, :meth:`empty` or
    :meth:`load`; the constructor only checks that the fields agree (shapes, lengths, dtypes)
    and raises ``ValueError`` when they do not, a programming error rather than bad input.

    Attributes:
        ids: str ``(N,)`` object ids.
        images: float32 ``(N, S, S, 5)`` raw nanomaggies, channels last (``NHWC``), bands ugriz.
        spectra: float32 ``(N, 3700, 2)`` encoder input, zeros without a spectrum.
        has_spectrum: bool ``(N,)``.
        labels: int8 ``(N,)``: 1 QSO, 0 STAR, -1 unknown (``starqso.schema.LABEL_CODES``).
        redshift: float32 ``(N,)``, NaN where unknown.
        mags: float32 ``(N, 5)`` ugriz AB magnitudes, NaN where unknown.
        flags: the flagged catalogue rows of :meth:`from_catalog`, one dict each: ``row``
            (from 1), ``id``, ``used`` (the row is in the arrays) and ``flag`` (the reason).

    Example:
        >>> data = ObjectArrays.from_simulation(4, seed=1, image_size=16, cutout_size=24,
        ...                                     workers=1)
        >>> len(data), data.image_size, data.spectra.shape
        (4, 16, (4, 3700, 2))
    """

    ids: np.ndarray
    images: np.ndarray
    spectra: np.ndarray
    has_spectrum: np.ndarray
    labels: np.ndarray
    redshift: np.ndarray
    mags: np.ndarray
    flags: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        n = len(self.ids) if isinstance(self.ids, np.ndarray) and self.ids.ndim == 1 else None
        size = (self.images.shape[1] if isinstance(self.images, np.ndarray)
                and self.images.ndim == 4 else None)
        expected = {  # field: (dtype, or "U" for any str dtype; shape)
            "ids": ("U", (n,)),
            "images": ("float32", (n, size, size, NUM_BANDS)),
            "spectra": ("float32", (n, ENCODER_NUM_PIXELS, SPECTRUM_CHANNELS)),
            "has_spectrum": ("bool", (n,)),
            "labels": ("int8", (n,)),
            "redshift": ("float32", (n,)),
            "mags": ("float32", (n, NUM_BANDS)),
        }
        wrong = []
        for name, (dtype, shape) in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                wrong.append(f"{name} is a {type(value).__name__}")
            elif value.shape != shape or not (value.dtype.kind == "U" if dtype == "U"
                                              else value.dtype == dtype):
                wrong.append(f"{name} {value.dtype} {value.shape}")
        if not isinstance(self.flags, list):
            wrong.append(f"flags is a {type(self.flags).__name__}")
        if wrong:
            raise ValueError(
                f"ObjectArrays fields must be NumPy arrays with one row per id: ids str (N,), "
                f"images float32 (N, S, S, {NUM_BANDS}), spectra float32 (N, "
                f"{ENCODER_NUM_PIXELS}, {SPECTRUM_CHANNELS}), has_spectrum bool (N,), labels "
                f"int8 (N,), redshift float32 (N,), mags float32 (N, {NUM_BANDS}), flags a "
                f"list. Received: N = {n}; " + "; ".join(wrong))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        known = self.labels >= 0
        return (f"ObjectArrays({len(self)} objects, image_size={self.image_size}, "
                f"{int(self.has_spectrum.sum())} with spectrum, {int((self.labels == 1).sum())} "
                f"QSO / {int((self.labels == 0).sum())} STAR / {int((~known).sum())} unknown, "
                f"{len(self.flags)} flags)")

    @property
    def image_size(self) -> int:
        """Side ``S`` of the image crops."""
        return int(self.images.shape[1])

    @classmethod
    def empty(cls, ids: Sequence[str], image_size: int) -> ObjectArrays:
        """Arrays for ``len(ids)`` objects to fill in: zero images and spectra, no spectrum,
        unknown labels, NaN redshift and magnitudes, no flags.

        Args:
            ids: object ids.
            image_size: side of the image crops.

        Example:
            >>> ObjectArrays.empty(["a", "b"], 16).images.shape
            (2, 16, 16, 5)
        """
        n = len(ids)
        return cls(
            ids=np.array(list(ids), dtype=str),
            images=np.zeros((n, image_size, image_size, NUM_BANDS), np.float32),
            spectra=np.zeros((n, ENCODER_NUM_PIXELS, SPECTRUM_CHANNELS), np.float32),
            has_spectrum=np.zeros(n, bool),
            labels=np.full(n, UNKNOWN_LABEL, np.int8),
            redshift=np.full(n, np.nan, np.float32),
            mags=np.full((n, NUM_BANDS), np.nan, np.float32),
        )

    @classmethod
    def from_catalog(cls, path: str | os.PathLike, image_size: int, *,
                     require_labels: bool = False,
                     progress: Callable[[int], None] | None = None,
                     strict: bool = True) -> ObjectArrays:
        """Read a catalogue (CSV or FITS) and all its cutouts and spectra into arrays.

        A row whose cutout cannot be used (missing or broken file, too small, all zeros,
        NaN/inf at the object) is left out; a row whose spectrum cannot be used keeps its image
        without a spectrum; a few NaN/inf pixels are repaired
        (:func:`starqso.preprocessing.usable_crop`). Each of these is reported in ``flags``, or
        raised when ``strict``.

        Args:
            path: catalogue file, see :func:`starqso.io.read_catalog` (``id`` and ``image``
                columns required; ``spectrum``, ``label``, ``redshift``, ``u..z`` optional).
            image_size: side of the centre crop taken from each cutout.
            require_labels: raise unless at least one usable row is labelled STAR or QSO.
            progress: called with the number of rows read so far, after each row.
            strict: raise on the first row that would be flagged.

        Returns:
            The usable rows, in catalogue order, with ``flags`` for the flagged rows.

        Raises:
            InputError: the catalogue is invalid, no usable row is labelled
                (``require_labels``), or (``strict``) a row's cutout/spectrum cannot be used as
                it is (the message names row, id and file).

        Example:
            >>> data = ObjectArrays.from_catalog("sim/catalog.csv", 32,
            ...                                  strict=False)  # doctest: +SKIP
            >>> data.images.shape, data.labels[:3], len(data.flags)  # doctest: +SKIP
            ((998, 32, 32, 5), array([0, 1, 0], dtype=int8), 2)
        """
        return read_catalog_arrays(cls, path, image_size, require_labels=require_labels,
                                   progress=progress, strict=strict)

    @classmethod
    def from_simulation(cls, num_objects: int, seed: int, *, image_size: int,
                        cutout_size: int = 48, qso_fraction: float | None = None,
                        workers: int | None = None,
                        progress: Callable[[int], None] | None = None,
                        backgrounds=None, reddening=None, crowding=None,
                        brightness=None, galaxy_fraction: float = 0.0) -> ObjectArrays:
        """Simulate objects ``0 .. num_objects-1`` of ``seed`` as in-memory arrays, no files.

        Object ``i`` is :func:`starqso.simulate.simulate_object` ``(i, seed, cutout_size,
        qso_fraction)``, exactly the object :func:`starqso.simulate.simulate_survey` writes with
        the same arguments, and it has its own random stream, so the result is the same
        whatever ``workers`` is. Every object has a spectrum and a label, and no flags.

        Args:
            num_objects: number of objects (>= 1).
            seed: simulation seed.
            image_size: side of the centre crop (<= ``cutout_size``).
            cutout_size: side of the simulated cutout (>= 16), before cropping.
            qso_fraction: QSO probability; the real catalogue's (about 0.30) when None.
            workers: processes; when None, all CPU cores (at most 8) but no more than one per
                400 objects (a worker costs more to start than a few hundred objects take to
                simulate). Workers are spawned, not forked, because forking a process that
                has imported TensorFlow is unsafe (so a script calling this with more than one
                worker needs the ``if __name__ == "__main__":`` guard).
            progress: called with the number of objects done so far, after each chunk.
            backgrounds: a :class:`starqso.simulate.injection.BackgroundSource`: that
                fraction of the objects is injected into its real blank-sky cutouts
                (centre-cropped to ``cutout_size``); None: every object fully simulated.
            reddening: a :class:`starqso.simulate.dust.Reddening` (Galactic dust in front of
                a fraction of the objects), or None for none.
            crowding: a :class:`starqso.simulate.dust.Crowding` (crowded fields for a
                fraction of the objects), or None for none.
            brightness: a :class:`starqso.simulate.brightness.Brightness` (r magnitudes of a
                fraction of the objects drawn from both classes alike), or None for none.
            galaxy_fraction: probability that an object is a GALAXY (label code 2) instead,
                drawn from a side stream (:func:`starqso.simulate.simulate_object`); 0: none.

        Raises:
            InputError: for an out-of-range argument.

        Example:
            >>> data = ObjectArrays.from_simulation(3, seed=1, image_size=20, workers=1)
            >>> data.images.shape, data.spectra.shape, data.has_spectrum.all()
            ((3, 20, 20, 5), (3, 3700, 2), np.True_)
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
        if not 0.0 <= galaxy_fraction < 1.0:
            raise InputError(f"galaxy fraction must be within [0, 1). Received: "
                             f"{galaxy_fraction}")
        if workers is not None and workers < 1:
            raise InputError(f"workers must be at least 1. Received: {workers}")
        if workers is None:
            workers = max(1, min(os.cpu_count() or 1, 8,
                                 num_objects // _MIN_OBJECTS_PER_WORKER))
        # Chunks of at most 50, but enough of them to keep every worker busy on small runs.
        chunk = max(1, min(_CHUNK, -(-num_objects // workers)))
        id_width = max(6, len(str(num_objects - 1)))  # as simulate_survey, so ids match its files
        tasks = [(cls, range(start, min(start + chunk, num_objects)), seed, image_size,
                  cutout_size, qso_fraction, id_width, backgrounds, reddening, crowding,
                  brightness, galaxy_fraction)
                 for start in range(0, num_objects, chunk)]
        workers = min(workers, len(tasks))
        executor = None
        if workers == 1:
            results = map(simulate_chunk, tasks)
        else:
            executor = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(simulate_chunk, tasks)
        # Filled in place rather than concatenated at the end, which would need twice the memory.
        arrays, ids, done = cls.empty([""] * num_objects, image_size), [], 0
        try:
            for part in results:
                ids.extend(part.ids)
                for name in _ROW_FIELDS[1:]:
                    getattr(arrays, name)[done:len(ids)] = getattr(part, name)
                done = len(ids)
                if progress is not None:
                    progress(done)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        arrays.ids = np.array(ids, dtype=str)
        return arrays

    def subset(self, index) -> ObjectArrays:
        """The rows ``index`` selects, in its order, as new arrays.

        Args:
            index: integer index array (rows may repeat) or boolean mask of length N, or a
                slice.

        Returns:
            :class:`ObjectArrays` of the selected rows. ``flags`` are not carried: they name
            catalogue rows, not rows of the subset.

        Example:
            >>> data = ObjectArrays.empty(["a", "b", "c"], 4)
            >>> data.subset([2, 0]).ids.tolist(), len(data.subset(data.labels >= 0))
            (['c', 'a'], 0)
        """
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.ndim != 1:
                raise ValueError(f"subset needs a 1-D index array, boolean mask or slice. "
                                 f"Received: an array of shape {index.shape}")
            if index.size == 0:
                index = index.astype(np.intp)
        return type(self)(**{name: getattr(self, name)[index] for name in _ROW_FIELDS})

    @classmethod
    def from_simulation_cache(cls, folder: str | os.PathLike, num_objects: int, seed: int, *,
                              image_size: int, cutout_size: int = 48,
                              qso_fraction: float | None = None, log=None,
                              **kwargs) -> ObjectArrays:
        """:meth:`from_simulation`, kept in ``folder`` and reused on the next call.

        The file name is a hash of the arguments and of the simulator itself (its code and
        its resources), so a changed simulator or a different seed never reuses a stale cache.

        Args:
            folder: cache folder (created if needed).
            num_objects, seed, image_size, cutout_size, qso_fraction, **kwargs: as
                :meth:`from_simulation`.
            log: optional callable told whether the cache was used.

        Returns:
            :class:`ObjectArrays`.

        Example:
            >>> data = ObjectArrays.from_simulation_cache("cache", 40000, 0,  # doctest: +SKIP
            ...                                           image_size=32)
        """
        path = simulation_cache_path(folder, num_objects, seed, image_size, cutout_size,
                                     qso_fraction, kwargs)
        if os.path.exists(path):
            if log is not None:
                log(f"simulation cache {path} (same arguments and simulator)")
            return cls.load(path)
        arrays = cls.from_simulation(num_objects, seed, image_size=image_size,
                                     cutout_size=cutout_size, qso_fraction=qso_fraction,
                                     **kwargs)
        arrays.save(path)
        if log is not None:
            log(f"simulation cached in {path}")
        return arrays

    def save(self, path: str | os.PathLike) -> str:
        """Save the arrays to an uncompressed ``.npz`` file (atomically), e.g. a benchmark's
        cache of a simulation. ``flags`` are not saved.

        Args:
            path: output file (written as given, no suffix is added); its folder must exist.

        Returns:
            The path as a ``str``.
        """
        path = os.fspath(path)
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, **{name: getattr(self, name) for name in _ROW_FIELDS})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ObjectArrays:
        """Arrays saved by :meth:`save` (without ``flags``).

        Raises:
            InputError: the file is missing or not an ``.npz`` file of :meth:`save`.
        """
        path = os.fspath(path)
        # read_npz checks each array's declared size before allocating it.
        stored = read_npz(path, "object arrays (from ObjectArrays.save)", max_bytes=1 << 34)
        missing = [name for name in _ROW_FIELDS if name not in stored]
        if missing:
            raise InputError(f"object arrays file must hold the arrays "
                             f"{', '.join(_ROW_FIELDS)}. Received: {', '.join(missing)} "
                             f"missing in file {path}")
        return cls(**{name: stored[name] for name in _ROW_FIELDS})
