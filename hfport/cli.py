"""The `hfport` command line: one click group, one module per command under hfport/commands/."""

from __future__ import annotations

import importlib
import sys

import click

from hfport import __version__
from hfport.errors import HfportError

# command name -> module under hfport.commands that defines `command`
COMMANDS = {
    "inspect": "inspect",
    "convert": "convert",
    "verify": "verify",
    "record": "record",
    "push": "push",
    "run": "run",
    "demo": "demo",
    "export": "export",
}


class LazyGroup(click.Group):
    """Imports a command's module only when it runs, so `hfport --help` stays fast."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"hfport.commands.{module}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hfport")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """Convert OFA and METER checkpoints into Hugging Face models, verify them, publish them.

    \b
    Examples:
      hfport inspect ofa_large.pt
      hfport convert ofa_large.pt ./ofa-large-hf --dtype float16
      hfport verify ./ofa-large-hf --golden ofa_large.golden.pt
      hfport push ./ofa-large-hf my-org/ofa-large --create-pr
      hfport export ./ofa-large-hf ofa_large.roundtrip.pt
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def printable(text: str) -> str:
    """Control characters (newlines, terminal escapes) from checkpoint keys or file names, made visible:
    one error stays one line, and nothing in a message can drive the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def main(argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="hfport", standalone_mode=False)
    except HfportError as err:
        if debug:
            raise
        click.echo(f"error: {printable(str(err))}", err=True)
        if err.hint:
            click.echo(f"       {printable(err.hint)}", err=True)
        return err.exit_code
    except RecursionError:  # hostile input: structures nested thousands deep
        if debug:
            raise
        click.echo("error: the input is nested too deeply to be processed", err=True)
        return 2
    except OSError as err:  # the file system said no: read-only, full, a size limit, a name too long
        if debug:
            raise
        where = f": {err.filename}" if err.filename else ""
        click.echo(printable(f"error: {err.strerror or err}{where}"), err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as err:  # a bug in hfport: still one line, unless --debug
        if debug:
            raise
        click.echo(printable(f"error: internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)"),
                   err=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
