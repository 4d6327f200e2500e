"""OFA's configuration as conversion needs it, without importing transformers.

Importing transformers costs about three seconds (it indexes every model module on import), more than converting a
base-size checkpoint. Conversion only needs the config's values: to state the target shapes (`ofa_shapes`), to check
the hyper-parameters and to write `config.json`. This module reads the field defaults and option tables straight
from `hfport/models/ofa/configuration_ofa.py` (the file copied beside the weights, parsed, not imported), so there is
one place that declares them. The tests hold the draft to the real `OFAConfig`: the same `config.json` for every
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


@functools.cache
def declared() -> tuple[dict[str, Any], dict[str, Any]]:
    """(field -> default, module-level constant -> value) as configuration_ofa.py declares them."""
    source = (resources.files("hfport.models.ofa") / "configuration_ofa.py").read_text(encoding="utf-8")
    fields: dict[str, Any] = {}
    constants: dict[str, Any] = {}
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
    if not fields or "model_type" not in constants:
        raise RuntimeError(f"configuration_ofa.py declares no {CONFIG_CLASS} fields: the package is damaged")
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
        self._complete()
        self._check()

    def _complete(self) -> None:  # OFAConfig.__post_init__
        if self.share_all_embeddings:
            self.share_decoder_input_output_embed = True
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(self.share_decoder_input_output_embed)
        if self.decoder_output_dim is None:
            self.decoder_output_dim = self.decoder_embed_dim

    def _check(self) -> None:  # OFAConfig.validate_ofa_options; raises ValueError with the same messages
        resnets, prompt_types = self._constants["RESNET_LAYERS"], self._constants["PROMPT_TYPES"]
        if self.resnet_type not in resnets:
            raise ValueError(f"resnet_type {self.resnet_type!r} is not supported (expected one of {sorted(resnets)})")
        if self.share_all_embeddings and self.encoder_embed_dim != self.decoder_embed_dim:
            raise ValueError("share_all_embeddings requires encoder_embed_dim == decoder_embed_dim")
        for side in ("encoder", "decoder"):
            if not getattr(self, f"{side}_prompt"):
                continue
            kind = getattr(self, f"{side}_prompt_type")
            if kind not in prompt_types:
                raise ValueError(f"{side}_prompt_type {kind!r} is not supported (OFA builds only {prompt_types})")
            if getattr(self, f"{side}_prompt_length") < 1:
                raise ValueError(f"{side}_prompt_length must be positive")
            if getattr(self, f"{side}_prompt_projection") and not getattr(self, f"{side}_prompt_dim"):
                raise ValueError(f"{side}_prompt_projection needs {side}_prompt_dim")
        for flag in self._constants["UNSUPPORTED_FLAGS"]:
            if getattr(self, flag, False):
                raise ValueError(f"the OFA option {flag!r} is not supported by this port")

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
