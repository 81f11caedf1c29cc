"""How bright a simulated object is, apart from what it is.

The simulator draws its objects from real SDSS spectroscopic rows, whose QSOs are fainter than
their stars (the survey's targeting, not the sky). A network trained on such rows learns that
faintness is evidence for a QSO: the same real high-redshift QSO dimmed by a magnitude gets a
higher p(QSO), bright QSOs are missed, and faint stars and blank-sky blips lean to QSO. How
common each class is at a magnitude is the prior's job (``starqso predict --prior``), not the
pixels'.

:class:`Brightness` gives a fraction of the objects an r magnitude drawn from the pooled STAR +
QSO rows, the same for both classes, and shifts all five bands by the same amount (colours
unchanged). Like :mod:`starqso.simulate.dust`, its draws come from a side stream
(``default_rng([seed, index, BRIGHTNESS_STREAM])``): with a fraction of 0 the simulation is
exactly what it was.

It is off by default: taking the magnitude away also takes away what the spectroscopic sample
does teach about faint QSOs, and a retrain with it lost more real QSOs than it gained
(``benchmarks/results/brightness_mixing.md``).

The synthetic high-redshift QSOs (:data:`starqso.simulate.survey.HIGH_Z_QSO_FRACTION`) have the
same bias at its worst: their r magnitudes come from the catalogue's 132 QSOs above z 2.75,
median r 20.8, so the network learns that high-redshift colours on a bright source mean a star.
``high_z_fraction`` of them instead get an r magnitude uniform in :data:`HIGH_Z_R_RANGE`, which
spans the survey's depth; the other QSOs and the stars keep theirs, and with it the faint-QSO
cue of the spectroscopic rows (``benchmarks/results/high_z_magnitudes.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BRIGHTNESS_STREAM", "HIGH_Z_R_RANGE", "HIGH_Z_STREAM", "Brightness"]

BRIGHTNESS_STREAM = 17
#: The side stream of the high-redshift QSOs' magnitudes, apart from the pooled redraw's.
HIGH_Z_STREAM = 18
#: r magnitudes of the redrawn high-redshift QSOs: from well inside SDSS's spectroscopic QSO
#: targets' bright end to its photometric depth.
HIGH_Z_R_RANGE = (17.5, 22.0)
#: The spread added to a drawn magnitude, so that repeated draws of one row differ.
MAGNITUDE_JITTER = 0.1


@dataclass(frozen=True)
class Brightness:
    """How a simulation decouples an object's brightness from its class.

    Attributes:
        fraction: probability that an object's r magnitude is redrawn from the pooled
            magnitudes of both classes (0: none is).
        high_z_fraction: probability that a synthetic high-redshift QSO's r magnitude is
            uniform in :data:`HIGH_Z_R_RANGE` instead of a catalogue high-z QSO's (0: none is).

    Example:
        >>> Brightness(0.0).draw(seed=0, index=3, magnitudes=np.array([18.0, 20.0])) is None
        True
        >>> 17.5 < Brightness(1.0).draw(seed=0, index=3, magnitudes=np.array([18.0])) < 18.5
        True
        >>> 17.5 <= Brightness(high_z_fraction=1.0).draw_high_z(seed=0, index=3) <= 22.0
        True
    """

    fraction: float = 0.0
    high_z_fraction: float = 0.0

    def draw(self, seed, index, magnitudes) -> float | None:
        """The r magnitude of object ``index`` of ``seed``, or None to keep its row's.

        Args:
            seed: simulation seed.
            index: object number.
            magnitudes: (M,) the pooled r magnitudes of both classes to draw from.

        Returns:
            An r magnitude, or None when the object keeps its own.
        """
        if self.fraction <= 0:
            return None
        side = np.random.default_rng([seed, index, BRIGHTNESS_STREAM])
        if side.random() >= self.fraction:
            return None
        return float(side.choice(np.asarray(magnitudes)) + side.normal(0.0, MAGNITUDE_JITTER))

    def draw_high_z(self, seed, index) -> float | None:
        """The r magnitude of object ``index`` of ``seed`` if it is a synthetic high-redshift
        QSO, or None to keep the catalogue-drawn one.

        Args:
            seed: simulation seed.
            index: object number.

        Returns:
            An r magnitude uniform in :data:`HIGH_Z_R_RANGE`, or None.
        """
        if self.high_z_fraction <= 0:
            return None
        side = np.random.default_rng([seed, index, HIGH_Z_STREAM])
        if side.random() >= self.high_z_fraction:
            return None
        return float(side.uniform(*HIGH_Z_R_RANGE))
