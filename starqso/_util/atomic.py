"""Atomic file writes: the one place starqso writes a file that a reader may see.

Every file starqso writes goes through here: content goes to a hidden temporary file in the
destination folder, is flushed to disk, and is renamed over the destination with
``os.replace``. A crash or a kill half-way therefore leaves either the previous complete file
or none, never a truncated one. Folders are swapped in whole by :func:`replace_folder`.

NumPy-free and TensorFlow-free, so every layer (I/O, config, training, export) can use it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator

from starqso.errors import InputError

__all__ = [
    "atomic_path",
    "replace_folder",
    "swap_in_folder",
    "write_bytes_atomically",
    "write_json_atomically",
    "write_text_atomically",
]


def _naming_destination(err: OSError, path: str, temporary: str) -> OSError:
    """``err`` as an OSError naming the destination, when it names no file or the temp file.

    A write that fails for lack of space (``ENOSPC`` from ``write``/``fsync``) carries no file
    name, and one from the rename names the hidden temporary file; either way the user should
    read the file they asked for, e.g. ``No space left on device: out/predictions.csv``
    rather than ``...: None``.
    """
    if err.filename not in (None, temporary):
        return err
    # OSError(errno, ...) picks the matching subclass (PermissionError, ...), so callers'
    # ``except`` clauses see the same type as before.
    return OSError(err.errno, err.strerror or str(err), path)


class _RemovedOnFailure:
    """Guards the block that writes ``temporary`` and renames it to ``path``.

    If the block fails, with any exception (``KeyboardInterrupt`` and ``GeneratorExit``
    included), the temporary file is removed; an OSError that names no file or the temporary
    one is then raised again naming ``path`` (:func:`_naming_destination`, chained from the
    original), and any other error goes on unchanged.
    """

    def __init__(self, path: str, temporary: str):
        self.path, self.temporary = path, temporary

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, traceback) -> bool:
        if kind is None:
            return False
        with contextlib.suppress(OSError):
            os.remove(self.temporary)
        if isinstance(err, OSError):
            named = _naming_destination(err, self.path, self.temporary)
            if named is not err:
                raise named from err
        return False  # the error goes on as it is


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` that becomes ``path`` when the block ends cleanly.

    For writers that need a file name rather than bytes (Keras ``save_weights``, HDF5): write
    to the yielded path; on success it is renamed over ``path``, on any error it is removed.
    The temporary name keeps ``path``'s suffix, since some writers choose the format by it.

    Args:
        path: Destination file; its folder must exist.

    Yields:
        The temporary file name (``str``) to write.

    Example:
        >>> with atomic_path("backup/last.weights.h5") as temporary:  # doctest: +SKIP
        ...     model.save_weights(temporary)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    # Same folder so os.replace is an atomic rename on one filesystem; a random part so two
    # writers never share a temporary file.
    temporary = os.path.join(folder, f".{stem}.{secrets.token_hex(6)}.tmp{dot}{suffix}")
    with _RemovedOnFailure(path, temporary):
        yield temporary
        os.replace(temporary, path)


def write_bytes_atomically(path: str | os.PathLike, payload: bytes, *,
                           overwrite: bool = True) -> str:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A name ending in ``.gz`` is gzip-compressed with a zero timestamp and no embedded file name,
    so the same payload always gives the same bytes on disk.

    Args:
        path: Destination file.
        payload: Uncompressed file content.
        overwrite: Replace an existing file if True; otherwise an existing file is an error.

    Returns:
        The destination path as a ``str``.

    Raises:
        InputError: a blank path, an existing file without ``overwrite``, a missing folder.

    Example:
        >>> write_bytes_atomically("out.csv", b"id\\n001\\n")  # doctest: +SKIP
        'out.csv'
    """
    path = os.fspath(path)
    if not path:
        raise InputError("output path is blank; expected a file name")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"output file already exists (pass overwrite=True to replace it): {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"output folder does not exist: {folder} (for file {path})")
    if path.lower().endswith(".gz"):
        compressed = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as stream:
            stream.write(payload)
        payload = compressed.getvalue()
    temp_path = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        # O_EXCL so two writers never share a temp file; mode 0o666 so the umask applies like
        # for a plain open().
        descriptor = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        named = _naming_destination(err, path, temp_path)
        if named is err:
            raise
        raise named from err
    with _RemovedOnFailure(path, temp_path):
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    return path


def write_text_atomically(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> str:
    """:func:`write_bytes_atomically` for UTF-8 text.

    Example:
        >>> write_text_atomically("notes.md", "# notes\\n")  # doctest: +SKIP
        'notes.md'
    """
    return write_bytes_atomically(path, text.encode("utf-8"), overwrite=overwrite)


def write_json_atomically(path: str | os.PathLike, payload, *, sort_keys: bool = True) -> str:
    """Write ``payload`` as indented JSON (one trailing newline), atomically.

    Example:
        >>> write_json_atomically("state.json", {"completed": ["encoder"]})  # doctest: +SKIP
        'state.json'
    """
    return write_text_atomically(
        path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


def _beside(destination: str, kind: str) -> str:
    """A name beside ``destination`` unique to this run: ``.NAME.PID-RANDOM.KIND``.

    Hidden, and with this process's id and a random part, so that no other run's staging
    folder, nor a user's folder that happens to be called ``OUT.partial``, is ever reused.
    """
    folder, name = os.path.split(destination)
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _make_unique(destination: str, kind: str) -> str:
    """Create (``os.mkdir``, so exclusively) a fresh folder :func:`_beside` ``destination``."""
    for _ in range(10):
        path = _beside(destination, kind)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(17, "could not create a staging folder", destination)


def replace_folder(build: Callable[[str], None], destination: str | os.PathLike, *,
                   command: str | None = None) -> str:
    """Build a folder beside ``destination`` and swap it in whole.

    ``build`` fills a fresh staging folder (``.NAME.PID-RANDOM.partial``, created by this
    call); only when it returns is the old ``destination`` (if any) moved aside and the
    staging folder renamed into place, so a reader never sees half a folder. A failed build
    removes the staging folder and leaves ``destination`` as it was. Nothing but the staging
    folder this call made is ever removed before the swap; the caller decides whether
    ``destination`` may be replaced (:func:`starqso._util.ownership.check_output_folder`).

    Args:
        build: called with the staging folder's path.
        destination: the folder to create or replace.
        command: the starqso command making it: its marker
            (:data:`starqso._util.ownership.MARKER`) is written into the staging folder.

    Returns:
        ``destination`` as a ``str``.

    Example:
        >>> replace_folder(lambda folder: export_into(folder), "runs/demo/export")  # doctest: +SKIP
    """
    # Absolute and without a trailing separator: staging goes beside OUT, never inside it.
    destination = os.path.abspath(os.fspath(destination))
    try:
        staging = _make_unique(destination, "partial")
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), destination) from err
    try:
        build(staging)
        if command is not None:
            from starqso._util.ownership import write_marker

            write_marker(staging, command)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        return swap_in_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_in_folder(staging: str | os.PathLike, destination: str | os.PathLike) -> str:
    """Rename a finished ``staging`` folder to ``destination``, replacing any old one whole.

    The old folder is first renamed onto a fresh, empty folder made for this run
    (``.NAME.PID-RANDOM.old``) and removed after the rename, so ``destination`` is at every
    moment the old folder, absent for an instant, or the new. Should the last rename fail,
    the old folder is put back.

    Args:
        staging: the complete new folder (on the same file system).
        destination: the folder to create or replace.

    Returns:
        ``destination`` as a ``str``.
    """
    staging, destination = os.fspath(staging), os.fspath(destination)
    if not os.path.lexists(destination):
        os.rename(staging, destination)
        return destination
    # Made empty by us: renaming a folder onto an empty one is atomic, and fails (rather
    # than merging) should anything have appeared in it meanwhile.
    old = _make_unique(os.path.abspath(destination), "old")
    try:
        os.rename(destination, old)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(old)
        raise
    try:
        os.rename(staging, destination)
    except BaseException:
        os.rename(old, destination)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return destination
