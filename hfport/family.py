"""The family contract: everything hfport knows about one kind of checkpoint lives in that family's module.

A *family* (OFA, METER, ...) is one object satisfying `Family`, registered by name. The stages — convert,
inspect, export, verify, record, push, run — look the family up and call it; they never branch on its name.

Adding a family
---------------
1. Write ``converters/<name>_family.py`` with a class implementing `Family` (`BaseFamily` supplies defaults for
   the optional parts) and, at the bottom, ``register_family(MyFamily())``. Its pieces (config derivation, trace functions, ...) may live in modules next
   to it; the family object is the only thing stages see.
2. Add ``mappings/<name>.toml`` (the key mapping, data only) and, if stock transformers has no class for it, the
   model code under ``hfport/models/<name>/``.
3. Add one line to `BUILTIN_FAMILIES` below (module that registers the family; the recorder module, or None).
4. Tests.

What a family provides (see `Family` for signatures)
---------------------------------------------------
- identity: ``name`` (provenance ``family``), ``title`` (people), ``model_types`` (config.json ``model_type``
  values that mean this family when a folder has no hfport.json);
- conversion: ``detect(checkpoint)``, ``state_key``, ``prepare(checkpoint, path, **options) -> Prepared``,
  ``mapping`` (the TOML name), ``describe(checkpoint)`` for ``hfport inspect``;
- export (mapping run backwards): ``regenerated``, ``regenerator(config)``, ``export_flags(config)``,
  ``original_checkpoint(config, state, provenance)``;
- verification: ``fp32_atol``, ``live_reference`` (report kind for ``--against``), ``checks_generation``,
  ``probes(folder, seed)``, ``user_inputs(folder, default, pixel, ids)``, ``compare_set(...)``,
  ``trace(model, inputs)`` / ``generate(model, inputs, ...)`` (the converted side),
  ``reads_golden(data)`` / ``golden_from_dict(data, path, sha256)``, ``describe_trace(base, layer, variant)`` / ``trace_variant(config)`` (localisation);
- recording: ``recorder`` — a module that runs in the ORIGINAL's environment (torch + the original code only,
  Python >= 3.8, no transformers/click) with ``looks_like(checkpoint_path) -> bool`` (reads the file's structure
  with `hfport.read.peek`, never by file suffix) and ``record_golden(checkpoint, reference_code, sets, options)
  -> golden dict`` (options: bpe_dir, text_config, vit, ...); `BUILTIN_FAMILIES` names it so the recorder finds it
  without importing the family module. A golden file with a top-level ``family`` key goes straight to that family;
- publishing: ``card`` (name, paper, code, license), ``hub_tags``, ``base_models``, ``pipeline_tag(task,
  model_class)``, ``auto_classes`` (Auto class of a stock transformers model class, when config.json has no
  auto_map), ``processor_hint`` (the convert option that puts a processor into a folder);
- ``run(folder, inputs: RunInputs) -> dict`` for ``hfport run``.

`ConvertedFolder` opens a converted folder once (hfport.json, config.json, family, model class, Auto class,
stored dtypes from the safetensors headers) and is what verify, push, run and export receive.

This module is imported by the recorder inside the original's environment: it needs only the standard library and
`hfport.errors` at import time and keeps to Python 3.8 syntax at runtime.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hfport.errors import ConfigError, UnsupportedCheckpointError

try:  # Python >= 3.8
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore

# The built-in families, the one place they are listed: name -> (module that registers it, recorder module).
BUILTIN_FAMILIES: Dict[str, Tuple[str, Optional[str]]] = {
    # fairseq's own archs first: OFA's test accepts any fairseq file, this one only the transformer archs
    "fairseq_translation": ("hfport.converters.fairseq_translation_family", "hfport.verify.backends.fairseq_native"),
    "fairseq_mbart": ("hfport.converters.fairseq_mbart_family", "hfport.verify.backends.fairseq_mbart_native"),
    "fairseq_bart_cls": ("hfport.converters.fairseq_bart_cls_family", "hfport.verify.backends.fairseq_bart_cls_native"),
    "fairseq_bart": ("hfport.converters.fairseq_bart_family", "hfport.verify.backends.fairseq_native"),
    "fairseq_roberta": ("hfport.converters.fairseq_roberta_family", "hfport.verify.backends.fairseq_roberta_native"),
    "ofa": ("hfport.converters.ofa_family", "hfport.verify.backends.fairseq_ofa"),
    "meter": ("hfport.converters.meter_family", "hfport.verify.backends.meter_live"),
}


@dataclass
class RunInputs:
    """What `hfport run` was given; a family uses the fields that make sense for it."""

    images: List[Any] = field(default_factory=list)  # PIL images
    text: Optional[str] = None
    task: Optional[str] = None
    num_beams: int = 5
    max_length: int = 20
    top_k: int = 5


class Family(Protocol):
    name: str
    title: str
    model_types: Tuple[str, ...]
    state_key: str
    mapping: str
    regenerated: Tuple[str, ...]
    recorder: Optional[str]
    fp32_atol: float
    live_reference: str
    checks_generation: bool
    card: Dict[str, str]
    hub_tags: Tuple[str, ...]
    base_models: Dict[str, str]
    processor_hint: str
    auto_classes: Dict[str, str]

    # -- conversion ----------------------------------------------------------------------------------------
    def detect(self, checkpoint: dict) -> bool: ...

    def prepare(self, checkpoint: dict, path: Path, **options) -> Any: ...  # hfport.converters.pipeline.Prepared

    def describe(self, checkpoint: dict) -> dict: ...

    # -- export --------------------------------------------------------------------------------------------
    def export_flags(self, config) -> Dict[str, bool]: ...

    def regenerator(self, config) -> Callable[[str, str], Any]: ...

    def original_checkpoint(self, config, state: dict, provenance: dict) -> dict: ...

    # -- verification --------------------------------------------------------------------------------------
    def probes(self, folder: "ConvertedFolder", seed: int) -> "Dict[str, Dict[str, Any]]": ...

    def user_inputs(self, folder: "ConvertedFolder", default: dict, pixel, ids: Optional[List[int]]) -> dict: ...

    def compare_set(self, set_name: str, inputs: dict, reference: dict, converted: dict, golden,
                    atol: float, rtol: float, scale_rtol: float = 0.0) -> List[dict]: ...

    def trace(self, model, inputs: dict) -> dict: ...

    def generate(self, model, inputs: dict, num_beams: int, max_len_b: int, min_len: int) -> List[List[int]]: ...

    def reads_golden(self, data: dict) -> bool: ...

    def golden_from_dict(self, data: dict, path: Optional[str], sha256: Optional[str]): ...  # -> Golden

    def describe_trace(self, base: str, layer: Optional[int], variant: Optional[str] = None) -> Optional[tuple]: ...
    def trace_variant(self, config: dict) -> Optional[str]: ...
    # (human name, module path or None) of a trace entry (name without layer index / pass suffix), None if not its

    # -- publishing / running --------------------------------------------------------------------------------
    def pipeline_tag(self, task: str, model_class: str) -> Optional[str]: ...

    def run(self, folder: "ConvertedFolder", inputs: RunInputs) -> dict: ...


class BaseFamily:
    """Defaults for the optional parts of `Family`; a family class may inherit them (stages never rely on it)."""

    title = "?"
    model_types: Tuple[str, ...] = ()
    regenerated: Tuple[str, ...] = ()
    recorder: Optional[str] = None
    fp32_atol = 1e-5
    live_reference = "live"
    checks_generation = False
    card: Dict[str, str] = {}
    hub_tags: Tuple[str, ...] = ()
    base_models: Dict[str, str] = {}  # source file name -> Hub repo of the model it came from (card `base_model`)
    processor_hint = "the family's tokenizer option"
    auto_classes: Dict[str, str] = {}  # model class -> Auto class, for stock classes a config.json auto_map lacks
    # (keywords looked for in `task` + `model_class`, Hub pipeline tag); first match wins, () matches anything
    pipeline_tags: Tuple[Tuple[Tuple[str, ...], str], ...] = ()

    def pipeline_tag(self, task: str, model_class: str) -> Optional[str]:
        words = "{} {}".format(task or "", model_class or "").lower()
        for keywords, tag in self.pipeline_tags:
            if not keywords or any(k in words for k in keywords):
                return tag
        return None

    def reads_golden(self, data: dict) -> bool:
        return False

    def describe_trace(self, base: str, layer: Optional[int], variant: Optional[str] = None):
        """(what, modules in the original checkpoint, modules in the converted folder or None when the same)."""
        return None

    def trace_variant(self, config: dict) -> Optional[str]:
        """A structural variant of the folder that changes module names in `describe_trace` (None: one naming)."""
        return None

    def usage_code(self, repo_id: str, auto_class: str, model_class: str, preprocessor: Optional[str]) -> Optional[str]:
        """The model card's Python: load, preprocess, run, print the answer (None: the card shows loading only)."""
        return None

    # The conversion half forwards to the family's converter module (``matches``, ``prepare``, ``describe``,
    # ``original_checkpoint``, and where it has them ``export_flags``, ``regenerator``, ``generator``).
    converter: Any = None

    def detect(self, checkpoint: dict) -> bool:
        return self.converter.matches(checkpoint)

    def prepare(self, checkpoint: dict, path, **options):
        return self.converter.prepare(checkpoint, path, **options)

    def describe(self, checkpoint: dict) -> dict:
        return self.converter.describe(checkpoint)

    def original_checkpoint(self, config, state, provenance):
        return self.converter.original_checkpoint(config, state, provenance)

    def export_flags(self, config) -> Dict[str, bool]:
        made = getattr(self.converter, "export_flags", None)
        return made(config) if made else {}

    def regenerator(self, config):
        made = getattr(self.converter, "regenerator", None)
        return made(config) if made else None

    def generator(self, config):
        made = getattr(self.converter, "generator", None)
        return made(config) if made else None

    def run(self, folder: "ConvertedFolder", inputs: RunInputs) -> dict:
        raise ConfigError("hfport run does not know how to run {} models".format(self.title))

    def __repr__(self) -> str:
        return "<family {}>".format(getattr(self, "name", "?"))


class UnknownFamilyError(ConfigError, ValueError):
    """No family by that name is registered (also a ValueError: the legacy recorder reports those plainly)."""


_REGISTRY: Dict[str, Any] = {}
_LOADED = [False]


def register_family(family: Any) -> Any:
    """Make `family` known under `family.name` (a later registration of the same name replaces it)."""
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (tests that register toy families clean up with this)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    if _LOADED[0]:
        return
    _LOADED[0] = True
    for module, _ in BUILTIN_FAMILIES.values():
        importlib.import_module(module)


def families() -> List[Any]:
    """Every registered family, built-ins first in `BUILTIN_FAMILIES` order."""
    _load_builtins()
    return list(_REGISTRY.values())


def family_names() -> List[str]:
    return [f.name for f in families()]


def get_family(name: Optional[str]) -> Any:
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise UnknownFamilyError("unknown family {!r} (known: {})".format(name, ", ".join(_REGISTRY)))


def detect_family(checkpoint: dict, path: Any) -> Any:
    """The family whose `detect` accepts this loaded checkpoint dict."""
    for family in families():
        if family.detect(checkpoint):
            return family
    titles = " or ".join(f.title for f in families())
    raise UnsupportedCheckpointError(
        "{}: not an {} checkpoint (top-level keys: {})".format(path, titles, ", ".join(sorted(map(str, checkpoint))[:8])))


# -- the recorder's view (runs in the original's environment: no family modules imported) ----------------------

def recorder_module(name: str):
    """The recorder module of a family, importable without transformers."""
    if name in BUILTIN_FAMILIES and BUILTIN_FAMILIES[name][1]:
        return importlib.import_module(BUILTIN_FAMILIES[name][1])
    if name in _REGISTRY and getattr(_REGISTRY[name], "recorder", None):
        return importlib.import_module(_REGISTRY[name].recorder)
    raise UnknownFamilyError("no recorder for family {!r} (known: {})".format(
        name, ", ".join(n for n, (_, rec) in BUILTIN_FAMILIES.items() if rec)))


def recorder_family(checkpoint: str) -> str:
    """The family of a checkpoint file, asked of each recorder's light `looks_like` (it reads the file)."""
    names = [n for n, (_, rec) in BUILTIN_FAMILIES.items() if rec]
    names += [n for n, f in _REGISTRY.items() if n not in names and getattr(f, "recorder", None)]
    for name in names:
        if recorder_module(name).looks_like(checkpoint):
            return name
    raise UnknownFamilyError("{}: cannot tell its family (tried {}); pass --family".format(checkpoint, ", ".join(names)))


# -- a converted folder, opened once -------------------------------------------------------------------------

class FolderError(ConfigError):
    """A converted folder that cannot be used; the message is one line."""


# Auto classes that load something other than the model
NOT_MODEL_AUTO_CLASSES = {"AutoConfig", "AutoTokenizer", "AutoProcessor", "AutoImageProcessor", "AutoFeatureExtractor"}


def auto_class_for(config: dict, model_class: Optional[str] = None) -> str:
    """The transformers Auto class that loads this folder's model class, read from `config.json`'s `auto_map`."""
    auto_map = {k: v for k, v in (config.get("auto_map") or {}).items()
                if isinstance(v, str) and k not in NOT_MODEL_AUTO_CLASSES}
    model_class = model_class or next(iter(config.get("architectures") or []), None)
    matching = [k for k, v in auto_map.items() if model_class and v.rsplit(".", 1)[-1] == model_class]
    specific = [k for k in matching if k != "AutoModel"]
    if specific or matching:
        return (specific or matching)[0]
    return "AutoModel" if "AutoModel" in auto_map or not auto_map else next(iter(auto_map))


def _auto_class(config: dict, model_class: Optional[str], family: Any) -> Optional[str]:
    """The auto_map entry naming the model class (a task-specific one before AutoModel); else the family's Auto class
    for a stock transformers class; else AutoModel when the auto_map has one."""
    auto_map = {k: v for k, v in (config.get("auto_map") or {}).items()
                if isinstance(v, str) and k not in NOT_MODEL_AUTO_CLASSES}
    matching = [k for k, v in auto_map.items() if model_class and v.rsplit(".", 1)[-1] == model_class]
    specific = [k for k in matching if k != "AutoModel"]
    if specific or matching:
        return (specific or matching)[0]
    stock = (getattr(family, "auto_classes", None) or {}).get(model_class or "")
    if stock:
        return stock
    return "AutoModel" if "AutoModel" in auto_map else None


def _json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FolderError("{}: unreadable {} ({})".format(path, what, detail)) from None
    if not isinstance(data, dict):
        raise FolderError("{}: {} is not a JSON object".format(path, what))
    return data


def safetensors_dtypes(path: Path) -> Dict[str, str]:
    """{tensor name: safetensors dtype ("F32", "BF16", ...)} from a file's JSON header, without reading tensors."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise FolderError("{}: not a safetensors file (too short)".format(path))
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise FolderError("{}: not a safetensors file (header of {} bytes)".format(path, size))
        try:
            header = json.loads(handle.read(size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise FolderError("{}: not a safetensors file (unreadable header)".format(path)) from None
    return {k: v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


@dataclass
class ConvertedFolder:
    """A folder written by `hfport convert`, read and checked once."""

    path: Path
    provenance: dict  # hfport.json ({} when absent and not required)
    config: dict  # config.json
    family: Any  # the registered Family
    model_class: Optional[str]
    auto_class: Optional[str]  # name of the transformers Auto class that loads `model_class` (None: none known)

    @classmethod
    def open(cls, path: "str | os.PathLike", *, require_provenance: bool = True) -> "ConvertedFolder":
        """Raises FolderError (one line) for a folder that is not a usable converted folder. Without
        `require_provenance`, a folder with no hfport.json is accepted when its config's model_type names a family."""
        path = Path(path)
        config_path, provenance_path = path / "config.json", path / "hfport.json"
        if require_provenance and not provenance_path.is_file():
            raise FolderError("{}: not an hfport-converted folder (no hfport.json)".format(path))
        if not config_path.is_file():
            raise FolderError("{} is not a converted model folder (no config.json)".format(path))
        provenance = _json_object(provenance_path, "hfport.json") if provenance_path.is_file() else {}
        config = _json_object(config_path, "config.json")
        family = cls._family(path, provenance, config)
        model_class = provenance.get("model_class") or next(iter(config.get("architectures") or []), None)
        return cls(path, provenance, config, family, model_class, _auto_class(config, model_class, family))

    @staticmethod
    def _family(path: Path, provenance: dict, config: dict) -> Any:
        name = provenance.get("family")
        if name:
            try:
                return get_family(name)
            except UnknownFamilyError:
                raise FolderError("{}: unknown family {!r} (known: {})".format(
                    path / "hfport.json", name, ", ".join(family_names()))) from None
        model_type = str(config.get("model_type", ""))
        for family in families():
            if model_type in family.model_types:
                return family
        raise FolderError("cannot tell the model family of {} (no hfport.json, model_type {!r})".format(path, model_type))

    # -- what stages ask -------------------------------------------------------------------------------------
    def read_json(self, name: str) -> dict:
        """Another JSON file of the folder ({} when absent), e.g. preprocessor_config.json."""
        file = self.path / name
        return _json_object(file, name) if file.is_file() else {}

    @property
    def weight_files(self) -> List[Path]:
        return sorted(self.path.glob("*.safetensors"))

    def stored_dtypes(self) -> Dict[str, str]:
        """{tensor name: safetensors dtype} over every weight file (headers only)."""
        out: Dict[str, str] = {}
        for file in self.weight_files:
            out.update(safetensors_dtypes(file))
        return out

    @property
    def hyper_parameters(self) -> dict:
        return self.provenance.get("hyper_parameters", {}) or {}

    @property
    def has_processor(self) -> bool:
        """A processor, image processor or tokenizer was saved with the model."""
        names = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
        return any((self.path / n).is_file() for n in names)

    def auto_model_class(self):
        """The transformers Auto class object (imports transformers)."""
        import transformers

        if self.auto_class is None:
            raise FolderError("{}/config.json has no auto_map entry for {}".format(self.path, self.model_class or "the model"),
                              hint="convert the checkpoint again with hfport convert")
        if not hasattr(transformers, self.auto_class):
            raise FolderError("{}/config.json names the Auto class {} which this transformers lacks".format(
                self.path, self.auto_class))
        return getattr(transformers, self.auto_class)

    def load_model(self, **kwargs):
        """The model through its Auto class, the way a user loads it from the Hub (remote code trusted)."""
        return self.auto_model_class().from_pretrained(str(self.path), trust_remote_code=True, **kwargs)

    def load_processor(self):
        """The folder's processor (or tokenizer), through AutoProcessor; needs `has_processor`."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(self.path), trust_remote_code=True)

    def __str__(self) -> str:
        return str(self.path)
