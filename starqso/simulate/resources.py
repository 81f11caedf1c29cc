"""Package data used by the simulator, loaded once per process.

The files under ``starqso/resources`` are trimmed copies of real data (see the README there for
sources and licences), built by ``tools/build_package_data.py``.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.resources

import numpy as np


def resource_path(name):
    """Path-like handle of a file in ``starqso/resources``."""
    return importlib.resources.files("starqso") / "resources" / name


def _load_npz(name):
    with resource_path(name).open("rb") as handle:
        with np.load(handle) as data:
            return {key: data[key] for key in data.files}


@functools.cache
def star_library():
    """Real and stacked stellar spectra on the common grid (flux as float32)."""
    data = _load_npz("star_library.npz")
    data["flux"] = data["flux"].astype(np.float32)
    return data


@functools.cache
def qso_archetypes():
    """Rest-frame QSO archetypes (redrock), negative PCA pixels clipped to zero."""
    data = _load_npz("qso_archetypes.npz")
    data["flux_rest"] = data["flux_rest"].astype(np.float32)
    return data


@functools.cache
def host_galaxy():
    """Old and young stellar-population SEDs (rest frame) for low-redshift QSO hosts."""
    return _load_npz("host_galaxy.npz")


@functools.cache
def galaxy_templates():
    """The five kcorrect v4 galaxy templates (Blanton & Roweis 2007), rest frame: ``wave``
    (Angstrom) and ``flux`` (5 x N, f_lambda, arbitrary units)."""
    data = _load_npz("galaxy_templates.npz")
    data["flux"] = data["flux"].astype(np.float64)
    data["wave"] = data["wave"].astype(np.float64)
    return data


@functools.cache
def noise_calibration():
    """Spectral and image noise calibrated on real SDSS spectra and cutouts."""
    return _load_npz("noise_calibration.npz")


@functools.cache
def sdss_pointsources():
    """Real SDSS STAR and QSO catalogue rows: class, redshift and ugriz model magnitudes.

    Returns:
        dict with ``sdss_id`` (str array), ``label`` (STAR/QSO), ``redshift`` and ``mags``
        (N x 5, ugriz).
    """
    with resource_path("sdss_pointsources.csv.gz").open("rb") as raw:
        rows = list(csv.DictReader(gzip.open(raw, "rt")))
    return {
        "sdss_id": np.array([row["sdss_id"] for row in rows]),
        "label": np.array([row["class"] for row in rows]),
        "redshift": np.array([float(row["redshift"]) for row in rows]),
        "mags": np.array([[float(row[band]) for band in "ugriz"] for row in rows]),
    }
