"""The model card pushed with a converted folder: metadata, usage, verification table, provenance.

`report_markdown(report)` renders a `hfport.verify/2` report as Markdown; `build_model_card(...)`
assembles the whole README.md from a converted folder's `config.json` and `hfport.json`.
"""

from __future__ import annotations

import json
from typing import Literal

from huggingface_hub import ModelCard, ModelCardData

from hfport.family import auto_class_for  # noqa: F401  (part of this module's interface)
from hfport.verify.report import markdown_cell, report_markdown

VerificationStatus = Literal["passed", "failed", "missing", "unbound"]


# -- metadata ------------------------------------------------------------------------------------------------------
def pipeline_tag_for(provenance: dict) -> str | None:
    """The Hub task for a converted model, from `hfport.json` (an explicit `pipeline_tag` there wins)."""
    if provenance.get("pipeline_tag"):
        return provenance["pipeline_tag"]
    family = _family(provenance.get("family"))
    if family is None:
        return None
    return family.pipeline_tag(provenance.get("task") or "", provenance.get("model_class") or "")


def _family(name: str | None):
    """The registered family of that name, or None (a card can still be built for an unknown one)."""
    from hfport.family import UnknownFamilyError, get_family

    try:
        return get_family(name) if name else None
    except UnknownFamilyError:
        return None


def base_model_for(provenance: dict) -> str | None:
    if provenance.get("base_model"):
        return provenance["base_model"]
    family = _family(provenance.get("family"))
    return family.base_models.get((provenance.get("source") or {}).get("file", "")) if family is not None else None


def usage_snippet(repo_id: str, auto_class: str, preprocessor: str | None, family=None,
                  model_class: str | None = None) -> str:
    """The card's Python block: the family's inference code (load, preprocess, run, print the answer) where it
    has one for this folder, else loading only."""
    code = family.usage_code(repo_id, auto_class, model_class or "", preprocessor) if family is not None and \
        hasattr(family, "usage_code") else None
    if code:
        return "```python\n" + code + "\n```"
    imports = ", ".join([auto_class] + ([preprocessor] if preprocessor else []))
    lines = [f"from transformers import {imports}", "",
             f'model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True).eval()']
    if preprocessor:
        name = "processor" if preprocessor == "AutoProcessor" else "tokenizer"
        lines.append(f'{name} = {preprocessor}.from_pretrained("{repo_id}", trust_remote_code=True)')
    return "```python\n" + "\n".join(lines) + "\n```"


def human_size(n: int | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit} ({n:,} bytes)"
        value /= 1000
    return str(n)


def _warning(status: VerificationStatus) -> str:
    if status == "missing":
        return ("> ⚠️ **UNVERIFIED conversion.** No hfport verification report was found for this model; it was "
                "published with `--allow-unverified`. Nobody has checked that it computes what the original "
                "checkpoint computes.\n\n")
    if status == "unbound":
        return ("> ⚠️ **UNVERIFIED conversion.** The verification report found with this model was made for other "
                "files than the ones published here (or records no file hashes), so it is not shown; the model was "
                "published with `--allow-unverified`.\n\n")
    if status == "failed":
        return ("> ⚠️ **UNVERIFIED conversion: verification FAILED.** This model's outputs did not match the "
                "original checkpoint within tolerance (see *Verification* below); it was published with "
                "`--allow-unverified`.\n\n")
    return ""


# -- the card ------------------------------------------------------------------------------------------------------
def build_model_card(repo_id: str, config: dict, provenance: dict, report: dict | None,
                     status: VerificationStatus, preprocessor: str | None = None, plot: str | None = None) -> ModelCard:
    """The README.md for a converted folder. `status` is what the verification gate decided."""
    family_key = provenance.get("family") or ""
    known = _family(family_key)
    family = known.card if known is not None else {"name": family_key.upper() or "model"}
    source = provenance.get("source") or {}
    mapping = provenance.get("mapping") or {}
    model_class = provenance.get("model_class") or next(iter(config.get("architectures") or []), None)
    auto_class = auto_class_for(config, model_class)
    if not config.get("auto_map") and known is not None:  # a stock class: the family knows its Auto class
        auto_class = (getattr(known, "auto_classes", None) or {}).get(model_class or "", auto_class)

    tags = ["hfport", family_key] if family_key else ["hfport"]
    tags += list(known.hub_tags if known is not None else ("multimodal", "custom_code"))
    tags += ["unverified"] if status != "passed" else []
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag_for(provenance),
        base_model=base_model_for(provenance),
        license=provenance.get("license") or family.get("license"),
        tags=tags,
    )

    body = [_warning(status) + f"# {repo_id.split('/')[-1]}", ""]
    intro = f"{family['name']} converted to Hugging Face transformers by hfport"
    if source.get("file"):
        intro += f" from the original {source.get('format', '')} checkpoint `{source['file']}`".replace("  ", " ")
    intro += f" (`{model_class}`" + (f", task `{provenance['task']}`" if provenance.get("task") else "") + ")."
    if status == "passed":
        intro += (" `hfport verify` compared its outputs with the original model's and recorded the sha256 of every "
                  "file it judged; `hfport push` checked that the files published here are those. The numbers are "
                  "below.")
    body += [intro]
    if family.get("paper"):
        body += ["", f"Paper: {family['paper']}. Original code: {family['code']}."]

    remote = bool(config.get("auto_map"))
    body += ["", "## Usage", "",
             "Runs with stock `transformers` (the model code ships in this repository, hence `trust_remote_code`):"
             if remote else "Runs with stock `transformers` classes (no remote code):",
             "", usage_snippet(repo_id, auto_class, preprocessor, known, model_class or "")]

    body += ["", "## Verification", ""]
    if report is None:
        body += ["No verification report: this conversion has not been checked against the original model."]
    else:
        body += [report_markdown(report)]
        if plot:
            body += ["", f"![Per-layer max abs difference between the converted and the original model, log scale, "
                         f"with the tolerance and the first divergence marked]({plot})"]

    body += ["", "## Provenance", "", "| | |", "|---|---|"]
    rows = [
        ("source checkpoint", f"`{source['file']}`" if source.get("file") else None),
        ("source sha256", f"`{source['sha256']}`" if source.get("sha256") else None),
        ("source size", human_size(source.get("size")) if source.get("size") is not None else None),
        ("source format", source.get("format")),
        ("dtype (source → stored)",
         " → ".join(d for d in (provenance.get("source_dtype"), provenance.get("stored_dtype")) if d) or None),
        ("mapping", (f"`{mapping['file']}`" + (f" (version {mapping['version']})" if mapping.get("version") else ""))
         if mapping.get("file") else None),
        ("mapping sha256", f"`{mapping['sha256']}`" if mapping.get("sha256") else None),
        ("converted with", f"hfport {provenance['hfport_version']}" if provenance.get("hfport_version") else None),
        ("converted on", provenance.get("created")),
    ]
    body += [f"| {name} | {markdown_cell(value)} |" for name, value in rows if value]

    dropped = provenance.get("dropped") or {}
    if dropped:
        body += ["", "Source tensors not carried over:", "", "| key pattern | why |", "|---|---|"]
        body += [f"| `{markdown_cell(key)}` | {markdown_cell(reason)} |" for key, reason in dropped.items()]
    hyper = provenance.get("hyper_parameters")
    if hyper:
        body += ["", "<details><summary>Source hyper-parameters</summary>", "", "```json",
                 json.dumps(hyper, indent=2, sort_keys=True, default=str), "```", "", "</details>"]
    body += ["", "The full provenance record is in `hfport.json`"
                 + (", the verification report in `verification.json`." if report is not None else ".")]

    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
