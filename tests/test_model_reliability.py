"""Whole-input problems with model folders and configs (issue 15, items 6, 11 and 13).

Each is one line naming the file, exit status 2, in bounded time and memory, before any
TensorFlow work: oversized or deeply nested JSON in a model, classes starqso does not
register, an ``input_shape`` the model does not take, a damaged TFLite flatbuffer, a model file
changed since export (SHA-256 in ``metadata.json``), YAML aliases ("billion laughs") and deep
nesting in a run config, and ``simulate --size`` out of range. The CLI's stderr carries no
TensorFlow/LiteRT native log lines.
"""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
from click.testing import CliRunner
from helpers import cli_error_line, rewrite_metadata, simulated_survey

from starqso.cli import NATIVE_NOISE, main
from starqso.deploy.folder import check_keras_file, check_model_dir
from starqso.deploy.keras_file import STARQSO_CLASSES
from starqso.errors import InputError
from starqso.inference import default_model_dir
from starqso.io.safe_read import MAX_JSON_BYTES
from starqso.io.safe_read import read_capped as _read_capped

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUTOUT = 40  # the shipped model crops 32x32 from it


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulated_survey(tmp_path_factory, 2, seed=11, size=CUTOUT)


def _one_line_error(result, *fragments):
    cli_error_line(result, *fragments)


def _model_copy(tmp_path, checksums=True):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    if not checksums:  # as exported before metadata.json had sha256
        rewrite_metadata(folder, sha256=None)
    return folder




def _rewrite_keras(folder, **members):
    """Replace members of the folder's .keras archive (bytes, or a function of the config)."""
    path = folder / "starqso_classifier.keras"
    with zipfile.ZipFile(path) as archive:
        old = {name: archive.read(name) for name in archive.namelist()}
    for name, value in members.items():
        old[name] = (json.dumps(value(json.loads(old[name]))).encode() if callable(value)
                     else value)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in old.items():
            archive.writestr(name, payload)
    rewrite_metadata(folder, sha256=None)  # the archive changed on purpose


def _edit(change):
    def edit(config):
        change(config)
        return config
    return edit


def _flip_bytes(path, count=8):
    data = bytearray(path.read_bytes())
    for index in range(count):
        position = len(data) // 3 + 997 * index
        data[position] ^= 0x5A
    path.write_bytes(bytes(data))


def _append_bytes(path, count=8):
    path.write_bytes(path.read_bytes() + bytes(count))


def _dtype_node(config):
    return config["config"]["classifier"]["config"]["scaling"]["config"]["dtype"]


# name: (damage, runtime, fragments of the one-line error)
BAD_MODEL_FOLDERS = {
    # 6 (a): a zip member that expands far beyond what any config needs.
    "config_json_bomb": (lambda f: _rewrite_keras(f, **{"config.json": b" " * (64 << 20)}),
                         "keras", ("config.json", "at most 4 MiB")),
    "archive_metadata_bomb": (lambda f: _rewrite_keras(f, **{"metadata.json": b" " * (8 << 20)}),
                              "keras", ("metadata.json", "starqso_classifier.keras")),
    "folder_metadata_too_big": (lambda f: (f / "metadata.json").write_bytes(
        b" " * (MAX_JSON_BYTES + 1)), "litert", ("metadata.json", "at most 4 MiB")),
    # 11: deeply nested JSON (RecursionError in json.loads, or too deep for Keras).
    "config_json_recursion": (lambda f: _rewrite_keras(f, **{"config.json": b"[" * 200000}),
                              "keras", ("config.json", "more than 100 levels")),
    "config_json_deep": (lambda f: _rewrite_keras(f, **{"config.json": b"[" * 500 + b"]" * 500}),
                         "keras", ("config.json", "more than 100 levels")),
    "metadata_recursion": (lambda f: (f / "metadata.json").write_bytes(b"{\"a\":" * 100000),
                           "litert", ("metadata.json", "more than 100 levels")),
    # 6 (b): classes that starqso does not register, or without a module.
    "unknown_starqso_class": (lambda f: _rewrite_keras(f, **{"config.json": _edit(
        lambda c: c.update(class_name="Evil", registered_name="starqso>Evil"))}),
                              "keras", ("does not register", "Evil")),
    "nonexistent_starqso_module": (lambda f: _rewrite_keras(f, **{"config.json": _edit(
        lambda c: c.update(module="starqso.nonexistent"))}),
                                   "keras", ("does not register", "starqso.nonexistent")),
    "missing_module": (lambda f: _rewrite_keras(f, **{"config.json": _edit(
        lambda c: c.pop("module"))}), "keras", ("does not register", "CalibratedClassifier")),
    "keras_class_without_module": (lambda f: _rewrite_keras(f, **{"config.json": _edit(
        lambda c: _dtype_node(c).pop("module"))}), "keras", ("DTypePolicy", "without a module")),
    "keras_class_custom_name": (lambda f: _rewrite_keras(f, **{"config.json": _edit(
        lambda c: _dtype_node(c).update(registered_name="evil>Payload"))}),
                                "keras", ("custom registered name", "evil>Payload")),
    # 11: input_shape that the model does not take, or that is absurd.
    "input_shape_not_the_keras_model": (lambda f: rewrite_metadata(
        f, input_shape=[None, 40, 40, 5]), "keras", ("input_shape=[None, 40, 40, 5]",
                                                     "starqso_classifier.keras takes")),
    "input_shape_not_the_tflite_model": (lambda f: rewrite_metadata(
        f, input_shape=[None, 40, 40, 5]), "litert", ("input_shape=[None, 40, 40, 5]",
                                                      "model_int8.tflite takes [-1, 32, 32, 5]")),
    "input_shape_huge": (lambda f: rewrite_metadata(f, input_shape=[1, 10**9, 10**9, 5]),
                         "litert", ("8 <= S <= 256", "1000000000")),
    "input_shape_negative": (lambda f: rewrite_metadata(f, input_shape=[None, -32, -32, 5]),
                             "keras", ("8 <= S <= 256", "-32")),
    "input_shape_three_bands": (lambda f: rewrite_metadata(f, input_shape=[None, 32, 32, 3]),
                                "litert", ("[null, S, S, 5]",)),
    "input_shape_booleans": (lambda f: rewrite_metadata(f, input_shape=[None, True, True, 5]),
                             "litert", ("input_shape=[None, True, True, 5]",)),
    "input_shape_huge_list": (lambda f: rewrite_metadata(f, input_shape=[7] * 100000),
                              "litert", ("input_shape=[7, 7",)),
    # 11: "TFL3" plus junk (an older export without checksums, so LiteRT sees it).
    "tflite_junk": (lambda f: (rewrite_metadata(f, sha256=None), (f / "model_int8.tflite")
                               .write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)),
                    "litert", ("not a valid TFLite model", "model_int8.tflite")),
    # 13: booleans are not numbers; a changed model file; a malformed checksum list.
    "threshold_true": (lambda f: rewrite_metadata(f, threshold=True), "litert",
                       ("threshold=True", "true and false are not")),
    # Trailing bytes: still a valid flatbuffer (flipped bytes may hit its quantisation
    # parameters, which LiteRT's structural check reports first), only the checksum differs.
    "tflite_changed": (lambda f: _append_bytes(f / "model_int8.tflite"), "litert",
                       ("checksum does not match metadata.json", "model_int8.tflite")),
    "keras_changed": (lambda f: _flip_bytes(f / "starqso_classifier.keras"), "keras",
                      ("checksum does not match metadata.json", "starqso_classifier.keras")),
    "checksum_missing_for_the_file": (lambda f: rewrite_metadata(f, sha256={
        "model_fp32.tflite": "0" * 64}), "litert", ("none for model_int8.tflite",)),
    "checksum_malformed": (lambda f: rewrite_metadata(f, sha256={"model_int8.tflite": "x"}),
                           "litert", ("64 hex digits",)),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FOLDERS))
def test_bad_model_folder_is_one_line_before_tensorflow_work(case, survey, tmp_path,
                                                             monkeypatch):
    import starqso.deploy.folder

    damage, runtime, fragments = BAD_MODEL_FOLDERS[case]
    folder = _model_copy(tmp_path)
    damage(folder)

    def no_keras_loading(*args, **kwargs):
        raise AssertionError("keras loading was reached before the folder was checked")

    monkeypatch.setattr(starqso.deploy.folder, "load_keras_model", no_keras_loading)
    start = time.perf_counter()
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--model", str(folder), "--runtime", runtime,
        "--output", str(tmp_path / "p.csv")])
    seconds = time.perf_counter() - start
    _one_line_error(result, *fragments)
    assert seconds < 10, f"{case} took {seconds:.1f} s"
    assert not (tmp_path / "p.csv").exists()


def test_declared_zip_size_is_checked_before_reading(tmp_path):
    """A 6 GiB member in an 8 MB .keras: refused from its header, nothing decompressed."""
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", b'{"keras_version": "3.15.1"}')
        archive.writestr("model.weights.h5", b"")
        archive.writestr("config.json", b" " * (1 << 20))
        # The central directory (written on close) declares 6 GiB, as a real bomb's does;
        # compressing 6 GiB here would take a minute.
        archive.getinfo("config.json").file_size = 6 << 30
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"config.json of .*bomb.keras is 6144.0 MiB"):
        check_keras_file(path)
    assert time.perf_counter() - start < 5


def test_a_declared_size_that_lies_is_still_capped():
    with pytest.raises(InputError, match="holds more than 4 MiB"):
        _read_capped(io.BytesIO(b"x" * (MAX_JSON_BYTES + 10)), 10, "member")


def test_registered_class_list_matches_what_starqso_registers():
    """model_files.STARQSO_CLASSES (read without TensorFlow) is what Keras really has."""
    import keras

    import starqso.models

    registered = {name: cls.__module__ for name, cls in keras.saving.get_custom_objects().items()
                  if name.startswith("starqso>")}
    assert registered == STARQSO_CLASSES
    for name in starqso.models.__all__:
        cls = getattr(starqso.models, name)
        assert STARQSO_CLASSES[keras.saving.get_registered_name(cls)] == cls.__module__


def test_shipped_models_carry_checksums_and_pass():
    from starqso.deploy.folder import file_sha256

    for folder in (default_model_dir(), ROOT / "saved_models" / "starqso-large" / "export"):
        metadata = json.loads((folder / "metadata.json").read_text())
        assert sorted(metadata["sha256"]) == ["embedding_reference.npz", "model_fp16.tflite",
                                              "model_fp32.tflite", "model_int8.tflite",
                                              "starqso_classifier.keras"]
        for name, digest in metadata["sha256"].items():
            assert file_sha256(folder / name) == digest, name
        for runtime in ("keras", "litert"):
            assert check_model_dir(folder, runtime)["input_shape"] == [None, 32, 32, 5]


def test_older_export_without_checksums_still_predicts(survey, tmp_path):
    folder = _model_copy(tmp_path, checksums=False)
    result = CliRunner().invoke(main, [
        "predict", str(survey / "catalog.csv"), "--model", str(folder), "--runtime", "litert",
        "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------------ configs


def _billion_laughs():
    """331 bytes of YAML aliases describing 9**9 list items."""
    parts, previous = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"], "a"
    for name in "bcdefghi":
        parts.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "training:\n  batch_size: [" + ", ".join(parts) + "]\n"


@pytest.mark.parametrize("text, fragments", [
    (_billion_laughs(), ("anchor or alias", "line 2")),
    ("training: &t {batch_size: 8}\ndata: *t\n", ("anchor or alias",)),
    ("training: " + "[" * 100000 + "]" * 100000 + "\n", ("more than 20 levels",)),
    ("training:\n  seed: " + "9" * 5000 + "\n", ("not valid YAML", "4300 digits")),
    ("training:\n  " + "k" * 1000 + ": 1\n", ("unknown key 'training." + "k" * 77 + "...'",)),
    ("# padding\n" * 200000, ("larger than 1 MiB",)),
])
def test_hostile_config_yaml_is_one_line_at_once(text, fragments, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out",
                                       str(tmp_path / "run")])
    seconds = time.perf_counter() - start
    _one_line_error(result, str(config), *fragments)
    assert len(result.stderr) < 600 and seconds < 5
    assert not (tmp_path / "run").exists()


def test_field_errors_show_a_bounded_value():
    from starqso.config import config_from_dict

    nested = ["lol"] * 9
    for _ in range(8):  # the billion laughs as Python objects: 9**9 items, 9*9 lists
        nested = [nested] * 9
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"training.batch_size must be .*Received: \[\[") as info:
        config_from_dict({"training": {"batch_size": nested}})
    assert len(str(info.value)) < 200 and time.perf_counter() - start < 5


# ------------------------------------------------------------------------------ simulate


@pytest.mark.parametrize("size", ["15", "257", "100000"])
def test_simulate_size_is_bounded(size, tmp_path):
    result = CliRunner().invoke(main, ["simulate", str(tmp_path / "sim"), "--n", "1",
                                       "--size", size])
    _one_line_error(result, "--size must be between 16 and 256", f"size={size}")
    assert not (tmp_path / "sim").exists()


# ------------------------------------------------------------------------ native stderr


# A process pool started under the filter (the simulation's, Dask's) starts multiprocessing's
# resource tracker, which lives until the process ends. The filter's exit waits for its
# filter process to drain stderr, up to 10 s: it must not wait on the tracker holding its pipe.
POOL_UNDER_FILTER = """
import concurrent.futures, multiprocessing, sys, time
from starqso._util.native_stderr import native_stderr_filtered
if __name__ == "__main__":
    with native_stderr_filtered():
        with concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")) as pool:
            assert pool.submit(abs, -2).result() == 2
        print("line through the filter", file=sys.stderr, flush=True)
        start = time.perf_counter()
    print(f"exit {time.perf_counter() - start:.3f}")
"""


def test_leaving_the_filter_after_a_process_pool_does_not_wait(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(POOL_UNDER_FILTER)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "line through the filter" in done.stderr
    # Waiting on the tracker would take the filter's full 10 s timeout.
    assert float(done.stdout.split()[-1]) < 5.0, done.stdout


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_predict_stderr_has_no_native_log_lines(runtime, survey, tmp_path):
    """A real process (CliRunner cannot see file descriptor 2): only starqso's own lines."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "STARQSO_NATIVE_LOGS")}
    command = [sys.executable, "-m", "starqso.cli", "predict", str(survey / "catalog.csv"),
               "--runtime", runtime, "--output", str(tmp_path / "p.csv")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 rows" in done.stdout
    for line in done.stderr.splitlines():
        assert not NATIVE_NOISE.match(line), line
        assert "absl" not in line and "cuda" not in line.lower() and "XNNPACK" not in line, line
    # An error is still one line on stderr, after the filter is gone.
    folder = tmp_path / "broken"
    folder.mkdir()
    command[command.index("predict") + 1:] = [str(survey / "catalog.csv"), "--model",
                                             str(folder), "--runtime", runtime,
                                             "--output", str(tmp_path / "q.csv")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"starqso: error: model folder must hold metadata.json (made by `starqso export`). "
        f"Received: {folder}"]
