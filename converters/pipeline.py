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
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hfport import __version__
from hfport.code_trust import check_model_code, model_code_digests
from hfport.errors import CheckpointError, ConfigError, HfportError, MappingError
from hfport.mappings.engine import Mapping
from hfport.read.torch_file import BackgroundSha256, load_checkpoint
from hfport.write.folder import check_output_file, check_output_path, output_identity, staged_output
from hfport.write.safetensors_shards import ShardedSafetensorsWriter

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Prepared:
    """What a family converter derives from one checkpoint before any tensor is written."""

    config: Any  # a PreTrainedConfig with auto_map set
    model_class: type | str  # the class, or its name when `inventory` states the shapes without importing it
    state_dict: dict[str, torch.Tensor]  # source tensors, lazily mapped
    flags: dict[str, bool]
    model_files: list[Path]  # modeling/configuration files copied next to the weights
    task: str
    source_format: str
    hyper_parameters: dict
    source_dtype: torch.dtype
    notes: list[str] = field(default_factory=list)
    write_extras: Callable[[Path], list[str]] | None = None  # tokenizer, processor, generation config
    # the target's shapes, dtypes and ties stated by the family (no model build); None: built on the meta device
    inventory: Callable[[], "TargetInventory"] | None = None


def reject_unused_options(unused: dict, family: str) -> None:
    """Options meant for the other family are a mistake worth saying, not something to ignore."""
    given = [k for k, v in unused.items() if v is not None and v is not False]
    if given:
        raise ConfigError(f"option(s) not used for {family} checkpoints: {', '.join('--' + k.replace('_', '-') for k in given)}")


def first_unsupported(state: dict, patterns: dict[str, str]) -> tuple[str, str] | None:
    """(what, its keys collapsed for a message) for the first {regex: what} entry some key of `state` matches."""
    from hfport.mappings.templates import collapse_keys

    for pattern, what in patterns.items():
        hits = [k for k in state if re.search(pattern, k)]
        if hits:
            return what, collapse_keys(hits, 4)
    return None


def detect_family(checkpoint: dict, path: Path):
    """The registered family (see hfport.family) whose test accepts this checkpoint."""
    from hfport.family import detect_family as detect

    return detect(checkpoint, path)


def check_tensors(state: Any, path: Path) -> None:
    """A state dict maps names to dense tensors that own their bytes; anything else means a damaged, foreign
    or hostile file. Checked before any tensor is materialised: a broadcast (stride-0) view of a few bytes of
    storage would otherwise become gigabytes when written out."""
    from hfport.mappings.templates import collapse_keys

    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the state dict is a {type(state).__name__}, expected a dict of tensors")
    odd_keys = [repr(k) for k in state if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(f"{path}: the state dict has non-string keys: {', '.join(odd_keys[:6])}")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{path}: the state dict holds non-tensor values at {collapse_keys(odd, 6)}")
    for key, tensor in state.items():
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{path}: {key} is a {str(tensor.layout).removeprefix('torch.')} tensor; "
                                  "weights must be dense")
        if tensor.device.type != "cpu":
            raise CheckpointError(f"{path}: {key} is a {tensor.device.type} tensor without data")
        stored = tensor.untyped_storage().nbytes()
        needed = tensor.numel() * tensor.element_size()
        if needed > stored or any(st == 0 and n > 1 for n, st in zip(tensor.shape, tensor.stride())):
            raise CheckpointError(
                f"{path}: {key} is a broadcast view: {list(tensor.shape)} ({needed:,} bytes) over {stored:,} bytes "
                "of storage; refusing to expand it")


def check_dtypes(plan, state: dict, expected: dict[str, torch.dtype], source_name: str) -> None:
    """Floating-point parameters come from floating-point tensors (no int/bool/complex weights)."""
    from hfport.mappings.templates import collapse_keys

    wrong = {}
    for step in plan.steps:
        if step.op == "check":
            continue
        wants_float = any(expected.get(k, torch.float32).is_floating_point for k in step.outputs)
        for key in step.inputs:
            if wants_float and key in state and not state[key].is_floating_point():
                wrong[key] = str(state[key].dtype).removeprefix("torch.")
    if wrong:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(wrong.items())[:6])
        raise MappingError(f"{source_name}: floating-point parameters stored as non-float tensors: {shown}"
                           + (f" and {len(wrong) - 6} more" if len(wrong) > 6 else ""))


def describe_nonfinite(counts: dict[str, tuple[int, int]]) -> str:
    shown = ", ".join(f"{k} ({nan} NaN, {inf} inf)" for k, (nan, inf) in list(counts.items())[:6])
    return f"{len(counts)} tensor(s) hold non-finite values: {shown}" + (" ..." if len(counts) > 6 else "")


def _nonfinite(tensor: torch.Tensor) -> tuple[int, int] | None:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    # min and max propagate NaN and show an inf: one read of the tensor, nothing allocated (isfinite().all()
    # allocates a mask the tensor's size and took ten times longer)
    low, high = torch.aminmax(tensor)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return None
    nan = int(torch.isnan(tensor).sum())
    return nan, int(tensor.numel() - int(torch.isfinite(tensor).sum()) - nan)


def prepare_family(family, checkpoint: dict, source: Path, **options) -> "Prepared":
    """The family's derivation, with malformed hyper-parameters and shapes reported as one line."""
    try:
        return family.prepare(checkpoint, source, **options)
    except HfportError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as err:
        raise ConfigError(f"{source}: cannot derive the model from this checkpoint's hyper-parameters and shapes "
                          f"({type(err).__name__}: {str(err)[:200]})") from None


@dataclass
class TargetInventory:
    """What the HF model expects, from one build on the meta device (no memory): every parameter and persistent
    buffer's shape and dtype, and the ties the model declares itself (target -> owner), which loading restores."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    ties: dict[str, str]


def target_inventory(model_class: type, config) -> TargetInventory:
    with torch.device("meta"):
        model = model_class(config)
    state = model.state_dict()
    return TargetInventory({k: tuple(v.shape) for k, v in state.items()}, {k: v.dtype for k, v in state.items()},
                           dict(getattr(model, "all_tied_weights_keys", None) or {}))


def target_shapes(model_class: type, config) -> dict[str, tuple[int, ...]]:
    return target_inventory(model_class, config).shapes


def _written_dtype(target: torch.dtype | None, out_dtype: torch.dtype) -> torch.dtype:
    """Floating tensors are written in the output dtype, the others (ids, masks) as they are."""
    return out_dtype if target is None or target.is_floating_point else target


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    dtype: str | None = None,
    max_shard_size: str | int = "2GB",
    trust_pickle: bool = False,
    allow_nonfinite: bool = False,
    progress: Callable[..., None] | None = None,  # (key, done, total, nbytes=, total_bytes=)
    **options,
) -> Path:
    """Convert ``source`` into an HF folder at ``output``; returns the folder path.

    ``options`` go to the family converter (OFA: ``bpe_dir``, ``patch_image_size``; METER: ``text_config``,
    ``tokenizer``, ``head``). Nothing is written unless every check passes.
    """
    source, output = Path(source), Path(output)
    output = check_output_path(output, force, protect=source)  # resolved; fails before reading a multi-GB file
    existing = output_identity(output)  # --force replaces this folder, nothing that appears later
    if dtype is not None and dtype not in DTYPES:
        raise HfportError(f"unknown --dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    checkpoint = load_checkpoint(source, trust=trust_pickle)
    family = detect_family(checkpoint, source)
    check_tensors(checkpoint[family.state_key], source)
    # also checks every archive member's CRC-32; runs while the rest reads and writes (its error comes first)
    source_hash = BackgroundSha256(source)
    try:
        return _convert(family, checkpoint, source, output, existing, source_hash, force=force, dtype=dtype,
                        max_shard_size=max_shard_size, allow_nonfinite=allow_nonfinite, progress=progress, **options)
    except BaseException:
        if (damaged := source_hash.failure()) is not None:
            raise damaged from None
        raise


def _convert(family, checkpoint: dict, source: Path, output: Path, existing, source_hash: BackgroundSha256, *,
             force: bool, dtype: str | None, max_shard_size: str | int, allow_nonfinite: bool,
             progress: Callable[[str, int, int], None] | None, **options) -> Path:
    prepared: Prepared = prepare_family(family, checkpoint, source, **options)
    mapping = Mapping.load(family.mapping)
    target = prepared.inventory() if prepared.inventory else target_inventory(prepared.model_class, prepared.config)
    expected = target.shapes
    shapes = {k: tuple(v.shape) for k, v in prepared.state_dict.items()}
    plan = mapping.plan(shapes, expected, prepared.flags, source_name=source.name, implied_ties=target.ties)
    check_dtypes(plan, prepared.state_dict, target.dtypes, source.name)
    generate = family.generator(prepared.config) if hasattr(family, "generator") else None

    out_dtype = DTYPES[dtype] if dtype else prepared.source_dtype
    prepared.config.dtype = str(out_dtype).removeprefix("torch.")
    nonfinite: dict[str, tuple[int, int]] = {}
    with staged_output(output, force, protect=source, existing=existing) as staging:
        writer = ShardedSafetensorsWriter(staging, max_shard_size)
        seen_storages: set[int] = set()
        total = len(plan.output_keys)
        total_bytes = sum(math.prod(expected[k]) * _written_dtype(target.dtypes.get(k), out_dtype).itemsize
                          for k in plan.output_keys if k in expected)
        for done, (key, tensor) in enumerate(Mapping.run(plan, prepared.state_dict.__getitem__, source.name, generate), 1):
            if tuple(tensor.shape) != expected[key]:
                raise MappingError(f"shape mismatch: {key} {list(tensor.shape)}, the model expects {list(expected[key])}")
            if tensor.untyped_storage().data_ptr() in seen_storages:  # a source alias the target keeps apart
                tensor = tensor.clone()
            seen_storages.add(tensor.untyped_storage().data_ptr())
            if tensor.is_floating_point() and tensor.dtype != out_dtype:
                tensor = tensor.to(out_dtype)
            if (counts := _nonfinite(tensor)) is not None:  # after the cast: fp16 overflow counts too
                nonfinite[key] = counts
            writer.add(key, tensor)
            if progress:
                progress(key, done, total, nbytes=tensor.nbytes, total_bytes=total_bytes)
        if nonfinite and not allow_nonfinite:
            raise ConfigError(f"{source.name}: {describe_nonfinite(nonfinite)}",
                              hint="if these values are intended, rerun with --allow-nonfinite")
        if nonfinite:
            prepared.notes.append(describe_nonfinite(nonfinite) + " (kept: --allow-nonfinite)")
        written = writer.close()
        # the converter's auto_map stands: a class registered for an Auto class elsewhere in this process
        # (`register_for_auto_class`) would otherwise have save_pretrained rewrite it
        prepared.config._auto_class = None
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
                "sha256": source_hash.result(),
                "size": source.stat().st_size,
                "format": prepared.source_format,
            },
            "mapping": {"file": mapping.path.name, "sha256": mapping.sha256, "version": mapping.version},
            "model_class": getattr(prepared.model_class, "__name__", prepared.model_class),
            "task": prepared.task,
            "stored_dtype": str(out_dtype).removeprefix("torch."),
            "source_dtype": str(prepared.source_dtype).removeprefix("torch."),
            "hyper_parameters": _jsonable(prepared.hyper_parameters),
            "dropped": {**plan.dropped},
            "tied": plan.tied,
            "generated": {k: "computed by hfport (the source recomputes it at load time)" for k in plan.generated},
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
    recorded = provenance.get("dropped")  # the source keys this conversion dropped, as it recorded them
    plan = mapping.plan({k: tuple(h.get_slice(k).get_shape()) for k, h in where.items()}, None, flags,
                        direction="backward", source_name=folder.name, regenerators=family.regenerated,
                        dropped_at_conversion=recorded if isinstance(recorded, dict) else None)
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
