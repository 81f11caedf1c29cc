"""What the format modules of the embeddings table share: the reader's :class:`RawTable`,
flat ``vector_NNN`` columns, the record's JSON and the writer's fsync."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso.errors import InputError

_FLAT_NAME = re.compile(r"^(vector|metric)_(\d+)$")


def fsync(path: str) -> None:
    """Flush a written file to disk, before it is renamed into place."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


@dataclasses.dataclass
class RawTable:
    """What a format reader found, before the checks every format shares."""

    ids: np.ndarray
    spaces: dict
    columns: dict
    record: dict
    names: list


def flat_spaces(names, path) -> dict:
    """``{space: [column name of component 0, 1, ...]}`` of flat ``vector_NNN`` columns."""
    found: dict = {}
    for name in names:
        match = _FLAT_NAME.match(name)
        if match:
            found.setdefault(match.group(1), {}).setdefault(int(match.group(2)), []).append(name)
    result = {}
    for space, by_index in found.items():
        twice = [spellings for spellings in by_index.values() if len(spellings) > 1]
        if twice:
            raise InputError(f"embeddings file has two columns for one {space} component. "
                             f"Received: columns {', '.join(twice[0])} in file {path}")
        dim = max(by_index) + 1
        missing = [index for index in range(dim) if index not in by_index]
        if missing:
            width = len(by_index[max(by_index)][0]) - len(space) - 1
            raise InputError(
                f"embeddings file's {space} columns must be {space}_{0:0{width}d} ... "
                f"{space}_{dim - 1:0{width}d} without gaps (ragged or wrong dimensions). "
                f"Received: no {space} component {missing[0]} among {len(by_index)} columns "
                f"in file {path}")
        result[space] = [by_index[index][0] for index in range(dim)]
    return result


def parse_record(text, path, where):
    """The record (a JSON object) stored in a FITS card or Parquet metadata, or one
    InputError naming ``where`` it was."""
    try:
        record = strict_json.loads(text, f"embeddings record ({where}) of {path}")
    except strict_json.DuplicateKeyError:
        raise
    except ValueError as err:
        raise InputError(f"embeddings record ({where}) must be JSON ({err}). Received: file "
                         f"{path}") from err
    if not isinstance(record, dict):
        raise InputError(f"embeddings record ({where}) must be a JSON object. Received: "
                         f"{type(record).__name__} in file {path}")
    return record

