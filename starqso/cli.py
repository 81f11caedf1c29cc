"""The ``starqso`` command line: a thin click group, one library call per command.

TensorFlow is imported only inside the commands that need it, so ``starqso --help`` stays fast.
User errors (:class:`starqso.errors.InputError`, missing files) print one line on stderr and
exit with status 2; anything else prints one line and exits with 1, Ctrl-C with 130;
``starqso --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import subprocess
import sys
import time

# Before anything imports TensorFlow: its C++ INFO/WARNING lines off (TensorFlow reads this
# once, when it loads). TensorFlow 2.21 logs through absl before absl is initialised and then
# ignores it, which is why the commands also filter native stderr (_native_stderr_filtered).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from starqso import __version__  # noqa: E402
from starqso.errors import InputError  # noqa: E402

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130
#: ``simulate --size`` range: the sky simulator's smallest cutout, and 256 pixels (101"), far
#: more than a point source and its sky need; each object costs time and memory growing with
#: the square of the side (5 s per object at 256 on one core, 4x supersampled).
SIMULATE_SIZE_RANGE = (16, 256)
# Native (C++) log lines of TensorFlow and LiteRT that carry nothing for a user: absl's
# "before InitializeLog" notice, INFO/WARNING lines ("I0000 00:00:... port.cc:153] ..."), the
# CPU-instructions note and the CUDA probe's errors on a machine without a GPU, and LiteRT's
# XNNPACK notice. Any other line (an F fatal line, a real error) still reaches stderr.
NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ cuda_\w+\.cc:\d+\] "
    r"|To enable the following instructions: "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    # the TFLite converter's settings line, once per converted model (export, fit, finetune)
    r"|fully_quantize: \d+, inference_type: \d+, ")
# Python loggers of TensorFlow and absl whose WARNING lines (tf.function "retracing" notes)
# carry nothing for a user; ERROR and above still print.
QUIET_LOGGERS = ("tensorflow", "absl")
# The filter runs in its own process, so that whatever a crash writes last (an absl FATAL
# line before abort) still reaches the terminal after this process is gone.
_FILTER_PROGRAM = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command; drain until EOF
noise = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not noise.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


@contextlib.contextmanager
def _native_stderr_filtered():
    """Drop TensorFlow's and LiteRT's native log noise (:data:`NATIVE_NOISE`) from stderr.

    File descriptor 2 goes through a small filter process while Python's own ``sys.stderr``
    (error lines, the progress bar) writes to the terminal directly; the Python loggers of
    :data:`QUIET_LOGGERS` print only errors. The filter is not used when stderr is not a real
    file descriptor (click's CliRunner), and nothing changes when ``STARQSO_NATIVE_LOGS`` is
    set (to see every line).

    Yields:
        None.
    """
    if os.environ.get("STARQSO_NATIVE_LOGS"):
        yield
        return
    import logging

    # Lazily, by name: setting a level imports nothing, and TensorFlow's logger keeps it.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stderr_fd = None
    if stderr_fd != 2 or os.name != "posix":
        yield
        return
    try:  # absl-py's "logging before flag parsing" notice, if anything logs through it
        import absl.logging

        absl.logging._warn_preinit_stderr = False
    except (ImportError, AttributeError):
        pass
    sys.stderr.flush()
    terminal = os.dup(2)
    read, write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER_PROGRAM, NATIVE_NOISE.pattern],
            stdin=read, stdout=terminal, stderr=subprocess.DEVNULL)
    except OSError:  # no filter: the lines are noise, not a reason to fail
        for fd in (read, write, terminal):
            os.close(fd)
        yield
        return
    os.close(read)
    python_stderr = sys.stderr
    sys.stderr = open(terminal, "w", buffering=1, encoding=python_stderr.encoding,  # noqa: SIM115
                      errors="backslashreplace", closefd=False)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's write end here: the filter drains and exits
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(terminal)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker process still holds the pipe open
            pass


def _usage_error(err: click.UsageError) -> click.exceptions.Exit:
    """A click option error (bad value, unknown option, missing argument) as one line.

    click's own display is four lines (usage, a hint, a blank, the error); this prints
    ``starqso: error: MESSAGE; see `starqso COMMAND --help```, where click's message names
    the option and the value.

    Returns:
        The exit (status 2) to raise.
    """
    where = err.ctx.command_path if err.ctx is not None else "starqso"
    message = _one_line(err.format_message()).rstrip(".")
    click.echo(f"starqso: error: {message}; see `{where} --help`", err=True)
    return click.exceptions.Exit(EXIT_INPUT_ERROR)


def _os_error_message(err: OSError) -> str:
    """An OSError as ``reason: path`` (both paths for a rename), never ``reason: None``."""
    reason = err.strerror or str(err)
    paths = [str(path) for path in (err.filename, err.filename2) if path is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


class _Group(click.Group):
    """A click group that turns user errors, option errors included, into one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `starqso` alone: the help text
        except click.UsageError as err:
            raise _usage_error(err) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:
            raise _usage_error(err) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (InputError, OSError) as err:
            if ctx.params.get("debug"):
                raise
            message = str(err) if isinstance(err, InputError) else _os_error_message(err)
            click.echo(f"starqso: error: {_one_line(message)}", err=True)
            ctx.exit(EXIT_INPUT_ERROR)
        except KeyboardInterrupt:
            click.echo("starqso: interrupted (predict and fit continue with --resume)",
                       err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as err:
            # A bug, not bad input: still no traceback unless asked for, but say how to get it.
            if ctx.params.get("debug"):
                raise
            click.echo(f"starqso: internal error: {type(err).__name__}: "
                       f"{_one_line(str(err))} (rerun with `starqso --debug ...` for the "
                       f"traceback and please report it)", err=True)
            ctx.exit(EXIT_INTERNAL_ERROR)


def _command_line():
    """The command line as typed (``starqso predict ...``), for an output's provenance."""
    import shlex

    words = [os.path.basename(sys.argv[0]) if sys.argv else "starqso", *sys.argv[1:]]
    if words[0] in ("cli.py", "__main__.py", "-m", "-c"):
        words[0] = "starqso"
    return shlex.join(words)


def _one_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines)[:1000] if lines else "(no message)"


class _LazyProgress:
    """A progress bar on stderr that appears only once work has started.

    Arguments are validated before the first update, so a bad option prints its one-line
    error without a half-drawn bar before it. Called with the number of items done so far
    (and the total, when the caller learns it only once work starts).
    """

    def __init__(self, length, label):
        self.length, self.label = length, label
        self.bar, self.done = None, 0

    def __call__(self, count, total=None):
        if self.bar is None:
            self.bar = click.progressbar(length=total or self.length, label=self.label,
                                         file=sys.stderr,
                                         show_pos=True).__enter__()
        self.bar.update(count - self.done)
        self.done = count

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="starqso")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(debug):
    """starqso: tell stars from quasars (QSOs) in five-band survey cutouts.

    Cutouts are FITS cubes (5, H, W) of u,g,r,i,z in nanomaggies at 0.396"/px. Run
    `starqso COMMAND --help` for each command.
    """


@main.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--n", "num_objects", default=1000, show_default=True, type=int,
              help="Number of objects to simulate.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed; the same seed gives byte-identical files.")
@click.option("--size", default=48, show_default=True, type=int,
              help="Cutout side in pixels (0.396\"/px), 16 to 256.")
@click.option("--qso-fraction", default=None, type=float,
              help="Fraction of QSOs [default: the real SDSS catalogue's, about 0.30].")
@click.option("--overwrite", is_flag=True, help="Replace an existing simulation in OUTDIR.")
@click.option("--workers", default=None, type=int,
              help="Processes to use [default: all CPU cores, at most 8].")
def simulate(outdir, num_objects, seed, size, qso_fraction, overwrite, workers):
    """Simulate SDSS-like cutouts, spectra and a catalogue into OUTDIR.

    Writes OUTDIR/catalog.csv, OUTDIR/images/*.fits (5-band cutouts) and
    OUTDIR/spectra/*.fits (SDSS spec format), one pair per object, drawn from real SDSS
    catalogue rows and real stellar / QSO spectra.
    """
    from starqso.simulate import simulate_survey

    low, high = SIMULATE_SIZE_RANGE
    if not low <= size <= high:
        raise InputError(f"--size must be between {low} and {high} pixels ({high} px is 101\" "
                         f"at 0.396\"/px, far more than a point source needs; the cost per "
                         f"object grows with the square of the side). Received: size={size}")
    start = time.perf_counter()
    with _LazyProgress(num_objects, "simulating") as progress:
        summary = simulate_survey(outdir, num_objects, seed=seed, size=size,
                                  qso_fraction=qso_fraction, overwrite=overwrite,
                                  progress=progress, workers=workers)
    click.echo(f"simulated {summary.num_objects} objects ({summary.num_qso} QSO, "
               f"{summary.num_star} STAR) in {time.perf_counter() - start:.1f} s -> "
               f"{summary.catalog}")


@main.command()
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
def fit(data, out_dir, config_path, preset, strategy, resume, strict, simulation_cache,
        sky_backgrounds):
    """Train the spectrum encoder, the GAN, the fusion classifier and the image-only baseline.

    Writes every model (.keras), config.yaml, preprocessing statistics, metrics.json and
    history.json into the run folder, with a one-line validation summary per stage.
    """
    from starqso._util.extras import require_tensorflow

    require_tensorflow("starqso fit")
    from starqso.config import get_preset, load_config

    config = None
    if config_path is not None:
        config = load_config(config_path, preset=preset)
    elif preset is not None:
        config = get_preset(preset)
    with _native_stderr_filtered():
        from starqso.training import fit_run

        fit_run(out_dir, config, data=data, strategy=strategy, resume=resume, log=click.echo,
                strict=strict, simulation_cache=simulation_cache,
                sky_backgrounds=sky_backgrounds)


@main.command()
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
    with claim, _native_stderr_filtered():
        from starqso.training.finetune import finetune_run

        finetune_run(out_dir, data, model_dir, trainable=trainable, lr_decay=lr_decay,
                     epochs=epochs, learning_rate=learning_rate,
                     validation_fraction=validation_fraction, batch_size=batch_size, seed=seed,
                     strategy=strategy, resume=resume, strict=strict, log=click.echo)


@main.command()
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
    with _native_stderr_filtered():
        from starqso.deploy.export import export_run

        export_run(run_dir, out_dir, log=click.echo)


@main.command()
@click.argument("catalog", type=click.Path())
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Exported model folder [default: the pretrained model shipped with "
                   "starqso].")
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path(),
              help="Output CSV, a FITS table if it ends in .fits, or a Parquet dataset folder "
                   "(a HATS catalogue for a HATS input) if it ends in .parquet or has no "
                   "suffix; the folder is written on Dask.")
@click.option("--runtime", type=click.Choice(["auto", "keras", "litert"]), default="auto",
              show_default=True,
              help="keras (TensorFlow) or litert (int8 TFLite, no TensorFlow needed); auto: "
                   "keras where TensorFlow is installed, litert where it is not and on Dask.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--strict", is_flag=True,
              help="Stop with an error at the first row that would be flagged.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from the partial file (or the finished "
                   "partitions) beside --output.")
@click.option("--prior", default=None, metavar="F|train",
              help="QSO fraction of your sample, 0 < F < 1: p_qso is corrected to it by "
                   "Bayes' rule from the model's training fraction; 'train' for no correction "
                   "[default: the model's default_prior, 0.02 (the sky's, high latitude, "
                   "r < 21); none for models exported without one].")
@click.option("--tta", is_flag=True,
              help="Average p_qso over the 8 flips/90-degree rotations of each cutout (8x "
                   "slower).")
@click.option("--workers", default=None, type=int,
              help="Dask worker processes of a local cluster, one thread each [default for a "
                   "Parquet output: the usable cores].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Use an existing Dask cluster (e.g. tcp://host:8786) instead of a local "
                   "one.")
@click.option("--partition-rows", default=None, type=int,
              help="Rows per Dask task and per output Parquet file [default: 50000].")
@click.option("--id-column", default=None,
              help="Id column of a Parquet, HATS, zarr-metadata or stack input [default: id, "
                   "else source_id].")
@click.option("--keep", default="", metavar="COL,COL",
              help="Input columns to copy into the output after p_qso_err (e.g. ra,dec).")
@click.option("--ebv", default=None, metavar="E|column|none",
              help="De-redden each cutout by Galactic E(B-V) (band b times 10**(0.4 R_b "
                   "E(B-V)), Schlafly & Finkbeiner 2011 SDSS R_b) before the model and the "
                   "colour quality bits: a value in magnitudes, 0 to 10, for every row, or "
                   "'column' for the input's ebv column (any case) [default: none; the model "
                   "is trained on reddened stars, and de-reddening multiplies the noise].")
@click.option("--uncertainty/--no-uncertainty", default=True, show_default=True,
              help="Fill p_qso_err, the spread of p_qso over rotated views of each cutout "
                   "(one extra model evaluation per row; free with --tta).")
def predict(catalog, model_dir, output, runtime, batch_size, strict, resume, prior, tta,
            workers, scheduler, partition_rows, id_column, keep, ebv, uncertainty):
    """Classify the cutouts of CATALOG: a catalogue, a folder, a stack, Parquet or HATS.

    CATALOG is a CSV/FITS catalogue with id and image (a cutout file per object) or
    image_u ... image_z (one FITS file per band); a folder of cutout FITS; a zarr stack
    (images.zarr + images_metadata.parquet, as Cutana writes it); a FITS or HDF5 cube stack
    (N, 5, H, W) with ids; a Parquet file or folder; or a HATS catalogue.

    Writes every input row, in input order: id, p_qso, label (STAR/QSO at the model's
    threshold, applied to p_qso under the chosen prior), flag (empty; why the row could not
    be classified, with p_qso empty; or "repaired ..." when a few NaN/inf pixels were filled
    before classifying), qflag (quality bitmask, 0 for no caveat: 1 not classified,
    2 repaired, 4 extended source, 8 bright neighbour, 16 saturated, 32 low S/N, 64 r outside
    the training range, 128 colours outside the training distribution) and p_qso_err (the
    spread of p_qso over rotated views). The prior, threshold and temperature p_qso comes
    from are in the FITS header (PRIOR, THRESH, TEMPER), the CSV's side-car OUTPUT.json, or
    each Parquet file's metadata and OUT/_starqso.json; so is where E(B-V) came from (EBV:
    "column ebv", the --ebv value or "none"). With --ebv column, a row whose ebv cell is
    blank, negative or above 10 is not classified, with a flag. The output appears only when
    complete; an interrupted run continues with --resume.
    """
    from starqso.inference import parse_ebv, resolve_runtime

    ebv = parse_ebv(ebv)  # a bad value is one line before anything is opened
    keep = tuple(name.strip() for name in keep.split(",") if name.strip())
    suffix = pathlib.Path(output).suffix.lower()
    if suffix not in ("", ".csv", ".fits", ".parquet"):
        raise InputError(f"--output must end in .csv or .fits (one file), or in .parquet or no "
                         f"suffix (a Parquet dataset folder, written on Dask). Received: "
                         f"--output {output}")
    dataset = suffix not in (".csv", ".fits")
    if not dataset and (workers is not None or scheduler is not None
                        or partition_rows is not None):
        raise InputError(f"--workers, --scheduler and --partition-rows write a Parquet dataset: "
                         f"name --output OUT.parquet (or a folder); .csv and .fits outputs are "
                         f"written by one process. Received: --output {output}")
    runtime = resolve_runtime(runtime, dataset)
    start = time.perf_counter()
    if dataset:
        # Dask's worker processes start multiprocessing's resource tracker, which lives until
        # this process ends: started here, before stderr goes through the native-log filter,
        # it does not hold the filter's pipe open (and the filter's exit waiting on it).
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    with _native_stderr_filtered(), _LazyProgress(None, "classifying") as progress:
        log = lambda line: click.echo(line, err=True)  # noqa: E731
        if dataset:
            from starqso.inference.dask import DEFAULT_PARTITION_ROWS, predict_dataset

            summary = predict_dataset(
                catalog, output, model_dir=model_dir, runtime=runtime, batch_size=batch_size,
                prior=prior, tta=tta, workers=workers, scheduler=scheduler,
                partition_rows=partition_rows or DEFAULT_PARTITION_ROWS, resume=resume,
                strict=strict, id_column=id_column, keep=keep, progress=progress, log=log,
                command=_command_line(), uncertainty=uncertainty, ebv=ebv)
        else:
            from starqso.inference import predict_catalog

            summary = predict_catalog(catalog, output, model_dir=model_dir, runtime=runtime,
                                      batch_size=batch_size, progress=progress, strict=strict,
                                      resume=resume, log=log, prior=prior, tta=tta,
                                      id_column=id_column, keep=keep,
                                      command=_command_line(), uncertainty=uncertainty,
                                      ebv=ebv)
    seconds = time.perf_counter() - start
    new_rows = summary["rows"] - summary["resumed"]
    click.echo(f"{summary['rows']} rows, {summary['qso']} QSO, {summary['flagged']} flagged, "
               f"{summary['repaired']} repaired, {summary['caveats']} with a qflag caveat, "
               f"prior {summary['prior']}, "
               f"{new_rows / max(seconds, 1e-9):.0f} rows/s -> {summary['output']}")


@main.command()
@click.argument("predictions", type=click.Path())
@click.option("--truth", "truth", type=click.Path(), required=True,
              help="Labelled catalogue (CSV/FITS with id, label; optional r, redshift).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="evaluation",
              show_default=True, help="Folder for metrics.json and the plots; replaced "
              "as a whole, so it must be new, empty or an earlier evaluation.")
@click.option("--threshold", default=None, type=float,
              help="Call an object QSO when p_qso >= threshold [default: the threshold "
                   "predict labelled PREDICTIONS with (its side-car or FITS header), else "
                   "0.5].")
@click.option("--strict", is_flag=True,
              help="Fail unless every truth row is matched, labelled and scored.")
def evaluate(predictions, truth, out_dir, threshold, strict):
    """Score PREDICTIONS (the output of `starqso predict`) against a labelled catalogue.

    Joins the two by id and reports ids missing from PREDICTIONS, extra ids, flagged rows and
    unlabelled truth rows. Writes metrics.json and plots (confusion matrix, ROC,
    precision-recall, reliability, QSO completeness/purity vs r and redshift) into --out.
    """
    from starqso.evaluation import evaluate_predictions, format_report

    metrics = evaluate_predictions(predictions, truth, out_dir, threshold=threshold,
                                   strict=strict)
    click.echo(format_report(metrics))


@main.command()
@click.argument("catalog", type=click.Path())
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="Embeddings table: .csv (with a side-car OUTPUT.json), .fits or .parquet.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Exported model folder [default: the pretrained model shipped with "
                   "starqso].")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--prior", default=None, metavar="F|train",
              help="QSO fraction of your sample for p_qso, as `predict --prior`.")
@click.option("--id-column", default=None,
              help="Id column of a Parquet, HATS, zarr-metadata or stack input [default: id, "
                   "else source_id].")
@click.option("--ebv", default=None, metavar="E|column|none",
              help="Galactic reddening E(B-V) to de-redden every cutout by, as `predict "
                   "--ebv`: a value or 'column' [default: none].")
def embed(catalog, output, model_dir, batch_size, prior, id_column, ebv):
    """Embed the cutouts of CATALOG (any input `predict` reads) for similarity and clusters.

    Writes one row per input row, in input order: id, p_qso, label, flag, qflag (as
    `predict`), outlier (distance to the 10th nearest training object over its typical value:
    about 1 typical, larger unusual; empty for models exported without a reference) and the
    embeddings: vector_000... (the generated 128-d spectral vector) and, for models with a
    metric-learning head (fit with model.metric_loss), metric_00.... Rows that cannot be
    classified have empty embeddings and say why in flag. Needs TensorFlow (the Keras model).
    """
    from starqso.discovery.embed import embed_catalog
    from starqso.inference import parse_ebv

    ebv = parse_ebv(ebv)
    start = time.perf_counter()
    with _native_stderr_filtered(), _LazyProgress(None, "embedding") as progress:
        summary = embed_catalog(catalog, output, model_dir=model_dir, batch_size=batch_size,
                                prior=prior, id_column=id_column, progress=progress, ebv=ebv,
                                log=lambda line: click.echo(line, err=True),
                                command=_command_line())
    seconds = time.perf_counter() - start
    spaces = ", ".join(f"{name} ({dim})" for name, dim in summary["spaces"].items())
    click.echo(f"{summary['rows']} rows, {summary['embedded']} embedded, {summary['flagged']} "
               f"flagged; spaces {spaces}; prior {summary['prior']}, "
               f"{summary['rows'] / max(seconds, 1e-9):.0f} rows/s -> {summary['output']}")


@main.command()
@click.argument("query")
@click.option("--index", "index_path", required=True, type=click.Path(dir_okay=False),
              help="Embeddings file written by `starqso embed`.")
@click.option("-k", "k", default=20, show_default=True, type=int, help="Neighbours per query.")
@click.option("--space", type=click.Choice(["vector", "metric"]), default=None,
              help="Embedding to search [default: metric where the file has it, else vector].")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              show_default=True)
@click.option("--method", type=click.Choice(["auto", "exact", "hnsw"]), default="auto",
              show_default=True,
              help="exact search, or an approximate faiss HNSW index (built once and kept "
                   "beside the file); auto: exact below 200,000 rows.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model that embeds a cutout QUERY (the one that wrote --index) [default: "
                   "the shipped model].")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Also write the neighbours as CSV.")
def similar(query, index_path, k, space, metric, method, model_dir, output):
    """The objects most like QUERY: an id of --index, or cutouts (any input `predict` reads).

    Prints, per query, its K nearest rows of the embeddings file, nearest first: rank, id,
    distance, p_qso, label and outlier score.
    """
    from starqso.discovery.explore import find_similar, similar_csv_text

    with _native_stderr_filtered():
        results = find_similar(query, index_path, k=k, space=space, metric=metric,
                               method=method, model_dir=model_dir,
                               log=lambda line: click.echo(line, err=True), output=output)
    if output is not None:
        from starqso._util.atomic import write_text_atomically

        write_text_atomically(output, similar_csv_text(results))
    shown_query = None
    for item in results:
        if item["query"] != shown_query:
            shown_query = item["query"]
            click.echo(f"neighbours of {shown_query}:")
            click.echo(f"{'rank':>4}  {'id':<24} {'distance':>9}  {'p_qso':>6}  label  outlier")
        p_qso = f"{item['p_qso']:.3f}" if item["p_qso"] == item["p_qso"] else ""
        outlier = f"{item['outlier']:.2f}" if item["outlier"] == item["outlier"] else ""
        click.echo(f"{item['rank']:>4}  {item['id']:<24} {item['distance']:>9.4f}  "
                   f"{p_qso:>6}  {item['label']:<5}  {outlier}")
    if output is not None:
        click.echo(f"-> {output}")


@main.command()
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="clusters",
              show_default=True, help="Folder for clusters.csv, summary.json and clusters.png "
              "(replaced as a whole).")
@click.option("--space", type=click.Choice(["vector", "metric"]), default=None,
              help="Embedding to cluster [default: metric where the file has it, else vector].")
@click.option("--clusters", "n_clusters", default="auto", show_default=True,
              help="Number of clusters, or auto (best silhouette of 2-12).")
@click.option("--bags", default=25, show_default=True, type=int,
              help="k-means runs on bootstrap samples that vote.")
@click.option("--seed", default=0, show_default=True, type=int)
def cluster(embeddings, out_dir, space, n_clusters, bags, seed):
    """Cluster an embeddings file: PCA + bagged k-means voting, with a vote agreement per row.

    Writes clusters.csv (id, cluster, agreement: the fraction of bags that agree with the
    vote, label, p_qso, outlier), summary.json (sizes, QSO fraction per cluster, purity
    against the model's labels) and clusters.png (the PCA projection coloured by cluster and
    by label).
    """
    from starqso.discovery.explore import cluster_file

    if n_clusters == "auto":
        n_clusters = None
    else:
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            raise InputError(f"--clusters must be a whole number >= 2 or auto. Received: "
                             f"{n_clusters}") from None
    if bags < 1:
        raise InputError(f"--bags must be at least 1. Received: {bags}")
    summary = cluster_file(embeddings, out_dir, space=space, n_clusters=n_clusters,
                           n_bags=bags, seed=seed, log=lambda line: click.echo(line, err=True))
    click.echo(f"{summary['clustered']} of {summary['rows']} rows in {summary['clusters']} "
               f"clusters (sizes {', '.join(map(str, summary['sizes']))}), mean vote "
               f"agreement {summary['mean_agreement']:.3f}, purity vs the model's labels "
               f"{summary['purity_vs_label']:.3f} -> {out_dir}")


@main.command()
@click.argument("frames", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The sky-background file to write (.npz; new, or an earlier `starqso "
                   "skies` output).")
@click.option("--count", default=200, show_default=True, type=int,
              help="Blank cutouts per field, at most (they never overlap).")
@click.option("--size", default=48, show_default=True, type=int,
              help="Cutout side in pixels (fit's default data.cutout_size).")
@click.option("--detect-sigma", default=5.0, show_default=True, type=float,
              help="Detection threshold, in sigmas of the smoothed sky noise.")
@click.option("--blank-radius", default=4.0, show_default=True, type=float,
              help="No detected pixel, in any band, within this many pixels of a centre.")
@click.option("--seed", default=0, show_default=True, type=int)
def skies(frames, out, count, size, detect_sigma, blank_radius, seed):
    """Real blank-sky cutouts, PSF FWHM and sky sigma from your own survey FRAMES.

    FRAMES are FITS images with a WCS in nanomaggies (SDSS corrected frames), one per band and
    field: five files (frame-u-... frame-z-..., or any five in the order u g r i z), or
    folders of them. A file's band comes from its FILTER card or a lone band letter in its
    name (frame-r-004510-4-0030.fits.bz2, field7_r.fits); files whose names differ only in
    that letter form one field, so a folder may hold many fields (in a folder, FITS files
    without a band letter, such as a catalogue, are skipped when others have one).

    Per field and band: sources detected at --detect-sigma (photutils), the sky sigma, and
    the PSF FWHM from the field's own isolated bright stars. Up to --count cutout centres with
    no source within --blank-radius pixels are cut from every band on the r frame's pixel
    grid. Needs photutils (pip install "starqso[train]").

    Example: starqso skies frames/frame-*-004510-4-0030.fits.bz2 --out skies.npz
    """
    from starqso.preprocessing.sky_backgrounds import make_sky_file

    result = make_sky_file(list(frames), out, log=lambda line: click.echo(line, err=True),
                           count=count, size=size, seed=seed, detect_sigma=detect_sigma,
                           blank_radius_px=blank_radius, command=_command_line())
    click.echo(f"{len(result.images)} blank-sky cutouts of {result.size}x{result.size} from "
               f"{len(result.fields)} field{'s' if len(result.fields) != 1 else ''} -> {out}")


if __name__ == "__main__":  # python -m starqso.cli
    main()
