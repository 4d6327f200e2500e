"""fairseq mBART -> stock MBartForConditionalGeneration, and fairseq BART with a classification head -> stock
BartForSequenceClassification, each with a stock tokenizer giving fairseq's ids, checked against goldens fairseq
recorded (tests/data/fairseq/mbart_translation and bart_classifier, made by make_mbart_and_classifier.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hfport.converters.pipeline import convert_checkpoint, export_folder
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.verify.harness import verify_folder
from tests.helpers import load_in_fresh_process, run_cli

DATA = Path(__file__).parent / "data" / "fairseq"
MBART = DATA / "mbart_translation"
CLS = DATA / "bart_classifier"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _golden(case: Path) -> dict:
    return torch.load(case / "golden.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mbart_folder(tmp_path_factory):
    return convert_checkpoint(MBART / "checkpoint.pt", tmp_path_factory.mktemp("mbart") / "hf", bpe_dir=MBART,
                              dictionary=MBART / "dict.txt")


@pytest.fixture(scope="module")
def cls_folder(tmp_path_factory):
    return convert_checkpoint(CLS / "checkpoint.pt", tmp_path_factory.mktemp("bartcls") / "hf", bpe_dir=CLS,
                              dictionary=CLS / "input0" / "dict.txt")


def _bit_exact_round_trip(folder: Path, source: Path, tmp_path: Path) -> None:
    result = export_folder(folder, tmp_path / "back.pt")
    back, original = _load(result["written"])["model"], _load(source)["model"]
    assert set(back) == set(original)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in original.items())


def _with_adam_state(source: Path, target: Path) -> Path:
    checkpoint = _load(source)
    params = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    checkpoint["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(300.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": 0.005, "betas": (0.9, 0.999), "eps": 1e-8, "params": list(range(len(params)))}],
    }
    torch.save(checkpoint, target)
    return target


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# -- mBART -----------------------------------------------------------------------------------------------------------

def test_fairseq_mbart_becomes_stock_mbart_that_loads_without_hfport_with_nothing_missing(mbart_folder, tmp_path):
    assert "auto_map" not in json.loads((mbart_folder / "config.json").read_text())
    info = load_in_fresh_process(mbart_folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert info["class"] == "MBartForConditionalGeneration" and info["module"].startswith("transformers.models.mbart")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


def test_hfport_verify_passes_mbart_against_fairseqs_logits_every_layer_and_greedy_and_beam_tokens(mbart_folder,
                                                                                                     tmp_path):
    result = run_cli(["verify", mbart_folder, "--golden", MBART / "golden.pt", "--check-beam", "--report",
                      tmp_path / "report.json"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["reference"]["outputs"] == len(report["outputs"]) == 8
    assert max(r["max_abs"] for r in report["outputs"] if r["name"] == "logits") <= 1e-5
    runs = {g["name"]: g for g in report["generation"]}
    assert runs["greedy"]["exact"] and runs["beam4"]["exact"] and runs["beam4"]["required"]


def test_mbart_generate_with_the_folders_own_generation_config_gives_fairseqs_tokens(mbart_folder):
    """The call users make: generate() with nothing but the inputs; the generation config starts from and stops
    at [en_XX], as translation_from_pretrained_bart's generator does."""
    from transformers import AutoModelForSeq2SeqLM

    golden = _golden(MBART)
    model = AutoModelForSeq2SeqLM.from_pretrained(mbart_folder).eval()
    target = golden["meta"]["special_ids"]["target_lang"]
    assert model.generation_config.decoder_start_token_id == target == model.generation_config.eos_token_id
    src = golden["inputs"]["src_tokens"]
    limit = golden["generation"]["beam4"]["settings"]["max_len_b"] + 1  # fairseq forces [en_XX] after max_len_b
    out = model.generate(input_ids=src, attention_mask=src.ne(1), num_beams=4, max_new_tokens=limit)
    got = [row[1:row[1:].index(target) + 2] for row in out.tolist()]
    assert got == golden["generation"]["beam4"]["tokens"]


def test_mbart_tokenizer_gives_fairseqs_ids_on_every_string_though_its_dictionary_is_not_in_spm_order(mbart_folder):
    from transformers import AutoTokenizer

    golden = _golden(MBART)
    tokenizer = AutoTokenizer.from_pretrained(mbart_folder)
    strings, expected = golden["meta"]["tokenizer_strings"], golden["meta"]["tokenizer_strings_ids"]
    assert len(strings) >= 14
    assert [tokenizer(s).input_ids for s in strings] == expected
    batch = tokenizer(golden["meta"]["sentences"], padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, golden["inputs"]["src_tokens"])  # right-padded, as recorded
    # the test means something only if fairseq's dictionary order differs from the SentencePiece model's
    from hfport.converters.sentencepiece_vocab import NORMAL, read_sentencepiece_model

    spm_order = [p for p, _, kind in read_sentencepiece_model(MBART / "sentence.bpe.model").pieces if kind == NORMAL]
    fairseq_order = [line.split(" ")[0] for line in (MBART / "dict.txt").read_text(encoding="utf-8").splitlines()]
    assert fairseq_order[:len(spm_order)] != spm_order and sorted(fairseq_order) == sorted(spm_order)


def test_fairseq_to_hf_to_fairseq_reproduces_every_mbart_tensor_bit_exactly(mbart_folder, tmp_path):
    _bit_exact_round_trip(mbart_folder, MBART / "checkpoint.pt", tmp_path)
    provenance = json.loads((mbart_folder / "hfport.json").read_text())
    assert provenance["family"] == "fairseq_mbart" and set(provenance["generated"]) == {"final_logits_bias"}


def test_an_adam_laden_mbart_checkpoint_converts_to_the_same_weights(mbart_folder, tmp_path):
    laden = _with_adam_state(MBART / "checkpoint.pt", tmp_path / "adam.pt")
    assert _same_weights(convert_checkpoint(laden, tmp_path / "out"), mbart_folder)


def test_a_post_norm_mbart_arch_is_refused_with_the_reason(tmp_path):
    checkpoint = _load(MBART / "checkpoint.pt")
    for side in ("encoder", "decoder"):
        for p in ("weight", "bias"):
            del checkpoint["model"][f"{side}.layer_norm.{p}"]
    torch.save(checkpoint, tmp_path / "post.pt")
    with pytest.raises(UnsupportedCheckpointError, match="pre-norm"):
        convert_checkpoint(tmp_path / "post.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_mbart_dictionary_missing_a_sentencepiece_piece_is_refused_before_writing(tmp_path):
    lines = (MBART / "dict.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "dict.txt").write_text("\n".join(lines[:-1] + ["madeupword0000 0"]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="lacks 1 of"):
        convert_checkpoint(MBART / "checkpoint.pt", tmp_path / "out", bpe_dir=MBART, dictionary=tmp_path / "dict.txt")
    assert not (tmp_path / "out").exists()


def test_a_damaged_sentencepiece_model_is_refused_in_one_line_before_writing(tmp_path):
    (tmp_path / "sentence.bpe.model").write_bytes((MBART / "sentence.bpe.model").read_bytes()[:777])
    with pytest.raises(ConfigError, match="not a SentencePiece model file"):
        convert_checkpoint(MBART / "checkpoint.pt", tmp_path / "out", bpe_dir=tmp_path, dictionary=MBART / "dict.txt")
    assert not (tmp_path / "out").exists()


# -- BART classifier -------------------------------------------------------------------------------------------------

def test_fairseq_bart_classifier_becomes_stock_bart_for_sequence_classification_with_nothing_missing(cls_folder,
                                                                                                    tmp_path):
    config = json.loads((cls_folder / "config.json").read_text())
    # fairseq's class i is the i-th symbol of label/dict.txt (frequency order): the names follow it
    assert "auto_map" not in config and config["id2label"] == {"0": "1", "1": "2", "2": "0"}
    info = load_in_fresh_process(cls_folder, "AutoModelForSequenceClassification", tmp_path)
    assert info["class"] == "BartForSequenceClassification" and info["module"].startswith("transformers.models.bart")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


def test_converted_classifier_matches_fairseqs_class_logits_on_every_row_and_every_layer(cls_folder):
    report = verify_folder(cls_folder, golden=CLS / "golden.pt", write=False)
    assert report["passed"], json.dumps(report["outputs"][:3], default=str)[:2000]
    logits = [r for r in report["outputs"] if r["name"] == "classification_logits"]
    assert len(logits) == 1 and logits[0]["max_abs"] <= 1e-5
    golden = _golden(CLS)
    assert golden["outputs"]["classification_logits"].shape[0] == len(golden["meta"]["sentences"]) == 5


def test_classifier_fed_only_tokenized_text_predicts_fairseqs_logits_with_padding(cls_folder):
    """Users call the model on the tokenizer's padded batch; it must build the decoder input itself and pick each
    row's last </s> (rows of different lengths)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    golden = _golden(CLS)
    tokenizer = AutoTokenizer.from_pretrained(cls_folder)
    assert [tokenizer(s).input_ids for s in golden["meta"]["sentences"]] == golden["meta"]["tokenizer_ids"]
    model = AutoModelForSequenceClassification.from_pretrained(cls_folder).eval()
    batch = tokenizer(golden["meta"]["sentences"], padding=True, return_tensors="pt")
    assert batch.input_ids.eq(1).any()  # some rows really are padded
    with torch.no_grad():
        logits = model(**batch).logits
    assert (logits - golden["outputs"]["classification_logits"]).abs().max() <= 1e-5
    assert logits.argmax(-1).tolist() == golden["meta"]["predicted"]


def test_fairseq_to_hf_to_fairseq_reproduces_every_classifier_tensor_bit_exactly(cls_folder, tmp_path):
    _bit_exact_round_trip(cls_folder, CLS / "checkpoint.pt", tmp_path)


def test_an_adam_laden_classifier_checkpoint_converts_to_the_same_weights(cls_folder, tmp_path):
    laden = _with_adam_state(CLS / "checkpoint.pt", tmp_path / "adam.pt")
    assert _same_weights(convert_checkpoint(laden, tmp_path / "out"), cls_folder)


@pytest.fixture
def two_heads(tmp_path) -> Path:
    checkpoint = _load(CLS / "checkpoint.pt")
    state = checkpoint["model"]
    for key in [k for k in state if k.startswith("classification_heads.sentence_classification_head.")]:
        state[key.replace("sentence_classification_head", "mnli")] = state[key].clone() * 2
    torch.save(checkpoint, tmp_path / "two_heads.pt")
    return tmp_path / "two_heads.pt"


def test_two_classification_heads_without_head_are_refused_in_one_line_naming_both(two_heads, tmp_path):
    with pytest.raises(ConfigError) as refused:  # a ConfigError is the CLI's one `error:` line
        convert_checkpoint(two_heads, tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and "mnli" in message and "sentence_classification_head" in message
    assert "--head" in message and not (tmp_path / "out").exists()


def test_head_picks_one_of_several_and_drops_the_others_with_the_reason(two_heads, tmp_path):
    folder = convert_checkpoint(two_heads, tmp_path / "out", head="mnli")
    provenance = json.loads((folder / "hfport.json").read_text())
    assert all("--head" in provenance["dropped"][k] for k in provenance["dropped"]
               if k.startswith("classification_heads.sentence_classification_head."))
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    picked = _load(two_heads)["model"]["classification_heads.mnli.out_proj.weight"]
    assert torch.equal(weights["classification_head.out_proj.weight"], picked)
    with pytest.raises(ConfigError, match="sentence_classification_head"):
        convert_checkpoint(two_heads, tmp_path / "other", head="qnli")


def test_the_seq2seq_bart_checkpoint_still_becomes_bart_for_conditional_generation(tmp_path):
    folder = convert_checkpoint(DATA / "bart_translation" / "checkpoint.pt", tmp_path / "out")
    provenance = json.loads((folder / "hfport.json").read_text())
    assert provenance["family"] == "fairseq_bart" and provenance["model_class"] == "BartForConditionalGeneration"
