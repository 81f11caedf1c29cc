"""The run folder that ``starqso fit`` writes and ``export``, ``--resume`` and the benchmarks read.

:class:`RunFolder` is the one owner of its layout: every file name, the JSON state, and the
reading of an older run's configuration live here, and nothing else builds paths into a run::

    .starqso-output.json     the marker: made by `starqso fit` (or finetune); run folders
                             from before markers are known by config.yaml / state.json
                             (starqso._util.ownership)
    config.yaml              the run configuration (strict; reload with --config)
    data.json                the catalogue trained on (null: simulated demo data), and the
                             real sky backgrounds injected into (fit --sky-backgrounds)
    data_flags.csv           catalogue rows left out or repaired, with the reason (if any)
    preprocessing.json       cutout scaling and photometry statistics (also inside every model)
    split.json               ids of the train / validation / test objects
    <stage models>.keras     each stage's models (see ``starqso.training.stages``)
    starqso_classifier.keras the deployable image -> p(QSO) model
    metrics.json             validation metrics per stage
    history.json             per-epoch training history per stage
    state.json               completed stages (for --resume)
    export/                  SavedModel, TFLite fp32/fp16/int8, checks, model card
    logs/STAGE/              TensorBoard logs
    backup/STAGE/            last-epoch checkpoints while a stage runs (--resume)

Every write is atomic (:mod:`starqso._util.atomic`). No TensorFlow here: the CLI checks a folder
before it pays for importing TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import shutil
from collections.abc import Iterable, Mapping

from starqso._util.atomic import write_bytes_atomically, write_json_atomically
from starqso._util.jsonfile import DuplicateKeyError, read_json
from starqso.config import load_config, load_yaml, save_config
from starqso.errors import InputError

__all__ = ["RunFolder"]


def _file_in_folder(name: str) -> property:
    """A read-only :class:`RunFolder` property: the path of its file (or folder) whose name is
    the class attribute ``name`` (``CONFIG``, ``DEPLOYABLE``...)."""
    return property(lambda self: self.root / getattr(self, name))


class RunFolder:
    """One run folder: its paths, its JSON state and its configuration.

    Args:
        path: the folder (need not exist yet).

    Example:
        >>> folder = RunFolder("runs/demo")
        >>> folder.config_path.name
        'config.yaml'
    """

    CONFIG = "config.yaml"
    DATA = "data.json"
    FLAGS = "data_flags.csv"
    PREPROCESSING = "preprocessing.json"
    SPLIT = "split.json"
    METRICS = "metrics.json"
    HISTORY = "history.json"
    STATE = "state.json"
    DEPLOYABLE = "starqso_classifier.keras"
    # the metric stage's head (model.metric_loss), which the export puts inside the model
    METRIC_HEAD = "metric_head.keras"
    EXPORT = "export"
    SPLITS = ("train", "validation", "test")

    def __init__(self, path: str | os.PathLike):
        self.root = pathlib.Path(path)

    def __repr__(self):
        return f"RunFolder({str(self.root)!r})"

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.root / name

    # --- paths --------------------------------------------------------------------------------
    config_path = _file_in_folder("CONFIG")
    deployable_path = _file_in_folder("DEPLOYABLE")
    metric_head_path = _file_in_folder("METRIC_HEAD")
    export_dir = _file_in_folder("EXPORT")

    def backup_dir(self, stage: str) -> pathlib.Path:
        """Checkpoints of ``stage`` while it runs (removed when it completes)."""
        return self.root / "backup" / stage

    def logs_dir(self, stage: str) -> pathlib.Path:
        """TensorBoard logs of ``stage``."""
        return self.root / "logs" / stage

    def holds_run(self) -> bool:
        """Whether a run was started here (a config or a state file exists)."""
        return self.config_path.exists() or (self.root / self.STATE).exists()

    def is_complete(self) -> bool:
        """Whether ``export`` can read this folder (config and deployable model present)."""
        return self.config_path.is_file() and self.deployable_path.is_file()

    # --- configuration ------------------------------------------------------------------------
    def load_config(self):
        """The run's configuration.

        Run folders written before ``model.photometry`` existed trained without it, so a saved
        config without that key reads as ``photometry: false``.

        Returns:
            :class:`starqso.config.RunConfig`.

        Raises:
            InputError: a missing or invalid ``config.yaml``.
        """
        config = load_config(self.config_path)
        model = load_yaml(self.config_path).get("model") or {}
        if "photometry" not in model:
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, photometry=False))
        return config

    def save_config(self, config) -> None:
        save_config(config, self.config_path)

    # --- JSON state ---------------------------------------------------------------------------
    def _read_json(self, name: str, default=None):
        path = self.root / name
        if not path.exists():
            return default
        try:
            return read_json(path)
        except DuplicateKeyError:
            raise
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"{path} is not valid JSON ({err}); start a new --out") from err

    def completed_stages(self, known: Iterable[str] | None = None) -> list[str]:
        """Stages recorded as complete in ``state.json`` ([] when there is none).

        Args:
            known: stage names this starqso knows; any other name is an error.

        Raises:
            InputError: a ``state.json`` that starqso did not write.
        """
        state = self._read_json(self.STATE)
        if state is None:
            return []
        path = self.root / self.STATE
        try:
            completed = list(state["completed"])
            unknown = [stage for stage in completed
                       if known is not None and stage not in known]
        except (KeyError, TypeError) as err:
            raise InputError(f"{path} is not a starqso run state ({err!r}); "
                             "start a new --out") from None
        if unknown:
            raise InputError(f"{path} lists unknown stages. Received: {unknown}")
        return completed

    def record_stage(self, stage: str, completed: list[str], metrics: Mapping,
                     history: Mapping) -> None:
        """Write metrics, history and state after ``stage`` completed; drop its checkpoints."""
        write_json_atomically(self.root / self.METRICS, dict(metrics))
        write_json_atomically(self.root / self.HISTORY, dict(history))
        write_json_atomically(self.root / self.STATE, {"completed": list(completed)})
        shutil.rmtree(self.backup_dir(stage), ignore_errors=True)

    def metrics(self) -> dict:
        """Validation metrics per stage ({} before the first stage completes)."""
        return self._read_json(self.METRICS, {})

    def history(self) -> dict:
        """Per-epoch history per stage."""
        return self._read_json(self.HISTORY, {})

    def data_source(self) -> tuple[bool, str | None]:
        """``(recorded, catalogue)``: whether ``data.json`` exists, and the catalogue it names
        (None: simulated demo data)."""
        saved = self._read_json(self.DATA)
        return (saved is not None, None if saved is None else saved["data"])

    def save_data_source(self, catalogue: str | None, sky_backgrounds: dict | None = None) -> None:
        """``data.json``: the catalogue (None: simulated) and, if any, the real sky backgrounds
        the simulated objects were injected into (``BackgroundSource.describe()``)."""
        record = {"data": catalogue}
        if sky_backgrounds is not None:  # absent otherwise: a plain run's file is unchanged
            record["sky_backgrounds"] = sky_backgrounds
        write_json_atomically(self.root / self.DATA, record)

    def sky_backgrounds(self) -> dict | None:
        """The sky backgrounds ``data.json`` records (None: none were used)."""
        return (self._read_json(self.DATA) or {}).get("sky_backgrounds")

    def save_split(self, ids_by_split: Mapping[str, Iterable[str]]) -> None:
        """``split.json``: the ids of each split, as strings."""
        write_json_atomically(self.root / self.SPLIT, {
            name: [str(i) for i in ids_by_split[name]] for name in self.SPLITS})

    def split(self) -> dict[str, list[str]]:
        """The ids of each split, as written by :meth:`save_split`."""
        split = self._read_json(self.SPLIT)
        if split is None:
            raise InputError(f"run folder has no {self.SPLIT} (run `starqso fit` first). "
                             f"Received: {self.root}")
        return split

    def save_preprocessing(self, statistics: Mapping) -> None:
        write_json_atomically(self.root / self.PREPROCESSING, dict(statistics))

    def preprocessing(self) -> dict:
        return self._read_json(self.PREPROCESSING, {})

    def write_flags(self, flags: list[dict]) -> pathlib.Path | None:
        """``data_flags.csv``: every catalogue row left out, or used after a repair."""
        if not flags:
            return None
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("row", "id", "used", "flag"))
        writer.writerows((f["row"], f["id"], "yes" if f["used"] else "no", f["flag"])
                         for f in flags)
        path = self.root / self.FLAGS
        write_bytes_atomically(path, buffer.getvalue().encode(), overwrite=True)
        return path

    # --- models -------------------------------------------------------------------------------
    def check_models(self, names: Iterable[str]) -> None:
        """Check the named ``.keras`` files without loading them (see ``model_files``)."""
        from starqso.deploy.folder import check_keras_file

        for name in names:
            check_keras_file(self.root / name)

    def load_model(self, name: str):
        """A ``.keras`` model of this run, checked and loaded in safe mode (imports Keras)."""
        from starqso.deploy.folder import load_keras_model

        return load_keras_model(self.root / name)

    def adopt(self, other: RunFolder, stage: str, files: Iterable[str]) -> None:
        """Take ``stage`` as completed from another run folder (its model files, metrics and
        history), e.g. to train only the later stages of a variant on the same encoder.

        Args:
            other: a run folder where ``stage`` is complete.
            stage: the stage's name.
            files: the stage's model files.

        Raises:
            InputError: ``stage`` is not complete in ``other``.
        """
        if stage not in other.completed_stages():
            raise InputError(f"stage {stage!r} is not complete in {other.root}, so it cannot be "
                             f"taken from there. Received: completed "
                             f"{other.completed_stages()}")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(other.root / name, self.root / name)
        completed = [s for s in self.completed_stages() if s != stage] + [stage]
        metrics, history = self.metrics(), self.history()
        metrics[stage] = other.metrics()[stage]
        history[stage] = other.history().get(stage, {})
        self.record_stage(stage, completed, metrics, history)
