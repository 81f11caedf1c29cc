"""Build starqso's package data (``starqso/resources``) from the project's shared real data.

Run once by developers, never at install or run time:

    python tools/build_package_data.py --shared ../shared/data

It trims the shared files to what the simulator uses and derives its calibrations:

* ``star_library.npz``: real MILES/STELIB stellar spectra and stacked SDSS/BOSS/MaStar stellar
  templates on the common grid, gaps and ends filled (see ``fill_star``), kept only when they
  are among the nearest colour matches of real SDSS catalogue stars.
* ``qso_archetypes.npz``: the 64 redrock QSO archetypes (rest frame), negative PCA pixels
  clipped to zero.
* ``host_galaxy.npz``: old and young stellar-population SEDs for low-redshift QSO hosts,
  built from the stacked stellar templates.
* ``sdss_pointsources.csv.gz``: the real SDSS STAR and QSO catalogue rows (ugriz, redshift).
* ``noise_calibration.npz``: SDSS spectral noise (sky variance curve and photon term, fitted to
  the real SDSS spectra) and image sky noise per band. The sky noise the simulator uses
  (``image_sky_sigma``) is measured on the 1,861 real SDSS QSO cutouts of
  ``real_qso_iqvit_dev.npz`` (Valar-hub/IQVIT, SDSS public data; only these per-band summary
  numbers are kept, no pixels): 1.4826 x MAD of the 6-px border of each 32x32 cutout, median
  over cutouts. Those cutouts are cut from each band's own frame (white noise: lag-1
  autocorrelation <= 0.02). The older Kim & Brunner measurement is kept as
  ``image_sky_sigma_kim_brunner``: those cutouts were resampled onto the r grid, which lowered
  the per-pixel sigma of u, g, i, z by 1.4-1.5x (lag-1 autocorrelation 0.2-0.45, r: 0.03).

    python tools/build_package_data.py --shared ../shared/data --only noise_calibration
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import pathlib
import warnings

import numpy as np

from starqso.simulate.photometry import Photometer

RESOURCES = pathlib.Path(__file__).resolve().parents[1] / "starqso" / "resources"
# SDSS asinh-magnitude softening parameters b (Lupton et al. 1999), ugriz.
LUPTITUDE_SOFTENING = np.array([1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10])
NEAREST_TEMPLATES_KEPT = 8


def check_sums(shared):
    sums = json.loads((shared / "SHA256SUMS.json").read_text())
    for name, expected in sums.items():
        digest = hashlib.sha256((shared / name).read_bytes()).hexdigest()
        if digest != expected:
            raise SystemExit(f"checksum mismatch for {name}")


def edge_power_law(wave, flux, valid, side, width=250.0):
    """Log-log slope fitted to the ``width`` Angstrom of valid flux nearest one end."""
    index = np.flatnonzero(valid)
    end = index[0] if side == "blue" else index[-1]
    if side == "blue":
        window = valid & (wave <= wave[end] + width)
    else:
        window = valid & (wave >= wave[end] - width)
    window &= flux > 0
    if window.sum() < 5:
        return wave[end], max(flux[end], 1e-6), 0.0
    slope, intercept = np.polyfit(np.log(wave[window]), np.log(flux[window]), 1)
    # Clip: a few spectra end on a line or a noisy edge; real SEDs are not steeper than this.
    slope = float(np.clip(slope, -6.0, 8.0))
    anchor = np.exp(np.median(np.log(flux[window]) - slope * np.log(wave[window])))
    return wave[end], anchor * wave[end] ** slope, slope


def extend_power_law(wave, flux, valid):
    """Fill invalid pixels beyond the valid range with power laws fitted at each end."""
    out = flux.copy()
    index = np.flatnonzero(valid)
    for side, beyond in (("blue", wave < wave[index[0]]), ("red", wave > wave[index[-1]])):
        end_wave, end_flux, slope = edge_power_law(wave, flux, valid, side)
        out[beyond] = end_flux * (wave[beyond] / end_wave) ** slope
    return out


def fill_from_template(wave, flux, valid, template):
    """Fill invalid pixels with a template scaled to match the nearby valid flux."""
    out = flux.copy()
    invalid = ~valid
    # Runs of invalid pixels; each is filled with the template scaled by the flux ratio in the
    # 300 Angstrom of valid data on each side (linearly interpolated across interior gaps).
    starts = np.flatnonzero(invalid & ~np.r_[False, invalid[:-1]])
    stops = np.flatnonzero(invalid & ~np.r_[invalid[1:], False]) + 1
    for start, stop in zip(starts, stops, strict=False):
        ratios = []
        for side_slice in (slice(max(start - 400, 0), start), slice(stop, stop + 400)):
            side_valid = valid[side_slice] & (template[side_slice] > 0)
            side_wave = wave[side_slice][side_valid]
            if side_wave.size >= 5 and np.ptp(side_wave) > 100:
                ratios.append(np.median(flux[side_slice][side_valid]
                                        / template[side_slice][side_valid]))
            else:
                ratios.append(None)
        left, right = ratios
        if left is None and right is None:
            scale = np.full(stop - start, np.median(flux[valid] / template[valid]))
        elif left is None or right is None:
            scale = np.full(stop - start, left if right is None else right)
        else:
            scale = np.linspace(left, right, stop - start)
        out[start:stop] = template[start:stop] * scale
    return out


def normalise(wave, flux):
    window = (wave >= 5400) & (wave <= 5600)
    return flux / np.median(flux[window])


def build_star_library(shared, photometer, catalogue):
    stacked = np.load(shared / "stars_stacked_templates.npz")
    observed = np.load(shared / "stars_observed_libraries.npz")
    wave = stacked["wave"]

    templates, names, classes, families = [], [], [], []
    for flux, ident, spclass, family in zip(stacked["flux"], stacked["id"], stacked["spclass"],
                                            stacked["family"], strict=False):
        valid = np.isfinite(flux) & (flux > 0)
        templates.append(normalise(wave, extend_power_law(wave, flux, valid)))
        names.append(str(ident))
        classes.append(str(spclass))
        families.append(str(family))
    templates = np.array(templates)

    spectra = list(templates)
    log_templates = np.log(np.clip(templates, 1e-6, None))
    for flux, ident, spclass, library, frac in zip(observed["flux"], observed["id"],
                                                   observed["spclass"], observed["library"],
                                                   observed["frac_valid_enc"], strict=False):
        valid = np.isfinite(flux) & (flux > 0)
        if frac < 0.7 or valid.sum() < 1000:
            continue
        # Graft the missing parts (MILES stops at 7410 A) from the stacked template whose shape
        # matches best where both exist: real absorption features instead of a smooth guess.
        log_flux = np.log(np.where(valid, flux, 1.0))
        residual = (log_templates[:, valid] - log_flux[valid])
        residual -= residual.mean(axis=1, keepdims=True)
        best = int(np.argmin((residual ** 2).mean(axis=1)))
        filled = fill_from_template(wave, flux, valid, templates[best])
        spectra.append(normalise(wave, filled))
        names.append(str(ident))
        classes.append(str(spclass))
        families.append(str(library))
    spectra = np.array(spectra)
    mags = photometer.magnitudes(spectra)
    colours = mags[:, :-1] - mags[:, 1:]
    good = np.all(np.isfinite(colours), axis=1)

    # Keep only spectra that are among the nearest colour matches of real catalogue stars.
    stars = catalogue["class"] == "STAR"
    target = catalogue["colours"][stars]
    weights = np.array([0.5, 1.0, 1.0, 1.0])  # u is the noisiest band in the catalogue
    candidate = np.flatnonzero(good)
    used = set()
    for start in range(0, len(target), 500):
        chunk = target[start:start + 500]
        distance = (((chunk[:, None, :] - colours[None, candidate, :]) * weights) ** 2).sum(-1)
        nearest = np.argsort(distance, axis=1)[:, :NEAREST_TEMPLATES_KEPT]
        used.update(candidate[nearest].ravel().tolist())
    keep = np.array(sorted(used))
    print(f"star library: {len(spectra)} spectra built, {keep.size} used by catalogue stars")
    return dict(
        wave=wave,
        flux=spectra[keep].astype(np.float16),
        id=np.array(names)[keep],
        spclass=np.array(classes)[keep],
        family=np.array(families)[keep],
        colours=colours[keep].astype(np.float32),
    ), templates, np.array(names[:len(templates)])


def build_host_galaxy(wave, templates, names):
    """Old and young stellar-population SEDs from stacked dwarf templates (rest frame).

    A crude population synthesis: an old population is dominated in the optical by G/K stars,
    a young one by A/F stars. Extended to 900 A with power laws so redshifted hosts cover u.
    """
    def mean_of(prefixes):
        picked = [t for t, n in zip(templates, names,
                                    strict=False) if n.split(":")[-1][:2] in prefixes]
        return normalise(wave, np.mean(picked, axis=0))

    old = 0.2 * mean_of({"F9", "G0", "G2"}) + 0.5 * mean_of({"K0", "K2", "K3"}) \
        + 0.3 * mean_of({"K5", "K7", "M0"})
    young = 0.6 * mean_of({"A0", "A1", "A2"}) + 0.4 * mean_of({"F0", "F2", "F5"})
    rest_wave = np.concatenate([np.geomspace(900.0, wave[0], 400, endpoint=False), wave])
    seds = []
    for sed in (old, young):
        valid = np.r_[np.zeros(400, bool), np.ones(wave.size, bool)]
        padded = np.r_[np.zeros(400), sed]
        seds.append(normalise(rest_wave, extend_power_law(rest_wave, padded, valid)))
    return dict(wave_rest=rest_wave, old=np.array(seds[0], np.float32),
                young=np.array(seds[1], np.float32))


def repair_archetypes(wave, flux, responsibility):
    """Replace the PCA artefacts of the QSO archetypes redward of Lyman-alpha.

    Each archetype is a PCA reconstruction of one BOSS quasar, trustworthy only over the rest
    range that quasar's spectrum covered; outside it the reconstruction can go negative over
    hundreds of Angstrom (one is zero over all of 1250-1600 A, another beyond 5500 A). Those
    stretches (flux <= 0, widened by 20 pixels) are filled from the responsibility-weighted
    median archetype, scaled to the neighbouring good flux. Blueward of Lyman-alpha the flux is
    only clipped at zero: the forest and the Lyman limit can really absorb everything.
    """
    positive = np.where(flux > 0, flux, np.nan)
    window = (wave > 2000) & (wave < 3000)
    normalised = positive / np.nanmedian(positive[:, window], axis=1, keepdims=True)
    order = np.argsort(normalised, axis=0)
    weights = np.where(np.isfinite(np.take_along_axis(normalised, order, axis=0)),
                       responsibility[order], 0.0)
    cumulative = np.cumsum(weights, axis=0) / weights.sum(axis=0)
    median_index = np.argmax(cumulative >= 0.5, axis=0)
    composite = np.take_along_axis(normalised, order, axis=0)[median_index, np.arange(wave.size)]
    composite = np.nan_to_num(composite, nan=np.nanmedian(composite))
    repaired = np.clip(flux, 0, None).astype(np.float64)
    redward = wave > 1216.0
    for k in range(len(flux)):
        bad = (flux[k] <= 0) & redward
        bad = np.convolve(bad, np.ones(41), mode="same") > 0
        bad &= redward
        if bad.any():
            repaired[k] = fill_from_template(wave, repaired[k], ~bad, composite)
            repaired[k][~redward] = np.clip(flux[k][~redward], 0, None)
    print(f"QSO archetypes: repaired {int(((flux <= 0) & redward).any(axis=1).sum())} of "
          f"{len(flux)}")
    return repaired


def read_catalogue(shared):
    rows = []
    with gzip.open(shared / "sdss_photometry_labelled.csv.gz", "rt") as handle:
        for row in csv.DictReader(handle):
            if row["class"] not in ("STAR", "QSO"):
                continue
            mags = [float(row[band]) for band in "ugriz"]
            if not all(5.0 < m < 30.0 for m in mags):  # the -9999 sentinel row
                continue
            rows.append(row)
    mags = np.array([[float(r[b]) for b in "ugriz"] for r in rows])
    return dict(
        rows=rows,
        mags=mags,
        colours=mags[:, :-1] - mags[:, 1:],
        **{"class": np.array([r["class"] for r in rows])},
    )


def write_catalogue(catalogue, path):
    with gzip.GzipFile(path, "wb", mtime=0) as raw:
        text = "sdss_id,source,class,redshift,u,g,r,i,z\n"
        for row in catalogue["rows"]:
            ident = f"{row['plate']}-{row['mjd']}-{row['fiberid']}"
            source = "SDSS17" if row["source"].startswith("SDSS17") else "DR14"
            text += ",".join([ident, source, row["class"], row["redshift"]]
                             + [row[b] for b in "ugriz"]) + "\n"
        raw.write(text.encode())


@np.errstate(all="ignore")
def spectral_noise(shared):
    """Fit var = sky_variance(lambda) + photon_coefficient * flux to real SDSS spectra."""
    real = np.load(shared / "sdss_spectra_real.npz")
    norm = real["norm"][:, None]
    flux = real["flux"] * norm
    ivar = real["ivar"] / norm ** 2
    ok = np.isfinite(flux) & (ivar > 0)
    variance = np.where(ok, 1.0 / np.where(ok, ivar, 1.0), np.nan)
    flux = np.where(ok, flux, np.nan)
    # Photon term from how variance rises with flux across objects at the same wavelength.
    flux_dev = flux - np.nanmean(flux, axis=0)
    var_dev = variance - np.nanmean(variance, axis=0)
    photon = float(np.nansum(flux_dev * var_dev) / np.nansum(flux_dev ** 2))
    photon = max(photon, 0.0)
    sky = np.nanmedian(variance - photon * np.clip(flux, 0, None), axis=0)
    sky = np.where(np.isfinite(sky), sky, np.nan)
    covered = np.isfinite(sky)
    sky[~covered] = np.interp(real["wave"][~covered], real["wave"][covered], sky[covered])
    sky = np.clip(sky, np.nanpercentile(sky[covered], 1), None)
    print(f"spectral noise: photon coefficient {photon:.4f}, sky variance median "
          f"{np.median(sky[covered]):.3f} (1e-17 erg/s/cm2/A)^2")
    psf = np.array([[real[f"psf_fwhm_{b}"][k] for b in "ugriz"] for k in range(len(norm))])
    return dict(spectrum_wave=real["wave"], spectrum_sky_variance=sky.astype(np.float32),
                spectrum_photon_coefficient=np.float64(photon),
                spectrum_reference_r=np.median(real["psfmag_r"]),
                psf_fwhm_band_ratio=np.median(psf / psf[:, 2:3], axis=0))


def image_noise(shared):
    """Per-band sky noise (nanomaggies per pixel) measured on the borders of real cutouts."""
    cutouts = np.load(shared / "sdss_cutouts_kim_brunner.npz")
    luptitudes = cutouts["images"].astype(np.float64)
    b = LUPTITUDE_SOFTENING[None, :, None, None]
    nanomaggies = 2 * b * np.sinh(-luptitudes * np.log(10) / 2.5 - np.log(b)) * 1e9
    border = np.ones(nanomaggies.shape[-2:], bool)
    border[8:-8, 8:-8] = False
    pixels = nanomaggies[:, :, border]
    median = np.median(pixels, axis=-1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(pixels - median), axis=-1)
    sigma = np.median(mad, axis=0)
    print("Kim & Brunner image sky sigma (nanomaggies/px) ugriz:", np.round(sigma, 4))
    return dict(image_sky_sigma_kim_brunner=sigma, image_sky_sigma_per_cutout=mad)


def lag1_autocorrelation(strips):
    """Median over cutouts of the lag-1 (along x) autocorrelation of sky pixels, per band."""
    sky = strips - np.median(strips, axis=(-2, -1), keepdims=True)
    left, right = sky[..., :-1], sky[..., 1:]
    corr = (left * right).mean(axis=(-2, -1)) / np.sqrt(
        (left ** 2).mean(axis=(-2, -1)) * (right ** 2).mean(axis=(-2, -1)))
    return np.median(corr, axis=0)


def image_noise_real_qso(shared, border_width=6):
    """Per-band sky noise of real SDSS QSO cutouts (nanomaggies per pixel), summary only.

    1.4826 x MAD of the ``border_width``-px border of each 32x32 cutout, per band; the median
    over cutouts is the simulator's nominal sky sigma, and the 1-99% spread of each cutout's
    sigma over that median is kept to document the range the simulator must cover.
    """
    images = np.load(shared / "real_qso_iqvit_dev.npz")["images"].astype(np.float64)
    border = np.ones(images.shape[-2:], bool)
    border[border_width:-border_width, border_width:-border_width] = False
    pixels = images[:, :, border]
    median = np.median(pixels, axis=-1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(pixels - median), axis=-1)
    sigma = np.median(mad, axis=0)
    spread = np.percentile(mad / sigma, [1, 5, 50, 95, 99], axis=0)
    strips = np.concatenate([images[:, :, :border_width], images[:, :, -border_width:]], axis=2)
    lag1 = lag1_autocorrelation(strips)
    print(f"real QSO cutouts ({len(images)}): sky sigma (nanomaggies/px) ugriz:",
          np.round(sigma, 4))
    print("  per-cutout sigma / median, 1/5/50/95/99%:", np.round(spread, 2).tolist())
    print("  lag-1 autocorrelation of sky pixels:", np.round(lag1, 3))
    return dict(image_sky_sigma=sigma, image_sky_sigma_spread=spread,
                image_sky_spread_percentiles=np.array([1, 5, 50, 95, 99]),
                image_sky_lag1_real_qso=lag1, image_sky_count_real_qso=len(images))


def write_noise_calibration(shared):
    kim_brunner = image_noise(shared)
    real = image_noise_real_qso(shared)
    cutouts = np.load(shared / "sdss_cutouts_kim_brunner.npz")
    b = LUPTITUDE_SOFTENING[None, :, None, None]
    nanomaggies = 2 * b * np.sinh(-cutouts["images"].astype(np.float64) * np.log(10) / 2.5
                                  - np.log(b)) * 1e9
    kim_brunner["image_sky_lag1_kim_brunner"] = lag1_autocorrelation(
        np.concatenate([nanomaggies[:, :, :8], nanomaggies[:, :, -8:]], axis=2))
    print("Kim & Brunner lag-1 autocorrelation:",
          np.round(kim_brunner["image_sky_lag1_kim_brunner"], 3))
    np.savez_compressed(RESOURCES / "noise_calibration.npz",
                        **spectral_noise(shared), **kim_brunner, **real)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", type=pathlib.Path)
    parser.add_argument("--only", choices=["noise_calibration"],
                        help="rebuild only this file")
    args = parser.parse_args()
    shared = args.shared
    warnings.filterwarnings("ignore", "(Mean of empty|All-NaN) slice", RuntimeWarning)
    check_sums(shared)
    RESOURCES.mkdir(parents=True, exist_ok=True)
    if args.only == "noise_calibration":
        write_noise_calibration(shared)
        return

    catalogue = read_catalogue(shared)
    write_catalogue(catalogue, RESOURCES / "sdss_pointsources.csv.gz")
    wave = np.load(shared / "stars_stacked_templates.npz")["wave"]
    photometer = Photometer(wave)
    library, templates, names = build_star_library(shared, photometer, catalogue)
    np.savez_compressed(RESOURCES / "star_library.npz", **library)
    np.savez_compressed(RESOURCES / "host_galaxy.npz", **build_host_galaxy(wave, templates,
                                                                           names))
    qso = np.load(shared / "qso_archetypes_rest.npz")
    np.savez_compressed(
        RESOURCES / "qso_archetypes.npz",
        wave_rest=qso["wave_rest"],
        flux_rest=repair_archetypes(qso["wave_rest"], qso["flux_rest"],
                                    qso["responsibility"]).astype(np.float16),
        responsibility=qso["responsibility"], subtype=qso["subtype"], id=qso["id"])
    write_noise_calibration(shared)
    for path in sorted(RESOURCES.iterdir()):
        print(f"{path.name:32s} {path.stat().st_size / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
