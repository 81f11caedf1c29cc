"""`starqso predict` at survey scale: throughput and peak memory as the catalogue grows.

    python benchmarks/predict_scale.py [--sizes 10000 100000] [--runtimes litert keras]
                                       [--pool 1000] [--batch-size 256] [--out FILE]

For each N and runtime, runs ``starqso predict`` in a fresh process over a catalogue of N rows
and prints a table: wall seconds (process start, model load and FITS reading included), rows
per second, and the peak resident memory of that process (``ru_maxrss`` from ``wait4``). Peak
memory should stay flat as N grows: rows stream through in batches and only ids and paths are
held per row.

The N rows point at a pool of ``--pool`` distinct simulated cutouts (48x48, written once with
the package's simulator) in turn, with unique ids: 100,000 distinct files would take about
4 GB of disk, while every row still goes through the whole path (catalogue parsing, FITS
open, header checks, crop, batch, model, streamed output). The operating system's file cache
holds the pool, as it would hold a survey's recent cutouts; cold-disk reads are not measured.
The benchmark checks that every output has exactly N rows in order and that the only flagged
rows are simulated objects too faint to be detected (``no source detected``: the simulator
draws a few beyond the survey limit), which it counts.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runtimes", nargs="+", default=["litert", "keras"],
                        choices=["litert", "keras"])
    parser.add_argument("--pool", type=int, default=1000, help="distinct cutout files")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default=None, help="model folder [default: shipped model]")
    parser.add_argument("--workdir", default=None, help="keep the inputs here")
    parser.add_argument("--out", default=None, help="markdown results file")
    parser.add_argument("--quick", action="store_true", help="sizes 1000 5000, pool 200")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.pool = [1000, 5000], 200
    return args


def write_catalogue(path, num_rows, pool):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(("id", "image"))
        writer.writerows((f"obj{row:07d}", f"images/sim-{row % pool:06d}.fits")
                         for row in range(num_rows))


def run_predict(catalogue, output, runtime, batch_size, model):
    command = [sys.executable, str(ROOT / "cli.py"), "predict", str(catalogue), "--runtime",
               runtime, "--batch-size", str(batch_size), "--output", str(output)]
    if model:
        command += ["--model", model]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage: its peak RSS, not the maximum over all children.
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed ({runtime}, {catalogue}):\n{stdout}\n{stderr}")
    return seconds, usage.ru_maxrss / 1024


def check_output(path, num_rows):
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    expected = [f"obj{row:07d}" for row in range(num_rows)]
    if [row["id"] for row in rows] != expected:
        raise SystemExit(f"{path}: rows missing or out of order")
    other = [row["flag"] for row in rows
             if row["flag"] and not row["flag"].startswith("no source detected")]
    if other:
        raise SystemExit(f"{path}: {len(other)} rows flagged for another reason than an "
                         f"undetected source; first: {other[0]}")
    return (sum(row["label"] == "QSO" for row in rows),
            sum(bool(row["flag"]) for row in rows))


def main():
    args = parse_args()
    from starqso.simulate import simulate_survey

    began = time.perf_counter()
    command = "python benchmarks/predict_scale.py " + " ".join(sys.argv[1:])
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="starqso-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "catalog.csv").exists():
        simulate_survey(workdir, args.pool, seed=77, size=48)
    rows = []
    for num_rows in args.sizes:
        catalogue = workdir / f"catalogue_{num_rows}.csv"
        write_catalogue(catalogue, num_rows, args.pool)
        for runtime in args.runtimes:
            output = workdir / f"predictions_{runtime}_{num_rows}.csv"
            seconds, peak_mib = run_predict(catalogue, output, runtime, args.batch_size,
                                            args.model)
            qso, flagged = check_output(output, num_rows)
            rows.append((runtime, num_rows, seconds, num_rows / seconds, peak_mib, qso,
                         flagged))
            print(f"{runtime} N={num_rows}: {seconds:.1f} s, {peak_mib:.0f} MiB", flush=True)
            output.unlink()

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        f"`{command}`", "",
        f"{datetime.date.today()}, git {git}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"no GPU; model {args.model or 'shipped (starqso/pretrained)'}; batch "
        f"{args.batch_size}; rows cycle over {args.pool} distinct simulated 48x48 cutouts "
        f"(file cache warm); each run is a fresh `starqso predict` process, times include "
        f"start-up and model load.", "",
        "| runtime | N rows | seconds | rows/s | peak RSS (MiB) | QSO | flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {runtime} | {num_rows:,} | {seconds:.1f} | {rate:,.0f} | {peak:.0f} | "
              f"{qso:,} | {flagged:,} (no source detected) |"
              for runtime, num_rows, seconds, rate, peak, qso, flagged in rows]
    lines.append("")
    for runtime in args.runtimes:
        mine = [row for row in rows if row[0] == runtime]
        if len(mine) > 1:
            small, large = min(mine, key=lambda r: r[1]), max(mine, key=lambda r: r[1])
            lines.append(f"- {runtime}: peak RSS {small[4]:.0f} MiB at N={small[1]:,} -> "
                         f"{large[4]:.0f} MiB at N={large[1]:,} (x{large[4] / small[4]:.2f} "
                         f"for x{large[1] / small[1]:.0f} rows)")
    lines.append(f"\nTotal benchmark time {time.perf_counter() - began:.0f} s.")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# predict at scale\n\n" + text + "\n")
        print(f"-> {out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
