"""Embeddings for discovery: retrieval quality, clusters, and similarity-search cost.

    python benchmarks/embeddings.py --cache /tmp/emb_sim --workdir /tmp/emb \\
        --real-catalog ../shared/data/sdss_photometry_labelled.csv.gz

One simulation (fixed split: ``data.split_seed`` 0), one ``fit`` of the base network with the
metric-learning head (``model.metric_loss: proxy_nca``) and, as a variant stage on the same
generator, the head trained with Normalised-Softmax. Four embeddings of the same test objects
are compared:

* the generated spectral vector (128-d, what ``starqso embed`` writes as ``vector``);
* the metric head, Proxy-NCA and Normalised-Softmax (``metric``);
* the image-only classifier's penultimate layer (the trunk's features, no spectrum behind
  them).

Scores (leave-one-out over the set, Musgrave et al. 2020): MAP@R and precision@10, for
STAR/QSO and for the fine classes (STAR + QSO redshift bins, ``starqso.schema``), on the
simulated test objects and, with ``--real-catalog``, on the real SDSS STAR/QSO rows rendered by
``benchmarks/real_photometry.py``'s independent renderer (nominal depth). Then cluster purity
(PCA + bagged k-means voting, against the true labels and fine classes), and the cost of
``starqso similar``: index build time, query time and memory for 10^5 and 10^6 rows, exact and
HNSW (faiss), with HNSW's recall@10 against exact search. The 10^5 / 10^6-row sets are the
test objects' generated vectors repeated with a small jitter (5% of each dimension's spread),
so the search runs on vectors distributed as real embeddings are.

The tables go to stdout and to ``--out`` (default ``benchmarks/results/embeddings.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# the same simulation cache and base-preset run configuration as the paper table
from paper_table import load_simulation, run_config  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-objects", type=int, default=6000)
    parser.add_argument("--test-objects", type=int, default=1500)
    parser.add_argument("--validation-objects", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every stage [default: the base preset's]")
    parser.add_argument("--simulation-seed", type=int, default=2023)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="simulation cache (.npz prefix)")
    parser.add_argument("--workdir", required=True, help="folder for the run")
    parser.add_argument("--real-catalog", default=None)
    parser.add_argument("--scale-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/embeddings.md"))
    return parser.parse_args()


def train(args, arrays, log):
    """The run with both heads: ``(run folder, seconds trained)``; a run folder that already
    holds both heads (an earlier invocation's ``--workdir``) is reused (0 s)."""
    from starqso.training import EncoderStage, GANStage, MetricStage, fit_run
    from starqso.training.run_folder import RunFolder

    run_dir = pathlib.Path(args.workdir) / "run"
    folder = RunFolder(run_dir)
    began = time.perf_counter()
    if not (run_dir / "metric_norm_softmax_head.keras").exists():
        fit_run(run_dir, run_config(args, args.seed, photometry=True,
                                    model_changes={"metric_loss": "proxy_nca"}),
                arrays=arrays, export=False, log=log,
                resume=folder.holds_run())
        fit_run(run_dir, None, arrays=arrays, resume=True, export=False, log=log,
                stages=[EncoderStage(), GANStage(),
                        MetricStage("norm_softmax", name="metric_norm_softmax")])
    return folder, time.perf_counter() - began


def embeddings(folder, images):
    """{name: (N, d)} of the four embeddings of raw ``images``."""
    import keras

    from starqso.discovery.embed import _spaces
    from starqso.models import StarQSOClassifier

    deployable = folder.load_model("starqso_classifier.keras")
    spaces = {}
    for name, file in (("proxy_nca", "metric_head.keras"),
                       ("norm_softmax", "metric_norm_softmax_head.keras")):
        head = folder.load_model(file)
        model = StarQSOClassifier(deployable.scaling, deployable.generator, deployable.fusion,
                                  deployable.photometry, deployable.image_size, metric_head=head)
        out = _spaces(model.embedding_model(), images)
        spaces.setdefault("generated vector (128-d)", out["vector"])
        spaces[f"metric head, {'Proxy-NCA' if name == 'proxy_nca' else 'Normalised-Softmax'} "
               f"({out['metric'].shape[1]}-d)"] = out["metric"]
    image_model = folder.load_model("image_classifier.keras")
    penultimate = keras.Model(image_model.inputs, image_model.get_layer("p_qso").input)
    side = image_model.inputs[0].shape[1]
    margin = (images.shape[1] - side) // 2
    crop = images[:, margin:margin + side, margin:margin + side]
    scaled = np.concatenate([np.asarray(deployable.scaling(crop[i:i + 512]))
                             for i in range(0, len(crop), 512)])
    trunk = penultimate.predict({"image": scaled}, batch_size=512, verbose=0)
    spaces[f"image-only trunk, penultimate layer ({trunk.shape[1]}-d)"] = trunk
    return spaces


def retrieval_table(spaces, labels, fine, title):
    from starqso.discovery import average_precision_at_r, precision_at_k

    lines = [f"### {title}", "",
             "| embedding | MAP@R, STAR/QSO | P@10, STAR/QSO | MAP@R, fine classes | "
             "P@10, fine classes |", "|---|---|---|---|---|"]
    keep = fine >= 0
    for name, vectors in spaces.items():
        cells = []
        for classes in (labels, fine):
            cells += [f"{average_precision_at_r(vectors[keep], classes[keep]):.3f}",
                      f"{precision_at_k(vectors[keep], classes[keep], k=10):.3f}"]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return lines


def cluster_table(spaces, labels, fine, seed):
    from starqso.discovery import cluster_purity, voting_clusters

    lines = ["### Clusters (PCA + 25 bagged k-means, voting), simulated test objects", "",
             "| embedding | k (silhouette) | purity vs STAR/QSO | purity vs fine classes | "
             "k = 5: purity vs fine classes | mean vote agreement | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, vectors in spaces.items():
        began = time.perf_counter()
        auto = voting_clusters(vectors, seed=seed)
        fixed = voting_clusters(vectors, n_clusters=5, seed=seed)
        seconds = time.perf_counter() - began
        lines.append(
            f"| {name} | {auto.n_clusters} | {cluster_purity(auto.labels, labels):.3f} | "
            f"{cluster_purity(auto.labels, fine):.3f} | "
            f"{cluster_purity(fixed.labels, fine):.3f} | {np.mean(auto.agreement):.3f} | "
            f"{seconds:.1f} |")
    return lines


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_table(vectors, rows_list, queries, seed):
    """Build / query time and memory of exact and HNSW search at each size."""
    from starqso.discovery import NeighbourIndex

    rng = np.random.default_rng(seed)
    spread = vectors.std(axis=0) * 0.05
    lines = ["### Similarity search cost (`starqso similar`; 128-d generated vectors)", "",
             f"{queries} queries, k = 10, one process; memory: the index's own arrays "
             "(vectors, graph) as faiss serialises them, and the process's peak RSS.", "",
             "| rows | method | build s | query ms / query | recall@10 vs exact | index MB | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for rows in rows_list:
        data = (vectors[rng.integers(0, len(vectors), rows)]
                + rng.normal(size=(rows, vectors.shape[1])) * spread).astype(np.float32)
        query = data[rng.choice(rows, queries, replace=False)]
        results = {}
        for method in ("exact", "hnsw"):
            began = time.perf_counter()
            index = NeighbourIndex(data, method=method)
            built = time.perf_counter() - began
            began = time.perf_counter()
            _, found = index.query(query, 10)
            per_query = (time.perf_counter() - began) / queries * 1e3
            results[method] = found
            size = data.nbytes / 1e6
            if method == "hnsw":
                path = pathlib.Path(f"/tmp/starqso_bench_{os.getpid()}.hnsw")
                index.save(path)
                size = path.stat().st_size / 1e6
                path.unlink()
            overlap = [len(set(a) & set(b)) / 10 for a, b in zip(found, results["exact"],
                                                                 strict=False)]
            recall = "1 (reference)" if method == "exact" else f"{np.mean(overlap):.3f}"
            lines.append(f"| {rows:,} | {method} | {built:.1f} | {per_query:.2f} | {recall} | "
                         f"{size:.0f} | {rss_mb():.0f} |")
            del index
    return lines


def real_sets(catalog, seed):
    """Rendered real rows: (images (N, 32, 32, 5), labels, fine classes)."""
    from real_photometry import RENDER_SIZE, crop, render
    from sim_realism import read_real

    from starqso.schema import fine_class_codes

    real = read_real(catalog)
    rng = np.random.default_rng(seed)
    cubes = np.stack([render(m, RENDER_SIZE, rng) for m in real["mags"]])
    labels = (real["label"] == "QSO").astype(np.int64)
    return crop(cubes), labels, fine_class_codes(labels, real["redshift"])


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.schema import fine_class_codes

    began = time.perf_counter()
    log = lambda line: print(line, flush=True)  # noqa: E731
    arrays = load_simulation(args)
    folder, trained = train(args, arrays, log)
    split = folder.split()
    position = {identifier: row for row, identifier in enumerate(arrays.ids)}
    test = arrays.subset(np.array([position[i] for i in split["test"]]))
    labels = test.labels.astype(np.int64)
    fine = fine_class_codes(labels, test.redshift)
    spaces = embeddings(folder, test.images)
    counts = np.bincount(fine[fine >= 0], minlength=5)
    sections = retrieval_table(
        spaces, labels, fine, f"Retrieval, simulated test objects ({len(labels)}; fine "
        f"classes STAR / QSO z<1 / 1-2 / 2-3 / >=3: {' / '.join(map(str, counts))})")
    if args.real_catalog:
        images, real_labels, real_fine = real_sets(args.real_catalog, args.seed)
        real_spaces = embeddings(folder, images)
        counts = np.bincount(real_fine[real_fine >= 0], minlength=5)
        sections += [""] + retrieval_table(
            real_spaces, real_labels, real_fine,
            f"Retrieval, real SDSS rows rendered at nominal depth ({len(real_labels)}; "
            f"{' / '.join(map(str, counts))})")
    sections += [""] + cluster_table(spaces, labels, fine, args.seed)
    vectors = next(iter(spaces.values()))
    sections += [""] + scale_table(vectors, args.scale_rows, args.queries, args.seed)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/embeddings.py " + " ".join(sys.argv[1:])
    header = [
        "# Embeddings for discovery", "", f"`{command}`", "",
        f"{datetime.date.today()}, git {git}, {platform.machine()} {os.cpu_count()} CPU cores, "
        f"no GPU, {(time.perf_counter() - began) / 60:.0f} min, of which training "
        f"{trained:.0f} s (0: the run in --workdir was reused). "
        f"{args.num_objects} simulated objects (seed {args.simulation_seed}), test "
        f"{args.test_objects}, validation {args.validation_objects}; base preset, training "
        f"seed {args.seed}.", ""]
    text = "\n".join(header + sections) + "\n"
    print(text)
    if args.out:
        from starqso._util.atomic import write_text_atomically

        write_text_atomically(args.out, text)


if __name__ == "__main__":
    main()
