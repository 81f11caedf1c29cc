"""NumPy-only preprocessing: spectra onto the encoder grid (no TensorFlow here)."""

from starqso.preprocessing.spectra import (
    ENCODER_NUM_PIXELS,
    ENCODER_WAVELENGTH_MAX,
    ENCODER_WAVELENGTH_MIN,
    GriddedSpectrum,
    encoder_wavelength,
    log_uniform_grid,
    pixel_edges,
    resample_spectrum,
)

__all__ = [
    "ENCODER_NUM_PIXELS",
    "ENCODER_WAVELENGTH_MAX",
    "ENCODER_WAVELENGTH_MIN",
    "GriddedSpectrum",
    "encoder_wavelength",
    "log_uniform_grid",
    "pixel_edges",
    "resample_spectrum",
]
