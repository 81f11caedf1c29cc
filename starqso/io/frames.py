"""Survey frames: whole single-band images with a WCS, grouped into fields and cut per band.

A *frame* is one band of one field of a survey, as SDSS serves them (``frame-r-004510-4-0030
.fits.bz2``): a 2-D image in nanomaggies with a celestial WCS. ``starqso skies`` reads a user's
frames through here to cut real blank-sky backgrounds (:mod:`starqso.preprocessing.
sky_backgrounds`); the same cutting serves any code that needs aligned 5-band cutouts of a
field at given positions.

* :func:`frame_paths` lists the FITS files of arguments that are files or folders;
* :func:`group_fields` sorts them into fields of one frame per band (:data:`~starqso.schema.
  BANDS`): the band comes from the ``FILTER`` card, else from a lone band letter in the file
  name (``frame-r-...``, ``field7_r.fits``), else from the order of five files given alone;
* :func:`read_field` reads and checks a field's five frames (2-D, finite, nanomaggies,
  celestial WCS at the survey's pixel scale, bands covering the same sky);
* :class:`Field` cuts ``(5, S, S)`` cutouts aligned to the r frame's pixel grid.

The bands of one SDSS field are not on one pixel grid: each CCD sees the field a little
shifted. Where the frames differ from the r frame by a shift only (same scale and rotation to
a quarter pixel across a cutout), a cutout is cut at the nearest whole-pixel offset, so its
pixels and noise stay exactly the survey's; otherwise each band is resampled (bilinear) onto
the r cutout's grid through the WCS, and :attr:`Field.alignment` says so.

NumPy, SciPy and astropy only (no TensorFlow).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from starqso.errors import InputError
from starqso.io._fits import hdu_data, native, open_fits
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC, PIXEL_SCALE_TOLERANCE

__all__ = ["FRAME_SUFFIXES", "Field", "Frame", "frame_paths", "group_fields", "read_field"]

#: File name endings read as frames when a folder is given.
FRAME_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.bz2", ".fits.fz", ".fit.gz",
                  ".fit.bz2")
#: ``BUNIT`` values that mean nanomaggies (case and surrounding blanks ignored).
NANOMAGGY_UNITS = ("nanomaggy", "nanomaggies", "nmgy", "nanomaggys")
# Least fraction of the r frame's area another band must cover to count as the same field;
# SDSS bands of one field overlap by ~99%.
MIN_OVERLAP = 0.5
# Largest drift (pixels) across a cutout for which a whole-pixel shift aligns a band.
SHIFT_TOLERANCE_PX = 0.25
_BAND_TOKEN = re.compile(r"(?<![A-Za-z0-9])([ugriz])(?![A-Za-z0-9])")


@dataclass(frozen=True)
class Frame:
    """One band of one field.

    Attributes:
        path: the file.
        band: one of :data:`~starqso.schema.BANDS`.
        data: float32 ``(H, W)`` nanomaggies; non-finite pixels are NaN.
        wcs: the celestial :class:`astropy.wcs.WCS` of ``data``.
    """

    path: str
    band: str
    data: np.ndarray
    wcs: object


@dataclass
class Field:
    """The five frames of one field, cut on the r frame's pixel grid.

    Attributes:
        name: the field's name (from its file names).
        frames: one :class:`Frame` per band, in :data:`~starqso.schema.BANDS` order.
        alignment: per band, ``"shift"`` (whole-pixel offsets) or ``"resample"`` (bilinear
            through the WCS).
    """

    name: str
    frames: tuple
    alignment: tuple = field(default=())

    def __post_init__(self):
        if not self.alignment:
            self.alignment = tuple(_alignment(self.reference, frame) for frame in self.frames)

    @property
    def reference(self) -> Frame:
        """The r frame, whose pixel grid the cutouts share."""
        return self.frames[BANDS.index("r")]

    def band_positions(self, x, y):
        """Pixel positions in every band of r-frame pixel positions ``(x, y)`` (0-based).

        Returns:
            float64 ``(5, 2, N)``: x and y per band.
        """
        x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
        ra, dec = self.reference.wcs.all_pix2world(x, y, 0)
        out = np.empty((len(self.frames), 2, len(x)))
        for number, frame in enumerate(self.frames):
            out[number] = frame.wcs.all_world2pix(ra, dec, 0) if frame is not self.reference \
                else (x, y)
        return out

    def cut(self, x, y, size):
        """``(N, 5, size, size)`` cutouts centred on r-frame pixel positions ``(x, y)``.

        A cutout covers r pixels ``round(x - (size-1)/2) ...`` onwards; each band is cut at
        its own frame's matching place (:attr:`alignment`). Pixels outside a frame are NaN.

        Args:
            x, y: 0-based r-frame pixel positions of the cutout centres.
            size: the cutout side in pixels.

        Returns:
            float32 ``(N, 5, size, size)`` nanomaggies, bands ugriz.

        Example:
            >>> field.cut([1000.0], [700.0], 32).shape  # doctest: +SKIP
            (1, 5, 32, 32)
        """
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        half = (size - 1) / 2
        x0, y0 = np.round(x - half), np.round(y - half)
        centres = self.band_positions(x0 + half, y0 + half)
        out = np.full((len(x), len(self.frames), size, size), np.nan, np.float32)
        grid = np.arange(size, dtype=np.float64)
        for number, (frame, how) in enumerate(zip(self.frames, self.alignment, strict=False)):
            if how == "shift":
                bx = np.round(centres[number, 0] - half).astype(np.int64)
                by = np.round(centres[number, 1] - half).astype(np.int64)
                for row in range(len(x)):
                    out[row, number] = _window(frame.data, bx[row], by[row], size)
                continue
            from scipy.ndimage import map_coordinates

            for row in range(len(x)):
                xx, yy = np.meshgrid(x0[row] + grid, y0[row] + grid)
                positions = self.band_positions(xx.ravel(), yy.ravel())[number]
                out[row, number] = map_coordinates(
                    frame.data, positions[::-1], order=1, mode="constant", cval=np.nan,
                    prefilter=False).reshape(size, size)
        return out

    def inside_all(self, x, y, size):
        """Whether cutouts at r positions ``(x, y)`` lie wholly inside every band's frame."""
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        half = (size - 1) / 2
        centres = self.band_positions(np.round(x - half) + half, np.round(y - half) + half)
        ok = np.ones(len(x), bool)
        for number, frame in enumerate(self.frames):
            height, width = frame.data.shape
            bx = np.round(centres[number, 0] - half)
            by = np.round(centres[number, 1] - half)
            ok &= (bx >= 0) & (by >= 0) & (bx + size <= width) & (by + size <= height)
        return ok


def _window(data, x0, y0, size):
    """``data[y0:y0+size, x0:x0+size]``, NaN where it runs off the frame."""
    out = np.full((size, size), np.nan, np.float32)
    height, width = data.shape
    ys, xs = slice(max(y0, 0), min(y0 + size, height)), slice(max(x0, 0), min(x0 + size, width))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = data[ys, xs]
    return out


def _alignment(reference: Frame, frame: Frame) -> str:
    """``"shift"`` when ``frame`` maps onto ``reference``'s grid by a shift to a quarter pixel
    across a 64-pixel cutout, else ``"resample"``."""
    if frame is reference:
        return "shift"
    height, width = reference.data.shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    x = np.array([cx, cx + 32.0, cx, cx - 32.0, cx])
    y = np.array([cy, cy, cy + 32.0, cy, cy - 32.0])
    ra, dec = reference.wcs.all_pix2world(x, y, 0)
    bx, by = frame.wcs.all_world2pix(ra, dec, 0)
    drift = np.hypot((bx - x) - (bx[0] - x[0]), (by - y) - (by[0] - y[0]))
    return "shift" if drift.max() <= SHIFT_TOLERANCE_PX else "resample"


def frame_paths(arguments) -> list:
    """The frame files named by ``arguments``: files as given, folders as their FITS files.

    Args:
        arguments: paths of frame files or of folders holding them (:data:`FRAME_SUFFIXES`,
            not searched recursively). In a folder where some file names carry a lone band
            letter (``frame-r-...``), only those are frames (a catalogue beside them is not).

    Returns:
        list of ``str`` paths, folders' files in name order.

    Raises:
        InputError: a path that does not exist, or a folder without FITS files.

    Example:
        >>> frame_paths(["frames/"])  # doctest: +SKIP
        ['frames/frame-g-004510-4-0030.fits.bz2', ...]
    """
    paths = []
    for argument in arguments:
        argument = os.fspath(argument)
        if os.path.isdir(argument):
            found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                           if name.lower().endswith(FRAME_SUFFIXES)
                           and os.path.isfile(os.path.join(argument, name)))
            if not found:
                raise InputError(f"folder {argument} holds no FITS frames; expected files "
                                 f"ending in {', '.join(FRAME_SUFFIXES[:3])} (or .gz/.bz2), "
                                 f"one per band")
            # A folder of frames named by band (SDSS's frame-r-...) may hold other FITS files
            # too, such as the field's catalogue: those are not frames.
            named = [path for path in found if len(_BAND_TOKEN.findall(_stem(path))) == 1]
            paths += named or found
        elif os.path.exists(argument):
            paths.append(argument)
        else:
            raise InputError(f"survey frame not found: {argument}")
    return paths


def _stem(path):
    name = os.path.basename(path)
    lowered = name.lower()
    for suffix in sorted(FRAME_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[:-len(suffix)]
    return os.path.splitext(name)[0]


def group_fields(paths) -> list:
    """Sort frame files into fields by name: ``[(field name, [(path, band or None), ...])]``.

    A lone band letter in a file name (``frame-r-004510-4-0030``, ``field7_r``) gives the
    band, and the name without it the field; files without one form a single field whose
    bands come from their ``FILTER`` cards (or, for exactly five such files given, their
    order u, g, r, i, z), checked by :func:`read_field`.

    Raises:
        InputError: two files with the same band and field name.

    Example:
        >>> group_fields(["frame-u-1.fits", "frame-r-1.fits"])[0][0]
        'frame-1'
    """
    groups = {}
    for path in paths:
        stem = _stem(path)
        tokens = list(_BAND_TOKEN.finditer(stem))
        if len(tokens) == 1:
            token = tokens[0]
            key = stem[:token.start()] + "*" + stem[token.end():]
            band = token.group(1)
        else:
            key, band = "", None
        members = groups.setdefault(key, [])
        if band is not None and any(band == known for _, known in members):
            other = next(name for name, known in members if known == band)
            raise InputError(f"two frames of band {band} for field "
                             f"{_field_name(key, path)}: {other} and {path}; expected one "
                             f"frame per band and field")
        members.append((path, band))
    return [(_field_name(key, members[0][0]), members) for key, members in groups.items()]


def _field_name(key, path):
    if not key:
        return _stem(path)
    return re.sub(r"[-_.]?\*", "", key, count=1).strip("-_.") or _stem(path)


def read_field(name, members) -> Field:
    """Read and check the frames of one field (:func:`group_fields`'s ``members``).

    Args:
        name: the field's name, for messages and the product.
        members: ``[(path, band or None), ...]``.

    Returns:
        :class:`Field`, frames in ugriz order.

    Raises:
        InputError: one line naming the file and what was expected: not a FITS image, not
            2-D, no celestial WCS, a pixel scale other than the survey's, ``BUNIT`` not
            nanomaggies, no finite pixel, a band that cannot be told or does not match the
            name, a band missing or given twice, or bands that do not cover the same sky.

    Example:
        >>> field = read_field(*group_fields(frame_paths(["frames/"]))[0])  # doctest: +SKIP
    """
    positional = (len(members) == len(BANDS) and all(band is None for _, band in members))
    frames = {}
    for number, (path, band) in enumerate(members):
        frame = read_frame(path, band, BANDS[number] if positional else None)
        if frame.band in frames:
            raise InputError(f"two frames of band {frame.band} for field {name}: "
                             f"{frames[frame.band].path} and {path}; expected one frame per "
                             f"band and field")
        frames[frame.band] = frame
    missing = [band for band in BANDS if band not in frames]
    if missing:
        given = ", ".join(f"{frame.path} ({band})" for band, frame in frames.items())
        raise InputError(f"field {name} has frames for {len(frames)} of the {len(BANDS)} bands "
                         f"({given}); expected one frame per band {' '.join(BANDS)}: missing "
                         f"{', '.join(missing)}")
    ordered = tuple(frames[band] for band in BANDS)
    _check_overlap(name, ordered)
    return Field(name, ordered)


def read_frame(path, band=None, position_band=None) -> Frame:
    """Read one frame and check it (see :func:`read_field`).

    Args:
        path: the FITS file.
        band: the band its name gives, or None.
        position_band: the band its place among five files gives, or None.

    Returns:
        :class:`Frame`.
    """
    from astropy.wcs import WCS, FITSFixedWarning

    what = "survey frame"
    expected = "a 2-D image (one band of one field) in nanomaggies with a celestial WCS"
    with open_fits(path, what) as hdulist:
        found = None
        for number, hdu in enumerate(hdulist):
            if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
                found = number, hdu
                break
        if found is None:
            raise InputError(f"survey frame {path} holds no image; expected {expected}")
        number, hdu = found
        data = hdu_data(hdu, path, what)
        header = hdu.header.copy()
    if data is None or data.ndim != 2:
        shape = None if data is None else tuple(data.shape)
        raise InputError(f"survey frame {path} (HDU {number}) has shape {shape}; expected "
                         f"{expected}")
    unit = header.get("BUNIT")
    if unit is not None and str(unit).strip().lower() not in NANOMAGGY_UNITS:
        raise InputError(f"survey frame {path} has BUNIT {str(unit).strip()!r}; expected "
                         f"nanomaggies (BUNIT 'nanomaggy', as SDSS corrected frames: 1 "
                         f"nanomaggy is AB magnitude 22.5): calibrate the frame first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as err:  # astropy raises many types for a broken WCS
            raise InputError(f"survey frame {path} has an unreadable WCS "
                             f"({str(err).splitlines()[0] if str(err) else type(err).__name__});"
                             f" expected a celestial WCS (CTYPE1/2 RA---TAN/DEC--TAN, CRVAL, "
                             f"CRPIX, CD)") from None
    if not wcs.has_celestial or wcs.celestial.naxis != 2:
        raise InputError(f"survey frame {path} has no celestial WCS; expected CTYPE1/2 such as "
                         f"RA---TAN/DEC--TAN with CRVAL, CRPIX and CD (or CDELT) cards, to "
                         f"align the bands")
    wcs = wcs.celestial
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
    if not np.isfinite(scale) or abs(scale / PIXEL_SCALE_ARCSEC - 1) > PIXEL_SCALE_TOLERANCE:
        raise InputError(f"survey frame {path} has a pixel scale of {scale:.4g}\"/px by its "
                         f"WCS; expected the survey's {PIXEL_SCALE_ARCSEC}\"/px (within "
                         f"{PIXEL_SCALE_TOLERANCE:.0%})")
    data = native(data, np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        raise InputError(f"every pixel of survey frame {path} is NaN or infinite; expected a "
                         f"finite image")
    data[~finite] = np.nan
    values = data[finite]
    if values.min() == values.max():
        raise InputError(f"survey frame {path} is constant (every finite pixel is "
                         f"{values.min():g}); expected an image of the sky")
    card = str(header.get("FILTER", "")).strip()
    card_band = card if card in BANDS else None
    if card_band is not None and band is not None and card_band != band:
        raise InputError(f"survey frame {path} has FILTER {card!r} but its name says band "
                         f"{band!r}; expected them to agree")
    chosen = card_band or band or position_band
    if chosen is None:
        raise InputError(f"cannot tell the band of survey frame {path}: expected a FILTER card "
                         f"u/g/r/i/z, a lone band letter in its name (frame-r-..., field_r.fits),"
                         f" or exactly five frames given in the order u g r i z. Received: "
                         f"FILTER {card!r}")
    return Frame(os.fspath(path), chosen, data, wcs)


def _check_overlap(name, frames):
    """Every band covers at least :data:`MIN_OVERLAP` of the r frame's sky."""
    reference = frames[BANDS.index("r")]
    height, width = reference.data.shape
    xx, yy = np.meshgrid(np.linspace(0, width - 1, 21), np.linspace(0, height - 1, 21))
    ra, dec = reference.wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    for frame in frames:
        if frame is reference:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bx, by = frame.wcs.all_world2pix(ra, dec, 0, quiet=True)
        band_height, band_width = frame.data.shape
        inside = (bx >= -0.5) & (by >= -0.5) & (bx <= band_width - 0.5) & (by <= band_height - 0.5)
        if inside.mean() < MIN_OVERLAP:
            centre = reference.wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)[0]
            other = frame.wcs.all_pix2world(
                [[(band_width - 1) / 2, (band_height - 1) / 2]], 0)[0]
            raise InputError(
                f"survey frames {reference.path} (r) and {frame.path} ({frame.band}) of field "
                f"{name} do not cover the same sky: {inside.mean():.0%} of the r frame lies in "
                f"the {frame.band} frame (centres RA {centre[0]:.5f} Dec {centre[1]:.5f} and RA "
                f"{other[0]:.5f} Dec {other[1]:.5f}); expected the {len(BANDS)} bands of one "
                f"field (at least {MIN_OVERLAP:.0%} overlap)")
