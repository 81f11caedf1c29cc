"""tf.distribute strategies by name: default, mirrored (all local devices), multiworker.

``multiworker`` reads ``TF_CONFIG`` the way cluster launchers set it (one process per worker,
``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
"index": 0}}``). Worker 0 (or the ``chief`` task if there is one) is the chief: only it
writes the run folder.
"""

from __future__ import annotations

import json
import os

from starqso.errors import InputError

STRATEGIES = ("default", "mirrored", "multiworker")
PACK_BYTES = 32 * 1024 * 1024  # gradient all-reduce pack size across workers


def make_strategy(name):
    """The ``tf.distribute`` strategy called ``name``.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or the CPU) or "multiworker"
            (MultiWorkerMirroredStrategy from ``TF_CONFIG``).

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        InputError: unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise InputError("--strategy multiworker needs TF_CONFIG describing the cluster "
                             "(see README, 'Training on a cluster'). Received: TF_CONFIG unset")
        try:
            cluster = json.loads(raw)
            cluster["cluster"], cluster["task"]["type"], int(cluster["task"]["index"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError("TF_CONFIG must be JSON with 'cluster' and 'task' {type, index}. "
                             f"Received: {raw[:200]!r}") from err
        # Pack the gradients into few collectives instead of one all-reduce per variable:
        # each collective costs a network round trip (and, the first time, a key resolution
        # with the group leader), which dominates small models' steps.
        options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=PACK_BYTES)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}. Received: {name!r}")


def is_chief(strategy):
    """Whether this process writes outputs (always true outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def is_multi_worker(strategy):
    """Whether ``strategy`` spans several processes (Keras ``fit()`` is not used then)."""
    return strategy.extended._in_multi_worker_mode()  # noqa: SLF001 - no public accessor
