"""starqso: tell stars from quasars in five-band survey cutouts.

The package follows one object from files to p(QSO):

* :mod:`starqso.io` reads and writes cutouts, spectra and catalogues (no TensorFlow).
* :mod:`starqso.preprocessing` puts spectra on the encoder grid (NumPy only).
* :mod:`starqso.simulate` renders SDSS-like spectra and cutouts grounded in real data.
"""

__version__ = "0.1.0"
