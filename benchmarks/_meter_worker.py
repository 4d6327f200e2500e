"""One side of benchmarks/meter_inference.py: a long-lived process holding one METER model, timing what it is asked to.

    python _meter_worker.py hf FOLDER INPUTS THREADS
    python _meter_worker.py meter CHECKPOINT INPUTS THREADS METER_ROOT HFPORT_DIR VERIFY_DIR TEXT_CONFIG
    python _meter_worker.py make CHECKPOINT PRESET_JSON TEXT_CONFIG METER_ROOT HFPORT_DIR VERIFY_DIR

hf / meter print `ready LOAD_SECONDS RSS_MB`, then answer each stdin line: `forward B` -> `ms VALUE` (one VQA
forward of batch B of the inputs file: towers, fusion, pooler and VQA head), `logits B PATH` -> `saved` (the VQA
logits of that batch written with torch.save), `profile B PATH` -> `saved` (torch.profiler's top operators of one
forward, as text), `peak` -> `peak MB` (the process's peak RSS so far). `make` writes a random checkpoint of METER's own class.
The METER side runs in METER's legacy environment: hfport's recorder modules are registered by path (they need only
torch) and build the model exactly as `hfport verify --against` does (hfport.verify.backends.meter_live).
"""

import importlib.util
import json
import sys
import time

import torch


def _rss_mb(field="VmRSS") -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1]) / 1024


def _package(name, path):
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def hf_side(folder):
    from transformers import AutoModelForVisualQuestionAnswering

    model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=True).eval()

    def logits(inputs):
        with torch.no_grad():
            return model(input_ids=inputs["text_ids"], attention_mask=inputs["text_masks"],
                         pixel_values=inputs["image"]).logits

    return logits


def meter_side(checkpoint, meter_root, hfport_dir, verify_dir, text_config):
    _package("hfport", hfport_dir)
    _package("hfport.verify", verify_dir)
    from hfport.verify.backends.meter_live import load_meter

    model, _, _ = load_meter(checkpoint, meter_root, text_config)

    def logits(inputs):
        # METER's own VQA path (objectives.compute_vqa without the loss): infer(), then the head on cls_feats
        batch = {"text_ids": inputs["text_ids"], "text_masks": inputs["text_masks"],
                 "text_labels": torch.full_like(inputs["text_ids"], -100), "image": [inputs["image"]]}
        with torch.no_grad():
            return model.vqa_classifier(model.infer(batch)["cls_feats"])

    return logits


def make_checkpoint(path, preset_json, text_config, meter_root, hfport_dir, verify_dir):
    """A random METER checkpoint of `preset_json`'s config, built by METER's own class (CLIP towers only)."""
    _package("hfport", hfport_dir)
    _package("hfport.verify", verify_dir)
    from hfport.verify.backends import meter_live
    from hfport.verify.scratch import scratch_dir

    if meter_root not in sys.path:
        sys.path.insert(0, meter_root)
    from meter.modules import meter_module

    preset = json.loads(open(preset_json).read())
    config, clip = preset["config"], preset["clip"]
    torch.manual_seed(0)
    # what _clip_builder reads to size CLIP: the shapes of a CLIP archive's visual tower (meta tensors, no data)
    width, patch, grid = clip["width"], clip["patch_size"], clip["grid"]
    shapes = {"vit_model.visual.conv1.weight": (width, 3, patch, patch),
              "vit_model.visual.positional_embedding": (grid * grid + 1, width),
              "vit_model.ln_final.weight": (clip["text_width"],)}
    for block in range(clip["blocks"]):  # the blocks METER keeps
        shapes[f"vit_model.visual.transformer.resblocks.{block}.ln_1.weight"] = (width,)
    sizing = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    built = dict(config)
    built["tokenizer"] = meter_live._text_base(config, text_config, scratch_dir("hfport-meter-bench-"))
    with meter_live._patched(meter_module, "build_model", meter_live._clip_builder(sizing)):
        model = meter_module.METERTransformerSS(built)
    state_dict = model.state_dict()
    with torch.no_grad():  # random LayerNorm affines, so that a swapped norm cannot pass the output check
        for name, tensor in state_dict.items():
            if tensor.is_floating_point() and ("ln" in name or "LayerNorm" in name):
                tensor.add_(torch.rand_like(tensor) * 0.1)
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.3.2", "state_dict": state_dict,
                "hparams_name": "kwargs", "hyper_parameters": {"config": config}}, path)
    print(f"made {len(state_dict)} tensors, {sum(t.numel() for t in state_dict.values()) / 1e6:.1f} M values",
          flush=True)


def main(argv):
    side = argv[0]
    if side == "make":
        make_checkpoint(*argv[1:7])
        return
    model_path, inputs_path, threads = argv[1:4]
    torch.set_num_threads(int(threads))
    started = time.perf_counter()
    logits = hf_side(model_path) if side == "hf" else meter_side(model_path, *argv[4:8])
    print(f"ready {time.perf_counter() - started:.3f} {_rss_mb():.0f}", flush=True)
    sets = torch.load(inputs_path, weights_only=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "peak":
            print(f"peak {_rss_mb('VmHWM'):.0f}", flush=True)
            continue
        inputs = sets[f"batch{words[1]}"]
        if words[0] == "logits":
            torch.save(logits(inputs).clone(), words[2])
            print("saved", flush=True)
            continue
        if words[0] == "profile":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                logits(inputs)
            with open(words[2], "w") as out:
                out.write(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            print("saved", flush=True)
            continue
        start = time.perf_counter()
        logits(inputs)
        print(f"ms {(time.perf_counter() - start) * 1000:.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
