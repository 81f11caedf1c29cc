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

The header-card checks live in :mod:`starqso.io.cutout_cards`, the size caps in
:mod:`starqso.io.cutout_limits`; this module reads and writes.
"""

from __future__ import annotations

import io
import math
import os
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
from starqso.io.cutout_cards import (
    band_of,
    check_band_alignment,
    check_cube_shape,
    check_unit_and_bands,
    header_cards,
    validated_cards,
)
from starqso.io.cutout_limits import (
    MAX_CUTOUT_VALUES,
    MAX_HEADER_BYTES,
    check_complete,
    check_size,
    checked_crop_size,
    data_bytes,
)
from starqso.preprocessing.crop import crop_window
from starqso.schema import BANDS, BUNIT, PIXEL_SCALE_ARCSEC, SDSS


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


# Uncompressed images up to this many pixel values (5 x 256 x 256) are read whole and then
# cropped; larger ones through hdu.section, only the rows under the crop.
WHOLE_READ_VALUES = 5 * 256 * 256


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


def _read_plane(hdu, cards, path: str, available: int, crop_size, whole_file):
    """The (H, W) crop of one single-band image HDU, with the same bounds as a cube's."""
    where = f"in file {path}"
    shape = tuple(hdu.shape)
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"a one-band image must be 2-D (H, W). Received: shape={shape} "
                         f"{where}")
    check_unit_and_bands({key: value for key, value in cards.items() if key != "BANDS"},
                         where)
    window = None if crop_size is None else crop_window(*shape[-2:], crop_size, where)
    check_complete(hdu, available, path)
    check_size(hdu, shape, window, crop_size, whole_file, path)
    return _pixels(hdu, window, path)


def _read_band_hdus(hdulist, path: str, available: int, crop_size, whole_file):
    """A (5, H, W) cube from a multi-extension file holding one image HDU per band."""
    planes = {}
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    for number, hdu in enumerate(hdulist):
        check_bitpix(hdu.header, path, "cutout", number)
        if not isinstance(hdu, image_types) or hdu.header.get("NAXIS", 0) == 0:
            continue
        band = band_of(hdu.header)
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
    primary = header_cards(hdulist[0].header)
    check_band_alignment([shapes[band] for band in BANDS],
                         [{**primary, **header_cards(planes[band][1].header)} for band in BANDS],
                         f"in file {path}")
    return np.stack([_read_plane(planes[band][1], {**primary,
                                                   **header_cards(planes[band][1].header)},
                                 path, available, crop_size, whole_file) for band in BANDS])


def _read_image(source, path: str, available: int, crop_size, whole_file, band=None):
    where = f"in file {path}"
    with open_fits_lazily(source, path, "cutout") as hdulist:
        hdu = _find_image_hdu(hdulist, path)
        cards = header_cards(hdulist[0].header)
        if hdu is not hdulist[0]:
            cards.update(header_cards(hdu.header))
        shape = tuple(hdu.shape)
        if band is not None:
            named = band_of(hdu.header) or band_of(hdulist[0].header)
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
        if len(shape) == 2 and band_of(hdu.header) is not None:
            data = _read_band_hdus(hdulist, path, available, crop_size, whole_file)
            return data, header_cards(hdulist[0].header), shape
        # The header alone gives the shape, so a bad cube is rejected without loading it.
        check_cube_shape(shape, where)
        check_unit_and_bands(cards, where)
        window = None if crop_size is None else crop_window(*shape[-2:], crop_size, where)
        # Truncation first: a header claiming more than the file holds is the real fault.
        check_complete(hdu, available, path)
        check_size(hdu, shape, window, crop_size, whole_file, path)
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
            if band is None and len(shape) == 2 and band_of(hdu.header) is not None:
                pass  # one HDU per band: the later bands' headers are behind this one's data
            else:
                if band is None:
                    check_cube_shape(shape, f"in file {path}")
                check_size(hdu, shape, None, None, compression, path)
                needed = int(hdu.fileinfo()["datLoc"]) + data_bytes(hdu)
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
    crop_size = checked_crop_size(crop_size)
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
    crop_size = checked_crop_size(crop_size)
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
    check_cube_shape(array.shape, where)
    cards = validated_cards(header)
    check_unit_and_bands(dict(cards), where)

    hdu = fits.PrimaryHDU(native(array, np.float32))
    hdu.header["BUNIT"] = (BUNIT, "AB mag = 22.5 - 2.5 log10(flux)")
    hdu.header["BANDS"] = ("".join(BANDS), "order of the first (slowest) axis")
    hdu.header["PIXSCALE"] = (PIXEL_SCALE_ARCSEC, "[arcsec/pixel] SDSS pixel scale")
    for keyword, value in cards:
        if keyword not in ("BUNIT", "BANDS", "PIXSCALE"):
            hdu.header[keyword] = value
    return write_bytes_atomically(path, hdulist_bytes(fits.HDUList([hdu])), overwrite=overwrite)
