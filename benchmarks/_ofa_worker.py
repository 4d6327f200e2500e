"""One side of benchmarks/ofa_inference.py: a long-lived process holding one model, timing what it is asked to.

    python _ofa_worker.py hf FOLDER INPUTS THREADS
    python _ofa_worker.py fairseq CHECKPOINT INPUTS THREADS OFA_ROOT HFPORT_DIR VERIFY_DIR

Prints `ready LOAD_SECONDS RSS_MB`, then answers each stdin line: `forward B` / `greedy B` -> `ms VALUE`
(one run, batch B of the inputs file), `tokens SET` -> `tokens JSON` (greedy 20 tokens on that input set).
The fairseq side runs in fairseq's own environment: hfport's recorder modules are registered by path (they need
only torch), as `hfport verify --against` does.
"""

import importlib.util
import json
import sys
import time

import torch

GREEDY_TOKENS = 20  # decoder steps per greedy run: 19 tokens with eos blocked, then eos forced


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def _package(name, path):
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def hf_side(folder):
    from transformers import AutoModelForSeq2SeqLM

    from hfport.verify.backends.hf_ofa import hf_generate

    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()

    def forward(inputs):
        prev = inputs["prev_output_tokens"]
        with torch.no_grad():
            model(input_ids=inputs["src_tokens"], attention_mask=inputs["src_tokens"].ne(1).long(),
                  patch_images=inputs["patch_images"], patch_masks=inputs["patch_masks"], decoder_input_ids=prev,
                  use_cache=False)

    def greedy(inputs):
        return hf_generate(model, inputs, num_beams=1, max_len_b=GREEDY_TOKENS - 1, min_len=GREEDY_TOKENS - 1)

    return forward, greedy


def fairseq_side(checkpoint, ofa_root, hfport_dir, verify_dir):
    _package("hfport", hfport_dir)
    _package("hfport.verify", verify_dir)
    from hfport.verify.backends.fairseq_ofa import load_ofa, ofa_generate

    model, task, _ = load_ofa(checkpoint, ofa_root)

    def forward(inputs):
        with torch.no_grad():
            model(src_tokens=inputs["src_tokens"], src_lengths=inputs["src_lengths"],
                  patch_images=inputs["patch_images"], patch_masks=inputs["patch_masks"],
                  prev_output_tokens=inputs["prev_output_tokens"])

    def greedy(inputs):
        return ofa_generate(model, task, inputs, 1, max_len_b=GREEDY_TOKENS - 1, min_len=GREEDY_TOKENS - 1)

    return forward, greedy


def main(argv):
    side, model_path, inputs_path, threads = argv[:4]
    torch.set_num_threads(int(threads))
    started = time.perf_counter()
    forward, greedy = hf_side(model_path) if side == "hf" else fairseq_side(model_path, *argv[4:7])
    print(f"ready {time.perf_counter() - started:.3f} {_rss_mb():.0f}", flush=True)
    sets = torch.load(inputs_path, weights_only=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command, argument = line.split()
        if command == "tokens":
            print("tokens " + json.dumps(greedy(sets[argument])), flush=True)
            continue
        inputs = sets[f"batch{argument}"]
        run = forward if command == "forward" else greedy
        start = time.perf_counter()
        run(inputs)
        print(f"ms {(time.perf_counter() - start) * 1000:.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
