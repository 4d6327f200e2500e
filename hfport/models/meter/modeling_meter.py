"""METER (Dou et al., CVPR 2022) on transformers: CLIP/Swin + RoBERTa/BERT towers and a co-attention fusion stack."""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel, CLIPVisionModel, PreTrainedModel, RobertaModel, SwinModel
from transformers.models.bert.modeling_bert import BertLayer, BertPredictionHeadTransform
from transformers.utils import ModelOutput

from .configuration_meter import MeterConfig

# METER builds its additive masks with transformers 4.6's constant.
MASKED_SCORE = -10000.0


# ---------------------------------------------------------------------------------------------------- outputs


@dataclass
class MeterModelOutput(ModelOutput):
    r"""
    text_feats (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
        Text stream after the last co-attention layer.
    image_feats (`torch.FloatTensor` of shape `(batch_size, image_tokens, hidden_size)`):
        Image stream after the last co-attention layer.
    cls_feats (`torch.FloatTensor` of shape `(batch_size, 2 * hidden_size)`):
        The pooled pair representation, `cat(text_pooler(text token 0), image_pooler(image token 0 or mean))`.
    The remaining fields are filled only with `output_hidden_states=True`: every intermediate state, batch-first, in
    the order METER computes them (tower embeddings, each tower layer, tower outputs, fusion inputs, each fusion layer).
    """

    text_feats: torch.FloatTensor | None = None
    image_feats: torch.FloatTensor | None = None
    cls_feats: torch.FloatTensor | None = None
    text_embeddings: torch.FloatTensor | None = None
    text_encoder_layers: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_output: torch.FloatTensor | None = None
    image_embeddings: torch.FloatTensor | None = None
    image_encoder_layers: tuple[torch.FloatTensor, ...] | None = None
    image_encoder_output: torch.FloatTensor | None = None
    fusion_text_input: torch.FloatTensor | None = None
    fusion_image_input: torch.FloatTensor | None = None
    fusion_text_layers: tuple[torch.FloatTensor, ...] | None = None
    fusion_image_layers: tuple[torch.FloatTensor, ...] | None = None

    @property
    def pooler_output(self) -> torch.FloatTensor | None:
        return self.cls_feats


@dataclass
class MeterClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): returned when `labels` is given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`).
    rank_scores (`torch.FloatTensor` of shape `(batch_size, 1)`, *optional*): retrieval score (`rank_output` head).
    meter_outputs (`MeterModelOutput`): the base model's outputs.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rank_scores: torch.FloatTensor | None = None
    meter_outputs: MeterModelOutput | None = None


@dataclass
class MeterMaskedLMOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): masked-LM cross-entropy, returned when `labels` is given.
    logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`).
    meter_outputs (`MeterModelOutput`): the base model's outputs.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    meter_outputs: MeterModelOutput | None = None


@dataclass
class MeterForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): sum of the MLM and ITM losses that were given labels.
    mlm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`).
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`).
    meter_outputs (`MeterModelOutput`): the base model's outputs.
    """

    loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    meter_outputs: MeterModelOutput | None = None


@dataclass
class MeterVisualReasoningOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): returned when `labels` is given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`).
    meter_outputs_0, meter_outputs_1 (`MeterModelOutput`): the passes over the first (token type 1) and second
        (token type 2) image.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    meter_outputs_0: MeterModelOutput | None = None
    meter_outputs_1: MeterModelOutput | None = None


# ---------------------------------------------------------------------------------------------------- helpers


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, keys] 1/0 mask -> [batch, 1, 1, keys] scores to add (0 to keep, METER's -10000 to drop)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASKED_SCORE


def fusion_layer_config(config: MeterConfig) -> BertConfig:
    """The BertConfig of one co-attention layer: self-attention, cross-attention, feed-forward."""
    fusion = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        is_decoder=True,  # transformers only builds the cross-attention block for decoders ...
        add_cross_attention=True,
    )
    fusion._attn_implementation_internal = config._attn_implementation
    return fusion


def make_fusion_layer(fusion_config: BertConfig) -> BertLayer:
    layer = BertLayer(fusion_config)
    # ... but METER's self-attention is bidirectional: never let SDPA fall back to a causal mask.
    layer.attention.self.is_causal = False
    return layer


# ---------------------------------------------------------------------------------------------------- modules


class MeterPooler(nn.Module):
    """tanh(Linear) over one pooled token per sample."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, pooled_token: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(pooled_token))


class MeterClassifier(nn.Sequential):
    """METER's task head: Linear, LayerNorm, GELU, Linear (parameter keys 0, 1 and 3)."""

    def __init__(self, in_features: int, hidden_features: int, num_labels: int):
        super().__init__(
            nn.Linear(in_features, hidden_features),
            nn.LayerNorm(hidden_features),
            nn.GELU(),
            nn.Linear(hidden_features, num_labels),
        )


class MeterITMHead(nn.Module):
    def __init__(self, in_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, 2)

    def forward(self, cls_feats: torch.Tensor) -> torch.Tensor:
        return self.fc(cls_feats)


class MeterMLMHead(nn.Module):
    """Transform (dense, act, LayerNorm) then a decoder with its own bias; not tied to the word embeddings."""

    def __init__(self, config: MeterConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(fusion_layer_config(config))
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, text_feats: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(text_feats)) + self.bias


# ---------------------------------------------------------------------------------------------------- base classes


class MeterPreTrainedModel(PreTrainedModel):
    config_class = MeterConfig
    config: MeterConfig
    base_model_prefix = "meter"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    # every tower and fusion layer is a transformers GradientCheckpointingLayer (BertLayer, RobertaLayer,
    # CLIPEncoderLayer, SwinStage), called with its hidden states positionally
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the fusion and text layers get explicit additive 4-D masks
    _supports_flex_attn = False
    _supports_attention_backend = False
    _no_split_modules = ["BertLayer", "RobertaLayer", "CLIPEncoderLayer", "SwinStage"]

    def __init__(self, config: MeterConfig, *inputs, **kwargs):
        if type(config) is not self.config_class and issubclass(self.config_class, type(config)):
            # a head built from a plain MeterConfig keeps a copy under its own config class ("folder configs"
            # below), so that what it saves loads back through the Auto classes
            config = copy.copy(config)
            config.__class__ = self.config_class
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MeterMLMHead):
            module.bias.zero_()


class MeterModel(MeterPreTrainedModel):
    """
    The bare METER model: both towers, the projections into the fusion width, `num_top_layer` co-attention layers
    per stream, and the two poolers. Returns METER's `text_feats`, `image_feats` and `cls_feats`.
    """

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        if config.vision_config.model_type == "swin":
            self.vision_model = SwinModel(config.vision_config, add_pooling_layer=False)
        else:
            self.vision_model = CLIPVisionModel(config.vision_config)
        text_model_class = RobertaModel if config.text_config.model_type == "roberta" else BertModel
        # the pooler is unused by METER but stored in its checkpoints
        self.text_model = text_model_class(config.text_config, add_pooling_layer=True)

        hidden_size = config.hidden_size
        self.cross_modal_text_transform = nn.Linear(config.input_text_embed_size, hidden_size)
        self.cross_modal_image_transform = nn.Linear(config.input_image_embed_size, hidden_size)
        self.token_type_embeddings = nn.Embedding(config.num_image_token_types, hidden_size)

        self.fusion_config = fusion_layer_config(config)
        self.cross_modal_image_layers = nn.ModuleList(
            [make_fusion_layer(self.fusion_config) for _ in range(config.num_top_layer)]
        )
        self.cross_modal_text_layers = nn.ModuleList(
            [make_fusion_layer(self.fusion_config) for _ in range(config.num_top_layer)]
        )
        self.cross_modal_image_pooler = MeterPooler(hidden_size)
        self.cross_modal_text_pooler = MeterPooler(hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @property
    def is_swin(self) -> bool:
        return self.config.vision_config.model_type == "swin"

    def encode_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Text tower with METER's additive mask; returns the embeddings and each layer's output."""
        hidden_states = self.text_model.embeddings(input_ids=input_ids)
        embeddings, layers = hidden_states, []
        for layer in self.text_model.encoder.layer:
            hidden_states = layer(hidden_states, attention_mask=text_mask)
            layers.append(hidden_states)
        return embeddings, layers

    def encode_image(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Vision tower; returns the embeddings, each block (CLIP) or stage (Swin) output, and the final states."""
        vision = self.vision_model
        if interpolate_pos_encoding is None:
            trained_size = self.config.vision_config.image_size
            trained_size = tuple(trained_size) if isinstance(trained_size, (list, tuple)) else (trained_size,) * 2
            interpolate_pos_encoding = tuple(pixel_values.shape[-2:]) != trained_size
        pixel_values = pixel_values.to(self.cross_modal_image_transform.weight.dtype)
        layers = []
        if self.is_swin:
            hidden_states, dimensions = vision.embeddings(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
            )
            embeddings = hidden_states
            for stage in vision.encoder.layers:
                hidden_states = stage(hidden_states, dimensions)[0]
                if stage.downsample is not None:
                    dimensions = ((dimensions[0] + 1) // 2, (dimensions[1] + 1) // 2)
                layers.append(hidden_states)
            return embeddings, layers, vision.layernorm(hidden_states)

        hidden_states = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = vision.pre_layrnorm(hidden_states)
        embeddings = hidden_states
        for block in vision.encoder.layers:
            hidden_states = block(hidden_states, None)
            layers.append(hidden_states)
        # METER normalises every token, not only the class token as CLIPVisionModel's pooler does
        return embeddings, layers, vision.post_layernorm(hidden_states)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_token_type_idx: int = 1,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> MeterModelOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): token ids of the text tower.
        attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): 1 for real tokens.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): preprocessed images.
        image_token_type_idx (`int`): row of `token_type_embeddings` added to the image stream (1; NLVR2 uses 1, 2).
        interpolate_pos_encoding (`bool`, *optional*): resize CLIP's position table to the input resolution;
            by default whenever the input size differs from `vision_config.image_size`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None or pixel_values is None:
            raise ValueError("MeterModel needs both input_ids and pixel_values")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.fusion_config._attn_implementation_internal = self.config._attn_implementation

        dtype = self.cross_modal_text_transform.weight.dtype
        text_mask = additive_attention_mask(attention_mask, dtype)
        text_embeddings, text_layers = self.encode_text(input_ids, text_mask)
        text_output = text_layers[-1] if text_layers else text_embeddings
        image_embeddings, image_layers, image_output = self.encode_image(pixel_values, interpolate_pos_encoding)

        text_states = self.cross_modal_text_transform(text_output)
        image_states = self.cross_modal_image_transform(image_output)
        batch_size, image_length = image_states.shape[:2]
        image_attention_mask = torch.ones(batch_size, image_length, dtype=torch.long, device=image_states.device)
        # an explicit all-zeros mask: with none, SDPA would make these decoder-built layers causal
        image_mask = additive_attention_mask(image_attention_mask, dtype)

        text_states = text_states + self.token_type_embeddings(torch.zeros_like(attention_mask))
        image_states = image_states + self.token_type_embeddings(
            torch.full_like(image_attention_mask, image_token_type_idx)
        )
        fusion_text_input, fusion_image_input = text_states, image_states

        fusion_text_layers, fusion_image_layers = [], []
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            # both streams read the previous layer's states of the other stream
            new_text_states = text_layer(
                text_states, text_mask, encoder_hidden_states=image_states, encoder_attention_mask=image_mask
            )
            new_image_states = image_layer(
                image_states, image_mask, encoder_hidden_states=text_states, encoder_attention_mask=text_mask
            )
            text_states, image_states = new_text_states, new_image_states
            fusion_text_layers.append(text_states)
            fusion_image_layers.append(image_states)

        image_summary = image_states.mean(dim=1) if self.is_swin else image_states[:, 0]
        cls_feats = torch.cat(
            [self.cross_modal_text_pooler(text_states[:, 0]), self.cross_modal_image_pooler(image_summary)], dim=-1
        )

        output = MeterModelOutput(text_feats=text_states, image_feats=image_states, cls_feats=cls_feats)
        if output_hidden_states:
            output.text_embeddings = text_embeddings
            output.text_encoder_layers = tuple(text_layers)
            output.text_encoder_output = text_output
            output.image_embeddings = image_embeddings
            output.image_encoder_layers = tuple(image_layers)
            output.image_encoder_output = image_output
            output.fusion_text_input = fusion_text_input
            output.fusion_image_input = fusion_image_input
            output.fusion_text_layers = tuple(fusion_text_layers)
            output.fusion_image_layers = tuple(fusion_image_layers)
        return output if return_dict else output.to_tuple()


# ---------------------------------------------------------------------------------------------------- folder configs
# transformers' Auto classes remember, for the whole process, one model class per config *class*: the first folder
# loaded registers its class and every later folder with the same config class gets that one. Remote code is cached
# by folder name plus a hash of the file and its relative imports. So every head has a config class of its own,
# defined here in the modeling file, and a converted folder names it (auto_map "AutoConfig"): the registry key then
# stands for the head and for this file's content, and two folders named alike never share an entry unless they
# hold the same head and the same code.


class MeterForQuestionAnsweringConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForQuestionAnswering`."""


class MeterForVisualEntailmentConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForVisualEntailment`."""


class MeterForVisualReasoningConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForVisualReasoning`."""


class MeterForImageTextMatchingConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForImageTextMatching`."""


class MeterForMaskedLMConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForMaskedLM`."""


class MeterForPreTrainingConfig(MeterConfig):
    """`MeterConfig` of a folder whose model is `MeterForPreTraining`."""


# ---------------------------------------------------------------------------------------------------- heads


def _finish(output: ModelOutput, return_dict: bool | None, config: MeterConfig):
    return_dict = return_dict if return_dict is not None else config.return_dict
    return output if return_dict else output.to_tuple()


class MeterForQuestionAnswering(MeterPreTrainedModel):
    """METER with its VQAv2 head (`vqa_classifier`) over `cls_feats`; `config.num_labels` answers."""

    config_class = MeterForQuestionAnsweringConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.vqa_classifier = MeterClassifier(2 * config.hidden_size, 2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterClassifierOutput | tuple:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*): VQA soft scores; the loss is
            METER's binary cross-entropy scaled by the number of answers.
        """
        outputs = self.meter(
            input_ids, attention_mask, pixel_values, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.vqa_classifier(outputs.cls_feats)
        loss = None
        if labels is not None:
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * labels.shape[1]
        output = MeterClassifierOutput(loss=loss, logits=logits, meter_outputs=outputs)
        return _finish(output, return_dict, self.config)


class MeterForVisualEntailment(MeterPreTrainedModel):
    """METER with its SNLI-VE head (`snli_classifier`, 3 labels) over `cls_feats`."""

    config_class = MeterForVisualEntailmentConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.snli_classifier = MeterClassifier(2 * config.hidden_size, 2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterClassifierOutput | tuple:
        outputs = self.meter(
            input_ids, attention_mask, pixel_values, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.snli_classifier(outputs.cls_feats)
        loss = F.cross_entropy(logits, labels.view(-1)) if labels is not None else None
        output = MeterClassifierOutput(loss=loss, logits=logits, meter_outputs=outputs)
        return _finish(output, return_dict, self.config)


class MeterForVisualReasoning(MeterPreTrainedModel):
    """
    METER with its NLVR2 head: two images per text, encoded in two passes with image token types 1 and 2, then
    `nlvr2_classifier(cat(cls_feats_0, cls_feats_1))`. Needs `config.num_image_token_types == 3`.
    """

    config_class = MeterForVisualReasoningConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.nlvr2_classifier = MeterClassifier(4 * config.hidden_size, 2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterVisualReasoningOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 2, 3, height, width)`): the image pair.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 when the statement is true.
        """
        if pixel_values is None or pixel_values.dim() != 5 or pixel_values.shape[1] != 2:
            raise ValueError("MeterForVisualReasoning expects pixel_values shaped [batch, 2, 3, height, width]")
        passes = [
            self.meter(
                input_ids,
                attention_mask,
                pixel_values[:, index],
                image_token_type_idx=index + 1,
                output_hidden_states=output_hidden_states,
                **kwargs,
            )
            for index in range(2)
        ]
        logits = self.nlvr2_classifier(torch.cat([passes[0].cls_feats, passes[1].cls_feats], dim=-1))
        loss = F.cross_entropy(logits, labels.view(-1)) if labels is not None else None
        output = MeterVisualReasoningOutput(
            loss=loss, logits=logits, meter_outputs_0=passes[0], meter_outputs_1=passes[1]
        )
        return _finish(output, return_dict, self.config)


class MeterForImageTextMatching(MeterPreTrainedModel):
    """
    METER with its image-text matching head (`itm_score.fc`, 2 classes: 1 = match) and, when
    `config.use_rank_output`, the retrieval head `rank_output` (one score per pair; in METER's retrieval checkpoints
    it equals `itm_score.fc` row 1).
    """

    config_class = MeterForImageTextMatchingConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.itm_score = MeterITMHead(2 * config.hidden_size)
        self.rank_output = nn.Linear(2 * config.hidden_size, 1) if config.use_rank_output else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterClassifierOutput | tuple:
        r"""labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 for matching pairs, 0 otherwise."""
        outputs = self.meter(
            input_ids, attention_mask, pixel_values, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.itm_score(outputs.cls_feats)
        rank_scores = self.rank_output(outputs.cls_feats) if self.rank_output is not None else None
        loss = F.cross_entropy(logits, labels.view(-1)) if labels is not None else None
        output = MeterClassifierOutput(loss=loss, logits=logits, rank_scores=rank_scores, meter_outputs=outputs)
        return _finish(output, return_dict, self.config)


class MeterForMaskedLM(MeterPreTrainedModel):
    """METER with its masked-language-modelling head (`mlm_score`) over `text_feats`."""

    config_class = MeterForMaskedLMConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.mlm_score = MeterMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_score.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterMaskedLMOutput | tuple:
        r"""labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): targets, -100 = ignored."""
        outputs = self.meter(
            input_ids, attention_mask, pixel_values, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.mlm_score(outputs.text_feats)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        output = MeterMaskedLMOutput(loss=loss, logits=logits, meter_outputs=outputs)
        return _finish(output, return_dict, self.config)


class MeterForPreTraining(MeterPreTrainedModel):
    """METER with both pre-training heads: masked language modelling (`mlm_score`) and image-text matching."""

    config_class = MeterForPreTrainingConfig

    def __init__(self, config: MeterConfig):
        super().__init__(config)
        self.meter = MeterModel(self.config)
        self.mlm_score = MeterMLMHead(config)
        self.itm_score = MeterITMHead(2 * config.hidden_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_score.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        itm_labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MeterForPreTrainingOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): MLM targets, -100 = ignored.
        itm_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 for matching pairs.
        """
        outputs = self.meter(
            input_ids, attention_mask, pixel_values, output_hidden_states=output_hidden_states, **kwargs
        )
        mlm_logits = self.mlm_score(outputs.text_feats)
        itm_logits = self.itm_score(outputs.cls_feats)
        losses = []
        if labels is not None:
            losses.append(F.cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]), labels.reshape(-1)))
        if itm_labels is not None:
            losses.append(F.cross_entropy(itm_logits, itm_labels.view(-1)))
        loss = sum(losses) if losses else None
        output = MeterForPreTrainingOutput(
            loss=loss, mlm_logits=mlm_logits, itm_logits=itm_logits, meter_outputs=outputs
        )
        return _finish(output, return_dict, self.config)


__all__ = [
    "MeterForQuestionAnsweringConfig",
    "MeterForVisualEntailmentConfig",
    "MeterForVisualReasoningConfig",
    "MeterForImageTextMatchingConfig",
    "MeterForMaskedLMConfig",
    "MeterForPreTrainingConfig",
    "MeterPreTrainedModel",
    "MeterModel",
    "MeterForQuestionAnswering",
    "MeterForImageTextMatching",
    "MeterForMaskedLM",
    "MeterForPreTraining",
    "MeterForVisualReasoning",
    "MeterForVisualEntailment",
]
