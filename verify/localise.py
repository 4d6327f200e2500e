"""Name the first place where the converted model stops computing what the reference computes.

Traces are ordered in computation order (the golden adapter guarantees it), so the first failing entry of the
reference order is the first diverging layer. `describe` names the module that produced a trace entry by the
parameter names the user has: `module` in the original checkpoint, `converted_module` in the converted folder.
Families own the names (`Family.describe_trace`); `variant` is a family's structural variant that changes them
(METER's image tower: "clip" or "swin"), from `Family.trace_variant(config)`.
"""

from __future__ import annotations

import re
from typing import Any

_PASS_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)_(?P<pass>\d)$")


def _family_modules(base: str, layer: int | None, variant: str | None, family=None):
    """(what, original modules, converted modules or None = same): from the folder's family when it is known
    (families share trace names but not module names), else from the first family that knows the name."""
    from hfport.family import families

    for candidate in [family] if family is not None else families():
        found = candidate.describe_trace(base, layer, variant)
        if found is not None:
            return found
    return None


def _split(name: str, family=None) -> tuple[str, int | None, str | None]:
    """'fusion_image_layers_1.3' -> ('fusion_image_layers', 3, '1')."""
    base, _, index = name.partition(".")
    layer = int(index) if index.isdigit() else None
    pass_id = None
    if _family_modules(base, None, None, family) is None and not base.endswith(("_layers", "_states")):
        m = _PASS_SUFFIX.match(base)
        if m:
            base, pass_id = m.group("base"), m.group("pass")
    return base, layer, pass_id


def describe(name: str, variant: str | None = None, family=None) -> dict[str, Any]:
    """What a trace entry is and which module computed it.

    `module`: the module(s) in the original checkpoint's parameter names (comma-separated when several make one
    step, None when no module of its own does); `converted_module`: the same in the converted folder;
    `what`: what the entry is, in words; `layer`: one line for people, leading with the module name.
    """
    base, layer, pass_id = _split(name, family)
    found = _family_modules(base, layer, variant, family)
    if found is None:
        return {"layer": name, "what": name, "module": None, "converted_module": None}
    what, original, converted = found
    module = ", ".join(original) or None
    converted_module = ", ".join(converted) if converted is not None else module
    if pass_id is not None:
        what = f"{what}, pass {pass_id}"
    if module is None:
        line = what
    elif converted_module == module:
        line = f"{module} ({what})"
    else:
        line = f"{module} ({what}; converted: {converted_module})"
    return {"layer": line, "what": what, "module": module, "converted_module": converted_module}


def human_name(name: str, variant: str | None = None, family=None) -> str:
    return describe(name, variant, family)["layer"]


def first_divergence(results: list[dict[str, Any]], order: list[str], variant: str | None = None,
                     family=None) -> dict[str, Any] | None:
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
            **describe(first["name"], variant, family),
            "max_abs": first.get("max_abs"),
            "atol": first.get("atol"),
            "error": first.get("error"),
        }
    return None
