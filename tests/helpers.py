"""Assertions shared by several test files."""

import pytest


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    """The raised error is one line and mentions every fragment (file, key, value ...)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def cli_error_line(result, *fragments: str) -> str:
    """A CLI run failed as a user error: exit 2, one ``starqso: error:`` line on stderr naming
    every fragment, no traceback. Returns that line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("starqso: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def simulated_survey(tmp_path_factory, num_objects: int, seed: int, size: int):
    """A small simulated survey (catalogue, cutouts, spectra) in a fresh temporary folder."""
    from starqso.simulate import simulate_survey

    folder = tmp_path_factory.mktemp("survey")
    simulate_survey(folder, num_objects, seed=seed, size=size, workers=1)
    return folder


def wait_for(condition, process, what: str, timeout: float = 300, poll: float = 0.02) -> None:
    """Wait until ``condition()`` holds while the subprocess ``process`` still runs."""
    import time

    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def rewrite_metadata(folder, **changes) -> None:
    """Set the given keys of a model folder's metadata.json; a value of None removes the key."""
    import json

    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.update(changes)
    metadata = {key: value for key, value in metadata.items() if value is not None}
    (folder / "metadata.json").write_text(json.dumps(metadata))


def folder_tree(folder) -> dict:
    """Every path under ``folder`` with its bytes (None for folders), links not followed.

    Two calls compare equal exactly when nothing under ``folder`` was added, removed,
    rewritten or re-linked.
    """
    import os
    import pathlib

    folder = pathlib.Path(folder)
    return {str(path.relative_to(folder)): (None if path.is_dir() and not path.is_symlink()
                                            else os.readlink(path) if path.is_symlink()
                                            else path.read_bytes())
            for path in sorted(folder.rglob("*"))}
