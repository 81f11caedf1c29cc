"""What every results file of the newer benchmarks opens with and how it is written: the
command, then date, commit, CPU, cores and wall time; printed and, with ``--out``, written
atomically."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starqso._util.atomic import write_text_atomically  # noqa: E402


def provenance(started) -> str:
    """``"2026-12-07, git abc1234, x86_64, 2 cores, 33 s"``: when, on what code and CPU, and
    how long since ``started`` (a ``time.perf_counter()`` value)."""
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return (f"{datetime.date.today()}, git {git}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {time.perf_counter() - started:.0f} s")


def command(script) -> str:
    """The command line that ran ``script`` (``__file__``), as the results file shows it."""
    return f"`python benchmarks/{pathlib.Path(script).name} {' '.join(sys.argv[1:])}`"


def publish(text, out) -> None:
    """Print ``text`` and, when ``out`` is given, write it there atomically."""
    print(text)
    if out is not None:
        write_text_atomically(out, text)


def catalogue_arguments(description):
    """``--catalog`` (the real SDSS rows) and ``--out``, parsed: the catalogue benchmarks'
    command line."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--catalog", type=pathlib.Path, required=True,
                        help="sdss_photometry_labelled.csv.gz (real SDSS rows)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results markdown")
    return parser.parse_args()
