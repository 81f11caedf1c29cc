"""A distributed training loop for MultiWorkerMirroredStrategy.

Keras 3 ``fit()`` under MultiWorkerMirroredStrategy has open upstream bugs
(keras-team/keras#20585), so multi-worker runs use this loop instead: the model's own
``train_step``/``test_step`` (the same code ``fit()`` runs, GAN included) inside
``strategy.run`` on a distributed dataset, with losses reduced across workers by Keras' loss
scaling. It keeps what the stages need from ``fit()``: per-epoch validation, early stopping
with best-weight restore, per-epoch checkpoints for ``--resume`` and a History-like record.

Every worker builds the same datasets (same arrays, same seeds); the strategy splits each
global batch into one slice per replica (``AutoShardPolicy.DATA``), so the workers see
disjoint slices of every batch and the all-reduced gradients are those of the global batch.
What plain ``fit()`` leaves per replica is made global here, so that all workers end with
identical models and identical logs:

* metrics are read in cross-replica context after each pass, which sums their state over
  every replica of every worker (exact global loss, accuracy, AUC, ...);
* non-trainable float weights that each replica updates on its own (BatchNormalization's
  moving mean and variance: Keras 3 creates them with ``aggregation="none"``) are averaged
  over the replicas after every training epoch. The moving-average update is linear, so this
  equals a moving average of the replica-averaged batch statistics;
* a final global batch with fewer objects than replicas is skipped in training: some replica
  would get an empty slice, and BatchNormalization's statistics of an empty batch are NaN.
"""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso._util.atomic import atomic_path, write_json_atomically


class LoopHistory:
    """What ``fit()`` returns: ``history[metric] = [value per epoch]``."""

    def __init__(self):
        self.history = {}


def _distribute_options(dataset):
    import tensorflow as tf

    # The datasets are built from in-memory tensors: there are no files to shard, and AUTO
    # would only fall back to DATA after logging a warning.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _without_small_batches(dataset, replicas):
    """Drop global batches that cannot give every replica at least one object."""
    import tensorflow as tf

    if replicas <= 1:
        return dataset

    def big_enough(*batch):
        return tf.shape(tf.nest.flatten(batch)[0])[0] >= replicas

    return dataset.filter(big_enough)


def _local_state(model):
    """Float non-trainable weights: the replica-local state to average (BN moving stats)."""
    return [variable for variable in model.non_trainable_weights
            if "float" in str(variable.dtype)]


def _check_same_start(strategy, start_epoch, backup_dir):
    """Raise unless every worker starts at the same epoch.

    A worker that cannot see the chief's checkpoints (``--out`` not on shared storage) would
    start from scratch while the others resume: the collectives would pair up different steps.
    """
    import tensorflow as tf

    @tf.function
    def sums(value):
        def add(value):
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.stack([value, value * value, 1.0]))

        return strategy.experimental_local_results(strategy.run(add, args=(value,)))[0]

    # Equal everywhere <=> zero variance: n * sum(x^2) == sum(x)^2 (exact for small integers,
    # and computed from the same sums on every worker, so all of them agree on raising).
    total, squares, count = sums(tf.constant(float(start_epoch))).numpy()
    if count * squares != total * total:
        raise RuntimeError(
            f"workers start this stage at different epochs (this one at {start_epoch + 1}): "
            f"every worker must see the chief's checkpoints in {backup_dir}, so --out must be "
            f"a folder shared by all workers")


def distributed_fit(model, strategy, train_dataset, validation_dataset, epochs, *, monitor,
                    patience, backup_dir=None, write_backup=True, log=print):
    """Train ``model`` (compiled) for up to ``epochs`` epochs on every worker in lock-step.

    Every worker must call this with the same model, datasets and arguments (collective ops
    pair up by order); afterwards every worker holds the same weights.

    Args:
        model: a compiled Keras model built inside ``strategy.scope()``.
        strategy: the (multi-worker) strategy.
        train_dataset: ``tf.data.Dataset`` of global batches, identical on every worker (same
            data, same shuffle seed); each replica trains on its slice of every batch.
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

    replicas = strategy.num_replicas_in_sync
    train_dist = strategy.experimental_distribute_dataset(
        _distribute_options(_without_small_batches(train_dataset, replicas)))
    validation_dist = strategy.experimental_distribute_dataset(
        _distribute_options(validation_dataset))

    # The signature keeps the batch dimension unknown: a last, smaller batch does not trace
    # (and build the collectives of) the whole step a second time.
    @tf.function(input_signature=[train_dist.element_spec])
    def train_step(batch):
        return strategy.run(model.train_step, args=(batch,))

    @tf.function(input_signature=[validation_dist.element_spec])
    def test_step(batch):
        return strategy.run(model.test_step, args=(batch,))

    local_state = _local_state(model)

    @tf.function
    def average_local_state():
        def average():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN,
                                       [tf.identity(variable.value) for variable in local_state])
            for variable, mean in zip(local_state, means, strict=True):
                variable.assign(mean)

        strategy.run(average)

    @tf.function
    def metric_results():
        # In cross-replica context a metric variable reads as its sum over all replicas of all
        # workers, so these are the results over the whole epoch (one graph: the collectives
        # run together instead of one eager round trip per variable).
        values = {}
        for metric in model.metrics:
            result = metric.result()
            values.update(result if isinstance(result, dict) else {metric.name: result})
        return values

    def results(step_logs):
        """The epoch's logs: the metrics' global results, under the keys the step returns."""
        values = metric_results()
        return {key: float(np.asarray(values[key] if key in values else
                                      strategy.reduce("MEAN", value, axis=None)))
                for key, value in step_logs.items()}

    # Build the optimizer's slots up front, as fit() does: a checkpoint then restores them
    # too, and no variables are created inside the distributed step.
    if getattr(model, "optimizer", None) is not None and not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)

    history = LoopHistory()
    start_epoch, best, best_weights, waited = 0, np.inf, None, 0
    state_path = pathlib.Path(backup_dir) / "loop_state.json" if backup_dir else None
    if state_path is not None and state_path.exists():
        state = strict_json.read_json(state_path)
        model.load_weights(pathlib.Path(backup_dir) / "last.weights.h5")
        start_epoch, best, waited = state["epoch"], state["best"], state["waited"]
        history.history = state["history"]
        if (pathlib.Path(backup_dir) / "best.weights.h5").exists():
            current = model.get_weights()
            model.load_weights(pathlib.Path(backup_dir) / "best.weights.h5")
            best_weights = model.get_weights()
            model.set_weights(current)
        log(f"resuming at epoch {start_epoch + 1} from {backup_dir}")
    _check_same_start(strategy, start_epoch, backup_dir)

    for epoch in range(start_epoch, epochs):
        if waited >= patience:
            break
        began = time.perf_counter()
        for metric in model.metrics:
            metric.reset_state()
        logs = {}
        for batch in train_dist:
            logs = train_step(batch)
        train_logs = results(logs)
        if local_state:
            average_local_state()
        for metric in model.metrics:
            metric.reset_state()
        logs = {}
        for batch in validation_dist:
            logs = test_step(batch)
        validation_logs = {f"val_{key}": value for key, value in results(logs).items()}
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
            for name in ("last.weights.h5",) + (("best.weights.h5",) if waited == 0 else ()):
                with atomic_path(pathlib.Path(backup_dir) / name) as temporary:
                    model.save_weights(temporary)
            write_json_atomically(state_path, {"epoch": epoch + 1, "best": best,
                                               "waited": waited, "history": history.history})
    if best_weights is not None:
        model.set_weights(best_weights)
    return history
