"""Noisier copies of the training cutouts (``training.noise_augment``) for the photometry head.

    python benchmarks/noise_augment.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --simulation-cache SIMCACHE

Rebuilds the shipped run's inputs (its simulation, split and preprocessing: ``--run``, default
``saved_models/starqso-large``; the 72,000-object simulation is taken from, or written to,
``--simulation-cache``), then trains the run's photometry head (its ``PhotometryClassifier``
settings, epochs and early stopping; Keras ``fit`` on one process) per training seed once on
the training objects alone (``--scales`` 1) and once per other scale with a noisier copy of
each (``PhotometryHeadStage.prepare`` at that ``noise_augment``, the same copies ``starqso fit``
makes). Each head is scored at
0.5 on the run's validation split (macro-F1, log-loss) and on ``real_photometry.py``'s renders of
the real rows at both depths (macro-F1; the renders are ~30% QSO, the simulator's mix). The
table goes to stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_photometry import DEPTHS, crop, render_depth  # noqa: E402
from sim_realism import read_real  # noqa: E402

from starqso._util.atomic import write_text_atomically  # noqa: E402


def train_head(stage, context, seed):
    """The run's photometry head on ``stage``'s prepared inputs; p(QSO) as a function."""
    import keras

    from starqso.models import PhotometryClassifier

    model_config, training = context.config.model, context.config.training
    keras.utils.set_random_seed(seed)
    model = PhotometryClassifier(context.inputs.photometry_dim, model_config.dense_units,
                                 model_config.dropout, model_config.photometry_noise)
    model.compile(learning_rate=training.learning_rate)
    validation = context.labelled(context.validation)
    features = stage.inputs["photometry"]
    model.fit({"photometry": features[stage.train_index]}, stage.target[stage.train_index],
              batch_size=training.batch_size, epochs=training.photometry_epochs, verbose=0,
              validation_data=({"photometry": features[validation]},
                               stage.target[validation]),
              callbacks=[keras.callbacks.EarlyStopping(
                  patience=training.early_stopping_patience, restore_best_weights=True)])
    return lambda x: np.asarray(model.predict({"photometry": x}, batch_size=4096,
                                              verbose=0)).ravel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--run", default=str(ROOT / "saved_models/starqso-large"))
    parser.add_argument("--simulation-cache", required=True,
                        help="folder of the run's simulation cache (starqso fit "
                             "--simulation-cache)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 2.5, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/noise_augment.md"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sklearn.metrics import f1_score, log_loss

    from starqso.data.arrays import ObjectArrays
    from starqso.training.inputs import apply_layer
    from starqso.training.run_folder import RunFolder
    from starqso.training.stages import PhotometryHeadStage, StageContext

    began = time.perf_counter()
    config = RunFolder(args.run).load_config()
    arrays = ObjectArrays.from_simulation_cache(
        args.simulation_cache, config.data.num_objects, config.data.simulation_seed,
        image_size=config.model.image_size, cutout_size=config.data.cutout_size,
        qso_fraction=config.data.qso_fraction)
    real = read_real(args.catalog)
    labels = (real["label"] == "QSO").astype(int)
    rows = []
    for scale in args.scales:
        run_config = dataclasses.replace(config, training=dataclasses.replace(
            config.training, noise_augment=scale))
        context = StageContext.create(run_config, arrays)
        if not rows:  # the renders' photometry, with this run's (scale-independent) layer
            renders = {depth: apply_layer(context.inputs.photometry,
                                          crop(render_depth(real["mags"], 0, depth)))
                       for depth in DEPTHS}
        stage = PhotometryHeadStage()
        stage.prepare(context, train=True)
        validation = context.labelled(context.validation)
        for seed in args.seeds:
            predict = train_head(stage, context, seed)
            p = predict(context.inputs.arrays["photometry"][validation])
            truth = context.labels[validation]
            scores = [f1_score(truth, p >= 0.5, average="macro"), log_loss(truth, p)]
            scores += [f1_score(labels, predict(renders[depth]) >= 0.5, average="macro")
                       for depth in DEPTHS]
            rows.append((scale, seed, len(stage.train_index), scores))
            print(f"noise_augment {scale:g} seed {seed}: " + " ".join(
                f"{value:.4f}" for value in scores), flush=True)

    lines = ["# Noisier training copies for the photometry head (`training.noise_augment`)", "",
             f"`python benchmarks/noise_augment.py {' '.join(sys.argv[1:])}`", "",
             f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPU cores, "
             f"{time.perf_counter() - began:.0f} s. Run {pathlib.Path(args.run).name}: "
             f"{len(arrays.images)} simulated objects, its split and preprocessing; the head "
             "scored at 0.5.", "",
             "| noise_augment | training rows | seeds | validation macro-F1 | validation "
             "log-loss | renders, nominal | renders, noisier |", "|---|---|---|---|---|---|---|"]
    for scale in args.scales:
        chosen = [row for row in rows if row[0] == scale]
        values = np.array([row[3] for row in chosen])
        lines.append(f"| {scale:g} | {chosen[0][2]} | {len(chosen)} | " + " | ".join(
            f"{mean:.4f} ± {spread:.4f}"
            for mean, spread in zip(values.mean(0), values.std(0), strict=False)) + " |")
    lines += ["", "Per seed (validation macro-F1, log-loss, nominal, noisier):", ""]
    lines += [f"- noise_augment {scale:g}, seed {seed}: "
              + ", ".join(f"{value:.4f}" for value in scores) for scale, seed, _, scores in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomically(args.out, text)


if __name__ == "__main__":
    main()
