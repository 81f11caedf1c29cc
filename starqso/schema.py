"""The data model, each part defined here and only here (standard library only).

Every module that needs a band order, the pixel scale, the encoder's spectral grid or the class
names imports it from this module (some re-export it under the same name for their existing
importers, e.g. ``starqso.io.BANDS``), so a change to the data model is one edit and readers,
writers, the simulator, preprocessing, models and exported metadata cannot disagree.

The survey (bands, pixel scale, zero point, unit) and the class list are values,
:class:`Survey` and :class:`ClassList`: an exported model records them in its
``metadata.json`` and a cutout's header cards are checked against them. :data:`SDSS` and
:data:`CLASSES` are the ones this release reads and writes; the module constants below
(``BANDS``, ``PIXEL_SCALE_ARCSEC``, ``CLASS_NAMES``, ...) are their fields under the names the
rest of the package imports.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields

# --- the survey and the classes ----------------------------------------------------------------


def _bad(what: str, value) -> ValueError:
    shown = repr(value)
    return ValueError(f"{what}. Received: {shown if len(shown) <= 160 else shown[:157] + '...'}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _strings(value, what: str, *, empty_ok: bool = False) -> tuple:
    """``value`` (a list or tuple of distinct non-empty strings) as a tuple."""
    if not isinstance(value, (list, tuple)) or (not value and not empty_ok) or not all(
            isinstance(item, str) and item for item in value) or len(set(value)) != len(value):
        raise _bad(f"{what} must be a list of distinct non-empty strings", value)
    return tuple(value)


def _from_dict(cls, data, what: str):
    """``cls(**data)`` for a dict holding every field of ``cls`` without a default and no other
    key; a one-line ValueError otherwise (the fields check their own values)."""
    names = [field.name for field in fields(cls)]
    required = [field.name for field in fields(cls) if field.default is MISSING]
    if not isinstance(data, dict):
        raise _bad(f"{what} must be a dict with keys {', '.join(names)}", data)
    unknown = sorted(str(key) for key in data if key not in names)
    missing = [name for name in required if name not in data]
    if unknown or missing:
        raise _bad(f"{what} must have keys {', '.join(names)} (missing: "
                   f"{', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})",
                   data)
    return cls(**data)


@dataclass(frozen=True)
class Survey:
    """An imaging survey's data model: what a cutout's axes and pixel values mean.

    A model is trained on one survey's cutouts and is only valid on cutouts of the same bands,
    pixel scale and units, so the survey is one value: exported models record it
    (``metadata.json: survey``) and the cutout readers check header cards against it.

    Attributes:
        name: the survey's name, e.g. ``"SDSS"``.
        bands: filter names in the order of a cutout's first axis (FITS NAXIS3), of an image's
            channels and of magnitude columns.
        pixel_scale_arcsec: imaging pixel scale in arcsec per pixel.
        zero_point: AB magnitude of one pixel unit, so ``mag = zero_point - 2.5 log10(flux)``.
        unit: the unit of cutout pixels as a ``BUNIT`` card writes it.
        unit_aliases: other ``BUNIT`` values (lower case) that mean the same unit.
        extinction_coefficients: Galactic extinction per unit reddening, A_band / E(B-V), one
            per band (a source behind dust of E(B-V) is fainter by ``coefficient * E(B-V)``
            magnitudes).

    Raises:
        ValueError: a field has the wrong type or value (one line).

    Example:
        >>> Survey.from_dict(SDSS.to_dict()) == SDSS
        True
        >>> "".join(SDSS.bands), SDSS.pixel_scale_arcsec, SDSS.zero_point, SDSS.unit
        ('ugriz', 0.396, 22.5, 'nanomaggy')
    """

    name: str
    bands: tuple
    pixel_scale_arcsec: float
    zero_point: float
    unit: str
    unit_aliases: tuple = ()
    extinction_coefficients: tuple = ()

    def __post_init__(self):
        # Lists (as JSON gives them) become tuples, so a survey read back from a model's
        # metadata is equal to, and hashes like, the one it was written from.
        if not isinstance(self.name, str) or not self.name.strip():
            raise _bad("survey name must be a non-empty string", self.name)
        bands = _strings(self.bands, "survey bands")
        if not _is_number(self.pixel_scale_arcsec) or self.pixel_scale_arcsec <= 0:
            raise _bad("survey pixel_scale_arcsec must be a finite number > 0",
                       self.pixel_scale_arcsec)
        if not _is_number(self.zero_point):
            raise _bad("survey zero_point must be a finite number (AB mag of 1 unit)",
                       self.zero_point)
        if not isinstance(self.unit, str) or not self.unit.strip():
            raise _bad("survey unit must be a non-empty string", self.unit)
        aliases = _strings(self.unit_aliases, "survey unit_aliases", empty_ok=True)
        coefficients = self.extinction_coefficients
        if not isinstance(coefficients, (list, tuple)) or (
                coefficients and len(coefficients) != len(bands)) or not all(
                _is_number(value) and value >= 0 for value in coefficients):
            raise _bad(f"survey extinction_coefficients must be empty or {len(bands)} finite "
                       f"numbers >= 0, one per band", coefficients)
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "unit_aliases", aliases)
        object.__setattr__(self, "extinction_coefficients", tuple(coefficients))

    def accepts_unit(self, unit) -> bool:
        """Whether a ``BUNIT`` card's value names this survey's pixel unit.

        Example:
            >>> SDSS.accepts_unit(" Nanomaggies"), SDSS.accepts_unit("counts")
            (True, False)
        """
        return str(unit).strip().lower() in {name.lower() for name in (self.unit,
                                                                        *self.unit_aliases)}

    def to_dict(self) -> dict:
        """The survey as a JSON-ready dict (lists for tuples), as ``metadata.json`` holds it.

        Returns:
            ``{"name": ..., "bands": [...], ...}``, one key per field.

        Example:
            >>> SDSS.to_dict()["bands"]
            ['u', 'g', 'r', 'i', 'z']
        """
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in values.items()}

    @classmethod
    def from_dict(cls, data) -> Survey:
        """The survey a :meth:`to_dict` dict describes.

        Args:
            data: a dict with every field (``unit_aliases`` and ``extinction_coefficients``
                may be left out) and no other key.

        Returns:
            A :class:`Survey`.

        Raises:
            ValueError: ``data`` is not such a dict, or a value is wrong (one line).

        Example:
            >>> Survey.from_dict({"name": "X", "bands": ["g", "r"], "zero_point": 22.5,
            ...                   "pixel_scale_arcsec": 0.2, "unit": "nanomaggy"}).bands
            ('g', 'r')
        """
        return _from_dict(cls, data, "survey")


@dataclass(frozen=True)
class ClassList:
    """The classes a model tells apart, in the order of their integer codes.

    A two-class model's output is p(``names[1]``); catalogue ``label`` cells are one of the
    names or blank.

    Attributes:
        names: class names; code ``i`` is ``names[i]``.

    Raises:
        ValueError: fewer than two names, or names that are not distinct non-empty strings.

    Example:
        >>> ClassList.from_dict(CLASSES.to_dict()) == CLASSES
        True
        >>> CLASSES.names
        ('STAR', 'QSO')
    """

    names: tuple

    def __post_init__(self):
        names = _strings(self.names, "class names")
        if len(names) < 2:
            raise _bad("a class list must name at least two classes", list(names))
        object.__setattr__(self, "names", names)

    def to_dict(self) -> dict:
        """The class list as a JSON-ready dict, as ``metadata.json: classes`` holds it.

        Example:
            >>> CLASSES.to_dict()
            {'names': ['STAR', 'QSO']}
        """
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, data) -> ClassList:
        """The class list a :meth:`to_dict` dict describes.

        Raises:
            ValueError: ``data`` is not ``{"names": [...]}`` with valid names (one line).

        Example:
            >>> ClassList.from_dict({"names": ["STAR", "QSO"]}) == CLASSES
            True
        """
        return _from_dict(cls, data, "class list")


#: The Sloan Digital Sky Survey's imaging: ugriz at 0.396 arcsec/px, pixels in nanomaggies
#: (1 nanomaggy is AB magnitude 22.5). Extinction coefficients: Schlafly & Finkbeiner (2011,
#: ApJ 737, 103), Table 6, R_V = 3.1.
SDSS = Survey(
    name="SDSS",
    bands=("u", "g", "r", "i", "z"),
    pixel_scale_arcsec=0.396,
    zero_point=22.5,
    unit="nanomaggy",
    unit_aliases=("nanomaggies",),
    extinction_coefficients=(4.239, 3.303, 2.285, 1.698, 1.263),
)
#: Star or quasar: STAR 0, QSO 1 (the two-class models, the shipped one among them).
CLASSES = ClassList(("STAR", "QSO"))
#: Star, quasar or galaxy: STAR 0, QSO 1, GALAXY 2 (the same codes as :data:`CLASSES` for
#: the first two, so a label's code does not depend on the model).
THREE_CLASSES = ClassList(("STAR", "QSO", "GALAXY"))
#: The surveys and class lists this release's models may be trained on and read.
SUPPORTED_SURVEYS = (SDSS,)
SUPPORTED_CLASSES = (CLASSES, THREE_CLASSES)

# --- images ------------------------------------------------------------------------------------

# The survey's fields under the names the package imports. SDSS filters, in the order of a
# cutout's first axis (FITS NAXIS3), of an image's channels and of magnitude columns; a
# cutout's ``BANDS`` card is ``"".join(BANDS)``.
BANDS = SDSS.bands
# Channels of every image the models see: one per band.
NUM_BANDS = len(BANDS)
# Imaging pixel scale in arcsec per pixel: the simulator renders at it, a cutout's
# ``PIXSCALE`` card (or its WCS) must match it, apertures in arcsec are converted with it.
PIXEL_SCALE_ARCSEC = SDSS.pixel_scale_arcsec
# How far (relative) the pixel scale a cutout's WCS gives may lie from PIXEL_SCALE_ARCSEC:
# SDSS frames' CD matrices give 0.396 to within a few 0.1%, a resampled survey (0.25-0.27
# arcsec/px) is tens of percent away.
PIXEL_SCALE_TOLERANCE = 0.02
# Unit of cutout pixels (the ``BUNIT`` card): 1 nanomaggy is AB magnitude ZERO_POINT (22.5),
# so ``mag = 22.5 - 2.5 log10(flux)``.
BUNIT = SDSS.unit
ZERO_POINT = SDSS.zero_point
# Memory layout of image batches given to the models: (objects, height, width, bands), channels
# last as Keras convolutions expect (cutout files are (bands, height, width)).
LAYOUT = "NHWC"
# Galactic extinction per unit reddening, A_band / E(B-V), for BANDS (SDSS u, g, r, i, z):
# Schlafly & Finkbeiner (2011, ApJ 737, 103), Table 6, R_V = 3.1. A source behind dust of
# E(B-V) is fainter by EXTINCTION_COEFFICIENTS[band] * E(B-V) magnitudes in each band.
EXTINCTION_COEFFICIENTS = SDSS.extinction_coefficients

# --- spectra -----------------------------------------------------------------------------------

# The encoder grid: ENCODER_NUM_PIXELS log-uniform pixel centres from ENCODER_WAVELENGTH_MIN to
# ENCODER_WAVELENGTH_MAX Angstrom (vacuum), the ``wave[863:4563]`` window of the project's
# common grid (delta log10 lambda = 1.0566e-4, about 72.9 km/s).
ENCODER_WAVELENGTH_MIN = 3700.0
ENCODER_WAVELENGTH_MAX = 9100.0
ENCODER_NUM_PIXELS = 3700
# Channels of an encoder spectrum: 0 scaled flux, 1 reliability weight (0 where masked).
SPECTRUM_CHANNELS = 2

# --- labels and decisions ----------------------------------------------------------------------

# The two-class models' names in the order of their integer codes (STAR 0, QSO 1): a
# two-class model's output is p(CLASS_NAMES[1]) = p(QSO).
CLASS_NAMES = CLASSES.names
# Every label a catalogue ``label`` cell may hold (or blank), in the order of their codes.
LABEL_NAMES = THREE_CLASSES.names
# Integer code of an object without a (known) label.
UNKNOWN_LABEL = -1
# Catalogue label -> integer label of the arrays: {"STAR": 0, "QSO": 1, "GALAXY": 2, "": -1}.
LABEL_CODES = {**{name: code for code, name in enumerate(LABEL_NAMES)}, "": UNKNOWN_LABEL}
# The class name QSO, whose probability every output keeps as ``p_qso``.
QSO_CLASS = "QSO"


def output_name(num_classes: int) -> str:
    """The name of a deployed model's output: ``"p_qso"`` (N, 1) for a two-class model,
    ``"probabilities"`` (N, K) in class-list order for K >= 3 classes.

    Example:
        >>> output_name(2), output_name(3)
        ('p_qso', 'probabilities')
    """
    return "p_qso" if num_classes == 2 else "probabilities"
# p(QSO) at or above which an object is called QSO, unless a model's metadata says otherwise.
DEFAULT_THRESHOLD = 0.5

# The finer classes the metric-learning head (model.metric_loss) learns and the embedding
# benchmark scores: STAR, and QSOs in redshift bins split at these edges (a QSO's continuum,
# lines and Lyman-alpha forest move through the ugriz bands with z, so each bin looks
# different in the cutout). Codes are indices into FINE_CLASS_NAMES.
QSO_REDSHIFT_EDGES = (1.0, 2.0, 3.0)
FINE_CLASS_NAMES = ("STAR", "QSO z<1", "QSO 1<=z<2", "QSO 2<=z<3", "QSO z>=3")
# A three-class run's metric head also learns GALAXY, the fine class after the QSO bins.
GALAXY_FINE_CLASS = "GALAXY"


def fine_class_names(num_classes: int = 2) -> tuple:
    """The fine classes of a run telling ``num_classes`` classes apart: :data:`FINE_CLASS_NAMES`
    for STAR/QSO, then :data:`GALAXY_FINE_CLASS` for STAR/QSO/GALAXY.

    Example:
        >>> fine_class_names(3)[-1]
        'GALAXY'
    """
    return FINE_CLASS_NAMES + ((GALAXY_FINE_CLASS,) if num_classes > 2 else ())


def fine_class_codes(labels, redshift, num_classes: int = 2):
    """The fine class (index into :func:`fine_class_names`) of each object; -1 where unknown.

    Args:
        labels: int ``(N,)`` STAR 0 / QSO 1 / GALAXY 2 / unknown -1 (:data:`LABEL_CODES`).
        redshift: float ``(N,)``; a QSO without a finite redshift is unknown (-1).
        num_classes: the run's classes: with 3, a GALAXY is the last fine class; with 2 it
            is unknown (-1).

    Returns:
        int64 ``(N,)`` codes.

    Example:
        >>> fine_class_codes([0, 1, 1, -1], [0.0, 0.5, 3.4, 1.0]).tolist()
        [0, 1, 4, -1]
    """
    import numpy as np

    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    redshift = np.asarray(redshift, np.float64).reshape(-1)
    codes = np.full(len(labels), UNKNOWN_LABEL, np.int64)
    codes[labels == 0] = 0
    qso = (labels == 1) & np.isfinite(redshift)
    codes[qso] = 1 + np.searchsorted(QSO_REDSHIFT_EDGES, redshift[qso], side="right")
    if num_classes > 2:
        codes[labels == LABEL_CODES["GALAXY"]] = len(FINE_CLASS_NAMES)
    return codes

# --- quality bits ------------------------------------------------------------------------------

# The ``qflag`` column of every prediction output: a bitwise OR of these values (0 = no
# caveat), beside the human-readable ``flag`` text. A value is never reused for another
# meaning; a new condition takes the next free bit. ``starqso.preprocessing.qflags`` says how
# each is measured.
QFLAG_BITS = {
    "NOT_CLASSIFIED": 1,  # no p_qso: unreadable, no source, implausible pixels (see ``flag``)
    "REPAIRED": 2,  # classified after setting a few NaN/inf pixels to their band median
    "EXTENDED": 4,  # a galaxy or blend (light profile, colours): outside the point-source domain
    "BRIGHT_NEIGHBOUR": 8,  # another source in the crop as bright as the target's core
    "SATURATED": 16,  # flat-topped core or brighter than the band's saturation limit
    "LOW_SNR": 32,  # best g/r/i aperture S/N below QFLAG_LOW_SNR
    "MAG_OUT_OF_RANGE": 64,  # r outside the magnitudes the model was trained on
    "OUT_OF_DISTRIBUTION": 128,  # colours far from the training colour distribution
    "ARTEFACT": 256,  # a pixel narrower than the PSF near the centre: cosmic ray, hot pixel
}
# Column names of the quality outputs.
QFLAG_COLUMN = "qflag"
P_QSO_ERR_COLUMN = "p_qso_err"
# LOW_SNR below this aperture S/N (the best of g, r, i): colours are then uncertain by
# about 0.1-0.2 mag, comparable to the star/QSO colour separation.
QFLAG_LOW_SNR = 10.0
# How much a cutout's own light counts as evidence (starqso.probability.evidence_weight): none
# at the source check's combined detection limit (S/N 5 in the five bands together,
# starqso.preprocessing.screening.combined_snr) and below, all of it from S/N 7, linearly in
# between. Just above the limit noise, a neighbour's wing or an artefact can give any colour,
# so p(QSO) there leans on the prior instead of the network; a wider ramp costs faint QSOs that
# the network does tell from stars (the choice is measured in
# benchmarks/results/evidence_weight.md).
EVIDENCE_SNR = (5.0, 7.0)
