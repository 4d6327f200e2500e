"""Record a golden file by running the ORIGINAL model (fairseq + OFA, or METER) on the probes.

Runs inside the original's own environment: torch + the original code only (no transformers, no click),
Python >= 3.8. The file has the layout of the shared fixtures' `reference.pt` (tensors and plain containers,
`torch.load(weights_only=True)` loads it), so `hfport.verify.golden` reads both.

    python -m hfport.verify.record CKPT --reference-code DIR --out FILE [--inputs PROBES.pt]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch

from hfport.read.torch_file import file_sha256

RECORDER = "hfport.verify.record"


def _git_commit(root: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:
        return None


def detect_family(checkpoint: str) -> str:
    return "meter" if checkpoint.endswith(".ckpt") else "ofa"


def _set_suffix(set_name: str) -> str:
    return set_name[len("inputs"):] if set_name.startswith("inputs") else "_" + set_name


def record_ofa(checkpoint: str, ofa_root: str, sets: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
               bpe_dir: Optional[str] = None, beams: List[int] = (1, 3), max_len_b: int = 8,
               min_len: int = 1) -> Dict[str, Any]:
    """The golden dict (OFA format_version 1) of the original OFA on `sets` (default: the probes)."""
    from hfport.verify.backends import fairseq_ofa
    from hfport.verify.probes import ofa_probes

    started = time.time()
    model, task, cfg = fairseq_ofa.load_ofa(checkpoint, ofa_root, bpe_dir)
    params = fairseq_ofa.checkpoint_probe_parameters(checkpoint, model, task, cfg)
    probes_used = sets is None
    if probes_used:
        sets = ofa_probes(**params)
    golden = OrderedDict([("format_version", 1), ("variant", os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))),
                          ("pad_side", "right")])
    generation = OrderedDict()
    for set_name, inputs in sets.items():
        suffix = _set_suffix(set_name)
        golden["inputs" + suffix] = inputs
        golden["outputs" + suffix] = fairseq_ofa.ofa_outputs(model, inputs)
        for beam in beams:
            run_name = ("greedy" if beam == 1 else "beam{}".format(beam)) + suffix
            generation[run_name] = fairseq_ofa.ofa_generate_run(model, task, inputs, beam, max_len_b, min_len)
    generation["note"] = ("tokens exclude the leading decoder-start token (bos) and end with eos unless the length "
                          "limit forced it; recorded by " + RECORDER)
    golden["generation"] = generation
    golden["meta"] = {
        "recorder": RECORDER,
        "variant": golden["variant"],
        "set": "hfport-probes" if probes_used else "given",
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "reference_code": os.path.abspath(ofa_root),
        "ofa_commit": _git_commit(ofa_root),
        "versions": _versions(["fairseq"]),
        "image_size": params["image_size"],
        "dict_size": params["vocab_size"],
        "special_ids": {"bos": params["bos"], "pad": params["pad"], "eos": params["eos"]},
        "torch_num_threads": torch.get_num_threads(),
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, no_grad",
        "seconds": round(time.time() - started, 3),
    }
    return golden


def record_meter(checkpoint: str, meter_root: str, sets: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                 text_config: Optional[str] = None, vit: Optional[str] = None) -> Dict[str, Any]:
    """The golden dict (METER fixture layout) of the original METER on `sets` (default: the probes)."""
    from hfport.verify.backends import meter_live

    return meter_live.record(checkpoint, meter_root, sets, text_config=text_config, vit=vit)


def _versions(modules: List[str]) -> Dict[str, str]:
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name in modules:
        try:
            out[name] = str(getattr(__import__(name), "__version__", "?"))
        except Exception:
            pass
    return out


def record(checkpoint: str, reference_code: str, out: str, family: Optional[str] = None,
           inputs: Optional[str] = None, bpe_dir: Optional[str] = None, text_config: Optional[str] = None,
           vit: Optional[str] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run the original on the probes (or the sets in `inputs`, a torch file {set name: inputs dict}) and write
    the golden file `out`."""
    if threads:
        torch.set_num_threads(threads)
    sets = torch.load(inputs, map_location="cpu", weights_only=True) if inputs else None
    family = family or detect_family(checkpoint)
    if family == "ofa":
        golden = record_ofa(checkpoint, reference_code, sets, bpe_dir=bpe_dir)
    elif family == "fairseq":  # fairseq's own families; reference_code = the task's data folder (dict.*.txt)
        from hfport.verify.backends import fairseq_native

        golden = fairseq_native.record_translation(checkpoint, reference_code)
        golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint),
                              versions=_versions(["fairseq"]), torch_num_threads=torch.get_num_threads())
    elif family == "meter":
        golden = record_meter(checkpoint, reference_code, sets, text_config=text_config, vit=vit)
    else:
        raise ValueError("unknown family {!r}".format(family))
    # only plain containers may be pickled (weights_only readers): versions are str subclasses, configs omegaconf
    golden["meta"] = json.loads(json.dumps(golden.get("meta", {}), default=str))
    if "generation" in golden:
        golden["generation"] = json.loads(json.dumps(golden["generation"], default=str))
    tmp = out + ".partial"
    torch.save(golden, tmp)
    os.replace(tmp, out)
    return golden


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hfport.verify.record", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the original checkpoint (.pt fairseq OFA, .ckpt METER)")
    p.add_argument("--reference-code", required=True, help="the original code checkout (OFA or METER)")
    p.add_argument("--out", required=True, help="golden file to write")
    p.add_argument("--family", choices=["ofa", "meter", "fairseq"],
                   help="default: from the file name (.ckpt = METER); fairseq = fairseq's own families, whose "
                   "--reference-code is the task's data folder (dict.*.txt, probes.txt)")
    p.add_argument("--inputs", help="torch file {set name: inputs dict} to run instead of the built-in probes")
    p.add_argument("--bpe-dir", help="OFA: directory with dict.txt, encoder.json, vocab.bpe")
    p.add_argument("--text-config", help="METER: config.json of the text encoder")
    p.add_argument("--vit", help="METER: the CLIP archive named by the config's 'vit' (default: built from the checkpoint)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from hfport.verify.backends.fairseq_ofa import ReferenceError_
    try:
        golden = record(args.checkpoint, args.reference_code, args.out, args.family, args.inputs, args.bpe_dir,
                        args.text_config, args.vit, args.threads)
    except (ReferenceError_, FileNotFoundError, ValueError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("wrote {} ({} input set(s))".format(args.out, sum(1 for k in golden if str(k).startswith("inputs")) or 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
