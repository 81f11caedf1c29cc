"""Edge numbers of an exported model: size, LiteRT speed, agreement, predict throughput, start-up.

    python benchmarks/edge.py --model saved_models/starqso-base/export [--n 2000]

Prints a table:

* size of each TFLite variant;
* cutouts/s of each variant on one CPU thread, batched (256), LiteRT only;
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
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-base/export"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=424242)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from starqso.inference import KerasPredictor, LiteRTPredictor
    from starqso.io import write_catalog, write_cutout
    from starqso.preprocessing import center_crop
    from starqso.simulate import simulate_object

    model_dir = pathlib.Path(args.model)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    size = metadata["input_shape"][1]
    objects = [simulate_object(i, args.seed) for i in range(args.n)]
    images = np.stack([center_crop(obj.cutout, size) for obj in objects])
    keras_p = np.concatenate([KerasPredictor(model_dir)(images[i:i + 512])
                              for i in range(0, len(images), 512)])

    print(f"model {model_dir}, {args.n} simulated cutouts (seed {args.seed}), "
          f"{os.cpu_count()} CPU cores\n")
    print("| variant | size (kB) | cutouts/s, 1 thread, batch 256 | label agreement with Keras |")
    print("|---|---|---|---|")
    for variant in ("fp32", "fp16", "int8"):
        path = model_dir / f"model_{variant}.tflite"
        predictor = LiteRTPredictor(path, num_threads=1)
        predictor(images[:256])  # allocate
        began = time.perf_counter()
        probabilities = np.concatenate([predictor(images[i:i + 256])
                                        for i in range(0, len(images), 256)])
        rate = len(images) / (time.perf_counter() - began)
        agreement = np.mean((probabilities >= 0.5) == (keras_p >= 0.5))
        print(f"| {variant} | {path.stat().st_size / 1e3:.0f} | {rate:,.0f} | {agreement:.4f} |")

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
