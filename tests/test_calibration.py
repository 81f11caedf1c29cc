"""Calibration pieces on their own: the temperature layer and model, the temperature fit, the
threshold rule, the prior correction and test-time augmentation (no training run needed)."""

import json

import keras
import numpy as np
import pytest

from starqso.deploy.calibration import THRESHOLD_GRID, choose_threshold, fit_temperature
from starqso.deploy.tflite import convert_tflite, write_saved_model
from starqso.errors import InputError
from starqso.inference import (
    LiteRTPredictor,
    apply_prior,
    classify_block,
    dihedral_views,
    parse_prior,
    resolve_prior,
)
from starqso.io.sources import Block
from starqso.models import (
    CalibratedClassifier,
    CutoutScaling,
    FeatureGenerator,
    FusionClassifier,
    StarQSOClassifier,
    TemperatureScaling,
)
from starqso.probability import calibrate

SIZE = 16
rng = np.random.default_rng(4)
CUTOUTS = np.abs(rng.normal(0, 1, (6, SIZE, SIZE, 5))).astype("float32")


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@pytest.fixture(scope="module")
def deployable():
    keras.utils.set_random_seed(2)
    generator = FeatureGenerator(SIZE, (4, 8), 8, 4, 8, 0.0)
    fusion = FusionClassifier(SIZE, (4, 8), 8, 8, 0.0)
    scaling = CutoutScaling([0.03, 0.01, 0.03, 0.03, 0.1], [0.1] * 5, [2.0] * 5)
    return StarQSOClassifier(scaling, generator, fusion)


def test_temperature_layer_is_sigmoid_of_logit_over_t_and_round_trips():
    p = np.array([[1e-4], [0.1], [0.5], [0.8], [0.999]], "float32")
    layer = TemperatureScaling(2.5)
    np.testing.assert_allclose(np.asarray(layer(p)), _sigmoid(_logit(p) / 2.5), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(TemperatureScaling(1.0)(p)), p, rtol=1e-5)
    # Exactly 0 and 1 (an int8 model's extremes) stay finite, and stay at the ends.
    ends = np.asarray(layer(np.array([[0.0], [1.0]], "float32"))).ravel()
    assert np.all(np.isfinite(ends)) and ends[0] < 0.01 and ends[1] > 0.99
    clone = TemperatureScaling.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.temperature == 2.5
    for bad in (0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="temperature"):
            TemperatureScaling(bad)


def test_calibrated_model_config_keras_saved_model_and_tflite(deployable, tmp_path):
    import tensorflow as tf

    model = CalibratedClassifier(deployable, 1.8, name="starqso_calibrated")
    raw = np.asarray(deployable({"image": CUTOUTS}))
    calibrated = np.asarray(model({"image": CUTOUTS}))
    assert calibrated.shape == (6, 1) and model.image_size == SIZE
    # The exported model's output is sigmoid(logit(raw) / T) of the uncalibrated model.
    np.testing.assert_allclose(calibrated, calibrate(raw, 1.8).reshape(-1, 1), rtol=1e-5,
                               atol=1e-6)
    clone = CalibratedClassifier.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    model.save(tmp_path / "calibrated.keras")
    reloaded = keras.saving.load_model(tmp_path / "calibrated.keras", safe_mode=True)
    assert type(reloaded) is CalibratedClassifier and reloaded.temperature == 1.8
    np.testing.assert_allclose(np.asarray(reloaded({"image": CUTOUTS})), calibrated,
                               rtol=1e-6, atol=1e-6)
    from starqso.deploy.folder import check_keras_file

    check_keras_file(tmp_path / "calibrated.keras")  # starqso's own pre-load check passes
    write_saved_model(model, tmp_path / "saved_model")
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(image=tf.constant(CUTOUTS))["p_qso"].numpy(), calibrated,
                               atol=1e-6)
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(convert_tflite(tmp_path / "saved_model", "fp32"))
    np.testing.assert_allclose(LiteRTPredictor(path)(CUTOUTS), calibrated.ravel(), atol=1e-5)
    from ai_edge_litert.interpreter import Interpreter

    ops = {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}
    assert not any("Flex" in name for name in ops)


def test_temperature_fit_softens_an_over_confident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    labels = (rng.uniform(size=true_logit.size) < _sigmoid(true_logit)).astype(int)
    # Three times too sure of itself: logits scaled by 3, so the fitted T is about 3.
    over_confident = _sigmoid(3 * true_logit)
    temperature = fit_temperature(labels, over_confident)
    assert 2.5 < temperature < 3.5
    assert 0.85 < fit_temperature(labels, _sigmoid(true_logit)) < 1.15
    from starqso.evaluation import classification_metrics

    before = classification_metrics(labels, over_confident)["ece"]
    after = classification_metrics(labels, calibrate(over_confident, temperature))["ece"]
    assert after < before / 2
    with pytest.raises(InputError, match="both classes"):
        fit_temperature([1, 1, 1], [0.2, 0.7, 0.9])


def test_threshold_rule_best_macro_f1_ties_to_the_value_closest_to_half():
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95 and len(THRESHOLD_GRID) == 91
    labels = [0, 0, 0, 1, 1]
    # Every threshold in (0.62, 0.70] separates the classes perfectly: 0.63 is the one
    # closest to 0.5.
    threshold, score = choose_threshold(labels, [0.1, 0.3, 0.62, 0.7, 0.9])
    assert (threshold, score) == (0.63, 1.0)
    # Perfect from 0.21 to 0.80: 0.5 itself wins.
    assert choose_threshold(labels, [0.1, 0.15, 0.2, 0.8, 0.9]) == (0.5, 1.0)
    # Below 0.5 when that is where the best split lies: (0.20, 0.30], the top end nearest.
    assert choose_threshold(labels, [0.05, 0.1, 0.2, 0.3, 0.35])[0] == 0.3
    # Hand-computed, labels [0, 0, 0, 1, 1], p [0.1, 0.4, 0.6, 0.55, 0.9]: thresholds in
    # (0.40, 0.55] give F1(QSO) = F1(STAR) = 4/5; (0.55, 0.60] 0.583; (0.60, 0.90] 0.762.
    assert choose_threshold(labels, [0.1, 0.4, 0.6, 0.55, 0.9]) == (0.5, pytest.approx(0.8))
    # Two equal best regions, (0.40, 0.45] and (0.54, 0.60] (macro-F1 (4/5 + 2/3) / 2 each),
    # 0.45 and 0.55 equally close to 0.5: the lower wins.
    threshold, score = choose_threshold([0, 1, 0, 1], [0.40, 0.45, 0.54, 0.60])
    assert threshold == 0.45 and score == pytest.approx((0.8 + 2 / 3) / 2)


def test_prior_correction_is_bayes_on_the_odds():
    p = np.array([0.0, 1e-6, 0.1, 0.5, 0.9, 1.0])
    assert np.array_equal(apply_prior(p, 0.0), p)
    shift = np.log(0.02 / 0.98) - np.log(0.3 / 0.7)
    lowered = apply_prior(p, shift)
    assert np.all(lowered[1:-1] < p[1:-1]) and lowered[0] == 0 and lowered[-1] == 1
    odds = lambda q: q / (1 - q)  # noqa: E731
    np.testing.assert_allclose(odds(lowered[2:5]), odds(p[2:5]) * (0.02 / 0.98) / (0.3 / 0.7))
    # Back again: the correction is invertible.
    np.testing.assert_allclose(apply_prior(lowered, -shift)[1:-1], p[1:-1], rtol=1e-9)
    metadata = {"training_qso_fraction": 0.3, "default_prior": 0.02}
    assert resolve_prior(metadata)["shift"] == pytest.approx(shift)
    assert resolve_prior(metadata, "train") == {
        "prior": 0.3, "source": "train", "shift": 0.0, "training_qso_fraction": 0.3,
        "training_qso_fraction_assumed": False, "note": None, "classes": ["STAR", "QSO"],
        "prior_vector": {"STAR": 0.7, "QSO": 0.3},
        "training_class_fractions": {"STAR": 0.7, "QSO": 0.3}}
    assert resolve_prior(metadata, 0.3)["shift"] == 0.0
    # An older model: no correction by default; a given prior uses the assumed 0.30.
    assert resolve_prior({})["shift"] == 0.0 and resolve_prior({})["prior"] is None
    legacy = resolve_prior({}, "0.02")
    assert legacy["shift"] == pytest.approx(shift) and legacy["training_qso_fraction_assumed"]
    assert "assumed training fraction of 0.3" in legacy["note"]


@pytest.mark.parametrize("bad", ["0", "1", "-1", "abc", "nan", "inf", "1.5", ""])
def test_bad_prior_values(bad):
    with pytest.raises(InputError, match="--prior must be .* strictly between 0 and 1"):
        parse_prior(bad)
    assert parse_prior(" TRAIN ") == "train" and parse_prior("0.3") == 0.3


def test_dihedral_views_are_the_eight_symmetries():
    image = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    views = dihedral_views(image)
    assert views.shape == (16, 4, 4, 1)
    flat = {views[i].tobytes() for i in range(0, 16, 2)}
    assert len(flat) == 8  # all distinct for an asymmetric image
    np.testing.assert_array_equal(views[0:2], image)
    np.testing.assert_array_equal(views[2:4], np.rot90(image, 1, axes=(1, 2)))


def _tta(predictor, images):
    """p(QSO) of ``predict --tta`` (the per-row core, no prior) for model-size cutouts."""
    block = Block([f"row{k}" for k in range(len(images))],
                  np.ascontiguousarray(np.moveaxis(images, -1, 1)),
                  [f"row {k}" for k in range(len(images))], {})
    classified = classify_block(block, predictor, SIZE, tta=True, uncertainty=False)
    assert classified.usable.all(), classified.flags
    return classified.probabilities


def test_tta_equals_plain_prediction_on_a_symmetric_cutout(deployable):
    def predictor(images):
        return np.asarray(deployable.predict_on_batch({"image": images})).ravel()

    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2
    profile = np.exp(-(xx ** 2 + yy ** 2) / 8.0)
    symmetric = (profile[None, :, :, None] * np.array([1, 2, 3, 4, 5])).astype("float32")
    symmetric = np.concatenate([symmetric, 0.5 * symmetric])
    np.testing.assert_allclose(_tta(predictor, symmetric), predictor(symmetric),
                               atol=1e-6)
    asymmetric = CUTOUTS.copy()
    asymmetric[:, :4, :8] += 5.0  # a bright patch in one corner
    assert np.max(np.abs(_tta(predictor, asymmetric) - predictor(asymmetric))) > 1e-4
    assert _tta(predictor, CUTOUTS[:0]).shape == (0,)


@pytest.mark.parametrize("tta", [False, True])
def test_classify_block_hands_back_the_other_outputs_of_its_classified_rows(tta):
    """``embed``'s way through the per-row core: a predictor's other outputs come back row by
    row (of the cutout as given), NaN where a row is not classified, and a non-finite one
    refuses its row."""
    from starqso.schema import QFLAG_BITS

    cutouts = CUTOUTS[:4].copy()
    cutouts[1] = 0.0  # all zeros: not classified
    cutouts[3, 0, 0, 0] = -7.0  # the predictor's vector is NaN for this cutout

    def predictor(images):
        vector = np.array(images[:, 0, 1, :], np.float32)
        vector[images[:, 0, 0, 0] == -7.0] = np.nan
        return {"p_qso": np.full(len(images), 0.4), "vector": vector}

    block = Block([f"row{k}" for k in range(4)], np.ascontiguousarray(np.moveaxis(cutouts, -1, 1)),
                  [f"row {k}" for k in range(4)], {})
    outputs = {}
    classified = classify_block(block, predictor, SIZE, tta=tta, uncertainty=False,
                                outputs=outputs)
    np.testing.assert_array_equal(classified.usable, [True, False, True, False])
    np.testing.assert_allclose(classified.probabilities[[0, 2]], 0.4)
    assert classified.flags[3] == "the model gave a non-finite output for this cutout"
    assert classified.qflag[3] & QFLAG_BITS["NOT_CLASSIFIED"]
    assert outputs["vector"].shape == (4, 5) and outputs["vector"].dtype == np.float32
    np.testing.assert_array_equal(outputs["vector"][[0, 2]], cutouts[[0, 2], 0, 1, :])
    assert np.isnan(outputs["vector"][[1, 3]]).all()


def test_metadata_keys_are_checked(tmp_path):
    from starqso.deploy.metadata import check_metadata as _check_metadata

    good = {"bands": "ugriz", "units": "nanomaggy", "layout": "NHWC",
            "class_names": ["STAR", "QSO"], "input_shape": [None, 16, 16, 5],
            "threshold": 0.55, "temperature": 1.4, "training_qso_fraction": 0.3,
            "default_prior": 0.02}
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(good))
    assert _check_metadata(path)["temperature"] == 1.4
    for key, value, fragment in (("temperature", 0, "temperature > 0"),
                                 ("temperature", "hot", "temperature='hot'"),
                                 ("default_prior", 1.0, "default_prior=1.0"),
                                 ("default_prior", True, "default_prior=True"),
                                 ("training_qso_fraction", -0.1, "training_qso_fraction=-0.1"),
                                 ("threshold", 2, "threshold=2")):
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(InputError, match="metadata.json") as info:
            _check_metadata(path)
        assert fragment in str(info.value) and "\n" not in str(info.value)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "training_qso_fraction"}))
    with pytest.raises(InputError, match="no training_qso_fraction"):
        _check_metadata(path)


def test_three_class_temperature_is_softmax_of_log_p_over_t_and_fits_an_over_confident_model():
    from starqso.deploy.calibration import (
        calibrate_classes,
        choose_threshold,
        class_decisions,
        fit_class_temperature,
    )

    p = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], "float32")
    layer = TemperatureScaling(2.0)
    np.testing.assert_allclose(np.asarray(layer(p)), calibrate_classes(p, 2.0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(TemperatureScaling(1.0)(p[[0, 2]])), p[[0, 2]],
                               atol=1e-6)
    # An over-confident model (right 70% of the time, always 98% sure) gets T > 1, and its
    # calibrated top probability lands near the 70% it earns.
    local = np.random.default_rng(0)
    labels = local.integers(0, 3, 3000)
    guess = np.where(local.random(3000) < 0.7, labels, (labels + 1) % 3)
    confident = np.full((3000, 3), 0.01)
    confident[np.arange(3000), guess] = 0.98
    temperature = fit_class_temperature(labels, confident)
    assert temperature > 1
    assert calibrate_classes(confident, temperature).max(axis=1).mean() == pytest.approx(
        0.7, abs=0.02)
    # QSO (code 1) at p(QSO) >= t, else the more probable other class.
    assert class_decisions([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]],
                           0.25).tolist() == [1, 1, 2]
    threshold, score = choose_threshold([0, 1, 2], [[0.6, 0.3, 0.1], [0.3, 0.4, 0.3],
                                                    [0.2, 0.35, 0.45]])
    assert score == 1.0 and 0.36 <= threshold <= 0.4
    with pytest.raises(InputError, match="at least two classes"):
        fit_class_temperature([2, 2], confident[:2])
