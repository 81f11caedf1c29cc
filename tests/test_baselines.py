import numpy as np
import pytest

from starqso.data import ObjectArrays
from starqso.errors import InputError
from starqso.evaluation.baselines import CLASSICAL, fit_classical, make_classical, predict_classical
from starqso.preprocessing.photometry import (
    FEATURE_NAMES,
    aperture_fluxes,
    asinh_magnitudes,
    photometric_features,
)


def point_source(fluxes, size=32, sigma=1.5, sky=0.0):
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    profile = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
    return (np.asarray(fluxes)[None, None, :] * profile[:, :, None] + sky)[None]


def test_aperture_photometry_recovers_flux_and_removes_sky():
    fluxes = np.array([2.0, 5.0, 10.0, 12.0, 15.0])
    measured = aperture_fluxes(point_source(fluxes, sky=0.3))[0]
    np.testing.assert_allclose(measured, fluxes, rtol=0.01)
    # Well above the softening b, asinh magnitudes are Pogson magnitudes 22.5 - 2.5 log10(f).
    np.testing.assert_allclose(asinh_magnitudes(fluxes), 22.5 - 2.5 * np.log10(fluxes),
                               atol=0.01)
    features = photometric_features(point_source(fluxes))
    assert features.shape == (1, len(FEATURE_NAMES))
    np.testing.assert_allclose(features[0, 1], -2.5 * np.log10(5.0 / 10.0), atol=0.01)


def test_photometry_rejects_wrong_shapes():
    with pytest.raises(InputError, match=r"\(N, S, S, 5\). Received: shape=\(2, 5, 32, 32\)"):
        aperture_fluxes(np.zeros((2, 5, 32, 32)))
    with pytest.raises(InputError, match="too small"):
        aperture_fluxes(np.zeros((1, 16, 16, 5)))


def test_classical_baselines_fit_and_predict_on_a_tiny_simulation():
    arrays = ObjectArrays.from_simulation(60, seed=5, image_size=32, workers=1)
    features = photometric_features(arrays.images)
    labels = arrays.labels.astype(int)
    assert np.isfinite(features).all() and 0 < labels.sum() < len(labels)
    models = fit_classical(features[:40], labels[:40], seed=0)
    assert sorted(models) == sorted(CLASSICAL)
    for name, model in models.items():
        probabilities = predict_classical(model, features[40:])
        assert probabilities.shape == (20,), name
        assert np.all((probabilities >= 0) & (probabilities <= 1)), name
    # Colours separate the simulated classes: the boosted trees must beat the majority class.
    accuracy = np.mean((predict_classical(models["gradient_boosting"], features[40:]) >= 0.5)
                       == labels[40:])
    assert accuracy > max(labels[40:].mean(), 1 - labels[40:].mean())


def test_classical_baselines_reject_bad_training_input():
    with pytest.raises(InputError, match="unknown|must be one of"):
        make_classical("svm")
    with pytest.raises(InputError, match="non-finite value in row 1"):
        fit_classical(np.array([[0.0], [np.nan]]), [0, 1])
    with pytest.raises(InputError, match="both classes"):
        fit_classical(np.zeros((4, 2)), [1, 1, 1, 1])
