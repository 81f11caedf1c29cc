"""Shared helpers of the FITS readers and writers: clear errors on open, deterministic bytes.

Every reader goes through :func:`open_fits` so that a missing, empty, non-FITS or truncated file
is reported the same way everywhere, as a one-line :class:`~starqso.errors.InputError` naming the
file. Writers serialise with :func:`hdulist_bytes` and write with
:func:`starqso._util.atomic.write_bytes_atomically`.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np
from astropy.io import fits

from starqso.errors import InputError

#: The BITPIX values of the FITS standard (unsigned bytes, 16/32/64-bit integers, 32/64-bit
#: floats).
VALID_BITPIX = (8, 16, 32, 64, -32, -64)


def check_bitpix(header, path: str, what: str, number: int = 0) -> None:
    """Refuse an HDU whose ``BITPIX`` is not one of :data:`VALID_BITPIX`.

    astropy accepts any BITPIX in a lazily read header; the data size it then computes
    (``|BITPIX| / 8`` bytes a pixel) ends in a misleading "truncated" or KeyError message.

    Args:
        header: the HDU's header (a mapping with ``BITPIX``).
        path: the file, for the message.
        what: what the file should be, for the message.
        number: the HDU's position in the file, for the message.

    Example:
        >>> check_bitpix({"BITPIX": -32}, "a.fits", "cutout")
    """
    value = header.get("BITPIX")
    if isinstance(value, bool) or value not in VALID_BITPIX:
        raise InputError(f"{what} FITS header's BITPIX must be one of "
                         f"{', '.join(map(str, VALID_BITPIX))}. Received: BITPIX={value!r} in "
                         f"HDU {number} of file {path}")


_FITS_CARD = 80
_FITS_BLOCK = 36 * _FITS_CARD


def _first_bitpix(source) -> object:
    """The BITPIX value of the first header of ``source`` (a path or a binary file object),
    read from its raw cards; None when the first block has none or cannot be read."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as stream:
                block = stream.read(_FITS_BLOCK)
        else:
            position = source.tell()
            block = source.read(_FITS_BLOCK)
            source.seek(position)
    except (OSError, ValueError):
        return None
    for start in range(0, len(block) - _FITS_CARD + 1, _FITS_CARD):
        card = block[start:start + _FITS_CARD]
        if card.startswith(b"BITPIX  ="):
            text = card[10:].split(b"/")[0].strip()
            try:
                return int(text)
            except ValueError:
                return text.decode("ascii", "replace")
        if card.startswith(b"END "):
            break
    return None


def _opened(source, path, what: str, *, lazy: bool) -> fits.HDUList:
    """``fits.open(source)``, or one InputError naming ``path`` when it is not FITS.

    memmap=False: a file cut short after its checks would otherwise crash the whole process
    with SIGBUS when a mapped page past its end is touched.
    """
    try:
        return fits.open(source, memmap=False, lazy_load_hdus=lazy)
    except (OSError, ValueError, TypeError, EOFError, IndexError) as err:
        bitpix = _first_bitpix(source)
        if bitpix is not None:
            # A wrong BITPIX puts the next header at a wrong offset, and astropy reports that.
            check_bitpix({"BITPIX": bitpix}, path, what)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{what} file is not a readable FITS file ({reason}): {path}") from err


def missing_reason(path: str | os.PathLike) -> str:
    """Why ``path``, for which ``os.path.exists`` is False, cannot be opened, in a few words.

    ``os.path.exists`` is False for a symbolic link loop, a broken link and a folder that
    cannot be searched, too; "not found" would send the user looking for the wrong fault.

    Args:
        path: a path that does not exist as far as ``os.path.exists`` can tell.

    Returns:
        ``"not found"``, ``"is a symbolic link loop (...)"``, ``"is a broken symbolic link
        (...)"`` or ``"cannot be accessed (...)"``.

    Example:
        >>> missing_reason("no-such-file.fits")
        'not found'
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (links that lead back to each other, never to a file)"
        if os.path.islink(path):
            return f"is a broken symbolic link (its target {os.readlink(path)} does not exist)"
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be accessed ({err.strerror})"
    return "not found"


def check_readable_file(path: str | os.PathLike, what: str) -> str:
    """Return ``path`` as a string after checking that it names a non-empty regular file.

    Args:
        path: File to check.
        what: What the file should be, for the message (e.g. ``"cutout"``).

    Returns:
        The path as a ``str``.

    Example:
        >>> check_readable_file("missing.fits", "cutout")
        Traceback (most recent call last):
        ...
        starqso.errors.InputError: cutout file not found: missing.fits
    """
    path = os.fspath(path)
    if not path:
        raise InputError(f"{what} path is blank; expected a file name")
    if not os.path.exists(path):
        raise InputError(f"{what} file {missing_reason(path)}: {path}")
    if not os.path.isfile(path):
        raise InputError(f"{what} path is not a regular file: {path}")
    if os.path.getsize(path) == 0:
        raise InputError(f"{what} file is empty (0 bytes): {path}")
    return path


@contextlib.contextmanager
def open_fits(path: str | os.PathLike, what: str) -> Iterator[fits.HDUList]:
    """Open a FITS file fully into memory, turning every way it can be broken into InputError.

    All headers are parsed up front (``lazy_load_hdus=False``) so that a truncated or corrupt
    file fails here rather than half-way through a reader. astropy only *warns* about
    truncation, so warnings are captured and a truncation warning becomes an error; other
    warnings (non-standard cards in survey headers) are harmless and dropped.

    Args:
        path: FITS file to open (``.fits.gz`` works too).
        what: What the file should be, for messages (e.g. ``"SDSS spectrum"``).

    Yields:
        The open ``HDUList``; it is closed when the ``with`` block ends.

    Example:
        >>> with open_fits("cutout.fits", "cutout") as hdulist:  # doctest: +SKIP
        ...     data = hdu_data(hdulist[0], "cutout.fits", "cutout")
    """
    path = check_readable_file(path, what)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hdulist = _opened(path, path, what, lazy=False)
    try:
        for number, hdu in enumerate(hdulist):
            check_bitpix(hdu.header, path, what, number)
    except InputError:
        hdulist.close()
        raise
    if any("truncated" in str(warning.message) for warning in caught):
        hdulist.close()
        raise InputError(f"{what} file is truncated (shorter than its FITS headers say): {path}")
    try:
        yield hdulist
    finally:
        hdulist.close()


# Leading bytes of the whole-file compressions astropy reads (the same magic numbers it checks);
# a ``.fits`` name proves nothing, astropy looks at the content.
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"PK\x03\x04", "zip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "lzma"),
    (b"\x1f\x9d", "lzw"),
)


def whole_file_compression(path: str) -> str | None:
    """The whole-file compression of ``path`` by its leading bytes, or None for plain FITS.

    Tile compression (``.fits.fz``) is not whole-file compression: such a file starts with a
    plain FITS header and gives None.

    Args:
        path: An existing file.

    Returns:
        ``"gzip"``, ``"zip"``, ``"bzip2"``, ``"lzma"``, ``"lzw"`` or None.

    Example:
        >>> whole_file_compression("cutout.fits.gz")  # doctest: +SKIP
        'gzip'
    """
    with open(path, "rb") as stream:
        head = stream.read(8)
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return None


def decompressed_prefix(path: str, compression: str, limit: int, what: str) -> bytes:
    """At most the first ``limit`` bytes of the decompressed content of ``path``.

    Only what is returned is ever decompressed, so a small file that expands to gigabytes
    (a decompression bomb) costs at most ``limit`` bytes of memory and the time to inflate
    them. astropy itself would inflate a zip member in full and, for the other formats,
    decompress everything it seeks over.

    Args:
        path: File compressed as :func:`whole_file_compression` says.
        compression: Its compression, not None.
        limit: The most bytes to return.
        what: What the file should be, for messages.

    Returns:
        The decompressed bytes; fewer than ``limit`` when the content is shorter.

    Raises:
        InputError: The compressed stream is corrupt or cut short, a zip archive does not hold
            exactly one file, or the compression is LZW (``.Z``), which is not read.

    Example:
        >>> len(decompressed_prefix("cutout.fits.gz", "gzip", 2880, "cutout"))  # doctest: +SKIP
        2880
    """
    try:
        if compression == "zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if len(names) != 1:
                    raise InputError(
                        f"{what} zip archive must hold exactly one FITS file. Received: "
                        f"{len(names)} members in file {path}"
                    )
                with archive.open(names[0]) as stream:
                    return stream.read(limit)
        openers = {"gzip": gzip.open, "bzip2": bz2.open, "lzma": lzma.open}
        if compression not in openers:
            raise InputError(
                f"{what} file is {compression}-compressed, which starqso does not read; "
                f"decompress it first. Received: file {path}"
            )
        with openers[compression](path, "rb") as stream:
            # read(n) inflates only until n bytes are out, never the whole stream.
            return stream.read(limit)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as err:
        if isinstance(err, InputError):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{what} file is not a readable {compression} stream ({reason}): {path}"
        ) from err


@contextlib.contextmanager
def open_fits_lazily(source, path: str, what: str) -> Iterator[fits.HDUList]:
    """Open FITS content reading headers only on demand, for readers that bound their reads.

    Unlike :func:`open_fits`, HDUs are parsed one at a time as they are indexed, and data is
    read only when asked for, so a reader can check an image's header (its size against the
    file, against a memory cap) before a byte of pixels is touched. The caller checks
    completeness itself; astropy's truncation warnings are dropped.

    Args:
        source: A file name or a binary file object (e.g. ``io.BytesIO`` of decompressed
            content).
        path: The user's file, for messages.
        what: What the file should be, for messages.

    Yields:
        The lazily loaded ``HDUList``; closed when the block ends.

    Example:
        >>> with open_fits_lazily("a.fits", "a.fits", "cutout") as hdulist:  # doctest: +SKIP
        ...     header = hdulist[0].header
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdulist = _opened(source, path, what, lazy=True)
        try:
            yield hdulist
        finally:
            hdulist.close()


def hdu_data(hdu, path: str, what: str):
    """Return ``hdu.data``, reporting a corrupt data block as InputError.

    Args:
        hdu: The HDU whose data to load.
        path: File the HDU came from, for the message.
        what: What the file should be, for the message.

    Returns:
        The HDU's data (``None`` for an HDU without data).

    Example:
        >>> with open_fits("cutout.fits", "cutout") as hdulist:  # doctest: +SKIP
        ...     data = hdu_data(hdulist[0], "cutout.fits", "cutout")
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hdu.data
    except (OSError, ValueError, TypeError, EOFError, IndexError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{what} file has a corrupt data block ({reason}): {path}") from err


def native(array: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Copy ``array`` into a contiguous array of ``dtype`` in native byte order.

    FITS stores big-endian numbers; downstream NumPy code and TensorFlow want native ones.

    Args:
        array: Any array-like.
        dtype: Target dtype (native byte order is forced).

    Returns:
        A new C-contiguous array that owns its memory (safe after the file is closed).

    Example:
        >>> native(np.arange(3, dtype=">i2"), np.float32).dtype
        dtype('float32')
    """
    target = np.dtype(dtype).newbyteorder("=")
    return np.array(np.asarray(array), dtype=target, order="C", copy=True)


def hdulist_bytes(hdulist: fits.HDUList) -> bytes:
    """Serialise an HDUList to bytes (astropy adds no timestamps, so this is deterministic).

    Args:
        hdulist: The HDUs to serialise.

    Returns:
        The FITS file content.

    Example:
        >>> len(hdulist_bytes(fits.HDUList([fits.PrimaryHDU()]))) % 2880
        0
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Long HIERARCH cards and similar are reported as warnings; the caller validated input.
        warnings.simplefilter("ignore")
        hdulist.writeto(buffer, output_verify="exception")
    return buffer.getvalue()
