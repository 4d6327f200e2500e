"""Write OFA's tokenizer and image processor next to converted weights.

OFA (fairseq) encodes text in two steps: GPT-2 byte-level BPE (English; `bpe=bert` for Chinese: WordPiece) gives
sub-word strings, then the task dictionary maps each one to its index. The tokenizer built here does both in one
`tokenizers` pipeline: its model vocabulary holds every sub-word under its *dictionary index*, so the fast
tokenizer returns the ids the checkpoint's embedding rows expect.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from hfport.errors import ConfigError
from hfport.fairseq_text import DictionaryFormatError, read_dictionary, read_lines

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary defaults, ids 0..3


def build_task_dictionary(dict_path: Path, code_dict_size: int, num_bins: int) -> list[str]:
    """The symbols of OFA's task dictionary in index order, as `OFATask.setup_task` builds them."""
    symbols = list(SPECIALS)
    index = {s: i for i, s in enumerate(symbols)}

    def add_symbol(word: str, overwrite: bool = False) -> None:
        if word in index and not overwrite:
            return
        index[word] = len(symbols)
        symbols.append(word)

    try:
        entries = read_dictionary(dict_path)
    except OSError as err:
        raise ConfigError(f"cannot read the OFA dictionary {dict_path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read the OFA dictionary {dict_path}: not UTF-8 ({err.reason} at byte {err.start})") from err
    except DictionaryFormatError as err:
        raise ConfigError(str(err)) from err
    for entry in entries:
        if entry.symbol in index and not entry.overwrite:  # one of the four specials fairseq starts with
            raise ConfigError(f"{dict_path}:{entry.line_number}: duplicate symbol {entry.symbol!r} "
                              "(fairseq refuses this dictionary)")
        add_symbol(entry.symbol, entry.overwrite)
    add_symbol("<mask>")
    for i in range(code_dict_size):
        add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        add_symbol(f"<bin_{i}>")
    return symbols


def _read_gpt2_files(bpe_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    encoder_path, merges_path = bpe_dir / "encoder.json", bpe_dir / "vocab.bpe"
    for path in (encoder_path, merges_path):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: --bpe-dir must hold OFA's utils/BPE files (dict.txt, encoder.json, vocab.bpe)")
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    # same parsing as fairseq's gpt2_bpe_utils.get_encoder: drop the version line and the trailing empty line
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    return encoder, merges


def _read_wordpiece_vocab(bpe_dir: Path) -> list[str]:
    path = bpe_dir / "vocab.txt"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: a bpe=bert --bpe-dir must hold vocab.txt and dict.txt")
    # BertTokenizer's load_vocab: one token per readlines() line, order = id
    try:
        return read_lines(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the WordPiece vocabulary {path}: {err}") from err


def _model_vocab(symbols: list[str], subwords: list[str], symbol_of_subword) -> dict[str, int]:
    """token string -> id: dictionary symbols at their index, sub-words missing from the dictionary after it."""
    by_symbol = {s: i for i, s in enumerate(symbols)}
    vocab: dict[str, int] = {}
    claimed: set[int] = set()
    for subword in subwords:
        index = by_symbol.get(symbol_of_subword(subword))
        if index is not None:
            vocab[subword] = index
            claimed.add(index)
    # dictionary entries no sub-word produces (specials, <code_*>, 'madeupword0000', ...) keep their index
    for index, symbol in enumerate(symbols):
        if index in claimed:
            continue
        name = symbol
        while name in vocab:  # a literal that happens to be a sub-word string of another id
            name = f"<dict:{name}>"
        vocab[name] = index
    next_id = len(symbols)
    for subword in subwords:
        if subword not in vocab:
            vocab[subword] = next_id
            next_id += 1
    return vocab


def _name_of_index(vocab: dict[str, int], index: int) -> str:
    return next(token for token, i in vocab.items() if i == index)


BERT_SPECIALS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")


def _wordpiece_can_produce(subword: str, normalizer, pre_tokenizer) -> bool:
    """Whether BERT's normaliser + pre-tokeniser can ever hand WordPiece a word containing `subword`.

    A sub-word that cannot appear (OFA's real vocab.txt has U+2028 and `##`+U+2028, which the normaliser turns into
    a space) needs no entry, so a dictionary lacking only such sub-words still allows a plain fast tokenizer."""
    if subword in BERT_SPECIALS:  # kept whole from the text as added tokens
        return True
    core = subword[2:] if subword.startswith("##") and len(subword) > 2 else subword
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(core))] == [core]


def build_ofa_tokenizer(bpe_dir: Path, symbols: list[str], bpe: str = "gpt2") -> Tokenizer:
    """A `tokenizers.Tokenizer` reproducing fairseq's `Dictionary.encode_line(bpe.encode(text))` with OFA's dictionary."""
    if bpe == "gpt2":
        encoder, merges = _read_gpt2_files(bpe_dir)
        subwords = sorted(encoder, key=encoder.get)
        vocab = _model_vocab(symbols, subwords, lambda token: str(encoder[token]))
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        normalized_specials = False
    elif bpe == "bert":
        subwords = _read_wordpiece_vocab(bpe_dir)
        if "[UNK]" not in subwords:
            raise ConfigError(f"{bpe_dir / 'vocab.txt'} has no [UNK] token; it is not a BERT vocabulary")
        # OFA builds BertBPE with bpe_cased=False, i.e. BertTokenizer(do_lower_case=True)
        normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        in_dictionary = set(symbols)
        subwords = [w for w in dict.fromkeys(subwords)
                    if w in in_dictionary or _wordpiece_can_produce(w, normalizer, pre_tokenizer)]
        vocab = _model_vocab(symbols, subwords, lambda token: token)
        tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizer
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        normalized_specials = False
    else:
        raise ConfigError(f"unknown OFA bpe {bpe!r}; expected 'gpt2' or 'bert'")

    bos, pad, eos, unk = (_name_of_index(vocab, i) for i in range(4))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (bos, pad, eos, unk)])
    extra = [s for s in symbols[4:] if s == "<mask>" or s.startswith(("<code_", "<bin_"))]
    # lstrip: OFA encodes "<prefix text> <bin_1> <bin_2>" as BPE(prefix) + the bins without BPE, so the space
    # before such a token belongs to no token; text after one keeps its leading space like every OFA segment.
    tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=normalized_specials) for t in extra])
    if bpe == "bert":
        # the slow BertTokenizer fairseq used keeps its own special tokens whole when they appear in text
        bert_specials = [t for t in BERT_SPECIALS if t in vocab]
        tokenizer.add_tokens([AddedToken(t, normalized=False) for t in bert_specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, 0), (eos, 2)],
    )
    return tokenizer


def check_ofa_preprocessing(*, bpe_dir, bpe: str, vocab_size: int, code_dict_size: int, num_bins: int,
                            patch_image_size: int) -> list[str]:
    """Everything about the user's BPE folder that can be wrong, checked before any weight is written.

    Returns the task dictionary (its symbols in id order). Raises ConfigError.
    """
    bpe_dir = Path(bpe_dir)
    if not (bpe_dir / "dict.txt").is_file():
        raise ConfigError(f"{bpe_dir}/dict.txt is missing: --bpe-dir must be OFA's utils/BPE (or BERT_CN_dict) folder")
    needed = ("encoder.json", "vocab.bpe") if bpe == "gpt2" else ("vocab.txt",)
    for name in needed:
        if not (bpe_dir / name).is_file():
            raise ConfigError(f"{bpe_dir / name} is missing: a bpe={bpe} --bpe-dir must hold dict.txt and {', '.join(needed)}")
    if int(patch_image_size) <= 0 or int(patch_image_size) % 16:
        raise ConfigError(f"patch_image_size must be a positive multiple of 16 (OFA's ResNet stride), got {patch_image_size}")
    symbols = build_task_dictionary(bpe_dir / "dict.txt", int(code_dict_size), int(num_bins))
    if len(symbols) != int(vocab_size):
        raise ConfigError(
            f"the OFA dictionary from {bpe_dir}/dict.txt has {len(symbols)} entries (4 specials + dict.txt + <mask> + "
            f"{code_dict_size} codes + {num_bins} bins) but the checkpoint's embedding has {vocab_size} rows",
            hint="pass the --bpe-dir the checkpoint was trained with (English: utils/BPE, Chinese: BERT_CN_dict with bpe=bert)",
        )
    return symbols


def save_ofa_preprocessing(
    out_dir,
    *,
    bpe_dir,
    bpe: str = "gpt2",
    vocab_size: int,
    code_dict_size: int,
    num_bins: int,
    patch_image_size: int,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    max_src_length: int | None = None,
    max_source_positions: int = 1024,
) -> list[str]:
    """Write tokenizer, image processor and processor files of an OFA model into `out_dir`.

    `vocab_size` is the checkpoint's embedding row count; `code_dict_size`, `num_bins`, `patch_image_size` come
    from the checkpoint's task config (`cfg["task"]`), `patch_image_size` possibly overridden by the user;
    `max_src_length` (task cfg) caps the words of questions / grounding texts like OFA's datasets, and
    `max_source_positions` (model cfg) becomes the tokenizer's `model_max_length`.
    Returns the names of the files written. Raises ConfigError when the dictionary does not fit the checkpoint.
    """

    out_dir, bpe_dir = Path(out_dir), Path(bpe_dir)
    symbols = check_ofa_preprocessing(bpe_dir=bpe_dir, bpe=bpe, vocab_size=vocab_size, code_dict_size=code_dict_size,
                                      num_bins=num_bins, patch_image_size=patch_image_size)

    from hfport.models.ofa import processing_ofa  # the module copied into the folder

    backend = build_ofa_tokenizer(bpe_dir, symbols, bpe)
    model_vocab = backend.get_vocab(with_added_tokens=False)
    # Sub-words the dictionary lacks sit after it and must read as <unk>: only OFATokenizerFast (shipped code) can
    # do that. A dictionary covering every sub-word (OFA's real English and Chinese ones) gets transformers' own class.
    needs_unk_mapping = len(model_vocab) > len(symbols)
    if needs_unk_mapping:
        tokenizer_class, extra = "OFATokenizerFast", {"dictionary_size": len(symbols), "bpe": bpe}
        make_tokenizer = processing_ofa.OFATokenizerFast
    else:
        from transformers import PreTrainedTokenizerFast

        tokenizer_class, extra, make_tokenizer = "PreTrainedTokenizerFast", {}, PreTrainedTokenizerFast
    tokenizer = make_tokenizer(
        tokenizer_object=backend,
        **extra,
        bos_token=_name_of_index(model_vocab, 0),
        pad_token=_name_of_index(model_vocab, 1),
        eos_token=_name_of_index(model_vocab, 2),
        unk_token=_name_of_index(model_vocab, 3),
        mask_token="<mask>" if "<mask>" in symbols else None,
        model_max_length=int(max_source_positions),
        clean_up_tokenization_spaces=False,
    )
    image_processor = processing_ofa.OFAImageProcessor(
        size=int(patch_image_size), image_mean=list(image_mean), image_std=list(image_std)
    )
    processor = processing_ofa.OFAProcessor(
        image_processor=image_processor, tokenizer=tokenizer, max_words=int(max_src_length) if max_src_length else None,
        bpe=bpe,
    )
    before = set(_listing(out_dir))
    _save_with_auto_map(processor, out_dir, "processing_ofa", "OFAProcessor", "OFAImageProcessor", tokenizer_class,
                        tokenizer_is_shipped=needs_unk_mapping)
    shutil.copyfile(processing_ofa.__file__, out_dir / "processing_ofa.py")
    return sorted(set(_listing(out_dir)) - before | {"processing_ofa.py"})


def _listing(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def _save_with_auto_map(processor, out_dir: Path, module: str, processor_class: str, image_class: str, tokenizer_class: str,
                        tokenizer_is_shipped: bool = True):
    """save_pretrained, then point the Auto classes at the module copied beside the weights (the tokenizer's only
    when it is a class of that module)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(out_dir))
    image_config = {
        **processor.image_processor.to_dict(),
        "image_processor_type": image_class,
        "processor_class": processor_class,
        "auto_map": {"AutoImageProcessor": f"{module}.{image_class}", "AutoProcessor": f"{module}.{processor_class}"},
    }
    _update_json(out_dir / "preprocessor_config.json", **image_config)
    auto_map = {"AutoProcessor": f"{module}.{processor_class}"}
    if tokenizer_is_shipped:
        auto_map["AutoTokenizer"] = [None, f"{module}.{tokenizer_class}"]
    _update_json(out_dir / "tokenizer_config.json", tokenizer_class=tokenizer_class, processor_class=processor_class,
                 auto_map=auto_map)
    # transformers 5 reads a processor's image processor from processor_config.json first
    _update_json(
        out_dir / "processor_config.json",
        image_processor=image_config,
        processor_class=processor_class,
        auto_map={"AutoProcessor": f"{module}.{processor_class}"},
    )


def _update_json(path: Path, **entries) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
