"""The developer fields' blank real sky as a sky-background file for `fit --sky-backgrounds`.

    python benchmarks/dev_skies.py ../shared/data/real_fields_dev.npz --out /tmp/dev_skies.npz
    starqso fit --preset large --config cutout32.yaml --sky-backgrounds /tmp/dev_skies.npz ...

``real_fields_dev.npz`` (its README section says how it was cut) holds 200 blank 32x32 cutouts
of each of six SDSS fields, cut by WCS around r positions, with one PSF FWHM per field (about
twice the r half-light radius of its bright stars) and each band's frame sky sigma (cutouts
with non-finite pixels, past a frame's edge, are left out); its frames
are not all here, so ``starqso skies`` cannot remake it. This script writes the same cutouts
in the format ``starqso skies`` writes (:mod:`starqso.io.skies`), so ``fit`` can inject into
them. The per-band FWHM is the field's r value times the simulator's band-to-band FWHM ratios
(:func:`starqso.simulate.resources.noise_calibration`, measured on real SDSS fields), since
the file records only r, and the r value is scaled from twice the half-light radius to the FWHM
(:data:`HALF_LIGHT_TO_FWHM`). The cutouts are 32x32: ``data.cutout_size`` must be at most 32.

The data are SDSS frames from a repository without a licence file: the output is for
developers' training runs, never for the package (the model card names what was used).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys

import numpy as np

# The file's field_fwhm_arcsec is twice the r half-light radius of bright stars, which the
# PSF's wings make larger than its FWHM: on field 4510-4-30, the one whose frames and star
# catalogue are here, it is 1.492" while SDSS's PSF_FWHM of the catalogue stars has a median of
# 1.069" in r (benchmarks/results/skies.md; starqso skies measures 1.083"). The same ratio is
# applied to every field.
HALF_LIGHT_TO_FWHM = 1.069 / 1.492


def blank_half(sky_field, half):
    """Which blank-sky cutouts are in ``half`` ("all", "even" or "odd").

    The halves alternate within each field (the 1st, 3rd, ... blank cutout of a field is even),
    so that a model trained on one half's backgrounds can be scored on the other half's blank
    sky of the same six fields (``benchmarks/real_fields.py --blank-half``).
    """
    sky_field = np.asarray(sky_field, dtype=str)
    if half == "all":
        return np.ones(len(sky_field), bool)
    index = np.zeros(len(sky_field), np.int64)
    for name in np.unique(sky_field):
        rows = np.flatnonzero(sky_field == name)
        index[rows] = np.arange(len(rows))
    return index % 2 == (0 if half == "even" else 1)


def dev_skies(path, half="all"):
    """:class:`starqso.io.skies.SkyBackgrounds` of ``real_fields_dev.npz``'s blank sky."""
    from starqso import __version__
    from starqso.io.skies import SkyBackgrounds
    from starqso.schema import BANDS
    from starqso.simulate import resources

    data = np.load(path)
    fields = np.asarray(data["fields"], dtype=str)
    ratios = np.asarray(resources.noise_calibration()["psf_fwhm_band_ratio"], np.float64)
    fwhm = (np.asarray(data["field_fwhm_arcsec"], np.float64)[:, None] * HALF_LIGHT_TO_FWHM
            * ratios / ratios[2])
    sigma = np.stack([np.asarray(data[f"field_sky_sigma_{band}"], np.float64)
                      for band in BANDS], axis=1)
    images = np.asarray(data["sky_images"], np.float32)
    # A few cutouts (5 of 1,200) reach past a frame's edge in some band (NaN): left out.
    keep = np.isfinite(images).all(axis=(1, 2, 3)) & blank_half(data["sky_field"], half)
    count = int(keep.sum())
    centre_ra = np.array([np.mean(data["ra"][data["field"] == name]) for name in fields])
    centre_dec = np.array([np.mean(data["dec"][data["field"] == name]) for name in fields])
    return SkyBackgrounds(
        images=images[keep], field=np.asarray(data["sky_field"], dtype=str)[keep],
        x=np.full(count, np.nan), y=np.full(count, np.nan), ra=np.full(count, np.nan),
        dec=np.full(count, np.nan), fields=fields, psf_fwhm_arcsec=fwhm,
        psf_stars=np.full((len(fields), len(BANDS)), -1), sky_sigma=sigma,
        sky_level=np.zeros((len(fields), len(BANDS))),
        frame_files=np.array([[f"frame-{band}-{name}.fits.bz2" for band in BANDS]
                              for name in fields]),
        frame_sha256=np.full((len(fields), len(BANDS)), ""),
        alignment=np.full((len(fields), len(BANDS)), "resample"),
        centre_ra=centre_ra, centre_dec=centre_dec, detect_sigma=5.0, blank_radius_px=4.0,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command="python benchmarks/dev_skies.py " + shlex.join(sys.argv[1:]),
        starqso_version=__version__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_fields", help="real_fields_dev.npz")
    parser.add_argument("--out", required=True, help="sky-background file to write (.npz)")
    parser.add_argument("--half", choices=("all", "even", "odd"), default="all",
                        help="every blank cutout, or every other one of each field (default all)")
    args = parser.parse_args(argv)

    from starqso.io.skies import check_output, read_skies, write_skies

    out = check_output(args.out, [args.real_fields])
    write_skies(out, dev_skies(args.real_fields, args.half))
    skies = read_skies(out)
    print(f"{len(skies.images)} blank-sky cutouts of {skies.size}x{skies.size} from "
          f"{len(skies.fields)} fields ({', '.join(skies.fields)}) -> {out}")


if __name__ == "__main__":
    main()
