"""The declarative mapping engine: strict accounting, shape checks, ties, splits, and running backwards."""

from __future__ import annotations

import pytest
import torch

from hfport.errors import MappingError
from hfport.mappings.engine import Mapping
from hfport.mappings.templates import Template, collapse_keys

TOY = """
[mapping]
family = "toy"
version = 1

[[tie]]
source = "dec.embed.weight"
same_as = "enc.embed.weight"
target = "dec.embed.weight"
tied_to = "enc.embed.weight"
when = "shared"

[[drop]]
keys = ["{side:enc|dec}.version"]
reason = "bookkeeping"

[[split]]
source = "blocks.{i}.qkv.{p}"
target = ["blocks.{i}.q.{p}", "blocks.{i}.k.{p}", "blocks.{i}.v.{p}"]
dim = 0

[[rename]]
source = "blocks.{i}.attn_ln.{p}"
target = "blocks.{i}.mid_norm.{p}"

[[rename]]
source = "{rest*}"
target = "{rest*}"
"""


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return Mapping.load(path)


def _source():
    torch.manual_seed(0)
    embed = torch.randn(5, 4)
    return {
        "enc.embed.weight": embed, "dec.embed.weight": embed.clone(), "enc.version": torch.tensor([3.0]),
        "blocks.0.qkv.weight": torch.randn(12, 4), "blocks.0.qkv.bias": torch.randn(12),
        "blocks.0.attn_ln.weight": torch.randn(4), "blocks.0.self_attn_ln.weight": torch.randn(4),
    }


def _expected():
    return {"enc.embed.weight": (5, 4), "dec.embed.weight": (5, 4), "blocks.0.q.weight": (4, 4),
            "blocks.0.k.weight": (4, 4), "blocks.0.v.weight": (4, 4), "blocks.0.q.bias": (4,),
            "blocks.0.k.bias": (4,), "blocks.0.v.bias": (4,), "blocks.0.mid_norm.weight": (4,),
            "blocks.0.self_attn_ln.weight": (4,)}


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_templates_are_anchored_so_attn_ln_does_not_match_self_attn_ln():
    template = Template("blocks.{i}.attn_ln.{p}")
    assert template.match("blocks.3.attn_ln.weight") == {"i": "3", "p": "weight"}
    assert template.match("blocks.3.self_attn_ln.weight") is None


def test_collapse_keys_groups_layer_indices_into_ranges():
    keys = [f"encoder.layers.{i}.fc1.weight" for i in range(12)] + ["decoder.layers.0.fc1.weight"]
    assert collapse_keys(keys) == "decoder.layers.0.fc1.weight, encoder.layers.{0..11}.fc1.weight"


def test_forward_plan_splits_renames_ties_and_drops(toy):
    source = _source()
    plan = toy.plan(_shapes(source), _expected(), {"shared": True})
    out = dict(Mapping.run(plan, source.__getitem__))
    assert torch.equal(out["blocks.0.k.weight"], source["blocks.0.qkv.weight"][4:8])
    assert torch.equal(out["blocks.0.mid_norm.weight"], source["blocks.0.attn_ln.weight"])
    assert "blocks.0.self_attn_ln.weight" in out  # not swallowed by the attn_ln rule
    assert plan.tied == {"dec.embed.weight": "enc.embed.weight"}
    assert plan.dropped == {"enc.version": "bookkeeping"}
    assert "dec.embed.weight" not in out


def test_an_unconsumed_source_key_is_an_error_naming_it(toy, tmp_path):
    strict = Mapping.load(_without_catch_all(tmp_path))
    source = {**_source(), "blocks.0.adapter.fc1.weight": torch.zeros(2)}
    with pytest.raises(MappingError, match=r"not mapped: .*blocks\.0\.adapter\.fc1\.weight"):
        strict.plan(_shapes(source), None, {"shared": True})


def test_an_unproduced_target_key_is_an_error_naming_it(toy):
    source = _source()
    del source["blocks.0.attn_ln.weight"]
    with pytest.raises(MappingError, match=r"would not be produced: blocks\.0\.mid_norm\.weight"):
        toy.plan(_shapes(source), _expected(), {"shared": True})


def test_a_wrong_shape_is_caught_before_any_tensor_is_read(toy):
    source = _source()
    source["blocks.0.attn_ln.weight"] = torch.zeros(7)
    with pytest.raises(MappingError, match=r"shape mismatch: blocks\.0\.attn_ln\.weight \[7\]"):
        toy.plan(_shapes(source), _expected(), {"shared": True})


def test_a_split_that_does_not_fit_the_targets_is_a_shape_error(toy):
    source = _source()
    source["blocks.0.qkv.weight"] = torch.zeros(10, 4)
    with pytest.raises(MappingError, match="cannot be split"):
        toy.plan(_shapes(source), _expected(), {"shared": True})


def test_tied_weights_that_differ_are_an_error(toy):
    source = _source()
    source["dec.embed.weight"] = source["dec.embed.weight"] + 1
    plan = toy.plan(_shapes(source), _expected(), {"shared": True})
    with pytest.raises(MappingError, match="tied weights"):
        list(Mapping.run(plan, source.__getitem__))


def test_backwards_reproduces_every_source_tensor_bit_exactly(toy):
    source = _source()
    forward = toy.plan(_shapes(source), _expected(), {"shared": True})
    converted = dict(Mapping.run(forward, source.__getitem__))
    backward = toy.plan(_shapes(converted), None, {"shared": True}, direction="backward")
    restored = dict(Mapping.run(backward, converted.__getitem__))
    assert backward.not_restored == {"enc.version": "bookkeeping", "dec.version": "bookkeeping"}
    assert set(restored) == set(source) - {"enc.version"}
    for key, tensor in restored.items():
        assert torch.equal(tensor, source[key]), key


def test_a_rule_flag_the_converter_did_not_set_is_an_error(toy):
    with pytest.raises(MappingError, match="flag 'shared'"):
        toy.plan(_shapes(_source()), _expected(), {})


def _without_catch_all(tmp_path):
    path = tmp_path / "strict.toml"
    path.write_text(TOY.replace('[[rename]]\nsource = "{rest*}"\ntarget = "{rest*}"\n', "")
                    + '\n[[rename]]\nsource = "{side:enc|dec}.embed.weight"\ntarget = "{side}.embed.weight"\n')
    return path
