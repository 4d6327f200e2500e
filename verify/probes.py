"""Deterministic synthetic inputs ("probes") in the golden files' input layout.

This module also runs inside the original models' legacy environments (the recorder), so it needs only torch
and keeps to Python 3.8 syntax.
"""

from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch

PROBE_SEED = 1234


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _random_ids(g: torch.Generator, n: int, low: int, high: int, avoid: List[int]) -> List[int]:
    ids = []
    while len(ids) < n:
        i = int(torch.randint(low, high, (1,), generator=g))
        if i not in avoid:
            ids.append(i)
    return ids


def _pad_batch(rows: List[List[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def ofa_probes(
    vocab_size: int,
    image_size: int,
    bos: int = 0,
    pad: int = 1,
    eos: int = 2,
    seed: int = PROBE_SEED,
    text_vocab_size: Optional[int] = None,
) -> "OrderedDict[str, Dict[str, torch.Tensor]]":
    """Two OFA input sets of batch 2 with right padding: `inputs` (both samples with an image) and
    `inputs_masked` (sample 1 text-only through `patch_masks`). Token ids come from the text part of the
    vocabulary (ids 4 .. text_vocab_size-1; OFA puts <mask>, <code_*>, <bin_*> after the BPE symbols)."""
    g = _generator(seed)
    high = min(text_vocab_size or vocab_size, vocab_size)
    avoid = [bos, pad, eos]
    src = [[bos] + _random_ids(g, 6, 4, high, avoid) + [eos], [bos] + _random_ids(g, 3, 4, high, avoid) + [eos]]
    tgt = [[bos] + _random_ids(g, 5, 4, high, avoid), [bos] + _random_ids(g, 2, 4, high, avoid)]
    src_tokens = _pad_batch(src, pad)
    images = torch.rand((2, 3, image_size, image_size), generator=g) * 2 - 1
    base = {
        "src_tokens": src_tokens,
        "src_lengths": (src_tokens != pad).sum(-1),
        "patch_images": images,
        "patch_masks": torch.tensor([True, True]),
        "prev_output_tokens": _pad_batch(tgt, pad),
    }
    masked = dict(base, patch_masks=torch.tensor([True, False]))
    return OrderedDict([("inputs", base), ("inputs_masked", masked)])


def ofa_inputs_from_tokens(
    src: List[int], image: Optional[torch.Tensor], image_size: int, bos: int = 0, pad: int = 1, eos: int = 2,
    seed: int = PROBE_SEED,
) -> "OrderedDict[str, Dict[str, torch.Tensor]]":
    """One user sample (token ids, optional preprocessed image [3, H, W]) as an OFA input set of batch 1. The
    decoder is teacher-forced with `<s>` + the source text (there is no target), which exercises every layer."""
    body = [t for t in src if t not in (bos, eos, pad)]
    src_ids = [bos] + body + [eos]
    if image is None:
        image = torch.rand((3, image_size, image_size), generator=_generator(seed)) * 2 - 1
        mask = False
    else:
        mask = True
    inputs = {
        "src_tokens": torch.tensor([src_ids], dtype=torch.long),
        "src_lengths": torch.tensor([len(src_ids)], dtype=torch.long),
        "patch_images": image.unsqueeze(0).float(),
        "patch_masks": torch.tensor([mask]),
        "prev_output_tokens": torch.tensor([[bos] + body[:16]], dtype=torch.long),
    }
    return OrderedDict([("inputs", inputs)])


def meter_probes(
    vocab_size: int,
    image_size: int,
    cls: int,
    sep: int,
    pad: int,
    text_len: int = 12,
    nlvr2: bool = False,
    seed: int = PROBE_SEED,
) -> "OrderedDict[str, Dict[str, torch.Tensor]]":
    """One METER input set of batch 2: sample 0 ends in 3 pad tokens, sample 1 fills the length; images are
    standard-normal pixels (already preprocessed); NLVR2 gets an `image_0`/`image_1` pair."""
    g = _generator(seed)
    avoid = [cls, sep, pad]
    low = 3 if vocab_size > 3 + len(avoid) else 0
    rows = [
        [cls] + _random_ids(g, text_len - 5, low, vocab_size, avoid) + [sep],
        [cls] + _random_ids(g, text_len - 2, low, vocab_size, avoid) + [sep],
    ]
    text_ids = _pad_batch(rows, pad)
    inputs = OrderedDict([("text_ids", text_ids), ("text_masks", (text_ids != pad).long())])
    if nlvr2:
        inputs["image_0"] = torch.randn((2, 3, image_size, image_size), generator=g)
        inputs["image_1"] = torch.randn((2, 3, image_size, image_size), generator=g)
    else:
        inputs["image"] = torch.randn((2, 3, image_size, image_size), generator=g)
    return OrderedDict([("inputs", dict(inputs))])


def parse_tokens(text: str) -> List[int]:
    """'0, 12 23 2' -> [0, 12, 23, 2]."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError("--tokens takes integer token ids separated by commas or spaces, got {!r}".format(text))


# ---- shaping probes for a converted folder (harness side; the families hold the details) ----

def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def folder_probes(folder: str, seed: int = PROBE_SEED) -> "OrderedDict[str, Dict[str, torch.Tensor]]":
    """Probes shaped for the converted model in `folder`, by its family (from config.json + hfport.json, processor)."""
    from hfport.family import ConvertedFolder

    converted = ConvertedFolder.open(folder, require_provenance=False)
    return converted.family.probes(converted, seed)
