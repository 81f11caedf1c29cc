"""The picture of :func:`~starqso.discovery.clusters.voting_clusters`: :func:`plot_clusters`,
the 2-D projection coloured by cluster and by label (matplotlib, imported when drawing)."""

from __future__ import annotations

import io

import numpy as np

from starqso._util.atomic import write_bytes_atomically
from starqso.discovery.checks import whole_number
from starqso.discovery.clusters import known_labels
from starqso.errors import InputError

__all__ = ["plot_clusters"]

_PLOT_POINTS = 50_000

_LABEL_COLOURS = {"STAR": "tab:blue", "QSO": "tab:red"}


def plot_clusters(projection, clusters, labels, path, title="", max_points=_PLOT_POINTS,
                  seed=0) -> str:
    """Two panels of the 2-D projection, coloured by cluster and by label, saved as PNG.

    Drawn on matplotlib's Agg canvas (no screen, no change to pyplot's backend); at most
    ``max_points`` rows, a seeded random subset, are drawn so 10^6 rows plot in seconds. The
    file is written atomically.

    Args:
        projection: (N, 2) coordinates (:attr:`Clusters.projection`).
        clusters: (N,) cluster of each row.
        labels: (N,) label of each row (``"STAR"``, ``"QSO"``, ``""`` unknown, or codes).
        path: the PNG file to write.
        title: a title over both panels.
        max_points: most points drawn.
        seed: seed of the subset drawn.

    Returns:
        The path as ``str``.

    Raises:
        InputError: a projection that is not (N, 2), or clusters/labels not one per row.

    Example:
        >>> plot_clusters(result.projection, result.labels, labels, "c.png")  # doctest: +SKIP
        'c.png'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    projection = np.asarray(projection, np.float64)
    clusters = np.asarray(clusters).reshape(-1)
    text, known = known_labels(np.asarray(labels).reshape(-1))
    if projection.ndim != 2 or projection.shape[1] != 2 or not len(projection):
        raise InputError(f"projection must be a non-empty (N, 2) array. Received: shape "
                         f"{projection.shape}")
    if len(clusters) != len(projection) or len(text) != len(projection):
        raise InputError(f"clusters and labels must have one entry per projected row "
                         f"({len(projection)}). Received: {len(clusters)} clusters, "
                         f"{len(text)} labels")
    shown = np.arange(len(projection))
    max_points = whole_number(max_points, "max_points", 1)
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    x, y = projection[shown, 0], projection[shown, 1]
    size = 3 if len(shown) > 5000 else 10
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    by_cluster, by_label = figure.subplots(1, 2)
    names = np.unique(clusters[shown])
    colours = _colours(len(names))
    for number, cluster in enumerate(names):
        mask = clusters[shown] == cluster
        by_cluster.scatter(x[mask], y[mask], s=size, color=colours[number], linewidths=0,
                           label=f"{cluster} ({int((clusters == cluster).sum())})")
    by_cluster.set_title("by cluster")
    if len(names) <= 20:
        by_cluster.legend(title="cluster (rows)", fontsize=7, markerscale=2, loc="best")
    kinds = np.unique(text[shown][known[shown]]).tolist()
    others = iter(_colours(len(kinds) + 2)[2:])
    if (~known[shown]).any():
        mask = ~known[shown]
        by_label.scatter(x[mask], y[mask], s=size, color="0.7", linewidths=0,
                         label="no label")
    for kind in kinds:
        mask = known[shown] & (text[shown] == kind)
        by_label.scatter(x[mask], y[mask], s=size, linewidths=0, label=str(kind),
                         color=_LABEL_COLOURS.get(str(kind)) or next(others))
    by_label.set_title("by label")
    if len(kinds) <= 20:
        by_label.legend(fontsize=8, markerscale=2, loc="best")
    for axes in (by_cluster, by_label):
        axes.set_xlabel("PC 1")
        axes.set_ylabel("PC 2")
    if title:
        figure.suptitle(title)
    # Rendered in memory, then renamed into place: a reader never sees half a PNG.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_bytes_atomically(path, buffer.getvalue())


def _colours(count):
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["viridis"](i / max(count - 1, 1)) for i in range(count)]
