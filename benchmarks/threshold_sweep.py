"""The label threshold against the real-data rows it trades between.

    python benchmarks/threshold_sweep.py --data ../shared/data \\
        --out benchmarks/results/threshold_sweep.md

``starqso predict`` labels a row QSO when p(QSO), at the prior it is given, reaches the model's
``threshold`` (``metadata.json``, chosen on simulated validation objects at export). This
script classifies, once, every sample of the real-data bars as ``predict`` does (its per-row
core: source checks, faint rows leaning on the prior), then counts at a range of thresholds:

* the six developer fields' point sources and all 1,200 blank-sky cutouts called QSO, at the
  default prior (``real_fields_dev.npz``; half of the blank sky was the shipped model's
  training backgrounds, so this is not the held-out count of ``real_fields.py``);
* the real high-z QSO cutouts found at prior 0.3 (``real_qso_iqvit_dev.npz``);
* every real STAR/QSO catalogue row rendered at two depths by ``real_photometry.py``'s
  renderer: macro-F1 at prior 0.3, refused rows counted as misses.

A lower threshold finds more real QSOs and costs rendered-row F1 and star calls: if no
threshold meets every bar, calibration cannot, and the model has to separate better.
"""

from __future__ import annotations

import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_samples import p_at, parse_arguments, scored_samples  # noqa: E402
from report import command, provenance, publish  # noqa: E402

THRESHOLDS = (0.5, 0.46, 0.44, 0.42, 0.41, 0.4, 0.38, 0.35, 0.32)


def main():
    args = parse_arguments(__doc__.splitlines()[0], ("real_fields_dev.npz",
                                                     "real_qso_iqvit_dev.npz",
                                                     "sdss_photometry_labelled.csv.gz"))
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    scored = scored_samples(args)
    model_dir, metadata, own = scored["model_dir"], scored["metadata"], scored["threshold"]
    training, sky_shift, qso_shift = scored["training"], scored["sky_shift"], scored["qso_shift"]
    samples = scored["samples"]
    labels = samples["nominal"]["labels"]
    qso_r, qso_z = samples["qso"]["r"], samples["qso"]["redshift"]

    lines = ["| threshold | field point sources called QSO | blank sky called QSO (all 1200) | "
             "real high-z QSOs found at 0.3 | rendered rows nominal: macro-F1 | rendered rows "
             "noisier: macro-F1 |", "|---|---|---|---|---|---|"]
    for threshold in sorted(set(THRESHOLDS) | {own}, reverse=True):
        cells = []
        for name in ("stars", "sky"):
            sample = samples[name]
            called = sample["usable"] & (p_at(sample, sky_shift, training) >= threshold)
            cells.append(f"{int(called.sum())}/{len(called)}")
        qso = samples["qso"]
        found = qso["usable"] & (p_at(qso, qso_shift, training) >= threshold)
        cells.append(f"{found.mean():.3f}")
        for depth in ("nominal", "noisier"):
            sample = samples[depth]
            called = sample["usable"] & (p_at(sample, qso_shift, training) >= threshold)
            cells.append(f"{f1_score(labels, called, average='macro'):.4f}")
        name = f"**{threshold:g}** (the model's)" if threshold == own else f"{threshold:g}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    # Where the real QSOs are missed, at the model's own threshold: by redshift and r.
    qso = samples["qso"]
    found = qso["usable"] & (p_at(qso, qso_shift, training) >= own)
    by_r = ["| z | r < 19.5 | 19.5-20.5 | > 20.5 |", "|---|---|---|---|"]
    for z_lo, z_hi in ((2.75, 3.0), (3.0, 4.0), (4.0, 4.5), (4.5, 5.0)):
        cells = []
        for r_lo, r_hi in ((0.0, 19.5), (19.5, 20.5), (20.5, 99.0)):
            inside = (qso_z >= z_lo) & (qso_z < z_hi) & (qso_r >= r_lo) & (qso_r < r_hi)
            cells.append(f"{found[inside].mean():.2f} (n {int(inside.sum())})")
        by_r.append(f"| {z_lo:g}-{z_hi:g} | " + " | ".join(cells) + " |")
    text = "\n".join([
        "# The label threshold against the real-data rows", "",
        command(__file__), "",
        f"{provenance(started)}. Model `{model_dir}` "
        f"(LiteRT int8, threshold {own:g}, training fraction {training:.3f}); field samples "
        f"at the default prior {metadata.get('default_prior')}, real QSOs and rendered rows "
        "at 0.3.", "",
        *lines, "", f"Real high-z QSOs found at prior 0.3 and threshold {own:g}, by redshift "
        "and r (the cutouts' catalogue r):", "", *by_r, ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
