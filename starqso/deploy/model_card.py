"""What an export folder says about its model: the model card, the quality reference and the
selection function.

:func:`model_card` writes ``model_card.md``: what the model was trained on, what runs inside
it, its validation metrics, the export checks, its calibration and its limits.
:func:`quality_reference` fits the references of the quality bits (``metadata.json:
quality``) and the selection function (:data:`SELECTION_FILE`) on the run's splits, and
:func:`quality_card` is the model card's section on them.
"""

from __future__ import annotations

import numpy as np

from starqso._util.jsonfile import read_json
from starqso.evaluation.metrics import format_selection_markdown, selection_function
from starqso.preprocessing.qflags import fit_quality_reference
from starqso.simulate.brightness import HIGH_Z_R_RANGE

#: The model's selection function, beside its metadata.json.
SELECTION_FILE = "selection_function.csv"


def quality_reference(train_images, validation, validation_p, threshold, num_classes=2):
    """What a model folder ships for its quality bits and its selection function.

    Args:
        train_images: (N, S, S, 5) training-split crops.
        validation: the validation split's :class:`~starqso.data.ObjectArrays` (labels, true
            r magnitudes, redshifts).
        validation_p: the calibrated model's p(QSO) of those objects (training mix), (N,);
            or its class probabilities (N, K), whose QSO column is used.
        threshold: the model's decision threshold.
        num_classes: the classes the model tells apart; objects of other classes are left
            out, and the selection function is QSO against the rest.

    Returns:
        ``(quality, selection)``: the ``metadata.json: quality`` entry
        (:func:`~starqso.preprocessing.qflags.fit_quality_reference`, with
        ``selection_function`` naming :data:`SELECTION_FILE`; None for crops too small for
        its photometry) and the selection-function rows
        (:func:`~starqso.evaluation.metrics.selection_function`: completeness and purity vs
        r, completeness vs redshift, with Wilson intervals) of the labelled validation objects.
    """
    quality = fit_quality_reference(train_images, validation.images)
    known = (validation.labels >= 0) & (validation.labels < num_classes)
    validation_p = np.asarray(validation_p)
    if validation_p.ndim == 2:
        validation_p = validation_p[:, 1]
    selection = selection_function((validation.labels[known] == 1).astype(np.int64),
                                   validation_p[known], threshold,
                                   r=validation.mags[known, 2],
                                   redshift=validation.redshift[known])
    if quality is not None:
        quality["selection_function"] = {
            "file": SELECTION_FILE, "split": "validation", "objects": int(known.sum()),
            "threshold": float(threshold), "prior": "training mix",
            "note": "completeness and purity at the validation split's QSO fraction, against "
                    "the objects' catalogue r and redshift"}
    return quality, selection


def quality_card(quality, selection):
    """The model card's section on quality bits and the selection function (markdown)."""
    if quality is None:
        return ("\n## Quality bits and selection function\n\nThe model's input is too small "
                "for the 3\" photometry: no magnitude-range or out-of-distribution bits.\n\n"
                + format_selection_markdown(selection) + "\n")
    low, high = quality["r_range"]
    on = quality["selection_function"]
    return "\n".join([
        "", "## Quality bits and selection function", "",
        f"* `qflag` MAG_OUT_OF_RANGE outside r = {low:.2f} .. {high:.2f} (3\" aperture asinh "
        "magnitude; the training objects' 0.1-99.9% range, widened by 0.25 mag).",
        f"* `qflag` OUT_OF_DISTRIBUTION below a colour log-density of "
        f"{quality['ood_threshold']:.3f} (Gaussian mixture of the training colours; "
        f"{quality['validation_ood_fraction']:.1%} of the validation objects).",
        f"* Selection function on the {on['objects']} validation objects (threshold "
        f"{on['threshold']:.2f}, at their own QSO fraction; `{on['file']}` holds it as CSV), "
        "with 68% Wilson intervals:", "",
        format_selection_markdown(selection), ""])


def model_card(folder, config, metadata, results):
    """The text of ``model_card.md``: the run ``folder`` (a
    :class:`~starqso.training.run_folder.RunFolder`) and its ``config``, the export's
    ``metadata.json`` and its ``export_check.json`` ``results``, in markdown (the export
    appends :func:`quality_card`)."""
    metrics = folder.metrics()
    _, data = folder.data_source()
    names = list(metadata.get("class_names", ["STAR", "QSO"]))
    three = len(names) > 2
    trained_on = data or (f"{config.data.num_objects} simulated objects (seed "
                          f"{config.data.simulation_seed}) drawn from real SDSS STAR/QSO "
                          f"catalogue rows with real stellar spectra and QSO archetypes")
    if not data and config.data.galaxy_fraction > 0:
        trained_on += (f"; a fraction {config.data.galaxy_fraction:g} of them galaxies (real "
                       f"SDSS galaxy rows' colours and redshifts, bulge + disc Sérsic "
                       f"profiles, kcorrect fibre spectra)")
    skies = folder.sky_backgrounds()
    if skies is not None:
        fields = ", ".join(skies["fields"][:6]) + (", ..." if len(skies["fields"]) > 6 else "")
        trained_on += (f"; a fraction {skies['fraction']:g} of them injected into "
                       f"{skies['cutouts']} real blank-sky cutouts of {len(skies['fields'])} "
                       f"fields ({fields}) from {skies['path']} (SHA-256 {skies['sha256']}), "
                       f"with each field's PSF FWHM")
    if not data and config.data.reddening_fraction > 0:
        trained_on += (f"; a fraction {config.data.reddening_fraction:g} reddened by E(B-V) "
                       f"up to {config.data.max_ebv:g} (SDSS A/E(B-V) of Schlafly & "
                       f"Finkbeiner 2011)")
    if not data and config.data.neighbour_density_fraction > 0:
        trained_on += (f"; a fraction {config.data.neighbour_density_fraction:g} in crowded "
                       f"fields (up to {config.data.max_neighbour_density:g}x the neighbours)")
    if not data and config.data.magnitude_mixing_fraction > 0:
        trained_on += (f"; a fraction {config.data.magnitude_mixing_fraction:g} with r "
                       f"magnitudes drawn from both classes alike (colours kept)")
    if not data and config.data.high_z_magnitude_fraction > 0:
        trained_on += (f"; a fraction {config.data.high_z_magnitude_fraction:g} of the "
                       f"high-redshift QSOs with r uniform over {HIGH_Z_R_RANGE[0]:g}-"
                       f"{HIGH_Z_R_RANGE[1]:g}")
    prior = metadata["default_prior"]
    prior_text = (",".join(f"{name}={value:g}" for name, value in prior.items())
                  if isinstance(prior, dict) else f"{prior:g}")
    output = (f"calibrated class probabilities p({', '.join(names)}) (N, {len(names)}) at the "
              f"training mix ("
              + ", ".join(f"{name} {value:.3f}" for name, value in
                          metadata.get("training_class_fractions", {}).items()) + ")"
              if three else "calibrated p(QSO) at the training QSO fraction "
              f"({metadata['training_qso_fraction']:.3f})")
    lines = [
        "# starqso classifier: model card", "",
        f"* starqso {metadata['starqso_version']}, preset `{config.preset}`, classes "
        f"{'/'.join(names)}",
        f"* Input: raw cutouts, float32 nanomaggies, NHWC {metadata['input_shape']}, bands "
        f"ugriz, 0.396\"/px; output {output}; `starqso predict` labels QSO when p(QSO) >= "
        f"{metadata['threshold']}" + (", else the more probable of the other classes," if three
                                      else "")
        + f" after correcting p to the prior it is given (default {prior_text}, " + (
            "the QSO fraction of the fine-tuning labels, the user's sample"
            if (folder / "finetune.json").is_file() else
            "the sky's class mix at high latitude and r < 21" if three
            else "the sky's QSO fraction")
        + "; `--prior train`: none).",
        f"* Trained on: {trained_on}.",
        "* Inside: asinh scaling" + ((", aperture photometry (colours, r, concentration)"
                                      + (" and PSF-weighted colours and r at FWHM "
                                         + ", ".join(f'{v:g}"' for v in config.model.weighted_fwhm)
                                         if config.model.weighted_fwhm else ""))
                                     if config.model.photometry else "")
        + (f", the diffusion generator ({config.model.diffusion_steps} deterministic DDIM "
           "steps from x_T = 0)" if config.model.generator == "diffusion"
           else ", the GAN generator (zero noise)")
        + f" and the fusion classifier, on the `{config.model.trunk}` image trunk"
        + (f" (both CNNs see the central {config.model.trunk_size} pixels)"
           if config.model.trunk_size not in (None, config.model.image_size) else "")
        + (f"; p(QSO) blends the fusion classifier's logit with a photometry-only head's, "
           f"weight {metrics['fusion']['head_weight']:g} on the head (fitted on validation)"
           if "head_weight" in metrics.get("fusion", {}) else "") + ".",
        "* Made by: `starqso fit` (config in the run folder's `config.yaml`), then "
        "`starqso export`.", "",
    ]
    finetuned = folder / "finetune.json"
    if finetuned.is_file():
        settings = read_json(finetuned)
        lines[-2] = ("* Made by: `starqso finetune` (settings in the run folder's "
                     "`finetune.json`), then `starqso export`.")
        lines += ["## Fine-tuning", "",
                  f"* Base model: `{settings['base_model']}` (SHA-256 "
                  f"{settings['base_sha256']}).",
                  f"* Fine-tuning data: {data}; trainable depth `{settings['trainable']}`, "
                  f"learning rate {settings['learning_rate']:g} (x {settings['lr_decay']:g} "
                  f"per block deeper), at most {settings['epochs']} epochs."]
        if "selection" in settings:
            lines.append(f"* Model selection on the validation split: "
                         f"{settings['selection']['message']}.")
        lines += ["",
                  "| validation | accuracy | f1_qso | macro_f1 | roc_auc |",
                  "|---|---|---|---|---|"]
        for when in ("before", "after"):
            if when in settings:
                lines.append(f"| {when} fine-tuning | " + " | ".join(
                    f"{settings[when].get(key, float('nan')):.4f}"
                    for key in ("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |")
        lines.append("")
    lines += [
        "## Validation metrics (from `metrics.json`)", "",
        "| stage | " + " | ".join(("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |",
        "|---|---|---|---|---|",
    ]
    for stage in ("encoder", "fusion", "finetune", "image"):
        if stage in metrics:
            lines.append(f"| {stage} | " + " | ".join(
                f"{metrics[stage].get(key, float('nan')):.4f}"
                for key in ("accuracy", "f1_qso", "macro_f1", "roc_auc")) + " |")
    lines += ["", "## Export checks against the Keras model", "",
              "| format | max abs dp | label agreement |", "|---|---|---|"]
    for name, result in results.items():
        if "max_abs_diff" in result:
            lines.append(f"| {name} | {result['max_abs_diff']:.2e} | "
                         f"{result['label_agreement']:.4f} |")
    calibration = results["calibration"]
    lines += ["", "## Calibration and decision threshold", "",
              "* Temperature scaling inside every format: "
              + ("p = softmax(log(p_raw) / T), " if three else "p = sigmoid(logit(p_raw) / T), ")
              + f"T = {calibration['temperature']:.4f}, fitted (NLL) on the "
              f"{calibration['fitted_on']['objects']} validation objects.",
              f"* Threshold {calibration['threshold']:.2f}: {calibration['threshold_rule']}.",
              f"* p(QSO) assumes the training QSO fraction "
              f"{calibration['training_qso_fraction']:.3f}; `starqso predict` corrects it by "
              f"Bayes' rule to `--prior` (default {prior_text}: "
              + ("the QSO fraction of the labels it was fine-tuned on, so that by default "
                 "p(QSO) is the chance of being a QSO in a sample like the user's; give "
                 "`--prior` for another sample, e.g. 0.02 for the sky's point sources)."
                 if (folder / "finetune.json").is_file() else
                 "QSOs are about 1-3% of point sources at high Galactic latitude and r < 21"
                 + ("; galaxies about two thirds of all sources there)." if three else ").")),
              "",
              "| objects | n | ECE before | ECE after | macro-F1 at 0.5 (raw) | "
              "macro-F1 at threshold (calibrated) |", "|---|---|---|---|---|---|"]
    for split in ("validation", "test"):
        if split in calibration:
            row = calibration[split]
            lines.append(f"| {split}{' (fitted on)' if split == 'validation' else ''} | "
                         f"{row['objects']} | {row['ece_before']:.4f} | {row['ece_after']:.4f} "
                         f"| {row['macro_f1_at_0.5']:.4f} | {row['macro_f1_at_threshold']:.4f} |")
    lines += ["", "## Limits", "",
              "* Trained on simulated images; real surveys differ in PSF, noise and "
              "neighbours. Check it on your own labelled objects before trusting p(QSO).",
              ("* Galaxies are a class of their own, simulated (Sérsic profiles with real "
               "catalogue colours); real galaxies' shapes vary more. A cutout with no "
               if three else
               "* Point sources only (galaxies were not in the training set). A cutout with no ")
              + "source detected at its centre is flagged by `starqso predict`, not classified; "
              "so is a source narrower than the PSF (a cosmic ray or hot pixel: qflag "
              "NOT_CLASSIFIED + ARTEFACT).",
              "* Validation metrics are on the simulated population (about 30% QSOs); "
              "precision depends on the QSO fraction of your sample: give it to "
              "`starqso predict --prior`.", ""]
    return "\n".join(lines)
