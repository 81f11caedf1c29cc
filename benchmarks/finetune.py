"""Fine-tuning on real rows: how deep to train, for how many labels (seed paper 001's study).

    python benchmarks/finetune.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --out benchmarks/results/finetune.md                      # full grid
    python benchmarks/finetune.py --catalog ../shared/data/sdss_photometry_labelled.csv.gz \\
        --quick                                                   # smoke version, minutes

**Data**, a domain the model was not trained on: every real STAR/QSO row of the developer
catalogue (about 30% QSO, like the simulator's training mix) rendered as a 5-band cutout by the
independent renderer of ``real_photometry.py`` at its **noisier** depth (sky 1.3-2.5x SDSS's
median; the same renders as that file's noisier table for the same ``--seed``), cropped to the
model's 32 px as ``starqso predict`` crops. A seeded permutation gives a fixed **test set**
(``--test-objects``, 2,000) and, disjoint from it, the **labelled pool**. Label draw ``d`` is
its own seeded permutation of the pool; the budget-``B`` subset is its first ``B`` objects (the
budgets of a draw are nested), written as cutout FITS + ``catalog.csv`` (id, image, label) for
``starqso finetune``.

**Grid.** Label budgets ``--budgets`` (100 300 1000 3000) x trainable depth ``--depths`` (head,
1 and 2 = the last one or two trunk blocks, all) x ``--draws`` (3) label draws; every cell is the
mean +- std over the draws. Each fine-tuning is ``finetune_run(..., trainable=depth,
epochs=--epochs, lr_decay=0.75, learning_rate=1e-4, export=False)`` from the shipped model
(``--model``), i.e. ``starqso finetune`` without its export: 20% of the budget is its stratified
validation split (early stopping), 80% is trained on.

**Peers, on the same labels:**

* the frozen pretrained model (no labels; the same value in every column);
* training from scratch: the same architecture (``StarQSOClassifier.from_config`` of the
  shipped model: random weights, the scaling and photometry layers keep their constants), saved
  as a model folder and trained by the same ``finetune_run`` with ``trainable="all"``,
  ``lr_decay=1`` and ``--scratch-learning-rate`` (1e-3: the 1e-4 of fine-tuning barely moves
  random weights in a few epochs);
* gradient boosting on PSF-fit photometry (``real_photometry.py``'s ``psf_features`` +
  ``boosting``) trained on all ``B`` labels.

**Scoring.** Every network is scored the same way: the raw (uncalibrated) p(QSO) of its
``starqso_classifier.keras`` at threshold 0.5. The fine-tuned runs are not exported, so they
have no refitted temperature or threshold; their p(QSO) is calibrated to nothing but the
training mix, which is the test mix here (rendered rows ~30% QSO, the simulator ~29.9%), so 0.5
needs no prior correction. The frozen model is scored as its raw classifier (``.classifier`` of
the shipped ``CalibratedClassifier``) at 0.5 likewise. Metrics: macro-F1, F1(QSO), ECE (15
bins) on the test set, and the wall time of each fine-tuning (``finetune_run``: reading the
catalogue, the before/after validation and training).

**The bar** (``--bar``): ``starqso finetune`` as a user runs it, with its export and its
model selection, against the frozen model and the boosting peer, each scored as ``starqso
predict --prior 0.3`` labels (the export folder's calibrated p(QSO), moved to the prior
``--prior``, at the folder's own threshold; boosting at 0.5 on its probability, which is
already at the rows' mix). Defaults: 1,000 labels, depth head, 3 draws, 20 epochs (the CLI's
defaults). Fine-tuning must never be below the frozen model on the test rows, and within
0.005 of the boosting peer or above it.

The tables go to stdout and, with ``--out``, to a markdown file with the command, date, git
hash, machine and total run time. ``--workdir`` keeps the run folders and one JSON result per
cell (a rerun with the same settings reuses them, e.g. after a stop); without it everything is
written to a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edge import cpu_name as edge_cpu_name  # noqa: E402 - the same CPU name as edge.py
from real_photometry import (  # noqa: E402 - the independent renderer and the PSF peer
    DEPTHS,
    RENDER_SIZE,
    SIZE,
    boosting,
    crop,
    psf_features,
    render,
)
from sim_realism import read_real  # noqa: E402 - the same reader of the real catalogue

from starqso._util.atomic import write_text_atomically  # noqa: E402

DEPTH = "noisier"
DEPTH_NAMES = {"head": "head only", "1": "last trunk block", "2": "last two trunk blocks",
               "all": "all (generator included)"}
_PREDICT_BATCH = 512


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True,
                        help="real labelled catalogue (sdss_photometry_labelled.csv.gz)")
    parser.add_argument("--model", default=None,
                        help="run or export folder to fine-tune [default: the shipped model]")
    parser.add_argument("--quick", action="store_true",
                        help="smoke version: budgets 100 300, depths head all, 1 draw, "
                             "500 test objects, 3 epochs")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="label budgets [default: 100 300 1000 3000; --quick: 100 300]")
    parser.add_argument("--depths", nargs="+", default=None,
                        help="trainable depths: head, a number of trunk blocks, all "
                             "[default: head 1 2 all; --quick: head all]")
    parser.add_argument("--draws", type=int, default=None,
                        help="label draws per budget [default: 3; --quick: 1]")
    parser.add_argument("--test-objects", type=int, default=None,
                        help="fixed test set [default: 2,000; --quick: 500]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="at most this many epochs per run [default: 20, as starqso "
                             "finetune; --quick: 3]")
    parser.add_argument("--lr-decay", type=float, default=0.75)
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="the head's learning rate when fine-tuning")
    parser.add_argument("--scratch-learning-rate", type=float, default=1e-3,
                        help="learning rate of the from-scratch peer (every block)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch peer")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the renders, the test set and the label draws")
    parser.add_argument("--workdir", default=None,
                        help="keep run folders and per-cell results here (reused on a rerun)")
    parser.add_argument("--out", default=None, help="markdown results file")
    parser.add_argument("--plot", default=None,
                        help="PNG of test macro-F1 against the label budget, one line per row")
    parser.add_argument("--verbose", action="store_true", help="show finetune's own output")
    parser.add_argument("--bar", action="store_true",
                        help="the fine-tuning bar: starqso finetune with its export and model "
                             "selection vs frozen vs boosting, at --prior [default budgets "
                             "1000, depth head, no from-scratch peer]")
    parser.add_argument("--prior", type=float, default=0.3,
                        help="--bar: the prior every model's p(QSO) is moved to")
    args = parser.parse_args()
    quick = args.quick
    if args.bar:
        args.budgets = args.budgets or [1000]
        args.depths = args.depths or ["head"]
        args.no_scratch = True
    args.budgets = args.budgets or ([100, 300] if quick else [100, 300, 1000, 3000])
    args.depths = [str(d) for d in (args.depths or (["head", "all"] if quick
                                                    else ["head", "1", "2", "all"]))]
    args.draws = args.draws or (1 if quick else 3)
    args.test_objects = args.test_objects or (500 if quick else 2000)
    args.epochs = args.epochs or (3 if quick else 20)
    for depth in args.depths:
        if depth not in ("head", "all") and not depth.isdigit():
            parser.error(f"--depths takes head, all or a number of trunk blocks. "
                         f"Received: {depth!r}")
    if min(args.budgets) < 20:
        parser.error(f"--budgets must be at least 20 (finetune keeps 20% for validation and "
                     f"needs 5 of each class). Received: {args.budgets}")
    return args


def git_hash():
    """HEAD's short hash, read from .git's files (no git process)."""
    git = ROOT / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = pathlib.Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:7]
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        roots = [git] + ([git / common.read_text().strip()] if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()[:7]
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line[:7]
    except OSError:
        pass
    return "unknown"


def scores(labels, probabilities):
    from starqso.evaluation import classification_metrics

    metrics = classification_metrics(labels, np.ravel(probabilities), 0.5)
    return {key: metrics[key] for key in ("macro_f1", "f1_qso", "ece")}


def predict(model, images):
    return np.ravel(model.predict({"image": images}, batch_size=_PREDICT_BATCH, verbose=0))


class Data:
    """The rendered real rows, the test set and the label draws."""

    def __init__(self, args):
        real = read_real(args.catalog)
        self.mags = real["mags"]
        self.labels = (real["label"] == "QSO").astype(int)
        # real_photometry.py renders its noisier depth with seed + 1, in catalogue order.
        rng = np.random.default_rng(args.seed + 1)
        cubes = np.stack([render(m, RENDER_SIZE, rng, DEPTHS[DEPTH]) for m in self.mags])
        self.images = crop(cubes)  # (N, 32, 32, 5), as `starqso predict` crops
        start = (RENDER_SIZE - SIZE) // 2
        self.cubes = np.ascontiguousarray(cubes[:, :, start:start + SIZE, start:start + SIZE])
        self.features = psf_features(self.cubes)
        order = np.random.default_rng([args.seed, 7]).permutation(len(self.labels))
        self.test, self.pool = order[:args.test_objects], order[args.test_objects:]
        if max(args.budgets) > len(self.pool):
            raise SystemExit(f"the pool holds {len(self.pool)} labelled objects, fewer than "
                             f"the largest budget {max(args.budgets)}; lower --test-objects "
                             f"or --budgets")
        self.seed = args.seed

    def labelled(self, draw, budget):
        order = np.random.default_rng([self.seed, 1000 + draw]).permutation(self.pool)
        return order[:budget]

    def write(self, folder, index):
        """Cutout FITS (one per object, shared between budgets) + a catalogue of ``index``."""
        from astropy.table import Table

        from starqso.io import write_catalog, write_cutout

        cutouts = folder.parent / "cutouts"
        cutouts.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in index:
            path = cutouts / f"row{i:05d}.fits"
            if not path.exists():
                write_cutout(path, self.cubes[i])
            paths.append(str(path))
        folder.mkdir(parents=True, exist_ok=True)
        table = Table({"id": [f"row{i:05d}" for i in index], "image": paths,
                       "label": np.where(self.labels[index] == 1, "QSO", "STAR")})
        return write_catalog(table, folder / "catalog.csv", overwrite=True)


def scratch_model_dir(base_dir, folder, seed):
    """The shipped architecture with random weights, saved as a model folder finetune takes."""
    import keras

    from starqso.deploy.folder import load_keras_model
    from starqso.models import StarQSOClassifier
    from starqso.training.finetune import base_model_file, deployable

    keras_file, _ = base_model_file(base_dir)
    raw = deployable(load_keras_model(keras_file))
    keras.utils.set_random_seed(seed)
    fresh = StarQSOClassifier.from_config(raw.get_config())
    folder.mkdir(parents=True, exist_ok=True)
    fresh.save(folder / "starqso_classifier.keras")
    metadata = json.loads((keras_file.parent / "metadata.json").read_text()) \
        if (keras_file.parent / "metadata.json").is_file() else None
    if metadata is None:
        raise SystemExit(f"the from-scratch peer copies the base model's metadata.json; "
                         f"{keras_file.parent} has none (pass an export folder as --model)")
    metadata.pop("sha256", None)  # the checksums are the shipped files', not this one's
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
    keras.backend.clear_session()
    return folder


def predict_labels(model_dir, images, prior):
    """``starqso predict --prior PRIOR`` of a model folder on raw cutouts: ``(p, label)``.

    The folder's Keras model (calibrated), p moved to ``prior`` and labelled at the folder's
    own threshold, as :func:`starqso.inference.predict_catalog` does (without the screening
    of the rows, so that every method is scored on the same rows).
    """
    from starqso.inference import apply_prior, model_settings, open_model

    _, _, threshold, settings = model_settings(model_dir, "keras", prior=prior)
    _, predictor = open_model(model_dir, "keras")
    raw = np.concatenate([predictor(images[i:i + _PREDICT_BATCH])
                          for i in range(0, len(images), _PREDICT_BATCH)])
    p = apply_prior(raw, settings["shift"])
    return p, (p >= threshold).astype(int), threshold


def labelled_scores(labels, probabilities, predicted):
    """macro-F1 and F1(QSO) of given labels, and the ECE of p(QSO)."""
    from starqso.evaluation import classification_metrics

    ece = classification_metrics(labels, np.ravel(probabilities), 0.5)["ece"]
    # A threshold between 0 and 1 on the 0/1 labels scores the labels themselves.
    metrics = classification_metrics(labels, np.asarray(predicted, float), 0.5)
    return {"macro_f1": metrics["macro_f1"], "f1_qso": metrics["f1_qso"], "ece": ece}


def timed_finetune(args, data, work, key, draw, budget, model_dir, **options):
    """``finetune_run`` on label draw ``draw``'s first ``budget`` labels into ``work/runs/key``
    (quiet unless ``--verbose``): ``(run folder, its result, seconds)``."""
    from starqso.training.finetune import finetune_run

    catalog = data.write(work / f"draw{draw}" / f"n{budget}", data.labelled(draw, budget))
    out = work / "runs" / key
    shutil.rmtree(out, ignore_errors=True)  # a run a stop left half done starts over
    lines = []
    sink = contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(io.StringIO())
    began = time.perf_counter()
    try:
        with sink as captured:
            saved = finetune_run(out, catalog, model_dir, epochs=args.epochs,
                                 batch_size=args.batch_size, seed=draw,
                                 log=print if args.verbose else lines.append, **options)
    except Exception:
        # Keras prints its epochs to stdout whatever ``log`` is: show what was hidden.
        print("\n".join(lines), captured.getvalue() if captured else "", sep="\n")
        raise
    return out, saved, time.perf_counter() - began


def bar_cell(args, data, work, draw, budget, depth, model_dir):
    """``starqso finetune`` (export and selection included), scored at ``--prior``."""
    import keras

    from starqso.training.run_folder import RunFolder

    key = f"bar_depth{depth}_prior{args.prior:g}_draw{draw}_n{budget}"
    result_file = work / "results" / f"{key}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out, saved, seconds = timed_finetune(args, data, work, key, draw, budget, model_dir,
                                         trainable=depth, lr_decay=args.lr_decay,
                                         learning_rate=args.learning_rate, export=True)
    keras.backend.clear_session()
    test = data.test
    p, predicted, threshold = predict_labels(RunFolder(out).export_dir, data.images[test],
                                             args.prior)
    history = RunFolder(out).history().get("finetune", {})
    selection = saved["selection"]
    result = {**labelled_scores(data.labels[test], p, predicted), "seconds": seconds,
              "epochs": len(history.get("loss", [])), "kept": selection["kept"],
              "threshold": threshold,
              "temperature": selection["calibration"]["temperature"],
              "message": selection["message"]}
    keras.backend.clear_session()
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result))
    return result


def bar_main(args, data, began):
    """The fine-tuning bar: finetune (as the CLI runs it) vs frozen vs boosting at --prior."""
    from starqso.inference import default_model_dir

    model_dir = pathlib.Path(args.model) if args.model else default_model_dir()
    test_labels = data.labels[data.test]
    p, predicted, frozen_threshold = predict_labels(model_dir, data.images[data.test],
                                                    args.prior)
    frozen = labelled_scores(test_labels, p, predicted)
    work_root = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(
        tempfile.mkdtemp(prefix="starqso_finetune_bar_"))
    model_hash = hashlib.sha256(
        (model_dir / "starqso_classifier.keras").read_bytes()).hexdigest()[:12]
    work = work_root / (f"model{model_hash}_seed{args.seed}_test{args.test_objects}_ep"
                        f"{args.epochs}_bs{args.batch_size}_lr{args.learning_rate:g}_d"
                        f"{args.lr_decay:g}")
    cells = []
    try:
        for draw in range(args.draws):
            for budget in args.budgets:
                labelled = data.labelled(draw, budget)
                peer = boosting(draw).fit(data.features[labelled], data.labels[labelled])
                q = peer.predict_proba(data.features[data.test])[:, 1]
                boosted = labelled_scores(test_labels, q, (q >= 0.5).astype(int))
                for depth in args.depths:
                    tuned = bar_cell(args, data, work, draw, budget, depth, model_dir)
                    cells.append({"draw": draw, "budget": budget, "depth": depth,
                                  "tuned": tuned, "boosting": boosted})
                    print(f"draw {draw}, {budget} labels, depth {depth}: fine-tuned "
                          f"{tuned['macro_f1']:.4f} (kept {tuned['kept']}, threshold "
                          f"{tuned['threshold']:.2f}), frozen {frozen['macro_f1']:.4f}, "
                          f"boosting {boosted['macro_f1']:.4f}; {tuned['seconds']:.0f} s",
                          flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work_root, ignore_errors=True)
    command = "python benchmarks/finetune.py " + " ".join(sys.argv[1:])
    lines = [
        "# The fine-tuning bar: `starqso finetune` vs the frozen model vs PSF-fit + boosting",
        "", f"`{command}`", "",
        f"{datetime.date.today()}, git {git_hash()}, {platform.machine()} {os.cpu_count()} CPU "
        f"cores ({edge_cpu_name()}), {time.perf_counter() - began:.0f} "
        f"s. Base model {model_dir}. {len(data.labels)} real STAR/QSO rows "
        f"({data.labels.sum()} QSO) of {args.catalog} rendered by real_photometry.py's "
        f"renderer at its {DEPTH} depth (sky {DEPTHS[DEPTH][0]:g}-{DEPTHS[DEPTH][1]:g}x SDSS's "
        f"median, seed {args.seed}); test rows {len(data.test)} ({test_labels.sum()} QSO), "
        f"labels drawn from the other {len(data.pool)}. Fine-tuning: `finetune_run` as "
        f"`starqso finetune` runs it (export and model selection included), at most "
        f"{args.epochs} epochs, batch {args.batch_size}, learning rate "
        f"{args.learning_rate:g}, lr decay {args.lr_decay:g}. Every network is scored as "
        f"`starqso predict --prior {args.prior:g}` labels (its export folder's Keras model, "
        f"threshold of its metadata.json: frozen {frozen_threshold:.2f}); boosting at 0.5. "
        f"Bar: fine-tuned >= frozen, and >= boosting - 0.005.", "",
        "| draw | labels | depth | fine-tuned macro-F1 | frozen | boosting | kept | threshold "
        "| temperature | bar | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    held = True
    for cell in cells:
        tuned, boosted = cell["tuned"], cell["boosting"]
        ok = (tuned["macro_f1"] >= frozen["macro_f1"] - 1e-12
              and tuned["macro_f1"] >= boosted["macro_f1"] - 0.005)
        held &= ok
        lines.append(f"| {cell['draw']} | {cell['budget']:,} | {cell['depth']} | "
                     f"{tuned['macro_f1']:.4f} | {frozen['macro_f1']:.4f} | "
                     f"{boosted['macro_f1']:.4f} | {tuned['kept']} | {tuned['threshold']:.2f} "
                     f"| {tuned['temperature']:.3f} | {'holds' if ok else 'FAILS'} | "
                     f"{tuned['seconds']:.0f} |")
    means = {name: np.mean([cell[name]["macro_f1"] for cell in cells])
             for name in ("tuned", "boosting")}
    lines += ["", f"Mean macro-F1 over {len(cells)} run(s): fine-tuned {means['tuned']:.4f}, "
              f"frozen {frozen['macro_f1']:.4f}, boosting {means['boosting']:.4f}. The bar "
              f"{'holds in every run' if held else 'FAILS in at least one run'}.", "",
              "Selection lines (`starqso finetune`'s output):", ""]
    lines += [f"* draw {cell['draw']}, {cell['budget']:,} labels, {cell['depth']}: "
              f"{cell['tuned']['message']}" for cell in cells]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomically(args.out, text)
        print(f"-> {args.out}")


def finetune_cell(args, data, work, draw, budget, depth, model_dir, *, lr_decay,
                  learning_rate, name):
    """One fine-tuning run, scored on the test set (reused from ``work`` when present)."""
    import keras

    from starqso.deploy.folder import load_keras_model
    from starqso.training.run_folder import RunFolder

    key = f"{name}_draw{draw}_n{budget}"
    result_file = work / "results" / f"{key}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out, _, seconds = timed_finetune(args, data, work, key, draw, budget, model_dir,
                                     trainable=depth, lr_decay=lr_decay,
                                     learning_rate=learning_rate, export=False)
    keras.backend.clear_session()
    model = load_keras_model(out / "starqso_classifier.keras")
    history = RunFolder(out).history().get("finetune", {})
    result = {**scores(data.labels[data.test], predict(model, data.images[data.test])),
              "seconds": seconds, "epochs": len(history.get("loss", []))}
    del model
    keras.backend.clear_session()
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result))
    return result


def mean_std(values, digits=3):
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def tables(args, rows, times, frozen):
    """Markdown tables: one per metric (rows: method, columns: budget), then the times."""
    head = "| | " + " | ".join(f"{b:,} labels" for b in args.budgets) + " |"
    rule = "|---|" + "---|" * len(args.budgets)
    sections = []
    for metric, title in (("macro_f1", "Test macro-F1"), ("f1_qso", "Test F1(QSO)"),
                          ("ece", "Test ECE (15 bins, p(QSO) uncalibrated)")):
        lines = [f"### {title}", "", head, rule,
                 "| frozen pretrained (raw, 0.5) | "
                 + " | ".join(f"{frozen[metric]:.3f}" for _ in args.budgets) + " |"]
        for name, cells in rows.items():
            lines.append(f"| {name} | " + " | ".join(
                mean_std([r[metric] for r in cells[b]]) if cells.get(b) else "-"
                for b in args.budgets) + " |")
        sections.append("\n".join(lines))
    lines = ["### Fine-tuning time per run (s, mean ± std; epochs run)", "", head, rule]
    for name, cells in times.items():
        lines.append(f"| {name} | " + " | ".join(
            (mean_std([r["seconds"] for r in cells[b]], 0)
             + f" ({mean_std([r['epochs'] for r in cells[b]], 1)} ep)")
            if cells.get(b) else "-" for b in args.budgets) + " |")
    sections.append("\n".join(lines))
    best = []
    for b in args.budgets:
        tuned = {d: np.mean([r["macro_f1"] for r in rows[f"fine-tuned, {DEPTH_NAMES.get(d, d)}"]
                             [b]]) for d in args.depths}
        depth = max(tuned, key=tuned.get)
        best.append(f"{b:,}: {DEPTH_NAMES.get(depth, depth)} ({tuned[depth]:.3f})")
    sections.append("Best fine-tuned depth by mean macro-F1 per budget: " + "; ".join(best)
                    + ".")
    return sections


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.perf_counter()
    data = Data(args)
    print(f"rendered {len(data.labels)} rows ({data.labels.sum()} QSO) in "
          f"{time.perf_counter() - began:.0f} s; test {len(data.test)}, pool {len(data.pool)}",
          flush=True)

    import logging

    import keras

    if args.bar:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        return bar_main(args, data, began)

    from starqso.deploy.folder import load_keras_model
    from starqso.inference import default_model_dir
    from starqso.training.finetune import base_model_file, deployable

    # Predicting with a new model per cell retraces by design; tf.function's warning is noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    model_dir = pathlib.Path(args.model) if args.model else default_model_dir()
    base_file, side = base_model_file(model_dir)
    if side != SIZE:
        raise SystemExit(f"this benchmark renders {SIZE} px cutouts; {model_dir} takes {side}")
    test_labels = data.labels[data.test]
    frozen = scores(test_labels, predict(deployable(load_keras_model(base_file)),
                                         data.images[data.test]))
    keras.backend.clear_session()

    work_root = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(
        tempfile.mkdtemp(prefix="starqso_finetune_bench_"))
    # Every setting that changes a cell's result names its folder, the base model's file (its
    # hash) included: a rerun with other settings or a retrained model never reuses another's
    # results.
    model_hash = hashlib.sha256(pathlib.Path(base_file).read_bytes()).hexdigest()[:12]
    work = work_root / (f"model{model_hash}_seed{args.seed}_test{args.test_objects}_ep"
                        f"{args.epochs}_bs{args.batch_size}_lr{args.learning_rate:g}_d"
                        f"{args.lr_decay:g}_s{args.scratch_learning_rate:g}")
    rows, times = {}, {}
    try:
        for draw in range(args.draws):
            scratch_dir = None
            if not args.no_scratch:
                scratch_dir = scratch_model_dir(model_dir, work / f"scratch_model{draw}",
                                                seed=draw)
            for budget in args.budgets:
                labelled = data.labelled(draw, budget)
                peer = boosting(draw).fit(data.features[labelled], data.labels[labelled])
                rows.setdefault("PSF-fit photometry + boosting", {}).setdefault(
                    budget, []).append(scores(test_labels, peer.predict_proba(
                        data.features[data.test])[:, 1]))
                runs = [(f"fine-tuned, {DEPTH_NAMES.get(d, d)}", f"depth{d}", d, model_dir,
                         args.lr_decay, args.learning_rate) for d in args.depths]
                if scratch_dir is not None:
                    runs.append(("from scratch (same architecture, all trained)", "scratch",
                                 "all", scratch_dir, 1.0, args.scratch_learning_rate))
                for label, name, depth, start, decay, rate in runs:
                    result = finetune_cell(args, data, work, draw, budget, depth, start,
                                           lr_decay=decay, learning_rate=rate, name=name)
                    rows.setdefault(label, {}).setdefault(budget, []).append(result)
                    times.setdefault(label, {}).setdefault(budget, []).append(result)
                    print(f"draw {draw}, {budget} labels, {label}: macro-F1 "
                          f"{result['macro_f1']:.3f}, F1(QSO) {result['f1_qso']:.3f}, "
                          f"{result['seconds']:.0f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work_root, ignore_errors=True)

    # Fine-tuned rows first, then the peers.
    order = [label for label in rows if label.startswith("fine-tuned")] + [
        label for label in rows if not label.startswith("fine-tuned")]
    rows = {label: rows[label] for label in order}
    command = "python benchmarks/finetune.py " + " ".join(sys.argv[1:])
    header = (
        f"# Fine-tuning on rendered real rows: trainable depth x label budget\n\n`{command}`\n\n"
        f"{datetime.date.today()}, git {git_hash()}, {platform.machine()} {os.cpu_count()} CPU "
        f"cores, {time.perf_counter() - began:.0f} s. Base model {model_dir} ({base_file.name}). "
        f"{len(data.labels)} real STAR/QSO rows ({data.labels.sum()} QSO) of {args.catalog} "
        f"rendered by real_photometry.py's renderer at its {DEPTH} depth (sky "
        f"{DEPTHS[DEPTH][0]:g}-{DEPTHS[DEPTH][1]:g}x SDSS's median, seed {args.seed}); fixed "
        f"test set {len(data.test)} objects ({test_labels.sum()} QSO), labels drawn from the "
        f"other {len(data.pool)}. {args.draws} label draw(s) per budget (mean ± std). "
        f"Fine-tuning: at most {args.epochs} epochs, batch {args.batch_size}, head learning "
        f"rate {args.learning_rate:g}, lr decay {args.lr_decay:g} per block, 20% of the labels "
        f"for validation / early stopping, no export. From scratch: learning rate "
        f"{args.scratch_learning_rate:g} on every block. Every network is scored by its raw "
        f"p(QSO) at 0.5 (uncalibrated at its training mix, ~30% QSO like these rows); "
        f"boosting at 0.5 on its probability.\n")
    text = header + "\n" + "\n\n".join(tables(args, rows, times, frozen)) + "\n"
    print(text)
    if args.out:
        write_text_atomically(args.out, text)
        print(f"-> {args.out}")
    if args.plot:
        plot(rows, frozen, args.budgets, args.plot, title=f"{len(data.test)} test objects, "
             f"{args.draws} draw(s), {DEPTH} depth")
        print(f"-> {args.plot}")


def plot(rows, frozen, budgets, path, title):
    """Test macro-F1 (mean ± std over draws) against the label budget, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for label, by_budget in rows.items():
        shown = [b for b in budgets if b in by_budget]
        values = [[cell["macro_f1"] for cell in by_budget[b]] for b in shown]
        axes.errorbar(shown, [np.mean(v) for v in values], yerr=[np.std(v) for v in values],
                      marker="o", capsize=3, label=label,
                      linestyle="-" if label.startswith("fine-tuned") else "--")
    axes.axhline(frozen["macro_f1"], color="black", linewidth=1, label="frozen pretrained")
    axes.set_xscale("log")
    axes.set_xticks(budgets, [f"{b:,}" for b in budgets])
    axes.set_xlabel("labelled objects")
    axes.set_ylabel("test macro-F1")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
