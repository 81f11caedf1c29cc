"""The ``starqso`` command line: a thin click group, one library call per command.

TensorFlow is imported only inside the commands that need it, so ``starqso --help`` stays fast.
User errors (:class:`starqso.errors.InputError`, missing files) print one line on stderr and
exit with status 2; anything else prints one line and exits with 1, Ctrl-C with 130;
``starqso --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow: its C++ INFO/WARNING lines off (TensorFlow reads this
# once, when it loads). TensorFlow 2.21 logs through absl before absl is initialised and then
# ignores it, which is why the commands also filter native stderr (starqso._util.native_stderr).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from starqso import __version__  # noqa: E402
from starqso._util.native_stderr import NATIVE_NOISE  # noqa: E402, F401 (tests use it here)
from starqso.commands.classify import embed, predict  # noqa: E402
from starqso.commands.explore import cluster, evaluate, similar  # noqa: E402
from starqso.commands.simulation import simulate, skies  # noqa: E402
from starqso.commands.training import export, finetune, fit  # noqa: E402
from starqso.errors import InputError  # noqa: E402

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


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


def _one_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines)[:1000] if lines else "(no message)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="starqso")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(debug):
    """starqso: tell stars from quasars (QSOs) in five-band survey cutouts.

    Cutouts are FITS cubes (5, H, W) of u,g,r,i,z in nanomaggies at 0.396"/px. Run
    `starqso COMMAND --help` for each command.
    """


for _command in (simulate, fit, finetune, export, predict, evaluate, embed, similar, cluster,
                 skies):
    main.add_command(_command)


if __name__ == "__main__":  # python -m starqso.cli
    main()
