"""Real SDSS fields: false QSOs, refusals and EXTENDED on real stars, galaxies and blank sky.

    python benchmarks/real_fields.py --data ../shared/data \\
        --out benchmarks/results/real_fields.md

Runs the shipped model as the default ``starqso predict`` does (LiteRT int8, the model's
default prior, its threshold) through predict's own per-row core,
:func:`starqso.inference.classify_block`: the crop, the source checks ("no source detected"
and the other refusals), p(QSO) and the qflag bits, batch by batch (256 rows, as predict reads
a FITS cube stack). ``--check-cli`` also writes the real field cutouts and the blank sky to a
FITS cube stack in a temporary folder, runs ``starqso predict --runtime litert`` on it and
checks that every row's p_qso, label, qflag and flag agree.

Data (``--data`` holds them; each can be named on its own):

* ``real_fields_dev.npz``: 772 point-like and 39 extended sources of six real SDSS fields,
  and 1,200 blank-sky cutouts (no detected pixel within 4 px);
* ``real_galaxies_dev.npz``: 167 real extended sources of the same fields;
* ``sdss_cutouts_kim_brunner.npz``: 11 galaxies and 3 stars (asinh magnitudes per pixel,
  48x48, converted to nanomaggies and centre-cropped as in ``quality_flags.py``);
* ``real_qso_iqvit_dev.npz``: 1,861 spectroscopic QSOs at 2.75 < z < 5 (another cutout
  pipeline: scored against the field stars, never trained on against them);
* ``sdss_photometry_labelled.csv.gz``: the real catalogue colours the peer is trained on.

Reported, per field and per r bin where that makes sense: point sources called QSO and
refused; blank sky called QSO (of all and of those classified); EXTENDED on r < 20 point
sources and on the extended sources; Kim & Brunner galaxies kept (EXTENDED); the AUC of the
real QSOs against all the field's point sources; QSO completeness at ``--qso-prior`` per
redshift bin (unclassified rows count as misses); and the same rates for a plain peer,
gradient boosting trained on the catalogue's real STAR/QSO colours + r and applied to 3"
aperture photometry of the pixels (``real_photometry.py``'s), at the same priors. Then each
false QSO on blank sky and each field star called QSO is listed with what it was measured
with (detection S/N per band, which band passed detection, screen sky sigma against the
frame's, the brightest neighbour, the light centroid, qflag bits), next to the medians of
the rows that were not called QSO; then a white-noise control at each frame's sky sigma, and
what a stricter detection, or no QSO call on LOW_SNR rows, would change.

``--out`` is rewritten with the tables; a hand-written section from ``## Analysis`` on in the
existing file is kept below them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import tempfile
import time

STARTED = time.perf_counter()  # the wall time includes the imports below

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_flags import crop, luptitudes_to_nanomaggies  # noqa: E402 - same KB conversion
from real_photometry import aperture_features, boosting  # noqa: E402 - the same peer
from sim_realism import read_real  # noqa: E402 - the same reader of the real catalogue

from starqso._util.atomic import write_text_atomically  # noqa: E402
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC, QFLAG_BITS  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SIZE = 32
BATCH = 256  # predict's default --batch-size
R_BINS = ((15.0, 18.0), (18.0, 19.0), (19.0, 20.0), (20.0, 21.0), (21.0, 22.0))
GALAXY_R_BINS = ((14.0, 15.0), (15.0, 18.0), (18.0, 19.0), (19.0, 20.0), (20.0, 21.0))
Z_BINS = ((2.75, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 4.5), (4.5, 5.0))
NO_SOURCE = "no source detected"
#: The shared data files, by the option that names each (default: under --data).
FILES = {"fields": "real_fields_dev.npz", "galaxies": "real_galaxies_dev.npz",
         "kim-brunner": "sdss_cutouts_kim_brunner.npz", "real-qso": "real_qso_iqvit_dev.npz",
         "catalog": "sdss_photometry_labelled.csv.gz"}


# --- the model, as predict runs it ------------------------------------------------------

def classify(cubes, predictor, metadata, shift, name, training_fraction=None):
    """predict's per-row core on (N, 5, S, S) cubes: p at ``shift``, usable, flags, qflag,
    p_err, and the screen's sky sigma and detection S/N (N, 5) for the analysis."""
    from starqso.inference import classify_block
    from starqso.io.sources import Block
    from starqso.preprocessing.screening import suspect_crops

    cubes = np.ascontiguousarray(cubes, np.float32)
    parts = []
    for start in range(0, len(cubes), BATCH):
        rows = range(start, min(start + BATCH, len(cubes)))
        block = Block([f"{name}-{row}" for row in rows], cubes[start:rows.stop],
                      [f"cube {row} of {name}" for row in rows], {})
        parts.append(classify_block(block, predictor, SIZE, shift, False, True,
                                    metadata.get("quality"), training_fraction))
    crops = np.ascontiguousarray(np.moveaxis(cubes, 1, -1))
    _, sigma, snr, _ = suspect_crops(crops, measured=True)
    return {"p": np.concatenate([part.probabilities for part in parts]),
            "usable": np.concatenate([part.usable for part in parts]),
            "flags": sum((list(part.flags) for part in parts), []),
            "qflag": np.concatenate([part.qflag for part in parts]),
            "p_err": np.concatenate([part.p_err for part in parts]),
            # (N, K) class probabilities under the prior ([1 - p, p] for a two-class model)
            "classes": np.concatenate([part.classes for part in parts]),
            "sigma": sigma, "snr": snr, "crops": crops}


def moved(result, shift):
    """p(QSO) of a classified sample moved by a prior ``shift`` (:func:`classify`'s result):
    a two-class model's log-odds shift, or a K-class model's vector of log shifts applied to
    its class probabilities (``starqso.probability.apply_class_prior``)."""
    from starqso.probability import apply_class_prior, apply_prior

    shift = np.asarray(shift, np.float64)
    if shift.ndim:
        return apply_class_prior(np.nan_to_num(result["classes"]), shift)[:, 1]
    return apply_prior(np.nan_to_num(result["p"]), float(shift))


def run_predict(samples, folder, name, runtime, model_dir):
    """``starqso predict`` (what its console script runs) on one FITS cube stack of
    ``samples``: the rows of its CSV output, and the seconds it took."""
    import csv

    from astropy.io import fits

    cubes = np.concatenate([np.asarray(sample["cubes"], np.float32) for sample in samples])
    ids = [f"{sample['name']}-{row}" for sample in samples for row in range(len(sample["cubes"]))]
    stack, output = folder / f"{name}.fits", folder / f"{name}.csv"
    fits.HDUList([fits.PrimaryHDU(cubes), fits.BinTableHDU.from_columns(
        [fits.Column(name="id", format="40A", array=np.array(ids))])]).writeto(stack)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from starqso.cli import main; "
                           "sys.argv[0] = 'starqso'; sys.exit(main())", "predict", str(stack),
                           "--runtime", runtime, "--model", str(model_dir),
                           "--output", str(output)],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        raise SystemExit(f"starqso predict failed ({done.returncode}): {done.stderr}")
    with open(output, newline="") as handle:
        return list(csv.DictReader(handle)), time.perf_counter() - started


def differing_rows(samples, rows, threshold):
    """The ids of the CLI ``rows`` whose p_qso, label, qflag or flag (its reason, without
    the row's location) differ from this script's results of ``samples``."""
    from starqso.inference import row_label

    ours = {key: np.concatenate([np.asarray(sample["result"][key]) for sample in samples])
            for key in ("p", "usable", "qflag", "classes")}
    flags = sum((sample["result"]["flags"] for sample in samples), [])
    differ = []
    for row, cli in enumerate(rows):
        usable = ours["usable"][row]
        p_text = f"{ours['p'][row]:.6f}" if usable else ""
        classes = ours["classes"][row] if ours["classes"].shape[1] > 2 else None
        label = row_label(ours["p"][row], usable, threshold, classes)
        if (p_text, label, str(int(ours["qflag"][row])), flags[row].split(" Received:")[0]) != (
                cli["p_qso"], cli["label"], cli["qflag"], cli["flag"].split(" Received:")[0]):
            differ.append(f"{cli['id']} (qflag {int(ours['qflag'][row])} here, "
                          f"{cli['qflag']} there)")
    return differ


def check_cli(samples, threshold, runtime, model_dir):
    """Run ``starqso predict`` on one FITS cube stack per sample and compare every row (the
    same batches of 256 as here), then on one stack of all of them (other batches).

    Returns:
        ``(rows, differing ids per sample, differing ids in the joint stack, seconds)``.
    """
    with tempfile.TemporaryDirectory(prefix="real_fields_") as folder:
        folder = pathlib.Path(folder)
        differ, seconds, rows = [], 0.0, 0
        for sample in samples:
            cli_rows, took = run_predict([sample], folder, sample["name"], runtime,
                                          model_dir)
            differ += differing_rows([sample], cli_rows, threshold)
            seconds, rows = seconds + took, rows + len(cli_rows)
        cli_rows, took = run_predict(samples, folder, "joint", runtime, model_dir)
        joint = differing_rows(samples, cli_rows, threshold)
    return rows, differ, joint, seconds + took


def white_noise(frame_sigma, per_field, seed):
    """(F * per_field, 5, SIZE, SIZE) Gaussian noise at each field's per-band frame sigma."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(per_field, len(BANDS), SIZE, SIZE)).astype(
        np.float32) * sigma[None, :, None, None].astype(np.float32) for sigma in frame_sigma])


# --- the peer ---------------------------------------------------------------------------

def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


class ColourPeer:
    """Boosting on the real catalogue's STAR/QSO colours + r, applied to 3" aperture
    photometry of the pixels; p moved from its training mix to a prior by Bayes' rule and
    called QSO at 0.5 (the Bayes decision)."""

    def __init__(self, catalog, seed):
        real = read_real(catalog)
        mags, labels = real["mags"], (real["label"] == "QSO").astype(int)
        self.training_fraction = labels.mean()
        self.model = boosting(seed).fit(np.column_stack([mags[:, :-1] - mags[:, 1:],
                                                         mags[:, 2]]), labels)
        self.rows = len(labels)

    def p(self, cubes):
        return self.model.predict_proba(aperture_features(np.asarray(cubes, np.float64)))[:, 1]

    def called(self, p, prior):
        shift = logit(prior) - logit(self.training_fraction)
        return 1 / (1 + np.exp(-(logit(p) + shift))) >= 0.5


# --- what the cutouts have in common ----------------------------------------------------

def describe(result, frame_sigma):
    """Per row: the detection S/N, which band detects, the screen sky sigma over the frame's,
    the brightest neighbour, the light centroid, in the crop the model sees."""
    from starqso.preprocessing.photometry import sky_levels
    from starqso.preprocessing.screening import DETECTION_SNR_OTHER, DETECTION_SNR_R

    crops = result["crops"].astype(np.float64)
    sigma, snr = result["sigma"], result["snr"]
    sky = sky_levels(crops)
    gri = [BANDS.index(band) for band in "gri"]
    # g+r+i in units of each band's noise, summed over 3x3 boxes: S/N of a 9-pixel box.
    scaled = ((crops - sky[:, None, None, :]) / sigma[:, None, None, :])[..., gri].sum(-1)
    padded = np.pad(scaled, ((0, 0), (1, 1), (1, 1)), mode="edge")
    box = sum(padded[:, 1 + dy:SIZE + 1 + dy, 1 + dx:SIZE + 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / (3 * np.sqrt(len(gri)))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2.0
    distance = np.hypot(xx, yy) * PIXEL_SCALE_ARCSEC
    inner = (distance > 3.0) & (np.abs(xx) < SIZE / 2 - 1) & (np.abs(yy) < SIZE / 2 - 1)
    outer_box = np.where(inner, box, -np.inf).reshape(len(box), -1)
    where = outer_box.argmax(axis=1)
    centre = np.where(distance <= 1.5, box, -np.inf).max(axis=(1, 2))
    ring = np.where((distance > 1.5) & (distance <= 3.0), box, -np.inf).max(axis=(1, 2))
    light = np.clip(scaled, 0, None) * (distance <= 3.0)
    total = light.sum(axis=(1, 2)) + 1e-12
    offset = np.hypot((light * xx).sum(axis=(1, 2)) / total,
                      (light * yy).sum(axis=(1, 2)) / total) * PIXEL_SCALE_ARCSEC
    detected_by = []
    for values in snr:
        bands = [band for index, band in enumerate(BANDS)
                 if values[index] >= (DETECTION_SNR_R if band == "r" else DETECTION_SNR_OTHER)]
        detected_by.append("".join(bands) or "-")
    return {"snr": snr, "detected_by": np.array(detected_by),
            "sigma_ratio": sigma / frame_sigma,
            "neighbour": outer_box.max(axis=1),
            "neighbour_distance": distance.reshape(-1)[where],
            "centre": centre, "ring": ring, "offset": offset}


# --- tables -----------------------------------------------------------------------------

def rate(k, n):
    k, n = int(k), int(n)
    return f"{k}/{n} ({100 * k / n:.2f}%)" if n else "-"


def auc(positive, negative):
    from sklearn.metrics import roc_auc_score

    positive, negative = np.asarray(positive), np.asarray(negative)
    if not len(positive) or not len(negative):
        return float("nan")
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return roc_auc_score(labels, np.r_[positive, negative])


def has(qflag, name):
    return (np.asarray(qflag) & QFLAG_BITS[name]) != 0


def bits_text(value):
    from starqso.preprocessing.qflags import bit_names

    short = {"NOT_CLASSIFIED": "NC", "EXTENDED": "EXT", "BRIGHT_NEIGHBOUR": "BN",
             "LOW_SNR": "LOW", "OUT_OF_DISTRIBUTION": "OOD", "MAG_OUT_OF_RANGE": "MAG",
             "SATURATED": "SAT", "ARTEFACT": "ART", "REPAIRED": "REP"}
    return ",".join(short[name] for name in bit_names(value)) or "-"


def range_text(values):
    return f"{np.min(values):.2f}-{np.max(values):.2f}" if len(values) else "-"


def galactic_latitude(ra, dec):
    from astropy import units
    from astropy.coordinates import SkyCoord

    return float(SkyCoord(ra=np.mean(ra) * units.deg, dec=np.mean(dec) * units.deg)
                 .galactic.b.deg)


def listing(title, rows, info, result, p_at, p_train, extra_name=None, extra=None):
    """A markdown table of the listed rows, with the analysis columns."""
    lines = [title, "", "| # | field | " + (f"{extra_name} | " if extra_name else "")
             + "p (sky prior) | p (training mix) | p_err | qflag | S/N u g r i z | detected by "
             "| sky sigma / frame's (r, z) | centre box S/N | 1.5-3\" ring box S/N | "
             "brightest neighbour box S/N @ distance | light centroid offset |",
             "|---|---|" + ("---|" if extra_name else "") + "---|" * 11]
    for row in rows:
        snr = " ".join(f"{value:.1f}" for value in info["snr"][row])
        lines.append(
            f"| {row} | {info['field'][row]} | "
            + (f"{extra[row]} | " if extra_name else "")
            + f"{p_at[row]:.3f} | {p_train[row]:.3f} | {result['p_err'][row]:.3f} | "
            f"{bits_text(result['qflag'][row])} | {snr} | {info['detected_by'][row]} | "
            f"{info['sigma_ratio'][row, 2]:.2f}, "
            f"{info['sigma_ratio'][row, 4]:.2f} | {info['centre'][row]:.1f} | "
            f"{info['ring'][row]:.1f} | {info['neighbour'][row]:.0f} @ "
            f"{info['neighbour_distance'][row]:.1f}\" | {info['offset'][row]:.2f}\" |")
    return lines


def medians(label, rows, info):
    if not len(rows):
        return f"| {label} | 0 | - | - | - | - | - | - | - |"
    # A blank-sky cutout with non-finite pixels is refused before any measurement.
    pick = lambda key: np.nanmedian(info[key][rows], axis=0)  # noqa: E731
    snr = pick("snr")
    return (f"| {label} | {len(rows)} | {snr[2]:.1f} | {np.max(snr[[0, 1, 3, 4]]):.1f} | "
            f"{pick('sigma_ratio')[2]:.2f} | {pick('centre'):.1f} | {pick('ring'):.1f} | "
            f"{pick('neighbour'):.0f} | {pick('offset'):.2f}\" |")


def what_if(samples, called, point, qso_called, threshold):
    """Rows that a stricter detection, or no QSO call on LOW_SNR / BRIGHT_NEIGHBOUR rows,
    would change: measured on the S/N and bits this run reported, nothing re-run."""
    from starqso.preprocessing.screening import DETECTION_SNR_OTHER, DETECTION_SNR_R

    r_band = BANDS.index("r")
    others = [band for band in range(len(BANDS)) if band != r_band]

    def kept(result, r_snr):
        snr = np.nan_to_num(result["snr"], nan=-np.inf)
        if r_snr == "combined":
            # A detection image of the five bands, equal weights in S/N: sum / sqrt(5) >= 5
            # (from each band's better aperture, so a little optimistic).
            return result["usable"] & (snr.sum(axis=1) / np.sqrt(len(BANDS)) >= 5.0)
        return result["usable"] & ((snr[:, r_band] >= r_snr)
                                   | (snr[:, others] >= DETECTION_SNR_OTHER).any(axis=1))

    rules = [(f"now (r >= {DETECTION_SNR_R:g} or another band >= {DETECTION_SNR_OTHER:g})",
              DETECTION_SNR_R, ()),
             *((f"detection at r >= {value:g}", value, ()) for value in (3.0, 4.0, 5.0)
               if value > DETECTION_SNR_R),
             ("ugriz S/N sum / sqrt(5) >= 5", "combined", ()),
             ("no QSO call with LOW_SNR", 3.0, ("LOW_SNR",)),
             ("no QSO call with LOW_SNR or BRIGHT_NEIGHBOUR", 3.0,
              ("LOW_SNR", "BRIGHT_NEIGHBOUR"))]
    lines = ["", "What a stricter rule would change (from the S/N and bits measured above; "
             "a row that no longer passes detection is refused, one with a listed bit keeps "
             "its p but is not called QSO):", "",
             "| rule | blank sky classified | blank sky called QSO | white noise called QSO "
             "| point sources refused | point sources called QSO | real QSOs found (prior "
             "0.3) |", "|---|---|---|---|---|---|---|"]
    for name, r_snr, bits in rules:
        cells = {}
        for sample in ("sky", "noise", "sources", "qso"):
            result = samples[sample]["result"]
            usable = kept(result, r_snr)
            blocked = np.zeros(len(usable), bool)
            for bit in bits:
                blocked |= has(result["qflag"], bit)
            found = qso_called if sample == "qso" else called[sample]
            cells[sample] = (usable, found & usable & ~blocked)
        sky_usable, sky_called = cells["sky"]
        lines.append(
            f"| {name} | {rate(sky_usable.sum(), len(sky_usable))} | "
            f"{rate(sky_called.sum(), len(sky_usable))} | "
            f"{rate(cells['noise'][1].sum(), len(cells['noise'][1]))} | "
            f"{rate((~cells['sources'][0])[point].sum(), point.sum())} | "
            f"{rate(cells['sources'][1][point].sum(), point.sum())} | "
            f"{rate(cells['qso'][1].sum(), len(cells['qso'][1]))} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DATA,
                        help="folder holding the shared data files [../shared/data]")
    for option, name in FILES.items():
        parser.add_argument(f"--{option}", type=pathlib.Path, default=None,
                            help=f"{name} [DATA/{name}]")
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="exported model folder [the shipped model]")
    parser.add_argument("--runtime", default="litert", choices=("litert", "keras"))
    parser.add_argument("--qso-prior", type=float, default=0.3,
                        help="prior the real QSOs' completeness is measured at [0.3]")
    parser.add_argument("--seed", type=int, default=0,
                        help="the peer's boosting seed and the white-noise control's")
    parser.add_argument("--noise-per-field", type=int, default=1000,
                        help="white-noise crops per field at its frame's sky sigma [1000]")
    parser.add_argument("--check-cli", action=argparse.BooleanOptionalAction, default=True,
                        help="also run `starqso predict` on a FITS stack of the field cutouts "
                             "and check every row agrees [on]")
    parser.add_argument("--blank-half", choices=("all", "even", "odd"), default="all",
                        help="score only every other blank-sky cutout of each field: the half "
                             "a model's training backgrounds left out (benchmarks/dev_skies.py "
                             "--half) [all]")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results markdown")
    args = parser.parse_args()
    path = lambda given, name: given if given is not None else args.data / name  # noqa: E731
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.inference import (
        default_model_dir,
        evidence_fraction,
        open_model,
        resolve_prior,
    )

    model_dir = args.model if args.model is not None else default_model_dir()
    metadata, predictor = open_model(model_dir, args.runtime)
    threshold = float(metadata["threshold"])
    sky_settings = resolve_prior(metadata, None)
    # From the sky prior to the QSO prior: one log-odds shift, or a K-class model's vector.
    qso_shift = np.subtract(resolve_prior(metadata, args.qso_prior)["shift"],
                            sky_settings["shift"])
    sky_prior = sky_settings["prior"]

    with np.load(path(args.fields, FILES["fields"])) as stored:
        fields = {name: stored[name] for name in stored.files}
    if args.blank_half != "all":
        from dev_skies import blank_half

        kept = blank_half(fields["sky_field"], args.blank_half)
        fields["sky_images"], fields["sky_field"] = (fields["sky_images"][kept],
                                                     fields["sky_field"][kept])
    with np.load(path(args.galaxies, FILES["galaxies"])) as stored:
        galaxies = {name: stored[name] for name in stored.files}
    with np.load(path(args.kim_brunner, FILES["kim-brunner"])) as stored:
        kb_cubes = np.moveaxis(crop(luptitudes_to_nanomaggies(stored["images"]), SIZE), -1, 1)
        kb_labels = stored["label"]
    with np.load(path(args.real_qso, FILES["real-qso"])) as stored:
        qso = {name: stored[name] for name in ("images", "redshift", "r")}
    peer = ColourPeer(path(args.catalog, FILES["catalog"]), args.seed)

    point = fields["pointlike"]
    names = list(fields["fields"])
    frame_sigma = np.column_stack([fields[f"field_sky_sigma_{band}"] for band in BANDS])
    samples = {
        "sources": {"cubes": fields["images"], "field": fields["field"]},
        "sky": {"cubes": fields["sky_images"], "field": fields["sky_field"]},
        "galaxies": {"cubes": galaxies["images"], "field": galaxies["field"]},
        "kim_brunner": {"cubes": kb_cubes},
        "qso": {"cubes": qso["images"]},
        # The control: white Gaussian noise at each frame's sky sigma, no source at all.
        "noise": {"cubes": white_noise(frame_sigma, args.noise_per_field, args.seed)},
    }
    for name, sample in samples.items():
        sample["name"] = name
        sample["result"] = classify(sample["cubes"], predictor, metadata,
                                    sky_settings["shift"], name,
                                    evidence_fraction(sky_settings))
        sample["peer_p"] = peer.p(sample["cubes"])
    classified_seconds = time.perf_counter() - STARTED
    src, sky, gal = samples["sources"]["result"], samples["sky"]["result"], \
        samples["galaxies"]["result"]
    kb, qs = samples["kim_brunner"]["result"], samples["qso"]["result"]
    called = {name: sample["result"]["usable"] & (sample["result"]["p"] >= threshold)
              for name, sample in samples.items()}
    peer_sky = {name: peer.called(sample["peer_p"], sky_prior)
                for name, sample in samples.items()}
    refused_no_source = {name: np.array([flag.startswith(NO_SOURCE) for flag in
                                         sample["result"]["flags"]])
                         for name, sample in samples.items()}
    r_src, r_gal = fields["r_auto"], galaxies["r_auto"]
    extended = {name: has(sample["result"]["qflag"], "EXTENDED") & sample["result"]["usable"]
                for name, sample in samples.items()}

    # AUC and completeness: refused rows are misses; for the AUC they rank below every
    # classified row (a refused QSO is lost, a refused star is not called QSO).
    def scores(result):
        return np.where(result["usable"], result["p"], -1.0)

    qso_called = qs["usable"] & (moved(qs, qso_shift) >= threshold)
    peer_qso_called = peer.called(samples["qso"]["peer_p"], args.qso_prior)
    z = qso["redshift"]

    # --- the table -----------------------------------------------------------
    stars_r20 = point & (r_src < 20)
    kb_gal = kb_labels == "GALAXY"
    blank_classified = int(sky["usable"].sum())
    lines = [
        "## The issue's table, on the dev fields", "",
        f"Model: LiteRT int8 as `starqso predict` runs it, default prior {sky_prior:g}, "
        f"threshold {threshold:g}. Peer: boosting on real catalogue colours + r "
        f"({peer.rows} STAR/QSO rows of sdss_photometry_labelled, {peer.training_fraction:.3f}"
        f" QSO), applied to 3\" aperture photometry of the same pixels, at the same prior.", "",
        "| row | starqso | peer | issue's quote for these data | bar (held-out) |",
        "|---|---|---|---|---|",
        f"| field point sources called QSO | {rate(called['sources'][point].sum(), point.sum())}"
        f" | {rate(peer_sky['sources'][point].sum(), point.sum())} | 0.65% | <= 0.5% |",
        f"| point sources refused as \"no source detected\" | "
        f"{rate(refused_no_source['sources'][point].sum(), point.sum())} (any refusal: "
        f"{int((~src['usable'][point]).sum())}) | - | none | <= 0.5% |",
        f"| blank sky called QSO, of all cutouts | {rate(called['sky'].sum(), len(called['sky']))}"
        f" | {rate(peer_sky['sky'].sum(), len(called['sky']))} | 0.75% | <= 0.5% |",
        f"| blank sky called QSO, of those classified | "
        f"{rate(called['sky'].sum(), blank_classified)} | "
        f"{rate(peer_sky['sky'][sky['usable']].sum(), blank_classified)} | 46 classified | - |",
        f"| EXTENDED on point sources at r < 20 | "
        f"{rate(extended['sources'][stars_r20].sum(), stars_r20.sum())} | - | 4.3% | <= 3% |",
        f"| EXTENDED on the fields' extended sources (real_fields_dev) | "
        f"{rate(extended['sources'][~point].sum(), (~point).sum())} | - | 90% | - |",
        f"| EXTENDED on real extended sources (real_galaxies_dev) | "
        f"{rate(extended['galaxies'].sum(), len(r_gal))} | - | - | - |",
        f"| Kim & Brunner galaxies kept (EXTENDED) | "
        f"{rate(extended['kim_brunner'][kb_gal].sum(), kb_gal.sum())} (stars with it: "
        f"{int(extended['kim_brunner'][~kb_gal].sum())}/{int((~kb_gal).sum())}) | - | - | "
        f">= 12 of 15 (dev + held-out) |",
        f"| AUC: real high-z QSOs vs all field point sources | "
        f"{auc(scores(qs), scores(src)[point]):.4f} (classified only: "
        f"{auc(qs['p'][qs['usable']], src['p'][point & src['usable']]):.4f}) | "
        f"{auc(samples['qso']['peer_p'], samples['sources']['peer_p'][point]):.4f} | - "
        f"| >= 0.95 |",
        f"| real high-z QSO completeness at prior {args.qso_prior:g} | "
        f"{rate(qso_called.sum(), len(z))} | {rate(peer_qso_called.sum(), len(z))} | - | "
        f">= 0.90 |",
    ]

    # --- per field ---------------------------------------------------------------------
    lines += ["", "## Per field", "",
              "Point sources (called QSO, refused, EXTENDED at r < 20), extended sources "
              "(EXTENDED), blank sky (classified, called QSO), the peer's point sources "
              "called QSO, and the AUC of the real QSOs against the field's point sources.", "",
              "| field | b | PSF FWHM | point sources | called QSO | refused | EXTENDED r<20 | "
              "fields' extended: EXTENDED | real_galaxies: EXTENDED | blank sky classified | "
              "blank sky called QSO | peer: point sources called QSO | peer: blank sky called "
              "QSO | AUC | size / PSF of r<20 point sources with EXTENDED, without (median) |",
              "|---|---|---|" + "---|" * 12]
    for name in names:
        mine = fields["field"] == name
        pts, ext = mine & point, mine & ~point
        blank = fields["sky_field"] == name
        galaxy = galaxies["field"] == name
        median_size = lambda rows: (  # noqa: E731 - the r half-light radius / the field's stars'
            f"{np.median(fields['size_over_psf'][rows]):.2f}" if rows.any() else "-")
        latitude = galactic_latitude(fields["ra"][mine], fields["dec"][mine])
        fwhm = fields["field_fwhm_arcsec"][names.index(name)]
        lines.append(
            f"| {name} | {latitude:+.0f} | {fwhm:.2f}\" | {int(pts.sum())} | "
            f"{rate(called['sources'][pts].sum(), pts.sum())} | "
            f"{int((~src['usable'][pts]).sum())} | "
            f"{rate(extended['sources'][pts & (r_src < 20)].sum(), (pts & (r_src < 20)).sum())}"
            f" | {rate(extended['sources'][ext].sum(), ext.sum())} | "
            f"{rate(extended['galaxies'][galaxy].sum(), galaxy.sum())} | "
            f"{int(sky['usable'][blank].sum())} | {rate(called['sky'][blank].sum(), blank.sum())}"
            f" | {rate(peer_sky['sources'][pts].sum(), pts.sum())} | "
            f"{rate(peer_sky['sky'][blank].sum(), blank.sum())} | "
            f"{auc(scores(qs), scores(src)[pts]):.4f} | "
            f"{median_size(pts & (r_src < 20) & extended['sources'])}, "
            f"{median_size(pts & (r_src < 20) & ~extended['sources'])} |")

    # --- per r bin -----------------------------------------------------------------------
    lines += ["", "## Point sources per r bin (sep magnitude `r_auto`)", "",
              "| r | n | called QSO | refused | EXTENDED | LOW_SNR | BRIGHT_NEIGHBOUR | "
              "peer: called QSO | median p (sky prior) |", "|---|---|" + "---|" * 7]
    low_snr = has(src["qflag"], "LOW_SNR") & src["usable"]
    neighbour = has(src["qflag"], "BRIGHT_NEIGHBOUR") & src["usable"]
    for low, high in R_BINS:
        pick = point & (r_src >= low) & (r_src < high)
        lines.append(
            f"| {low:g}-{high:g} | {int(pick.sum())} | "
            f"{rate(called['sources'][pick].sum(), pick.sum())} | "
            f"{int((~src['usable'][pick]).sum())} | "
            f"{rate(extended['sources'][pick].sum(), pick.sum())} | "
            f"{rate(low_snr[pick].sum(), pick.sum())} | "
            f"{rate(neighbour[pick].sum(), pick.sum())} | "
            f"{rate(peer_sky['sources'][pick].sum(), pick.sum())} | "
            f"{np.nanmedian(src['p'][pick]):.4f} |")
    lines += ["", "Real extended sources (real_galaxies_dev) per r bin:", "",
              "| r | n | EXTENDED | SATURATED | called QSO | refused | r_auto of those without "
              "EXTENDED |", "|---|---|---|---|---|---|---|"]
    saturated = has(gal["qflag"], "SATURATED") & gal["usable"]
    for low, high in GALAXY_R_BINS:
        pick = (r_gal >= low) & (r_gal < high)
        lines.append(f"| {low:g}-{high:g} | {int(pick.sum())} | "
                     f"{rate(extended['galaxies'][pick].sum(), pick.sum())} | "
                     f"{rate(saturated[pick].sum(), pick.sum())} | "
                     f"{rate(called['galaxies'][pick].sum(), pick.sum())} | "
                     f"{int((~gal['usable'][pick]).sum())} | "
                     f"{range_text(r_gal[pick & ~extended['galaxies']])} |")

    # --- real QSOs -----------------------------------------------------------------------
    lines += ["", f"## Real high-z QSOs ({len(z)} cutouts): completeness at prior "
              f"{args.qso_prior:g}", "",
              "Unclassified rows count as misses. AUC per bin: the bin's QSOs against all "
              f"{int(point.sum())} field point sources.", "",
              "| z | n | starqso | refused | AUC | peer | peer AUC |",
              "|---|---|---|---|---|---|---|"]
    for low, high in ((2.75, 5.0), *Z_BINS):
        pick = (z >= low) & (z < high) if high < 5 else (z >= low) & (z <= high)
        lines.append(
            f"| {low:g}-{high:g} | {int(pick.sum())} | {qso_called[pick].mean():.3f} | "
            f"{int((~qs['usable'][pick]).sum())} | "
            f"{auc(scores(qs)[pick], scores(src)[point]):.4f} | "
            f"{peer_qso_called[pick].mean():.3f} | "
            f"{auc(samples['qso']['peer_p'][pick], samples['sources']['peer_p'][point]):.4f} |")
    lines += ["", "Kim & Brunner cutouts:", "", "| id | label | p (sky prior) | qflag |",
              "|---|---|---|---|"]
    lines += [f"| {row} | {label} | {kb['p'][row]:.3f} | {bits_text(kb['qflag'][row])} |"
              for row, label in enumerate(kb_labels)]

    # --- the false QSOs --------------------------------------------------------------------
    field_index = {name: index for index, name in enumerate(names)}
    info_sky = describe(sky, frame_sigma[[field_index[f] for f in fields["sky_field"]]])
    info_sky["field"] = fields["sky_field"]
    info_src = describe(src, frame_sigma[[field_index[f] for f in fields["field"]]])
    info_src["field"] = fields["field"]
    p_sky = sky["p"]
    false_sky = np.flatnonzero(called["sky"])
    false_star = np.flatnonzero(called["sources"] & point)
    from starqso.preprocessing import screening as quality

    lines += ["", "## The false QSOs", "",
              "Columns: the detection S/N per band (the better of the 1.5\" and 3\" apertures, "
              "as the source check measures it; detected when r >= "
              f"{quality.DETECTION_SNR_R:g} or another band >= {quality.DETECTION_SNR_OTHER:g}), "
              "the bands that pass, the source check's sky sigma (masked, clipped annulus) "
              "over the whole frame's (r, z), "
              "the g+r+i S/N of the brightest 3x3 box within 1.5\", between 1.5\" and 3\", and "
              "beyond 3\" (with its distance), and the offset of the g+r+i light centroid within"
              " 3\" from the crop centre.", ""]
    lines += listing(f"### Blank sky called QSO ({len(false_sky)} of {len(p_sky)})", false_sky,
                     info_sky, sky, p_sky, moved(sky, -np.asarray(sky_settings["shift"])))
    lines += [""]
    lines += listing(f"### Field point sources called QSO ({len(false_star)} of "
                     f"{int(point.sum())})", false_star, info_src, src, src["p"],
                     moved(src, -np.asarray(sky_settings["shift"])), "r_auto",
                     [f"{value:.2f}" for value in r_src])
    header = ("| rows | n | r S/N | best other S/N | sky sigma / frame's (r) | centre box "
              "S/N | ring box S/N | neighbour box S/N | centroid offset |")
    not_called_sky = np.flatnonzero(sky["usable"] & ~called["sky"])
    refused_sky = np.flatnonzero(~sky["usable"])
    faint = point & (r_src >= 20.5) & ~called["sources"]
    lines += ["", "Medians, against the rows not called QSO:", "", header, "|---|" + "---|" * 8,
              medians("blank sky called QSO", false_sky, info_sky),
              medians("blank sky classified, not QSO", not_called_sky, info_sky),
              medians("blank sky refused", refused_sky, info_sky),
              medians("point sources called QSO", false_star, info_src),
              medians("point sources at r >= 20.5 not called QSO", np.flatnonzero(faint),
                      info_src),
              medians("all point sources not called QSO",
                      np.flatnonzero(point & ~called["sources"]), info_src)]
    classified_sky = np.flatnonzero(sky["usable"])
    lines += ["", "Blank sky that is classified (not refused), by qflag bit: called QSO / "
              "classified.", "", "| bit | blank sky classified with the bit | of them called "
              "QSO |", "|---|---|---|"]
    for bit in ("EXTENDED", "BRIGHT_NEIGHBOUR", "LOW_SNR", "OUT_OF_DISTRIBUTION", "ARTEFACT"):
        with_bit = classified_sky[has(sky["qflag"][classified_sky], bit)]
        cell = rate(called["sky"][with_bit].sum(), len(with_bit))
        lines.append(f"| {bit} | {len(with_bit)} | {cell} |")
    none = classified_sky[sky["qflag"][classified_sky] == 0]
    lines.append(f"| none (qflag 0) | {len(none)} | {rate(called['sky'][none].sum(), len(none))}"
                 " |")
    detected = {}
    for row in classified_sky:
        key = "r" if "r" in info_sky["detected_by"][row] else "only " + info_sky[
            "detected_by"][row]
        detected.setdefault(key, []).append(row)
    lines += ["", "Blank sky classified, by the band that passed detection:", "",
              "| detected by | classified | called QSO |", "|---|---|---|"]
    lines += [f"| {key} | {len(rows)} | {rate(called['sky'][rows].sum(), len(rows))} |"
              for key, rows in sorted(detected.items())]
    noise = samples["noise"]["result"]
    noise_classified = int(noise["usable"].sum())
    lines += ["", f"The control, {len(noise['p'])} crops of white Gaussian noise at each "
              f"frame's sky sigma ({args.noise_per_field} per field): classified (passed "
              f"detection) {rate(noise_classified, len(noise['p']))}, called QSO "
              f"{rate(called['noise'].sum(), len(noise['p']))} "
              f"({rate(called['noise'].sum(), noise_classified)} of those classified); the "
              f"real blank sky: classified {rate(blank_classified, len(sky['p']))}, called QSO "
              f"{rate(called['sky'].sum(), len(sky['p']))}."]
    ug, gr = (aperture_features(np.asarray(fields["images"], np.float64))[:, band]
              for band in (0, 1))
    uvx = np.flatnonzero(point & (ug < 0.6) & (gr < 0.6) & (r_src < 21))
    lines += ["", f"Point sources at r < 21 with the colours of a low-redshift QSO (3\" aperture"
              f" u-g < 0.6 and g-r < 0.6, ultraviolet excess): {len(uvx)} of "
              f"{int((point & (r_src < 21)).sum())}, of them called QSO by starqso "
              f"{int(called['sources'][uvx].sum())}, by the peer "
              f"{int(peer_sky['sources'][uvx].sum())}; of all the point sources called QSO, "
              f"starqso's {int(np.isin(false_star, uvx).sum())} of {len(false_star)} and the "
              f"peer's {int(np.isin(np.flatnonzero(peer_sky['sources'] & point), uvx).sum())} of "
              f"{int((peer_sky['sources'] & point).sum())} are among them.", "",
              "| # | field | r_auto | u-g | g-r | p (sky prior) | qflag | peer called QSO |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row} | {fields['field'][row]} | {r_src[row]:.2f} | {ug[row]:.2f} | "
              f"{gr[row]:.2f} | {src['p'][row]:.3f} | {bits_text(src['qflag'][row])} | "
              f"{'yes' if peer_sky['sources'][row] else 'no'} |" for row in uvx]
    lines += what_if(samples, called, point, qso_called, threshold)
    flagged_clean = {name: int((called[name] & (samples[name]['result']['qflag'] == 0)).sum())
                     for name in ("sources", "sky")}
    lines += ["", f"Called QSO with qflag 0 (no caveat): point sources "
              f"{int((called['sources'] & point & (src['qflag'] == 0)).sum())}, blank sky "
              f"{flagged_clean['sky']}."]

    cli_line = ""
    if args.check_cli:
        rows, differ, joint, seconds = check_cli([samples["sources"], samples["sky"]],
                                                 threshold, args.runtime, model_dir)
        cli_line = (f"`starqso predict --runtime {args.runtime}` on FITS cube stacks of the "
                    f"field cutouts (one of the {len(src['p'])} sources, one of the "
                    f"{len(sky['p'])} blank-sky cutouts): {rows - len(differ)} of {rows} rows "
                    f"agree with this script's p_qso, label, qflag and flag ({seconds:.0f} s "
                    f"for these and the joint stack).")
        if differ:
            cli_line += (" **The rows that differ mean this script is not predict's path: "
                         + ", ".join(differ) + ".**")
        cli_line += (f" On one joint stack of both (other batches of 256) "
                     f"{rows - len(joint)} of {rows} agree"
                     + (": " + ", ".join(joint) if joint else "") + ".")
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip() or "unknown CPU"
    wall = time.perf_counter() - STARTED
    command = "python benchmarks/real_fields.py " + " ".join(sys.argv[1:])
    head = [
        "# Real SDSS fields: false QSOs, refusals and EXTENDED", "",
        f"`{command}`", "",
        f"{datetime.date.today()}, git {git}, {cpu}, {os.cpu_count()} cores, wall time "
        f"{wall:.0f} s ({classified_seconds:.0f} s to classify and score every sample). "
        f"Model `{pathlib.Path(model_dir).name}` ({args.runtime}), threshold {threshold:g}, "
        f"default prior {sky_prior:g}; real QSOs at prior {args.qso_prior:g}."
        + ("" if args.blank_half == "all" else
           f" Blank sky: the {args.blank_half} half of each field's cutouts only."), ""]
    if cli_line:
        head += [cli_line, ""]
    text = "\n".join(head + lines) + "\n"
    print(text)
    if args.out is not None:
        marker = "\n## Analysis"
        kept = ""
        if args.out.exists():
            # The hand-written analysis below the marker survives a re-run.
            old = args.out.read_text()
            kept = marker + old.split(marker, 1)[1] if marker in old else ""
        write_text_atomically(args.out, text + kept)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
