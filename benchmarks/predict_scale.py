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

``--engine`` measures the Dask path instead (``starqso predict ... --output OUT.parquet
--workers W``, a local cluster of one-thread worker processes)::

    python benchmarks/predict_scale.py --engine [--zarr-sizes 100000 1000000]
        [--fits-rows 100000] [--workers 1 2] [--workdir DIR] [--out FILE]

on a Cutana-layout zarr stack (``images.zarr`` (N, 32, 32, 5) float32, zstd-compressed, + a
Parquet metadata table; rows cycle over ``--pool`` distinct simulated cutouts) and on a
catalogue of FITS files, each at every worker count: wall seconds (cluster start-up
included), rows/s, the speed-up over one worker, and the peak resident memory of each worker
process (polled with psutil every 0.2 s). Then the robustness runs on the smallest zarr stack:
a worker killed with SIGKILL mid-run (the run must finish with every row exactly once and
the same bytes as an uninterrupted run), and the whole run killed then resumed with
``--resume`` (byte-identical partition files).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from starqso._util.atomic import write_text_atomically

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
    parser.add_argument("--engine", action="store_true", help="measure the Dask path")
    parser.add_argument("--zarr-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--fits-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partition-rows", type=int, default=20_000)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.pool = [1000, 5000], 200
        args.zarr_sizes, args.fits_rows = [5000, 20000], 5000
        args.partition_rows = 2000
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


def finish(args, workdir, title, lines, began):
    """Print the results, write them to ``--out`` under ``title``, drop a temporary workdir."""
    lines.append(f"\nTotal benchmark time {time.perf_counter() - began:.0f} s.")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out, f"# {title}\n\n" + text + "\n")
        print(f"-> {out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def write_zarr_stack(folder, num_rows, cubes):
    """A Cutana batch folder of ``num_rows`` rows cycling over ``cubes`` (n, 5, 32, 32)."""
    import numpy as np
    import pandas as pd
    import zarr

    folder.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(folder / "images.zarr"), mode="w")
    chunk = 1024
    array = group.create_array("images", shape=(num_rows, 32, 32, 5), dtype="float32",
                               chunks=(chunk, 32, 32, 5),
                               compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=1,
                                                                  shuffle="bitshuffle"))
    pool = np.ascontiguousarray(np.moveaxis(cubes, 1, -1))
    for start in range(0, num_rows, chunk):
        rows = np.arange(start, min(start + chunk, num_rows)) % len(pool)
        array[start:start + len(rows)] = pool[rows]
    pd.DataFrame({"source_id": [f"obj{row:07d}" for row in range(num_rows)]}).to_parquet(
        folder / "images_metadata.parquet", row_group_size=10_000)


def run_engine(source, output, num_rows, workers, partition_rows, batch_size, extra=(),
               kill=None):
    """One ``predict --workers`` run: (seconds, peak RSS per worker MiB, stdout, stderr).

    ``kill``: "worker" SIGKILLs one worker process once a third of the partitions are written,
    "all" SIGKILLs the whole run there (then the caller resumes it).
    """
    import psutil

    command = [sys.executable, str(ROOT / "cli.py"), "predict", str(source), "--output",
               str(output), "--workers", str(workers), "--partition-rows",
               str(partition_rows), "--batch-size", str(batch_size), "--prior", "0.3",
               *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    staging = output.with_name(f".{output.name}.partial")
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    peaks, killed = {}, None
    while process.poll() is None:
        try:
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "spawn_main" in " ".join(child.cmdline()):  # a Dask worker
                        peaks[child.pid] = max(peaks.get(child.pid, 0),
                                               child.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        if kill and killed is None and staging.exists():
            done = len(list(staging.glob("part-*.parquet")))
            if done >= max(-(-num_rows // partition_rows) // 3, 1):
                if kill == "all":
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return None, peaks, "", ""
                victim = max(peaks, key=peaks.get)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(victim).send_signal(signal.SIGKILL)
                killed = victim
        time.sleep(0.2)
    seconds = time.perf_counter() - began
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"predict failed ({source} -> {output}):\n{stdout.decode()}\n"
                         f"{stderr.decode()}")
    if kill == "worker" and killed is None:
        raise SystemExit("the run ended before a worker could be killed")
    return seconds, peaks, stdout.decode(), stderr.decode()


def check_dataset(folder, num_rows):
    import pandas as pd

    files = sorted(folder.glob("part-*.parquet"))
    frame = pd.concat([pd.read_parquet(name, columns=["id", "label", "flag"])
                       for name in files], ignore_index=True)
    if len(frame) != num_rows or not frame["id"].is_unique or \
            list(frame["id"]) != [f"obj{row:07d}" for row in range(num_rows)]:
        raise SystemExit(f"{folder}: rows missing, doubled or out of order")
    other = frame["flag"][(frame["flag"] != "") &
                          ~frame["flag"].str.startswith("no source detected")]
    if len(other):
        raise SystemExit(f"{folder}: {len(other)} rows flagged for another reason; first: "
                         f"{other.iloc[0]}")
    return int((frame["label"] == "QSO").sum()), int((frame["flag"] != "").sum())


def same_bytes(first, second):
    names = sorted(path.name for path in first.glob("part-*.parquet"))
    if names != sorted(path.name for path in second.glob("part-*.parquet")):
        return False
    return all((first / name).read_bytes() == (second / name).read_bytes() for name in names)


def engine(args):
    import numpy as np

    from starqso.io import read_catalog, read_cutout, resolve_path
    from starqso.simulate import simulate_survey

    began = time.perf_counter()
    command = "python benchmarks/predict_scale.py " + " ".join(sys.argv[1:])
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="starqso-engine-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "catalog.csv").exists():
        simulate_survey(workdir, args.pool, seed=77, size=48)
    table = read_catalog(workdir / "catalog.csv")
    cubes = np.stack([read_cutout(resolve_path(table, path), crop_size=32).data
                      for path in table["image"]])
    rows, notes = [], []
    inputs = []
    for num_rows in args.zarr_sizes:
        folder = workdir / f"zarr_{num_rows}"
        if not (folder / "images_metadata.parquet").exists():
            started = time.perf_counter()
            write_zarr_stack(folder, num_rows, cubes)
            print(f"wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
        inputs.append(("zarr stack", folder, num_rows))
    if args.fits_rows:
        catalogue = workdir / f"catalogue_{args.fits_rows}"
        write_catalogue(catalogue.with_suffix(".csv"), args.fits_rows, args.pool)
        inputs.append(("FITS files", catalogue.with_suffix(".csv"), args.fits_rows))
    outputs = {}
    for kind, source, num_rows in inputs:
        base = None
        for workers in args.workers:
            output = workdir / f"out_{kind.split()[0]}_{num_rows}_{workers}.parquet"
            shutil.rmtree(output, ignore_errors=True)
            seconds, peaks, _, _ = run_engine(source, output, num_rows, workers,
                                              args.partition_rows, args.batch_size)
            qso, flagged = check_dataset(output, num_rows)
            rate = num_rows / seconds
            base = rate if base is None else base
            worker_peaks = sorted(peaks.values())[-workers:]
            rows.append((kind, num_rows, workers, seconds, rate, rate / base,
                         max(worker_peaks) if worker_peaks else float("nan"), qso, flagged))
            print(f"{kind} N={num_rows} workers={workers}: {seconds:.1f} s, {rate:,.0f} rows/s",
                  flush=True)
            outputs[(kind, num_rows, workers)] = output
    # Robustness, on the smallest zarr stack at the most workers.
    kind, source, num_rows = inputs[0]
    workers = max(args.workers)
    reference = outputs[(kind, num_rows, workers)]
    killed = workdir / "out_killed_worker.parquet"
    shutil.rmtree(killed, ignore_errors=True)
    seconds, _, _, _ = run_engine(source, killed, num_rows, workers, args.partition_rows,
                                  args.batch_size, kill="worker")
    check_dataset(killed, num_rows)
    notes.append(f"- A worker SIGKILLed once a third of the partitions were written "
                 f"({kind}, {num_rows:,} rows, {workers} workers): the run finished in "
                 f"{seconds:.1f} s with every row exactly once, in order; partition files "
                 f"byte-identical to the uninterrupted run: {same_bytes(killed, reference)}.")
    resumed = workdir / "out_resumed.parquet"
    shutil.rmtree(resumed, ignore_errors=True)
    run_engine(source, resumed, num_rows, workers, args.partition_rows, args.batch_size,
               kill="all")
    staging = resumed.with_name(f".{resumed.name}.partial")
    finished = len(list(staging.glob("part-*.parquet")))
    seconds, _, _, stderr = run_engine(source, resumed, num_rows, workers,
                                       args.partition_rows, args.batch_size,
                                       extra=("--resume",))
    check_dataset(resumed, num_rows)
    notes.append(f"- The whole run SIGKILLed at {finished} finished partitions, then `--resume`"
                 f" ({seconds:.1f} s): every row exactly once; partition files byte-identical "
                 f"to the uninterrupted run: {same_bytes(resumed, reference)}.")
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        f"`{command}`", "",
        f"{datetime.date.today()}, git {git}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"no GPU; shipped model, LiteRT int8, one thread per worker process; batch "
        f"{args.batch_size}, {args.partition_rows:,} rows per partition; rows cycle over "
        f"{args.pool} distinct simulated cutouts (zarr: 32x32 float32, zstd; FITS: 48x48 "
        f"files, file cache warm); seconds include the cluster's start-up and the model load "
        f"in every worker.", "",
        "| input | N rows | workers | seconds | rows/s | speed-up | peak RSS per worker (MiB) "
        "| QSO | flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {kind} | {num_rows:,} | {workers} | {seconds:.1f} | {rate:,.0f} | "
              f"{speed:.2f}x | {peak:.0f} | {qso:,} | {flagged:,} (no source detected) |"
              for kind, num_rows, workers, seconds, rate, speed, peak, qso, flagged in rows]
    lines.append("")
    zarr_rows = [row for row in rows if row[0] == "zarr stack" and row[2] == max(args.workers)]
    if len(zarr_rows) > 1:
        small, large = zarr_rows[0], zarr_rows[-1]
        lines.append(f"- Peak RSS per worker, zarr, {small[2]} workers: {small[6]:.0f} MiB at "
                     f"N={small[1]:,} -> {large[6]:.0f} MiB at N={large[1]:,} "
                     f"(x{large[6] / small[6]:.2f} for x{large[1] / small[1]:.0f} rows).")
    one = [row for row in rows if row[0] == "zarr stack" and row[2] == 1]
    if one:
        rate = max(one, key=lambda row: row[1])[4]
        hours = 1e9 / (100 * rate) / 3600
        lines.append(f"- 10^9 rows on 100 such one-thread workers, from the measured one-worker "
                     f"zarr rate ({rate:,.0f} rows/s, start-up included): about {hours:.1f} h "
                     f"({1e9 / rate / 3600:,.0f} worker-hours), if the storage feeds "
                     f"{100 * rate * 20480 / 1e9:.1f} GB/s of 32x32x5 float32 cutouts.")
    lines += notes
    finish(args, workdir, "predict at survey scale on Dask", lines, began)


def main():
    args = parse_args()
    if args.engine:
        return engine(args)
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
    finish(args, workdir, "predict at scale", lines, began)


if __name__ == "__main__":
    main()
