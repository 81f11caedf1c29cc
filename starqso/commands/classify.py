"""``starqso predict`` and ``starqso embed``: every row of any input through the model."""

from __future__ import annotations

import pathlib
import time

import click

from starqso._util.native_stderr import native_stderr_filtered
from starqso.commands.shared import LazyProgress, command_line, log_to_stderr
from starqso.errors import InputError

# ``--model`` of both commands: an exported model, the shipped one by default.
_model_option = click.option(
    "--model", "model_dir", type=click.Path(file_okay=False), default=None,
    help="Exported model folder [default: the pretrained model shipped with starqso].")
# ``--id-column`` of both commands: they read any input ``predict`` reads.
_id_column_option = click.option(
    "--id-column", default=None,
    help="Id column of a Parquet, HATS, zarr-metadata or stack input [default: id, else "
         "source_id].")


@click.command()
@click.argument("catalog", type=click.Path())
@_model_option
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
@click.option("--prior", default=None, metavar="F|NAME=F|train",
              help="QSO fraction of your sample, 0 < F < 1, or fractions by class name "
                   "(QSO=0.02, or QSO=0.02,GALAXY=0.6 for a three-class model; STAR takes "
                   "the rest): the class probabilities are corrected to it by "
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
@_id_column_option
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
    from starqso.inference import parse_ebv, resolve_runtime, two_class_note

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
    with native_stderr_filtered(), LazyProgress(None, "classifying") as progress:
        log = log_to_stderr
        if dataset:
            from starqso.inference.dask import DEFAULT_PARTITION_ROWS, predict_dataset

            summary = predict_dataset(
                catalog, output, model_dir=model_dir, runtime=runtime, batch_size=batch_size,
                prior=prior, tta=tta, workers=workers, scheduler=scheduler,
                partition_rows=partition_rows or DEFAULT_PARTITION_ROWS, resume=resume,
                strict=strict, id_column=id_column, keep=keep, progress=progress, log=log,
                command=command_line(), uncertainty=uncertainty, ebv=ebv)
        else:
            from starqso.inference import predict_catalog

            summary = predict_catalog(catalog, output, model_dir=model_dir, runtime=runtime,
                                      batch_size=batch_size, progress=progress, strict=strict,
                                      resume=resume, log=log, prior=prior, tta=tta,
                                      id_column=id_column, keep=keep,
                                      command=command_line(), uncertainty=uncertainty,
                                      ebv=ebv)
    seconds = time.perf_counter() - start
    new_rows = summary["rows"] - summary["resumed"]
    click.echo(f"{summary['rows']} rows, {summary['qso']} QSO, {summary['galaxy']} GALAXY, "
               f"{summary['flagged']} flagged, "
               f"{summary['repaired']} repaired, {summary['caveats']} with a qflag caveat, "
               f"prior {summary['prior']}, "
               f"{new_rows / max(seconds, 1e-9):.0f} rows/s -> {summary['output']}")
    # Once per run, after it succeeded (an error stays the one line on stderr).
    note = two_class_note(summary["record"])
    if note:
        log_to_stderr(note)


@click.command()
@click.argument("catalog", type=click.Path())
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="Embeddings table: .csv (with a side-car OUTPUT.json), .fits or .parquet.")
@_model_option
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--prior", default=None, metavar="F|NAME=F|train",
              help="QSO fraction of your sample for p_qso, as `predict --prior`.")
@_id_column_option
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
    with native_stderr_filtered(), LazyProgress(None, "embedding") as progress:
        summary = embed_catalog(catalog, output, model_dir=model_dir, batch_size=batch_size,
                                prior=prior, id_column=id_column, progress=progress, ebv=ebv,
                                log=log_to_stderr,
                                command=command_line())
    seconds = time.perf_counter() - start
    spaces = ", ".join(f"{name} ({dim})" for name, dim in summary["spaces"].items())
    click.echo(f"{summary['rows']} rows, {summary['embedded']} embedded, {summary['flagged']} "
               f"flagged; spaces {spaces}; prior {summary['prior']}, "
               f"{summary['rows'] / max(seconds, 1e-9):.0f} rows/s -> {summary['output']}")
