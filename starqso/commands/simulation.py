"""``starqso simulate`` and ``starqso skies``: simulated surveys, and real blank skies to
inject them into."""

from __future__ import annotations

import time

import click

from starqso.commands.shared import LazyProgress, command_line, log_to_stderr
from starqso.errors import InputError

#: ``simulate --size`` range: the sky simulator's smallest cutout, and 256 pixels (101"), far
#: more than a point source and its sky need; each object costs time and memory growing with
#: the square of the side (5 s per object at 256 on one core, 4x supersampled).
SIMULATE_SIZE_RANGE = (16, 256)


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--n", "num_objects", default=1000, show_default=True, type=int,
              help="Number of objects to simulate.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed; the same seed gives byte-identical files.")
@click.option("--size", default=48, show_default=True, type=int,
              help="Cutout side in pixels (0.396\"/px), 16 to 256.")
@click.option("--qso-fraction", default=None, type=float,
              help="Fraction of QSOs [default: the real SDSS catalogue's, about 0.30].")
@click.option("--galaxy-fraction", default=0.0, show_default=True, type=float,
              help="Fraction of galaxies (Sersic bulge + disc, real catalogue colours, "
                   "kcorrect spectra); 0 simulates stars and QSOs only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing simulation in OUTDIR.")
@click.option("--workers", default=None, type=int,
              help="Processes to use [default: all CPU cores, at most 8].")
def simulate(outdir, num_objects, seed, size, qso_fraction, galaxy_fraction, overwrite,
             workers):
    """Simulate SDSS-like cutouts, spectra and a catalogue into OUTDIR.

    Writes OUTDIR/catalog.csv, OUTDIR/images/*.fits (5-band cutouts) and
    OUTDIR/spectra/*.fits (SDSS spec format), one pair per object, drawn from real SDSS
    catalogue rows and real stellar / QSO spectra.
    """
    from starqso.simulate import simulate_survey

    low, high = SIMULATE_SIZE_RANGE
    if not low <= size <= high:
        raise InputError(f"--size must be between {low} and {high} pixels ({high} px is 101\" "
                         f"at 0.396\"/px, far more than a point source needs; the cost per "
                         f"object grows with the square of the side). Received: size={size}")
    start = time.perf_counter()
    with LazyProgress(num_objects, "simulating") as progress:
        summary = simulate_survey(outdir, num_objects, seed=seed, size=size,
                                  qso_fraction=qso_fraction, overwrite=overwrite,
                                  progress=progress, workers=workers,
                                  galaxy_fraction=galaxy_fraction)
    galaxies = f", {summary.num_galaxy} GALAXY" if galaxy_fraction > 0 else ""
    click.echo(f"simulated {summary.num_objects} objects ({summary.num_qso} QSO, "
               f"{summary.num_star} STAR{galaxies}) in {time.perf_counter() - start:.1f} s -> "
               f"{summary.catalog}")


@click.command()
@click.argument("frames", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The sky-background file to write (.npz; new, or an earlier `starqso "
                   "skies` output).")
@click.option("--count", default=200, show_default=True, type=int,
              help="Blank cutouts per field, at most (they never overlap).")
@click.option("--size", default=48, show_default=True, type=int,
              help="Cutout side in pixels (fit's default data.cutout_size).")
@click.option("--detect-sigma", default=5.0, show_default=True, type=float,
              help="Detection threshold, in sigmas of the smoothed sky noise.")
@click.option("--blank-radius", default=4.0, show_default=True, type=float,
              help="No detected pixel, in any band, within this many pixels of a centre.")
@click.option("--seed", default=0, show_default=True, type=int)
def skies(frames, out, count, size, detect_sigma, blank_radius, seed):
    """Real blank-sky cutouts, PSF FWHM and sky sigma from your own survey FRAMES.

    FRAMES are FITS images with a WCS in nanomaggies (SDSS corrected frames), one per band and
    field: five files (frame-u-... frame-z-..., or any five in the order u g r i z), or
    folders of them. A file's band comes from its FILTER card or a lone band letter in its
    name (frame-r-004510-4-0030.fits.bz2, field7_r.fits); files whose names differ only in
    that letter form one field, so a folder may hold many fields (in a folder, FITS files
    without a band letter, such as a catalogue, are skipped when others have one).

    Per field and band: sources detected at --detect-sigma (photutils), the sky sigma, and
    the PSF FWHM from the field's own isolated bright stars. Up to --count cutout centres with
    no source within --blank-radius pixels are cut from every band on the r frame's pixel
    grid. Needs photutils (pip install "starqso[train]").

    Example: starqso skies frames/frame-*-004510-4-0030.fits.bz2 --out skies.npz
    """
    from starqso.preprocessing.sky_backgrounds import make_sky_file

    result = make_sky_file(list(frames), out, log=log_to_stderr,
                           count=count, size=size, seed=seed, detect_sigma=detect_sigma,
                           blank_radius_px=blank_radius, command=command_line())
    click.echo(f"{len(result.images)} blank-sky cutouts of {result.size}x{result.size} from "
               f"{len(result.fields)} field{'s' if len(result.fields) != 1 else ''} -> {out}")
