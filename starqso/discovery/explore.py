"""``starqso similar`` and ``starqso cluster``: what the commands do with an embeddings file.

The embeddings file is what ``starqso embed`` writes (:mod:`starqso.io.embeddings`). Rows
without an embedding (``flag`` says why) are left out of the neighbour index and the clusters,
and both commands say how many.

* :func:`find_similar`: the ``k`` nearest rows to a query (an id of the file, or cutouts in any
  layout ``predict`` reads, embedded with the model). Exact below
  :data:`EXACT_LIMIT` rows; from there a faiss HNSW graph
  (:class:`starqso.discovery.NeighbourIndex`), built once and kept beside the file
  (``.NAME.SPACE.METRIC.hnsw``, with the file's size and modification time, so a changed file
  gets a new index).
* :func:`cluster_file`: PCA + bagged k-means voting (:func:`starqso.discovery.voting_clusters`)
  into ``OUT/clusters.csv`` (id, cluster, agreement, label, p_qso, outlier),
  ``OUT/summary.json`` and ``OUT/clusters.png``; the folder is swapped in whole.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso._util.atomic import replace_folder, write_json_atomically, write_text_atomically
from starqso._util.output_checks import model_inputs, refuse_output_among_inputs, source_inputs
from starqso._util.ownership import output_folder
from starqso.discovery import NeighbourIndex, cluster_purity, plot_clusters, voting_clusters
from starqso.discovery.embed import Embedder, embed_rows
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.io.embeddings import read_embeddings
from starqso.io.sources import open_source

#: Below this many rows the neighbours are exact; from here on, an HNSW graph.
EXACT_LIMIT = 200_000


def pick_space(table, space, path):
    """``space``, or the metric head's when the file has one (else the vector)."""
    if space is None:
        return "metric" if "metric" in table.spaces else "vector"
    if space not in table.spaces:
        raise InputError(f"{path} has no {space!r} embeddings (it has "
                         f"{', '.join(sorted(table.spaces))}). Received: --space {space}")
    return space


def _index_cache(path, space, metric):
    path = pathlib.Path(path)
    stat = path.stat()
    cache = path.with_name(f".{path.name}.{space}.{metric}.hnsw")
    return cache, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "space": space,
                   "metric": metric}


def neighbour_index(table, path, space, metric="euclidean", method="auto", log=None):
    """The :class:`~starqso.discovery.NeighbourIndex` of the usable rows of ``table``.

    An HNSW index is loaded from beside ``path`` when one was built for this file, else built
    and kept there (best effort: a read-only folder only costs the rebuild next time).

    Returns:
        ``(index, rows)``: the index and the table rows it holds, in index order.
    """
    rows = np.flatnonzero(table.usable(space))
    if not len(rows):
        raise InputError(f"{path} has no rows with a {space!r} embedding to search. "
                         f"Received: {len(table.ids)} rows, all flagged")
    vectors = table.spaces[space][rows]
    if method == "auto":
        method = "hnsw" if len(rows) >= EXACT_LIMIT else "exact"
    if method == "exact":
        return NeighbourIndex(vectors, metric=metric, method="exact"), rows
    cache, stamp = _index_cache(path, space, metric)
    stamp_path = cache.with_name(cache.name + ".json")
    try:
        if strict_json.read_json(stamp_path) == stamp and cache.is_file():
            index = NeighbourIndex.load(cache)
            if log is not None:
                log(f"using the HNSW index {cache}")
            return index, rows
    except strict_json.DuplicateKeyError:
        raise
    except (OSError, ValueError):
        pass
    if log is not None:
        log(f"building an HNSW index of {len(rows)} rows (kept in {cache})")
    index = NeighbourIndex(vectors, metric=metric, method="hnsw")
    try:
        index.save(cache)
        write_json_atomically(stamp_path, stamp)
    except OSError as err:
        if log is not None:
            log(f"note: the index could not be kept ({err}); it is built again next time")
    return index, rows


def find_similar(query, index_path, k=20, space=None, metric="euclidean", method="auto",
                 model_dir=None, log=None, output=None):
    """The ``k`` nearest rows of the embeddings file to each query row.

    Args:
        query: an id of the file, or an input ``predict`` reads (a cutout folder, catalogue,
            stack, ...), embedded with ``model_dir``'s model.
        index_path: the embeddings file (``starqso embed --output``).
        k: neighbours per query.
        space: "vector" or "metric"; default the metric head's where the file has it.
        metric: "euclidean" or "cosine".
        method: "auto", "exact" or "hnsw".
        model_dir: export folder for a cutout query (the shipped model when None); it must
            be the model that wrote the file.
        log: optional callable for notes.
        output: the file ``similar --output`` will write: refused here, before any search,
            when it is a folder or one of the files read (:mod:`starqso._util.output_checks`).

    Returns:
        list of dicts, one per (query, rank): query, rank, id, distance, p_qso, label, outlier.

    Raises:
        InputError: a bad file, query, k or space; an ``output`` that is an input.

    Example:
        >>> find_similar("obj-17", "embeddings.parquet", k=5)[0]["rank"]  # doctest: +SKIP
        1
    """
    if output is not None:
        _refuse_similar_output(output, index_path)
    table = read_embeddings(index_path)
    space = pick_space(table, space, index_path)
    by_id = {identifier: row for row, identifier in enumerate(table.ids)}
    exclude, opened = False, None
    if query not in by_id and output is not None and os.path.exists(query):
        opened = _refuse_similar_output(output, index_path, query, model_dir)
    if query in by_id:
        row = by_id[query]
        if not np.isfinite(table.spaces[space][row]).all():
            raise InputError(f"row {row + 1} (id {query!r}) of {index_path} has no embedding "
                             f"(flag: {table.columns['flag'][row]}). Received: {query}")
        queries, query_ids, exclude = table.spaces[space][[row]], [query], True
    elif os.path.exists(query):
        queries, query_ids = _embedded_query(query, table, space, index_path, model_dir, log,
                                             opened)
    else:
        raise InputError(f"query {query!r} is neither an id of {index_path} nor a file or "
                         f"folder of cutouts. Received: {query}")
    index, rows = neighbour_index(table, index_path, space, metric, method, log)
    if not 1 <= k <= len(rows) - exclude:
        raise InputError(f"-k must be between 1 and the {len(rows) - exclude} searchable rows "
                         f"of {index_path}. Received: {k}")
    # The query's own row is its nearest neighbour: ask for one more and drop it.
    distances, found = index.query(queries, k + exclude)
    results = []
    for number, identifier in enumerate(query_ids):
        pairs = [(d, rows[i]) for d, i in zip(distances[number], found[number],
                                              strict=False) if i >= 0]
        if exclude:
            pairs = [(d, row) for d, row in pairs if table.ids[row] != identifier]
        for rank, (distance, row) in enumerate(pairs[:k], start=1):
            results.append({"query": identifier, "rank": rank, "id": str(table.ids[row]),
                            "distance": float(distance),
                            "p_qso": float(table.columns["p_qso"][row]),
                            "label": str(table.columns["label"][row]),
                            "outlier": float(table.columns["outlier"][row])})
    return results


def _refuse_similar_output(output, index_path, query=None, model_dir=None):
    """``similar --output`` is neither a folder nor the index, its side-car, the query's files
    or the model's. Returns the query, opened (its files were listed) when one is given."""
    import itertools

    index_files = [(index_path, f"the --index embeddings file {index_path}"),
                   (f"{index_path}.json", f"the side-car {index_path}.json of --index")]
    if query is None:
        refuse_output_among_inputs(output, index_files)
        return None

    rows_source = open_source(query)
    inputs, trees = source_inputs(rows_source)
    model_files = model_inputs(model_dir if model_dir is not None else default_model_dir())
    refuse_output_among_inputs(output, itertools.chain(index_files, inputs, model_files),
                               trees=trees)
    return rows_source


def _embedded_query(query, table, space, index_path, model_dir, log, opened=None):
    embedder = Embedder(model_dir, log=log)
    if space not in embedder.spaces:
        raise InputError(f"the model gives no {space!r} embedding, so a cutout query cannot "
                         f"be searched in that space of {index_path}. Received: "
                         f"{embedder.model_dir}")
    queried = embed_rows(query if opened is None else opened, embedder)
    if queried.spaces[space].shape[1] != table.spaces[space].shape[1]:
        raise InputError(f"the model's {space} embedding has {queried.spaces[space].shape[1]} "
                         f"numbers but {index_path}'s has {table.spaces[space].shape[1]}: "
                         f"embed the query with the model that wrote the file. Received: "
                         f"{embedder.model_dir}")
    usable = np.isfinite(queried.spaces[space]).all(axis=1)
    if not usable.any():
        raise InputError(f"no cutout of {query} could be embedded ({queried.columns['flag'][0]})."
                         f" Received: {query}")
    if log is not None and not usable.all():
        log(f"{int((~usable).sum())} query rows could not be embedded and are skipped")
    return queried.spaces[space][usable], [str(i) for i in queried.ids[usable]]


def similar_csv_text(results):
    """The neighbours as CSV text (``similar --output``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("query", "rank", "id", "distance", "p_qso", "label", "outlier"))
    for item in results:
        writer.writerow((item["query"], item["rank"], item["id"], f"{item['distance']:.6g}",
                         _cell(item["p_qso"]), item["label"], _cell(item["outlier"])))
    return buffer.getvalue()


def _cell(value):
    return f"{value:.6f}" if np.isfinite(value) else ""


#: Every name ``cluster`` writes into ``--out``: an earlier output holding anything else is
#: refused rather than replaced.
CLUSTER_FILES = ("clusters.csv", "summary.json", "clusters.png")


def cluster_file(path, out_dir, space=None, n_clusters=None, n_bags=25, seed=0, log=None):
    """Cluster the embeddings of ``path`` into ``out_dir`` (see the module docstring).

    Args:
        path: the embeddings file.
        out_dir: the folder to write; replaced whole if it exists, which it may only when
            it is empty or an earlier cluster output (:data:`CLUSTER_FILES`).
        space: "vector" or "metric"; default the metric head's where the file has it.
        n_clusters: the number of clusters; None picks it by silhouette (2-12).
        n_bags: k-means runs on bootstrap subsamples that vote.
        seed: the random seed.
        log: optional callable for notes.

    Returns:
        dict summary (also ``summary.json``): rows, clustered, clusters, sizes, mean
        agreement, purity against the model's labels, silhouette scores, PCA components.

    Example:
        >>> cluster_file("embeddings.parquet", "clusters")["clusters"]  # doctest: +SKIP
        4
    """
    # --out is replaced whole: it must not be, nor hold, the embeddings file it clusters.
    refuse_output_among_inputs(out_dir, [(path, f"the embeddings file {path}"),
                                         (f"{path}.json", f"the side-car {path}.json")],
                               option="--out", folder=True)
    # Before the embeddings are read: --out must be new, empty or an earlier cluster output
    # (it is replaced whole), and one run at a time writes it.
    with output_folder(out_dir, "cluster", replaced=CLUSTER_FILES) as destination:
        return _cluster_into(path, destination, space, n_clusters, n_bags, seed, log)


def _cluster_into(path, destination, space, n_clusters, n_bags, seed, log):
    table = read_embeddings(path)
    space = pick_space(table, space, path)
    rows = np.flatnonzero(table.usable(space))
    if len(rows) < 3:
        raise InputError(f"{path} has {len(rows)} rows with a {space!r} embedding; clustering "
                         f"needs at least 3. Received: {len(table.ids)} rows")
    if log is not None and len(rows) < len(table.ids):
        log(f"{len(table.ids) - len(rows)} rows without an embedding (flagged) are not "
            f"clustered; they are in clusters.csv with an empty cluster")
    result = voting_clusters(table.spaces[space][rows], n_clusters=n_clusters, n_bags=n_bags,
                             seed=seed)
    cluster = np.full(len(table.ids), -1, np.int64)
    agreement = np.full(len(table.ids), np.nan)
    cluster[rows], agreement[rows] = result.labels, result.agreement
    labels = np.asarray(table.columns["label"], dtype=str)
    sizes = np.bincount(result.labels, minlength=result.n_clusters)
    summary = {
        "source": str(pathlib.Path(path).resolve()), "space": space,
        "rows": int(len(table.ids)), "clustered": int(len(rows)),
        "clusters": int(result.n_clusters), "bags": int(n_bags), "seed": int(seed),
        "sizes": [int(size) for size in sizes],
        "qso_fraction": [float(np.mean(labels[rows][result.labels == c] == "QSO"))
                         if sizes[c] else None for c in range(result.n_clusters)],
        "mean_agreement": float(np.mean(result.agreement)),
        "purity_vs_label": float(cluster_purity(result.labels, labels[rows])),
        "pca_components": int(result.n_components),
        "silhouette": {str(key): float(value) for key, value in
                       (result.silhouette or {}).items()},
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("id", "cluster", "agreement", "label", "p_qso", "outlier"))
    for row, identifier in enumerate(table.ids):
        writer.writerow((identifier, cluster[row] if cluster[row] >= 0 else "",
                         _cell(agreement[row]), labels[row],
                         _cell(float(table.columns["p_qso"][row])),
                         _cell(float(table.columns["outlier"][row]))))
    text = buffer.getvalue()

    def build(staging):
        staging = pathlib.Path(staging)
        write_text_atomically(staging / "clusters.csv", text)
        write_json_atomically(staging / "summary.json", summary, sort_keys=False)
        plot_clusters(result.projection, result.labels, labels[rows],
                      staging / "clusters.png",
                      title=f"{pathlib.Path(path).name}: {space}, {result.n_clusters} clusters")

    replace_folder(build, destination, command="cluster")
    return summary
