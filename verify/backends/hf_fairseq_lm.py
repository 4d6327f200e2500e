"""Run a converted fairseq language model (stock XGLM / BioGPT causal LM) on golden-format inputs: the trace names
fairseq_lm_native records, and generation with fairseq's language-model conventions."""

from collections import OrderedDict

import torch

PAD_ID = 1
EOS_ID = 2


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().float()


def _layers(model):
    return model.base_model.layers


def _head(model):
    return model.get_output_embeddings()


@torch.no_grad()
def hf_trace(model, inputs: dict) -> "OrderedDict[str, torch.Tensor]":
    """The input of every layer, the features before the head (after the final LayerNorm) and the logits, taken
    with hooks (what the stock classes return as hidden states differs between them)."""
    tokens = inputs["src_tokens"].to(model.device)
    seen: dict = {}

    def keep(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, _fp32(args[0] if args else kwargs["hidden_states"]))  # returns None: inputs unchanged
        return hook

    hooks = [layer.register_forward_pre_hook(keep(f"decoder_inner_states.{i}"), with_kwargs=True)
             for i, layer in enumerate(_layers(model))]
    hooks.append(_head(model).register_forward_pre_hook(keep("decoder_features"), with_kwargs=True))
    try:
        out = model(input_ids=tokens, attention_mask=tokens.ne(PAD_ID).long(), use_cache=False, return_dict=True)
    finally:
        for hook in hooks:
            hook.remove()
    trace = OrderedDict((f"decoder_inner_states.{i}", seen[f"decoder_inner_states.{i}"])
                        for i in range(len(_layers(model))))
    trace["decoder_features"] = seen["decoder_features"]
    trace["logits"] = _fp32(out.logits)
    return trace


def _strip(sequence: list) -> list:
    """Drop the leading start token; keep tokens up to and including the first </s> after it."""
    tokens = sequence[1:]
    if EOS_ID in tokens:
        tokens = tokens[: tokens.index(EOS_ID) + 1]
    return tokens


@torch.no_grad()
def hf_generate(model, inputs: dict, num_beams: int, max_len_b: int, min_len: int) -> list:
    """fairseq's SequenceGenerator on a language model (max_len_a = 0, lenpen 1, unk penalty 0), one prompt at a
    time: the row (start token + prompt) is the input, pad is never emitted, </s> is blocked while fewer than
    `min_len` tokens follow the start token and forced as token `max_len_b + 1` after it (prompt included)."""
    results = []
    for row in inputs["src_tokens"]:
        row = row[row.ne(PAD_ID)].unsqueeze(0).to(model.device)
        total = max_len_b + 2  # start token + max_len_b tokens + the forced </s>
        sequences = model.generate(
            input_ids=row, attention_mask=torch.ones_like(row), num_beams=num_beams, num_return_sequences=1,
            do_sample=False, max_new_tokens=max(total - row.shape[1], 1), min_length=min_len + 1, forced_eos_token_id=EOS_ID,
            suppress_tokens=[PAD_ID], eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=int(row[0, 0]),
            **({"length_penalty": 1.0, "early_stopping": True} if num_beams > 1 else {}),
            no_repeat_ngram_size=0, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None, use_cache=True,
        )
        results.append(_strip(sequences[0].tolist()))
    return results
