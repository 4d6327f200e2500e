"""The saved OFA tokenizer gives the ids of OFA's own text pipeline (fairseq GPT-2 BPE / BERT + task dictionary).

Recordings: tests/data/ofa_*_recordings.json, made by tests/data/make_tokenizer_recordings.py with fairseq and
OFA's data/ofa_dataset.py (English) and transformers 4's pure-Python BertTokenizer (Chinese).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from hfport.converters.ofa_preprocessing import build_task_dictionary, save_ofa_preprocessing
from hfport.errors import ConfigError

DATA = Path(__file__).parent / "data"
GPT2 = json.loads((DATA / "ofa_gpt2_recordings.json").read_text(encoding="utf-8"))
BERT = json.loads((DATA / "ofa_bert_recordings.json").read_text(encoding="utf-8"))


def load_processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)


@pytest.fixture(scope="module")
def real_bpe_dir(shared_root) -> Path:
    return shared_root / "fixtures" / "ofa" / "bpe"


@pytest.fixture(scope="module")
def tiny_bpe_dir(tmp_path_factory, shared_root, real_bpe_dir) -> Path:
    """The tiny fixtures' 40-line dict.txt beside OFA's real encoder.json / vocab.bpe (links, nothing copied)."""
    folder = tmp_path_factory.mktemp("bpe_tiny")
    (folder / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (folder / name).symlink_to(real_bpe_dir / name)
    return folder


@pytest.fixture(scope="module")
def english(tmp_path_factory, real_bpe_dir, tiny_bpe_dir):
    """Dictionary name -> processor loaded back from a folder written by save_ofa_preprocessing."""
    processors = {}
    for name, bpe_dir in (("real", real_bpe_dir), ("tiny", tiny_bpe_dir)):
        spec = GPT2["dictionaries"][name]
        out = tmp_path_factory.mktemp(f"ofa_{name}")
        save_ofa_preprocessing(out, bpe_dir=bpe_dir, vocab_size=spec["size"], code_dict_size=spec["code_dict_size"],
                               num_bins=spec["num_bins"], patch_image_size=32, max_src_length=128)
        processors[name] = load_processor(out)
    return processors


@pytest.fixture(scope="module")
def chinese(tmp_path_factory):
    out = tmp_path_factory.mktemp("ofa_bert")
    save_ofa_preprocessing(out, bpe_dir=DATA / "ofa_bert_vocab", bpe="bert", vocab_size=BERT["size"],
                           code_dict_size=BERT["code_dict_size"], num_bins=BERT["num_bins"], patch_image_size=32)
    return load_processor(out)


def mismatches(tokenizer, cases):
    return [(case["text"][:40], tokenizer(case["text"]).input_ids[:12], case["ids"][:12])
            for case in cases if tokenizer(case["text"]).input_ids != case["ids"]]


@pytest.mark.parametrize("dictionary", ["real", "tiny"])
def test_english_ids_equal_fairseq_gpt2_bpe_and_dictionary_on_the_whole_corpus(english, dictionary):
    cases = GPT2["dictionaries"][dictionary]["cases"]
    assert len(cases) >= 40
    assert mismatches(english[dictionary].tokenizer, cases) == []


def test_task_formatting_equals_ofa_datasets(english):
    processor = english["real"]
    for case in GPT2["tasks"]:
        assert processor.format_text(case["text"], case["task"]) == case["formatted"], case
        assert processor(text=case["text"], task=case["task"]).input_ids[0] == case["ids"], case


def test_chinese_wordpiece_ids_equal_bert_bpe_and_dictionary(chinese):
    assert len(BERT["cases"]) >= 15
    assert mismatches(chinese.tokenizer, BERT["cases"]) == []


def test_chinese_caption_prompt_is_ofas(chinese):
    assert chinese(task="caption").input_ids[0] == BERT["cases"][0]["ids"]


def test_special_tokens_sit_at_their_fairseq_indices(english):
    tokenizer = english["real"].tokenizer
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    assert len(tokenizer) == 59457
    assert tokenizer.convert_tokens_to_ids(["<mask>", "<code_0>", "<bin_0>", "<bin_999>"]) == [50264, 50265, 58457, 59456]


def test_sub_words_missing_from_a_small_dictionary_become_unk(english):
    tokenizer = english["tiny"].tokenizer
    assert tokenizer.dictionary_size == 77
    ids = tokenizer(" what does the image describe?").input_ids
    assert max(ids) < 77 and ids.count(3) >= 3


def test_decoding_strips_the_leading_space(english):
    assert english["real"].batch_decode([[0, 99, 473, 5, 2274, 2]]) == ["what does the image"]


def test_boxes_come_back_in_image_pixels(english):
    processor = english["real"]
    ids = processor.tokenizer.convert_tokens_to_ids(["<bin_0>", "<bin_999>", "<bin_333>", "<bin_666>", "</s>"])
    box = processor.post_process_boxes([ids], [(300, 200)])[0]
    assert box == pytest.approx([0.0, 200.0, 100.0, 133.33333], abs=1e-3)


def test_a_dictionary_that_does_not_fit_the_embedding_is_a_config_error(tmp_path, real_bpe_dir):
    with pytest.raises(ConfigError, match="59457 entries .* 59456 rows"):
        save_ofa_preprocessing(tmp_path, bpe_dir=real_bpe_dir, vocab_size=59456, code_dict_size=8192,
                               num_bins=1000, patch_image_size=480)


def test_a_bpe_dir_without_encoder_files_is_a_config_error(tmp_path, shared_root):
    with pytest.raises(ConfigError, match="encoder.json is missing"):
        save_ofa_preprocessing(tmp_path / "out", bpe_dir=shared_root / "fixtures" / "ofa" / "bpe_tiny", vocab_size=77,
                               code_dict_size=16, num_bins=16, patch_image_size=64)


def test_duplicate_dictionary_symbols_are_refused_like_fairseq(tmp_path):
    (tmp_path / "dict.txt").write_text("13 5\n13 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate symbol '13'"):
        build_task_dictionary(tmp_path / "dict.txt", 0, 0)


def test_the_folder_code_imports_nothing_from_hfport():
    source = (Path(__file__).parents[1] / "hfport" / "models" / "ofa" / "processing_ofa.py").read_text()
    assert "hfport" not in "".join(line for line in source.splitlines() if line.startswith(("import", "from")))


@pytest.mark.live
def test_live_fairseq_still_gives_the_recorded_ids(real_bpe_dir, shared_root, english):
    if importlib.util.find_spec("fairseq") is None:
        pytest.skip("fairseq is not importable here (recordings were made with it; see tests/data/make_tokenizer_recordings.py)")
    if not os.environ.get("OFA_ROOT"):
        pytest.skip("OFA_ROOT (an OFA checkout with tasks/ofa_task.py and data/ofa_dataset.py) is not set")
    import argparse
    import sys

    sys.path.insert(0, str(DATA))
    import make_tokenizer_recordings as recorder

    live = recorder.record_gpt2(argparse.Namespace(
        ofa_root=os.environ["OFA_ROOT"], bpe_dir=str(real_bpe_dir),
        tiny_dict=str(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")))
    for name in ("real", "tiny"):
        assert live["dictionaries"][name]["cases"] == GPT2["dictionaries"][name]["cases"]
        assert mismatches(english[name].tokenizer, live["dictionaries"][name]["cases"]) == []
    assert live["tasks"] == GPT2["tasks"]


def _tokenizer_files(folder: Path) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))


def test_a_dictionary_covering_every_sub_word_ships_transformers_own_tokenizer_no_remote_code(tmp_path, real_bpe_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = GPT2["dictionaries"]["real"]
    save_ofa_preprocessing(tmp_path, bpe_dir=real_bpe_dir, vocab_size=spec["size"], code_dict_size=spec["code_dict_size"],
                           num_bins=spec["num_bins"], patch_image_size=32)
    config = _tokenizer_files(tmp_path)
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "AutoTokenizer" not in config["auto_map"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))  # no trust_remote_code
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and type(tokenizer).__module__.startswith("transformers.")
    assert mismatches(tokenizer, spec["cases"]) == []
    assert tokenizer.convert_tokens_to_ids(["<mask>", "<code_0>", "<bin_999>"]) == [50264, 50265, 59456]
    # the processor (shipped code) still formats English prompts with it
    processor = load_processor(tmp_path)
    assert processor.bpe == "gpt2" and processor.format_text(None, "caption") == " what does the image describe?"


def test_a_dictionary_lacking_sub_words_keeps_the_shipped_tokenizer_that_maps_them_to_unk(tmp_path, tiny_bpe_dir):
    spec = GPT2["dictionaries"]["tiny"]
    save_ofa_preprocessing(tmp_path, bpe_dir=tiny_bpe_dir, vocab_size=spec["size"], code_dict_size=spec["code_dict_size"],
                           num_bins=spec["num_bins"], patch_image_size=32)
    config = _tokenizer_files(tmp_path)
    assert config["tokenizer_class"] == "OFATokenizerFast"
    assert config["auto_map"]["AutoTokenizer"] == [None, "processing_ofa.OFATokenizerFast"]


def test_processor_reads_the_text_style_of_folders_written_before_it_carried_one(english):
    # folders of earlier releases: `bpe` only on OFATokenizerFast
    processor = english["tiny"]
    old_style = type(processor)(image_processor=processor.image_processor, tokenizer=processor.tokenizer)
    assert old_style.bpe == processor.tokenizer.bpe == "gpt2"
