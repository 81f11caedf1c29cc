"""One rule for every command with an input and an output: an output is never one of the inputs.

``predict``, ``embed``, ``similar``, ``evaluate``, ``cluster`` and the Dask ``predict`` call
:func:`refuse_output_among_inputs` before they process their first row, with every file they
read: the catalogue and each cutout or spectrum file it names, every cutout of a folder, the
files of a stack, Parquet or HATS input, and the model folder's files. An output that is one
of them is refused with one line naming the output and the input it is, so nothing is read
half-way and nothing is replaced.

"The same file" means the same file on disk, whatever the path says: a symbolic link to an
input, a hard link to it and a path spelled another way (``./a/../cat.csv``) all count. An
existing output is compared by ``os.stat`` (device and inode); an output that does not exist
yet by its resolved path (:func:`os.path.realpath`), since a link may point at a path that
will become an input. An output *folder* (``evaluate --out``, ``cluster --out``, a Parquet
dataset) is replaced whole, so an input anywhere inside it is refused too.

Standard library only: the checks run before any heavy import.

Example:
    >>> refuse_output_among_inputs("p.csv", [("cat.csv", "the input catalogue")])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from starqso._util.jsonfile import read_json
from starqso.errors import InputError
from starqso.io.sources import BAND_COLUMNS

__all__ = ["model_inputs", "refuse_output_among_inputs", "source_inputs"]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _refuse(option, output, what, relation="is", target=None):
    """One line: the output (or the side-car ``target`` written with it), and which input."""
    written = output if target in (None, output) else f"{output} (its side-car {target})"
    raise InputError(f"{option} {written} {relation} {what}: writing it would replace an "
                     f"input; choose another {option}. Received: {option} {output}")


def _stat_key(path):
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def refuse_output_among_inputs(output, inputs: Iterable, *, trees: Iterable = (),
                               option: str = "--output", folder: bool = False,
                               beside: Iterable = ()) -> None:
    """Refuse an ``output`` that is one of the ``inputs`` (through links too).

    Args:
        output: the file (or, with ``folder``, the folder) the command will write.
        inputs: ``(path, what)`` pairs, one per input file; ``what`` names it for the message
            (``"the cutout images/x.fits of row 3 (id 'x') of cat.csv"``). Blank paths are
            skipped. May be a generator: it is read once, and only as far as the first match.
        trees: ``(folder, what)`` pairs of input folders whose every file is an input (a zarr
            store): an output inside one is refused, and so is an output folder holding one.
        option: the option that named ``output``, for the message.
        folder: ``output`` is a folder replaced whole: an input anywhere inside it counts.
            Without it ``output`` is a file, and an existing folder there is refused.
        beside: files written with a file ``output`` (a CSV's side-car ``OUTPUT.json``),
            held to the same rule.

    Raises:
        InputError: one line naming ``output`` and the input it is (or holds); or, for a
            file output, the folder it names.

    Example:
        >>> refuse_output_among_inputs("out.csv", [("cat.csv", "the input catalogue")])
    """
    output_path = os.fspath(output)
    resolved = os.path.realpath(output_path)
    for tree, what in trees:
        tree_resolved = os.path.realpath(os.fspath(tree))
        if _inside(resolved, tree_resolved):
            _refuse(option, output_path, what, "is inside" if resolved != tree_resolved
                    else "is")
        if folder and _inside(tree_resolved, resolved):
            _refuse(option, output_path, what, "holds")
    if folder:
        _refuse_inside_folder(output_path, resolved, inputs, option)
        return
    targets = []
    for target in (output_path, *(os.fspath(path) for path in beside)):
        _refuse_foreign_file(target, output_path, option, side_car=target != output_path)
        if os.path.isdir(target):
            where = "" if target == output_path else f" (its side-car {target})"
            raise InputError(f"{option} {output_path}{where} is a folder; expected a file to "
                             f"write (a new name, or an earlier output). Received: {option} "
                             f"{output_path}")
        target_resolved = os.path.realpath(target)
        targets.append((target, _stat_key(target), os.path.abspath(target), target_resolved,
                        os.path.basename(target_resolved)))
    for path, what in inputs:
        path = os.fspath(path) if path else ""
        if not path:
            continue
        key = False  # not looked up yet
        for target, target_key, absolute, target_resolved, name in targets:
            if target_key is not None:
                key = _stat_key(path) if key is False else key
                same = key == target_key
            else:
                # Nothing to stat yet: the same path, or a name that resolves to it (realpath
                # only for inputs with the output's file name: it costs a stat per part).
                same = os.path.abspath(path) == absolute or (
                    os.path.basename(path) == name and os.path.realpath(path) == target_resolved)
            if same:
                _refuse(option, output_path, what, target=target)


def _refuse_foreign_file(target, output_path, option, *, side_car):
    """Refuse to replace what is at ``target`` when starqso cannot have written it.

    A FIFO, device or socket is never an earlier output; a broken link would be written
    through to its target; and a side-car (``OUTPUT.json``) the user did not name is replaced
    only when it is one starqso wrote (a JSON object with ``starqso_version``).
    """
    where = f" (its side-car {target})" if side_car else ""
    if os.path.islink(target) and not os.path.exists(target):
        raise InputError(f"{option} {output_path}{where} is a broken link to "
                         f"{os.readlink(target)}; starqso does not write through links. "
                         f"Received: {option} {output_path}")
    if not os.path.exists(target) or os.path.isdir(target):
        return
    if not os.path.isfile(target):
        raise InputError(f"{option} {output_path}{where} is not a regular file (a FIFO, device "
                         f"or socket); expected a new name or an earlier output. Received: "
                         f"{option} {output_path}")
    if not side_car:
        return

    record = None
    # starqso's side-cars are a few kB: a large file there is the user's, and is not read.
    if os.path.getsize(target) <= 1 << 20:
        try:
            record = read_json(target)
        except (InputError, OSError, ValueError):
            record = None
    if not isinstance(record, dict) or "starqso_version" not in record:
        raise InputError(f"{option} {output_path} would replace its side-car {target}, which "
                         f"starqso did not write; move it or choose another {option}. "
                         f"Received: {option} {output_path}")


def _refuse_inside_folder(output_path, resolved, inputs, option):
    """An output folder is swapped in whole: no input may lie inside it (a link's target
    included), nor share a file with it through a hard link."""
    if not os.path.lexists(output_path):
        return  # nothing exists inside a folder that does not exist
    linked = {}
    for path, what in inputs:
        path = os.fspath(path) if path else ""
        if not path:
            continue
        found_resolved = os.path.realpath(path)
        if _inside(found_resolved, resolved):
            _refuse(option, output_path, what, "holds" if found_resolved != resolved else "is")
        try:
            found = os.stat(path)
        except OSError:
            continue
        if found.st_nlink > 1:
            linked[(found.st_dev, found.st_ino)] = (path, what)
    if not linked or not os.path.isdir(output_path):
        return
    for root, _, names in os.walk(output_path):
        for entry in names:
            try:
                found = os.stat(os.path.join(root, entry), follow_symlinks=False)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) in linked:
                path, what = linked[(found.st_dev, found.st_ino)]
                _refuse(option, output_path, f"{what} (as the hard link "
                        f"{os.path.join(root, entry)})", "holds")


def model_inputs(model_dir) -> list:
    """``(path, what)`` of every file in a model folder (it is small: a few files).

    Example:
        >>> model_inputs("runs/demo/export")[0]  # doctest: +SKIP
        ('runs/demo/export/metadata.json', 'the model file runs/demo/export/metadata.json')
    """
    found = []
    for root, _, names in os.walk(os.fspath(model_dir)):
        found += [(os.path.join(root, name), f"the model file {os.path.join(root, name)}")
                  for name in sorted(names)]
    return found


def source_inputs(rows_source):
    """``(inputs, trees)`` of a :class:`starqso.io.sources.Source`: every file it reads.

    Args:
        rows_source: from :func:`starqso.io.sources.open_source`.

    Returns:
        ``inputs``, a generator of ``(path, what)`` (a catalogue of a million cutouts is not
        listed twice in memory): the input file, each cutout file a catalogue or a folder
        names (and a catalogue's spectrum files), a Parquet or HATS input's files; and
        ``trees``, the ``(folder, what)`` read as a whole (zarr stores).

    Example:
        >>> inputs, trees = source_inputs(open_source("catalog.csv"))  # doctest: +SKIP
        >>> next(inputs)
        ('catalog.csv', 'the input catalog.csv')
    """
    kind, path = rows_source.kind, rows_source.path
    trees = []
    if kind == "zarr":
        trees = [(os.path.join(batch, "images.zarr"), "the zarr store "
                  f"{os.path.join(batch, 'images.zarr')}") for batch in rows_source.batches]

    def inputs():
        if os.path.isfile(path):
            yield path, f"the input {'catalogue ' if kind == 'files' else ''}{path}"
        if kind == "files":
            folder = os.path.isdir(path)
            for row, (ident, files) in enumerate(zip(rows_source.ids(), rows_source.files,
                                                     strict=False), 1):
                for name in (files,) if isinstance(files, str) else files:
                    yield name, (f"the cutout {name} (id {ident!r}) of the input folder {path}"
                                 if folder else
                                 f"the cutout {name} of row {row} (id {ident!r}) of {path}")
            for row, name in enumerate(getattr(rows_source, "spectra", ()), 1):
                yield name, f"the spectrum {name} of row {row} of {path}"
        elif kind == "zarr":
            for batch in rows_source.batches:
                name = os.path.join(batch, "images_metadata.parquet")
                yield name, f"the zarr metadata {name}"
        elif kind in ("parquet", "hats"):
            if os.path.isdir(path):
                for root, _, names in os.walk(path):
                    for entry in sorted(names):
                        name = os.path.join(root, entry)
                        yield name, f"the file {name} of the input {path}"
            for name in rows_source.files:
                yield name, f"the Parquet file {name}"
            yield from _parquet_cutout_files(rows_source)

    return inputs(), trees


def _parquet_cutout_files(rows_source):
    """The cutout files a Parquet input's ``image`` / ``image_u`` ... columns name."""
    if getattr(rows_source, "layout", None) not in ("image", "bands"):
        return
    import pyarrow.parquet as pq

    wanted = ["image"] if rows_source.layout == "image" else list(BAND_COLUMNS)
    for name in rows_source.files:
        schema = pq.read_schema(name).names
        columns = [next(column for column in schema if column.lower() == want)
                   for want in wanted]
        base = os.path.dirname(os.path.abspath(name))
        table = pq.read_table(name, columns=columns)
        for column in columns:
            for row, value in enumerate(table.column(column).to_pylist(), 1):
                if value:
                    cutout = os.path.join(base, str(value))
                    yield cutout, f"the cutout {cutout} of row {row} of the Parquet file {name}"
