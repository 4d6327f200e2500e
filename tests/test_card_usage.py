"""The model card's usage snippet does inference, and what it prints is what `hfport run` prints: the Python
block is taken from the rendered README.md and run in a fresh interpreter against the converted folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfport.cli import main as cli_main
from hfport.push.publish import plan_push

from helpers import fresh_process_env

DATA = Path(__file__).parent / "data"
IMAGE = DATA / "images" / "rgb_37x23.png"


def _python_block(card: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


# Every card's snippet runs in one fresh interpreter (one torch + transformers import for all), each in its own
# namespace with its own stdout and working directory (where the snippet's `example.jpg` is).
_RUNNER = """
import contextlib, io, json, os, sys
out = {}
for name, workdir, code in json.loads(sys.argv[1]):
    os.chdir(workdir)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, name + "-card-snippet", "exec"), {"__name__": "__main__"})
    out[name] = buffer.getvalue().strip().splitlines()
print(json.dumps(out))
"""


def _run_snippets(cards: dict[str, tuple[str, Path]], root: Path) -> dict[str, list[str]]:
    jobs = []
    for name, (card, folder) in cards.items():
        workdir = root / name
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGE, workdir / "example.jpg")
        jobs.append((name, str(workdir), _python_block(card).replace('"org/model"', repr(str(folder)))))
    result = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(jobs)], capture_output=True, text=True,
                            env=fresh_process_env(root), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _card(folder: Path) -> str:
    return plan_push(folder, "org/model", allow_unverified=True).card


@pytest.fixture(scope="module")
def ofa_folder(tmp_path_factory, shared_root) -> Path:
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("card_ofa")
    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    return convert_checkpoint(source, root / "out", bpe_dir=bpe_dir, patch_image_size=64)


@pytest.fixture(scope="module")
def meter_folder(tmp_path_factory, shared_root) -> Path:
    from hfport.converters import convert_checkpoint

    fixture = shared_root / "fixtures" / "meter" / "meter-tiny-vqa-lightning"
    out = tmp_path_factory.mktemp("card_meter") / "out"
    return convert_checkpoint(fixture / "checkpoint.ckpt", out, text_config=fixture / "text_config.json",
                              tokenizer=str(DATA / "meter_tokenizers" / "tiny-bert-uncased"))


FAIRSEQ = DATA / "fairseq"


@pytest.fixture(scope="module")
def fairseq_folders(tmp_path_factory) -> dict[str, Path]:
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("card_fairseq")
    bart = FAIRSEQ / "bart_translation"
    return {"translation": convert_checkpoint(FAIRSEQ / "translation_postnorm_tied" / "checkpoint.pt",
                                              root / "translation"),
            "bart": convert_checkpoint(bart / "checkpoint.pt", root / "bart", bpe_dir=bart,
                                       dictionary=bart / "dict.de.txt"),
            "mbart": convert_checkpoint(FAIRSEQ / "mbart_translation" / "checkpoint.pt", root / "mbart",
                                        bpe_dir=FAIRSEQ / "mbart_translation",
                                        dictionary=FAIRSEQ / "mbart_translation" / "dict.txt"),
            "bart_classifier": convert_checkpoint(FAIRSEQ / "bart_classifier" / "checkpoint.pt", root / "bart_cls",
                                                  bpe_dir=FAIRSEQ / "bart_classifier",
                                                  dictionary=FAIRSEQ / "bart_classifier" / "input0" / "dict.txt"),
            "roberta_mlm": convert_checkpoint(FAIRSEQ / "roberta_gpt2" / "pretrain.pt", root / "roberta_mlm",
                                              bpe_dir=FAIRSEQ / "roberta_gpt2",
                                              dictionary=FAIRSEQ / "roberta_gpt2" / "input0" / "dict.txt"),
            "translation_text": convert_checkpoint(FAIRSEQ / "translation_postnorm_tied" / "checkpoint.pt",
                                                   root / "translation_text",
                                                   dictionary=FAIRSEQ / "translation_postnorm_tied" / "dict.de.txt",
                                                   target_dictionary=FAIRSEQ / "translation_postnorm_tied" /
                                                   "dict.en.txt"),
            "lm": convert_checkpoint(FAIRSEQ / "lm_prenorm_tied" / "checkpoint.pt", root / "lm",
                                     dictionary=FAIRSEQ / "lm_prenorm_tied" / "dict.txt"),
            "xlmr_classifier": convert_checkpoint(FAIRSEQ / "xlmr_spm" / "finetune.pt", root / "xlmr_cls",
                                                  bpe_dir=FAIRSEQ / "xlmr_spm",
                                                  dictionary=FAIRSEQ / "xlmr_spm" / "input0" / "dict.txt")}


@pytest.fixture(scope="module")
def printed(ofa_folder, meter_folder, fairseq_folders, tmp_path_factory):
    """What each card's snippet printed, run from the rendered cards."""
    cards = {"ofa": (_card(ofa_folder), ofa_folder), "meter": (_card(meter_folder), meter_folder),
             **{name: (_card(folder), folder) for name, folder in fairseq_folders.items()}}
    return {"cards": cards, **_run_snippets(cards, tmp_path_factory.mktemp("snippets"))}


def test_the_ofa_card_snippet_captions_the_image_as_hfport_run_does(printed, ofa_folder, capsys):
    card = printed["cards"]["ofa"][0]
    assert "model.generate(" in card and "processor.decode(" in card
    capsys.readouterr()
    assert cli_main(["run", str(ofa_folder), "--image", str(IMAGE), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert printed["ofa"] == [expected]


def test_the_meter_vqa_card_snippet_prints_the_answers_hfport_run_prints(printed, meter_folder, capsys):
    code = _python_block(printed["cards"]["meter"][0])
    question = re.search(r'text=\["([^"]+)"\]', code).group(1)
    capsys.readouterr()
    assert cli_main(["run", str(meter_folder), "--image", str(IMAGE), "--text", question, "--top-k", "5"]) == 0
    assert printed["meter"] == capsys.readouterr().out.strip().splitlines()
    assert len(printed["meter"]) == 5


def test_the_translation_card_snippet_generates_fairseqs_beam_with_stock_classes(printed, fairseq_folders):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    card = printed["cards"]["translation"][0]
    assert "trust_remote_code" not in _python_block(card) and "no remote code" in card
    model = AutoModelForSeq2SeqLM.from_pretrained(str(fairseq_folders["translation"])).eval()
    with torch.no_grad():
        expected = model.generate(input_ids=torch.tensor([[4, 5, 6, 2]]), num_beams=5, max_new_tokens=20)
    assert printed["translation"] == [str(expected[0].tolist())]


def test_the_bart_card_snippet_tokenizes_generates_and_decodes(printed, fairseq_folders):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = str(fairseq_folders["bart"])
    assert "tokenizer.decode(" in _python_block(printed["cards"]["bart"][0])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    inputs = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, num_beams=5, max_new_tokens=20)
    assert "\n".join(printed["bart"]) == tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
    assert len(tokens[0]) > 2  # it generated something, not only the start and end tokens


def _stock(folder: Path, auto_class: str):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return tokenizer, getattr(transformers, auto_class).from_pretrained(str(folder)).eval()


def test_the_mbart_card_snippet_translates_with_the_folders_own_generation_settings(printed, fairseq_folders):
    import torch

    tokenizer, model = _stock(fairseq_folders["mbart"], "AutoModelForSeq2SeqLM")
    assert "trust_remote_code" not in _python_block(printed["cards"]["mbart"][0])
    inputs = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, num_beams=5, max_new_tokens=20)
    assert "\n".join(printed["mbart"]) == tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", ["bart_classifier", "xlmr_classifier"])
def test_a_classifier_card_snippet_prints_every_class_by_name_in_order_of_probability(printed, fairseq_folders, name):
    import torch

    tokenizer, model = _stock(fairseq_folders[name], "AutoModelForSequenceClassification")
    code = _python_block(printed["cards"][name][0])
    assert "AutoModelForSequenceClassification" in code and "trust_remote_code" not in code
    with torch.no_grad():
        probabilities = model(**tokenizer(["a red car."], truncation=True,
                                          return_tensors="pt")).logits[0].softmax(-1)
    expected = [f"{probabilities[i]:.4f}  {model.config.id2label[i]}"
                for i in probabilities.argsort(descending=True).tolist()]
    assert printed[name] == expected and len(expected) == model.config.num_labels >= 2
    assert not any(line.split()[-1].startswith("LABEL_") for line in expected)  # names, not indices


def test_the_roberta_card_snippet_fills_the_mask_with_the_models_top_five(printed, fairseq_folders):
    import torch

    tokenizer, model = _stock(fairseq_folders["roberta_mlm"], "AutoModelForMaskedLM")
    assert "fill-mask" in printed["cards"]["roberta_mlm"][0]
    inputs = tokenizer([f"a {tokenizer.mask_token} car."], return_tensors="pt")
    position = int((inputs.input_ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        scores, ids = model(**inputs).logits[0, position].softmax(-1).topk(5)
    assert printed["roberta_mlm"] == [f"{s:.4f}  {tokenizer.decode([i])!r}" for s, i in zip(scores.tolist(),
                                                                                           ids.tolist())]


@pytest.mark.parametrize("name", ["bart", "mbart", "bart_classifier", "roberta_mlm", "xlmr_classifier"])
def test_truncation_keeps_a_long_text_within_the_models_positions(fairseq_folders, name):
    """`truncation=True` is what users pass for long inputs; it only works when the tokenizer knows the limit."""
    import torch
    from transformers import AutoConfig

    folder = fairseq_folders[name]
    config = AutoConfig.from_pretrained(str(folder))
    auto = {"bart": "AutoModelForSeq2SeqLM", "mbart": "AutoModelForSeq2SeqLM"}.get(
        name, "AutoModelForSequenceClassification" if "classifier" in name else "AutoModelForMaskedLM")
    tokenizer, model = _stock(folder, auto)
    inputs = tokenizer(["a red car and a blue house. " * 40], truncation=True, return_tensors="pt")
    assert inputs.input_ids.shape[1] == tokenizer.model_max_length <= config.max_position_embeddings
    with torch.no_grad():
        if auto == "AutoModelForSeq2SeqLM":
            model(**inputs, decoder_input_ids=torch.tensor([[2]]))
        else:
            model(**inputs)


def test_the_translation_card_snippet_decodes_with_the_target_dictionarys_tokenizer(printed, fairseq_folders):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = fairseq_folders["translation_text"]
    assert (folder / "target_tokenizer").is_dir()  # separate vocabularies: the output is in the target's ids
    source = AutoTokenizer.from_pretrained(str(folder))
    target = AutoTokenizer.from_pretrained(str(folder / "target_tokenizer"))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        tokens = model.generate(**source(["The quick brown fox jumps over the lazy dog."], return_tensors="pt"),
                                num_beams=5, max_new_tokens=20)
    expected = target.decode(tokens[0], skip_special_tokens=True).strip()
    assert "\n".join(printed["translation_text"]) == expected != source.decode(tokens[0], skip_special_tokens=True)


def test_the_language_model_card_snippet_continues_the_prompt_greedily(printed, fairseq_folders):
    import torch

    tokenizer, model = _stock(fairseq_folders["lm"], "AutoModelForCausalLM")
    inputs = tokenizer(["a small cat likes"], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=20)
    continuation = tokenizer.decode(tokens[0, inputs.input_ids.shape[1]:], skip_special_tokens=True).strip()
    assert "\n".join(printed["lm"]) == continuation and continuation
