"""Image trunks: (batch, S, S, 5) scaled cutouts -> (batch, dense_units) embedding.

``model.trunk`` (:data:`starqso.config.TRUNKS`) picks one for the generator, the fusion and
the image-only classifiers.
"""

from __future__ import annotations

from starqso.config import TRUNKS
from starqso.models.blocks import image_trunk


def image_trunk_features(image, trunk, filters, dense_units, dropout, name):
    """The embedding of ``image`` by the trunk called ``trunk``.

    Args:
        image: Keras tensor (batch, S, S, 5), already scaled by ``CutoutScaling``.
        trunk: one of :data:`starqso.config.TRUNKS`.
        filters: widths of the ``cnn`` and ``hybrid`` trunks.
        dense_units: width of the output embedding.
        dropout: dropout rate before the embedding.
        name: prefix for layer names.

    Returns:
        Keras tensor (batch, dense_units).
    """
    if trunk not in TRUNKS:
        raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}. Received: trunk={trunk!r}")
    if trunk == "cnn":
        return image_trunk(image, filters, dense_units, dropout, name)
    raise NotImplementedError(trunk)  # filled in by the trunks work in progress
