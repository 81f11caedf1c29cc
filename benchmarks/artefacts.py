"""How often the "narrower than the PSF" check fires on real sources, and on hot pixels.

    python benchmarks/artefacts.py [--n 1000] [--seed 0] \
        [--fields ../shared/data/real_fields_dev.npz] \
        [--real-qso ../shared/data/real_qso_iqvit_dev.npz]

On the 32-pixel crop the shipped model sees, with the source checks of
:mod:`starqso.preprocessing.screening` (what ``starqso predict`` and ``embed`` screen with), it
prints per sample: the rows refused by the earlier rules (implausible pixels, no source), the
rows *newly* refused as narrower than the PSF (rule 5, a cosmic ray or artefact: nothing
detected without its sharp pixels), and the rows with the ARTEFACT qflag bit (a sharp pixel
within 3" of the centre), and the lowest neighbour ratio of any pixel of at least 15 sigma
(sharp below 0.15). Samples: real SDSS point sources, extended sources and blank sky
(``real_fields_dev.npz``), real SDSS QSO cutouts (``real_qso_iqvit_dev.npz``), simulated
objects (``simulate_object``, as the test survey), and real blank sky with one hot pixel
injected at the centre (r only, or all five bands).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = 32
DATA = ROOT.parent / "shared" / "data"


def lowest_ratio(crops, sigma):
    """The lowest (neighbours + 1 sigma) / (pixel - 2 sigma) of pixels >= 15 sigma near the
    centre, per crop (inf where there is none): below 0.15 a pixel is sharp."""
    from starqso.preprocessing.photometry import sky_levels
    from starqso.preprocessing.screening import (
        _ARTEFACT_ALLOWANCE,
        ARTEFACT_MIN_SNR,
        ARTEFACT_RADIUS_ARCSEC,
        _neighbour_mean,
    )
    from starqso.schema import PIXEL_SCALE_ARCSEC

    values = crops.astype(np.float64) - sky_levels(crops)[:, None, None, :]
    noise = sigma[:, None, None, :]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2.0
    near = (np.hypot(xx, yy) * PIXEL_SCALE_ARCSEC <= ARTEFACT_RADIUS_ARCSEC)[None, :, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ((_neighbour_mean(values) + _ARTEFACT_ALLOWANCE * noise / 2)
                 / (values - _ARTEFACT_ALLOWANCE * noise))
    ratio = np.where(near & (values >= ARTEFACT_MIN_SNR * noise), ratio, np.inf)
    return ratio.min(axis=(1, 2, 3))


def row(name, crops):
    """One table row: counts of the source checks on (N, S, S, 5) crops."""
    from starqso.preprocessing.screening import _failed_rules, _measured, narrower_than_psf

    crops = np.asarray(crops, np.float32)
    statistics = _measured(crops)
    rules = _failed_rules(*statistics)
    earlier = np.any([fails for rule, fails in rules.items() if rule != "artefact"], axis=0)
    newly = rules["artefact"] & ~earlier
    sharp = narrower_than_psf(crops, statistics[2])[0]
    lowest = lowest_ratio(crops, statistics[2])
    finite = lowest[np.isfinite(lowest)]
    shown = f"{finite.min():.3f}" if len(finite) else "-"
    return (f"| {name} | {len(crops)} | {int(earlier.sum())} | {int(newly.sum())} "
            f"({100 * newly.mean():.2f}%) | {int(sharp.sum())} ({100 * sharp.mean():.2f}%) "
            f"| {shown} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="simulated objects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fields", default=str(DATA / "real_fields_dev.npz"))
    parser.add_argument("--real-qso", default=str(DATA / "real_qso_iqvit_dev.npz"))
    args = parser.parse_args()

    from starqso.preprocessing import center_crop
    from starqso.simulate import simulate_object

    fields = np.load(args.fields)
    qsos = np.load(args.real_qso)
    channels_last = lambda images: np.moveaxis(images, 1, -1)  # noqa: E731
    point = fields["pointlike"]
    sky = channels_last(fields["sky_images"])
    objects = [simulate_object(i, args.seed, size=48) for i in range(args.n)]
    simulated = np.stack([center_crop(obj.cutout, SIZE) for obj in objects])
    cosmic = np.array([obj.info.get("artefact") == "cosmic_ray" for obj in objects])
    lines = ["| sample | rows | refused by rules 1-4 | newly refused: narrower than the PSF "
             "| ARTEFACT bit | lowest neighbour ratio |", "|---|---|---|---|---|---|",
             row("real SDSS point sources (real_fields_dev)", channels_last(
                 fields["images"][point])),
             row("real SDSS extended sources (real_fields_dev)", channels_last(
                 fields["images"][~point])),
             row("real SDSS QSOs (real_qso_iqvit_dev)", channels_last(qsos["images"])),
             row("real SDSS blank sky (real_fields_dev)", sky),
             row(f"simulated objects (seed {args.seed})", simulated),
             row("... of them with a simulated cosmic ray", simulated[cosmic])]
    centre = SIZE // 2
    for bands, label in (([2], "r"), (range(5), "ugriz")):
        for value in (5.0, 50.0, 5000.0):
            injected = sky.copy()
            for band in bands:
                injected[:, centre, centre, band] += value
            lines.append(row(f"real blank sky + hot pixel {value:g} nmgy in {label}",
                             injected))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
