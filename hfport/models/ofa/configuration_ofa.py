"""Configuration of OFA (One For All) encoder-decoder models.

Field names follow the fairseq argument names stored in an OFA checkpoint's ``cfg["model"]`` so that a converter can
copy them one to one. Defaults are those of OFA's ``ofa_large`` architecture.
"""

from transformers import PreTrainedConfig

# OFA's ResNet variants: number of Bottleneck blocks in each of the three stages (OFA has no 4th stage).
RESNET_LAYERS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}

# the prompt types OFA's code can build and run (its command line accepts only "prefix")
PROMPT_TYPES = ("prefix",)

# fairseq options that change the network but that this port does not implement.
UNSUPPORTED_FLAGS = (
    "cross_self_attention",
    "no_cross_attention",
    "tie_adaptive_weights",
)


class OFAConfig(PreTrainedConfig):
    r"""
    Configuration of [`OFAModel`] / [`OFAForConditionalGeneration`].

    Structural switches (all fairseq names): `encoder_normalize_before` / `decoder_normalize_before` (pre-LN layers
    plus a final LayerNorm), `layernorm_embedding`, `patch_layernorm_embedding`, `code_layernorm_embedding`,
    `add_type_embedding`, `scale_attn` (LayerNorm after each attention), `scale_fc` (LayerNorm inside the FFN),
    `scale_heads` (learned per-head scale `c_attn`), `scale_resids` (learned residual scale `w_resid`),
    `entangle_position_embedding` (encoder adds absolute positions to its inputs), `disable_entangle` (the decoder adds
    its absolute positions to its inputs unless this is set), `share_all_embeddings`,
    `share_decoder_input_output_embed`, `resnet_type`, `sync_bn` (BatchNorm eps 1e-3), `freeze_resnet` (frozen
    BatchNorm without `num_batches_tracked`), `token_bucket_size`, `image_bucket_size`, `attn_scale_factor`,
    `code_image_size`, `interpolate_position` / `orig_patch_image_size`, `decoder_output_dim`.

    Parameter-efficient fine-tuning (OFA's `--encoder-prompt` / `--decoder-prompt` / `--adapter`):
    `encoder_prompt` / `decoder_prompt` prepend `*_prompt_length` learned key/value vectors to every self-attention
    of that side (type `prefix`; with `*_prompt_projection` they come from an embedding of width `*_embed_dim`
    through a `*_prompt_dim`-wide two-layer MLP); `adapter` adds a bottleneck MLP of width `adapter_dim` after the
    FFN of every layer.
    """

    model_type = "ofa"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "encoder_embed_dim",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "decoder_layers",
        "d_model": "encoder_embed_dim",
    }

    vocab_size: int = 59457
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_embed_dim: int = 1024
    decoder_embed_dim: int = 1024
    encoder_ffn_embed_dim: int = 4096
    decoder_ffn_embed_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    decoder_output_dim: int | None = None
    activation_fn: str = "gelu"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    relu_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    no_scale_embedding: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    resnet_type: str = "resnet152"
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0
    scale_attn: bool = False
    scale_fc: bool = False
    scale_heads: bool = False
    scale_resids: bool = False
    entangle_position_embedding: bool = False
    disable_entangle: bool = False
    share_all_embeddings: bool = True
    share_decoder_input_output_embed: bool = True
    code_image_size: int = 128
    sync_bn: bool = False
    freeze_resnet: bool = False
    interpolate_position: bool = False
    orig_patch_image_size: int = 256
    encoder_prompt: bool = False
    encoder_prompt_type: str = "prefix"
    encoder_prompt_length: int = 100
    encoder_prompt_projection: bool = False
    encoder_prompt_dim: int | None = None
    decoder_prompt: bool = False
    decoder_prompt_type: str = "prefix"
    decoder_prompt_length: int = 100
    decoder_prompt_projection: bool = False
    decoder_prompt_dim: int | None = None
    adapter: bool = False
    adapter_dim: int = 200
    init_std: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 0
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        self.complete_ofa_options()
        super().__post_init__(**kwargs)
        self.validate_ofa_options()

    # complete_ofa_options and validate_ofa_options use only the instance and this module's constants: hfport's
    # converter runs these same two functions (parsed from this file) without importing transformers
    def complete_ofa_options(self) -> None:
        if self.share_all_embeddings:
            # fairseq's build_model forces this whenever all embeddings are shared
            self.share_decoder_input_output_embed = True
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(self.share_decoder_input_output_embed)
        if self.decoder_output_dim is None:
            self.decoder_output_dim = self.decoder_embed_dim

    def validate_ofa_options(self) -> None:
        if self.resnet_type not in RESNET_LAYERS:
            raise ValueError(
                f"resnet_type {self.resnet_type!r} is not supported (expected one of {sorted(RESNET_LAYERS)})"
            )
        if self.share_all_embeddings and self.encoder_embed_dim != self.decoder_embed_dim:
            raise ValueError("share_all_embeddings requires encoder_embed_dim == decoder_embed_dim")
        for side in ("encoder", "decoder"):
            if not getattr(self, f"{side}_prompt"):
                continue
            kind = getattr(self, f"{side}_prompt_type")
            if kind not in PROMPT_TYPES:
                raise ValueError(f"{side}_prompt_type {kind!r} is not supported (OFA builds only {PROMPT_TYPES})")
            if getattr(self, f"{side}_prompt_length") < 1:
                raise ValueError(f"{side}_prompt_length must be positive")
            if getattr(self, f"{side}_prompt_projection") and not getattr(self, f"{side}_prompt_dim"):
                raise ValueError(f"{side}_prompt_projection needs {side}_prompt_dim")
        for flag in UNSUPPORTED_FLAGS:
            if getattr(self, flag, False):
                raise ValueError(f"the OFA option {flag!r} is not supported by this port")

    @property
    def activation_dropout_rate(self) -> float:
        # fairseq falls back to relu_dropout when activation_dropout is 0
        return float(self.activation_dropout or self.relu_dropout or 0.0)


__all__ = ["OFAConfig", "PROMPT_TYPES", "RESNET_LAYERS"]
