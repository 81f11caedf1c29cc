"""Classify cutouts with an exported model.

* :mod:`starqso.inference.model`: open a model folder (Keras or LiteRT), its threshold, prior
  and E(B-V) settings.
* :mod:`starqso.inference.classify`: THE per-row core (crop, screen, model, prior, quality bits,
  labels).
* :mod:`starqso.inference.predict`: :func:`predict_catalog` (``starqso predict``): partial
  file, ``--resume``, CSV/FITS outputs and side-car.
* :mod:`starqso.inference.dask`: the same on Dask (``predict --dask``); imported on demand.

Every name other modules, tests and benchmarks used from the former ``starqso.inference``
module is re-exported here, so ``from starqso.inference import predict_catalog`` still works.
"""

from starqso.inference.classify import (
    COUNT_KEYS,
    OUTPUT_COLUMNS,
    UNCERTAINTY_VIEWS,
    Classified,
    block_rows,
    classify_block,
    dihedral_views,
    label_block,
    other_classes,
    output_cells,
    predict_views,
    prepare_block,
    refuse_flagged,
    row_label,
)
from starqso.inference.model import (
    EBV_COLUMN,
    EBV_NONE,
    LEGACY_TRAINING_QSO_FRACTION,
    RUNTIMES,
    TRAINING_PRIOR,
    KerasPredictor,
    LiteRTPredictor,
    block_ebv,
    default_model_dir,
    ebv_setting,
    evidence_fraction,
    model_settings,
    open_model,
    parse_ebv,
    parse_prior,
    prior_label,
    prior_vector,
    resolve_prior,
    resolve_runtime,
    two_class_note,
)
from starqso.inference.output_table import provenance
from starqso.inference.predict import predict_catalog, sidecar_path
from starqso.inference.resume import identity_differences
from starqso.probability import apply_prior

__all__ = [
    "COUNT_KEYS",
    "Classified",
    "EBV_COLUMN",
    "EBV_NONE",
    "KerasPredictor",
    "LEGACY_TRAINING_QSO_FRACTION",
    "LiteRTPredictor",
    "OUTPUT_COLUMNS",
    "RUNTIMES",
    "TRAINING_PRIOR",
    "UNCERTAINTY_VIEWS",
    "apply_prior",
    "block_ebv",
    "block_rows",
    "classify_block",
    "default_model_dir",
    "dihedral_views",
    "ebv_setting",
    "evidence_fraction",
    "identity_differences",
    "label_block",
    "model_settings",
    "open_model",
    "other_classes",
    "output_cells",
    "parse_ebv",
    "parse_prior",
    "predict_catalog",
    "predict_views",
    "prepare_block",
    "prior_label",
    "prior_vector",
    "provenance",
    "refuse_flagged",
    "resolve_prior",
    "resolve_runtime",
    "row_label",
    "sidecar_path",
    "two_class_note",
]
