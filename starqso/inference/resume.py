"""The partial file of ``starqso predict``, and ``--resume`` from it.

Rows go to a hidden partial file beside the output (``.NAME.partial``, with a ``.json`` record
of the run's identity) and the partial file becomes the output only when every row is done
(see :mod:`starqso.inference.predict`). This module finds, checks and opens it: what a resumed
run must match, the rows already written, and opening without following a link.
"""

from __future__ import annotations

import csv
import errno
import io
import os

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError
from starqso.inference.classify import OUTPUT_COLUMNS


def partial_paths(output):
    """The partial file beside ``output`` (``.NAME.partial``) and its record (``.json``)."""
    partial = output.with_name(f".{output.name}.partial")
    return partial, partial.with_name(partial.name + ".json")


# What the resume message calls the identity keys that differ.
_IDENTITY_NAMES = {"source": "catalogue", "rows": "row count",
                   "catalog_sha256": "catalogue content (SHA-256)", "model": "model folder",
                   "model_sha256": "model file content (SHA-256)", "runtime": "runtime",
                   "threshold": "threshold", "prior": "prior", "prior_shift": "prior shift",
                   "tta": "--tta", "uncertainty": "--uncertainty", "ebv": "E(B-V) (--ebv)"}


def identity_differences(saved, identity):
    """What differs between a partial run's saved identity and this run's, in one line.

    Shared by ``predict --resume`` in one process and on Dask (:mod:`starqso.inference.dask`).

    Args:
        saved: the identity the partial run recorded (anything read from its file).
        identity: this run's.

    Returns:
        str: ``"NAME OLD then, NEW now"`` per differing key, joined by ``"; "``.

    Example:
        >>> identity_differences({"prior": 0.02}, {"prior": 0.3})
        'prior 0.02 then, 0.3 now'
    """
    if not isinstance(saved, dict):
        return "its record is unreadable"
    keys = [key for key in identity if saved.get(key) != identity[key]]
    keys += [key for key in saved if key not in identity]

    def short(value):
        text = repr(value)
        return text if len(text) <= 40 else text[:16] + "..." + text[-16:]

    return "; ".join(f"{_IDENTITY_NAMES.get(key, key)} {short(saved.get(key))} then, "
                     f"{short(identity.get(key))} now" for key in keys)


def resumed_rows(partial, ids, identity, log=None, columns=OUTPUT_COLUMNS):
    """Rows already in a partial file of the same run, after cutting an unfinished last line.

    None when there is nothing to resume: no partial file, or one without a complete header
    line (a run killed before its header reached the disk), which is started afresh.
    """
    partial_file, identity_file = partial
    if not partial_file.exists() or not identity_file.exists():
        return None
    with open_partial(partial_file, mode="rb") as stream:
        content = stream.read()
    if b"\n" not in content:
        # Killed before the header line was on disk: no row was written, nothing is lost.
        if log is not None:
            log(f"note: the partial run {partial_file} has no complete header line (killed "
                f"before its first row); starting afresh")
        return None
    try:
        saved = strict_json.read_json(identity_file)
    except strict_json.DuplicateKeyError:
        raise
    except ValueError:
        saved = None
    if saved != identity:
        raise InputError(f"the partial run {partial_file} was made for another catalogue, "
                         f"model, threshold, prior, --tta or --ebv; delete it or run without "
                         f"--resume. "
                         f"Received: {identity_differences(saved, identity)}")
    content = content[:content.rfind(b"\n") + 1]  # a kill mid-line leaves half a row
    rows = list(csv.reader(io.StringIO(content.decode("utf-8", errors="replace"),
                                       newline="")))
    if not rows or tuple(rows[0]) != tuple(columns):
        raise InputError(f"the partial run {partial_file} does not start with the header line "
                         f"{','.join(columns)}; delete it or run without --resume. "
                         f"Received: {rows[0] if rows else ''}")
    rows = rows[1:]
    for number, row in enumerate(rows):
        if len(row) != len(columns) or number >= len(ids) or row[0] != ids[number]:
            raise InputError(f"the partial run {partial_file} does not match the catalogue at "
                             f"row {number + 1}; delete it or run without --resume. Received: "
                             f"{row}")
    # Cut the half row in place (no link is followed: open_partial).
    with open_partial(partial_file, mode="r+b") as stream:
        stream.truncate(len(content))
    return rows


def refuse_linked_partial(partial):
    """Refuse a partial file (or its record) that is a link or not a plain file: starqso
    made neither, and writing through a link would write into its target."""
    for path in partial:
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            kind = (f"a symbolic link to {os.readlink(path)}" if os.path.islink(path)
                    else "not a plain file")
            raise InputError(f"{path} is {kind}, not a partial run starqso wrote; it is not "
                             f"written through: remove it (or choose another output). "
                             f"Received: {path}")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_partial(path, fresh=False, mode="a"):
    """The partial file, opened without following a link: ``fresh`` creates it exclusively
    (a stale one of a killed run, ours, is removed first: the output's lock is held), else
    ``mode`` "a" appends, "rb" reads, "r+b" rewrites in place.

    Raises:
        InputError: a link appeared at ``path`` since :func:`refuse_linked_partial`.
    """
    flags = {"a": os.O_WRONLY | os.O_APPEND, "rb": os.O_RDONLY, "r+b": os.O_RDWR}[mode]
    if fresh:
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
        flags, mode = os.O_WRONLY | os.O_CREAT | os.O_EXCL, "w"
    try:
        descriptor = os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as err:
        if os.path.islink(path) or err.errno == errno.EEXIST:
            refuse_linked_partial((path,))
            raise InputError(f"{path} appeared while this run started it; another program "
                             f"writes there. Received: {path}") from err
        raise
    if "b" in mode:
        return os.fdopen(descriptor, mode)
    return os.fdopen(descriptor, mode, newline="", encoding="utf-8")
