"""Stock tokenizers with fairseq's ids for RoBERTa (GPT-2 byte-level BPE) and XLM-R (SentencePiece).

fairseq never feeds a BPE's own ids to the model: it writes the BPE's output as text (GPT-2 ids as decimal strings,
SentencePiece pieces as themselves) and looks every symbol up in the task's dictionary: `<s> <pad> </s> <unk>`,
then dict.txt line by line, then `<mask>` (added by the masked-LM / sentence-prediction tasks). A symbol missing
from the dictionary becomes `<unk>`. The tokenizers built here hold the same BPE with every token renumbered to its
dictionary id, so transformers' ids are fairseq's whatever order dict.txt has (frequency order when
fairseq-preprocess built it from a corpus).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hfport.converters.sentencepiece_vocab import NORMAL, USER_DEFINED, _fields
from hfport.errors import ConfigError
from hfport.fairseq_text import DictionaryFormatError, read_dictionary

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def fairseq_symbols(dictionary: Path, vocab_size: int) -> list[str]:
    """The model's vocabulary as fairseq numbers it: the specials, dict.txt, and `<mask>` when the model has one
    more row than that (the masked-LM task adds it)."""
    try:
        entries = read_dictionary(dictionary)
    except DictionaryFormatError as err:
        raise ConfigError(str(err)) from None
    symbols = list(SPECIALS) + [e.symbol for e in entries]
    if len(symbols) + 1 == vocab_size:
        symbols.append("<mask>")
    if len(symbols) != vocab_size:
        raise ConfigError(f"{dictionary} gives {len(symbols)} symbols with the specials (and <mask>); the model "
                          f"has {vocab_size} embedding rows")
    clash = [s for s in symbols[len(SPECIALS):] if s in SPECIALS]
    if clash:
        raise ConfigError(f"{dictionary} lists the special symbol(s) {', '.join(clash)} again")
    return symbols


# -- RoBERTa: GPT-2 byte-level BPE ---------------------------------------------------------------------------------

def roberta_tokenizer(bpe_dir: Path, dictionary: Path, vocab_size: int):
    """A stock `RobertaTokenizer` (tokenizer.json) whose ids are fairseq's: GPT-2's encoder.json + vocab.bpe with
    every BPE token renumbered through dict.txt, whose symbols are GPT-2 ids."""
    from tokenizers import models
    from transformers import RobertaTokenizer

    gpt2 = json.loads((Path(bpe_dir) / "encoder.json").read_text(encoding="utf-8"))
    token_of = {v: k for k, v in gpt2.items()}
    vocab: dict[str, int] = {}
    for index, symbol in enumerate(fairseq_symbols(dictionary, vocab_size)):
        if index < len(SPECIALS) or not symbol.isdigit():
            vocab[symbol] = index  # specials, <mask>, fairseq-preprocess's madeupwordNNNN padding
        elif int(symbol) in token_of:
            vocab[token_of[int(symbol)]] = index
        else:
            raise ConfigError(f"{dictionary}: symbol {symbol} is not an id of {bpe_dir}/encoder.json")
    missing = [t for t in gpt2 if t not in vocab]
    if missing:  # fairseq maps these to <unk>; a BPE vocabulary needs every piece its merges make
        raise ConfigError(f"{dictionary} lacks {len(missing)} of the BPE's {len(gpt2)} tokens (e.g. {missing[:3]}); "
                          "no BPE tokenizer can give them fairseq's <unk>")
    merges = [tuple(line.split(" ")) for line in (Path(bpe_dir) / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    mask = "<mask>" if "<mask>" in vocab else "<unk>"
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, mask_token=mask, add_prefix_space=False)
    stock = tokenizer._tokenizer.model  # bytes the BPE cannot place become <unk>, as in fairseq
    tokenizer._tokenizer.model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False,
                                            continuing_subword_prefix=stock.continuing_subword_prefix,
                                            end_of_word_suffix=stock.end_of_word_suffix)
    tokenizer.padding_side = "right"
    return tokenizer


# -- XLM-R: SentencePiece ----------------------------------------------------------------------------------------------

# the protobuf wire format is read by the one reader hfport has (mBART's tokenizer uses it too)


def read_sentencepiece_model(path: Path) -> dict:
    """The parts of a SentencePiece ModelProto a tokenizer needs, read from the protobuf wire format (field numbers
    of sentencepiece_model.proto): pieces (text, score, type), model type, byte fallback, normalizer settings."""
    try:
        data = Path(path).read_bytes()
        pieces, trainer, normalizer = [], {}, {}
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece = {"piece": "", "score": 0.0, "type": NORMAL}
                for n, w, v in _fields(value):
                    if n == 1:
                        piece["piece"] = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        piece["score"] = v  # fixed32 fields arrive as floats
                    elif n == 3:
                        piece["type"] = v
                pieces.append(piece)
            elif number == 2 and wire == 2:
                trainer = {n: v for n, _, v in _fields(value)}
            elif number == 3 and wire == 2:
                normalizer = {n: v for n, _, v in _fields(value)}
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as err:
        raise ConfigError(f"{path}: not a readable SentencePiece model ({err})") from None
    if not pieces:
        raise ConfigError(f"{path}: not a SentencePiece model (no pieces)")
    return {
        "pieces": pieces,
        "model_type": trainer.get(3, 1),  # 1 unigram, 2 bpe, 3 word, 4 char
        "byte_fallback": bool(trainer.get(35, 0)),
        "charsmap": normalizer.get(2, b""),
        "normalizer": normalizer.get(1, b"").decode("utf-8", "replace"),
        "add_dummy_prefix": bool(normalizer.get(3, 1)),
        "remove_extra_whitespaces": bool(normalizer.get(4, 1)),
        "escape_whitespaces": bool(normalizer.get(5, 1)),
    }


def xlmr_tokenizer(model_file: Path, dictionary: Path, vocab_size: int):
    """A stock `XLMRobertaTokenizer` (tokenizer.json, a Unigram model) whose ids are fairseq's: every
    SentencePiece piece keeps its score and takes its dict.txt id."""
    from transformers import XLMRobertaTokenizer

    spm = read_sentencepiece_model(model_file)
    if spm["model_type"] != 1:
        raise ConfigError(f"{model_file}: a SentencePiece model of type {spm['model_type']} (not unigram); only "
                          "unigram models (XLM-R's kind) are converted")
    if spm["byte_fallback"] or not spm["remove_extra_whitespaces"] or not spm["escape_whitespaces"]:
        raise ConfigError(f"{model_file}: byte fallback or kept whitespace; the stock XLM-R tokenizer does not "
                          "reproduce that SentencePiece setting")
    scores = {p["piece"]: p["score"] for p in spm["pieces"] if p["type"] in (NORMAL, USER_DEFINED)}
    floor = min(scores.values())
    symbols = fairseq_symbols(dictionary, vocab_size)
    unused = sorted(set(scores) - set(symbols))
    if unused:  # fairseq maps them to <unk>; a Unigram vocabulary cannot give two pieces one id
        raise ConfigError(f"{dictionary} lacks {len(unused)} of {model_file.name}'s pieces (e.g. {unused[:3]}); "
                          "no Unigram tokenizer can give them fairseq's <unk>")
    # pieces SentencePiece never produces (madeupwordNNNN padding) get the lowest score, which keeps the unknown
    # penalty (lowest score - 10) where SentencePiece has it
    vocab = [(s, 0.0 if i < len(SPECIALS) or s == "<mask>" else scores.get(s, floor)) for i, s in enumerate(symbols)]
    charsmap = spm["charsmap"] or None
    tokenizer = XLMRobertaTokenizer(vocab=vocab, add_prefix_space=spm["add_dummy_prefix"],
                                    mask_token="<mask>" if "<mask>" in symbols else "<unk>",
                                    _spm_precompiled_charsmap=charsmap)
    tokenizer.padding_side = "right"
    return tokenizer
