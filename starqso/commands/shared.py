"""What the commands share: the lazy progress bar, the command line as typed, the log."""

from __future__ import annotations

import os
import sys

import click


def log_to_stderr(line):
    """Print one log line on stderr (a command's ``log`` callback)."""
    click.echo(line, err=True)


def command_line():
    """The command line as typed (``starqso predict ...``), for an output's provenance."""
    import shlex

    words = [os.path.basename(sys.argv[0]) if sys.argv else "starqso", *sys.argv[1:]]
    if words[0] in ("cli.py", "__main__.py", "-m", "-c"):
        words[0] = "starqso"
    return shlex.join(words)


class LazyProgress:
    """A progress bar on stderr that appears only once work has started.

    Arguments are validated before the first update, so a bad option prints its one-line
    error without a half-drawn bar before it. Called with the number of items done so far
    (and the total, when the caller learns it only once work starts).
    """

    def __init__(self, length, label):
        self.length, self.label = length, label
        self.bar, self.done = None, 0

    def __call__(self, count, total=None):
        if self.bar is None:
            self.bar = click.progressbar(length=total or self.length, label=self.label,
                                         file=sys.stderr,
                                         show_pos=True).__enter__()
        self.bar.update(count - self.done)
        self.done = count

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.__exit__(*exc_info)
