"""The fake (meta) kernels of ``bpkernels._ops`` validate their arguments as the real kernels do
(csrc/checks.cpp): every op, with each floating tensor argument in turn given one size too many
in its last dimension, or one dimension too many, fails under FakeTensorMode with the real
kernel's message exactly when the real kernel fails. A dtype mismatch and an empty batch are
refused the same way."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bpkernels import testing

SHAPE = (3, 5, 4)  # B, N, K: all different, so that a swapped size is caught


def _call(op, args):
    return getattr(torch.ops.bpkernels, op)(*args)


def _message(op, args, fake: bool) -> str | None:
    """The first line of the error the call raises, None if it succeeds."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        if fake:
            with FakeTensorMode(allow_non_fake_inputs=False) as mode:
                _call(op, [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        else:
            _call(op, args)
    except RuntimeError as err:
        return str(err).splitlines()[0]
    return None


def _variants(op):
    """Hidden layer with every optional input, and the first layer (hidden's optional inputs absent)."""
    return [testing.build_args(op, SHAPE, seed=0, masked=True),
            testing.build_args(op, SHAPE, seed=0, first=True)]


def _mismatches(args):
    """(description, args) with one floating tensor argument given a wrong shape."""
    for i, a in enumerate(args):
        if not (isinstance(a, torch.Tensor) and a.is_floating_point()):
            continue
        longer = torch.zeros(*a.shape[:-1], a.shape[-1] + 1, dtype=a.dtype)
        extra_dim = a.unsqueeze(0)
        for what, bad in (("last dim + 1", longer), ("extra dim", extra_dim)):
            yield f"arg {i} {what}", [bad if j == i else b for j, b in enumerate(args)]


@pytest.mark.parametrize("op", testing.OPS)
def test_fake_refuses_mismatched_shapes(op):
    refused = 0
    for args in _variants(op):
        for what, bad in _mismatches(args):
            real = _message(op, bad, fake=False)
            assert _message(op, bad, fake=True) == real, what
            refused += real is not None
    assert refused > 0


@pytest.mark.parametrize("op", testing.OPS)
def test_fake_refuses_mixed_dtypes(op):
    args = testing.build_args(op, SHAPE, seed=0)
    floats = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if len(floats) < 2:
        pytest.skip("a single floating input")
    bad = list(args)
    bad[floats[-1]] = bad[floats[-1]].float()
    real = _message(op, bad, fake=False)
    assert real is not None and _message(op, bad, fake=True) == real


@pytest.mark.parametrize("op", [op for op in testing.OPS if "x_hat" in testing.arg_names(op)
                                or "x_in" in testing.arg_names(op)])
def test_fake_refuses_empty_batch(op):
    args = testing.build_args(op, (0, 5, 4), seed=0, first=True)
    real = _message(op, args, fake=False)
    assert real is not None and _message(op, args, fake=True) == real


@pytest.mark.parametrize("op", testing.OPS)
def test_fake_accepts_valid_shapes(op):
    for args in _variants(op):
        with FakeTensorMode() as mode:
            _call(op, [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
