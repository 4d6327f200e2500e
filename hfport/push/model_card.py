"""The model card pushed with a converted folder: metadata, usage, verification table, provenance.

`verification_markdown(report)` renders a `hfport.verify/1` report as Markdown; `build_model_card(...)`
assembles the whole README.md from a converted folder's `config.json` and `hfport.json`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from huggingface_hub import ModelCard, ModelCardData

VerificationStatus = Literal["passed", "failed", "missing"]

FAMILIES = {
    "ofa": {
        "name": "OFA",
        "paper": "[OFA: Unifying Architectures, Tasks, and Modalities Through a Simple Sequence-to-Sequence "
                 "Learning Framework](https://arxiv.org/abs/2202.03052)",
        "code": "https://github.com/OFA-Sys/OFA",
        "license": "apache-2.0",
    },
    "meter": {
        "name": "METER",
        "paper": "[An Empirical Study of Training End-to-End Vision-and-Language Transformers]"
                 "(https://arxiv.org/abs/2111.02387)",
        "code": "https://github.com/zdou0830/METER",
        "license": "mit",
    },
}

# The released OFA checkpoints whose HF-style ports OFA-Sys published on the Hub.
KNOWN_BASE_MODELS = {f"ofa_{size}.pt": f"OFA-Sys/ofa-{size}" for size in ("tiny", "medium", "base", "large", "huge")}

# (family, keywords looked for in `task` + `model_class`, Hub pipeline tag); first match wins.
# The Hub has no visual-entailment / visual-reasoning task: NLVR2 and SNLI-VE give a fixed-choice verdict on an
# (image, sentence) pair, which is closest to visual question answering.
PIPELINE_TAGS = [
    ("ofa", ("vqa", "question"), "visual-question-answering"),
    ("ofa", ("caption",), "image-to-text"),
    ("ofa", ("refcoco", "grounding"), "zero-shot-object-detection"),
    ("ofa", ("snli", "entail"), "visual-question-answering"),
    ("ofa", ("gigaword", "summar"), "summarization"),
    ("ofa", (), "image-to-text"),  # pre-trained OFA: image + instruction in, text out
    ("meter", ("vqa", "question"), "visual-question-answering"),
    ("meter", ("irtr", "retrieval", "itm", "matching"), "zero-shot-image-classification"),
    ("meter", ("nlvr", "reasoning", "snli", "entail"), "visual-question-answering"),
    ("meter", (), "feature-extraction"),  # pre-trained METER (MLM + ITM heads)
]

_NOT_MODEL_AUTO_CLASSES = {"AutoConfig", "AutoTokenizer", "AutoProcessor", "AutoImageProcessor", "AutoFeatureExtractor"}


# -- verification report ---------------------------------------------------------------------------------------
def _num(value: Any, fmt: str = ".2e") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return _cell(value)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _verdict(passed: Any) -> str:
    return "✅ pass" if passed else "❌ FAIL"


def _grouped_outputs(outputs: list[dict]) -> list[dict]:
    """One row per output and input set; per-layer entries (`name.{i}`) collapse into one with the worst figures."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in outputs:
        base, dotted, _ = str(o.get("name", "?")).partition(".")
        groups.setdefault((base + (".*" if dotted else ""), str(o.get("set", ""))), []).append(o)
    rows = []
    for (name, set_name), items in groups.items():
        def worst(key: str, pick=max):
            values = [i[key] for i in items if isinstance(i.get(key), (int, float))]
            return pick(values) if values else None

        shapes = {tuple(i.get("shape") or ()) for i in items}
        failed = [i for i in items if not i.get("passed")]
        rows.append({
            "name": name, "count": len(items), "set": set_name,
            "shape": ("×".join(map(str, next(iter(shapes)))) or "scalar") if len(shapes) == 1 else "various",
            "max_abs": worst("max_abs"), "mean_abs": worst("mean_abs"), "max_rel": worst("max_rel"),
            "cosine": worst("cosine", min), "argmax_agree": worst("argmax_agree", min),
            "top5_overlap": worst("top5_overlap", min), "min_atol_to_pass": worst("min_atol_to_pass"),
            "atol": worst("atol"), "passed": not failed,
            "error": next((i.get("error") for i in failed if i.get("error")), None),
        })
    return rows


def verification_markdown(report: dict) -> str:
    """Render a `hfport.verify/1` report: a one-line verdict, an output table, generation, first divergence."""
    outputs = _grouped_outputs(report.get("outputs") or [])
    generation = report.get("generation") or []
    reference = report.get("reference") or {}
    tolerance = report.get("tolerance") or {}
    environment = report.get("environment") or {}

    # a generation check without `required` counts as required: a card must not understate a failure
    failed = sum(1 for o in outputs if not o["passed"])
    failed += sum(1 for g in generation if not g.get("exact") and g.get("required", True))
    verdict = "PASSED" if report.get("passed") else "FAILED"
    checks = f"{len(outputs)} output(s) and {len(generation)} generation check(s)"
    against = f"the {reference.get('kind', 'reference')} reference"
    if reference.get("path"):
        against += f" `{str(reference['path']).replace(chr(92), '/').rsplit('/', 1)[-1]}`"
    if reference.get("sha256"):
        against += f" (sha256 `{reference['sha256'][:12]}…`)"
    policy = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in tolerance.items())
    lines = [f"**Verification {verdict}**: {checks} compared with {against}"
             + (f", tolerance {policy}" if policy else "") + (f"; {failed} failed" if failed else "") + "."]

    if outputs:
        lines += ["", "| output | inputs | shape | max abs | mean abs | max rel | cosine | argmax agree "
                      "| top-5 overlap | smallest passing atol | atol | result |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in outputs:
            result = _verdict(o["passed"]) + (f": {_cell(o['error'])}" if o["error"] else "")
            atol = o["atol"] if o["atol"] is not None else tolerance.get("atol")
            label = f"`{_cell(o['name'])}`" + (f" ({o['count']})" if o["count"] > 1 else "")
            lines.append(
                f"| {label} | {_cell(o['set'])} | {o['shape']} | {_num(o['max_abs'])} "
                f"| {_num(o['mean_abs'])} | {_num(o['max_rel'])} | {_num(o['cosine'], '.6f')} "
                f"| {_num(o['argmax_agree'], '.3f')} | {_num(o['top5_overlap'], '.3f')} "
                f"| {_num(o['min_atol_to_pass'])} | {_num(atol)} "
                f"| {result} |")

    if generation:
        lines += ["", "| generation | inputs | token-exact | result |", "|---|---|---|---|"]
        for g in generation:
            if g.get("exact"):
                result = "✅ pass"
            else:
                result = "❌ FAIL" if g.get("required", True) else "⚠️ differs (informational)"
            lines.append(f"| {_cell(g.get('name'))} | {_cell(g.get('set', ''))} | {_num(g.get('exact'))} "
                         f"| {result} |")

    divergence = report.get("first_divergence")
    if divergence:
        if isinstance(divergence, dict):
            name = divergence.get("name") or "?"
            details = [f"{divergence['layer']}" if divergence.get("layer") else None,
                       f"inputs {divergence['set']}" if divergence.get("set") else None,
                       f"max abs {_num(divergence['max_abs'])}" if divergence.get("max_abs") is not None else None]
            details = [d for d in details if d]
            suffix = f" ({', '.join(map(_cell, details))})" if details else ""
            lines += ["", f"First diverging intermediate output: `{_cell(name)}`{suffix}"]
        else:
            lines += ["", f"First diverging intermediate output: `{_cell(divergence)}`"]

    footer = [f"hfport {report['hfport_version']}" if report.get("hfport_version") else None]
    footer += [f"{k} {v}" for k, v in environment.items()]
    footer.append(f"{report['seconds']:.1f} s" if isinstance(report.get("seconds"), (int, float)) else None)
    footer = [part for part in footer if part]
    if footer:
        lines += ["", f"<sub>Measured with {', '.join(footer)}.</sub>"]
    return "\n".join(lines)


# -- metadata ------------------------------------------------------------------------------------------------------
def pipeline_tag_for(provenance: dict) -> str | None:
    """The Hub task for a converted model, from `hfport.json` (an explicit `pipeline_tag` there wins)."""
    if provenance.get("pipeline_tag"):
        return provenance["pipeline_tag"]
    family = provenance.get("family")
    words = f"{provenance.get('task') or ''} {provenance.get('model_class') or ''}".lower()
    for tag_family, keywords, tag in PIPELINE_TAGS:
        if tag_family == family and (not keywords or any(k in words for k in keywords)):
            return tag
    return None


def base_model_for(provenance: dict) -> str | None:
    return provenance.get("base_model") or KNOWN_BASE_MODELS.get((provenance.get("source") or {}).get("file", ""))


def auto_class_for(config: dict, model_class: str | None = None) -> str:
    """The transformers Auto class that loads this folder's model class, read from `config.json`'s `auto_map`."""
    auto_map = {k: v for k, v in (config.get("auto_map") or {}).items()
                if isinstance(v, str) and k not in _NOT_MODEL_AUTO_CLASSES}
    model_class = model_class or next(iter(config.get("architectures") or []), None)
    matching = [k for k, v in auto_map.items() if model_class and v.rsplit(".", 1)[-1] == model_class]
    specific = [k for k in matching if k != "AutoModel"]
    if specific or matching:
        return (specific or matching)[0]
    return "AutoModel" if "AutoModel" in auto_map or not auto_map else next(iter(auto_map))


def usage_snippet(repo_id: str, auto_class: str, preprocessor: str | None) -> str:
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
    if status == "failed":
        return ("> ⚠️ **UNVERIFIED conversion: verification FAILED.** This model's outputs did not match the "
                "original checkpoint within tolerance (see *Verification* below); it was published with "
                "`--allow-unverified`.\n\n")
    return ""


# -- the card ------------------------------------------------------------------------------------------------------
def build_model_card(repo_id: str, config: dict, provenance: dict, report: dict | None,
                     status: VerificationStatus, preprocessor: str | None = None) -> ModelCard:
    """The README.md for a converted folder. `status` is what the verification gate decided."""
    family_key = provenance.get("family") or ""
    family = FAMILIES.get(family_key, {"name": family_key.upper() or "model"})
    source = provenance.get("source") or {}
    mapping = provenance.get("mapping") or {}
    model_class = provenance.get("model_class") or next(iter(config.get("architectures") or []), None)
    auto_class = auto_class_for(config, model_class)

    tags = ["hfport", family_key] if family_key else ["hfport"]
    tags += ["multimodal", "custom_code"] + (["unverified"] if status != "passed" else [])
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
        intro += " Its outputs were checked against the original model; the numbers are below."
    body += [intro]
    if family.get("paper"):
        body += ["", f"Paper: {family['paper']}. Original code: {family['code']}."]

    body += ["", "## Usage", "",
             "Runs with stock `transformers` (the model code ships in this repository, hence `trust_remote_code`):",
             "", usage_snippet(repo_id, auto_class, preprocessor)]

    body += ["", "## Verification", ""]
    if report is None:
        body += ["No verification report: this conversion has not been checked against the original model."]
    else:
        body += [verification_markdown(report)]

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
    body += [f"| {name} | {_cell(value)} |" for name, value in rows if value]

    dropped = provenance.get("dropped") or {}
    if dropped:
        body += ["", "Source tensors not carried over:", "", "| key pattern | why |", "|---|---|"]
        body += [f"| `{_cell(key)}` | {_cell(reason)} |" for key, reason in dropped.items()]
    hyper = provenance.get("hyper_parameters")
    if hyper:
        body += ["", "<details><summary>Source hyper-parameters</summary>", "", "```json",
                 json.dumps(hyper, indent=2, sort_keys=True, default=str), "```", "", "</details>"]
    body += ["", f"The full provenance record is in `hfport.json`"
                 + (", the verification report in `verification.json`." if report is not None else ".")]

    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
