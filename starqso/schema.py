"""The data model's constants, each defined here and only here (standard library only).

Every module that needs a band order, the pixel scale, the encoder's spectral grid or the class
names imports it from this module (some re-export it under the same name for their existing
importers, e.g. ``starqso.io.BANDS``), so a change to the data model is one edit and readers,
writers, the simulator, preprocessing, models and exported metadata cannot disagree.
"""

from __future__ import annotations

# --- images ------------------------------------------------------------------------------------

# SDSS filters, in the order of a cutout's first axis (FITS NAXIS3), of an image's channels and
# of magnitude columns; a cutout's ``BANDS`` card is ``"".join(BANDS)``.
BANDS = ("u", "g", "r", "i", "z")
# Channels of every image the models see: one per band.
NUM_BANDS = len(BANDS)
# SDSS imaging pixel scale in arcsec per pixel: the simulator renders at it, a cutout's
# ``PIXSCALE`` card must match it, apertures in arcsec are converted with it.
PIXEL_SCALE_ARCSEC = 0.396
# Unit of cutout pixels (the ``BUNIT`` card): 1 nanomaggy is AB magnitude 22.5, so
# ``mag = 22.5 - 2.5 log10(flux)``.
BUNIT = "nanomaggy"
# Memory layout of image batches given to the models: (objects, height, width, bands), channels
# last as Keras convolutions expect (cutout files are (bands, height, width)).
LAYOUT = "NHWC"
# Galactic extinction per unit reddening, A_band / E(B-V), for BANDS (SDSS u, g, r, i, z):
# Schlafly & Finkbeiner (2011, ApJ 737, 103), Table 6, R_V = 3.1. A source behind dust of
# E(B-V) is fainter by EXTINCTION_COEFFICIENTS[band] * E(B-V) magnitudes in each band.
EXTINCTION_COEFFICIENTS = (4.239, 3.303, 2.285, 1.698, 1.263)

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

# Class names in the order of their integer codes (STAR 0, QSO 1): a model's output is
# p(CLASS_NAMES[1]) = p(QSO); catalogue ``label`` cells are one of these or blank.
CLASS_NAMES = ("STAR", "QSO")
# Integer code of an object without a (known) label.
UNKNOWN_LABEL = -1
# Catalogue label -> integer label of the arrays: {"STAR": 0, "QSO": 1, "": -1}.
LABEL_CODES = {**{name: code for code, name in enumerate(CLASS_NAMES)}, "": UNKNOWN_LABEL}
# p(QSO) at or above which an object is called QSO, unless a model's metadata says otherwise.
DEFAULT_THRESHOLD = 0.5

# The finer classes the metric-learning head (model.metric_loss) learns and the embedding
# benchmark scores: STAR, and QSOs in redshift bins split at these edges (a QSO's continuum,
# lines and Lyman-alpha forest move through the ugriz bands with z, so each bin looks
# different in the cutout). Codes are indices into FINE_CLASS_NAMES.
QSO_REDSHIFT_EDGES = (1.0, 2.0, 3.0)
FINE_CLASS_NAMES = ("STAR", "QSO z<1", "QSO 1<=z<2", "QSO 2<=z<3", "QSO z>=3")


def fine_class_codes(labels, redshift):
    """The fine class (index into :data:`FINE_CLASS_NAMES`) of each object; -1 where unknown.

    Args:
        labels: int ``(N,)`` STAR 0 / QSO 1 / unknown -1 (:data:`LABEL_CODES`).
        redshift: float ``(N,)``; a QSO without a finite redshift is unknown (-1).

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
# starqso.preprocessing.quality.combined_snr) and below, all of it from S/N 7, linearly in
# between. Just above the limit noise, a neighbour's wing or an artefact can give any colour,
# so p(QSO) there leans on the prior instead of the network; a wider ramp costs faint QSOs that
# the network does tell from stars (the choice is measured in
# benchmarks/results/evidence_weight.md).
EVIDENCE_SNR = (5.0, 7.0)
