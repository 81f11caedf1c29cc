"""The output folder of ``starqso predict`` on Dask: a Parquet dataset or a HATS catalogue.

The partition files are written into a staging folder beside the output (``.OUT.partial``,
with the run's identity for ``--resume``), which becomes the output by one rename when every
partition is done. This module owns that folder's layout: the staging folder, the checks that
an existing output is one starqso wrote, the counts of a finished partition file, and the
HATS catalogue written from the partition files.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from starqso._util import jsonfile as strict_json
from starqso._util.ownership import is_current_or_above, shown_entries
from starqso.errors import InputError
from starqso.inference.classify import OUTPUT_COLUMNS
from starqso.schema import QFLAG_COLUMN

RECORD_FILE = "_starqso.json"
IDENTITY_FILE = ".identity.json"


def part_name(index):
    """The file of partition ``index`` in the output dataset: ``part-000012.parquet``."""
    return f"part-{index:06d}.parquet"


def read_identity(staging):
    try:
        return strict_json.read_json(staging / IDENTITY_FILE)
    except strict_json.DuplicateKeyError:
        raise
    except (OSError, ValueError):
        return None


def fresh_staging(staging):
    """An empty staging folder at ``staging`` (``.OUT.partial``), made by this run.

    Its name is fixed, since ``resume`` finds an interrupted run's partitions there; so an
    existing one is removed only when it is a staging folder of starqso's (it holds the run
    identity file, or nothing), never a link or a user's folder of that name.

    Raises:
        InputError: ``staging`` is a link, a file, or a folder starqso did not make.
    """
    if os.path.lexists(staging):
        if staging.is_symlink() or not staging.is_dir():
            raise InputError(f"{staging} is in the way of this run's staging folder and is "
                             f"not one starqso made (a link or a file); remove it or choose "
                             f"another --output")
        entries = os.listdir(staging)
        if entries and IDENTITY_FILE not in entries:
            raise InputError(f"{staging} is in the way of this run's staging folder and is "
                             f"not one starqso made (it holds {', '.join(sorted(entries)[:5])}"
                             f"); remove it or choose another --output")
        shutil.rmtree(staging)
    staging.mkdir()  # exclusive: fails should another process make it meanwhile


_PART_FILE = re.compile(r"part-\d{6}\.parquet")


def _starqso_hats(folder):
    """Whether ``folder`` is a HATS catalogue starqso wrote (its ``hats.properties`` says so)."""
    properties = folder / "hats.properties"
    try:
        return (not folder.is_symlink() and folder.is_dir() and properties.is_file()
                and "starqso_version=" in properties.read_text(errors="replace"))
    except OSError:
        return False


def _foreign_entries(output, entries):
    """The entries of an earlier output that predict's Dask path did not write, or None
    when ``output`` is no starqso output at all.

    A Parquet dataset holds ``_starqso.json`` and ``part-NNNNNN.parquet`` files; a HATS
    catalogue (lsdb's collection layout) ``collection.properties`` and catalogue folders
    whose ``hats.properties`` carries starqso's provenance.
    """
    def plain_file(name):
        return (output / name).is_file() and not (output / name).is_symlink()

    if plain_file(RECORD_FILE):
        return [name for name in entries
                if not (plain_file(name) and (name == RECORD_FILE or _PART_FILE.fullmatch(name)))]
    ours = [name for name in entries if _starqso_hats(output / name)]
    if not ours:
        return None
    return [name for name in entries
            if name not in ours and not (name == "collection.properties" and plain_file(name))]


def check_output_folder(output):
    """OUT must be new, empty or an earlier starqso output and nothing else: it is replaced
    whole, so a user's file put inside an earlier output (notes, a sub-folder) would go."""
    if is_current_or_above(output):
        raise InputError(f"--output {output} is the current folder or one above it; a Parquet "
                         f"dataset output is replaced as a whole, so name a new folder (e.g. "
                         f"--output predictions.parquet). Received: --output {output}")
    if not os.path.lexists(output):
        return
    if not output.is_dir():
        kind = "a broken symbolic link" if output.is_symlink() else "a file"
        raise InputError(f"--output {output} is {kind}; a Parquet dataset output is a folder "
                         f"(name it OUT.parquet or without a suffix), or use a .csv/.fits "
                         f"output without --workers")
    try:
        entries = sorted(os.listdir(output))
    except OSError as err:
        raise InputError(f"--output {output} could not be read ({err.strerror or err}); "
                         f"choose another --output") from err
    if not entries:
        return
    foreign = _foreign_entries(output, entries)
    if foreign is None:
        raise InputError(f"--output {output} is a folder that starqso did not write; it "
                         f"is replaced as a whole, so it must be new, empty or an earlier "
                         f"starqso output")
    if foreign:
        shown = shown_entries(foreign)
        raise InputError(f"--output {output} is an earlier starqso output, but it also holds "
                         f"{shown}, which predict did not write; it is replaced as a whole, so "
                         f"move those away or choose another --output")


def file_counts(path):
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["p_qso", "label", "flag", QFLAG_COLUMN])
    p_qso = table.column("p_qso").is_null().to_numpy(zero_copy_only=False)
    labels = np.asarray(table.column("label").to_pylist())
    flags = np.asarray(table.column("flag").to_pylist())
    bits = table.column(QFLAG_COLUMN).to_numpy(zero_copy_only=False)
    return {"rows": len(labels), "qso": int(np.sum(labels == "QSO")),
            "galaxy": int(np.sum(labels == "GALAXY")),
            "flagged": int(p_qso.sum()), "repaired": int(np.sum(~p_qso & (flags != ""))),
            "caveats": int(np.sum(~p_qso & (bits != 0)))}


def write_hats(rows_source, partitions, staging, target, record, name):
    """The finished partitions as a HATS catalogue (lsdb), the input's pixels and ra/dec."""
    import lsdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_pixel = {}
    for partition in partitions:
        by_pixel.setdefault(rows_source.pixels[partition.part], []).append(
            str(staging / part_name(partition.index)))
    ra, dec = rows_source.position_columns
    columns = [*OUTPUT_COLUMNS, *rows_source.keep_columns]
    catalog = lsdb.open_catalog(rows_source.path, columns=[ra, dec])

    def attach(frame, pixel):
        files = by_pixel[(int(pixel.order), int(pixel.pixel))]
        results = pa.concat_tables([pq.read_table(name) for name in files])
        results = results.to_pandas(types_mapper=pd.ArrowDtype)
        results.index = frame.index
        return results[columns]

    empty = pq.read_table(str(staging / part_name(partitions[0].index))).schema.empty_table()
    meta = empty.to_pandas(types_mapper=pd.ArrowDtype)[columns]
    meta.index = catalog.meta.index[:0]
    result = catalog.map_partitions(attach, include_pixel=True, meta=meta)
    properties = {f"starqso_{key.removeprefix('starqso_')}": (
        json.dumps(value) if not isinstance(value, str) else value)
        for key, value in record.items() if key not in ("files",)}
    result.write_catalog(str(target), catalog_name=name,
                         addl_hats_properties=properties, progress_bar=False)
