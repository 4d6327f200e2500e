"""Name the first place where the converted model stops computing what the reference computes.

Traces are ordered in computation order (the golden adapter guarantees it), so the first failing entry of the
reference order is the first diverging layer; `human_name` turns a trace name into words a user can act on.
"""

from __future__ import annotations

import re
from typing import Any

_PASS_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)_(?P<pass>\d)$")


def _family_names(base: str, layer: int | None) -> tuple[str, str | None] | None:
    """(human name, module path) from the first family that knows the trace name (families own their names)."""
    from hfport.family import families

    for family in families():
        found = family.describe_trace(base, layer)
        if found is not None:
            return found
    return None


def _split(name: str) -> tuple[str, int | None, str | None]:
    """'fusion_image_layers_1.3' -> ('fusion_image_layers', 3, '1')."""
    base, _, index = name.partition(".")
    layer = int(index) if index.isdigit() else None
    pass_id = None
    if _family_names(base, None) is None and not base.endswith(("_layers", "_states")):
        m = _PASS_SUFFIX.match(base)
        if m:
            base, pass_id = m.group("base"), m.group("pass")
    return base, layer, pass_id


def describe(name: str) -> dict[str, Any]:
    """Human name and (where known) module path of a trace entry."""
    base, layer, pass_id = _split(name)
    human, module = _family_names(base, layer) or (name, None)
    if pass_id is not None:
        human = f"{human}, pass {pass_id}"
    return {"layer": human, "module": module}


def human_name(name: str) -> str:
    return describe(name)["layer"]


def first_divergence(results: list[dict[str, Any]], order: list[str]) -> dict[str, Any] | None:
    """The earliest entry of `order` (computation order) that failed, per input set in the order sets appear."""
    sets: list[str] = []
    for r in results:
        if r["set"] not in sets:
            sets.append(r["set"])
    position = {name: i for i, name in enumerate(order)}
    for set_name in sets:
        failed = [r for r in results if r["set"] == set_name and not r["passed"]]
        if not failed:
            continue
        first = min(failed, key=lambda r: position.get(r["name"], len(position)))
        return {
            "name": first["name"],
            "set": set_name,
            **describe(first["name"]),
            "max_abs": first.get("max_abs"),
            "atol": first.get("atol"),
            "error": first.get("error"),
        }
    return None
