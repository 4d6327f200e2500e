"""The NaN/inf check every converted tensor goes through: exact counts on every float dtype, views included."""

from __future__ import annotations

import pytest
import torch

from hfport.converters.pipeline import _nonfinite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_tensors_pass_and_nan_and_inf_are_counted_on_every_float_dtype(dtype):
    tensor = torch.linspace(-3, 3, 60, dtype=dtype).reshape(6, 10)
    assert _nonfinite(tensor) is None
    tensor[1, 2] = float("nan")
    tensor[4, 7] = float("inf")
    tensor[5, 9] = float("-inf")
    assert _nonfinite(tensor) == (1, 2)


def test_only_nan_or_only_negative_inf_is_found():
    assert _nonfinite(torch.tensor([1.0, float("nan"), 2.0])) == (1, 0)
    assert _nonfinite(torch.tensor([float("-inf"), 0.0])) == (0, 1)


def test_a_strided_view_is_checked_over_its_own_elements_only():
    base = torch.zeros(4, 4)
    base[0, 1] = float("nan")  # outside the view below
    assert _nonfinite(base[:, ::2]) is None
    assert _nonfinite(base.t()[1:2]) == (1, 0)


def test_empty_and_integer_tensors_need_no_check():
    assert _nonfinite(torch.empty(0, 3)) is None
    assert _nonfinite(torch.arange(5)) is None
