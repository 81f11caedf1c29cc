"""``starqso fit``, ``starqso finetune`` and ``starqso export``: training, then exporting."""

from __future__ import annotations

import contextlib

import click

from starqso._util.native_stderr import native_stderr_filtered


@click.command()
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Catalogue (CSV or FITS) of labelled cutouts (+ spectra) [default: freshly "
                   "simulated demo data].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/starqso",
              show_default=True, help="Run folder to write.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML run configuration (overrides on top of --preset).")
@click.option("--preset", type=click.Choice(["tiny", "base", "large"]), default=None,
              help="Model/training preset: tiny (tests), base (the demo), large (the shipped "
                   "model) [default: base].")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]),
              default="default", show_default=True,
              help="tf.distribute strategy: one device, all local devices, or the cluster in "
                   "TF_CONFIG.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out from its last completed epoch.")
@click.option("--strict", is_flag=True,
              help="Fail on any --data row that cannot be used as it is [default: leave it "
                   "out and list it in OUT/data_flags.csv].")
@click.option("--simulation-cache", type=click.Path(file_okay=False), default=None,
              help="Folder keeping the simulated demo data between runs (reused when the "
                   "arguments and the simulator are the same).")
@click.option("--sky-backgrounds", type=click.Path(), default=None,
              help="A sky-background file from `starqso skies` (or a folder of them): inject "
                   "a fraction data.sky_backgrounds_fraction [default: 0.5] of the simulated "
                   "objects into its real blank-sky cutouts, with each field's PSF.")
@click.option("--no-export", "no_export", is_flag=True,
              help="Train only: leave out OUT/export (make it later with `starqso export "
                   "OUT`).")
def fit(data, out_dir, config_path, preset, strategy, resume, strict, simulation_cache,
        sky_backgrounds, no_export):
    """Train the spectrum encoder, the GAN, the fusion classifier and the image-only baseline.

    Writes every model (.keras), config.yaml, preprocessing statistics, metrics.json and
    history.json into the run folder, with a one-line validation summary per stage, then
    exports the deployable model into OUT/export (unless --no-export).
    """
    from starqso._util.extras import require_tensorflow

    require_tensorflow("starqso fit")
    from starqso.config import get_preset, load_config

    config = None
    if config_path is not None:
        config = load_config(config_path, preset=preset)
    elif preset is not None:
        config = get_preset(preset)
    with native_stderr_filtered():
        from starqso.training import fit_run

        fit_run(out_dir, config, data=data, strategy=strategy, resume=resume, log=click.echo,
                strict=strict, simulation_cache=simulation_cache,
                sky_backgrounds=sky_backgrounds, export=not no_export)


@click.command()
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Catalogue (CSV or FITS) of your labelled cutouts: id, image, label.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Run or export folder to start from [default: the shipped model].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/finetune",
              show_default=True, help="Run folder to write (with OUT/export).")
@click.option("--trainable", default="head", show_default=True,
              help="How deep training reaches: head (the dense layers; with the shipped "
                   "model within 0.002 of the best depth at every label budget in "
                   "benchmarks/results/finetune.md, and the cheapest), N (the head and the "
                   "last N CNN blocks of the classifier) or all (the generator too).")
@click.option("--lr-decay", default=0.75, show_default=True, type=float,
              help="Learning-rate factor per block deeper than the head.")
@click.option("--learning-rate", default=1e-4, show_default=True, type=float,
              help="The head's learning rate.")
@click.option("--epochs", default=20, show_default=True, type=int,
              help="At most this many epochs (early stopping on the validation loss).")
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Objects per step, at most (about a tenth of the training split for "
                   "small catalogues).")
@click.option("--validation-fraction", default=0.2, show_default=True, type=float,
              help="Stratified share of the labels held out for early stopping, the "
                   "calibration and the threshold.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]),
              default="default", show_default=True, help="tf.distribute strategy, as for fit.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted fine-tuning in --out with its own settings.")
@click.option("--strict", is_flag=True,
              help="Fail on any --data row that cannot be used as it is [default: leave it "
                   "out and list it in OUT/data_flags.csv].")
def finetune(data, model_dir, out_dir, trainable, lr_decay, learning_rate, epochs, batch_size,
             validation_fraction, seed, strategy, resume, strict):
    """Adapt a trained model to your own labelled cutouts, then export it.

    Trains the model's last blocks (--trainable) on the catalogue's training split, keeps the
    preprocessing of the base model, and chooses the calibration and the decision threshold
    by cross-validation on your validation split. The base model (weights, temperature,
    threshold) is kept when fine-tuning does not beat it there; either way `starqso predict
    --model OUT/export` defaults to your labels' QSO fraction as the prior.
    The validation metrics before and after are in OUT/finetune.json and the model card.
    """
    from starqso._util.extras import require_tensorflow

    require_tensorflow("starqso finetune")
    from starqso._util.ownership import output_folder, writes_output

    # --out must be new, empty or a finetune run (see starqso._util.ownership), and one run at a
    # time writes it (a multi-worker run's other workers never touch it).
    claim = output_folder(out_dir, "finetune", mark=True) if writes_output(strategy) \
        else contextlib.nullcontext()
    with claim, native_stderr_filtered():
        from starqso.training.finetune import finetune_run

        finetune_run(out_dir, data, model_dir, trainable=trainable, lr_decay=lr_decay,
                     epochs=epochs, learning_rate=learning_rate,
                     validation_fraction=validation_fraction, batch_size=batch_size, seed=seed,
                     strategy=strategy, resume=resume, strict=strict, log=click.echo)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Export folder [default: RUN_DIR/export].")
def export(run_dir, out_dir):
    """Export a run's model: SavedModel, TFLite fp32/fp16/int8, checks and model card.

    Every format takes raw nanomaggie cutouts (N, S, S, 5), channels last, and returns
    calibrated p(QSO) (temperature scaling fitted on the run's validation split); each is
    checked against the Keras model on the run's held-out cutouts. metadata.json gets the
    temperature, the decision threshold chosen on validation (best macro-F1), the training
    QSO fraction and the default prior of `starqso predict`.
    """
    from starqso._util.extras import require_tensorflow

    require_tensorflow("starqso export")
    with native_stderr_filtered():
        from starqso.deploy.export import export_run

        export_run(run_dir, out_dir, log=click.echo)
