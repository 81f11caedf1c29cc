"""Stratified train/validation/test splits of object indices (NumPy only)."""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError


def _apportion(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``total`` over strata in proportion to ``sizes`` (largest remainder, exact ints)."""
    counts, remainders = np.divmod(total * sizes, sizes.sum())
    # Stable sort: ties go to the earlier stratum, so the split is deterministic.
    counts[np.argsort(-remainders, kind="stable")[: total - counts.sum()]] += 1
    return counts


def split_indices(labels, validation_fraction: float, test_fraction: float = 0.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/validation/test split of ``range(len(labels))``, stratified by label.

    Each label value (unknown ``-1`` included) is its own stratum and contributes to every
    split in proportion to its size (within one object). Validation gets
    ``round(N * validation_fraction)`` objects but at least 2; test gets
    ``round(N * test_fraction)`` but at least 1 when ``test_fraction > 0``; train the rest.

    Args:
        labels: one label per object, shape (N,), e.g. ``labels`` from
            :attr:`starqso.data.ObjectArrays.labels`.
        validation_fraction: fraction of objects for validation, in (0, 1).
        test_fraction: fraction of objects for test, in [0, 1); 0 gives an empty test split.
        seed: the same seed and labels always give the same split.

    Returns:
        ``(train, validation, test)`` sorted int64 index arrays, disjoint, covering all objects.

    Raises:
        InputError: fractions out of range, or too few objects for at least 2 in train and 2
            in validation.

    Example:
        >>> train, val, test = split_indices([0, 1] * 10, 0.2, 0.1, seed=0)
        >>> len(train), len(val), len(test)
        (14, 4, 2)
    """
    labels = np.asarray(labels).ravel()
    n = labels.size
    if not 0.0 < validation_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or \
            validation_fraction + test_fraction >= 1.0:
        raise InputError(f"validation fraction must be in (0, 1), test fraction in [0, 1), and "
                         f"their sum below 1. Received: validation_fraction="
                         f"{validation_fraction}, test_fraction={test_fraction}")
    n_val = max(int(round(n * validation_fraction)), 2)
    n_test = max(int(round(n * test_fraction)), 1) if test_fraction > 0 else 0
    if n - n_val - n_test < 2:
        raise InputError(f"too few objects to split: train and validation need at least 2 each"
                         f"{' and test 1' if n_test else ''}. Received: {n} objects with "
                         f"validation_fraction={validation_fraction}, "
                         f"test_fraction={test_fraction}")
    strata = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    sizes = np.array([len(members) for members in strata], dtype=np.int64)
    # Held-out counts first, then the test share of each stratum's held-out objects: neither
    # can exceed what the stratum has, so every count is feasible.
    held = _apportion(n_val + n_test, sizes)
    tests = _apportion(n_test, held) if n_test else np.zeros_like(held)
    rng = np.random.default_rng(seed)
    train, validation, test = [], [], []
    for members, n_held, n_in_test in zip(strata, held, tests, strict=False):
        members = rng.permutation(members)
        test.append(members[:n_in_test])
        validation.append(members[n_in_test:n_held])
        train.append(members[n_held:])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64)
                 for part in (train, validation, test))
