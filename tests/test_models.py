import keras
import numpy as np
import pytest
import tensorflow as tf

from starqso.models import (
    AperturePhotometry,
    ConditionalGAN,
    CutoutScaling,
    FeatureDiscriminator,
    FeatureGenerator,
    FusionClassifier,
    ImageClassifier,
    PhotometryClassifier,
    SpectrumClassifier,
    SpectrumEncoder,
    StarQSOClassifier,
)

SIZE, FEATURES, NOISE = 16, 8, 4
rng = np.random.default_rng(0)
IMAGES = rng.normal(0, 1, (6, SIZE, SIZE, 5)).astype("float32")
SPECTRA = rng.normal(0, 1, (6, 3700, 2)).astype("float32")
VECTORS = rng.uniform(-1, 1, (6, FEATURES)).astype("float32")
LABELS = np.array([0, 1, 0, 1, 1, 0], "float32").reshape(-1, 1)


def rng_images(size):
    return np.random.default_rng(1).normal(0, 1, (6, size, size, 5)).astype("float32")


def tiny_models():
    encoder = SpectrumEncoder(filters=(4, 8), feature_dim=FEATURES)
    generator = FeatureGenerator(SIZE, (4, 8), FEATURES, NOISE, 8, 0.1)
    fusion = FusionClassifier(SIZE, (4, 8), FEATURES, 8, 0.1)
    scaling = CutoutScaling([0.03, 0.01, 0.03, 0.03, 0.1], [0.1] * 5, [2.0] * 5)
    # The photometry variants need a 3" aperture and its sky border: 24-pixel cutouts.
    big = np.abs(rng_images(24))
    photometry = AperturePhotometry(24, [0.1] * 6, [2.0] * 6)
    generator_p = FeatureGenerator(24, (4, 8), FEATURES, NOISE, 8, 0.1, photometry_dim=6)
    fusion_p = FusionClassifier(24, (4, 8), FEATURES, 8, 0.1, photometry_dim=6)
    table = np.asarray(photometry(big))
    # CNNs on the central 16 pixels of a 24-pixel cutout, photometry on all of it.
    generator_c = FeatureGenerator(16, (4, 8), FEATURES, NOISE, 8, 0.1, photometry_dim=6)
    fusion_c = FusionClassifier(16, (4, 8), FEATURES, 8, 0.1, photometry_dim=6)
    # One trunk for both (model.shared_trunk): the fusion reads the generator's embedding.
    fusion_s = FusionClassifier(16, (4, 8), FEATURES, 8, 0.1, photometry_dim=6, embedding_dim=8)
    return {
        "shared_trunk_fusion": (fusion_s, {"embedding": np.abs(VECTORS), "features": VECTORS,
                                           "photometry": table}, (6, 1)),
        "shared_trunk_deployable": (StarQSOClassifier(scaling, generator_c, fusion_s, photometry,
                                                      image_size=24,
                                                      photometry_head=PhotometryClassifier(6, 8),
                                                      head_weight=0.3),
                                    {"image": big}, (6, 1)),
        "cropped_deployable": (StarQSOClassifier(scaling, generator_c, fusion_c, photometry,
                                                 image_size=24), {"image": big}, (6, 1)),
        "photometry_generator": (generator_p, {"image": big, "photometry": table,
                                               "noise": np.zeros((6, NOISE), "float32")},
                                 (6, FEATURES)),
        "photometry_fusion": (fusion_p, {"image": big, "features": VECTORS,
                                         "photometry": table}, (6, 1)),
        "photometry_deployable": (StarQSOClassifier(scaling, generator_p, fusion_p, photometry),
                                  {"image": big}, (6, 1)),
        "photometry_head": (PhotometryClassifier(6, 8, 0.1, 0.2), {"photometry": table},
                            (6, 1)),
        "deployable_with_head": (StarQSOClassifier(scaling, generator_c, fusion_c, photometry,
                                                   image_size=24,
                                                   photometry_head=PhotometryClassifier(6, 8),
                                                   head_weight=0.3),
                                 {"image": big}, (6, 1)),
        "encoder": (encoder, {"spectrum": SPECTRA}, (6, FEATURES)),
        "spectrum_classifier": (SpectrumClassifier(encoder, 0.1), {"spectrum": SPECTRA},
                                (6, 1)),
        "generator": (generator, {"image": IMAGES, "noise": np.zeros((6, NOISE), "float32")},
                      (6, FEATURES)),
        "discriminator": (FeatureDiscriminator(SIZE, (4, 8), FEATURES, 8, 0.1),
                          {"features": VECTORS, "image": IMAGES}, (6, 1)),
        "fusion": (fusion, {"image": IMAGES, "features": VECTORS}, (6, 1)),
        "image": (ImageClassifier(SIZE, (4, 8), 8, 0.1), {"image": IMAGES}, (6, 1)),
        "deployable": (StarQSOClassifier(scaling, generator, fusion),
                       {"image": np.abs(IMAGES)}, (6, 1)),
        # Three classes (STAR, QSO, GALAXY): softmax heads, (N, 3) outputs.
        "three_class_spectrum_classifier": (SpectrumClassifier(encoder, 0.1, num_classes=3),
                                            {"spectrum": SPECTRA}, (6, 3)),
        "three_class_image": (ImageClassifier(SIZE, (4, 8), 8, 0.1, num_classes=3),
                              {"image": IMAGES}, (6, 3)),
        "three_class_head": (PhotometryClassifier(6, 8, 0.1, 0.2, num_classes=3),
                             {"photometry": table}, (6, 3)),
        "three_class_deployable": (
            StarQSOClassifier(scaling, generator_c,
                              FusionClassifier(16, (4, 8), FEATURES, 8, 0.1, photometry_dim=6,
                                               embedding_dim=8, num_classes=3),
                              photometry, image_size=24,
                              photometry_head=PhotometryClassifier(6, 8, num_classes=3),
                              head_weight=0.3), {"image": big}, (6, 3)),
    }


@pytest.mark.parametrize("name", list(tiny_models()))
def test_shape_config_round_trip_and_keras_reload(name, tmp_path):
    model, inputs, shape = tiny_models()[name]
    outputs = np.asarray(model(inputs))
    assert outputs.shape == shape and np.all(np.isfinite(outputs))
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is type(model)
    np.testing.assert_allclose(np.asarray(reloaded(inputs)), outputs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["spectrum_classifier", "fusion", "image", "photometry_fusion",
                                  "photometry_head", "shared_trunk_fusion"])
def test_one_fit_step_gives_a_finite_loss(name):
    model, inputs, _ = tiny_models()[name]
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy())
    history = model.fit(inputs, LABELS, epochs=1, batch_size=6, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("name", ["three_class_spectrum_classifier", "three_class_image",
                                  "three_class_head"])
def test_three_class_models_compile_to_sparse_cross_entropy_and_train(name):
    model, inputs, _ = tiny_models()[name]
    model.compile(learning_rate=1e-2)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    labels = np.array([0, 1, 2, 0, 1, 2], "float32").reshape(-1, 1)
    history = model.fit(inputs, labels, epochs=2, batch_size=6, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.asarray(model(inputs)).sum(axis=1) == pytest.approx(np.ones(6), abs=1e-5)


def test_three_class_deployable_blends_softmax_log_probabilities_and_exports(tmp_path):
    from starqso.deploy.tflite import convert_tflite, write_saved_model
    from starqso.inference import LiteRTPredictor
    from starqso.models.calibration import BLEND_EPSILON, CalibratedClassifier

    model, inputs, _ = tiny_models()["three_class_deployable"]
    assert model.num_classes == 3
    expected = np.asarray(model(inputs), np.float64)
    # The blend is softmax((1 - w) log(p_fusion + eps) + w log(p_head + eps)), w = 0.3.
    fusion = np.asarray(model.replaced(head_weight=0.0)(inputs), np.float64)
    head = np.asarray(model.replaced(head_weight=1.0)(inputs), np.float64)
    mixed = 0.7 * np.log(fusion + BLEND_EPSILON) + 0.3 * np.log(head + BLEND_EPSILON)
    np.testing.assert_allclose(expected, np.exp(mixed) / np.exp(mixed).sum(axis=1,
                                                                          keepdims=True),
                               atol=1e-5)
    parts = model.embedding_model()(inputs)
    assert sorted(parts) == ["probabilities", "vector"]
    np.testing.assert_allclose(np.asarray(parts["probabilities"]), expected, atol=1e-6)
    calibrated = CalibratedClassifier(model, 2.0)
    scaled = np.asarray(calibrated(inputs), np.float64)
    logs = np.log(np.clip(expected, 1e-7, 1)) / 2.0
    manual = np.exp(logs) / np.exp(logs).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scaled, manual, atol=1e-5)
    write_saved_model(calibrated, tmp_path / "saved_model")
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(image=tf.constant(inputs["image"]))["probabilities"]
                               .numpy(), scaled, atol=1e-6)
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(convert_tflite(tmp_path / "saved_model", "fp32"))
    np.testing.assert_allclose(LiteRTPredictor(path)(inputs["image"]), scaled, atol=1e-5)


def test_a_deployable_refuses_heads_of_different_class_counts():
    model, _, _ = tiny_models()["three_class_deployable"]
    with pytest.raises(ValueError, match="same classes"):
        model.replaced(photometry_head=PhotometryClassifier(6, 8))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        ImageClassifier(SIZE, (4, 8), 8, num_classes=1)


def test_deployable_model_scales_raw_cutouts_inside():
    models = tiny_models()
    deployable, inputs, _ = models["deployable"]
    generator, fusion = deployable.generator, deployable.fusion
    scaled = np.asarray(deployable.scaling(inputs["image"]))
    expected_scaled = (np.arcsinh(inputs["image"] / np.array(deployable.scaling.softening))
                       - 0.1) / 2.0
    np.testing.assert_allclose(scaled, expected_scaled, rtol=1e-4, atol=1e-5)
    features = np.asarray(generator({"image": scaled,
                                     "noise": np.zeros((6, NOISE), "float32")}))
    expected = fusion({"image": scaled, "features": features})
    np.testing.assert_allclose(np.asarray(deployable(inputs)), np.asarray(expected),
                               rtol=1e-5, atol=1e-6)


def test_cropped_deployable_feeds_the_centre_to_the_cnns_and_all_pixels_to_photometry():
    deployable, inputs, _ = tiny_models()["cropped_deployable"]
    big = inputs["image"]
    scaled = np.asarray(deployable.scaling(big[:, 4:20, 4:20]))
    table = np.asarray(deployable.photometry(big))
    features = np.asarray(deployable.generator({"image": scaled, "photometry": table,
                                                "noise": np.zeros((6, NOISE), "float32")}))
    expected = deployable.fusion({"image": scaled, "features": features, "photometry": table})
    np.testing.assert_allclose(np.asarray(deployable(inputs)), np.asarray(expected),
                               rtol=1e-5, atol=1e-6)
    assert deployable.image_size == 24 and deployable.get_config()["image_size"] == 24


@pytest.mark.parametrize("image_size", [12, 23])
def test_cropped_deployable_refuses_a_smaller_or_odd_margin_input(image_size):
    generator = FeatureGenerator(16, (4,), FEATURES, NOISE, 8, 0.0)
    fusion = FusionClassifier(16, (4,), FEATURES, 8, 0.0)
    scaling = CutoutScaling([0.03] * 5, [0.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match="even number of pixels"):
        StarQSOClassifier(scaling, generator, fusion, image_size=image_size)


def _gan(strategy, teacher=None):
    with strategy.scope():
        generator = FeatureGenerator(SIZE, (4,), FEATURES, NOISE, 8, 0.0)
        discriminator = FeatureDiscriminator(SIZE, (4,), FEATURES, 8, 0.0)
        gan = ConditionalGAN(generator, discriminator, reconstruction_weight=5.0, seed=3,
                             teacher=teacher, distillation_weight=1.0)
        gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
        gan.build_optimizers()
    return gan


def test_gan_trains_one_epoch_and_reloads(tmp_path):
    gan = _gan(tf.distribute.get_strategy())
    history = gan.fit({"image": IMAGES}, VECTORS, epochs=2, batch_size=3, verbose=0)
    for key in ("generator_loss", "discriminator_loss", "reconstruction"):
        assert np.all(np.isfinite(history.history[key]))
    gan.save(tmp_path / "gan.keras")
    reloaded = keras.saving.load_model(tmp_path / "gan.keras", safe_mode=True)
    noise = np.zeros((6, NOISE), "float32")
    np.testing.assert_allclose(
        np.asarray(reloaded.generator({"image": IMAGES, "noise": noise})),
        np.asarray(gan.generator({"image": IMAGES, "noise": noise})), atol=1e-6)


def test_gan_with_distillation_teacher_trains_under_two_replica_mirrored_strategy():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest should configure two logical CPUs"
    # ReductionToOneDevice, not the default collectives: collective ops of one 2-replica
    # MirroredStrategy leave state behind (instance keys bound to the first model's
    # gradient shapes) that breaks any later one in the same pytest process.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        teacher = keras.layers.Dense(1, activation="sigmoid", name="p_qso")
        teacher.build((None, FEATURES))
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    gan = _gan(strategy, teacher=teacher)
    dataset = tf.data.Dataset.from_tensor_slices(({"image": IMAGES}, VECTORS)).batch(6)
    before = [w.copy() for w in gan.generator.get_weights()]
    history = gan.fit(dataset, validation_data=dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["generator_loss"]))
    assert np.all(np.isfinite(history.history["distillation"]))
    assert np.isfinite(history.history["val_reconstruction"][-1])
    changed = [not np.array_equal(a, b) for a, b in zip(before, gan.generator.get_weights(),
                                                        strict=False)]
    assert any(changed)
    # The teacher is the frozen spectrum head: distillation must never train it.
    for kept, now in zip(teacher_weights, teacher.get_weights(), strict=False):
        np.testing.assert_array_equal(kept, now)
    assert ConditionalGAN.from_config(gan.get_config()).distillation_weight == 1.0


def test_aperture_photometry_layer_matches_the_numpy_photometry():
    from starqso.preprocessing.photometry import photometric_features

    rng = np.random.default_rng(3)
    cutouts = rng.normal(0, 0.05, (5, 32, 32, 5)).astype("float32")
    yy, xx = np.mgrid[0:32, 0:32] - 15.5
    star = np.exp(-(xx ** 2 + yy ** 2) / (2 * 2.0 ** 2))[None, :, :, None]
    cutouts += star * np.array([1.0, 3.0, 5.0, 6.0, 7.0])[None, None, None, :] * \
        np.array([0.1, 1.0, 10.0, 100.0, 0.01])[:, None, None, None]
    expected = photometric_features(cutouts)
    layer = AperturePhotometry(32, expected.mean(axis=0), expected.std(axis=0))
    got = np.asarray(layer(cutouts)) * expected.std(axis=0) + expected.mean(axis=0)
    # float32 rounding of ~20 mag values (ulp 1.9e-6) through the standardisation round trip
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The same on a sky pedestal: the layer subtracts the sky per pixel (after an offset), so
    # float32 sums do not cancel.
    pedestal = np.array([0.1, 0.05, 0.2, 0.3, 0.8], "float32")
    got = np.asarray(layer(cutouts + pedestal)) * expected.std(axis=0) + expected.mean(axis=0)
    np.testing.assert_allclose(got, photometric_features(cutouts + pedestal), atol=1e-5)
    np.testing.assert_allclose(photometric_features(cutouts + pedestal), expected, atol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        AperturePhotometry(16)


def test_psf_weighted_photometry_layer_matches_numpy_and_recovers_a_point_source():
    from starqso.preprocessing.photometry import (
        feature_names,
        photometric_features,
        weighted_fluxes,
    )
    from starqso.schema import PIXEL_SCALE_ARCSEC

    rng = np.random.default_rng(4)
    fwhm = (0.9, 1.5, 2.4)
    yy, xx = np.mgrid[0:32, 0:32] - 15.5
    sigma = 1.5 / PIXEL_SCALE_ARCSEC / 2.3548
    psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    psf /= psf.sum()
    total = np.array([2.0, 5.0, 8.0, 9.0, 10.0])
    noiseless = (psf[None, :, :, None] * total).astype("float32") + 0.3  # a sky pedestal
    # The weight that matches the PSF returns the total flux (the PSF's 1% beyond 3" aside).
    np.testing.assert_allclose(weighted_fluxes(noiseless, 1.5)[0], total, rtol=0.02)
    cutouts = noiseless + rng.normal(0, 0.05, (6, 32, 32, 5)).astype("float32")
    expected = photometric_features(cutouts, fwhm)
    assert expected.shape == (6, 21) and len(feature_names(fwhm)) == 21
    np.testing.assert_array_equal(expected[:, :6], photometric_features(cutouts))
    layer = AperturePhotometry(32, expected.mean(axis=0), expected.std(axis=0) + 1e-3,
                               weighted_fwhm=fwhm)
    assert layer.NUM_FEATURES == 21 and AperturePhotometry(32).NUM_FEATURES == 6
    got = np.asarray(layer(cutouts)) * (expected.std(axis=0) + 1e-3) + expected.mean(axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    again = AperturePhotometry.from_config(layer.get_config())
    np.testing.assert_array_equal(np.asarray(again(cutouts)), np.asarray(layer(cutouts)))
    # Models saved before the weighted fluxes have no weighted_fwhm key and load as 6 features.
    assert "weighted_fwhm" not in AperturePhotometry(32).get_config()
    for bad in ((0.0,), "1.5", (7.0,)):
        with pytest.raises(ValueError, match="weighted_fwhm"):
            AperturePhotometry(32, weighted_fwhm=bad)
    with pytest.raises(ValueError, match="21 numbers"):
        AperturePhotometry(32, [0.0] * 6, [1.0] * 6, weighted_fwhm=fwhm)


def test_deployable_refuses_photometry_models_without_the_layer():
    generator = FeatureGenerator(24, (4,), FEATURES, NOISE, 8, 0.0, photometry_dim=6)
    fusion = FusionClassifier(24, (4,), FEATURES, 8, 0.0, photometry_dim=6)
    scaling = CutoutScaling([0.03] * 5, [0.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match="AperturePhotometry"):
        StarQSOClassifier(scaling, generator, fusion)


def test_deployable_blends_the_photometry_head_logit_by_its_weight():
    from starqso.models.calibration import blend_logit as logit
    from starqso.probability import sigmoid

    model, inputs, _ = tiny_models()["deployable_with_head"]
    plain = StarQSOClassifier(model.scaling, model.generator, model.fusion, model.photometry,
                              image_size=24)
    p_fusion = np.asarray(plain(inputs)).ravel()
    p_head = np.asarray(model.photometry_head(
        {"photometry": np.asarray(model.photometry(inputs["image"]))})).ravel()
    expected = sigmoid(0.7 * logit(p_fusion) + 0.3 * logit(p_head))
    # float32 graph vs float64 NumPy on random weights: a few float32 ulps apart.
    np.testing.assert_allclose(np.asarray(model(inputs)).ravel(), expected, atol=1e-5)
    assert model.get_config()["head_weight"] == 0.3
    # Weight 0 is the fusion classifier alone, 1 the head alone.
    for weight, alone in ((0.0, p_fusion), (1.0, p_head)):
        blended = StarQSOClassifier(model.scaling, model.generator, model.fusion,
                                    model.photometry, image_size=24,
                                    photometry_head=model.photometry_head, head_weight=weight)
        np.testing.assert_allclose(np.asarray(blended(inputs)).ravel(), alone, atol=1e-5)
    # Saturated probabilities (an int8 sigmoid reaches 0 and 1) keep finite log-odds.
    from starqso.models import LogitBlend

    ends = np.asarray(LogitBlend(0.5)([np.array([[0.0], [1.0]], "float32"),
                                       np.array([[0.0], [1.0]], "float32")])).ravel()
    assert np.all(np.isfinite(ends)) and ends[0] < 0.01 and ends[1] > 0.99
    with pytest.raises(ValueError, match="weight"):
        LogitBlend(-0.1)
    with pytest.raises(ValueError, match="head_weight"):
        StarQSOClassifier(model.scaling, model.generator, model.fusion, model.photometry,
                          image_size=24, photometry_head=model.photometry_head, head_weight=1.5)
    with pytest.raises(ValueError, match="photometry_head"):
        StarQSOClassifier(model.scaling, model.generator, model.fusion, model.photometry,
                          image_size=24, photometry_head=PhotometryClassifier(21, 8))
    with pytest.raises(ValueError, match="photometry_dim"):
        PhotometryClassifier(0)
    for bad in (-0.1, "0.2", True, float("nan")):
        with pytest.raises(ValueError, match="input_noise"):
            PhotometryClassifier(6, input_noise=bad)


def test_the_head_input_noise_acts_while_training_only():
    noisy = PhotometryClassifier(6, 8, 0.0, 0.5)
    plain = PhotometryClassifier(6, 8, 0.0)
    plain.set_weights(noisy.get_weights())
    table = {"photometry": np.random.default_rng(0).normal(size=(32, 6)).astype("float32")}
    inference = np.asarray(noisy(table, training=False))
    np.testing.assert_allclose(inference, np.asarray(plain(table, training=False)), rtol=1e-6)
    np.testing.assert_allclose(inference, np.asarray(noisy(table, training=False)), rtol=1e-6)
    assert np.max(np.abs(np.asarray(noisy(table, training=True)) - inference)) > 1e-3
    assert noisy.get_config()["input_noise"] == 0.5


def test_deployable_with_head_saved_model_and_tflite_match_keras(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from starqso.deploy.tflite import convert_tflite, write_saved_model
    from starqso.inference import LiteRTPredictor

    model, inputs, _ = tiny_models()["deployable_with_head"]
    expected = np.asarray(model(inputs)).ravel()
    write_saved_model(model, tmp_path / "saved_model")
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(image=tf.constant(inputs["image"]))["p_qso"].numpy()
                               .ravel(), expected, atol=1e-6)
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(convert_tflite(tmp_path / "saved_model", "fp32"))
    np.testing.assert_allclose(LiteRTPredictor(path)(inputs["image"]), expected, atol=1e-5)
    ops = {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}
    assert not any("Flex" in name for name in ops)


def test_shared_trunk_deployable_runs_one_cnn_and_matches_its_parts(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from starqso.deploy.tflite import convert_tflite, write_saved_model
    from starqso.inference import LiteRTPredictor
    from starqso.models import LogitBlend
    from starqso.models.classifiers import generator_with_embedding

    model, inputs, _ = tiny_models()["shared_trunk_deployable"]
    expected = np.asarray(model(inputs)).ravel()
    # The fusion reads the very embedding and vector the generator makes of the scaled centre.
    centre = np.asarray(model.scaling(inputs["image"][:, 4:20, 4:20]))
    photometry = np.asarray(model.photometry(inputs["image"]))
    parts = generator_with_embedding(model.generator)(
        {"image": centre, "noise": np.zeros((6, NOISE), "float32"), "photometry": photometry})
    parts = {key: np.asarray(value) for key, value in parts.items()}
    p_fusion = np.asarray(model.fusion({"embedding": parts["embedding"],
                                        "features": parts["features"],
                                        "photometry": photometry})).ravel()
    p_head = np.asarray(model.photometry_head({"photometry": photometry})).ravel()
    blended = np.asarray(LogitBlend(0.3)([p_fusion[:, None], p_head[:, None]])).ravel()
    np.testing.assert_allclose(expected, blended, atol=1e-6)
    vector = np.asarray(model.embedding_model()({"image": inputs["image"]})["vector"])
    np.testing.assert_allclose(vector, parts["features"], atol=1e-6)
    write_saved_model(model, tmp_path / "saved_model")
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(convert_tflite(tmp_path / "saved_model", "fp32"))
    np.testing.assert_allclose(LiteRTPredictor(path)(inputs["image"]), expected, atol=1e-5)
    ops = [op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()]
    # The generator's four 3 x 3 convolutions and the scaling's 1 x 1: one trunk, not two.
    assert ops.count("CONV_2D") == 5


def test_blend_weight_picks_the_better_classifier_on_validation():
    from starqso.training.stages import BLEND_GRID, blend_weight

    labels = np.random.default_rng(0).integers(0, 2, 400)
    good = np.where(labels == 1, 0.8, 0.2)
    noise = np.random.default_rng(1).uniform(0.3, 0.7, 400)
    assert blend_weight(labels, noise, good) == 1.0
    assert blend_weight(labels, good, noise) == 0.0
    # Saturated probabilities (p exactly 0 or 1) keep every weight's loss finite.
    saturated = np.where(labels == 1, 1.0, 0.0)
    assert blend_weight(labels, noise, saturated) == 1.0
    assert 0.0 < blend_weight(labels, np.where(labels == 1, 0.6, 0.4), good) <= 1.0
    assert set(BLEND_GRID) >= {0.0, 0.5, 1.0}


def test_attaching_a_metric_head_keeps_the_blended_photometry_head():
    from starqso.models.metric import MetricHead

    model, inputs, _ = tiny_models()["deployable_with_head"]
    # As the export attaches the metric stage's head.
    attached = model.replaced(metric_head=MetricHead(feature_dim=FEATURES, hidden_units=8,
                                                     embedding_dim=4))
    assert attached.photometry_head is model.photometry_head
    assert attached.head_weight == model.head_weight == 0.3
    assert attached.metric_head is not None
    np.testing.assert_allclose(np.asarray(attached(inputs)), np.asarray(model(inputs)),
                               atol=1e-6)
    assert attached.embedding_model()(inputs)["metric"].shape == (6, 4)


def test_finetuning_a_model_that_is_its_photometry_head_alone_trains_the_head():
    from starqso.models import FineTuner

    model, inputs, _ = tiny_models()["deployable_with_head"]
    # Blend weight 1: the deployed graph is the photometry head; the fusion head's layers get
    # no gradients, which must not stop the photometry head's from being applied.
    alone = StarQSOClassifier(model.scaling, model.generator, model.fusion, model.photometry,
                              image_size=24, photometry_head=model.photometry_head,
                              head_weight=1.0)
    # Deeper blocks could not change p(QSO): asking for them is an error, not a silent no-op.
    for depth in (1, "all"):
        with pytest.raises(ValueError, match="photometry head alone"):
            FineTuner(alone, train_depth=depth)
    tuner = FineTuner(alone, train_depth="head")
    tuner.compile(learning_rate=1e-2)
    head_before = [np.array(w) for w in alone.photometry_head.get_weights()]
    fusion_before = [np.array(w) for w in alone.fusion.get_weights()]
    labels = np.array([[0], [1], [0], [1], [1], [0]], "float32")
    tuner.fit(inputs, labels, epochs=1, batch_size=6, verbose=0)
    assert any(np.abs(a - np.array(b)).max() > 0
               for a, b in zip(head_before, alone.photometry_head.get_weights(), strict=False))
    for a, b in zip(fusion_before, alone.fusion.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_finetuning_a_shared_trunk_model_trains_the_generators_trunk_block():
    from starqso.models import FineTuner

    model, inputs, _ = tiny_models()["shared_trunk_deployable"]
    tuner = FineTuner(model, train_depth=1)
    # The trunk block is the generator's: the one trunk both read.
    generator = tuner.classifier.generator
    assert generator.get_layer("trunk_conv1_0").trainable
    assert not generator.get_layer("trunk_conv0_0").trainable
    assert not generator.get_layer("features").trainable
    assert tuner.classifier.fusion.get_layer("embedding_dense").trainable
    deeper, shallower = (np.array(generator.get_layer(name).get_weights()[0])
                         for name in ("trunk_conv1_0", "trunk_conv0_0"))
    tuner.compile(learning_rate=1e-2)
    labels = np.array([[0], [1], [0], [1], [1], [0]], "float32")
    tuner.fit(inputs, labels, epochs=1, batch_size=6, verbose=0)
    assert not np.array_equal(deeper, generator.get_layer("trunk_conv1_0").get_weights()[0])
    np.testing.assert_array_equal(shallower,
                                  generator.get_layer("trunk_conv0_0").get_weights()[0])


def test_cutout_scaling_matches_the_numpy_stretch_and_floors_dead_pixels():
    from starqso.preprocessing.scaling import ASINH_FLOOR, asinh_stretch

    softening = [0.04, 0.018, 0.033, 0.047, 0.17]
    mean, std = [0.3, 0.5, 0.4, 0.4, 0.3], [1.0, 1.4, 1.3, 1.2, 1.1]
    x = np.random.default_rng(0).normal(0, 0.05, (4, 8, 8, 5)).astype("float32")
    x[0, 0, 0] = [1e4, 30.0, -0.5, -1.0, 2.0]  # bright cores and noise-sized negatives
    x[1, 0, 0] = [-1e6, -3e3, -1e2, -1e7, -50.0]  # dead or corrupt pixels, far below the sky
    scaled = np.asarray(CutoutScaling(softening, mean, std)(x))
    expected = (asinh_stretch(x, softening) - np.array(mean)) / np.array(std)
    assert np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled, expected, atol=2e-3)
    typical = np.abs(x / np.array(softening)) < 30
    np.testing.assert_allclose(scaled[typical], expected[typical], atol=2e-5)
    floor = (-ASINH_FLOOR - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(scaled[1, 0, 0, :4], floor[:4], atol=1e-5)
