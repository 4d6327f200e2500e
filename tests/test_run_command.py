"""`hfport run` turns an image and a text into the converted model's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfport.cli import main

DATA = Path(__file__).parent / "data"
IMAGE = str(DATA / "images" / "rgb_37x23.png")


@pytest.fixture(scope="module")
def ofa_folder(tmp_path_factory, shared_root) -> Path:
    """ofa-tiny-standard converted with its 40-line dictionary beside OFA's real BPE files."""
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("run_ofa")
    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    return convert_checkpoint(source, root / "out", bpe_dir=bpe_dir, patch_image_size=64)


@pytest.fixture(scope="module")
def meter_folder(tmp_path_factory, shared_root) -> Path:
    from hfport.converters import convert_checkpoint

    fixture = shared_root / "fixtures" / "meter" / "meter-tiny-vqa-lightning"
    out = tmp_path_factory.mktemp("run_meter") / "out"
    # any tokenizer with <= 100 tokens fits the tiny text encoder; this one is METER-loadable and tiny
    return convert_checkpoint(fixture / "checkpoint.ckpt", out, text_config=fixture / "text_config.json",
                              tokenizer=str(DATA / "meter_tokenizers" / "tiny-bert-uncased"))


def run_json(capsys, *argv) -> dict:
    assert main(["run", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ofa_caption_is_the_decoded_greedy_generation(capsys, ofa_folder):
    import torch
    from PIL import Image
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    result = run_json(capsys, ofa_folder, "--image", IMAGE, "--greedy", "--max-length", "8")
    processor = AutoProcessor.from_pretrained(str(ofa_folder), trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(ofa_folder), trust_remote_code=True).eval()
    inputs = processor(images=Image.open(IMAGE), task="caption", return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, num_beams=1, max_length=9, do_sample=False)[0].tolist()[1:]
    assert result["prompt"] == " what does the image describe?"
    assert result["ids"] == expected
    assert result["text"] == processor.decode(expected)


def test_ofa_vqa_formats_the_question_like_ofa(capsys, ofa_folder):
    result = run_json(capsys, ofa_folder, "--image", IMAGE, "--text", "What color is the cat", "--task", "vqa",
                      "--num-beams", "2", "--max-length", "4")
    assert result["prompt"] == " what color is the cat?"
    assert 1 <= len(result["ids"]) <= 4


def test_meter_prints_the_top_answers_with_scores(capsys, meter_folder):
    assert main(["run", str(meter_folder), "--image", IMAGE, "--text", "what color is the cat?", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)


def test_a_folder_without_processor_files_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["run", str(tmp_path), "--image", IMAGE]) == 2
    assert "no tokenizer / image processor" in capsys.readouterr().err
