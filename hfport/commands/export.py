"""`hfport export FOLDER OUT`: an HF folder back to the original checkpoint format (the mapping run backwards)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.converters.pipeline import export_folder


@click.command("export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--trust-remote-code", is_flag=True,
              help="Import the folder's Python even where it differs from the model code this hfport ships "
                   "(refused otherwise: reading the config runs that code).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(folder: Path, output: Path, force: bool, trust_remote_code: bool, as_json: bool):
    """Write a converted folder back as a fairseq (.pt) or Lightning (.ckpt) checkpoint.

    Everything the conversion carried over comes back bit-exactly; derived buffers are rebuilt where the
    original stored them, and tensors the conversion dropped (listed) cannot come back.

    \b
    Example:
      hfport export ./ofa-large-hf ofa_large.roundtrip.pt
    """
    result = export_folder(folder, output, force=force, trust_remote_code=trust_remote_code)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"wrote {result['written']}")
    if result["regenerated"]:
        click.echo(f"rebuilt {len(result['regenerated'])} derived buffers: {', '.join(result['regenerated'])}")
    for key, reason in result["not_restored"].items():
        click.echo(f"not restored: {key} ({reason})")
