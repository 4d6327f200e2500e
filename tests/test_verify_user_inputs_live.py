"""User inputs (`--image`/`--text`) through the converted tokenizer and processor, against live fairseq + OFA.

Skipped unless OFA_ROOT points at an OFA checkout and fairseq is importable (see tests/test_verify_live.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from conftest import SHARED

OFA_ROOT = os.environ.get("OFA_ROOT")
pytestmark = [pytest.mark.live, pytest.mark.skipif(
    not (OFA_ROOT and importlib.util.find_spec("fairseq")), reason="needs OFA_ROOT (an OFA checkout) and fairseq importable")]


def test_an_image_and_a_question_verify_through_the_converted_processor(tmp_path):
    from hfport.converters import convert_checkpoint
    from hfport.verify.harness import verify_folder

    bpe = tmp_path / "bpe"
    bpe.mkdir()
    shutil.copy(SHARED / "fixtures/ofa/bpe_tiny/dict.txt", bpe / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(SHARED / "fixtures/ofa/bpe" / name, bpe / name)
    fixture = SHARED / "fixtures/ofa/ofa-tiny-standard"
    folder = convert_checkpoint(fixture / "checkpoint.pt", tmp_path / "hf", bpe_dir=bpe)
    assert (folder / "tokenizer.json").is_file() and (folder / "processor_config.json").is_file()
    image = Path(__file__).parent / "data" / "images" / "rgb_37x23.png"
    report = verify_folder(folder, against=fixture / "checkpoint.pt", reference_code=OFA_ROOT, bpe_dir=str(bpe),
                           image=str(image), text="what does the image describe?", write=False)
    assert report["passed"], report["first_divergence"]
    assert max(o["max_abs"] for o in report["outputs"]) < 1e-4
    assert report["generation"] and all(g["exact"] for g in report["generation"] if g.get("required", True))
