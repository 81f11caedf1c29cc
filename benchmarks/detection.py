"""How often `starqso predict`'s source check (no source, implausible values) flags a cutout.

    python benchmarks/detection.py [--n 500] [--seeds 0 1] \
        [--real-qso ../shared/data/real_qso_iqvit_dev.npz]

Prints three tables, each from :func:`starqso.preprocessing.check_source` on the crop the
shipped model sees (32 pixels):

* simulated objects (``simulate_object``, 48-pixel cutouts, the seeds given), flagged per r bin:
  real stars and QSOs that the check would wrongly refuse;
* blank sky (Gaussian noise at SDSS's median per-pixel sky sigma, and 2x it): crops with no
  source that the check would wrongly pass;
* with ``--real-qso``: real SDSS cutouts of spectroscopic QSOs at 2.75 < z < 5 (benchmark only).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = 32
# Median per-pixel sky sigma of real SDSS cutouts, nanomaggies (u, g, r, i, z).
SDSS_SKY_SIGMA = np.array([0.0445, 0.0173, 0.0289, 0.0462, 0.1727])
R_BINS = (14, 18, 20, 21, 22, 23, 30)


def flagged(crops):
    """Per crop (S, S, 5): True when check_source refuses it."""
    from starqso.errors import InputError
    from starqso.preprocessing import check_source

    result = []
    for crop in crops:
        try:
            check_source(crop.astype(np.float32), source="benchmark")
            result.append(False)
        except InputError:
            result.append(True)
    return np.array(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="simulated objects per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--blank", type=int, default=2000, help="blank-sky crops per depth")
    parser.add_argument("--real-qso", default=None)
    args = parser.parse_args()

    from starqso.preprocessing import center_crop
    from starqso.simulate import simulate_object

    objects = [simulate_object(i, seed, size=48) for seed in args.seeds for i in range(args.n)]
    crops = np.stack([center_crop(obj.cutout, SIZE) for obj in objects])  # (N, S, S, 5)
    r = np.array([obj.mags[2] for obj in objects])  # true r magnitude
    refused = flagged(crops)
    print(f"simulated objects ({len(objects)}, seeds {args.seeds}), flagged by r bin:\n")
    print("| r | objects | flagged |\n|---|---|---|")
    for low, high in zip(R_BINS[:-1], R_BINS[1:], strict=False):
        chosen = (r >= low) & (r < high)
        print(f"| {low}-{high} | {chosen.sum()} | {refused[chosen].sum()} |")
    print(f"| all | {len(r)} | {refused.sum()} ({refused.mean():.2%}) |\n")

    rng = np.random.default_rng(0)
    print("blank sky (no source), passed as a detection:\n")
    print("| sky sigma | crops | passed |\n|---|---|---|")
    for factor in (1.0, 2.0):
        blank = rng.normal(0, 1, (args.blank, SIZE, SIZE, 5)) * SDSS_SKY_SIGMA * factor
        passed = ~flagged(blank)
        print(f"| {factor:g}x SDSS median | {args.blank} | {passed.sum()} ({passed.mean():.2%}) |")

    if args.real_qso:
        data = np.load(args.real_qso)
        refused = flagged(np.moveaxis(data["images"], 1, -1))
        print(f"\nreal SDSS QSO cutouts ({args.real_qso}): {refused.sum()} of {len(refused)} "
              f"flagged; their r: {np.round(np.sort(data['r'][refused]), 2).tolist()}")


if __name__ == "__main__":
    main()
