"""Stock tokenizers (``PreTrainedTokenizerFast`` + tokenizer.json, no remote code) whose ids are fairseq's.

fairseq's `Dictionary` numbers ``<s> <pad> </s> <unk>`` 0..3, then the symbols of dict.txt in file order (a
symbol repeated with ``#fairseq:overwrite`` gets a new index, and lookups find the last one). Its `encode_line`
splits on whitespace and maps unknown words to ``<unk>``. With GPT-2 BPE (`--bpe gpt2`), the text is first
byte-level BPE'd into GPT-2 ids, which are the dictionary's symbols.

Where the special tokens go is the task's convention, given as a template:
- language_modeling (scoring and generation, `build_dataset_for_inference`): ``</s> words`` (``<s> words`` with
  ``--add-bos-token``), no trailing ``</s>``;
- translation sources: ``words </s>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hfport.errors import ConfigError
from hfport.fairseq_text import DictionaryFormatError, read_dictionary

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def dictionary_vocab(path: Path, vocab_size: int) -> dict[str, int]:
    """{symbol: id} exactly as fairseq's Dictionary looks symbols up; refuses a dictionary of the wrong size."""
    try:
        entries = read_dictionary(path)
    except (DictionaryFormatError, OSError) as err:
        raise ConfigError(f"--dict: {err}") from None
    vocab = {symbol: index for index, symbol in enumerate(SPECIALS)}
    for index, entry in enumerate(entries, len(SPECIALS)):
        vocab[entry.symbol] = index  # a repeated (overwrite) symbol: the last index wins, as in fairseq
    size = len(SPECIALS) + len(entries)
    if size != vocab_size:
        raise ConfigError(f"{path} has {size} symbols with the specials; the model has {vocab_size}")
    return vocab


def _gpt2_bpe_model(bpe_dir: Path, vocab: dict[str, int]):
    """Byte-level BPE over GPT-2's merges, each piece renumbered through the fairseq dictionary."""
    from tokenizers import decoders, models, pre_tokenizers

    encoder = json.loads((Path(bpe_dir) / "encoder.json").read_text(encoding="utf-8"))
    by_id = {v: k for k, v in encoder.items()}
    pieces = {}
    for symbol, index in vocab.items():
        if symbol in SPECIALS or not symbol.isdigit():
            pieces[symbol] = index
        elif int(symbol) in by_id:
            pieces[by_id[int(symbol)]] = index
        else:
            raise ConfigError(f"dictionary symbol {symbol} is not an id of {bpe_dir}/encoder.json")
    missing = [piece for piece in encoder if piece not in pieces]
    if missing:
        raise ConfigError(f"the dictionary lacks {len(missing)} of the BPE's pieces (e.g. {missing[:3]}); the "
                          "tokenizer could not give fairseq's ids for them")
    merges = [tuple(line.split(" ")) for line in (Path(bpe_dir) / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    model = models.BPE(vocab=pieces, merges=merges, unk_token="<unk>", fuse_unk=False)
    return model, pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()


def fairseq_tokenizer(dictionary: Path, vocab_size: int, template: str, bpe_dir: Path | None = None,
                      padding_side: str = "right"):
    """A PreTrainedTokenizerFast with fairseq's ids; `template` places the specials (``$A`` is the text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = dictionary_vocab(Path(dictionary), vocab_size)
    if bpe_dir is not None:
        model, pre, decoder = _gpt2_bpe_model(Path(bpe_dir), vocab)
    else:
        model, pre, decoder = models.WordLevel(vocab=vocab, unk_token="<unk>"), pre_tokenizers.WhitespaceSplit(), None
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre
    if decoder is not None:
        tokenizer.decoder = decoder
    specials = sorted({word for word in template.split() if word in SPECIALS}, key=SPECIALS.index)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, pair=template.replace("$A", "$A $B"),
        special_tokens=[(word, SPECIALS.index(word)) for word in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", padding_side=padding_side, clean_up_tokenization_spaces=False)
    return fast


def language_model_tokenizer(dictionary, bpe_dir, vocab_size: int, bos: str):
    """fairseq's language_modeling convention: ``</s>`` (or ``<s>`` with --add-bos-token) first, no trailing
    ``</s>``; right padding (fairseq pads LM batches on the right; the stock classes number positions from the row
    start)."""
    if dictionary is None:
        raise ConfigError("a fairseq language-model tokenizer needs --dict (the task's dict.txt)")
    tokenizer = fairseq_tokenizer(Path(dictionary), vocab_size, f"{bos} $A", Path(bpe_dir) if bpe_dir else None)
    if bos == "</s>":
        tokenizer.bos_token = "</s>"  # generation starts from </s>, fairseq's language-model convention
    return tokenizer
