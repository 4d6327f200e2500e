"""METER configuration: a vision tower, a text tower and the co-attention fusion stack on top."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# METER's own names for its image encoders -> transformers model types.
VISION_MODEL_TYPES = {"clip": "clip_vision_model", "clip_vision_model": "clip_vision_model", "swin": "swin"}
TEXT_MODEL_TYPES = ("roberta", "bert")


class MeterConfig(PreTrainedConfig):
    r"""
    Configuration of a METER model (Dou et al., "An Empirical Study of Training End-to-End Vision-and-Language
    Transformers", CVPR 2022).

    Args:
        vision_config (`dict` or `CLIPVisionConfig` / `SwinConfig`):
            The image encoder. A dict is resolved by its `model_type` (`clip_vision_model` or `swin`), or by
            `vision_model_type` when it has none. For CLIP, `num_hidden_layers` is the number of blocks present in
            the checkpoint (METER drops the last one of the original CLIP).
        text_config (`dict` or `RobertaConfig` / `BertConfig`):
            The text encoder (the pretrained model METER was built from, e.g. `roberta-base`).
        vision_model_type (`str`, *optional*):
            `"clip"` or `"swin"`; only needed when `vision_config` is a dict without `model_type`.
        hidden_size (`int`): width of the co-attention (fusion) layers; METER's `hidden_size`.
        num_attention_heads (`int`): heads of the fusion layers; METER's `num_heads`.
        num_top_layer (`int`): co-attention layers per stream.
        intermediate_size (`int`): feed-forward width of the fusion layers (`hidden_size * mlp_ratio`).
        hidden_act (`str`): activation of the fusion layers and of the MLM head transform.
        layer_norm_eps (`float`): LayerNorm eps of the fusion layers and the MLM head (1e-12 in METER, whatever the
            text tower uses).
        num_image_token_types (`int`): rows of `token_type_embeddings` (row 0 = text, then one per image slot):
            2, or 3 for NLVR2.
        input_image_embed_size (`int`, *optional*): width of the vision tower output (derived when omitted).
        input_text_embed_size (`int`, *optional*): width of the text tower output (derived when omitted).
        vocab_size (`int`, *optional*): output size of the MLM head (defaults to the text tower's vocabulary).
        max_text_len (`int`): the text length METER was trained with (used by processors).
        image_size (`int`, *optional*): the image resolution of the checkpoint (defaults to the vision tower's).
        use_rank_output (`bool`): whether `MeterForImageTextMatching` carries the retrieval `rank_output` head.
    """

    model_type = "meter"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="roberta"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_model_type: str | None = None
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_top_layer: int = 6
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    num_image_token_types: int = 2
    input_image_embed_size: int | None = None
    input_text_embed_size: int | None = None
    vocab_size: int | None = None
    max_text_len: int = 40
    image_size: int | None = None
    use_rank_output: bool = False
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.vision_model_type is not None:
            if self.vision_model_type not in VISION_MODEL_TYPES:
                raise ValueError(
                    f"vision_model_type must be one of {sorted(VISION_MODEL_TYPES)}, got {self.vision_model_type!r}"
                )
            if isinstance(self.vision_config, dict) and "model_type" not in self.vision_config:
                self.vision_config = {**self.vision_config, "model_type": VISION_MODEL_TYPES[self.vision_model_type]}
        super().__post_init__(**kwargs)

        if self.vision_config.model_type not in ("clip_vision_model", "swin"):
            raise ValueError(
                f"METER's image encoder is CLIP or Swin, got vision_config.model_type={self.vision_config.model_type!r}"
            )
        if self.text_config.model_type not in TEXT_MODEL_TYPES:
            raise ValueError(
                f"METER's text encoder is RoBERTa or BERT, got text_config.model_type={self.text_config.model_type!r}"
            )
        self.vision_model_type = "swin" if self.vision_config.model_type == "swin" else "clip"
        if self.input_image_embed_size is None:
            self.input_image_embed_size = self.vision_output_size
        if self.input_text_embed_size is None:
            self.input_text_embed_size = self.text_config.hidden_size
        if self.image_size is None:
            self.image_size = self.vision_config.image_size
        if self.vocab_size is None:
            self.vocab_size = self.text_config.vocab_size

    @property
    def vision_output_size(self) -> int:
        vision = self.vision_config
        if vision.model_type == "swin":
            return int(vision.embed_dim * 2 ** (len(vision.depths) - 1))
        return vision.hidden_size


__all__ = ["MeterConfig"]
