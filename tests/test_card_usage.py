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


@pytest.fixture(scope="module")
def printed(ofa_folder, meter_folder, tmp_path_factory):
    """What each card's snippet printed, run from the rendered cards."""
    cards = {"ofa": (_card(ofa_folder), ofa_folder), "meter": (_card(meter_folder), meter_folder)}
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


def test_a_fairseq_translation_card_snippet_generates_with_stock_classes(tmp_path):
    from hfport.converters.usage_snippets import fairseq_seq2seq

    code = fairseq_seq2seq("org/model", "AutoModelForSeq2SeqLM", has_tokenizer=False)
    assert "trust_remote_code" not in code and "model.generate(" in code
