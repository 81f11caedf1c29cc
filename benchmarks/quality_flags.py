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

from starqso.data.arrays import ObjectArrays  # noqa: E402
from starqso.evaluation.metrics import wilson_interval  # noqa: E402
from starqso.inference import open_model, predict_views  # noqa: E402
from starqso.preprocessing.morphology import ExtendedScorer, profile_features  # noqa: E402
from starqso.preprocessing.photometry import SOFTENING  # noqa: E402
from starqso.preprocessing.qflags import quality_bits  # noqa: E402
from starqso.preprocessing.quality import sky_sigma  # noqa: E402
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
    from starqso.simulate.galaxies import galaxy_rows, simulate_galaxies, split_galaxy_rows

    fit_rows, _ = split_galaxy_rows()
    faint_rows = fit_rows[galaxy_rows()["mags"][fit_rows, 2] > 18.5]
    start = time.perf_counter()
    galaxies = np.concatenate([
        crop(simulate_galaxies(num_galaxies // 2, 1, rows=fit_rows)[0]),
        crop(simulate_galaxies(num_galaxies - num_galaxies // 2, 3, rows=faint_rows)[0])])
    scorer = ExtendedScorer.fit(profile_features(train_images), profile_features(galaxies))
    scorer.info["command"] = " ".join(sys.argv)
    scorer.info["galaxy_seeds"] = [1, 3]
    scorer.save(path)
    print(f"extended-source scorer -> {path} ({time.perf_counter() - start:.0f} s): "
          f"{json.dumps(scorer.info)}")
    return scorer


def update_model(folders, splits):
    """Write the quality reference and selection function into exported model folders."""
    from starqso.atomic import write_json_atomically, write_text_atomically
    from starqso.evaluation.metrics import selection_csv_text
    from starqso.export import SELECTION_FILE, quality_card, quality_reference

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
    parser.add_argument("--update-model", type=pathlib.Path, nargs="*", default=())
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if (args.arrays is None) != (args.split is None):
        parser.error("--arrays and --split go together (the shipped model's run)")
    if (args.fit_extended is not None or args.update_model) and args.arrays is None:
        parser.error("--fit-extended and --update-model need the shipped model's --arrays "
                     "and --split")
    splits = None if args.arrays is None else load_split(args.arrays, args.split)
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

        for label, score, value in zip(kb_labels, kb_score, kb_bits):
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
        args.out.write_text(text)


if __name__ == "__main__":
    main()
