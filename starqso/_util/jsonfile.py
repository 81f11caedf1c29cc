"""Strict JSON reading: a key given twice in one object is refused, not silently overwritten.

Python's ``json`` keeps the last of two equal keys, so a ``metadata.json`` with ``threshold``
written twice would classify with whichever value came second, and nothing would say so. Every
JSON file starqso reads (model folder ``metadata.json``, run folder ``state.json``, side-cars,
resume identities, caches) goes through :func:`loads` so that such a file is an error that
names the file and the key.
"""

from __future__ import annotations

import json
import os
import reprlib
from typing import Any

from starqso.errors import InputError

__all__ = ["DuplicateKeyError", "NestingError", "loads", "read_json"]

_shown = reprlib.Repr()
_shown.maxstring = 60


class DuplicateKeyError(InputError):
    """A JSON object in a file starqso reads has the same key more than once."""


class NestingError(InputError, RecursionError):
    """A JSON document nests deeper than Python's parser can follow (a damaged or hostile
    file). Also a :class:`RecursionError`, for callers that catch the parser's own error."""


def _refusing_duplicates(source: str):
    def build(pairs: list[tuple[str, Any]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen = set()
            for key, _ in pairs:
                if key in seen:
                    raise DuplicateKeyError(
                        f"{source} has the key {_shown.repr(key)} more than once; starqso "
                        f"refuses duplicate keys (which value is meant is unknown). Keep one "
                        f"of them")
                seen.add(key)
        return result
    return build


def loads(text: str | bytes, source: str | os.PathLike) -> Any:
    """Parse JSON ``text`` like :func:`json.loads`, refusing duplicate keys.

    Args:
        text: The JSON document (``bytes`` are decoded as UTF-8).
        source: What the text is (a file path, or e.g. ``"TF_CONFIG"``), named in the error.

    Returns:
        The parsed value.

    Raises:
        DuplicateKeyError: an object has one key twice (an :class:`InputError` naming
            ``source`` and the key).
        NestingError: arrays or objects nested deeper than the parser can follow (an
            :class:`InputError` naming ``source``; `json` itself raises a bare RecursionError,
            which the command line would report as an internal error).
        ValueError: the text is not JSON (``json.JSONDecodeError``, as ``json.loads``).

    Example:
        >>> loads('{"threshold": 0.5}', "metadata.json")
        {'threshold': 0.5}
    """
    source = os.fspath(source)
    try:
        return json.loads(text, object_pairs_hook=_refusing_duplicates(source))
    except RecursionError:
        raise NestingError(f"{source} nests JSON arrays or objects too deeply to read; "
                           f"starqso refuses it (a damaged or hostile file)") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read and parse the UTF-8 JSON file ``path``, refusing duplicate keys.

    Args:
        path: The file.

    Returns:
        The parsed value.

    Raises:
        DuplicateKeyError: an object in the file has one key twice.
        OSError, UnicodeDecodeError, ValueError: as reading and ``json.loads`` raise them.

    Example:
        >>> read_json("run/state.json")  # doctest: +SKIP
        {'completed': ['encoder']}
    """
    with open(path, encoding="utf-8") as stream:
        return loads(stream.read(), path)
