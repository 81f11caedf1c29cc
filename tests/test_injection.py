"""Simulated sources injected into real blank-sky cutouts, and Galactic reddening (issue 37).

The sky-background files here are written through the skies writer from small synthetic
"real" skies (white noise of a known sigma per band, a gradient, a faint neighbour), so
nothing needs ../shared.
"""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli_error_line

from starqso.cli import main
from starqso.errors import InputError
from starqso.io.skies import SkyBackgrounds, write_skies
from starqso.schema import EXTINCTION_COEFFICIENTS, PIXEL_SCALE_ARCSEC
from starqso.simulate import simulate_object
from starqso.simulate.images import ELECTRONS_PER_NANOMAGGY, draw_psfs, render_cutout, render_point
from starqso.simulate.injection import BackgroundSource, choose_background

FIELDS = ("1000-1-10", "2000-2-20")
FWHM = np.array([[1.7, 1.6, 1.5, 1.4, 1.45], [2.2, 2.1, 2.0, 1.9, 1.95]])
SIGMA = np.array([[0.05, 0.02, 0.025, 0.035, 0.15], [0.06, 0.03, 0.03, 0.04, 0.2]])


def make_skies(count=8, side=32, bands=5, seed=0, fields=FIELDS):
    """SkyBackgrounds of ``count`` cutouts over two fields: noise, a gradient, a neighbour."""
    rng = np.random.default_rng(seed)
    field_of = np.array([fields[number % 2] for number in range(count)])
    yy, xx = np.mgrid[0:side, 0:side] / side
    images = np.empty((count, bands, side, side), np.float32)
    for number in range(count):
        row = number % 2
        for band in range(bands):
            sigma = SIGMA[row, band % 5]
            images[number, band] = (rng.normal(0, sigma, (side, side))
                                    + sigma * (0.5 * xx - 0.3 * yy))
        images[number, :, 3, side - 4] += 1.0  # a faint neighbour near a corner
    per_field = dict(
        fields=np.array(fields), psf_fwhm_arcsec=FWHM.copy(), psf_stars=np.full((2, 5), 9),
        sky_sigma=SIGMA.copy(), sky_level=np.zeros((2, 5)),
        frame_files=np.array([[f"frame-{b}-{f}.fits" for b in "ugriz"] for f in fields]),
        frame_sha256=np.array([["0" * 64] * 5] * 2), alignment=np.array([["shift"] * 5] * 2),
        centre_ra=np.array([200.0, 210.0]), centre_dec=np.array([30.0, 31.0]))
    return SkyBackgrounds(
        images=images, field=field_of, x=np.arange(count, dtype=float) * 40,
        y=np.full(count, 50.0), ra=np.full(count, 200.0), dec=np.full(count, 30.0),
        detect_sigma=5.0, blank_radius_px=4.0, created="2026-12-07", command="test",
        **per_field)


@pytest.fixture(scope="module")
def skies_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("skies") / "skies.npz"
    write_skies(path, make_skies())
    return path


def test_injected_star_is_the_rendered_source_plus_the_background(skies_file):
    backgrounds = BackgroundSource.open(skies_file, fraction=1.0, size=28).load(28)
    background = backgrounds[1]
    assert background.image.shape == (5, 28, 28)  # 32 centre-cropped to 28
    point = np.array([150.0, 300.0, 400.0, 450.0, 500.0])
    cube, info = render_cutout(np.random.default_rng(5), 28, point, background=background)
    # The drawn PSFs of the same stream, with the field's FWHM.
    psfs = background.psfs(draw_psfs(np.random.default_rng(5)))
    assert np.allclose(info["psf_fwhm"], FWHM[1])
    assert [psf.fwhm * PIXEL_SCALE_ARCSEC for psf in psfs] == pytest.approx(FWHM[1])
    assert info["background"] == 1 and info["artefact"] == "none"
    assert info["n_neighbours"] == 0 and not info["correlated_noise"]
    assert np.allclose(info["sky_sigma"], SIGMA[1])
    centre = (28 - 1) / 2.0
    x0, y0 = centre + np.array(info["centre_offset_px"])
    for band, psf in enumerate(psfs):
        shift_x, shift_y = info["band_shift_px"][band]
        source = (point[band] * 10 ** (-0.4 * info["zero_point_offset"][band])
                  * render_point(psf, 28, x0 + shift_x, y0 + shift_y))
        difference = cube[band] - background.image[band] - source
        # Only the source's photon noise is left (electrons per nanomaggy are >= half the
        # nominal well within 4 sigma of their log-normal jitter), no second sky noise.
        bound = 6 * np.sqrt(source / (0.5 * ELECTRONS_PER_NANOMAGGY[band])) + 1e-4
        assert np.all(np.abs(difference) <= bound), band
        # ... and it is the photon noise: unit variance once scaled by it (a second sky
        # noise of the field's sigma would be 3-30x that in the wings).
        scaled = difference / np.sqrt(source / ELECTRONS_PER_NANOMAGGY[band])
        assert 0.5 < scaled.std() < 2.0, band


def test_injection_fraction_follows_the_setting_and_leaves_other_objects_alone(skies_file):
    draws = [choose_background(4, index, 0.3, 8) for index in range(4000)]
    injected = np.mean([draw is not None for draw in draws])
    assert abs(injected - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    assert {draw for draw in draws if draw is not None} == set(range(8))
    assert all(choose_background(4, index, 0.0, 8) is None for index in range(200))
    backgrounds = BackgroundSource.open(skies_file, size=24).load(24)
    chosen_any = [choose_background(4, index, 0.3, 8) for index in range(12)]
    assert None in chosen_any and any(draw is not None for draw in chosen_any)
    for index in range(12):
        plain = simulate_object(index, 4, size=24)
        mixed = simulate_object(index, 4, size=24, backgrounds=backgrounds,
                                background_fraction=0.3)
        chosen = choose_background(4, index, 0.3, len(backgrounds))
        assert mixed.info["background"] == (-1 if chosen is None else chosen)
        if chosen is None:
            assert mixed.cutout.tobytes() == plain.cutout.tobytes()
        else:
            assert mixed.label == plain.label and mixed.redshift == plain.redshift
            assert mixed.cutout.tobytes() != plain.cutout.tobytes()


def test_object_arrays_inject_the_configured_fraction(skies_file):
    from starqso.data.arrays import ObjectArrays

    source = BackgroundSource.open(skies_file, fraction=1.0, size=24)
    arrays = ObjectArrays.from_simulation(4, 2, image_size=24, cutout_size=24, workers=1,
                                          backgrounds=source)
    plain = ObjectArrays.from_simulation(4, 2, image_size=24, cutout_size=24, workers=1)
    assert (arrays.labels == plain.labels).all()
    assert not np.array_equal(arrays.images, plain.images)
    # Fraction 0: exactly the plain simulation.
    none = ObjectArrays.from_simulation(
        4, 2, image_size=24, cutout_size=24, workers=1,
        backgrounds=BackgroundSource.open(skies_file, fraction=0.0, size=24))
    assert none.images.tobytes() == plain.images.tobytes()


def test_simulation_cache_key_includes_the_backgrounds(skies_file, tmp_path):
    from starqso.data.arrays import ObjectArrays

    logs = []
    source = BackgroundSource.open(skies_file, fraction=0.5, size=24)
    ObjectArrays.from_simulation_cache(tmp_path, 2, 1, image_size=24, cutout_size=24,
                                       workers=1, log=logs.append)
    ObjectArrays.from_simulation_cache(tmp_path, 2, 1, image_size=24, cutout_size=24,
                                       workers=1, log=logs.append, backgrounds=source)
    assert all("cached in" in line for line in logs)  # the second did not reuse the first
    assert len(list(tmp_path.glob("simulation-*.npz"))) == 2


def test_background_source_refuses_small_cutouts_and_describes_itself(skies_file, tmp_path):
    with pytest.raises(InputError, match=r"16x16-pixel cutouts, smaller than .*24x24"):
        small = tmp_path / "small.npz"
        write_skies(small, make_skies(side=16))
        BackgroundSource.open(small, size=24)
    described = BackgroundSource.open(skies_file, size=24).describe()
    assert described["cutouts"] == 8 and described["fields"] == list(FIELDS)
    assert described["fraction"] == 0.5 and len(described["sha256"]) == 64
    assert described["files"][0]["path"].endswith("skies.npz")


def test_config_fraction_outside_unit_interval_is_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\ndata:\n  sky_backgrounds_fraction: 1.5\n")
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2
    line = cli_error_line(result)
    assert "data.sky_backgrounds_fraction must be a number in [0, 1]" in line
    assert "1.5" in line and str(config) in line


@pytest.mark.parametrize("kind", ["text", "bands", "small", "missing"])
def test_bad_sky_backgrounds_are_one_line(tmp_path, kind):
    path = tmp_path / "skies.npz"
    if kind == "text":
        path.write_text("not an npz\n")
        expected = str(path)
    elif kind == "bands":
        write_skies(path, make_skies(bands=3))
        expected = "expected (N, 5, S, S)"
    elif kind == "small":
        write_skies(path, make_skies(side=16))
        expected = "smaller than the simulated cutouts (24x24"
    else:
        path = tmp_path / "absent.npz"
        expected = "does not exist"
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--preset", "tiny", "--sky-backgrounds",
                                       str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = cli_error_line(result)
    assert expected in line and str(path) in line
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_fit_tiny_three_classes_with_sky_backgrounds_records_them_and_exports_three_outputs(
        skies_file, tmp_path):
    # One tiny run checks two things (the default test run has no time for two): real-sky
    # injection, and a STAR/QSO/GALAXY model from fit through every export format.
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\nmodel:\n  classes: [STAR, QSO, GALAXY]\n"
                      "data:\n  num_objects: 40\n  export_check_objects: 8\n"
                      "  export_calibration_objects: 8\n  sky_backgrounds_fraction: 0.75\n"
                      "  reddening_fraction: 0.3\n  neighbour_density_fraction: 0.2\n"
                      "  galaxy_fraction: 0.3\n")
    result = CliRunner().invoke(main, ["fit", "--config", str(config), "--sky-backgrounds",
                                       str(skies_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "injecting a fraction 0.75 of them into 8 real blank-sky cutouts" in result.output
    assert "making a fraction 0.3 of them galaxies" in result.output
    assert "f1_galaxy=" in result.output
    _check_three_class_export(out / "export")
    # A later `starqso export` of the run simulates the very objects fit trained on: the
    # recorded sky backgrounds, the dust, the crowding and the galaxies (before, it
    # re-simulated plain objects under the same ids).
    from starqso.data.arrays import ObjectArrays
    from starqso.deploy.export import split_objects
    from starqso.simulate.dust import Crowding, Reddening
    from starqso.training.run_folder import RunFolder

    folder = RunFolder(out)
    check = split_objects(folder, folder.load_config(), 4, 1)["check"]
    expected = ObjectArrays.from_simulation(
        40, 0, image_size=24, cutout_size=24, workers=1,
        backgrounds=BackgroundSource.open(skies_file, 0.75, size=24),
        reddening=Reddening(0.3, 1.5), crowding=Crowding(0.2, 20.0), galaxy_fraction=0.3)
    rows = [list(expected.ids).index(identifier) for identifier in check.ids]
    assert np.array_equal(check.images, expected.images[rows])
    assert np.array_equal(check.labels, expected.labels[rows])
    record = json.loads((out / "data.json").read_text())
    assert record["data"] is None
    skies = record["sky_backgrounds"]
    assert skies["fraction"] == 0.75 and skies["cutouts"] == 8
    assert skies["fields"] == list(FIELDS) and len(skies["files"][0]["sha256"]) == 64
    card = (out / "export" / "model_card.md").read_text()
    assert f"SHA-256 {skies['sha256']}" in card and "8 real blank-sky cutouts" in card
    assert "a fraction 0.3 reddened by E(B-V) up to 1.5" in card
    assert "a fraction 0.2 in crowded fields (up to 20x the neighbours)" in card


def _check_three_class_export(folder):
    """A three-class export: its metadata, and (N, 3) probabilities alike in every format."""
    import keras
    import tensorflow as tf

    from starqso.inference import LiteRTPredictor

    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["classes"] == {"names": ["STAR", "QSO", "GALAXY"]}
    assert metadata["class_names"] == ["STAR", "QSO", "GALAXY"]
    assert metadata["output_name"] == "probabilities"
    fractions = metadata["training_class_fractions"]
    assert sorted(fractions) == ["GALAXY", "QSO", "STAR"]
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert metadata["training_qso_fraction"] == fractions["QSO"]
    assert metadata["default_prior"] == {"QSO": 0.02, "GALAXY": 0.6}
    cutouts = np.abs(np.random.default_rng(3).normal(0.05, 0.02, (4, 24, 24, 5))).astype(
        "float32")
    cutouts[:, 10:14, 10:14] += 5.0
    model = keras.saving.load_model(folder / "starqso_classifier.keras")
    expected = np.asarray(model.predict({"image": cutouts}, verbose=0), np.float64)
    assert expected.shape == (4, 3)
    assert expected.sum(axis=1) == pytest.approx(np.ones(4), abs=1e-5)
    served = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(image=tf.constant(cutouts))["probabilities"].numpy(),
                               expected, atol=1e-5)
    for variant, tolerance in (("fp32", 1e-5), ("fp16", 0.02), ("int8", 0.2)):
        got = LiteRTPredictor(folder / f"model_{variant}.tflite")(cutouts)
        assert got.shape == (4, 3)
        np.testing.assert_allclose(got, expected, atol=tolerance)
    check = json.loads((folder / "export_check.json").read_text())
    assert check["calibration"]["training_class_fractions"] == fractions
    # predict on a cube stack: p_star + p_qso + p_galaxy = 1, labels of the three classes.
    from astropy.io import fits

    stack, output = folder.parent / "stack.fits", folder.parent / "predictions.csv"
    fits.HDUList([fits.PrimaryHDU(np.moveaxis(cutouts, -1, 1)), fits.BinTableHDU.from_columns(
        [fits.Column(name="id", format="8A", array=np.array(["a", "b", "c", "d"]))])]
                 ).writeto(stack)
    result = CliRunner().invoke(main, ["predict", str(stack), "--model", str(folder),
                                       "--runtime", "litert", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "prior QSO=0.02,GALAXY=0.6" in result.output
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0])[:8] == ["id", "p_qso", "label", "flag", "qflag", "p_qso_err",
                                 "p_star", "p_galaxy"]
    for row in rows:
        if row["label"]:
            total = sum(float(row[key]) for key in ("p_star", "p_qso", "p_galaxy"))
            assert total == pytest.approx(1.0, abs=2e-6)
            assert row["label"] in ("STAR", "QSO", "GALAXY")
    for prior, expected in (("QSO=0.6,GALAXY=0.5", "sum to 1.1"),
                            ("WHITE_DWARF=0.1", "WHITE_DWARF")):
        bad = CliRunner().invoke(main, ["predict", str(stack), "--model", str(folder),
                                        "--runtime", "litert", "--prior", prior,
                                        "--output", str(folder.parent / "bad.csv")])
        assert bad.exit_code != 0 and expected in cli_error_line(bad)


def test_reddening_moves_colours_by_the_coefficients_and_is_recorded(tmp_path):
    from astropy.table import Table

    from starqso.simulate import simulate_survey
    from starqso.simulate.dust import Reddening

    dust = Reddening(fraction=1.0, max_ebv=2.0)
    coefficients = np.array(EXTINCTION_COEFFICIENTS)
    assert coefficients.tolist() == [4.239, 3.303, 2.285, 1.698, 1.263]
    for index in range(4):
        plain = simulate_object(index, 6, size=24)
        reddened = simulate_object(index, 6, size=24, reddening=dust)
        ebv = reddened.info["galactic_ebv"]
        assert 0 < ebv <= 2.0 and plain.info["galactic_ebv"] == 0.0
        assert reddened.label == plain.label
        # The noiseless magnitudes move by exactly A_band = R_band x E(B-V): every colour
        # by the difference of the coefficients.
        assert reddened.mags - plain.mags == pytest.approx(coefficients * ebv, abs=1e-9)
        assert np.diff(reddened.mags) - np.diff(plain.mags) == pytest.approx(
            np.diff(coefficients) * ebv, abs=1e-9)
    none = simulate_object(2, 6, size=24, reddening=Reddening(0.0, 2.0))
    assert none.cutout.tobytes() == simulate_object(2, 6, size=24).cutout.tobytes()
    # The fraction follows the setting; E(B-V) spans the range.
    draws = np.array([Reddening(0.4, 1.5).draw(1, index) for index in range(3000)])
    assert abs((draws > 0).mean() - 0.4) < 4 * np.sqrt(0.4 * 0.6 / 3000)
    assert draws.max() > 1.4 and draws.max() <= 1.5
    # The simulated catalogue's ebv column.
    simulate_survey(tmp_path / "dusty", 3, seed=6, size=16, workers=1, reddening=dust)
    simulate_survey(tmp_path / "plain", 3, seed=6, size=16, workers=1)
    dusty = Table.read(tmp_path / "dusty" / "catalog.csv")
    plain_table = Table.read(tmp_path / "plain" / "catalog.csv")
    assert (np.asarray(dusty["ebv"]) > 0).all() and (np.asarray(plain_table["ebv"]) == 0).all()
    assert np.asarray(dusty["ebv"])[0] == pytest.approx(
        simulate_object(0, 6, size=16, reddening=dust).info["galactic_ebv"], abs=1e-5)


def test_fit_arrays_follow_the_reddening_config():
    from starqso.data.arrays import ObjectArrays
    from starqso.simulate.dust import Reddening

    dust = Reddening(1.0, 1.0)
    plain = ObjectArrays.from_simulation(3, 2, image_size=24, cutout_size=24, workers=1)
    dusty = ObjectArrays.from_simulation(3, 2, image_size=24, cutout_size=24, workers=1,
                                         reddening=dust)
    shift = dusty.mags - plain.mags
    ebv = np.array([dust.draw(2, index) for index in range(3)])
    assert shift == pytest.approx(ebv[:, None] * np.array(EXTINCTION_COEFFICIENTS), abs=1e-4)


def test_a_folder_of_sky_files_and_resume_keep_the_same_backgrounds(tmp_path):
    from starqso.config import get_preset
    from starqso.training.fit import _sky_backgrounds
    from starqso.training.run_folder import RunFolder

    folder = tmp_path / "skies"
    folder.mkdir()
    write_skies(folder / "a.npz", make_skies())
    write_skies(folder / "b.npz", make_skies(count=4, fields=("3000-3-30", "4000-4-40")))
    (folder / "notes.txt").write_text("not read\n")
    source = BackgroundSource.open(folder, size=24)
    assert source.count == 12 and len(source.fields) == 4
    assert [entry["path"].rsplit("/", 1)[1] for entry in source.describe()["files"]] == [
        "a.npz", "b.npz"]
    # --resume: the recorded backgrounds are reused, and must be unchanged.
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.save_data_source(None, source.describe())
    config = get_preset("tiny")
    again = _sky_backgrounds(run, config, None, None, None, resume=True)
    assert again.sha256 == source.sha256 and again.count == 12
    write_skies(folder / "b.npz", make_skies(count=2, fields=("3000-3-30", "4000-4-40")))
    with pytest.raises(InputError, match="has changed"):
        _sky_backgrounds(run, config, None, None, None, resume=True)
    plain = RunFolder(tmp_path / "plain")
    plain.root.mkdir()
    plain.save_data_source(None)
    assert json.loads((plain.root / "data.json").read_text()) == {"data": None}
    with pytest.raises(InputError, match="without sky backgrounds"):
        _sky_backgrounds(plain, config, str(folder), None, None, resume=True)
    with pytest.raises(InputError, match="not --data"):
        _sky_backgrounds(plain, config, str(folder), "catalog.csv", None, resume=False)


def test_crowded_fields_hold_more_neighbours_reddened_behind_the_dust():
    from starqso.simulate import resources
    from starqso.simulate.dust import Crowding
    from starqso.simulate.images import draw_neighbours

    densities = np.array([Crowding(0.5, 50.0).draw(3, index) for index in range(2000)])
    assert abs((densities > 1).mean() - 0.5) < 0.05 and densities.max() <= 50.0
    assert densities.max() > 30 and (densities >= 1).all()
    crowded = Crowding(1.0, 50.0)
    plain = [simulate_object(index, 3, size=32) for index in range(6)]
    busy = [simulate_object(index, 3, size=32, crowding=crowded) for index in range(6)]
    assert sum(o.info["n_neighbours"] for o in busy) > 3 * sum(
        o.info["n_neighbours"] for o in plain) + 5
    assert all(o.info["neighbour_density"] > 1 for o in busy)
    assert simulate_object(1, 3, size=32, crowding=Crowding(0.0)).cutout.tobytes() == \
        plain[1].cutout.tobytes()
    # Neighbours of a reddened crowded field: galaxies behind all the dust, stars behind part.
    stars = resources.sdss_pointsources()["mags"][:200]
    clear = draw_neighbours(np.random.default_rng(9), 48, stars, density=40.0)
    dusty = draw_neighbours(np.random.default_rng(9), 48, stars, density=40.0, ebv=1.0)
    assert len(clear) == len(dusty) > 20
    most = np.array(EXTINCTION_COEFFICIENTS)
    star_count = 0
    for before, after in zip(clear, dusty, strict=False):
        dimming = -2.5 * np.log10(after.nanomaggies / before.nanomaggies)
        if before.half_light_radius > 0:
            assert dimming == pytest.approx(most, abs=1e-9)
        else:
            star_count += 1
            fraction = dimming / most
            assert np.allclose(fraction, fraction[0]) and 0 <= fraction[0] <= 1
    assert star_count > len(clear) / 2  # the extra neighbours of a crowded field are stars


def test_fit_data_follow_the_dust_and_crowding_config():
    from starqso.config import config_from_dict
    from starqso.training.fit import _load_arrays

    def load(**data):
        lines = []
        config = config_from_dict({"preset": "tiny", "data": {"num_objects": 4, **data}})
        return _load_arrays(config, None, lines.append), " ".join(lines)

    plain, _ = load()
    dusty, said = load(reddening_fraction=1.0, max_ebv=0.5, neighbour_density_fraction=1.0,
                       max_neighbour_density=30)
    assert "reddening a fraction 1 of them by E(B-V) up to 0.5" in said
    assert "crowding the fields of a fraction 1 of them up to 30x" in said
    assert (dusty.labels == plain.labels).all()
    shift = dusty.mags - plain.mags
    assert (shift > 0).all() and (shift[:, 0] > shift[:, 4]).all()  # u dims most, z least
    assert not np.array_equal(dusty.images, plain.images)


def test_brightness_mixing_redraws_r_for_both_classes_and_keeps_colours():
    # The spectroscopic rows' QSOs are fainter than their stars; with the mixing on, a fraction
    # of the objects gets an r drawn from both classes pooled, colours kept, and the rest are
    # bit for bit the objects of a plain simulation (side stream).
    from starqso.simulate import simulate_object
    from starqso.simulate.brightness import Brightness

    plain = [simulate_object(index, 5, 32) for index in range(40)]
    mixed = [simulate_object(index, 5, 32, brightness=Brightness(0.5)) for index in range(40)]
    redrawn = [obj.info["r_redrawn"] for obj in mixed]
    assert 8 <= sum(redrawn) <= 32 and not any(obj.info["r_redrawn"] for obj in plain)
    for before, after, moved in zip(plain, mixed, redrawn, strict=True):
        assert before.label == after.label and before.redshift == after.redshift
        if not moved:
            np.testing.assert_array_equal(before.cutout, after.cutout)
            continue
        colours = np.diff(before.mags), np.diff(after.mags)
        np.testing.assert_allclose(*colours, atol=0.05)
    assert any(not np.isclose(b.mags[2], a.mags[2], atol=0.05)
               for b, a, moved in zip(plain, mixed, redrawn, strict=True) if moved)


def test_fit_data_follow_the_brightness_config(tmp_path):
    from starqso.config import config_from_dict
    from starqso.data.arrays import ObjectArrays
    from starqso.simulate.brightness import Brightness
    from starqso.training.fit import _load_arrays

    lines = []
    config = config_from_dict({"preset": "tiny", "data": {
        "num_objects": 6, "magnitude_mixing_fraction": 1.0}})
    arrays = _load_arrays(config, None, lines.append)
    assert "r magnitudes of a fraction 1 of them from both classes alike" in " ".join(lines)
    plain = _load_arrays(config_from_dict({"preset": "tiny", "data": {"num_objects": 6}}),
                         None, lines.append)
    assert (arrays.labels == plain.labels).all() and not np.allclose(arrays.mags, plain.mags)
    # The simulation cache keys on the mixing, so a plain cache is never reused for it.
    cached = ObjectArrays.from_simulation_cache(tmp_path, 3, 0, image_size=16, cutout_size=32,
                                                qso_fraction=None, workers=1)
    mixed = ObjectArrays.from_simulation_cache(tmp_path, 3, 0, image_size=16, cutout_size=32,
                                               qso_fraction=None, workers=1,
                                               brightness=Brightness(1.0))
    assert len(list(tmp_path.glob("simulation-*.npz"))) == 2
    assert not np.allclose(cached.mags, mixed.mags)


def test_high_z_magnitudes_move_only_the_synthetic_high_z_qsos_over_the_survey_range(tmp_path):
    # The catalogue's high-z QSOs are faint (median r 20.8); with the option on, a fraction of
    # the synthetic high-z QSOs get r uniform over HIGH_Z_R_RANGE, every other object bit for
    # bit as in a plain simulation, and the simulation cache keys on it.
    from starqso.data.arrays import ObjectArrays
    from starqso.simulate import simulate_object
    from starqso.simulate.brightness import HIGH_Z_R_RANGE, Brightness

    indices = range(120)
    plain = [simulate_object(index, 3, 32) for index in indices]
    moved = [simulate_object(index, 3, 32, brightness=Brightness(high_z_fraction=1.0))
             for index in indices]
    high_z = [obj.info["population"] == "high_z" for obj in plain]
    assert sum(high_z) >= 3
    for before, after, is_high_z in zip(plain, moved, high_z, strict=True):
        assert before.label == after.label and before.redshift == after.redshift
        if not is_high_z:
            np.testing.assert_array_equal(before.cutout, after.cutout)
            continue
        assert HIGH_Z_R_RANGE[0] - 0.2 <= after.mags[2] <= HIGH_Z_R_RANGE[1] + 0.2
        assert not np.isclose(before.mags[2], after.mags[2], atol=0.01)
    plain_cache = ObjectArrays.from_simulation_cache(tmp_path, 3, 0, image_size=16,
                                                     cutout_size=32, qso_fraction=None,
                                                     workers=1)
    ObjectArrays.from_simulation_cache(tmp_path, 3, 0, image_size=16, cutout_size=32,
                                       qso_fraction=None, workers=1,
                                       brightness=Brightness(high_z_fraction=1.0))
    assert len(list(tmp_path.glob("simulation-*.npz"))) == 2 and len(plain_cache.labels) == 3


def test_fit_data_follow_the_high_z_magnitude_config():
    from starqso.config import config_from_dict
    from starqso.training.fit import _load_arrays

    lines = []
    config = config_from_dict({"preset": "tiny", "data": {
        "num_objects": 40, "qso_fraction": 1.0, "high_z_magnitude_fraction": 1.0}})
    moved = _load_arrays(config, None, lines.append)
    assert "a fraction 1 of the high-redshift QSOs over 17.5-22" in " ".join(lines)
    plain = _load_arrays(config_from_dict({"preset": "tiny", "data": {
        "num_objects": 40, "qso_fraction": 1.0}}), None, lines.append)
    changed = ~np.isclose(moved.mags[:, 2], plain.mags[:, 2])
    assert changed.any() and not changed.all()  # the high-z QSOs only
