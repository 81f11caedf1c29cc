import pathlib
import re
import subprocess
import sys

from click.testing import CliRunner

from starqso import __version__
from starqso.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from starqso.cli import main\n"
        "for args in (['--help'], ['--version'], ['simulate', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_predict_help_names_the_prior_and_tta_without_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from starqso.cli import main\n"
        "result = CliRunner().invoke(main, ['predict', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "text = ' '.join(result.output.split())\n"
        "assert '--prior F|NAME=F|train' in text and '--tta' in text, text\n"
        "assert \"'train' for no correction\" in text and '8x' in text, text\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_simulate_command_writes_a_simulation(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["simulate", str(out), "--n", "5", "--seed", "2",
                                       "--size", "24", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "simulated 5 objects" in result.output
    assert (out / "catalog.csv").exists()
    assert len(list((out / "images").glob("*.fits"))) == 5
    assert len(list((out / "spectra").glob("*.fits"))) == 5


def test_bad_input_gives_one_line_and_no_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", str(tmp_path), "--n", "0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "starqso: error: --n must be at least 1. Received: n=0"]
    assert "Traceback" not in result.output
    runner.invoke(main, ["simulate", str(tmp_path), "--n", "1", "--size", "16",
                         "--workers", "1"])
    again = runner.invoke(main, ["simulate", str(tmp_path), "--n", "1"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)\n```", readme, flags=re.S)
    test_commands = [c for c in commands if "pytest" in c and "\n" not in c]
    assert test_commands, "README has no one-line test command"
    assert test_commands[0] in ci.splitlines()
