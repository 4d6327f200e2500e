"""Train the tiny fairseq RoBERTa / XLM-R checkpoints under tests/data/fairseq/ with fairseq's own training path
(fairseq-preprocess, `fairseq-train --task masked_lm`, then a `--task sentence_prediction` fine-tune restored from
it) and record their goldens with hfport's recorder (fairseq's load_model_ensemble_and_task).

    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_encoder_checkpoints.py [CASE ...]
    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_encoder_checkpoints.py --record-only [CASE ...]

Cases:
- roberta_gpt2: arch roberta_base (tiny dims), the GPT-2-format byte-level BPE of tiny_bpe/; dict.txt made by
  fairseq-preprocess from the BPE-encoded corpus (GPT-2 ids ordered by frequency), then the BPE ids the corpus never
  used appended with count 0, as RoBERTa's released dict.txt lists every GPT-2 id.
- xlmr_spm: arch xlm (tiny dims) with --bpe sentencepiece: a unigram sentencepiece model trained here on a German +
  English corpus; dict.txt made by fairseq-preprocess from the sentencepiece-encoded corpus, so its order is the
  corpus frequency, not the sentencepiece model's order (pieces the corpus never produced appended with count 0).

Each case folder gets pretrain.pt (masked LM), finetune.pt (sentence classification head "topic", 2 classes),
both with optimizer state stripped; input0/dict.txt, label/dict.txt (the sentence_prediction task's data layout,
also what the recorder loads), the tokenizer files, probes.txt, tokenizer_sentences.json, golden_mlm.pt,
golden_cls.pt, meta.json. Skips with a message where fairseq is not importable.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import monolingual_lines, write_corpus  # noqa: E402
from make_checkpoints import COMPAT, RECORD, SHIM, run, strip_optimizer  # noqa: E402

TINY = ["--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-layers", "2",
        "--encoder-attention-heads", "4", "--max-positions", "32", "--dropout", "0.0", "--attention-dropout", "0.0"]
COMMON = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr-scheduler", "polynomial_decay",
          "--seed", "3", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple",
          "--log-interval", "10", "--save-interval-updates", "0", "--disable-validation"]
PRETRAIN = ["--task", "masked_lm", "--criterion", "masked_lm", "--sample-break-mode", "complete",
            "--tokens-per-sample", "32", "--batch-size", "16", "--lr", "0.003", "--warmup-updates", "5",
            "--total-num-update", "40", "--max-update", "40"]
FINETUNE = ["--task", "sentence_prediction", "--criterion", "sentence_prediction", "--num-classes", "2",
            "--classification-head-name", "topic", "--init-token", "0", "--separator-token", "2",
            "--batch-size", "16", "--lr", "0.002", "--warmup-updates", "5", "--total-num-update", "40",
            "--max-update", "40", "--reset-optimizer", "--reset-dataloader", "--reset-meters",
            "--reset-lr-scheduler"]

ADJECTIVES = ("red", "big", "small", "old", "new", "good", "rot", "gross", "klein", "alt", "neu", "gut")

CASES = {
    "roberta_gpt2": {"arch": "roberta_base", "bpe": "gpt2"},
    "xlmr_spm": {"arch": "xlm", "bpe": "sentencepiece"},
}

PROBE_SENTENCES = ["the dog red sees a house", "a child", "the man big likes a book new", "der hund sieht ein haus"]
# the strings whose fairseq ids the converted tokenizer must reproduce: corpus lines, unseen words, case, digits,
# punctuation, repeated / leading / trailing spaces, non-ASCII (NFKC-relevant for sentencepiece), empty
TOKENIZER_SENTENCES = [
    "the dog red sees a house", "a child", "der mann gross mag ein buch neu", "the cat finds a tree old",
    "The Dog Sees A House", "HOUSE", "houses and dogs and cats", "zebra xylophone quokka", "the  dog   sees",
    " leading space", "trailing space ", "numbers 12345 and 3.14", "punctuation: a, b; c! d? (e) [f] {g}",
    "ein kind hat wasser.", "Straße über Öl für Äpfel", "naïve café résumé", "ﬁnancial ﬀ ① ²", "日本語のテキスト",
    "emoji 🙂 in text", "tab\tseparated", "don't can't won't", "a-b_c/d\\e", "", "x", "the the the the",
    "brot wasser stadt frau", "a good woman finds old bread", "¿qué? ¡sí!", "mixed CASE words Here",
    "  ", "line", "ein auto klein sucht eine katze",
]


def labelled(lines):
    """A toy sentence-classification set: label 1 when the sentence names a property (an adjective)."""
    return [(line, int(any(w in ADJECTIVES for w in line.split()))) for line in lines]


def corpus_lines(scratch):
    write_corpus(scratch, sizes=(("train", 600), ("valid", 10), ("test", 10)))
    with open(os.path.join(scratch, "train.de")) as f:
        german = [line.strip() for line in f]
    return monolingual_lines(600) + german


def encode_gpt2(lines):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    bpe = os.path.join(HERE, "tiny_bpe")
    encoder = get_encoder(os.path.join(bpe, "encoder.json"), os.path.join(bpe, "vocab.bpe"))
    return [" ".join(map(str, encoder.encode(line))) for line in lines]


def train_sentencepiece(lines, out_dir):
    import sentencepiece as spm

    text = os.path.join(out_dir, "spm_train.txt")
    with open(text, "w") as f:
        f.writelines(line + "\n" for line in lines)
    spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(out_dir, "sentencepiece.bpe"),
                                   vocab_size=64, model_type="unigram", character_coverage=1.0, seed_sentencepiece_size=10000,
                                   num_threads=1, minloglevel=2)
    return os.path.join(out_dir, "sentencepiece.bpe.model")


def bpe_symbols(spec, work):
    """Every symbol the BPE can write: GPT-2 ids as text, or the SentencePiece model's ordinary pieces."""
    if spec["bpe"] == "gpt2":
        return [str(i) for i in range(len(json.load(open(os.path.join(HERE, "tiny_bpe", "encoder.json")))))]
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(work, "sentencepiece.bpe.model"))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]


def encode_spm(lines, model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    return [" ".join(sp.encode(line, out_type=str)) for line in lines]


def preprocess(python, trainpref, destdir, srcdict=None):
    cmd = [python, "-c", SHIM, "fairseq_cli.preprocess", "--only-source", "--trainpref", trainpref,
           "--destdir", destdir, "--workers", "1"]
    if srcdict:
        cmd += ["--srcdict", srcdict]
    run(cmd)


def write_lines(path, lines):
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def train(python, data, save, args):
    # --restore-file goes through fairseq's torch.load, which torch >= 2.6 makes weights-only (our own file)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    cmd = [python, "-c", SHIM, "fairseq_cli.train", data, "--save-dir", save] + args
    print("+", " ".join(cmd), flush=True)
    # masked_lm on this torch may abort at exit ("terminate called without an active exception") after saving
    code = subprocess.run(cmd, env=env).returncode
    if not os.path.isfile(os.path.join(save, "checkpoint_last.pt")):
        raise SystemExit("training failed (exit {}) without writing a checkpoint".format(code))


def make_case(name, spec, python, scratch):
    work = os.path.join(scratch, name)
    out = os.path.join(HERE, name)
    os.makedirs(work, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    lines = corpus_lines(work)
    if spec["bpe"] == "gpt2":
        encoded = encode_gpt2(lines)
        for f in ("encoder.json", "vocab.bpe"):
            shutil.copy(os.path.join(HERE, "tiny_bpe", f), os.path.join(out, f))
        bpe_args = ["--bpe", "gpt2", "--gpt2-encoder-json", os.path.join(out, "encoder.json"),
                    "--gpt2-vocab-bpe", os.path.join(out, "vocab.bpe")]
    else:
        model = train_sentencepiece(lines, work)
        shutil.copy(model, os.path.join(out, "sentencepiece.bpe.model"))
        encoded = encode_spm(lines, model)
        bpe_args = ["--bpe", "sentencepiece", "--sentencepiece-model", os.path.join(out, "sentencepiece.bpe.model")]
    write_lines(os.path.join(work, "train.txt"), encoded)
    first = os.path.join(work, "dict-bin")
    preprocess(python, os.path.join(work, "train.txt"), first)  # frequency-ordered dictionary of what was seen
    dictionary = os.path.join(work, "dict.txt")
    shutil.copy(os.path.join(first, "dict.txt"), dictionary)
    # released RoBERTa / XLM-R dictionaries list every BPE token / piece; the ones this corpus never produced go
    # after the seen ones (count 0), the seen ones stay in fairseq-preprocess's frequency order
    with open(dictionary) as f:
        seen = {line.split(" ")[0] for line in f}
    with open(dictionary, "a") as f:
        f.writelines("{} 0\n".format(s) for s in bpe_symbols(spec, work) if s not in seen)
    data = os.path.join(work, "data")
    preprocess(python, os.path.join(work, "train.txt"), os.path.join(data, "input0"), dictionary)
    pairs = labelled(lines)
    write_lines(os.path.join(work, "label.txt"), [str(y) for _, y in pairs])
    preprocess(python, os.path.join(work, "label.txt"), os.path.join(data, "label"))
    save_pre, save_fine = os.path.join(work, "pre"), os.path.join(work, "fine")
    arch = ["--arch", spec["arch"]] + TINY + bpe_args
    train(python, os.path.join(data, "input0"), save_pre, arch + COMMON + PRETRAIN)
    train(python, data, save_fine, arch + COMMON + FINETUNE +
          ["--restore-file", os.path.join(save_pre, "checkpoint_last.pt")])
    strip_optimizer(os.path.join(save_pre, "checkpoint_last.pt"), os.path.join(out, "pretrain.pt"))
    strip_optimizer(os.path.join(save_fine, "checkpoint_last.pt"), os.path.join(out, "finetune.pt"))
    for sub in ("input0", "label"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        shutil.copy(os.path.join(data, sub, "dict.txt"), os.path.join(out, sub, "dict.txt"))
    write_lines(os.path.join(out, "probes.txt"), PROBE_SENTENCES)
    with open(os.path.join(out, "tokenizer_sentences.json"), "w") as f:
        json.dump(TOKENIZER_SENTENCES, f, ensure_ascii=False, indent=0)
    record(name, python)
    meta = {"arch": spec["arch"], "bpe": spec["bpe"], "tiny": TINY, "common": COMMON, "pretrain": PRETRAIN,
            "finetune": FINETUNE, "corpus_lines": len(lines)}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def record(name, python):
    out = os.path.join(HERE, name)
    for checkpoint, golden in (("pretrain.pt", "golden_mlm.pt"), ("finetune.pt", "golden_cls.pt")):
        run([python, "-c", COMPAT + RECORD, os.path.join(out, checkpoint), "--family", "fairseq_roberta",
             "--reference-code", out, "--out", os.path.join(out, golden), "--threads", "1"])


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
    scratch = tempfile.mkdtemp(prefix="hfport-fairseq-enc-")
    for name in argv or list(CASES):
        make_case(name, CASES[name], sys.executable, scratch)
    print("scratch (full checkpoints with optimizer state):", scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
