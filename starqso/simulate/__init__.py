"""The sky simulator: SDSS-like spectra, photometry and cutouts grounded in real data.

NumPy, astropy and speclite only (no TensorFlow). Start from :func:`simulate_survey` (files),
:func:`simulate_object` (arrays for one object) or, for model inputs held in memory,
:meth:`starqso.data.ObjectArrays.from_simulation`.
"""

from starqso.simulate.survey import (
    SimulatedObject,
    real_qso_fraction,
    simulate_object,
    simulate_survey,
)

__all__ = ["SimulatedObject", "real_qso_fraction", "simulate_object", "simulate_survey"]
