"""The three-class measures on real SDSS pixels: how often stars, QSOs and galaxies get each answer.

    python benchmarks/three_class_real.py --data ../shared/data \\
        --out benchmarks/results/three_class_real.md

The measures of the three-class issue, on the developer data: real extended sources
(``real_galaxies_dev.npz`` and the extended sources of ``real_fields_dev.npz``), the Kim &
Brunner galaxies, the six fields' point sources at r < 21, and the real high-z QSOs
(``real_qso_iqvit_dev.npz``), each classified as the default ``starqso predict`` does (LiteRT
int8, its per-row core, the model's default prior or ``--prior``).

A three-class model's answer is its label (QSO at p_qso >= the threshold, else the more
probable of STAR and GALAXY: ``starqso.probability.class_decisions``). A two-class model's
GALAXY answer is the EXTENDED quality bit (a classified row with it is counted GALAXY,
whatever its label). A refused row gets no answer and counts against every class. The AUC
ranks p_qso of the real QSOs against every real star and galaxy (refused rows lowest).
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_flags import crop, luptitudes_to_nanomaggies  # noqa: E402 - same KB conversion
from real_fields import SIZE, auc, classify, has, rate  # noqa: E402 - predict's core, as there
from real_samples import open_scored_model, parse_arguments  # noqa: E402
from report import command, provenance, publish  # noqa: E402


def answers(result, threshold):
    """Per row: "QSO", "GALAXY" (the label; EXTENDED for a two-class model), "STAR" or ""
    (refused)."""
    from starqso.probability import class_decisions
    from starqso.schema import LABEL_NAMES

    usable = result["usable"]
    classes = result["classes"]
    if classes.shape[1] > 2:
        decided = class_decisions(np.nan_to_num(classes), threshold)
        return np.where(usable, np.array(LABEL_NAMES)[decided], "")
    galaxy = usable & has(result["qflag"], "EXTENDED")
    qso = usable & ~galaxy & (np.nan_to_num(result["p"]) >= threshold)
    return np.where(~usable, "", np.where(galaxy, "GALAXY", np.where(qso, "QSO", "STAR")))


def main():
    args = parse_arguments(__doc__.splitlines()[0], ("real_fields_dev.npz",
                                                     "real_galaxies_dev.npz",
                                                     "real_qso_iqvit_dev.npz",
                                                     "sdss_cutouts_kim_brunner.npz"))
    from starqso.deploy.metadata import model_survey
    from starqso.inference import evidence_fraction, resolve_prior
    from starqso.inference.model import prior_label

    started = time.perf_counter()
    model_dir, metadata, predictor = open_scored_model(args.model)
    classes = model_survey(metadata)[1].names
    threshold = float(metadata["threshold"])
    settings = resolve_prior(metadata, args.prior)
    with np.load(args.data / "real_fields_dev.npz") as stored:
        fields = {name: stored[name] for name in ("images", "pointlike", "r_auto", "field")}
        field_names = list(stored["fields"])
    with np.load(args.data / "real_galaxies_dev.npz") as stored:
        galaxies = stored["images"]
    with np.load(args.data / "sdss_cutouts_kim_brunner.npz") as stored:
        kb_cubes = np.moveaxis(crop(luptitudes_to_nanomaggies(stored["images"]), SIZE), -1, 1)
        kb_labels = stored["label"]
    with np.load(args.data / "real_qso_iqvit_dev.npz") as stored:
        qso_cubes = stored["images"]
    point, r = fields["pointlike"], fields["r_auto"]
    samples = {"field sources": fields["images"], "real_galaxies_dev": galaxies,
               "kim_brunner": kb_cubes, "qso": qso_cubes}
    results = {name: classify(cubes, predictor, metadata, settings["shift"], name,
                              evidence_fraction(settings))
               for name, cubes in samples.items()}
    answer = {name: answers(result, threshold) for name, result in results.items()}
    src, kb = answer["field sources"], answer["kim_brunner"]
    stars = point & (r < 21)

    def row(name, given, total):
        cells = [rate(int((given == label).sum()), total) for label in
                 ("STAR", "QSO", "GALAXY")]
        return (f"| {name} | {total} | " + " | ".join(cells)
                + f" | {int((given == '').sum())} |")

    lines = ["| real sample | n | STAR | QSO | GALAXY | refused |", "|---|---|---|---|---|---|",
             row("extended sources, real_galaxies_dev", answer["real_galaxies_dev"],
                 len(answer["real_galaxies_dev"])),
             row("extended sources of the six fields", src[~point], int((~point).sum())),
             row("Kim & Brunner galaxies", kb[kb_labels == "GALAXY"],
                 int((kb_labels == "GALAXY").sum())),
             row("Kim & Brunner stars", kb[kb_labels == "STAR"], int((kb_labels == "STAR").sum())),
             row("field point sources, r < 21", src[stars], int(stars.sum())),
             row("real high-z QSOs (z 2.75-5)", answer["qso"], len(answer["qso"]))]
    per_field = ["| field | point sources r < 21 | STAR | QSO | GALAXY | refused |",
                 "|---|---|---|---|---|---|"]
    for name in field_names:
        inside = stars & (fields["field"] == name)
        given = src[inside]
        per_field.append(f"| {name} | {int(inside.sum())} | " + " | ".join(
            rate(int((given == label).sum()), int(inside.sum()))
            for label in ("STAR", "QSO", "GALAXY")) + f" | {int((given == '').sum())} |")

    by_r = ["| r (sep `r_auto`) | point sources | STAR | QSO | GALAXY | refused |",
            "|---|---|---|---|---|---|"]
    for lo, hi in ((14, 18), (18, 19), (19, 20), (20, 21), (21, 23)):
        inside = point & (r >= lo) & (r < hi)
        given = src[inside]
        by_r.append(f"| {lo}-{hi} | {int(inside.sum())} | " + " | ".join(
            rate(int((given == label).sum()), int(inside.sum()))
            for label in ("STAR", "QSO", "GALAXY")) + f" | {int((given == '').sum())} |")

    def scores(result):
        return np.where(result["usable"], np.nan_to_num(result["p"]), -1.0)

    others = np.concatenate([scores(results["field sources"]),
                             scores(results["real_galaxies_dev"])])
    qso_auc = auc(scores(results["qso"]), others)
    text = "\n".join([
        "# Three classes on real SDSS pixels", "",
        command(__file__), "",
        f"{provenance(started)}. Model `{model_dir}` "
        f"(LiteRT int8, classes {'/'.join(classes)}, threshold {threshold:g}, default prior "
        f"{prior_label(settings)}). "
        + ("Two classes: GALAXY here is the EXTENDED quality bit." if len(classes) == 2
           else ""), "",
        *lines, "",
        f"AUC of p_qso, the real high-z QSOs against every real star and galaxy above "
        f"({len(others)} cutouts): {qso_auc:.4f}.", "",
        "Per field:", "", *per_field, "",
        "The six fields' point sources per r bin:", "", *by_r, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
