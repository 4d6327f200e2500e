"""Make the OFA variant goldens in tests/data/ofa_variants/ with the REAL upstream code (OFA-Sys/OFA + fairseq).

For each variant (prefix tuning on either or both sides, with or without the prompt projection, adapters, adapters
with prefix tuning) this builds a tiny OFA through OFA's own task / model code from an OFA training command line,
runs real fairseq `Trainer.train_step`s (OFA's adjust_label_smoothed_cross_entropy, Adam) so that prompts, adapters and the rest of the network
leave their initialisation, saves the checkpoint with fairseq's `Trainer.save_checkpoint`, and records the golden
with hfport's recorder running in the upstream environment.

Size: OFA's ResNet has fixed widths (64..1024 channels, ~8M weights even for `resnet18`), far too big to keep in
the repo. Its convolution weights are therefore zeroed before training and kept frozen (BatchNorm parameters and
running statistics still train), so the stored checkpoint compresses to a few hundred KB with xz. The image path
is still exercised (BatchNorm biases, `image_proj`, image positions); the ResNet arithmetic itself is covered by
the shared fixtures.

    .venv/bin/python tests/make_ofa_variant_goldens.py \
        --fairseq-python /work/envs/fairseq/bin/python --ofa /work/upstream/OFA-Sys+OFA [--only NAME ...]

Exits 0 with a "skip:" line when the upstream environment or code is absent. The training half
(`--train DIR --variant NAME`) runs inside the upstream Python and imports only torch, fairseq and OFA.
"""

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "ofa_variants")
TINY_DICT = "dict.txt"

COMMON = [
    "--task=ofa", "--arch=ofa_tiny", "--criterion=adjust_label_smoothed_cross_entropy", "--label-smoothing=0.1", "--optimizer=adam", "--adam-betas=(0.9,0.999)",
    "--lr=5e-3", "--lr-scheduler=fixed", "--batch-size=4", "--num-workers=0", "--max-update=1000",
    "--patch-image-size=32", "--code-dict-size=16", "--num-bins=16",
    "--encoder-layers=2", "--decoder-layers=2", "--encoder-embed-dim=16", "--decoder-embed-dim=16",
    "--encoder-ffn-embed-dim=32", "--decoder-ffn-embed-dim=32", "--encoder-attention-heads=2",
    "--decoder-attention-heads=2", "--resnet-type=resnet18", "--token-bucket-size=16", "--image-bucket-size=4",
    "--max-source-positions=32", "--max-target-positions=32",
    "--encoder-normalize-before", "--decoder-normalize-before", "--share-all-embeddings",
    "--share-decoder-input-output-embed", "--layernorm-embedding", "--patch-layernorm-embedding",
    "--code-layernorm-embedding", "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads",
    "--disable-entangle", "--dropout=0.1", "--attention-dropout=0.0", "--no-save-optimizer-state",
    "--log-format=simple", "--cpu",
]

VARIANTS = {
    "prefix-encoder": ["--encoder-prompt", "--encoder-prompt-type=prefix", "--encoder-prompt-length=5"],
    "prefix-decoder": ["--decoder-prompt", "--decoder-prompt-type=prefix", "--decoder-prompt-length=4"],
    "prefix-both": ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-type=prefix",
                    "--decoder-prompt-type=prefix", "--encoder-prompt-length=6", "--decoder-prompt-length=3"],
    "prefix-both-projection": ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-type=prefix",
                               "--decoder-prompt-type=prefix", "--encoder-prompt-length=4",
                               "--decoder-prompt-length=5", "--encoder-prompt-projection",
                               "--decoder-prompt-projection", "--encoder-prompt-dim=24", "--decoder-prompt-dim=20"],
    "adapter": ["--adapter", "--adapter-dim=8"],
    "adapter-prefix-both": ["--adapter", "--adapter-dim=6", "--encoder-prompt", "--decoder-prompt",
                            "--encoder-prompt-type=prefix", "--decoder-prompt-type=prefix",
                            "--encoder-prompt-length=3", "--decoder-prompt-length=2"],
}
SEEDS = {name: 200 + i for i, name in enumerate(VARIANTS)}
TRAIN_STEPS = 40


# -- the upstream half -----------------------------------------------------------------------------------------------

_USER_DIR = '''import importlib.util, sys
sys.path.insert(0, {root!r})
import models.ofa  # registers OFA's model and architectures


def _load(name, path):  # one file of OFA's packages, without their heavy __init__ imports
    spec = importlib.util.spec_from_file_location(name, {root!r} + path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("variant_ofa_task", "/tasks/ofa_task.py")
_load("variant_ofa_criterion", "/criterions/label_smoothed_cross_entropy.py")
'''


def _user_dir(ofa_root, scratch):
    package = os.path.join(scratch, "variant_ofa_user")
    os.makedirs(package, exist_ok=True)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write(_USER_DIR.format(root=os.path.abspath(ofa_root)))
    return package


def _batch(task, generator, size=4):
    import torch

    d = task.source_dictionary
    text_high = 4 + 40  # the BPE part of the tiny dictionary
    src = torch.randint(4, text_high, (size, 7), generator=generator)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    src[1, 5:] = d.pad()
    src[1, 4] = d.eos()
    target = torch.randint(4, text_high, (size, 6), generator=generator)
    target[:, -1] = d.eos()
    target[2, 4:] = d.pad()
    target[2, 3] = d.eos()
    prev = torch.cat([torch.full((size, 1), d.bos()), target[:, :-1]], dim=1)
    prev[2, 4:] = d.pad()
    net_input = {"src_tokens": src, "src_lengths": (src != d.pad()).sum(-1), "prev_output_tokens": prev,
                 "patch_images": torch.rand((size, 3, 32, 32), generator=generator) * 2 - 1,
                 "patch_masks": torch.tensor([True, True, False, True])}
    return {"id": torch.arange(size), "net_input": net_input, "target": target,
            "ntokens": int((target != d.pad()).sum()), "nsentences": size}


def train(out_dir, variant, ofa_root, bpe_dir):
    import numpy as np
    import torch

    if not hasattr(np, "compat"):  # fairseq reads np.compat.long, gone in numpy 2
        np.compat = type("compat", (), {"long": np.int64})
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    scratch = tempfile.mkdtemp(prefix="ofa-variant-")
    bpe = os.path.join(scratch, "bpe")  # the tiny dictionary next to OFA's GPT-2 BPE files
    os.makedirs(bpe)
    os.symlink(os.path.join(bpe_dir, "dict.txt"), os.path.join(bpe, "dict.txt"))
    for name in ("encoder.json", "vocab.bpe"):
        os.symlink(os.path.join(ofa_root, "utils", "BPE", name), os.path.join(bpe, name))
    argv = [os.path.join(scratch, "data"), "--user-dir=" + _user_dir(ofa_root, scratch), "--bpe-dir=" + bpe,
            "--save-dir=" + scratch, "--seed={}".format(SEEDS[variant]), *COMMON, *VARIANTS[variant]]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    torch.manual_seed(SEEDS[variant])
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # zero ResNet convolutions keep the file small (see the module docstring)
            if name.startswith("encoder.embed_images.") and param.dim() == 4:
                param.zero_()
                param.requires_grad_(False)
            else:
                # OFA freezes everything but prompts/adapters while prompt tuning; train everything here so no
                # tensor of the fixture sits at its initialisation
                param.requires_grad_(True)
    trainer = Trainer(cfg, task, model, criterion)
    generator = torch.Generator().manual_seed(SEEDS[variant])
    batches = [_batch(task, generator) for _ in range(2)]
    losses = []
    for step in range(TRAIN_STEPS):
        log = trainer.train_step([batches[step % len(batches)]])
        losses.append(float(log["loss"]) if log and "loss" in log else None)
    os.makedirs(out_dir, exist_ok=True)
    trainer.save_checkpoint(os.path.join(out_dir, "checkpoint.pt"), {"train_iterator": {"epoch": 1}})
    with open(os.path.join(out_dir, TINY_DICT), "w") as f:
        f.write("\n".join(task.source_dictionary.symbols) + "\n")
    with open(os.path.join(out_dir, "train.json"), "w") as f:
        json.dump({"argv": argv[1:], "steps": TRAIN_STEPS, "losses": losses}, f)
    shutil.rmtree(scratch, ignore_errors=True)


# -- the hfport half --------------------------------------------------------------------------------------------------

def make(variant, fairseq_python, ofa_root, bpe_dir, out_root):
    sys.path.insert(0, os.path.dirname(HERE))
    from hfport.verify.reference import record_reference

    work = tempfile.mkdtemp(prefix="ofa-variant-" + variant + "-")
    subprocess.run([fairseq_python, os.path.abspath(__file__), "--train", work, "--variant", variant,
                    "--ofa", ofa_root, "--bpe-dir", bpe_dir], check=True)
    checkpoint = os.path.join(work, "checkpoint.pt")
    golden = record_reference(checkpoint, ofa_root, None, "ofa", reference_python=fairseq_python)
    target = os.path.join(out_root, variant)
    os.makedirs(target, exist_ok=True)
    with open(checkpoint, "rb") as src, lzma.open(os.path.join(target, "checkpoint.pt.xz"), "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(golden, os.path.join(target, "golden.pt"))
    with open(os.path.join(work, "train.json")) as f:
        trained = json.load(f)
    with open(os.path.join(target, "README.md"), "w") as f:
        f.write("# {}\n\nMade by `tests/make_ofa_variant_goldens.py` with the upstream OFA code: {} real "
                "fairseq train steps (loss {} -> {}); ResNet convolutions zeroed and frozen for size.\n\n"
                "OFA arguments: `{}`\n".format(variant, trained["steps"], trained["losses"][0], trained["losses"][-1],
                                               " ".join(a for a in trained["argv"] if not a.startswith(
                                                   ("--user-dir", "--save-dir", "--bpe-dir")))))
    shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fairseq-python", default=os.environ.get("HFPORT_FAIRSEQ_PYTHON", "/work/envs/fairseq/bin/python"))
    p.add_argument("--ofa", default=os.environ.get("HFPORT_OFA_ROOT", "/work/upstream/OFA-Sys+OFA"))
    p.add_argument("--bpe-dir", default=os.path.join(os.environ.get("HFPORT_SHARED", "/work/shared"),
                                                     "fixtures", "ofa", "bpe_tiny"))
    p.add_argument("--out", default=DATA)
    p.add_argument("--only", nargs="*", choices=sorted(VARIANTS))
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train:
        train(args.train, args.variant, args.ofa, args.bpe_dir)
        return 0
    missing = [what for what, path in (("fairseq python", args.fairseq_python), ("OFA checkout", args.ofa),
                                       ("tiny dictionary", args.bpe_dir)) if not os.path.exists(path)]
    if not missing:
        probe = subprocess.run([args.fairseq_python, "-c", "import fairseq"], capture_output=True)
        if probe.returncode:
            missing.append("fairseq importable in " + args.fairseq_python)
    if missing:
        print("skip: the upstream environment is absent ({})".format(", ".join(missing)))
        return 0
    for variant in args.only or VARIANTS:
        print("wrote", make(variant, args.fairseq_python, args.ofa, args.bpe_dir, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
