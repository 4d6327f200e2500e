"""fairseq RoBERTa (GPT-2 BPE) and XLM-R (SentencePiece) -> stock (XLM)RobertaForMaskedLM /
...ForSequenceClassification + stock tokenizers with fairseq's ids, checked against goldens fairseq recorded
(tests/data/fairseq/roberta_gpt2 and xlmr_spm, made by tests/data/fairseq/make_encoder_checkpoints.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hfport.converters.pipeline import convert_checkpoint, export_folder
from hfport.errors import ConfigError
from hfport.verify.harness import verify_folder
from tests.helpers import load_in_fresh_process

DATA = Path(__file__).parent / "data" / "fairseq"
CASES = {"roberta_gpt2": "Roberta", "xlmr_spm": "XLMRoberta"}
KINDS = {"mlm": ("pretrain.pt", "golden_mlm.pt", "MaskedLM"), "cls": ("finetune.pt", "golden_cls.pt",
                                                                     "SequenceClassification")}
PARAMS = [(case, kind) for case in CASES for kind in KINDS]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    made = {}

    def get(case: str, kind: str) -> Path:
        if (case, kind) not in made:
            folder = DATA / case
            made[case, kind] = convert_checkpoint(folder / KINDS[kind][0], tmp_path_factory.mktemp(case) / kind,
                                                  bpe_dir=folder, dictionary=folder / "input0" / "dict.txt")
        return made[case, kind]

    return get


def _golden(case: str, kind: str) -> dict:
    return torch.load(DATA / case / KINDS[kind][1], map_location="cpu", weights_only=True)


def test_xlmr_becomes_a_stock_masked_lm_class_that_loads_without_hfport_with_nothing_missing(converted, tmp_path):
    case = "xlmr_spm"  # RoBERTa's folders load in-process in the verification test (a fresh process costs seconds)
    folder = converted(case, "mlm")
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    info = load_in_fresh_process(folder, "AutoModelForMaskedLM", tmp_path)
    assert info["class"] == f"{CASES[case]}ForMaskedLM" and info["module"].startswith("transformers.models.")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("case,kind", PARAMS)
def test_converted_models_match_fairseq_on_every_position_and_every_hidden_state(converted, case, kind):
    folder = converted(case, kind)
    report = verify_folder(folder, golden=DATA / case / KINDS[kind][1], write=False)
    assert report["passed"], json.dumps(report["outputs"][:3], default=str)[:2000]
    assert report["reference"]["outputs"] == len(report["outputs"]) == 4  # 3 hidden states + the logits
    logits = [r for r in report["outputs"] if r["name"] in ("logits", "classification_logits")]
    assert len(logits) == 1 and logits[0]["max_abs"] <= 1e-5
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForSequenceClassification
    model, info = auto.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == f"{CASES[case]}For{KINDS[kind][2]}"
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("case", list(CASES))
def test_the_tokenizer_gives_fairseqs_ids_on_every_string_of_the_corpus(converted, case):
    from transformers import AutoTokenizer

    golden = _golden(case, "mlm")
    tokenizer = AutoTokenizer.from_pretrained(converted(case, "mlm"))
    corpus = golden["meta"]["tokenizer_corpus"]
    assert len(corpus["sentences"]) >= 30
    got = [tokenizer(s).input_ids for s in corpus["sentences"]]
    wrong = [(s, g, e) for s, g, e in zip(corpus["sentences"], got, corpus["ids"]) if g != e]
    assert not wrong, wrong[:3]
    probes = golden["meta"]["sentences"]
    batch = tokenizer(probes, padding=True, return_tensors="pt").input_ids
    assert torch.equal(batch, golden["inputs"]["src_tokens"][:len(probes), :batch.shape[1]])
    assert tokenizer.mask_token_id == golden["meta"]["special_ids"]["mask"]


def test_xlmr_ids_follow_the_corpus_built_dictionary_not_the_sentencepiece_order(converted):
    from transformers import AutoTokenizer

    from hfport.converters.fairseq_roberta_tokenizer import read_sentencepiece_model

    pieces = [p["piece"] for p in read_sentencepiece_model(DATA / "xlmr_spm" / "sentencepiece.bpe.model")["pieces"]]
    tokenizer = AutoTokenizer.from_pretrained(converted("xlmr_spm", "mlm"))
    moved = [p for i, p in enumerate(pieces) if i >= 3 and tokenizer.convert_tokens_to_ids(p) != i + 1]
    assert len(moved) > 20  # the fixed offset of released XLM-R (spm id + 1) would get these wrong


@pytest.mark.parametrize("case", list(CASES))
def test_fairseq_to_hf_to_fairseq_reproduces_every_masked_lm_tensor_bit_exactly(converted, case, tmp_path):
    folder = converted(case, "mlm")
    result = export_folder(folder, tmp_path / "back.pt")
    back = _load(result["written"])["model"]
    original = _load(DATA / case / "pretrain.pt")["model"]
    assert set(back) == set(original) and result["not_restored"] == {}
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in original.items())
    provenance = json.loads((folder / "hfport.json").read_text())
    assert set(provenance["generated"]) == {"roberta.embeddings.token_type_embeddings.weight"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_classification_export_restores_all_but_the_masked_lm_head_it_dropped_with_its_reason(
        converted, case, tmp_path):
    folder = converted(case, "cls")
    result = export_folder(folder, tmp_path / "back.pt")
    back = _load(result["written"])["model"]
    original = _load(DATA / case / "finetune.pt")["model"]
    lm_head = {k for k in original if k.startswith("encoder.lm_head.")}
    assert lm_head and set(result["not_restored"]) == lm_head and set(back) == set(original) - lm_head
    assert any(k.startswith("classification_heads.topic.") for k in back)
    assert all(torch.equal(back[k], original[k]) for k in back)
    dropped = json.loads((folder / "hfport.json").read_text())["dropped"]
    assert all("masked-LM head" in dropped[k] for k in lm_head)


@pytest.mark.parametrize("case", list(CASES))
def test_class_names_are_the_label_dictionary_in_fairseqs_class_order(converted, case):
    config = json.loads((converted(case, "cls") / "config.json").read_text())
    lines = (DATA / case / "label" / "dict.txt").read_text().splitlines()
    assert config["id2label"] == {"0": lines[0].split()[0], "1": lines[1].split()[0]}
    assert config["id2label"]["0"] == "1"  # the more frequent label came first in this corpus: not "0"


def test_left_padded_rows_match_fairseq_too_because_both_number_positions_over_non_pad_tokens(converted):
    from transformers import AutoModelForMaskedLM

    golden = _golden("roberta_gpt2", "mlm")
    model = AutoModelForMaskedLM.from_pretrained(converted("roberta_gpt2", "mlm")).eval()
    row = golden["inputs"]["src_tokens"][1]
    real = row[row.ne(1)]
    left = torch.cat([torch.ones(row.numel() - real.numel(), dtype=torch.long), real]).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=left, attention_mask=left.ne(1)).logits[0, -real.numel():]
    assert row.numel() - real.numel() >= 3
    assert (logits - golden["outputs"]["logits"][1, :real.numel()]).abs().max() <= 1e-5


def test_the_zero_token_type_row_leaves_the_computation_unchanged(converted):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(converted("roberta_gpt2", "mlm")).eval()
    assert model.config.type_vocab_size == 1
    assert torch.count_nonzero(model.roberta.embeddings.token_type_embeddings.weight) == 0
    tokens = _golden("roberta_gpt2", "mlm")["inputs"]["src_tokens"]
    with torch.no_grad():
        plain = model(input_ids=tokens, attention_mask=tokens.ne(1)).logits
        typed = model(input_ids=tokens, attention_mask=tokens.ne(1), token_type_ids=torch.zeros_like(tokens)).logits
    assert torch.equal(plain, typed)


@pytest.mark.parametrize("case", list(CASES))
def test_the_position_table_keeps_fairseqs_padding_offset(converted, case):
    config = json.loads((converted(case, "mlm") / "config.json").read_text())
    args = _load(DATA / case / "pretrain.pt")["cfg"]["model"]
    assert config["max_position_embeddings"] == args.max_positions + 2 and config["pad_token_id"] == 1


def test_an_adam_laden_checkpoint_converts_to_the_same_tensors(converted, tmp_path):
    checkpoint = _load(DATA / "xlmr_spm" / "finetune.pt")
    params = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    checkpoint["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(40.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": 0.002, "betas": (0.9, 0.98), "eps": 1e-8, "params": list(range(len(params)))}],
    }
    laden = tmp_path / "with_adam.pt"
    torch.save(checkpoint, laden)
    assert laden.stat().st_size > 2.5 * (DATA / "xlmr_spm" / "finetune.pt").stat().st_size
    from safetensors.torch import load_file

    a = load_file(convert_checkpoint(laden, tmp_path / "out") / "model.safetensors")
    b = load_file(converted("xlmr_spm", "cls") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _two_heads(tmp_path: Path) -> Path:
    checkpoint = _load(DATA / "roberta_gpt2" / "finetune.pt")
    for key in [k for k in checkpoint["model"] if k.startswith("classification_heads.topic.")]:
        checkpoint["model"][key.replace(".topic.", ".mnli.")] = torch.zeros(3, *checkpoint["model"][key].shape[1:]) \
            if ".out_proj." in key else checkpoint["model"][key].clone()
    torch.save(checkpoint, tmp_path / "two_heads.pt")
    return tmp_path / "two_heads.pt"


def test_several_classification_heads_without_head_are_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    from hfport.cli import main

    code = main(["convert", str(_two_heads(tmp_path)), str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code != 0 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mnli, topic" in errors[0] and "--head" in errors[0]
    assert not (tmp_path / "out").exists()


def test_head_chooses_one_of_several_and_the_other_is_dropped_with_the_reason(converted, tmp_path):
    folder = convert_checkpoint(_two_heads(tmp_path), tmp_path / "out", head="mnli")
    config = json.loads((folder / "config.json").read_text())
    provenance = json.loads((folder / "hfport.json").read_text())
    assert config["architectures"] == ["RobertaForSequenceClassification"] and len(config["id2label"]) == 3
    assert provenance["hyper_parameters"]["classification_head"] == "mnli"
    assert all("--head did not choose" in provenance["dropped"][k] for k in provenance["dropped"] if ".topic." in k)
    with pytest.raises(ConfigError, match="mnli, topic"):
        convert_checkpoint(_two_heads(tmp_path), tmp_path / "out2", head="sst2")


def test_hfport_verify_with_the_golden_passes_from_the_command_line(converted, tmp_path):
    folder = converted("xlmr_spm", "cls")
    from hfport.cli import main

    code = main(["verify", str(folder), "--golden", str(DATA / "xlmr_spm" / "golden_cls.pt"),
                 "--report", str(tmp_path / "report.json")])
    assert code == 0
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True


def test_a_tokenizer_whose_kind_contradicts_the_checkpoints_bpe_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="sentencepiece"):
        convert_checkpoint(DATA / "xlmr_spm" / "pretrain.pt", tmp_path / "out", bpe_dir=DATA / "roberta_gpt2",
                           dictionary=DATA / "roberta_gpt2" / "input0" / "dict.txt")
    assert not (tmp_path / "out").exists()


def test_a_dictionary_missing_a_sentencepiece_piece_is_refused_naming_it_before_writing(tmp_path):
    lines = (DATA / "xlmr_spm" / "input0" / "dict.txt").read_text(encoding="utf-8").splitlines()
    piece = lines[-1].split(" ")[0]
    lines[-1] = "not-a-piece 0"  # same size, one piece gone: fairseq would map it to <unk>
    (tmp_path / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "sentencepiece.bpe.model").write_bytes((DATA / "xlmr_spm" / "sentencepiece.bpe.model").read_bytes())
    with pytest.raises(ConfigError, match=f"lacks 1 of .*{re.escape(piece)}"):
        convert_checkpoint(DATA / "xlmr_spm" / "pretrain.pt", tmp_path / "out", bpe_dir=tmp_path / "spm",
                           dictionary=tmp_path / "dict.txt")
    assert not (tmp_path / "out").exists()


def test_a_legacy_args_only_xlmr_file_is_found_by_arch_and_becomes_xlmr_by_its_bpe_setting(tmp_path):
    checkpoint = _load(DATA / "xlmr_spm" / "pretrain.pt")
    assert checkpoint["cfg"]["model"].arch == "xlm" and checkpoint["cfg"]["model"].bpe == "sentencepiece"
    torch.save({"args": checkpoint["cfg"]["model"], "model": checkpoint["model"]}, tmp_path / "legacy.pt")
    folder = convert_checkpoint(tmp_path / "legacy.pt", tmp_path / "out")
    provenance = json.loads((folder / "hfport.json").read_text())
    assert provenance["family"] == "fairseq_roberta" and provenance["model_class"] == "XLMRobertaForMaskedLM"
