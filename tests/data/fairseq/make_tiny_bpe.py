"""Train the tiny byte-level BPE (GPT-2 format: encoder.json + vocab.bpe) the BART / RoBERTa cases use.

Runs with hfport's environment (the `tokenizers` package); the files it writes are committed in tiny_bpe/, so
make_checkpoints.py (fairseq's environment) does not need it:  .venv/bin/python tests/data/fairseq/make_tiny_bpe.py
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import monolingual_lines, write_corpus  # noqa: E402


def main():
    import tempfile

    from tokenizers import ByteLevelBPETokenizer

    scratch = tempfile.mkdtemp()
    write_corpus(scratch)
    files = [os.path.join(scratch, "train.de"), os.path.join(scratch, "train.en")]
    lines = os.path.join(scratch, "lm.txt")
    with open(lines, "w") as f:
        f.writelines(line + "\n" for line in monolingual_lines())
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train(files + [lines], vocab_size=400, min_frequency=2, special_tokens=[], show_progress=False)
    out = os.path.join(HERE, "tiny_bpe")
    os.makedirs(out, exist_ok=True)
    tokenizer.save_model(out)
    os.replace(os.path.join(out, "vocab.json"), os.path.join(out, "encoder.json"))
    os.replace(os.path.join(out, "merges.txt"), os.path.join(out, "vocab.bpe"))
    size = len(json.load(open(os.path.join(out, "encoder.json"))))
    print("wrote", out, "with", size, "tokens")


if __name__ == "__main__":
    main()
