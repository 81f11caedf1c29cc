"""Neighbours, outlier scores, retrieval metrics, voting clusters and the embeddings file."""

import json

import numpy as np
import pytest

from starqso.discovery import (
    NeighbourIndex,
    average_precision_at_r,
    cluster_purity,
    outlier_scores,
    plot_clusters,
    precision_at_k,
    voting_clusters,
)
from starqso.errors import InputError
from starqso.io.embeddings import EmbeddingTable, read_embeddings, write_embeddings


def _blobs(seed=0, per=100, dim=8, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(per, dim)) * spread for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(3), per)


def _brute(base, queries, k, metric="euclidean"):
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        d = 1 - queries @ base.T
    else:
        d = np.linalg.norm(queries[:, None] - base[None], axis=-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_search_is_brute_force(metric):
    rng = np.random.default_rng(1)
    base, queries = rng.normal(size=(300, 6)), rng.normal(size=(20, 6))
    distances, rows = NeighbourIndex(base, metric=metric, method="exact").query(queries, 7)
    want_d, want_rows = _brute(base, queries, 7, metric)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(distances, want_d, atol=1e-4)


def test_exclude_self_leaves_each_row_out():
    base, _ = _blobs()
    _, rows = NeighbourIndex(base).query(base[:10], 3, exclude_self=True)
    assert all(row not in found for row, found in enumerate(rows))


def test_hnsw_recall_and_save_load(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    _, exact = NeighbourIndex(base, method="exact").query(queries, 10)
    index = NeighbourIndex(base, method="hnsw")
    assert index.method == "hnsw"
    distances, found = index.query(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95
    index.save(tmp_path / "index.hnsw")
    again = NeighbourIndex.load(tmp_path / "index.hnsw")
    d2, f2 = again.query(queries, 10)
    np.testing.assert_array_equal(f2, found)
    np.testing.assert_allclose(d2, distances)
    assert NeighbourIndex(base, exact_limit=1000).method == "hnsw"


def test_outlier_score_picks_the_planted_point():
    base, _ = _blobs()
    scores = outlier_scores(base, np.vstack([base[:50], np.full((1, 8), 40.0)]), k=10)
    assert scores[-1] > 10 * np.median(scores[:50])
    assert 0.3 < np.median(outlier_scores(base, base, k=10, exclude_self=True)) < 1.5


def _map_at_r_reference(x, y):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    scores = []
    for i in range(len(x)):
        r = int(np.sum(y == y[i])) - 1
        order = np.argsort(d[i], kind="stable")[:r]
        hits = y[order] == y[i]
        scores.append(np.sum(np.cumsum(hits) / np.arange(1, r + 1) * hits) / r)
    return np.mean(scores)


def test_retrieval_scores_match_a_reference_and_perfect_separation_is_one():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(80, 3)), rng.integers(0, 3, 80)
    assert average_precision_at_r(x, y) == pytest.approx(_map_at_r_reference(x, y))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :5]
    assert precision_at_k(x, y, k=5) == pytest.approx(np.mean(y[order] == y[:, None]))
    blobs, labels = _blobs()
    assert average_precision_at_r(blobs, labels) == 1.0
    assert precision_at_k(blobs, labels, k=10) == 1.0


def test_voting_clusters_find_the_blobs_deterministically(tmp_path):
    x, y = _blobs()
    result = voting_clusters(x, n_bags=7, seed=4)
    assert result.n_clusters == 3 and 3 in result.silhouette
    assert cluster_purity(result.labels, y) == 1.0
    assert result.agreement.min() == 1.0
    again = voting_clusters(x, n_bags=7, seed=4)
    np.testing.assert_array_equal(result.labels, again.labels)
    assert np.bincount(result.labels).tolist() == [100, 100, 100]
    path = plot_clusters(result.projection, result.labels, np.where(y == 0, "QSO", "STAR"),
                         tmp_path / "c.png", title="blobs")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cluster_purity_ignores_unknown_labels():
    assert cluster_purity([0, 0, 1, 1, 1], ["STAR", "STAR", "QSO", "STAR", ""]) == 0.75


@pytest.mark.parametrize("call, fragment", [
    (lambda: NeighbourIndex(np.zeros((0, 4))), "non-empty"),
    (lambda: NeighbourIndex(np.array([[1.0, np.nan]])), "row 1"),
    (lambda: NeighbourIndex(np.ones((5, 2))).query(np.ones((1, 3)), 2), "3"),
    (lambda: NeighbourIndex(np.ones((5, 2))).query(np.ones((1, 2)), 6), "6"),
    (lambda: NeighbourIndex(np.ones((5, 2)), metric="manhattan"), "manhattan"),
    (lambda: voting_clusters(np.random.rand(10, 2), n_clusters=1), "1"),
])
def test_bad_inputs_are_input_errors(call, fragment):
    with pytest.raises(InputError, match="Received:") as excinfo:
        call()
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


def _table(with_metric=True):
    rng = np.random.default_rng(5)
    spaces = {"vector": rng.normal(size=(4, 6)).astype(np.float32)}
    if with_metric:
        spaces["metric"] = rng.normal(size=(4, 3)).astype(np.float32)
    spaces["vector"][2] = np.nan
    if with_metric:
        spaces["metric"][2] = np.nan
    return EmbeddingTable(
        ids=np.array(["a", "b", "c", "d"]), spaces=spaces,
        columns={"p_qso": np.array([0.1, 0.9, np.nan, 0.5]),
                 "label": np.array(["STAR", "QSO", "", "QSO"]),
                 "flag": np.array(["", "", "cutout not found", ""]),
                 "qflag": np.array([0, 32, 1, 0]),
                 "outlier": np.array([1.0, 2.5, np.nan, 0.7])},
        record={"model": "m", "prior": 0.3})


@pytest.mark.parametrize("suffix", [".csv", ".fits", ".parquet"])
def test_embeddings_round_trip(suffix, tmp_path):
    table = _table()
    path = tmp_path / f"emb{suffix}"
    write_embeddings(table, path)
    back = read_embeddings(path)
    assert list(back.ids) == ["a", "b", "c", "d"]
    for space in ("vector", "metric"):
        np.testing.assert_allclose(back.spaces[space], table.spaces[space], rtol=1e-6)
    np.testing.assert_allclose(back.columns["p_qso"], table.columns["p_qso"])
    np.testing.assert_allclose(back.columns["outlier"], table.columns["outlier"])
    assert list(back.columns["flag"]) == list(table.columns["flag"])
    assert list(back.columns["label"]) == list(table.columns["label"])
    assert list(back.columns["qflag"]) == [0, 32, 1, 0]
    assert back.record == {"model": "m", "prior": 0.3}
    assert back.usable().tolist() == [True, True, False, True]
    if suffix == ".csv":
        assert json.loads((tmp_path / "emb.csv.json").read_text())["prior"] == 0.3


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import starqso.io.embeddings as module

    def broken(table):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "_parquet_bytes", broken)
    with pytest.raises(OSError):
        write_embeddings(_table(), tmp_path / "emb.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, name, fragment", [
    (None, "missing.csv", "not found"),
    ("x", "emb.txt", "must end in"),
    ("name,vector_000\na,1\n", "emb.csv", "no id column"),
    ("id,p_qso\na,0.5\n", "emb.csv", "no vector embedding"),
    ("id,vector_000\na,1\na,2\n", "emb.csv", "rows 1 and 2"),
    ("id,vector_000\na,one\n", "emb.csv", "line 2, column vector_000"),
    ("id,vector_000,vector_002\na,1,2\n", "emb.csv", "in order"),
    ("id,vector_000\na\n", "emb.csv", "line 2 has 1 cells"),
    ("not a fits file", "emb.fits", "could not be read"),
    ("not parquet", "emb.parquet", "could not be read"),
])
def test_bad_embeddings_files_are_one_line_errors(content, name, fragment, tmp_path):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as excinfo:
        read_embeddings(path)
    assert fragment in str(excinfo.value) and name in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
