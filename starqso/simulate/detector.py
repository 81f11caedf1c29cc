"""What the camera and the cutout service do to one band's frame, one function each.

The field's sky-noise scale (:func:`draw_noise_scale`), saturation with charge bleeding along
the columns (:func:`saturate`), a cosmic-ray residual or a bad column (:func:`add_artefact`),
and resampling onto another band's pixel grid, which correlates the noise
(:func:`resample_bilinear`). :func:`starqso.simulate.images.render_cutout` decides, with its
own random draws, which of them a cutout gets.
"""

from __future__ import annotations

import numpy as np

# Sky-noise scale relative to the nominal (image_sky_sigma, the median over real cutouts).
# Real SDSS QSO cutouts (real_qso_iqvit_dev.npz, 1,861 objects) have per-cutout sigma / median
# of 0.66-0.75 (1%), 0.75-0.89 (5%), 1.15-1.40 (95%), 1.36-1.64 (99%) depending on the band,
# and the bands' log-sigmas correlate by 0.1-0.6: a field term (log-normal, 0.12) times a band
# term (log-normal, 0.12) reproduces that; a further NOISE_BROAD_FRACTION of fields are drawn
# log-uniform over the whole NOISE_SCALE_RANGE (bright moon, twilight, cirrus), which the
# 1,861 real cutouts do not sample.
NOISE_SCALE_RANGE = (0.6, 2.5)
NOISE_FIELD_LOG_SIGMA = 0.12
NOISE_BAND_LOG_SIGMA = 0.12
NOISE_BROAD_FRACTION = 0.1


def draw_noise_scale(rng):
    """Per-band sky-noise scale (x nominal) of one field, within NOISE_SCALE_RANGE."""
    if rng.random() < NOISE_BROAD_FRACTION:
        field = np.exp(rng.uniform(*np.log(NOISE_SCALE_RANGE)))
    else:
        field = rng.lognormal(0.0, NOISE_FIELD_LOG_SIGMA)
    return np.clip(field * rng.lognormal(0.0, NOISE_BAND_LOG_SIGMA, size=5),
                   *NOISE_SCALE_RANGE)


def resample_bilinear(image, phase_x, phase_y):
    """Bilinear interpolation of ``image`` at ``(x + phase_x, y + phase_y)``, |phase| <= 0.5.

    This is what resampling a band onto another band's grid does: content at position X ends
    up at X - phase. The kernel's weights sum to one, so fluxes and the flux error in an
    aperture of several pixels are kept, while the per-pixel sigma of white noise drops by
    sqrt(sum of squared weights) (to 0.5 at half a pixel on both axes) and neighbouring
    pixels correlate. Edges are repeated.
    """
    padded = np.pad(image, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    weight_x, weight_y = abs(phase_x), abs(phase_y)
    side_x = padded[1:-1, 2:] if phase_x >= 0 else padded[1:-1, :-2]
    along_x = (1 - weight_x) * centre + weight_x * side_x
    padded = np.pad(along_x, 1, mode="edge")
    side_y = padded[2:, 1:-1] if phase_y >= 0 else padded[:-2, 1:-1]
    return (1 - weight_y) * along_x + weight_y * side_y


def saturate(image, level):
    """Flat-top pixels above ``level`` and bleed their excess along columns (axis 0).

    Charge above full well spills into the pixels above and below in the same column (SDSS
    drift-scan CCDs bleed along columns), filling each to ``level`` in turn; the column's
    total flux is kept unless the trail runs off the cutout.

    Returns:
        ``(image, saturated)``: the new image and whether any pixel saturated.
    """
    over = image > level
    if not over.any():
        return image, False
    image = image.copy()
    rows = image.shape[0]
    for column in np.flatnonzero(over.any(axis=0)):
        values = image[:, column]
        hit = np.flatnonzero(values > level)
        excess = float(np.sum(values[hit] - level))
        values[hit] = level
        low, high = hit.min() - 1, hit.max() + 1
        up = True
        while excess > 0 and (low >= 0 or high < rows):
            position = high if (up and high < rows) or low < 0 else low
            room = max(level - values[position], 0.0)
            fill = min(room, excess)
            values[position] += fill
            excess -= fill
            if position == high:
                high += 1
            else:
                low -= 1
            up = not up
        image[:, column] = values
    return image, True


def add_artefact(rng, image, sigma, kind):
    """A cosmic-ray residual (a short, sharp track) or a bad column, in place."""
    size = image.shape[0]
    if kind == "cosmic_ray":
        length = rng.integers(1, 6)
        angle = rng.uniform(0, np.pi)
        x, y = rng.uniform(0, size - 1, size=2)
        amplitude = sigma * rng.uniform(10.0, 100.0)
        for step in range(length):
            column = int(np.clip(round(x + step * np.cos(angle)), 0, size - 1))
            row = int(np.clip(round(y + step * np.sin(angle)), 0, size - 1))
            image[row, column] += amplitude * rng.uniform(0.5, 1.0)
    else:
        column = rng.integers(0, size)
        if rng.random() < 0.5:  # dead or masked-and-zeroed column
            image[:, column] = 0.0
        else:  # hot column: an offset of several sigma
            image[:, column] += sigma * rng.uniform(3.0, 20.0)
