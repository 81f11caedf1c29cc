"""`starqso skies` on one real SDSS field: blank sky, PSF FWHM and sky sigma against SDSS's own.

    python benchmarks/skies.py ../shared/data/sdss_frames_004510-4-0030

FRAMES is a folder with the five SDSS corrected frames of one field (``frame-{u,g,r,i,z}-...``)
and SDSS's point-source sweep of its run and camcol (``calibObj-*-star.fits.gz``: PSFFLUX,
PSF_FWHM, FLAGS). The benchmark runs the command's library function
(:func:`starqso.preprocessing.sky_backgrounds.make_sky_backgrounds`) and reports:

* the blank cutouts kept, and how empty their centres are (the fraction whose 3" aperture in r
  holds more than 5 sigma of flux, which should be about none);
* per band, the PSF FWHM measured from the field's own stars against the median PSF_FWHM
  SDSS's pipeline gives the catalogue stars of the field, and the sky sigma against the
  1.4826 MAD of the whole frame (how ``real_fields_dev.npz`` records it);
* per band, starqso's NumPy photometry (:mod:`starqso.preprocessing.photometry`, the twin of
  the model's in-graph photometry) on 32x32 cutouts of the catalogue's stars, cut by the same
  code from the same frames, against SDSS's PSF fluxes: the median ratio and its robust
  scatter (1.4826 MAD) for the 3" aperture, the PSF-weighted fluxes at the model's three
  widths (0.9, 1.5, 2.4") and at the FWHM measured for the band. Stars: in the frame, not
  SATURATED or EDGE in that band, PSF S/N >= 20 there.

The table goes to stdout and to ``--out`` (default ``benchmarks/results/skies.md``).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starqso._util.atomic import write_text_atomically  # noqa: E402
from starqso.io.frames import frame_paths, group_fields, read_field  # noqa: E402
from starqso.preprocessing.photometry import (  # noqa: E402
    WEIGHTED_FWHM_ARCSEC,
    aperture_fluxes,
    aperture_masks,
    sky_levels,
    weighted_fluxes,
)
from starqso.preprocessing.sky_backgrounds import make_sky_backgrounds  # noqa: E402
from starqso.schema import BANDS  # noqa: E402

# SDSS photo FLAGS bits (per band): the object touches the frame edge; saturated pixels.
EDGE, SATURATED = 1 << 2, 1 << 18
STAR_SIZE = 32
MIN_SNR = 20.0


def _cpu():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} CPU cores"


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _robust(values):
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def _star_rows(catalogue_path, field):
    """The catalogue's stars inside the r frame: (r-frame x, y, PSF flux, S/N, flags, FWHM)."""
    from astropy.io import fits

    table = fits.getdata(catalogue_path, 1)
    x, y = field.reference.wcs.all_world2pix(table["RA"], table["DEC"], 0)
    inside = field.inside_all(x, y, STAR_SIZE)
    table, x, y = table[inside], x[inside], y[inside]
    flux = np.asarray(table["PSFFLUX"], np.float64)
    snr = flux * np.sqrt(np.clip(np.asarray(table["PSFFLUX_IVAR"], np.float64), 0, None))
    return x, y, flux, snr, np.asarray(table["FLAGS"]), np.asarray(table["PSF_FWHM"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", help="folder with the five frames and the calibObj sweep")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "skies.md"))
    args = parser.parse_args(argv)
    started = time.time()
    lines = []
    skies = make_sky_backgrounds([args.frames], count=args.count, size=args.size,
                                 log=lines.append)
    seconds_skies = time.time() - started
    name, members = group_fields(frame_paths([args.frames]))[0]
    read_started = time.time()
    field = read_field(name, members)
    seconds_read = time.time() - read_started
    catalogues = sorted(glob.glob(os.path.join(args.frames, "calibObj-*.fits*")))
    if not catalogues:
        raise SystemExit(f"no calibObj-*.fits* catalogue in {args.frames}")
    x, y, psf_flux, snr, flags, sdss_fwhm = _star_rows(catalogues[0], field)
    cutouts = field.cut(x, y, STAR_SIZE).transpose(0, 2, 3, 1)  # (N, S, S, 5)
    finite = np.isfinite(cutouts).all(axis=(1, 2, 3))

    # Blank centres: 3" aperture r flux against its noise from the field's sky sigma.
    blank = skies.images.transpose(0, 2, 3, 1).astype(np.float64)
    inside, _ = aperture_masks(blank.shape[1], 3.0)
    blank_flux = aperture_fluxes(blank, 3.0)
    blank_snr = blank_flux / (skies.sky_sigma[0][None, :] * np.sqrt(inside.sum()))
    over = (blank_snr[:, BANDS.index("r")] > 5).mean()

    rows = []
    sky = sky_levels(cutouts)
    measures = {"aperture 3\"": aperture_fluxes(cutouts, 3.0, sky)}
    for width in WEIGHTED_FWHM_ARCSEC:
        measures[f"PSF-weighted {width:g}\""] = weighted_fluxes(cutouts, width, sky)
    measured = np.column_stack([weighted_fluxes(cutouts, fwhm, sky)[:, number]
                                for number, fwhm in enumerate(skies.psf_fwhm_arcsec[0])])
    measures["PSF-weighted at measured FWHM"] = measured
    for number, band in enumerate(BANDS):
        good = (finite & (snr[:, number] >= MIN_SNR)
                & ((flags[:, number] & (EDGE | SATURATED)) == 0))
        for label, fluxes in measures.items():
            median, scatter = _robust(fluxes[good, number] / psf_flux[good, number])
            rows.append((band, label, int(good.sum()), median, scatter))

    frame_mad = []
    for frame in field.frames:
        values = frame.data[np.isfinite(frame.data)]
        frame_mad.append(1.4826 * np.median(np.abs(values - np.median(values))))

    command = "python benchmarks/skies.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    text = [
        "# `starqso skies` on a real SDSS field",
        "",
        f"`{command}`",
        "",
        f"{datetime.date.today().isoformat()}, git {_commit()}, {_cpu()}; "
        f"make_sky_backgrounds {seconds_skies:.0f} s, all {time.time() - started:.0f} s "
        f"(of which reading and checking the five bzip2 frames: {seconds_read:.0f} s).",
        "",
        f"Field {name} ({', '.join(os.path.basename(path) for path, _ in members)}), "
        f"alignment to r: {', '.join(skies.alignment[0])}.",
        "",
        "```",
        *lines,
        "```",
        "",
        f"**{len(skies.images)} blank cutouts** of {skies.size}x{skies.size} (asked "
        f"{args.count}; no detected pixel within {skies.blank_radius_px:g} px of the centre "
        f"in any band at {skies.detect_sigma:g} sigma; non-overlapping). Centres whose 3\" "
        f"aperture holds > 5 sigma in r: {over:.1%}.",
        "",
        "| band | PSF FWHM measured (\") | stars | SDSS PSF_FWHM median (\") | ratio | "
        "sky sigma (nmgy) | frame 1.4826 MAD (nmgy) | sky level left (nmgy) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, band in enumerate(BANDS):
        sdss = float(np.median(sdss_fwhm[:, number]))
        ours = float(skies.psf_fwhm_arcsec[0, number])
        text.append(f"| {band} | {ours:.3f} | {int(skies.psf_stars[0, number])} | {sdss:.3f} | "
                    f"{ours / sdss:.3f} | {skies.sky_sigma[0, number]:.4f} | "
                    f"{frame_mad[number]:.4f} | {skies.sky_level[0, number]:+.4f} |")
    text += [
        "",
        f"SDSS PSF_FWHM: median over the {len(sdss_fwhm)} catalogue stars in the frame.",
        "",
        f"### starqso photometry of the catalogue's stars vs SDSS PSF flux ({STAR_SIZE}x"
        f"{STAR_SIZE} cutouts, sky from the cutout border)",
        "",
        "| band | photometry | stars | median ratio | scatter (1.4826 MAD) |",
        "|---|---|---|---|---|",
    ]
    text += [f"| {band} | {label} | {count} | {median:.3f} | {scatter:.3f} |"
             for band, label, count, median, scatter in rows]
    text += [
        "",
        f"Stars: the catalogue's point sources inside every band's frame, PSF S/N >= "
        f"{MIN_SNR:g} in the band, not SATURATED or EDGE there. A ratio below 1 for the 3\" "
        f"aperture is the PSF's light outside 3\" (SDSS PSF fluxes are aperture-corrected "
        f"to 7.4\"). The PSF-weighted fluxes are exact totals only for a Gaussian PSF of their "
        f"FWHM centred on the cutout's centre: a real PSF's wings and the cutouts' "
        f"whole-pixel cut (the star up to half a pixel off centre) put them below that; the "
        f"model uses them for colours, which need only the same ratio in every band.",
        "",
    ]
    report = "\n".join(text)
    print(report)
    write_text_atomically(args.out, report)


if __name__ == "__main__":
    main()
