"""How often each qflag bit fires, and whether unflagged rows are more reliable.

    python benchmarks/quality_flags.py --shared ../shared/data \
        --out benchmarks/results/quality_flags.md

Measures, with the shipped model (``--model``, LiteRT int8 as ``starqso predict`` runs it on
a light install) and the shipped extended-source scorer:

* point sources the model never saw: ``--fresh`` objects of a new simulation (seed
  ``--seed``), at the simulator's own 30% QSO mix: the rate of every bit, error rates overall
  and among unflagged rows, and ``p_qso_err`` at nominal and doubled sky noise;
* galaxies: ``--galaxies`` Sérsic galaxies rendered at the colours, magnitudes and redshifts
  of the half of the real SDSS GALAXY rows the scorer was not fitted on
  (:func:`starqso.simulate.galaxies.split_galaxy_rows`), in the simulator's conditions:
  EXTENDED per r bin;
* real pixels from ``--shared``: the 14 Kim & Brunner SDSS cutouts (3 stars, 11 galaxies)
  and the 1,861 real SDSS high-z QSO cutouts (bit rates, completeness flagged/unflagged).

``--fit-extended PATH`` first fits the extended-source scorer (training-split point sources
of ``--arrays`` against galaxies of the other half of the rows) and writes it to PATH.
With ``--real-points real_fields_dev.npz`` (and optionally ``--real-galaxies
real_galaxies_dev.npz``) it also fits on real SDSS sources (``ExtendedScorer.fit``'s
``real_point_features``), the point sources simulated anew when there are no ``--arrays``
(``--fit-points`` of them, half injected into ``--sky-backgrounds``, reddened and crowded as the
real-skies retrain simulates), and writes the real-data report instead of the model benchmarks:
leave-one-field-out (each field's stars and extended sources scored by a scorer fitted without
that field's real sources, nor the simulated objects injected into its sky), then the final
scorer on every field and on the Kim & Brunner cutouts:

    python benchmarks/quality_flags.py --shared ../shared/data --fit-extended \
        starqso/resources/extended_source.npz --real-points ../shared/data/real_fields_dev.npz \
        --real-galaxies ../shared/data/real_galaxies_dev.npz \
        --sky-backgrounds dev_skies.npz --out benchmarks/results/extended_real.md
``--update-model DIR [DIR ...]`` writes the quality reference and the selection function of
the run's training/validation split (``--split``) into those model folders (metadata.json
``quality``, selection_function.csv, a model-card section), as ``starqso export`` does for a
new model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starqso._util.atomic import write_text_atomically  # noqa: E402
from starqso.data.arrays import ObjectArrays  # noqa: E402
from starqso.evaluation.metrics import wilson_interval  # noqa: E402
from starqso.inference import open_model, predict_views  # noqa: E402
from starqso.preprocessing.morphology import ExtendedScorer, profile_features  # noqa: E402
from starqso.preprocessing.photometry import SOFTENING  # noqa: E402
from starqso.preprocessing.qflags import quality_bits  # noqa: E402
from starqso.preprocessing.screening import sky_sigma  # noqa: E402
from starqso.schema import QFLAG_BITS  # noqa: E402

R_BINS = ((14.0, 17.0), (17.0, 18.0), (18.0, 19.0), (19.0, 20.0), (20.0, 21.0), (21.0, 23.0))


def crop(cubes, size=32):
    """Centre crops, channels last: (N, 5, S, S) -> (N, size, size, 5)."""
    cubes = np.asarray(cubes, np.float32)
    start = (cubes.shape[-1] - size) // 2
    return np.ascontiguousarray(np.moveaxis(cubes[..., start:start + size, start:start + size],
                                            1, -1))


def luptitudes_to_nanomaggies(images):
    """Per-pixel asinh magnitudes (N, 5, S, S) to nanomaggies."""
    b = SOFTENING[None, :, None, None]
    return 2 * b * np.sinh(-np.asarray(images, np.float64) * np.log(10) / 2.5 - np.log(b)) * 1e9


def load_split(arrays_path, split_path):
    with np.load(arrays_path) as stored:
        arrays = ObjectArrays(**{name: stored[name] for name in (
            "ids", "images", "spectra", "has_spectrum", "labels", "redshift", "mags")})
    split = json.loads(pathlib.Path(split_path).read_text())
    position = {str(identifier): row for row, identifier in enumerate(arrays.ids)}
    return {name: arrays.subset(np.array([position[i] for i in split[name]], np.int64))
            for name in ("train", "validation")}


def fit_extended(train_images, path, num_galaxies):
    """Fit the extended-source scorer: training-split point sources against galaxies of the
    fit half of the rows, half of them drawn from its rows fainter than r = 18.5 (the
    spectroscopic rows are mostly bright; the flag must work to r = 21)."""
    start = time.perf_counter()
    galaxies = fit_galaxies(num_galaxies)
    scorer = ExtendedScorer.fit(profile_features(train_images), profile_features(galaxies))
    scorer.info["command"] = " ".join(sys.argv)
    scorer.info["galaxy_seeds"] = [1, 3]
    scorer.save(path)
    print(f"extended-source scorer -> {path} ({time.perf_counter() - start:.0f} s): "
          f"{json.dumps(scorer.info)}")
    return scorer


#: The real-skies retrain's simulation (issue 37): the point sources the flag must pass.
FIT_REDDENING = (0.35, 2.0)
FIT_CROWDING = (0.3, 20.0)
FIT_SKY_FRACTION = 0.5
#: Real point sources fitted on: r < 21 (fainter, compact galaxies creep into "point-like").
REAL_POINT_MAX_R = 21.0
REAL_R_BINS = ((0.0, 20.0), (20.0, 21.0), (21.0, 99.0))


def crop_features(crops):
    """:func:`profile_features` exactly as :func:`quality_bits` measures them."""
    from starqso.preprocessing.photometry import sky_levels

    crops = np.ascontiguousarray(np.asarray(crops, np.float32))
    return profile_features(crops, sky_levels(crops), sky_sigma(crops))


def cube_features(cubes):
    """Features of (N, 5, S, S) real cutouts (channels first, as the shared files store them)."""
    return crop_features(np.moveaxis(np.asarray(cubes, np.float32), 1, -1))


def simulated_points(count, seed, sky_path):
    """Point sources of the real-skies simulation and the field each was injected into ("" for
    fully simulated ones)."""
    from starqso.simulate.dust import Crowding, Reddening
    from starqso.simulate.injection import BackgroundSource, choose_background

    backgrounds = None if sky_path is None else BackgroundSource.open(
        sky_path, FIT_SKY_FRACTION, size=32)
    arrays = ObjectArrays.from_simulation(count, seed, image_size=32, cutout_size=32, workers=2,
                                          backgrounds=backgrounds,
                                          reddening=Reddening(*FIT_REDDENING),
                                          crowding=Crowding(*FIT_CROWDING))
    if backgrounds is None:
        return arrays.images, np.full(count, "")
    names = backgrounds.load(32).fields
    chosen = [choose_background(seed, index, backgrounds.fraction, backgrounds.count)
              for index in range(count)]
    return arrays.images, np.array(["" if k is None else str(names[k]) for k in chosen])


def fit_galaxies(num_galaxies):
    """Galaxies of the fit half of the rows, half drawn from its rows fainter than r = 18.5
    (the spectroscopic rows are mostly bright; the flag must work to r = 21)."""
    from starqso.simulate.galaxies import galaxy_rows, simulate_galaxies, split_galaxy_rows

    fit_rows, _ = split_galaxy_rows()
    faint_rows = fit_rows[galaxy_rows()["mags"][fit_rows, 2] > 18.5]
    return np.concatenate([
        crop(simulate_galaxies(num_galaxies // 2, 1, rows=fit_rows)[0]),
        crop(simulate_galaxies(num_galaxies - num_galaxies // 2, 3, rows=faint_rows)[0])])


def real_sources(points_path, galaxies_path):
    """Features, fields and r of the real field sources and (optionally) real galaxies."""
    with np.load(points_path) as stored:
        real = {"features": cube_features(stored["images"]), "field": stored["field"].astype(str),
                "r": stored["r_auto"], "pointlike": stored["pointlike"].astype(bool)}
    real["galaxies"] = None
    if galaxies_path is not None:
        with np.load(galaxies_path) as stored:
            real["galaxies"] = {"features": cube_features(stored["images"]),
                                "field": stored["field"].astype(str), "r": stored["r_auto"]}
    return real


def fit_real(point_features, galaxy_features, real, args, exclude=None):
    """ExtendedScorer.fit with the real sources of every field but ``exclude``."""
    keep = real["field"] != exclude
    points = real["pointlike"] & (real["r"] < REAL_POINT_MAX_R) & keep
    extended = None
    if real["galaxies"] is not None:
        extended = real["galaxies"]["features"][real["galaxies"]["field"] != exclude]
    return ExtendedScorer.fit(point_features, galaxy_features,
                              real_point_features=real["features"][points],
                              real_extended_features=extended, real_weight=args.real_weight,
                              real_false_positive_rate=args.real_false_positive_rate,
                              real_point_calibrates=real["r"][points] < args.real_calibration_max_r,
                              seed=args.fit_seed, max_iter=args.fit_iterations)


def flagged_cell(scores, threshold, pick):
    k, n = int(np.sum(scores[pick] >= threshold)), int(np.sum(pick))
    return f"{k / max(n, 1):.3f} ({k}/{n})"


def real_report(args, point_images, point_fields):
    """Leave-one-field-out fits, then the final scorer on every field: report lines."""
    start = time.perf_counter()
    real = real_sources(args.real_points, args.real_galaxies)
    point_features = crop_features(point_images)
    galaxy_features = crop_features(fit_galaxies(args.fit_galaxies))
    print(f"features ({time.perf_counter() - start:.0f} s)", flush=True)
    shipped = ExtendedScorer.load()
    fields = sorted(set(real["field"]))
    stars = real["pointlike"]
    lines = ["## Leave one field out", "",
             "Each row: a scorer fitted without that field's real sources (nor the simulated "
             "objects injected into its blank sky), scored on that field. Shipped: the scorer "
             "shipped before this fit, on the same sources.", "",
             "| field | stars r<20 | stars r 20-21 | extended (field) | real galaxies | "
             "shipped: stars r<20 | shipped: stars r 20-21 | shipped: real galaxies | "
             "threshold (sim / real) |", "|---|---|---|---|---|---|---|---|---|"]
    pooled = {"held": [], "shipped": []}
    for field in fields:
        scorer = fit_real(point_features[point_fields != field], galaxy_features, real, args,
                          exclude=field)
        here = real["field"] == field
        cells = []
        for model in (scorer, shipped):
            scores = model.score_features(real["features"])
            galaxy_cell = "-"
            if real["galaxies"] is not None:
                galaxy_scores = model.score_features(real["galaxies"]["features"])
                galaxy_cell = flagged_cell(galaxy_scores, model.threshold,
                                           real["galaxies"]["field"] == field)
            cells.append((flagged_cell(scores, model.threshold, here & stars & (real["r"] < 20)),
                          flagged_cell(scores, model.threshold,
                                       here & stars & (real["r"] >= 20) & (real["r"] < 21)),
                          flagged_cell(scores, model.threshold, here & ~stars), galaxy_cell))
            key = "held" if model is scorer else "shipped"
            pooled[key].append(scores[here] >= model.threshold)
        lines.append(f"| {field} | {' | '.join(cells[0])} | {cells[1][0]} | {cells[1][1]} | "
                     f"{cells[1][3]} | {scorer.info['simulated_threshold']:.3f} / "
                     f"{scorer.info['real_threshold']:.3f} |")
        print(lines[-1], flush=True)
    order = np.concatenate([np.flatnonzero(real["field"] == field) for field in fields])
    held = np.concatenate(pooled["held"])
    bright = (stars & (real["r"] < 20))[order]
    per_field = [np.mean(flags[(stars & (real["r"] < 20))[real["field"] == field]])
                 for field, flags in zip(fields, pooled["held"], strict=False)]
    lines += ["", f"Held-out fields pooled: stars r<20 flagged {np.mean(held[bright]):.3f} "
              f"({int(held[bright].sum())}/{int(bright.sum())}); mean over fields "
              f"{np.mean(per_field):.3f}, worst field {np.max(per_field):.3f}.", ""]

    scorer = fit_real(point_features, galaxy_features, real, args)
    scorer.info["command"] = " ".join(sys.argv)
    scorer.info["galaxy_seeds"] = [1, 3]
    scorer.info["point_seed"] = args.fit_seed
    lines += ["## Final scorer (fitted on all six fields' real sources)", "",
              f"Fit: {json.dumps(scorer.info, sort_keys=True)}", "",
              "In-sample for the real sources (the leave-one-field-out table is the "
              "generalisation estimate).", "",
              "| sources | new | shipped |", "|---|---|---|"]
    scores = {model: model.score_features(real["features"]) for model in (scorer, shipped)}
    rows = [(f"point-like stars r {low:g}-{high:g}",
             stars & (real["r"] >= low) & (real["r"] < high)) for low, high in REAL_R_BINS]
    for name, pick in [*rows, ("extended field sources", ~stars)]:
        lines.append(f"| {name} | {flagged_cell(scores[scorer], scorer.threshold, pick)} | "
                     f"{flagged_cell(scores[shipped], shipped.threshold, pick)} |")
    if real["galaxies"] is not None:
        galaxy_scores = {model: model.score_features(real["galaxies"]["features"])
                         for model in (scorer, shipped)}
        for low, high in ((0.0, 21.0), (0.0, 15.0), (15.0, 21.0)):
            pick = (real["galaxies"]["r"] >= low) & (real["galaxies"]["r"] < high)
            lines.append(f"| real galaxies r {low:g}-{high:g} | "
                         f"{flagged_cell(galaxy_scores[scorer], scorer.threshold, pick)} | "
                         f"{flagged_cell(galaxy_scores[shipped], shipped.threshold, pick)} |")
    if args.shared is not None:
        with np.load(args.shared / "sdss_cutouts_kim_brunner.npz") as stored:
            kb = crop_features(crop(luptitudes_to_nanomaggies(stored["images"])))
            kb_labels = stored["label"].astype(str)
        for label in ("GALAXY", "STAR"):
            pick = kb_labels == label
            lines.append(f"| Kim & Brunner {label} | "
                         f"{flagged_cell(scorer.score_features(kb), scorer.threshold, pick)} | "
                         f"{flagged_cell(shipped.score_features(kb), shipped.threshold, pick)} |")
    lines.append("")
    return scorer, lines


def update_model(folders, splits):
    """Write the quality reference and selection function into exported model folders."""
    from starqso._util.atomic import write_json_atomically
    from starqso.deploy.model_card import SELECTION_FILE, quality_card, quality_reference
    from starqso.evaluation.metrics import selection_csv_text

    for folder in folders:
        folder = pathlib.Path(folder)
        metadata, predictor = open_model(folder, "keras")
        validation = splits["validation"]
        p, _ = predict_views(predictor, validation.images, uncertainty=False)
        quality, selection = quality_reference(splits["train"].images, validation, p,
                                               metadata["threshold"])
        metadata["quality"] = quality
        write_json_atomically(folder / "metadata.json", metadata, sort_keys=False)
        write_text_atomically(folder / SELECTION_FILE, selection_csv_text(selection))
        card = (folder / "model_card.md").read_text()
        marker = "\n## Quality bits and selection function"
        card = card.split(marker)[0].rstrip("\n") + "\n" + quality_card(quality, selection)
        write_text_atomically(folder / "model_card.md", card)
        print(f"quality reference -> {folder}: r_range {quality['r_range']}, "
              f"validation OOD {quality['validation_ood_fraction']:.3f}")


def classify(predictor, metadata, images, repaired=None):
    p, p_err = predict_views(predictor, images, uncertainty=True)
    bits = quality_bits(images, repaired, metadata.get("quality"))
    return p, p_err, bits


def rates(bits):
    return {name: float(np.mean(bits & value != 0)) for name, value in QFLAG_BITS.items()
            if name != "NOT_CLASSIFIED"}


def rate_cell(k, n):
    low, high = wilson_interval(k, n)
    return f"{k / max(n, 1):.3f} [{low:.3f}, {high:.3f}] ({k}/{n})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arrays", type=pathlib.Path, default=None,
                        help="the shipped model's simulation arrays (the fit's cache .npz); "
                             "needed by --fit-extended and --update-model only")
    parser.add_argument("--split", type=pathlib.Path, default=None,
                        help="the shipped model's run split.json (with --arrays)")
    parser.add_argument("--model", type=pathlib.Path, default=ROOT / "starqso" / "pretrained")
    parser.add_argument("--shared", type=pathlib.Path, default=None,
                        help="../shared/data, for the real cutouts")
    parser.add_argument("--fresh", type=int, default=3000)
    parser.add_argument("--galaxies", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--fit-extended", type=pathlib.Path, default=None)
    parser.add_argument("--fit-galaxies", type=int, default=12000)
    parser.add_argument("--real-points", type=pathlib.Path, default=None,
                        help="real_fields_dev.npz: fit --fit-extended on its real sources too "
                             "and write the leave-one-field-out report, not the model benchmarks")
    parser.add_argument("--real-galaxies", type=pathlib.Path, default=None,
                        help="real_galaxies_dev.npz: real extended sources (with --real-points)")
    parser.add_argument("--real-weight", type=float, default=5.0)
    parser.add_argument("--real-false-positive-rate", type=float, default=0.02)
    parser.add_argument("--real-calibration-max-r", type=float, default=20.0,
                        help="the real stars brighter than this set the real threshold (the "
                             "flag's budget is set at r < 20); fainter ones are only fitted on")
    parser.add_argument("--fit-points", type=int, default=8000,
                        help="simulated point sources when there are no --arrays")
    parser.add_argument("--fit-seed", type=int, default=37)
    parser.add_argument("--fit-iterations", type=int, default=400)
    parser.add_argument("--sky-backgrounds", type=pathlib.Path, default=None,
                        help="starqso skies file the simulated point sources are injected into")
    parser.add_argument("--update-model", type=pathlib.Path, nargs="*", default=())
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if (args.arrays is None) != (args.split is None):
        parser.error("--arrays and --split go together (the shipped model's run)")
    if args.real_points is not None and args.fit_extended is None:
        parser.error("--real-points goes with --fit-extended")
    if ((args.fit_extended is not None and args.real_points is None) or args.update_model) \
            and args.arrays is None:
        parser.error("--fit-extended (without --real-points) and --update-model need the "
                     "shipped model's --arrays and --split")
    splits = None if args.arrays is None else load_split(args.arrays, args.split)
    if args.real_points is not None:
        if splits is not None:
            point_images = splits["train"].images
            point_fields = np.full(len(point_images), "")
        else:
            point_images, point_fields = simulated_points(args.fit_points, args.fit_seed,
                                                          args.sky_backgrounds)
        scorer, lines = real_report(args, point_images, point_fields)
        scorer.save(args.fit_extended)
        text = "\n".join(["# EXTENDED on real SDSS sources", "", f"`python {' '.join(sys.argv)}`",
                          "", *lines, f"Total time {time.perf_counter() - start:.0f} s."]) + "\n"
        print(text)
        if args.out is not None:
            write_text_atomically(args.out, text)
        return
    if args.fit_extended is not None:
        fit_extended(splits["train"].images, args.fit_extended, args.fit_galaxies)
        from starqso.preprocessing import morphology

        morphology._shipped.cache_clear()
    if args.update_model:
        update_model(args.update_model, splits)
    metadata, predictor = open_model(args.model, "litert")
    threshold = metadata["threshold"]
    lines = ["# qflag bits and p_qso_err", "",
             f"`python {' '.join(sys.argv)}`", "",
             f"Model `{args.model.name}` (LiteRT int8), threshold {threshold}, p_qso at the "
             "training mix (`--prior train`). Intervals are 68% Wilson intervals.", ""]

    # --- in-domain point sources ---
    fresh = ObjectArrays.from_simulation(args.fresh, args.seed, image_size=32, cutout_size=48,
                                         workers=2)
    p, p_err, bits = classify(predictor, metadata, fresh.images)
    labels = fresh.labels.astype(int)
    called = (p >= threshold).astype(int)
    errors = called != labels
    clean = bits == 0
    fresh_rates = rates(bits)
    noisy_images = fresh.images + np.random.default_rng(args.seed).normal(
        size=fresh.images.shape).astype(np.float32) * np.median(
        sky_sigma(fresh.images), axis=0)[None, None, None, :] * np.sqrt(3.0)
    _, p_err_noisy, _ = classify(predictor, metadata, noisy_images)
    lines += [f"## Point sources: {args.fresh} new simulated objects (seed {args.seed}, "
              f"{labels.mean():.0%} QSO)", "",
              "| bit | fraction of rows |", "|---|---|"]
    lines += [f"| {name} | {rate_cell(int(np.sum(bits & QFLAG_BITS[name] != 0)), len(bits))} |"
              for name in fresh_rates]
    lines += [f"| any (qflag != 0) | {rate_cell(int(np.sum(~clean)), len(bits))} |", "",
              "| rows | n | error rate | macro-F1 |", "|---|---|---|---|"]
    from starqso.evaluation.metrics import classification_metrics

    for name, pick in (("all", np.ones_like(clean)), ("unflagged (qflag 0)", clean),
                       ("flagged (qflag != 0)", ~clean)):
        f1 = (classification_metrics(labels[pick], p[pick], threshold)["macro_f1"]
              if 0 < labels[pick].mean() < 1 else float("nan"))
        cell = rate_cell(int(errors[pick].sum()), int(pick.sum()))
        lines.append(f"| {name} | {pick.sum()} | {cell} | {f1:.4f} |")
    lines += ["", f"p_qso_err (spread over the cutout and its 180-degree rotation): mean "
              f"{np.mean(p_err):.4f}, median {np.median(p_err):.4f} at the simulated noise; "
              f"mean {np.mean(p_err_noisy):.4f}, median {np.median(p_err_noisy):.4f} with "
              f"white noise added to twice the median sky sigma. Error rate among the 10% "
              f"largest p_qso_err: {errors[p_err >= np.quantile(p_err, 0.9)].mean():.3f}; "
              f"among the rest: {errors[p_err < np.quantile(p_err, 0.9)].mean():.3f}.", ""]

    # --- galaxies ---
    from starqso.simulate.galaxies import simulate_galaxies, split_galaxy_rows

    _, test_rows = split_galaxy_rows()
    cutouts, table = simulate_galaxies(args.galaxies, seed=2, rows=test_rows)
    galaxies = crop(cutouts)
    g_p, _, g_bits = classify(predictor, metadata, galaxies)
    r_gal = np.asarray(table["mags"])[:, 2]
    extended = g_bits & QFLAG_BITS["EXTENDED"] != 0
    lines += [f"## Galaxies: {args.galaxies} rendered Sérsic galaxies (real SDSS GALAXY rows "
              "the scorer was not fitted on, seed 2)", "",
              "| r | n | EXTENDED | any bit | called QSO (no bit) |", "|---|---|---|---|---|"]
    for low, high in ((0, 21.0), *R_BINS):
        pick = (r_gal >= low) & (r_gal < high)
        name = "all r < 21" if low == 0 else f"{low:g}-{high:g}"
        cell = rate_cell(int(extended[pick].sum()), int(pick.sum()))
        any_bit = np.mean(g_bits[pick] != 0) if pick.any() else 0.0
        passed = np.mean((g_p[pick] >= threshold) & (g_bits[pick] == 0)) if pick.any() else 0.0
        lines.append(f"| {name} | {pick.sum()} | {cell} | {any_bit:.3f} | {passed:.3f} |")
    ratio = np.asarray(table["half_light_radius_arcsec"]) / np.asarray(table["psf_fwhm_r"])
    lines += ["", "By size relative to the seeing (r < 21): a galaxy much smaller than the PSF "
              "is a point source to any measurement without the PSF.", "",
              "| half-light radius / r-band PSF FWHM | n | EXTENDED |", "|---|---|---|"]
    for low, high in ((0, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.5), (1.5, np.inf)):
        pick = (ratio >= low) & (ratio < high) & (r_gal < 21)
        cell = rate_cell(int(extended[pick].sum()), int(pick.sum()))
        lines.append(f"| {low:g}-{high:g} | {pick.sum()} | {cell} |")
    point_extended = bits & QFLAG_BITS["EXTENDED"] != 0
    lines += ["", f"Point sources with EXTENDED: {rate_cell(int(point_extended.sum()), len(bits))}"
              f" (stars {np.mean(point_extended[labels == 0]):.3f}, QSOs "
              f"{np.mean(point_extended[labels == 1]):.3f}).", ""]

    # --- real pixels ---
    if args.shared is not None:
        with np.load(args.shared / "sdss_cutouts_kim_brunner.npz") as stored:
            kb = crop(luptitudes_to_nanomaggies(stored["images"]))
            kb_labels = stored["label"]
        kb_score = ExtendedScorer.load().score(kb)
        _, _, kb_bits = classify(predictor, metadata, kb)
        lines += ["## Real SDSS cutouts (Kim & Brunner, 14)", "",
                  "| label | extended score | qflag bits |", "|---|---|---|"]
        from starqso.preprocessing.qflags import bit_names

        for label, score, value in zip(kb_labels, kb_score, kb_bits, strict=False):
            lines.append(f"| {label} | {score:.3f} | {', '.join(bit_names(value)) or '-'} |")
        with np.load(args.shared / "real_qso_iqvit_dev.npz") as stored:
            real = crop(stored["images"])
            real_r = stored["r"]
        r_p, _, r_bits = classify(predictor, metadata, real)
        found = r_p >= threshold
        real_clean = r_bits == 0
        lines += ["", f"## Real SDSS high-z QSO cutouts ({len(real)}, 2.75 < z < 5)", "",
                  "| bit | fraction |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in rates(r_bits).items()]
        lines += [f"| any | {np.mean(~real_clean):.3f} |", "",
                  f"Completeness at the training prior: all {found.mean():.3f}, unflagged "
                  f"{found[real_clean].mean():.3f} ({real_clean.sum()}), flagged "
                  f"{found[~real_clean].mean():.3f} ({(~real_clean).sum()}); median r of the "
                  f"flagged {np.median(real_r[~real_clean]):.2f}.", ""]
    lines.append(f"Total time {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_text_atomically(args.out, text)


if __name__ == "__main__":
    main()
