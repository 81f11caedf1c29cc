"""The sky-background file: real blank-sky cutouts of a user's fields, with their PSF and noise.

``starqso skies`` writes it (:func:`starqso.preprocessing.sky_backgrounds.make_sky_file`);
training that injects simulated sources into real sky reads it. One ``.npz`` (NumPy arrays
only, no pickles; read through :func:`starqso.deploy.folder.read_npz`) holds:

* per cutout (N): ``images`` float32 ``(N, 5, S, S)`` nanomaggies, bands ugriz, as cut from
  the frames (not sky-subtracted, not resampled where the bands share a pixel grid up to a
  shift); ``field`` (its field's name), ``x``, ``y`` (0-based r-frame pixel of the cutout
  centre), ``ra``, ``dec`` (degrees);
* per field (F): ``fields`` (names), ``psf_fwhm_arcsec`` ``(F, 5)`` (from the field's own
  isolated bright stars; NaN where none was found), ``psf_stars`` ``(F, 5)`` (how many),
  ``sky_sigma`` ``(F, 5)`` (sigma-clipped pixel noise with sources masked, nanomaggies),
  ``sky_level`` ``(F, 5)`` (median sky left in the frame, nanomaggies), ``frame_files`` and
  ``frame_sha256`` ``(F, 5)``, ``alignment`` ``(F, 5)`` (``shift`` or ``resample``),
  ``centre_ra``, ``centre_dec`` (the r frame's centre);
* the settings: ``format`` (:data:`FORMAT`), ``format_version``, ``bands``,
  ``pixel_scale_arcsec``, ``bunit``, ``detect_sigma``, ``blank_radius_px``,
  ``starqso_version``, ``created``, ``command``.

A file whose ``format`` is :data:`FORMAT` is one starqso made: ``starqso skies --out`` replaces
only such a file (or none), never a user's file, a folder, a link or one of its inputs.

NumPy only (no TensorFlow).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from starqso import __version__
from starqso._util.atomic import write_bytes_atomically
from starqso._util.output_checks import refuse_output_among_inputs
from starqso.errors import InputError
from starqso.io.safe_read import read_npz
from starqso.schema import BANDS, BUNIT, PIXEL_SCALE_ARCSEC

__all__ = ["FORMAT", "SkyBackgrounds", "check_output", "is_sky_file", "read_skies", "write_skies"]

#: The ``format`` value of a sky-background file.
FORMAT = "starqso-skies"
FORMAT_VERSION = 1
# The most array bytes read from one file: 20,000 cutouts of 5x64x64 float32 take 1.6 GB.
MAX_BYTES = 4 << 30
_PER_CUTOUT = ("images", "field", "x", "y", "ra", "dec")
_PER_FIELD = ("fields", "psf_fwhm_arcsec", "psf_stars", "sky_sigma", "sky_level",
              "frame_files", "frame_sha256", "alignment", "centre_ra", "centre_dec")
_SETTINGS = ("format", "format_version", "bands", "pixel_scale_arcsec", "bunit",
             "detect_sigma", "blank_radius_px", "starqso_version", "created", "command")


@dataclass
class SkyBackgrounds:
    """Real blank-sky cutouts and what was measured on their fields (see the module docstring).

    Example:
        >>> skies = read_skies("skies.npz")  # doctest: +SKIP
        >>> skies.images.shape, skies.fwhm_of_cutouts().shape  # doctest: +SKIP
        ((200, 5, 48, 48), (200, 5))
    """

    images: np.ndarray
    field: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    fields: np.ndarray
    psf_fwhm_arcsec: np.ndarray
    psf_stars: np.ndarray
    sky_sigma: np.ndarray
    sky_level: np.ndarray
    frame_files: np.ndarray
    frame_sha256: np.ndarray
    alignment: np.ndarray
    centre_ra: np.ndarray
    centre_dec: np.ndarray
    detect_sigma: float
    blank_radius_px: float
    created: str = ""
    command: str = ""
    starqso_version: str = ""

    @property
    def size(self) -> int:
        """The cutout side in pixels."""
        return int(self.images.shape[-1])

    def field_index(self) -> np.ndarray:
        """int ``(N,)``: each cutout's row in the per-field arrays."""
        lookup = {str(name): number for number, name in enumerate(self.fields)}
        return np.array([lookup[str(name)] for name in self.field], np.int64)

    def fwhm_of_cutouts(self) -> np.ndarray:
        """float ``(N, 5)``: the PSF FWHM (arcsec) of each cutout's field, per band."""
        return self.psf_fwhm_arcsec[self.field_index()]

    def sigma_of_cutouts(self) -> np.ndarray:
        """float ``(N, 5)``: the sky sigma (nanomaggies) of each cutout's field, per band."""
        return self.sky_sigma[self.field_index()]


def is_sky_file(path) -> bool:
    """Whether ``path`` is a regular file (not a link) that reads as a sky-background file.

    Example:
        >>> is_sky_file("notes.txt")
        False
    """
    path = os.fspath(path)
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        read_skies(path)
    except InputError:
        return False
    return True


def read_skies(path) -> SkyBackgrounds:
    """Read and check a sky-background file, or every ``.npz`` one in a folder (concatenated).

    Args:
        path: a file ``starqso skies`` wrote, or a folder of them.

    Returns:
        :class:`SkyBackgrounds`.

    Raises:
        InputError: one line naming the file and what was expected: not a starqso sky file,
            another band order, pixel scale or unit, arrays that disagree in shape, images
            that are not finite, cutouts of different sizes across a folder's files.

    Example:
        >>> read_skies("skies.npz").images.shape  # doctest: +SKIP
        (200, 5, 48, 48)
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.endswith(".npz"))
        if not names:
            raise InputError(f"folder {path} holds no sky-background files; expected .npz "
                             f"files written by starqso skies")
        parts = [_read_one(os.path.join(path, name)) for name in names]
        sizes = {part.size for part in parts}
        if len(sizes) > 1:
            raise InputError(f"sky-background files in {path} have cutouts of different sizes "
                             f"{sorted(sizes)}; expected one size")
        return _concatenated(parts, path)
    return _read_one(path)


def _concatenated(parts, path):
    merged = {}
    for name in _PER_CUTOUT + _PER_FIELD:
        merged[name] = np.concatenate([getattr(part, name) for part in parts])
    if len(set(merged["fields"].tolist())) != len(merged["fields"]):
        raise InputError(f"sky-background files in {path} hold the same field twice; expected "
                         f"each field once")
    first = parts[0]
    return SkyBackgrounds(**merged, detect_sigma=first.detect_sigma,
                          blank_radius_px=first.blank_radius_px, created=first.created,
                          command=first.command, starqso_version=first.starqso_version)


def _read_one(path) -> SkyBackgrounds:
    what = "sky-background"
    arrays = read_npz(path, what, max_bytes=MAX_BYTES)
    expected = "a file written by starqso skies"
    if str(arrays.get("format", "")) != FORMAT:
        raise InputError(f"{path} is not a sky-background file (format "
                         f"{str(arrays.get('format', ''))!r}); expected {expected}")
    missing = [name for name in _PER_CUTOUT + _PER_FIELD + _SETTINGS if name not in arrays]
    if missing:
        raise InputError(f"sky-background file {path} lacks {', '.join(missing)}; expected "
                         f"{expected}")
    if int(arrays["format_version"]) > FORMAT_VERSION:
        raise InputError(f"sky-background file {path} has format version "
                         f"{int(arrays['format_version'])}; this starqso reads up to "
                         f"{FORMAT_VERSION} (upgrade starqso)")
    for name, want in (("bands", "".join(BANDS)), ("bunit", BUNIT)):
        if str(arrays[name]) != want:
            raise InputError(f"sky-background file {path} has {name} {str(arrays[name])!r}; "
                             f"expected {want!r}")
    if abs(float(arrays["pixel_scale_arcsec"]) - PIXEL_SCALE_ARCSEC) > 1e-6:
        raise InputError(f"sky-background file {path} has pixel scale "
                         f"{float(arrays['pixel_scale_arcsec'])}\"/px; expected "
                         f"{PIXEL_SCALE_ARCSEC}")
    images = arrays["images"]
    if images.ndim != 4 or images.shape[1] != len(BANDS) or images.shape[2] != images.shape[3]:
        raise InputError(f"sky-background file {path} has images of shape {images.shape}; "
                         f"expected (N, {len(BANDS)}, S, S)")
    if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise InputError(f"sky-background file {path} has images that are not all finite "
                         f"floats (dtype {images.dtype}); expected {expected}")
    count, field_count = len(images), len(arrays["fields"])
    for name in _PER_CUTOUT:
        if arrays[name].shape[:1] != (count,):
            raise InputError(f"sky-background file {path}: {name} has shape "
                             f"{arrays[name].shape}; expected ({count}, ...) like images")
    for name in _PER_FIELD:
        want = (field_count, len(BANDS)) if name not in ("fields", "centre_ra", "centre_dec") \
            else (field_count,)
        if arrays[name].shape != want:
            raise InputError(f"sky-background file {path}: {name} has shape "
                             f"{arrays[name].shape}; expected {want}")
    unknown = sorted(set(arrays["field"].tolist()) - set(arrays["fields"].tolist()))
    if unknown:
        raise InputError(f"sky-background file {path} has cutouts of fields it does not "
                         f"describe ({', '.join(unknown[:3])}); expected {expected}")
    values = {name: arrays[name] for name in _PER_CUTOUT + _PER_FIELD}
    return SkyBackgrounds(**values, detect_sigma=float(arrays["detect_sigma"]),
                          blank_radius_px=float(arrays["blank_radius_px"]),
                          created=str(arrays["created"]), command=str(arrays["command"]),
                          starqso_version=str(arrays["starqso_version"]))


def check_output(out, inputs) -> str:
    """Refuse an ``--out`` that starqso may not write: one line naming it.

    Args:
        out: the ``.npz`` to write.
        inputs: the frame files read (an output may not be one of them).

    Returns:
        ``out`` as a ``str``.

    Raises:
        InputError: a name not ending in ``.npz``, a folder, a link, an input, or an existing
            file that is not a sky-background file starqso made.

    Example:
        >>> check_output("skies.npz", [])  # doctest: +SKIP
        'skies.npz'
    """
    out = os.fspath(out)
    if not out.lower().endswith(".npz"):
        raise InputError(f"--out must end in .npz (one sky-background file). Received: --out "
                         f"{out}")
    refuse_output_among_inputs(out, [(path, f"the survey frame {path}") for path in inputs],
                               option="--out")
    if os.path.islink(out):
        raise InputError(f"--out {out} is a symbolic link; starqso writes no file through a "
                         f"link: choose another --out. Received: --out {out}")
    if os.path.lexists(out) and not is_sky_file(out):
        raise InputError(f"--out {out} exists and is not a sky-background file starqso made; "
                         f"it is not replaced: choose a new name (or an earlier starqso skies "
                         f"output). Received: --out {out}")
    return out


def write_skies(out, skies: SkyBackgrounds) -> str:
    """Write ``skies`` to ``out`` atomically (the caller has run :func:`check_output`).

    Returns:
        ``out`` as a ``str``.

    Example:
        >>> write_skies("skies.npz", skies)  # doctest: +SKIP
        'skies.npz'
    """
    arrays = {name: getattr(skies, name) for name in _PER_CUTOUT + _PER_FIELD}
    arrays["images"] = np.ascontiguousarray(arrays["images"], np.float32)
    for name in ("field", "fields", "frame_files", "frame_sha256", "alignment"):
        arrays[name] = np.asarray(arrays[name], dtype=str)
    arrays.update(format=np.array(FORMAT), format_version=np.array(FORMAT_VERSION),
                  bands=np.array("".join(BANDS)), pixel_scale_arcsec=np.array(PIXEL_SCALE_ARCSEC),
                  bunit=np.array(BUNIT), detect_sigma=np.array(float(skies.detect_sigma)),
                  blank_radius_px=np.array(float(skies.blank_radius_px)),
                  starqso_version=np.array(skies.starqso_version or __version__),
                  created=np.array(skies.created), command=np.array(skies.command or ""))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomically(out, buffer.getvalue())

