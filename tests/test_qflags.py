"""The qflag bitmask, the extended-source score and p_qso_err: each bit on a crop made to carry
it, the references a model folder ships, and the columns in every output format."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from starqso.cli import main
from starqso.errors import InputError
from starqso.inference import open_model, predict_views
from starqso.preprocessing.morphology import FEATURE_NAMES, ExtendedScorer, profile_features
from starqso.preprocessing.qflags import bit_names, fit_quality_reference, quality_bits
from starqso.schema import QFLAG_BITS
from starqso.simulate.profiles import PSF, render_point, render_sersic
from tests.helpers import cli_error_line

SIZE = 32
SKY = np.array([0.0445, 0.0173, 0.029, 0.0465, 0.170])  # real SDSS per-pixel sigma, nmgy
rng = np.random.default_rng(18)


def _scene(nanomaggies, profile="point", fwhm_arcsec=1.2, radius_arcsec=2.5, seed=0,
           noise=1.0, size=SIZE):
    """(size, size, 5) crop: a source at the centre plus SDSS-like sky noise."""
    local = np.random.default_rng(seed)
    psf = PSF(kind="moffat", fwhm=fwhm_arcsec / 0.396, beta=3.5)
    centre = (size - 1) / 2
    if profile == "point":
        shape = render_point(psf, size, centre, centre)
    else:
        shape = render_sersic(psf, size, centre, centre, radius_arcsec / 0.396, 1.0, 0.7, 0.3)
    crop = shape[:, :, None] * np.asarray(nanomaggies)[None, None, :]
    return (crop + local.normal(size=crop.shape) * SKY * noise).astype(np.float32)


QSO_FLUX = np.array([8.0, 10.0, 10.0, 11.0, 12.0])  # r ~ 20


def test_bit_values_are_documented_powers_of_two_never_reused():
    # The published meaning of each value: changing one breaks every catalogue made before.
    assert QFLAG_BITS == {"NOT_CLASSIFIED": 1, "REPAIRED": 2, "EXTENDED": 4,
                          "BRIGHT_NEIGHBOUR": 8, "SATURATED": 16, "LOW_SNR": 32,
                          "MAG_OUT_OF_RANGE": 64, "OUT_OF_DISTRIBUTION": 128, "ARTEFACT": 256}
    assert bit_names(4 | 32) == ["EXTENDED", "LOW_SNR"]
    assert bit_names(0) == []


def test_clean_point_source_has_no_bits_and_each_condition_sets_its_own():
    point = _scene(QSO_FLUX, seed=1)
    assert quality_bits(point[None])[0] == 0

    faint = _scene(QSO_FLUX / 8, seed=2)  # S/N about 5 in r: detected, but noisy
    assert bit_names(quality_bits(faint[None])[0]) == ["LOW_SNR"]

    galaxy = _scene(QSO_FLUX * 6, profile="sersic", radius_arcsec=2.5, seed=3)
    assert "EXTENDED" in bit_names(quality_bits(galaxy[None])[0])

    neighbour = point.copy()
    neighbour += _shifted_point(QSO_FLUX * 3, dx=10, dy=-6)
    assert "BRIGHT_NEIGHBOUR" in bit_names(quality_bits(neighbour[None])[0])

    saturated = _scene(QSO_FLUX * 2e4, seed=4)  # r ~ 9.3
    level = np.percentile(saturated, 99.5, axis=(0, 1))
    saturated = np.minimum(saturated, level)  # a flat top, as a full well gives
    assert "SATURATED" in bit_names(quality_bits(saturated[None])[0])

    repaired = quality_bits(np.stack([point, point]), repaired=[False, True])
    assert list(repaired) == [0, QFLAG_BITS["REPAIRED"]]


def _shifted_point(nanomaggies, dx, dy):
    psf = PSF(kind="moffat", fwhm=1.2 / 0.396, beta=3.5)
    centre = (SIZE - 1) / 2
    return (render_point(psf, SIZE, centre + dx, centre + dy)[:, :, None]
            * np.asarray(nanomaggies)[None, None, :]).astype(np.float32)


def test_extended_score_separates_resolved_from_point_at_every_seeing():
    scorer = ExtendedScorer.load()
    points = np.stack([_scene(QSO_FLUX * 4, fwhm_arcsec=fwhm, seed=10 + k)
                       for k, fwhm in enumerate((0.8, 1.1, 1.5, 2.0))])
    galaxies = np.stack([_scene(QSO_FLUX * 8, "sersic", fwhm_arcsec=fwhm, radius_arcsec=3.0,
                                seed=20 + k) for k, fwhm in enumerate((0.8, 1.1, 1.5))])
    assert (scorer.score(points) < scorer.threshold).all()
    assert (scorer.score(galaxies) >= scorer.threshold).all()
    assert profile_features(points).shape == (4, len(FEATURE_NAMES))


def test_scorer_round_trips_and_a_broken_file_is_one_line(tmp_path):
    scorer = ExtendedScorer.load()
    path = tmp_path / "scorer.npz"
    scorer.save(path)
    again = ExtendedScorer.load(path)
    crops = np.stack([_scene(QSO_FLUX, seed=5), _scene(QSO_FLUX * 6, "sersic", seed=6)])
    np.testing.assert_array_equal(again.score(crops), scorer.score(crops))
    assert again.threshold == scorer.threshold
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(InputError, match="not a NumPy .npz zip archive"):
        ExtendedScorer.load(bad)


def test_small_crops_skip_the_bits_they_cannot_measure():
    # A 16-pixel model input has no room for a 3" aperture with a sky border.
    crop = _scene(QSO_FLUX, size=16, seed=7)
    assert quality_bits(crop[None], repaired=[True])[0] == QFLAG_BITS["REPAIRED"]


def _population(count, seed):
    local = np.random.default_rng(seed)
    colours = local.normal([1.2, 0.4, 0.15, 0.05], 0.08, size=(count, 4))  # a "locus"
    r_flux = 10 ** (-0.4 * (local.uniform(17.5, 19.5, count) - 22.5))
    mags_offsets = np.column_stack([colours[:, 0] + colours[:, 1], colours[:, 1],
                                    np.zeros(count), -colours[:, 2],
                                    -colours[:, 2] - colours[:, 3]])
    fluxes = r_flux[:, None] * 10 ** (-0.4 * mags_offsets)
    return np.stack([_scene(flux, seed=seed * 1000 + k) for k, flux in enumerate(fluxes)])


def test_reference_flags_colours_and_magnitudes_outside_the_training_set():
    train, validation = _population(300, 1), _population(150, 2)
    reference = fit_quality_reference(train, validation)
    assert reference["validation_ood_fraction"] <= 0.05
    low, high = reference["r_range"]
    assert 17.0 < low < 17.6 and 19.4 < high < 20.0
    inside = _population(100, 3)
    bits = quality_bits(inside, reference=reference)
    assert np.mean(bits & QFLAG_BITS["OUT_OF_DISTRIBUTION"] != 0) <= 0.08
    assert np.mean(bits & QFLAG_BITS["MAG_OUT_OF_RANGE"] != 0) <= 0.03
    odd = _scene(QSO_FLUX * np.array([0.05, 0.3, 1.0, 3.0, 9.0]), seed=8)  # very red
    bright = _scene(QSO_FLUX * 40, seed=9)  # r ~ 16
    flagged = quality_bits(np.stack([odd, bright]), reference=reference)
    assert "OUT_OF_DISTRIBUTION" in bit_names(flagged[0])
    assert "MAG_OUT_OF_RANGE" in bit_names(flagged[1])
    # The reference is JSON: what metadata.json stores.
    again = json.loads(json.dumps(reference))
    np.testing.assert_array_equal(quality_bits(inside, reference=again), bits)


def test_p_qso_err_grows_on_noisier_cutouts():
    _, predictor = open_model(None, "litert")
    sources = [QSO_FLUX * factor for factor in (0.5, 1.0, 2.0)]
    clean = np.stack([_scene(flux, seed=30 + k, noise=1.0)
                      for k, flux in enumerate(sources * 12)])
    noisy = np.stack([_scene(flux, seed=30 + k, noise=3.0)
                      for k, flux in enumerate(sources * 12)])
    p_clean, err_clean = predict_views(predictor, clean)
    _, err_noisy = predict_views(predictor, noisy)
    assert np.all((err_clean >= 0) & (err_clean <= 0.5))
    assert np.mean(err_noisy) > 1.5 * np.mean(err_clean)
    # Without uncertainty p is unchanged and p_err is NaN; with tta it is the 8 views' spread.
    p_plain, err_none = predict_views(predictor, clean, uncertainty=False)
    np.testing.assert_allclose(p_plain, p_clean, atol=1e-6)
    assert np.isnan(err_none).all()
    _, err_tta = predict_views(predictor, clean, tta=True)
    assert np.all(np.isfinite(err_tta))


def _catalog(tmp_path, crops):
    from astropy.io import fits

    folder = tmp_path / "cutouts"
    folder.mkdir()
    lines = ["id,image"]
    for number, crop in enumerate(crops):
        name = folder / f"obj{number}.fits"
        fits.PrimaryHDU(np.moveaxis(crop, -1, 0).astype(np.float32)).writeto(name)
        lines.append(f"obj{number},{name}")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


@pytest.fixture(scope="module")
def quality_catalog(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("qflag")
    crops = [_scene(QSO_FLUX, seed=40), _scene(QSO_FLUX * 6, "sersic", seed=41),
             _scene(QSO_FLUX / 8, seed=42), np.zeros((SIZE, SIZE, 5), np.float32)]
    return _catalog(tmp_path, crops)


@pytest.mark.parametrize("suffix", [".csv", ".fits"])
def test_predict_writes_qflag_and_p_qso_err(quality_catalog, tmp_path, suffix):
    output = tmp_path / f"p{suffix}"
    result = CliRunner().invoke(main, ["predict", str(quality_catalog), "--output",
                                       str(output), "--runtime", "litert"])
    assert result.exit_code == 0, result.output
    assert "with a qflag caveat" in result.output
    from starqso.io import read_catalog

    table = read_catalog(output, require=("id",))
    assert table.colnames[:6] == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err"]
    qflag = [int(value) for value in table["qflag"]]
    assert qflag[0] == 0
    assert qflag[1] & QFLAG_BITS["EXTENDED"]
    assert qflag[2] & QFLAG_BITS["LOW_SNR"]
    assert qflag[3] == QFLAG_BITS["NOT_CLASSIFIED"]
    err = np.array([float(value) if str(value).strip() else np.nan
                    for value in table["p_qso_err"]])
    assert np.isfinite(err[:3]).all() and np.isnan(err[3])
    if suffix == ".fits":
        from astropy.io import fits

        header = fits.getheader(output, 1)
        assert header["QBIT2"] == "EXTENDED" and header["UNCERT"] is True


def test_no_uncertainty_leaves_p_qso_err_blank(quality_catalog, tmp_path):
    output = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(quality_catalog), "--output",
                                       str(output), "--runtime", "litert", "--no-uncertainty"])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in output.read_text().splitlines()[1:]]
    assert all(row[5] == "" for row in rows)


def test_a_malformed_quality_reference_is_one_line(tmp_path, quality_catalog):
    import shutil

    from starqso.inference import default_model_dir
    from tests.helpers import rewrite_metadata

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    rewrite_metadata(model, quality={"r_range": [20, 14], "ood_threshold": 1.0,
                                     "colour_density": {}})
    result = CliRunner().invoke(main, ["predict", str(quality_catalog), "--model", str(model),
                                       "--output", str(tmp_path / "p.csv"),
                                       "--runtime", "litert"])
    assert result.exit_code != 0
    cli_error_line(result, "quality", "metadata.json")


def _synthetic_features(count, shift, seed):
    """(count, 38) features: standard normal, the first shifted (a resolved-like direction)."""
    values = np.random.default_rng(seed).normal(size=(count, len(FEATURE_NAMES)))
    values[:, 0] += shift
    return values


def test_extended_fit_with_real_points_bounds_their_flagged_fraction():
    # Real stars that the simulation's point sources do not look like (a field's PSF it
    # never drew): fitted on the simulation alone, the threshold flags most of them.
    simulated, extended = _synthetic_features(400, 0.0, 1), _synthetic_features(400, 3.0, 2)
    real, fresh_real = _synthetic_features(400, 2.0, 3), _synthetic_features(2000, 2.0, 4)
    plain = ExtendedScorer.fit(simulated, extended, max_iter=15)
    assert "real_threshold" not in plain.info
    assert np.mean(plain.score_features(fresh_real) >= plain.threshold) > 0.3
    # The first half calibrates (the bright stars, say); the rest is fitted on only.
    calibrates = np.arange(len(real)) < 200
    scorer = ExtendedScorer.fit(simulated, extended, max_iter=15, real_point_features=real,
                                real_false_positive_rate=0.02, real_point_calibrates=calibrates)
    info = scorer.info
    assert scorer.threshold == max(info["simulated_threshold"], info["real_threshold"])
    assert info["real_threshold"] > info["simulated_threshold"]
    assert info["real_point_sources"] == 400
    assert 0 < info["held_out_real_calibrating_points"] < 0.3 * 400
    assert np.mean(scorer.score_features(fresh_real) >= scorer.threshold) <= 0.05
    # A loose real bound leaves the simulated quantile in charge.
    loose = ExtendedScorer.fit(simulated, extended, max_iter=15, real_point_features=real,
                               real_false_positive_rate=0.6)
    assert loose.threshold == loose.info["simulated_threshold"]
    with pytest.raises(InputError, match="real_weight must be positive"):
        ExtendedScorer.fit(simulated, extended, real_point_features=real, real_weight=0.0)
    with pytest.raises(InputError, match="hold out"):
        ExtendedScorer.fit(simulated, extended, real_point_features=real[:2])
    with pytest.raises(InputError, match=r"real_point_features must be \(N, 38\)"):
        ExtendedScorer.fit(simulated, extended, real_point_features=real[:, :5])
    with pytest.raises(InputError, match=r"real_point_calibrates must be \(400,\) bool"):
        ExtendedScorer.fit(simulated, extended, real_point_features=real,
                           real_point_calibrates=np.ones(3, bool))
