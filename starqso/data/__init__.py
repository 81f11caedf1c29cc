"""The data layer: objects as arrays, stratified splits (NumPy) and batched, augmented datasets.

:class:`ObjectArrays` (catalogue or simulation to arrays) needs NumPy and astropy and
``split_indices`` only NumPy; ``make_dataset`` imports TensorFlow. The first and last are
imported on first use, so importing this package stays cheap for tools that only split.
"""

from starqso.data.splits import split_indices

__all__ = ["ObjectArrays", "make_dataset", "split_indices"]


def __getattr__(name):
    if name == "make_dataset":
        from starqso.data.datasets import make_dataset

        return make_dataset
    if name == "ObjectArrays":
        from starqso.data.arrays import ObjectArrays

        return ObjectArrays
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
