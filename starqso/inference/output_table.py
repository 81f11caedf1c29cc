"""The finished output of ``starqso predict``: the partial file made a CSV (with its
side-car) or a FITS table (with header cards), and the provenance both record.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from starqso._util.atomic import write_bytes_atomically, write_json_atomically
from starqso.inference.classify import OUTPUT_COLUMNS
from starqso.inference.model import EBV_NONE
from starqso.io._fits import hdulist_bytes
from starqso.io.catalog import sidecar_path
from starqso.schema import P_QSO_ERR_COLUMN, QFLAG_BITS, QFLAG_COLUMN


def _header_cards(record):
    """FITS header cards of the output record (prior, threshold, temperature, ...)."""
    prior = record["prior"]
    return [
        ("PRIOR", prior, "QSO fraction p_qso assumes" if prior is not None
         else "QSO fraction p_qso assumes: training mix, unknown"),
        ("PRIORSRC", record["prior_source"], "prior from: default, user or train"),
        ("PRIORVEC", _class_text(record.get("prior_vector")) or "unknown",
         "class fractions assumed"),
        ("CLASSES", ",".join(record.get("classes") or ()) or "STAR,QSO",
         "model classes"),
        ("THRESH", record["threshold"], "label QSO when p_qso >= THRESH"),
        ("TEMPER", 1.0 if record["temperature"] is None else record["temperature"],
         "calibration temperature" if record["temperature"] is not None
         else "not calibrated (older export)"),
        ("TRNFRAC", record["training_qso_fraction"],
         "training QSO fraction" + (" (assumed)" if record["training_qso_fraction_assumed"]
                                    else "")),
        ("TTA", record["tta"], "p_qso averaged over 8 dihedral views"),
        ("UNCERT", record.get("uncertainty", False), "p_qso_err: std over dihedral views"),
        ("EBV", record.get("ebv", EBV_NONE), "E(B-V) de-reddened: column ebv, value or none"),
        ("RUNTIME", record["runtime"], "starqso predict --runtime"),
        ("STQVER", record["starqso_version"], "starqso version"),
        ("MODEL", record["model_name"], "model folder name"),
        ("MODELSHA", record["model_sha256"], "SHA-256 of the model file"),
        ("INPUT", record["source"], "input classified"),
        ("INPUTSHA", record["catalog_sha256"], "SHA-256 of the input (or its listing)"),
        ("DATE", record["created"], "UTC time the output was written"),
        ("COMMAND", record["command"] or "", "the command line"),
        *((f"QBIT{bit.bit_length() - 1}", name, f"qflag bit value {bit}")
          for name, bit in QFLAG_BITS.items()),
    ]


def _class_text(vector):
    """``{name: F}`` as ``NAME=F,...`` (the FITS card of the prior vector); "" for None."""
    return ",".join(f"{name}={fraction:.6g}" for name, fraction in (vector or {}).items())


def provenance(command=None):
    """When and by what an output was made: ``created`` (UTC, ISO 8601) and ``command``.

    Args:
        command: the command line (the CLI passes its own); None: ``sys.argv`` when it is
            starqso's, else None.
    """
    import shlex
    import sys
    import time

    if command is None and sys.argv and "starqso" in " ".join(sys.argv[:2]):
        command = shlex.join(sys.argv)
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}


def csv_cells(values):
    """Kept input values as CSV text: numbers as repr (round-trip exact), NaN/None blank."""
    cells = []
    for value in np.asarray(values, dtype=object):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            cells.append("")
        elif isinstance(value, (bytes, np.bytes_)):
            cells.append(value.decode("utf-8", "replace"))
        elif isinstance(value, (float, np.floating)):
            cells.append(repr(float(value)))
        else:
            cells.append(str(value))
    return cells


def _fits_column(texts):
    """A kept column back from the partial CSV: float64 when every cell is a number or
    blank (NaN), else UTF-8 bytes."""
    try:
        return np.array([float(text) if text else np.nan for text in texts], np.float64)
    except ValueError:
        encoded = np.char.encode(np.asarray(texts, dtype=str), "utf-8")
        return encoded.astype(f"S{max(encoded.dtype.itemsize, 1)}")


def finish_output(partial_file, output, fits_output, record, keep=()):
    """The partial file becomes the output; then its record (side-car or header) is complete.

    A CSV's side-car is removed before the rename and written after it, so a kill in between
    leaves an output without a side-car, never one beside the record of another run.
    """
    if not fits_output:
        sidecar = sidecar_path(output)
        sidecar.unlink(missing_ok=True)
        os.replace(partial_file, output)
        write_json_atomically(sidecar, record, sort_keys=False)
        return
    from astropy.io import fits
    from astropy.table import Table

    with open(partial_file, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]
    text = {name: np.char.encode(np.asarray([row[column] for row in rows], dtype=str), "utf-8")
            for column, name in ((0, "id"), (2, "label"), (3, "flag"))}
    # Text as UTF-8 bytes, as starqso.io.write_catalog stores it (which writes no header cards).
    table = Table({"id": text["id"].astype(f"S{max(text['id'].dtype.itemsize, 1)}"),
                   "p_qso": np.array([float(row[1]) if row[1] else np.nan for row in rows]),
                   "label": text["label"].astype(f"S{max(text['label'].dtype.itemsize, 1)}"),
                   "flag": text["flag"].astype(f"S{max(text['flag'].dtype.itemsize, 1)}"),
                   QFLAG_COLUMN: np.array([int(row[4]) for row in rows], np.int32),
                   P_QSO_ERR_COLUMN: np.array([float(row[5]) if row[5] else np.nan
                                               for row in rows]),
                   **{name: np.array([float(row[column]) if row[column] else np.nan
                                      for row in rows])
                      for column, name in enumerate(OUTPUT_COLUMNS[6:], 6)}})
    for number, name in enumerate(keep, len(OUTPUT_COLUMNS)):
        table[name] = _fits_column([row[number] for row in rows])
    hdu = fits.table_to_hdu(table)
    hdu.name = "CATALOG"
    for keyword, value, comment in _header_cards(record):
        hdu.header[keyword] = (value, comment)
    write_bytes_atomically(output, hdulist_bytes(fits.HDUList([fits.PrimaryHDU(), hdu])))
    partial_file.unlink()
