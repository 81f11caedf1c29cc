"""The conditional diffusion generator of the spectral vector (starqso.models.diffusion)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from starqso.models import AperturePhotometry, CutoutScaling, FusionClassifier, StarQSOClassifier
from starqso.models.diffusion import (
    ConditionalDiffusion,
    ConstantTimestep,
    DDIMStep,
    DiffusionGenerator,
    FeatureDenoiser,
    NoiseFromVelocity,
    TimestepEmbedding,
    alpha_bar_schedule,
    sampling_timesteps,
)

SIZE, FEATURES, UNITS = 16, 8, 8
rng = np.random.default_rng(0)
IMAGES = rng.normal(0, 1, (6, SIZE, SIZE, 5)).astype("float32")
VECTORS = rng.uniform(-1, 1, (6, FEATURES)).astype("float32")
ZERO = np.zeros((6, FEATURES), "float32")


def _denoiser(size=SIZE, photometry_dim=0, units=UNITS, dropout=0.1):
    return FeatureDenoiser(size, (4, 8), FEATURES, units, dropout, photometry_dim, trunk="cnn")


def _cosine(t, timesteps):
    return np.cos((t / timesteps + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(
        0.008 / 1.008 * np.pi / 2) ** 2


def _ddim_reference(x_t, eps, a, a_next):
    x0 = np.clip((x_t - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
    return np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps


def test_cosine_schedule_endpoints_monotonicity_and_sampling_timesteps():
    alpha_bar = alpha_bar_schedule(1000)
    assert alpha_bar.dtype == np.float64 and alpha_bar.shape == (1001,)
    assert alpha_bar[0] == 1.0
    assert np.all(np.diff(alpha_bar) < 0)
    # Nichol & Dhariwal's closed form up to T - 1; their beta clip (0.999) only acts at t = T,
    # which it keeps above zero (f(T) = 0 would make the first DDIM step divide by zero).
    t = np.arange(1000)
    np.testing.assert_allclose(alpha_bar[:-1], _cosine(t, 1000), rtol=1e-10)
    assert 1 - alpha_bar[-1] / alpha_bar[-2] == pytest.approx(0.999)
    assert 0 < alpha_bar[-1] < 1e-8
    small = alpha_bar_schedule(10)
    assert small.shape == (11,) and small[0] == 1.0 and np.all(np.diff(small) < 0)

    assert sampling_timesteps(4, 1000).tolist() == [1000, 750, 500, 250, 0]
    assert sampling_timesteps(3, 10).tolist() == [10, 7, 3, 0]
    assert sampling_timesteps(10, 10).tolist() == list(range(10, -1, -1))
    for bad in ({"steps": 11, "timesteps": 10}, {"steps": 0}, {"steps": 2.5}):
        with pytest.raises(ValueError, match="Received"):
            sampling_timesteps(**bad)
    with pytest.raises(ValueError, match="Received: timesteps=0"):
        alpha_bar_schedule(0)


def test_ddim_step_matches_numpy_and_recovers_x0_from_the_true_noise():
    generator = np.random.default_rng(1)
    x0 = generator.uniform(-1, 1, (5, FEATURES)).astype("float32")
    eps = generator.normal(size=(5, FEATURES)).astype("float32")
    alpha_bar = alpha_bar_schedule(1000)
    for t, t_next in ((750, 500), (500, 250), (250, 0)):
        a, a_next = alpha_bar[t], alpha_bar[t_next]
        step = DDIMStep(a, a_next)
        x_t = (np.sqrt(a) * x0 + np.sqrt(1 - a) * eps).astype("float32")
        # The true eps gives the true x0: the step lands exactly on x_{t_next}.
        np.testing.assert_allclose(np.asarray(step([x_t, eps])),
                                   np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps,
                                   atol=2e-6)
        # Any (x_t, eps), with the x0 estimate clipped to [-1, 1] (half of these are outside).
        wild = (3 * generator.normal(size=x_t.shape)).astype("float32")
        np.testing.assert_allclose(np.asarray(step([wild, eps])),
                                   _ddim_reference(wild, eps, a, a_next), atol=2e-6)
    # Onto t = 0 the step returns its x0 estimate itself.
    np.testing.assert_allclose(np.asarray(DDIMStep(alpha_bar[250], 1.0)([x_t, eps])), x0,
                               atol=2e-6)
    clone = DDIMStep.from_config(step.get_config())
    assert clone.get_config() == step.get_config()
    np.testing.assert_array_equal(np.asarray(clone([wild, eps])), np.asarray(step([wild, eps])))
    with pytest.raises(ValueError, match="Received: alpha_bar=0.0"):
        DDIMStep(0.0, 1.0)


def test_timestep_layers_match_numpy():
    t = np.array([[0.0], [0.25], [1.0]], "float32")
    embedding = TimestepEmbedding(8)
    frequencies = np.geomspace(1.0, 50.0, 4)
    np.testing.assert_allclose(np.asarray(embedding(t)),
                               np.concatenate([np.sin(t * frequencies),
                                               np.cos(t * frequencies)], axis=1), atol=2e-5)
    assert TimestepEmbedding.from_config(embedding.get_config()).get_config() == \
        embedding.get_config()
    with pytest.raises(ValueError, match="Received: dim=7"):
        TimestepEmbedding(7)

    filled = np.asarray(ConstantTimestep(0.75)(np.zeros((3, FEATURES), "float32")))
    np.testing.assert_array_equal(filled, np.full((3, 1), 0.75, "float32"))

    # The head's skip eps = sqrt(1 - a_t) x_t + sqrt(a_t) v uses the schedule's own a_t,
    # at both ends too (where float32 could lose it), so that the first DDIM step's x0 is
    # sqrt(a_T) x_T - v and not a difference of two numbers of 2e4.
    alpha_bar = alpha_bar_schedule(1000)
    steps = np.array([1, 250, 750, 999, 1000])
    times = (steps / 1000).astype("float32")[:, None]
    layer = NoiseFromVelocity(1000)
    ones, zeros = np.ones((5, 1), "float32"), np.zeros((5, 1), "float32")
    np.testing.assert_allclose(np.asarray(layer([ones, times, zeros]))[:, 0],
                               np.sqrt(1 - alpha_bar[steps]), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(layer([zeros, times, ones]))[:, 0],
                               np.sqrt(alpha_bar[steps]), rtol=2e-4)


def test_sampler_runs_the_ddim_steps_of_its_denoiser():
    denoiser = _denoiser()
    generator = DiffusionGenerator(denoiser, steps=3)
    assert (generator.noise_dim, generator.feature_dim, generator.image_size,
            generator.photometry_dim, generator.trunk) == (FEATURES, FEATURES, SIZE, 0, "cnn")
    # The reference: the whole denoiser (trunk included) at every step, DDIM in NumPy.
    alpha_bar = alpha_bar_schedule(1000)
    times = sampling_timesteps(3, 1000)

    def reference(noise):
        x = noise.astype(np.float64)
        for t, t_next in zip(times[:-1], times[1:], strict=False):
            eps = np.asarray(denoiser({"image": IMAGES, "noisy": x.astype("float32"),
                                       "timestep": np.full((6, 1), t / 1000, "float32")}))
            x = _ddim_reference(x, eps, alpha_bar[t], alpha_bar[t_next])
        return x

    np.testing.assert_allclose(np.asarray(generator({"image": IMAGES, "noise": ZERO})),
                               reference(ZERO), atol=1e-5)
    # With noise, the first step's x0 = (x_T - sqrt(1 - a_T) eps) / sqrt(a_T) loses float32
    # digits: eps = x_T + 5e-5 v is rounded to 6e-8 |x_T| before the division by 5e-5, so
    # either side is off by about 1e-3 |x_T| there (and 0.38 of that after the next step).
    noise = np.random.default_rng(2).normal(size=(6, FEATURES)).astype("float32")
    np.testing.assert_allclose(np.asarray(generator({"image": IMAGES, "noise": noise})),
                               reference(noise), atol=3e-3)
    assert generator.generator_inputs({"image": IMAGES, "photometry": None}, noise).keys() == \
        {"image", "noise"}
    with pytest.raises(ValueError, match="Received: timesteps=500"):
        DiffusionGenerator(denoiser, timesteps=500)


def test_zero_noise_is_deterministic_and_other_noise_gives_other_vectors():
    generator = DiffusionGenerator(_denoiser(), steps=4)
    first = np.asarray(generator({"image": IMAGES, "noise": ZERO}))
    np.testing.assert_array_equal(first, np.asarray(generator({"image": IMAGES, "noise": ZERO})))
    assert np.all(np.abs(first) <= 1.0)
    noise = np.random.default_rng(3)
    samples = [np.asarray(generator({"image": IMAGES, "noise": noise.normal(
        size=ZERO.shape).astype("float32")})) for _ in range(2)]
    for a, b in ((first, samples[0]), (samples[0], samples[1])):
        assert np.mean(np.abs(a - b)) > 1e-2


def _scaling():
    return CutoutScaling([0.03, 0.01, 0.03, 0.03, 0.1], [0.1] * 5, [2.0] * 5)


def _deployable(photometry=False):
    if not photometry:
        generator = DiffusionGenerator(_denoiser(), steps=4)
        return StarQSOClassifier(_scaling(), generator, FusionClassifier(
            SIZE, (4, 8), FEATURES, UNITS, 0.1)), np.abs(IMAGES)
    # The photometry needs a 3" aperture and its sky border: 24-pixel cutouts.
    generator = DiffusionGenerator(_denoiser(24, photometry_dim=6), steps=2)
    fusion = FusionClassifier(24, (4, 8), FEATURES, UNITS, 0.1, photometry_dim=6)
    cutouts = np.abs(np.random.default_rng(4).normal(0, 1, (6, 24, 24, 5))).astype("float32")
    return StarQSOClassifier(_scaling(), generator, fusion,
                             AperturePhotometry(24, [0.1] * 6, [2.0] * 6)), cutouts


def _cases():
    photometry = np.random.default_rng(5).normal(size=(6, 6)).astype("float32")
    times = np.linspace(0.1, 1.0, 6).astype("float32")[:, None]
    photometry_deployable, cutouts = _deployable(photometry=True)
    return {
        "denoiser": (_denoiser(photometry_dim=6), {"image": IMAGES, "noisy": VECTORS,
                                                   "timestep": times,
                                                   "photometry": photometry}),
        "generator": (DiffusionGenerator(_denoiser(), steps=3), {"image": IMAGES,
                                                                "noise": VECTORS}),
        "trainer": (ConditionalDiffusion(_denoiser(), steps=2, seed=1), {"image": IMAGES}),
        "deployable": (_deployable()[0], {"image": np.abs(IMAGES)}),
        "photometry_deployable": (photometry_deployable, {"image": cutouts}),
    }


def _outputs(model, inputs):
    if isinstance(model, ConditionalDiffusion):  # its call() samples: compare the sampler
        return np.asarray(model.generator({**inputs, "noise": ZERO}))
    return np.asarray(model(inputs))


@pytest.mark.parametrize("name", list(_cases()))
def test_config_round_trip_and_keras_reload(name, tmp_path):
    model, inputs = _cases()[name]
    outputs = _outputs(model, inputs)
    assert np.all(np.isfinite(outputs))
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    model.save(tmp_path / f"{name}.keras")
    reloaded = keras.saving.load_model(tmp_path / f"{name}.keras", safe_mode=True)
    assert type(reloaded) is type(model)
    np.testing.assert_allclose(_outputs(reloaded, inputs), outputs, rtol=1e-6, atol=1e-6)


def _learnable(count, generator):
    """Vectors a fixed function of the image: tanh(1.5 m d), m the brightness of all bands."""
    direction = np.random.default_rng(42).uniform(-1, 1, FEATURES)
    brightness = generator.normal(0, 1, (count, 1)).astype("float32")
    images = (generator.normal(0, 0.5, (count, SIZE, SIZE, 5))
              + brightness[:, :, None, None]).astype("float32")
    return {"image": images}, np.tanh(1.5 * brightness * direction).astype("float32")


def test_training_lowers_the_reconstruction_and_the_trained_trainer_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    data = np.random.default_rng(0)
    train, validation = _learnable(256, data), _learnable(64, data)
    trainer = ConditionalDiffusion(_denoiser(units=32, dropout=0.0), steps=4, seed=0)
    trainer.compile(learning_rate=3e-3)
    before = trainer.evaluate(*validation, batch_size=32, verbose=0, return_dict=True)
    history = trainer.fit(*train, batch_size=32, epochs=10, validation_data=validation,
                          verbose=0).history
    after = history["val_reconstruction"][-1]
    assert np.all(np.isfinite(history["denoising_loss"]))
    assert history["denoising_loss"][-1] < history["denoising_loss"][0]
    assert after < 0.5 * before["reconstruction"]
    # Better than the best vector that ignores the image: the sampler uses the condition.
    blind = np.mean((validation[1] - train[1].mean(axis=0)) ** 2)
    assert after < 0.8 * blind

    trainer.save(tmp_path / "trainer.keras")
    reloaded = keras.saving.load_model(tmp_path / "trainer.keras", safe_mode=True)
    inputs = {"image": validation[0]["image"][:6], "noise": ZERO}
    np.testing.assert_allclose(np.asarray(reloaded.generator(inputs)),
                               np.asarray(trainer.generator(inputs)), atol=1e-6)
    assert int(reloaded.optimizer.iterations) == int(trainer.optimizer.iterations) == 80


def _mirrored():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest should configure two logical CPUs"
    # ReductionToOneDevice, not the default collectives: collective ops of one 2-replica
    # MirroredStrategy leave state behind (instance keys bound to the first model's
    # gradient shapes) that breaks any later one in the same pytest process.
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def test_trains_under_a_two_replica_mirrored_strategy_with_fit_and_the_custom_loop():
    from starqso.training.loop import distributed_fit

    strategy = _mirrored()
    with strategy.scope():
        trainer = ConditionalDiffusion(FeatureDenoiser(SIZE, (4,), FEATURES, UNITS, 0.0),
                                       steps=1, seed=3)
        trainer.compile(learning_rate=1e-3)
        trainer.build_optimizers()
    # Each replica draws its own timesteps and noise for its slice of the batch.
    seeds = strategy.experimental_local_results(strategy.run(
        tf.function(lambda: trainer.replica_seeds()[0])))
    assert len(seeds) == 2 and not np.array_equal(*(np.asarray(s) for s in seeds))

    dataset = tf.data.Dataset.from_tensor_slices(({"image": IMAGES}, VECTORS)).batch(6)
    before = [w.copy() for w in trainer.denoiser.get_weights()]
    history = trainer.fit(dataset, validation_data=dataset, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["denoising_loss"]))
    assert np.all(np.isfinite(history["val_reconstruction"]))
    changed = [not np.array_equal(a, b) for a, b in zip(before, trainer.denoiser.get_weights(),
                                                        strict=False)]
    assert any(changed)
    # The sampler shares the denoiser's weights: it validates what was trained.
    assert all(np.array_equal(a, b) for a, b in zip(trainer.generator.get_weights(),
                                                    trainer.denoiser.get_weights(), strict=False))

    # starqso.training.loop (the multi-worker path) runs the same train_step / test_step.
    lines = []
    loop_history = distributed_fit(trainer, strategy, dataset, dataset, 1,
                                   monitor="val_reconstruction", patience=2, log=lines.append)
    assert set(loop_history.history) == {"denoising_loss", "val_reconstruction"}
    assert np.isfinite(loop_history.history["val_reconstruction"][0]) and lines


def _run_tflite(flatbuffer, inputs):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default XNNPACK delegate every op stays visible to _get_ops_details.
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [(op["op_name"], tensors[op["inputs"][0]]["dtype"] if len(op["inputs"]) else None)
           for op in interpreter._get_ops_details()]
    return output, ops


def _convert_both(model, tmp_path, calibration):
    from starqso.deploy.tflite import convert_tflite, float_nodes, write_saved_model

    write_saved_model(model, tmp_path)
    fp32 = convert_tflite(tmp_path, "fp32")
    # As the export does: the photometry branch's first dense layer stays float.
    return fp32, convert_tflite(tmp_path, "int8", calibration, keep_float=float_nodes(fp32))


def _check_builtin(ops):
    names = {name for name, _ in ops}
    # Builtin ops only: no Flex, no random ops, no control flow (the steps are unrolled).
    assert not any("Flex" in name or "RANDOM" in name or name in ("WHILE", "IF", "CUSTOM")
                   for name in names), names
    assert {"SIN", "ABS", "FULLY_CONNECTED", "CONV_2D"} <= names


def test_deployable_converts_to_tflite_fp32_and_int8_with_builtin_ops(tmp_path):
    from starqso.models.layers import ZeroNoise

    keras.utils.set_random_seed(0)  # the int8 errors below depend on the weights
    model, _ = _deployable(photometry=True)
    generator = model.generator
    cutouts = np.abs(np.random.default_rng(6).normal(0, 1, (96, 24, 24, 5))).astype(
        "float32")
    check, calibration = cutouts[:48], cutouts[48:]

    # The deployable model: cutouts -> p(QSO).
    expected = np.asarray(model({"image": check}))
    fp32, int8 = _convert_both(model, tmp_path / "deployable", calibration)
    got_fp32, ops = _run_tflite(fp32, check)
    _check_builtin(ops)
    np.testing.assert_allclose(got_fp32, expected, atol=1e-5)
    got_int8, ops = _run_tflite(int8, check)
    _check_builtin(ops)
    # The network is quantised (int8 convolutions and dense layers)...
    assert ("CONV_2D", np.int8) in ops and ("FULLY_CONNECTED", np.int8) in ops
    # ...while the DDIM arithmetic, its clip (ABS) included, and the head's sines stay float.
    assert {dtype for name, dtype in ops if name in ("ABS", "SIN", "SQRT")} == {np.float32}
    # p(QSO): int8 activations carry about 1/255 of each tensor's range, through the trunks,
    # the head and the fusion classifier. Over six random initialisations of these models
    # max |dp| was 0.002-0.12 (0.12 here) and mean |dp| at most 0.011, with every label
    # kept; 0.2 is what the export accepts of the GAN's int8 model (tests/test_export.py).
    dp = np.abs(got_int8 - expected)
    assert np.max(dp) < 0.2 and np.mean(dp) < 0.03
    assert np.mean((got_int8 >= 0.5) == (expected >= 0.5)) >= 0.95

    # The vectors the diffusion generator feeds the fusion classifier, exported alike.
    image = keras.Input((24, 24, 5), name="image")
    scaled = model.scaling(image)
    vectors = generator(generator.generator_inputs(
        {"image": scaled, "photometry": model.photometry(image)},
        ZeroNoise(generator.noise_dim)(scaled)))
    vector_model = keras.Model({"image": image}, vectors)
    vector_model.image_size = 24
    expected = np.asarray(vector_model({"image": check}))
    fp32, int8 = _convert_both(vector_model, tmp_path / "vectors", calibration)
    np.testing.assert_allclose(_run_tflite(fp32, check)[0], expected, atol=1e-5)
    error = np.abs(_run_tflite(int8, check)[0] - expected)
    # A [-1, 1] tensor's int8 step is 2/255 = 0.008: on average the vector is within one
    # step (mean |dv| 0.002-0.008 over six initialisations). Single elements were off by
    # 0.03-0.17, the most where the int8 image trunk and photometry branch of the
    # conditioner (which the GAN's generator has too) moved the condition most (0.44 of its
    # 0-2.7 range; 0.03-0.23 for the others).
    assert np.mean(error) < 0.015 and np.max(error) < 0.25
