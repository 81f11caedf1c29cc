"""Neighbours, outlier scores, retrieval metrics and voting clusters of embeddings
(starqso.discovery), each checked against a brute-force NumPy reference or a planted answer."""

import sys

import numpy as np
import pytest
from helpers import assert_one_line_error

from starqso.discovery import (
    NeighbourIndex,
    average_precision_at_r,
    cluster_purity,
    clusters,
    outlier_scores,
    plot_clusters,
    precision_at_k,
    voting_clusters,
)
from starqso.discovery import index as discovery
from starqso.errors import InputError


def brute_force(base, queries, k, metric="euclidean", exclude_self=False):
    base, queries = np.asarray(base, np.float64), np.asarray(queries, np.float64)
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        distances = 1.0 - queries @ base.T
    else:
        distances = np.sqrt(((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2))
    if exclude_self:
        distances[np.arange(len(queries)), np.arange(len(queries))] = np.inf
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def blobs(rows_per_blob=100, dim=10, centres=3, seed=0, spread=8.0):
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, dim)) * spread
    truth = np.repeat(np.arange(centres), rows_per_blob)
    vectors = centre[truth] + rng.normal(size=(len(truth), dim))
    return vectors.astype(np.float32), truth


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(1)
    return rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(20, 16))


# --- neighbours --------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_matches_brute_force(points, metric, monkeypatch):
    base, queries = points
    # Tiny blocks, so the blocked path (several blocks of queries) is what is checked.
    monkeypatch.setattr(discovery, "_BLOCK_VALUES", 7 * len(base))
    index = NeighbourIndex(base, metric=metric)
    assert index.method == "exact" and len(index) == 300
    distances, rows = index.query(queries, 7)
    expected_distances, expected_rows = brute_force(base, queries, 7, metric)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-6)
    assert distances.dtype == np.float64 and rows.dtype == np.int64
    # Every row: k = rows gives the full ranking.
    _, everything = index.query(queries[:2], 300)
    np.testing.assert_array_equal(everything, brute_force(base, queries[:2], 300, metric)[1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exclude_self(points, metric):
    base, _ = points
    index = NeighbourIndex(base, metric=metric)
    distances, rows = index.query(base, 5, exclude_self=True)
    expected_distances, expected_rows = brute_force(base, base, 5, metric, exclude_self=True)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-6)
    # The same by explicit rows: queries are rows 10 and 42 of the index.
    _, some = index.query(base[[10, 42]], 5, exclude_self=np.array([10, 42]))
    np.testing.assert_array_equal(some, expected_rows[[10, 42]])
    # Without exclusion, each row is its own nearest neighbour at distance 0.
    distances, rows = index.query(base, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(base)))
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_hnsw_recall_and_save_load(tmp_path, metric):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2000, 24)).astype(np.float32)
    queries = rng.normal(size=(200, 24)).astype(np.float32)
    hnsw = NeighbourIndex(base, metric=metric, method="hnsw", seed=3)
    assert hnsw.method == "hnsw"
    distances, found = hnsw.query(queries, 10)
    _, exact = NeighbourIndex(base, metric=metric, method="exact").query(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=False)])
    assert recall >= 0.95, recall
    assert (np.diff(distances, axis=1) >= -1e-6).all()
    hnsw.info = {"source": "embeddings.parquet", "size": 123}
    path = hnsw.save(tmp_path / "index.hnsw")
    loaded = NeighbourIndex.load(path)
    assert (loaded.method, loaded.metric, loaded.rows, loaded.dim) == ("hnsw", metric, 2000, 24)
    assert loaded.info == hnsw.info and loaded.ef_search == hnsw.ef_search
    again_distances, again = loaded.query(queries, 10)
    np.testing.assert_array_equal(again, found)
    np.testing.assert_allclose(again_distances, distances)
    # Own rows left out in HNSW as well.
    _, own = hnsw.query(base[:50], 5, exclude_self=True)
    assert (own != np.arange(50)[:, None]).all()


def test_auto_method_and_exact_save(tmp_path, points):
    base, queries = points
    assert NeighbourIndex(base, exact_limit=301).method == "exact"
    assert NeighbourIndex(base, exact_limit=300).method == "hnsw"
    exact = NeighbourIndex(base, metric="cosine", method="exact")
    loaded = NeighbourIndex.load(exact.save(tmp_path / "exact.idx"))
    assert loaded.method == "exact" and loaded.metric == "cosine"
    np.testing.assert_array_equal(loaded.query(queries, 4)[1], exact.query(queries, 4)[1])


def test_load_refuses_other_files(tmp_path, points):
    path = tmp_path / "index.hnsw"
    path.write_bytes(b"not an index at all")
    with pytest.raises(InputError) as excinfo:
        NeighbourIndex.load(path)
    assert_one_line_error(excinfo, "not a neighbour index", str(path))
    data = NeighbourIndex(points[0], method="hnsw").save(tmp_path / "good.hnsw")
    cut = tmp_path / "cut.hnsw"
    cut.write_bytes(open(data, "rb").read()[:-5000])
    with pytest.raises(InputError) as excinfo:
        NeighbourIndex.load(cut)
    assert_one_line_error(excinfo, str(cut))
    with pytest.raises(InputError) as excinfo:
        NeighbourIndex.load(tmp_path / "missing.hnsw")
    assert_one_line_error(excinfo, "missing.hnsw")


def test_hnsw_without_faiss(points, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(InputError) as excinfo:
        NeighbourIndex(points[0], method="hnsw")
    assert_one_line_error(excinfo, "pip install faiss-cpu", "starqso[discovery]", "Received:")
    assert NeighbourIndex(points[0]).method == "exact"  # exact search needs no faiss


def test_bad_neighbour_inputs(points):
    base, queries = points
    index = NeighbourIndex(base)
    cases = [
        (lambda: index.query(queries, 0), ("k", "between 1 and 300", "k=0")),
        (lambda: index.query(queries, 301), ("between 1 and 300", "k=301")),
        (lambda: index.query(base, 300, exclude_self=True), ("between 1 and 299", "k=300")),
        (lambda: index.query(queries, True), ("k=True",)),
        (lambda: index.query(queries[:, :8], 3), ("16 numbers", "Received: 8")),
        (lambda: index.query(np.full((1, 16), np.nan), 3), ("finite", "row 1")),
        (lambda: NeighbourIndex(np.zeros((0, 4))), ("non-empty", "(0, 4)")),
        (lambda: NeighbourIndex(base, metric="manhattan"), ("euclidean, cosine", "'manhattan'")),
        (lambda: NeighbourIndex(base, method="annoy"), ("auto, exact, hnsw", "'annoy'")),
        (lambda: NeighbourIndex(np.zeros((3, 2)), metric="cosine"), ("zero vector", "row 1")),
        (lambda: index.query(np.vstack([base, base[:1]]), 3, exclude_self=True),
         ("at most 300 queries", "301")),
        (lambda: index.query(base[:2], 3, exclude_self=[0, 400]), ("one index row", "400")),
    ]
    for call, fragments in cases:
        with pytest.raises(InputError) as excinfo:
            call()
        assert_one_line_error(excinfo, "Received:", *fragments)


# --- outlier scores ----------------------------------------------------------------------------


def test_outlier_score_of_planted_point():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(400, 8))
    inliers = rng.normal(size=(50, 8))
    far = np.full((1, 8), 12.0)
    scores = outlier_scores(reference, np.vstack([inliers, far]), k=10)
    assert scores.shape == (51,) and scores.dtype == np.float64
    assert 0.5 < np.median(scores[:50]) < 1.6
    assert scores[-1] > 5 * scores[:50].max()
    # The reference scored against itself (each row left out) has median exactly 1.
    own = outlier_scores(reference, reference, k=10, exclude_self=True)
    assert np.median(own) == pytest.approx(1.0)


def test_outlier_score_errors():
    reference = np.random.default_rng(0).normal(size=(20, 4))
    for call, fragments in [
        (lambda: outlier_scores(reference, reference[:, :3]), ("4", "Received: 3")),
        (lambda: outlier_scores(reference, reference, k=20), ("between 1 and 19", "k=20")),
        (lambda: outlier_scores(reference[:1], reference), ("at least 2 rows",)),
        (lambda: outlier_scores(reference, np.full((2, 4), np.nan)), ("finite",)),
    ]:
        with pytest.raises(InputError) as excinfo:
            call()
        assert_one_line_error(excinfo, "Received:", *fragments)


# --- retrieval metrics -------------------------------------------------------------------------


def reference_map_at_r(vectors, labels, metric):
    labels = np.asarray(labels)
    _, order = brute_force(vectors, vectors, len(vectors) - 1, metric, exclude_self=True)
    scores = []
    for row in range(len(vectors)):
        r = int((labels == labels[row]).sum()) - 1
        if r == 0:
            continue
        correct = labels[order[row, :r]] == labels[row]
        precision = [correct[: i + 1].mean() for i in range(r)]
        scores.append(sum(p for p, hit in zip(precision, correct, strict=False) if hit) / r)
    return float(np.mean(scores))


def reference_precision_at_k(vectors, labels, k, metric):
    labels = np.asarray(labels)
    _, order = brute_force(vectors, vectors, k, metric, exclude_self=True)
    return float(np.mean(labels[order] == labels[:, None]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_retrieval_metrics_match_brute_force(metric, monkeypatch):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 90)
    # Classes overlap (the shift is small), so the scores are well inside (0, 1).
    vectors = rng.normal(size=(90, 6)) + 0.8 * labels[:, None]
    labels = np.append(labels, 9)  # a class of one row: no R, left out of MAP@R
    vectors = np.vstack([vectors, rng.normal(size=(1, 6))])
    expected_map = reference_map_at_r(vectors, labels, metric)
    expected_p = reference_precision_at_k(vectors, labels, 5, metric)
    assert 0.2 < expected_map < 0.9 and 0.2 < expected_p < 0.95
    assert average_precision_at_r(vectors, labels, metric=metric) == pytest.approx(expected_map)
    assert precision_at_k(vectors, labels, k=5, metric=metric) == pytest.approx(expected_p)
    # Tiny blocks give the same numbers.
    monkeypatch.setattr(discovery, "_BLOCK_VALUES", 200)
    assert average_precision_at_r(vectors, labels, metric=metric) == pytest.approx(expected_map)
    mean, by_class = precision_at_k(vectors, labels, k=5, metric=metric, per_class=True)
    assert mean == pytest.approx(expected_p) and set(by_class) == {0, 1, 2, 9}


def test_retrieval_metrics_perfect_separation():
    vectors, truth = blobs(rows_per_blob=30, dim=4, spread=50.0)
    names = np.array(["STAR", "QSO z<1", "QSO z>=3"])[truth]
    assert average_precision_at_r(vectors, names) == 1.0
    assert precision_at_k(vectors, names, k=10) == 1.0
    mean, by_class = average_precision_at_r(vectors, names, per_class=True)
    assert mean == 1.0 and by_class == {"QSO z<1": 1.0, "QSO z>=3": 1.0, "STAR": 1.0}


def test_map_at_r_gives_a_collapsed_embedding_no_credit():
    # Every row at distance 0 from every other: ties rank the other class first.
    collapsed = np.zeros((40, 3))
    assert average_precision_at_r(collapsed, np.repeat([0, 1], 20)) == 0.0


def test_retrieval_metric_errors():
    vectors = np.random.default_rng(0).normal(size=(10, 3))
    for call, fragments in [
        (lambda: precision_at_k(vectors, [0] * 9), ("one entry per vector", "(9,)")),
        (lambda: precision_at_k(vectors, [0] * 10, k=10), ("between 1 and 9", "k=10")),
        (lambda: average_precision_at_r(vectors, np.arange(10)), ("two rows",)),
        (lambda: average_precision_at_r(vectors[:1], [0]), ("at least 2 rows",)),
    ]:
        with pytest.raises(InputError) as excinfo:
            call()
        assert_one_line_error(excinfo, "Received:", *fragments)


# --- voting clusters ---------------------------------------------------------------------------


def test_voting_clusters_find_planted_blobs():
    vectors, truth = blobs()
    result = voting_clusters(vectors, n_clusters=3, n_bags=8, seed=0)
    assert result.n_clusters == 3 and result.labels.shape == (300,)
    assert cluster_purity(result.labels, truth) == 1.0
    assert result.agreement.min() == 1.0
    assert result.projection.shape == (300, 2) and result.projection.dtype == np.float32
    assert 2 <= result.n_components <= 10 and 0.5 < result.explained_variance <= 1.0
    assert result.silhouette == {}
    # Clusters numbered by decreasing size: all equal here, so just 0, 1, 2.
    assert sorted(np.unique(result.labels)) == [0, 1, 2]


def test_voting_clusters_deterministic_and_auto_k():
    vectors, truth = blobs(seed=6)
    first = voting_clusters(vectors, n_bags=5, seed=11, k_range=range(2, 7))
    second = voting_clusters(vectors, n_bags=5, seed=11, k_range=range(2, 7))
    assert first.n_clusters == 3
    assert set(first.silhouette) == {2, 3, 4, 5, 6}
    assert max(first.silhouette, key=first.silhouette.get) == 3
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.agreement, second.agreement)
    np.testing.assert_array_equal(first.projection, second.projection)
    assert cluster_purity(first.labels, truth) == 1.0


def test_voting_clusters_minibatch_path(monkeypatch):
    monkeypatch.setattr(clusters, "_MINIBATCH_ROWS", 100)
    vectors, truth = blobs(seed=7)
    result = voting_clusters(vectors, n_clusters=3, n_bags=4, seed=1)
    assert cluster_purity(result.labels, truth) == 1.0
    assert result.agreement.mean() > 0.99


def test_voting_clusters_errors():
    vectors, _ = blobs(rows_per_blob=5)
    nan_rows = vectors.copy()
    nan_rows[4] = np.nan
    for call, fragments in [
        (lambda: voting_clusters(vectors, n_clusters=1), ("n_clusters", "n_clusters=1")),
        (lambda: voting_clusters(vectors, n_clusters=16), ("at most", "15", "n_clusters=16")),
        (lambda: voting_clusters(np.zeros((0, 3))), ("non-empty",)),
        (lambda: voting_clusters(nan_rows, n_clusters=2), ("finite", "row 5")),
        (lambda: voting_clusters(vectors, n_bags=0), ("n_bags=0",)),
        (lambda: voting_clusters(vectors, sample_fraction=1.5), ("(0, 1]", "1.5")),
        (lambda: voting_clusters(vectors[:2], k_range=range(2, 5)), ("k_range",)),
    ]:
        with pytest.raises(InputError) as excinfo:
            call()
        assert_one_line_error(excinfo, "Received:", *fragments)


def test_cluster_purity():
    assert cluster_purity([0, 0, 1, 1], ["STAR", "STAR", "QSO", "STAR"]) == 0.75
    # Unknown labels are left out of both the counts and N.
    assert cluster_purity([0, 0, 1, 1, 1], ["STAR", "", "QSO", "QSO", ""]) == 1.0
    assert cluster_purity([0, 0, 1, 1], [0, -1, 1, 0]) == pytest.approx(2 / 3)
    assert cluster_purity([0, 1], ["", ""]) != cluster_purity([0, 1], ["", ""])  # NaN
    with pytest.raises(InputError) as excinfo:
        cluster_purity([0, 1, 2], ["STAR"])
    assert_one_line_error(excinfo, "Received: 3 clusters, 1 labels")


def test_plot_clusters_writes_png(tmp_path):
    vectors, truth = blobs(rows_per_blob=40)
    result = voting_clusters(vectors, n_clusters=3, n_bags=2)
    labels = np.array(["STAR", "QSO", ""])[truth]
    path = tmp_path / "clusters.png"
    assert plot_clusters(result.projection, result.labels, labels, path, title="demo",
                         max_points=50) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [entry.name for entry in tmp_path.iterdir()] == ["clusters.png"]
    with pytest.raises(InputError) as excinfo:
        plot_clusters(result.projection[:, :1], result.labels, labels, tmp_path / "x.png")
    assert_one_line_error(excinfo, "(N, 2)", "Received: shape (120, 1)")
    with pytest.raises(InputError) as excinfo:
        plot_clusters(result.projection, result.labels[:5], labels, tmp_path / "x.png")
    assert_one_line_error(excinfo, "one entry per projected row", "Received: 5 clusters")
    assert not (tmp_path / "x.png").exists()
