"""Simulated stars and QSOs injected into real blank sky against fully simulated ones.

    starqso skies ../shared/data/sdss_frames_004510-4-0030 --out /tmp/skies.npz
    python benchmarks/injection.py /tmp/skies.npz --n 400

SKIES is a sky-background file (``starqso skies``). The same objects (seed, indices) are
simulated twice, on simulated sky and injected into the real cutouts
(:mod:`starqso.simulate.injection`, fraction 1), at ``--size`` (default 48) and cropped to
32x32 as ``fit`` does. Per band the table gives, for each set:

* the sky noise the cutout's border holds (median over objects of the 1.4826 MAD of the
  border pixels, nanomaggies) against the field's recorded sky sigma;
* for the point-like objects (no host) with r < 20, the 3" aperture flux with the border's
  sky subtracted (:func:`starqso.preprocessing.photometry.aperture_fluxes`, the twin of the
  model's in-graph photometry) over the true flux of the source: median and robust scatter;
* the PSF FWHM the simulator used (median, arcsec).

The table goes to stdout and to ``--out`` (default ``benchmarks/results/injection.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

from starqso._util.atomic import write_text_atomically

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _objects(count, seed, backgrounds, fraction, size):
    from starqso.simulate import simulate_object

    began = time.perf_counter()
    objects = [simulate_object(index, seed, size, backgrounds=backgrounds,
                               background_fraction=fraction) for index in range(count)]
    return objects, (time.perf_counter() - began) / count


def _measure(objects):
    from starqso.preprocessing.images import center_crop
    from starqso.preprocessing.photometry import aperture_fluxes, aperture_masks

    crops = np.stack([center_crop(obj.cutout, 32) for obj in objects])
    _, border = aperture_masks(32, 3.0)
    pixels = crops[:, border, :]
    noise = 1.4826 * np.median(np.abs(pixels - np.median(pixels, axis=1, keepdims=True)),
                               axis=1)
    fluxes = aperture_fluxes(crops)
    truth = 10 ** (-0.4 * (np.array([obj.mags for obj in objects]) - 22.5))
    point = np.array([obj.info["host_fraction"] == 0 and obj.mags[2] < 20 for obj in objects])
    ratio = fluxes[point] / truth[point]
    median = np.median(ratio, axis=0)
    scatter = 1.4826 * np.median(np.abs(ratio - median), axis=0)
    fwhm = np.median([obj.info["psf_fwhm"] for obj in objects], axis=0)
    return np.median(noise, axis=0), median, scatter, fwhm, int(point.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("skies", help="sky-background file (starqso skies)")
    parser.add_argument("--n", type=int, default=400, help="objects per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=48,
                        help="simulated cutout side (the backgrounds' at least)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/injection.md"))
    args = parser.parse_args(argv)

    from starqso.simulate.injection import BackgroundSource

    source = BackgroundSource.open(args.skies, fraction=1.0, size=args.size)
    backgrounds = source.load(args.size)
    plain, plain_time = _objects(args.n, args.seed, None, 0.0, args.size)
    injected, injected_time = _objects(args.n, args.seed, backgrounds, 1.0, args.size)
    assert all(obj.info["background"] >= 0 for obj in injected)
    field_sigma = np.median(backgrounds.sky_sigma, axis=0)
    field_fwhm = np.median(backgrounds.psf_fwhm_arcsec, axis=0)
    results = {"simulated sky": _measure(plain), "injected into real sky": _measure(injected)}

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# Injection into real blank sky vs fully simulated sky", "",
        f"`python benchmarks/injection.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"{datetime.date.today()}, git {commit}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores; {args.n} objects per set (seed {args.seed}); "
        f"{plain_time * 1000:.0f} ms per simulated object, {injected_time * 1000:.0f} ms per "
        f"injected one.", "",
        f"Backgrounds: {source.count} cutouts of {len(source.fields)} field(s) "
        f"({', '.join(source.fields)}), SHA-256 {source.sha256[:16]}...; field sky sigma "
        + " ".join(f"{band} {value:.4f}" for band, value in zip("ugriz", field_sigma, strict=False))
        + "; PSF FWHM " + " ".join(f"{band} {value:.2f}\"" for band, value in
                                   zip("ugriz", field_fwhm, strict=False)) + ".", "",
        "| set | band | border noise (nmgy) | 3\" flux / truth, r<20 points | scatter | "
        "PSF FWHM used (\") | objects |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (noise, median, scatter, fwhm, count) in results.items():
        for band in range(5):
            lines.append(f"| {name} | {'ugriz'[band]} | {noise[band]:.4f} | "
                         f"{median[band]:.3f} | {scatter[band]:.3f} | {fwhm[band]:.2f} | "
                         f"{count} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomically(args.out, text)


if __name__ == "__main__":
    main()
