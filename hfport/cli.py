"""The `hfport` command line: one click group, one module per command under hfport/commands/."""

from __future__ import annotations

import importlib
import os
import sys

import click

from hfport import __version__
from hfport.errors import HfportError

# command name -> (module under hfport.commands that defines `command`, the one-line help `hfport --help` lists).
# The short help lives here so that listing the commands imports none of them (and so neither torch nor
# transformers); tests/test_cli_habits.py checks it matches each command's own docstring.
COMMANDS = {
    "inspect": ("inspect", "Show family, architecture, structural flags, dtypes, sizes of a checkpoint."),
    "convert": ("convert", "Convert an OFA (.pt), fairseq translation transformer / BART (.pt) or METER (.ckpt)..."),
    "verify": ("verify", "Compare a converted folder with the original model, output by output and layer by layer."),
    "record": ("record", "Run the original model on deterministic probes and save its outputs, per-layer states..."),
    "push": ("push", "Push a converted FOLDER to the Hub as REPO_ID in one atomic commit."),
    "run": ("run", "Run a converted model on an image (and a text) and print its answer."),
    "demo": ("demo", "Write a seeded tiny OFA fairseq checkpoint, then inspect, convert, verify and dry-run a push."),
    "export": ("export", "Write a converted folder back as a fairseq (.pt) or Lightning (.ckpt) checkpoint."),
}


class LazyGroup(click.Group):
    """Imports a command's module only when it runs (or its own --help is asked for), so `hfport --help` stays
    fast: the listing comes from COMMANDS, not from the modules."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        return importlib.import_module(f"hfport.commands.{entry[0]}").command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
    quiet_library_progress_bars()


def quiet_library_progress_bars() -> None:
    """transformers' and huggingface_hub's own progress bars ("Loading weights", downloads) stay out of hfport's
    output, unless HF_HUB_DISABLE_PROGRESS_BARS says otherwise. Before they are imported, the environment does it
    (both read it at import); once imported, their switches."""
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def printable(text: str) -> str:
    """Control characters (newlines, terminal escapes) from checkpoint keys or file names, made visible:
    one error stays one line, and nothing in a message can drive the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _wants_json(args: list[str]) -> bool:
    """`--json` among the options (not after `--`): errors then also go to stdout as one JSON object."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _fail(message: str, code: int, as_json: bool, hint: str | None = None, kind: str | None = None) -> int:
    """One `error:` line on stderr (and the hint); with --json also {"error": ...} on stdout."""
    click.echo(printable(message if message.startswith(("error:", "aborted", "interrupted")) else f"error: {message}"),
               err=True)
    if hint:
        click.echo(f"       {printable(hint)}", err=True)
    if as_json:
        import json

        text = message.removeprefix("error: ")
        payload = {"error": text, "exit_code": code}
        if hint:
            payload["hint"] = hint
        if kind:
            payload["kind"] = kind
        click.echo(json.dumps(payload, ensure_ascii=False))
    return code


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    as_json = _wants_json(args)
    try:
        cli.main(args=argv, prog_name="hfport", standalone_mode=False)
    except HfportError as err:
        if debug:
            raise
        if getattr(err, "json_emitted", False):  # the command already printed its JSON result (a failed verify)
            return _fail(str(err), err.exit_code, False, err.hint)
        return _fail(str(err), err.exit_code, as_json, err.hint, type(err).__name__)
    except RecursionError:  # hostile input: structures nested thousands deep
        if debug:
            raise
        return _fail("the input is nested too deeply to be processed", 2, as_json)
    except OSError as err:  # the file system said no: read-only, full, a size limit, a name too long
        if debug:
            raise
        where = f": {err.filename}" if err.filename else ""
        return _fail(f"{err.strerror or err}{where}", 2, as_json, kind="OSError")
    except click.exceptions.Abort:
        return _fail("aborted", 130, as_json)
    except click.ClickException as err:
        if as_json:
            return _fail(err.format_message(), 2, True, kind=type(err).__name__)
        err.show()
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        return _fail("interrupted", 130, as_json)
    except Exception as err:  # a bug in hfport: still one line, unless --debug
        if debug:
            raise
        return _fail(f"internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)", 3, as_json,
                     kind="InternalError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
