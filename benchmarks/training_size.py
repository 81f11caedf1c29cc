"""How many simulated objects the shipped model needs (``data.num_objects`` of the large preset).

    python benchmarks/training_size.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --cache DIR

Simulates ``--per-set`` objects per simulation seed (``--sim-seeds``, 32-pixel cutouts, as
``real_photometry.py --sim-objects N`` simulates them), computes the 21 in-model photometric
numbers of each (:func:`starqso.preprocessing.photometry.photometric_features` at
``model.weighted_fwhm``), and trains on the first 1, 2, ... sets together: gradient boosting,
and the shipped photometry head's architecture (``head_noise.py``'s ``train_head``, input noise
``model.photometry_noise``, standardised with the training set's own statistics, as ``fit``
does). Both are scored at 0.5 on ``real_photometry.py``'s renders of the real rows at both
depths. ``--cache`` keeps each set's features between runs (the same seed and size give the same
numbers). The table goes to stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from head_noise import train_head  # noqa: E402
from real_photometry import DEPTHS, SIZE, boosting, crop, render_depth  # noqa: E402
from sim_realism import read_real  # noqa: E402

from starqso._util.atomic import write_text_atomically  # noqa: E402


def simulated_set(seed, count, cache):
    """The 21 photometric numbers and labels of ``count`` simulated objects of ``seed``."""
    from starqso.data.arrays import ObjectArrays
    from starqso.preprocessing.photometry import WEIGHTED_FWHM_ARCSEC, photometric_features

    path = None if cache is None else pathlib.Path(cache) / f"features_{seed}_{count}.npz"
    if path is not None and path.is_file():
        saved = np.load(path)
        return saved["x"], saved["y"]
    simulated = ObjectArrays.from_simulation(count, seed, image_size=SIZE)
    features = photometric_features(simulated.images, WEIGHTED_FWHM_ARCSEC)
    labels = simulated.labels.astype(int)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=features, y=labels)
    return features, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--per-set", type=int, default=24000)
    parser.add_argument("--sim-seeds", type=int, nargs="+", default=[20231, 7, 8])
    parser.add_argument("--head-seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="folder keeping each set's features")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/training_size.md"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sklearn.metrics import f1_score

    from starqso.config import ModelConfig
    from starqso.preprocessing.photometry import WEIGHTED_FWHM_ARCSEC, photometric_features

    began = time.perf_counter()
    real = read_real(args.catalog)
    labels = (real["label"] == "QSO").astype(int)
    renders = {depth: photometric_features(crop(render_depth(real["mags"], 0, depth)),
                                           WEIGHTED_FWHM_ARCSEC) for depth in DEPTHS}
    sets = [simulated_set(seed, args.per_set, args.cache) for seed in args.sim_seeds]
    noise = ModelConfig().photometry_noise
    rows = []
    for count in range(1, len(sets) + 1):
        x = np.concatenate([s[0] for s in sets[:count]])
        y = np.concatenate([s[1] for s in sets[:count]])
        peer = boosting(0).fit(x, y)
        mean, std = x.mean(axis=0), x.std(axis=0)
        head = train_head(((x - mean) / std).astype(np.float32), y, noise, args.head_seed)
        scores = []
        for depth in DEPTHS:
            scores.append(f1_score(labels, peer.predict_proba(renders[depth])[:, 1] >= 0.5,
                                   average="macro"))
            scores.append(f1_score(labels, head(((renders[depth] - mean) / std).astype(
                np.float32)) >= 0.5, average="macro"))
        rows.append((len(x), scores))
        print(f"{len(x)} objects: {np.round(scores, 4).tolist()}", flush=True)

    lines = ["# Training-set size: boosting and the photometry head vs simulated objects", "",
             f"`python benchmarks/training_size.py {' '.join(sys.argv[1:])}`", "",
             f"{datetime.date.today()}, {os.cpu_count()} CPU cores, "
             f"{time.perf_counter() - began:.0f} s (cached features not recomputed). Sets of "
             f"{args.per_set} simulated objects (seeds {', '.join(map(str, args.sim_seeds))}), "
             f"the first k together; {len(labels)} real rows rendered by real_photometry.py "
             f"(seed 0); macro-F1 at 0.5; the head: input noise {noise:g}, training seed "
             f"{args.head_seed}.", "",
             "| simulated objects | boosting, nominal | head, nominal | boosting, noisier "
             "| head, noisier |", "|---|---|---|---|---|"]
    for count, scores in rows:
        lines.append(f"| {count:,} | " + " | ".join(f"{s:.4f}" for s in scores) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomically(args.out, text)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
