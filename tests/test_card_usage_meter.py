"""The model card's usage snippet of every METER head besides VQA (test_card_usage.py has VQA) runs as written
and prints what a user wants from that head: the Python block of the rendered README.md runs in a fresh interpreter
against the converted folder, and what it prints must equal the same computation done here with the converted
model, and what `hfport run` prints for the same inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hfport.cli import main as cli_main
from hfport.push.publish import plan_push

from helpers import fresh_process_env

DATA = Path(__file__).parent / "data"
IMAGES = {"example.jpg": DATA / "images" / "rgb_37x23.png",  # what the single-image snippets open
          "left.jpg": DATA / "images" / "rgb_37x23.png", "right.jpg": DATA / "images" / "palette_45x28.png"}
BERT_TOKENIZER = DATA / "meter_tokenizers" / "tiny-bert-uncased"  # its mask token is [MASK]

# card name -> (shared fixture, --head, tokenizer); the pre-training fixture carries MLM + ITM, so it also gives
# each alone. The fixtures' text tower is a tiny RoBERTa (vocab 100): the MLM card gets a RoBERTa tokenizer
# (mask token <mask>, as with roberta-base), the others the tiny BERT one (ids < 100 as well).
HEADS = {"snli": ("meter-tiny-snli", None, "bert"), "nlvr2": ("meter-tiny-nlvr2", None, "bert"),
         "irtr": ("meter-tiny-irtr", None, "bert"), "itm": ("meter-tiny-pretrain-released-style", "itm", "bert"),
         "mlm": ("meter-tiny-pretrain-released-style", "mlm", "roberta"),
         "pretraining": ("meter-tiny-pretrain-released-style", None, "bert")}


def _tiny_roberta_tokenizer(folder: Path) -> Path:
    """A byte-level BPE vocabulary of under 100 ids (letters, a few upper-case ones, brackets, merges up to
    " photo" and " of") with <mask>: it fits the fixtures' 100-row embedding, and the card's sentence fits their
    12-token text length. The folder name says "roberta", as METER's tokenizer choice needs."""
    import string

    space, letters = "\u0120", string.ascii_lowercase
    merges = [(space, c) for c in letters] + [(space + "p", "h"), (space + "ph", "o"), (space + "pho", "t"),
                                              (space + "phot", "o"), (space + "o", "f")]
    symbols = list(letters + string.ascii_uppercase[:10] + space + ".?,[]") + ["".join(m) for m in merges]
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *symbols, "<mask>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


# One interpreter for all snippets (one torch + transformers import), each in its own namespace; a snippet that
# raises is reported as one "ERROR" line, so only its own test fails.
_RUNNER = """
import contextlib, io, json, os, sys
out = {}
for name, workdir, code in json.loads(sys.argv[1]):
    os.chdir(workdir)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, name + "-card-snippet", "exec"), {"__name__": "__main__"})
        out[name] = buffer.getvalue().strip().splitlines()
    except Exception as err:
        out[name] = ["ERROR " + type(err).__name__ + ": " + str(err)]
print(json.dumps(out))
"""


def _python_block(card: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, shared_root) -> dict[str, Path]:
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("card_meter_heads")
    tokenizers = {"bert": BERT_TOKENIZER, "roberta": _tiny_roberta_tokenizer(root / "tiny-roberta-mask")}
    converted = {}
    for name, (fixture, head, tokenizer) in HEADS.items():
        source = shared_root / "fixtures" / "meter" / fixture
        converted[name] = convert_checkpoint(source / "checkpoint.ckpt", root / name, head=head,
                                             text_config=source / "text_config.json", tokenizer=str(tokenizers[tokenizer]))
    return converted


@pytest.fixture(scope="module")
def snippets(folders, tmp_path_factory) -> dict[str, dict]:
    """Card name -> the snippet's code and what it printed."""
    root = tmp_path_factory.mktemp("meter_snippets")
    codes, jobs = {}, []
    for name, folder in folders.items():
        codes[name] = _python_block(plan_push(folder, "org/model", allow_unverified=True).card)
        workdir = root / name
        workdir.mkdir()
        for file, source in IMAGES.items():
            shutil.copy(source, workdir / file)
        jobs.append((name, str(workdir), codes[name].replace('"org/model"', repr(str(folder)))))
    result = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(jobs)], capture_output=True, text=True,
                            env=fresh_process_env(root), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: {"code": codes[name], "printed": printed[name]} for name in folders}


def _direct(folder: Path, code: str):
    """The converted model loaded here by its class (not the card's Auto class), the folder's processor, the
    snippet's text (the expression it passes as `text=[...]`) and the model's outputs for the snippet's images."""
    from PIL import Image
    from transformers import AutoProcessor

    from hfport.models.meter import modeling_meter

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(modeling_meter, architecture).from_pretrained(str(folder)).eval()
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    text = eval(re.search(r"text=\[(.+?)\], return_tensors", code).group(1), {"processor": processor})  # noqa: S307
    pair = "VisualReasoning" in architecture
    images = [(Image.open(IMAGES["left.jpg"]), Image.open(IMAGES["right.jpg"]))] if pair else \
        Image.open(IMAGES["example.jpg"])
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return processor, inputs, outputs, text


def _hfport_run(folder: Path, text: str, capsys, pair: bool = False) -> list[str]:
    images = ["--image", str(IMAGES["left.jpg"]), "--image", str(IMAGES["right.jpg"])] if pair else \
        ["--image", str(IMAGES["example.jpg"])]
    capsys.readouterr()
    assert cli_main(["run", str(folder), *images, "--text", text]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _ranked(probabilities, names: list[str]) -> list[str]:
    return [f"{probabilities[i]:.4f}  {names[i]}" for i in probabilities.argsort(descending=True).tolist()]


def _mask_line(processor, inputs, logits) -> str:
    tokenizer = processor.tokenizer
    position = int((inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    scores, ids = logits[0, position].softmax(-1).topk(5)
    return "mask 0: " + ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} ({s:.4f})"
                                  for s, i in zip(scores.tolist(), ids.tolist()))


def test_the_snli_ve_card_snippet_names_entailment_neutral_and_contradiction_by_probability(snippets, folders,
                                                                                             capsys):
    snippet = snippets["snli"]
    _, _, outputs, text = _direct(folders["snli"], snippet["code"])
    # METER's SNLI-VE label ids (meter/utils/write_snli.py): contradiction 0, neutral 1, entailment 2
    expected = _ranked(outputs.logits[0].softmax(-1), ["contradiction", "neutral", "entailment"])
    assert snippet["printed"] == expected
    assert _hfport_run(folders["snli"], text, capsys) == expected


def test_the_nlvr2_card_snippet_says_whether_the_statement_about_the_image_pair_is_true(snippets, folders, capsys):
    snippet = snippets["nlvr2"]
    assert 'Image.open("left.jpg"), Image.open("right.jpg")' in snippet["code"]
    _, _, outputs, text = _direct(folders["nlvr2"], snippet["code"])
    expected = _ranked(outputs.logits[0].softmax(-1), ["False", "True"])  # METER: label 1 = the answer "True"
    assert snippet["printed"] == expected
    assert _hfport_run(folders["nlvr2"], text, capsys, pair=True) == expected


def test_the_retrieval_card_snippet_prints_the_match_probability_and_the_rank_score(snippets, folders, capsys):
    snippet = snippets["irtr"]
    _, _, outputs, text = _direct(folders["irtr"], snippet["code"])
    expected = [f"match probability: {outputs.logits.softmax(-1)[0, 1]:.4f}",
                f"retrieval score: {outputs.rank_scores[0, 0]:.4f}"]
    assert snippet["printed"] == expected
    assert _hfport_run(folders["irtr"], text, capsys) == expected


def test_the_image_text_matching_card_snippet_without_a_rank_head_prints_the_match_probability(snippets, folders,
                                                                                                capsys):
    snippet = snippets["itm"]
    _, _, outputs, text = _direct(folders["itm"], snippet["code"])
    assert outputs.rank_scores is None
    expected = [f"match probability: {outputs.logits.softmax(-1)[0, 1]:.4f}"]
    assert snippet["printed"] == expected
    assert _hfport_run(folders["itm"], text, capsys) == expected


def test_the_masked_lm_card_snippet_fills_the_tokenizers_own_mask_token(snippets, folders, capsys):
    snippet = snippets["mlm"]
    assert len(snippet["printed"]) == 1, snippet["printed"]  # one line for the one mask token
    processor, inputs, outputs, text = _direct(folders["mlm"], snippet["code"])
    assert processor.tokenizer.mask_token == "<mask>" and "<mask>" in text  # a literal [MASK] would find no mask
    expected = [_mask_line(processor, inputs, outputs.logits)]
    assert snippet["printed"] == expected
    assert _hfport_run(folders["mlm"], text, capsys) == expected


def test_the_pretraining_card_snippet_fills_the_mask_and_prints_the_match_probability(snippets, folders, capsys):
    snippet = snippets["pretraining"]
    processor, inputs, outputs, text = _direct(folders["pretraining"], snippet["code"])
    assert processor.tokenizer.mask_token == "[MASK]" and "[MASK]" in text
    expected = [_mask_line(processor, inputs, outputs.mlm_logits),
                f"match probability: {outputs.itm_logits.softmax(-1)[0, 1]:.4f}"]
    assert snippet["printed"] == expected
    assert _hfport_run(folders["pretraining"], text, capsys) == expected


def test_hfport_run_on_a_masked_lm_without_a_mask_token_says_so_in_one_line(folders, capsys):
    capsys.readouterr()
    assert cli_main(["run", str(folders["mlm"]), "--image", str(IMAGES["example.jpg"]), "--text", "a cat."]) != 0
    err = capsys.readouterr().err
    assert "error: a masked-LM model fills mask tokens: put <mask> in --text" in err and "Traceback" not in err
