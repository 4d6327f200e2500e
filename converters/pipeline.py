"""read -> map -> write: the family-independent conversion driver.

A family (``hfport.family``; ``converters/ofa_family.py``, ``converters/meter_family.py``) knows how to recognise
its checkpoints, derive the HF config from hyper-parameters and tensor shapes, and which extra files travel with
the model.
Everything else — strict key accounting, shape checks, dtype handling, streaming shards, staging the output
folder, provenance — happens here, once.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hfport import __version__
from hfport.code_trust import check_model_code, model_code_digests
from hfport.errors import CheckpointError, ConfigError, HfportError
from hfport.mappings.engine import Mapping
from hfport.read.torch_file import file_sha256, load_checkpoint
from hfport.write.folder import check_output_file, check_output_path, staged_output
from hfport.write.safetensors_shards import ShardedSafetensorsWriter

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Prepared:
    """What a family converter derives from one checkpoint before any tensor is written."""

    config: Any  # a PreTrainedConfig with auto_map set
    model_class: type
    state_dict: dict[str, torch.Tensor]  # source tensors, lazily mapped
    flags: dict[str, bool]
    model_files: list[Path]  # modeling/configuration files copied next to the weights
    task: str
    source_format: str
    hyper_parameters: dict
    source_dtype: torch.dtype
    notes: list[str] = field(default_factory=list)
    write_extras: Callable[[Path], list[str]] | None = None  # tokenizer, processor, generation config


def reject_unused_options(unused: dict, family: str) -> None:
    """Options meant for the other family are a mistake worth saying, not something to ignore."""
    given = [k for k, v in unused.items() if v is not None and v is not False]
    if given:
        raise ConfigError(f"option(s) not used for {family} checkpoints: {', '.join('--' + k.replace('_', '-') for k in given)}")


def detect_family(checkpoint: dict, path: Path):
    """The registered family (see hfport.family) whose test accepts this checkpoint."""
    from hfport.family import detect_family as detect

    return detect(checkpoint, path)


def check_tensors(state: dict, path: Path) -> None:
    """A state dict holds tensors only; anything else means a damaged or foreign file."""
    from hfport.mappings.templates import collapse_keys

    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{path}: the state dict holds non-tensor values at {collapse_keys(odd, 6)}")


def target_shapes(model_class: type, config) -> dict[str, tuple[int, ...]]:
    """Every parameter and persistent buffer the HF model expects, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    dtype: str | None = None,
    max_shard_size: str | int = "2GB",
    trust_pickle: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **options,
) -> Path:
    """Convert ``source`` into an HF folder at ``output``; returns the folder path.

    ``options`` go to the family converter (OFA: ``bpe_dir``, ``patch_image_size``; METER: ``text_config``,
    ``tokenizer``, ``head``). Nothing is written unless every check passes.
    """
    source, output = Path(source), Path(output)
    output = check_output_path(output, force, protect=source)  # resolved; fails before reading a multi-GB file
    if dtype is not None and dtype not in DTYPES:
        raise HfportError(f"unknown --dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    checkpoint = load_checkpoint(source, trust=trust_pickle)
    family = detect_family(checkpoint, source)
    check_tensors(checkpoint[family.state_key], source)
    prepared: Prepared = family.prepare(checkpoint, source, **options)
    mapping = Mapping.load(family.mapping)
    expected = target_shapes(prepared.model_class, prepared.config)
    shapes = {k: tuple(v.shape) for k, v in prepared.state_dict.items()}
    plan = mapping.plan(shapes, expected, prepared.flags, source_name=source.name)

    out_dtype = DTYPES[dtype] if dtype else prepared.source_dtype
    prepared.config.dtype = str(out_dtype).removeprefix("torch.")
    with staged_output(output, force, protect=source) as staging:
        writer = ShardedSafetensorsWriter(staging, max_shard_size)
        total = len(plan.output_keys)
        for done, (key, tensor) in enumerate(Mapping.run(plan, prepared.state_dict.__getitem__, source.name), 1):
            if tensor.is_floating_point() and tensor.dtype != out_dtype:
                tensor = tensor.to(out_dtype)
            writer.add(key, tensor)
            if progress:
                progress(key, done, total)
        written = writer.close()
        prepared.config.save_pretrained(staging)
        for path in prepared.model_files:
            shutil.copy2(path, staging / path.name)
        extras = prepared.write_extras(staging) if prepared.write_extras else []
        provenance = {
            "schema": "hfport.provenance/1",
            "family": family.name,
            "hfport_version": __version__,
            "source": {
                "file": source.name,
                "sha256": file_sha256(source),
                "size": source.stat().st_size,
                "format": prepared.source_format,
            },
            "mapping": {"file": mapping.path.name, "sha256": mapping.sha256, "version": mapping.version},
            "model_class": prepared.model_class.__name__,
            "task": prepared.task,
            "stored_dtype": str(out_dtype).removeprefix("torch."),
            "source_dtype": str(prepared.source_dtype).removeprefix("torch."),
            "hyper_parameters": _jsonable(prepared.hyper_parameters),
            "dropped": {**plan.dropped},
            "tied": plan.tied,
            "notes": prepared.notes,
            "files": sorted(written + extras),
            "code": model_code_digests(staging),  # what `verify`/`run`/`export` compare the folder's *.py against
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / "hfport.json").write_text(json.dumps(provenance, indent=2, sort_keys=False) + "\n")
    return output


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def export_folder(folder: str | os.PathLike, output: str | os.PathLike, *, force: bool = False,
                  trust_remote_code: bool = False) -> dict:
    """HF folder -> the original checkpoint format, by running the family's mapping backwards.

    Returns ``{"written": path, "not_restored": {key: reason}, "regenerated": [keys]}``. Everything the
    forward conversion carried over comes back bit-exactly; dropped keys (listed) cannot.
    """
    import tempfile

    from safetensors import safe_open
    from transformers import AutoConfig

    from hfport.family import ConvertedFolder

    output = check_output_file(output, force)
    converted = ConvertedFolder.open(folder)
    folder, family = converted.path, converted.family
    provenance = converted.provenance
    check_model_code(folder, trust_remote_code, "export it")  # loading its config imports the folder's code
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    handles = [safe_open(str(p), framework="pt") for p in converted.weight_files]
    if not handles:
        raise HfportError(f"{folder}: no safetensors weights found")
    where = {key: handle for handle in handles for key in handle.keys()}
    mapping = Mapping.load(family.mapping)
    flags = family.export_flags(config)
    plan = mapping.plan({k: tuple(h.get_slice(k).get_shape()) for k, h in where.items()}, None, flags,
                        direction="backward", source_name=folder.name, regenerators=family.regenerated)
    state = dict(Mapping.run(plan, lambda k: where[k].get_tensor(k), folder.name, family.regenerator(config)))
    checkpoint = family.original_checkpoint(config, state, provenance)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", delete=False) as handle:
        staging = Path(handle.name)
    try:
        torch.save(checkpoint, staging)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return {"written": output, "not_restored": plan.not_restored, "regenerated": sorted(plan.regenerated)}
