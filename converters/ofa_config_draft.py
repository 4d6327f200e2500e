"""OFA's configuration as conversion needs it, without importing transformers.

Importing transformers costs about three seconds (it indexes every model module on import), more than converting a
base-size checkpoint. Conversion only needs the config's values: to state the target shapes (`ofa_shapes`), to check
the hyper-parameters and to write `config.json`. This module reads the field defaults, the option tables and the completion and validation
methods straight from `hfport/models/ofa/configuration_ofa.py` (the file copied beside the weights: parsed, and
those two methods compiled on their own, never importing the module), so there is one place that declares them. The tests hold the draft to the real `OFAConfig`: the same `config.json` for every
preset, switch, fixture and variant, and the same refusals.
"""

from __future__ import annotations

import ast
import functools
import json
from importlib import metadata, resources
from pathlib import Path
from typing import Any

CONFIG_CLASS = "OFAConfig"
CONFIG_NAME = "config.json"


RULES = ("complete_ofa_options", "validate_ofa_options")  # OFAConfig methods the draft runs as they are written


@functools.cache
def _parsed() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(field -> default, module-level constant -> value, rule name -> function) from configuration_ofa.py."""
    source = (resources.files("hfport.models.ofa") / "configuration_ofa.py").read_text(encoding="utf-8")
    fields: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    rules: list[ast.FunctionDef] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
        elif isinstance(node, ast.ClassDef) and node.name == CONFIG_CLASS:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    fields[item.target.id] = ast.literal_eval(item.value)
                elif isinstance(item, ast.Assign) and [getattr(t, "id", None) for t in item.targets] == ["model_type"]:
                    constants["model_type"] = ast.literal_eval(item.value)
                elif isinstance(item, ast.FunctionDef) and item.name in RULES:
                    rules.append(item)
    if not fields or "model_type" not in constants or len(rules) != len(RULES):
        raise RuntimeError(f"configuration_ofa.py declares no {CONFIG_CLASS} fields or rules: the package is damaged")
    # hfport's own file: its two rule methods run against the constants above, nothing else in scope
    namespace: dict[str, Any] = {"__builtins__": __builtins__, **constants}
    exec(compile(ast.Module(body=rules, type_ignores=[]), "configuration_ofa.py", "exec"), namespace)
    return fields, constants, {name: namespace[name] for name in RULES}


def declared() -> tuple[dict[str, Any], dict[str, Any]]:
    """(field -> default, module-level constant -> value) as configuration_ofa.py declares them."""
    fields, constants, _ = _parsed()
    return fields, constants


class OFAConfigDraft:
    """The values `OFAConfig(**values)` would hold, completed and checked the same way; writes `config.json`."""

    def __init__(self, **values):
        fields, self._constants = declared()
        self._names = list(fields)
        for name, default in fields.items():
            setattr(self, name, default)
        self._extra = [name for name in values if name not in fields]
        for name, value in values.items():
            setattr(self, name, value)
        self.architectures: list[str] | None = None
        self.auto_map: dict[str, str] | None = None
        self.dtype: str | None = None
        rules = _parsed()[2]
        rules["complete_ofa_options"](self)
        rules["validate_ofa_options"](self)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._names + self._extra}

    def to_dict(self) -> dict[str, Any]:
        """What `OFAConfig.save_pretrained` writes: every field, the extras, and the bookkeeping keys."""
        data = self.values()
        data["model_type"] = self._constants["model_type"]
        for key in ("architectures", "auto_map", "dtype"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["transformers_version"] = metadata.version("transformers")
        return data

    def save_pretrained(self, folder) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def to_config(self):
        """The real `OFAConfig` (imports transformers)."""
        from hfport.models.ofa.configuration_ofa import OFAConfig

        config = OFAConfig(**self.values())
        config.architectures, config.auto_map = self.architectures, self.auto_map
        if self.dtype is not None:
            config.dtype = self.dtype
        return config
