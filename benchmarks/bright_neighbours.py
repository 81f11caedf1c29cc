"""Real field stars with a real bright star put beside them: how many become QSOs?

    python benchmarks/bright_neighbours.py --data ../shared/data \\
        --out benchmarks/results/bright_neighbours.md

A crowded field (the Galactic plane) puts bright stars within a few arcseconds of many faint
ones. On the developer fields a star beside a bright neighbour can look like a u-dropout to the
model: the neighbour's wing adds light in g, r, i and z but little in u
(`high_z_magnitudes.md`, source #607). The plane is not in the developer data, so this makes
such pairs from real pixels: every point source of the six fields at r < 21 (the target)
gets a bright point source of its own field (r < 18: a real PSF and real colours), its sky
removed, added at 2-6" in a random direction, three draws per target. The target's pixels,
noise and own neighbours stay real. Each pair is classified as the default ``starqso predict``
does (LiteRT int8, per-row core, the default prior), and so are the targets alone.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_fields import classify, has, rate  # noqa: E402 - predict's per-row core, as there
from real_samples import open_scored_model, parse_arguments  # noqa: E402
from report import command, provenance, publish  # noqa: E402

from starqso.schema import PIXEL_SCALE_ARCSEC  # noqa: E402

DRAWS = 3
DISTANCE_BINS_ARCSEC = ((2.0, 3.0), (3.0, 4.0), (4.0, 6.0))
NEIGHBOUR_RADIUS_PX = 10  # the neighbour's light taken: within 4" of its centre
BORDER_PX = 4  # the neighbour cutout's sky: the median of its outer 4 pixels


def neighbour_stamp(cube):
    """A bright star's light: its cutout minus the border median per band, zero beyond
    NEIGHBOUR_RADIUS_PX of the centre. (5, S, S)."""
    size = cube.shape[-1]
    border = np.ones((size, size), bool)
    border[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = False
    light = cube - np.median(cube[:, border], axis=1)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    return np.where(np.hypot(xx, yy) <= NEIGHBOUR_RADIUS_PX, light, 0.0)


def shifted(stamp, dx, dy):
    """``stamp`` moved by whole pixels (dx, dy), what leaves the frame dropped (no wrap)."""
    out = np.zeros_like(stamp)
    size = stamp.shape[-1]
    ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else \
        (slice(-dy, size), slice(0, size + dy))
    xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else \
        (slice(-dx, size), slice(0, size + dx))
    out[:, yd, xd] = stamp[:, ys, xs]
    return out


def main():
    args = parse_arguments(__doc__.splitlines()[0], ("real_fields_dev.npz",))
    from starqso.inference import evidence_fraction, resolve_prior

    started = time.perf_counter()
    model_dir, metadata, predictor = open_scored_model(args.model)
    threshold = float(metadata["threshold"])
    settings = resolve_prior(metadata, None)
    with np.load(args.data / "real_fields_dev.npz") as stored:
        images, point = stored["images"].astype(np.float64), stored["pointlike"]
        r, field = stored["r_auto"], stored["field"]
    targets = np.flatnonzero(point & (r < 21))
    rng = np.random.default_rng(0)
    cubes, target_of, distance, neighbour_r = [], [], [], []
    for target in targets:
        bright = np.flatnonzero(point & (r < 18) & (field == field[target])
                                & (np.arange(len(r)) != target))
        for _ in range(DRAWS):
            pick = int(rng.choice(bright))
            arcsec = rng.uniform(DISTANCE_BINS_ARCSEC[0][0], DISTANCE_BINS_ARCSEC[-1][1])
            angle = rng.uniform(0.0, 2 * np.pi)
            dx = int(round(arcsec / PIXEL_SCALE_ARCSEC * np.cos(angle)))
            dy = int(round(arcsec / PIXEL_SCALE_ARCSEC * np.sin(angle)))
            cubes.append(images[target] + shifted(neighbour_stamp(images[pick]), dx, dy))
            target_of.append(target)
            distance.append(np.hypot(dx, dy) * PIXEL_SCALE_ARCSEC)
            neighbour_r.append(r[pick])
    target_of, distance = np.array(target_of), np.array(distance)

    def run(batch, name):
        result = classify(np.array(batch, np.float32), predictor, metadata, settings["shift"],
                          name, evidence_fraction(settings))
        called = result["usable"] & (np.nan_to_num(result["p"]) >= threshold)
        return result, called

    alone, alone_called = run(images[targets], "targets")
    paired, paired_called = run(cubes, "pairs")
    rows = ["| pairs | n | called QSO | refused | BRIGHT_NEIGHBOUR | EXTENDED | called QSO with "
            "no BRIGHT_NEIGHBOUR bit |", "|---|---|---|---|---|---|---|"]

    def row(name, result, called, inside):
        bn = has(result["qflag"], "BRIGHT_NEIGHBOUR") & result["usable"]
        ext = has(result["qflag"], "EXTENDED") & result["usable"]
        n = int(inside.sum())
        return (f"| {name} | {n} | {rate(called[inside].sum(), n)} | "
                f"{int((~result['usable'][inside]).sum())} | {rate(bn[inside].sum(), n)} | "
                f"{rate(ext[inside].sum(), n)} | {rate((called & ~bn)[inside].sum(), n)} |")

    rows.append(row("the targets alone", alone, alone_called, np.ones(len(targets), bool)))
    rows.append(row("with a bright neighbour, 2-6\"", paired, paired_called,
                    np.ones(len(target_of), bool)))
    for lo, hi in DISTANCE_BINS_ARCSEC:
        inside = (distance >= lo) & (distance < hi)
        rows.append(row(f"neighbour at {lo:g}-{hi:g}\"", paired, paired_called, inside))
    became = np.zeros(len(r), bool)
    became[target_of[paired_called]] = True
    became[targets[alone_called]] = False
    text = "\n".join([
        "# Real field stars beside a real bright star", "",
        command(__file__), "",
        f"{provenance(started)}. Model `{model_dir}` "
        f"(LiteRT int8, threshold {threshold:g}, default prior {settings['prior']:g}). "
        f"{len(targets)} point sources at r < 21 of the six developer fields, {DRAWS} pairs "
        f"each with a point source at r < 18 of the same field (median neighbour r "
        f"{np.median(neighbour_r):.1f}).", "",
        *rows, "",
        f"Targets not called QSO alone but called QSO in at least one pair: "
        f"{int(became.sum())} of {len(targets)}.", ""])
    publish(text, args.out)


if __name__ == "__main__":
    main()
