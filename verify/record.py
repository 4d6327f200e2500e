"""Record a golden file by running the ORIGINAL model (fairseq + OFA, METER, ...) on the probes.

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
from typing import Any, Dict, List, Optional

import torch

RECORDER = "hfport.verify.record"


def _git_commit(root: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:
        return None


def detect_family(checkpoint: str) -> str:
    """The family of a checkpoint file, from its contents (each family's light recorder test)."""
    from hfport.family import recorder_family

    return recorder_family(checkpoint)


def _set_suffix(set_name: str) -> str:
    return set_name[len("inputs"):] if set_name.startswith("inputs") else "_" + set_name


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
    from hfport.family import recorder_module

    family = family or detect_family(checkpoint)
    options = {"bpe_dir": bpe_dir, "text_config": text_config, "vit": vit}
    golden = recorder_module(family).record_golden(checkpoint, reference_code, sets, options)
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
    p.add_argument("checkpoint", help="the original checkpoint (e.g. .pt fairseq OFA, .ckpt METER)")
    p.add_argument("--reference-code", required=True, help="the original code checkout (OFA or METER)")
    p.add_argument("--out", required=True, help="golden file to write")
    p.add_argument("--family", help="default: detected from the checkpoint's contents")
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
