"""The embeddings table's data model: its columns, its spaces and :class:`EmbeddingTable`
(described in :mod:`starqso.io.embeddings`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from starqso.errors import InputError

#: The per-row columns, in file order, before the embeddings (p_star and p_galaxy after the
#: original six, so readers of older files find those where they were).
COLUMNS = ("id", "p_qso", "label", "flag", "qflag", "outlier", "p_star", "p_galaxy")
#: The embedding spaces, in file order; ``vector`` is always there.
SPACES = ("vector", "metric")
#: The per-row columns by type, and all of them (``id`` aside).
FLOAT_COLUMNS = ("p_qso", "outlier", "p_star", "p_galaxy")
TEXT_COLUMNS = ("label", "flag")
PER_ROW = ("p_qso", "label", "flag", "qflag", "outlier", "p_star", "p_galaxy")


def space_columns(space: str, dim: int) -> list[str]:
    """The CSV column names of a space: ``vector_000`` ... or ``metric_00`` ....

    Args:
        space: ``"vector"`` or ``"metric"``.
        dim: the space's dimension.

    Returns:
        ``dim`` names, zero-padded to the same width (3 digits for ``vector``, 2 for
        ``metric``, more when the dimension needs them).

    Example:
        >>> space_columns("metric", 3)
        ['metric_00', 'metric_01', 'metric_02']
    """
    width = max(3 if space == "vector" else 2, len(str(max(dim - 1, 0))))
    return [f"{space}_{i:0{width}d}" for i in range(dim)]


@dataclasses.dataclass
class EmbeddingTable:
    """Embeddings of N rows and their per-row columns.

    Shapes and types are checked (and converted) on construction; a mismatch is a
    programming error (``ValueError``), not a user's.

    Attributes:
        ids: str ``(N,)``.
        spaces: ``{"vector": float32 (N, d)[, "metric": float32 (N, m)]}``; NaN rows for
            objects without an embedding.
        columns: ``p_qso`` (float64, NaN when not classified), ``label`` (str), ``flag``
            (str), ``qflag`` (int64), ``outlier`` (float64, NaN when unknown), ``p_star`` and
            ``p_galaxy`` (float64, NaN when not classified; p_galaxy NaN for a two-class
            model), each ``(N,)``; missing ones are filled with those defaults (``qflag`` 0).
        record: provenance (model, prior, ...), a JSON-serialisable dict.

    Example:
        >>> table = EmbeddingTable(["a", "b"], {"vector": np.zeros((2, 4))}, {})
        >>> table.usable().tolist(), table.columns["qflag"].tolist()
        ([True, True], [0, 0])
    """

    ids: np.ndarray
    spaces: dict
    columns: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=str)
        if self.ids.ndim != 1:
            raise ValueError(f"ids must be one-dimensional. Received: shape {self.ids.shape}")
        count = len(self.ids)
        if "vector" not in self.spaces or set(self.spaces) - set(SPACES):
            raise ValueError(f"spaces must be vector and optionally metric. Received: "
                             f"{sorted(self.spaces)}")
        spaces = {}
        for name in SPACES:
            if name not in self.spaces:
                continue
            value = np.asarray(self.spaces[name], np.float32)
            if value.ndim != 2 or len(value) != count or not value.shape[1]:
                raise ValueError(f"space {name} must be ({count}, d) with d >= 1. Received: "
                                 f"{value.shape}")
            spaces[name] = value
        self.spaces = spaces
        unknown = set(self.columns) - set(PER_ROW)
        if unknown:
            raise ValueError(f"columns must be among {', '.join(PER_ROW)}. Received: "
                             f"{sorted(unknown)}")
        defaults = {"p_qso": np.full(count, np.nan), "label": np.full(count, "", dtype=str),
                    "flag": np.full(count, "", dtype=str), "qflag": np.zeros(count, np.int64),
                    "outlier": np.full(count, np.nan), "p_star": np.full(count, np.nan),
                    "p_galaxy": np.full(count, np.nan)}
        columns = {**defaults, **self.columns}
        for name in FLOAT_COLUMNS:
            columns[name] = np.asarray(columns[name], np.float64)
        for name in TEXT_COLUMNS:
            columns[name] = np.asarray(columns[name], dtype=str)
        columns["qflag"] = np.asarray(columns["qflag"], np.int64)
        for name in PER_ROW:
            if columns[name].shape != (count,):
                raise ValueError(f"column {name} must be ({count},). Received: "
                                 f"{columns[name].shape}")
        self.columns = {name: columns[name] for name in PER_ROW}
        if not isinstance(self.record, dict):
            raise ValueError(f"record must be a dict. Received: {type(self.record).__name__}")

    def __len__(self) -> int:
        return len(self.ids)

    def usable(self, space: str = "vector") -> np.ndarray:
        """The rows with a finite embedding in ``space``: bool ``(N,)``.

        Example:
            >>> table = EmbeddingTable(["a", "b"], {"vector": [[1.0], [np.nan]]})
            >>> table.usable("vector").tolist()
            [True, False]
        """
        if space not in self.spaces:
            raise InputError(f"the table has no {space!r} embeddings (it has "
                             f"{', '.join(self.spaces)}). Received: space={space}")
        return np.isfinite(self.spaces[space]).all(axis=1)
