"""OFA checkpoints fine-tuned with OFA's prefix tuning (--encoder-prompt / --decoder-prompt, with or without
--*-prompt-projection) or adapters (--adapter): they convert, load with stock transformers, match the upstream
code (goldens in tests/data/ofa_variants, made by tests/make_ofa_variant_goldens.py), generate with the cache as
without it, and go back to fairseq bit-exactly."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest
import torch

from helpers import load_in_fresh_process, run_cli
from hfport.converters import convert_checkpoint
from hfport.converters.pipeline import export_folder
from hfport.demo import seeded_model, write_fairseq_checkpoint
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.read.torch_file import load_checkpoint

DATA = Path(__file__).parent / "data" / "ofa_variants"
GOLDEN_VARIANTS = sorted(p.name for p in DATA.iterdir() if (p / "golden.pt").is_file()) if DATA.is_dir() else []

TINY = dict(encoder_layers=2, decoder_layers=2, encoder_embed_dim=32, decoder_embed_dim=32,
            encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
            token_bucket_size=16, image_bucket_size=6)
PEFT = {
    "prefix_encoder": dict(encoder_prompt=True, encoder_prompt_length=5),
    "prefix_decoder": dict(decoder_prompt=True, decoder_prompt_length=4),
    "prefix_both_projection": dict(encoder_prompt=True, encoder_prompt_length=3, encoder_prompt_projection=True,
                                   encoder_prompt_dim=24, decoder_prompt=True, decoder_prompt_length=6,
                                   decoder_prompt_projection=True, decoder_prompt_dim=40),
    "adapter": dict(adapter=True, adapter_dim=8),
    "adapter_and_prefix": dict(adapter=True, adapter_dim=5, encoder_prompt=True, encoder_prompt_length=2,
                               decoder_prompt=True, decoder_prompt_length=3),
}
FAIRSEQ_KEYS = {
    "prefix_encoder": ["encoder.encoder_prompt_encoder.embedding.weight"],
    "prefix_decoder": ["decoder.decoder_prompt_encoder.embedding.weight"],
    "prefix_both_projection": [f"{side}.{side}_prompt_encoder.{name}" for side in ("encoder", "decoder")
                               for name in ("embedding.weight", "trans.0.weight", "trans.0.bias", "trans.2.weight",
                                            "trans.2.bias")],
    "adapter": [f"{side}.layers.{i}.adapter.{proj}.{p}" for side in ("encoder", "decoder") for i in (0, 1)
                for proj in ("down_proj", "up_proj") for p in ("weight", "bias")],
}


def _inputs(vocab: int):
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (2, 6), generator=generator)
    src[:, 0], src[:, -1], src[1, 4:] = 0, 2, 1
    src[1, 3] = 2
    return dict(input_ids=src, patch_images=torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1,
                patch_masks=torch.tensor([True, False]),
                decoder_input_ids=torch.tensor([[0, 9, 11, 13], [0, 17, 1, 1]]))


def _load(folder):
    import transformers

    return transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True,
                                                             dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """Variant name -> (seeded source model, fairseq checkpoint path, converted folder)."""
    root = tmp_path_factory.mktemp("peft")
    cache = {}

    def get(name):
        if name not in cache:
            source = seeded_model(seed=7, **TINY, **PEFT[name])
            checkpoint = write_fairseq_checkpoint(source, root / f"{name}.pt")
            cache[name] = source, checkpoint, convert_checkpoint(checkpoint, root / name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAIRSEQ_KEYS))
def test_peft_modules_are_written_under_the_upstream_fairseq_names(name, hand_built):
    _, checkpoint, _ = hand_built(name)
    state = load_checkpoint(checkpoint)["model"]
    assert set(FAIRSEQ_KEYS[name]) <= set(state)


@pytest.mark.parametrize("name", list(PEFT))
def test_prompt_and_adapter_checkpoints_convert_with_their_flags_derived_and_the_same_logits(name, hand_built):
    source, _, folder = hand_built(name)
    config = json.loads((folder / "config.json").read_text())
    for field, value in PEFT[name].items():
        assert config[field] == value, field
    converted = _load(folder)
    inputs = _inputs(source.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(source(**inputs).logits, converted(**inputs).logits)


@pytest.mark.parametrize("name", ["prefix_decoder", "prefix_both_projection", "adapter_and_prefix"])
def test_decoder_prompts_are_applied_at_every_cached_generation_step(name, hand_built):
    _, _, folder = hand_built(name)
    model = _load(folder)
    inputs = {k: v for k, v in _inputs(model.config.vocab_size).items() if k != "decoder_input_ids"}
    inputs["attention_mask"] = inputs["input_ids"].ne(1).long()
    for beams in (1, 3):
        settings = dict(num_beams=beams, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        with torch.no_grad():
            cached = model.generate(**inputs, **settings, use_cache=True, output_scores=True,
                                    return_dict_in_generate=True)
            uncached = model.generate(**inputs, **settings, use_cache=False, output_scores=True,
                                      return_dict_in_generate=True)
        assert torch.equal(cached.sequences, uncached.sequences)
        for a, b in zip(cached.scores, uncached.scores):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_decoder_prompt_changes_the_output_and_the_cache_holds_only_real_tokens(hand_built):
    source, _, folder = hand_built("prefix_decoder")
    model = _load(folder)
    inputs = _inputs(model.config.vocab_size)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        assert out.past_key_values.get_seq_length() == inputs["decoder_input_ids"].shape[1]
        with_prompt = out.logits
        model.decoder.prompt_encoder.embedding.weight.zero_()
        assert not torch.allclose(model(**inputs).logits, with_prompt)


def test_prompt_and_adapter_folders_load_in_a_fresh_process_with_nothing_missing(hand_built, tmp_path):
    _, _, folder = hand_built("adapter_and_prefix")
    info = load_in_fresh_process(folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert info["class"] == "OFAForConditionalGeneration"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("name", list(PEFT))
def test_prompt_and_adapter_checkpoints_go_back_to_fairseq_bit_exactly(name, hand_built, tmp_path):
    _, checkpoint, folder = hand_built(name)
    original = load_checkpoint(checkpoint)["model"]
    restored = load_checkpoint(export_folder(folder, tmp_path / "back.pt")["written"])["model"]
    assert set(restored) == set(original)
    for key, tensor in original.items():
        assert torch.equal(restored[key], tensor), key


def _rewrite(checkpoint: Path, out: Path, edit) -> Path:
    data = load_checkpoint(checkpoint)
    edit(data)
    torch.save(data, out)
    return out


def test_a_prompt_type_the_upstream_code_cannot_build_is_refused_in_one_line(hand_built, tmp_path):
    _, checkpoint, _ = hand_built("prefix_encoder")
    bad = _rewrite(checkpoint, tmp_path / "prompt_type.pt",
                   lambda d: setattr(d["cfg"]["model"], "encoder_prompt_type", "prompt"))
    result = run_cli(["convert", bad, tmp_path / "out"], tmp_path)
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "encoder_prompt_type 'prompt'" in lines[0]


def test_stated_prompt_length_contradicting_the_prompt_table_is_refused(hand_built, tmp_path):
    _, checkpoint, _ = hand_built("prefix_encoder")
    bad = _rewrite(checkpoint, tmp_path / "length.pt",
                   lambda d: setattr(d["cfg"]["model"], "encoder_prompt_length", 100))
    with pytest.raises(ConfigError, match="encoder_prompt_length=100 but the tensors say 5"):
        convert_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_stated_adapter_without_adapter_tensors_is_refused(hand_built, tmp_path):
    _, checkpoint, _ = hand_built("prefix_encoder")
    bad = _rewrite(checkpoint, tmp_path / "adapter.pt", lambda d: setattr(d["cfg"]["model"], "adapter", True))
    with pytest.raises(ConfigError, match="adapter=True but the tensors say False"):
        convert_checkpoint(bad, tmp_path / "out")


def test_adapters_of_unequal_width_are_refused(hand_built, tmp_path):
    _, checkpoint, _ = hand_built("adapter")

    def shrink(data):
        state = data["model"]
        state["decoder.layers.1.adapter.down_proj.weight"] = state["decoder.layers.1.adapter.down_proj.weight"][:4]

    with pytest.raises(ConfigError, match=r"adapters of different widths \[4, 8\]"):
        convert_checkpoint(_rewrite(checkpoint, tmp_path / "uneven.pt", shrink), tmp_path / "out")


@pytest.mark.parametrize("key, what", [("classification_heads.snli.dense.weight", "classification heads"),
                                       ("encoder.embed_images.patch_embed.weight", "a ViT image backbone")])
def test_vit_backbones_and_classification_heads_stay_refused_by_name(key, what, hand_built, tmp_path):
    _, checkpoint, _ = hand_built("adapter")
    bad = _rewrite(checkpoint, tmp_path / "extra.pt", lambda d: d["model"].__setitem__(key, torch.zeros(4, 4)))
    with pytest.raises(UnsupportedCheckpointError, match=what):
        convert_checkpoint(bad, tmp_path / "out")


# -- goldens recorded from the upstream code ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden_variants")
    cache = {}

    def get(name):
        if name not in cache:
            source = root / name / "checkpoint.pt"
            source.parent.mkdir()
            with lzma.open(DATA / name / "checkpoint.pt.xz") as packed, open(source, "wb") as out:
                shutil.copyfileobj(packed, out)
            cache[name] = source, convert_checkpoint(source, root / name / "hf")
        return cache[name]

    return get


def test_prefix_tuning_on_each_side_and_adapters_have_upstream_goldens():
    assert {"prefix-encoder", "prefix-decoder", "prefix-both", "prefix-both-projection", "adapter",
            "adapter-prefix-both"} <= set(GOLDEN_VARIANTS)


@pytest.mark.parametrize("name", GOLDEN_VARIANTS)
def test_converted_upstream_variant_matches_its_golden_layer_by_layer_and_in_greedy_and_beam(name, golden_converted):
    from hfport.verify.harness import verify_folder

    _, folder = golden_converted(name)
    report = verify_folder(folder, golden=DATA / name / "golden.pt", check_beam=True, write=False)
    assert report["passed"], report["first_divergence"]
    layered = [o for o in report["outputs"] if "hidden_states" in o["name"] or "inner_states" in o["name"]]
    assert len(layered) >= 2 * (2 + 1)  # embeddings + every layer, both sides, both input sets
    assert max(o["max_abs"] for o in report["outputs"] if "max_abs" in o) <= 1e-4
    runs = {g["name"] for g in report["generation"]}
    assert {"greedy", "beam3"} <= runs and all(g["exact"] for g in report["generation"])


@pytest.mark.parametrize("name", GOLDEN_VARIANTS)
def test_upstream_variant_goes_back_to_fairseq_bit_exactly(name, golden_converted, tmp_path):
    source, folder = golden_converted(name)
    original = load_checkpoint(source)["model"]
    restored = load_checkpoint(export_folder(folder, tmp_path / "back.pt")["written"])["model"]
    assert set(restored) == set(original)
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
