"""OFA (One For All) unified multimodal encoder-decoder for transformers 5.

A reimplementation of the upstream OFA fairseq model (OFA-Sys/OFA, ``models/ofa``). Parameter names follow the
published HF-style OFA layout, so ``state_dict()`` keys are ``encoder.*`` and ``decoder.*``.

The encoder reads image patches (a 3-stage ResNet, stride 16) followed by text tokens; every attention adds an
absolute-position bias (a projection of LayerNormed position embeddings) and a bucketed relative-position bias.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_ofa import RESNET_LAYERS, OFAConfig

logger = logging.get_logger(__name__)

# OFA builds its relative-position bucket tables for this many positions, whatever max_*_positions says.
BUCKET_TABLE_POSITIONS = 1024
# OFA's decoder pads its image-code position table with this many entries pointing at position 1024.
CODE_POSITION_PADDING = 769
RESNET_OUTPUT_CHANNELS = 1024
# OFA applies this dropout to its prompt key/values while training (a fixed nn.Dropout(0.2) in its encoder/decoder)
PROMPT_DROPOUT = 0.2


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def make_token_bucket_position(bucket_size: int, max_position: int = BUCKET_TABLE_POSITIONS) -> torch.Tensor:
    """Bucket id of every (query, key) pair of text positions, shifted to start at 0.

    Distances up to half the bucket count keep a bucket of their own; longer ones share buckets spaced
    logarithmically up to ``max_position``.
    """
    half = bucket_size // 2
    positions = torch.arange(max_position)
    distance = positions.view(-1, 1) - positions.view(1, -1)
    magnitude = distance.abs()
    # the log formula is only used beyond `half`; clamping below it keeps the log finite elsewhere
    clamped = torch.where(magnitude < half, torch.full_like(magnitude, half - 1), magnitude)
    scale = math.log((max_position - 1) / half)
    far = half + torch.ceil(torch.log(clamped / half) / scale * (half - 1))
    bucket = torch.where(magnitude <= half, distance, far.int() * torch.sign(distance))
    return bucket.long() + bucket_size - 1


def make_image_bucket_position(bucket_size: int, num_relative_distance: int) -> torch.Tensor:
    """Bucket id of every pair of patches on a ``bucket_size`` x ``bucket_size`` grid.

    The row offset and the column offset of a pair fold into one index; row/column 0 of the table belong to an
    extra (unused) leading position and get the last three ids.
    """
    span = 2 * bucket_size - 1
    rows = torch.arange(bucket_size).repeat_interleave(bucket_size)  # grid row of each patch, row-major
    cols = torch.arange(bucket_size).repeat(bucket_size)
    row_offset = rows.view(-1, 1) - rows.view(1, -1) + bucket_size - 1
    col_offset = cols.view(-1, 1) - cols.view(1, -1) + bucket_size - 1
    size = bucket_size * bucket_size + 1
    index = torch.empty((size, size), dtype=torch.long)
    index[1:, 1:] = row_offset * span + col_offset
    index[0, :] = num_relative_distance - 3
    index[:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def image_num_relative_distance(bucket_size: int) -> int:
    return (2 * bucket_size - 1) ** 2 + 3


def make_patch_position_ids(height: int, width: int, bucket_size: int, device=None) -> torch.Tensor:
    """Row-major ids into `embed_image_positions` for a height x width patch grid (id 0 is reserved)."""
    columns = torch.arange(width, device=device)[None, :]
    rows = torch.arange(height, device=device)[:, None]
    return (columns + rows * bucket_size + 1).reshape(-1)


def make_code_position_idx(code_image_size: int, bucket_size: int) -> torch.Tensor:
    """Image position of every decoder step when the decoder generates image codes (OFA's `image_position_idx`)."""
    window = code_image_size // 8
    grid = make_patch_position_ids(window, window, bucket_size)
    return torch.cat(
        [torch.tensor([0]), grid, torch.full((CODE_POSITION_PADDING,), BUCKET_TABLE_POSITIONS, dtype=torch.long)]
    )


def gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """fairseq's activation functions by name."""
    activations = {
        "relu": F.relu,
        "gelu": lambda x: F.gelu(x.float()).type_as(x),
        "gelu_fast": gelu_accurate,
        "gelu_accurate": gelu_accurate,
        "tanh": torch.tanh,
        "linear": lambda x: x,
        "swish": F.silu,
    }
    if name not in activations:
        raise ValueError(f"unsupported activation_fn {name!r}")
    return activations[name]


def drop_path(x: torch.Tensor, rate: float, training: bool, batch_dim: int = 0) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample while training."""
    if rate == 0.0 or not training:
        return x
    keep = 1 - rate
    shape = [1] * x.ndim
    shape[batch_dim] = x.shape[batch_dim]
    mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


def linear_rates(max_rate: float, count: int) -> list[float]:
    """Same values as torch.linspace(0, max_rate, count), computed without tensors (safe on the meta device)."""
    if count <= 1:
        return [0.0] * count
    return [max_rate * i / (count - 1) for i in range(count)]


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def collect_attentions(per_layer: list, wanted: bool | None) -> tuple[torch.Tensor, ...] | None:
    """Per-layer attention probabilities, when asked for and computed (only the eager implementation has them)."""
    if not wanted:
        return None
    if any(weights is None for weights in per_layer):
        logger.warning_once(
            "OFA returns attention probabilities only with the eager implementation: load the model with "
            "attn_implementation='eager' or call model.set_attn_implementation('eager')"
        )
        return None
    return tuple(per_layer)


def pick_image_input(patch_images: torch.Tensor | None, pixel_values: torch.Tensor | None) -> torch.Tensor | None:
    """OFA's `patch_images`, or the same images under transformers' usual name `pixel_values`."""
    if patch_images is not None and pixel_values is not None and patch_images is not pixel_values:
        raise ValueError("pass the image once: as patch_images or as pixel_values, not both")
    return patch_images if patch_images is not None else pixel_values


def decoder_mask_from_4d(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A prepared 4-D mask (bool: True = attend, or already additive) -> additive float bias."""
    if mask.is_floating_point():
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), float("-inf"))


def padding_to_bias(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, keys) bool, True = padding -> additive (batch, 1, 1, keys) bias of 0 / -inf."""
    bias = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    return bias.masked_fill(padding_mask, float("-inf"))[:, None, None, :]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class OFAEncoderOutput(BaseModelOutput):
    """
    padding_mask (`torch.BoolTensor` of shape `(batch_size, num_patches + sequence_length)`):
        True at padding: pad tokens, and every image patch of a sample whose `patch_masks` entry is False.
    position_embeddings (`torch.FloatTensor` of shape `(batch_size, num_patches + sequence_length, hidden_size)`):
        The absolute position embeddings after `image_pos_ln` / `pos_ln`, image part first.
    """

    padding_mask: torch.BoolTensor | None = None
    position_embeddings: torch.FloatTensor | None = None


@dataclass
class OFASeq2SeqModelOutput(Seq2SeqModelOutput):
    """
    encoder_padding_mask (`torch.BoolTensor`): see [`OFAEncoderOutput.padding_mask`].
    encoder_position_embeddings (`torch.FloatTensor`): see [`OFAEncoderOutput.position_embeddings`].
    """

    encoder_padding_mask: torch.BoolTensor | None = None
    encoder_position_embeddings: torch.FloatTensor | None = None


@dataclass
class OFASeq2SeqLMOutput(Seq2SeqLMOutput):
    """
    decoder_last_hidden_state (`torch.FloatTensor`): decoder features after its final LayerNorm (before the output
        projection).
    encoder_padding_mask (`torch.BoolTensor`): see [`OFAEncoderOutput.padding_mask`].
    encoder_position_embeddings (`torch.FloatTensor`): see [`OFAEncoderOutput.position_embeddings`].
    """

    decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_padding_mask: torch.BoolTensor | None = None
    encoder_position_embeddings: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Image embedding: OFA's 3-stage ResNet
# ----------------------------------------------------------------------------------------------------------------------


class OFAFrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers (OFA's `--freeze-resnet`)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


def resnet_norm_layer(config: OFAConfig) -> Callable[[int], nn.Module]:
    if config.sync_bn:
        return partial(nn.BatchNorm2d, eps=1e-3)
    if config.freeze_resnet:
        return OFAFrozenBatchNorm2d
    return nn.BatchNorm2d


class OFABottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        norm_layer: Callable[[int], nn.Module],
        stride: int = 1,
        downsample: nn.Module | None = None,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(channels * self.expansion)
        self.downsample = downsample
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(identity + drop_path(out, self.drop_path_rate, self.training))


class OFAResNet(nn.Module):
    """Stem + three Bottleneck stages (64, 128, 256 channels x4): 1024 channels at stride 16."""

    def __init__(self, config: OFAConfig):
        super().__init__()
        norm_layer = resnet_norm_layer(config)
        blocks_per_stage = RESNET_LAYERS[config.resnet_type]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (channels, blocks, stride) in enumerate(zip((64, 128, 256), blocks_per_stage, (1, 2, 2))):
            stage, in_channels = self._make_stage(
                in_channels, channels, blocks, stride, norm_layer, config.resnet_drop_path_rate
            )
            self.add_module(f"layer{index + 1}", stage)

    @staticmethod
    def _make_stage(in_channels, channels, blocks, stride, norm_layer, drop_path_rate):
        out_channels = channels * OFABottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                norm_layer(out_channels),
            )
        # as in OFA, the first block of a stage never drops its path
        rates = linear_rates(drop_path_rate, blocks)
        layers = [OFABottleneck(in_channels, channels, norm_layer, stride, downsample)]
        layers += [OFABottleneck(out_channels, channels, norm_layer, drop_path_rate=rates[i]) for i in range(1, blocks)]
        return nn.Sequential(*layers), out_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            return self._inference_forward(pixel_values)
        x = self.maxpool(F.relu(self.bn1(self.conv1(pixel_values))))
        return self.layer3(self.layer2(self.layer1(x)))

    # -- inference: BatchNorm folded into the convolutions, channels-last ------------------------------------------
    # In eval mode BatchNorm is an affine map per channel, so conv -> BN is one convolution with scaled weights and a
    # bias; channels-last weights and activations let oneDNN skip its layout conversions. The folded weights are
    # computed on the first call and again whenever a weight or statistic changes (storage or version).

    def _conv_bn_pairs(self):
        yield self.conv1, self.bn1
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                yield from ((block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3))
                if block.downsample is not None:
                    yield block.downsample[0], block.downsample[1]

    def _folded_weights(self) -> dict:
        pairs = list(self._conv_bn_pairs())
        tensors = [t for conv, bn in pairs for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)]
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        cached = getattr(self, "_folded_cache", None)
        if cached is None or cached[0] != key:
            folded = {}
            for conv, bn in pairs:
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                weight = (conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype)
                bias = (bn.bias.double() - bn.running_mean.double() * scale).to(conv.weight.dtype)
                folded[conv] = (weight.contiguous(memory_format=torch.channels_last), bias)
            self._folded_cache = cached = (key, folded)
        return cached[1]

    def _inference_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        folded = self._folded_weights()

        def conv_bn(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
            weight, bias = folded[conv]
            return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

        x = pixel_values.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(conv_bn(self.conv1, x).relu_())
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:  # OFABottleneck.forward with drop_path off (eval)
                identity = x if block.downsample is None else conv_bn(block.downsample[0], x)
                out = conv_bn(block.conv2, conv_bn(block.conv1, x).relu_()).relu_()
                x = conv_bn(block.conv3, out).add_(identity).relu_()
        return x


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------


def ofa_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float = 1.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain matmuls, softmax in fp32; returns (batch, query, heads, head_dim) and the probabilities."""
    scores = torch.matmul(query * scaling if scaling != 1.0 else query, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores.float(), dim=-1).type_as(scores)
    attn = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return attn.transpose(1, 2).contiguous(), probs


class OFAAttention(nn.Module):
    """Multi-head attention with an additive bias (position biases and masks) and an optional per-head scale."""

    def __init__(
        self,
        config: OFAConfig,
        embed_dim: int,
        num_heads: int,
        layer_idx: int,
        kv_dim: int | None = None,
        is_cross_attention: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * config.attn_scale_factor) ** -0.5
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.dropout = config.attention_dropout
        self.is_causal = False  # masks always come as explicit biases
        kv_dim = kv_dim or embed_dim
        self.k_proj = nn.Linear(kv_dim, embed_dim)
        self.v_proj = nn.Linear(kv_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if config.scale_heads else None
        self.config = config  # read at call time: attn_implementation may change after construction

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        prompt_key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, attention probabilities or None: only the eager implementation computes them)."""
        batch_size, query_len, _ = hidden_states.shape
        query = self._split_heads(self.q_proj(hidden_states) * self.scaling)

        cache = past_key_values
        if isinstance(past_key_values, EncoderDecoderCache):
            cache = (
                past_key_values.cross_attention_cache
                if self.is_cross_attention
                else past_key_values.self_attention_cache
            )
        cross_cached = (
            self.is_cross_attention
            and isinstance(past_key_values, EncoderDecoderCache)
            and past_key_values.is_updated.get(self.layer_idx, False)
        )
        if cross_cached:
            key = cache.layers[self.layer_idx].keys
            value = cache.layers[self.layer_idx].values
        else:
            source = key_value_states if self.is_cross_attention else hidden_states
            key = self._split_heads(self.k_proj(source))
            value = self._split_heads(self.v_proj(source))
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
                if self.is_cross_attention and isinstance(past_key_values, EncoderDecoderCache):
                    past_key_values.is_updated[self.layer_idx] = True
        if prompt_key_values is not None:
            # prefix tuning: learned keys/values in front of the (cached) real ones, never cached themselves, seen
            # by every query, without position bias
            prompt_key, prompt_value = (p.expand(batch_size, -1, -1, -1) for p in prompt_key_values)
            key = torch.cat([prompt_key, key], dim=2)
            value = torch.cat([prompt_value, value], dim=2)
            if attention_bias is not None:
                attention_bias = F.pad(attention_bias, (prompt_key.shape[2], 0))

        if attention_bias is not None and attention_bias.shape[-1] < key.shape[2]:
            # a static cache hands back all its slots: the ones not written yet are masked out
            attention_bias = F.pad(attention_bias, (0, key.shape[2] - attention_bias.shape[-1]), value=float("-inf"))

        # the query is already scaled; position biases and padding ride along as one additive float mask
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ofa_eager_attention)
        attn, weights = attention(
            self,
            query,
            key,
            value,
            attention_bias.to(query.dtype) if attention_bias is not None else None,
            dropout=self.dropout if self.training else 0.0,
            scaling=1.0,
            is_causal=False,
        )
        # batch, query, heads, head_dim
        if self.c_attn is not None:
            attn = attn * self.c_attn[:, None]
        return self.out_proj(attn.reshape(batch_size, query_len, self.embed_dim)), weights


class OFAPromptEncoder(nn.Module):
    """Prefix tuning (OFA's `--*-prompt`): per-layer learned keys and values for the self-attentions of one side.

    A table of `length` rows gives, for each layer, one key and one value per prompt position and head; with
    `projection` the rows are narrower (`dim`) and pass through a two-layer MLP (`trans`, width `proj_dim`) first.
    """

    def __init__(self, length: int, dim: int, num_layers: int, num_heads: int, projection: bool, proj_dim: int | None):
        super().__init__()
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        width = num_layers * 2 * dim
        self.embedding = nn.Embedding(length, dim if projection else width)
        self.trans = (
            nn.Sequential(nn.Linear(dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, width)) if projection else None
        )

    def forward(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: (key, value), each (1, heads, length, head_dim)."""
        table = self.embedding.weight
        if self.trans is not None:
            table = self.trans(table)
        table = F.dropout(table, PROMPT_DROPOUT, self.training)
        # rows: prompt positions; columns: (layer, key|value, head, head_dim)
        table = table.view(table.shape[0], 2 * self.num_layers, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        return [(table[2 * i][None], table[2 * i + 1][None]) for i in range(self.num_layers)]


def build_prompt_encoder(config: OFAConfig, side: str) -> OFAPromptEncoder | None:
    if not getattr(config, f"{side}_prompt", False):
        return None
    return OFAPromptEncoder(
        length=getattr(config, f"{side}_prompt_length"),
        dim=getattr(config, f"{side}_embed_dim"),
        num_layers=getattr(config, f"{side}_layers"),
        num_heads=getattr(config, f"{side}_attention_heads"),
        projection=bool(getattr(config, f"{side}_prompt_projection")),
        proj_dim=getattr(config, f"{side}_prompt_dim"),
    )


class OFAAdapter(nn.Module):
    """OFA's `--adapter`: a residual bottleneck MLP applied to the FFN output of a layer."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(F.relu(self.down_proj(x))) + x


def build_adapter(config: OFAConfig, dim: int) -> OFAAdapter | None:
    return OFAAdapter(dim, config.adapter_dim) if getattr(config, "adapter", False) else None


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------


class OFAEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        dim = config.encoder_embed_dim
        self.normalize_before = config.encoder_normalize_before
        self.self_attn = OFAAttention(config, dim, config.encoder_attention_heads, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn_mid_layer_norm = nn.LayerNorm(dim) if config.scale_attn else None
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.ffn_layer_norm = nn.LayerNorm(config.encoder_ffn_embed_dim) if config.scale_fc else None
        self.w_resid = nn.Parameter(torch.ones(dim)) if config.scale_resids else None
        self.final_layer_norm = nn.LayerNorm(dim)
        self.adapter = build_adapter(config, dim)
        self.activation = get_activation(config.activation_fn)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout_rate
        self.drop_path_rate = drop_path_rate

    def _residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + drop_path(x, self.drop_path_rate, self.training)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_bias: torch.Tensor,
        prompt_key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states, self-attention probabilities: None unless eager)."""
        residual = hidden_states
        x = self.self_attn_layer_norm(hidden_states) if self.normalize_before else hidden_states
        x, self_weights = self.self_attn(x, attention_bias=attention_bias, prompt_key_values=prompt_key_values)
        if self.self_attn_mid_layer_norm is not None:
            x = self.self_attn_mid_layer_norm(x)
        x = self._residual(F.dropout(x, self.dropout, self.training), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        return feed_forward(self, x, self.normalize_before), self_weights


class OFADecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        dim = config.decoder_embed_dim
        heads = config.decoder_attention_heads
        self.normalize_before = config.decoder_normalize_before
        self.self_attn = OFAAttention(config, dim, heads, layer_idx)
        self.self_attn_mid_layer_norm = nn.LayerNorm(dim) if config.scale_attn else None
        self.cross_attn_mid_layer_norm = nn.LayerNorm(dim) if config.scale_attn else None
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.cross_attn = OFAAttention(
            config, dim, heads, layer_idx, kv_dim=config.encoder_embed_dim, is_cross_attention=True
        )
        self.cross_attn_layer_norm = nn.LayerNorm(dim)
        self.ffn_layer_norm = nn.LayerNorm(config.decoder_ffn_embed_dim) if config.scale_fc else None
        self.w_resid = nn.Parameter(torch.ones(dim)) if config.scale_resids else None
        self.fc1 = nn.Linear(dim, config.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.adapter = build_adapter(config, dim)
        self.activation = get_activation(config.activation_fn)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout_rate
        self.drop_path_rate = drop_path_rate

    def _residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + drop_path(x, self.drop_path_rate, self.training)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attention_bias: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cross_attention_bias: torch.Tensor,
        past_key_values: Cache | None = None,
        prompt_key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(hidden states, self- and cross-attention probabilities: None unless eager)."""
        residual = hidden_states
        x = self.self_attn_layer_norm(hidden_states) if self.normalize_before else hidden_states
        x, self_weights = self.self_attn(
            x,
            attention_bias=self_attention_bias,
            past_key_values=past_key_values,
            prompt_key_values=prompt_key_values,
        )
        if self.self_attn_mid_layer_norm is not None:
            x = self.self_attn_mid_layer_norm(x)
        x = self._residual(F.dropout(x, self.dropout, self.training), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.cross_attn_layer_norm(x)
        x, cross_weights = self.cross_attn(
            x,
            key_value_states=encoder_hidden_states,
            attention_bias=cross_attention_bias,
            past_key_values=past_key_values,
        )
        if self.cross_attn_mid_layer_norm is not None:
            x = self.cross_attn_mid_layer_norm(x)
        x = self._residual(F.dropout(x, self.dropout, self.training), residual)
        if not self.normalize_before:
            x = self.cross_attn_layer_norm(x)
        return feed_forward(self, x, self.normalize_before), self_weights, cross_weights


def feed_forward(layer: OFAEncoderLayer | OFADecoderLayer, x: torch.Tensor, normalize_before: bool) -> torch.Tensor:
    """The FFN block shared by encoder and decoder layers (optionally LayerNormed inside, optionally w_resid)."""
    residual = x
    if normalize_before:
        x = layer.final_layer_norm(x)
    x = layer.activation(layer.fc1(x))
    x = F.dropout(x, layer.activation_dropout, layer.training)
    if layer.ffn_layer_norm is not None:
        x = layer.ffn_layer_norm(x)
    x = F.dropout(layer.fc2(x), layer.dropout, layer.training)
    if layer.adapter is not None:
        x = layer.adapter(x)
    if layer.w_resid is not None:
        residual = layer.w_resid * residual
    x = layer._residual(x, residual)
    if not normalize_before:
        x = layer.final_layer_norm(x)
    return x


# ----------------------------------------------------------------------------------------------------------------------
# Encoder / decoder
# ----------------------------------------------------------------------------------------------------------------------


def absolute_position_bias(
    query_linear: nn.Linear,
    key_linear: nn.Linear,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    num_heads: int,
    scaling: float,
) -> torch.Tensor:
    """(batch, queries, dim) x (batch, keys, dim) position embeddings -> (batch, heads, queries, keys) bias.

    Positions that are the same for every sample (expanded over the batch) give a (1, heads, queries, keys) bias,
    computed once; `key_positions` may also be keys already projected by `position_keys`.
    """
    if is_batch_constant(query_positions) and (is_batch_constant(key_positions) or key_positions.shape[0] == 1):
        query_positions, key_positions = query_positions[:1], key_positions[:1]
    query = split_position_heads(query_linear(query_positions), num_heads) * scaling
    key = key_positions if key_positions.dim() == 4 else position_keys(key_linear, key_positions, num_heads)
    return torch.matmul(query, key.transpose(2, 3))


def split_position_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def position_keys(key_linear: nn.Linear, key_positions: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, keys, dim) position embeddings -> (batch or 1, heads, keys, head_dim) projected keys."""
    if is_batch_constant(key_positions):
        key_positions = key_positions[:1]
    return split_position_heads(key_linear(key_positions), num_heads)


def is_batch_constant(x: torch.Tensor) -> bool:
    """A tensor expanded over its batch (stride 0): every sample holds the same values."""
    return x.dim() > 0 and x.shape[0] > 1 and x.stride(0) == 0


def relative_position_bias(table: nn.Embedding, buckets: torch.Tensor) -> torch.Tensor:
    """(queries, keys) bucket ids -> (heads, queries, keys) bias."""
    return F.embedding(buckets, table.weight).permute(2, 0, 1)


class OFAEncoder(nn.Module):
    main_input_name = "input_ids"

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        dim = config.encoder_embed_dim
        heads = config.encoder_attention_heads
        self.config = config
        self.padding_idx = config.pad_token_id
        self.num_heads = heads
        self.dropout = config.dropout
        self.embed_scale = 1.0 if config.no_scale_embedding else math.sqrt(dim)
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = nn.LayerNorm(dim) if config.layernorm_embedding else None
        self.type_embedding = nn.Embedding(2, dim) if config.add_type_embedding else None
        self.embed_images = OFAResNet(config)
        self.image_proj = nn.Linear(RESNET_OUTPUT_CHANNELS, dim)
        self.patch_layernorm_embedding = nn.LayerNorm(dim) if config.patch_layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_source_positions + 2, dim)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, dim)
        self.pos_ln = nn.LayerNorm(dim)
        self.image_pos_ln = nn.LayerNorm(dim)
        self.pos_scaling = float(dim / heads * config.attn_scale_factor) ** -0.5
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)
        rates = linear_rates(config.encoder_drop_path_rate, config.encoder_layers)
        self.layers = nn.ModuleList(
            [OFAEncoderLayer(config, i, drop_path_rate=rates[i]) for i in range(config.encoder_layers)]
        )
        self.layer_norm = nn.LayerNorm(dim) if config.encoder_normalize_before else None
        self.prompt_encoder = build_prompt_encoder(config, "encoder")
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * config.token_bucket_size - 1, heads) for _ in range(config.encoder_layers)]
        )
        image_buckets = image_num_relative_distance(config.image_bucket_size)
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(image_buckets, heads) for _ in range(config.encoder_layers)]
        )
        self.register_buffer("token_rp_bucket", make_token_bucket_position(config.token_bucket_size), persistent=False)
        self.register_buffer(
            "image_rp_bucket",
            make_image_bucket_position(config.image_bucket_size, image_buckets),
            persistent=False,
        )

    def reset_derived_buffers(self) -> None:
        init.copy_(self.token_rp_bucket, make_token_bucket_position(self.config.token_bucket_size))
        init.copy_(
            self.image_rp_bucket,
            make_image_bucket_position(
                self.config.image_bucket_size, image_num_relative_distance(self.config.image_bucket_size)
            ),
        )

    def embed_patches(self, patch_images: torch.Tensor):
        """Image -> (patch features, patch position ids, raw patch position embeddings)."""
        # processors return fp32 pixels; a model cast to fp16/bf16 takes them as they come
        features = self.embed_images(patch_images.to(self.image_proj.weight.dtype))
        height, width = features.shape[-2:]
        features = features.flatten(2).transpose(1, 2)
        position_ids = make_patch_position_ids(height, width, self.config.image_bucket_size, features.device)
        original_side = self.config.orig_patch_image_size // 16
        if self.config.interpolate_position and height * width > original_side**2:
            original_ids = make_patch_position_ids(
                original_side, original_side, self.config.image_bucket_size, features.device
            )
            grid = self.embed_image_positions(original_ids).reshape(1, original_side, original_side, -1)
            grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(height, width), mode="bilinear")
            position_embeddings = grid.permute(0, 2, 3, 1).reshape(1, height * width, -1)
        else:
            position_embeddings = self.embed_image_positions(position_ids)[None]
        return features, position_ids, position_embeddings.expand(features.shape[0], -1, -1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> OFAEncoderOutput:
        patch_images = pick_image_input(patch_images, pixel_values)
        batch_size, text_len = input_ids.shape
        text_padding = input_ids.eq(self.padding_idx) if attention_mask is None else attention_mask.eq(0)
        # positions are the same for every sample: computed for one, expanded (see is_batch_constant)
        text_positions = self.embed_positions(torch.arange(text_len, device=input_ids.device))[None]

        x = self.embed_scale * self.embed_tokens(input_ids)
        if self.config.entangle_position_embedding:
            x = x + text_positions
        if self.type_embedding is not None:
            x = x + self.type_embedding(input_ids.new_zeros(x.shape[:2]))
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = F.dropout(x, self.dropout, self.training)
        padding_mask = text_padding
        position_embeddings = self.pos_ln(text_positions)

        num_patches = 0
        if patch_images is not None:
            features, patch_position_ids, patch_positions = self.embed_patches(patch_images)
            num_patches = features.shape[1]
            image_x = self.embed_scale * self.image_proj(features)
            if self.config.entangle_position_embedding:
                image_x = image_x + patch_positions
            if self.type_embedding is not None:
                image_x = image_x + self.type_embedding(input_ids.new_ones(image_x.shape[:2]))
            if self.patch_layernorm_embedding is not None:
                image_x = self.patch_layernorm_embedding(image_x)
            image_x = F.dropout(image_x, self.dropout, self.training)
            x = torch.cat([image_x, x], dim=1)
            image_padding = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=x.device)
            if patch_masks is not None:
                image_padding = image_padding | ~patch_masks.to(torch.bool).reshape(batch_size, 1)
            padding_mask = torch.cat([image_padding, padding_mask], dim=1)
            position_embeddings = torch.cat([self.image_pos_ln(patch_positions[:1]), position_embeddings], dim=1)
        position_embeddings = position_embeddings.expand(batch_size, -1, -1)

        if padding_mask.any():
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        abs_bias = absolute_position_bias(
            self.pos_q_linear,
            self.pos_k_linear,
            position_embeddings,
            position_embeddings,
            self.num_heads,
            self.pos_scaling,
        )
        # (batch, 1, 1, keys) padding, left out when there is none: the biases then broadcast over the batch
        padding_bias = padding_to_bias(padding_mask, abs_bias.dtype) if padding_mask.any() else None
        text_buckets = self.token_rp_bucket[:text_len, :text_len]
        if num_patches:
            image_buckets = self.image_rp_bucket[patch_position_ids][:, patch_position_ids]

        prompts = self.prompt_encoder() if self.prompt_encoder is not None else None
        hidden_states, attentions = [x], []
        for idx, layer in enumerate(self.layers):
            bias = abs_bias.clone()  # (1 or batch, heads, L, L): batch 1 unless positions differ per sample
            bias[:, :, num_patches:, num_patches:] += relative_position_bias(
                self.token_rel_pos_table_list[idx], text_buckets
            )[None]
            if num_patches:
                bias[:, :, :num_patches, :num_patches] += relative_position_bias(
                    self.image_rel_pos_table_list[idx], image_buckets
                )[None]
            if padding_bias is not None:
                bias = bias + padding_bias
            x, weights = layer(x, attention_bias=bias, prompt_key_values=prompts[idx] if prompts else None)
            hidden_states.append(x)
            attentions.append(weights)

        last_hidden_state = self.layer_norm(x) if self.layer_norm is not None else x
        return OFAEncoderOutput(
            last_hidden_state=last_hidden_state,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=collect_attentions(attentions, output_attentions),
            padding_mask=padding_mask,
            position_embeddings=position_embeddings,
        )


class OFADecoder(nn.Module):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding, with_output_projection: bool = True):
        super().__init__()
        dim = config.decoder_embed_dim
        heads = config.decoder_attention_heads
        self.config = config
        self.padding_idx = config.pad_token_id
        self.num_heads = heads
        self.dropout = config.dropout
        self.embed_scale = 1.0 if config.no_scale_embedding else math.sqrt(dim)
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = nn.LayerNorm(dim) if config.layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_target_positions + 2, dim)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, dim)
        self.pos_ln = nn.LayerNorm(dim)
        self.image_pos_ln = nn.LayerNorm(dim)
        self.pos_scaling = float(dim / heads * config.attn_scale_factor) ** -0.5
        self.self_pos_q_linear = nn.Linear(dim, dim)
        self.self_pos_k_linear = nn.Linear(dim, dim)
        self.cross_pos_q_linear = nn.Linear(dim, dim)
        self.cross_pos_k_linear = nn.Linear(dim, dim)
        self.code_layernorm_embedding = nn.LayerNorm(dim) if config.code_layernorm_embedding else None
        rates = linear_rates(config.decoder_drop_path_rate, config.decoder_layers)
        self.layers = nn.ModuleList(
            [OFADecoderLayer(config, i, drop_path_rate=rates[i]) for i in range(config.decoder_layers)]
        )
        self.layer_norm = nn.LayerNorm(dim) if config.decoder_normalize_before else None
        self.prompt_encoder = build_prompt_encoder(config, "decoder")
        output_dim = config.decoder_output_dim or dim
        self.project_out_dim = nn.Linear(dim, output_dim, bias=False) if output_dim != dim else None
        self.output_projection = (
            nn.Linear(output_dim, config.vocab_size, bias=False) if with_output_projection else None
        )
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * config.token_bucket_size - 1, heads) for _ in range(config.decoder_layers)]
        )
        image_buckets = image_num_relative_distance(config.image_bucket_size)
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(image_buckets, heads) for _ in range(config.decoder_layers)]
        )
        self.register_buffer("token_rp_bucket", make_token_bucket_position(config.token_bucket_size), persistent=False)
        self.register_buffer(
            "image_rp_bucket",
            make_image_bucket_position(config.image_bucket_size, image_buckets),
            persistent=False,
        )
        self.register_buffer(
            "image_position_idx",
            make_code_position_idx(config.code_image_size, config.image_bucket_size),
            persistent=False,
        )

    def reset_derived_buffers(self) -> None:
        config = self.config
        init.copy_(self.token_rp_bucket, make_token_bucket_position(config.token_bucket_size))
        init.copy_(
            self.image_rp_bucket,
            make_image_bucket_position(config.image_bucket_size, image_num_relative_distance(config.image_bucket_size)),
        )
        init.copy_(self.image_position_idx, make_code_position_idx(config.code_image_size, config.image_bucket_size))

    def _position_bias_inputs(self, code_masks: torch.Tensor | None, batch_size: int, total_len: int, device):
        """Raw and LayerNormed target position embeddings (batch, total_len, dim), per-sample text or image-code."""
        positions = self.embed_positions(torch.arange(total_len, device=device))[None]
        normed = self.pos_ln(positions).expand(batch_size, -1, -1)  # one sample's, expanded: see is_batch_constant
        positions = positions.expand(batch_size, -1, -1)
        if code_masks is not None and code_masks.any():
            code_positions = self.embed_image_positions(self.image_position_idx[:total_len])[None]
            code_positions = code_positions.expand(batch_size, -1, -1)
            is_code = code_masks.to(torch.bool).reshape(batch_size, 1, 1)
            positions = torch.where(is_code, code_positions, positions)
            normed = torch.where(is_code, self.image_pos_ln(code_positions), normed)
        return positions, normed

    def _self_relative_bias(self, idx: int, code_masks, past_len: int, total_len: int) -> torch.Tensor:
        buckets = self.token_rp_bucket[past_len:total_len, :total_len]
        bias = relative_position_bias(self.token_rel_pos_table_list[idx], buckets)[None]
        if code_masks is not None and code_masks.any():
            code_idx = self.image_position_idx
            code_buckets = self.image_rp_bucket[code_idx[past_len:total_len]][:, code_idx[:total_len]]
            code_bias = relative_position_bias(self.image_rel_pos_table_list[idx], code_buckets)[None]
            bias = torch.where(code_masks.to(torch.bool).reshape(-1, 1, 1, 1), code_bias, bias)
        return bias

    def _cross_position_keys(self, encoder_positions: torch.Tensor, cache: Cache | None, past_len: int):
        """The encoder positions projected by `cross_pos_k_linear`: the same at every decoding step, so computed at
        the first step of a cached generation and kept with its cache (OFA recomputes them at every step)."""
        if cache is not None and past_len and getattr(cache, "ofa_cross_position_keys", None) is not None:
            return cache.ofa_cross_position_keys
        keys = position_keys(self.cross_pos_k_linear, encoder_positions, self.num_heads)
        if cache is not None and keys.shape[0] == 1:  # batch-constant: unaffected by beam reordering
            cache.ofa_cross_position_keys = keys
        return keys

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_padding_mask: torch.Tensor | None,
        encoder_position_embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        code_masks: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ):
        batch_size, new_len = input_ids.shape
        past_len = int(past_key_values.get_seq_length()) if past_key_values is not None else 0
        total_len = past_len + new_len
        device = input_ids.device

        positions, normed_positions = self._position_bias_inputs(code_masks, batch_size, total_len, device)
        new_normed = normed_positions[:, past_len:]
        self_abs_bias = absolute_position_bias(
            self.self_pos_q_linear,
            self.self_pos_k_linear,
            new_normed,
            normed_positions,
            self.num_heads,
            self.pos_scaling,
        )
        cross_bias = absolute_position_bias(
            self.cross_pos_q_linear,
            self.cross_pos_k_linear,
            new_normed,
            self._cross_position_keys(encoder_position_embeddings, past_key_values, past_len),
            self.num_heads,
            self.pos_scaling,
        )
        if encoder_padding_mask is not None:
            cross_bias = cross_bias + padding_to_bias(encoder_padding_mask, cross_bias.dtype)

        x = self.embed_scale * self.embed_tokens(input_ids)
        if not self.config.disable_entangle:
            x = x + positions[:, past_len:]
        if self.layernorm_embedding is not None:
            if code_masks is not None and code_masks.any() and self.code_layernorm_embedding is not None:
                is_code = code_masks.to(torch.bool).reshape(batch_size, 1, 1)
                x = torch.where(is_code, self.code_layernorm_embedding(x), self.layernorm_embedding(x))
            else:
                x = self.layernorm_embedding(x)
        x = F.dropout(x, self.dropout, self.training)

        # causal mask over (new queries, all keys) plus padding of the keys
        causal = torch.ones(new_len, total_len, dtype=torch.bool, device=device).triu(past_len + 1)
        if attention_mask is not None and attention_mask.dim() == 4:
            # generate prepares a full (batch, 1, new, cache slots) mask itself for static caches
            mask = decoder_mask_from_4d(attention_mask[..., :total_len], self_abs_bias.dtype)
        else:
            if attention_mask is None:
                key_padding = input_ids.eq(self.padding_idx)
                if past_len:
                    key_padding = torch.cat([key_padding.new_zeros(batch_size, past_len), key_padding], dim=1)
            else:
                key_padding = attention_mask[:, -total_len:].eq(0)
                if key_padding.shape[1] < total_len:
                    key_padding = torch.cat(
                        [key_padding.new_zeros(batch_size, total_len - key_padding.shape[1]), key_padding], dim=1
                    )
            mask = padding_to_bias(key_padding, self_abs_bias.dtype).masked_fill(causal, float("-inf"))

        prompts = self.prompt_encoder() if self.prompt_encoder is not None else None
        hidden_states, self_attentions, cross_attentions = [x], [], []
        for idx, layer in enumerate(self.layers):
            self_bias = self_abs_bias + self._self_relative_bias(idx, code_masks, past_len, total_len)
            x, self_weights, cross_weights = layer(
                x,
                self_attention_bias=self_bias + mask,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_bias=cross_bias,
                past_key_values=past_key_values,
                prompt_key_values=prompts[idx] if prompts else None,
            )
            hidden_states.append(x)
            self_attentions.append(self_weights)
            cross_attentions.append(cross_weights)

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        attentions = (
            collect_attentions(self_attentions, output_attentions),
            collect_attentions(cross_attentions, output_attentions),
        )
        return x, (tuple(hidden_states) if output_hidden_states else None), attentions


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained base, bare model, generation head
# ----------------------------------------------------------------------------------------------------------------------


class OFAPreTrainedModel(PreTrainedModel):
    config_class = OFAConfig
    config: OFAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_flash_attn = False  # every attention takes an additive float bias (position biases, masks)
    _supports_flex_attn = False
    _no_split_modules = ["OFAEncoderLayer", "OFADecoderLayer", "OFAResNet"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True  # attention takes an additive float bias, which SDPA accepts as its mask
    # fairseq-only entries that may be present in HF-style OFA weights: recomputed here
    _keys_to_ignore_on_load_unexpected = [r"\.version$", r"rp_bucket$", r"image_position_idx$"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, OFAFrozenBatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.constant_(module.running_var, 1 - module.eps)
        elif isinstance(module, OFAAttention) and module.c_attn is not None:
            init.ones_(module.c_attn)
        elif isinstance(module, (OFAEncoderLayer, OFADecoderLayer)) and module.w_resid is not None:
            init.ones_(module.w_resid)
        elif isinstance(module, (OFAEncoder, OFADecoder)):
            # OFA zero-initialises its relative position tables
            for table in [*module.token_rel_pos_table_list, *module.image_rel_pos_table_list]:
                init.zeros_(table.weight)
            module.reset_derived_buffers()

    def _declare_ties(self, with_output_projection: bool) -> None:
        """fairseq shares `embed_tokens` (share_all_embeddings) and the output projection
        (share_decoder_input_output_embed): declare the same ties as {target: source}."""
        config = self.config
        ties = {}
        if config.share_all_embeddings:
            ties["decoder.embed_tokens.weight"] = "encoder.embed_tokens.weight"
        if with_output_projection and config.share_decoder_input_output_embed:
            ties["decoder.output_projection.weight"] = (
                "encoder.embed_tokens.weight" if config.share_all_embeddings else "decoder.embed_tokens.weight"
            )
        self._tied_weights_keys = ties

    def _build_encoder_decoder(self, config: OFAConfig, with_output_projection: bool) -> None:
        self.encoder = OFAEncoder(
            config, nn.Embedding(config.vocab_size, config.encoder_embed_dim, config.pad_token_id)
        )
        self.decoder = OFADecoder(
            config,
            nn.Embedding(config.vocab_size, config.decoder_embed_dim, config.pad_token_id),
            with_output_projection=with_output_projection,
        )
        self._declare_ties(with_output_projection)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value
        if self.config.share_all_embeddings:
            self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> OFAEncoder:
        return self.encoder

    def decoder_start_ids(self, encoder_states: torch.Tensor) -> torch.LongTensor:
        """The decoder input when none is given: OFA decodes from `<s>` alone, so the logits are those of the first
        generated token (BART-style shifting of `input_ids` would feed the source text to the decoder, which OFA
        never does)."""
        batch_size = encoder_states.shape[0]
        start = self.config.decoder_start_token_id
        return torch.full((batch_size, 1), start, dtype=torch.long, device=encoder_states.device)

    def _encode_and_decode(
        self,
        input_ids,
        attention_mask,
        patch_images,
        patch_masks,
        decoder_input_ids,
        decoder_attention_mask,
        code_masks,
        encoder_outputs,
        past_key_values,
        use_cache,
        output_hidden_states,
        output_attentions=None,
        pixel_values=None,
    ):
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask=attention_mask,
                patch_images=pick_image_input(patch_images, pixel_values),
                patch_masks=patch_masks,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
        elif not isinstance(encoder_outputs, OFAEncoderOutput):
            raise TypeError("encoder_outputs must be the OFAEncoderOutput returned by the OFA encoder")
        if decoder_input_ids is None:
            decoder_input_ids = self.decoder_start_ids(encoder_outputs.last_hidden_state)
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if not use_cache:
            past_key_values = None
        features, decoder_hidden_states, decoder_attentions = self.decoder(
            decoder_input_ids,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_padding_mask=encoder_outputs.padding_mask,
            encoder_position_embeddings=encoder_outputs.position_embeddings,
            attention_mask=decoder_attention_mask,
            code_masks=code_masks,
            past_key_values=past_key_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return encoder_outputs, features, decoder_hidden_states, past_key_values, decoder_attentions


class OFAModel(OFAPreTrainedModel):
    """The bare OFA encoder-decoder: returns the decoder features after its final LayerNorm."""

    def __init__(self, config: OFAConfig):
        super().__init__(config)
        self._build_encoder_decoder(config, with_output_projection=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        code_masks: torch.Tensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> OFASeq2SeqModelOutput | tuple:
        encoder_outputs, features, decoder_hidden_states, past_key_values, attentions = self._encode_and_decode(
            input_ids,
            attention_mask,
            patch_images,
            patch_masks,
            decoder_input_ids,
            decoder_attention_mask,
            code_masks,
            encoder_outputs,
            past_key_values,
            use_cache,
            output_hidden_states,
            output_attentions,
            pixel_values,
        )
        output = OFASeq2SeqModelOutput(
            last_hidden_state=features,
            past_key_values=past_key_values,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=attentions[0],
            cross_attentions=attentions[1],
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            encoder_padding_mask=encoder_outputs.padding_mask,
            encoder_position_embeddings=encoder_outputs.position_embeddings,
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


class OFAForConditionalGeneration(OFAPreTrainedModel, GenerationMixin):
    """OFA with its output projection: logits over the unified vocabulary (text, `<code_*>`, `<bin_*>`)."""

    def __init__(self, config: OFAConfig):
        super().__init__(config)
        self._build_encoder_decoder(config, with_output_projection=True)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.output_projection

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder.output_projection = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        code_masks: torch.Tensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> OFASeq2SeqLMOutput | tuple:
        r"""
        input_ids: source tokens (OFA's `src_tokens`), right-padded with `pad_token_id`.
        patch_images: `(batch, 3, H, W)` images normalised with mean = std = 0.5 (`pixel_values`, transformers'
            name for it, is accepted too).
        patch_masks: `(batch,)` bool; False marks a text-only sample whose image positions are padding.
        decoder_input_ids: OFA's `prev_output_tokens` (start with `<s>`); when omitted, `labels` shifted right, or
            without labels the start token `<s>` alone (logits of the first generated token).
        code_masks: `(batch,)` bool; True for samples whose decoder generates image codes.
        labels: target ids (`-100` ignored) for a cross-entropy loss.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        encoder_outputs, features, decoder_hidden_states, past_key_values, attentions = self._encode_and_decode(
            input_ids,
            attention_mask,
            patch_images,
            patch_masks,
            decoder_input_ids,
            decoder_attention_mask,
            code_masks,
            encoder_outputs,
            past_key_values,
            use_cache,
            output_hidden_states,
            output_attentions,
            pixel_values,
        )
        logits = self.decoder.output_projection(features)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        output = OFASeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=past_key_values,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=attentions[0],
            cross_attentions=attentions[1],
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            decoder_last_hidden_state=features,
            encoder_padding_mask=encoder_outputs.padding_mask,
            encoder_position_embeddings=encoder_outputs.position_embeddings,
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, encoder_outputs=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, encoder_outputs=encoder_outputs, **kwargs)
        if encoder_outputs is not None:
            # the image was consumed by the encoder; the decoder steps only need encoder_outputs
            model_inputs.pop("patch_images", None)
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("patch_masks", None)
        return model_inputs

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def _reorder_cache(self, past_key_values, beam_idx: torch.LongTensor):
        """Beam search: only the self-attention cache follows the chosen beams. Beams move within their sample, and a
        sample's beams attend to copies of one encoder output, so their cross-attention keys and values are already
        equal: reordering them (a copy of every layer's keys and values at every step) would change nothing."""
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values


__all__ = [
    "OFAPreTrainedModel",
    "OFAModel",
    "OFAForConditionalGeneration",
    "OFAEncoderOutput",
    "OFASeq2SeqModelOutput",
    "OFASeq2SeqLMOutput",
]
