"""The one atomic writer: complete files or none, never a truncated one."""

import os

import pytest

from starqso._util.atomic import (
    atomic_path,
    replace_folder,
    write_bytes_atomically,
    write_json_atomically,
)
from starqso.errors import InputError


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomically(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(InputError, match="already exists"):
        write_bytes_atomically(target, b"x", overwrite=False)
    with pytest.raises(InputError, match="folder does not exist"):
        write_bytes_atomically(tmp_path / "missing" / "x.csv", b"x")


def test_gzip_output_is_deterministic(tmp_path):
    one, two = tmp_path / "a.csv.gz", tmp_path / "b.csv.gz"
    write_bytes_atomically(one, b"id\n1\n")
    write_bytes_atomically(two, b"id\n1\n")
    assert one.read_bytes() == two.read_bytes()


def test_atomic_path_keeps_the_suffix_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "last.weights.h5"
    with atomic_path(target) as temporary:
        assert temporary.endswith(".weights.h5") and temporary != str(target)
        open(temporary, "wb").write(b"done")
    assert target.read_bytes() == b"done"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            open(temporary, "wb").write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"done"
    assert os.listdir(tmp_path) == ["last.weights.h5"]


def test_replace_folder_swaps_whole_or_keeps_the_old(tmp_path):
    destination = tmp_path / "export"

    def build(version):
        def fill(staging):
            with open(os.path.join(staging, "model.txt"), "w") as stream:
                stream.write(version)
            if version == "broken":
                raise ValueError("conversion failed")
        return fill

    replace_folder(build("one"), destination)
    replace_folder(build("two"), destination)
    assert (destination / "model.txt").read_text() == "two"
    with pytest.raises(ValueError):
        replace_folder(build("broken"), destination)
    assert (destination / "model.txt").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_replace_folder_stages_under_its_own_names_and_leaves_others_alone(tmp_path):
    destination = tmp_path / "out"
    for name in ("out.partial", "out.old", ".out.partial", ".out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(name)
    seen = []

    def fill(staging):
        seen.append(os.path.basename(staging))
        with open(os.path.join(staging, "a.txt"), "w") as stream:
            stream.write("new")

    replace_folder(fill, destination, command="cluster")
    replace_folder(fill, destination, command="cluster")
    # A fresh hidden name per run, with the process id in it.
    assert len(set(seen)) == 2 and all(name.startswith(f".out.{os.getpid()}-")
                                       for name in seen)
    for name in ("out.partial", "out.old", ".out.partial", ".out.old"):
        assert (tmp_path / name / "keep.txt").read_text() == name
    assert sorted(os.listdir(destination)) == [".starqso-output.json", "a.txt"]
    assert sorted(os.listdir(tmp_path)) == [".out.old", ".out.partial", "out", "out.old",
                                            "out.partial"]
