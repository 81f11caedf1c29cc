"""How much input noise the photometry head should train with (``model.photometry_noise``).

    python benchmarks/head_noise.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz

Trains the shipped head's architecture (:class:`starqso.models.PhotometryClassifier`, 128 units,
dropout 0.2) on the 21 in-model photometric numbers of ``--sim-objects`` simulated objects
(seed 20231, as ``real_photometry.py --sim-objects N`` simulates them), standardised with the
shipped model's statistics, once per noise level and training seed, and scores it at 0.5 on
``real_photometry.py``'s renders of the real rows at both depths. Boosting on the same numbers
is the reference row. The table goes to stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_photometry import DEPTHS, SIZE, boosting, crop, render_depth  # noqa: E402
from sim_realism import read_real  # noqa: E402

from starqso._util.atomic import write_text_atomically  # noqa: E402


def train_head(features, labels, noise, seed, epochs=30):
    """The shipped head's architecture, trained on 90% with early stopping on the rest."""
    import keras

    from starqso.models import PhotometryClassifier

    keras.utils.set_random_seed(seed)
    model = PhotometryClassifier(features.shape[1], 128, 0.2, noise)
    model.compile(learning_rate=1e-3)
    order = np.random.default_rng(seed).permutation(len(features))
    held, train = order[: len(order) // 10], order[len(order) // 10:]
    model.fit({"photometry": features[train]}, labels[train], batch_size=128, epochs=epochs,
              validation_data=({"photometry": features[held]}, labels[held]), verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    return lambda x: np.asarray(model.predict({"photometry": x}, batch_size=4096,
                                              verbose=0)).ravel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-large"),
                        help="run folder whose preprocessing.json standardises the photometry")
    parser.add_argument("--sim-objects", type=int, default=24000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/head_noise.md"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sklearn.metrics import f1_score

    from starqso.data.arrays import ObjectArrays
    from starqso.preprocessing.photometry import WEIGHTED_FWHM_ARCSEC, photometric_features

    began = time.perf_counter()
    real = read_real(args.catalog)
    mags, labels = real["mags"], (real["label"] == "QSO").astype(int)
    simulated = ObjectArrays.from_simulation(args.sim_objects, 20231, image_size=SIZE)
    train_x = photometric_features(simulated.images, WEIGHTED_FWHM_ARCSEC)
    train_y = simulated.labels.astype(int)
    renders = {}
    for depth in DEPTHS:
        renders[depth] = photometric_features(crop(render_depth(mags, 0, depth)),
                                              WEIGHTED_FWHM_ARCSEC)
    statistics = json.loads((pathlib.Path(args.model) / "preprocessing.json").read_text())
    mean = np.asarray(statistics["photometry_mean"])
    std = np.asarray(statistics["photometry_std"])

    def standard(x):
        return ((x - mean) / std).astype(np.float32)

    def score(predict, transform):
        return [f1_score(labels, predict(transform(renders[d])) >= 0.5, average="macro")
                for d in DEPTHS]

    peer = boosting(0).fit(train_x, train_y)
    rows = [("boosting on the same 21 numbers", score(
        lambda x: peer.predict_proba(x)[:, 1], lambda x: x), None)]
    for noise in args.noise:
        scores = np.array([score(train_head(standard(train_x), train_y, noise, seed), standard)
                           for seed in args.seeds])
        rows.append((f"head, input noise {noise:g}", scores.mean(axis=0), scores.std(axis=0)))
        print(f"noise {noise:g}: {scores.tolist()}", flush=True)

    lines = ["# Photometry head: training input noise vs macro-F1 on the renders", "",
             f"`python benchmarks/head_noise.py {' '.join(sys.argv[1:])}`", "",
             f"{datetime.date.today()}, {os.cpu_count()} CPU cores, "
             f"{time.perf_counter() - began:.0f} s. {args.sim_objects} simulated objects "
             f"(seed 20231); {len(labels)} real rows rendered by real_photometry.py (seed 0); "
             f"threshold 0.5; training seeds {', '.join(map(str, args.seeds))} (mean ± std).",
             "", "| classifier | macro-F1, nominal | macro-F1, noisier |", "|---|---|---|"]
    for name, mean_scores, spread in rows:
        cells = [f"{m:.4f}" + ("" if spread is None else f" ± {s:.4f}")
                 for m, s in zip(mean_scores, spread if spread is not None else mean_scores,
                                 strict=False)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomically(args.out, text)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
