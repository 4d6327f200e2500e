"""`hfport demo`: the whole job end to end on a built-in seeded model, no files or network needed."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", default="demo-output", show_default=True, type=click.Path(path_type=Path),
              help="Where the checkpoint, converted folder and report go.")
@click.option("--force", is_flag=True, help="Replace WORKDIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (the steps go to stderr).")
def command(workdir: Path, force: bool, as_json: bool):
    """Write a seeded tiny OFA fairseq checkpoint, then inspect, convert, verify and dry-run a push."""
    from hfport.demo import run_demo

    say = (lambda text="": click.echo(text, err=True)) if as_json else click.echo
    result = run_demo(workdir, force=force, say=say)
    if as_json:
        import json

        report = result["report"]
        click.echo(json.dumps({"folder": str(result["folder"]), "passed": report["passed"],
                               "report": str(Path(result["folder"]) / "verification.json")}, indent=2))
    if not result["report"]["passed"]:
        raise SystemExit(1)
    if as_json:
        return
    click.echo(f"done: load it with AutoModelForSeq2SeqLM.from_pretrained('{result['folder']}', trust_remote_code=True)")
