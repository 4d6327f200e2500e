"""The verification harness: statistics, localisation, reports, golden files, and the end-to-end verdicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import METER_FIXTURE_NAMES, OFA_FIXTURE_NAMES, SHARED
from hfport.cli import main as cli_main
from hfport.verify.compare import compare_tensors
from hfport.verify.golden import load_golden
from hfport.verify.harness import tolerance_policy, verify_folder
from hfport.verify.localise import describe, first_divergence, human_name
from hfport.verify.probes import meter_probes, ofa_probes
from hfport.verify.report import REQUIRED_KEYS, SCHEMA, report_markdown


OFA_FIXTURES = OFA_FIXTURE_NAMES
METER_FIXTURES = METER_FIXTURE_NAMES


# ---- statistics ----

def test_compare_reports_max_mean_rel_and_the_worst_index():
    ref = torch.zeros(2, 3, 4)
    ref[..., 0] = 1.0
    got = ref.clone()
    got[1, 2, 3] += 0.5
    got[0, 0, 0] += 0.1
    r = compare_tensors("x", "inputs", ref, got, atol=1e-4)
    assert r["max_abs"] == pytest.approx(0.5)
    assert r["mean_abs"] == pytest.approx(0.6 / 24)
    assert r["worst_index"] == [1, 2, 3]
    assert r["min_atol_to_pass"] == pytest.approx(0.5)
    assert r["max_rel"] > 1e20  # 0.5 against a reference of 0
    assert not r["passed"]


def test_smallest_passing_atol_accounts_for_rtol():
    ref = torch.tensor([[10.0, 1.0]])
    got = torch.tensor([[10.5, 1.0]])
    r = compare_tensors("x", "s", ref, got, atol=0.0, rtol=0.01)
    assert r["min_atol_to_pass"] == pytest.approx(0.4)  # 0.5 - 0.01 * 10
    assert r["max_rel"] == pytest.approx(0.05)


def test_masked_positions_are_ignored():
    ref = torch.zeros(2, 3, 4)
    got = ref.clone()
    got[1, 2] = 9.0  # a padded position
    keep = torch.tensor([[True, True, True], [True, True, False]])
    r = compare_tensors("decoder_features", "inputs", ref, got, atol=1e-4, mask=keep)
    assert r["passed"] and r["max_abs"] == 0.0
    assert r["compared_elements"] == 20


def test_logits_get_argmax_agreement_and_top5_overlap():
    ref = torch.arange(10.0).repeat(4, 1)  # argmax 9, top-5 = 5..9
    got = ref.clone()
    got[0, 0] = 100.0  # row 0: argmax moves to 0, top-5 loses 5
    r = compare_tensors("logits", "inputs", ref, got, atol=1e-4)
    assert r["argmax_agree"] == pytest.approx(0.75)
    assert r["top5_overlap"] == pytest.approx((0.8 + 3) / 4)
    assert compare_tensors("encoder_out", "inputs", ref, got, atol=1e-4)["argmax_agree"] is None


def test_cosine_of_identical_tensors_is_one():
    t = torch.randn(3, 5)
    r = compare_tensors("x", "s", t, t.clone(), atol=1e-9)
    assert r["cosine"] == 1.0 and r["passed"]


def test_boolean_masks_are_compared_exactly():
    ref = torch.tensor([[False, True]])
    assert compare_tensors("encoder_padding_mask", "s", ref, ref.float(), atol=1.0)["passed"]
    r = compare_tensors("encoder_padding_mask", "s", ref, torch.tensor([[1.0, 1.0]]), atol=1.0)
    assert not r["passed"] and r["mismatches"] == 1 and r["worst_index"] == [0, 0]


def test_nan_and_shape_mismatch_fail():
    ref = torch.ones(2, 2)
    got = ref.clone()
    got[0, 1] = float("nan")
    r = compare_tensors("x", "s", ref, got, atol=1.0)
    assert not r["passed"] and r["worst_index"] == [0, 1] and r["max_abs"] is None
    assert "shape" in compare_tensors("x", "s", ref, torch.ones(2, 3), atol=1.0)["error"]


# ---- localisation ----

@pytest.mark.parametrize("name, human", [
    ("decoder_inner_states.2", "decoder.layers.1 (output of decoder layer 1)"),
    ("decoder_inner_states.0", "decoder.embed_tokens, decoder.embed_positions, decoder.layernorm_embedding, "
                               "decoder.code_layernorm_embedding (decoder embeddings)"),
    ("encoder_hidden_states.1", "encoder.layers.0 (output of encoder layer 0)"),
    ("logits", "decoder.output_projection (output projection, the head)"),
    ("fusion_image_layers_1.0", "cross_modal_image_layers.0 (output of fusion layer 0, image stream, pass 1; "
                                "converted: meter.cross_modal_image_layers.0)"),
    ("text_feats_0", "fusion text output, its last layer, pass 0"),
    ("text_encoder_layers.1", "text_transformer.encoder.layer.1 (output of text encoder layer 1; "
                              "converted: meter.text_model.encoder.layer.1)"),
    ("nlvr2_logits", "nlvr2_classifier (NLVR2 head)"),
])
def test_trace_names_read_as_the_modules_that_computed_them(name, human):
    assert human_name(name, None, _family_of(name)) == human


def _family_of(name: str):
    """Families share trace names (OFA and the fairseq translation model both have encoder_hidden_states): the
    harness always names the folder's family; these cases are OFA's or METER's by their names."""
    from hfport.family import get_family

    ofa = name.startswith(("encoder_", "decoder_")) or name == "logits"
    return get_family("ofa" if ofa else "meter")


@pytest.mark.parametrize("name, vision, module, converted_module", [
    ("encoder_hidden_states.3", "clip", "encoder.layers.2", "encoder.layers.2"),
    ("image_encoder_layers.0", "clip", "vit_model.visual.transformer.resblocks.0", "meter.vision_model.encoder.layers.0"),
    ("image_encoder_layers_1.2", "swin", "vit_model.layers.2", "meter.vision_model.encoder.layers.2"),
    ("image_encoder_output", "swin", "vit_model.norm", "meter.vision_model.layernorm"),
    ("image_embeddings", "swin", "vit_model.patch_embed, vit_model.absolute_pos_embed", "meter.vision_model.embeddings"),
    ("fusion_text_layers.3", "clip", "cross_modal_text_layers.3", "meter.cross_modal_text_layers.3"),
    ("vqa_logits", "clip", "vqa_classifier", "vqa_classifier"),
])
def test_each_tower_names_its_layer_i_by_the_parameter_prefix_of_layer_i(name, vision, module, converted_module):
    described = describe(name, vision, _family_of(name))
    assert (described["module"], described["converted_module"]) == (module, converted_module)


def test_first_divergence_is_earliest_in_computation_order_not_in_result_order():
    order = ["encoder_hidden_states.0", "encoder_hidden_states.1", "decoder_inner_states.0", "decoder_inner_states.1", "logits"]
    results = [{"name": n, "set": "inputs", "passed": n not in ("logits", "decoder_inner_states.1")} for n in reversed(order)]
    div = first_divergence(results, order, None, _family_of("logits"))
    assert div["name"] == "decoder_inner_states.1" and div["layer"] == "decoder.layers.0 (output of decoder layer 0)"
    assert div["module"] == div["converted_module"] == "decoder.layers.0"
    assert first_divergence([{"name": "logits", "set": "inputs", "passed": True}], order, None, _family_of("logits")) is None


def test_a_translation_folder_names_its_layers_by_its_own_modules_not_ofas():
    from hfport.family import get_family

    described = describe("decoder_inner_states.2", None, get_family("fairseq_translation"))
    assert (described["module"], described["converted_module"]) == ("decoder.layers.1", "model.decoder.layers.1")


# ---- golden files ----

def test_ofa_fixture_golden_reads_as_two_sets_with_ordered_traces_and_four_generations():
    g = load_golden(SHARED / "fixtures/ofa/ofa-tiny-standard/reference.pt")
    assert g.family == "ofa" and list(g.sets) == ["inputs", "inputs_masked"]
    assert g.order[0] == "encoder_position_embeddings" and g.order[-1] == "logits"
    assert g.order.index("encoder_padding_mask") < g.order.index("decoder_inner_states.0")
    assert {(x.name, x.set, x.num_beams) for x in g.generations} == {
        ("greedy", "inputs", 1), ("beam3", "inputs", 3), ("greedy_masked", "inputs_masked", 1), ("beam3_masked", "inputs_masked", 3)}


def test_meter_nlvr2_golden_orders_both_passes_then_the_pair_head():
    g = load_golden(SHARED / "fixtures/meter/meter-tiny-nlvr2/reference.pt")
    order = g.order
    assert g.family == "meter" and order[0] == "text_embeddings_0" and order[-1] == "nlvr2_logits"
    assert order.index("fusion_text_layers_0.1") == order.index("fusion_image_layers_0.0") + 1
    assert order.index("cls_feats_0") < order.index("text_embeddings_1")
    assert len(order) == len(set(order)) == 2 * (1 + 2 + 1 + 1 + 2 + 1 + 2 + 4 + 3) + 1


# ---- probes and tolerance ----

def test_probes_are_deterministic_padded_and_mask_one_ofa_image():
    a, b = ofa_probes(77, 32), ofa_probes(77, 32)
    assert torch.equal(a["inputs"]["src_tokens"], b["inputs"]["src_tokens"])
    assert (a["inputs"]["src_tokens"][1] == 1).sum() > 0 and (a["inputs"]["prev_output_tokens"][1] == 1).sum() > 0
    assert a["inputs_masked"]["patch_masks"].tolist() == [True, False]
    m = meter_probes(100, 32, cls=0, sep=2, pad=1, nlvr2=True)["inputs"]
    assert set(m) == {"text_ids", "text_masks", "image_0", "image_1"} and m["text_masks"][0].sum() == 9


def _folder(tmp_path: Path, family: str, stored: str, source: str) -> Path:
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": family}))
    (tmp_path / "hfport.json").write_text(json.dumps({"family": family, "stored_dtype": stored, "source_dtype": source}))
    save_file({"w": torch.zeros(2, dtype=getattr(torch, stored))}, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_tolerance_follows_lossless_or_lossy_storage_and_can_be_overridden(tmp_path):
    assert tolerance_policy(_folder(tmp_path, "ofa", "float32", "float32"), "ofa")["atol"] == 1e-4
    assert tolerance_policy(_folder(tmp_path, "meter", "float32", "float32"), "meter")["atol"] == 1e-5
    fp16_source = tolerance_policy(_folder(tmp_path, "ofa", "float16", "float16"), "ofa")
    assert fp16_source["atol"] == 1e-4 and fp16_source["policy"] == "fp32"
    lossy = tolerance_policy(_folder(tmp_path, "ofa", "float16", "float32"), "ofa")
    assert lossy["atol"] == 1e-2 and lossy["policy"] == "float16-lossy"
    assert tolerance_policy(tmp_path, "ofa", atol=3e-3)["atol"] == 3e-3


# ---- report ----

def _report(passed: bool) -> dict:
    outputs = [
        {"name": "encoder_hidden_states.1", "set": "inputs", "max_abs": 1e-6, "passed": True, "atol": 1e-4},
        {"name": "logits", "set": "inputs", "max_abs": 0.2 if not passed else 1e-6, "cosine": 0.99, "passed": passed, "atol": 1e-4},
    ]
    return {"schema": SCHEMA, "passed": passed, "family": "ofa", "model": "m",
            "reference": {"kind": "golden", "path": "/x/reference.pt", "sha256": "ab" * 32},
            "tolerance": {"atol": 1e-4, "rtol": 0.0, "policy": "fp32"}, "outputs": outputs,
            "generation": [{"name": "greedy", "set": "inputs", "exact": True, "required": True, "reference": [[2]], "converted": [[2]]}],
            "first_divergence": None if passed else {"name": "logits", "set": "inputs", "max_abs": 0.2,
                                                     "layer": "decoder.output_projection (output projection, the head)",
                                                     "what": "output projection, the head",
                                                     "module": "decoder.output_projection"},
            "seconds": 1.0, "hfport_version": "0.1.0", "environment": {"torch": "2", "transformers": "5"}}


def test_markdown_report_is_an_embeddable_table_with_the_verdict():
    md = report_markdown(_report(False))
    assert md.startswith("**Verification FAILED**")
    assert "| `logits` | inputs | " in md and "| 2.00e-01 |" in md and "❌ FAIL" in md
    assert "| `encoder_hidden_states.*` | inputs |" in md  # per-layer rows are grouped under one name
    assert "| greedy | inputs | yes | ✅ pass |" in md
    assert "| `logits` | inputs | " in md and "❌ FAIL; first at `decoder.output_projection` |" in md
    assert ("First diverging module: `decoder.output_projection` (output projection, the head; trace `logits`; "
            "inputs inputs; max abs 2.00e-01)") in md
    assert report_markdown(_report(True)).startswith("**Verification PASSED**")


# ---- end to end on the shared fixtures (needs the converter) ----

@pytest.fixture
def converted(converted_fixtures):
    """One conversion per fixture per session (conftest), made on first use."""
    return lambda family, name: converted_fixtures(name)


def _reference(family: str, name: str) -> Path:
    return SHARED / "fixtures" / family / name / "reference.pt"


@pytest.mark.parametrize("name", OFA_FIXTURES)
def test_converted_ofa_fixture_passes_its_golden_file(converted, name):
    folder = converted("ofa", name)
    report = verify_folder(folder, golden=_reference("ofa", name), write=False)
    assert report["passed"], report["first_divergence"]
    assert max(o["max_abs"] for o in report["outputs"]) < 1e-4
    assert [g["exact"] for g in report["generation"] if g["required"]] == [True, True]


@pytest.mark.parametrize("name", METER_FIXTURES)
def test_converted_meter_fixture_passes_its_golden_file(converted, name):
    folder = converted("meter", name)
    report = verify_folder(folder, golden=_reference("meter", name), write=False)
    assert report["passed"], report["first_divergence"]
    assert max(o["max_abs"] for o in report["outputs"]) < 1e-5
    assert len(report["outputs"]) == len(load_golden(_reference("meter", name)).order)


def test_cli_writes_a_schema_report_and_exits_zero(converted, tmp_path, capsys):
    folder = converted("ofa", "ofa-tiny-plain")
    out = tmp_path / "v.json"
    assert cli_main(["verify", str(folder), "--golden", str(_reference("ofa", "ofa-tiny-plain")), "--report", str(out), "--json"]) == 0
    report = json.loads(out.read_text())
    assert set(REQUIRED_KEYS) <= set(report) and report["schema"] == "hfport.verify/2"
    assert report["reference"]["kind"] == "golden" and len(report["reference"]["sha256"]) == 64
    assert json.loads(capsys.readouterr().out)["passed"] is True


def _scale_tensor(folder: Path, dest: Path, key_pattern: str, factor: float = 1.5) -> str:
    import re

    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dest)
    tensors = load_file(dest / "model.safetensors")
    key = sorted(k for k in tensors if re.search(key_pattern, k))[-1]
    tensors[key] = tensors[key] * factor
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return key


def test_a_corrupted_ofa_decoder_layer_fails_and_is_named_first(converted, tmp_path):
    folder = converted("ofa", "ofa-tiny-standard")
    key = _scale_tensor(folder, tmp_path / "bad", r"decoder\.layers\.\d+\.fc2\.weight$")
    layer = int(key.split("layers.")[1].split(".")[0])
    code = cli_main(["verify", str(tmp_path / "bad"), "--golden", str(_reference("ofa", "ofa-tiny-standard"))])
    assert code == 1
    report = json.loads((tmp_path / "bad" / "verification.json").read_text())
    div = report["first_divergence"]
    assert div["name"] == f"decoder_inner_states.{layer + 1}" and div["module"] == f"decoder.layers.{layer}"
    assert div["layer"] == f"decoder.layers.{layer} (output of decoder layer {layer})"
    assert all(o["passed"] for o in report["outputs"] if o["name"].startswith("encoder"))


def test_a_corrupted_meter_fusion_layer_fails_and_is_named_first(converted, tmp_path):
    folder = converted("meter", "meter-tiny-vqa-lightning")
    _scale_tensor(folder, tmp_path / "bad", r"cross_modal_image_layers\.1\.output\.dense\.weight$")
    code = cli_main(["verify", str(tmp_path / "bad"), "--golden", str(_reference("meter", "meter-tiny-vqa-lightning"))])
    assert code == 1
    div = json.loads((tmp_path / "bad" / "verification.json").read_text())["first_divergence"]
    assert div["name"] == "fusion_image_layers.1" and div["module"] == "cross_modal_image_layers.1"
    assert div["converted_module"] == "meter.cross_modal_image_layers.1"


def test_a_folder_missing_a_weight_is_refused_not_random_filled(converted, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = converted("ofa", "ofa-tiny-plain")
    shutil.copytree(folder, tmp_path / "bad")
    tensors = load_file(tmp_path / "bad" / "model.safetensors")
    del tensors[next(k for k in sorted(tensors) if k.endswith("fc1.weight"))]
    save_file(tensors, tmp_path / "bad" / "model.safetensors", metadata={"format": "pt"})
    assert cli_main(["verify", str(tmp_path / "bad"), "--golden", str(_reference("ofa", "ofa-tiny-plain"))]) == 2


def test_usage_errors_exit_two(converted, tmp_path):
    folder = converted("meter", "meter-tiny-snli")
    assert cli_main(["verify", str(folder)]) == 2  # no reference
    assert cli_main(["verify", str(tmp_path), "--golden", str(_reference("meter", "meter-tiny-snli"))]) == 2  # not a folder
    # an OFA golden file against a METER folder
    assert cli_main(["verify", str(folder), "--golden", str(_reference("ofa", "ofa-tiny-plain"))]) == 2


@pytest.mark.parametrize("change", ["fusion_eps", "text_eps", "clip_gelu"])
def test_subtle_meter_config_mistakes_still_fail_under_the_fp32_policy(converted, tmp_path, change):
    """The fixtures README's sensitivity table: each of these moves some recorded tensor by >= 2e-5."""
    folder = tmp_path / "wrong"
    shutil.copytree(converted("meter", "meter-tiny-vqa-lightning"), folder)
    config = json.loads((folder / "config.json").read_text())
    if change == "fusion_eps":
        config["layer_norm_eps"] = 1e-5
    elif change == "text_eps":
        config["text_config"]["layer_norm_eps"] = 1e-12
    else:
        config["vision_config"]["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(config))
    report = verify_folder(folder, golden=_reference("meter", "meter-tiny-vqa-lightning"), write=False)
    assert not report["passed"]
    assert report["tolerance"]["scale_rtol"] == 2e-6 and report["tolerance"]["atol"] == 1e-5


def test_scale_rtol_allows_noise_proportional_to_the_largest_reference_value():
    ref = torch.tensor([30.0, 0.5, -2.0])
    got = ref + torch.tensor([0.0, 4e-5, 0.0])  # noise at a small element of a tensor that reaches 30
    assert not compare_tensors("x", "s", ref, got, atol=1e-5)["passed"]
    loose = compare_tensors("x", "s", ref, got, atol=1e-5, scale_rtol=2e-6)  # allows 1e-5 + 6e-5
    assert loose["passed"] and loose["scale_rtol"] == 2e-6
    assert compare_tensors("x", "s", ref, ref + torch.tensor([0.0, 8e-5, 0.0]), atol=1e-5, scale_rtol=2e-6)["min_atol_to_pass"] == pytest.approx(2e-5, rel=1e-3)


def test_an_empty_or_foreign_golden_file_is_a_one_line_usage_error(converted, tmp_path, capsys):
    folder = converted("ofa", "ofa-tiny-plain")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not torch")
    for bad, message in (("empty.pt", "file is empty"), ("text.pt", "not a torch checkpoint")):
        assert cli_main(["verify", str(folder), "--golden", str(tmp_path / bad)]) == 2
        assert message in capsys.readouterr().err


def test_a_nan_in_the_reference_still_yields_a_writable_report():
    ref = torch.tensor([1.0, float("nan")])
    result = compare_tensors("x", "s", ref, torch.tensor([1.0, 2.0]), atol=1e-4)
    json.dumps(result, allow_nan=False)
    assert not result["passed"]
