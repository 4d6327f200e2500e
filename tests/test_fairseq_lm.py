"""fairseq's language model (transformer_lm*) -> stock XGLM / BioGPT causal LMs + a stock tokenizer with fairseq's
ids, checked against goldens fairseq itself recorded (tests/data/fairseq/lm_*, made by make_lm_checkpoints.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from hfport.converters.pipeline import convert_checkpoint, export_folder
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.verify.harness import verify_folder
from tests.helpers import load_in_fresh_process, run_cli

DATA = Path(__file__).parent / "data" / "fairseq"
CASES = {
    "lm_prenorm_tied": "XGLMForCausalLM",
    "lm_prenorm_untied": "XGLMForCausalLM",
    "lm_prenorm_learned_gpt": "BioGptForCausalLM",
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_lm")
    folders = {}

    def get(case: str) -> Path:
        if case not in folders:
            folders[case] = convert_checkpoint(DATA / case / "checkpoint.pt", root / case,
                                               dictionary=DATA / case / "dict.txt")
        return folders[case]

    return get


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _golden(case: str) -> dict:
    return torch.load(DATA / case / "golden.pt", map_location="cpu", weights_only=True)


def _with_args(checkpoint: dict, **changes) -> dict:
    args = checkpoint["cfg"]["model"]
    checkpoint["cfg"]["model"] = (argparse.Namespace(**{**vars(args), **changes}) if isinstance(args, argparse.Namespace)
                                  else {**args, **changes})
    return checkpoint


@pytest.mark.parametrize("case", CASES)
def test_language_model_becomes_a_stock_causal_lm_that_loads_without_hfport_with_nothing_missing(
        case, converted, tmp_path):
    folder = converted(case)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    info = load_in_fresh_process(folder, "AutoModelForCausalLM", tmp_path)
    assert info["class"] == CASES[case] and info["module"].startswith("transformers.models.")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("case", CASES)
def test_converted_language_model_matches_fairseq_logits_every_row_and_greedy_and_beam_tokens(case, converted):
    report = verify_folder(converted(case), golden=DATA / case / "golden.pt", check_beam=True, write=False)
    assert report["passed"], json.dumps(report["outputs"][:3], default=str)[:2000]
    logits = [r for r in report["outputs"] if r["name"] == "logits"]
    assert len(logits) == len(_golden(case)["meta"]["prompts"]) + 2  # the scoring batch, each prompt, </s> alone
    assert max(r["max_abs"] for r in logits) <= 1e-5
    assert {"decoder_inner_states.0", "decoder_inner_states.1", "decoder_features"} <= {r["name"] for r in report["outputs"]}
    runs = {g["name"]: g for g in report["generation"]}
    assert runs["greedy_p0"]["exact"] and runs["greedy_p1"]["exact"] and runs["greedy_bos"]["exact"]
    assert runs["beam4_bos"]["exact"] and runs["beam4_bos"]["required"]
    prompt = _golden(case)["inputs_p0"]["src_tokens"][0, 1:].tolist()
    assert runs["greedy_p0"]["reference"][0][:len(prompt)] == prompt  # fairseq's tokens start with the prompt


@pytest.mark.parametrize("case", CASES)
def test_language_model_tokenizer_gives_fairseqs_ids_with_the_start_token_first(case, converted):
    from transformers import AutoTokenizer

    golden = _golden(case)
    tokenizer = AutoTokenizer.from_pretrained(converted(case))
    sentences = golden["meta"]["sentences"] + golden["meta"]["prompts"]
    ids = [tokenizer(s).input_ids for s in sentences]
    assert ids[:len(golden["meta"]["sentences"])] == golden["meta"]["tokenizer_ids"]
    assert ids[-1] == golden["inputs_p1"]["src_tokens"][0].tolist()
    assert torch.equal(tokenizer(golden["meta"]["sentences"], padding=True, return_tensors="pt").input_ids,
                       golden["inputs"]["src_tokens"])  # right-padded, as fairseq batches them
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == sentences[0]


def test_tokenizer_agrees_with_fairseqs_dictionary_on_every_corpus_sentence_and_unknown_words(converted):
    """The dictionary's own rule (whitespace split, lookup, <unk> for the rest) on 300 corpus sentences."""
    import sys

    from transformers import AutoTokenizer

    sys.path.insert(0, str(DATA))
    from corpus import monolingual_lines
    from hfport.fairseq_text import read_dictionary

    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [e.symbol for e in read_dictionary(DATA / "lm_prenorm_tied" / "dict.txt")]
    index = {s: i for i, s in enumerate(symbols)}
    tokenizer = AutoTokenizer.from_pretrained(converted("lm_prenorm_tied"))
    lines = monolingual_lines(300, seed=5) + ["the  zebra\tsees a  house ", "naïve words"]
    expected = [[2] + [index.get(w, 3) for w in line.split()] for line in lines]
    assert [tokenizer(line).input_ids for line in lines] == expected


@pytest.mark.parametrize("case", CASES)
def test_fairseq_to_hf_to_fairseq_reproduces_every_language_model_tensor_bit_exactly(case, converted, tmp_path):
    result = export_folder(converted(case), tmp_path / "back.pt")
    back = torch.load(result["written"], map_location="cpu", weights_only=False)["model"]
    original = _load(DATA / case / "checkpoint.pt")["model"]
    assert set(back) == set(original) - set(result["not_restored"])
    assert all(k.endswith("._float_tensor") for k in result["not_restored"])
    assert all(back[k].dtype == original[k].dtype and torch.equal(back[k], original[k]) for k in back)


def test_an_optimizer_laden_language_model_converts_to_identical_weights(converted, tmp_path):
    case = "lm_prenorm_untied"
    checkpoint = _load(DATA / case / "checkpoint.pt")
    params = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    checkpoint["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(40.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": 0.01, "betas": (0.9, 0.98), "eps": 1e-8, "params": list(range(len(params)))}],
    }
    torch.save(checkpoint, tmp_path / "with_adam.pt")
    assert (tmp_path / "with_adam.pt").stat().st_size > 2.5 * (DATA / case / "checkpoint.pt").stat().st_size
    folder = convert_checkpoint(tmp_path / "with_adam.pt", tmp_path / "out")
    from safetensors.torch import load_file

    a, b = load_file(folder / "model.safetensors"), load_file(converted(case) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_language_model_leftovers_are_dropped_with_reasons_and_ties_are_recorded(converted):
    untied = json.loads((converted("lm_prenorm_untied") / "hfport.json").read_text())
    tied = json.loads((converted("lm_prenorm_tied") / "hfport.json").read_text())
    assert untied["family"] == "fairseq_lm" and "version number" in untied["dropped"]["decoder.version"]
    assert all(untied["dropped"].values())
    assert json.loads((converted("lm_prenorm_untied") / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((converted("lm_prenorm_tied") / "config.json").read_text())["tie_word_embeddings"] is True
    assert tied["tied"] == {"lm_head.weight": "model.embed_tokens.weight"} and untied["tied"] == {}


def test_fairseq_0_12_default_post_norm_language_model_is_refused_in_one_line_naming_the_flag(tmp_path):
    """`fairseq-train --arch transformer_lm` without --decoder-normalize-before trains post-norm layers in fairseq
    0.12 (lm_postnorm_sinusoidal was made that way): no stock causal LM computes them without invented weights."""
    result = run_cli(["convert", DATA / "lm_postnorm_sinusoidal" / "checkpoint.pt", tmp_path / "out"], tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: decoder_normalize_before=False (post-norm"), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"no_decoder_final_norm": True}, "--no-decoder-final-norm: XGLM and BioGPT always apply a final LayerNorm"),
    ({"layernorm_embedding": True}, "--layernorm-embedding"),
    ({"activation_fn": "swish"}, "activation 'swish'"),
    ({"decoder_normalize_before": False}, "decoder_normalize_before=False but the checkpoint has a final LayerNorm"),
])
def test_flag_combinations_no_stock_class_computes_are_refused_naming_the_flag(change, message, tmp_path):
    checkpoint = _with_args(_load(DATA / "lm_prenorm_tied" / "checkpoint.pt"), **change)
    torch.save(checkpoint, tmp_path / "changed.pt")
    with pytest.raises((UnsupportedCheckpointError, ConfigError)) as refused:
        convert_checkpoint(tmp_path / "changed.pt", tmp_path / "out")
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_language_model_without_a_final_layer_norm_tensor_is_refused_not_given_a_fresh_one(tmp_path):
    checkpoint = _load(DATA / "lm_prenorm_tied" / "checkpoint.pt")
    del checkpoint["model"]["decoder.layer_norm.weight"], checkpoint["model"]["decoder.layer_norm.bias"]
    torch.save(checkpoint, tmp_path / "no_final_norm.pt")
    with pytest.raises(UnsupportedCheckpointError, match="no final LayerNorm"):
        convert_checkpoint(tmp_path / "no_final_norm.pt", tmp_path / "out")


def test_a_dictionary_of_the_wrong_size_is_refused_before_writing(tmp_path):
    short = tmp_path / "dict.txt"
    short.write_text("the 5\ndog 3\n")
    with pytest.raises(ConfigError, match="symbols"):
        convert_checkpoint(DATA / "lm_prenorm_tied" / "checkpoint.pt", tmp_path / "out", dictionary=short)
    assert not (tmp_path / "out").exists()


def test_language_model_is_detected_from_cfg_model_arch_and_from_legacy_args(tmp_path):
    checkpoint = _load(DATA / "lm_prenorm_learned_gpt" / "checkpoint.pt")
    torch.save({"args": checkpoint["cfg"]["model"], "model": checkpoint["model"]}, tmp_path / "legacy.pt")
    folder = convert_checkpoint(tmp_path / "legacy.pt", tmp_path / "out")
    assert json.loads((folder / "hfport.json").read_text())["family"] == "fairseq_lm"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["BioGptForCausalLM"]


def test_hfport_run_continues_a_prompt_the_way_fairseq_greedy_does(converted, tmp_path):
    case = "lm_prenorm_tied"
    golden = _golden(case)
    result = run_cli(["run", converted(case), "--text", golden["meta"]["prompts"][0], "--greedy", "--max-length", "6",
                      "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    fairseq_tokens = next(v for k, v in golden["generation"].items() if k == "greedy_p0")["tokens"][0]
    prompt_len = golden["inputs_p0"]["src_tokens"].shape[1] - 1
    assert json.loads(result.stdout)["tokens"][:4] == fairseq_tokens[prompt_len:prompt_len + 4]


def test_live_verification_inputs_follow_fairseqs_language_model_convention(converted):
    """`verify --against` hands fairseq right-padded rows that start with </s>, one prompt, and </s> alone (the
    beam-search set); --text / --tokens become one row with the start token first."""
    from hfport.family import ConvertedFolder

    opened = ConvertedFolder.open(converted("lm_prenorm_tied"))
    sets = opened.family.probes(opened, 0)
    assert list(sets) == ["inputs", "inputs_p0", "inputs_bos"]
    rows = sets["inputs"]["src_tokens"]
    assert bool((rows[:, 0] == 2).all()) and bool((rows[:, 1:] == 2).sum() == 0)
    assert bool((rows[:, -1] == 1).any()) and not bool((rows[:, 0] == 1).any())  # padded on the right
    assert sets["inputs_bos"]["src_tokens"].tolist() == [[2]] and int(rows.max()) < opened.config["vocab_size"]
    user = opened.family.user_inputs(opened, sets["inputs"], None, [2, 4, 11])
    assert user["inputs"]["src_tokens"].tolist() == [[2, 4, 11]]
    assert opened.family.user_inputs(opened, sets["inputs"], None, [4, 11])["inputs"]["src_tokens"].tolist() == [[2, 4, 11]]
