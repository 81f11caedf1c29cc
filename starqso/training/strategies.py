"""tf.distribute strategies by name, and the thread pools that make CPU training reproducible.

``multiworker`` reads ``TF_CONFIG`` the way cluster launchers set it (one process per worker,
``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
"index": 0}}``). Worker 0 (or the ``chief`` task if there is one) is the chief: only it
writes the run folder.

:func:`fix_thread_pools` sets TensorFlow's thread pools to :func:`training_threads`: the cores
the process may run on (as TensorFlow itself would), or ``STARQSO_THREADS``. The oneDNN/Eigen
kernels split their reductions (convolution weight gradients, matrix products, sums) into one
part per thread, so the pool size decides the order in which floating-point parts are added
and with it the last bits of every step, which training amplifies into different metrics. Load
alone changes nothing: with the same pool size the threads only wait longer for a core. A run
confined to fewer cores (``taskset``, a container's or a batch scheduler's cpuset) gets a
smaller pool unless ``STARQSO_THREADS`` fixes it; the runner logs the size it trains with. The
default is not the machine's whole core count because, on a shared node, that many threads on
a few allowed cores would slow training down several times.
"""

from __future__ import annotations

import os

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError

STRATEGIES = ("default", "mirrored", "multiworker")
PACK_BYTES = 32 * 1024 * 1024  # gradient all-reduce pack size across workers
#: Environment variable fixing the size of TensorFlow's thread pools (default: all cores).
THREADS_VARIABLE = "STARQSO_THREADS"


def training_threads() -> int:
    """The size of TensorFlow's intra- and inter-op thread pools for training.

    ``STARQSO_THREADS`` if set, else the number of cores this process may run on (its CPU
    affinity, what TensorFlow would pick; ``os.cpu_count()`` where there is none).

    Returns:
        A positive number of threads.

    Raises:
        InputError: ``STARQSO_THREADS`` is not a positive integer.
    """
    raw = os.environ.get(THREADS_VARIABLE, "").strip()
    if not raw:
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0)) or 1
        return os.cpu_count() or 1
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise InputError(f"{THREADS_VARIABLE} must be a positive integer (the number of "
                         f"threads TensorFlow trains with). Received: "
                         f"{THREADS_VARIABLE}={raw[:50]!r}")
    return threads


def fix_thread_pools(threads=None):
    """Size TensorFlow's intra- and inter-op thread pools, before TensorFlow starts.

    The number of intra-op threads decides how oneDNN/Eigen kernels split their reductions,
    so it decides the last bits of every training step: two runs of the same seed and config
    give bit-identical weights when they use the same number (and the same CPU kind and
    TensorFlow build), whatever the load and however many cores they may run on. Both pools
    get the same size; TensorFlow reads it once, when it starts (its first op).

    Args:
        threads: pool size; :func:`training_threads` when None.

    Returns:
        ``(threads, fixed)``: the size asked for, and whether TensorFlow uses it (False when
        TensorFlow had already started with other pool sizes in this process).

    Raises:
        InputError: a bad ``STARQSO_THREADS``.
    """
    import tensorflow as tf

    threads = training_threads() if threads is None else int(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow is already running (a notebook or a test process that ran ops before):
        # its pools cannot change any more. Setting the same sizes again is a no-op and
        # does not raise, so getting here means the sizes differ.
        return threads, False
    return threads, True


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
            cluster = strict_json.loads(raw, "TF_CONFIG")
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
