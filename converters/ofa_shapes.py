"""Every parameter and persistent buffer of the HF OFA model, with shape, dtype and declared ties, from its config.

The conversion needs these before writing anything. Building the model on the meta device would tell the same,
but importing transformers' modelling stack costs seconds, several times the work of converting a base-size
checkpoint; this module imports nothing from transformers. The tests (and `verify`, which loads the real class)
hold it to the model built on the meta device, for every fixture and preset.
"""

from __future__ import annotations

import torch

# Bottleneck blocks per ResNet stage; the same table as configuration_ofa.RESNET_LAYERS (kept equal by a test)
RESNET_BLOCKS = {"resnet18": (2, 2, 2), "resnet34": (3, 4, 6), "resnet50": (3, 4, 6), "resnet101": (3, 4, 23),
                 "resnet152": (3, 8, 36)}
RESNET_OUTPUT_CHANNELS = 1024


def _linear(out: dict, name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (fan_out, fan_in)
    if bias:
        out[f"{name}.bias"] = (fan_out,)


def _layer_norm(out: dict, name: str, dim: int) -> None:
    out[f"{name}.weight"] = (dim,)
    out[f"{name}.bias"] = (dim,)


def _batch_norm(out: dict, longs: set, name: str, channels: int, frozen: bool) -> None:
    for part in ("weight", "bias", "running_mean", "running_var"):
        out[f"{name}.{part}"] = (channels,)
    if not frozen:
        out[f"{name}.num_batches_tracked"] = ()
        longs.add(f"{name}.num_batches_tracked")


def _resnet(out: dict, longs: set, prefix: str, config) -> None:
    frozen = bool(config.freeze_resnet) and not config.sync_bn
    out[f"{prefix}.conv1.weight"] = (64, 3, 7, 7)
    _batch_norm(out, longs, f"{prefix}.bn1", 64, frozen)
    in_channels = 64
    for stage, (channels, blocks) in enumerate(zip((64, 128, 256), RESNET_BLOCKS[config.resnet_type]), 1):
        for block in range(blocks):
            name = f"{prefix}.layer{stage}.{block}"
            out[f"{name}.conv1.weight"] = (channels, in_channels, 1, 1)
            out[f"{name}.conv2.weight"] = (channels, channels, 3, 3)
            out[f"{name}.conv3.weight"] = (channels * 4, channels, 1, 1)
            for index, width in ((1, channels), (2, channels), (3, channels * 4)):
                _batch_norm(out, longs, f"{name}.bn{index}", width, frozen)
            if block == 0:  # every OFA stage changes width or stride in its first block
                out[f"{name}.downsample.0.weight"] = (channels * 4, in_channels, 1, 1)
                _batch_norm(out, longs, f"{name}.downsample.1", channels * 4, frozen)
            in_channels = channels * 4


def _attention(out: dict, name: str, dim: int, kv_dim: int, heads: int, config) -> None:
    for proj, fan_in in (("k_proj", kv_dim), ("v_proj", kv_dim), ("q_proj", dim), ("out_proj", dim)):
        _linear(out, f"{name}.{proj}", fan_in, dim)
    if config.scale_heads:
        out[f"{name}.c_attn"] = (heads,)


def _prompt_encoder(out: dict, prefix: str, side: str, config) -> None:
    if not getattr(config, f"{side}_prompt", False):
        return
    dim, layers = getattr(config, f"{side}_embed_dim"), getattr(config, f"{side}_layers")
    length, width = getattr(config, f"{side}_prompt_length"), layers * 2 * dim
    if getattr(config, f"{side}_prompt_projection"):
        proj = getattr(config, f"{side}_prompt_dim")
        out[f"{prefix}.prompt_encoder.embedding.weight"] = (length, dim)
        _linear(out, f"{prefix}.prompt_encoder.trans.0", dim, proj)
        _linear(out, f"{prefix}.prompt_encoder.trans.2", proj, width)
    else:
        out[f"{prefix}.prompt_encoder.embedding.weight"] = (length, width)


def _layer(out: dict, name: str, side: str, config) -> None:
    dim, ffn = getattr(config, f"{side}_embed_dim"), getattr(config, f"{side}_ffn_embed_dim")
    heads = getattr(config, f"{side}_attention_heads")
    _attention(out, f"{name}.self_attn", dim, dim, heads, config)
    _layer_norm(out, f"{name}.self_attn_layer_norm", dim)
    if config.scale_attn:
        _layer_norm(out, f"{name}.self_attn_mid_layer_norm", dim)
    if side == "decoder":
        _attention(out, f"{name}.cross_attn", dim, config.encoder_embed_dim, heads, config)
        _layer_norm(out, f"{name}.cross_attn_layer_norm", dim)
        if config.scale_attn:
            _layer_norm(out, f"{name}.cross_attn_mid_layer_norm", dim)
    _linear(out, f"{name}.fc1", dim, ffn)
    _linear(out, f"{name}.fc2", ffn, dim)
    if config.scale_fc:
        _layer_norm(out, f"{name}.ffn_layer_norm", ffn)
    if config.scale_resids:
        out[f"{name}.w_resid"] = (dim,)
    _layer_norm(out, f"{name}.final_layer_norm", dim)
    if getattr(config, "adapter", False):
        _linear(out, f"{name}.adapter.down_proj", dim, config.adapter_dim)
        _linear(out, f"{name}.adapter.up_proj", config.adapter_dim, dim)


def _side(out: dict, side: str, config) -> None:
    dim, heads, layers = (getattr(config, f"{side}_{k}") for k in ("embed_dim", "attention_heads", "layers"))
    image_rows = config.image_bucket_size**2 + 1
    image_buckets = (2 * config.image_bucket_size - 1) ** 2 + 3
    out[f"{side}.embed_tokens.weight"] = (config.vocab_size, dim)
    if config.layernorm_embedding:
        _layer_norm(out, f"{side}.layernorm_embedding", dim)
    positions = config.max_source_positions if side == "encoder" else config.max_target_positions
    out[f"{side}.embed_positions.weight"] = (positions + 2, dim)
    out[f"{side}.embed_image_positions.weight"] = (image_rows, dim)
    _layer_norm(out, f"{side}.pos_ln", dim)
    _layer_norm(out, f"{side}.image_pos_ln", dim)
    pos_projections = ("pos_q_linear", "pos_k_linear") if side == "encoder" else (
        "self_pos_q_linear", "self_pos_k_linear", "cross_pos_q_linear", "cross_pos_k_linear")
    for proj in pos_projections:
        _linear(out, f"{side}.{proj}", dim, dim)
    for index in range(layers):
        _layer(out, f"{side}.layers.{index}", side, config)
        out[f"{side}.token_rel_pos_table_list.{index}.weight"] = (2 * config.token_bucket_size - 1, heads)
        out[f"{side}.image_rel_pos_table_list.{index}.weight"] = (image_buckets, heads)
    if getattr(config, f"{side}_normalize_before"):
        _layer_norm(out, f"{side}.layer_norm", dim)
    _prompt_encoder(out, side, side, config)


def ofa_parameter_shapes(config, with_output_projection: bool = True) -> tuple[dict[str, tuple], set[str]]:
    """{name: shape} of OFAForConditionalGeneration's state dict (OFAModel's without the output projection), and
    the names of its integer buffers (everything else is float32)."""
    out: dict[str, tuple] = {}
    longs: set[str] = set()
    _side(out, "encoder", config)
    if config.add_type_embedding:
        out["encoder.type_embedding.weight"] = (2, config.encoder_embed_dim)
    _resnet(out, longs, "encoder.embed_images", config)
    _linear(out, "encoder.image_proj", RESNET_OUTPUT_CHANNELS, config.encoder_embed_dim)
    if config.patch_layernorm_embedding:
        _layer_norm(out, "encoder.patch_layernorm_embedding", config.encoder_embed_dim)
    _side(out, "decoder", config)
    if config.code_layernorm_embedding:
        _layer_norm(out, "decoder.code_layernorm_embedding", config.decoder_embed_dim)
    dim = config.decoder_embed_dim
    output_dim = config.decoder_output_dim or dim
    if output_dim != dim:
        _linear(out, "decoder.project_out_dim", dim, output_dim, bias=False)
    if with_output_projection:
        _linear(out, "decoder.output_projection", output_dim, config.vocab_size, bias=False)
    return out, longs


def ofa_declared_ties(config, with_output_projection: bool = True) -> dict[str, str]:
    """The ties the model declares ({target: source}), as OFAPreTrainedModel._declare_ties states them."""
    ties = {}
    if config.share_all_embeddings:
        ties["decoder.embed_tokens.weight"] = "encoder.embed_tokens.weight"
    if with_output_projection and config.share_decoder_input_output_embed:
        ties["decoder.output_projection.weight"] = (
            "encoder.embed_tokens.weight" if config.share_all_embeddings else "decoder.embed_tokens.weight")
    return ties


def ofa_inventory(config):
    """The pipeline's TargetInventory of OFAForConditionalGeneration for `config`, without building the model."""
    from hfport.converters.pipeline import TargetInventory

    shapes, longs = ofa_parameter_shapes(config)
    dtypes = {name: torch.int64 if name in longs else torch.float32 for name in shapes}
    return TargetInventory(shapes, dtypes, ofa_declared_ties(config))
