"""OFA-Chinese (`--bpe bert`, OFA's real utils/BERT_CN_dict): the converted tokenizer gives fairseq's ids, and a
tiny Chinese OFA made by the upstream code converts and verifies end to end, tokenizer included.
Everything read here was recorded with fairseq + OFA by tests/data/ofa_chinese/make_ofa_chinese_fixture.py."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from hfport.converters import convert_checkpoint
from hfport.converters.ofa_preprocessing import save_ofa_preprocessing

DATA = Path(__file__).parent / "data" / "ofa_chinese"
DICT_DIR = DATA / "BERT_CN_dict"
RECORDINGS = json.loads((DATA / "tokenizer_recordings.json").read_text(encoding="utf-8"))
FIXTURE = json.loads((DATA / "fixture.json").read_text(encoding="utf-8"))


def _load_processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)


def test_the_chinese_tokenizer_gives_fairseq_bert_bpe_and_dictionary_ids_on_the_whole_corpus(tmp_path):
    save_ofa_preprocessing(tmp_path, bpe_dir=DICT_DIR, bpe="bert", vocab_size=RECORDINGS["size"],
                           code_dict_size=RECORDINGS["code_dict_size"], num_bins=RECORDINGS["num_bins"],
                           patch_image_size=480)
    tokenizer = _load_processor(tmp_path).tokenizer
    cases = RECORDINGS["cases"]
    assert len(cases) >= 40 and RECORDINGS["size"] == 30325
    assert "fairseq" in RECORDINGS["dictionary"] and RECORDINGS["bpe"].endswith("BertBPE")
    wrong = [(c["text"][:30], tokenizer(c["text"]).input_ids[:16], c["ids"][:16])
             for c in cases if tokenizer(c["text"]).input_ids != c["ids"]]
    assert wrong == []


def test_ofas_real_chinese_dictionary_ships_transformers_own_tokenizer_no_remote_code(tmp_path):
    """vocab.txt's U+2028 and ##U+2028 are not in dict.txt, but BERT's normaliser makes them spaces, so no text can
    produce them and no <unk> mapping (shipped code) is needed."""
    from transformers import AutoTokenizer

    save_ofa_preprocessing(tmp_path, bpe_dir=DICT_DIR, bpe="bert", vocab_size=RECORDINGS["size"],
                           code_dict_size=RECORDINGS["code_dict_size"], num_bins=RECORDINGS["num_bins"],
                           patch_image_size=480)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "AutoTokenizer" not in config["auto_map"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))  # no trust_remote_code
    assert type(tokenizer).__module__.startswith("transformers.")
    cases = RECORDINGS["cases"]
    assert any("\u2028" in c["text"] for c in cases)
    assert [c["text"][:30] for c in cases if tokenizer(c["text"]).input_ids != c["ids"]] == []
    processor = _load_processor(tmp_path)
    assert processor.bpe == "bert" and processor(task="caption").input_ids[0] == tokenizer("图片描述了什么内容?").input_ids


@pytest.fixture(scope="module")
def chinese_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint fairseq wrote, restored byte for byte from its xz copy."""
    path = tmp_path_factory.mktemp("ofa_chinese") / "checkpoint.pt"
    path.write_bytes(lzma.decompress((DATA / "checkpoint.pt.xz").read_bytes()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FIXTURE["checkpoint_sha256"]
    return path


@pytest.mark.slow
def test_the_ofa_chinese_fixture_converts_and_verifies_end_to_end_tokenizer_included(chinese_checkpoint, tmp_path):
    folder = convert_checkpoint(chinese_checkpoint, tmp_path / "ofa-cn-hf", bpe_dir=DICT_DIR)
    report_path = tmp_path / "report.json"
    result = run_cli(["verify", folder, "--golden", DATA / "reference.pt", "--report", report_path], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    logits = next(o for o in report["outputs"] if o["name"] == "logits")
    assert logits["max_abs"] < 1e-4  # fp32 weights held exactly: OFA's tolerance
    greedy = next(g for g in report["generation"] if g["num_beams"] == 1)
    assert greedy["exact"] and len(greedy["reference"]) == 2 and greedy["converted"] == greedy["reference"]
    print(f"OFA-Chinese: logits max |d| {logits['max_abs']:.3g}, greedy {greedy['converted']}")

    # the golden's token ids are fairseq's encoding of the fixture's texts: the shipped tokenizer must give them
    golden = torch.load(DATA / "reference.pt", weights_only=True)
    processor = _load_processor(folder)
    pad = processor.tokenizer.pad_token_id
    for i, (source, target) in enumerate(FIXTURE["pairs"]):
        src = [t for t in golden["inputs"]["src_tokens"][i].tolist() if t != pad]
        prev = [t for t in golden["inputs"]["prev_output_tokens"][i].tolist() if t != pad]
        assert processor.tokenizer(source).input_ids == src
        assert processor.tokenizer(target).input_ids[:-1] == prev
