"""The ``tf.data`` layer: stratified splits (NumPy) and batched, augmented datasets.

``split_indices`` needs only NumPy; ``make_dataset`` imports TensorFlow on first use, so
importing this package stays cheap for tools that only split.
"""

from starqso.data.splits import split_indices

__all__ = ["make_dataset", "split_indices"]


def __getattr__(name):
    if name == "make_dataset":
        from starqso.data.pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
