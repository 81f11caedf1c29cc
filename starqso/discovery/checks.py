"""The input checks every discovery function shares: a finite (N, d) matrix of vectors, a
whole number in range. Each failure is one :class:`~starqso.errors.InputError` line ending in
``Received: ...``."""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError


def finite_matrix(vectors, what="vectors") -> np.ndarray:
    """``vectors`` as a finite, non-empty float32 (N, d) array, or one InputError."""
    try:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be an (N, d) array of numbers. Received: {err}") from None
    if vectors.ndim != 2 or not vectors.shape[0] or not vectors.shape[1]:
        raise InputError(f"{what} must be a non-empty (N, d) array. Received: shape "
                         f"{vectors.shape}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{what} must be finite; leave out rows without an embedding "
                         f"(EmbeddingTable.usable). Received: NaN/inf in {len(bad)} rows, "
                         f"the first row {bad[0] + 1}")
    return vectors


def whole_number(value, name, low, high=None) -> int:
    """``value`` as an int in ``low`` .. ``high`` (no upper bound when None), or one
    InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name} must be a whole number {bound}. Received: {name}={value!r}")
    return int(value)
