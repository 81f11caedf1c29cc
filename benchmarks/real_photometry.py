"""Real SDSS stars and QSOs: the model vs photometry + boosting, at two depths and on real pixels.

    python benchmarks/real_photometry.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --real-qso ../shared/data/real_qso_iqvit_dev.npz

Every real STAR/QSO row of the catalogue is rendered as a 5-band cutout at its true
magnitudes by a renderer written here, independent of the simulator the model was trained on:
circular Gaussian or Moffat PSF (beta 2.5-4.5) with r-band FWHM uniform in 0.9-2.2" and its own
band ratios, Poisson noise, a random sub-pixel centre, no neighbours, no sky residuals, and sky
noise at two depths: **nominal** (the median per-pixel sky sigma of real SDSS cutouts, u 0.0445,
g 0.0173, r 0.029, i 0.0465, z 0.170 nanomaggies, times 0.8-1.25) and **noisier** (1.3-2.5x
that). The rendered rows are ~30% QSO, like the SDSS spectroscopic sample, so the model is scored
with the prior 0.3 (``starqso predict --prior 0.3``) at its own threshold. Rows:

* the model (LiteRT int8 and Keras) on the crops, and ``starqso predict``'s per-row core as a
  whole (LiteRT int8: the source checks, whose refused rows count as misses, and the faint
  rows' leaning on the prior);
* gradient boosting on aperture photometry (3" radius, sky from the cutout border), trained on
  the simulator's cutouts, and trained in-domain on the renderer's (5-fold cross-validated);
* gradient boosting on the model's own in-graph photometry (aperture + PSF-weighted fluxes at
  ``model.weighted_fwhm``), trained on the simulator's cutouts;
* gradient boosting on PSF-fit photometry (a Gaussian PSF fitted to the r band, then linear
  fluxes with a sky term in every band), in-domain (5-fold CV);
* gradient boosting on the exact catalogue colours + r (no image noise: the limit), 5-fold CV.

Each is reported overall (macro-F1, F1(QSO), accuracy), F1(QSO) per r bin and QSO completeness
per redshift bin. With ``--real-qso`` it adds real SDSS pixels: QSO completeness of the model
(prior 0.3) on the real cutouts of spectroscopic QSOs at 2.75 < z < 5, per redshift bin, against
aperture photometry of the same pixels + boosting trained on the exact catalogue colours.

The tables go to stdout and to ``--out`` (default ``benchmarks/results/real_photometry.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sim_realism import read_real  # noqa: E402 - the same reader of the real catalogue

from starqso._util.atomic import write_text_atomically  # noqa: E402
from starqso.preprocessing.objects import prepare_object  # noqa: E402
from starqso.schema import PIXEL_SCALE_ARCSEC as PIXEL  # noqa: E402

# Median per-pixel sky sigma of 2,322 real SDSS QSO cutouts (nanomaggies), issue 14.
SKY_SIGMA = np.array([0.0445, 0.0173, 0.029, 0.0465, 0.170])
BAND_RATIOS = np.array([1.15, 1.08, 1.0, 0.96, 0.98])
DEPTHS = {"nominal": (0.8, 1.25), "noisier": (1.3, 2.5)}
R_EDGES = (14.0, 18.0, 19.0, 20.0, 21.0, 23.0)
Z_EDGES = (0.0, 1.0, 2.0, 2.75, 3.5, 4.0, 4.5, 5.0, 7.1)
REAL_Z = (2.75, 3.5, 4.0, 4.5, 5.0)  # the real QSO cutouts' range
RENDER_SIZE, SIZE = 48, 32


def render(mags, size, rng, noise=(0.8, 1.25)):
    """One real row as a (5, size, size) cutout in nanomaggies (this file's own renderer)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    x0, y0 = (size - 1) / 2 + rng.uniform(-0.5, 0.5, 2)
    fwhm_r = rng.uniform(0.9, 2.2) / PIXEL
    moffat = rng.random() < 0.5
    beta = rng.uniform(2.5, 4.5)
    sky = SKY_SIGMA * rng.uniform(*noise) * rng.uniform(0.9, 1.1, 5)
    flux = 10 ** (-0.4 * (mags - 22.5))
    cube = np.empty((5, size, size))
    r2 = (xx - x0) ** 2 + (yy - y0) ** 2
    for band in range(5):
        fwhm = fwhm_r * BAND_RATIOS[band]
        if moffat:
            alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
            profile = (beta - 1) / (np.pi * alpha ** 2) * (1 + r2 / alpha ** 2) ** -beta
        else:
            sigma = fwhm / 2.3548
            profile = np.exp(-r2 / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
        signal = flux[band] * profile
        cube[band] = signal + rng.normal(size=signal.shape) * np.sqrt(
            sky[band] ** 2 + np.clip(signal, 0, None) / 800.0)
    return cube.astype(np.float32)


def render_depth(mags, seed, depth):
    """Every row of ``mags`` rendered at ``depth`` (a key of DEPTHS): (N, 5, 48, 48) cubes.

    The random stream is ``seed`` at nominal depth and ``seed + 1`` at the noisier one, so the
    benchmarks that score these renders see the same cutouts.
    """
    rng = np.random.default_rng(seed + (depth == "noisier"))
    return np.stack([render(m, RENDER_SIZE, rng, DEPTHS[depth]) for m in mags])


def _grid(size):
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return xx, yy, np.hypot(xx, yy)


def aperture_features(cubes):
    """Colours + r from a 3" aperture with the sky median of the cutout border."""
    size = cubes.shape[-1]
    _, _, radius = _grid(size)
    sky = np.median(cubes[:, :, radius > size / 2 - 3], axis=2)
    flux = (cubes[:, :, radius <= 3 / PIXEL] - sky[:, :, None]).sum(axis=2)
    mags = 22.5 - 2.5 * np.log10(np.clip(flux, 1e-3, None))
    return np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])


def psf_features(cubes):
    """Colours + r from PSF-fit fluxes: a circular Gaussian whose FWHM is fitted in r (grid
    0.6-3.2"), centred on the r-band light centroid; then flux + sky by linear least squares
    in every band."""
    size = cubes.shape[-1]
    xx, yy, _ = _grid(size)
    r_band = np.clip(cubes[:, 2], 0, None) * (np.hypot(xx, yy) < 4)
    total = r_band.sum(axis=(1, 2)) + 1e-9
    cx = np.clip((r_band * xx).sum(axis=(1, 2)) / total, -1.5, 1.5)
    cy = np.clip((r_band * yy).sum(axis=(1, 2)) / total, -1.5, 1.5)
    d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2

    def fit(data, sigma):
        model = np.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        model /= model.sum(axis=(1, 2), keepdims=True)
        m, n = model.reshape(len(data), -1), size * size
        # Normal equations of data = flux * model + sky, per object.
        smm, sm = (m * m).sum(1), m.sum(1)
        smd, sd = (m * data.reshape(len(data), -1)).sum(1), data.reshape(len(data), -1).sum(1)
        det = smm * n - sm * sm
        flux = (smd * n - sm * sd) / det
        sky = (smm * sd - sm * smd) / det
        residual = ((data.reshape(len(data), -1) - flux[:, None] * m - sky[:, None]) ** 2).sum(1)
        return flux, residual

    widths = np.linspace(0.6, 3.2, 14) / PIXEL / 2.3548
    residuals = np.stack([fit(cubes[:, 2], np.full(len(cubes), w))[1] for w in widths])
    sigma_r = widths[np.argmin(residuals, axis=0)]
    flux = np.stack([fit(cubes[:, band], sigma_r * BAND_RATIOS[band])[0]
                     for band in range(5)], axis=1)
    mags = 22.5 - 2.5 * np.log10(np.clip(flux, 1e-3, None))
    return np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])


def boosting(seed):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed)


def cross_validated(features, labels, seed):
    from sklearn.model_selection import cross_val_predict

    return cross_val_predict(boosting(seed), features, labels, cv=5,
                             method="predict_proba")[:, 1]


def with_prior(p_qso, prior, metadata):
    """p(QSO) under ``prior`` (Bayes' correction from the model's training mix). ``p_qso``
    is a two-class model's (N,) p(QSO) or a K-class model's (N, K) class probabilities, whose
    whole vector is corrected (a bare QSO fraction keeps the other classes' training
    proportions) before its QSO column is taken."""
    from starqso.inference import apply_prior, resolve_prior
    from starqso.probability import apply_class_prior

    shift = resolve_prior(metadata, prior)["shift"]
    p_qso = np.asarray(p_qso, np.float64)
    if p_qso.ndim == 2:
        return apply_class_prior(p_qso, shift)[:, 1]
    return apply_prior(p_qso, shift)


def qso_column(p):
    """p(QSO) of a model's raw output: (N,) as it is, the QSO column of (N, K)."""
    p = np.asarray(p, np.float64)
    return p[:, 1] if p.ndim == 2 else p


def prior_text(prior):
    """A default prior as text: ``0.02`` or ``QSO=0.02,GALAXY=0.6``."""
    if isinstance(prior, dict):
        return ",".join(f"{name}={value:g}" for name, value in prior.items())
    return f"{prior:g}"


def predict_called(cubes, predictor, metadata, prior, threshold, ebv=None):
    """Rows ``starqso predict --prior PRIOR`` labels QSO: its per-row core
    (:func:`starqso.inference.classify_block`: crop, source checks, faint rows leaning on the
    prior), a refused row counting as not QSO (a miss for a QSO). Returns (called, refused)."""
    from starqso.inference import classify_block, evidence_fraction, resolve_prior
    from starqso.io.sources import Block

    settings = resolve_prior(metadata, prior)
    called, refused = [], []
    for start in range(0, len(cubes), 256):
        chunk = np.ascontiguousarray(cubes[start:start + 256], np.float32)
        block = Block([str(start + k) for k in range(len(chunk))], chunk,
                      [f"rendered row {start + k}" for k in range(len(chunk))], {})
        result = classify_block(block, predictor, SIZE, settings["shift"], False, False,
                                metadata.get("quality"), evidence_fraction(settings),
                                **({} if ebv is None else {"ebv": ebv[start:start + 256]}))
        called.append(result.usable & (np.nan_to_num(result.probabilities) >= threshold))
        refused.append(~result.usable)
    return np.concatenate(called), np.concatenate(refused)


def summary(labels, called, mags_r, redshift):
    from sklearn.metrics import accuracy_score, f1_score

    row = {"macro_f1": f1_score(labels, called, average="macro"),
           "f1_qso": f1_score(labels, called), "accuracy": accuracy_score(labels, called)}
    for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False):
        inside = (mags_r >= lo) & (mags_r < hi)
        row[f"r{lo:g}"] = f1_score(labels[inside], called[inside]) if inside.any() else np.nan
    for lo, hi in zip(Z_EDGES[:-1], Z_EDGES[1:], strict=False):
        inside = (labels == 1) & (redshift >= lo) & (redshift < hi)
        row[f"z{lo:g}"] = called[inside].mean() if inside.sum() >= 5 else np.nan
    return row


def star_rates(labels, p_train, mags_r, metadata, threshold):
    """Threshold-free AUC (QSO vs star) and the stars called QSO at the model's default
    (sky) prior, all and per r bin: the renders' stand-in for a field of real stars."""
    from sklearn.metrics import roc_auc_score

    called = with_prior(p_train, None, metadata) >= threshold
    stars = labels == 0
    row = {"auc": roc_auc_score(labels, qso_column(p_train)), "all": called[stars].mean()}
    for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False):
        inside = stars & (mags_r >= lo) & (mags_r < hi)
        row[f"r{lo:g}"] = called[inside].mean() if inside.any() else np.nan
    return row


def star_table(rows, depth, prior):
    r_names = [f"r {lo:g}-{hi:g}" for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False)]
    lines = [f"Stars called QSO at the model's default prior ({depth} depth; the sky's QSO "
             f"fraction, {prior_text(prior)}) and "
             "the threshold-free AUC of QSO vs star:", "",
             "| classifier | AUC | stars called QSO | " + " | ".join(r_names) + " |",
             "|---|---|---|" + "---|" * len(r_names)]
    lines += [f"| {name} | {row['auc']:.4f} | {row['all']:.4f} | "
              + " | ".join(f"{row[f'r{lo:g}']:.3f}" for lo in R_EDGES[:-1]) + " |"
              for name, row in rows]
    return "\n".join(lines).replace("nan", "-")


def table(rows, title):
    r_names = [f"{lo:g}-{hi:g}" for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False)]
    z_names = [f"{lo:g}-{hi:g}" for lo, hi in zip(Z_EDGES[:-1], Z_EDGES[1:], strict=False)]
    lines = [f"### {title}", "",
             "| classifier | macro-F1 | F1(QSO) | accuracy |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['macro_f1']:.4f} | {row['f1_qso']:.4f} | {row['accuracy']:.4f} |"
              for name, row in rows]
    lines += ["", "F1(QSO) per r bin:", "", "| classifier | " + " | ".join(r_names) + " |",
              "|---|" + "---|" * len(r_names)]
    lines += [f"| {name} | " + " | ".join(f"{row[f'r{lo:g}']:.3f}" for lo in R_EDGES[:-1])
              + " |" for name, row in rows]
    lines += ["", "QSO completeness per redshift bin:", "",
              "| classifier | " + " | ".join(f"z {n}" for n in z_names) + " |",
              "|---|" + "---|" * len(z_names)]
    lines += [f"| {name} | " + " | ".join(f"{row[f'z{lo:g}']:.3f}" for lo in Z_EDGES[:-1])
              + " |" for name, row in rows]
    return "\n".join(lines).replace("nan", "-")


def crop(cubes):
    # The crop `starqso predict` takes (the centre of the render).
    return np.stack([prepare_object(cube, SIZE, source="rendered cutout").image
                     for cube in cubes])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--real-qso", default=None,
                        help="real SDSS QSO cutouts (real_qso_iqvit_dev.npz)")
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-large/export"))
    parser.add_argument("--prior", type=float, default=0.3,
                        help="QSO fraction the rendered rows are scored at [0.3, their mix]")
    parser.add_argument("--sim-objects", type=int, default=8000,
                        help="simulated objects the simulator-trained peer learns from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/real_photometry.md"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.data.arrays import ObjectArrays
    from starqso.inference import open_model
    from starqso.preprocessing.photometry import WEIGHTED_FWHM_ARCSEC, photometric_features

    began = time.perf_counter()
    real = read_real(args.catalog)
    mags, labels = real["mags"], (real["label"] == "QSO").astype(int)
    redshift = real["redshift"]
    runtimes = [(f"starqso ({name})", *open_model(args.model, runtime))
                for name, runtime in (("LiteRT int8", "litert"), ("Keras", "keras"))]
    threshold = runtimes[0][1]["threshold"]
    simulated = ObjectArrays.from_simulation(args.sim_objects, 20231, image_size=SIZE)
    sim_features = photometric_features(simulated.images)[:, :5]
    sim_peer = boosting(args.seed).fit(sim_features, simulated.labels)
    weighted_peer = boosting(args.seed).fit(
        photometric_features(simulated.images, WEIGHTED_FWHM_ARCSEC), simulated.labels)

    sections = []
    for depth, noise in DEPTHS.items():
        cubes = render_depth(mags, args.seed, depth)
        images = crop(cubes)
        rows, stars = [], []
        for name, metadata, predictor in runtimes:
            p = np.concatenate([predictor(images[i:i + 512])
                                for i in range(0, len(images), 512)])
            rows.append((name, summary(labels, with_prior(p, args.prior, metadata)
                                       >= threshold, mags[:, 2], redshift)))
            stars.append((name, star_rates(labels, p, mags[:, 2], metadata, threshold)))
        name, metadata, predictor = runtimes[0]
        predicted, refused = predict_called(cubes, predictor, metadata, args.prior, threshold)
        rows.append((f"starqso predict ({name}: source checks, faint rows leaning on the "
                     f"prior; {int(refused.sum())} refused rows count as misses)",
                     summary(labels, predicted, mags[:, 2], redshift)))
        cut = np.ascontiguousarray(cubes[:, :, 8:40, 8:40])
        rows.append(("boosting, aperture photometry, trained on the simulator", summary(
            labels, sim_peer.predict_proba(photometric_features(images)[:, :5])[:, 1] >= 0.5,
            mags[:, 2], redshift)))
        rows.append(("boosting, aperture + PSF-weighted photometry, trained on the simulator",
                     summary(labels, weighted_peer.predict_proba(photometric_features(
                         images, WEIGHTED_FWHM_ARCSEC))[:, 1] >= 0.5, mags[:, 2], redshift)))
        for title, features in (("aperture", aperture_features(cut)),
                                ("PSF-fit", psf_features(cut))):
            rows.append((f"boosting, {title} photometry, in-domain (5-fold CV)", summary(
                labels, cross_validated(features, labels, args.seed) >= 0.5, mags[:, 2],
                redshift)))
        exact = np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])
        rows.append(("boosting, exact catalogue colours (limit, 5-fold CV)", summary(
            labels, cross_validated(exact, labels, args.seed) >= 0.5, mags[:, 2], redshift)))
        sections.append(table(rows, f"Rendered real rows, {depth} depth (sky {noise[0]:g}-"
                                    f"{noise[1]:g}x SDSS's median)"))
        sections.append(star_table(stars, depth, runtimes[0][1].get("default_prior")))

    # Stars behind Galactic dust (the plane's false QSOs): the catalogue's stars reddened by
    # E(B-V) with the SDSS coefficients, rendered at nominal depth, at the default prior.
    from starqso.schema import EXTINCTION_COEFFICIENTS

    name, metadata, predictor = runtimes[0]
    star_mags = mags[labels == 0]
    lines = ["### The catalogue's stars behind dust (nominal depth, default prior "
             f"{prior_text(metadata.get('default_prior'))})", "",
             f"{len(star_mags)} STAR rows reddened by E(B-V) (A/E(B-V) "
             f"{', '.join(f'{value:g}' for value in EXTINCTION_COEFFICIENTS)} for ugriz), "
             "rendered as above; `starqso predict` without and with the `ebv` column "
             "(de-reddened before the model). Refused rows are not called QSO.", "",
             "| E(B-V) | rows with r < 22.5 | called QSO, no E(B-V) given | called QSO, "
             "with the ebv column | refused |", "|---|---|---|---|---|"]
    for ebv in (0.0, 0.25, 0.5, 1.0, 1.5):
        reddened = star_mags + ebv * np.asarray(EXTINCTION_COEFFICIENTS)
        visible = reddened[:, 2] < 22.5
        cubes = np.stack([render(m, RENDER_SIZE, np.random.default_rng([args.seed, k]),
                                 DEPTHS["nominal"])
                          for k, m in enumerate(reddened[visible])])
        plain, refused = predict_called(cubes, predictor, metadata, None, threshold)
        known, _ = predict_called(cubes, predictor, metadata, None, threshold,
                                  ebv=np.full(len(cubes), ebv))
        lines.append(f"| {ebv:g} | {int(visible.sum())} | {plain.mean():.4f} "
                     f"({int(plain.sum())}) | {known.mean():.4f} ({int(known.sum())}) | "
                     f"{int(refused.sum())} |")
    sections.append("\n".join(lines))

    if args.real_qso:
        with np.load(args.real_qso) as stored:
            cubes = stored["images"].astype(np.float32)
            z = stored["redshift"]
            catalogue = np.column_stack([stored[band] for band in "ugriz"])
        images = np.ascontiguousarray(cubes.transpose(0, 2, 3, 1))
        exact = np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])
        colour_peer = boosting(args.seed).fit(exact, labels)
        lines = [f"### Real SDSS pixels: {len(z)} spectroscopic QSOs at 2.75 < z < 5 "
                 f"({args.real_qso})", "", "QSO completeness (prior "
                 f"{args.prior:g} for the model):", "",
                 "| classifier | all | " + " | ".join(
                     f"z {lo:g}-{hi:g}" for lo, hi in zip(REAL_Z[:-1], REAL_Z[1:],
                                                          strict=False)) + " |",
                 "|---|---|" + "---|" * (len(REAL_Z) - 1)]
        called = {}
        for name, metadata, predictor in runtimes:
            p = np.concatenate([predictor(images[i:i + 512]) for i in range(0, len(images),
                                                                            512)])
            called[name] = with_prior(p, args.prior, metadata) >= threshold
        name, metadata, predictor = runtimes[0]
        predicted, refused = predict_called(cubes, predictor, metadata, args.prior, threshold)
        called[f"starqso predict ({name}; {int(refused.sum())} refused = misses)"] = predicted
        called["aperture photometry of the pixels + boosting on exact colours"] = \
            colour_peer.predict_proba(aperture_features(cubes))[:, 1] >= 0.5
        called["boosting on the catalogue colours of these QSOs (no image noise)"] = \
            colour_peer.predict_proba(np.column_stack(
                [catalogue[:, :-1] - catalogue[:, 1:], catalogue[:, 2]]))[:, 1] >= 0.5
        for name, calls in called.items():
            bins = [calls[(z >= lo) & (z < hi)].mean() for lo, hi in zip(REAL_Z[:-1],
                                                                          REAL_Z[1:], strict=False)]
            lines.append(f"| {name} | {calls.mean():.3f} | "
                         + " | ".join(f"{value:.3f}" for value in bins) + " |")
        sections.append("\n".join(lines))

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/real_photometry.py " + " ".join(sys.argv[1:])
    model_name = pathlib.Path(args.model).resolve()
    if model_name.is_relative_to(ROOT.resolve()):
        model_name = model_name.relative_to(ROOT.resolve())
    header = (f"# Real SDSS rows and pixels\n\n`{command}`\n\n{datetime.date.today()}, git "
              f"{git}, {platform.machine()} {os.cpu_count()} CPU cores, "
              f"{time.perf_counter() - began:.0f} s. Model {model_name} (threshold "
              f"{threshold:g}, scored at prior {args.prior:g}). {len(labels)} real STAR/QSO "
              f"rows ({labels.sum()} QSO) rendered by this file's renderer (seed {args.seed}); "
              f"the simulator-trained peer learns from {args.sim_objects} simulated objects.\n")
    text = header + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        write_text_atomically(args.out, text)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
