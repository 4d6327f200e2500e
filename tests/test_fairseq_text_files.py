"""fairseq-format files (dictionaries, WordPiece vocabularies) are read line by line exactly as fairseq's
`Dictionary.add_from_file` and BERT's `load_vocab` read them: text-mode readlines, nothing else splits a line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfport.converters.ofa_preprocessing import _read_wordpiece_vocab, build_task_dictionary
from hfport.errors import ConfigError
from hfport.fairseq_text import read_dictionary, read_lines

CHINESE = Path(__file__).parent / "data" / "ofa_chinese" / "BERT_CN_dict"


def test_the_upstream_chinese_dictionary_gives_fairseqs_30325_symbol_task_dictionary():
    symbols = build_task_dictionary(CHINESE / "dict.txt", 8192, 1000)
    assert len(symbols) == 4 + 21128 + 1 + 8192 + 1000
    # dict.txt line 344 is " 1" (an empty symbol: the U+2028 of vocab.txt line 344 was stripped) and line 13503
    # "## 1"; fairseq keeps both as symbols at their line's index
    assert symbols[4 + 343] == "" and symbols[4 + 13502] == "##"
    assert symbols[4] == "[PAD]" and symbols[4 + 21127] == "##😎"
    assert symbols[4 + 21128] == "<mask>" and symbols[-1] == "<bin_999>"


def test_the_upstream_chinese_wordpiece_vocab_keeps_u2028_as_one_token_at_its_line():
    vocab = _read_wordpiece_vocab(CHINESE)
    assert len(vocab) == 21128  # str.splitlines() would give 21130 and shift every later id
    assert vocab[343] == "\u2028" and vocab[13502] == "##\u2028"
    assert vocab[100] == "[UNK]"


def test_the_upstream_english_dictionary_reads_every_line(shared_root):
    entries = read_dictionary(shared_root / "fixtures" / "ofa" / "bpe" / "dict.txt")  # = OFA's utils/BPE/dict.txt
    assert len(entries) == 50260 and entries[0].symbol == "13" and entries[-1].symbol == "madeupword0002"


def test_lines_end_only_where_text_mode_readlines_ends_them(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes("a\u2028b\r\nc\u2029d\x85e\x0cf\x1cg\rh\n\nlast".encode("utf-8"))
    assert read_lines(path) == ["a\u2028b", "c\u2029d\x85e\x0cf\x1cg", "h", "", "last"]


def test_dictionary_lines_follow_fairseqs_parsing_rules(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("a b 5\n\u3000x 7\u3000 \ny 3 #fairseq:overwrite\n 2\nz +4\r\n", encoding="utf-8")
    entries = read_dictionary(path)
    assert [(e.symbol, e.count, e.overwrite) for e in entries] == [
        ("a b", 5, False), ("\u3000x", 7, False), ("y", 3, True), ("", 2, False), ("z", 4, False)]


@pytest.mark.parametrize("content, line, message", [
    ("a 1\n\nb 2\n", 2, "expected '<symbol> <count>'"),      # fairseq refuses a blank line
    ("a 1\nb\n", 2, "expected '<symbol> <count>'"),
    ("a 1\nb x\n", 2, "expected '<symbol> <count>'"),
    ("a 1\nb 2\na 3\n", 3, "duplicate symbol 'a'"),
    ("<unk> 1\n", 1, "duplicate symbol '<unk>'"),             # clashes with fairseq's built-in specials
    ("a #fairseq:overwrite\n", 1, "expected '<symbol> <count>'"),
])
def test_dictionaries_fairseq_refuses_are_refused_naming_the_line(tmp_path, content, line, message):
    path = tmp_path / "dict.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"dict.txt:{line}: {message}"):
        build_task_dictionary(path, 0, 0)


def test_an_overwritten_symbol_moves_to_its_new_index_like_fairseq(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("a 1\nb 1\na 1 #fairseq:overwrite\n", encoding="utf-8")
    symbols = build_task_dictionary(path, 0, 0)
    assert symbols == ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "a", "<mask>"]
