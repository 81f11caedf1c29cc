"""The exported model's calibration: its temperature, its decision threshold and its prior.

:func:`fit_temperature` fits one temperature ``T`` on the run's validation split, so that
``sigmoid(logit(p) / T)`` (the :class:`~starqso.models.CalibratedClassifier` every format of the
export runs) is calibrated; :func:`choose_threshold` then picks the decision threshold on the
same objects by the rule :data:`THRESHOLD_RULE`. :func:`fit_calibration` does both for
``starqso export`` (or takes what ``starqso finetune`` chose, :func:`finetune_calibration`),
with the training QSO fraction the calibrated p(QSO) assumes, the sky prior ``starqso
predict`` corrects to by default (:data:`SKY_QSO_PRIOR`) and the ECE and NLL before and after.
"""

from __future__ import annotations

import numpy as np

from starqso._util.jsonfile import read_json
from starqso.errors import InputError
from starqso.evaluation import classification_metrics
from starqso.probability import EPSILON, calibrate, calibrate_classes, class_decisions, logit
from starqso.schema import DEFAULT_THRESHOLD

THRESHOLD = DEFAULT_THRESHOLD
# The QSO fraction `starqso predict` corrects p(QSO) to unless told otherwise (metadata.json
# `default_prior`). The training mix (about 30% QSOs, the spectroscopic sample's) is not the
# sky's: at high Galactic latitude and r < 21, QSOs are about 1-3% of point sources, so a p
# trained at 30% overstates every faint star's chance of being a QSO; 0.02 is the middle of
# that range.
SKY_QSO_PRIOR = 0.02
# The class mix `starqso predict` corrects a three-class model to by default (STAR takes the
# rest): the sky's at high Galactic latitude and SDSS depth (r < 21). QSOs as above; galaxies
# are about two thirds of the sources there (SDSS galaxy counts, Yasuda et al. 2001, AJ 122,
# 1104: some 5,000-7,000 per deg^2 to r = 21, against 2,000-3,000 stars per deg^2 at
# |b| > 45 deg, Juric et al. 2008, ApJ 673, 864), and 0.6 keeps the stars' share on the
# generous side.
SKY_CLASS_PRIOR = {"QSO": SKY_QSO_PRIOR, "GALAXY": 0.6}
# The temperature is searched in [1/20, 20] (on log T): beyond that a model is broken, not
# miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The decision-threshold grid of choose_threshold: 0.05, 0.06, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 + 0.01 * step, 2) for step in range(91))
THRESHOLD_RULE = ("best macro-F1 of the calibrated p(QSO) on the validation split, at the "
                  "training QSO fraction, over 0.05..0.95 in steps of 0.01; ties go to the "
                  "value closest to 0.5 (then the lower)")


def _logits(probabilities):
    # Clipped as the TemperatureScaling layer clips, so NumPy and the model agree.
    return logit(np.ravel(probabilities), EPSILON)


def _nll(labels, logits, temperature):
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(labels, probabilities, bounds=TEMPERATURE_BOUNDS):
    """The temperature T minimising the NLL of ``sigmoid(logit(p) / T)`` against ``labels``.

    Searched on log T within ``bounds`` (:func:`scipy.optimize.minimize_scalar`, bounded);
    ``logit(p)`` is taken after clipping p to [1e-7, 1 - 1e-7], as the
    :class:`~starqso.models.TemperatureScaling` layer does.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object; both classes must occur.
        probabilities: the uncalibrated p(QSO) per object.
        bounds: (lowest, highest) temperature.

    Returns:
        T as a float (> 1: the model was over-confident).

    Raises:
        InputError: fewer than two objects, or only one class.

    Example:
        >>> fit_temperature([0, 1, 1, 0], [0.001, 0.999, 0.001, 0.999]) > 1
        True
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, np.float64).ravel()
    logits = _logits(probabilities)
    if labels.size != logits.size or labels.size < 2 or not (0 < labels.mean() < 1):
        raise InputError(f"temperature scaling needs labelled objects of both classes. "
                         f"Received: {labels.size} objects, {int(labels.sum())} QSO")
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(lambda log_t: _nll(labels, logits, np.exp(log_t)),
                             bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def _class_nll(codes, log_p, temperature):
    z = log_p / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_q[np.arange(len(codes)), codes]))


def _class_logs(probabilities):
    # Clipped as the TemperatureScaling layer clips its (N, K) input.
    return np.log(np.clip(np.asarray(probabilities, np.float64), EPSILON, 1.0))


def fit_class_temperature(labels, probabilities, bounds=TEMPERATURE_BOUNDS):
    """:func:`fit_temperature` for (N, K) class probabilities: the T minimising the NLL of
    ``softmax(log(p) / T)`` against integer ``labels`` (at least two classes present).

    Example:
        >>> fit_class_temperature([0, 1, 2, 0], [[0.98, 0.01, 0.01], [0.01, 0.98, 0.01],
        ...                                      [0.98, 0.01, 0.01], [0.01, 0.01, 0.98]]) > 1
        True
    """
    from scipy.optimize import minimize_scalar

    codes = np.asarray(labels, np.int64).ravel()
    log_p = _class_logs(probabilities)
    if log_p.ndim != 2 or len(codes) != len(log_p) or len(codes) < 2 or len(
            np.unique(codes)) < 2:
        raise InputError(f"temperature scaling needs labelled objects of at least two classes. "
                         f"Received: {len(codes)} objects, classes "
                         f"{sorted(set(codes.tolist()))}")
    result = minimize_scalar(lambda log_t: _class_nll(codes, log_p, np.exp(log_t)),
                             bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def class_macro_f1(labels, predicted, count) -> float:
    """Macro-F1 over ``count`` classes (0 for a class neither present nor predicted)."""
    scores = []
    for positive in range(count):
        tp = np.sum((predicted == positive) & (labels == positive))
        wrong = np.sum((predicted == positive) != (labels == positive))
        scores.append(2 * tp / (2 * tp + wrong) if 2 * tp + wrong else 0.0)
    return float(np.mean(scores))


def macro_f1(labels, predicted):
    scores = []
    for positive in (1, 0):
        tp = np.sum((predicted == positive) & (labels == positive))
        wrong = np.sum(predicted != labels)
        scores.append(2 * tp / (2 * tp + wrong) if 2 * tp + wrong else 0.0)
    return float(np.mean(scores))


def choose_threshold(labels, probabilities, grid=THRESHOLD_GRID):
    """The decision threshold of the rule :data:`THRESHOLD_RULE`.

    Args:
        labels: 0 (STAR) / 1 (QSO) per object.
        probabilities: calibrated p(QSO) per object (at the training QSO fraction).
        grid: thresholds to try.

    Returns:
        ``(threshold, macro_f1 at it)``; an object is QSO when p >= threshold.

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.2, 0.6, 0.65, 0.9])
        (0.61, 1.0)
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] > 1:
        # K classes: QSO at p(QSO) >= t, else the more probable other class; macro-F1 over K.
        count = probabilities.shape[1]
        scores = [class_macro_f1(labels, class_decisions(probabilities, t), count)
                  for t in grid]
    else:
        probabilities = probabilities.ravel()
        scores = [macro_f1(labels, (probabilities >= t).astype(np.int64)) for t in grid]
    best = max(scores)
    chosen = min((abs(t - 0.5), t) for t, score in zip(grid, scores, strict=False)
                 if score >= best - 1e-12)[1]
    return float(chosen), float(best)



def finetune_calibration(folder):
    """The calibration ``starqso finetune`` chose (``finetune.json: selection``), or None."""
    path = folder / "finetune.json"
    if not path.is_file():
        return None

    return read_json(path).get("selection", {}).get("calibration")


def _labelled_outputs(raw_model, arrays, count):
    """``(labels, raw outputs)`` of the objects of ``arrays`` labelled with one of the model's
    ``count`` classes: p(QSO) (N,) for two classes, (N, K) float64 otherwise; ``(None, None)``
    when there are none."""
    known = (arrays.labels >= 0) & (arrays.labels < count)
    if not known.any():
        return None, None
    raw = np.asarray(raw_model.predict({"image": arrays.images[known]}, batch_size=512,
                                       verbose=0))
    raw = raw.ravel() if count == 2 else np.asarray(raw, np.float64).reshape(-1, count)
    return arrays.labels[known].astype(np.int64), raw


def _training_labels(objects, count, what):
    """The training split's labels of the model's ``count`` classes; a one-line error when
    there are none (export needs them for ``what``)."""
    labels = objects["train"].labels
    labels = labels[(labels >= 0) & (labels < count)]
    if not labels.size:
        raise InputError(f"the run's training split has no labelled objects; export needs them "
                         f"for {what}")
    return labels


def fit_calibration(raw_model, objects, held_name, log, chosen=None):
    """Fit the temperature and the threshold on the validation split; ECE before and after.

    ``chosen``: a fine-tuning run's calibration (:func:`starqso.training.finetune.select_model`:
    temperature, threshold, its rule, training QSO fraction and default prior), used as it is.
    A model of three or more classes (``raw_model.num_classes``) is calibrated by
    :func:`fit_class_calibration`.

    Returns ``(the export_check.json "calibration" entry, temperature)``.
    """
    count = getattr(raw_model, "num_classes", 2)
    if count > 2:
        return fit_class_calibration(raw_model, objects, held_name, log, count)

    train_labels = _training_labels(objects, count, "the training QSO fraction")
    training_fraction = float(np.mean(train_labels == 1))
    labels, raw = _labelled_outputs(raw_model, objects["validation"], count)
    if labels is None or not 0 < labels.mean() < 1:
        raise InputError("the run's validation split needs labelled STARs and QSOs to fit the "
                         "temperature and the threshold of the export")
    if chosen is not None:
        temperature, threshold = float(chosen["temperature"]), float(chosen["threshold"])
        entry = {**chosen, "temperature": temperature, "threshold": threshold}
        calibrated = calibrate(raw, temperature)
        macro_f1 = classification_metrics(labels, calibrated, threshold)["macro_f1"]
    else:
        entry, temperature = None, fit_temperature(labels, raw)
    if entry is None and not (TEMPERATURE_BOUNDS[0] * 1.01 < temperature
                              < TEMPERATURE_BOUNDS[1] / 1.01):
        log(f"warning: the fitted temperature {temperature:.3g} is at the edge of its range "
            f"{TEMPERATURE_BOUNDS} (too few validation objects, {labels.size}, or a model whose "
            f"p(QSO) hardly separates the classes, or separates them perfectly)")
    if entry is None:
        calibrated = calibrate(raw, temperature)
        threshold, macro_f1 = choose_threshold(labels, calibrated)
        entry = {
            "fitted_on": {"split": "validation", "objects": int(labels.size),
                          "qso_fraction": float(labels.mean())},
            "temperature": temperature, "threshold": threshold,
            "threshold_rule": THRESHOLD_RULE, "training_qso_fraction": training_fraction,
            "default_prior": SKY_QSO_PRIOR,
        }

    def scores(labels, raw, calibrated):
        before = classification_metrics(labels, raw, THRESHOLD)
        after = classification_metrics(labels, calibrated, threshold)
        return {"objects": int(labels.size), "ece_before": before["ece"],
                "ece_after": after["ece"], "nll_before": _nll(labels, _logits(raw), 1.0),
                "nll_after": _nll(labels, _logits(raw), temperature),
                "macro_f1_at_0.5": before["macro_f1"],
                "macro_f1_at_threshold": after["macro_f1"]}

    entry["validation"] = scores(labels, raw, calibrated)
    if held_name == "test":
        # Out of sample: the temperature and threshold never saw these objects.
        test_labels, test_raw = _labelled_outputs(raw_model, objects["check"], count)
        if test_labels is not None:
            entry["test"] = scores(test_labels, test_raw, calibrate(test_raw, temperature))
    shown = entry.get("test", entry["validation"])
    log(f"calibration: temperature {temperature:.3f}, ECE {shown['ece_before']:.4f} -> "
        f"{shown['ece_after']:.4f} ({'test' if 'test' in entry else 'validation'}), threshold "
        f"{threshold:.2f} (macro-F1 {macro_f1:.4f} on validation)")
    return entry, temperature


def fit_class_calibration(raw_model, objects, held_name, log, count):
    """:func:`fit_calibration` for a model of ``count`` >= 3 classes: one temperature on the
    softmax logits (:func:`fit_class_temperature`) and the p(QSO) threshold of
    :func:`choose_threshold` (macro-F1 over the classes), the training class fractions and
    the default prior vector :data:`SKY_CLASS_PRIOR`.

    Returns ``(the export_check.json "calibration" entry, temperature)``.
    """
    from starqso.schema import LABEL_NAMES

    names = LABEL_NAMES[:count]

    train_labels = _training_labels(objects, count, "the training class fractions")
    fractions = np.bincount(train_labels, minlength=count) / train_labels.size
    labels, raw = _labelled_outputs(raw_model, objects["validation"], count)
    if labels is None or len(np.unique(labels)) < 2:
        raise InputError(f"the run's validation split needs labelled objects of at least two "
                         f"of the classes {', '.join(names)} to fit the temperature and the "
                         f"threshold of the export")
    temperature = fit_class_temperature(labels, raw)
    if not TEMPERATURE_BOUNDS[0] * 1.01 < temperature < TEMPERATURE_BOUNDS[1] / 1.01:
        log(f"warning: the fitted temperature {temperature:.3g} is at the edge of its range "
            f"{TEMPERATURE_BOUNDS} ({labels.size} validation objects)")
    calibrated = calibrate_classes(raw, temperature)
    threshold, best = choose_threshold(labels, calibrated)
    entry = {
        "fitted_on": {"split": "validation", "objects": int(labels.size),
                      "class_fractions": {name: float(np.mean(labels == code))
                                          for code, name in enumerate(names)}},
        "temperature": temperature, "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE.replace("macro-F1 of the calibrated p(QSO)",
                                                 "macro-F1 over the classes (QSO at p(QSO) >= "
                                                 "t, else the more probable other class)"),
        "training_qso_fraction": float(fractions[1]),
        "training_class_fractions": {name: float(value)
                                     for name, value in zip(names, fractions, strict=True)},
        "default_prior": {name: SKY_CLASS_PRIOR[name] for name in names[1:]},
    }

    def scores(labels, raw, calibrated):
        def ece(probabilities):
            return float(np.mean([classification_metrics(labels == code, probabilities[:, code],
                                                         0.5)["ece"]
                                  for code in range(count)]))

        return {"objects": int(labels.size),
                "ece_before": ece(raw), "ece_after": ece(calibrated),
                "nll_before": _class_nll(labels, _class_logs(raw), 1.0),
                "nll_after": _class_nll(labels, _class_logs(raw), temperature),
                "macro_f1_at_0.5": class_macro_f1(labels, class_decisions(raw, 0.5), count),
                "macro_f1_at_threshold": class_macro_f1(
                    labels, class_decisions(calibrated, threshold), count)}

    entry["validation"] = scores(labels, raw, calibrated)
    if held_name == "test":
        test_labels, test_raw = _labelled_outputs(raw_model, objects["check"], count)
        if test_labels is not None:
            entry["test"] = scores(test_labels, test_raw,
                                   calibrate_classes(test_raw, temperature))
    shown = entry.get("test", entry["validation"])
    log(f"calibration: temperature {temperature:.3f}, mean per-class ECE "
        f"{shown['ece_before']:.4f} -> {shown['ece_after']:.4f} "
        f"({'test' if 'test' in entry else 'validation'}), threshold {threshold:.2f} "
        f"(macro-F1 over {count} classes {best:.4f} on validation)")
    return entry, temperature
