"""Issue 37 item 2: predict de-reddens each cutout by the Galactic E(B-V) it is asked to use
(``--ebv column`` for an ``ebv`` column, or ``--ebv VALUE``), so a star behind dust looks to the
model as it would without it; by default and with ``--ebv none`` nothing is de-reddened; bad
values are refused or flagged."""

import json

import numpy as np
from click.testing import CliRunner

from starqso.cli import main
from starqso.schema import EXTINCTION_COEFFICIENTS
from starqso.simulate.profiles import PSF, render_point

SIZE = 32
SKY = np.array([0.0445, 0.0173, 0.029, 0.0465, 0.170])  # real SDSS per-pixel sigma, nmgy
# A main-sequence star at r = 18: u-g 1.2, g-r 0.4, r-i 0.15, i-z 0.05.
STAR_MAGS = np.array([19.6, 18.4, 18.0, 17.85, 17.8])
FLUX = 10 ** ((22.5 - STAR_MAGS) / 2.5)
EBV = 1.0


def _point(seed):
    psf = PSF(kind="moffat", fwhm=1.4 / 0.396, beta=3.5)
    centre = (SIZE - 1) / 2
    crop = render_point(psf, SIZE, centre, centre)[:, :, None] * FLUX[None, None, :]
    return crop + np.random.default_rng(seed).normal(size=crop.shape) * SKY


def _reddened(crop, ebv=EBV):
    """What dust of ``ebv`` does to a crop: every band (sky noise included) dimmer by A_b."""
    return crop * 10 ** (-0.4 * np.asarray(EXTINCTION_COEFFICIENTS) * ebv)


def _stack(tmp_path, name, crops, ebv=None, column="ebv"):
    from astropy.io import fits

    path = tmp_path / f"{name}.fits"
    columns = [fits.Column(name="id", format="10A", array=[f"obj{k}" for k in range(len(crops))])]
    if ebv is not None:
        values = np.asarray(ebv)
        columns.append(fits.Column(name=column, format="10A" if values.dtype.kind == "U" else "D",
                                   array=values))
    fits.HDUList([fits.PrimaryHDU(np.moveaxis(np.stack(crops), -1, 1).astype(np.float32)),
                  fits.BinTableHDU.from_columns(columns)]).writeto(path)
    return path


def _run(path, output, *options):
    return CliRunner().invoke(main, ["predict", str(path), "--output", str(output),
                                     "--runtime", "litert", *options])


def _predict(path, tmp_path, *options, name=None):
    from starqso.io import read_catalog

    output = tmp_path / f"{name or path.stem}.csv"
    result = _run(path, output, *options)
    assert result.exit_code == 0, result.output
    table = read_catalog(output, require=("id",))
    record = json.loads((tmp_path / f"{output.name}.json").read_text())
    return ([float(value) if str(value).strip() else np.nan for value in table["p_qso"]],
            [int(value) for value in table["qflag"]], [str(value) for value in table["flag"]],
            record)


def test_a_reddened_star_with_its_ebv_gets_the_answer_of_the_star_without_dust(tmp_path):
    crops = [_point(seed) for seed in range(3)]
    reddened = [_reddened(crop) for crop in crops]
    clear = _predict(_stack(tmp_path, "clear", crops), tmp_path)
    column = _predict(_stack(tmp_path, "column", reddened, ebv=[EBV] * 3, column="EBV"),
                      tmp_path, "--ebv", "column")
    bare = _stack(tmp_path, "bare", reddened)
    value = _predict(bare, tmp_path, "--ebv", str(EBV))
    for result in (column, value):
        np.testing.assert_allclose(result[0], clear[0], atol=1e-6)
        assert result[1] == clear[1] and result[2] == clear[2]
    assert all(np.isfinite(clear[0]))
    assert clear[3]["ebv"] == "none"
    assert column[3]["ebv"] == "column ebv"
    assert value[3]["ebv"] == EBV
    # The dust is what the model answered to before: the same pixels without their E(B-V).
    observed = _predict(bare, tmp_path, name="observed")
    assert not np.allclose(observed[0], clear[0], atol=1e-3)


def test_ebv_zero_is_no_column_and_the_column_is_used_only_when_asked(tmp_path):
    # De-reddening multiplies the noise (u by 50 at E(B-V) = 1), so it is opt-in: by default,
    # and with --ebv none, an ebv column is ignored.
    reddened = [_reddened(_point(seed)) for seed in range(2)]
    bare = _predict(_stack(tmp_path, "bare", reddened), tmp_path)
    path = _stack(tmp_path, "column", reddened, ebv=[EBV, EBV])
    zero = _predict(path, tmp_path, "--ebv", "0", name="zero")
    ignored = _predict(path, tmp_path, "--ebv", "none", name="ignored")
    default = _predict(path, tmp_path, name="default")
    for result in (zero, ignored, default):
        np.testing.assert_allclose(result[0], bare[0], atol=1e-6)
        assert result[1] == bare[1]
    assert zero[3]["ebv"] == 0.0 and ignored[3]["ebv"] == "none"
    assert default[3]["ebv"] == "none"
    result = _run(_stack(tmp_path, "nocolumn", reddened), tmp_path / "x.csv", "--ebv", "column")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "no" in lines[0] \
        and "ebv column" in lines[0], result.output
    assert not (tmp_path / "x.csv").exists()


def test_a_fits_output_records_where_ebv_came_from(tmp_path):
    from astropy.io import fits

    path = _stack(tmp_path, "column", [_reddened(_point(0))], ebv=[EBV])
    output = tmp_path / "out.fits"
    result = _run(path, output, "--ebv", "column")
    assert result.exit_code == 0, result.output
    assert fits.getheader(output, "CATALOG")["EBV"] == "column ebv"


def test_bad_ebv_values_are_one_line_errors(tmp_path):
    path = _stack(tmp_path, "bare", [_point(0)])
    for value in ("-0.1", "abc", "20", "nan"):
        result = _run(path, tmp_path / "out.csv", "--ebv", value)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "--ebv" in lines[0] and "0 to 10" in lines[0], result.output
    text = _stack(tmp_path, "text", [_point(0)], ebv=np.array(["dusty"]))
    result = _run(text, tmp_path / "out.csv", "--ebv", "column")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "column ebv" in lines[0] and str(text) in lines[0], result.output
    assert not (tmp_path / "out.csv").exists()


def test_a_row_with_a_bad_ebv_is_flagged_and_the_others_are_not_touched(tmp_path):
    crops = [_reddened(_point(seed)) for seed in range(3)]
    good = _predict(_stack(tmp_path, "good", crops, ebv=[EBV] * 3), tmp_path, "--ebv", "column")
    path = _stack(tmp_path, "bad", crops, ebv=[EBV, -0.5, np.nan])
    bad = _predict(path, tmp_path, "--ebv", "column")
    assert bad[0][0] == good[0][0] and bad[1][0] == good[1][0] and not bad[2][0]
    for row in (1, 2):
        assert np.isnan(bad[0][row]) and bad[1][row] & 1 and "ebv" in bad[2][row]
    # --strict stops at the row; the partial file it leaves is not resumed with another ebv.
    output = tmp_path / "strict.csv"
    result = _run(path, output, "--strict", "--batch-size", "1", "--ebv", "column")
    assert result.exit_code != 0 and "row 2" in result.output and "ebv" in result.output
    result = _run(path, output, "--resume", "--ebv", "none", "--batch-size", "1")
    assert result.exit_code != 0 and "--ebv" in result.output, result.output


def test_embed_rows_given_a_path_reads_the_ebv_column_when_asked(tmp_path):
    # embed_rows opened its own source with the column off whatever --ebv said, so
    # ebv="column" on a path was refused as "no ebv column".
    from starqso.discovery.embed import Embedder, embed_rows

    path = _stack(tmp_path, "column", [_reddened(_point(0))], ebv=[EBV])
    table = embed_rows(path, Embedder(None), ebv="column")
    assert table.record["ebv"] == "column ebv"
    assert embed_rows(path, Embedder(None)).record["ebv"] == "none"
