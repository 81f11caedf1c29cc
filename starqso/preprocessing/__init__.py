"""NumPy-only preprocessing: spectra onto the encoder grid, cutouts to crops (no TensorFlow)."""

from starqso.preprocessing.images import center_crop, channels_last, usable_crop
from starqso.preprocessing.screening import aperture_snr, check_source, sky_sigma
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
    "aperture_snr",
    "center_crop",
    "channels_last",
    "check_source",
    "encoder_input",
    "encoder_wavelength",
    "log_uniform_grid",
    "pixel_edges",
    "resample_spectrum",
    "sky_sigma",
    "usable_crop",
]
