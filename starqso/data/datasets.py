"""NumPy arrays to ``tf.data`` pipelines: batching, seeded shuffling and sky-image augmentation.

The pipeline streams indices, not data: ``range(N)`` is shuffled and batched, and each batch of
indices gathers its rows from the arrays, held once as host tensors. That keeps the shuffle
buffer at N integers whatever the size of the objects, and gathers a whole batch in one op.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from starqso.data.splits import split_indices
from starqso.errors import InputError

__all__ = ["make_dataset", "split_indices"]


def _dihedral(images: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
    """Apply one of the 8 flips/90-degree rotations to each image, chosen by ``codes % 8``."""
    codes = tf.reshape(tf.math.floormod(codes, 8), [-1, 1, 1, 1])
    # Bits: left-right flip, transpose, up-down flip; together they give each element of the
    # symmetry group of the square exactly once (x, y -> +-x, +-y or +-y, +-x).
    images = tf.where(codes % 2 == 1, tf.reverse(images, [2]), images)
    images = tf.where(codes // 2 % 2 == 1, tf.transpose(images, [0, 2, 1, 3]), images)
    return tf.where(codes // 4 == 1, tf.reverse(images, [1]), images)


def make_dataset(inputs: dict[str, np.ndarray], target: np.ndarray | None, *, batch_size: int,
                 shuffle: bool = False, augment: bool = False, seed: int = 0,
                 drop_remainder: bool = False) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(inputs, target)`` from in-memory arrays.

    Shuffling uses ``seed`` with ``reshuffle_each_iteration=True``: every epoch has a new order,
    and the sequence of orders is the same each time a dataset is made with the same seed
    (unless ``tf.random.set_seed`` changes the global seed). Augmentation (``"image"`` only)
    applies a random flip/90-degree rotation to each image, uniform over the 8 symmetries of
    the square: valid for sky images, which have no preferred orientation. Each image's choice
    comes from ``tf.data.Dataset.random(seed)``, one draw per element in stream order, new for
    each epoch and the same sequence for the same seed.

    Args:
        inputs: arrays with equal first dimension N, e.g. ``"image"`` (N, S, S, 5),
            ``"spectrum"`` (N, 3700, 2), ``"features"`` (N, F); every key is passed through.
            Floating arrays become float32, others keep their dtype.
        target: (N,) labels or (N, F) feature vectors, as float32; None for inputs only.
        batch_size: objects per batch.
        shuffle: shuffle the objects every epoch.
        augment: randomly flip/rotate ``"image"`` (square images only).
        seed: seed of the shuffle and the augmentation.
        drop_remainder: drop the last, smaller batch (gives static batch shapes).

    Returns:
        Dataset of ``(inputs_dict, target)`` batches (``inputs_dict`` alone when ``target`` is
        None), prefetched, with ``tf.data.Options().deterministic`` set: the same seed gives
        the same batches in the same order on every run, whatever the load.

    Raises:
        InputError: empty or mismatched arrays, ``batch_size < 1``, or non-square images with
            ``augment``.

    Example:
        >>> data = ObjectArrays.from_simulation(64, seed=0, image_size=32)  # doctest: +SKIP
        >>> ds = make_dataset({"image": data.images}, data.labels, batch_size=16,
        ...                   shuffle=True, augment=True)
    """
    if not inputs:
        raise InputError("inputs must hold at least one array. Received: an empty dict")
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch size must be a positive integer. Received: {batch_size}")
    arrays = {name: np.asarray(values) for name, values in inputs.items()}
    arrays = {name: values.astype(np.float32, copy=False) if values.dtype.kind == "f" else values
              for name, values in arrays.items()}
    if target is not None:
        arrays[None] = np.asarray(target, dtype=np.float32)
    lengths = {name: (values.shape or (None,))[0] for name, values in arrays.items()}
    num = next(iter(lengths.values()))
    if not num or len(set(lengths.values())) != 1:
        raise InputError(f"inputs and target must be arrays with the same, non-zero number of "
                         f"rows. Received: {({str(k): v for k, v in lengths.items()})}")
    images = arrays.get("image")
    if augment and images is not None and (images.ndim != 4 or images.shape[1] != images.shape[2]):
        raise InputError(f"augmentation needs square images (N, S, S, C). Received: image shape "
                         f"{images.shape}")
    # Host copies, captured by the map function by reference: large arrays are neither put on
    # the GPU whole nor serialised into the graph.
    with tf.device("/CPU:0"):
        tensors = {name: tf.convert_to_tensor(values) for name, values in arrays.items()}

    dataset = tf.data.Dataset.range(num)
    if shuffle:
        dataset = dataset.shuffle(num, seed=seed, reshuffle_each_iteration=True)
    augment = augment and images is not None
    if augment:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, draws)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def gather(indices, codes=None):
        batch = {name: tf.gather(tensor, indices) for name, tensor in tensors.items()}
        if codes is not None:
            batch["image"] = _dihedral(batch["image"], codes)
        labels = batch.pop(None, None)
        return batch if labels is None else (batch, labels)

    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Element order must not depend on which parallel call finishes first, whatever a caller's
    # or tf.data's global options say: the order of the batches is part of a reproducible run.
    # AUTOTUNE only sizes the parallelism and the prefetch buffer; neither changes the values
    # (the map gathers and flips, no arithmetic that could round differently).
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
