"""Classical peers: scikit-learn classifiers on photometry measured from the cutouts.

They answer the first question a sceptical astronomer asks of an image CNN: does it beat
colour cuts learnt by standard classifiers on the same pixels? Features come from
:func:`starqso.preprocessing.photometry.photometric_features` (or exact catalogue colours).
NumPy/scikit-learn only.
"""

from __future__ import annotations

import numpy as np

from starqso.errors import InputError

CLASSICAL = ("logistic_regression", "decision_tree", "random_forest", "adaboost",
             "gradient_boosting")
TITLES = {
    "logistic_regression": "LogReg",
    "decision_tree": "DecisionTree",
    "random_forest": "RandomForest",
    "adaboost": "AdaBoost",
    "gradient_boosting": "gradient boosting",
}


def make_classical(name, seed=0):
    """An unfitted scikit-learn classifier by name (one of :data:`CLASSICAL`).

    Args:
        name: the classifier.
        seed: its random state.

    Returns:
        A scikit-learn estimator with ``fit`` and ``predict_proba``; features are
        standardised inside where the method needs it (logistic regression).

    Raises:
        InputError: for an unknown name.

    Example:
        >>> model = make_classical("random_forest", seed=1)
    """
    from sklearn.ensemble import (
        AdaBoostClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    factories = {
        "logistic_regression": lambda: make_pipeline(StandardScaler(),
                                                     LogisticRegression(max_iter=1000)),
        # Depth-limited: an unlimited tree memorises the noise of faint objects.
        "decision_tree": lambda: DecisionTreeClassifier(max_depth=8, min_samples_leaf=5,
                                                        random_state=seed),
        "random_forest": lambda: RandomForestClassifier(300, min_samples_leaf=2, n_jobs=-1,
                                                        random_state=seed),
        "adaboost": lambda: AdaBoostClassifier(n_estimators=200, random_state=seed),
        "gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=seed),
    }
    if name not in factories:
        raise InputError(f"classical model must be one of {', '.join(CLASSICAL)}. "
                         f"Received: {name!r}")
    return factories[name]()


def fit_classical(features, labels, names=CLASSICAL, seed=0):
    """Fit each named classical classifier on features and 0/1 labels.

    Args:
        features: (N, F) array; non-finite values are errors.
        labels: (N,) 0 (STAR) / 1 (QSO).
        names: classifiers to fit.
        seed: random state of each.

    Returns:
        dict name -> fitted estimator.

    Raises:
        InputError: for non-finite features, mismatched lengths or a single class.

    Example:
        >>> models = fit_classical(np.random.rand(40, 3), np.arange(40) % 2)
        >>> sorted(models)[0]
        'adaboost'
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(int).ravel()
    if features.ndim != 2 or len(features) != len(labels):
        raise InputError(f"features must be (N, F) with one label per row. Received: "
                         f"features {features.shape}, labels {labels.shape}")
    if not np.isfinite(features).all():
        bad = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise InputError(f"features must be finite. Received: non-finite value in row {bad}")
    if len(np.unique(labels)) != 2:
        raise InputError(f"training needs both classes. Received: labels "
                         f"{sorted(set(labels.tolist()))}")
    return {name: make_classical(name, seed).fit(features, labels) for name in names}


def predict_classical(model, features):
    """p(QSO) of a fitted classical classifier, shape (N,)."""
    return model.predict_proba(np.asarray(features, dtype=np.float64))[:, 1]
