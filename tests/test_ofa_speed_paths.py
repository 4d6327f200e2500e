"""The fast paths of OFA conversion and inference compute what the slow ones did.

- conversion states the target's shapes without importing the modelling stack (converters/ofa_shapes.py): equal to
  the model built on the meta device, for every fixture, variant and preset;
- the source hash runs alongside the conversion, and a damaged archive is still what gets reported;
- safetensors files are written by hfport (one copy from the mapped source) and read back bit-exactly;
- position biases are computed once for the batch (positions are the same for every sample) and the cross-attention
  position keys once per generation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import OFA_FIXTURE_NAMES

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "ofa_tiny": dict(encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_layers=4, decoder_layers=4,
                     encoder_attention_heads=4, decoder_attention_heads=4, resnet_type="resnet50"),
    "ofa_base": dict(encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_layers=6, decoder_layers=6,
                     encoder_attention_heads=12, decoder_attention_heads=12, resnet_type="resnet101"),
    "ofa_large": dict(encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_layers=12, decoder_layers=12,
                      encoder_attention_heads=16, decoder_attention_heads=16, resnet_type="resnet152"),
}
# structural switches the presets leave alone, each flipped once
SWITCHES = [dict(), dict(scale_attn=True, scale_fc=True, scale_heads=True, scale_resids=True),
            dict(freeze_resnet=True), dict(sync_bn=True), dict(layernorm_embedding=False, add_type_embedding=False,
                                                                 patch_layernorm_embedding=False,
                                                                 code_layernorm_embedding=False),
            dict(share_all_embeddings=False, share_decoder_input_output_embed=False),
            dict(share_all_embeddings=False, share_decoder_input_output_embed=True),
            dict(encoder_normalize_before=False, decoder_normalize_before=False, decoder_output_dim=32),
            dict(encoder_prompt=True, encoder_prompt_length=5, decoder_prompt=True, decoder_prompt_length=3,
                 decoder_prompt_projection=True, decoder_prompt_dim=16),
            dict(adapter=True, adapter_dim=8)]


def _meta_inventory(config):
    from hfport.converters.pipeline import target_inventory
    from hfport.models.ofa.modeling_ofa import OFAForConditionalGeneration

    return target_inventory(OFAForConditionalGeneration, config)


def _assert_same_inventory(config):
    from hfport.converters.ofa_shapes import ofa_inventory

    stated, built = ofa_inventory(config), _meta_inventory(config)
    assert stated.shapes == built.shapes
    assert stated.dtypes == built.dtypes
    assert stated.ties == built.ties


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_stated_ofa_shapes_equal_the_meta_model_for_every_preset(preset):
    from hfport.models.ofa.configuration_ofa import OFAConfig

    _assert_same_inventory(OFAConfig(**PRESETS[preset], decoder_embed_dim=PRESETS[preset]["encoder_embed_dim"],
                                     decoder_ffn_embed_dim=PRESETS[preset]["encoder_ffn_embed_dim"]))


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(s) or "defaults")
def test_stated_ofa_shapes_equal_the_meta_model_with_every_structural_switch(switches):
    from hfport.models.ofa.configuration_ofa import OFAConfig

    tiny = dict(encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=48, decoder_ffn_embed_dim=48,
                encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                resnet_type="resnet18", vocab_size=50, token_bucket_size=16, image_bucket_size=6)
    _assert_same_inventory(OFAConfig(**{**tiny, **switches}))


def test_stated_ofa_shapes_equal_the_meta_model_for_every_fixture_and_variant(shared_root, tmp_path):
    import lzma

    from hfport.converters import ofa
    from hfport.read.torch_file import load_checkpoint

    sources = [shared_root / "fixtures" / "ofa" / name / "checkpoint.pt" for name in OFA_FIXTURE_NAMES]
    for packed in sorted((REPO / "tests" / "data" / "ofa_variants").glob("*/checkpoint.pt.xz")):
        sources.append(tmp_path / f"{packed.parent.name}.pt")
        sources[-1].write_bytes(lzma.decompress(packed.read_bytes()))
    assert len(sources) >= 9
    for source in sources:
        prepared = ofa.prepare(load_checkpoint(source), source)
        _assert_same_inventory(prepared.config.to_config())
        _assert_draft_writes_the_real_config(prepared.config)


def _assert_draft_writes_the_real_config(draft):
    """config.json written by the transformers-free draft = the real OFAConfig's save_pretrained, and loads back."""
    import json
    import tempfile

    real = draft.to_config()
    real._auto_class = None  # as the pipeline saves it: a class registered earlier in this process must not rewrite auto_map
    with tempfile.TemporaryDirectory() as mine, tempfile.TemporaryDirectory() as theirs:
        draft.save_pretrained(mine)
        real.save_pretrained(theirs)
        written = json.loads((Path(mine) / "config.json").read_text())
        assert written == json.loads((Path(theirs) / "config.json").read_text())
        from hfport.models.ofa.configuration_ofa import OFAConfig

        assert OFAConfig.from_pretrained(mine).to_dict() == real.to_dict()


def _draft(**values):
    from hfport.converters.ofa_config_draft import OFAConfigDraft

    draft = OFAConfigDraft(**values)
    draft.architectures, draft.auto_map, draft.dtype = ["OFAForConditionalGeneration"], {"AutoConfig": "x.y"}, "float16"
    return draft


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_config_written_without_transformers_equals_ofaconfigs_for_every_preset(preset):
    for switches in SWITCHES:
        values = dict(PRESETS[preset], decoder_embed_dim=PRESETS[preset]["encoder_embed_dim"],
                      decoder_ffn_embed_dim=PRESETS[preset]["encoder_ffn_embed_dim"], **switches)
        _assert_draft_writes_the_real_config(_draft(**values))


@pytest.mark.parametrize("values", [
    dict(resnet_type="resnet200"), dict(share_all_embeddings=True, decoder_embed_dim=512),
    dict(encoder_prompt=True, encoder_prompt_type="suffix"), dict(decoder_prompt=True, decoder_prompt_length=0),
    dict(encoder_prompt=True, encoder_prompt_projection=True), dict(no_cross_attention=True),
], ids=lambda v: "-".join(v))
def test_the_draft_refuses_what_ofaconfig_refuses_with_the_same_words(values):
    from hfport.converters.ofa_config_draft import OFAConfigDraft
    from hfport.models.ofa.configuration_ofa import OFAConfig

    with pytest.raises(ValueError) as real:
        OFAConfig(**values)
    with pytest.raises(ValueError, match=None) as draft:
        OFAConfigDraft(**values)
    assert str(draft.value) == str(real.value)


def test_the_generation_config_written_without_transformers_equals_generationconfigs(tmp_path):
    import json

    from transformers import GenerationConfig

    from hfport.converters.ofa import _write_generation_config, generation_settings

    draft = _draft(max_target_positions=20, pad_token_id=1)
    _write_generation_config(tmp_path, draft)
    GenerationConfig(**generation_settings(draft)).save_pretrained(tmp_path / "real")
    written = json.loads((tmp_path / "generation_config.json").read_text())
    assert written == json.loads((tmp_path / "real" / "generation_config.json").read_text())
    assert written["max_new_tokens"] == 20 and written["suppress_tokens"] == [1]


def test_the_resnet_depth_table_is_the_configs():
    from hfport.converters.ofa_shapes import RESNET_BLOCKS
    from hfport.models.ofa.configuration_ofa import RESNET_LAYERS

    assert RESNET_BLOCKS == RESNET_LAYERS


def test_converting_an_ofa_checkpoint_imports_neither_transformers_nor_modelling_code(shared_root, tmp_path):
    """The conversion's cost floor: transformers (seconds to import) and hfport's model code stay unimported; the
    folder still loads with the real classes."""
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    script = ("import sys\nfrom hfport.converters import convert_checkpoint\n"
              f"convert_checkpoint({str(source)!r}, {str(tmp_path / 'out')!r})\n"
              "heavy = [m for m in ('transformers', 'transformers.modeling_utils', 'transformers.generation.utils',"
              " 'hfport.models.ofa.modeling_ofa') if m in sys.modules]\nprint('IMPORTED', heavy)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
    from transformers import AutoModelForSeq2SeqLM

    _, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out", trust_remote_code=True, output_loading_info=True)
    assert not any(info.values()), info


def test_a_corrupted_member_is_reported_even_when_the_hash_runs_alongside(shared_root, tmp_path):
    """The background hash's CRC refusal wins over whatever the damaged bytes made fail meanwhile."""
    from hfport.converters import convert_checkpoint
    from hfport.errors import CheckpointError
    from hfport.read.torch_file import _member_ranges

    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    data = bytearray(source.read_bytes())
    start, stop, name, _ = max(_member_ranges(source), key=lambda r: r[1] - r[0])  # the largest tensor
    data[start:stop] = b"\xff" * (stop - start)  # NaN everywhere: the conversion itself would refuse it too
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        convert_checkpoint(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hfport_written_safetensors_read_back_bit_exactly_with_metadata(tmp_path):
    from safetensors import safe_open

    from hfport.write.safetensors_shards import write_safetensors

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16), "c": torch.tensor(7),
               "d": torch.zeros(0, 3, dtype=torch.float16), "e": torch.tensor([True, False]),
               "f": torch.arange(6, dtype=torch.int64).reshape(2, 3)}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert set(handle.keys()) == set(tensors)
        for name, tensor in tensors.items():
            read = handle.get_tensor(name)
            assert read.dtype == tensor.dtype and read.shape == tensor.shape and torch.equal(read, tensor)


def _tiny_model():
    from hfport.demo import seeded_model

    return seeded_model(seed=3)


def test_encoder_position_bias_is_computed_once_for_the_batch_and_outputs_are_unchanged():
    """Every sample of a batch gives what it gives alone: the shared (batch-1) bias broadcasts correctly, with and
    without padding."""
    model = _tiny_model()
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, 40, (3, 6), generator=generator)
    src[1, 4:] = 1  # padding in one sample
    images = torch.randn(3, 3, 64, 64, generator=generator)
    prev = torch.randint(4, 40, (3, 4), generator=generator)
    with torch.no_grad():
        batch = model(input_ids=src, patch_images=images, decoder_input_ids=prev, use_cache=False)
        assert batch.encoder_position_embeddings.stride(0) == 0  # one sample's positions, expanded
        for i in range(3):
            alone = model(input_ids=src[i:i + 1, : 4 if i == 1 else 6], patch_images=images[i:i + 1],
                          decoder_input_ids=prev[i:i + 1], use_cache=False)
            torch.testing.assert_close(batch.logits[i], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_cached_generation_reuses_the_cross_position_keys_and_matches_uncached_decoding():
    model = _tiny_model()
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(4, 40, (2, 5), generator=generator)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    calls = []
    hook = model.decoder.cross_pos_k_linear.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            cached = model.generate(input_ids=src, patch_images=images, max_new_tokens=6, min_new_tokens=6,
                                    num_beams=1, do_sample=False, use_cache=True)
    finally:
        hook.remove()
    assert len(calls) == 1  # once per generation, not once per step
    with torch.no_grad():
        uncached = model.generate(input_ids=src, patch_images=images, max_new_tokens=6, min_new_tokens=6,
                                  num_beams=1, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("norm", ["frozen", "batchnorm", "sync_bn"])
def test_inference_resnet_with_folded_batchnorm_matches_the_layer_by_layer_resnet(norm):
    """No-grad eval runs the ResNet with BatchNorm folded into channels-last convolutions; training-style calls
    (grad enabled) run module by module. Same numbers, and a changed statistic is picked up."""
    from hfport.models.ofa.configuration_ofa import OFAConfig
    from hfport.models.ofa.modeling_ofa import OFAResNet

    config = OFAConfig(resnet_type="resnet18", freeze_resnet=norm == "frozen", sync_bn=norm == "sync_bn")
    torch.manual_seed(0)
    resnet = OFAResNet(config).eval()
    with torch.no_grad():  # trained-looking statistics: every BatchNorm far from identity
        for name, tensor in resnet.state_dict().items():
            if tensor.is_floating_point() and "conv" not in name and "downsample.0" not in name:
                centre = 1.0 if name.endswith(("running_var", "weight")) else 0.0
                tensor.copy_(centre + (torch.rand_like(tensor) - 0.5) * 0.6)
    pixels = torch.randn(2, 3, 64, 64)
    reference = resnet(pixels)  # grad enabled: module by module
    with torch.no_grad():
        folded = resnet(pixels)
    assert folded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(folded, reference.detach(), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        resnet.layer2[0].bn2.running_mean.add_(0.5)
        changed = resnet(pixels)
    torch.testing.assert_close(changed, resnet(pixels).detach(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(changed, folded)


def test_beam_search_leaves_the_cross_attention_cache_alone_and_finds_the_same_beams(monkeypatch):
    """OFA's `_reorder_cache` reorders only the self-attention cache: tokens and scores equal the stock reorder."""
    from transformers.cache_utils import EncoderDecoderCache

    model = _tiny_model()
    generator = torch.Generator().manual_seed(2)
    src = torch.randint(4, 40, (2, 5), generator=generator)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    kwargs = dict(input_ids=src, patch_images=images, max_new_tokens=6, num_beams=3, num_return_sequences=3,
                  do_sample=False, output_scores=True, return_dict_in_generate=True)
    cross_reorders = []
    original = EncoderDecoderCache.reorder_cache
    with torch.no_grad():
        fast = model.generate(**kwargs)
        monkeypatch.setattr(EncoderDecoderCache, "reorder_cache",
                            lambda self, idx: (cross_reorders.append(1), original(self, idx))[1])
        monkeypatch.delattr(type(model), "_reorder_cache")
        stock = model.generate(**kwargs)
    assert cross_reorders  # the comparison really used the stock path
    assert fast.sequences.tolist() == stock.sequences.tolist()
    torch.testing.assert_close(fast.sequences_scores, stock.sequences_scores, atol=1e-6, rtol=0)


def test_verification_generates_from_the_traced_encoder_output_after_one_full_generate():
    """The first generation check encodes through generate(); later ones reuse the encoder output the trace of
    the same set compared, and give the same tokens as encoding again."""
    from hfport.verify.backends.hf_ofa import hf_generate, hf_trace

    model = _tiny_model()
    generator = torch.Generator().manual_seed(4)
    sets = {name: {"src_tokens": torch.randint(4, 40, (2, 5), generator=generator),
                   "src_lengths": torch.tensor([5, 5]),
                   "patch_images": torch.randn(2, 3, 64, 64, generator=generator),
                   "patch_masks": torch.tensor([True, name == "a"]),
                   "prev_output_tokens": torch.randint(4, 40, (2, 3), generator=generator)} for name in ("a", "b")}
    fresh = {(name, beams): hf_generate(_tiny_model(), inputs, beams, 5, 1)
             for name, inputs in sets.items() for beams in (1, 3)}
    encodes = []
    model.get_encoder().register_forward_hook(lambda *a: encodes.append(1))
    for inputs in sets.values():
        hf_trace(model, inputs)
    assert len(encodes) == 2
    reused = {(name, beams): hf_generate(model, {k: v.clone() for k, v in inputs.items()}, beams, 5, 1)
              for name, inputs in sets.items() for beams in (1, 3)}
    assert len(encodes) == 3  # one full generate, then three from the traces
    assert reused == fresh
    other = {k: v.clone() for k, v in sets["a"].items()}
    other["patch_images"] += 1  # unseen inputs are encoded, never answered from memory
    hf_generate(model, other, 1, 5, 1)
    assert len(encodes) == 4
