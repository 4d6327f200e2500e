"""`hfport inspect CKPT`: what is in a checkpoint, before converting it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
import torch

from hfport.converters.pipeline import check_tensors, detect_family
from hfport.read.torch_file import load_checkpoint


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def summarise(path: Path, trust_pickle: bool = False) -> dict:
    checkpoint = load_checkpoint(path, trust=trust_pickle)
    family = detect_family(checkpoint, path)
    check_tensors(checkpoint[family.state_key], path)
    facts = family.describe(checkpoint)
    weights = facts.pop("weights")
    baggage = facts.pop("baggage")
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in weights.values())
    facts["tensors"] = len(weights)
    facts["parameters"] = sum(t.numel() for t in weights.values() if t.is_floating_point())
    facts["dtypes"] = dict(dtypes)
    facts["weight_bytes"] = sum(t.numel() * t.element_size() for t in weights.values())
    facts["other_state_bytes"] = {k: sum(t.numel() * t.element_size() for t in _tensors(v)) for k, v in baggage.items()}
    facts["file_bytes"] = path.stat().st_size
    return facts


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@click.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickled objects (only for files you trust).")
def command(checkpoint: Path, as_json: bool, trust_pickle: bool):
    """Show family, architecture, structural flags, dtypes, sizes of a checkpoint.

    \b
    Examples:
      hfport inspect ofa_large.pt
      hfport inspect meter_clip16_288_roberta_vqa.ckpt --json
    """
    facts = summarise(checkpoint, trust_pickle)
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{checkpoint.name}: {facts['family']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("arch", str(facts.get("arch")))
    for key, value in facts["structure"].items():
        table.add_row(key, str(value))
    for key, value in facts["stated"].items():
        table.add_row(f"{key} (stated)", str(value))
    for key, value in facts["task"].items():
        table.add_row(f"task.{key}", str(value))
    table.add_row("tensors", f"{facts['tensors']:,}")
    table.add_row("parameters", f"{facts['parameters']:,}")
    table.add_row("dtypes", ", ".join(f"{k}: {v}" for k, v in facts["dtypes"].items()))
    table.add_row("weights", _mib(facts["weight_bytes"]))
    for key, value in facts["other_state_bytes"].items():
        table.add_row(f"{key} (dropped)", _mib(value))
    table.add_row("file", _mib(facts["file_bytes"]))
    Console().print(table)
