"""Orchestration: reference (golden file or live original) vs converted folder -> report.

    verify_folder(folder, golden=...)                       # a recorded golden file
    verify_folder(folder, against=CKPT, reference_code=DIR)  # the live original on probes / user inputs
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Protocol

import torch

import hfport
from hfport.code_trust import check_model_code
from hfport.errors import ConfigError, HfportError
from hfport.family import ConvertedFolder, get_family
from hfport.folder_files import model_digests
from hfport.verify import probes
from hfport.read.torch_file import file_sha256
from hfport.verify.golden import Golden, check_token_ids, folder_load_errors, load_golden
from hfport.verify.localise import first_divergence
from hfport.verify.report import SCHEMA, write_report

# fp32 policy (lossless storage): each family's `fp32_atol` (the issues' demands).
# fp32's noise floor relative to a tensor's largest value: a Swin stage reaching |x| ~ 29 differs by 3.2e-5 between
# fp32 and fp64 of the *same* model (measured), past 1e-5 absolute; 2e-6 x max|ref| admits that and still fails a
# wrong fusion LayerNorm eps (2.1e-5 to 3e-5 on features of magnitude ~4).
FP32_SCALE_RTOL = 2e-6
# Lossy storage (fp32 source stored in 16 bits): rounding every weight to 11 (fp16) / 8 (bf16) significant bits
# moves each by up to 2^-11 / 2^-8 relative; through a dozen layers that reaches ~1e-3 / ~1e-2 on unit-scale
# activations and a few times more on logits.
LOSSY_ATOL = {"float16": 1e-2, "bfloat16": 5e-2}
PRECISION_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


class Backend(Protocol):
    """What the harness needs from the converted side."""

    def trace(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def generate(self, inputs: dict[str, torch.Tensor], num_beams: int, max_len_b: int, min_len: int) -> list[list[int]]: ...


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dtype_name(value: Any) -> str | None:
    if not value:
        return None
    return str(value).replace("torch.", "")


SAFETENSORS_FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header


def stored_float_dtypes(folder: Path) -> dict[str, list[str]]:
    """{dtype name: [weight files holding it]} for the floating tensors in the folder's safetensors files, read
    from their headers (no tensor is loaded)."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if not 0 < size <= _MAX_HEADER:
                    raise ValueError(f"header length {size}")
                header = json.loads(handle.read(size))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a readable safetensors file ({err})") from None
        dtypes = {entry.get("dtype") for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict)}
        for code in sorted(dtypes & set(SAFETENSORS_FLOAT_DTYPES)):
            found.setdefault(SAFETENSORS_FLOAT_DTYPES[code], []).append(path.name)
    return found


def tolerance_policy(folder: str | Path, family: str, atol: float | None = None, rtol: float | None = None,
                     scale_rtol: float | None = None) -> dict[str, Any]:
    """atol/rtol/scale_rtol by how the folder stores its weights relative to the source checkpoint; overridable.

    The stored dtype is read from the weight files themselves (the least precise floating dtype there), never taken
    from `hfport.json`: a folder whose record names another stored dtype than its tensors hold is refused. The
    source dtype comes from `hfport.json`; it can only widen the tolerance for tensors really stored in 16 bits."""
    folder = Path(folder)
    provenance = _read_json(folder / "hfport.json")
    present = stored_float_dtypes(folder)
    stored = min(present, key=lambda d: PRECISION_BITS[d]) if present else "float32"
    claimed = _dtype_name(provenance.get("stored_dtype"))
    if present and claimed and claimed != stored:
        where = ", ".join(f"{dtype} in {', '.join(files[:2])}" for dtype, files in sorted(present.items()))
        raise ConfigError(f"{folder}/hfport.json says the weights are stored as {claimed}, but the weight files "
                          f"hold {where}", hint="the folder was changed after conversion: convert again")
    source = _dtype_name(provenance.get("source_dtype")) or stored
    # computation is fp32: a source more precise than fp32 loses nothing that fp32 compute would keep
    lossy = PRECISION_BITS.get(stored, 24) < min(PRECISION_BITS.get(source, 24), 24)
    if lossy:
        policy = {"atol": LOSSY_ATOL.get(stored, 1e-2), "rtol": 0.0, "scale_rtol": 0.0, "policy": f"{stored}-lossy",
                  "reason": f"{source} weights stored as {stored}: rounding moves outputs by more than fp32 noise"}
    else:
        policy = {"atol": _family(family).fp32_atol, "rtol": 0.0, "scale_rtol": FP32_SCALE_RTOL, "policy": "fp32",
                  "reason": f"stored {stored} holds the {source} source weights exactly; computed in fp32"}
    policy.update(stored_dtype=stored, source_dtype=source)
    if atol is not None or rtol is not None or scale_rtol is not None:
        policy["policy"] += "+override"
        policy["scale_rtol"] = policy["scale_rtol"] if scale_rtol is None else float(scale_rtol)
        policy["atol"] = policy["atol"] if atol is None else float(atol)
        policy["rtol"] = policy["rtol"] if rtol is None else float(rtol)
    return policy


def _family(family: Any) -> Any:
    """A family given by name (as reports and golden files name it) or already looked up."""
    return get_family(family) if isinstance(family, str) else family


def compare_set(family: Any, set_name: str, inputs: dict, reference: dict, converted: dict, golden: Golden,
                atol: float, rtol: float, scale_rtol: float = 0.0) -> list[dict[str, Any]]:
    """Compare every reference entry of one input set, the family's way (which positions count)."""
    return _family(family).compare_set(set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol)


def compare_generations(golden: Golden, converted: Backend, check_beam: bool) -> list[dict[str, Any]]:
    out = []
    for gen in golden.generations:
        inputs = golden.sets.get(gen.set)
        if inputs is None:
            continue
        entry: dict[str, Any] = {"name": gen.name, "set": gen.set, "num_beams": gen.num_beams,
                                 "required": gen.num_beams == 1 or check_beam, "reference": gen.tokens}
        try:
            got = converted.generate(inputs, gen.num_beams, gen.max_len_b, gen.min_len)
            got = [list(map(int, seq)) for seq in got]
            entry.update(converted=got, exact=got == gen.tokens)
        except HfportError:
            raise
        except Exception as err:  # a crash in generation is a failed check, not a harness crash
            entry.update(converted=None, exact=False, error=f"{type(err).__name__}: {err}")
        out.append(entry)
    return out


def run_verification(family: Any, golden: Golden, converted: Backend, tolerance: dict[str, Any],
                     check_beam: bool = False, variant: str | None = None) -> dict[str, Any]:
    """Compare a converted backend against a reference; the report without the outer identification.

    `variant` (the family's `trace_variant` of the folder) picks module names for the first divergence."""
    family = _family(family)
    outputs: list[dict[str, Any]] = []
    for set_name, inputs in golden.sets.items():
        trace = converted.trace(inputs)
        outputs += compare_set(family, set_name, inputs, golden.traces[set_name], trace, golden,
                               tolerance["atol"], tolerance["rtol"], tolerance.get("scale_rtol", 0.0))
    generation = compare_generations(golden, converted, check_beam) if family.checks_generation else []
    divergence = first_divergence(outputs, golden.order, variant, family)
    if divergence is None and any(not r["passed"] for r in outputs):  # names outside the known order
        divergence = next(({"name": r["name"], "set": r["set"], "layer": r["name"], "module": None,
                            "converted_module": None}
                           for r in outputs if not r["passed"]), None)
    problems = coverage_problems(golden, family, outputs, generation)
    passed = (not problems and all(r["passed"] for r in outputs)
              and all(g["exact"] for g in generation if g["required"]))
    return {"passed": passed, "outputs": outputs, "generation": generation, "first_divergence": divergence,
            "problems": problems}


def expected_counts(golden: Golden, family: Any) -> dict[str, int]:
    """How many outputs and generation runs the reference holds: a passing report must have compared them all."""
    return {"outputs": sum(len(trace) for trace in golden.traces.values()),
            "generations": len(golden.generations) if _family(family).checks_generation else 0}


def coverage_problems(golden: Golden, family: Any, outputs: list, generation: list) -> list[str]:
    expected = expected_counts(golden, family)
    problems = []
    if not outputs:
        problems.append("the reference holds no outputs: nothing was compared")
    elif len(outputs) < expected["outputs"]:
        problems.append(f"compared {len(outputs)} of the reference's {expected['outputs']} outputs")
    if len(generation) < expected["generations"]:
        problems.append(f"ran {len(generation)} of the reference's {expected['generations']} generation checks")
    return problems


def _environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def user_sets(folder: ConvertedFolder, image: str | None, text: str | None, tokens: str | None) -> dict | None:
    """Input sets from --image / --text / --tokens (None when none given)."""
    if not (image or text or tokens):
        return None
    if text and tokens:
        raise ConfigError("give either --text or --tokens, not both")
    pixel = None
    ids: list[int] | None = probes.parse_tokens(tokens) if tokens else None
    if image or text:
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(folder.path), trust_remote_code=True)
        except Exception as err:
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"{folder} has no usable processor for --image/--text ({type(err).__name__}: {detail})",
                              hint="pass token ids with --tokens (and no --image) instead") from err
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if image:
            from PIL import Image

            kwargs["images"] = Image.open(image).convert("RGB")
        if text:
            kwargs["text"] = text
        encoded = processor(**kwargs)
        for key in ("pixel_values", "patch_images", "image"):
            if key in encoded:
                pixel = encoded[key][0].float()
                break
        if text:
            ids = [int(i) for i in encoded["input_ids"][0]]
    default = folder.family.probes(folder, probes.PROBE_SEED)["inputs"]
    return folder.family.user_inputs(folder, default, pixel, ids)


def verify_folder(
    folder: str | Path,
    *,
    golden: str | Path | None = None,
    against: str | Path | None = None,
    reference_code: str | Path | None = None,
    reference_python: str | None = None,
    bpe_dir: str | None = None,
    text_config: str | None = None,
    vit: str | None = None,
    image: str | None = None,
    text: str | None = None,
    tokens: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    scale_rtol: float | None = None,
    check_beam: bool = False,
    report_path: str | Path | None = None,
    write: bool = True,
    converted: Backend | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Verify a converted folder; returns the report (schema hfport.verify/2) and writes it (default
    `<folder>/verification.json`). Raises HfportError on unusable inputs; a failed check is `passed: false`."""
    started = time.time()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a converted model folder (no config.json)")
    if (golden is None) == (against is None):
        raise ConfigError("give exactly one reference: --golden FILE or --against CKPT --reference-code DIR")
    converted_folder = ConvertedFolder.open(folder, require_provenance=False)
    folder_config = converted_folder.config
    family = converted_folder.family
    check_model_code(folder, trust_remote_code, "verify it")
    tolerance = tolerance_policy(folder, family, atol, rtol, scale_rtol)
    judged = model_digests(folder)  # hashed before the model is loaded: the report is bound to these bytes

    if golden is not None:
        if image or text or tokens:
            raise ConfigError("--image/--text/--tokens need a live reference (--against); a golden file has its own inputs")
        reference = load_golden(golden)
        reference_info = {"kind": "golden", "path": str(golden), "sha256": reference.sha256}
    else:
        if reference_code is None:
            raise ConfigError("--against needs --reference-code DIR (the original code checkout)")
        from hfport.verify.reference import record_reference

        sets = (user_sets(converted_folder, image, text, tokens)
                or family.probes(converted_folder, probes.PROBE_SEED))
        recorded = time.time()
        path = record_reference(against, reference_code, sets, family.name, reference_python, bpe_dir, text_config, vit)
        reference = load_golden(path)
        reference_info = {"kind": family.live_reference, "path": str(against),
                          "sha256": file_sha256(against), "code": str(reference_code),
                          "python": reference_python or "in-process", "seconds": round(time.time() - recorded, 3)}
    if reference.family != family.name:
        raise ConfigError(f"the reference is a {reference.family} golden file but {folder} holds a {family.name} model")
    check_token_ids(reference, folder_config)

    if converted is None:
        from hfport.verify.backends.hf import ConvertedBackend

        with folder_load_errors(folder):
            converted = ConvertedBackend(converted_folder)
    result = run_verification(family, reference, converted, tolerance, check_beam,
                              family.trace_variant(converted_folder.config))
    reference_info.update(expected_counts(reference, family))
    report = {
        "schema": SCHEMA,
        "passed": result["passed"],
        "family": family.name,
        "model": str(folder),
        "reference": reference_info,
        "tolerance": tolerance,
        "outputs": result["outputs"],
        "generation": result["generation"],
        "first_divergence": result["first_divergence"],
        "problems": result["problems"],
        "files": judged,
        "seconds": round(time.time() - started, 3),
        "hfport_version": hfport.__version__,
        "environment": _environment(),
    }
    if write:
        path = Path(report_path) if report_path else folder / "verification.json"
        report.update(plot_for_report(report, path))
        write_report(report, path)
    return report


def plot_for_report(report: dict[str, Any], report_path: Path) -> dict[str, Any]:
    """Draw the per-layer plot next to the report; {"plot": {file, sha256}} so `push` uploads exactly that
    picture (it is not one of the judged model files), or {} without matplotlib (a stale picture is removed)."""
    from hfport.verify.plot import plot_path_for, write_plot

    target = plot_path_for(report_path)
    if write_plot(report, target) is None:
        target.unlink(missing_ok=True)
        return {}
    return {"plot": {"file": target.name, "sha256": file_sha256(target)}}
