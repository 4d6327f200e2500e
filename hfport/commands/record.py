"""`hfport record CKPT --reference-code DIR --out FILE`: a golden file from the original model."""

from __future__ import annotations

from pathlib import Path

import click

from hfport.family import BUILTIN_FAMILIES


@click.command("record")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reference-code", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The original code checkout (OFA or METER).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Golden file to write.")
@click.option("--family", type=click.Choice(sorted(BUILTIN_FAMILIES)), help="Default: detected from the checkpoint.")
@click.option("--reference-python", help="Python of the original's own environment (default: this one).")
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False), help="Torch file {set: inputs} instead of the built-in probes.")
@click.option("--bpe-dir", help="OFA: folder with dict.txt, encoder.json, vocab.bpe.")
@click.option("--text-config", help="METER: the text encoder's config.json.")
@click.option("--vit", help="METER: the CLIP archive the config names.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(checkpoint, reference_code, out, family, reference_python, inputs, bpe_dir, text_config, vit, as_json):
    """Run the original model on deterministic probes and save its outputs, per-layer states and greedy/beam
    generations as a golden file for `hfport verify --golden` (same format as the test fixtures).

    Without hfport in the original's environment, run the recorder there directly:
    `python -m hfport.verify.record CKPT --reference-code DIR --out FILE`, or point --reference-python at it.

    \b
    Example:
      hfport record ofa_large.pt --reference-code ~/src/OFA --out ofa_large.golden.pt --reference-python ~/fs/bin/python
    """
    from hfport.verify.reference import record_args, run_recorder

    out.parent.mkdir(parents=True, exist_ok=True)
    run_recorder(record_args(str(checkpoint), str(reference_code), str(out), family, inputs, bpe_dir, text_config, vit),
                 reference_python)
    if as_json:
        import json

        click.echo(json.dumps({"written": str(out)}))
        return
    click.echo(f"wrote {out}")
