"""fairseq BART (``bart_base``, ``bart_large``, and BART fine-tuned on translation / summarisation) into the stock
``BartForConditionalGeneration``, no remote code.

BART is a post-norm transformer with learned positions (offset padding_idx + 1), an embedding LayerNorm, GELU, no
embedding scale and one shared embedding. One difference is real: fairseq counts positions over non-pad tokens,
transformers' BART counts from the start of the row. The two agree on right-padded batches (BART's hub interface
pads right) and differ on left-padded ones, so the converted tokenizer pads right (stated in the notes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from hfport.converters.fairseq_translation import arch_name, original_checkpoint, regenerator  # noqa: F401  (same format)
from hfport.converters.ofa import _layer_count, model_arguments, task_arguments
from hfport.converters.pipeline import Prepared, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

STATE_KEY = "model"
MAPPING = "fairseq_bart"
REGENERATED = ("fairseq_version",)
ARCHS = re.compile(r"^(bart_(base|large|xlarge)|bart)$")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def matches(checkpoint: dict) -> bool:
    arch = arch_name(checkpoint)
    return arch is not None and bool(ARCHS.match(arch))


def derive_structure(state: dict) -> dict:
    need = ["encoder.embed_tokens.weight", "encoder.embed_positions.weight", "decoder.embed_positions.weight",
            "encoder.layernorm_embedding.weight", "encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete fairseq BART state dict: missing {', '.join(missing)}")
    heads = sorted({k.split(".")[1] for k in state if k.startswith("classification_heads.")})
    if heads:
        raise UnsupportedCheckpointError(f"classification head(s) {', '.join(heads)}: BartForSequenceClassification "
                                         "is not converted yet")
    if "encoder.layer_norm.weight" in state or "decoder.layer_norm.weight" in state:
        raise UnsupportedCheckpointError("a pre-norm BART (final LayerNorms present) is mBART's layout, not BART's")
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    enc_pos, dec_pos = shape("encoder.embed_positions.weight")[0], shape("decoder.embed_positions.weight")[0]
    if enc_pos != dec_pos:
        raise UnsupportedCheckpointError("encoder and decoder position tables differ; stock BART has one size")
    return {
        "vocab_size": shape("encoder.embed_tokens.weight")[0],
        "d_model": shape("encoder.embed_tokens.weight")[1],
        "encoder_layers": _layer_count(state, "encoder"), "decoder_layers": _layer_count(state, "decoder"),
        "encoder_ffn_dim": shape("encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_dim": shape("decoder.layers.0.fc1.weight")[0],
        "max_position_embeddings": enc_pos - 2,  # fairseq's learned table has padding_idx + 1 extra rows
    }


def build_config(args: dict, structure: dict):
    from transformers import BartConfig

    if args.get("no_scale_embedding") is False:
        raise UnsupportedCheckpointError("a BART with embedding scaling is not what stock BART computes")
    activation = args.get("activation_fn") or "gelu"
    if activation not in ("gelu", "relu", "tanh"):
        raise UnsupportedCheckpointError(f"activation {activation!r} has no stock BART equivalent")
    config = BartConfig(
        vocab_size=structure["vocab_size"], d_model=structure["d_model"],
        encoder_layers=structure["encoder_layers"], decoder_layers=structure["decoder_layers"],
        encoder_ffn_dim=structure["encoder_ffn_dim"], decoder_ffn_dim=structure["decoder_ffn_dim"],
        encoder_attention_heads=int(args.get("encoder_attention_heads") or 16),
        decoder_attention_heads=int(args.get("decoder_attention_heads") or 16),
        max_position_embeddings=structure["max_position_embeddings"], activation_function=activation,
        scale_embedding=False, dropout=float(args.get("dropout") or 0.0),
        attention_dropout=float(args.get("attention_dropout") or 0.0),
        activation_dropout=float(args.get("activation_dropout") or 0.0),
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
        forced_bos_token_id=None, tie_word_embeddings=True,
    )
    if structure["d_model"] % config.encoder_attention_heads:
        raise ConfigError(f"{config.encoder_attention_heads} heads do not divide the width {structure['d_model']}")
    config.architectures = ["BartForConditionalGeneration"]
    return config


def read_fairseq_dictionary(path: Path) -> list[str]:
    """fairseq's Dictionary: the four specials, then one symbol per line (`symbol count [#fairseq:overwrite]`)."""
    symbols = list(SPECIALS)
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rstrip().split(" ")
        if len(fields) < 2:
            raise ConfigError(f"{path}:{number}: not a fairseq dictionary line ('symbol count')")
        symbols.append(" ".join(fields[:-2] if fields[-1] == "#fairseq:overwrite" else fields[:-1]))
    return symbols


def bart_tokenizer(bpe_dir: Path, dictionary: Path, vocab_size: int, appended: tuple[str, ...] = ()):
    """A stock BART tokenizer whose ids are fairseq's: GPT-2 byte-level BPE (encoder.json + vocab.bpe) with every
    BPE token renumbered through the fairseq dictionary (which lists GPT-2 ids as its symbols), then the symbols
    the task `appended` after loading it."""
    from tokenizers import Tokenizer, models
    from transformers import BartTokenizer

    gpt2 = json.loads((Path(bpe_dir) / "encoder.json").read_text(encoding="utf-8"))
    by_id = {v: k for k, v in gpt2.items()}
    symbols = read_fairseq_dictionary(dictionary)
    symbols += [s for s in appended if s not in symbols]
    if len(symbols) != vocab_size:
        raise ConfigError(f"{dictionary} has {len(symbols)} symbols with the specials"
                          f"{' and ' + ', '.join(appended) if appended else ''}; the model has {vocab_size}")
    vocab = {}
    for index, symbol in enumerate(symbols):
        if index < len(SPECIALS) or not symbol.isdigit():
            vocab[symbol] = index  # specials, <mask>, madeupwordNNNN
        elif int(symbol) in by_id:
            vocab[by_id[int(symbol)]] = index
        else:
            raise ConfigError(f"{dictionary}: symbol {symbol} is not an id of {bpe_dir}/encoder.json")
    missing = [t for t in gpt2 if t not in vocab]
    if missing:  # fairseq would map these to <unk>; a BPE model cannot (its merges need every piece)
        raise ConfigError(f"{dictionary} lacks {len(missing)} of the BPE's tokens (e.g. {missing[:3]}); the "
                          "tokenizer could not give fairseq's ids for them")
    merges = [tuple(line.split(" ")) for line in (Path(bpe_dir) / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, mask_token="<mask>" if "<mask>" in vocab else "<unk>")
    model = tokenizer._tokenizer.model  # unknown bytes become <unk>, as in fairseq
    tokenizer._tokenizer.model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False,
                                            continuing_subword_prefix=model.continuing_subword_prefix,
                                            end_of_word_suffix=model.end_of_word_suffix)
    tokenizer.padding_side = "right"  # transformers' BART counts positions from the row start: pad right
    return tokenizer


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, dictionary=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq BART")
    from transformers import BartForConditionalGeneration

    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    config = build_config(args, derive_structure(state))
    tokenizer = None
    if bpe_dir is not None or dictionary is not None:
        if bpe_dir is None or dictionary is None:
            raise ConfigError("a BART tokenizer needs both --bpe-dir (encoder.json, vocab.bpe) and --dict (dict.txt)")
        tokenizer = bart_tokenizer(Path(bpe_dir), Path(dictionary), config.vocab_size)  # fails before writing
        tokenizer.model_max_length = config.max_position_embeddings  # what `truncation=True` may keep
    notes = ["fairseq BART -> stock BartForConditionalGeneration",
             "decoding starts from </s> (decoder_start_token_id = eos), as fairseq's SequenceGenerator does",
             "pad on the right: transformers' BART numbers positions from the row start, fairseq over non-pad tokens"]

    def write_extras(folder: Path) -> list[str]:
        from transformers import GenerationConfig

        GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2,
                         forced_eos_token_id=2, suppress_tokens=[1], num_beams=5, length_penalty=1.0,
                         early_stopping=True, max_new_tokens=201,
                         min_new_tokens=1,  # fairseq-generate's --min-len 1: </s> may not be the first token
                         ).save_pretrained(folder)
        written = ["generation_config.json"]
        if tokenizer is not None:
            written += [Path(p).name for p in tokenizer.save_pretrained(folder)]
        return written

    return Prepared(
        config=config, model_class=BartForConditionalGeneration, state_dict=state, flags={}, model_files=[],
        task="text2text-generation", source_format="fairseq", hyper_parameters={"model": args, "task": task},
        source_dtype=state["encoder.embed_tokens.weight"].dtype, notes=notes, write_extras=write_extras,
    )


def generator(config):
    def build(name: str, key: str) -> torch.Tensor:
        if name != "zeros":
            raise KeyError(name)
        return torch.zeros(1, config.vocab_size)

    return build


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    return {
        "family": "fairseq BART",
        "arch": model_arguments(checkpoint).get("arch"),
        "structure": derive_structure(state),
        "stated": {k: v for k, v in model_arguments(checkpoint).items()
                   if k in ("share_all_embeddings", "share_decoder_input_output_embed", "layernorm_embedding",
                            "no_scale_embedding", "activation_fn", "encoder_learned_pos")},
        "task": {k: v for k, v in task_arguments(checkpoint).items() if k in ("_name", "source_lang", "target_lang")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
