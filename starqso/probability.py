"""Probabilities and log-odds in NumPy: the one logit and sigmoid of export and predict.

Two kinds of model output meet here. A two-class (STAR/QSO) model gives p(QSO), (N,), and
its arithmetic is on the log-odds (:func:`logit`, :func:`temper`, :func:`apply_prior`). A
K-class model (STAR/QSO/GALAXY) gives an (N, K) matrix of class probabilities, each row
summing to 1, and the same operations act on its rows in log space
(:func:`temper_classes`, :func:`apply_class_prior`, :func:`calibrate_classes`); for K = 2
they give the two-class results up to rounding, but a two-class model keeps the scalar
functions, so its p(QSO) does not change by a bit.

NumPy only (no TensorFlow), so the LiteRT path of ``predict`` can use it.
"""

from __future__ import annotations

import numpy as np

from starqso.schema import EVIDENCE_SNR

#: p(QSO) is clipped to [EPSILON, 1 - EPSILON] before the calibration's logit: float32 rounds
#: a confident p to exactly 0 or 1, whose logit is infinite.
EPSILON = 1e-7

__all__ = ["EPSILON", "apply_class_prior", "apply_prior", "calibrate", "calibrate_classes",
           "class_prior_shifts", "evidence_weight", "logit", "prior_shift", "sigmoid", "temper",
           "temper_classes"]


def logit(p, epsilon: float = 0.0) -> np.ndarray:
    """``log(p / (1 - p))`` in float64; ``epsilon`` > 0 clips p to [epsilon, 1 - epsilon] first
    (without it, p = 0 or 1 gives -inf or +inf).

    Example:
        >>> float(logit([0.5])[0])
        0.0
    """
    p = np.asarray(p, np.float64)
    if epsilon:
        p = np.clip(p, epsilon, 1.0 - epsilon)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def sigmoid(x) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64, exact at +-inf and without overflow warnings.

    Example:
        >>> float(sigmoid([0.0])[0])
        0.5
    """
    # tanh form: no exp overflow for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def calibrate(probabilities, temperature) -> np.ndarray:
    """``sigmoid(logit(p) / T)``, (N,) float64: temperature scaling, as the calibrated model
    computes it (p clipped to [EPSILON, 1 - EPSILON] first, as its
    :class:`~starqso.models.TemperatureScaling` layer clips).

    Args:
        probabilities: the uncalibrated p(QSO), any shape (flattened).
        temperature: T (> 1 softens an over-confident model).

    Returns:
        (N,) float64 calibrated p(QSO).

    Example:
        >>> calibrate([0.5, 0.9], 2.0).round(4).tolist()
        [0.5, 0.75]
    """
    return sigmoid(logit(np.ravel(probabilities), EPSILON) / temperature)


def evidence_weight(snr, limits=None) -> np.ndarray:
    """How much of a cutout's evidence p(QSO) takes, from its detection S/N: (N,) in [0, 1].

    0 at ``limits[0]`` (the source check's detection limit) and below, 1 from ``limits[1]``,
    linear in between; a NaN S/N (not measured) gives 1.

    Args:
        snr: (N,) S/N, the five bands' combined aperture S/N as the source check measures
            it (:func:`starqso.preprocessing.screening.combined_snr`).
        limits: ``(low, high)``; :data:`starqso.schema.EVIDENCE_SNR` when None.

    Returns:
        (N,) float64 weights for :func:`temper`.

    Example:
        >>> evidence_weight([2.0, 9.5, 30.0, float("nan")], (4.0, 15.0)).round(2).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    low, high = EVIDENCE_SNR if limits is None else limits
    snr = np.asarray(snr, np.float64)
    weight = np.clip((snr - low) / (high - low), 0.0, 1.0)
    return np.where(np.isnan(snr), 1.0, weight)


def temper(probabilities, weight, training_fraction) -> np.ndarray:
    """p(QSO) with the cutout's evidence scaled by ``weight``, at the training mix.

    ``logit p' = logit f + w (logit p - logit f)``: the network's log-likelihood ratio (its
    logit against the training fraction ``f`` it was calibrated at) counts ``w`` times, so
    ``w = 0`` gives the prior itself and ``w = 1`` leaves p as it is. A prior correction
    (:func:`apply_prior`) applies after it.

    Args:
        probabilities: p(QSO) at the training mix, any shape broadcasting with ``weight``.
        weight: :func:`evidence_weight`.
        training_fraction: the model's training QSO fraction, in (0, 1).

    Returns:
        float64 p(QSO), the broadcast shape.

    Example:
        >>> temper([0.99, 0.99], [0.0, 1.0], 0.3).round(4).tolist()
        [0.3, 0.99]
    """
    base = float(logit(training_fraction))
    weight = np.asarray(weight, np.float64)
    tempered = sigmoid(base + weight * (logit(probabilities, EPSILON) - base))
    # Full weight returns p untouched (bit for bit), also at 0 and 1.
    return np.where(weight >= 1.0, np.asarray(probabilities, np.float64), tempered)


def prior_shift(prior, training) -> float:
    """The log-odds shift that moves p(QSO) from the training prior to another one (Bayes):
    ``log(F / (1 - F)) - log(f_train / (1 - f_train))``.

    Args:
        prior: F, the QSO fraction of the sky the model is applied to, in (0, 1).
        training: f_train, the QSO fraction the model was trained and calibrated on.

    Returns:
        float: the shift :func:`apply_prior` adds to the logit.

    Example:
        >>> round(prior_shift(0.1, 0.5), 6)
        -2.197225
    """
    return float(np.log(prior / (1 - prior)) - np.log(training / (1 - training)))


def apply_prior(probabilities, shift):
    """p(QSO) moved to another prior: ``sigmoid(logit(p) + shift)`` (NumPy, float64).

    ``shift`` is :func:`prior_shift`; 0 returns p unchanged, and p = 0 or 1 stays where it is.

    Example:
        >>> round(float(apply_prior([0.5], np.log(1 / 9))[0]), 12)  # 50% odds at a 10x lower prior
        0.1
    """
    probabilities = np.asarray(probabilities, np.float64)
    if shift == 0:
        return probabilities
    return sigmoid(logit(probabilities) + shift)


# --- K classes: (N, K) rows of class probabilities ------------------------------------------


def _normalised(log_p) -> np.ndarray:
    """``exp(log_p)`` renormalised along the last axis, the largest subtracted first (no
    overflow, and a row of -inf but one stays finite)."""
    log_p = log_p - np.max(log_p, axis=-1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=-1, keepdims=True)


def class_decisions(probabilities, threshold) -> np.ndarray:
    """The class of each row of (N, K) class probabilities (classes in
    :data:`starqso.schema.LABEL_NAMES` order): QSO (code 1) where p(QSO) >= ``threshold``,
    else the most probable other class (ties to the lower code, STAR first; NaN never wins).

    The one decision rule of labels, calibration thresholds, stage summaries and evaluate, so
    that "called QSO" is p(QSO) >= threshold for any number of classes.

    Example:
        >>> class_decisions([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]], 0.25).tolist()
        [1, 1, 2]
    """
    probabilities = np.asarray(probabilities, np.float64)
    others = np.where(np.isnan(probabilities), -np.inf, probabilities)
    others[:, 1] = -np.inf
    return np.where(probabilities[:, 1] >= threshold, 1, others.argmax(axis=1))


def calibrate_classes(probabilities, temperature) -> np.ndarray:
    """Temperature scaling of class probabilities: ``softmax(log(p) / T)`` per row, float64.

    The K-class form of :func:`calibrate` (log p is the softmax logit up to a per-row
    constant, which the softmax ignores); p is clipped to [EPSILON, 1] first, so a class
    float32 rounded to 0 stays finite.

    Args:
        probabilities: (..., K) class probabilities, each row summing to 1.
        temperature: T (> 1 softens an over-confident model); 1 returns p as float64.

    Returns:
        float64 (..., K), rows summing to 1.

    Example:
        >>> calibrate_classes([[0.8, 0.1, 0.1]], 2.0).round(4).tolist()
        [[0.5858, 0.2071, 0.2071]]
    """
    probabilities = np.asarray(probabilities, np.float64)
    if temperature == 1:
        return probabilities
    return _normalised(np.log(np.clip(probabilities, EPSILON, 1.0)) / temperature)


def temper_classes(probabilities, weight, training_fractions) -> np.ndarray:
    """Class probabilities with the cutout's evidence scaled by ``weight``, at the training mix.

    ``log p'_k = log f_k + w (log p_k - log f_k)``, renormalised per row: the K-class form of
    :func:`temper` (for K = 2 the two agree). ``w = 0`` gives the training fractions ``f``
    themselves and ``w = 1`` leaves p as it is, bit for bit. A prior correction
    (:func:`apply_class_prior`) applies after it.

    Args:
        probabilities: (..., K) class probabilities at the training mix.
        weight: :func:`evidence_weight`, broadcasting with ``probabilities[..., 0]``.
        training_fractions: (K,) the model's training class fractions, each in (0, 1).

    Returns:
        float64 (..., K), rows summing to 1.

    Example:
        >>> p = [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]
        >>> temper_classes(p, [0.0, 1.0], [0.5, 0.3, 0.2]).round(4).tolist()
        [[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]
    """
    probabilities = np.asarray(probabilities, np.float64)
    base = np.log(np.asarray(training_fractions, np.float64))
    weight = np.asarray(weight, np.float64)[..., None]
    log_p = np.log(np.clip(probabilities, EPSILON, 1.0))
    tempered = _normalised(base + weight * (log_p - base))
    # Full weight returns p untouched (bit for bit), as temper does.
    return np.where(weight >= 1.0, probabilities, tempered)


def class_prior_shifts(prior, training) -> np.ndarray:
    """The per-class log shifts that move class probabilities from the training mix to
    another one (Bayes): ``log F_k - log f_k``.

    The K-class form of :func:`prior_shift`: adding them to log p and renormalising is
    ``p' ∝ p F / f``.

    Args:
        prior: (K,) the class fractions of the sky the model is applied to, each in (0, 1).
        training: (K,) the class fractions the model was trained and calibrated on.

    Returns:
        float64 (K,) shifts for :func:`apply_class_prior`.

    Example:
        >>> class_prior_shifts([0.5, 0.25, 0.25], [0.5, 0.5, 0.5 / 2]).round(6).tolist()
        [0.0, -0.693147, 0.0]
    """
    return np.log(np.asarray(prior, np.float64)) - np.log(np.asarray(training, np.float64))


def apply_class_prior(probabilities, shifts) -> np.ndarray:
    """Class probabilities moved to another prior: ``p'_k ∝ p_k exp(shift_k)``, per row.

    ``shifts`` is :func:`class_prior_shifts`; all zero returns p unchanged (as float64), and
    a class at p = 0 stays at 0.

    Args:
        probabilities: (..., K) class probabilities.
        shifts: (K,) log shifts.

    Returns:
        float64 (..., K), rows summing to 1.

    Example:
        >>> shifts = class_prior_shifts([0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3])
        >>> apply_class_prior([[1 / 3, 1 / 3, 1 / 3]], shifts).round(4).tolist()
        [[0.9, 0.05, 0.05]]
    """
    probabilities = np.asarray(probabilities, np.float64)
    shifts = np.asarray(shifts, np.float64)
    if not shifts.any():
        return probabilities
    with np.errstate(divide="ignore"):
        return _normalised(np.log(probabilities) + shifts)
