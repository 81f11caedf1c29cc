"""The paper's table (Wang et al. 2023, PASP 135, 104502), reproduced and extended.

    python benchmarks/paper_table.py                    # full: 3 seeds, test 5,000 objects
    python benchmarks/paper_table.py --quick            # smoke version, one seed, minutes
    python benchmarks/paper_table.py --real-catalog ../shared/data/sdss_photometry_labelled.csv.gz

One simulation with a fixed train / validation / test split (``data.split_seed`` 0); every
neural row is trained once per training seed and scored on the same test objects:

* spectrum-only: the spectrum encoder + head, on the real spectrum;
* image-only CNN: the same image trunk as every image model, no vector;
* MTL, the seed method: image + GAN-generated vector (GAN with adversarial + L2 reconstruction
  loss; ``model.photometry: false``);
* MTL + photometry (what ``starqso fit`` trains and ships): the generator and the fusion
  classifier also take aperture photometry measured inside the model from the cutout
  (``model.photometry: true``), sharing the encoder and the image-only baseline of the
  seed-method run;
* MTL + distillation: the same GAN with a distillation term (the frozen spectrum head must
  classify a generated vector as it does the real one; ``training.gan_distillation_weight``
  1.0), sharing the encoder and the image-only baseline of the seed-method run;
* MTL with the real spectral vector (upper bound: needs the spectrum at inference);
* image + photometric features: the image CNN + a dense branch on aperture photometry measured
  from the same cutout (MargNet-style), the features of the classical rows;
* classical peers (LogReg, DecisionTree, RandomForest, AdaBoost, gradient boosting) on aperture
  photometry (4 colours, r, concentration) measured from the cutouts;
* the other generator: MTL + photometry with the conditional diffusion generator
  (``model.generator: diffusion``) in place of the GAN, on the same encoder;
* the other trunks (``model.trunk``): the image-only classifier with each keras.applications
  trunk (random weights) and with the hybrid convolution + relative-attention trunk, as variant
  stages of the seed-method run; and the whole MTL + photometry method on the hybrid trunk.

Every row says how long its own stages trained (the shared spectrum encoder is not counted).

With ``--real-catalog`` it adds the real-data table of ``real_photometry.py``: the shipped model
and this table's MTL model on the real SDSS rows rendered as cutouts, against the classical
peers on photometry from those cutouts and on the exact catalogue colours (5-fold CV).

The table (markdown) goes to stdout and to ``--out`` (default
``benchmarks/results/paper_table.md``, not written by ``--quick`` unless ``--out`` is given)
with the command, date, machine, git hash and run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from starqso._util.atomic import write_text_atomically

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

R_EDGES = (0.0, 18.0, 19.0, 20.0, 21.0, 30.0)
ROWS = (
    ("spectrum", "spectrum-only (encoder + head)", "spectrum"),
    ("image", "image-only CNN (same trunk)", "image"),
    ("mtl", "MTL, seed method: image + GAN-generated vector (the paper's)", "image"),
    ("mtl_photometry", "MTL + photometry: image + in-model aperture photometry + GAN vector "
     "(shipped)", "image"),
    ("mtl_distill", "MTL + distillation of the spectrum head into the GAN", "image"),
    ("mtl_real", "MTL with the real spectral vector (upper bound)", "image + spectrum"),
    ("photometry", "image CNN + photometric-features branch", "image"),
    ("logistic_regression", "LogReg on cutout photometry", "image"),
    ("decision_tree", "DecisionTree on cutout photometry", "image"),
    ("random_forest", "RandomForest on cutout photometry", "image"),
    ("adaboost", "AdaBoost on cutout photometry", "image"),
    ("gradient_boosting", "gradient boosting on cutout photometry", "image"),
    ("mtl_diffusion", "MTL + photometry with the diffusion generator (4 DDIM steps)", "image"),
    ("mtl_hybrid", "MTL + photometry on the hybrid conv + relative-attention trunk", "image"),
    *((f"image_{trunk}", f"image-only, {title} trunk (random init)", "image") for trunk, title in (
        ("hybrid", "hybrid conv + relative-attention"), ("resnet50", "ResNet-50"),
        ("densenet121", "DenseNet-121"), ("vgg16", "VGG-16"), ("xception", "Xception"),
        ("efficientnetb0", "EfficientNet-B0"))),
)
#: The keras.applications and hybrid trunks of the image-only trunk rows.
TRUNK_ROWS = ("hybrid", "resnet50", "densenet121", "vgg16", "xception", "efficientnetb0")
#: The MTL rows whose generated vectors get the GAN diagnostics.
GENERATOR_ROWS = (("mtl", "seed method"), ("mtl_distill", "+ distillation"),
                  ("mtl_photometry", "+ photometry"),
                  ("mtl_diffusion", "+ photometry, diffusion generator"),
                  ("mtl_hybrid", "+ photometry, hybrid trunk"))
Z_EDGES = (0.0, 1.0, 2.0, 2.75, 3.5, 7.5)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small smoke version: 3,000 objects, 3 epochs, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds [default: 0 1 2; --quick: 0]")
    parser.add_argument("--num-objects", type=int, default=None,
                        help="objects simulated [default: 14,500; --quick: 3,000]")
    parser.add_argument("--test-objects", type=int, default=None,
                        help="test objects [default: 5,000; --quick: 1,000]")
    parser.add_argument("--validation-objects", type=int, default=None,
                        help="validation objects [default: 1,500; --quick: 500]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every stage [default: the base preset's]")
    parser.add_argument("--simulation-seed", type=int, default=2023)
    parser.add_argument("--cache", default=None,
                        help=".npz file holding the simulation (written if missing)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the run folders [default: a temporary folder]")
    parser.add_argument("--real-catalog", default=None,
                        help="real labelled catalogue for the real-data rows")
    parser.add_argument("--out", default=None, help="markdown results file")
    parser.add_argument("--reuse", action="store_true",
                        help="take a seed's results from WORKDIR/seedN/results.pkl when an "
                             "earlier run left them (e.g. to re-format, or after a stop)")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.num_objects = args.num_objects or (3000 if quick else 14500)
    args.test_objects = args.test_objects or (1000 if quick else 5000)
    args.validation_objects = args.validation_objects or (500 if quick else 1500)
    if args.epochs is None and quick:
        args.epochs = 3
    if args.out is None and not quick:
        args.out = str(ROOT / "benchmarks/results/paper_table.md")
    return args


def load_simulation(args):
    from starqso.data.arrays import ObjectArrays

    # The seed is part of the cache's name: a cache of another simulation is never taken.
    cache = pathlib.Path(f"{args.cache}.seed{args.simulation_seed}.npz") if args.cache else None
    if cache is not None and cache.exists():
        stored = ObjectArrays.load(cache)
        if len(stored) >= args.num_objects:
            # Object i of a seed is the same whatever the total: a prefix is a simulation.
            return stored.subset(np.arange(args.num_objects))
    arrays = ObjectArrays.from_simulation(args.num_objects, args.simulation_seed, image_size=32)
    if cache is not None:
        arrays.save(cache)
    return arrays


def run_config(args, seed, photometry=False, model_changes=None, **training_changes):
    from starqso.config import get_preset

    base = get_preset("base")
    base = dataclasses.replace(base, model=dataclasses.replace(
        base.model, photometry=photometry, **(model_changes or {})))
    training = {"seed": seed, **training_changes}
    if args.epochs is not None:
        training.update({f"{stage}_epochs": args.epochs
                         for stage in ("encoder", "gan", "diffusion", "photometry", "fusion",
                                       "image", "metric")})
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, num_objects=args.num_objects,
                                 simulation_seed=args.simulation_seed,
                                 validation_fraction=args.validation_objects / args.num_objects,
                                 test_fraction=args.test_objects / args.num_objects,
                                 split_seed=0),
        training=dataclasses.replace(base.training, **training))


STAGE_LINE = re.compile(r"^\[(\w+)\] \d+ epochs, (\d+) s, ")


class StageClock:
    """Seconds each row's stages trained, read from the runner's one-line stage summaries."""

    def __init__(self, log):
        self.log, self.seconds = log, {}

    def __call__(self, rows):
        """A log callable adding each trained stage's seconds to its row: ``rows`` maps stage
        names to rows (stages not named are not counted), or is one row for every stage."""
        def log(line):
            match = STAGE_LINE.match(line)
            if match:
                row = rows if isinstance(rows, str) else rows.get(match.group(1))
                if row is not None:
                    self.seconds[row] = self.seconds.get(row, 0.0) + float(match.group(2))
            self.log(line)
        return log


def variant_run(method_dir, out_dir, config, arrays, log):
    """The generator, photometry head (with photometry) and fusion stages again with
    ``config``, on the seed-method run's encoder (a variant needs no image-only baseline of
    its own)."""
    from starqso.training import fit_run
    from starqso.training.stages import default_stages

    shutil.rmtree(out_dir, ignore_errors=True)  # a run stopped half-way starts again
    stages = default_stages(config)
    through_fusion = stages[:[stage.name for stage in stages].index("fusion") + 1]
    fit_run(out_dir, config, arrays=arrays, export=False, log=log, stages=through_fusion,
            reuse={"encoder": method_dir})


def generated_vectors(folder, scaled, test_images):
    """The run's generator on the test objects, zero noise (photometry from its own layer)."""
    from starqso.training.run_folder import RunFolder
    from starqso.training.stages import generate_vectors

    run = RunFolder(folder)
    generator = run.load_model("generator.keras")
    inputs = {"image": scaled}
    if generator.photometry_dim:
        inputs["photometry"] = np.asarray(run.load_model(run.DEPLOYABLE).photometry(test_images))
    return generate_vectors(generator, inputs, np.arange(len(scaled)), zero_noise=True)


def gan_diagnostics(generated, real, labels, head):
    """R^2 and spread of generated vs real vectors; the spectrum head on the generated ones."""
    from starqso.evaluation import classification_metrics

    return {
        "r2": float(1 - np.sum((generated - real) ** 2)
                    / np.sum((real - real.mean(axis=0)) ** 2)),
        "spread": float(np.mean(generated.std(axis=0)) / np.mean(real.std(axis=0))),
        "head_macro_f1": classification_metrics(labels, np.asarray(head(generated)))[
            "macro_f1"],
    }


def photometry_row(args, seed, arrays, workdir, test, log, folder="photometry_mtl",
                   model_changes=None):
    """An MTL + photometry row of one seed (``model_changes``: its generator or trunk):
    (p_qso on test, rate, params), diagnostics."""
    import keras

    from starqso.models import CutoutScaling
    from starqso.training.run_folder import RunFolder

    method_dir = workdir / f"seed{seed}" / "seed_method"
    out_dir = workdir / f"seed{seed}" / folder
    variant_run(method_dir, out_dir, run_config(args, seed, photometry=True,
                                                model_changes=model_changes), arrays,
                log)
    deployable = keras.saving.load_model(out_dir / "starqso_classifier.keras", safe_mode=True)
    test_images = arrays.images[test]
    result = (*timed(lambda: deployable.predict({"image": test_images}, batch_size=512,
                                                verbose=0)), deployable.count_params())
    stats = RunFolder(out_dir).preprocessing()
    scaled = np.asarray(CutoutScaling(**{key: stats[key] for key in ("softening", "mean",
                                                                     "std")})(test_images))
    spectrum_classifier = keras.saving.load_model(out_dir / "spectrum_classifier.keras",
                                                  safe_mode=True)
    real = spectrum_classifier.encoder.predict({"spectrum": arrays.spectra[test]},
                                               batch_size=512, verbose=0)
    diagnostics = gan_diagnostics(generated_vectors(out_dir, scaled, test_images), real,
                                  arrays.labels[test].astype(int),
                                  spectrum_classifier.get_layer("p_qso"))
    return result, diagnostics


def timed(predict):
    """(probabilities, cutouts/s) of a prediction callable over the test set, timed on a
    second pass (the first traces the model's graph: seconds for the larger trunks)."""
    predict()
    began = time.perf_counter()
    probabilities = np.asarray(predict(), dtype=np.float64).ravel()
    return probabilities, len(probabilities) / (time.perf_counter() - began)


def one_seed(args, seed, arrays, workdir, log):
    """Train every neural row for one seed; returns {row: (p_qso on test, rate, params)},
    plus "diagnostics" (GAN diagnostics per MTL row) and "train_seconds" (per row)."""
    import keras

    from starqso.evaluation.baselines import CLASSICAL, fit_classical, predict_classical
    from starqso.models import CutoutScaling
    from starqso.preprocessing.photometry import photometric_features
    from starqso.training import EncoderStage, FusionStage, ImageStage, fit_run
    from starqso.training.inputs import fit_photometry
    from starqso.training.run_folder import RunFolder

    clock = StageClock(log)
    config = run_config(args, seed)
    method_dir = workdir / f"seed{seed}" / "seed_method"
    distill_dir = workdir / f"seed{seed}" / "distillation"
    fit_run(method_dir, config, arrays=arrays, export=False, log=clock(
        {"encoder": "spectrum", "image": "image", "gan": "mtl", "fusion": "mtl"}))
    variant_run(method_dir, distill_dir, run_config(args, seed, gan_distillation_weight=1.0),
                arrays, clock({"gan": "mtl_distill", "fusion": "mtl_distill"}))
    # The peers on the seed method's encoder and split, as stages of the same run: the fusion
    # classifier on the real spectral vector (upper bound) and on aperture photometry, and the
    # image-only classifier on each other trunk.
    fit_run(method_dir, None, arrays=arrays, resume=True, export=False, log=clock(
        {"fusion_real_vector": "mtl_real", "image_photometry": "photometry",
         **{f"image_{trunk}": f"image_{trunk}" for trunk in TRUNK_ROWS}}),
            stages=[EncoderStage(), FusionStage("real", name="fusion_real_vector"),
                    FusionStage("photometry", name="image_photometry"),
                    *(ImageStage(trunk) for trunk in TRUNK_ROWS)])

    run = RunFolder(method_dir)
    split = run.split()
    index = {name: i for i, name in enumerate(arrays.ids)}
    train, test = (np.array([index[i] for i in split[part]]) for part in ("train", "test"))
    labels = arrays.labels.astype(np.int64)

    def load(folder, name):
        return keras.saving.load_model(folder / name, safe_mode=True)

    stats = run.preprocessing()
    scaling = CutoutScaling(**{key: stats[key] for key in ("softening", "mean", "std")})
    scaled = np.asarray(scaling(arrays.images))
    test_images, test_spectra = arrays.images[test], arrays.spectra[test]
    results = {}

    spectrum_classifier = load(method_dir, "spectrum_classifier.keras")
    results["spectrum"] = (*timed(lambda: spectrum_classifier.predict(
        {"spectrum": test_spectra}, batch_size=512, verbose=0)),
        spectrum_classifier.count_params())
    # Image rows are timed from raw cutouts: the asinh scaling is part of each model's cost.
    for key, name in (("image", "image_classifier.keras"),
                      *((f"image_{trunk}", f"image_classifier_{trunk}.keras")
                        for trunk in TRUNK_ROWS)):
        image_classifier = load(method_dir, name)
        results[key] = (*timed(lambda m=image_classifier: m.predict(
            {"image": np.asarray(scaling(test_images))}, batch_size=512, verbose=0)),
            image_classifier.count_params())
    for key, folder in (("mtl", method_dir), ("mtl_distill", distill_dir)):
        deployable = load(folder, "starqso_classifier.keras")
        results[key] = (*timed(lambda m=deployable: m.predict(
            {"image": test_images}, batch_size=512, verbose=0)), deployable.count_params())

    encoder = spectrum_classifier.encoder
    vectors = encoder.predict({"spectrum": arrays.spectra}, batch_size=512, verbose=0)
    upper = load(method_dir, "fusion_real_vector.keras")

    def predict_upper():
        test_vectors = encoder.predict({"spectrum": test_spectra}, batch_size=512, verbose=0)
        return upper.predict({"image": np.asarray(scaling(test_images)),
                              "features": test_vectors}, batch_size=512, verbose=0)

    results["mtl_real"] = (*timed(predict_upper), upper.count_params() + encoder.count_params())

    photometry_layer, _ = fit_photometry(arrays.images, train, config.model.image_size,
                                         weighted_fwhm=config.model.weighted_fwhm)
    photometry = load(method_dir, "image_photometry.keras")
    results["photometry"] = (*timed(lambda: photometry.predict(
        {"image": np.asarray(scaling(test_images)),
         "features": np.asarray(photometry_layer(test_images))},
        batch_size=512, verbose=0)), photometry.count_params())

    # Why MTL does (not) help: is the generated vector the real one, or a collapsed average?
    results["diagnostics"] = {
        key: gan_diagnostics(generated_vectors(folder, scaled[test], test_images),
                             vectors[test], labels[test],
                             spectrum_classifier.get_layer("p_qso"))
        for key, folder in (("mtl", method_dir), ("mtl_distill", distill_dir))}
    for key, folder, changes in (("mtl_photometry", "photometry_mtl", None),
                                 ("mtl_diffusion", "diffusion_mtl", {"generator": "diffusion"}),
                                 ("mtl_hybrid", "hybrid_mtl", {"trunk": "hybrid"})):
        results[key], results["diagnostics"][key] = photometry_row(
            args, seed, arrays, workdir, test,
            clock({stage: key for stage in ("gan", "diffusion", "fusion")}),
            folder, changes)

    features = photometric_features(arrays.images)
    began = time.perf_counter()
    classical = fit_classical(features[train], labels[train], seed=seed)
    clock.seconds["classical (all five)"] = time.perf_counter() - began
    for name in CLASSICAL:
        results[name] = (*timed(lambda m=classical[name]: predict_classical(
            m, photometric_features(test_images))), None)
    results["train_seconds"] = dict(clock.seconds)
    return test, results


def score_rows(labels, magnitudes_r, per_seed, redshift=None):
    """Mean and std over seeds of every metric, per row (QSO completeness per ``Z_EDGES``
    redshift bin when ``redshift`` is given)."""
    from starqso.evaluation import binned_metrics, classification_metrics

    table = {}
    for key, _, _ in ROWS:
        runs = []
        for results in per_seed:
            probabilities, rate, params = results[key]
            seconds = results.get("train_seconds", {}).get(key)
            metrics = classification_metrics(labels, probabilities)
            image_error = 1 - classification_metrics(labels, results["image"][0])["accuracy"]
            metrics["error_reduction"] = 1 - metrics["error_rate"] / image_error
            metrics["rate"], metrics["params"] = rate, params
            bins = binned_metrics(labels, (probabilities >= 0.5).astype(int), magnitudes_r,
                                  R_EDGES)
            for number, part in enumerate(bins):
                metrics[f"f1_r{number}"] = part["f1_qso"]
            if seconds is not None:
                metrics["train_seconds"] = seconds
            if redshift is not None:
                found = (probabilities >= 0.5) & (labels == 1)
                for number, (lo, hi) in enumerate(zip(Z_EDGES[:-1], Z_EDGES[1:], strict=False)):
                    chosen = (labels == 1) & (redshift >= lo) & (redshift < hi)
                    metrics[f"completeness_z{number}"] = (float(found[chosen].mean())
                                                          if chosen.any() else None)
            runs.append(metrics)
        table[key] = {name: (float(np.mean([r[name] for r in runs])),
                             float(np.std([r[name] for r in runs])))
                      for name in runs[0] if isinstance(runs[0][name], (int, float))
                      and all(r[name] is not None for r in runs)}
    return table


def format_tables(table, labels, magnitudes_r, seeds, diagnostics, redshift=None):
    def cell(key, name, digits=4):
        if name not in table[key]:
            return "-"
        mean, std = table[key][name]
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(seeds) > 1 else \
            f"{mean:.{digits}f}"

    lines = ["| model | input at inference | F1(QSO) | macro-F1 | accuracy | error rate | "
             "error reduction vs image-only | ECE | parameters | training s | "
             "inference cutouts/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, title, source in ROWS:
        params = table[key].get("params")
        seconds = table[key].get("train_seconds")
        lines.append(
            f"| {title} | {source} | {cell(key, 'f1_qso')} | {cell(key, 'macro_f1')} | "
            f"{cell(key, 'accuracy')} | {cell(key, 'error_rate')} | "
            f"{cell(key, 'error_reduction', 3) if key != 'image' else '0 (reference)'} | "
            f"{cell(key, 'ece')} | {f'{params[0]:,.0f}' if params else '-'} | "
            f"{f'{seconds[0]:,.0f}' if seconds else '-'} | "
            f"{table[key]['rate'][0]:,.0f} |")
    counts = [int(((magnitudes_r >= lo) & (magnitudes_r < hi)).sum())
              for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False)]
    qsos = [int((((magnitudes_r >= lo) & (magnitudes_r < hi)) & (labels == 1)).sum())
            for lo, hi in zip(R_EDGES[:-1], R_EDGES[1:], strict=False)]
    names = [f"r < {R_EDGES[1]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(
        R_EDGES[1:-2], R_EDGES[2:-1], strict=False)] + [f"r >= {R_EDGES[-2]:g}"]
    lines += ["", "F1(QSO) per r-magnitude bin (bright -> faint); test objects (QSOs) per bin: "
              + ", ".join(f"{n}: {c} ({q})" for n, c, q in zip(names, counts, qsos,
                                                               strict=False)), "",
              "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, title, _ in ROWS:
        lines.append(f"| {title} | " + " | ".join(
            cell(key, f"f1_r{number}", 3) for number in range(len(names))) + " |")
    lines += ["", "GAN diagnostics on the test objects (mean over seeds): R^2 of generated vs real "
              "spectral vectors, spread (mean per-dimension std, generated / real; 1 = no "
              "collapse), macro-F1 of the frozen spectrum head on the generated vector.", "",
              "| GAN | R^2 | spread | spectrum head on generated vector, macro-F1 |",
              "|---|---|---|---|"]
    for key, title in GENERATOR_ROWS:
        if not all(key in d for d in diagnostics):
            continue
        values = [np.mean([d[key][name] for d in diagnostics])
                  for name in ("r2", "spread", "head_macro_f1")]
        lines.append(f"| {title} | {values[0]:.3f} | {values[1]:.3f} | {values[2]:.4f} |")
    if redshift is not None:
        bins = list(zip(Z_EDGES[:-1], Z_EDGES[1:], strict=False))
        counts = [int(((labels == 1) & (redshift >= lo) & (redshift < hi)).sum())
                  for lo, hi in bins]
        lines += ["", "QSO completeness per redshift bin (threshold 0.5), MTL rows; test QSOs "
                  "per bin: " + ", ".join(f"z {lo:g}-{hi:g}: {n}" for (lo, hi), n in
                                          zip(bins, counts, strict=False)), "",
                  "| model | " + " | ".join(f"z {lo:g}-{hi:g}" for lo, hi in bins) + " |",
                  "|---|" + "---|" * len(bins)]
        for key, title, _ in ROWS:
            if key.startswith("mtl") or key == "image":
                lines.append(f"| {title} | " + " | ".join(
                    cell(key, f"completeness_z{number}", 3) for number in range(len(bins)))
                    + " |")
    return "\n".join(lines)


def real_rows(catalog, model_paths, seed):
    """The real-data table: models and classical peers on rendered real SDSS rows."""
    import keras
    from real_photometry import render
    from sim_realism import read_real
    from sklearn.model_selection import cross_val_predict

    import starqso.models  # noqa: F401 - registers the classes the .keras files name
    from starqso.evaluation import classification_metrics
    from starqso.evaluation.baselines import CLASSICAL, TITLES, make_classical
    from starqso.preprocessing.photometry import photometric_features

    real = read_real(catalog)
    mags, labels = real["mags"], (real["label"] == "QSO").astype(int)
    rng = np.random.default_rng(seed)
    cubes = np.stack([render(m, 48, rng) for m in mags])
    crop = np.ascontiguousarray(cubes[:, :, 8:40, 8:40].transpose(0, 2, 3, 1))
    rows = []
    for name, path in model_paths:
        model = keras.saving.load_model(path, safe_mode=True)
        probabilities = model.predict({"image": crop}, batch_size=512, verbose=0)
        rows.append((name, "image", classification_metrics(labels, probabilities)))
    measured = photometric_features(crop)
    exact = np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])
    for features, source in ((measured, "cutout photometry"),
                             (exact, "exact catalogue colours + r (limit)")):
        for name in CLASSICAL:
            probabilities = cross_val_predict(make_classical(name, seed), features, labels,
                                              cv=5, method="predict_proba")[:, 1]
            rows.append((f"{TITLES[name]}, 5-fold CV", source,
                         classification_metrics(labels, probabilities)))
    lines = [f"{len(labels)} real SDSS STAR/QSO rows ({labels.sum()} QSO) of {catalog}, "
             f"rendered by real_photometry.py's independent renderer (seed {seed}).", "",
             "| classifier | features | F1(QSO) | macro-F1 | accuracy | ECE |",
             "|---|---|---|---|---|---|"]
    for name, source, metrics in rows:
        lines.append(f"| {name} | {source} | {metrics['f1_qso']:.4f} | "
                     f"{metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} | "
                     f"{metrics['ece']:.4f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.perf_counter()
    command = "python benchmarks/paper_table.py " + " ".join(sys.argv[1:])
    log_lines = []

    def log(line):
        log_lines.append(line)
        print(line, flush=True)

    arrays = load_simulation(args)
    log(f"simulation: {len(arrays)} objects (seed {args.simulation_seed}), "
        f"{time.perf_counter() - began:.0f} s")
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="starqso-paper-"))
    per_seed, test = [], None
    for seed in args.seeds:
        saved = workdir / f"seed{seed}" / "results.pkl"
        if args.reuse and saved.exists():
            log(f"--- seed {seed}: results of an earlier run, {saved}")
            with open(saved, "rb") as stream:
                test, results = pickle.load(stream)
            missing = [key for key, _, _ in ROWS if key not in results]
            if missing:
                raise SystemExit(f"{saved} is from before rows {missing} existed; run "
                                 f"without --reuse")
        else:
            log(f"--- training seed {seed}")
            test, results = one_seed(args, seed, arrays, workdir, log)
        with open(saved, "wb") as stream:
            pickle.dump((test, results), stream)  # an hour of training: keep what it measured
        per_seed.append(results)
    labels = arrays.labels[test].astype(int)
    magnitudes_r = arrays.mags[test, 2]
    redshift = arrays.redshift[test]
    diagnostics = [results.pop("diagnostics") for results in per_seed]
    table = score_rows(labels, magnitudes_r, per_seed, redshift)
    text = format_tables(table, labels, magnitudes_r, args.seeds, diagnostics, redshift)
    if args.real_catalog:
        text += "\n\n## Real SDSS rows\n\n" + real_rows(
            args.real_catalog,
            [("starqso shipped model (saved_models/starqso-large)",
              ROOT / "saved_models/starqso-large/starqso_classifier.keras"),
             *((f"{title}, this table's seed {args.seeds[0]}",
                workdir / f"seed{args.seeds[0]}" / folder / "starqso_classifier.keras")
               for title, folder in (("MTL, seed method", "seed_method"),
                                     ("MTL + distillation", "distillation"),
                                     ("MTL + photometry", "photometry_mtl"),
                                     ("MTL + photometry, diffusion generator", "diffusion_mtl"),
                                     ("MTL + photometry, hybrid trunk", "hybrid_mtl")))],
            seed=0)
    seconds = time.perf_counter() - began
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    header = (f"# Paper table\n\n`{command}`\n\n{datetime.date.today()}, git {git}, "
              f"{platform.machine()} {os.cpu_count()} CPU cores, no GPU, {seconds / 60:.0f} min. "
              f"{len(arrays)} simulated objects (seed {args.simulation_seed}); "
              f"test {len(labels)} ({labels.sum()} QSO), validation {args.validation_objects}, "
              f"training the rest; training seeds {', '.join(map(str, args.seeds))}"
              f"{' (mean ± std)' if len(args.seeds) > 1 else ''}; threshold 0.5; "
              f"inference rate on this machine after a warm-up pass, Keras batch 512 / "
              f"scikit-learn, photometry included; training s: the row's own stages (the "
              f"shared spectrum encoder not counted).\n\n")
    print("\n" + header + text)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out, header + text + "\n")
        print(f"-> {out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
