"""Run a converted fairseq translation model (stock FSMT / M2M100) on golden-format inputs: traces with the names
fairseq_native records, and generation with fairseq's SequenceGenerator conventions."""

from collections import OrderedDict

import torch

PAD_ID = 1
EOS_ID = 2


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().float()


def _encoder_inputs(model, inputs: dict) -> dict:
    src = inputs["src_tokens"].to(model.device)
    return {"input_ids": src, "attention_mask": src.ne(PAD_ID).long()}


@torch.no_grad()
def hf_trace(model, inputs: dict) -> "OrderedDict[str, torch.Tensor]":
    prev = inputs["prev_output_tokens"].to(model.device)
    out = model(**_encoder_inputs(model, inputs), decoder_input_ids=prev,
                decoder_attention_mask=prev.ne(PAD_ID).long(), use_cache=False, output_hidden_states=True,
                return_dict=True)
    n_enc, n_dec = model.config.encoder_layers, model.config.decoder_layers
    trace = OrderedDict()
    for i, state in enumerate(out.encoder_hidden_states[:n_enc]):  # the input of every encoder layer
        trace[f"encoder_hidden_states.{i}"] = _fp32(state)
    trace["encoder_out"] = _fp32(out.encoder_last_hidden_state)
    trace["encoder_padding_mask"] = _fp32(inputs["src_tokens"].eq(PAD_ID))
    for i, state in enumerate(out.decoder_hidden_states[:n_dec]):
        trace[f"decoder_inner_states.{i}"] = _fp32(state)
    trace["decoder_features"] = _fp32(out.decoder_hidden_states[-1])
    trace["logits"] = _fp32(out.logits)
    return trace


def _strip(sequence: list) -> list:
    """Drop the leading decoder-start </s>; keep tokens up to and including the first </s>."""
    tokens = sequence[1:]
    if EOS_ID in tokens:
        tokens = tokens[: tokens.index(EOS_ID) + 1]
    return tokens


@torch.no_grad()
def hf_generate(model, inputs: dict, num_beams: int, max_len_b: int, min_len: int) -> list:
    """fairseq's SequenceGenerator (max_len_a = 0, lenpen 1, unk penalty 0) as transformers arguments: start from
    </s>, never emit pad, no </s> before `min_len` tokens, </s> forced as token `max_len_b + 1`, a beam finished
    when `num_beams` hypotheses are, scores divided by the generated length."""
    sequences = model.generate(
        **_encoder_inputs(model, inputs), num_beams=num_beams, num_return_sequences=1, do_sample=False,
        max_new_tokens=max_len_b + 1, min_new_tokens=min_len, forced_eos_token_id=EOS_ID, suppress_tokens=[PAD_ID],
        decoder_start_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        **({"length_penalty": 1.0, "early_stopping": True} if num_beams > 1 else {}),
        no_repeat_ngram_size=0, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None, use_cache=True,
    )
    return [_strip(row) for row in sequences.tolist()]
