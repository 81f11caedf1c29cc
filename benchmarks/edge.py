"""Edge numbers of an exported model: size, LiteRT speed, agreement, predict throughput, start-up.

    python benchmarks/edge.py --model saved_models/starqso-large/export [--n 2000] \
        [--reference ../shared/tools/edge_reference.py]

Prints the CPU (``lscpu``'s model name) and a table:

* size of each TFLite variant;
* cutouts/s of each variant on one CPU thread, batched (256), LiteRT only: the variants are
  timed in interleaved rounds (``--rounds``) and each keeps its best round, so that load from
  other processes on a shared machine hits them alike;
* with ``--reference``: the edge peer, a seed-sized full-integer int8 CNN (three residual
  blocks + a generator head, random weights) built at the model's input size by that script
  (``edge_reference.py SIZE OUT.tflite``), timed in the same rounds; then the ratios
  int8/fp32 and int8/reference;
* label agreement of each variant with the Keras model on ``--n`` simulated cutouts;
* ``starqso predict --runtime litert`` end to end (FITS reading included) on ``--n`` cutouts
  written to disk, rows/s;
* start-up: wall time of ``starqso predict --runtime litert`` on one cutout, in a fresh
  process (median of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 256


def cpu_name():
    """The CPU's model name as ``lscpu`` gives it (else /proc/cpuinfo, else platform)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                               env={**os.environ, "LC_ALL": "C"}).stdout.splitlines()
        for line in lines:
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_reference(script, size, folder):
    """The reference int8 CNN, built by ``script SIZE OUT.tflite`` in a fresh process."""
    path = pathlib.Path(folder) / f"edge_reference_{size}.tflite"
    subprocess.run([sys.executable, str(script), str(size), str(path)], check=True,
                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return path


def throughputs(paths, images, rounds):
    """Best cutouts/s of each model over ``rounds`` interleaved rounds, one thread, batch 256.

    Returns ``{name: (rate, probabilities)}``.
    """
    from starqso.inference import LiteRTPredictor

    predictors = {}
    for name, path in paths.items():
        predictors[name] = LiteRTPredictor(path, num_threads=1)
        predictors[name](images[:BATCH])  # allocate for the batch shape
    best = dict.fromkeys(paths, 0.0)
    outputs = {}
    usable = len(images) // BATCH * BATCH or len(images)
    for _ in range(rounds):
        for name, predictor in predictors.items():
            began = time.perf_counter()
            outputs[name] = np.concatenate([predictor(images[i:i + BATCH])
                                            for i in range(0, usable, BATCH)])
            best[name] = max(best[name], usable / (time.perf_counter() - began))
    return {name: (best[name], outputs[name]) for name in paths}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-large/export"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--reference", default=None,
                        help="path to edge_reference.py (e.g. ../shared/tools/"
                             "edge_reference.py): time its int8 CNN beside the model")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timing rounds; each model keeps its best")
    parser.add_argument("--skip-predict", action="store_true",
                        help="leave out the `starqso predict` end-to-end and start-up runs")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from starqso.inference import KerasPredictor
    from starqso.io import write_catalog, write_cutout
    from starqso.preprocessing import center_crop
    from starqso.simulate import simulate_object

    model_dir = pathlib.Path(args.model)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    size = metadata["input_shape"][1]
    threshold = metadata.get("threshold", 0.5)  # agreement on the label the model gives
    objects = [simulate_object(i, args.seed) for i in range(args.n)]
    images = np.stack([center_crop(obj.cutout, size) for obj in objects])
    keras_p = np.concatenate([KerasPredictor(model_dir)(images[i:i + 512])
                              for i in range(0, len(images), 512)])

    print(f"model {model_dir}, {args.n} simulated cutouts (seed {args.seed}), "
          f"CPU {cpu_name()} ({os.cpu_count()} cores), LiteRT on 1 thread, batch {BATCH}, "
          f"best of {args.rounds} interleaved rounds; label agreement at the model's threshold "
          f"{threshold:g}\n")
    paths = {variant: model_dir / f"model_{variant}.tflite" for variant in ("fp32", "fp16", "int8")}
    with tempfile.TemporaryDirectory() as scratch:
        if args.reference:
            paths["reference int8"] = build_reference(args.reference, size, scratch)
        results = throughputs(paths, images, args.rounds)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
    print(f"| variant | size (kB) | cutouts/s, 1 thread, batch {BATCH} | "
          "label agreement with Keras |")
    print("|---|---|---|---|")
    for name, (rate, probabilities) in results.items():
        if name == "reference int8":
            agreement = "- (random weights)"
        else:
            compared = keras_p[:len(probabilities)]
            agreement = f"{np.mean((probabilities >= threshold) == (compared >= threshold)):.4f}"
        print(f"| {name} | {sizes[name] / 1e3:.0f} | {rate:,.0f} | {agreement} |")
    int8 = results["int8"][0]
    print(f"\nint8 / fp32: {int8 / results['fp32'][0]:.2f}x")
    if "reference int8" in results:
        print(f"int8 / reference int8: {int8 / results['reference int8'][0]:.2f}x")
    if args.skip_predict:
        return

    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        (folder / "images").mkdir()
        for obj in objects:
            write_cutout(folder / "images" / f"{obj.id}.fits", obj.cutout)
        from astropy.table import Table

        write_catalog(Table({"id": [o.id for o in objects],
                             "image": [f"images/{o.id}.fits" for o in objects]}),
                      folder / "catalog.csv")
        write_catalog(Table({"id": [objects[0].id], "image": [f"images/{objects[0].id}.fits"]}),
                      folder / "one.csv")
        command = [sys.executable, str(ROOT / "cli.py"), "predict", "--model", str(model_dir),
                   "--runtime", "litert"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        began = time.perf_counter()
        subprocess.run(command + [str(folder / "catalog.csv"), "--output",
                                  str(folder / "p.csv")], check=True, env=env,
                       capture_output=True)
        end_to_end = args.n / (time.perf_counter() - began)
        startups = []
        for _ in range(3):
            began = time.perf_counter()
            subprocess.run(command + [str(folder / "one.csv"), "--output",
                                      str(folder / "one_p.csv")], check=True, env=env,
                           capture_output=True)
            startups.append(time.perf_counter() - began)
    print(f"\n`starqso predict --runtime litert` end to end (process start and FITS reading "
          f"included): {end_to_end:,.0f} cutouts/s over {args.n}")
    print(f"start-up, `starqso predict --runtime litert` on one cutout: "
          f"{np.median(startups):.2f} s (median of 3)")


if __name__ == "__main__":
    main()
