"""What the real-data benchmarks share: their command-line arguments, the model they score,
and the real samples classified once as ``starqso predict`` does.

Used by ``evidence_weight.py``, ``threshold_sweep.py`` and ``three_class_real.py``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_fields import classify  # noqa: E402 - predict's per-row core, as there
from real_photometry import render_depth  # noqa: E402 - the same renderer
from sim_realism import read_real  # noqa: E402


def parse_arguments(description, files):
    """``--data`` (the folder of ``files``), ``--model``, ``--prior`` and ``--out``, parsed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=pathlib.Path, required=True,
                        help=f"folder of {', '.join(files)}")
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="exported model folder [the shipped model]")
    parser.add_argument("--prior", default=None,
                        help="as predict's --prior (used by three_class_real.py) [the model's "
                             "default]")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results markdown")
    return parser.parse_args()


def open_scored_model(model):
    """``(model_dir, metadata, predictor)`` of the LiteRT int8 model ``predict`` runs by
    default; the shipped model when ``model`` is None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.inference import default_model_dir, open_model

    model_dir = model if model is not None else default_model_dir()
    return (model_dir, *open_model(model_dir, "litert"))


def classified_samples(data, predictor, metadata):
    """The six fields' point sources (``stars``) and blank sky (``sky``), the real high-z QSOs
    (``qso``, with their ``r`` and ``redshift``), and every real STAR/QSO catalogue row rendered
    at two depths (``nominal``, ``noisier``, with ``labels`` 1 for QSO and ``r``), each
    classified once with no prior shift (:func:`real_fields.classify`)."""
    fields = np.load(data / "real_fields_dev.npz")
    with np.load(data / "real_qso_iqvit_dev.npz") as stored:
        qso_cubes, qso_r, qso_z = stored["images"], stored["r"], stored["redshift"]
    samples = {"stars": classify(fields["images"][fields["pointlike"]], predictor, metadata,
                                 0.0, "stars"),
               "sky": classify(fields["sky_images"], predictor, metadata, 0.0, "sky"),
               "qso": {**classify(qso_cubes, predictor, metadata, 0.0, "qso"), "r": qso_r,
                       "redshift": qso_z}}
    real = read_real(str(data / "sdss_photometry_labelled.csv.gz"))
    for depth in ("nominal", "noisier"):
        cubes = render_depth(real["mags"], 0, depth)
        samples[depth] = {**classify(cubes[:, :, 8:40, 8:40], predictor, metadata, 0.0, depth),
                          "labels": (real["label"] == "QSO").astype(int),
                          "r": real["mags"][:, 2]}
    return samples


def shifts(metadata):
    """``(training fraction, the default prior's logit shift, prior 0.3's)``: the field samples
    are scored at the default prior, the real QSOs and rendered rows at 0.3."""
    from starqso.inference import resolve_prior

    return (float(metadata["training_qso_fraction"]), resolve_prior(metadata, None)["shift"],
            resolve_prior(metadata, 0.3)["shift"])


def p_at(sample, shift, training, ramp=None):
    """A sample's p(QSO) under a prior ``shift``: at the training mix, leaning on the prior near
    the detection limit by the evidence ramp (``predict``'s, :data:`starqso.schema.
    EVIDENCE_SNR`, when ``ramp`` is None; no leaning for ``(None, None)``), then moved to the
    prior."""
    from starqso.inference import apply_prior
    from starqso.preprocessing.screening import combined_snr
    from starqso.probability import evidence_weight, temper

    p = np.nan_to_num(sample["p"], nan=0.5)
    if ramp is None or ramp[0] is not None:
        p = temper(p, evidence_weight(combined_snr(sample["snr"]), ramp), training)
    return apply_prior(p, shift)


def scored_samples(args):
    """The model of ``--model`` and the samples of ``--data`` classified once, as a dict:
    ``model_dir``, ``metadata``, ``threshold`` (the model's), ``training``, ``sky_shift``,
    ``qso_shift`` (:func:`shifts`) and ``samples`` (:func:`classified_samples`)."""
    model_dir, metadata, predictor = open_scored_model(args.model)
    training, sky_shift, qso_shift = shifts(metadata)
    return {"model_dir": model_dir, "metadata": metadata,
            "threshold": float(metadata["threshold"]), "training": training,
            "sky_shift": sky_shift, "qso_shift": qso_shift,
            "samples": classified_samples(args.data, predictor, metadata)}
