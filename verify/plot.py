"""A picture of the proof: max abs difference per layer and output, on a log scale, against the tolerance.

`write_plot(report, path)` draws one panel per input set: every compared entry in computation order (per-layer
states, then the outputs), one colour per output, failing entries crossed out in red, the tolerance as a dashed
line and the first divergence marked. matplotlib is optional (`pip install hfport[plot]`): without it nothing is
drawn and the Markdown table stays the whole report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PLOT_NAME = "verification.png"
FLOOR = 1e-12  # where an exact match (difference 0) is drawn on the log axis


def plot_path_for(report_path: Path) -> Path:
    """verification.json -> verification.png; my-report.json -> my-report.png (next to the report)."""
    return report_path.with_name(PLOT_NAME if report_path.name == "verification.json" else report_path.stem + ".png")


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)  # headless: never opens a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def write_plot(report: dict[str, Any], path: str | Path) -> Path | None:
    """Draw the report's per-layer differences to `path` (PNG); None when matplotlib is not installed or the
    report compared nothing."""
    outputs = [o for o in report.get("outputs") or [] if isinstance(o, dict)]
    if not outputs:
        return None
    plt = _matplotlib()
    if plt is None:
        return None
    sets: dict[str, list[dict]] = {}
    for entry in outputs:
        sets.setdefault(str(entry.get("set", "")), []).append(entry)
    tolerance = report.get("tolerance") or {}
    atol = tolerance.get("atol")
    divergence = report.get("first_divergence") if isinstance(report.get("first_divergence"), dict) else None
    longest = max(len(entries) for entries in sets.values())
    figure, axes = plt.subplots(len(sets), 1, squeeze=False, figsize=(min(24.0, max(10.0, 0.22 * longest + 2.5)),
                                                                      2.9 * len(sets) + 0.6))
    bases = sorted({str(o.get("name", "?")).partition(".")[0] for o in outputs})
    colours = {base: plt.get_cmap("tab10")(i % 10) for i, base in enumerate(bases)}
    for axis, (set_name, entries) in zip(axes[:, 0], sets.items()):
        _draw_set(axis, set_name, entries, atol, divergence, colours)
    verdict = "PASSED" if report.get("passed") else "FAILED"
    policy = tolerance.get("policy", "")
    figure.suptitle(f"hfport verify: {os.path.basename(str(report.get('model', '')))} — {verdict}"
                    + (f" (tolerance policy {policy})" if policy else ""), fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, format="png", dpi=90)
    plt.close(figure)
    os.replace(partial, path)
    return path


def _draw_set(axis, set_name: str, entries: list[dict], atol: Any, divergence: dict | None, colours: dict) -> None:
    xs = range(len(entries))
    for base, colour in colours.items():
        points = [(x, e) for x, e in zip(xs, entries) if str(e.get("name", "?")).partition(".")[0] == base]
        if not points:
            continue
        axis.plot([x for x, _ in points], [_height(e) for _, e in points], "o-", color=colour, markersize=3.5,
                  linewidth=1, label=base)
    failed = [(x, e) for x, e in zip(xs, entries) if not e.get("passed")]
    if failed:
        axis.plot([x for x, _ in failed], [_height(e) for _, e in failed], "x", color="red", markersize=9,
                  markeredgewidth=2, label="fails", linestyle="none")
    if isinstance(atol, (int, float)) and atol > 0:
        axis.axhline(atol, color="black", linestyle="--", linewidth=1, label=f"atol {atol:g}")
    if divergence and str(divergence.get("set", "")) == set_name:
        for x, entry in zip(xs, entries):
            if entry.get("name") == divergence.get("name"):
                module = divergence.get("module") or divergence.get("name")
                axis.axvline(x, color="red", linewidth=1.2, alpha=0.6)
                axis.annotate(f"first divergence: {module}", (x, _height(entry)), xytext=(6, 10),
                              textcoords="offset points", color="red", fontsize=8)
                break
    axis.set_yscale("log")
    axis.set_ylabel("max |converted − reference|", fontsize=8)
    axis.set_title(f"inputs: {set_name}" if set_name else "inputs", fontsize=9, loc="left")
    axis.set_xticks(list(xs))
    axis.set_xticklabels([str(e.get("name", "?")) for e in entries], rotation=90, fontsize=6)
    axis.grid(True, which="major", axis="y", alpha=0.3)
    heights = [_height(e) for e in entries] + ([float(atol)] if isinstance(atol, (int, float)) and atol > 0 else [])
    axis.set_ylim(FLOOR / 10, max(heights) * 30)  # room above the worst point for the divergence label
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _height(entry: dict) -> float:
    value = entry.get("max_abs")
    if not isinstance(value, (int, float)) or value != value or value == float("inf"):
        return 1e6 if not entry.get("passed") else FLOOR  # a shape error or NaN: drawn off the top
    return max(float(value), FLOOR)
