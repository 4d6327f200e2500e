"""The calls users make by habit with stock transformers work on converted folders: one question string through a
processor, `model(**processor_output)` without decoder inputs, a bfloat16 model fed the processor's fp32 pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
QUESTION = "what is it?"
METER_HEADS = ("meter-tiny-vqa-lightning", "meter-tiny-irtr", "meter-tiny-nlvr2", "meter-tiny-snli",
               "meter-tiny-pretrain-released-style")


def _image(name: str) -> Image.Image:
    with Image.open(DATA / "images" / f"{name}.png") as image:
        image.load()
        return image.copy()


def _with_meter_processor(folder: Path, dest: Path) -> Path:
    """A converted METER fixture plus the processor files `hfport convert --tokenizer` writes."""
    from hfport.converters.meter_preprocessing import save_meter_preprocessing

    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    save_meter_preprocessing(dest, tokenizer_source=DATA / "meter_tokenizers" / "tiny-bert-uncased",
                             max_text_len=config["max_text_len"], image_size=config["image_size"],
                             vocab_size=config["text_config"]["vocab_size"])
    return dest


def _outputs(output) -> list[torch.Tensor]:
    return [v for k, v in output.items() if k.endswith(("logits", "scores")) and isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", METER_HEADS)
def test_one_meter_question_string_is_a_batch_of_one_and_runs_every_head(name, converted_fixtures, tmp_path):
    from transformers import AutoModel, AutoProcessor

    folder = _with_meter_processor(converted_fixtures(name), tmp_path / name)
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    pair = "nlvr2" in name
    image = (_image("rgb_37x23"), _image("gray_33x33")) if pair else _image("rgb_37x23")
    single = processor(images=image, text=QUESTION, return_tensors="pt")
    batched = processor(images=[image], text=[QUESTION], return_tensors="pt")
    assert single["input_ids"].shape == (1, model.config.max_text_len)
    assert all(torch.equal(single[k], batched[k]) for k in batched) and set(single) == set(batched)
    with torch.no_grad():
        got, expected = _outputs(model(**single)), _outputs(model(**batched))
    assert got and all(g.shape[0] == 1 and torch.equal(g, e) for g, e in zip(got, expected))


@pytest.fixture(scope="module")
def ofa_folder(tmp_path_factory, shared_root) -> Path:
    """ofa-tiny-standard converted with a processor (its 40-line dictionary beside OFA's real BPE files)."""
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("habit_ofa")
    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    return convert_checkpoint(source, root / "out", bpe_dir=bpe_dir, patch_image_size=64)


def _ofa(folder: Path):
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    return processor, model


def test_ofa_called_with_only_the_processor_output_gives_the_first_tokens_logits(ofa_folder):
    processor, model = _ofa(ofa_folder)
    inputs = processor(images=_image("rgb_37x23"), text=QUESTION, return_tensors="pt")
    assert inputs["input_ids"].dim() == 2  # one string is a batch of one here too
    with torch.no_grad():
        logits = model(**inputs).logits
        start = torch.full((1, 1), model.config.decoder_start_token_id)
        explicit = model(**inputs, decoder_input_ids=start).logits
        first_step = model.generate(**inputs, max_new_tokens=1, do_sample=False, num_beams=1,
                                    output_scores=True, return_dict_in_generate=True)
    assert logits.shape == (1, 1, model.config.vocab_size) and torch.equal(logits, explicit)
    # the default decoder input is what generation starts from: its argmax is the first greedy token
    assert int(logits[0, -1].argmax()) == int(first_step.sequences[0, 1])


def test_ofa_given_labels_shifts_them_into_decoder_inputs_and_returns_a_loss(ofa_folder):
    processor, model = _ofa(ofa_folder)
    inputs = processor(images=_image("rgb_37x23"), text=QUESTION, return_tensors="pt")
    labels = torch.tensor([[5, 6, 7, model.config.eos_token_id]])
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        shifted = torch.tensor([[model.config.decoder_start_token_id, 5, 6, 7]])
        expected = model(**inputs, decoder_input_ids=shifted).logits
    assert out.loss is not None and torch.isfinite(out.loss)
    assert torch.equal(out.logits, expected)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(expected[0], labels[0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_ofa_takes_the_processors_fp32_pixels(ofa_folder, dtype):
    processor, model = _ofa(ofa_folder)
    inputs = processor(images=_image("rgb_37x23"), text=QUESTION, return_tensors="pt")
    assert inputs["patch_images"].dtype == torch.float32
    decoder = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        reference = model(**inputs, decoder_input_ids=decoder).logits
        half = model.to(dtype)(**inputs, decoder_input_ids=decoder).logits
        default = model(**inputs).logits  # both habits at once
    assert half.dtype == dtype and default.dtype == dtype
    assert torch.allclose(half.float(), reference, atol=0.1, rtol=0.05), float((half.float() - reference).abs().max())
