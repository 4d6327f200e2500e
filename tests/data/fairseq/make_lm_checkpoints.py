"""Train the tiny fairseq language models under tests/data/fairseq/lm_* with fairseq's own training path
(`fairseq-train --task language_modeling`) and record their goldens with hfport's recorder.

Needs an environment with fairseq (CPU torch is enough); skips with a message otherwise:

    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_lm_checkpoints.py [CASE ...]
    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_lm_checkpoints.py --record-only [CASE ...]

language_modeling aborts past a couple of epochs on this machine's torch; 40 updates stay inside one epoch. The
saved checkpoint is what counts, not the exit code.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import monolingual_lines  # noqa: E402
from make_checkpoints import COMPAT, RECORD, SHIM, run, strip_optimizer  # noqa: E402

# fairseq 0.12's dataclass defaults decoder_input/output_dim to 512 whatever the width: set them, or the model
# grows project_in/out_dim layers
TINY = ["--decoder-embed-dim", "32", "--decoder-input-dim", "32", "--decoder-output-dim", "32",
        "--decoder-ffn-embed-dim", "64", "--decoder-layers", "2", "--decoder-attention-heads", "4"]
TRAIN = ["--optimizer", "adam", "--lr", "0.01", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
         "--dropout", "0.0", "--attention-dropout", "0.0", "--tokens-per-sample", "64", "--sample-break-mode", "eos",
         "--max-tokens", "1024", "--criterion", "cross_entropy", "--seed", "3", "--cpu", "--num-workers", "0",
         "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "10", "--save-interval-updates", "0",
         "--disable-validation", "--max-update", "40"]

CASES = {
    # fairseq 0.12's transformer_lm as trained from the command line: post-norm layers (the dataclass default;
    # base_lm_architecture's forced pre-norm does not reach the model), no final LayerNorm, sinusoidal positions,
    # relu, separate output projection
    "lm_postnorm_sinusoidal": {"arch": "transformer_lm", "flags": []},
    # pre-norm with a final LayerNorm, output projection tied to the embedding (XGLM's shape)
    "lm_prenorm_tied": {"arch": "transformer_lm", "flags": ["--decoder-normalize-before",
                                                            "--share-decoder-input-output-embed"]},
    # the same with a separate output projection
    "lm_prenorm_untied": {"arch": "transformer_lm", "flags": ["--decoder-normalize-before"]},
    # GPT-style: pre-norm, learned positions, gelu, tied
    "lm_prenorm_learned_gpt": {"arch": "transformer_lm_gpt", "flags": ["--decoder-normalize-before",
                                                                       "--decoder-learned-pos",
                                                                       "--share-decoder-input-output-embed"]},
}

PROBE_SENTENCES = ["the dog red sees a house", "a child", "the big man likes a new book"]
PROMPTS = ["the dog", "a small cat likes"]


def record(name, python):
    out = os.path.join(HERE, name)
    run([python, "-c", COMPAT + RECORD, os.path.join(out, "checkpoint.pt"), "--family", "fairseq_lm",
         "--reference-code", out, "--out", os.path.join(out, "golden.pt"), "--threads", "1"])


def make_case(name, spec, python, scratch, record_golden=True):
    work = os.path.join(scratch, name)
    os.makedirs(work, exist_ok=True)
    lines = monolingual_lines()
    for split, part in (("train", lines[:1800]), ("valid", lines[1800:])):
        with open(os.path.join(work, split + ".txt"), "w") as f:
            f.writelines(line + "\n" for line in part)
    data_bin = os.path.join(work, "data-bin")
    run([python, "-c", SHIM, "fairseq_cli.preprocess", "--only-source", "--trainpref", os.path.join(work, "train.txt"),
         "--validpref", os.path.join(work, "valid.txt"), "--destdir", data_bin, "--workers", "1"])
    save = os.path.join(work, "ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    train = [python, "-c", SHIM, "fairseq_cli.train", data_bin, "--task", "language_modeling", "--arch", spec["arch"],
             "--save-dir", save] + TINY + TRAIN + spec["flags"]
    print("+", " ".join(train), flush=True)
    code = subprocess.run(train, env=env).returncode
    full = os.path.join(save, "checkpoint_last.pt")
    if not os.path.isfile(full):
        raise SystemExit("training failed (exit {}) without writing a checkpoint".format(code))
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    strip_optimizer(full, os.path.join(out, "checkpoint.pt"))
    shutil.copy(os.path.join(data_bin, "dict.txt"), os.path.join(out, "dict.txt"))
    with open(os.path.join(out, "probes.txt"), "w") as f:
        f.writelines(s + "\n" for s in PROBE_SENTENCES)
    with open(os.path.join(out, "prompts.txt"), "w") as f:
        f.writelines(s + "\n" for s in PROMPTS)
    if record_golden:
        record(name, python)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"arch": spec["arch"], "flags": spec["flags"], "tiny": TINY, "train": TRAIN}, f, indent=1)


def main(argv):
    try:
        import fairseq  # noqa: F401
    except ImportError:
        print("skipped: fairseq is not importable in {}".format(sys.executable))
        return 0
    if argv[:1] == ["--record-only"]:
        for name in argv[1:] or list(CASES):
            record(name, sys.executable)
        return 0
    train_only = argv[:1] == ["--train-only"]
    argv = argv[1:] if train_only else argv
    scratch = tempfile.mkdtemp(prefix="hfport-fairseq-lm-")
    for name in argv or list(CASES):
        make_case(name, CASES[name], sys.executable, scratch, record_golden=not train_only)
    print("scratch (full checkpoints with optimizer state):", scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
