"""Verification reports: JSON (machine), Markdown (model card), a rich terminal summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# /2: the report carries `files` (sha256 of every file it judged), `problems` (coverage failures) and the
# reference's own output / generation counts, so `push` can bind the proof to the folder it publishes.
SCHEMA = "hfport.verify/2"
REQUIRED_KEYS = ("schema", "passed", "family", "model", "reference", "tolerance", "outputs", "generation",
                 "first_divergence", "problems", "files", "seconds", "hfport_version", "environment")


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


def _reference_line(report: dict[str, Any]) -> str:
    ref = report["reference"]
    sha = (ref.get("sha256") or "")[:12]
    what = {"golden": "golden file", "fairseq-live": "live fairseq + OFA", "meter-live": "live METER"}.get(ref["kind"], ref["kind"])
    return f"{what} `{os.path.basename(str(ref.get('path', '')))}`" + (f" (sha256 {sha}…)" if sha else "")


def _num(value: Any, fmt: str = ".2e") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return markdown_cell(value)


def markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _verdict(passed: Any) -> str:
    return "✅ pass" if passed else "❌ FAIL"


def grouped_rows(outputs: list[dict], expand_failing: bool = False) -> list[dict]:
    """One row per output and input set; per-layer entries (`name.{i}`) collapse into one with the worst figures.
    With `expand_failing`, a group holding a failure is listed layer by layer instead: the reader sees where it
    starts to fail and how it grows."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in outputs:
        base, dotted, _ = str(o.get("name", "?")).partition(".")
        groups.setdefault((base + (".*" if dotted else ""), str(o.get("set", ""))), []).append(o)
    rows = []
    for (name, set_name), items in groups.items():
        if expand_failing and len(items) > 1 and any(not i.get("passed") for i in items):
            rows += [_row(str(i.get("name", "?")), set_name, [i]) for i in items]
        else:
            rows.append(_row(name, set_name, items))
    return rows


def _row(name: str, set_name: str, items: list[dict]) -> dict:
    def worst(key: str, pick=max):
        values = [i[key] for i in items if isinstance(i.get(key), (int, float))]
        return pick(values) if values else None

    shapes = {tuple(i.get("shape") or ()) for i in items}
    failed = [i for i in items if not i.get("passed")]
    return {
        "name": name, "count": len(items), "set": set_name,
        "shape": ("×".join(map(str, next(iter(shapes)))) or "scalar") if len(shapes) == 1 else "various",
        "max_abs": worst("max_abs"), "mean_abs": worst("mean_abs"), "max_rel": worst("max_rel"),
        "cosine": worst("cosine", min), "argmax_agree": worst("argmax_agree", min),
        "top5_overlap": worst("top5_overlap", min), "min_atol_to_pass": worst("min_atol_to_pass"),
        "atol": worst("atol"), "passed": not failed,
        "error": next((i.get("error") for i in failed if i.get("error")), None),
    }


def divergence_module(divergence: Any) -> str | None:
    """The module a first divergence names (original checkpoint's parameter names), or its description."""
    if not isinstance(divergence, dict):
        return None
    return divergence.get("module") or divergence.get("layer") or divergence.get("name")


def _mark_first_divergence(rows: list[dict], divergence: Any) -> None:
    """The grouped row holding the first diverging entry says which module that is."""
    if not isinstance(divergence, dict) or not divergence.get("name"):
        return
    base, dotted, _ = str(divergence["name"]).partition(".")
    key = base + (".*" if dotted else "")
    for row in rows:
        if row["name"] in (key, divergence["name"]) and row["set"] == str(divergence.get("set", "")):
            row["first_divergence"] = divergence_module(divergence)
            return


def report_markdown(report: dict) -> str:
    """Render a `hfport.verify/2` report: a one-line verdict, an output table, generation, first divergence."""
    outputs = grouped_rows(report.get("outputs") or [], expand_failing=True)
    _mark_first_divergence(outputs, report.get("first_divergence"))
    generation = report.get("generation") or []
    reference = report.get("reference") or {}
    tolerance = report.get("tolerance") or {}
    environment = report.get("environment") or {}

    # a generation check without `required` counts as required: a card must not understate a failure
    failed = sum(1 for o in outputs if not o["passed"])
    failed += sum(1 for g in generation if not g.get("exact") and g.get("required", True))
    verdict = "PASSED" if report.get("passed") else "FAILED"
    checks = f"{len(outputs)} output(s) and {len(generation)} generation check(s)"
    against = f"the {reference.get('kind', 'reference')} reference"
    if reference.get("path"):
        against += f" `{str(reference['path']).replace(chr(92), '/').rsplit('/', 1)[-1]}`"
    if reference.get("sha256"):
        against += f" (sha256 `{reference['sha256'][:12]}…`)"
    policy = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in tolerance.items())
    lines = [f"**Verification {verdict}**: {checks} compared with {against}"
             + (f", tolerance {policy}" if policy else "") + (f"; {failed} failed" if failed else "") + "."]
    files = report.get("files")
    if isinstance(files, dict) and files:
        lines += ["", f"The check judged these {len(files)} files, whose sha256 `verification.json` records and "
                      f"`hfport push` compared with the published ones: "
                      + ", ".join(f"`{markdown_cell(name)}`" for name in sorted(files)) + "."]
    for problem in report.get("problems") or []:
        lines += ["", f"❌ {markdown_cell(problem)}"]

    if outputs:
        lines += ["", "| output | inputs | shape | max abs | mean abs | max rel | cosine | argmax agree "
                      "| top-5 overlap | smallest passing atol | atol | result |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in outputs:
            result = _verdict(o["passed"]) + (f": {markdown_cell(o['error'])}" if o["error"] else "")
            if o.get("first_divergence"):
                result += f"; first at `{markdown_cell(o['first_divergence'])}`"
            atol = o["atol"] if o["atol"] is not None else tolerance.get("atol")
            label = f"`{markdown_cell(o['name'])}`" + (f" ({o['count']})" if o["count"] > 1 else "")
            lines.append(
                f"| {label} | {markdown_cell(o['set'])} | {o['shape']} | {_num(o['max_abs'])} "
                f"| {_num(o['mean_abs'])} | {_num(o['max_rel'])} | {_num(o['cosine'], '.6f')} "
                f"| {_num(o['argmax_agree'], '.3f')} | {_num(o['top5_overlap'], '.3f')} "
                f"| {_num(o['min_atol_to_pass'])} | {_num(atol)} "
                f"| {result} |")

    if generation:
        lines += ["", "| generation | inputs | token-exact | result |", "|---|---|---|---|"]
        for g in generation:
            if g.get("exact"):
                result = "✅ pass"
            else:
                result = "❌ FAIL" if g.get("required", True) else "⚠️ differs (informational)"
            lines.append(f"| {markdown_cell(g.get('name'))} | {markdown_cell(g.get('set', ''))} | {_num(g.get('exact'))} "
                         f"| {result} |")

    divergence = report.get("first_divergence")
    if divergence:
        if isinstance(divergence, dict):
            name = divergence.get("name") or "?"
            module, converted = divergence.get("module"), divergence.get("converted_module")
            details = [divergence.get("what") or (None if module else divergence.get("layer")),
                       f"converted: `{converted}`" if converted and converted != module else None,
                       f"trace `{name}`",
                       f"inputs {divergence['set']}" if divergence.get("set") else None,
                       f"max abs {_num(divergence['max_abs'])}" if divergence.get("max_abs") is not None else None]
            details = [d for d in details if d]
            suffix = f" ({'; '.join(map(markdown_cell, details))})" if details else ""
            lines += ["", f"First diverging module: `{markdown_cell(divergence_module(divergence))}`{suffix}"]
        else:
            lines += ["", f"First diverging intermediate output: `{markdown_cell(divergence)}`"]

    footer = [f"hfport {report['hfport_version']}" if report.get("hfport_version") else None]
    footer += [f"{k} {v}" for k, v in environment.items()]
    footer.append(f"{report['seconds']:.1f} s" if isinstance(report.get("seconds"), (int, float)) else None)
    footer = [part for part in footer if part]
    if footer:
        lines += ["", f"<sub>Measured with {', '.join(footer)}.</sub>"]
    return "\n".join(lines)


def divergence_line(divergence: dict[str, Any]) -> str:
    """`decoder.layers.0 (output of decoder layer 0; trace decoder_inner_states.1, inputs inputs)`."""
    described = divergence.get("layer") or divergence.get("name") or "?"
    where = f"trace {divergence.get('name')}" + (f", inputs {divergence['set']}" if divergence.get("set") else "")
    if described.endswith(")"):
        return f"{described[:-1]}; {where})"
    return f"{described} ({where})"


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
    rows = grouped_rows(report.get("outputs") or [])
    _mark_first_divergence(rows, report.get("first_divergence"))
    for row in rows:
        mark = "[green]ok[/green]" if row["passed"] else "[red]FAIL[/red]"
        if row.get("first_divergence"):
            mark += f" first at {row['first_divergence']}"
        label = row["name"] + (f" ({row['count']})" if row["count"] > 1 else "")
        table.add_row(label, row["set"], _fmt(row["max_abs"]), _fmt(row["mean_abs"]), _fmt(row["cosine"]),
                      _fmt(row["argmax_agree"]), _fmt(row["min_atol_to_pass"]), mark)
    console.print(table)
    for g in report.get("generation", []):
        mark = "[green]exact[/green]" if g["exact"] else ("[red]differs[/red]" if g.get("required") else "[yellow]differs[/yellow]")
        console.print(f"  generation {g['name']:<14} {mark}" + ("" if g.get("required") else " (informational)"))
    div = report.get("first_divergence")
    if div:
        console.print(f"  first divergence: [bold]{divergence_line(div)}[/bold]")
    verdict = "[bold green]PASSED[/bold green]" if report["passed"] else "[bold red]FAILED[/bold red]"
    extra = "".join(f" + {_fmt(tol[k])}·{what}" for k, what in (("rtol", "|ref|"), ("scale_rtol", "max|ref|")) if tol.get(k))
    console.print(f"{verdict}  reference: {_reference_line(report).replace('`', '')}; atol {_fmt(tol['atol'])}{extra} "
                  f"({tol['policy']}); {report['seconds']:.1f} s")
    if isinstance(report.get("plot"), dict):
        console.print(f"  per-layer plot: {report['plot'].get('file')} (next to the report)")
