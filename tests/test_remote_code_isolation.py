"""Several converted folders in one process each load their own head and their own code.

transformers' Auto classes remember one model class per config class for the whole process, and cache remote
code by folder basename plus a hash of the code: users who keep `runs/<task>/hf` folders hit both at once.
Every load here happens in one fresh interpreter that cannot import hfport, with its own module cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import SHARED
from helpers import fresh_process_env

# fixture -> (head class, specific Auto class, golden output that its logits must equal)
METER_HEADS = {
    "meter-tiny-vqa-lightning": ("MeterForQuestionAnswering", "AutoModelForVisualQuestionAnswering", "vqa_logits"),
    "meter-tiny-irtr": ("MeterForImageTextMatching", "AutoModelForSequenceClassification", "itm_logits"),
    "meter-tiny-nlvr2": ("MeterForVisualReasoning", "AutoModelForSequenceClassification", "nlvr2_logits"),
    "meter-tiny-snli": ("MeterForVisualEntailment", "AutoModelForSequenceClassification", "snli_logits"),
}

# Loads every (folder, Auto class, reference, output) job in order in ONE process; prints one JSON line per job.
_LOAD_ALL = r"""
import json, sys
sys.modules["hfport"] = None
import torch, transformers
for folder, auto_name, reference, output in json.loads(sys.argv[1]):
    model, info = getattr(transformers, auto_name).from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True)
    golden = torch.load(reference, weights_only=True)
    inputs = golden["inputs"]
    with torch.no_grad():
        if "src_tokens" in inputs:
            tokens, prev = inputs["src_tokens"], inputs["prev_output_tokens"]
            got = model(input_ids=tokens, attention_mask=tokens.ne(1).long(), patch_images=inputs["patch_images"],
                        patch_masks=inputs["patch_masks"], decoder_input_ids=prev,
                        decoder_attention_mask=prev.ne(1).long(), use_cache=False).logits
            keep = prev.ne(1)
            diff = float((got - golden["outputs"]["logits"])[keep].abs().max())
        else:
            pixels = inputs["image"] if "image" in inputs else torch.stack([inputs["image_0"], inputs["image_1"]], 1)
            got = model(input_ids=inputs["text_ids"], attention_mask=inputs["text_masks"], pixel_values=pixels).logits
            diff = float((got - golden["outputs"][output]).abs().max())
    module = sys.modules[type(model).__module__]
    print(json.dumps({"folder": folder, "auto": auto_name, "class": type(model).__name__,
                      "config_class": type(model.config).__name__, "marker": getattr(module, "EDITED_COPY", None),
                      "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                      "mismatched": [str(m) for m in info["mismatched_keys"]], "max_abs": diff}))
"""


def _load_all(jobs: list[tuple[Path, str, Path, str]], tmp_path: Path) -> list[dict]:
    env = fresh_process_env(tmp_path)
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    payload = json.dumps([[str(f), auto, str(ref), out] for f, auto, ref, out in jobs])
    result = subprocess.run([sys.executable, "-c", _LOAD_ALL, payload], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _place(converted: Path, runs: Path, name: str) -> Path:
    """A converted folder copied to `runs/<name>/hf`: every folder ends up with the same basename."""
    target = runs / name / "hf"
    shutil.copytree(converted, target)
    return target


def _reference(family: str, name: str) -> Path:
    return SHARED / "fixtures" / family / name / "reference.pt"


def test_meter_heads_in_folders_named_alike_each_load_their_own_head_in_one_process(converted_fixtures, tmp_path):
    runs = tmp_path / "runs"
    jobs = []
    for name, (_, auto_name, output) in METER_HEADS.items():
        folder = _place(converted_fixtures(name), runs, name)
        jobs += [(folder, "AutoModel", _reference("meter", name), output),
                 (folder, auto_name, _reference("meter", name), output)]
    results = _load_all(jobs, tmp_path)
    assert len(results) == len(jobs)
    for (folder, auto_name, _, _), got in zip(jobs, results):
        head = METER_HEADS[folder.parent.name][0]
        assert (got["auto"], got["class"], got["config_class"]) == (auto_name, head, head + "Config"), got
        assert got["missing"] == got["unexpected"] == got["mismatched"] == [], got
        assert got["max_abs"] < 1e-5, got


def _edit_copy(folder: Path, modeling_file: str) -> None:
    """A second hfport version's folder: its modeling code differs (by a marker the loaded module must carry)."""
    path = folder / modeling_file
    path.write_text(path.read_text() + '\nEDITED_COPY = "second folder\'s code"\n')


def test_a_folder_named_like_an_earlier_one_but_with_other_code_runs_its_own_code(converted_fixtures, tmp_path):
    runs = tmp_path / "runs"
    first = _place(converted_fixtures("meter-tiny-vqa-lightning"), runs, "old")
    second = _place(converted_fixtures("meter-tiny-vqa-lightning"), runs, "new")
    _edit_copy(second, "modeling_meter.py")
    ofa_first = _place(converted_fixtures("ofa-tiny-standard"), runs, "ofa-old")
    ofa_second = _place(converted_fixtures("ofa-tiny-standard"), runs, "ofa-new")
    _edit_copy(ofa_second, "modeling_ofa.py")
    meter_ref, ofa_ref = _reference("meter", "meter-tiny-vqa-lightning"), _reference("ofa", "ofa-tiny-standard")
    results = _load_all([(first, "AutoModel", meter_ref, "vqa_logits"), (second, "AutoModel", meter_ref, "vqa_logits"),
                         (ofa_first, "AutoModelForSeq2SeqLM", ofa_ref, "logits"),
                         (ofa_second, "AutoModelForSeq2SeqLM", ofa_ref, "logits")], tmp_path)
    assert [r["marker"] for r in results] == [None, "second folder's code", None, "second folder's code"]
    assert all(r["missing"] == r["unexpected"] == [] for r in results), results


def test_ofa_folders_named_alike_with_different_architectures_each_match_their_golden_in_one_process(
        converted_fixtures, tmp_path):
    runs = tmp_path / "runs"
    names = ("ofa-tiny-standard", "ofa-tiny-plain")
    jobs = [(_place(converted_fixtures(n), runs, n), "AutoModelForSeq2SeqLM", _reference("ofa", n), "logits")
            for n in names]
    results = _load_all(jobs, tmp_path)
    assert [r["class"] for r in results] == ["OFAForConditionalGeneration"] * 2
    assert all(r["missing"] == r["unexpected"] == r["mismatched"] == [] for r in results), results
    assert all(r["max_abs"] < 1e-4 for r in results), results


def test_every_meter_head_class_has_the_config_class_its_folder_names():
    from hfport.converters.meter import HEAD_CLASSES
    from hfport.models.meter import modeling_meter
    from hfport.models.meter.configuration_meter import MeterConfig

    for head_class, _, _ in HEAD_CLASSES.values():
        config_class = getattr(modeling_meter, head_class + "Config")
        assert issubclass(config_class, MeterConfig) and config_class.__module__ == modeling_meter.__name__
    assert len({h for h, _, _ in HEAD_CLASSES.values()}) == len(HEAD_CLASSES)
