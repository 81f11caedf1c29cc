"""Is the object at the crop centre a point source? The extended-source scorer (NumPy).

The classifier knows point sources only: a galaxy or a blend is outside its domain whatever
p(QSO) it gets. SDSS separates them with ``psfMag - modelMag``, which needs the field's PSF;
a cutout service hands out pixels without it, and the PSF of a point source varies over
0.7-3.0" of seeing and in its wings. What stays different is the *shape* of the profile: a
point source's curve of growth is one of a narrow family (the PSF's), a Sérsic galaxy convolved
with the same PSF has a broader core relative to its wings, a cusp or extended wings, and is
often elongated beyond a PSF's few per cent.

The features are the shape of that profile, its per-band curves of growth and its colours
(:mod:`starqso.preprocessing.light_profile`).

:class:`ExtendedScorer` is a set of gradient-boosted trees over those features (node arrays in
``starqso/resources/extended_source.npz``). Point sources: the survey simulator's stars and
QSOs (QSO hosts included), half of them injected into real SDSS blank sky, some reddened or
crowded, and the real point-like sources of six SDSS developer fields (weight 5 each); extended
sources: Sérsic galaxies rendered at the colours, magnitudes and redshifts of real SDSS GALAXY
rows in the simulator's observing conditions (:mod:`starqso.simulate.galaxies`) and the real
extended sources of the same fields. Real stars are in the fit because real PSFs are not all
the simulator's: fitted on simulations alone, the stars of some real fields looked resolved.
The threshold is the larger of the score that calls 2.5% of held-out simulated point sources
extended and the one that calls 2% of held-out real stars at r < 20 extended (the flag's
budget is 3%). ``benchmarks/quality_flags.py --fit-extended --real-points`` fits it and
scores each field with a scorer fitted without that field's sources:
``benchmarks/results/extended_real.md``.
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np

from starqso._util.atomic import write_bytes_atomically
from starqso._util.jsonfile import loads
from starqso.errors import InputError
from starqso.io.safe_read import read_npz
from starqso.preprocessing.light_profile import (
    FEATURE_NAMES,
    combined_image,  # noqa: F401 (importers use it here)
    profile_features,
)

RESOURCE = "extended_source.npz"


class ExtendedScorer:
    """Score that a crop's central object is resolved (0 point-like .. 1 extended).

    Gradient-boosted trees over :func:`profile_features`, stored as flat node arrays and
    evaluated in NumPy (no scikit-learn at inference, no pickles): each tree is walked from
    its root, left where ``feature <= threshold``, and the score is the logistic of the
    baseline plus the leaves' values. ``threshold`` is the score at which the EXTENDED bit
    is set.

    Args:
        nodes: dict of equal-length arrays over every tree's nodes: ``feature`` (int),
            ``threshold`` (float), ``left``, ``right`` (node indices into these arrays),
            ``leaf`` (bool), ``value`` (float), ``missing_left`` (bool: NaN goes left).
        roots: index of each tree's root node.
        baseline: the raw score before any tree.
        depth: the deepest path of any tree (how many steps a walk takes).
        threshold: EXTENDED when ``score >= threshold``.
        info: what it was fitted on and measured at (stored with it).

    Example:
        >>> scorer = ExtendedScorer.load()
        >>> rng = np.random.default_rng(0)
        >>> crop = rng.normal(0, 0.02, (1, 32, 32, 5))
        >>> crop[0, 15:17, 15:17] += 5.0
        >>> bool(scorer.score(crop)[0] < scorer.threshold)
        True
    """

    _NODE_FIELDS = {"feature": np.int64, "threshold": np.float64, "left": np.int64,
                    "right": np.int64, "leaf": bool, "value": np.float64,
                    "missing_left": bool}

    def __init__(self, nodes, roots, baseline, depth, threshold, info=None):
        self.nodes = {name: np.asarray(nodes[name], dtype)
                      for name, dtype in self._NODE_FIELDS.items()}
        self.roots = np.asarray(roots, np.int64)
        self.baseline = float(baseline)
        self.depth = int(depth)
        self.threshold = float(threshold)
        self.info = dict(info or {})

    def score_features(self, features):
        """Scores of (N, 38) :func:`profile_features`."""
        features = np.asarray(features, np.float64)
        nodes = self.nodes
        position = np.broadcast_to(self.roots, (len(features), len(self.roots))).copy()
        rows = np.arange(len(features))[:, None]
        for _ in range(self.depth):
            value = features[rows, nodes["feature"][position]]
            left = np.where(np.isnan(value), nodes["missing_left"][position],
                            value <= nodes["threshold"][position])
            step = np.where(left, nodes["left"][position], nodes["right"][position])
            position = np.where(nodes["leaf"][position], position, step)
        raw = self.baseline + nodes["value"][position].sum(axis=1)
        return 1.0 / (1.0 + np.exp(-np.clip(raw, -60, 60)))

    def score(self, crops, sky=None, sigma=None):
        """Scores of (N, S, S, 5) crops."""
        return self.score_features(profile_features(crops, sky, sigma))

    def save(self, path):
        """Write the scorer as a NumPy archive (no pickles), atomically."""
        import io
        import json

        arrays = {f"node_{name}": values for name, values in self.nodes.items()}
        arrays.update(roots=self.roots, baseline=np.float64(self.baseline),
                      depth=np.int64(self.depth), threshold=np.float64(self.threshold),
                      feature_names=np.array(FEATURE_NAMES),
                      info=np.array(json.dumps(self.info, sort_keys=True)))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path=None):
        """The shipped scorer (``starqso/resources/extended_source.npz``) or one at ``path``."""
        if path is None:
            return _shipped()
        return _load(str(path))

    @classmethod
    def fit(cls, point_features, extended_features, *, false_positive_rate=0.025,
            validation_fraction=0.3, seed=0, max_iter=400, real_point_features=None,
            real_extended_features=None, real_weight=1.0, real_false_positive_rate=0.02,
            real_point_calibrates=None):
        """Fit on features of point sources (0) and extended sources (1).

        scikit-learn's ``HistGradientBoostingClassifier`` is fitted and its trees copied
        into node arrays. The threshold is the ``1 - false_positive_rate`` quantile of the
        scores of a held-out ``validation_fraction`` of the point sources; ``info`` holds the
        rates measured on the held-out parts.

        Real sources, when given, join the fit with sample weight ``real_weight`` (a few
        hundred real stars must count against thousands of simulated ones) and are split
        the same way. A simulation does not reproduce every real field's PSF, so the
        threshold is then the larger of the simulated quantile and the
        ``1 - real_false_positive_rate`` quantile of the held-out real point sources' scores.

        Args:
            point_features, extended_features: (N, 38) :func:`profile_features` of simulated
                (or any) point and extended sources.
            false_positive_rate: the held-out point sources' flagged fraction the threshold
                is set at.
            validation_fraction: the fraction of each set held out for the threshold.
            seed: the split's and the trees' random seed.
            max_iter: boosting iterations.
            real_point_features, real_extended_features: optional (M, 38) features of real
                point and extended sources.
            real_weight: the sample weight of each real source (> 0).
            real_false_positive_rate: the held-out real point sources' flagged fraction the
                threshold is at least at (with ``real_point_features``).
            real_point_calibrates: optional (M,) bool: the real point sources whose held-out
                scores set that quantile (e.g. the magnitudes the flag's budget is set at);
                all of them when None. Every one is fitted on.

        Returns:
            :class:`ExtendedScorer`.

        Raises:
            InputError: features of another shape, a non-positive ``real_weight``, or too few
                real point sources to hold any out.
        """
        from sklearn.ensemble import HistGradientBoostingClassifier

        def features(values, name, optional=False):
            if values is None and optional:
                return np.zeros((0, len(FEATURE_NAMES)))
            values = np.asarray(values, np.float64)
            if values.ndim != 2 or values.shape[1] != len(FEATURE_NAMES):
                raise InputError(f"{name} must be (N, {len(FEATURE_NAMES)}) profile_features. "
                                 f"Received: shape={values.shape}")
            return values

        point = features(point_features, "point_features")
        extended = features(extended_features, "extended_features")
        real_point = features(real_point_features, "real_point_features", optional=True)
        real_extended = features(real_extended_features, "real_extended_features",
                                 optional=True)
        if not real_weight > 0:
            raise InputError(f"real_weight must be positive. Received: {real_weight}")
        rng = np.random.default_rng(seed)

        def split(values):
            order = rng.permutation(len(values))
            cut = int(len(values) * validation_fraction)
            return values[order[cut:]], values[order[:cut]]

        # The simulated splits first, so that a fit without real sources is the one it was.
        point_fit, point_held = split(point)
        extended_fit, extended_held = split(extended)
        calibrates = (np.ones(len(real_point), bool) if real_point_calibrates is None
                      else np.asarray(real_point_calibrates, bool))
        if calibrates.shape != (len(real_point),):
            raise InputError(f"real_point_calibrates must be ({len(real_point)},) bool, one per "
                             f"real point source. Received: shape={calibrates.shape}")
        # Split together, so that the mask follows its rows.
        real_point_fit, real_point_held = split(np.column_stack([real_point, calibrates]))
        calibrates = real_point_held[:, -1] > 0
        real_point_fit, real_point_held = real_point_fit[:, :-1], real_point_held[:, :-1]
        real_extended_fit, real_extended_held = split(real_extended)
        if real_point_features is not None and not calibrates.any():
            raise InputError(f"real_point_features needs enough (calibrating) rows to hold "
                             f"out a validation_fraction {validation_fraction} of them. "
                             f"Received: {len(real_point)} rows, none of the calibrating "
                             f"ones held out")
        model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1,
                                               random_state=seed)
        model.fit(np.concatenate([point_fit, real_point_fit, extended_fit, real_extended_fit]),
                  np.r_[np.zeros(len(point_fit) + len(real_point_fit)),
                        np.ones(len(extended_fit) + len(real_extended_fit))],
                  sample_weight=np.r_[np.ones(len(point_fit)),
                                      np.full(len(real_point_fit), float(real_weight)),
                                      np.ones(len(extended_fit)),
                                      np.full(len(real_extended_fit), float(real_weight))])
        # The fitted trees (private attributes, read once here): per tree one structured
        # array of nodes with children as indices within the tree.
        trees = [predictors[0].nodes for predictors in model._predictors]
        offsets = np.cumsum([0] + [len(tree) for tree in trees[:-1]])
        nodes = {
            "feature": np.concatenate([tree["feature_idx"] for tree in trees]),
            "threshold": np.concatenate([tree["num_threshold"] for tree in trees]),
            "left": np.concatenate([tree["left"] + offset for tree, offset in zip(trees, offsets,
                                                                                  strict=False)]),
            "right": np.concatenate([tree["right"] + offset
                                     for tree, offset in zip(trees, offsets, strict=False)]),
            "leaf": np.concatenate([tree["is_leaf"] for tree in trees]).astype(bool),
            "value": np.concatenate([tree["value"] for tree in trees]),
            "missing_left": np.concatenate([tree["missing_go_to_left"]
                                            for tree in trees]).astype(bool)}
        depth = int(max(tree["depth"].max() for tree in trees))
        scorer = cls(nodes, offsets, float(np.ravel(model._baseline_prediction)[0]), depth, 0.5)
        check = np.concatenate([point_held[:200], extended_held[:200], real_point_held[:200],
                                real_extended_held[:200]])
        np.testing.assert_allclose(scorer.score_features(check), model.predict_proba(check)[:, 1],
                                   rtol=1e-6, atol=1e-9)  # the copy is the fitted model
        held_scores = scorer.score_features(point_held)
        simulated_threshold = float(np.quantile(held_scores, 1.0 - false_positive_rate))
        scorer.threshold = simulated_threshold
        extended_scores = scorer.score_features(extended_held)
        scorer.info = {"point_sources": int(len(point)), "extended_sources": int(len(extended)),
                       "held_out_fraction": validation_fraction,
                       "trees": len(trees), "seed": seed}
        if real_point_features is not None or real_extended_features is not None:
            real_point_scores = scorer.score_features(real_point_held)
            real_extended_scores = scorer.score_features(real_extended_held)
            real_threshold = (float(np.quantile(real_point_scores[calibrates],
                                                1.0 - real_false_positive_rate))
                              if calibrates.any() else 0.0)
            scorer.threshold = max(simulated_threshold, real_threshold)
            scorer.info.update({
                "real_point_sources": int(len(real_point)),
                "real_extended_sources": int(len(real_extended)),
                "real_weight": float(real_weight),
                "simulated_threshold": simulated_threshold, "real_threshold": real_threshold,
                "real_false_positive_rate": real_false_positive_rate,
                "held_out_real_calibrating_points": int(np.sum(calibrates)),
                "held_out_real_point_flagged": float(
                    np.mean(real_point_scores[calibrates] >= scorer.threshold))
                if calibrates.any() else None,
                "held_out_real_extended_flagged": float(
                    np.mean(real_extended_scores >= scorer.threshold))
                if len(real_extended_scores) else None})
        scorer.info.update({
            "held_out_point_flagged": float(np.mean(held_scores >= scorer.threshold)),
            "held_out_extended_flagged": float(np.mean(extended_scores >= scorer.threshold))})
        return scorer


def _load(path):
    # read_npz checks each array's declared size before allocating it.
    archive = read_npz(path, "extended-source scorer")
    try:
        return ExtendedScorer({name: archive[f"node_{name}"]
                               for name in ExtendedScorer._NODE_FIELDS},
                              archive["roots"], float(archive["baseline"]),
                              int(archive["depth"]), float(archive["threshold"]),
                              loads(str(archive["info"]), path))
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise InputError(f"the extended-source scorer {path} could not be read ({err}); "
                         f"expected the archive ExtendedScorer.save writes. Received: "
                         f"{path}") from None


@functools.lru_cache(maxsize=1)
def _shipped():
    return _load(str(importlib.resources.files("starqso") / "resources" / RESOURCE))
