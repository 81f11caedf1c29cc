"""Checks for the optional parts of the install, with one line saying which extra to add.

``pip install starqso`` is the light runtime: simulate, ``predict --runtime litert`` and
evaluate, with no TensorFlow. Two extras add the rest:

* ``starqso[train]``: TensorFlow, Keras and TensorBoard, for ``fit``, ``export``, ``finetune``
  and ``predict --runtime keras`` (:func:`require_tensorflow`);
* ``starqso[survey]``: Dask, zarr, lsdb, pyarrow and h5py, for survey-scale ``predict``
  (:func:`require_survey`).

Both checks look for the modules with :func:`importlib.util.find_spec`, which finds a module
without importing it, so a check costs nothing when the extra is installed and the command
imports the module itself afterwards. A missing module raises :class:`~starqso.errors.InputError`,
which the command line prints as one line on stderr (exit status 2).
"""

from __future__ import annotations

import importlib.util
import sys

from starqso.errors import InputError

#: The modules of the ``train`` extra that starqso imports (tensorboard is only a dependency).
TRAIN_MODULES = ("tensorflow", "keras")
#: The modules of the ``survey`` extra (``distributed`` is dask[distributed]'s own package).
SURVEY_MODULES = ("dask", "distributed", "zarr", "lsdb", "pyarrow", "h5py")
# How a missing survey module is named in the message (its top-level package).
_SURVEY_NAMES = {"dask": "Dask", "distributed": "Dask distributed"}


def missing_module(*modules: str) -> str | None:
    """The first of ``modules`` that cannot be imported here, or None when all can.

    A module is missing when :func:`importlib.util.find_spec` finds no spec for it or an import
    hook refuses it (raises ImportError); one already imported counts as present.

    Args:
        modules: dotted module names, e.g. ``"tensorflow"``, ``"dask.distributed"`` (a
            submodule's parent package is imported to look inside it).

    Returns:
        The missing module's name, or None.

    Example:
        >>> missing_module("json", "no_such_module_here")
        'no_such_module_here'
    """
    for name in modules:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # refused by an import hook, or a parent missing
            spec = None
        if spec is None:
            return name
    return None


def _require(what: str, modules, needs, extra: str, note: str | None) -> None:
    name = missing_module(*modules)
    if name is None:
        return
    if needs is None:
        top = name.partition(".")[0]
        needs = _SURVEY_NAMES.get(top, top)
    tail = f"; {note}" if note else ""
    raise InputError(f"{what} needs {needs}, which the light install leaves out: "
                     f"pip install \"starqso[{extra}]\"{tail}. "
                     f"Received: no module named {name!r}")


def require_tensorflow(what: str, note: str | None = None) -> None:
    """Make sure TensorFlow and Keras can be imported before ``what`` starts using them.

    Args:
        what: what needs them, as the user typed it: ``"starqso fit"``, ``"--runtime keras"``.
        note: an optional clause appended after the install line, e.g. ``"the light install
            runs --runtime litert"``.

    Raises:
        InputError: ``tensorflow`` or ``keras`` is not installed (or refused by an import
            hook); one line naming ``pip install "starqso[train]"`` and the missing module.

    Example:
        >>> require_tensorflow("starqso fit")  # doctest: +SKIP
        Traceback (most recent call last):
        starqso.errors.InputError: starqso fit needs TensorFlow, which the light install leaves
        out: pip install "starqso[train]". Received: no module named 'tensorflow'
    """
    _require(what, TRAIN_MODULES, "TensorFlow", "train", note)


def require_survey(what: str, *modules: str, note: str | None = None) -> None:
    """Make sure the survey-scale modules ``what`` uses (Dask, zarr, lsdb ...) can be imported.

    Args:
        what: what needs them, as the user typed it: ``"--workers"``, ``"a HATS catalogue"``.
        modules: the modules to check, e.g. ``"dask"``, ``"distributed"``, ``"zarr"``,
            ``"lsdb"``, ``"pyarrow"``, ``"h5py"`` [default: all of :data:`SURVEY_MODULES`].
            Name a top-level package (``"distributed"``, not ``"dask.distributed"``, a module
            inside dask that exists without the distributed package).
        note: an optional clause appended after the install line.

    Raises:
        InputError: one of ``modules`` is not installed; one line naming
            ``pip install "starqso[survey]"`` and the missing module.

    Example:
        >>> require_survey("--scheduler", "dask", "distributed")  # doctest: +SKIP
        Traceback (most recent call last):
        starqso.errors.InputError: --scheduler needs Dask distributed, which the light install
        leaves out: pip install "starqso[survey]". Received: no module named 'distributed'
    """
    _require(what, modules or SURVEY_MODULES, None, "survey", note)
