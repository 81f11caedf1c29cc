"""How far faint rows should lean on the prior: the evidence-weight ramp against real data.

    python benchmarks/evidence_weight.py --data ../shared/data \\
        --out benchmarks/results/evidence_weight.md

``starqso predict`` scales the network's evidence by :func:`starqso.probability.evidence_weight`
of a row's combined five-band detection S/N: 0 at the lower end of
:data:`starqso.schema.EVIDENCE_SNR`, 1 from its upper end. This script classifies, once, with
no weighting, every sample that bears on the choice, and then scores each ramp in NumPy
(:func:`starqso.probability.temper`):

* the six developer fields' point sources and blank sky (``real_fields_dev.npz``) at the
  default prior: called QSO;
* the real high-z QSO cutouts (``real_qso_iqvit_dev.npz``): completeness at prior 0.3, and
  the AUC against the field point sources at the default prior;
* every real STAR/QSO row of the catalogue rendered at two depths by
  ``benchmarks/real_photometry.py``'s renderer: macro-F1 at prior 0.3 as ``predict`` labels
  them (refused rows count as misses) and F1(QSO) of the rows at r >= 21.

A ramp that reaches further up in S/N removes more confident QSOs from near-empty sky and
costs faint QSOs that the network does tell apart: the table shows both.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_samples import p_at, parse_arguments, scored_samples  # noqa: E402
from report import command, provenance, publish  # noqa: E402

RAMPS = ((None, None), (4.0, 6.0), (5.0, 7.0), (5.0, 8.0), (5.0, 10.0), (5.0, 15.0))


def main():
    args = parse_arguments(__doc__.splitlines()[0], ("real_fields_dev.npz",
                                                     "real_qso_iqvit_dev.npz",
                                                     "sdss_photometry_labelled.csv.gz"))
    from sklearn.metrics import f1_score, roc_auc_score

    from starqso.preprocessing.screening import combined_snr

    started = time.perf_counter()
    scored = scored_samples(args)
    model_dir, metadata, threshold = scored["model_dir"], scored["metadata"], scored["threshold"]
    training, sky_shift, qso_shift = scored["training"], scored["sky_shift"], scored["qso_shift"]
    samples = scored["samples"]
    labels, r_mag = samples["nominal"]["labels"], samples["nominal"]["r"]

    lines = ["| ramp (S/N from 0 to full weight) | field point sources called QSO | blank sky "
             "called QSO | real high-z QSOs: completeness at 0.3 | AUC vs point sources | "
             "rendered rows nominal: macro-F1 | F1(QSO) r >= 21 | rendered rows noisier: "
             "macro-F1 | F1(QSO) r >= 21 |", "|---|---|---|---|---|---|---|---|---|"]
    for ramp in RAMPS:
        cells = []
        for name in ("stars", "sky"):
            sample = samples[name]
            called = sample["usable"] & (p_at(sample, sky_shift, training, ramp) >= threshold)
            cells.append(f"{int(called.sum())}/{len(called)}")
        qso = samples["qso"]
        complete = qso["usable"] & (p_at(qso, qso_shift, training, ramp) >= threshold)
        scores = [np.where(s["usable"], p_at(s, sky_shift, training, ramp), -1.0)
                  for s in (qso, samples["stars"])]
        auc = roc_auc_score(np.r_[np.ones(len(scores[0])), np.zeros(len(scores[1]))],
                            np.r_[scores[0], scores[1]])
        cells += [f"{complete.mean():.3f}", f"{auc:.4f}"]
        for depth in ("nominal", "noisier"):
            sample = samples[depth]
            called = sample["usable"] & (p_at(sample, qso_shift, training, ramp) >= threshold)
            faint = r_mag >= 21
            cells += [f"{f1_score(labels, called, average='macro'):.4f}",
                      f"{f1_score(labels[faint], called[faint]):.3f}"]
        name = "none" if ramp[0] is None else f"{ramp[0]:g}-{ramp[1]:g}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    refused = {depth: int((~samples[depth]["usable"]).sum()) for depth in ("nominal", "noisier")}
    # What the refused rendered rows are: no ramp can give them a p, so they stay misses.
    refusal = ["| depth | refused | QSO among them | combined S/N < 3 (QSO) | 3-4 (QSO) | "
               "4-5 (QSO) |", "|---|---|---|---|---|---|"]
    for depth in ("nominal", "noisier"):
        out = ~samples[depth]["usable"]
        snr = combined_snr(samples[depth]["snr"])
        bins = []
        for lo, hi in ((0.0, 3.0), (3.0, 4.0), (4.0, 5.0)):
            inside = out & (snr >= lo) & (snr < hi)
            bins.append(f"{int(inside.sum())} ({int(labels[inside].sum())})")
        refusal.append(f"| {depth} | {int(out.sum())} | {int(labels[out].sum())} | "
                       + " | ".join(bins) + " |")
    from starqso.schema import EVIDENCE_SNR

    text = "\n".join([
        "# Evidence weight: how far faint rows lean on the prior", "",
        command(__file__), "",
        f"{provenance(started)}. Model "
        f"`{model_dir}` (LiteRT int8, threshold {threshold:.2f}, training fraction "
        f"{training:.3f}); the field samples at the default prior "
        f"{metadata.get('default_prior')}, the real QSOs and rendered rows at 0.3. The "
        "shipped ramp: "
        f"{EVIDENCE_SNR[0]:g}-{EVIDENCE_SNR[1]:g}. {len(samples['stars']['p'])} point sources, "
        f"{len(samples['sky']['p'])} blank-sky cutouts, {len(samples['qso']['p'])} real QSOs, "
        f"{len(labels)} rendered rows ({refused['nominal']} / {refused['noisier']} refused by the "
        "source check at nominal / noisier depth, counted as misses).", "", *lines, "",
        "The rendered rows the source check refuses (below S/N 5 in the five bands together, "
        "4 in r and 5 in every other band), by their combined S/N:", "", *refusal, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
