"""Issue 37 parts 3-4 on the NumPy screening: features that do not depend on a row's batch
neighbours, a sky that survives crowding, and the detection rule."""

import numpy as np
from click.testing import CliRunner

from starqso.cli import main
from starqso.preprocessing.morphology import FEATURE_NAMES, profile_features
from starqso.simulate.images import PSF, render_point

SIZE = 32
SKY = np.array([0.0445, 0.0173, 0.029, 0.0465, 0.170])  # real SDSS per-pixel sigma, nmgy
FLUX = np.array([8.0, 10.0, 10.0, 11.0, 12.0])  # r ~ 20


def _point(flux, dx=0.0, dy=0.0, seed=0, fwhm_arcsec=1.4):
    """(SIZE, SIZE, 5) crop: a point source offset (dx, dy) px from the centre, SDSS sky."""
    psf = PSF(kind="moffat", fwhm=fwhm_arcsec / 0.396, beta=3.5)
    centre = (SIZE - 1) / 2
    shape = render_point(psf, SIZE, centre + dx, centre + dy)
    crop = shape[:, :, None] * np.asarray(flux, np.float64)[None, None, :]
    noise = np.random.default_rng(seed).normal(size=crop.shape) * SKY
    return (crop + noise).astype(np.float32)


def test_a_rows_profile_features_do_not_depend_on_its_batch_neighbours():
    # The normalisation aperture's pixel count (log10_snr) was taken on the first row's
    # centroid-shifted grid for every row of the batch.
    row = _point(FLUX, dx=1.4, dy=-0.6, seed=1)
    leaders = [_point(FLUX * 3, seed=2), _point(FLUX, dx=-1.3, dy=1.2, seed=3)]
    alone = profile_features(row[None])[0]
    for leader in leaders:
        for batch, position in ((np.stack([leader, row]), 1), (np.stack([row, leader]), 0)):
            np.testing.assert_array_equal(profile_features(batch)[position], alone,
                                          err_msg=str(FEATURE_NAMES))


def _stack(tmp_path, name, crops):
    from astropy.io import fits

    path = tmp_path / f"{name}.fits"
    ids = fits.BinTableHDU.from_columns([fits.Column(name="id", format="10A",
                                                     array=[f"obj{k}" for k in range(len(crops))])])
    fits.HDUList([fits.PrimaryHDU(np.moveaxis(np.stack(crops), -1, 1).astype(np.float32)),
                  ids]).writeto(path)
    return path


def _predict(path, tmp_path):
    from starqso.io import read_catalog

    output = tmp_path / f"{path.stem}.csv"
    result = CliRunner().invoke(main, ["predict", str(path), "--output", str(output),
                                       "--runtime", "litert"])
    assert result.exit_code == 0, result.output
    table = read_catalog(output, require=("id",))
    return ([float(value) for value in table["p_qso"]],
            [int(value) for value in table["qflag"]])


def test_predict_gives_a_row_the_same_answer_wherever_it_sits_in_its_batch(tmp_path):
    rows = [_point(FLUX * scale, dx=dx, dy=dy, seed=10 + k)
            for k, (scale, dx, dy) in enumerate([(1.0, 1.4, -0.6), (0.5, -1.3, 1.2),
                                                  (2.0, 0.0, 0.0), (0.8, 0.9, 1.4)])]
    forward = _predict(_stack(tmp_path, "forward", rows), tmp_path)
    backward = _predict(_stack(tmp_path, "backward", rows[::-1]), tmp_path)
    assert forward[1] == backward[1][::-1]
    np.testing.assert_allclose(forward[0], backward[0][::-1], atol=1e-6)
