"""`hfport demo`: the whole job end to end on a built-in seeded model, no files or network needed."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", default="demo-output", show_default=True, type=click.Path(path_type=Path),
              help="Where the checkpoint, converted folder and report go.")
@click.option("--force", is_flag=True, help="Replace WORKDIR if it exists.")
def command(workdir: Path, force: bool):
    """Write a seeded tiny OFA fairseq checkpoint, then inspect, convert, verify and dry-run a push."""
    from hfport.demo import run_demo

    result = run_demo(workdir, force=force, say=click.echo)
    if not result["report"]["passed"]:
        raise SystemExit(1)
    click.echo(f"done: load it with AutoModelForSeq2SeqLM.from_pretrained('{result['folder']}', trust_remote_code=True)")
