"""The deployable model.

* :mod:`~starqso.deploy.export`: ``starqso export``, every format checked on the held-out split.
* :mod:`~starqso.deploy.tflite`: the SavedModel and its TFLite conversions (fp32, fp16, int8).
* :mod:`~starqso.deploy.calibration`: the temperature, the decision threshold and the prior.
* :mod:`~starqso.deploy.model_card`: the model card, quality reference and selection function.
* :mod:`~starqso.deploy.folder`: the export folder's files, checked before TensorFlow, and
  safe loading; :mod:`~starqso.deploy.metadata` (its ``metadata.json``),
  :mod:`~starqso.deploy.keras_file` (checks on a ``.keras`` file) and
  :mod:`~starqso.io.safe_read` (bounded reads of JSON and ``.npz``, SHA-256).
"""
