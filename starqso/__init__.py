"""starqso: tell stars from quasars in five-band survey cutouts.

The package follows one object from files to p(QSO); imports point down this list
(docs/layout.md draws the tree):

* :mod:`starqso.schema`, :mod:`starqso.errors`, :mod:`starqso.probability`: the data model's
  constants, ``InputError``, the logit arithmetic.
* :mod:`starqso.io`: readers and writers of cutouts, spectra, catalogues, input layouts and the
  embeddings table (no TensorFlow). :mod:`starqso.simulate`: the sky simulator.
* :mod:`starqso.preprocessing`: NumPy-only crops, source screening, quality bits, spectrum
  resampling, scaling statistics, aperture photometry, ``prepare_object``.
* :mod:`starqso.data`: :class:`~starqso.data.ObjectArrays`, stratified splits, ``tf.data``.
* :mod:`starqso.models`: the Keras models and in-graph preprocessing layers.
* :mod:`starqso.deploy`: the export (SavedModel, TFLite, checks, model card) and the export
  folder (layout, metadata, file checks, safe loading).
* :mod:`starqso.training`: the stages, their runner, ``fit``, ``finetune``, the run folder.
* :mod:`starqso.inference`: the per-row core, ``predict`` (one process or Dask).
* :mod:`starqso.discovery`: ``embed``, the neighbour index, outliers, clusters.
* :mod:`starqso.evaluation`: ``evaluate``, metrics, plots, the classical baselines.
* :mod:`starqso.config`: the run configuration; :mod:`starqso._util`: atomic writes, locks,
  extras, ownership; :mod:`starqso.cli`: the command line (``python -m starqso``).
* :func:`load` and :class:`Classifier` (:mod:`starqso.api`): the Python API for notebooks,
  NumPy cutouts in, an astropy table of predictions out.
"""

__version__ = "0.1.0"
__all__ = ["Classifier", "load"]


def __getattr__(name):
    # The API imports astropy and the readers: loaded on first use, so `import starqso` stays
    # light (and never imports TensorFlow).
    if name in __all__:
        from starqso import api

        return getattr(api, name)
    raise AttributeError(f"module 'starqso' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
