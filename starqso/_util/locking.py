"""One writer per output: an exclusive lock file beside it, held for the whole run.

``starqso predict`` writes its rows into a partial file beside the output and renames it at
the end; two runs on the same output would interleave their rows into one "complete" file.
So a run first takes :func:`exclusive_lock` on ``.NAME.lock`` beside the output (the way
SQLite locks its database file) and a second run, with or without ``--resume``, is refused
with one line naming the output and the owner's process id.

* Where :mod:`fcntl` exists (Linux, macOS, BSD), the lock is ``flock(LOCK_EX | LOCK_NB)`` on
  the lock file. The kernel drops it when the owner exits, however it exits (a SIGKILL
  included), so a killed run never blocks the next one, and ``--resume`` can take it at once.
  The file holds the owner's pid for the message only.
* Elsewhere (Windows), the lock file is created with ``O_CREAT | O_EXCL`` and holds the owner's
  pid; a lock file whose pid is no longer running (a killed run) is stale and is taken over.
  A reused pid can make a stale lock look live: then the message names that pid, and deleting
  the lock file is the way out.

The lock file is opened with ``O_NOFOLLOW``: a symbolic link planted at the lock path is
refused in one line rather than followed (its target would get the pid). A failed write of
the pid (a full disk) names the lock file.

The lock file is removed on release. With ``flock`` a run that removes it while another waits
would leave two runs each holding a lock on a different file, so after taking the lock the
file it locked must still be the one at the path (same inode); otherwise it tries again.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib

from starqso.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL lock files
    fcntl = None

__all__ = ["exclusive_lock", "lock_path"]

# Attempts at taking a lock whose file is being removed by its previous owner at that moment.
_ATTEMPTS = 20
# Not following a link at the lock path; 0 where the platform has no such flag (Windows,
# which has no symbolic links that open() follows silently for an unprivileged user).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def lock_path(path) -> pathlib.Path:
    """The lock file of ``path``: hidden, in the same folder (``.NAME.lock``).

    Example:
        >>> lock_path("out/predictions.csv").name
        '.predictions.csv.lock'
    """
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.lock")


def _owner(lock_file):
    try:
        descriptor = os.open(lock_file, os.O_RDONLY | _NOFOLLOW)
        try:
            text = os.read(descriptor, 64).decode("ascii", errors="replace").strip()
        finally:
            os.close(descriptor)
    except OSError:
        return "unknown"
    return text.split()[0] if text else "unknown"


def _busy(path, lock_file, what):
    return InputError(f"{what} {path} is in use by another starqso run (pid "
                      f"{_owner(lock_file)}); wait for it to finish or choose another output. "
                      f"Received: lock file {lock_file}")


def _open(lock_file, path, what, flags):
    """Open the lock file without following a link; one line for a link or a failure."""
    try:
        return os.open(lock_file, flags | _NOFOLLOW, 0o666)
    except FileExistsError:
        raise
    except OSError as err:
        if os.path.islink(lock_file):
            raise InputError(f"the lock file {lock_file} of {what} {path} is a symbolic link "
                             f"(to {os.readlink(lock_file)}); starqso does not follow links "
                             f"at its lock files: remove the link and run again") from None
        if os.path.isdir(lock_file):
            raise InputError(f"the lock file {lock_file} of {what} {path} is a folder, which "
                             f"starqso did not make and does not remove: remove it or choose "
                             f"another output") from None
        raise OSError(err.errno, err.strerror or str(err), str(lock_file)) from err


def _write_pid(descriptor, lock_file):
    """The owner's pid into the lock file; a full disk names the lock file."""
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
    except OSError as err:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.remove(lock_file)
        raise OSError(err.errno, err.strerror or str(err), str(lock_file)) from err


def _flock(path, lock_file, what):
    for _ in range(_ATTEMPTS):
        descriptor = _open(lock_file, path, what, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(descriptor)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _busy(path, lock_file, what) from None
            raise
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            _write_pid(descriptor, lock_file)
            return descriptor
        # The previous owner removed the file between our open and our lock: lock the new one.
        os.close(descriptor)
    raise _busy(path, lock_file, what)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume live)
    return True


def _exclusive_file(path, lock_file, what):
    for _ in range(_ATTEMPTS):
        try:
            descriptor = _open(lock_file, path, what, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            owner = _owner(lock_file)
            if owner.isdigit() and not _alive(int(owner)):
                # A killed run's lock: nobody holds it any more.
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock_file)
                continue
            raise _busy(path, lock_file, what) from None
        _write_pid(descriptor, lock_file)
        return descriptor
    raise _busy(path, lock_file, what)


@contextlib.contextmanager
def exclusive_lock(path, *, what="output"):
    """Hold the exclusive lock of ``path`` (its :func:`lock_path`) for the ``with`` block.

    Args:
        path: the file to guard (it need not exist); its folder must exist.
        what: what ``path`` is, for the message (``"output"``).

    Yields:
        The lock file's path.

    Raises:
        InputError: another live process holds the lock: one line naming ``path``, the lock
            file and the owner's pid; or the lock path is a symbolic link.
        OSError: the lock file cannot be made or written (named in the error).

    Example:
        >>> with exclusive_lock("predictions.csv"):  # doctest: +SKIP
        ...     write_rows()
    """
    lock_file = lock_path(path)
    descriptor = (_flock if fcntl is not None else _exclusive_file)(path, lock_file, what)
    try:
        yield lock_file
    finally:
        # Removed while still held, so a waiting run sees a new file (see module docstring).
        with contextlib.suppress(OSError):
            os.remove(lock_file)
        os.close(descriptor)
