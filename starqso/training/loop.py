"""A distributed training loop for MultiWorkerMirroredStrategy.

Keras 3 ``fit()`` under MultiWorkerMirroredStrategy has open upstream bugs
(keras-team/keras#20585), so multi-worker runs use this loop instead: the model's own
``train_step``/``test_step`` (the same code ``fit()`` runs, GAN included) inside
``strategy.run`` on a distributed dataset, with losses reduced across workers by Keras' loss
scaling. It keeps what the stages need from ``fit()``: per-epoch validation, early stopping
with best-weight restore, per-epoch checkpoints for ``--resume`` and a History-like record.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np


class LoopHistory:
    """What ``fit()`` returns: ``history[metric] = [value per epoch]``."""

    def __init__(self):
        self.history = {}


def _to_python(logs):
    return {key: float(np.asarray(value)) for key, value in logs.items()}


def distributed_fit(model, strategy, train_dataset, validation_dataset, epochs, *, monitor,
                    patience, backup_dir=None, write_backup=True, log=print):
    """Train ``model`` (compiled) for up to ``epochs`` epochs on every worker in lock-step.

    Args:
        model: a compiled Keras model built inside ``strategy.scope()``.
        strategy: the (multi-worker) strategy.
        train_dataset: ``tf.data.Dataset`` of global batches (same on every worker; the
            strategy shards it).
        validation_dataset: same for validation.
        epochs: maximum number of epochs.
        monitor: validation metric to minimise for early stopping, e.g. "val_loss".
        patience: epochs without improvement before stopping.
        backup_dir: folder for per-epoch checkpoints (resume continues from the last one).
        write_backup: whether this worker writes checkpoints (the chief); all read them.
        log: callable for one line per epoch.

    Returns:
        :class:`LoopHistory`.
    """
    import tensorflow as tf

    train_dist = strategy.experimental_distribute_dataset(train_dataset)
    validation_dist = strategy.experimental_distribute_dataset(validation_dataset)

    @tf.function
    def train_step(batch):
        return strategy.run(model.train_step, args=(batch,))

    @tf.function
    def test_step(batch):
        return strategy.run(model.test_step, args=(batch,))

    def reduce(logs):
        return {key: strategy.reduce("MEAN", value, axis=None) for key, value in logs.items()}

    history = LoopHistory()
    start_epoch, best, best_weights, waited = 0, np.inf, None, 0
    state_path = pathlib.Path(backup_dir) / "loop_state.json" if backup_dir else None
    if state_path is not None and state_path.exists():
        state = json.loads(state_path.read_text())
        model.load_weights(pathlib.Path(backup_dir) / "last.weights.h5")
        start_epoch, best, waited = state["epoch"], state["best"], state["waited"]
        history.history = state["history"]
        if (pathlib.Path(backup_dir) / "best.weights.h5").exists():
            current = model.get_weights()
            model.load_weights(pathlib.Path(backup_dir) / "best.weights.h5")
            best_weights = model.get_weights()
            model.set_weights(current)
        log(f"resuming at epoch {start_epoch + 1} from {backup_dir}")

    for epoch in range(start_epoch, epochs):
        if waited >= patience:
            break
        began = time.perf_counter()
        for metric in model.metrics:
            metric.reset_state()
        logs = {}
        for batch in train_dist:
            logs = train_step(batch)
        train_logs = _to_python(reduce(logs))
        for metric in model.metrics:
            metric.reset_state()
        logs = {}
        for batch in validation_dist:
            logs = test_step(batch)
        validation_logs = {f"val_{key}": value for key, value in _to_python(reduce(logs)).items()}
        epoch_logs = {**train_logs, **validation_logs}
        for key, value in epoch_logs.items():
            history.history.setdefault(key, []).append(value)
        log(f"epoch {epoch + 1}/{epochs} {time.perf_counter() - began:.1f}s "
            + " ".join(f"{key}={value:.4f}" for key, value in epoch_logs.items()))
        current = epoch_logs[monitor]
        if current < best:
            best, best_weights, waited = current, model.get_weights(), 0
        else:
            waited += 1
        if backup_dir is not None and write_backup:
            os.makedirs(backup_dir, exist_ok=True)
            model.save_weights(pathlib.Path(backup_dir) / "last.weights.h5")
            if waited == 0:
                model.save_weights(pathlib.Path(backup_dir) / "best.weights.h5")
            temporary = state_path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"epoch": epoch + 1, "best": best, "waited": waited,
                                             "history": history.history}))
            os.replace(temporary, state_path)
    if best_weights is not None:
        model.set_weights(best_weights)
    return history
