"""fairseq BART -> stock BartForConditionalGeneration + a stock BART tokenizer with fairseq's ids, checked against
a golden fairseq recorded (tests/data/fairseq/bart_translation, made by tests/data/fairseq/make_checkpoints.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hfport.converters.pipeline import convert_checkpoint, export_folder
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.verify.harness import verify_folder
from tests.helpers import load_in_fresh_process

CASE = Path(__file__).parent / "data" / "fairseq" / "bart_translation"


@pytest.fixture(scope="module")
def bart_folder(tmp_path_factory):
    return convert_checkpoint(CASE / "checkpoint.pt", tmp_path_factory.mktemp("bart") / "hf", bpe_dir=CASE,
                              dictionary=CASE / "dict.de.txt")


def _golden() -> dict:
    return torch.load(CASE / "golden.pt", map_location="cpu", weights_only=True)


def test_fairseq_bart_becomes_stock_bart_that_loads_without_hfport_with_nothing_missing(bart_folder, tmp_path):
    assert "auto_map" not in json.loads((bart_folder / "config.json").read_text())
    info = load_in_fresh_process(bart_folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert info["class"] == "BartForConditionalGeneration" and info["module"].startswith("transformers.models.bart")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


def test_converted_bart_matches_fairseq_logits_every_layer_and_greedy_and_beam_tokens(bart_folder):
    report = verify_folder(bart_folder, golden=CASE / "golden.pt", check_beam=True, write=False)
    assert report["passed"], json.dumps(report["outputs"][:3], default=str)[:2000]
    assert max(r["max_abs"] for r in report["outputs"] if r["name"] == "logits") <= 1e-5
    runs = {g["name"]: g for g in report["generation"]}
    assert runs["greedy"]["exact"] and runs["beam4"]["exact"] and runs["beam4"]["required"]


def test_bart_tokenizer_gives_the_ids_fairseq_gives_and_decodes_back(bart_folder):
    from transformers import AutoTokenizer

    golden = _golden()
    tokenizer = AutoTokenizer.from_pretrained(bart_folder)
    sentences = golden["meta"]["sentences"]
    assert [tokenizer(s).input_ids for s in sentences] == golden["meta"]["tokenizer_ids"]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, golden["inputs"]["src_tokens"])  # right-padded, as recorded
    assert tokenizer.decode(golden["meta"]["tokenizer_ids"][0], skip_special_tokens=True) == sentences[0]


def test_left_padding_is_where_stock_bart_and_fairseq_part(bart_folder):
    """fairseq numbers positions over non-pad tokens, transformers' BART from the row start: the reason the
    converted tokenizer pads right. A left-padded row gives other logits in stock BART (this documents it)."""
    from transformers import AutoModelForSeq2SeqLM

    golden = _golden()
    model = AutoModelForSeq2SeqLM.from_pretrained(bart_folder).eval()
    src, prev = golden["inputs"]["src_tokens"][1:2], golden["inputs"]["prev_output_tokens"][1:2]
    real = src[src.ne(1)].unsqueeze(0)
    left = torch.cat([torch.ones(1, src.shape[1] - real.shape[1], dtype=torch.long), real], dim=1)
    with torch.no_grad():
        right_logits = model(input_ids=src, attention_mask=src.ne(1), decoder_input_ids=prev).logits
        left_logits = model(input_ids=left, attention_mask=left.ne(1), decoder_input_ids=prev).logits
    keep = prev.ne(1)
    assert (right_logits - golden["outputs"]["logits"][1:2])[keep].abs().max() <= 1e-5
    assert (left_logits - right_logits)[keep].abs().max() > 1e-5  # past the verification bar


def test_fairseq_to_hf_to_fairseq_reproduces_every_bart_tensor_bit_exactly(bart_folder, tmp_path):
    result = export_folder(bart_folder, tmp_path / "back.pt")
    back = torch.load(result["written"], map_location="cpu", weights_only=False)["model"]
    original = torch.load(CASE / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    assert set(back) == set(original)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in original.items())
    provenance = json.loads((bart_folder / "hfport.json").read_text())
    assert provenance["family"] == "fairseq_bart" and set(provenance["generated"]) == {"final_logits_bias"}


def test_a_dictionary_that_does_not_match_the_model_is_refused_before_writing(tmp_path):
    short = tmp_path / "dict.txt"
    short.write_text("".join(f"{i} 1\n" for i in range(10)))
    with pytest.raises(ConfigError, match="symbols"):
        convert_checkpoint(CASE / "checkpoint.pt", tmp_path / "out", bpe_dir=CASE, dictionary=short)
    assert not (tmp_path / "out").exists()


def test_a_bart_classification_head_is_refused_by_name_not_dropped(tmp_path):
    checkpoint = torch.load(CASE / "checkpoint.pt", map_location="cpu", weights_only=False)
    checkpoint["model"]["classification_heads.mnli.dense.weight"] = torch.zeros(32, 32)
    torch.save(checkpoint, tmp_path / "head.pt")
    with pytest.raises(UnsupportedCheckpointError, match="mnli"):
        convert_checkpoint(tmp_path / "head.pt", tmp_path / "out")
