"""Train the tiny fairseq checkpoints under tests/data/fairseq/ with fairseq's own training path, and record
their goldens with hfport's recorder (fairseq's load_model_ensemble_and_task + SequenceGenerator).

Needs an environment with fairseq (CPU torch is enough); skips with a message otherwise:

    /path/to/fairseq-venv/bin/python tests/data/fairseq/make_checkpoints.py [CASE ...]

Each case folder gets: checkpoint.pt (optimizer state stripped, for the tests), dict.*.txt, golden.pt and
meta.json; the full checkpoint with Adam state is written to the scratch folder only (tests build their own
optimizer-laden copy). Deterministic: fixed seeds, one thread.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
from corpus import write_corpus  # noqa: E402

# numpy 2 dropped np.compat.long, which fairseq 0.12's data pipeline still names
COMPAT = "import sys, types, numpy; c = types.ModuleType('numpy.compat'); c.long = int; " \
         "sys.modules['numpy.compat'] = c; numpy.compat = c\n"
SHIM = COMPAT + "import runpy; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"

# the recorder without installing hfport here: its two package folders registered by path (as verify/reference.py)
RECORD = """
import importlib.util, sys
def _package(name, path):
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
_package("hfport", {hfport!r})
_package("hfport.verify", {verify!r})
from hfport.verify.record import main
sys.exit(main(sys.argv[1:]))
""".format(hfport=os.path.join(REPO, "hfport"), verify=os.path.join(REPO, "verify"))


TINY = ["--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-layers", "2",
        "--encoder-attention-heads", "4", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
        "--decoder-layers", "2", "--decoder-attention-heads", "4"]
TRAIN = ["--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50",
         "--dropout", "0.0", "--max-tokens", "1024", "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--seed", "3", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints",
         "--log-format", "simple", "--log-interval", "50", "--save-interval-updates", "0", "--disable-validation"]

CASES = {
    # fairseq's IWSLT recipe shape: post-norm, separate dictionaries, decoder input/output embeddings tied
    "translation_postnorm_tied": {
        "arch": "transformer_iwslt_de_en", "joined": False, "updates": 400,
        "flags": ["--share-decoder-input-output-embed"],
    },
    # WMT-style pre-norm with one joined dictionary and all embeddings shared
    "translation_prenorm_shared": {
        "arch": "transformer_wmt_en_de", "joined": True, "updates": 400,
        "flags": ["--share-all-embeddings", "--encoder-normalize-before", "--decoder-normalize-before"],
    },
    # post-norm, nothing shared
    "translation_postnorm_untied": {
        "arch": "transformer_wmt_en_de", "joined": False, "updates": 300, "flags": [],
    },
    # BART fine-tuned on translation: GPT-2-style byte-level BPE (tiny_bpe/), one dictionary holding every BPE
    # token, sources written as BART's hub interface encodes them (<s> ... </s>)
    "bart_translation": {
        "arch": "bart_base", "joined": True, "updates": 600, "bpe": True,
        "flags": ["--max-source-positions", "128", "--max-target-positions", "128", "--lr", "0.002",
                  "--warmup-updates", "100"],
    },
}

PROBE_SENTENCES = ["der hund rot sieht ein haus", "ein kind", "der mann gross mag ein buch neu"]


def run(cmd, env=None):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def record(name, python):
    out = os.path.join(HERE, name)
    family = "fairseq_bart" if CASES[name].get("bpe") else "fairseq_translation"
    run([python, "-c", COMPAT + RECORD, os.path.join(out, "checkpoint.pt"), "--family", family,
         "--reference-code", out, "--out", os.path.join(out, "golden.pt"), "--threads", "1"])


def bpe_encode_corpus(work):
    """Every corpus line as GPT-2 BPE ids (fairseq's own GPT-2 encoder on the tiny BPE), sources with BART's <s>;
    a dictionary listing every BPE id (so no id falls outside it)."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    bpe = os.path.join(HERE, "tiny_bpe")
    encoder = get_encoder(os.path.join(bpe, "encoder.json"), os.path.join(bpe, "vocab.bpe"))
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            path = os.path.join(work, "{}.{}".format(split, lang))
            with open(path) as f:
                lines = [line.strip() for line in f]
            prefix = "<s> " if lang == "de" else ""
            with open(path, "w") as f:
                f.writelines(prefix + " ".join(map(str, encoder.encode(line))) + "\n" for line in lines)
    size = len(json.load(open(os.path.join(bpe, "encoder.json"))))
    with open(os.path.join(work, "dict.txt"), "w") as f:
        f.writelines("{} 1\n".format(i) for i in range(size))


def make_case(name, spec, python, scratch):
    work = os.path.join(scratch, name)
    os.makedirs(work, exist_ok=True)
    write_corpus(work)
    if spec.get("bpe"):
        bpe_encode_corpus(work)
    data_bin = os.path.join(work, "data-bin")
    pre = [python, "-c", SHIM, "fairseq_cli.preprocess", "--source-lang", "de", "--target-lang", "en",
           "--trainpref", os.path.join(work, "train"), "--validpref", os.path.join(work, "valid"),
           "--destdir", data_bin, "--workers", "1"]
    if spec.get("bpe"):
        pre += ["--srcdict", os.path.join(work, "dict.txt"), "--tgtdict", os.path.join(work, "dict.txt")]
    elif spec["joined"]:
        pre.append("--joined-dictionary")
    run(pre)
    save = os.path.join(work, "ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    train = [python, "-c", SHIM, "fairseq_cli.train", data_bin, "--arch", spec["arch"], "--task", "translation",
             "--max-update", str(spec["updates"]), "--save-dir", save] + TINY + TRAIN + spec["flags"]
    print("+", " ".join(train), flush=True)
    # fairseq 0.12 on this torch may abort at interpreter exit ("terminate called without an active exception")
    # after saving: the saved checkpoint is what counts
    code = subprocess.run(train, env=env).returncode
    if not os.path.isfile(os.path.join(save, "checkpoint_last.pt")):
        raise SystemExit("training failed (exit {}) without writing a checkpoint".format(code))
    finish_case(name, spec, python, data_bin, save)


def finish_case(name, spec, python, data_bin, save):
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    full = os.path.join(save, "checkpoint_last.pt")
    strip_optimizer(full, os.path.join(out, "checkpoint.pt"))
    for lang in ("de", "en"):
        shutil.copy(os.path.join(data_bin, "dict.{}.txt".format(lang)), os.path.join(out, "dict.{}.txt".format(lang)))
    if spec.get("bpe"):  # the recorder encodes the probe sentences with the same BPE
        for f in ("encoder.json", "vocab.bpe"):
            shutil.copy(os.path.join(HERE, "tiny_bpe", f), os.path.join(out, f))
    with open(os.path.join(out, "task_overrides.json"), "w") as f:
        json.dump({"source_lang": "de", "target_lang": "en"}, f)
    with open(os.path.join(out, "probes.txt"), "w") as f:
        f.writelines(s + "\n" for s in PROBE_SENTENCES)
    record(name, python)
    meta = {"arch": spec["arch"], "updates": spec["updates"], "flags": spec["flags"], "joined": spec["joined"],
            "tiny": TINY, "train": TRAIN}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def strip_optimizer(source, target):
    """The checkpoint the tests commit: fairseq's file minus last_optimizer_state (a test puts Adam state back)."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=False)
    state["last_optimizer_state"] = None
    torch.save(state, target)


def main(argv):
    try:
        import fairseq  # noqa: F401
    except ImportError:
        print("skipped: fairseq is not importable in {}".format(sys.executable))
        return 0
    if argv[:1] == ["--record-only"]:  # goldens again from the committed checkpoints
        for name in argv[1:] or list(CASES):
            record(name, sys.executable)
        return 0
    names = argv or list(CASES)
    scratch = tempfile.mkdtemp(prefix="hfport-fairseq-")
    for name in names:
        make_case(name, CASES[name], sys.executable, scratch)
    print("scratch (full checkpoints with optimizer state):", scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
