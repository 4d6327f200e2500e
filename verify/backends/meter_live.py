"""The live original METER: the user's METER checkout in METER's own legacy environment (transformers 4.6,
pytorch_lightning 1.3, timm, sacred), run on the probes and recorded in the METER fixture layout.

Python >= 3.8, torch + METER's own imports only. The model is built the way METER's `test_only` reload does it
(`METERTransformerSS(config)`, `adapt_position_encoding`, `load_state_dict(strict=False)`), with two things
METER would otherwise fetch from the network replaced by local stand-ins whose weights the checkpoint overwrites:
the text tower's base model (`config['tokenizer']`, rebuilt from `--text-config` when not a local folder), the
CLIP archive (`config['vit']`, rebuilt from the checkpoint's own `vit_model.*` shapes unless `--vit` is given) and
Swin's ImageNet weights (built with `pretrained=False`). These stand-ins are patched into METER's module only while
the model is built.
Because METER loads with `strict=False`, the checkpoint's keys are compared with the model's first: any missing
or unexpected key stops the recording.
"""

import contextlib
import copy
import json
import os
import re
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch

from hfport.read.torch_file import file_sha256
from hfport.verify.backends.fairseq_ofa import ReferenceError_
from hfport.verify.scratch import scratch_dir

IGNORED_KEYS = re.compile(r"^(vit_model\.(token_embedding\.weight|positional_embedding|ln_final\.\w+)|text_transformer\.embeddings\.position_ids|text_transformer\.pooler\..*)$")
# Swin buffers recomputed from the config; METER's swin_adapt_position_encoding drops them from the checkpoint
RECOMPUTED_BUFFERS = re.compile(r"^vit_model\..*\.(attn_mask|relative_position_index)$")
HEAD_RECIPES = (("vqa_classifier", "vqa_logits", "cls"), ("itm_score", "itm_logits", "cls"), ("mlm_score", "mlm_logits", "text"),
                ("snli_classifier", "snli_logits", "cls"), ("rank_output", "rank_scores", "cls"))


class _Placeholder:
    """Stands in for pickled Lightning callback classes (by-name allowlisting)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state


def is_meter_checkpoint(checkpoint: Any) -> bool:
    """A METER Lightning checkpoint: a `state_dict` holding METER's module names. The one test of the family, used
    by the converter on the loaded dict and by the recorder on a peeked one."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    return isinstance(state, dict) and any(
        str(k).startswith(("cross_modal_text_layers.", "vit_model.", "text_transformer.")) for k in state)


def looks_like(checkpoint: str) -> bool:
    """The recorder's family test on a checkpoint file (reads its structure only; runs no pickled code)."""
    from hfport.read.peek import peek_checkpoint

    return is_meter_checkpoint(peek_checkpoint(checkpoint))


def record_golden(checkpoint: str, meter_root: str, sets: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                  options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The recorder's entry point for METER (options: `text_config`, `vit`)."""
    options = options or {}
    return record(checkpoint, meter_root, sets, text_config=options.get("text_config"), vit=options.get("vit"))


def load_checkpoint(path: str) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if not names or not all(n.startswith("pytorch_lightning.") for n in names):
            raise ReferenceError_("cannot read {}: {}".format(path, str(err).splitlines()[0]))
        allow = [(_Placeholder, n) for n in names]
        for _ in range(8):  # one unknown global per attempt
            try:
                with torch.serialization.safe_globals(allow):
                    return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as again:
                more = [n for n in re.findall(r"GLOBAL ([\w.]+)", str(again)) if n.startswith("pytorch_lightning.")]
                if not more:
                    raise ReferenceError_("cannot read {}: {}".format(path, str(again).splitlines()[0]))
                allow += [(_Placeholder, n) for n in more]
        raise ReferenceError_("cannot read {}".format(path))


def _text_base(config: Dict[str, Any], text_config: Optional[str], workdir: str) -> str:
    """A local directory METER's `from_pretrained(config['tokenizer'])` can load (weights are overwritten)."""
    name = config["tokenizer"]
    if os.path.isdir(name):
        return name
    if not text_config:
        raise ReferenceError_("the checkpoint's text encoder {!r} is not a local folder: pass --text-config".format(name))
    is_roberta = "roberta" in name
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel  # METER's pinned transformers

    cfg_class, model_class = (RobertaConfig, RobertaModel) if is_roberta else (BertConfig, BertModel)
    out = os.path.join(workdir, os.path.basename(name.rstrip("/")) or ("roberta" if is_roberta else "bert"))
    if ("roberta" in out) != is_roberta:  # METER picks the class by this substring of the path it is given
        raise ReferenceError_("the temporary folder {} contains 'roberta': set TMPDIR elsewhere".format(out))
    model_class(cfg_class.from_json_file(text_config)).save_pretrained(out)
    return out


def _clip_builder(state_dict: Dict[str, torch.Tensor]):
    """Replaces METER's `build_model(name, resolution_after)` by one that sizes CLIP from the checkpoint."""
    from meter.modules import clip_model

    def build(name, resolution_after=224):
        prefix = "vit_model."
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        blocks = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = sd["ln_final.weight"].shape[0] if "ln_final.weight" in sd else width
        context = sd["positional_embedding"].shape[0] if "positional_embedding" in sd else 77
        vocab = sd["token_embedding.weight"].shape[0] if "token_embedding.weight" in sd else 49408
        # METER's Transformer keeps layers - 1 blocks
        return clip_model.CLIP(text_width, patch * grid, blocks + 1, width, patch, context, vocab, text_width,
                               max(1, text_width // 64), 0, resolution_after)

    return build


class _SwinWithoutDownload:
    """METER's `swin` module, except that its model factories never fetch ImageNet weights (the checkpoint
    overwrites every one of them)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        factory = getattr(self._module, name)
        if not name.startswith("swin_") or not callable(factory):
            return factory

        def build(*args, **kwargs):
            kwargs["pretrained"] = False
            return factory(*args, **kwargs)

        return build


@contextlib.contextmanager
def _patched(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def load_meter(checkpoint: str, meter_root: str, text_config: Optional[str] = None, vit: Optional[str] = None):
    """(model, config, heads) of the original METER, fp32, eval, CPU."""
    root = os.path.abspath(meter_root)
    if not os.path.isfile(os.path.join(root, "meter", "modules", "meter_module.py")):
        raise ReferenceError_("{} does not look like a METER checkout (no meter/modules/meter_module.py)".format(meter_root))
    if root not in sys.path:
        sys.path.insert(0, root)
    from meter.modules import meter_module
    from meter.modules.clip_model import adapt_position_encoding

    ckpt = load_checkpoint(checkpoint)
    state_dict = ckpt["state_dict"]
    config = copy.deepcopy(ckpt["hyper_parameters"]["config"])
    workdir = scratch_dir("hfport-meter-")
    config["tokenizer"] = _text_base(config, text_config, workdir)
    config["load_path"] = ""  # loaded below exactly as METER's test_only path does, after our key check
    config["test_only"] = True
    is_clip = "swin" not in config["vit"]
    if is_clip and vit:
        config["vit"] = vit
    if not is_clip:
        stand_in = _patched(meter_module, "swin", _SwinWithoutDownload(meter_module.swin))
    elif not os.path.isfile(config["vit"]):
        stand_in = _patched(meter_module, "build_model", _clip_builder(state_dict))
    else:
        stand_in = contextlib.nullcontext()
    with stand_in:
        model = meter_module.METERTransformerSS(config)
    if is_clip:
        state_dict = adapt_position_encoding(dict(state_dict), after=config["image_size"], patch_size=config["patch_size"])
    else:
        from meter.modules.swin_helpers import swin_adapt_position_encoding
        state_dict = swin_adapt_position_encoding(dict(state_dict), after=config["image_size"], before=config["resolution_before"])
    model_keys = set(model.state_dict())
    missing = sorted(k for k in model_keys - set(state_dict) if not (IGNORED_KEYS.match(k) or RECOMPUTED_BUFFERS.match(k)))
    unexpected = sorted(k for k in set(state_dict) - model_keys if not IGNORED_KEYS.match(k))
    if missing or unexpected:
        raise ReferenceError_("the checkpoint does not match the METER model its config builds: {} missing ({}), {} "
                              "unexpected ({}); METER's strict=False load would leave them random".format(
                                  len(missing), ", ".join(missing[:6]), len(unexpected), ", ".join(unexpected[:6])))
    model.load_state_dict(state_dict, strict=False)
    heads = [h for h, _, _ in HEAD_RECIPES if hasattr(model, h)] + (["nlvr2_classifier"] if hasattr(model, "nlvr2_classifier") else [])
    return model.float().eval(), config, heads


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def run_pass(model: Any, inputs: Dict[str, torch.Tensor], image_key: str, token_type: int, suffix: str,
             is_clip: bool) -> "OrderedDict[str, Any]":
    """One METER `infer()` with forward hooks; returns its `layers` and `outputs` entries (suffixed)."""
    got = OrderedDict()
    handles = []

    def keep(name, transform=None, index=None):
        def hook(module, args, out):
            value = _first(out)
            value = transform(value) if transform else value
            if index is None:
                got[name] = value.detach().clone()
            else:
                got.setdefault(name, []).append(value.detach().clone())
        return hook

    text = model.text_transformer
    handles.append(text.embeddings.register_forward_hook(keep("text_embeddings")))
    for layer in text.encoder.layer:
        handles.append(layer.register_forward_hook(keep("text_encoder_layers", index=True)))
    vit = model.vit_model
    if is_clip:
        handles.append(vit.visual.ln_pre.register_forward_hook(keep("image_embeddings")))
        for block in vit.visual.transformer.resblocks:
            handles.append(block.register_forward_hook(keep("image_encoder_layers", lambda t: t.transpose(0, 1), True)))
    else:
        handles.append(vit.patch_embed.register_forward_hook(keep("image_embeddings")))
        for stage in vit.layers:
            handles.append(stage.register_forward_hook(keep("image_encoder_layers", index=True)))
    handles.append(vit.register_forward_hook(keep("image_encoder_output")))
    handles.append(model.cross_modal_text_layers[0].register_forward_pre_hook(
        lambda m, args: got.__setitem__("fusion_text_input", args[0].detach().clone())))
    handles.append(model.cross_modal_image_layers[0].register_forward_pre_hook(
        lambda m, args: got.__setitem__("fusion_image_input", args[0].detach().clone())))
    for layer in model.cross_modal_text_layers:
        handles.append(layer.register_forward_hook(keep("fusion_text_layers", index=True)))
    for layer in model.cross_modal_image_layers:
        handles.append(layer.register_forward_hook(keep("fusion_image_layers", index=True)))
    batch = {"text_ids": inputs["text_ids"], "text_masks": inputs["text_masks"],
             "text_labels": torch.full_like(inputs["text_ids"], -100), image_key: [inputs[image_key]]}
    try:
        with torch.no_grad():
            ret = model.infer(batch, image_token_type_idx=token_type)
    finally:
        for h in handles:
            h.remove()
    got["text_encoder_output"] = got["text_encoder_layers"][-1]
    layers = OrderedDict()
    for name in ("text_embeddings", "text_encoder_layers", "text_encoder_output", "image_embeddings",
                 "image_encoder_layers", "image_encoder_output", "fusion_text_input", "fusion_image_input",
                 "fusion_text_layers", "fusion_image_layers"):
        layers[name + suffix] = got[name]
    outputs = OrderedDict((k + suffix, ret[k].detach().clone()) for k in ("text_feats", "image_feats", "cls_feats"))
    with torch.no_grad():
        for head, out_name, source in HEAD_RECIPES:
            if hasattr(model, head):
                feats = ret["text_feats"] if source == "text" else ret["cls_feats"]
                outputs[out_name + suffix] = getattr(model, head)(feats).detach().clone()
    return OrderedDict(layers=layers, outputs=outputs)


def record(checkpoint: str, meter_root: str, sets: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
           text_config: Optional[str] = None, vit: Optional[str] = None) -> Dict[str, Any]:
    """The golden dict (METER fixture layout) of the original METER on `sets` (default: the probes)."""
    from hfport.verify.probes import meter_probes

    started = time.time()
    model, config, heads = load_meter(checkpoint, meter_root, text_config, vit)
    nlvr2 = "nlvr2_classifier" in heads
    is_clip = "swin" not in config["vit"]
    if sets is None:
        text = model.text_transformer.config
        roberta = "roberta" in config["tokenizer"]
        sets = meter_probes(text.vocab_size, config["image_size"], 0 if roberta else 1, 2, text.pad_token_id,
                            min(12, config["max_text_len"]), nlvr2)
    if len(sets) != 1:
        raise ReferenceError_("the METER golden layout holds one input set, got {}".format(list(sets)))
    inputs = next(iter(sets.values()))
    passes = ([{"suffix": "_0", "image_key": "image_0", "image_token_type_idx": 1},
               {"suffix": "_1", "image_key": "image_1", "image_token_type_idx": 2}] if nlvr2
              else [{"suffix": "", "image_key": "image", "image_token_type_idx": 1}])
    layers, outputs = OrderedDict(), OrderedDict()
    for p in passes:
        got = run_pass(model, inputs, p["image_key"], p["image_token_type_idx"], p["suffix"], is_clip)
        layers.update(got["layers"])
        outputs.update(got["outputs"])
    if nlvr2:
        with torch.no_grad():
            outputs["nlvr2_logits"] = model.nlvr2_classifier(torch.cat([outputs["cls_feats_0"], outputs["cls_feats_1"]], -1)).clone()
    versions = {"python": sys.version.split()[0], "torch": str(torch.__version__)}
    for name in ("transformers", "pytorch_lightning", "timm"):
        try:
            versions[name] = str(__import__(name).__version__)
        except Exception:
            pass
    meta = {
        "format_version": 1, "recorder": "hfport.verify.record", "fixture": os.path.basename(checkpoint),
        "passes": passes, "heads": heads, "image_encoder": "clip" if is_clip else "swin",
        "config": json.loads(json.dumps(config, default=str)), "versions": versions,
        "checkpoint_sha256": file_sha256(checkpoint), "reference_code": os.path.abspath(meter_root),
        "image_size": config["image_size"], "seconds": round(time.time() - started, 3),
    }
    return OrderedDict(inputs=dict(inputs), outputs=outputs, layers=layers, meta=meta)


