"""How close is the simulator to the real SDSS catalogue? Prints a table per class.

    python benchmarks/sim_realism.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz

For STAR and QSO: simulated vs real median colours (u-g, g-r, r-i, i-z) and their differences,
two-sample KS statistics of the r magnitude and of the QSO redshift, and a check of the images:
the r magnitude measured in a 3" radius aperture on the simulated cutouts (aperture-corrected
with the median over bright objects) against the true magnitude, plus the fraction of cutouts
whose sky noise and FWHM lie in SDSS's range. ``--sim DIR`` scores an existing simulation
(``DIR/catalog.csv``); otherwise ``--n`` objects are simulated in memory with ``--seed``.

``--real-qso ../shared/data/real_qso_iqvit_dev.npz`` adds a comparison of the cutouts
themselves with real SDSS QSO cutouts (2.75 < z < 5): per-band sky sigma (1.4826 x MAD of the
6-px border of the central 32x32 pixels) and its spread, lag-1 autocorrelation of the sky, and
the PSF FWHM distribution (the same half-maximum-area estimator on both, objects with
r < 19.5), with the simulated QSOs at z > 2.75 for the high-z colours.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import pathlib
import sys
import time

import numpy as np
from scipy.stats import ks_2samp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from starqso.schema import BANDS, CLASS_NAMES, PIXEL_SCALE_ARCSEC  # noqa: E402
from starqso.simulate import simulate_object  # noqa: E402
from starqso.simulate.survey import REDSHIFT_RANGE  # noqa: E402

COLOURS = ("u-g", "g-r", "r-i", "i-z")


def read_real(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        rows = [row for row in csv.DictReader(handle) if row["class"] in CLASS_NAMES]
    mags = np.array([[float(row[band]) for band in BANDS] for row in rows])
    good = np.all((mags > 5) & (mags < 30), axis=1)
    return {
        "label": np.array([row["class"] for row in rows])[good],
        "mags": mags[good],
        "redshift": np.array([float(row["redshift"]) for row in rows])[good],
    }


def aperture_magnitude(cutout, radius_pixels=3.0 / PIXEL_SCALE_ARCSEC):
    size = cutout.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    radius = np.hypot(xx, yy)
    sky = np.median(cutout[:, radius > size / 2.0 - 4], axis=1)
    flux = (cutout[:, radius <= radius_pixels] - sky[:, None]).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(flux), np.nan)


def simulate(num_objects, seed):
    objects = [simulate_object(index, seed) for index in range(num_objects)]
    return {
        "label": np.array([obj.label for obj in objects]),
        "mags": np.array([obj.mags for obj in objects]),
        "redshift": np.array([obj.redshift for obj in objects]),
        "aperture": np.array([aperture_magnitude(obj.cutout) for obj in objects]),
        "fwhm": np.array([obj.info["psf_fwhm_r"] for obj in objects]),
        "cutouts": np.array([obj.cutout for obj in objects]),
    }


def read_sim(folder):
    from starqso.io import read_catalog, read_cutout, resolve_path

    table = read_catalog(pathlib.Path(folder) / "catalog.csv")
    return {
        "label": np.array(table["label"]),
        "mags": np.array([[float(value) for value in table[band]] for band in BANDS]).T,
        "redshift": np.array(table["redshift"], dtype=float),
        "aperture": np.array([aperture_magnitude(read_cutout(resolve_path(table, p)).data)
                              for p in table["image"]]),
        "fwhm": np.array(table["psf_fwhm_r"], dtype=float),
        "cutouts": np.array([read_cutout(resolve_path(table, p)).data for p in table["image"]]),
    }


def _central(cutout, size=32):
    start = (cutout.shape[-1] - size) // 2
    return cutout[..., start:start + size, start:start + size]


def sky_statistics(cutouts, border=6):
    """Per-cutout, per-band sky sigma (1.4826 MAD of the border) and lag-1 autocorrelation."""
    cutouts = np.asarray(cutouts, dtype=np.float64)
    mask = np.ones(cutouts.shape[-2:], bool)
    mask[border:-border, border:-border] = False
    pixels = cutouts[:, :, mask]
    sigma = 1.4826 * np.median(np.abs(pixels - np.median(pixels, -1, keepdims=True)), -1)
    strips = np.concatenate([cutouts[:, :, :border], cutouts[:, :, -border:]], axis=2)
    strips = strips - np.median(strips, axis=(-2, -1), keepdims=True)
    left, right = strips[..., :-1], strips[..., 1:]
    lag1 = (left * right).mean((-2, -1)) / np.sqrt((left ** 2).mean((-2, -1))
                                                   * (right ** 2).mean((-2, -1)))
    return sigma, lag1


def fwhm_half_max_area(cutouts, border=6):
    """FWHM (arcsec) per band from the number of pixels above half the peak: 2 sqrt(A / pi)."""
    cutouts = np.asarray(cutouts, dtype=np.float64)
    mask = np.ones(cutouts.shape[-2:], bool)
    mask[border:-border, border:-border] = False
    sky = np.median(cutouts[:, :, mask], axis=-1)[:, :, None, None]
    size = cutouts.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    inner = np.hypot(xx, yy) < 5
    signal = cutouts - sky
    peak = np.where(inner, signal, -np.inf).max(axis=(-2, -1), keepdims=True)
    area = ((signal > 0.5 * peak) & inner).sum(axis=(-2, -1))
    return 2.0 * np.sqrt(area / np.pi) * PIXEL_SCALE_ARCSEC


def compare_real_qso_cutouts(path, sim_cutouts, sim_mags, sim_label, sim_redshift):
    real = np.load(path)
    images = real["images"].astype(np.float64)
    real_r = real["r"]
    sim_cutouts = _central(np.asarray(sim_cutouts))
    real_sigma, real_lag1 = sky_statistics(images)
    sim_sigma, sim_lag1 = sky_statistics(sim_cutouts)
    print(f"\nimages vs {len(images)} real SDSS QSO cutouts ({path.name}), central 32x32 px")
    print("| band | real sky sigma median | sim median | sim/real | real 5-95% | sim 5-95% "
          "| real lag-1 | sim lag-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for k, band in enumerate(BANDS):
        print(f"| {band} | {np.median(real_sigma[:, k]):.4f} | {np.median(sim_sigma[:, k]):.4f} | "
              f"{np.median(sim_sigma[:, k]) / np.median(real_sigma[:, k]):.2f} | "
              f"{np.percentile(real_sigma[:, k], 5):.4f}-{np.percentile(real_sigma[:, k], 95):.4f}"
              f" | {np.percentile(sim_sigma[:, k], 5):.4f}-"
              f"{np.percentile(sim_sigma[:, k], 95):.4f} | {np.median(real_lag1[:, k]):.3f} | "
              f"{np.median(sim_lag1[:, k]):.3f} |")
    real_fwhm = fwhm_half_max_area(images[real_r < 19.5])
    sim_fwhm = fwhm_half_max_area(sim_cutouts[sim_mags[:, 2] < 19.5])
    print(f"\nPSF FWHM (half-maximum area, arcsec; r < 19.5: {len(real_fwhm)} real QSOs, "
          f"{len(sim_fwhm)} simulated objects)")
    print("| band | real median | sim median | real 5-95% | sim 5-95% | KS |")
    print("|---|---|---|---|---|---|")
    for k, band in enumerate(BANDS):
        ks = ks_2samp(sim_fwhm[:, k], real_fwhm[:, k]).statistic
        print(f"| {band} | {np.median(real_fwhm[:, k]):.2f} | {np.median(sim_fwhm[:, k]):.2f} | "
              f"{np.percentile(real_fwhm[:, k], 5):.2f}-{np.percentile(real_fwhm[:, k], 95):.2f} | "
              f"{np.percentile(sim_fwhm[:, k], 5):.2f}-{np.percentile(sim_fwhm[:, k], 95):.2f} | "
              f"{ks:.2f} |")
    real_mags = np.stack([real[band] for band in BANDS], axis=1)
    print("\nhigh-z QSO median colours (sim: true magnitudes; real: catalogue magnitudes)")
    print("| z | sim n | sim u-g, g-r, r-i | real n | real u-g, g-r, r-i |")
    print("|---|---|---|---|---|")
    sim_qso = sim_label == "QSO"
    for low, high in ((2.75, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 4.5), (4.5, 5.0)):
        rows = []
        for mags, z in ((sim_mags[sim_qso], sim_redshift[sim_qso]),
                        (real_mags, real["redshift"])):
            pick = (z >= low) & (z < high)
            colours = -np.diff(mags[pick], axis=1)[:, :3]
            text = ", ".join(f"{v:.2f}" for v in np.median(colours, axis=0)) if pick.any() \
                else "-"
            rows.append((pick.sum(), text))
        print(f"| {low}-{high} | {rows[0][0]} | {rows[0][1]} | {rows[1][0]} | {rows[1][1]} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True, type=pathlib.Path,
                        help="real labelled SDSS catalogue (CSV, optionally gzipped)")
    parser.add_argument("--sim", type=pathlib.Path, help="existing simulation folder")
    parser.add_argument("--n", type=int, default=3000, help="objects to simulate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-qso", type=pathlib.Path,
                        help="real SDSS QSO cutouts (real_qso_iqvit_dev.npz) to compare images")
    args = parser.parse_args()

    start = time.perf_counter()
    real = read_real(args.catalog)
    sim = read_sim(args.sim) if args.sim else simulate(args.n, args.seed)
    elapsed = time.perf_counter() - start
    print(f"real rows: {len(real['label'])}, simulated objects: {len(sim['label'])} "
          f"({'from ' + str(args.sim) if args.sim else f'seed {args.seed}'}), {elapsed:.0f} s\n")

    print("| class | colour | sim median | real median | sim - real |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for label in ("STAR", "QSO"):
        real_colours = np.diff(real["mags"][real["label"] == label][:, ::-1], axis=1)[:, ::-1]
        sim_colours = np.diff(sim["mags"][sim["label"] == label][:, ::-1], axis=1)[:, ::-1]
        for k, name in enumerate(COLOURS):
            real_median = np.median(real_colours[:, k])
            sim_median = np.median(sim_colours[:, k])
            worst = max(worst, abs(sim_median - real_median))
            print(f"| {label} | {name} | {sim_median:.3f} | {real_median:.3f} | "
                  f"{sim_median - real_median:+.3f} |")
    print(f"\nlargest median-colour difference: {worst:.3f} mag (goal <= 0.05)\n")

    print("| class | quantity | KS statistic | p-value | sim median | real median |")
    print("|---|---|---|---|---|---|")
    for label in ("STAR", "QSO"):
        real_r = real["mags"][real["label"] == label][:, 2]
        sim_r = sim["mags"][sim["label"] == label][:, 2]
        ks = ks_2samp(sim_r, real_r)
        print(f"| {label} | r | {ks.statistic:.3f} | {ks.pvalue:.2g} | {np.median(sim_r):.2f} | "
              f"{np.median(real_r):.2f} |")
    real_z = real["redshift"][real["label"] == "QSO"]
    sim_z = sim["redshift"][sim["label"] == "QSO"]
    for name, reference in (("redshift (all real)", real_z),
                            (f"redshift (real {REDSHIFT_RANGE[0]}-{REDSHIFT_RANGE[1]})",
                             real_z[(real_z >= REDSHIFT_RANGE[0])
                                    & (real_z <= REDSHIFT_RANGE[1])])):
        ks = ks_2samp(sim_z, reference)
        print(f"| QSO | {name} | {ks.statistic:.3f} | {ks.pvalue:.2g} | {np.median(sim_z):.2f} "
              f"| {np.median(reference):.2f} |")
    qso_fraction = np.mean(sim["label"] == "QSO")
    real_fraction = np.mean(real["label"] == "QSO")
    print(f"\nQSO fraction: simulated {qso_fraction:.3f}, real {real_fraction:.3f}")

    aperture_r = sim["aperture"][:, 2]
    true_r = sim["mags"][:, 2]
    bright = (true_r < 19) & np.isfinite(aperture_r)
    correction = np.median(aperture_r[bright] - true_r[bright])
    print("\nimages: r from a 3\" aperture on the cutouts vs true r (aperture correction "
          f"{correction:+.3f} mag from r < 19)")
    print("| true r | objects | median offset | robust scatter |")
    print("|---|---|---|---|")
    for low, high in ((14, 17), (17, 19), (19, 20), (20, 21), (21, 22), (22, 23)):
        pick = (true_r >= low) & (true_r < high) & np.isfinite(aperture_r)
        if pick.sum() < 5:
            continue
        offset = aperture_r[pick] - true_r[pick] - correction
        scatter = 1.4826 * np.median(np.abs(offset - np.median(offset)))
        print(f"| {low}-{high} | {pick.sum()} | {np.median(offset):+.3f} | {scatter:.3f} |")
    fwhm = sim["fwhm"]
    print(f"\nr-band PSF FWHM: median {np.median(fwhm):.2f}\", 5-95% "
          f"{np.percentile(fwhm, 5):.2f}-{np.percentile(fwhm, 95):.2f}\"")
    if args.real_qso:
        compare_real_qso_cutouts(args.real_qso, sim["cutouts"], sim["mags"], sim["label"],
                                 sim["redshift"])


if __name__ == "__main__":
    main()
