"""Reading files starqso did not write, within bounds: JSON, ``.npz`` arrays and checksums.

Whatever a damaged or hostile file declares, nothing here reads more than a cap: a JSON member
at most :data:`MAX_JSON_BYTES`, nested at most :data:`MAX_JSON_DEPTH` deep
(:func:`read_capped`, :func:`parse_json`), an ``.npz`` file's arrays at most
:data:`MAX_NPZ_BYTES` in all and never a pickle (:func:`read_npz`). :func:`file_sha256`
hashes a file block by block, and error messages show values through :func:`shown`, a
bounded repr. No TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import reprlib
import zipfile

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError
from starqso.io._fits import check_readable_file

#: The most bytes starqso reads of a ``config.json`` or ``metadata.json`` (in a ``.keras``
#: archive or an export folder). The shipped model's are 4 kB and 0.5 kB; a bigger one is a
#: damaged or hostile file, and reading it whole (a zip member can expand 1000-fold) could
#: exhaust memory.
MAX_JSON_BYTES = 4 << 20
#: The deepest JSON nesting accepted (the shipped config.json nests 13 levels). Keras
#: deserialises a config recursively, so a deeper one would end in a RecursionError.
MAX_JSON_DEPTH = 100
# Error messages show values through this: a bounded repr, whatever the value's size.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 8


def shown(value) -> str:
    """``repr(value)``, at most 80 characters, without building the whole repr first."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= 80 else text[:77] + "..."


def shown_name(value) -> str:
    """A class or module name for a message: as it is when a short string, else bounded."""
    return value if isinstance(value, str) and len(value) <= 80 else shown(value)


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_depth(node) -> int:
    """Nesting depth of parsed JSON, without recursion (it may be deeper than Python allows)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((value, depth + 1) for value in
                         (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(data: bytes, what: str):
    """Parse ``data`` (at most MAX_JSON_BYTES) as JSON; ``what`` names it in messages."""
    try:
        value = strict_json.loads(data, what)
    except strict_json.DuplicateKeyError:
        raise
    except RecursionError:
        value = None
        depth = math.inf
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{what} is not valid JSON ({one_line(err)})") from None
    else:
        depth = _json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep; starqso "
                         f"refuses it (a damaged or hostile file)")
    return value


def one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


def read_capped(stream, declared: int, what: str) -> bytes:
    """Read at most MAX_JSON_BYTES from ``stream``; refuse a larger declared or actual size."""
    if declared > MAX_JSON_BYTES:
        raise InputError(f"{what} is {declared / 2**20:.1f} MiB; starqso reads at most "
                         f"{MAX_JSON_BYTES >> 20} MiB of it (a damaged file or a "
                         f"decompression bomb). Received: {declared} bytes")
    # Declared sizes can lie (a zip member's header, a growing file): never read past the cap.
    data = stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise InputError(f"{what} holds more than {MAX_JSON_BYTES >> 20} MiB; starqso reads "
                         f"at most that much of it (a damaged file or a decompression bomb)")
    return data


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    # JSON true/false load as bool, a subclass of int: not a number here. NaN fails every
    # comparison the callers make.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The most bytes of array data starqso loads from one ``.npz`` file (all its arrays
#: together): 1 GiB. The largest it writes, an export's ``embedding_reference.npz``, is
#: 1.3 MB; a header declaring more is a damaged or hostile file, refused before allocating.
MAX_NPZ_BYTES = 1 << 30


def _npz_member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str):
    """``(shape, dtype, header_bytes)`` of one ``.npy`` member, from its header alone."""
    import numpy as np
    from numpy.lib import format as npy_format

    with archive.open(info) as stream:
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(stream)
            else:  # 3.0 only differs for structured dtypes, which starqso never writes
                raise ValueError(f".npy format version {version[0]}.{version[1]}")
        except (ValueError, EOFError, OSError, SyntaxError, zipfile.BadZipFile) as err:
            raise InputError(f"{where} is not a NumPy array ({one_line(err)})") from None
        consumed = stream.tell() if hasattr(stream, "tell") else None
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (dtype {dtype}); starqso reads only "
                         f"numeric arrays and never unpickles")
    if any(not isinstance(side, int) or side < 0 for side in shape):
        raise InputError(f"{where} declares an invalid shape {shown(shape)}")
    return shape, np.dtype(dtype), consumed


def read_npz(path, what: str, *, max_bytes: int = MAX_NPZ_BYTES) -> dict:
    """All arrays of a NumPy ``.npz`` file, after checking what its headers declare.

    ``np.load`` allocates whatever shape an ``.npy`` header declares, and reads a file that
    is not a zip archive as a pickle. Here the archive is opened with :mod:`zipfile` first,
    and each member's header is read with :mod:`numpy.lib.format`: its declared data size
    must match the member's size in the archive, and all members together must stay under
    ``max_bytes``, before a byte of data is allocated.

    Args:
        path: the ``.npz`` file.
        what: what the file is, for messages (``"embedding reference"``).
        max_bytes: the most bytes of array data accepted (all arrays together).

    Returns:
        ``{name: array}``, names as ``np.savez`` gave them (without ``.npy``).

    Raises:
        InputError: the file is missing, not a zip archive, a member is not an ``.npy``
            array, holds Python objects, declares a size that its member does not hold or
            that is over ``max_bytes``, or is damaged. The message names the file.

    Example:
        >>> spaces = read_npz("export/embedding_reference.npz",
        ...                   "embedding reference")  # doctest: +SKIP
        >>> spaces["vector"].shape  # doctest: +SKIP
        (5000, 128)
    """
    import numpy as np

    path = check_readable_file(path, what)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as err:
        raise InputError(f"{what} file is not a NumPy .npz zip archive ({one_line(err)}); "
                         f"expected a file written by numpy.savez: {path}") from None
    with archive:
        shapes, total = {}, 0
        for info in archive.infolist():
            where = f"member {shown_name(info.filename)} of {what} file {path}"
            if not info.filename.endswith(".npy"):
                raise InputError(f"{where} is not an .npy array; expected a file written by "
                                 f"numpy.savez")
            shape, dtype, header = _npz_member_header(archive, info, where)
            declared = math.prod(shape) * dtype.itemsize
            if header is not None and header + declared != info.file_size:
                raise InputError(f"{where} declares shape {shown(shape)} of {dtype} "
                                 f"({declared:,} bytes) but holds {info.file_size - header:,} "
                                 f"bytes of data (a damaged or altered file)")
            total += declared
            if total > max_bytes:
                raise InputError(f"{where} declares shape {shown(shape)} of {dtype}: "
                                 f"{total:,} bytes in all, over the limit of {max_bytes:,}")
            shapes[info.filename[:-len(".npy")]] = shape
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in shapes}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise InputError(f"{what} file could not be read ({one_line(err)}): "
                             f"{path}") from None
