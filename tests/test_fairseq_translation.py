"""fairseq's translation transformer -> stock transformers classes, checked against goldens that fairseq itself
recorded (tests/data/fairseq/<case>/golden.pt, made by tests/data/fairseq/make_checkpoints.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from hfport.converters.pipeline import convert_checkpoint, export_folder
from hfport.errors import HfportError, UnsupportedCheckpointError
from hfport.verify.harness import verify_folder
from tests.helpers import load_in_fresh_process, run_cli

DATA = Path(__file__).parent / "data" / "fairseq"
CASES = {
    "translation_postnorm_tied": "FSMTForConditionalGeneration",
    "translation_prenorm_shared": "M2M100ForConditionalGeneration",
    "translation_postnorm_untied": "FSMTForConditionalGeneration",
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_translation")
    folders = {}

    def get(case: str) -> Path:
        if case not in folders:
            folders[case] = convert_checkpoint(DATA / case / "checkpoint.pt", root / case)
        return folders[case]

    return get


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("case", CASES)
def test_translation_checkpoint_becomes_a_stock_class_that_loads_without_hfport_with_nothing_missing(
        case, converted, tmp_path):
    folder = converted(case)
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config  # stock class, no remote code
    info = load_in_fresh_process(folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert info["class"] == CASES[case]
    assert info["module"].startswith("transformers.models.")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("case", CASES)
def test_converted_translation_model_matches_fairseq_logits_every_layer_and_greedy_and_beam_tokens(case, converted):
    report = verify_folder(converted(case), golden=DATA / case / "golden.pt", check_beam=True, write=False)
    assert report["passed"], json.dumps(report["outputs"][:3], default=str)[:2000]
    logits = [r for r in report["outputs"] if r["name"] == "logits"]
    assert logits and max(r["max_abs"] for r in logits) <= 1e-5
    names = {r["name"] for r in report["outputs"]}
    assert {"encoder_hidden_states.1", "decoder_inner_states.1", "encoder_out", "decoder_features"} <= names
    runs = {g["name"]: g for g in report["generation"]}
    assert runs["greedy"]["exact"] and runs["beam4"]["exact"] and runs["beam4"]["required"]
    assert all(tokens[-1] == 2 for tokens in runs["beam4"]["reference"])  # generation really finished, not cut off


@pytest.mark.parametrize("case", CASES)
def test_fairseq_to_hf_to_fairseq_reproduces_every_translation_tensor_bit_exactly(case, converted, tmp_path):
    result = export_folder(converted(case), tmp_path / "back.pt")
    back = torch.load(result["written"], map_location="cpu", weights_only=False)["model"]
    original = _load(DATA / case / "checkpoint.pt")["model"]
    not_restored = set(result["not_restored"])
    for key, tensor in original.items():
        if key in not_restored:
            continue
        assert key in back, key
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    assert set(back) <= set(original)
    assert all(k.endswith("._float_tensor") for k in not_restored)  # older fairseq's marker; not in this file


def test_the_round_trip_file_loads_back_into_fairseq_shape_checks(converted, tmp_path):
    """The exported state dict has exactly fairseq's parameter names and shapes (what load_state_dict checks)."""
    case = "translation_postnorm_tied"
    result = export_folder(converted(case), tmp_path / "back.pt")
    back = torch.load(result["written"], map_location="cpu", weights_only=False)
    original = _load(DATA / case / "checkpoint.pt")
    params = {k: tuple(v.shape) for k, v in original["model"].items() if not k.endswith("_float_tensor")}
    assert {k: tuple(v.shape) for k, v in back["model"].items()} == params
    assert isinstance(back["cfg"]["model"], argparse.Namespace)
    assert back["cfg"]["model"].arch == "transformer_iwslt_de_en"


def test_fairseq_only_leftovers_are_dropped_with_stated_reasons(converted):
    provenance = json.loads((converted("translation_postnorm_tied") / "hfport.json").read_text())
    assert provenance["family"] == "fairseq_translation"
    dropped = provenance["dropped"]
    assert "version number" in dropped["encoder.version"] and "version number" in dropped["decoder.version"]
    for key, reason in dropped.items():
        assert reason, key
    generated = provenance["generated"]
    assert set(generated) == {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}


def test_an_optimizer_laden_checkpoint_converts_without_its_optimizer_state_being_needed(converted, tmp_path):
    checkpoint = _load(DATA / "translation_postnorm_tied" / "checkpoint.pt")
    params = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    checkpoint["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(400.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": 0.005, "betas": (0.9, 0.999), "eps": 1e-8, "params": list(range(len(params)))}],
    }
    laden = tmp_path / "with_adam.pt"
    torch.save(checkpoint, laden)
    assert laden.stat().st_size > 2.5 * (DATA / "translation_postnorm_tied" / "checkpoint.pt").stat().st_size
    folder = convert_checkpoint(laden, tmp_path / "out")
    plain = converted("translation_postnorm_tied")
    from safetensors.torch import load_file

    a, b = load_file(folder / "model.safetensors"), load_file(plain / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_family_is_detected_from_cfg_model_name_or_legacy_args_arch(tmp_path):
    checkpoint = _load(DATA / "translation_postnorm_tied" / "checkpoint.pt")
    model_args = checkpoint["cfg"]["model"]
    legacy = {"args": model_args, "model": checkpoint["model"]}
    torch.save(legacy, tmp_path / "legacy.pt")
    folder = convert_checkpoint(tmp_path / "legacy.pt", tmp_path / "out")
    assert json.loads((folder / "hfport.json").read_text())["family"] == "fairseq_translation"


def test_a_pre_norm_model_with_separate_dictionaries_is_refused_with_the_reason(tmp_path):
    checkpoint = _load(DATA / "translation_prenorm_shared" / "checkpoint.pt")
    args = checkpoint["cfg"]["model"]
    args = argparse.Namespace(**{**vars(args), "share_all_embeddings": False}) if isinstance(
        args, argparse.Namespace) else {**args, "share_all_embeddings": False}
    checkpoint["cfg"]["model"] = args
    checkpoint["model"]["decoder.embed_tokens.weight"] = checkpoint["model"]["decoder.embed_tokens.weight"][:-8].clone()
    checkpoint["model"]["decoder.output_projection.weight"] = checkpoint["model"]["decoder.embed_tokens.weight"]
    torch.save(checkpoint, tmp_path / "prenorm_separate.pt")
    result = run_cli(["convert", tmp_path / "prenorm_separate.pt", tmp_path / "out"], tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "separate source/target embeddings" in result.stderr
    assert not (tmp_path / "out").exists()


def test_learned_positions_are_refused_rather_than_mapped_onto_sinusoidal_ones(tmp_path):
    checkpoint = _load(DATA / "translation_postnorm_untied" / "checkpoint.pt")
    checkpoint["model"]["encoder.embed_positions.weight"] = torch.zeros(1026, 32)
    torch.save(checkpoint, tmp_path / "learned.pt")
    with pytest.raises(UnsupportedCheckpointError, match="learned positional embeddings"):
        convert_checkpoint(tmp_path / "learned.pt", tmp_path / "out")


def test_a_tied_decoder_whose_tensors_differ_is_refused(tmp_path):
    checkpoint = _load(DATA / "translation_prenorm_shared" / "checkpoint.pt")
    checkpoint["model"]["decoder.embed_tokens.weight"] = checkpoint["model"]["decoder.embed_tokens.weight"] + 1
    torch.save(checkpoint, tmp_path / "broken.pt")
    with pytest.raises(HfportError, match="should equal"):
        convert_checkpoint(tmp_path / "broken.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fairseq_0_12_2_fast_path_copies_are_dropped_with_their_reason_and_change_nothing(converted, tmp_path):
    """fairseq 0.12.2 saves per-layer in_proj_* / out_proj_* / fc*_ fast-path Parameters (zeros after fresh training,
    transformers #19260); fairseq refills them from the regular weights on load, so they must not be mapped."""
    checkpoint = _load(DATA / "translation_postnorm_untied" / "checkpoint.pt")
    state = checkpoint["model"]
    for i in (0, 1):
        p = f"encoder.layers.{i}."
        state[p + "in_proj_weight"] = torch.zeros(96, 32)
        state[p + "in_proj_bias"] = torch.zeros(96)
        for name in ("out_proj", "fc1", "fc2"):
            source = p + ("self_attn." if name == "out_proj" else "") + name
            state[p + name + "_weight"] = torch.zeros_like(state[source + ".weight"])
            state[p + name + "_bias"] = torch.zeros_like(state[source + ".bias"])
    torch.save(checkpoint, tmp_path / "fairseq_0_12_2.pt")
    folder = convert_checkpoint(tmp_path / "fairseq_0_12_2.pt", tmp_path / "out")
    dropped = json.loads((folder / "hfport.json").read_text())["dropped"]
    assert "fast-path copy" in dropped["encoder.layers.1.in_proj_weight"]
    assert len([k for k in dropped if "_proj_" in k or "fc1_" in k or "fc2_" in k]) == 16
    from safetensors.torch import load_file

    plain = load_file(converted("translation_postnorm_untied") / "model.safetensors")
    assert all(torch.equal(t, plain[k]) for k, t in load_file(folder / "model.safetensors").items())


@pytest.mark.parametrize("case, title", [("translation_postnorm_tied", "fairseq translation transformer"),
                                         ("bart_translation", "fairseq BART")])
def test_inspect_names_fairseqs_own_family_and_arch(case, title, tmp_path):
    result = run_cli(["inspect", DATA / case / "checkpoint.pt"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert title in result.stdout
    assert json.loads((DATA / case / "meta.json").read_text())["arch"] in result.stdout


# -- tokenizers: the task's dictionaries as stock tokenizers with fairseq's ids ------------------------------------

@pytest.fixture(scope="module")
def with_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_translation_tok")
    return {case: convert_checkpoint(DATA / case / "checkpoint.pt", root / case, dictionary=DATA / case / "dict.de.txt",
                                     target_dictionary=DATA / case / "dict.en.txt")
            for case in ("translation_postnorm_tied", "translation_prenorm_shared")}


@pytest.mark.parametrize("case", ["translation_postnorm_tied", "translation_prenorm_shared"])
def test_source_tokenizer_gives_fairseqs_left_padded_ids_and_target_tokenizer_decodes_fairseqs_output(
        case, with_tokenizers):
    from transformers import AutoTokenizer

    folder = with_tokenizers[case]
    golden = _load(DATA / case / "golden.pt")
    source = AutoTokenizer.from_pretrained(folder)
    batch = source(golden["meta"]["sentences"], padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, golden["inputs"]["src_tokens"])  # words + </s>, left-padded as recorded
    separate = (folder / "target_tokenizer").is_dir()
    assert separate == (case == "translation_postnorm_tied")  # a joined dictionary needs one tokenizer
    target = AutoTokenizer.from_pretrained(folder, subfolder="target_tokenizer") if separate else source
    assert [target.decode(t, skip_special_tokens=True) for t in golden["generation"]["beam4"]["tokens"]] == [
        "the red dog sees a house", "a child", "the big man likes a new book"]


def test_source_tokenizer_agrees_with_fairseqs_dictionary_on_every_corpus_sentence(with_tokenizers):
    import random
    import sys

    from transformers import AutoTokenizer

    from hfport.fairseq_text import read_dictionary

    sys.path.insert(0, str(DATA))
    from corpus import sentence_pair

    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [e.symbol for e in read_dictionary(
        DATA / "translation_postnorm_tied" / "dict.de.txt")]
    index = {s: i for i, s in enumerate(symbols)}
    rng = random.Random(5)
    lines = [" ".join(sentence_pair(rng)[0]) for _ in range(300)] + ["der  zebra\tsieht ein haus ", "ünbekannt"]
    tokenizer = AutoTokenizer.from_pretrained(with_tokenizers["translation_postnorm_tied"])
    assert [tokenizer(line).input_ids for line in lines] == [[index.get(w, 3) for w in line.split()] + [2]
                                                            for line in lines]


def test_separate_vocabularies_without_the_target_dictionary_are_refused_before_writing(tmp_path):
    from hfport.errors import ConfigError

    case = DATA / "translation_postnorm_tied"
    with pytest.raises(ConfigError, match="--target-dict"):
        convert_checkpoint(case / "checkpoint.pt", tmp_path / "out", dictionary=case / "dict.de.txt")
    assert not (tmp_path / "out").exists()


def test_hfport_run_translates_text_to_text_with_the_converted_tokenizers(with_tokenizers, tmp_path):
    result = run_cli(["run", with_tokenizers["translation_postnorm_tied"], "--text", "der hund rot sieht ein haus"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "the red dog sees a house"


@pytest.mark.parametrize("case, left, first", [("translation_postnorm_tied", True, None), ("bart_translation", False, 0)])
def test_live_verification_probes_are_padded_the_way_each_task_pads_its_sources(case, left, first, converted, tmp_path):
    """`verify --against` hands fairseq these token rows: translation sources left-padded, BART's <s> ... </s>
    right-padded; every row ends in </s> and stays inside the source vocabulary."""
    from hfport.family import ConvertedFolder

    folder = converted(case) if case != "bart_translation" else convert_checkpoint(
        DATA / case / "checkpoint.pt", tmp_path / "bart")
    opened = ConvertedFolder.open(folder)
    rows = opened.family.probes(opened, 0)["inputs"]["src_tokens"]
    assert rows.shape[0] == 3 and bool((rows == 1).any())
    assert all(bool(r[r != 1][-1] == 2) for r in rows)
    assert bool((rows[:, 0] == 1).any()) == left and bool((rows[:, -1] == 1).any()) == (not left)
    if first is not None:
        assert all(int(r[r != 1][0]) == first for r in rows)
    vocab = opened.config.get("src_vocab_size") or opened.config["vocab_size"]
    assert int(rows.max()) < vocab


def test_a_plain_forward_of_the_converted_fsmt_matches_fairseq_without_any_cache_argument(converted):
    """Stock FSMT skips its causal mask when use_cache is on, also for a whole teacher-forced target; the
    converted config turns it off (generation turns it on again), so the call users make by habit is right."""
    from transformers import AutoModelForSeq2SeqLM

    case = "translation_postnorm_tied"
    golden = _load(DATA / case / "golden.pt")
    model = AutoModelForSeq2SeqLM.from_pretrained(converted(case)).eval()
    src, prev = golden["inputs"]["src_tokens"], golden["inputs"]["prev_output_tokens"]
    with torch.no_grad():
        logits = model(input_ids=src, attention_mask=src.ne(1), decoder_input_ids=prev).logits
    keep = prev.ne(1)
    assert (logits - golden["outputs"]["logits"])[keep].abs().max() <= 1e-5
    assert json.loads((converted(case) / "generation_config.json").read_text())["use_cache"] is True


def test_the_folders_generation_config_never_ends_at_the_first_token_as_fairseqs_min_len_1(converted):
    """fairseq-generate bans </s> at the first step (--min-len 1). With </s> made the favourite everywhere (+100 on
    its score, applied after transformers' own processors) generate() with the folder's settings still emits one
    real token first, as fairseq would."""
    from transformers import AutoModelForSeq2SeqLM, LogitsProcessor, LogitsProcessorList

    class PreferEos(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, 2] += 100.0
            return scores

    model = AutoModelForSeq2SeqLM.from_pretrained(converted("translation_postnorm_untied")).eval()
    assert model.generation_config.min_new_tokens == 1
    source = torch.tensor([[4, 5, 6, 2]])
    with torch.no_grad():
        tokens = model.generate(input_ids=source, num_beams=1, logits_processor=LogitsProcessorList([PreferEos()]))
        banned_nothing = model.generate(input_ids=source, num_beams=1, min_new_tokens=0,
                                        logits_processor=LogitsProcessorList([PreferEos()]))
    assert tokens[0].tolist()[:1] == [2] and tokens[0, 1] != 2 and tokens[0].tolist()[2:] == [2]
    assert banned_nothing[0].tolist() == [2, 2]  # the ban is what makes the difference
