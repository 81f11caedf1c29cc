"""The Galactic plane in front of simulated objects: reddening by dust, and crowding.

Low-latitude fields are seen through E(B-V) of 1 and more: a reddened F star has the colours of
a K star, and reddening moves stars along a line that crosses the QSO locus. A configurable
fraction of simulated objects is reddened by E(B-V) uniform in ``[0, max_ebv]``; each band's
flux drops by ``A_band = EXTINCTION_COEFFICIENTS[band] * E(B-V)`` magnitudes (Schlafly &
Finkbeiner 2011, in :mod:`starqso.schema`), so the noiseless ugriz magnitudes move by exactly
those amounts. The spectrum is dimmed by the same curve interpolated between the bands'
effective wavelengths (flat beyond u and z), an approximation of the full extinction law that
agrees with it at the bands.

Which objects are reddened, and by how much, is drawn from a stream of their own
(``default_rng([seed, index, REDDENING_STREAM])``): with a fraction of 0 the simulation is
byte for byte what it was.

Crowding: a fraction of objects is placed in a field with ``density`` times the neighbours of
a high-latitude field, log-uniform in ``[1, max_density]`` (the extra neighbours are stars,
reddened by a uniform fraction of the object's E(B-V); see
:func:`starqso.simulate.images.draw_neighbours`), drawn from a stream of its own
(``[seed, index, CROWDING_STREAM]``).

NumPy only (no TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starqso.schema import EXTINCTION_COEFFICIENTS
from starqso.simulate.photometry import effective_wavelengths

__all__ = ["CROWDING_STREAM", "REDDENING_STREAM", "Crowding", "Reddening", "band_extinction",
           "spectrum_extinction"]

# The third element of an object's reddening and crowding streams (injection uses 7).
REDDENING_STREAM = 11
CROWDING_STREAM = 13


def _chosen_stream(seed, index, stream, fraction):
    """Object ``index``'s side stream ``[seed, index, stream]`` after its first draw, which
    picks the object with probability ``fraction``; None when the object is not picked."""
    side = np.random.default_rng([seed, index, stream])
    if side.random() >= fraction:
        return None
    return side


@dataclass(frozen=True)
class Reddening:
    """How a simulation reddens its objects.

    Attributes:
        fraction: probability that an object is seen through dust (0: none is).
        max_ebv: E(B-V) is uniform in ``[0, max_ebv]`` for a reddened object.

    Example:
        >>> Reddening(0.0, 1.5).draw(seed=0, index=3)
        0.0
    """

    fraction: float = 0.0
    max_ebv: float = 1.5

    def draw(self, seed, index) -> float:
        """E(B-V) of object ``index`` of ``seed`` (0.0 when it is not reddened)."""
        if self.fraction <= 0 or self.max_ebv <= 0:
            return 0.0
        side = _chosen_stream(seed, index, REDDENING_STREAM, self.fraction)
        return 0.0 if side is None else float(side.uniform(0.0, self.max_ebv))


@dataclass(frozen=True)
class Crowding:
    """How a simulation crowds its objects' fields.

    Attributes:
        fraction: probability that an object's field is crowded (0: none is).
        max_density: a crowded field has ``density`` log-uniform in ``[1, max_density]``
            times a high-latitude field's neighbours (about 6 per arcmin^2 to r 23.5).

    Example:
        >>> Crowding(0.0, 20.0).draw(seed=0, index=3)
        1.0
    """

    fraction: float = 0.0
    max_density: float = 20.0

    def draw(self, seed, index) -> float:
        """The neighbour density of object ``index`` of ``seed`` (1.0 when not crowded)."""
        if self.fraction <= 0 or self.max_density <= 1:
            return 1.0
        side = _chosen_stream(seed, index, CROWDING_STREAM, self.fraction)
        return 1.0 if side is None else float(np.exp(side.uniform(0.0, np.log(self.max_density))))


def band_extinction(ebv) -> np.ndarray:
    """``A_band`` in magnitudes, ugriz, for reddening ``ebv``.

    Example:
        >>> band_extinction(1.0).round(3).tolist()
        [4.239, 3.303, 2.285, 1.698, 1.263]
    """
    return np.asarray(EXTINCTION_COEFFICIENTS, np.float64) * float(ebv)


def spectrum_extinction(wavelength, ebv) -> np.ndarray:
    """Extinction in magnitudes at ``wavelength`` (Angstrom): the band coefficients
    interpolated in wavelength between the bands' effective wavelengths."""
    return np.interp(np.asarray(wavelength, np.float64), effective_wavelengths(),
                     EXTINCTION_COEFFICIENTS) * float(ebv)
