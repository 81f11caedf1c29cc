"""Injection of simulated sources into real blank-sky cutouts (a Balrog-style training set).

A sky-background file (``starqso skies``, :mod:`starqso.io.skies`) holds real blank-sky
cutouts of a user's fields with each field's PSF FWHM (from its own stars) and sky sigma. The
simulator renders a star or QSO exactly as it does on simulated sky
(:func:`starqso.simulate.images.render_cutout`, given ``background=``), with the field's PSF
FWHM per band and only the source's own photon noise, and adds it to a real cutout: the sky
noise, its gradients, the neighbours and the artefacts are then the survey's own.

Which objects are injected, and into which cutout, is drawn from a stream of their own
(``default_rng([seed, index, INJECTION_STREAM])``), so a simulation without backgrounds is
byte for byte what it was, and the injected fraction does not change the other objects.

NumPy only (no TensorFlow).

Example:
    >>> source = BackgroundSource.open("skies.npz", fraction=0.5)  # doctest: +SKIP
    >>> backgrounds = source.load(48)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from starqso.errors import InputError
from starqso.io.skies import read_skies
from starqso.schema import PIXEL_SCALE_ARCSEC

__all__ = ["INJECTION_STREAM", "Background", "BackgroundSource", "Backgrounds",
           "choose_background"]

# The third element of an object's side stream ``[seed, index, INJECTION_STREAM]``: any
# constant other streams do not use.
INJECTION_STREAM = 7
# The fraction injected when backgrounds are given and the config does not say.
DEFAULT_FRACTION = 0.5


@dataclass(frozen=True)
class Background:
    """One real blank-sky cutout, ready for injection.

    Attributes:
        image: float ``(5, S, S)`` nanomaggies, ugriz.
        psf_fwhm_arcsec: float ``(5,)`` the field's PSF FWHM per band (NaN: not measured,
            the simulator's drawn PSF width is kept for that band).
        sky_sigma: float ``(5,)`` the field's sky sigma per band (nanomaggies per pixel).
        number: the cutout's row in its :class:`Backgrounds`.
        field: the field's name.
    """

    image: np.ndarray
    psf_fwhm_arcsec: np.ndarray
    sky_sigma: np.ndarray
    number: int = -1
    field: str = ""

    def psfs(self, drawn):
        """The drawn PSFs (shape, ellipticity) with the field's FWHM where it was measured."""
        from dataclasses import replace

        return [psf if not np.isfinite(fwhm) or fwhm <= 0 else
                replace(psf, fwhm=float(fwhm) / PIXEL_SCALE_ARCSEC)
                for psf, fwhm in zip(drawn, self.psf_fwhm_arcsec, strict=False)]


@dataclass(frozen=True)
class Backgrounds:
    """Real blank-sky cutouts centre-cropped to the simulator's cutout size.

    Attributes:
        images: float32 ``(N, 5, S, S)``.
        psf_fwhm_arcsec, sky_sigma: float ``(N, 5)``, each cutout's field's values.
        fields: str ``(N,)``.
    """

    images: np.ndarray
    psf_fwhm_arcsec: np.ndarray
    sky_sigma: np.ndarray
    fields: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, number: int) -> Background:
        return Background(self.images[number].astype(np.float64), self.psf_fwhm_arcsec[number],
                          self.sky_sigma[number], int(number), str(self.fields[number]))

    @classmethod
    def from_skies(cls, skies, size: int, source: str = "") -> Backgrounds:
        """The cutouts of a :class:`~starqso.io.skies.SkyBackgrounds`, centre-cropped to ``size``.

        The crop is :func:`starqso.preprocessing.images.center_crop`'s (an odd difference
        drops the extra pixel at the bottom/right).

        Raises:
            InputError: the cutouts are smaller than ``size`` (naming ``source``).
        """
        side = skies.size
        if side < size:
            raise InputError(f"sky backgrounds {source} have {side}x{side}-pixel cutouts, "
                             f"smaller than the simulated cutouts ({size}x{size}, "
                             f"data.cutout_size); expected cutouts of at least {size} pixels "
                             f"(starqso skies --size {size})")
        start = (side - size) // 2
        images = np.ascontiguousarray(
            skies.images[:, :, start:start + size, start:start + size], np.float32)
        return cls(images, np.asarray(skies.fwhm_of_cutouts(), np.float64),
                   np.asarray(skies.sigma_of_cutouts(), np.float64),
                   np.asarray(skies.field, dtype=str))


@dataclass(frozen=True)
class BackgroundSource:
    """Where a simulation's backgrounds come from: a skies file or folder, and the fraction.

    Small and hashable, so worker processes receive it instead of the images and read the
    file once each (:meth:`load` is cached on the path, its hash and the size).

    Attributes:
        path: the file or folder given (absolute).
        fraction: probability that an object is injected into a real background.
        sha256: SHA-256 over the ``.npz`` files read (name and bytes, in order).
        files: the ``.npz`` files read.
        file_sha256: each file's SHA-256.
        count: number of cutouts.
        fields: the fields' names.
        size: the cutouts' side in pixels.
    """

    path: str
    fraction: float
    sha256: str
    files: tuple[str, ...] = ()
    file_sha256: tuple[str, ...] = ()
    count: int = 0
    fields: tuple[str, ...] = ()
    size: int = 0

    @classmethod
    def open(cls, path, fraction=None, size=None) -> BackgroundSource:
        """Read and check the sky-background file or folder ``path`` once, and describe it.

        Args:
            path: a file written by ``starqso skies`` or a folder of them.
            fraction: injected fraction in [0, 1]; :data:`DEFAULT_FRACTION` when None.
            size: the simulated cutout side; backgrounds smaller than it are refused.

        Returns:
            :class:`BackgroundSource`.

        Raises:
            InputError: one line naming the file and what was expected (not a skies file,
                wrong bands or shape, cutouts smaller than ``size``, a missing path).
        """
        fraction = DEFAULT_FRACTION if fraction is None else float(fraction)
        if not 0.0 <= fraction <= 1.0:
            raise InputError(f"the sky-background fraction must be within [0, 1]. Received: "
                             f"{fraction}")
        name = os.fspath(path)
        if not os.path.exists(name):
            raise InputError(f"--sky-backgrounds {name} does not exist; expected a file "
                             f"written by starqso skies or a folder of them")
        absolute = os.path.abspath(name)
        skies = read_skies(absolute)
        if size is not None:
            Backgrounds.from_skies(skies, size, source=name)  # the size check, before any work
        if os.path.isdir(absolute):
            files = tuple(os.path.join(absolute, entry) for entry in sorted(os.listdir(absolute))
                          if entry.endswith(".npz"))
        else:
            files = (absolute,)
        hashes = tuple(_file_sha256(file) for file in files)
        digest = hashlib.sha256()
        for file, value in zip(files, hashes, strict=False):
            digest.update(os.path.basename(file).encode() + bytes.fromhex(value))
        return cls(absolute, fraction, digest.hexdigest(), files, hashes, int(len(skies.images)),
                   tuple(str(field) for field in skies.fields), skies.size)

    def load(self, size: int) -> Backgrounds:
        """The cutouts centre-cropped to ``size`` (read once per process)."""
        return _load(self.path, self.sha256, size)

    def describe(self) -> dict:
        """What a run folder records: path, files with SHA-256, cutouts, fields, fraction."""
        return {"path": self.path, "sha256": self.sha256, "fraction": self.fraction,
                "files": [{"path": file, "sha256": value}
                          for file, value in zip(self.files, self.file_sha256, strict=False)],
                "cutouts": self.count, "cutout_size": self.size, "fields": list(self.fields)}


@functools.lru_cache(maxsize=2)
def _load(path, sha256, size):
    # sha256 is part of the cache key only: a file replaced between calls is read anew.
    del sha256
    return Backgrounds.from_skies(read_skies(path), size, source=path)


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def choose_background(seed, index, fraction, count):
    """Which background (row number) object ``index`` of ``seed`` is injected into, or None.

    Drawn from the object's side stream ``[seed, index, INJECTION_STREAM]``, never from its
    main stream, so fully simulated objects are unchanged.

    Example:
        >>> choose_background(0, 3, 0.0, 10) is None
        True
    """
    if count < 1 or fraction <= 0:
        return None
    side = np.random.default_rng([seed, index, INJECTION_STREAM])
    if side.random() >= fraction:
        return None
    return int(side.integers(count))
