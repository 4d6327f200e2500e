"""Train the tiny mBART translation checkpoint and the tiny BART classifier under tests/data/fairseq/ with fairseq's
own training path, and record their goldens with hfport's recorder. Needs fairseq + sentencepiece (skips otherwise):

    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_mbart_and_classifier.py [mbart_translation] [bart_classifier]

mbart_translation: a unigram SentencePiece model trained on the toy corpus (corpus.py), the corpus encoded into
pieces, a fairseq dictionary in fairseq-preprocess's frequency order (so NOT the SentencePiece order; pieces the
corpus never produces appended after it, count 0, as released mBART dictionaries list every piece), then
`fairseq-train --task translation_from_pretrained_bart --arch mbart_large --langs de_DE,en_XX` from scratch with
pre-norm (mBART's recipe flags `--encoder-normalize-before --decoder-normalize-before`) and tiny dimensions.

bart_classifier: `fairseq-train --task sentence_prediction --arch bart_base --num-classes 3` from scratch on toy
sentences (byte-level BPE of tiny_bpe/, `<s> ... </s>`, `--add-prev-output-tokens`), labels from their structure.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus import sentence_pair, write_corpus  # noqa: E402
from make_checkpoints import COMPAT, PROBE_SENTENCES, RECORD, SHIM, TINY, run, strip_optimizer  # noqa: E402

LANGS = ("de_DE", "en_XX")
COMMON = ["--optimizer", "adam", "--lr-scheduler", "inverse_sqrt", "--dropout", "0.0", "--seed", "3", "--cpu",
          "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "50",
          "--save-interval-updates", "0", "--disable-validation", "--max-source-positions", "64",
          "--max-target-positions", "64"]
MBART = {"updates": 500, "flags": ["--task", "translation_from_pretrained_bart", "--arch", "mbart_large",
                                   "--langs", ",".join(LANGS), "--source-lang", LANGS[0], "--target-lang", LANGS[1],
                                   "--encoder-normalize-before", "--decoder-normalize-before",
                                   "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                                   "--lr", "0.005", "--warmup-updates", "50", "--max-tokens", "1024"]}
CLASSIFIER = {"updates": 300, "flags": ["--task", "sentence_prediction", "--arch", "bart_base", "--num-classes", "3",
                                        "--init-token", "0", "--separator-token", "2", "--add-prev-output-tokens",
                                        "--criterion", "sentence_prediction", "--max-positions", "64",
                                        "--lr", "0.003", "--warmup-updates", "30", "--batch-size", "32",
                                        "--pooler-dropout", "0.0"]}
# the tokenizer check: strings unlike the training sentences too (unknown words, characters the model never saw)
TOKENIZER_STRINGS = PROBE_SENTENCES + [
    "ein hund", "die katze schläft", "Der Mann", "hund  katze", "  leading and trailing  ", "wasserbrot",
    "zebra 123 !", "ein kind gross hat der baum alt", "über", "a", "",
]
RECORD_NOW = "--no-record" not in sys.argv
# fairseq 0.12's translation_from_pretrained_bart still reads `self.args`, which the hydra-era TranslationTask no
# longer sets; give the task its arguments back (training only; the recorder does the same for a loaded task)
TASK_ARGS = COMPAT + (
    "import fairseq.tasks.translation_from_pretrained_bart as t; _init = t.TranslationFromPretrainedBARTTask.__init__\n"
    "def _with_args(self, args, *rest):\n    self.args = args\n    _init(self, args, *rest)\n"
    "t.TranslationFromPretrainedBARTTask.__init__ = _with_args\n") + SHIM[len(COMPAT):]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train(python, data_bin, save, spec):
    cmd = [python, "-c", TASK_ARGS, "fairseq_cli.train", data_bin, "--max-update", str(spec["updates"]), "--save-dir",
           save] + TINY + COMMON + spec["flags"]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, env=ENV).returncode  # may abort at exit after saving (see make_checkpoints.py)
    if not os.path.isfile(os.path.join(save, "checkpoint_last.pt")):
        raise SystemExit("training failed (exit {}) without writing a checkpoint".format(code))


def record(out, family, python):
    run([python, "-c", COMPAT + RECORD, os.path.join(out, "checkpoint.pt"), "--family", family,
         "--reference-code", out, "--out", os.path.join(out, "golden.pt"), "--threads", "1"])


def make_mbart(python, scratch):
    import sentencepiece as spm

    work = os.path.join(scratch, "mbart")
    os.makedirs(work, exist_ok=True)
    write_corpus(work, src=LANGS[0], tgt=LANGS[1])
    texts = [os.path.join(work, "train." + lang) for lang in LANGS]
    spm.SentencePieceTrainer.train(input=",".join(texts), model_prefix=os.path.join(work, "sentence.bpe"),
                                   vocab_size=40, model_type="unigram", character_coverage=1.0, num_threads=1,
                                   seed_sentencepiece_size=2000, shuffle_input_sentence=False)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(work, "sentence.bpe.model"))
    for split in ("train", "valid", "test"):
        for lang in LANGS:
            path = os.path.join(work, "{}.{}".format(split, lang))
            with open(path) as f:
                lines = [line.rstrip("\n") for line in f]
            with open(os.path.join(work, "{}.spm.{}".format(split, lang)), "w") as f:
                f.writelines(" ".join(sp.encode(line, out_type=str)) + "\n" for line in lines)
    # fairseq-preprocess's own dictionary (frequency order), then every piece it never saw, then binarise with it
    counted = os.path.join(work, "counted")
    run([python, "-c", SHIM, "fairseq_cli.preprocess", "--source-lang", LANGS[0], "--target-lang", LANGS[1],
         "--trainpref", os.path.join(work, "train.spm"), "--destdir", counted, "--joined-dictionary",
         "--workers", "1", "--dict-only"])
    with open(os.path.join(counted, "dict.{}.txt".format(LANGS[0]))) as f:
        seen = [line.split(" ")[0] for line in f if not line.startswith("madeupword")]
    unseen = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i)) and sp.id_to_piece(i) not in seen]
    with open(os.path.join(work, "dict.txt"), "w") as f:
        with open(os.path.join(counted, "dict.{}.txt".format(LANGS[0]))) as g:
            f.writelines(line for line in g if not line.startswith("madeupword"))
        f.writelines("{} 0\n".format(p) for p in unseen)
    data_bin = os.path.join(work, "data-bin")
    run([python, "-c", SHIM, "fairseq_cli.preprocess", "--source-lang", LANGS[0], "--target-lang", LANGS[1],
         "--trainpref", os.path.join(work, "train.spm"), "--validpref", os.path.join(work, "valid.spm"),
         "--destdir", data_bin, "--srcdict", os.path.join(work, "dict.txt"), "--tgtdict",
         os.path.join(work, "dict.txt"), "--workers", "1"])
    save = os.path.join(work, "ckpt")
    train(python, data_bin, save, MBART)
    finish_mbart(python, work, save)


def finish_mbart(python, work, save):
    out = os.path.join(HERE, "mbart_translation")
    os.makedirs(out, exist_ok=True)
    strip_optimizer(os.path.join(save, "checkpoint_last.pt"), os.path.join(out, "checkpoint.pt"))
    shutil.copy(os.path.join(work, "dict.txt"), os.path.join(out, "dict.txt"))
    for lang in LANGS:
        shutil.copy(os.path.join(work, "dict.txt"), os.path.join(out, "dict.{}.txt".format(lang)))
    shutil.copy(os.path.join(work, "sentence.bpe.model"), os.path.join(out, "sentence.bpe.model"))
    with open(os.path.join(out, "task_overrides.json"), "w") as f:
        json.dump({"source_lang": LANGS[0], "target_lang": LANGS[1]}, f)
    with open(os.path.join(out, "probes.txt"), "w") as f:
        f.writelines(s + "\n" for s in PROBE_SENTENCES)
    with open(os.path.join(out, "tokenizer_strings.json"), "w") as f:
        json.dump(TOKENIZER_STRINGS, f, ensure_ascii=False, indent=0)
    if RECORD_NOW:
        record(out, "fairseq_mbart", python)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"updates": MBART["updates"], "flags": MBART["flags"], "tiny": TINY, "train": COMMON,
                   "spm": "unigram, vocab_size 40, character_coverage 1.0"}, f, indent=1)


def label(src_words):
    """0: one noun phrase; 1: a sentence whose first noun has an adjective; 2: any other sentence."""
    if len(src_words) <= 3:
        return 0
    return 1 if src_words[2] not in ("sieht", "hat", "mag", "sucht", "findet") else 2


def make_classifier(python, scratch):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    work = os.path.join(scratch, "classifier")
    os.makedirs(work, exist_ok=True)
    bpe = os.path.join(HERE, "tiny_bpe")
    encoder = get_encoder(os.path.join(bpe, "encoder.json"), os.path.join(bpe, "vocab.bpe"))
    rng = random.Random(5)
    for split, n in (("train", 2000), ("valid", 50)):
        pairs = [sentence_pair(rng)[0] for _ in range(n)]
        with open(os.path.join(work, split + ".input0"), "w") as f:
            f.writelines(" ".join(map(str, encoder.encode(" ".join(words)))) + "\n" for words in pairs)
        with open(os.path.join(work, split + ".label"), "w") as f:
            f.writelines("{}\n".format(label(words)) for words in pairs)
    size = len(json.load(open(os.path.join(bpe, "encoder.json"))))
    with open(os.path.join(work, "dict.txt"), "w") as f:
        f.writelines("{} 1\n".format(i) for i in range(size))
    data_bin = os.path.join(work, "data-bin")
    for part, extra in (("input0", ["--srcdict", os.path.join(work, "dict.txt")]), ("label", [])):
        run([python, "-c", SHIM, "fairseq_cli.preprocess", "--only-source", "--trainpref",
             os.path.join(work, "train." + part), "--validpref", os.path.join(work, "valid." + part),
             "--destdir", os.path.join(data_bin, part), "--workers", "1"] + extra)
    save = os.path.join(work, "ckpt")
    train(python, data_bin, save, CLASSIFIER)
    out = os.path.join(HERE, "bart_classifier")
    os.makedirs(out, exist_ok=True)
    strip_optimizer(os.path.join(save, "checkpoint_last.pt"), os.path.join(out, "checkpoint.pt"))
    for part in ("input0", "label"):
        os.makedirs(os.path.join(out, part), exist_ok=True)
        shutil.copy(os.path.join(data_bin, part, "dict.txt"), os.path.join(out, part, "dict.txt"))
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(bpe, f), os.path.join(out, f))
    with open(os.path.join(out, "probes.txt"), "w") as f:
        f.writelines(s + "\n" for s in PROBE_SENTENCES + ["der baum alt", "ein auto neu findet der hund"])
    if RECORD_NOW:
        record(out, "fairseq_bart_cls", python)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"updates": CLASSIFIER["updates"], "flags": CLASSIFIER["flags"], "tiny": TINY, "train": COMMON,
                   "labels": label.__doc__}, f, indent=1)


def main(argv):
    try:
        import fairseq  # noqa: F401
        import sentencepiece  # noqa: F401
    except ImportError:
        print("skipped: fairseq and sentencepiece are not importable in {}".format(sys.executable))
        return 0
    record_only = argv[:1] == ["--record-only"]
    names = [a for a in argv if not a.startswith("--")] or ["mbart_translation", "bart_classifier"]
    if record_only:
        for name in names:
            record(os.path.join(HERE, name), {"mbart_translation": "fairseq_mbart"}.get(name, "fairseq_bart_cls"),
                   sys.executable)
        return 0
    scratch = tempfile.mkdtemp(prefix="hfport-fairseq-more-")
    if "mbart_translation" in names:
        make_mbart(sys.executable, scratch)
    if "bart_classifier" in names:
        make_classifier(sys.executable, scratch)
    print("scratch (full checkpoints with optimizer state):", scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
