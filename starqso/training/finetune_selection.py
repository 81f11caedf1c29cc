"""Fine-tuning never makes the model worse: the choice between the fine-tuned and the base model.

On the validation split of ``starqso finetune``, the fine-tuned model gets a temperature and
threshold chosen by cross-validation (:func:`cross_validated_calibration`) and is kept only
when it beats the base model as the base is used (:func:`select_model`).
"""

from __future__ import annotations

import pathlib

import numpy as np

from starqso._util.jsonfile import read_json
from starqso.deploy.calibration import choose_threshold, fit_temperature, macro_f1
from starqso.errors import InputError
from starqso.inference import LEGACY_TRAINING_QSO_FRACTION
from starqso.probability import EPSILON, apply_prior, calibrate, prior_shift
from starqso.schema import DEFAULT_THRESHOLD

#: Folds of the cross-validation that chooses the fine-tuned model's temperature and threshold.
CALIBRATION_FOLDS = 5
THRESHOLD_RULE = ("chosen by {folds}-fold cross-validation on the fine-tuning validation split: "
                  "{policy}")


def base_calibration(base_file) -> dict:
    """The base model's temperature, threshold and training QSO fraction.

    Args:
        base_file: the base's deployable ``.keras`` file
            (:func:`~starqso.training.finetune.base_model_file`).

    Returns:
        dict ``temperature``, ``threshold``, ``training_qso_fraction``: from the export
        folder's ``metadata.json`` (a run folder's ``export/``); a run never exported has
        temperature 1 and the default threshold. A metadata.json without the training
        fraction (an older export) gets the one ``starqso predict`` assumes for it.
    """
    folder = pathlib.Path(base_file).parent
    metadata = {}
    for candidate in (folder / "metadata.json", folder / "export" / "metadata.json"):
        if candidate.is_file():
            metadata = read_json(candidate)
            break
    fraction = metadata.get("training_qso_fraction")
    return {"temperature": float(metadata.get("temperature", 1.0)),
            "threshold": float(metadata.get("threshold", DEFAULT_THRESHOLD)),
            "training_qso_fraction": float(LEGACY_TRAINING_QSO_FRACTION if fraction is None
                                           else fraction)}


def stratified_folds(labels, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number (0..folds-1) per object, each class spread evenly over the folds.

    Example:
        >>> stratified_folds([0, 0, 0, 1, 1, 1], 3).tolist().count(0)
        2
    """
    labels = np.asarray(labels)
    fold = np.zeros(len(labels), np.int64)
    rng = np.random.default_rng([seed, 11])
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        # Each class starts at another fold so that small folds stay balanced in size.
        fold[rows] = (np.arange(len(rows)) + int(value)) % folds
    return fold


def _log_loss(labels, probabilities) -> float:
    p = np.clip(np.asarray(probabilities, np.float64), EPSILON, 1 - EPSILON)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def cross_validated_calibration(labels, raw, folds: int = CALIBRATION_FOLDS,
                                seed: int = 0) -> dict:
    """Temperature and threshold of a model, and how they do on objects they were not fitted on.

    ``folds``-fold cross-validation over the labelled objects (stratified): on each fold the
    temperature (:func:`~starqso.deploy.export.fit_temperature`) and the threshold
    (:func:`~starqso.deploy.export.choose_threshold`) are fitted on the other folds, and the fold
    gets
    out-of-fold calibrated probabilities and labels. The threshold rule is chosen by those
    out-of-fold labels: the fitted thresholds (their median is the final one, steadier than
    one fit on every object) when they beat 0.5 (the calibrated probabilities' own balance
    point), else 0.5. The final temperature is fitted on every object.

    Args:
        labels: 0/1 per object (both classes, at least two of each).
        raw: the model's uncalibrated p(QSO) per object.
        folds: at most this many folds (fewer when a class has fewer objects).
        seed: seed of the fold assignment.

    Returns:
        dict: ``temperature``, ``threshold``, ``threshold_rule``, ``folds``, and the
        out-of-fold ``macro_f1`` and ``log_loss``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1], 50)
        >>> raw = np.clip(labels * 0.6 + rng.uniform(0, 0.4, 100), 0.01, 0.99)
        >>> cross_validated_calibration(labels, raw)["macro_f1"]
        1.0
    """
    labels = np.asarray(labels, np.int64).ravel()
    raw = np.asarray(raw, np.float64).ravel()
    folds = int(min(folds, np.bincount(labels, minlength=2).min()))
    if folds < 2:
        raise InputError(f"finetune's validation split needs at least 2 STARs and 2 QSOs to "
                         f"choose the temperature and threshold by cross-validation. Received: "
                         f"{int((labels == 0).sum())} STAR, {int((labels == 1).sum())} QSO")
    fold = stratified_folds(labels, folds, seed)
    calibrated = np.zeros_like(raw)
    fitted = np.zeros(len(raw), bool)
    thresholds = []
    for k in range(folds):
        held, rest = fold == k, fold != k
        temperature = fit_temperature(labels[rest], raw[rest])
        calibrated[held] = calibrate(raw[held], temperature)
        threshold, _ = choose_threshold(labels[rest], calibrate(raw[rest], temperature))
        fitted[held] = calibrated[held] >= threshold
        thresholds.append(threshold)
    fitted_f1 = macro_f1(labels, fitted.astype(np.int64))
    half_f1 = macro_f1(labels, (calibrated >= DEFAULT_THRESHOLD).astype(np.int64))
    if fitted_f1 > half_f1:
        threshold, f1 = round(float(np.median(thresholds)), 2), fitted_f1
        policy = (f"the median of the {folds} thresholds of best macro-F1 fitted on the other "
                  f"folds, whose out-of-fold macro-F1 ({fitted_f1:.4f}) beat "
                  f"{DEFAULT_THRESHOLD} ({half_f1:.4f})")
    else:
        threshold, f1 = float(DEFAULT_THRESHOLD), half_f1
        policy = (f"{DEFAULT_THRESHOLD}, whose out-of-fold macro-F1 ({half_f1:.4f}) the "
                  f"thresholds fitted on the other folds did not beat ({fitted_f1:.4f})")
    return {"temperature": fit_temperature(labels, raw), "threshold": threshold,
            "threshold_rule": THRESHOLD_RULE.format(folds=folds, policy=policy),
            "folds": folds, "macro_f1": f1, "log_loss": _log_loss(labels, calibrated)}


def select_model(labels, base_raw, tuned_raw, base, label_fraction, seed=0) -> dict:
    """Keep the fine-tuned model only when it beats the base model on the validation split.

    The base is scored as ``starqso predict`` would use it on the user's sample: its
    temperature, p(QSO) moved from its training QSO fraction to ``label_fraction``, its
    threshold. The fine-tuned model is scored out of fold (:func:`cross_validated_calibration`).
    It wins with a higher macro-F1 and a log loss no higher; a tie keeps the base.

    Args:
        labels: 0/1 per validation object.
        base_raw, tuned_raw: each model's uncalibrated p(QSO) on them.
        base: :func:`base_calibration` of the base model.
        label_fraction: QSO fraction of the user's labels (the new default prior).
        seed: seed of the folds.

    Returns:
        dict: ``kept`` ("fine-tuned" or "base"), ``message`` (one line), ``base`` and
        ``fine-tuned`` scores (macro_f1, log_loss), and ``calibration``: what the export
        uses (temperature, threshold, threshold_rule, training_qso_fraction, default_prior).
    """
    labels = np.asarray(labels, np.int64).ravel()
    # The same Bayes shift as `starqso predict --prior label_fraction`.
    shift = prior_shift(label_fraction, base["training_qso_fraction"])
    base_p = apply_prior(calibrate(np.asarray(base_raw, np.float64).ravel(),
                                   base["temperature"]), shift)
    base_scores = {"macro_f1": macro_f1(labels, (base_p >= base["threshold"]).astype(np.int64)),
                   "log_loss": _log_loss(labels, base_p)}
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        # Too few of a class to cross-validate a calibration: nothing shows that the
        # fine-tuned model is better, so the base stays.
        tuned, wins = {"folds": 0}, False
        tuned_scores = {"macro_f1": None, "log_loss": None}
        compared = (f"the validation split has {counts[0]} STAR and {counts[1]} QSO, too few "
                    f"to cross-validate; give more labels or a larger --validation-fraction")
    else:
        tuned = cross_validated_calibration(labels, tuned_raw, seed=seed)
        tuned_scores = {key: tuned[key] for key in ("macro_f1", "log_loss")}
        wins = (tuned_scores["macro_f1"] > base_scores["macro_f1"]
                and tuned_scores["log_loss"] <= base_scores["log_loss"])
        compared = (f"validation macro-F1 {tuned_scores['macro_f1']:.4f} vs the base's "
                    f"{base_scores['macro_f1']:.4f}, log loss {tuned_scores['log_loss']:.4f} "
                    f"vs {base_scores['log_loss']:.4f}, n={labels.size}")
    if wins:
        calibration = {key: tuned[key] for key in ("temperature", "threshold",
                                                   "threshold_rule")}
        calibration["training_qso_fraction"] = float(label_fraction)
        message = f"kept the fine-tuned model: it beats the base model ({compared})"
    else:
        calibration = {"temperature": base["temperature"], "threshold": base["threshold"],
                       "threshold_rule": "the base model's (fine-tuning did not beat it)",
                       "training_qso_fraction": base["training_qso_fraction"]}
        message = (f"kept the base model (its weights, temperature {base['temperature']:.3f} "
                   f"and threshold {base['threshold']:.2f}): fine-tuning did not beat it "
                   f"({compared})")
    calibration["default_prior"] = float(label_fraction)
    calibration["fitted_on"] = {"split": "validation", "objects": int(labels.size),
                                "qso_fraction": float(labels.mean())}
    return {"kept": "fine-tuned" if wins else "base", "message": message,
            "base": base_scores, "fine-tuned": tuned_scores, "folds": tuned["folds"],
            "calibration": calibration}
