"""Which starqso command made a folder: the one gate of every command that writes a folder.

``cluster``, ``evaluate``, ``export``, ``fit``, ``finetune`` and ``simulate`` write folders.
Each leaves a marker file (:data:`MARKER`, ``.starqso-output.json``) naming the command that
made the folder, and each passes :func:`output_folder` before it writes, which

* accepts a folder that is missing, empty, or was made by the same command (its marker; for
  folders made before markers existed, its layout, see :func:`folder_maker`);
* refuses, in one line, a folder holding anything else: a user's folder without a marker, or
  one another command made (``cluster --out`` onto a fit run folder), so no command replaces
  or writes into what it did not make;
* for the commands that replace their folder whole (``cluster``, ``evaluate``, ``export``),
  also refuses entries the command does not write (a user's notes added to an earlier output)
  and the current folder or one above it (``--out .``);
* holds the exclusive lock of the folder (:func:`starqso._util.locking.exclusive_lock`, a lock file
  beside it) for the whole run, so a second run on the same folder is refused at once rather
  than racing the first.

The marker's content is the same for every run of a command and version (no time, no process
id), so a simulation or an export stays byte-identical from run to run.

Standard library only.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pathlib
from collections.abc import Iterable, Iterator

from starqso import __version__
from starqso._util import jsonfile as strict_json
from starqso._util.atomic import write_json_atomically
from starqso._util.locking import exclusive_lock, lock_path
from starqso.errors import InputError

__all__ = ["MARKER", "check_output_folder", "folder_maker", "output_folder", "write_marker",
           "writes_output"]

#: The file in a folder that says which starqso command made it.
MARKER = ".starqso-output.json"
COMMANDS = ("cluster", "evaluate", "export", "fit", "finetune", "simulate")
# A marker is a few hundred bytes; anything far larger is not one (and is not read).
_MARKER_MAX_BYTES = 65536
# The first columns of the catalogue `starqso simulate` writes, for simulations made before
# markers existed.
_SIMULATION_COLUMNS = ["id", "image", "spectrum", "label", "redshift"]
# Files a fit or finetune run writes beside its config.yaml before or as its first stage ends.
_RUN_FILES = ("state.json", "split.json", "preprocessing.json", "finetune.json")


def _read_marker(folder: pathlib.Path) -> str | None:
    """The command named by ``folder``'s marker, or None (no marker, not a file, unreadable)."""
    path = folder / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MARKER_MAX_BYTES:
            return None
        payload = strict_json.loads(path.read_text(encoding="utf-8"), path)
    except (OSError, ValueError):  # a duplicate key too: not a marker starqso wrote
        return None
    command = payload.get("command") if isinstance(payload, dict) else None
    return command if command in COMMANDS else None


def _json_keys(path: pathlib.Path) -> set:
    """The top-level keys of a small JSON object file (empty for anything else)."""
    try:
        if path.stat().st_size > 16 * 1024 * 1024:
            return set()
        payload = strict_json.loads(path.read_text(encoding="utf-8"), path)
    except (OSError, ValueError, RecursionError):
        return set()
    return set(payload) if isinstance(payload, dict) else set()


def _simulation_catalogue(path: pathlib.Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            header = next(csv.reader(stream), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:len(_SIMULATION_COLUMNS)] == _SIMULATION_COLUMNS


def _legacy_maker(folder: pathlib.Path) -> str | None:
    """The command whose layout ``folder`` has, for folders made before markers existed.

    The rules: ``config.yaml`` with one of the files a run writes next to it (``state.json``,
    ``split.json``, ``preprocessing.json``, ``finetune.json``) is a run folder (``finetune``
    when ``finetune.json`` is there, else ``fit``: the shipped ``saved_models/`` runs), but
    ``config.yaml`` alone is not (many a user's folder has one);
    ``metadata.json`` with ``starqso_classifier.keras`` an ``export`` (``starqso/pretrained``);
    ``metrics.json`` with ``confusion``, ``join`` and ``files`` an ``evaluate`` output;
    ``clusters.csv`` with ``summary.json`` a ``cluster`` output; a ``catalog.csv`` whose
    columns start as simulate's, beside ``images/``, a ``simulate`` output.
    """
    def has(name):
        return (folder / name).is_file() and not (folder / name).is_symlink()

    if has("config.yaml") and any(has(name) for name in _RUN_FILES):
        return "finetune" if has("finetune.json") else "fit"
    if has("metadata.json") and has("starqso_classifier.keras"):
        return "export"
    if has("metrics.json") and _json_keys(folder / "metrics.json") >= {"confusion", "join",
                                                                         "files"}:
        return "evaluate"
    if has("clusters.csv") and has("summary.json"):
        return "cluster"
    if has("catalog.csv") and (folder / "images").is_dir() \
            and _simulation_catalogue(folder / "catalog.csv"):
        return "simulate"
    return None


def folder_maker(folder: str | os.PathLike) -> str | None:
    """The starqso command that made ``folder``, or None.

    The marker (:data:`MARKER`) decides; a folder without one counts as made by the command
    whose layout it has (see ``_legacy_maker``: e.g. a folder with ``config.yaml`` and
    ``state.json`` is a ``fit`` run), since folders made before markers existed have none.

    Args:
        folder: an existing folder.

    Returns:
        One of :data:`COMMANDS`, or None.

    Example:
        >>> folder_maker("saved_models/starqso-large")  # doctest: +SKIP
        'fit'
    """
    folder = pathlib.Path(folder)
    return _read_marker(folder) or _legacy_maker(folder)


def write_marker(folder: str | os.PathLike, command: str) -> pathlib.Path:
    """Write ``folder``'s marker saying ``command`` made it (atomically; ``folder`` exists).

    Example:
        >>> write_marker("clusters.partial", "cluster").name  # doctest: +SKIP
        '.starqso-output.json'
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}. Received: {command!r}")
    path = pathlib.Path(folder) / MARKER
    write_json_atomically(path, {
        "made_by": "starqso", "command": command, "starqso_version": __version__,
        "note": f"this folder was made by `starqso {command}`; starqso writes into or "
                f"replaces only folders its own commands made"})
    return path


def shown_entries(names: Iterable[str], limit: int = 5) -> str:
    """Up to ``limit`` of ``names``, sorted, for a one-line message (``a, b, ... (9 entries)``).

    Example:
        >>> shown_entries(["b", "a"])
        'a, b'
    """
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit
                                       else "")


def is_current_or_above(path: pathlib.Path) -> bool:
    try:
        here = pathlib.Path.cwd().resolve()
    except OSError:
        return False
    target = path.resolve()
    return target == here or target in here.parents


def check_output_folder(folder: str | os.PathLike, command: str, *, option: str = "--out",
                        replaced: Iterable[str] | None = None) -> pathlib.Path:
    """Check that ``command`` may write ``folder``; see the module docstring for the rules.

    Args:
        folder: the output folder as the user gave it.
        command: the command that writes it (one of :data:`COMMANDS`).
        option: the option that named it, for the message.
        replaced: for a command that replaces the folder whole, the names it writes (the
            marker is added); None for one that writes into it (``fit``, ``simulate``).

    Returns:
        The folder to write, absolute; for a replaced folder given as a link to a folder, the
        link's target (the link stays a link).

    Raises:
        InputError: one line naming the folder and why: a file, a folder starqso did not
            make (with what it holds), one another command made, entries ``command`` does not
            write, or the current folder.

    Example:
        >>> check_output_folder("clusters", "cluster", replaced=["clusters.csv"])  # doctest: +SKIP
        PosixPath('/home/me/clusters')
    """
    given = os.fspath(folder)
    if not given.strip():
        raise InputError(f"{option} is blank; expected a folder name. Received: {option} "
                         f"{given!r}")
    path = pathlib.Path(os.path.abspath(given))
    if replaced is not None and path.is_symlink() and path.is_dir():
        path = path.resolve()
    if replaced is not None and is_current_or_above(path):
        raise InputError(f"{option} {given} is the current folder or one above it; "
                         f"`starqso {command}` replaces its folder as a whole, so name a new "
                         f"folder (e.g. {option} {command}-output). Received: {option} {given}")
    if not os.path.lexists(path):
        return path
    if path.is_symlink() and not path.exists():
        raise InputError(f"{option} {given} is a broken symbolic link (to "
                         f"{os.readlink(path)}), not a folder; remove it or choose another "
                         f"{option}. Received: {option} {given}")
    if not path.is_dir():
        raise InputError(f"{option} {given} is a file, not a folder; choose another "
                         f"{option}. Received: {option} {given}")
    try:
        entries = os.listdir(path)
    except OSError as err:
        raise InputError(f"{option} {given} could not be read ({err.strerror or err}); "
                         f"choose another {option}") from err
    if not entries:
        return path
    maker = folder_maker(path)
    if maker is None:
        raise InputError(f"{option} {given} holds {shown_entries(entries)} and no starqso marker "
                         f"({MARKER}): `starqso {command}` writes only into a new or empty "
                         f"folder or one it made itself; choose another {option}")
    if maker != command:
        raise InputError(f"{option} {given} was made by `starqso {maker}`, not `starqso "
                         f"{command}`; a command writes only into a new or empty folder or "
                         f"one it made itself; choose another {option}")
    if replaced is not None:
        foreign = [name for name in entries if name not in {*replaced, MARKER}]
        if foreign:
            raise InputError(f"{option} {given} is an earlier `starqso {command}` output, "
                             f"but it also holds {shown_entries(foreign)}, which "
                             f"`starqso {command}` did not write; it is replaced as a whole, "
                             f"so move those away "
                             f"or choose another {option}")
    return path


def writes_output(strategy: str) -> bool:
    """Whether this process writes the run folder: false only for a multi-worker non-chief.

    Read from ``TF_CONFIG`` as :func:`starqso.training.strategies.is_chief` decides (the
    ``chief`` task, else worker 0), since ``fit`` and ``finetune`` claim their folder before
    TensorFlow starts; the other workers write a scratch folder and never touch ``--out``.

    Example:
        >>> writes_output("default")
        True
    """
    if strategy != "multiworker":
        return True
    try:
        spec = strict_json.loads(os.environ.get("TF_CONFIG") or "{}", "TF_CONFIG")
        task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
        index = int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return True  # the strategy reports a broken TF_CONFIG itself
    if not cluster or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and index == 0 and "chief" not in cluster


def _make_parents(folder: pathlib.Path) -> list[pathlib.Path]:
    """Make ``folder`` and its missing parents; return those it made, deepest first."""
    made = []
    current = folder
    while not os.path.lexists(current):
        made.append(current)
        current = current.parent
    if not current.is_dir():
        raise InputError(f"output folder {folder} could not be made: {current} is a file")
    for path in reversed(made):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError as err:
            _remove_empty(made)
            raise InputError(f"output folder {path} could not be made "
                             f"({err.strerror or err})") from err
    return made


def _remove_empty(made: list[pathlib.Path]) -> None:
    for path in made:  # deepest first; a folder someone filled meanwhile stays
        with contextlib.suppress(OSError):
            os.rmdir(path)


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike, command: str, *, option: str = "--out",
                  replaced: Iterable[str] | None = None, mark: bool = False
                  ) -> Iterator[pathlib.Path]:
    """Check ``folder`` for ``command`` and hold its exclusive lock for the ``with`` block.

    Args:
        folder, command, option, replaced: as :func:`check_output_folder`.
        mark: make ``folder`` (if missing) and write its marker at once, for a command that
            writes into it (``fit``, ``finetune``, ``simulate``); a replaced folder gets its
            marker in the staging folder instead (``atomic.replace_folder(command=...)``).

    Yields:
        The folder to write (:func:`check_output_folder`'s answer).

    Raises:
        InputError: a refused folder, or another starqso run holds its lock.

    On an error, what this made and is still empty goes again: the marker (when the folder
    holds nothing else the run added) and the folders it created, so a refused or failed run
    leaves nothing, not even a marker in a folder that held something before.

    Example:
        >>> with output_folder("runs/demo", "fit", mark=True) as folder:  # doctest: +SKIP
        ...     train_into(folder)
    """
    try:
        path = check_output_folder(folder, command, option=option, replaced=replaced)
    except InputError:
        # What a run holding the lock is writing (its marker's temporary file, a half-made
        # folder) is no reason to give: say that the folder is busy.
        _refuse_if_busy(folder, replaced is not None, what=f"{option} folder")
        raise
    made = _make_parents(path.parent)
    marker_written, before = False, set()
    try:
        with exclusive_lock(path, what=f"{option} folder"):
            # Again under the lock: a run that held it may have made the folder meanwhile.
            path = check_output_folder(folder, command, option=option, replaced=replaced)
            if mark:
                if not os.path.lexists(path):
                    os.mkdir(path)
                    made.insert(0, path)
                before = set(os.listdir(path))
                if _read_marker(path) != command:
                    write_marker(path, command)
                    marker_written = True
            yield path
    except BaseException:
        if marker_written:
            with contextlib.suppress(OSError):
                if set(os.listdir(path)) - {MARKER} <= before:
                    os.remove(path / MARKER)
        _remove_empty(made)
        raise


def _refuse_if_busy(folder, replaced, what):
    """Raise the lock's "in use by another starqso run" line when another run holds
    ``folder``'s lock (the one :func:`output_folder` takes); return quietly otherwise."""
    path = pathlib.Path(os.path.abspath(os.fspath(folder)))
    if replaced and path.is_symlink() and path.is_dir():
        path = path.resolve()
    if not os.path.lexists(lock_path(path)):
        return
    try:
        with exclusive_lock(path, what=what):
            pass
    except OSError:
        return  # an unreadable lock file: the refusal at hand is the better message
