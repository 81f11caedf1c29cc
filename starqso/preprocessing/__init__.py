"""NumPy-only preprocessing: spectra onto the encoder grid, cutouts to crops (no TensorFlow)."""

from starqso.preprocessing.images import center_crop, channels_last, usable_crop
from starqso.preprocessing.spectra import (
    ENCODER_NUM_PIXELS,
    ENCODER_WAVELENGTH_MAX,
    ENCODER_WAVELENGTH_MIN,
    SPECTRUM_CHANNELS,
    GriddedSpectrum,
    encoder_input,
    encoder_wavelength,
    log_uniform_grid,
    pixel_edges,
    resample_spectrum,
)

__all__ = [
    "ENCODER_NUM_PIXELS",
    "ENCODER_WAVELENGTH_MAX",
    "ENCODER_WAVELENGTH_MIN",
    "SPECTRUM_CHANNELS",
    "GriddedSpectrum",
    "center_crop",
    "channels_last",
    "encoder_input",
    "encoder_wavelength",
    "log_uniform_grid",
    "pixel_edges",
    "resample_spectrum",
    "usable_crop",
]
