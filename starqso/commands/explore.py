"""``starqso evaluate``, ``starqso similar`` and ``starqso cluster``: reading what predict and
embed wrote (scores against a truth catalogue, neighbours, clusters)."""

from __future__ import annotations

import click

from starqso._util.native_stderr import native_stderr_filtered
from starqso.commands.shared import log_to_stderr
from starqso.errors import InputError


@click.command()
@click.argument("predictions", type=click.Path())
@click.option("--truth", "truth", type=click.Path(), required=True,
              help="Labelled catalogue (CSV/FITS with id, label: STAR, QSO, GALAXY or blank; "
                   "optional r, redshift).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="evaluation",
              show_default=True, help="Folder for metrics.json and the plots; replaced "
              "as a whole, so it must be new, empty or an earlier evaluation.")
@click.option("--threshold", default=None, type=float,
              help="Call an object QSO when p_qso >= threshold [default: the threshold "
                   "predict labelled PREDICTIONS with (its side-car or FITS header), else "
                   "0.5].")
@click.option("--strict", is_flag=True,
              help="Fail unless every truth row is matched, labelled and scored.")
def evaluate(predictions, truth, out_dir, threshold, strict):
    """Score PREDICTIONS (the output of `starqso predict`) against a labelled catalogue.

    Joins the two by id and reports ids missing from PREDICTIONS, extra ids, flagged rows and
    unlabelled truth rows. Writes metrics.json and plots (confusion matrix, ROC,
    precision-recall, reliability, QSO completeness/purity vs r and redshift) into --out.
    With three-class predictions (p_galaxy) or GALAXY truth rows, also the STAR/QSO/GALAXY
    confusion matrix, per-class precision/recall/F1 (overall and vs r and redshift),
    one-vs-rest ROC and per-class reliability; STAR/QSO truth is still scored as QSO vs not
    QSO.
    """
    from starqso.evaluation import evaluate_predictions, format_report

    metrics = evaluate_predictions(predictions, truth, out_dir, threshold=threshold,
                                   strict=strict)
    click.echo(format_report(metrics))


@click.command()
@click.argument("query")
@click.option("--index", "index_path", required=True, type=click.Path(dir_okay=False),
              help="Embeddings file written by `starqso embed`.")
@click.option("-k", "k", default=20, show_default=True, type=int, help="Neighbours per query.")
@click.option("--space", type=click.Choice(["vector", "metric"]), default=None,
              help="Embedding to search [default: metric where the file has it, else vector].")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              show_default=True)
@click.option("--method", type=click.Choice(["auto", "exact", "hnsw"]), default="auto",
              show_default=True,
              help="exact search, or an approximate faiss HNSW index (built once and kept "
                   "beside the file); auto: exact below 200,000 rows.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model that embeds a cutout QUERY (the one that wrote --index) [default: "
                   "the shipped model].")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Also write the neighbours as CSV.")
def similar(query, index_path, k, space, metric, method, model_dir, output):
    """The objects most like QUERY: an id of --index, or cutouts (any input `predict` reads).

    Prints, per query, its K nearest rows of the embeddings file, nearest first: rank, id,
    distance, p_qso, label and outlier score.
    """
    from starqso.discovery.explore import find_similar, similar_csv_text

    with native_stderr_filtered():
        results = find_similar(query, index_path, k=k, space=space, metric=metric,
                               method=method, model_dir=model_dir,
                               log=log_to_stderr, output=output)
    if output is not None:
        from starqso._util.atomic import write_text_atomically

        write_text_atomically(output, similar_csv_text(results))
    shown_query = None
    for item in results:
        if item["query"] != shown_query:
            shown_query = item["query"]
            click.echo(f"neighbours of {shown_query}:")
            click.echo(f"{'rank':>4}  {'id':<24} {'distance':>9}  {'p_qso':>6}  label  outlier")
        p_qso = f"{item['p_qso']:.3f}" if item["p_qso"] == item["p_qso"] else ""
        outlier = f"{item['outlier']:.2f}" if item["outlier"] == item["outlier"] else ""
        click.echo(f"{item['rank']:>4}  {item['id']:<24} {item['distance']:>9.4f}  "
                   f"{p_qso:>6}  {item['label']:<5}  {outlier}")
    if output is not None:
        click.echo(f"-> {output}")


@click.command()
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="clusters",
              show_default=True, help="Folder for clusters.csv, summary.json and clusters.png "
              "(replaced as a whole).")
@click.option("--space", type=click.Choice(["vector", "metric"]), default=None,
              help="Embedding to cluster [default: metric where the file has it, else vector].")
@click.option("--clusters", "n_clusters", default="auto", show_default=True,
              help="Number of clusters, or auto (best silhouette of 2-12).")
@click.option("--bags", default=25, show_default=True, type=int,
              help="k-means runs on bootstrap samples that vote.")
@click.option("--seed", default=0, show_default=True, type=int)
def cluster(embeddings, out_dir, space, n_clusters, bags, seed):
    """Cluster an embeddings file: PCA + bagged k-means voting, with a vote agreement per row.

    Writes clusters.csv (id, cluster, agreement: the fraction of bags that agree with the
    vote, label, p_qso, outlier), summary.json (sizes, QSO fraction per cluster, purity
    against the model's labels) and clusters.png (the PCA projection coloured by cluster and
    by label).
    """
    from starqso.discovery.explore import cluster_file

    if n_clusters == "auto":
        n_clusters = None
    else:
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            raise InputError(f"--clusters must be a whole number >= 2 or auto. Received: "
                             f"{n_clusters}") from None
    if bags < 1:
        raise InputError(f"--bags must be at least 1. Received: {bags}")
    summary = cluster_file(embeddings, out_dir, space=space, n_clusters=n_clusters,
                           n_bags=bags, seed=seed, log=log_to_stderr)
    click.echo(f"{summary['clustered']} of {summary['rows']} rows in {summary['clusters']} "
               f"clusters (sizes {', '.join(map(str, summary['sizes']))}), mean vote "
               f"agreement {summary['mean_agreement']:.3f}, purity vs the model's labels "
               f"{summary['purity_vs_label']:.3f} -> {out_dir}")
