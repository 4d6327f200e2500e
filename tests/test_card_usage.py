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
                                       dictionary=bart / "dict.de.txt")}


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
