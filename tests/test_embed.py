"""`starqso embed`, `similar` and `cluster`, end to end through the CLI.

A tiny run trained with the metric-learning head (``model.metric_loss: norm_softmax``) and
exported: its folder carries the head inside the Keras model and ``embedding_reference.npz``.
The commands run on a small simulated survey in several input layouts, every output format,
and the shipped model (vector only); bad input is one error line, exit 2.
"""

import csv
import json

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line

from starqso.cli import main

COUNT = 24


def _invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def _rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed-survey") / "sim"
    result = _invoke("simulate", folder, "--n", COUNT, "--size", 32, "--seed", 3,
                     "--workers", 1)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def model(tiny_run):
    """The shared tiny exported run, with its Normalised-Softmax metric head (conftest.py)."""
    run = tiny_run.path
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"n", "map_at_r", "precision_at_10"} <= set(metrics["metric"])
    assert (run / "metric_head.keras").is_file()
    return run / "export"


@pytest.fixture(scope="module")
def embedded(model, survey, tmp_path_factory):
    output = tmp_path_factory.mktemp("embedded") / "emb.csv"
    result = _invoke("embed", survey / "catalog.csv", "--model", model, "--output", output,
                     "--prior", 0.3)
    assert result.exit_code == 0, result.output
    assert f"{COUNT} rows, {COUNT} embedded, 0 flagged; spaces vector (8), metric (4)" in \
        result.stdout
    return output


def test_export_carries_the_head_and_the_reference(model):
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["embedding"]["spaces"] == {"vector": 8, "metric": 4}
    assert "embedding_reference.npz" in metadata["sha256"]
    with np.load(model / "embedding_reference.npz") as data:
        assert data["metric"].shape[1] == 4
        np.testing.assert_allclose(np.linalg.norm(data["metric"].astype(float), axis=1), 1,
                                   atol=3e-3)


def test_embed_matches_predict_and_the_keras_model(model, survey, embedded, tmp_path):
    rows = _rows(embedded)
    assert len(rows) == COUNT
    assert [key for key in rows[0]][:6] == ["id", "p_qso", "label", "flag", "qflag", "outlier"]
    predicted = tmp_path / "pred.csv"
    result = _invoke("predict", survey / "catalog.csv", "--model", model, "--output", predicted,
                     "--runtime", "keras", "--prior", 0.3, "--no-uncertainty")
    assert result.exit_code == 0, result.output
    for mine, theirs in zip(rows, _rows(predicted), strict=False):
        assert mine["id"] == theirs["id"] and mine["label"] == theirs["label"]
        assert abs(float(mine["p_qso"]) - float(theirs["p_qso"])) < 1e-4
        assert mine["qflag"] == theirs["qflag"]
    metric = np.array([[float(row[f"metric_{i:02d}"]) for i in range(4)] for row in rows])
    np.testing.assert_allclose(np.linalg.norm(metric, axis=1), 1, atol=1e-4)
    outlier = np.array([float(row["outlier"]) for row in rows])
    assert np.all(np.isfinite(outlier)) and np.all(outlier >= 0)
    record = json.loads(embedded.with_name(embedded.name + ".json").read_text())
    assert record["prior"] == 0.3 and record["outlier_space"] == "metric"


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_every_output_format_holds_the_same_table(model, survey, embedded, suffix, tmp_path):
    from starqso.io.embeddings import read_embeddings

    output = tmp_path / f"emb{suffix}"
    result = _invoke("embed", survey / "catalog.csv", "--model", model, "--output", output,
                     "--prior", 0.3)
    assert result.exit_code == 0, result.output
    mine, reference = read_embeddings(output), read_embeddings(embedded)
    assert list(mine.ids) == list(reference.ids)
    for space in ("vector", "metric"):
        np.testing.assert_allclose(mine.spaces[space], reference.spaces[space], atol=1e-5)


def test_a_folder_and_a_stack_give_the_catalogue_rows(model, survey, embedded, tmp_path):
    from starqso.io import read_catalog, read_cutout, resolve_path
    from starqso.io.embeddings import read_embeddings

    reference = read_embeddings(embedded)
    table = read_catalog(survey / "catalog.csv")
    cubes = np.stack([read_cutout(resolve_path(table, str(v))).data for v in table["image"]])
    stack = tmp_path / "stack.fits"
    fits.HDUList([fits.PrimaryHDU(cubes),
                  fits.BinTableHDU.from_columns([fits.Column(
                      "id", "20A", array=np.asarray(reference.ids))], name="IDS")]
                 ).writeto(stack)
    for source in (stack,):
        output = tmp_path / "from_stack.parquet"
        result = _invoke("embed", source, "--model", model, "--output", output, "--prior", 0.3)
        assert result.exit_code == 0, result.output
        mine = read_embeddings(output)
        assert list(mine.ids) == list(reference.ids)
        np.testing.assert_allclose(mine.spaces["vector"], reference.spaces["vector"], atol=1e-5)


def test_a_bad_row_keeps_its_place_with_empty_embeddings(model, survey, tmp_path):
    lines = (survey / "catalog.csv").read_text().splitlines()
    column = lines[0].split(",").index("image")
    broken = lines[3].split(",")
    broken[column] = str(tmp_path / "missing.fits")
    lines[3] = ",".join(broken)
    # Beside the original, so its relative cutout paths still resolve.
    catalog = survey / "catalog_one_missing.csv"
    catalog.write_text("\n".join(lines) + "\n")
    output = tmp_path / "emb.csv"
    result = _invoke("embed", catalog, "--model", model, "--output", output)
    assert result.exit_code == 0, result.output
    assert "1 flagged" in result.stdout
    row = _rows(output)[2]
    assert "not found" in row["flag"]
    assert row["p_qso"] == row["vector_000"] == row["metric_00"] == row["outlier"] == ""


def test_similar_by_id_and_by_cutout(model, survey, embedded, tmp_path):
    rows = _rows(embedded)
    first = rows[0]["id"]
    result = _invoke("similar", first, "--index", embedded, "-k", 5, "--output",
                     tmp_path / "nn.csv")
    assert result.exit_code == 0, result.output
    found = _rows(tmp_path / "nn.csv")
    assert [row["rank"] for row in found] == ["1", "2", "3", "4", "5"]
    assert first not in [row["id"] for row in found]
    distances = [float(row["distance"]) for row in found]
    assert distances == sorted(distances)
    # The same answer from the exact metric-space distances.
    metric = np.array([[float(row[f"metric_{i:02d}"]) for i in range(4)] for row in rows])
    order = np.argsort(np.linalg.norm(metric - metric[0], axis=1))[1:6]
    assert [row["id"] for row in found] == [rows[i]["id"] for i in order]
    # A cutout folder as the query: the object's own row comes first, at distance ~0.
    from starqso.io import read_catalog, resolve_path

    table = read_catalog(survey / "catalog.csv")
    folder = tmp_path / "query"
    folder.mkdir()
    cutout = resolve_path(table, str(table["image"][0]))
    (folder / "q.fits").write_bytes(open(cutout, "rb").read())
    result = _invoke("similar", folder, "--index", embedded, "-k", 3, "--model", model)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    first_hit = next(line for line in lines if line and line[0] == "1")
    assert first_hit[1] == first and float(first_hit[2]) < 1e-3


def test_similar_hnsw_is_built_once_and_agrees(embedded, tmp_path):
    exact = _invoke("similar", _rows(embedded)[1]["id"], "--index", embedded, "-k", 4,
                    "--space", "vector")
    built = _invoke("similar", _rows(embedded)[1]["id"], "--index", embedded, "-k", 4,
                    "--space", "vector", "--method", "hnsw")
    assert exact.exit_code == built.exit_code == 0, built.output
    assert "building an HNSW index" in built.stderr
    cached = _invoke("similar", _rows(embedded)[1]["id"], "--index", embedded, "-k", 4,
                     "--space", "vector", "--method", "hnsw")
    assert "using the HNSW index" in cached.stderr
    assert exact.stdout == built.stdout == cached.stdout


def test_cluster_writes_labels_agreement_and_a_plot(embedded, tmp_path):
    out = tmp_path / "clusters"
    result = _invoke("cluster", embedded, "--out", out, "--clusters", 3, "--bags", 5)
    assert result.exit_code == 0, result.output
    rows = _rows(out / "clusters.csv")
    assert len(rows) == COUNT and {row["cluster"] for row in rows} == {"0", "1", "2"}
    assert all(0 < float(row["agreement"]) <= 1 for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"] == 3 and sum(summary["sizes"]) == COUNT
    assert (out / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = _invoke("cluster", embedded, "--out", tmp_path / "again", "--clusters", 3,
                    "--bags", 5)
    assert (tmp_path / "again" / "clusters.csv").read_text() == (out / "clusters.csv").read_text()
    assert again.exit_code == 0


def test_the_shipped_model_embeds_its_vector(survey, tmp_path):
    output = tmp_path / "shipped.csv"
    result = _invoke("embed", survey / "catalog.csv", "--output", output)
    assert result.exit_code == 0, result.output
    assert "spaces vector (128);" in result.stdout
    rows = _rows(output)
    assert "metric_00" not in rows[0] and "vector_127" in rows[0]
    assert all(row["outlier"] for row in rows)


@pytest.mark.parametrize("args, fragments", [
    (["embed", "nowhere.csv", "--output", "x.csv"], ["input not found", "nowhere.csv"]),
    (["embed", "{catalog}", "--output", "x.txt"], ["--output must end in", "x.txt"]),
    (["similar", "nobody", "--index", "{index}"], ["neither an id", "nobody"]),
    (["similar", "{first}", "--index", "{index}", "-k", "999"], ["-k must be between", "999"]),
    (["similar", "{first}", "--index", "nowhere.csv"], ["nowhere.csv"]),
    (["cluster", "{index}", "--clusters", "many"], ["--clusters must be", "many"]),
    (["cluster", "{index}", "--clusters", "1"], ["1"]),
])
def test_bad_input_is_one_error_line(args, fragments, survey, embedded, tmp_path,
                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {"catalog": survey / "catalog.csv", "index": embedded,
              "first": _rows(embedded)[0]["id"]}
    result = _invoke(*(arg.format(**values) for arg in args))
    assert result.exit_code == 2
    cli_error_line(result, *fragments)


def test_a_run_without_metric_loss_refuses_the_metric_stage(tmp_path):
    from starqso.config import get_preset
    from starqso.errors import InputError
    from starqso.training import EncoderStage, GANStage, MetricStage, fit_run

    with pytest.raises(InputError, match="model.metric_loss"):
        fit_run(tmp_path / "run", get_preset("tiny"), log=lambda line: None, export=False,
                stages=[EncoderStage(), GANStage(), MetricStage()])
