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
from starqso.errors import InputError
from starqso.io.catalog import read_catalog, resolve_path
from starqso.io.cutouts import read_cutout
from starqso.io.spectra import read_spectrum
from starqso.preprocessing.objects import prepare_object
from starqso.preprocessing.spectra import encoder_input, resample_spectrum
from starqso.schema import (
    BANDS,
    ENCODER_NUM_PIXELS,
    LABEL_CODES,
    NUM_BANDS,
    SPECTRUM_CHANNELS,
    UNKNOWN_LABEL,
)
from starqso.simulate.survey import simulate_object

__all__ = ["ObjectArrays"]

# The per-object fields, in order: what subset/save/load carry (flags name catalogue rows).
_ROW_FIELDS = ("ids", "images", "spectra", "has_spectrum", "labels", "redshift", "mags")
_CHUNK = 50
# Catalogue rows screened at once (predict's screening is vectorised over a block).
_SCREEN_ROWS = 256


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
        catalog = read_catalog(path)
        source = catalog.meta["path"]
        ids = [str(value) for value in catalog["id"]]
        arrays = cls.empty(ids, image_size)
        if "label" in catalog.colnames:
            arrays.labels[:] = [LABEL_CODES[label] for label in catalog["label"]]
        if "redshift" in catalog.colnames:
            arrays.redshift[:] = catalog["redshift"]
        for band_index, band in enumerate(BANDS):
            if band in catalog.colnames:
                arrays.mags[:, band_index] = catalog[band]
        spectra = catalog["spectrum"] if "spectrum" in catalog.colnames else [""] * len(ids)
        usable = np.ones(len(ids), bool)
        flags = []

        def flag(row, identifier, reason, used):
            message = f"catalogue row {row + 1} (id {identifier!r}) of {source}: {reason}"
            if strict:
                raise InputError(message + " (strict: no row may be flagged)" if used
                                 else message)
            flags.append({"row": row + 1, "id": identifier, "used": used, "flag": reason})

        # Rows are screened in blocks by `starqso predict`'s own screening (crop, repair and
        # the source checks: no source detected, no-data fills, implausible sky), so a row
        # predict would flag is flagged, and left out of training, here too.
        from starqso.io.sources import Block
        from starqso.preprocessing.blocks import prepare_block

        for start in range(0, len(ids), _SCREEN_ROWS):
            rows = range(start, min(start + _SCREEN_ROWS, len(ids)))
            read = [_catalog_cutout(catalog, catalog["image"][row], image_size) for row in rows]
            block = Block([ids[row] for row in rows], [cube for cube, _ in read],
                          [f"file {path}" if path else "a blank image path" for _, path in read],
                          {})
            images, notes, screened = prepare_block(block, image_size)
            for offset, row in enumerate(rows):
                identifier, image_path = ids[row], read[offset][1]
                if not screened[offset]:
                    usable[row] = False
                    flag(row, identifier, notes[offset], False)
                else:
                    arrays.images[row] = images[offset]
                    if notes[offset]:
                        flag(row, identifier, f"{notes[offset]} in file {image_path}", True)
                    encoded, error = _catalog_spectrum(catalog, spectra[row])
                    if encoded is not None:
                        arrays.spectra[row] = encoded
                        arrays.has_spectrum[row] = True
                    elif error:
                        flag(row, identifier, f"spectrum not used: {error}", True)
                if progress is not None:
                    progress(row + 1)
        if not usable.all():
            arrays = arrays.subset(usable)
        if require_labels and not (arrays.labels >= 0).any():
            raise InputError(f"catalogue needs at least one usable row labelled STAR or QSO for "
                             f"training. Received: no labels in {int(usable.sum())} usable of "
                             f"{len(ids)} rows of file {source}")
        arrays.flags = flags
        return arrays

    @classmethod
    def from_simulation(cls, num_objects: int, seed: int, *, image_size: int,
                        cutout_size: int = 48, qso_fraction: float | None = None,
                        workers: int | None = None,
                        progress: Callable[[int], None] | None = None,
                        backgrounds=None, reddening=None, crowding=None,
                        brightness=None) -> ObjectArrays:
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
            workers: processes; all CPU cores (at most 8) when None. Workers are spawned, not
                forked, because forking a process that has imported TensorFlow is unsafe (so a
                script calling this with ``workers > 1`` needs the ``if __name__ ==
                "__main__":`` guard).
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
        if workers is not None and workers < 1:
            raise InputError(f"workers must be at least 1. Received: {workers}")
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        # Chunks of at most 50, but enough of them to keep every worker busy on small runs.
        chunk = max(1, min(_CHUNK, -(-num_objects // workers)))
        id_width = max(6, len(str(num_objects - 1)))  # as simulate_survey, so ids match its files
        tasks = [(range(start, min(start + chunk, num_objects)), seed, image_size, cutout_size,
                  qso_fraction, id_width, backgrounds, reddening, crowding, brightness)
                 for start in range(0, num_objects, chunk)]
        workers = min(workers, len(tasks))
        executor = None
        if workers == 1:
            results = map(_simulate_chunk, tasks)
        else:
            executor = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(_simulate_chunk, tasks)
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
        import hashlib
        import importlib.resources
        import json

        key = [num_objects, seed, image_size, cutout_size, qso_fraction]
        backgrounds = kwargs.get("backgrounds")
        if backgrounds is not None:  # only then, so a plain simulation keeps its cache name
            key += [backgrounds.sha256, backgrounds.fraction]
        reddening = kwargs.get("reddening")
        if reddening is not None and reddening.fraction > 0:  # likewise
            key += ["reddening", reddening.fraction, reddening.max_ebv]
        crowding = kwargs.get("crowding")
        if crowding is not None and crowding.fraction > 0:  # likewise
            key += ["crowding", crowding.fraction, crowding.max_density]
        brightness = kwargs.get("brightness")
        if brightness is not None and brightness.fraction > 0:  # likewise
            key += ["brightness", brightness.fraction]
        digest = hashlib.sha256(json.dumps(key).encode())
        package = importlib.resources.files("starqso")
        for part in ("simulate", "resources"):
            for item in sorted(package.joinpath(part).iterdir(), key=lambda item: item.name):
                if item.is_file() and not item.name.endswith(".pyc"):
                    digest.update(item.name.encode() + item.read_bytes())
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"simulation-{digest.hexdigest()[:16]}.npz")
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
        from starqso.deploy.folder import read_npz

        path = os.fspath(path)
        # read_npz checks each array's declared size before allocating it.
        stored = read_npz(path, "object arrays (from ObjectArrays.save)", max_bytes=1 << 34)
        missing = [name for name in _ROW_FIELDS if name not in stored]
        if missing:
            raise InputError(f"object arrays file must hold the arrays "
                             f"{', '.join(_ROW_FIELDS)}. Received: {', '.join(missing)} "
                             f"missing in file {path}")
        return cls(**{name: stored[name] for name in _ROW_FIELDS})


def _catalog_cutout(catalog, image, image_size):
    """``(the row's cutout centre crop, or the str reason it cannot be read; its file)``."""
    image_path = ""
    try:
        image_path = resolve_path(catalog, image)
        if not image_path:
            raise InputError("image path is blank; expected a cutout file")
        # Only the centre crop is read (bounded memory for any file size).
        return read_cutout(image_path, crop_size=image_size).data, image_path
    except InputError as err:
        return str(err), image_path


def _catalog_spectrum(catalog, spectrum):
    """``(the row's encoder spectrum or None, "" or why it cannot be used)``."""
    spectrum_path = ""
    try:
        spectrum_path = resolve_path(catalog, spectrum)
        if not spectrum_path:
            return None, ""
        read = read_spectrum(spectrum_path)
        where = f"file {spectrum_path}"
        return encoder_input(resample_spectrum(read.wavelength, read.flux, read.ivar,
                                               read.mask, source=where), source=where), ""
    except InputError as err:
        return None, str(err)


def _simulate_chunk(task) -> ObjectArrays:
    """Objects ``indices`` of a simulation as arrays (a worker of ``from_simulation``)."""
    (indices, seed, image_size, cutout_size, qso_fraction, id_width, source, reddening,
     crowding, brightness) = task
    # Each worker reads the backgrounds once (BackgroundSource.load is cached).
    backgrounds = None if source is None else source.load(cutout_size)
    fraction = 0.0 if source is None else source.fraction
    objects = [simulate_object(index, seed, cutout_size, qso_fraction, id_width=id_width,
                               backgrounds=backgrounds, background_fraction=fraction,
                               reddening=reddening, crowding=crowding,
                               brightness=brightness)
               for index in indices]
    arrays = ObjectArrays.empty([obj.id for obj in objects], image_size)
    for row, obj in enumerate(objects):
        spectrum = obj.spectrum
        prepared = prepare_object(
            obj.cutout, image_size, (spectrum["wavelength"], spectrum["flux"], spectrum["ivar"],
                                     spectrum["and_mask"] != 0),
            source=f"simulated object {obj.id} (seed {seed})")
        if prepared.spectrum_error:
            raise InputError(prepared.spectrum_error)
        arrays.images[row] = prepared.image
        arrays.spectra[row] = prepared.spectrum
        arrays.labels[row] = LABEL_CODES[obj.label]
        arrays.redshift[row] = obj.redshift
        arrays.mags[row] = obj.mags
    arrays.has_spectrum[:] = True
    return arrays
