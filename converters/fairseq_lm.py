"""fairseq's language model (``transformer_lm``, ``transformer_lm_gpt``, ``transformer_lm_big``, ... task
``language_modeling``) into stock transformers causal-LM classes, no remote code.

What fairseq's pre-norm decoder computes: token embedding x sqrt(d) (unless ``--no-scale-embedding``) + positions counted from padding_idx + 1, pre-norm
layers, a final LayerNorm (unless ``--no-decoder-final-norm``), an output projection (tied or not).

- sinusoidal positions -> ``XGLMForCausalLM``: the same sinusoidal table (offset 2 = padding_idx + 1), scaled
  embeddings, pre-norm layers, final LayerNorm, lm_head tied or not (``tie_word_embeddings``), relu/gelu.
- learned positions (``--decoder-learned-pos``, the GPT-3 archs) -> ``BioGptForCausalLM`` (BioGPT is a fairseq
  transformer_lm): learned table with the same offset, scaled or unscaled embeddings, pre-norm, final LayerNorm.

Both number positions from the start of the row, fairseq over non-pad tokens: equal on unpadded and right-padded
rows (fairseq's language_modeling task pads right). Refused, each with its reason: post-norm layers (fairseq 0.12
trains ``--arch transformer_lm`` post-norm unless ``--decoder-normalize-before`` is given: its dataclass default wins
over `base_lm_architecture`; every stock post-norm causal LM also builds cross-attention),
``--no-decoder-final-norm``, ``--layernorm-embedding``, adaptive input/softmax, character embeddings,
input/output projections, ``--no-token-positional-embeddings``, NormFormer, other activations.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from hfport.converters.fairseq_translation import arch_name, original_checkpoint, regenerator  # noqa: F401  (same format)
from hfport.converters.ofa import _layer_count, model_arguments, task_arguments
from hfport.converters.pipeline import Prepared, first_unsupported, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

STATE_KEY = "model"
MAPPING = "fairseq_lm"
REGENERATED = ("fairseq_version",)
ARCHS = re.compile(r"^transformer_lm(_\w+)?$")
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_accurate": "gelu_new", "tanh": "tanh"}
UNSUPPORTED_KEYS = {
    r"^decoder\.adaptive_softmax\.": "an adaptive softmax (--adaptive-softmax-cutoff)",
    r"^decoder\.embed_tokens\.(embeddings|proj)": "adaptive input embeddings (--adaptive-input)",
    r"^decoder\.embed_tokens\.(char_embeddings|convolutions|highway)": "character embeddings",
    r"^decoder\.layernorm_embedding\.": "an embedding LayerNorm (--layernorm-embedding)",
    r"^decoder\.project_(in|out)_dim\.": "decoder input/output projections (--decoder-input/output-dim)",
    r"\.alibi|\.rel_pos": "relative positions",
    r"\.(attn_ln|ffn_layernorm|c_attn)\.|\.w_resid": "NormFormer scaling (--scale-attn/--scale-fc/--scale-heads)",
}
REFUSED_FLAGS = {  # stated flag -> why no stock class computes it
    "no_decoder_final_norm": "XGLM and BioGPT always apply a final LayerNorm",
    "layernorm_embedding": "XGLM and BioGPT have no embedding LayerNorm",
    "no_token_positional_embeddings": "XGLM and BioGPT always add positions",
    "character_embeddings": "no stock class has character embeddings",
    "adaptive_input": "no stock class has adaptive input embeddings",
    "scale_attn": "NormFormer attention scaling has no stock equivalent",
    "scale_fc": "NormFormer FFN LayerNorm has no stock equivalent",
    "scale_heads": "NormFormer head scaling has no stock equivalent",
    "scale_resids": "NormFormer residual scaling has no stock equivalent",
    "alibi": "ALiBi positions have no stock equivalent here",
}


def matches(checkpoint: dict) -> bool:
    arch = arch_name(checkpoint)
    return arch is not None and bool(ARCHS.match(arch))


def derive_structure(state: dict) -> dict:
    if (found := first_unsupported(state, UNSUPPORTED_KEYS)) is not None:
        what, keys = found
        raise UnsupportedCheckpointError(
            f"this fairseq language model uses {what}; no stock transformers class computes it: {keys}")
    need = ["decoder.embed_tokens.weight", "decoder.layers.0.fc1.weight", "decoder.layers.0.self_attn.q_proj.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete fairseq language model state dict: missing {', '.join(missing)}")
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    learned = "decoder.embed_positions.weight" in state
    return {
        "vocab_size": shape("decoder.embed_tokens.weight")[0],
        "embed_dim": shape("decoder.embed_tokens.weight")[1],
        "ffn_dim": shape("decoder.layers.0.fc1.weight")[0],
        "layers": _layer_count(state, "decoder"),
        "final_norm": "decoder.layer_norm.weight" in state,
        "learned_positions": learned,
        "position_rows": shape("decoder.embed_positions.weight")[0] if learned else None,
        "tied": "decoder.output_projection.weight" not in state or torch.equal(
            state["decoder.output_projection.weight"], state["decoder.embed_tokens.weight"]),
    }


def check_flags(args: dict, structure: dict) -> str:
    """The stock class ("xglm" / "biogpt") computing what this checkpoint computes, or a one-line refusal."""
    for flag, why in REFUSED_FLAGS.items():
        if args.get(flag):
            raise UnsupportedCheckpointError(f"--{flag.replace('_', '-')}: {why}")
    pre_norm = args.get("decoder_normalize_before")
    if pre_norm is None:  # older files: the tensors tell (a pre-norm stack ends in a LayerNorm)
        pre_norm = structure["final_norm"]
    if not pre_norm:
        if structure["final_norm"]:
            raise ConfigError("decoder_normalize_before=False but the checkpoint has a final LayerNorm")
        raise UnsupportedCheckpointError(
            "decoder_normalize_before=False (post-norm layers, fairseq 0.12's transformer_lm default): every stock "
            "post-norm causal LM (TrOCR, BART/Marian ForCausalLM) also builds cross-attention a language model does "
            "not have, and OpenAI GPT has no embedding scale; train with --decoder-normalize-before")
    if not structure["final_norm"]:
        raise UnsupportedCheckpointError("a pre-norm model with no final LayerNorm (--no-decoder-final-norm): XGLM "
                                         "and BioGPT always apply one")
    if args.get("adaptive_softmax_cutoff"):
        raise UnsupportedCheckpointError("--adaptive-softmax-cutoff: no stock class has an adaptive softmax")
    activation = args.get("activation_fn") or "relu"
    if activation not in ACTIVATIONS:
        raise UnsupportedCheckpointError(f"activation {activation!r} has no stock equivalent in XGLM / BioGPT")
    stated_learned = args.get("decoder_learned_pos")
    if stated_learned is not None and bool(stated_learned) != structure["learned_positions"]:
        raise ConfigError(f"decoder_learned_pos={stated_learned!r} but the tensors say "
                          f"{structure['learned_positions']!r}")
    stated_tied = args.get("share_decoder_input_output_embed")
    if stated_tied and not structure["tied"]:
        raise ConfigError("share_decoder_input_output_embed=True but the output projection differs from the embedding")
    for name, value in (("decoder_embed_dim", structure["embed_dim"]), ("decoder_ffn_embed_dim", structure["ffn_dim"]),
                        ("decoder_layers", structure["layers"])):
        if args.get(name) is not None and int(args[name]) != value:
            raise ConfigError(f"{name}={args[name]!r} but the tensors say {value!r}")
    for name in ("decoder_input_dim", "decoder_output_dim"):
        if args.get(name) is not None and int(args[name]) != structure["embed_dim"]:
            raise UnsupportedCheckpointError(f"--{name.replace('_', '-')} differs from the model width: no stock class")
    return "biogpt" if structure["learned_positions"] else "xglm"


def build_config(args: dict, structure: dict, kind: str):
    heads = int(args.get("decoder_attention_heads") or 8)
    if structure["embed_dim"] % heads:
        raise ConfigError(f"decoder_attention_heads={heads} does not divide the width {structure['embed_dim']}")
    max_positions = int(args.get("max_target_positions") or args.get("tokens_per_sample") or 1024)
    activation = ACTIVATIONS[args.get("activation_fn") or "relu"]
    tied = bool(args.get("share_decoder_input_output_embed")) or structure["tied"]
    common = dict(vocab_size=structure["vocab_size"], pad_token_id=1, bos_token_id=2, eos_token_id=2,
                  tie_word_embeddings=tied, scale_embedding=not args.get("no_scale_embedding", False),
                  max_position_embeddings=max_positions, dropout=float(args.get("dropout") or 0.0),
                  attention_dropout=float(args.get("attention_dropout") or 0.0),
                  activation_dropout=float(args.get("activation_dropout") or args.get("relu_dropout") or 0.0))
    if kind == "xglm":
        from transformers import XGLMConfig

        config = XGLMConfig(d_model=structure["embed_dim"], ffn_dim=structure["ffn_dim"], num_layers=structure["layers"],
                            attention_heads=heads, activation_function=activation, layerdrop=0.0,
                            decoder_start_token_id=2, **common)
        config.architectures = ["XGLMForCausalLM"]
    else:
        from transformers import BioGptConfig

        if structure["position_rows"] != max_positions + 2:
            max_positions = structure["position_rows"] - 2  # the table decides; fairseq adds padding_idx + 1 rows
            common["max_position_embeddings"] = max_positions
        config = BioGptConfig(hidden_size=structure["embed_dim"], intermediate_size=structure["ffn_dim"],
                              num_hidden_layers=structure["layers"], num_attention_heads=heads, hidden_act=activation,
                              layer_norm_eps=1e-5, layerdrop=0.0,
                              hidden_dropout_prob=common.pop("dropout"),
                              attention_probs_dropout_prob=common.pop("attention_dropout"), **common)
        config.architectures = ["BioGptForCausalLM"]
    return config


def mapping_flags(kind: str, tied: bool) -> dict[str, bool]:
    return {"xglm": kind == "xglm", "biogpt": kind == "biogpt", "xglm_tied": kind == "xglm" and tied,
            "biogpt_tied": kind == "biogpt" and tied}


def export_flags(config) -> dict[str, bool]:
    kind = "xglm" if config.model_type == "xglm" else "biogpt"
    return mapping_flags(kind, bool(getattr(config, "tie_word_embeddings", False)))


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, dictionary=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq language model")
    from transformers import BioGptForCausalLM, XGLMForCausalLM

    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    structure = derive_structure(state)
    kind = check_flags(args, structure)
    config = build_config(args, structure, kind)
    bos = "<s>" if task.get("add_bos_token") or args.get("add_bos_token") else "</s>"
    tokenizer = None
    if dictionary is not None or bpe_dir is not None:
        from hfport.converters.fairseq_tokenizers import language_model_tokenizer

        tokenizer = language_model_tokenizer(dictionary, bpe_dir, config.vocab_size, bos)  # fails before writing
    model_class = XGLMForCausalLM if kind == "xglm" else BioGptForCausalLM
    notes = [f"fairseq {'sinusoidal' if kind == 'xglm' else 'learned'}-position language model -> stock "
             f"{model_class.__name__}",
             f"every row starts with {bos} (fairseq's language_modeling task prepends it for scoring and generation)",
             "pad on the right: the stock class numbers positions from the row start, fairseq over non-pad tokens"]

    def write_extras(folder: Path) -> list[str]:
        from transformers import GenerationConfig

        GenerationConfig(bos_token_id=2 if bos == "</s>" else 0, eos_token_id=2, pad_token_id=1,
                         suppress_tokens=[1], num_beams=1, max_new_tokens=200).save_pretrained(folder)
        written = ["generation_config.json"]
        if tokenizer is not None:
            written += [Path(p).name for p in tokenizer.save_pretrained(folder)]
        return written

    return Prepared(
        config=config, model_class=model_class, state_dict=state, flags=mapping_flags(kind, config.tie_word_embeddings),
        model_files=[], task="text-generation", source_format="fairseq",
        hyper_parameters={"model": args, "task": task}, source_dtype=state["decoder.embed_tokens.weight"].dtype,
        notes=notes, write_extras=write_extras,
    )


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    return {
        "family": "fairseq language model",
        "arch": arch_name(checkpoint),
        "structure": derive_structure(state),
        "stated": {k: args.get(k) for k in ("decoder_normalize_before", "decoder_learned_pos",
                                             "share_decoder_input_output_embed", "no_scale_embedding",
                                             "activation_fn", "no_decoder_final_norm") if k in args},
        "task": {k: v for k, v in task_arguments(checkpoint).items()
                 if k in ("_name", "sample_break_mode", "tokens_per_sample", "add_bos_token")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
