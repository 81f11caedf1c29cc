"""Does p(QSO) depend on brightness? Real cutouts dimmed in the pixels, colours unchanged.

    python benchmarks/dimming.py --data ../shared/data [--model DIR] [--out FILE]

Each real high-z QSO cutout (``real_qso_iqvit_dev.npz``) and each real field point source
(``real_fields_dev.npz``) is dimmed by ``dm`` magnitudes: its pixels scaled by
``10 ** (-0.4 dm)`` and Gaussian noise added so that the sky noise is what it was
(``sigma * sqrt(1 - k**2)``, the sky sigma from the source check's annulus). The colours stay;
only the S/N falls. A classifier whose evidence is the colours calls a dimmed QSO QSO less
often (noisier colours); one that has learned "faint means QSO" calls it QSO more often.
Scored at prior 0.3 (the QSOs, and the point sources) with the model's threshold, LiteRT int8.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

from starqso._util.atomic import write_text_atomically

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIMMING = (0.5, 1.0, 1.5)
R_BINS = ((14.0, 19.5), (19.5, 20.5))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-large/export"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.inference import apply_prior, open_model, resolve_prior
    from starqso.preprocessing.screening import sky_background

    metadata, predictor = open_model(args.model, "litert")
    threshold, shift = metadata["threshold"], resolve_prior(metadata, 0.3)["shift"]
    rng = np.random.default_rng(args.seed)

    def called(cubes):
        x = np.ascontiguousarray(np.moveaxis(cubes, 1, -1), np.float32)
        p = np.concatenate([predictor(x[i:i + 512]) for i in range(0, len(x), 512)])
        return apply_prior(p, shift) >= threshold

    def dim(cubes, dm):
        x = np.moveaxis(cubes, 1, -1).astype(np.float64)
        sigma = sky_background(x).sigma
        k = 10 ** (-0.4 * dm)
        x = x * k + rng.normal(size=x.shape) * sigma[:, None, None, :] * np.sqrt(1 - k * k)
        return np.moveaxis(x, -1, 1).astype(np.float32)

    qso = np.load(args.data / "real_qso_iqvit_dev.npz")
    fields = np.load(args.data / "real_fields_dev.npz")
    lines = ["| sample | n | as observed | " + " | ".join(f"dimmed {dm:g} mag" for dm in DIMMING)
             + " |", "|---|---|---|" + "---|" * len(DIMMING)]
    for lo, hi in R_BINS:
        rows = (qso["r"] >= lo) & (qso["r"] < hi)
        cubes = qso["images"][rows]
        cells = [f"{called(cubes).mean():.3f}"] + [f"{called(dim(cubes, dm)).mean():.3f}"
                                                   for dm in DIMMING]
        lines.append(f"| real high-z QSOs, r {lo:g}-{hi:g}: called QSO | {rows.sum()} | "
                     + " | ".join(cells) + " |")
    point = fields["pointlike"] & (fields["r_auto"] < 19.5)
    cubes = fields["images"][point]
    cells = [f"{called(cubes).mean():.4f}"] + [f"{called(dim(cubes, dm)).mean():.4f}"
                                               for dm in DIMMING]
    lines.append(f"| field point sources, r < 19.5: called QSO | {point.sum()} | "
                 + " | ".join(cells) + " |")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    text = "\n".join([
        "# Dimming real cutouts: does p(QSO) depend on brightness?", "",
        f"`python benchmarks/dimming.py {' '.join(sys.argv[1:])}`", "",
        f"{datetime.date.today()}, git {git}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Model `{args.model}` (LiteRT int8, threshold "
        f"{threshold:.2f}), prior 0.3.", "", *lines, ""])
    print(text)
    if args.out is not None:
        write_text_atomically(args.out, text)


if __name__ == "__main__":
    main()
