"""Simulate a survey: paired cutouts, spectra and a catalogue, grounded in real SDSS rows.

Each object is drawn from the real SDSS STAR/QSO catalogue shipped with the package (class,
ugriz, redshift), jittered slightly so repeated draws differ, then given a spectrum
(:mod:`starqso.simulate.spectra`), observed by the SDSS or BOSS spectrograph
(:mod:`starqso.simulate.spectrograph`) and imaged (:mod:`starqso.simulate.images`).

A fraction HIGH_Z_QSO_FRACTION of the QSOs is not a catalogue row but a synthetic high-redshift
QSO (z uniform in HIGH_Z_RANGE, spectrum from :func:`starqso.simulate.spectra.
high_z_qso_spectrum`, r magnitude drawn from the real catalogue's z > 2.75 QSOs): the
developer catalogue holds only 146 of its 2,052 QSOs above z 2.75, where real completeness
falls (0.57 at z 3.5-4, 0.18 at z 4.5-5).

Object ``i`` of seed ``s`` uses its own random stream ``default_rng([s, i])``, so an object does
not depend on how many were asked for, and the same seed gives the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import multiprocessing
import os
import pathlib
import re
from dataclasses import dataclass, field

import numpy as np

from starqso._util.ownership import MARKER, output_folder, shown_entries
from starqso.errors import InputError
from starqso.io import Spectrum, write_catalog, write_cutout, write_sdss_spectrum
from starqso.simulate import resources
from starqso.simulate.dust import band_extinction, spectrum_extinction
from starqso.simulate.images import render_cutout
from starqso.simulate.injection import choose_background
from starqso.simulate.photometry import magnitudes_to_nanomaggies, nanomaggies_to_magnitudes
from starqso.simulate.spectra import (
    common_grid,
    high_z_qso_spectrum,
    photometer,
    qso_spectrum,
    star_spectrum,
)
from starqso.simulate.spectrograph import observe_spectrum

REDSHIFT_RANGE = (0.1, 5.0)
# Fraction of QSOs drawn from the synthetic high-redshift population, and its redshift range.
HIGH_Z_QSO_FRACTION = 0.25
HIGH_Z_RANGE = (2.7, 5.0)
# Catalogue QSOs above this redshift supply the high-z population's r magnitudes.
HIGH_Z_CATALOGUE_MIN = 2.75
# The side stream deciding whether an object is a galaxy (simulate_object's galaxy_fraction).
GALAXY_STREAM = 19


@dataclass
class SimulatedObject:
    """One simulated object.

    Attributes:
        id: identifier, unique within a simulation.
        label: "STAR" or "QSO".
        redshift: true redshift (about 0 for stars).
        mags: true ugriz AB magnitudes of the object as imaged, shape (5,).
        cutout: float32 (5, size, size) nanomaggies.
        spectrum: dict from :func:`starqso.simulate.spectrograph.observe_spectrum`.
        info: provenance and observing conditions (template, seeing, ...).
    """

    id: str
    label: str
    redshift: float
    mags: np.ndarray
    cutout: np.ndarray
    spectrum: dict
    info: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def _population():
    catalogue = resources.sdss_pointsources()
    stars = np.flatnonzero(catalogue["label"] == "STAR")
    qsos = np.flatnonzero((catalogue["label"] == "QSO")
                          & (catalogue["redshift"] >= REDSHIFT_RANGE[0])
                          & (catalogue["redshift"] <= REDSHIFT_RANGE[1]))
    return catalogue, stars, qsos


@functools.lru_cache(maxsize=1)
def _high_z_r_magnitudes():
    catalogue, _, qsos = _population()
    return catalogue["mags"][qsos[catalogue["redshift"][qsos] > HIGH_Z_CATALOGUE_MIN], 2]


@functools.lru_cache(maxsize=1)
def _pooled_r_magnitudes():
    catalogue, stars, qsos = _population()
    return catalogue["mags"][np.concatenate([stars, qsos]), 2]


def real_qso_fraction():
    """Fraction of QSOs among the real catalogue's STAR + QSO rows used by the simulator."""
    _, stars, qsos = _population()
    return len(qsos) / (len(stars) + len(qsos))


@functools.lru_cache(maxsize=1)
def _kpc_per_arcsec_table():
    from astropy.cosmology import Planck18

    redshifts = np.linspace(0.01, 5.0, 200)
    return redshifts, Planck18.kpc_proper_per_arcmin(redshifts).value / 60.0


def simulate_object(index, seed, size=48, qso_fraction=None, id_width=6,
                    high_z_fraction=None, backgrounds=None, background_fraction=0.0,
                    reddening=None, crowding=None, brightness=None, galaxy_fraction=0.0):
    """Simulate object number ``index`` of the simulation with ``seed``.

    Args:
        index: object number (0-based).
        seed: simulation seed.
        size: cutout side in pixels.
        qso_fraction: probability that the object is a QSO; the real catalogue's fraction
            (about 0.30) when None.
        id_width: zero padding of the numeric part of the id.
        high_z_fraction: probability that a QSO is a synthetic high-redshift one (z in
            HIGH_Z_RANGE); HIGH_Z_QSO_FRACTION when None.
        backgrounds: real blank-sky cutouts of side ``size``
            (:class:`starqso.simulate.injection.Backgrounds`) to inject the object into, or
            None for simulated sky.
        background_fraction: probability that the object is injected into one of
            ``backgrounds`` (drawn from a side stream: objects that are not injected are
            exactly those of a simulation without backgrounds).
        reddening: a :class:`starqso.simulate.dust.Reddening`: the object may be seen through
            Galactic dust (drawn from a side stream; its E(B-V) is ``info["galactic_ebv"]``
            and the catalogue's ``ebv``), or None for no dust.
        crowding: a :class:`starqso.simulate.dust.Crowding`: the object's field may hold
            more neighbours (side stream; ``info["neighbour_density"]``), or None.
        brightness: a :class:`starqso.simulate.brightness.Brightness`: the object's r
            magnitude may be redrawn from both classes' pooled magnitudes, its colours kept,
            and a synthetic high-redshift QSO's from the survey's range (side streams), or
            None.
        galaxy_fraction: probability that the object is a GALAXY instead (drawn from a side
            stream: with 0, every object is what it was): a real galaxy row with a Sérsic
            shape and its fibre spectrum (:mod:`starqso.simulate.galaxies`), seen through
            the same ``backgrounds``, ``reddening`` and ``crowding`` as a point source.

    Returns:
        :class:`SimulatedObject`.
    """
    if galaxy_fraction > 0 and np.random.default_rng(
            [seed, index, GALAXY_STREAM]).random() < galaxy_fraction:
        return _simulate_galaxy_object(index, seed, size, id_width, backgrounds,
                                       background_fraction, reddening, crowding)
    rng = np.random.default_rng([seed, index])
    catalogue, stars, qsos = _population()
    if qso_fraction is None:
        qso_fraction = real_qso_fraction()
    if high_z_fraction is None:
        high_z_fraction = HIGH_Z_QSO_FRACTION
    is_qso = rng.random() < qso_fraction
    row = rng.choice(qsos if is_qso else stars)
    # Jitter: a common magnitude shift and small colour changes, so each draw of a row differs.
    mags = catalogue["mags"][row] + rng.normal(0.0, 0.1) + rng.normal(0.0, 0.02, size=5)
    # Drawn for every object (used by QSOs only), so streams do not depend on the fraction.
    high_z = bool(rng.random() < high_z_fraction) and is_qso
    new_r = None if brightness is None else brightness.draw(seed, index, _pooled_r_magnitudes())
    if new_r is not None:
        mags = mags + (new_r - mags[2])
    if high_z:
        redshift = float(rng.uniform(*HIGH_Z_RANGE))
        r_mag = rng.choice(_high_z_r_magnitudes()) + rng.normal(0.0, 0.15)
        if new_r is not None:
            r_mag = new_r
        elif brightness is not None:
            # Drawn after the catalogue's, from a side stream: the main stream is unchanged.
            high_z_r = brightness.draw_high_z(seed, index)
            r_mag = r_mag if high_z_r is None else high_z_r
        model = high_z_qso_spectrum(r_mag, redshift, rng)
    elif is_qso:
        redshift = float(np.clip(catalogue["redshift"][row]
                                 + rng.normal(0.0, 0.01) * (1 + catalogue["redshift"][row]),
                                 *REDSHIFT_RANGE))
        model = qso_spectrum(mags, redshift, rng)
    else:
        redshift = float(rng.normal(0.0, 1e-4))  # radial velocities of tens of km/s
        model = star_spectrum(mags, rng)

    point = photometer().nanomaggies(model.point_flux)
    host = photometer().nanomaggies(model.flux - model.point_flux)
    galactic_ebv = 0.0 if reddening is None else reddening.draw(seed, index)
    spectrum_flux = model.flux
    if galactic_ebv > 0:
        # Foreground dust dims the source and its host alike, before the telescope.
        dimming = 10.0 ** (-0.4 * band_extinction(galactic_ebv))
        point, host = point * dimming, host * dimming
        spectrum_flux = model.flux * 10.0 ** (-0.4 * spectrum_extinction(common_grid(),
                                                                           galactic_ebv))
    host_radius = 1.0
    if model.host_fraction > 0:
        table_z, table_scale = _kpc_per_arcsec_table()
        host_radius = rng.uniform(2.0, 6.0) / np.interp(redshift, table_z, table_scale)
    density, background = _field(seed, index, backgrounds, background_fraction, crowding)
    cutout, conditions = render_cutout(
        rng, size, point, host if model.host_fraction > 0 else None, host_radius,
        star_mags=catalogue["mags"][stars], background=background,
        neighbour_density=density, neighbour_ebv=galactic_ebv)

    # Spectra are taken at another epoch with their own flux calibration: QSOs vary by about
    # 0.1 mag over years, and SDSS spectrophotometry is good to about 5%.
    epoch_shift = rng.normal(0.0, 0.05) + (rng.normal(0.0, 0.12) if is_qso else 0.0)
    spectrum = observe_spectrum(common_grid(), spectrum_flux * 10.0 ** (-0.4 * epoch_shift), rng)
    info = {
        "template": model.template,
        "sdss_row": "synthetic-high-z" if high_z else str(catalogue["sdss_id"][row]),
        "population": "high_z" if high_z else ("catalogue" if is_qso else "star"),
        "host_fraction": model.host_fraction,
        "ebv": model.ebv,
        "galactic_ebv": galactic_ebv,
        "neighbour_density": density,
        "r_redrawn": new_r is not None,
        "spectrograph": spectrum["spectrograph"],
        **conditions,
    }
    return SimulatedObject(
        id=f"sim-{index:0{id_width}d}",
        label="QSO" if is_qso else "STAR",
        redshift=redshift,
        mags=nanomaggies_to_magnitudes(point + host),
        cutout=cutout,
        spectrum=spectrum,
        info=info,
    )


def _field(seed, index, backgrounds, background_fraction, crowding):
    """Object ``index``'s field, from side streams: ``(neighbour density, real blank-sky
    background or None)``."""
    density = 1.0 if crowding is None else crowding.draw(seed, index)
    background = None
    if backgrounds is not None:
        number = choose_background(seed, index, background_fraction, len(backgrounds))
        background = None if number is None else backgrounds[number]
    return density, background


def _simulate_galaxy_object(index, seed, size, id_width, backgrounds, background_fraction,
                            reddening, crowding):
    """Object ``index`` of ``seed`` as a galaxy (:func:`simulate_object`'s GALAXY branch)."""
    from starqso.simulate.galaxies import (
        draw_galaxy,
        fibre_spectrum,
        galaxy_info,
        neighbour_star_mags,
    )

    rng = np.random.default_rng([seed, index, GALAXY_STREAM, 1])
    row, mags, redshift, shape = draw_galaxy(rng)
    flux = magnitudes_to_nanomaggies(mags)
    galactic_ebv = 0.0 if reddening is None else reddening.draw(seed, index)
    dimming = None
    if galactic_ebv > 0:
        flux = flux * 10.0 ** (-0.4 * band_extinction(galactic_ebv))
        dimming = 10.0 ** (-0.4 * spectrum_extinction(common_grid(), galactic_ebv))
    density, background = _field(seed, index, backgrounds, background_fraction, crowding)
    cutout, conditions = render_cutout(
        rng, size, np.zeros(5), flux, shape["half_light_radius_arcsec"],
        star_mags=neighbour_star_mags(), host_sersic_index=shape["sersic_index"],
        host_axis_ratio=shape["axis_ratio"], host_angle=shape["angle"],
        background=background, neighbour_density=density, neighbour_ebv=galactic_ebv)
    info = {**galaxy_info(row, shape), "population": "galaxy", "host_fraction": 1.0,
            "galactic_ebv": galactic_ebv, "neighbour_density": density, **conditions}
    spectrum = fibre_spectrum(rng, mags, redshift, shape, info, dimming)
    info["spectrograph"] = spectrum["spectrograph"]
    return SimulatedObject(id=f"sim-{index:0{id_width}d}", label="GALAXY", redshift=redshift,
                           mags=nanomaggies_to_magnitudes(flux), cutout=cutout,
                           spectrum=spectrum, info=info)


def _write_object(outdir, index, seed, size, qso_fraction, id_width, reddening=None,
                  galaxy_fraction=0.0):
    """Simulate one object, write its cutout and spectrum, return its catalogue row."""
    obj = simulate_object(index, seed, size, qso_fraction, id_width=id_width,
                          reddening=reddening, galaxy_fraction=galaxy_fraction)
    image = f"images/{obj.id}.fits"
    spectrum_file = f"spectra/{obj.id}.fits"
    write_cutout(outdir / image, obj.cutout, overwrite=True, header={
        "OBJID": obj.id, "SEED": seed, "SIMULATD": True,
        "PSFFWHMR": round(obj.info["psf_fwhm_r"], 4)})
    write_sdss_spectrum(outdir / spectrum_file, Spectrum(
        wavelength=obj.spectrum["wavelength"], flux=obj.spectrum["flux"],
        ivar=obj.spectrum["ivar"], mask=obj.spectrum["and_mask"] != 0,
        meta={"plate": 0, "mjd": 0, "fiberid": index + 1, "object_class": obj.label,
              "redshift": obj.redshift}),
        and_mask=obj.spectrum["and_mask"], overwrite=True)
    return {
        "id": obj.id, "image": image, "spectrum": spectrum_file, "label": obj.label,
        "redshift": round(obj.redshift, 6),
        **{band: round(float(mag), 5) for band, mag in zip("ugriz", obj.mags, strict=False)},
        # A galaxy's colours come from a real catalogue galaxy row (galaxy_row).
        "template": obj.info["template"],
        "sdss_row": obj.info["sdss_row"] if "sdss_row" in obj.info else obj.info["galaxy_row"],
        "psf_fwhm_r": round(obj.info["psf_fwhm_r"], 4),
        "sky_sigma_r": round(obj.info["sky_sigma_r"], 5),
        "noise_scale": round(float(np.mean(obj.info["noise_scale"])), 4),
        "correlated_noise": obj.info["correlated_noise"],
        "saturated": obj.info["saturated"], "artefact": obj.info["artefact"],
        "population": obj.info["population"],
        "psf_kind": obj.info["psf_kind"], "n_neighbours": obj.info["n_neighbours"],
        "host_fraction": round(obj.info["host_fraction"], 4),
        "spectrograph": obj.info["spectrograph"],
        "ebv": round(obj.info["galactic_ebv"], 5),
    }


@dataclass(frozen=True)
class SurveySummary:
    """What :func:`simulate_survey` wrote: the catalogue and its class counts."""

    catalog: pathlib.Path
    num_objects: int
    num_qso: int
    num_star: int
    num_galaxy: int = 0


def _write_chunk(task):
    outdir, indices, seed, size, qso_fraction, id_width, reddening, galaxy_fraction = task
    return [_write_object(outdir, index, seed, size, qso_fraction, id_width, reddening,
                          galaxy_fraction)
            for index in indices]


def simulate_survey(outdir, num_objects, seed=0, size=48, qso_fraction=None, overwrite=False,
                    progress=None, workers=None, reddening=None, galaxy_fraction=0.0):
    """Write a simulated survey: ``catalog.csv``, ``images/*.fits`` and ``spectra/*.fits``.

    Args:
        outdir: output folder (created).
        num_objects: number of objects.
        seed: random seed; the same seed gives byte-identical files whatever ``workers`` is.
        size: cutout side in pixels (>= 16).
        qso_fraction: QSO probability; the real catalogue's (about 0.30) when None.
        overwrite: replace an existing simulation in ``outdir``: every file it made is
            removed first; a folder that also holds anything else is refused.
        progress: optional callable called with the number of objects done so far.
        workers: processes to use; all CPU cores (at most 8) when None.
        reddening: a :class:`starqso.simulate.dust.Reddening` (the catalogue's ``ebv``
            column is each object's E(B-V), 0 when not reddened); None: no dust.
        galaxy_fraction: probability that an object is a GALAXY (:func:`simulate_object`);
            0 (the default) writes exactly the STAR/QSO simulation of before.

    Returns:
        :class:`SurveySummary`: the catalogue's path and how many objects of each class.

    Raises:
        InputError: for a bad argument (``seed`` < 0 included), an existing simulation
            without ``overwrite``, or an ``outdir`` that holds anything but a simulation
            (see :mod:`starqso._util.ownership`).

    Example:
        >>> simulate_survey("demo", 10, seed=1).catalog  # doctest: +SKIP
        PosixPath('demo/catalog.csv')
    """
    if num_objects < 1:
        raise InputError(f"--n must be at least 1. Received: n={num_objects}")
    if size < 16:
        raise InputError(f"--size must be at least 16 pixels. Received: size={size}")
    if qso_fraction is not None and not 0.0 <= qso_fraction <= 1.0:
        raise InputError(f"--qso-fraction must be within [0, 1]. Received: {qso_fraction}")
    if not 0.0 <= galaxy_fraction < 1.0:
        raise InputError(f"--galaxy-fraction must be within [0, 1). Received: "
                         f"{galaxy_fraction}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1. Received: workers={workers}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        # NumPy seeds are non-negative whole numbers; checked before any folder is made.
        raise InputError(f"--seed must be a whole number >= 0. Received: seed={seed}")

    # OUTDIR must be new, empty or a simulation (see starqso._util.ownership), one run at a time.
    with output_folder(outdir, "simulate", option="OUTDIR", mark=True):
        return _simulate_into(pathlib.Path(outdir), num_objects, int(seed), size,
                              qso_fraction, overwrite, progress, workers, reddening,
                              galaxy_fraction)


_MADE_NAMES = re.compile(r"sim-\d+\.fits")


def _previous_simulation(outdir: pathlib.Path) -> list[pathlib.Path]:
    """Every file an earlier ``simulate`` made in ``outdir``, checked before any is removed.

    Those are its catalogue, the cutouts and spectra the catalogue lists and any other
    ``sim-NNNNNN.fits`` in ``images/`` and ``spectra/`` (an earlier, larger run's). Anything
    else in the folder is a user's: then nothing is removed and the run is refused.

    Raises:
        InputError: ``outdir`` holds something simulate did not make, or ``images/`` /
            ``spectra/`` is not a plain folder (a link would send the removal elsewhere).
    """
    catalog_path = outdir / "catalog.csv"
    listed = set()
    try:
        with open(catalog_path, newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                listed.update(row.get(key) or "" for key in ("image", "spectrum"))
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # an unreadable catalogue: the names alone decide
    made, foreign = [catalog_path] if catalog_path.is_file() else [], []
    for entry in sorted(os.listdir(outdir)):
        path = outdir / entry
        if entry in (MARKER, "catalog.csv"):
            continue
        if entry not in ("images", "spectra") or path.is_symlink() or not path.is_dir():
            foreign.append(entry)
            continue
        for name in sorted(os.listdir(path)):
            inside = path / name
            if (f"{entry}/{name}" in listed or _MADE_NAMES.fullmatch(name)) \
                    and inside.is_file() and not inside.is_symlink():
                made.append(inside)
            else:
                foreign.append(f"{entry}/{name}")
    if foreign:
        shown = shown_entries(foreign)
        raise InputError(f"--overwrite replaces only what `starqso simulate` made, and "
                         f"{outdir} also holds {shown}; move those away or choose another "
                         f"folder. Nothing was removed. Received: outdir={outdir}")
    return made


def _simulate_into(outdir, num_objects, seed, size, qso_fraction, overwrite, progress,
                   workers, reddening=None, galaxy_fraction=0.0):
    from astropy.table import Table

    catalog_path = outdir / "catalog.csv"
    if catalog_path.exists() and not overwrite:
        raise InputError(f"{catalog_path} already exists; choose another folder or pass "
                         f"--overwrite. Received: outdir={outdir}")
    if overwrite:
        # All of the previous simulation goes, so no cutout of a larger earlier run stays
        # beside the new catalogue; the catalogue first, so a folder never has a catalogue
        # naming removed files.
        for path in _previous_simulation(outdir):
            path.unlink()
    for name in ("images", "spectra"):
        sub = outdir / name
        # Never written through: a link would send the cutouts into its target (a user's
        # folder, whose sim-000001.fits would be replaced).
        if sub.is_symlink() or (os.path.lexists(sub) and not sub.is_dir()):
            kind = f"a symbolic link to {os.readlink(sub)}" if sub.is_symlink() else "a file"
            raise InputError(f"{sub} is {kind}, not a folder simulate made; simulate writes "
                             f"only into its own folders: remove it or choose another "
                             f"folder. Received: outdir={outdir}")
        sub.mkdir(exist_ok=True)

    id_width = max(6, len(str(num_objects - 1)))
    chunk = 50
    tasks = [(outdir, range(start, min(start + chunk, num_objects)), seed, size, qso_fraction,
              id_width, reddening, galaxy_fraction) for start in range(0, num_objects, chunk)]
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    workers = min(workers, len(tasks))
    rows = []
    if workers == 1:
        results = map(_write_chunk, tasks)
        executor = None
    else:
        # Spawned (not forked) workers: safe even when the caller has imported TensorFlow.
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
        results = executor.map(_write_chunk, tasks)
    try:
        for chunk_rows in results:
            rows.extend(chunk_rows)
            if progress is not None:
                progress(len(rows))
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    # The catalogue is written last and atomically: its presence means the simulation is whole.
    write_catalog(Table(rows=rows, names=list(rows[0])), catalog_path, overwrite=True)
    labels = [row["label"] for row in rows]
    return SurveySummary(catalog_path, len(rows), labels.count("QSO"), labels.count("STAR"),
                         labels.count("GALAXY"))
