"""A corrupted layer i is named by the parameter prefix of layer i, in every tower, wherever the verdict is shown.

Each case scales one weight of one layer of a converted folder, runs `hfport verify` against the golden file and
checks the name in the CLI's error line, the JSON report, the Markdown table and the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import SHARED
from hfport.cli import main as cli_main
from hfport.push.model_card import build_model_card
from hfport.verify.report import report_markdown

# (fixture, converted weight to corrupt, module in the original checkpoint, module in the converted folder)
CASES = [
    ("ofa-tiny-standard", "encoder.layers.0.fc2.weight", "encoder.layers.0", "encoder.layers.0"),
    ("ofa-tiny-standard", "decoder.layers.0.fc2.weight", "decoder.layers.0", "decoder.layers.0"),
    ("ofa-tiny-standard", "decoder.layers.1.fc2.weight", "decoder.layers.1", "decoder.layers.1"),
    ("ofa-tiny-fp16-trained", "encoder.layers.1.fc1.weight", "encoder.layers.1", "encoder.layers.1"),  # middle of 3
    ("meter-tiny-vqa-lightning", "meter.text_model.encoder.layer.0.output.dense.weight",
     "text_transformer.encoder.layer.0", "meter.text_model.encoder.layer.0"),
    ("meter-tiny-vqa-lightning", "meter.text_model.encoder.layer.1.output.dense.weight",
     "text_transformer.encoder.layer.1", "meter.text_model.encoder.layer.1"),
    ("meter-tiny-vqa-lightning", "meter.vision_model.encoder.layers.0.mlp.fc2.weight",
     "vit_model.visual.transformer.resblocks.0", "meter.vision_model.encoder.layers.0"),
    ("meter-tiny-vqa-lightning", "meter.vision_model.encoder.layers.1.mlp.fc2.weight",
     "vit_model.visual.transformer.resblocks.1", "meter.vision_model.encoder.layers.1"),
    ("meter-tiny-vqa-lightning", "meter.cross_modal_text_layers.0.output.dense.weight",
     "cross_modal_text_layers.0", "meter.cross_modal_text_layers.0"),
    ("meter-tiny-nlvr2", "meter.cross_modal_image_layers.1.output.dense.weight",
     "cross_modal_image_layers.1", "meter.cross_modal_image_layers.1"),
]


def _corrupt(folder: Path, dest: Path, key: str) -> Path:
    shutil.copytree(folder, dest)
    tensors = load_file(dest / "model.safetensors")
    tensors[key] = tensors[key] * 1.5
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _verify_and_check_every_view(folder: Path, golden: Path, module: str, converted_module: str, capsys) -> dict:
    capsys.readouterr()
    assert cli_main(["verify", str(folder), "--golden", str(golden)]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert f"first divergence: {module} (" in line, line
    report = json.loads((folder / "verification.json").read_text())
    div = report["first_divergence"]
    assert (div["module"], div["converted_module"]) == (module, converted_module)
    markdown = report_markdown(report)
    assert f"First diverging module: `{module}` (" in markdown
    assert f"first at `{module}` |" in markdown  # the table row of the first failing output
    if converted_module != module:
        assert f"converted: `{converted_module}`" in markdown
    config = json.loads((folder / "config.json").read_text())
    provenance = json.loads((folder / "hfport.json").read_text())
    card = str(build_model_card("org/model", config, provenance, report, "failed"))
    assert f"First diverging module: `{module}` (" in card
    return div


@pytest.mark.parametrize("fixture, key, module, converted_module", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_a_corrupted_layer_is_named_by_its_own_parameter_prefix_everywhere(
        converted_fixtures, tmp_path, capsys, fixture, key, module, converted_module):
    family = fixture.split("-")[0]
    folder = _corrupt(converted_fixtures(fixture), tmp_path / "bad", key)
    golden = SHARED / "fixtures" / family / fixture / "reference.pt"
    div = _verify_and_check_every_view(folder, golden, module, converted_module, capsys)
    # the module named is the one the corrupted weight belongs to, in the converted folder's names
    assert key.startswith(div["converted_module"] + ".")


# -- Swin: no shared fixture has a Swin tower; the golden file is recorded from the clean converted folder ----------

def _swin_folder_and_golden(tmp_path: Path) -> tuple[Path, Path]:
    from hfport.converters import convert_checkpoint
    from hfport.verify.backends.hf import ConvertedBackend
    from test_variants import _meter_model, _write_meter_checkpoint

    source, text_config = _meter_model("swin", "roberta")
    checkpoint = _write_meter_checkpoint(source, "swin", "roberta", tmp_path / "meter.ckpt")
    text_config.to_json_file(tmp_path / "text_config.json")
    folder = convert_checkpoint(checkpoint, tmp_path / "hf", text_config=tmp_path / "text_config.json")
    generator = torch.Generator().manual_seed(3)
    inputs = {"text_ids": torch.randint(3, 60, (2, 8), generator=generator),
              "text_masks": torch.ones(2, 8, dtype=torch.long), "image": torch.randn(2, 3, 64, 64, generator=generator)}
    trace = ConvertedBackend(folder, "meter").trace(inputs)
    layers: dict[str, list] = {}
    outputs = {}
    for name, value in trace.items():
        base, dotted, index = name.partition(".")
        if dotted:
            layers.setdefault(base, []).append(value)
            assert len(layers[base]) == int(index) + 1
        else:
            outputs[name] = value
    golden = tmp_path / "swin-reference.pt"
    torch.save({"inputs": inputs, "outputs": outputs, "layers": layers,
                "meta": {"passes": [{"suffix": "", "image_key": "image", "image_token_type_idx": 1}]}}, golden)
    return folder, golden


def test_a_corrupted_swin_stage_is_named_by_the_timm_stage_prefix(tmp_path, capsys):
    folder, golden = _swin_folder_and_golden(tmp_path)
    assert cli_main(["verify", str(folder), "--golden", str(golden)]) == 0  # the clean folder passes its own record
    for stage in (0, 1):
        key = f"meter.vision_model.encoder.layers.{stage}.blocks.0.mlp.fc2.weight"
        bad = _corrupt(folder, tmp_path / f"bad{stage}", key)
        _verify_and_check_every_view(bad, golden, f"vit_model.layers.{stage}",
                                     f"meter.vision_model.encoder.layers.{stage}", capsys)
