"""Callbacks the stages use on top of Keras' own."""

from __future__ import annotations

import json
import os

import keras


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose checkpoint files are replaced atomically.

    Keras writes the weights file in place, so a run killed (SIGKILL, pre-emption) while it is
    writing leaves a truncated HDF5 file and ``--resume`` fails on it. Writing to a temporary
    file and renaming means the folder always holds a complete checkpoint: the last epoch's,
    or none yet.
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        temporary_weights = f"{self._weights_path}.tmp.weights.h5"
        self.model.save_weights(filepath=temporary_weights, overwrite=True)
        os.replace(temporary_weights, self._weights_path)
        temporary_metadata = f"{self._training_metadata_path}.tmp"
        with open(temporary_metadata, "w") as handle:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, handle)
        os.replace(temporary_metadata, self._training_metadata_path)
