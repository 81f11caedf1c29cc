"""Five-band image cutouts: the FITS layout starqso reads and writes.

Data model
----------
A cutout is a FITS file holding one float cube of shape ``(5, H, W)`` in NumPy order (so
``NAXIS3 = 5``, ``NAXIS2 = H``, ``NAXIS1 = W`` in the header):

* The cube lives in the primary HDU, or, when the primary HDU is empty (as many survey tools
  write it), in the first image extension.
* Bands are SDSS ``u, g, r, i, z`` in that order along the first axis.
* Pixels are in nanomaggies, so an AB magnitude is ``22.5 - 2.5 * log10(flux)``; sky-subtracted
  pixels can be zero or negative.
* The pixel scale is the SDSS one, 0.396 arcsec per pixel.
* Header cards written: ``BUNIT = 'nanomaggy'``, ``BANDS = 'ugriz'``, ``PIXSCALE = 0.396``.

Reading is tolerant where that is safe: integer or big-endian data become native ``float32``,
a missing ``BUNIT`` or ``BANDS`` card is accepted (many cutout services omit them),
``BUNIT = 'nanomaggies'`` is taken to mean the same as ``'nanomaggy'``, and a cube whose
``BANDS`` card names the five bands in another order (``'zirgu'``) is returned in ``ugriz``
order. Cards that contradict the survey (:data:`starqso.schema.SDSS`) are refused: ``BUNIT``,
``BANDS``, ``PIXSCALE``, the pixel scale a celestial WCS gives (``CD`` or ``CDELT``, within
:data:`~starqso.schema.PIXEL_SCALE_TOLERANCE`), and the ``BAND``/``FILTER`` card of a one-band
image. Non-finite pixels are
returned untouched; flagging them is left to the caller, which knows the object's context.

Reading is bounded, so one hostile or broken file costs one flagged row, never the run: with
``crop_size`` only the centre crop is read (the rows under it in a plain file, the tiles under
it in a tile-compressed ``.fits.fz``); a header claiming more data than the file holds is
refused as truncated before any pixel is touched; and no read decompresses or loads more than
:data:`MAX_CUTOUT_VALUES` pixel values, so a whole-file compressed (``.gz``, ``.bz2``,
``.xz``, ``.zip``) image larger than that is refused from its header alone.

Writing is deterministic: the same cube and cards always give the same bytes (no ``DATE`` card,
no checksum), and the file is written atomically.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from starqso._util.atomic import write_bytes_atomically
from starqso.errors import InputError
from starqso.io._fits import (
    check_bitpix,
    check_readable_file,
    decompressed_prefix,
    hdu_data,
    hdulist_bytes,
    native,
    open_fits_lazily,
    whole_file_compression,
)
from starqso.preprocessing.crop import crop_window
from starqso.schema import BANDS, BUNIT, PIXEL_SCALE_ARCSEC, PIXEL_SCALE_TOLERANCE, SDSS, Survey

#: The most pixel values one :func:`read_cutout` call may decompress or load: 2**23, which is
#: 64 MiB as float64 (FITS' widest pixel type) and 32 MiB as the float32 it returns. That is a
#: 5-band float64 cube of 1,295 x 1,295 pixels (8.5 arcmin at 0.396 arcsec/px) or a float32
#: one of 1,832 x 1,832, far more than an object cutout needs, while a batch of bad rows can
#: never take more than a few hundred MB however large their headers claim they are.
MAX_CUTOUT_VALUES = 2**23
#: The decompressed bytes read to find the image header of a compressed file: 360 FITS
#: blocks, about 13,000 header cards (survey cutout headers have a few hundred).
MAX_HEADER_BYTES = 360 * 2880
# Cards that describe the FITS structure itself: astropy writes them, so they are neither
# returned in Cutout.header nor accepted from the caller.
_STRUCTURAL_KEYWORD = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|BSCALE|BZERO|BLANK|"
    r"CHECKSUM|DATASUM|EXTNAME|EXTVER|EXTLEVEL)$"
)
_FITS_KEYWORD = re.compile(r"^[A-Z0-9_-]{1,8}$")


@dataclass(frozen=True, eq=False)
class Cutout:
    """A five-band cutout as read from disk.

    Attributes:
        data: ``float32`` cube in native byte order, shape ``(5, H, W)``, bands ``ugriz``,
            nanomaggies. Non-finite pixels are kept as they were in the file.
        header: Plain ``dict`` of the file's header cards (upper-case keyword to ``str``,
            ``int``, ``float`` or ``bool``), primary HDU first and the image extension's cards
            on top; structural cards (``NAXIS``, ``BITPIX``, ...) and ``COMMENT``/``HISTORY``
            are left out, so it can be passed straight back to :func:`write_cutout`.
        path: The file the cutout was read from.
    """

    data: np.ndarray
    header: dict
    path: str


def _header_cards(header: fits.Header) -> dict:
    cards = {}
    for keyword, value in header.items():
        # HIERARCH and commentary cards are skipped so the dict can be written back as is.
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            continue
        if _STRUCTURAL_KEYWORD.match(keyword):
            continue
        if isinstance(value, (bool, int, float, str)):
            cards[keyword] = value
    return cards


def _find_image_hdu(hdulist: fits.HDUList, path: str):
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    for number, hdu in enumerate(hdulist):
        # Before the next HDU is looked for: its place depends on this one's BITPIX.
        check_bitpix(hdu.header, path, "cutout", number)
        if isinstance(hdu, image_types) and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    raise InputError(
        "cutout must hold a (5, H, W) image in the primary HDU or an image extension. "
        f"Received: no HDU with image data in file {path}"
    )


def _check_cube_shape(shape: tuple, where: str) -> None:
    expected = "cutout must have 5 bands (ugriz) as (5, H, W)"
    if len(shape) != 3:
        raise InputError(f"{expected}. Received: {len(shape)}-D shape={shape} {where}")
    if shape[0] != len(BANDS):
        hint = ""
        if shape[-1] == len(BANDS):
            hint = " (looks like (H, W, 5): put the band axis first, e.g. np.moveaxis(data, -1, 0))"
        raise InputError(f"{expected}. Received: shape={shape}{hint} {where}")
    if shape[1] == 0 or shape[2] == 0:
        raise InputError(f"{expected} with H, W >= 1. Received: shape={shape} {where}")


def _check_unit_and_bands(cards: Mapping, where: str, survey: Survey = SDSS) -> None:
    """Refuse header cards that contradict ``survey``: BUNIT, BANDS, PIXSCALE and the pixel
    scale of a celestial WCS. A card that is absent passes."""
    unit = cards.get("BUNIT")
    if unit is not None and not survey.accepts_unit(unit):
        raise InputError(
            f"cutout pixels must be in {survey.name} units, {survey.unit} "
            f"(BUNIT={survey.unit!r}). Received: BUNIT={unit!r} {where}"
        )
    bands = cards.get("BANDS")
    if bands is not None and sorted(str(bands).strip().lower()) != sorted("".join(survey.bands)):
        raise InputError(
            f"cutout bands must be {', '.join(survey.bands)}, once each "
            f"(BANDS={''.join(survey.bands)!r}). Received: BANDS={bands!r} {where}"
        )
    scale = cards.get("PIXSCALE")
    if scale is not None and (not isinstance(scale, (int, float))
                              or not math.isclose(scale, survey.pixel_scale_arcsec)):
        raise InputError(
            f"cutout pixel scale must be {survey.pixel_scale_arcsec} arcsec/px (PIXSCALE). "
            f"Received: PIXSCALE={scale!r} {where}"
        )
    described = _wcs_pixel_scale(cards)
    if described is not None and abs(described[1] / survey.pixel_scale_arcsec - 1) \
            > PIXEL_SCALE_TOLERANCE:
        shown, scale = described
        raise InputError(
            f"cutout pixel scale must be {survey.pixel_scale_arcsec} arcsec/px ({survey.name}, "
            f"within {PIXEL_SCALE_TOLERANCE:.0%}); its WCS gives {scale:.4g} arcsec/px. "
            f"Received: {', '.join(f'{key}={value!r}' for key, value in shown.items())} "
            f"{where}"
        )


# The first four characters of a CTYPE naming a celestial axis (trailing dashes dropped).
_CELESTIAL_AXES = ("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT")


def _wcs_pixel_scale(cards: Mapping):
    """``(cards, arcsec/px)``: the pixel scale a celestial WCS's ``CD`` (or ``CDELT`` and
    ``PC``) cards give, with the cards it was read from; None without such a WCS in degrees
    (or with unusable values: then nothing can be compared)."""
    types = [str(cards.get(f"CTYPE{axis}", "")).strip().upper() for axis in (1, 2)]
    units = [str(cards.get(f"CUNIT{axis}", "deg")).strip().lower() for axis in (1, 2)]
    if not all(kind[:4].rstrip("-") in _CELESTIAL_AXES for kind in types) \
            or any(unit not in ("deg", "") for unit in units):
        return None
    cd = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
    if any(name in cards for name in cd):
        shown = {name: cards[name] for name in cd if name in cards}  # absent elements are 0
        matrix = [cards.get(name, 0.0) for name in cd]
    elif "CDELT1" in cards and "CDELT2" in cards:
        pc = [cards.get(name, default) for name, default in
              (("PC1_1", 1.0), ("PC1_2", 0.0), ("PC2_1", 0.0), ("PC2_2", 1.0))]
        shown = {"CDELT1": cards["CDELT1"], "CDELT2": cards["CDELT2"]}
        if any(not isinstance(value, (int, float)) for value in (*shown.values(), *pc)):
            return None
        matrix = [shown["CDELT1"] * pc[0], shown["CDELT1"] * pc[1],
                  shown["CDELT2"] * pc[2], shown["CDELT2"] * pc[3]]
    else:
        return None
    if any(not isinstance(value, (int, float)) or isinstance(value, bool) for value in matrix):
        return None
    scale = math.sqrt(abs(matrix[0] * matrix[3] - matrix[1] * matrix[2])) * 3600.0
    return (shown, scale) if math.isfinite(scale) and scale > 0 else None


def _checked_crop_size(crop_size) -> int | None:
    if crop_size is None:
        return None
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) \
            or crop_size < 1:
        raise InputError(f"crop_size must be a positive integer or None. "
                         f"Received: crop_size={crop_size!r}")
    return int(crop_size)


def _data_bytes(hdu) -> int:
    """Bytes of the HDU's data block as its header claims them, without padding."""
    bintable = getattr(hdu, "_bintable", None)
    if isinstance(hdu, fits.CompImageHDU) and bintable is not None:
        header = bintable.header
        return int(header["NAXIS1"]) * int(header["NAXIS2"]) + int(header.get("PCOUNT", 0))
    if isinstance(hdu, fits.CompImageHDU):
        # No table header to hand: the padded span is the best bound the HDU gives.
        return max(int(hdu.fileinfo()["datSpan"]) - 2879, 0)
    return math.prod(hdu.shape) * abs(int(hdu.header["BITPIX"])) // 8


def _tile_values(hdu, shape: tuple, window) -> int:
    """Pixel values decompressed to read the crop: every tile that overlaps it, in full."""
    tiles = tuple(int(size) for size in hdu.tile_shape)
    spans = tuple((0, length) for length in shape[:-2]) + tuple(
        (axis.start, axis.stop) for axis in window)
    values = 1
    for (start, stop), tile, length in zip(spans, tiles, shape, strict=False):
        count = (stop - 1) // tile - start // tile + 1
        values *= min(count * tile, length)
    return values


# Uncompressed images up to this many pixel values (5 x 256 x 256) are read whole and then
# cropped; larger ones through hdu.section, only the rows under the crop.
WHOLE_READ_VALUES = 5 * 256 * 256


def _refuse_size(shape: tuple, values: int, why: str, path: str) -> None:
    if values > MAX_CUTOUT_VALUES:
        raise InputError(
            f"cutout is too large to read: {why} needs {values:,} pixel values, over the "
            f"limit of {MAX_CUTOUT_VALUES:,} (64 MiB as float64). Received: "
            f"shape={shape} in file {path}"
        )


def _check_size(hdu, shape: tuple, window, crop_size, whole_file: str | None,
                path: str) -> None:
    """Refuse, before any pixel is read, a read that would decompress or load too much."""
    if whole_file is not None:
        # gzip and friends have no random access: the crop costs inflating all before it.
        _refuse_size(shape, math.prod(shape), f"a {whole_file}-compressed file is read in "
                     f"full, which", path)
    elif window is None:
        _refuse_size(shape, math.prod(shape), "reading the whole image (pass crop_size to "
                     "read only the centre)", path)
    elif isinstance(hdu, fits.CompImageHDU):
        _refuse_size(shape, _tile_values(hdu, shape, window),
                     "decompressing the tiles under the centre crop", path)
    else:
        _refuse_size(shape, math.prod(shape[:-2]) * crop_size * crop_size, "the centre crop",
                     path)


def _check_complete(hdu, available: int, path: str) -> None:
    """Refuse an image whose header claims more bytes than the file holds."""
    needed = int(hdu.fileinfo()["datLoc"]) + _data_bytes(hdu)
    if needed > available:
        raise InputError(
            f"cutout file is truncated (shorter than its FITS headers say): its header claims "
            f"{needed:,} bytes, the file holds {available:,}. Received: shape={tuple(hdu.shape)} "
            f"in file {path}"
        )


def _pixels(hdu, window, path: str) -> np.ndarray:
    if window is None:
        return native(hdu_data(hdu, path, "cutout"), np.float32)
    index = (slice(None),) * (len(hdu.shape) - 2) + window
    if not isinstance(hdu, fits.CompImageHDU) and math.prod(hdu.shape) <= WHOLE_READ_VALUES:
        # A typical cutout: one read of the whole (small) array is ~8x faster than section's
        # row-by-row reads (5 bands x 32 rows); section is for the large images.
        return native(hdu_data(hdu, path, "cutout")[index], np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # section reads (or decompresses) only the rows and tiles under the crop.
            section = hdu.section[index]
    except (ValueError, TypeError, EOFError, IndexError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cutout file has a corrupt data block ({reason}): {path}") from err
    return native(section, np.float32)


def _band_of(header) -> str | None:
    """The SDSS band a ``BAND`` or ``FILTER`` card names (``'r'``, ``'SDSS_r'``, ``'r.00000'``
    as Pan-STARRS writes it), or None."""
    for keyword in ("BAND", "FILTER"):
        value = header.get(keyword)
        if isinstance(value, str):
            tokens = [token for token in re.split(r"[^a-z0-9]+", value.strip().lower())
                      if token in BANDS]
            if len(tokens) == 1:
                return tokens[0]
    return None


# The cards of a FITS world coordinate system: the bands of an object are compared on them.
_WCS_KEYWORD = re.compile(r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA)[12]$|^(CD|PC)[12]_[12]$|"
                          r"^(LONPOLE|LATPOLE|EQUINOX|RADESYS)$")
#: How far (pixels) the centres of an object's band images may lie apart on the sky, by their
#: WCS: more, and the centre crops of the bands show different sky.
MAX_BAND_OFFSET_PIXELS = 1.0


def _band_wcs(cards: Mapping):
    """The celestial/linear WCS of one band's cards, or None when it has none or it is
    unreadable (then nothing can be compared)."""
    described = {key: value for key, value in cards.items() if _WCS_KEYWORD.match(key)}
    if "CRPIX1" not in described or "CRPIX2" not in described:
        return None
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WCS(fits.Header(described), naxis=2)
    except Exception:  # astropy.wcs raises many types for a malformed WCS
        return None


def check_band_alignment(shapes, cards, where: str) -> None:
    """Refuse an object whose u, g, r, i, z images differ in shape, or whose WCS (when the
    headers give one) puts their centres more than :data:`MAX_BAND_OFFSET_PIXELS` apart.

    Each band is centre-cropped on its own, so either fault puts different sky under the
    crop of each band, and a colour made of them is wrong (a QSO read as a STAR).

    Args:
        shapes: the full (uncropped) image shape of each band, in u, g, r, i, z order.
        cards: each band's header cards (primary and image HDU merged), same order.
        where: the file(s), for the message.

    Raises:
        InputError: the shapes differ, or a band's centre is more than a pixel from the r
            band's by their WCS.

    Example:
        >>> check_band_alignment([(48, 48)] * 5, [{}] * 5, "in file a.fits")
    """
    if len(set(map(tuple, shapes))) > 1:
        found = ", ".join(f"{b} {tuple(s)}" for b, s in zip(BANDS, shapes, strict=False))
        raise InputError(f"the five band images of a row must have one shape (each band is "
                         f"cropped about its own centre). Received: {found} {where}")
    described = [{key: value for key, value in band.items() if _WCS_KEYWORD.match(key)}
                 for band in cards]
    if all(band == described[0] for band in described):
        return  # one WCS for all (or none at all): nothing can disagree
    systems = {band: _band_wcs(band_cards) for band, band_cards in zip(BANDS, cards, strict=False)}
    systems = {band: system for band, system in systems.items() if system is not None}
    if len(systems) < 2:
        return
    reference = "r" if "r" in systems else next(iter(systems))
    height, width = shapes[0][-2:]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)  # 0-based x, y: the crop's centre
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            sky = systems[reference].pixel_to_world_values(*centre)
            offsets = {band: float(np.hypot(*(np.asarray(system.world_to_pixel_values(*sky))
                                              - centre)))
                       for band, system in systems.items()}
        except Exception:  # a WCS astropy parses but cannot evaluate: nothing to compare
            return
    for band, offset in offsets.items():
        if not offset <= MAX_BAND_OFFSET_PIXELS:
            shown = "an undefined position" if not math.isfinite(offset) else \
                f"{offset:.1f} pixels"
            raise InputError(f"the five band images of a row must show the same sky: by their "
                             f"WCS the {band} image's centre lies {shown} from the "
                             f"{reference} image's, more than {MAX_BAND_OFFSET_PIXELS:g} pixel. "
                             f"Received: CRPIX {described[BANDS.index(band)].get('CRPIX1')}, "
                             f"{described[BANDS.index(band)].get('CRPIX2')} ({band}) and "
                             f"{described[BANDS.index(reference)].get('CRPIX1')}, "
                             f"{described[BANDS.index(reference)].get('CRPIX2')} "
                             f"({reference}) {where}")


def _read_plane(hdu, cards, path: str, available: int, crop_size, whole_file):
    """The (H, W) crop of one single-band image HDU, with the same bounds as a cube's."""
    where = f"in file {path}"
    shape = tuple(hdu.shape)
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"a one-band image must be 2-D (H, W). Received: shape={shape} "
                         f"{where}")
    _check_unit_and_bands({key: value for key, value in cards.items() if key != "BANDS"},
                          where)
    window = None if crop_size is None else crop_window(*shape[-2:], crop_size, where)
    _check_complete(hdu, available, path)
    _check_size(hdu, shape, window, crop_size, whole_file, path)
    return _pixels(hdu, window, path)


def _read_band_hdus(hdulist, path: str, available: int, crop_size, whole_file):
    """A (5, H, W) cube from a multi-extension file holding one image HDU per band."""
    planes = {}
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    for number, hdu in enumerate(hdulist):
        check_bitpix(hdu.header, path, "cutout", number)
        if not isinstance(hdu, image_types) or hdu.header.get("NAXIS", 0) == 0:
            continue
        band = _band_of(hdu.header)
        if band is None:
            raise InputError(f"a cutout with one image HDU per band needs a BAND or FILTER "
                             f"card naming u, g, r, i or z on each. Received: HDU {number} "
                             f"({hdu.name or 'unnamed'}) without one in file {path}")
        if band in planes:
            raise InputError(f"a cutout with one image HDU per band has band {band!r} twice "
                             f"(HDUs {planes[band][0]} and {number}); expected each of "
                             f"u, g, r, i, z once. Received: file {path}")
        planes[band] = (number, hdu)
    missing = [band for band in BANDS if band not in planes]
    if missing:
        raise InputError(f"a cutout with one image HDU per band needs all of u, g, r, i, z. "
                         f"Received: no HDU for {', '.join(missing)} in file {path}")
    shapes = {band: tuple(hdu.shape) for band, (_, hdu) in planes.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(f"the band images of a cutout must have one shape. Received: "
                         f"{', '.join(f'{b} {shapes[b]}' for b in BANDS)} in file {path}")
    primary = _header_cards(hdulist[0].header)
    check_band_alignment([shapes[band] for band in BANDS],
                         [{**primary, **_header_cards(planes[band][1].header)} for band in BANDS],
                         f"in file {path}")
    return np.stack([_read_plane(planes[band][1], {**primary,
                                                   **_header_cards(planes[band][1].header)},
                                 path, available, crop_size, whole_file) for band in BANDS])


def _read_image(source, path: str, available: int, crop_size, whole_file, band=None):
    where = f"in file {path}"
    with open_fits_lazily(source, path, "cutout") as hdulist:
        hdu = _find_image_hdu(hdulist, path)
        cards = _header_cards(hdulist[0].header)
        if hdu is not hdulist[0]:
            cards.update(_header_cards(hdu.header))
        shape = tuple(hdu.shape)
        if band is not None:
            named = _band_of(hdu.header) or _band_of(hdulist[0].header)
            if named is not None and named != band:
                raise InputError(f"the image_{band} file holds another band: its BAND/FILTER "
                                 f"card says {named!r}. Received: file {path}")
            named_card = [(key, cards[key]) for key in ("BAND", "FILTER")
                          if isinstance(cards.get(key), str)]
            if named is None and named_card:
                raise InputError(f"the image_{band} file's {named_card[0][0]} card names no "
                                 f"{SDSS.name} band ({', '.join(BANDS)}). Received: "
                                 f"{named_card[0][0]}={named_card[0][1]!r} in file {path}")
            return (_read_plane(hdu, cards, path, available, crop_size, whole_file), cards,
                    shape)
        if len(shape) == 2 and _band_of(hdu.header) is not None:
            data = _read_band_hdus(hdulist, path, available, crop_size, whole_file)
            return data, _header_cards(hdulist[0].header), shape
        # The header alone gives the shape, so a bad cube is rejected without loading it.
        _check_cube_shape(shape, where)
        _check_unit_and_bands(cards, where)
        window = None if crop_size is None else crop_window(*shape[-2:], crop_size, where)
        # Truncation first: a header claiming more than the file holds is the real fault.
        _check_complete(hdu, available, path)
        _check_size(hdu, shape, window, crop_size, whole_file, path)
        data = _pixels(hdu, window, path)
    return data, cards, shape


# The most decompressed bytes read from a whole-file compressed cutout with one HDU per band,
# whose later headers sit behind the first band's data: the value cap as float64, plus headers.
MAX_BAND_FILE_BYTES = MAX_CUTOUT_VALUES * 8 + 6 * MAX_HEADER_BYTES


def _read_cube(path: str, crop_size, band=None):
    compression = whole_file_compression(path)
    if compression is None:
        return _read_image(path, path, os.path.getsize(path), crop_size, None, band)
    # First the headers only (bounded), to learn how much the image needs; then exactly that.
    prefix = decompressed_prefix(path, compression, MAX_HEADER_BYTES, "cutout")
    try:
        with open_fits_lazily(io.BytesIO(prefix), path, "cutout") as hdulist:
            hdu = _find_image_hdu(hdulist, path)
            shape = tuple(hdu.shape)
            needed = None
            if band is None and len(shape) == 2 and _band_of(hdu.header) is not None:
                pass  # one HDU per band: the later bands' headers are behind this one's data
            else:
                if band is None:
                    _check_cube_shape(shape, f"in file {path}")
                _check_size(hdu, shape, None, None, compression, path)
                needed = int(hdu.fileinfo()["datLoc"]) + _data_bytes(hdu)
    except InputError as err:
        if len(prefix) == MAX_HEADER_BYTES and "not a readable FITS" in str(err):
            raise InputError(
                f"cutout FITS headers must end within the first {MAX_HEADER_BYTES:,} bytes. "
                f"Received: no image header there in {compression}-compressed file {path}"
            ) from err
        raise
    if needed is None:
        content = decompressed_prefix(path, compression, MAX_BAND_FILE_BYTES + 1, "cutout")
        if len(content) > MAX_BAND_FILE_BYTES:
            raise InputError(f"cutout is too large to read: a {compression}-compressed file is "
                             f"read in full, and this one decompresses to more than "
                             f"{MAX_BAND_FILE_BYTES:,} bytes. Received: file {path}")
    else:
        content = decompressed_prefix(path, compression, needed, "cutout")
    return _read_image(io.BytesIO(content), path, len(content), crop_size, compression, band)


def _read_or_refuse(path: str, crop_size, band, what: str):
    """:func:`_read_cube`, with any failure of the file as one InputError naming it."""
    try:
        return _read_cube(path, crop_size, band)
    except InputError:
        raise
    except MemoryError as err:
        raise InputError(f"{what} file could not be read: out of memory. Received: "
                         f"file {path}") from err
    except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError) as err:
        # Lazily parsed HDUs fail here, while the reader walks to the image; OSError is also
        # the disk or the file system failing.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        failed = "could not be read" if isinstance(err, OSError) else \
            "is not a readable FITS file"
        raise InputError(f"{what} file {failed} ({reason}): {path}") from err


def read_cutout(path: str | os.PathLike, *, crop_size: int | None = None) -> Cutout:
    """Read a ``(5, H, W)`` ugriz cutout in nanomaggies from a FITS file.

    Reads are bounded. With ``crop_size``, a plain FITS file has only the rows of the centre
    crop read from disk, and a tile-compressed one (``.fits.fz``) only the tiles under it.
    A read that would decompress or load more than :data:`MAX_CUTOUT_VALUES` pixel values
    is refused before any pixel is read: the whole image without ``crop_size``, any image
    in a whole-file compressed file (``.gz``, ``.bz2``, ``.xz``, ``.zip``: these cannot be
    read from the middle, so the crop costs decompressing everything), or the tiles under the
    crop. A header claiming more data than the file holds is refused as truncated.

    Args:
        path: FITS file (``.fits``, ``.fits.gz``, tile-compressed ``.fits.fz``, ...) with the
            cube in the primary HDU, or in the first image extension when the primary HDU is
            empty.
        crop_size: None to return the whole cube; else return only the centred
            ``crop_size x crop_size`` region of every band, the region
            :func:`starqso.preprocessing.center_crop` takes (for an odd size difference the
            extra pixel is dropped at the bottom/right).

    Returns:
        A :class:`Cutout` with ``float32`` native-order data of shape ``(5, H, W)`` (or
        ``(5, crop_size, crop_size)``), the header cards and the path.

    Raises:
        InputError: The file is missing, empty, not FITS or truncated; it has no image; the
            image is not ``(5, H, W)`` or is smaller than ``crop_size``; the read is over the
            size limit; ``BUNIT``/``BANDS``/``PIXSCALE`` or the WCS pixel scale
            contradict the survey (:data:`starqso.schema.SDSS`); or
            reading failed (out of memory, an OS error).

    Example:
        >>> cutout = read_cutout("cutouts/J123456.78+123456.7.fits")  # doctest: +SKIP
        >>> cutout.data.shape, cutout.data.dtype
        ((5, 64, 64), dtype('float32'))
        >>> read_cutout("cutouts/J123456.78+123456.7.fits", crop_size=32).data.shape
        (5, 32, 32)
    """
    path = check_readable_file(path, "cutout")
    crop_size = _checked_crop_size(crop_size)
    data, cards, _ = _read_or_refuse(path, crop_size, None, "cutout")
    bands = str(cards.get("BANDS", "".join(BANDS))).strip().lower()
    if bands != "".join(BANDS):
        # The card says which plane is which band, so another order is recoverable.
        data = np.ascontiguousarray(data[[bands.index(band) for band in BANDS]])
        cards["BANDS"] = "".join(BANDS)
    return Cutout(data=data, header=cards, path=path)


def read_band_cutout(paths, *, crop_size: int | None = None) -> Cutout:
    """Read a ``(5, H, W)`` ugriz cutout from five one-band FITS files (one per band).

    What SDSS frames and the Pan-STARRS cutout service give: each file holds one 2-D image
    (primary HDU or first image extension). Each is read as :func:`read_cutout` reads a cube,
    bounded the same way; a ``BAND``/``FILTER`` card naming another band than the file's
    place is refused, and the five images must have one shape.

    Args:
        paths: five file names, in ``u, g, r, i, z`` order.
        crop_size: as for :func:`read_cutout`.

    Returns:
        A :class:`Cutout`; its ``header`` is the r-band file's cards and ``path`` the five
        names joined by ``", "``.

    Raises:
        InputError: as :func:`read_cutout`, per file, or the images differ in shape.

    Example:
        >>> cutout = read_band_cutout([f"J1234_{b}.fits" for b in "ugriz"])  # doctest: +SKIP
        >>> cutout.data.shape
        (5, 64, 64)
    """
    paths = [os.fspath(path) for path in paths]
    if len(paths) != len(BANDS):
        raise InputError(f"read_band_cutout needs one file per band (u, g, r, i, z). "
                         f"Received: {len(paths)} paths")
    crop_size = _checked_crop_size(crop_size)
    planes, headers, shapes = [], [], []
    for band, path in zip(BANDS, paths, strict=False):
        path = check_readable_file(path, f"image_{band}")
        data, cards, shape = _read_or_refuse(path, crop_size, band, f"image_{band}")
        planes.append(data)
        headers.append(cards)
        shapes.append(shape)
    # The full images, not their crops: each band is cropped about its own centre, so bands
    # of different sizes or offset WCS would put different sky under the crop.
    check_band_alignment(shapes, headers, f"({', '.join(paths)})")
    cards = dict(headers[BANDS.index("r")])
    cards["BANDS"] = "".join(BANDS)
    return Cutout(data=np.stack(planes), header=cards, path=", ".join(paths))


def _validated_cards(header: Mapping | None) -> list[tuple[str, object]]:
    cards = []
    for key, value in (header or {}).items():
        keyword = str(key).strip().upper()
        if isinstance(value, np.generic):
            value = value.item()
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            raise InputError(
                "cutout header keys must be FITS keywords (1-8 of A-Z, 0-9, '_', '-'). "
                f"Received: {key!r}"
            )
        if _STRUCTURAL_KEYWORD.match(keyword):
            raise InputError(
                f"cutout header card {keyword} is written by write_cutout itself; "
                f"remove it from header. Received: {keyword}={value!r}"
            )
        if not isinstance(value, (bool, int, float, str)):
            raise InputError(
                f"cutout header values must be str, int, float or bool. "
                f"Received: {keyword}={value!r} of type {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"cutout header values must be finite. Received: {keyword}={value!r}")
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            raise InputError(
                f"cutout header strings must be printable ASCII. Received: {keyword}={value!r}"
            )
        cards.append((keyword, value))
    return cards


def write_cutout(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    header: Mapping | None = None,
    overwrite: bool = False,
) -> str:
    """Write a ``(5, H, W)`` ugriz cube in nanomaggies as a deterministic FITS file.

    Args:
        path: Output file; written via a temporary file in the same folder and renamed, so
            readers never see half a file. A ``.gz`` suffix gives a gzip-compressed file.
        data: Cube of shape ``(5, H, W)``, bands ``ugriz``, nanomaggies; stored as ``float32``.
        header: Extra header cards (FITS keyword to ``str``/``int``/``float``/``bool``), e.g.
            ``{"RA": 150.1, "DEC": 2.2, "OBJID": "1237648720693755918"}``. ``BUNIT``,
            ``BANDS`` and ``PIXSCALE`` may be given only with the data model's values.
        overwrite: Replace an existing file if True.

    Returns:
        The output path as a ``str``.

    Raises:
        InputError: ``data`` is not a numeric ``(5, H, W)`` array, a header card is invalid or
            contradicts the data model, or the file exists and ``overwrite`` is False.

    Example:
        >>> cube = np.zeros((5, 64, 64), dtype=np.float32)
        >>> write_cutout("J1234.fits", cube, header={"RA": 188.6, "DEC": 12.1})  # doctest: +SKIP
        'J1234.fits'
    """
    path = os.fspath(path)
    where = f"for file {path}"
    array = np.asarray(data)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(
            f"cutout data must be numeric (5, H, W). Received: dtype={array.dtype} {where}"
        )
    _check_cube_shape(array.shape, where)
    cards = _validated_cards(header)
    _check_unit_and_bands(dict(cards), where)

    hdu = fits.PrimaryHDU(native(array, np.float32))
    hdu.header["BUNIT"] = (BUNIT, "AB mag = 22.5 - 2.5 log10(flux)")
    hdu.header["BANDS"] = ("".join(BANDS), "order of the first (slowest) axis")
    hdu.header["PIXSCALE"] = (PIXEL_SCALE_ARCSEC, "[arcsec/pixel] SDSS pixel scale")
    for keyword, value in cards:
        if keyword not in ("BUNIT", "BANDS", "PIXSCALE"):
            hdu.header[keyword] = value
    return write_bytes_atomically(path, hdulist_bytes(fits.HDUList([hdu])), overwrite=overwrite)
