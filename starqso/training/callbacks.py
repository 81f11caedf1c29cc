"""Callbacks the stages use on top of Keras' own."""

from __future__ import annotations

import os

import keras

from starqso._util.atomic import atomic_path, write_json_atomically


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose checkpoint files are replaced atomically.

    Keras writes the weights file in place, so a run killed (SIGKILL, pre-emption) while it is
    writing leaves a truncated HDF5 file and ``--resume`` fails on it. Writing to a temporary
    file and renaming means the folder always holds a complete checkpoint: the last epoch's,
    or none yet.
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic_path(self._weights_path) as temporary_weights:
            self.model.save_weights(filepath=temporary_weights, overwrite=True)
        write_json_atomically(self._training_metadata_path,
                              {"epoch": self._current_epoch, "batch": self._last_batch_seen})
