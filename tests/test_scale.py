"""Survey-scale predict on Dask: partitions, one Parquet file each, retries and --resume.

Real processes throughout: a local cluster of worker processes, a worker killed with SIGKILL
while it classifies, the whole run killed and resumed, an existing cluster by its address.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import cli_error_line, simulated_survey, wait_for

from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
ROWS = 3000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Cutana-layout zarr stack of ROWS rows (16 simulated objects repeated) + bad rows."""
    import zarr

    from starqso.io import read_catalog, read_cutout, resolve_path

    survey = simulated_survey(tmp_path_factory, 16, seed=11, size=32)
    table = read_catalog(survey / "catalog.csv")
    cubes = np.stack([read_cutout(resolve_path(table, path)).data for path in table["image"]])
    images = np.concatenate([cubes] * (ROWS // len(cubes) + 1))[:ROWS].copy()
    images[7] = 0.0  # all zeros: flagged
    images[1500, :, 16, 16] = np.nan  # NaN at the object: flagged
    folder = tmp_path_factory.mktemp("stack") / "batch_000"
    group = zarr.open_group(str(folder / "images.zarr"), mode="w")
    group.create_array("images", data=np.ascontiguousarray(np.moveaxis(images, 1, -1)),
                       chunks=(256, 32, 32, 5))
    pd.DataFrame({"source_id": [f"obj{row:05d}" for row in range(ROWS)]}).to_parquet(
        folder / "images_metadata.parquet")
    return folder


@pytest.fixture(scope="module")
def reference(stack, tmp_path_factory):
    """The single-process CSV answer for the stack."""
    output = tmp_path_factory.mktemp("reference") / "reference.csv"
    result = CliRunner().invoke(main, ["predict", str(stack), "--runtime", "litert",
                                       "--output", str(output), "--prior", "0.3"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(output, keep_default_na=False)


def _dataset(folder):
    files = sorted(pathlib.Path(folder).glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(name) for name in files], ignore_index=True)


def _same_rows(found, reference):
    assert list(found["id"]) == list(reference["id"])
    expected = pd.to_numeric(reference["p_qso"].replace("", np.nan))
    assert np.allclose(found["p_qso"].to_numpy(float), expected.to_numpy(float), atol=1e-6,
                       equal_nan=True)
    assert list(found["label"]) == list(reference["label"])
    assert list(found["flag"]) == list(reference["flag"])
    assert list(found["qflag"]) == list(reference["qflag"])
    expected_err = pd.to_numeric(reference["p_qso_err"].replace("", np.nan))
    assert np.allclose(found["p_qso_err"].to_numpy(float), expected_err.to_numpy(float),
                       atol=1e-6, equal_nan=True)


def _command(stack, output, *extra):
    return [sys.executable, str(ROOT / "cli.py"), "predict", str(stack), "--output",
            str(output), "--prior", "0.3", "--partition-rows", "150", "--batch-size", "50",
            *extra]


def test_two_workers_write_the_rows_of_one_process(stack, reference, tmp_path):
    output = tmp_path / "out.parquet"
    result = CliRunner().invoke(main, ["predict", str(stack), "--output", str(output),
                                       "--prior", "0.3", "--workers", "2",
                                       "--partition-rows", "700"])
    assert result.exit_code == 0, result.output
    assert "Dask dashboard: http" in result.stderr
    assert f"{ROWS} rows" in result.stdout and "2 flagged" in result.stdout
    names = sorted(path.name for path in output.iterdir())
    assert names == ["_starqso.json", *(f"part-{i:06d}.parquet" for i in range(5))]
    _same_rows(_dataset(output), reference)
    assert "all zeros" in reference["flag"][7]
    assert "NaN/inf pixels" in reference["flag"][1500]
    # Provenance in every file and beside them; nothing left behind the output.
    import pyarrow.parquet as pq

    record = json.loads(pq.read_schema(output / "part-000003.parquet").metadata[b"starqso"])
    assert record["prior"] == 0.3 and record["runtime"] == "litert"
    assert len(record["model_sha256"]) == 64
    side = json.loads((output / "_starqso.json").read_text())
    assert side["partitions"] == 5 and side["rows"] == ROWS
    assert not list(tmp_path.glob(".out.parquet*"))
    # evaluate reads the dataset folder, with its qflag column and recorded threshold.
    truth = tmp_path / "truth.csv"
    labels = np.where(np.arange(ROWS) % 3 == 0, "QSO", "STAR")
    pd.DataFrame({"id": reference["id"], "label": labels}).to_csv(truth, index=False)
    result = CliRunner().invoke(main, ["evaluate", str(output), "--truth", str(truth),
                                       "--out", str(tmp_path / "evaluation")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["join"]["evaluated"] == ROWS - 2 and metrics["quality"] is not None


def test_existing_cluster_by_address(stack, reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                           str(tmp_path / "out"), "--prior", "0.3",
                                           "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    _same_rows(_dataset(tmp_path / "out"), reference)


def test_a_killed_worker_loses_and_doubles_no_row(stack, reference, tmp_path):
    import psutil

    output = tmp_path / "out.parquet"
    staging = tmp_path / ".out.parquet.partial"
    process = subprocess.Popen(_command(stack, output, "--workers", "2"), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(list(staging.glob("part-*.parquet"))) >= 2, process,
                 "the first partitions")
        # The Dask worker processes (the nanny spawns them), not the stderr filter.
        workers = [child for child in psutil.Process(process.pid).children(recursive=True)
                   if "spawn_main" in " ".join(child.cmdline())]
        assert workers, "no worker process found"
        assert len(list(staging.glob("part-*.parquet"))) < 20, "killed after the last task"
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=30)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    assert f"{ROWS} rows".encode() in stdout
    found = _dataset(output)
    assert found["id"].is_unique and len(found) == ROWS
    _same_rows(found, reference)


def test_resume_after_the_whole_run_is_killed_gives_the_same_bytes(stack, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed.parquet"
    staging = tmp_path / ".resumed.parquet.partial"
    result = subprocess.run(_command(stack, whole, "--workers", "1"), env=ENV,
                            capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    process = subprocess.Popen(_command(stack, resumed, "--workers", "1"), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for(lambda: len(list(staging.glob("part-*.parquet"))) >= 3, process,
                 "three partitions")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = len(list(staging.glob("part-*.parquet")))
    assert not resumed.exists() and 3 <= finished < 20
    result = subprocess.run(_command(stack, resumed, "--workers", "1", "--resume"), env=ENV,
                            capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert f"resuming: {finished} of 20 partitions already done".encode() in result.stderr
    names = sorted(path.name for path in whole.iterdir())
    assert names == sorted(path.name for path in resumed.iterdir())
    for name in names:
        if name != "_starqso.json":
            assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    first, second = (json.loads((folder / "_starqso.json").read_text())
                     for folder in (whole, resumed))
    differ = {"output": "", "started": "", "created": "", "command": ""}
    assert {**first, **differ} == {**second, **differ}
    assert second["command"].startswith("starqso predict ") and "--resume" in second["command"]


def test_resume_refuses_another_runs_partitions(stack, tmp_path):
    staging = tmp_path / ".out.parquet.partial"
    staging.mkdir()
    (staging / ".identity.json").write_text(json.dumps({"threshold": 0.9}))
    result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                       str(tmp_path / "out.parquet"), "--workers", "1",
                                       "--resume"])
    cli_error_line(result, "was made for another input", "threshold 0.9 then")
    assert staging.exists()


def test_dataset_output_errors_are_one_line(stack, tmp_path):
    result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                       str(tmp_path / "p.csv"), "--workers", "2"])
    cli_error_line(result, "Parquet dataset", "--output")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["predict", str(stack), "--output", str(foreign),
                                       "--workers", "1"])
    cli_error_line(result, "did not write", str(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"
    result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                       str(tmp_path / "o"), "--workers", "0"])
    cli_error_line(result, "--workers must be a positive integer")
    result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                       str(tmp_path / "p.txt")])
    cli_error_line(result, "--output must end in .csv or .fits", "p.txt")


def test_strict_stops_at_the_first_flagged_row(stack, tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["predict", str(stack), "--output",
                                       str(tmp_path / "o"), "--workers", "1", "--strict",
                                       "--partition-rows", "100"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("starqso: ") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("starqso: error: row 8 (id 'obj00007')")
    assert "--strict" in lines[0] and "all zeros" in lines[0]
    # The staging folder stays for --resume (issue 36, item 6); the lock is released.
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.lock"))
    assert time.perf_counter() - start < 120


@pytest.mark.slow
def test_keras_runtime_on_workers(stack, tmp_path):
    """--runtime keras also runs on Dask (each worker loads the .keras model once)."""
    first = tmp_path / "keras.csv"
    result = CliRunner().invoke(main, ["predict", str(stack), "--runtime", "keras", "--output",
                                       str(first), "--prior", "0.3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["predict", str(stack), "--runtime", "keras", "--output",
                                       str(tmp_path / "out"), "--prior", "0.3", "--workers",
                                       "1", "--partition-rows", "1000"])
    assert result.exit_code == 0, result.output
    found = _dataset(tmp_path / "out")
    expected = pd.read_csv(first, keep_default_na=False)
    assert list(found["id"]) == list(expected["id"])
    assert list(found["flag"]) == list(expected["flag"])
    close = np.isclose(found["p_qso"].to_numpy(float),
                       pd.to_numeric(expected["p_qso"].replace("", np.nan)).to_numpy(float),
                       atol=1e-5, equal_nan=True)
    assert close.all()
    record = json.loads((tmp_path / "out" / "_starqso.json").read_text())
    assert record["runtime"] == "keras"
