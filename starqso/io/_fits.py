"""Shared helpers of the FITS readers and writers: clear errors on open, deterministic bytes.

Every reader goes through :func:`open_fits` so that a missing, empty, non-FITS or truncated file
is reported the same way everywhere, as a one-line :class:`~starqso.errors.InputError` naming the
file. Writers serialise with :func:`hdulist_bytes` and write with
:func:`starqso.atomic.write_bytes_atomically`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator

import numpy as np
from astropy.io import fits

from starqso.errors import InputError


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
        raise InputError(f"{what} file not found: {path}")
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
        try:
            hdulist = fits.open(path, memmap=False, lazy_load_hdus=False)
        except (OSError, ValueError, TypeError, EOFError, IndexError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{what} file is not a readable FITS file ({reason}): {path}") from err
    if any("truncated" in str(warning.message) for warning in caught):
        hdulist.close()
        raise InputError(f"{what} file is truncated (shorter than its FITS headers say): {path}")
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
