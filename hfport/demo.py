"""The built-in end-to-end run: a seeded tiny OFA model, written as a real fairseq checkpoint, then
inspected, converted, loaded in a fresh process, verified and prepared for the Hub (dry run).

The checkpoint is produced by running the OFA mapping *backwards* over the seeded model, so the demo also
exercises the inverse direction. Its reference outputs come from the model the checkpoint was written from;
equivalence with the upstream OFA code itself is what the golden fixtures and `hfport verify --against` prove.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from hfport.write.folder import check_output_path

DEMO_ARGS = dict(
    arch="ofa_tiny", encoder_layers=2, decoder_layers=2, encoder_embed_dim=64, decoder_embed_dim=64,
    encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    resnet_type="resnet18", token_bucket_size=256, image_bucket_size=42, attn_scale_factor=2, scale_attn=True,
    scale_fc=True, scale_heads=True, disable_entangle=True, vocab_size=77, code_image_size=128,
)
DEMO_TASK = {"_name": "ofa", "patch_image_size": 64, "code_dict_size": 16, "num_bins": 16, "bpe": None}


def seeded_model(seed: int = 0, **overrides):
    """The demo's tiny OFA (``overrides`` change any OFAConfig field), every parameter moved off its init."""
    from hfport.models.ofa.configuration_ofa import OFAConfig
    from hfport.models.ofa.modeling_ofa import OFAForConditionalGeneration

    torch.manual_seed(seed)
    config = OFAConfig(**{**{k: v for k, v in DEMO_ARGS.items() if k != "arch"}, **overrides})
    return perturb(OFAForConditionalGeneration(config).eval())


def perturb(model):
    """Move every parameter away from its initial value, so that a swapped or mis-split tensor shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
            else:
                param.add_(0.02 * torch.randn_like(param))
    return model


def write_fairseq_checkpoint(model, path: Path) -> Path:
    """Write ``model`` as a fairseq OFA checkpoint (the mapping run backwards, derived buffers rebuilt)."""
    from hfport.converters import ofa
    from hfport.mappings.engine import Mapping

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mapping = Mapping.load(ofa.MAPPING)
    plan = mapping.plan({k: tuple(v.shape) for k, v in state.items()}, None, ofa.tie_flags(model.config),
                        direction="backward", regenerators=ofa.REGENERATED)
    fairseq_state = dict(Mapping.run(plan, state.__getitem__, "demo", ofa.regenerator(model.config)))
    provenance = {"hyper_parameters": {"model": {**DEMO_ARGS, "_name": "ofa_tiny"}, "task": DEMO_TASK}}
    checkpoint = ofa.original_checkpoint(model.config, fairseq_state, provenance)
    assert isinstance(checkpoint["cfg"]["model"], argparse.Namespace)
    torch.save(checkpoint, path)
    return path


def record_golden(model, folder: Path, path: Path) -> Path:
    """Reference outputs of the source model on the harness's own probes, in the golden-file format."""
    from hfport.verify import probes
    from hfport.verify.backends.hf_ofa import hf_generate

    sets = probes.folder_probes(str(folder))
    golden = {"format_version": 1, "variant": "hfport-demo", "pad_side": "right",
              "meta": {"summary": "hfport demo: outputs of the seeded source model"}, "generation": {}}
    for set_name, inputs in sets.items():
        suffix = set_name[len("inputs"):]
        with torch.no_grad():
            out = model(input_ids=inputs["src_tokens"], patch_images=inputs["patch_images"],
                        patch_masks=inputs["patch_masks"], decoder_input_ids=inputs["prev_output_tokens"],
                        output_hidden_states=True, return_dict=True)
        golden[set_name] = inputs
        golden["outputs" + suffix] = {
            "logits": out.logits, "encoder_out": out.encoder_last_hidden_state,
            "encoder_padding_mask": out.encoder_padding_mask.bool(),
            "encoder_hidden_states": list(out.encoder_hidden_states),
            "encoder_position_embeddings": out.encoder_position_embeddings,
            "decoder_inner_states": list(out.decoder_hidden_states),
            "decoder_features": out.decoder_last_hidden_state,
        }
        settings = {"beam_size": 1, "max_len_a": 0, "max_len_b": 8, "min_len": 1}
        tokens = hf_generate(model, inputs, num_beams=1, max_len_b=8, min_len=1)
        golden["generation"]["greedy" + suffix] = {"settings": settings, "tokens": tokens}
    torch.save(golden, path)
    return path


def run_demo(workdir: Path, force: bool = False, say: Callable[[str], None] = print) -> dict:
    from hfport.commands.inspect import summarise
    from hfport.converters import convert_checkpoint

    workdir = Path(workdir)
    check_output_path(workdir, force)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, folder, golden = workdir / "ofa-tiny-demo.pt", workdir / "ofa-tiny-demo-hf", workdir / "golden.pt"

    model = seeded_model()
    write_fairseq_checkpoint(model, checkpoint)
    say(f"[1/5] wrote a seeded tiny OFA model as a fairseq checkpoint: {checkpoint} "
        f"({checkpoint.stat().st_size / 2**20:.1f} MiB)")
    facts = summarise(checkpoint)
    say(f"[2/5] inspect: {facts['family']}, arch {facts['arch']}, {facts['tensors']} tensors, "
        f"{facts['parameters']:,} parameters, {facts['structure']['encoder_layers']}+"
        f"{facts['structure']['decoder_layers']} layers, d={facts['structure']['encoder_embed_dim']}")
    convert_checkpoint(checkpoint, folder, force=True)
    say(f"[3/5] converted to {folder} (" + ", ".join(sorted(p.name for p in folder.iterdir())) + ")")
    record_golden(model, folder, golden)
    # verification loads the folder through transformers' Auto classes in a fresh process
    report_path = workdir / "verification.json"
    result = subprocess.run([sys.executable, "-m", "hfport.cli", "verify", str(folder), "--golden", str(golden),
                             "--report", str(report_path), "--json"], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "verify failed")
    report = json.loads(report_path.read_text())
    worst = max(o["max_abs"] for o in report["outputs"] if o.get("max_abs") is not None)
    exact = all(g["exact"] for g in report["generation"])
    say(f"[4/5] verified in a fresh process: {len(report['outputs'])} outputs compared, worst max abs diff "
        f"{worst:.2e}, greedy generation {'identical' if exact else 'DIFFERENT'} -> "
        f"{'PASS' if report['passed'] else 'FAIL'}")
    (folder / "verification.json").write_text(report_path.read_text())
    card = workdir / "model_card.md"
    dry = subprocess.run([sys.executable, "-m", "hfport.cli", "push", str(folder), "demo-user/ofa-tiny-demo",
                          "--dry-run", "--save-card", str(card)], capture_output=True, text=True)
    listing = (dry.stdout.split("--- README.md ---")[0].strip() or dry.stderr.strip())
    say(f"[5/5] hfport push --dry-run (model card saved to {card}):\n{listing}")
    return {"checkpoint": checkpoint, "folder": folder, "report": report, "push_dry_run": dry.returncode}
