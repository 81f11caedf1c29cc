"""The one runner of training stages: strategy, seeds, resume, checkpoints, saving, summary.

Every stage (:mod:`starqso.training.stages`) runs through :meth:`StageRunner.run`::

    prepare -> [completed: load files[0]] or [scope: build -> train -> save -> evaluate ->
    record + one-line summary] -> provide

Training is Keras ``fit()`` with atomic per-epoch checkpoints (``--resume`` continues from
the last epoch), early stopping and TensorBoard logs; under ``multiworker`` it is the
distributed custom loop of :mod:`starqso.training.loop` (Keras ``fit()`` fails under
MultiWorkerMirroredStrategy, keras-team/keras#20585). Only the chief writes the run folder.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time
import warnings

from starqso._util.atomic import atomic_path
from starqso.training.loop import distributed_fit
from starqso.training.run_folder import RunFolder
from starqso.training.strategies import THREADS_VARIABLE, fix_thread_pools, is_chief, make_strategy


def summary_line(stage, metrics, seconds, epochs):
    """``[stage] E epochs, S s, validation (n=N): key=value ...``"""
    shown = " ".join(f"{key}={value:.4f}" for key, value in metrics.items()
                     if key != "n" and isinstance(value, float))
    return f"[{stage}] {epochs} epochs, {seconds:.0f} s, validation (n={metrics.get('n')}): {shown}"


class StageRunner:
    """Runs stages into one run folder under one ``tf.distribute`` strategy.

    Args:
        folder: the :class:`~starqso.training.run_folder.RunFolder` (or its path).
        config: the run's :class:`~starqso.config.RunConfig`.
        strategy: "default", "mirrored" or "multiworker".
        resume: take the stages ``state.json`` lists as completed (and continue the
            interrupted one from its checkpoint).
        log: callable receiving progress lines.
        known_stages: stage names a resumed ``state.json`` may list.

    Example:
        >>> runner = StageRunner("runs/demo", config)  # doctest: +SKIP
        >>> runner.run(EncoderStage(), context)  # doctest: +SKIP
    """

    def __init__(self, folder, config, strategy="default", resume=False, log=print,
                 known_stages=None):
        import keras

        self.folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
        self.config = config
        self.log = log
        # Before the strategy: it is the first thing to start TensorFlow's runtime, and the
        # pool sizes are read only then. They decide the kernels' reduction order, so they
        # are what makes a run repeat bit for bit (see strategies.fix_thread_pools).
        self.threads, fixed = fix_thread_pools()
        log(f"training with {self.threads} threads ({THREADS_VARIABLE} sets them; the same "
            f"number repeats a run bit for bit)")
        if not fixed:
            log(f"TensorFlow was started before this run with other thread-pool sizes than "
                f"{self.threads} ({THREADS_VARIABLE}); the results repeat only in a process "
                f"started the same way")
        self.strategy = make_strategy(strategy)
        self.multi_worker = strategy == "multiworker"
        self.chief = is_chief(self.strategy)
        # Non-chief workers write to a scratch folder: only the chief's files are the run.
        self.write_dir = self.folder.root if self.chief else pathlib.Path(
            tempfile.mkdtemp(prefix="starqso-worker-"))
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self.completed = self.folder.completed_stages(known_stages) if resume else []
        self.metrics = self.folder.metrics() if resume else {}
        self.history = self.folder.history() if resume and self.metrics else {}
        # Seeds Python, NumPy and TensorFlow (the dataset shuffles, the augmentation draws and
        # the Keras layers' seed generators derive from it). tf.config.experimental.
        # enable_op_determinism is not used: on CPU it gave the same bits as without it (the
        # stages use no kernel it would replace or refuse), and an earlier TF 2.21 build
        # corrupted the heap with it in Conv1D training.
        keras.utils.set_random_seed(config.training.seed)
        if config.training.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        self.verbose = 1 if sys.stdout.isatty() else 2

    def run(self, stage, context):
        """Run (or, when completed, reload) ``stage``; returns its ``{file: model}`` outputs."""
        done = stage.name in self.completed
        stage.prepare(context, train=not done)
        if done:
            outputs = {stage.files[0]: self.folder.load_model(stage.files[0])}
        else:
            began = time.perf_counter()
            with self.strategy.scope():
                model = stage.build(context)
            history = self.train(model, stage.name, *stage.datasets(context),
                                 stage.epochs(self.config.training), stage.monitor)
            outputs = stage.outputs(context, model)
            for name, output in outputs.items():
                self.save_model(output, name)
            metrics = stage.evaluate(context, outputs)
            self.finish(stage.name, metrics, history, time.perf_counter() - began,
                        len(history.get(stage.epoch_key, [])))
        stage.provide(context, outputs)
        return outputs

    def save_model(self, model, name):
        with warnings.catch_warnings(), atomic_path(self.write_dir / name) as temporary:
            warnings.filterwarnings("ignore", message=".*__array__.*",
                                    category=DeprecationWarning)
            model.save(temporary)

    def finish(self, stage, metrics, history, seconds, epochs):
        self.metrics[stage] = metrics
        self.history[stage] = history
        if stage not in self.completed:
            self.completed.append(stage)
        if self.chief:
            self.folder.record_stage(stage, self.completed, self.metrics, self.history)
        self.log(summary_line(stage, metrics, seconds, epochs))

    def train(self, model, stage, train_dataset, validation_dataset, epochs, monitor):
        """``fit()`` (or the distributed loop across workers) with the run's callbacks."""
        import keras

        from starqso.training.callbacks import AtomicBackupAndRestore

        backup = self.folder.backup_dir(stage)
        patience = self.config.training.early_stopping_patience
        if self.multi_worker:
            history = distributed_fit(
                model, self.strategy, train_dataset, validation_dataset, epochs,
                monitor=monitor, patience=patience, backup_dir=backup,
                write_backup=self.chief, log=lambda line: self.log(f"[{stage}] {line}"))
            return history.history
        callbacks = [
            AtomicBackupAndRestore(str(backup)),
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=patience,
                                          restore_best_weights=True),
            keras.callbacks.TensorBoard(str(self.write_dir / "logs" / stage)),
        ]
        # shuffle=False: the dataset shuffles itself with the run's seed; Keras ignores
        # fit()'s shuffle for a tf.data.Dataset, and its default True only warns.
        history = model.fit(train_dataset, validation_data=validation_dataset, epochs=epochs,
                            callbacks=callbacks, verbose=self.verbose, shuffle=False)
        return {key: [float(v) for v in values] for key, values in history.history.items()}
