"""TensorFlow's and LiteRT's native log noise kept off the terminal's stderr.

The commands that load TensorFlow or LiteRT run inside :func:`native_stderr_filtered`: file
descriptor 2 goes through a small filter process that drops the lines of
:data:`NATIVE_NOISE`, while Python's own ``sys.stderr`` (error lines, the progress bar) still
writes to the terminal directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

# Native (C++) log lines of TensorFlow and LiteRT that carry nothing for a user: absl's
# "before InitializeLog" notice, INFO/WARNING lines ("I0000 00:00:... port.cc:153] ..."), the
# CPU-instructions note and the CUDA probe's errors on a machine without a GPU, and LiteRT's
# XNNPACK notice. Any other line (an F fatal line, a real error) still reaches stderr.
NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ cuda_\w+\.cc:\d+\] "
    r"|To enable the following instructions: "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    # the TFLite converter's settings line, once per converted model (export, fit, finetune)
    r"|fully_quantize: \d+, inference_type: \d+, ")
# Python loggers of TensorFlow and absl whose WARNING lines (tf.function "retracing" notes)
# carry nothing for a user; ERROR and above still print.
QUIET_LOGGERS = ("tensorflow", "absl")
# The filter runs in its own process, so that whatever a crash writes last (an absl FATAL
# line before abort) still reaches the terminal after this process is gone.
_FILTER_PROGRAM = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command; drain until EOF
noise = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not noise.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


@contextlib.contextmanager
def native_stderr_filtered():
    """Drop TensorFlow's and LiteRT's native log noise (:data:`NATIVE_NOISE`) from stderr.

    File descriptor 2 goes through a small filter process while Python's own ``sys.stderr``
    (error lines, the progress bar) writes to the terminal directly; the Python loggers of
    :data:`QUIET_LOGGERS` print only errors. The filter is not used when stderr is not a real
    file descriptor (click's CliRunner), and nothing changes when ``STARQSO_NATIVE_LOGS`` is
    set (to see every line).

    Yields:
        None.
    """
    if os.environ.get("STARQSO_NATIVE_LOGS"):
        yield
        return
    import logging

    # Lazily, by name: setting a level imports nothing, and TensorFlow's logger keeps it.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stderr_fd = None
    if stderr_fd != 2 or os.name != "posix":
        yield
        return
    try:  # absl-py's "logging before flag parsing" notice, if anything logs through it
        import absl.logging

        absl.logging._warn_preinit_stderr = False
    except (ImportError, AttributeError):
        pass
    # multiprocessing's resource tracker (started by the first spawned process pool: the
    # simulation's, Dask's) lives until this process ends. Started after the redirect, it
    # would hold the filter's pipe open, and the filter's exit below would wait on it.
    from multiprocessing import resource_tracker

    try:
        resource_tracker.ensure_running()
    except OSError:  # no tracker yet: at worst the filter's exit waits its 10 s, as before
        pass
    sys.stderr.flush()
    terminal = os.dup(2)
    read, write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER_PROGRAM, NATIVE_NOISE.pattern],
            stdin=read, stdout=terminal, stderr=subprocess.DEVNULL)
    except OSError:  # no filter: the lines are noise, not a reason to fail
        for fd in (read, write, terminal):
            os.close(fd)
        yield
        return
    os.close(read)
    python_stderr = sys.stderr
    sys.stderr = open(terminal, "w", buffering=1, encoding=python_stderr.encoding,  # noqa: SIM115
                      errors="backslashreplace", closefd=False)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's write end here: the filter drains and exits
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(terminal)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker process still holds the pipe open
            pass
