"""`starqso skies`: real blank-sky cutouts, PSF FWHM and sky sigma from a user's survey frames.

Every test makes its own small frames (300x300 pixels, TAN WCS at the survey's pixel scale,
bands offset from r by a few pixels as SDSS's are): Gaussian stars of a known FWHM per band on
white noise of a known sigma per band, with one flat-topped (saturated) star and one galaxy
that must not enter the PSF. Nothing here needs ../shared.
"""

import os

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from helpers import cli_error_line

from starqso.cli import main
from starqso.errors import InputError
from starqso.io.skies import read_skies
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC

SIDE = 300
FWHM_ARCSEC = {"u": 1.55, "g": 1.45, "r": 1.35, "i": 1.25, "z": 1.3}
SKY_SIGMA = {"u": 0.045, "g": 0.016, "r": 0.023, "i": 0.035, "z": 0.17}
SKY_LEVEL = {"u": 0.01, "g": 0.0, "r": -0.002, "i": 0.004, "z": 0.02}
# Where each band's frame sits against r's: band pixel = r pixel + offset (as SDSS's CCDs).
OFFSET = {"u": (3.4, -2.2), "g": (-1.7, 4.1), "r": (0.0, 0.0), "i": (2.6, 1.3), "z": (-4.2, -3.6)}
CENTRE = (200.45, 36.81)


def _header(band, offset=(0.0, 0.0), centre=CENTRE, bunit="nanomaggy"):
    header = fits.Header()
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=centre[0], CRVAL2=centre[1],
                  CRPIX1=SIDE / 2 + offset[0], CRPIX2=SIDE / 2 + offset[1], CD1_1=-scale,
                  CD1_2=0.0, CD2_1=0.0, CD2_2=scale, FILTER=band)
    if bunit is not None:
        header["BUNIT"] = bunit
    return header


def _sources(seed=3):
    """r-frame positions (x, y) and fluxes of detectable stars, well apart."""
    rng = np.random.default_rng(seed)
    positions = []
    while len(positions) < 34:
        x, y = rng.uniform(14, SIDE - 15, 2)
        if all(np.hypot(x - a, y - b) > 30 for a, b in positions):
            positions.append((x, y))
    positions = np.array(positions)
    fluxes = np.exp(rng.uniform(np.log(40), np.log(600), len(positions)))
    fluxes[-8:] = rng.uniform(3, 6, 8)  # faint, still well above 5 sigma after smoothing
    return positions, fluxes


def _frame(band, seed):
    """A band's image: sky, noise, the stars, a saturated star and a galaxy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    image = SKY_LEVEL[band] + rng.normal(0, SKY_SIGMA[band], (SIDE, SIDE))
    sigma = FWHM_ARCSEC[band] / PIXEL_SCALE_ARCSEC / (2 * np.sqrt(2 * np.log(2)))
    positions, fluxes = _sources()
    dx, dy = OFFSET[band]
    for number, ((x, y), flux) in enumerate(zip(positions, fluxes, strict=False)):
        width = sigma * (3.0 if number == 1 else 1.0)  # source 1 is a galaxy
        star = flux / (2 * np.pi * width ** 2) * np.exp(
            -((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / (2 * width ** 2))
        if number == 0:  # source 0 is saturated: its core is cut flat
            star = np.minimum(star * 60, star.max() * 4)
        image += star
    return image.astype(np.float32)


def write_frames(folder, names=None, change=None):
    """Five frames in ``folder``; ``change(band, data, header)`` may alter any of them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, band in enumerate(BANDS):
        data, header = _frame(band, 10 + number), _header(band, OFFSET[band])
        if change is not None:
            data, header = change(band, data, header)
        path = folder / (names[number] if names else f"frame-{band}-000001-1-0001.fits")
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(str(path))
    return paths


def run(*args):
    return CliRunner().invoke(main, ["skies", *map(str, args)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One run on good frames: (folder, frame paths, output path, CLI result)."""
    folder = tmp_path_factory.mktemp("frames")
    paths = write_frames(folder)
    out = folder.parent / f"{folder.name}-skies.npz"
    result = run(*paths, "--out", out, "--count", 10, "--size", 32)
    return folder, paths, out, result


def test_skies_writes_blank_cutouts_with_psf_and_sky_sigma(made):
    _, paths, out, result = made
    assert result.exit_code == 0, result.output
    assert f"-> {out}" in result.stdout
    skies = read_skies(out)
    assert skies.images.shape[1:] == (5, 32, 32) and 5 <= len(skies.images) <= 10
    assert np.isfinite(skies.images).all()
    assert list(skies.fields) == ["frame-000001-1-0001"]
    assert list(skies.frame_files[0]) == [os.path.abspath(path) for path in paths]
    assert list(skies.alignment[0]) == ["shift"] * 5
    assert abs(skies.centre_ra[0] - CENTRE[0]) < 1e-3
    for number, band in enumerate(BANDS):
        assert skies.psf_fwhm_arcsec[0, number] == pytest.approx(FWHM_ARCSEC[band], rel=0.1)
        assert skies.psf_stars[0, number] >= 10
        assert skies.sky_sigma[0, number] == pytest.approx(SKY_SIGMA[band], rel=0.1)
        # The cutouts keep the frames' own pixels: their noise is the band's (a robust
        # spread, since a neighbour may sit at a cutout's edge).
        pixels = skies.images[:, number]
        spread = 1.4826 * np.median(np.abs(pixels - np.median(pixels)))
        assert spread == pytest.approx(SKY_SIGMA[band], rel=0.15)


def test_skies_keeps_no_centre_near_a_source(made):
    _, _, out, result = made
    assert result.exit_code == 0, result.output
    skies = read_skies(out)
    positions, _ = _sources()
    distance = np.hypot(skies.x[:, None] - positions[None, :, 0],
                        skies.y[:, None] - positions[None, :, 1])
    assert distance.min() > 4
    # Cutouts never overlap, and each one's pixels are the r frame's at its place.
    apart = np.maximum(np.abs(skies.x[:, None] - skies.x), np.abs(skies.y[:, None] - skies.y))
    assert (apart + 32 * np.eye(len(skies.x)) >= 32).all()
    r_frame = fits.getdata(made[1][2])
    x0, y0 = int(round(skies.x[0] - 15.5)), int(round(skies.y[0] - 15.5))
    assert np.array_equal(skies.images[0, 2], r_frame[y0:y0 + 32, x0:x0 + 32])


def test_skies_folder_replaces_own_output_and_is_deterministic(made, tmp_path):
    folder, _, out, result = made
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.npz"
    first = run(folder, "--out", again, "--count", 10, "--size", 32)
    assert first.exit_code == 0, first.output
    # Its own earlier output is replaced; the same seed gives the same cutouts.
    second = run(folder, "--out", again, "--count", 10, "--size", 32)
    assert second.exit_code == 0, second.output
    assert np.array_equal(read_skies(again).images, read_skies(out).images)


def test_skies_refuses_to_replace_a_file_it_did_not_make(made, tmp_path):
    folder = made[0]
    user_file = tmp_path / "mine.npz"
    np.savez(user_file, images=np.zeros((2, 5, 32, 32)))
    before = user_file.read_bytes()
    cli_error_line(run(folder, "--out", user_file), str(user_file),
                   "not a sky-background file starqso made")
    assert user_file.read_bytes() == before
    cli_error_line(run(folder, "--out", tmp_path / "skies.csv"), "--out must end in .npz")
    assert not (tmp_path / "skies.csv").exists()
    with pytest.raises(InputError, match="not a sky-background file"):
        read_skies(user_file)


def _change_r(change):
    return lambda band, data, header: change(data, header) if band == "r" else (data, header)


@pytest.mark.parametrize("change, fragments", [
    (_change_r(lambda data, header: (np.stack([data, data]), header)),
     ["frame-r-000001-1-0001.fits", "has shape (2, 300, 300)", "expected a 2-D image"]),
    (_change_r(lambda data, header: (data, fits.Header({"FILTER": "r"}))),
     ["frame-r-000001-1-0001.fits", "has no celestial WCS"]),
    (_change_r(lambda data, header: (np.full_like(data, np.nan), header)),
     ["frame-r-000001-1-0001.fits", "is NaN or infinite", "expected a finite image"]),
    (_change_r(lambda data, header: (data, _header("r", bunit="counts"))),
     ["frame-r-000001-1-0001.fits", "BUNIT 'counts'", "expected nanomaggies"]),
    (lambda band, data, header: (data, _header(band, OFFSET[band], centre=(10.0, -5.0)))
     if band == "z" else (data, header),
     ["frame-z-000001-1-0001.fits", "do not cover the same sky", "expected the 5 bands"]),
    (lambda band, data, header: (data, _header("i" if band == "z" else band, OFFSET[band])),
     ["frame-z-000001-1-0001.fits", "FILTER 'i' but its name says band 'z'"]),
], ids=["not-2d", "no-wcs", "all-nan", "not-nanomaggies", "other-field", "band-mismatch"])
def test_skies_bad_frames_give_one_line(tmp_path, change, fragments):
    paths = write_frames(tmp_path / "frames", change=change)
    out = tmp_path / "skies.npz"
    cli_error_line(run(*paths, "--out", out), *fragments)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["frames"]  # nothing half-written


def test_skies_missing_bands_give_one_line(tmp_path):
    paths = write_frames(tmp_path / "frames")
    out = tmp_path / "skies.npz"
    cli_error_line(run(*paths[:4], "--out", out), "needs the 5 frames", paths[0])
    # Five files, but the z frame is of another field (by its name): u g r i z must all be
    # there for each field.
    other = tmp_path / "frames" / "frame-z-000002-1-0001.fits"
    os.rename(paths[4], other)
    cli_error_line(run(*paths[:4], other, "--out", out), "field frame-000001-1-0001",
                   "missing z")
    cli_error_line(run(*paths[:4], paths[0], "--out", out), "two frames of band u")
    assert not out.exists()


def test_skies_bands_by_filter_card_else_order(tmp_path):
    """Files without a band letter in their names: the FILTER card decides, else the order."""
    names = [f"exposure{number}.fits" for number in range(5)]
    carded = write_frames(tmp_path / "a", names=names)
    result = run(*reversed(carded), "--out", tmp_path / "a.npz", "--count", 3, "--size", 32)
    assert result.exit_code == 0, result.output
    assert read_skies(tmp_path / "a.npz").psf_fwhm_arcsec[0, 0] == pytest.approx(
        FWHM_ARCSEC["u"], rel=0.1)

    def without_filter(band, data, header):
        del header["FILTER"]
        return data, header

    plain = write_frames(tmp_path / "b", names=names, change=without_filter)
    result = run(*reversed(plain), "--out", tmp_path / "b.npz", "--count", 3, "--size", 32)
    assert result.exit_code == 0, result.output
    # Given z i r g u, the first file (the z frame) is taken as u.
    assert read_skies(tmp_path / "b.npz").psf_fwhm_arcsec[0, 0] == pytest.approx(
        FWHM_ARCSEC["z"], rel=0.1)
    cli_error_line(run(*plain[:4], carded[4], plain[4], "--out", tmp_path / "c.npz"),
                   "cannot tell the band", plain[0])


def test_skies_without_photutils_names_the_extra(made, tmp_path, monkeypatch):
    import starqso._util.extras

    real = starqso._util.extras.missing_module
    monkeypatch.setattr(starqso._util.extras, "missing_module",
                        lambda *names: "photutils" if "photutils" in names else real(*names))
    cli_error_line(run(made[0], "--out", tmp_path / "s.npz"), "needs photutils",
                   'pip install "starqso[train]"')


def test_rotated_band_is_resampled_through_the_wcs():
    """A band whose frame is rotated against r is resampled (bilinear) onto r's grid: a smooth
    pattern on the sky comes out the same in both bands."""
    from astropy.wcs import WCS

    from starqso.io.frames import Field, Frame

    def pattern(ra, dec):
        return np.sin((ra - CENTRE[0]) * 400) + np.cos((dec - CENTRE[1]) * 300)

    frames = []
    for band in BANDS:
        header = _header(band, OFFSET[band])
        if band == "g":  # rotated by 10 degrees about its reference pixel
            angle, scale = np.radians(10.0), PIXEL_SCALE_ARCSEC / 3600.0
            header.update(CD1_1=-scale * np.cos(angle), CD1_2=scale * np.sin(angle),
                          CD2_1=scale * np.sin(angle), CD2_2=scale * np.cos(angle))
        wcs = WCS(header, naxis=2)
        yy, xx = np.mgrid[0:SIDE, 0:SIDE]
        ra, dec = wcs.all_pix2world(xx, yy, 0)
        frames.append(Frame(f"{band}.fits", band, pattern(ra, dec).astype(np.float32), wcs))
    field = Field("rotated", tuple(frames))
    assert field.alignment == ("shift", "resample", "shift", "shift", "shift")
    cutout = field.cut([150.0], [140.0], 32)[0]
    assert np.isfinite(cutout).all()
    assert np.abs(cutout[1] - cutout[2]).max() < 0.02  # resampled g matches r
    assert np.abs(cutout[3] - cutout[2]).max() < 0.05  # shifted i: within half a pixel


def test_read_skies_reads_a_folder_of_files(made, tmp_path):
    out = made[2]
    assert made[3].exit_code == 0, made[3].output
    folder = tmp_path / "skies"
    folder.mkdir()
    (folder / "a.npz").write_bytes(out.read_bytes())
    assert np.array_equal(read_skies(folder).images, read_skies(out).images)
    (folder / "b.npz").write_bytes(out.read_bytes())
    with pytest.raises(InputError, match="hold the same field twice"):
        read_skies(folder)
