"""How well the simulator's galaxy spectra fit real SDSS galaxy colours.

    python benchmarks/galaxy_spectra.py \\
        --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --out benchmarks/results/galaxy_spectra.md

:func:`starqso.simulate.spectra.galaxy_spectrum` gives a galaxy catalogue row a spectrum: the
non-negative mix of the five kcorrect templates (Blanton & Roweis 2007) at the row's redshift
that fits its ugriz best, then a smooth correction of at most 1.5 mag onto the row's
magnitudes (as for the simulator's stars and QSOs). The smaller the fit's own colour error,
the less of each spectrum is the correction and the more is the templates' real galaxy light.

For every real GALAXY row (model magnitudes, spectroscopic redshift > 0) this reports, by
redshift: the fitted mix's colour error (median and 90th percentile of |fit - row| in u-g, g-r,
r-i, i-z), the same for the one best single template (what a one-template-per-type simulator
would give), and the fraction of rows whose final spectrum reaches the row's five magnitudes
within 0.05 mag.
"""

from __future__ import annotations

import csv
import gzip
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import catalogue_arguments, command, provenance, publish  # noqa: E402

BANDS = ("u", "g", "r", "i", "z")
COLOURS = ("u-g", "g-r", "r-i", "i-z")
Z_EDGES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 2.5)


def read_galaxies(path):
    """The catalogue's GALAXY rows with five magnitudes in 5-30 and a redshift > 0."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["class"] == "GALAXY"]
    mags = np.array([[float(row[band]) for band in BANDS] for row in rows])
    redshift = np.array([float(row["redshift"]) for row in rows])
    good = np.all((mags > 5) & (mags < 30), axis=1) & (redshift > 0)
    return mags[good], redshift[good]


def colour_errors(model_mags, mags):
    """|model colour - row colour| for the four adjacent colours: (N, 4)."""
    return np.abs(-np.diff(model_mags, axis=1) + np.diff(mags, axis=1))


def cells(errors):
    return " | ".join(f"{np.nanmedian(errors[:, k]):.3f} / {np.nanpercentile(errors[:, k], 90):.3f}"
                      for k in range(len(COLOURS)))


def main():
    args = catalogue_arguments(__doc__.splitlines()[0])
    from starqso.simulate.spectra import galaxy_mix, galaxy_spectrum, photometer

    started = time.perf_counter()
    mags, redshift = read_galaxies(args.catalog)
    rng = np.random.default_rng(0)
    mixed, single, matched = [], [], []
    for row_mags, z in zip(mags, redshift, strict=True):
        mix, templates = galaxy_mix(row_mags, z)
        mixed.append(photometer().magnitudes(mix @ templates))
        bands = photometer().nanomaggies(templates)  # (5 templates, 5 bands), r = 1
        with np.errstate(divide="ignore", invalid="ignore"):
            single_mags = 22.5 - 2.5 * np.log10(bands * 10 ** (-0.4 * (row_mags[2] - 22.5)))
        errors = colour_errors(single_mags, np.broadcast_to(row_mags, single_mags.shape))
        single.append(single_mags[np.nanargmin(np.nansum(errors, axis=1))])
        model = galaxy_spectrum(row_mags, z, rng)
        matched.append(np.abs(photometer().magnitudes(model.flux) - row_mags).max() <= 0.05)
    mixed, single, matched = np.array(mixed), np.array(single), np.array(matched)
    mix_errors, single_errors = colour_errors(mixed, mags), colour_errors(single, mags)
    header = " | ".join(f"{colour} median / 90%" for colour in COLOURS)
    lines = [f"| z | rows | fit | {header} | final spectrum within 0.05 mag |",
             "|---|---|---|" + "---|" * len(COLOURS) + "---|"]
    bins = [(0.0, np.inf)] + list(zip(Z_EDGES[:-1], Z_EDGES[1:], strict=True))
    for lo, hi in bins:
        inside = (redshift >= lo) & (redshift < hi)
        name = "all" if np.isinf(hi) else f"{lo:g}-{hi:g}"
        lines.append(f"| {name} | {int(inside.sum())} | five-template mix | "
                     f"{cells(mix_errors[inside])} | {matched[inside].mean():.3f} |")
        lines.append(f"| {name} | | best single template | {cells(single_errors[inside])} | |")
    text = "\n".join([
        "# Galaxy spectra against real SDSS galaxy colours", "",
        command(__file__), "",
        f"{provenance(started)}. {len(redshift)} real "
        "GALAXY rows (SDSS model magnitudes, spectroscopic redshift > 0). Colour error: "
        "|template colour - row colour| in magnitudes, before the simulator's smooth "
        "correction onto the row.", "", *lines, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
