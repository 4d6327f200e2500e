"""fairseq mBART (the ``bart`` model with arch ``mbart_large`` / ``mbart_base`` and mBART's pre-norm flags, from
``multilingual_denoising`` or fine-tuned with ``translation_from_pretrained_bart``) into the stock
``MBartForConditionalGeneration``, no remote code.

mBART is BART made pre-norm (``--encoder/decoder-normalize-before``: a LayerNorm closing each stack) with the
embeddings scaled by sqrt(d_model); stock MBart computes exactly that. As for BART, fairseq numbers positions over
non-pad tokens and transformers from the row start: equal on right-padded batches, so the tokenizer pads right.

The tokenizer: SentencePiece pieces renumbered through fairseq's dictionary (whose order is fairseq-preprocess's
frequency order, not the SentencePiece model's), then the language tokens ``[xx_YY]`` and ``<mask>`` the task
appends. Sources are ``pieces </s> [src_lang]``. translation_from_pretrained_bart decodes with the TARGET language
token as the generator's eos: decoding starts from ``[tgt_lang]`` and stops at it (a ``</s>`` before it is an
ordinary token), which the generation config reproduces.
"""

from __future__ import annotations

import re
from pathlib import Path

from hfport.converters import fairseq_bart as fb
from hfport.converters.fairseq_translation import original_checkpoint, regenerator  # noqa: F401  (same format)
from hfport.converters.ofa import _layer_count, model_arguments, task_arguments
from hfport.converters.pipeline import Prepared, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

STATE_KEY = "model"
MAPPING = "fairseq_mbart"
REGENERATED = ("fairseq_version",)
ARCHS = re.compile(r"^mbart(_\w+)?$")
generator = fb.generator  # final_logits_bias: zeros


def matches(checkpoint: dict) -> bool:
    """mbart_* archs, and BART-arch checkpoints trained pre-norm (mBART's layout under another arch name)."""
    arch = fb.arch_name(checkpoint)
    if arch is None:
        return False
    return bool(ARCHS.match(arch)) or (bool(fb.ARCHS.match(arch)) and "encoder.layer_norm.weight" in checkpoint["model"])


def derive_structure(state: dict) -> dict:
    heads = sorted({k.split(".")[1] for k in state if k.startswith("classification_heads.")})
    if heads:
        raise UnsupportedCheckpointError(f"mBART classification head(s) {', '.join(heads)}: "
                                         "MBartForSequenceClassification is not converted yet")
    have_final = ["encoder.layer_norm.weight" in state, "decoder.layer_norm.weight" in state]
    if not any(have_final):
        raise UnsupportedCheckpointError("an mbart arch trained without --encoder/decoder-normalize-before (post-norm "
                                         "with scaled embeddings): stock MBart is pre-norm")
    if not all(have_final):
        raise UnsupportedCheckpointError("only one side of this mBART is pre-norm; stock MBart needs both")
    if "encoder.layernorm_embedding.weight" not in state:
        raise UnsupportedCheckpointError("an mBART without layernorm_embedding (mbart_base_wmt20): stock MBart "
                                         "always applies it")
    need = ["encoder.embed_tokens.weight", "encoder.embed_positions.weight", "decoder.embed_positions.weight",
            "encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight", "decoder.layernorm_embedding.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete fairseq mBART state dict: missing {', '.join(missing)}")
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    enc_pos, dec_pos = shape("encoder.embed_positions.weight")[0], shape("decoder.embed_positions.weight")[0]
    if enc_pos != dec_pos:
        raise UnsupportedCheckpointError("encoder and decoder position tables differ; stock MBart has one size")
    return {
        "vocab_size": shape("encoder.embed_tokens.weight")[0], "d_model": shape("encoder.embed_tokens.weight")[1],
        "encoder_layers": _layer_count(state, "encoder"), "decoder_layers": _layer_count(state, "decoder"),
        "encoder_ffn_dim": shape("encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_dim": shape("decoder.layers.0.fc1.weight")[0],
        "max_position_embeddings": enc_pos - 2,  # padding_idx + 1 extra rows in fairseq's learned table
    }


def build_config(args: dict, structure: dict):
    from transformers import MBartConfig

    activation = args.get("activation_fn") or "gelu"
    if activation not in ("gelu", "relu", "tanh"):
        raise UnsupportedCheckpointError(f"activation {activation!r} has no stock MBart equivalent")
    heads = int(args.get("encoder_attention_heads") or 16)
    if structure["d_model"] % heads:
        raise ConfigError(f"{heads} heads do not divide the width {structure['d_model']}")
    config = MBartConfig(
        vocab_size=structure["vocab_size"], d_model=structure["d_model"],
        encoder_layers=structure["encoder_layers"], decoder_layers=structure["decoder_layers"],
        encoder_ffn_dim=structure["encoder_ffn_dim"], decoder_ffn_dim=structure["decoder_ffn_dim"],
        encoder_attention_heads=heads, decoder_attention_heads=int(args.get("decoder_attention_heads") or 16),
        max_position_embeddings=structure["max_position_embeddings"], activation_function=activation,
        scale_embedding=not args.get("no_scale_embedding", False),  # mbart_* archs scale by sqrt(d_model)
        dropout=float(args.get("dropout") or 0.0), attention_dropout=float(args.get("attention_dropout") or 0.0),
        activation_dropout=float(args.get("activation_dropout") or 0.0),
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
        tie_word_embeddings=True,
    )
    config.architectures = ["MBartForConditionalGeneration"]
    return config


def language_tokens(task: dict) -> list[str]:
    """The tokens translation_from_pretrained_bart / multilingual_denoising append after the dictionary."""
    langs = task.get("langs")
    if isinstance(langs, str) and langs:
        return ["[{}]".format(lang) for lang in langs.split(",")]
    return []


def model_file(folder: Path) -> Path:
    models = sorted(Path(folder).glob("*.model"))
    if len(models) != 1:
        raise ConfigError(f"{folder}: an mBART tokenizer needs exactly one SentencePiece *.model file there "
                          f"(found {len(models)})")
    return models[0]


def mbart_tokenizer(spm_folder: Path, dictionary: Path, task: dict, vocab_size: int):
    """A stock fast tokenizer (tokenizer.json, no remote code) whose ids are fairseq's: the SentencePiece unigram
    model with its pieces renumbered through the fairseq dictionary, the task's language tokens and <mask>."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hfport.converters.sentencepiece_vocab import BYTE, CONTROL, UNIGRAM, UNKNOWN, read_sentencepiece_model

    path = model_file(spm_folder)
    spm = read_sentencepiece_model(path)
    if spm.model_type != UNIGRAM:
        raise ConfigError(f"{path}: a SentencePiece model of type {spm.model_type} (not unigram) is not converted")
    if any(kind == BYTE for _, _, kind in spm.pieces):
        raise ConfigError(f"{path}: byte-fallback pieces are not converted")
    scores = {piece: score for piece, score, kind in spm.pieces if kind not in (CONTROL, UNKNOWN)}
    symbols = fb.read_fairseq_dictionary(dictionary)
    added = [t for t in language_tokens(task) + ["<mask>"] if t not in symbols]
    if task.get("_name") not in ("translation_from_pretrained_bart", "multilingual_denoising") and not task.get("langs"):
        added = []
    symbols += added
    if len(symbols) != vocab_size:
        raise ConfigError(f"{dictionary} gives {len(symbols)} symbols with the specials"
                          f"{' and ' + ', '.join(added) if added else ''}; the model has {vocab_size}")
    missing = [p for p in scores if p not in symbols]
    if missing:  # fairseq maps them to <unk>; a unigram model cannot give two pieces one id
        raise ConfigError(f"{dictionary} lacks {len(missing)} of {path.name}'s pieces (e.g. {missing[:3]}); the "
                          "tokenizer could not give fairseq's ids for them")
    floor = min(scores.values()) - 100.0 if scores else -100.0
    vocab = [(s, scores.get(s, floor if i >= len(fb.SPECIALS) else 0.0)) for i, s in enumerate(symbols)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    steps = [normalizers.Precompiled(spm.precompiled_charsmap)] if spm.precompiled_charsmap else []
    if spm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tokenizer.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spm.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    specials = list(fb.SPECIALS) + [t for t in symbols if t == "<mask>" or re.fullmatch(r"\[\w+\]", t)]
    tokenizer.add_special_tokens(specials)
    source = "[{}]".format(task["source_lang"]) if task.get("source_lang") and added else None
    suffix = ["</s>"] + ([source] if source in symbols else [])
    ids = {t: symbols.index(t) for t in suffix}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A"] + suffix, pair=["$A", "$B"] + suffix, special_tokens=[(t, ids[t]) for t in suffix])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>" if "<mask>" in symbols else None,
        additional_special_tokens=[t for t in specials if t.startswith("[")], padding_side="right")
    return wrapped


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, dictionary=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq mBART")
    from transformers import MBartForConditionalGeneration

    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    config = build_config(args, derive_structure(state))
    tokenizer = None
    if bpe_dir is not None or dictionary is not None:
        if bpe_dir is None or dictionary is None:
            raise ConfigError("an mBART tokenizer needs both --bpe-dir (the folder with the SentencePiece *.model) "
                              "and --dict (dict.txt)")
        tokenizer = mbart_tokenizer(Path(bpe_dir), Path(dictionary), task, config.vocab_size)  # fails before writing
        tokenizer.model_max_length = config.max_position_embeddings  # what `truncation=True` may keep
    target = task.get("target_lang") if task.get("_name") == "translation_from_pretrained_bart" else None
    langs = language_tokens(task)
    start = None
    if target and "[{}]".format(target) in langs:
        # the dictionary, then the task's language tokens: [tgt] sits after every dictionary symbol
        start = config.vocab_size - 1 - len(langs) + langs.index("[{}]".format(target))
        config.decoder_start_token_id = start
    notes = ["fairseq mBART -> stock MBartForConditionalGeneration (pre-norm, embeddings scaled by sqrt(d_model))",
             "pad on the right: transformers' MBart numbers positions from the row start, fairseq over non-pad tokens",
             "sources are `pieces </s> [src_lang]` (the tokenizer adds both)"]
    if start is not None:
        notes.append(f"decoding starts from and stops at [{target}] (id {start}): translation_from_pretrained_bart's "
                     "generator uses the target language token as eos")

    def write_extras(folder: Path) -> list[str]:
        from transformers import GenerationConfig

        stop = start if start is not None else 2
        GenerationConfig(bos_token_id=0, eos_token_id=stop, pad_token_id=1, decoder_start_token_id=stop,
                         forced_eos_token_id=stop, suppress_tokens=[1], num_beams=5, length_penalty=1.0,
                         early_stopping=True, max_new_tokens=201,
                         # fairseq-generate's --min-len 1: no eos as the first token (a beam may otherwise end
                         # there and outrank the real translations)
                         min_new_tokens=1).save_pretrained(folder)
        written = ["generation_config.json"]
        if tokenizer is not None:
            written += [Path(p).name for p in tokenizer.save_pretrained(folder)]
        return written

    return Prepared(
        config=config, model_class=MBartForConditionalGeneration, state_dict=state, flags={}, model_files=[],
        task="translation", source_format="fairseq", hyper_parameters={"model": args, "task": task},
        source_dtype=state["encoder.embed_tokens.weight"].dtype, notes=notes, write_extras=write_extras,
    )


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    return {
        "family": "fairseq mBART",
        "arch": args.get("arch"),
        "structure": derive_structure(state),
        "stated": {k: v for k, v in args.items()
                   if k in ("encoder_normalize_before", "decoder_normalize_before", "layernorm_embedding",
                            "no_scale_embedding", "activation_fn", "share_all_embeddings")},
        "task": {k: v for k, v in task.items() if k in ("_name", "source_lang", "target_lang", "langs")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
