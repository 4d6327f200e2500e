"""Per-tensor comparison statistics (Polygraphy-style): how far a converted output is from the reference.

Every statistic is computed in float64 over the *selected* elements only (a boolean mask over the leading
[batch, position] dimensions picks the non-padded positions); `worst_index` is an index into the full tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LOGIT_SUFFIXES = ("logits", "scores")


def expand_mask(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Broadcast a [B, T] position mask to a tensor of `shape` ([B, T, ...]); None selects everything."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = mask.to(torch.bool)
    if tuple(mask.shape) != tuple(shape[: mask.dim()]):
        raise ValueError(f"mask of shape {list(mask.shape)} does not fit a tensor of shape {list(shape)}")
    return mask.reshape(tuple(mask.shape) + (1,) * (len(shape) - mask.dim())).expand(shape)


def _is_logits(name: str) -> bool:
    base = name.split(".")[0].rstrip("_0123456789")
    return base.endswith(LOGIT_SUFFIXES)


def _topk_agreement(ref: torch.Tensor, got: torch.Tensor, rows: torch.Tensor) -> tuple[float | None, float | None]:
    """Argmax agreement and mean top-5 overlap over the last dimension, on the selected rows."""
    if ref.dim() < 2 or ref.shape[-1] < 2:
        return None, None
    ref2 = ref.reshape(-1, ref.shape[-1])[rows.reshape(-1)]
    got2 = got.reshape(-1, got.shape[-1])[rows.reshape(-1)]
    if ref2.shape[0] == 0:
        return None, None
    argmax = (ref2.argmax(-1) == got2.argmax(-1)).double().mean().item()
    k = min(5, ref.shape[-1])
    top_ref = ref2.topk(k, dim=-1).indices
    top_got = got2.topk(k, dim=-1).indices
    overlap = (top_ref.unsqueeze(-1) == top_got.unsqueeze(-2)).any(-1).double().sum(-1) / k
    return argmax, overlap.mean().item()


def _finite(x: float) -> float | None:
    """JSON has no inf/nan: keep them as None (the `passed` flag tells the story)."""
    return x if math.isfinite(x) else None


def missing_from_trace(name: str, set_name: str, ref: torch.Tensor, atol: float) -> dict[str, Any]:
    """The failed result of a reference entry the converted model's trace does not have."""
    return {"name": name, "set": set_name, "shape": list(ref.shape), "atol": atol, "passed": False,
            "error": "missing from the converted model's trace"}


def compare_exact(name: str, set_name: str, ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """Boolean / integer tensors (e.g. `encoder_padding_mask`): every element must be equal."""
    result: dict[str, Any] = {"name": name, "set": set_name, "shape": list(ref.shape), "exact": True}
    if tuple(ref.shape) != tuple(got.shape):
        return {**result, "passed": False, "error": f"shape {list(got.shape)} != reference {list(ref.shape)}"}
    differ = ref != got.to(ref.dtype)
    n = int(differ.sum())
    worst = [int(i) for i in differ.nonzero()[0]] if n else None
    return {**result, "mismatches": n, "max_abs": float(n > 0), "worst_index": worst, "passed": n == 0}


def compare_tensors(
    name: str,
    set_name: str,
    ref: torch.Tensor,
    got: torch.Tensor,
    atol: float,
    rtol: float = 0.0,
    mask: torch.Tensor | None = None,
    scale_rtol: float = 0.0,
) -> dict[str, Any]:
    """Statistics of `got` against `ref` over the elements `mask` selects.

    Passes when every |d| <= atol + rtol*|ref| + scale_rtol*max|ref|: the last term is fp32's own noise floor,
    which grows with the magnitude a deep stack reaches (it is what fp32 vs fp64 of the same model differ by).
    """
    result: dict[str, Any] = {"name": name, "set": set_name, "shape": list(ref.shape)}
    if ref.dtype == torch.bool or not (ref.is_floating_point() or ref.is_complex()):
        return compare_exact(name, set_name, ref, got)
    if tuple(ref.shape) != tuple(got.shape):
        return {**result, "atol": atol, "passed": False,
                "error": f"shape {list(got.shape)} != reference {list(ref.shape)}"}
    ref64 = ref.detach().to(torch.float64).cpu()
    got64 = got.detach().to(torch.float64).cpu()
    select = expand_mask(mask, ref64.shape)
    n = int(select.sum())
    if mask is not None:
        result["compared_elements"] = n
        result["total_elements"] = ref64.numel()
    if n == 0:
        return {**result, "atol": atol, "passed": True, "max_abs": 0.0, "mean_abs": 0.0, "note": "no positions selected"}

    diff = (got64 - ref64).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    diff_sel = torch.where(select, diff, torch.zeros_like(diff))
    flat_worst = int(diff_sel.reshape(-1).argmax())
    worst_index = [int(i) for i in torch.unravel_index(torch.tensor(flat_worst), ref64.shape)]
    max_abs = float(diff_sel.reshape(-1)[flat_worst])
    mean_abs = float(diff[select].mean())
    rel = diff[select] / ref64.abs()[select].clamp_min(1e-30)
    max_rel = float(rel.max())
    # smallest atol that passes given rtol: max over elements of |d| - rtol*|ref|
    headroom = scale_rtol * float(ref64.abs()[select].max())
    needed = (diff[select] - rtol * ref64.abs()[select] - headroom).clamp_min(0.0)
    min_atol = float(needed.max())

    a, b = ref64[select], got64[select]
    denom = float(a.norm() * b.norm())
    cosine = float((a * b).sum()) / denom if denom > 0 else (1.0 if float(a.norm()) == float(b.norm()) else 0.0)
    cosine = 1.0 if torch.equal(a, b) else max(-1.0, min(1.0, cosine))  # fp64 rounding lands a hair off 1

    argmax_agree = top5 = None
    if _is_logits(name):
        rows = select.reshape(-1, ref64.shape[-1])[:, 0] if ref64.dim() >= 2 else select
        argmax_agree, top5 = _topk_agreement(ref64, got64, rows)

    result.update(
        max_abs=_finite(max_abs),
        mean_abs=_finite(mean_abs),
        max_rel=_finite(max_rel),
        cosine=_finite(cosine),
        argmax_agree=argmax_agree,
        top5_overlap=top5,
        min_atol_to_pass=_finite(min_atol),
        worst_index=worst_index,
        worst_values={"reference": _finite(float(ref64.reshape(-1)[flat_worst])), "converted": _finite(float(got64.reshape(-1)[flat_worst]))},
        atol=atol,
        rtol=rtol,
        scale_rtol=scale_rtol,
        passed=bool(math.isfinite(min_atol) and min_atol <= atol),
    )
    return result
