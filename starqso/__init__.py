"""starqso: tell stars from quasars in five-band survey cutouts.

The package follows one object from files to p(QSO):

* :mod:`starqso.schema`: the data model's constants (bands, pixel scale, spectral grid, labels).
* :mod:`starqso.io`: readers and writers of cutouts, spectra and catalogues (no TensorFlow).
* :mod:`starqso.simulate`: the sky simulator, SDSS-like spectra and cutouts from real data.
* :mod:`starqso.preprocessing`: NumPy-only crops, spectrum resampling, scaling statistics,
  aperture photometry, and :func:`~starqso.preprocessing.objects.prepare_object`.
* :mod:`starqso.data`: :class:`~starqso.data.ObjectArrays` (catalogue or simulation as
  arrays), stratified splits, ``tf.data`` datasets.
* :mod:`starqso.models`: the Keras models and in-graph preprocessing layers.
* :mod:`starqso.training`: the stages, their runner, ``fit``; :mod:`starqso.run_folder` owns
  the run folder.
* :mod:`starqso.export`, :mod:`starqso.inference`, :mod:`starqso.evaluation`,
  :mod:`starqso.baselines`: export and checks, ``predict``, ``evaluate``, the classical peers.
* :mod:`starqso.config`, :mod:`starqso.model_files`, :mod:`starqso.atomic`,
  :mod:`starqso.cli`: run configuration, model-file checks, atomic writes, the command line.
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
