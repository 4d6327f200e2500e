"""Verification reports: JSON (machine), Markdown (model card), a rich terminal summary."""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

SCHEMA = "hfport.verify/1"
REQUIRED_KEYS = ("schema", "passed", "family", "model", "reference", "tolerance", "outputs", "generation",
                 "first_divergence", "seconds", "hfport_version", "environment")


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if math.isfinite(x) and (abs(x) >= 1e-3 and abs(x) < 1e4):
            return f"{x:.4f}".rstrip("0").rstrip(".")
        return f"{x:.2e}"
    return str(x)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per output; per-layer entries (`name.i`) of one set collapse into one row with the worst figures."""
    groups: "OrderedDict[tuple[str, str], list[dict]]" = OrderedDict()
    for r in report["outputs"]:
        base, dot, _ = r["name"].partition(".")
        groups.setdefault((base + (".*" if dot else ""), r["set"]), []).append(r)
    rows = []
    for (name, set_name), items in groups.items():
        def worst(key, pick=max):
            values = [i.get(key) for i in items if i.get(key) is not None]
            return pick(values) if values else None
        failed = [i for i in items if not i["passed"]]
        rows.append({
            "name": name if len(items) == 1 else f"{name} ({len(items)})",
            "set": set_name,
            "max_abs": worst("max_abs"),
            "mean_abs": worst("mean_abs"),
            "cosine": worst("cosine", min),
            "argmax_agree": worst("argmax_agree", min),
            "top5_overlap": worst("top5_overlap", min),
            "min_atol_to_pass": worst("min_atol_to_pass"),
            "passed": not failed,
            "error": next((i.get("error") for i in failed if i.get("error")), None),
        })
    return rows


def _reference_line(report: dict[str, Any]) -> str:
    ref = report["reference"]
    sha = (ref.get("sha256") or "")[:12]
    what = {"golden": "golden file", "fairseq-live": "live fairseq + OFA", "meter-live": "live METER"}.get(ref["kind"], ref["kind"])
    return f"{what} `{os.path.basename(str(ref.get('path', '')))}`" + (f" (sha256 {sha}…)" if sha else "")


def report_markdown(report: dict[str, Any]) -> str:
    """A Markdown section a model card can embed."""
    tol = report["tolerance"]
    env = report.get("environment", {})
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"### Numerical verification: {verdict}",
        "",
        f"Converted model compared with the {_reference_line(report)}, computed in fp32; tolerance atol "
        f"{_fmt(tol['atol'])}" + (f", rtol {_fmt(tol['rtol'])}" if tol.get("rtol") else "")
        + f" ({tol['policy']} policy). hfport {report['hfport_version']}, torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}.",
        "",
        "| output | inputs | max abs diff | mean abs diff | cosine | argmax agree | top-5 overlap | smallest passing atol | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary_rows(report):
        result = "pass" if row["passed"] else ("FAIL: " + row["error"] if row["error"] else "FAIL")
        lines.append(
            f"| `{row['name']}` | {row['set']} | {_fmt(row['max_abs'])} | {_fmt(row['mean_abs'])} | {_fmt(row['cosine'])} "
            f"| {_fmt(row['argmax_agree'])} | {_fmt(row['top5_overlap'])} | {_fmt(row['min_atol_to_pass'])} | {result} |")
    if report.get("generation"):
        lines += ["", "| generation | inputs | token-exact | checked |", "|---|---|---|---|"]
        for g in report["generation"]:
            lines.append(f"| {g['name']} | {g['set']} | {_fmt(g['exact'])} | {'required' if g.get('required') else 'informational'} |")
    div = report.get("first_divergence")
    if div:
        lines += ["", f"First divergence: **{div['layer']}** (`{div['name']}`, inputs `{div['set']}`"
                  + (f", max abs diff {_fmt(div.get('max_abs'))}" if div.get("max_abs") is not None else "") + ")."]
    return "\n".join(lines) + "\n"


def print_summary(report: dict[str, Any], console: Any = None) -> None:
    """A compact rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    import sys

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    tol = report["tolerance"]
    table = Table(title=f"hfport verify: {report['model']}", title_justify="left")
    for col in ("output", "inputs", "max abs", "mean abs", "cosine", "argmax", "min atol", ""):
        table.add_column(col, justify="left" if col in ("output", "inputs") else "right")
    for row in summary_rows(report):
        mark = "[green]ok[/green]" if row["passed"] else "[red]FAIL[/red]"
        table.add_row(row["name"], row["set"], _fmt(row["max_abs"]), _fmt(row["mean_abs"]), _fmt(row["cosine"]),
                      _fmt(row["argmax_agree"]), _fmt(row["min_atol_to_pass"]), mark)
    console.print(table)
    for g in report.get("generation", []):
        mark = "[green]exact[/green]" if g["exact"] else ("[red]differs[/red]" if g.get("required") else "[yellow]differs[/yellow]")
        console.print(f"  generation {g['name']:<14} {mark}" + ("" if g.get("required") else " (informational)"))
    div = report.get("first_divergence")
    if div:
        console.print(f"  first divergence: [bold]{div['layer']}[/bold] ({div['name']}, inputs {div['set']})")
    verdict = "[bold green]PASSED[/bold green]" if report["passed"] else "[bold red]FAILED[/bold red]"
    console.print(f"{verdict}  reference: {_reference_line(report).replace('`', '')}; atol {_fmt(tol['atol'])} "
                  f"({tol['policy']}); {report['seconds']:.1f} s")
