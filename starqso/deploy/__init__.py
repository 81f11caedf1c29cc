"""The deployable model: :mod:`~starqso.deploy.export` (SavedModel, TFLite, checks,
model card, quality reference) and :mod:`~starqso.deploy.folder` (the export folder's
layout, metadata, file checks before TensorFlow and safe loading)."""
