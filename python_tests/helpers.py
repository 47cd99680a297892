"""Plain helpers imported by the tests: tolerances per dtype, a diff-printing closeness
assert, the flash-attention-style float32 error budget, seeded input generation, and the real
Fashion-MNIST or a skip."""

from __future__ import annotations

import os

import pytest
import torch

from bpkernels import data

F32, F64 = torch.float32, torch.float64

# Kernel against the float64 twin on the same inputs: different summation orders only.
TOL = {
    F64: dict(rtol=1e-10, atol=1e-12),
    F32: dict(rtol=1e-5, atol=1e-6),
}

# Absolute slack of the float32 error budget, relative to the largest |ref64| of the tensor:
# covers a few float32 roundings where the float32 twin happens to be exact.
BUDGET_SLACK = 8 * torch.finfo(F32).eps


def tol(dtype: torch.dtype) -> dict:
    return TOL[dtype]


def _describe(actual: torch.Tensor, expected: torch.Tensor) -> str:
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    diff = (a - e).abs()
    finite = torch.isfinite(diff)
    if not finite.all():
        bad = (~finite).nonzero()[0].tolist()
        return f"non-finite difference at {bad}: actual {a[tuple(bad)].item()!r}, expected {e[tuple(bad)].item()!r}"
    idx = tuple(torch.unravel_index(diff.argmax(), diff.shape)) if diff.numel() else ()
    rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return (
        f"max |diff| {diff.max().item():.3e} at {[int(i) for i in idx]} "
        f"(actual {a[idx].item()!r}, expected {e[idx].item()!r}); "
        f"mean |diff| {diff.mean().item():.3e}; max rel {rel.max().item():.3e}"
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float,
                 name: str = "", equal_nan: bool = False) -> None:
    """``torch.testing.assert_close`` (shape, dtype, device included) that prints the largest
    and mean differences, and where, only when it fails."""
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan)
    except AssertionError as err:
        if actual.shape != expected.shape:
            raise
        raise AssertionError(f"{name}: {_describe(actual, expected)}\n{err}") from None


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, *, name: str = "") -> None:
    """Bitwise equality (NaNs equal), with the diff printed on failure."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    if not bool(same.all()):
        idx = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: not bitwise equal at {int((~same).sum())} of {same.numel()} entries, first at "
            f"{idx}: {actual[tuple(idx)].item()!r} != {expected[tuple(idx)].item()!r}; "
            f"{_describe(actual, expected)}")


def assert_finite(t: torch.Tensor, name: str = "") -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{name}: {int(bad.sum())} non-finite values, first at {idx}: {t[tuple(idx)].item()!r}")


def assert_error_budget(kernel: torch.Tensor, ref_lo: torch.Tensor, ref_hi: torch.Tensor, *,
                        factor: float = 2.0, atol: float | torch.Tensor | None = None,
                        name: str = "") -> None:
    """Flash-attention's low-precision check: the kernel in low precision may be at most
    ``factor`` times as far from the float64 reference as the twin run in the same low
    precision is, plus a small absolute slack:

        |kernel32 − ref64| ≤ factor · max |ref32 − ref64| + atol      (every element),

    ``atol`` defaulting to a few float32 ulps of the tensor's largest |ref64|. An element-wise
    ``atol`` (a tensor) states the rounding scale of an ill-conditioned formula."""
    hi = ref_hi.detach().cpu().double()
    k = kernel.detach().cpu().double()
    lo = ref_lo.detach().cpu().double()
    assert k.shape == hi.shape == lo.shape, f"{name}: shapes {k.shape}, {lo.shape}, {hi.shape}"
    assert_finite(k, name)
    if not k.numel():
        return
    if atol is None:
        atol = BUDGET_SLACK * hi.abs().max().item() + 1e-30
    atol = torch.as_tensor(atol, dtype=torch.float64).cpu()
    err_kernel = (k - hi).abs()
    err_twin = (lo - hi).abs().max().item()
    excess = err_kernel - (factor * err_twin + atol)
    if bool((excess > 0).any()):
        idx = tuple(torch.unravel_index(excess.argmax(), excess.shape))
        raise AssertionError(
            f"{name}: float32 kernel error {err_kernel[idx].item():.3e} at {[int(i) for i in idx]} exceeds "
            f"{factor} × twin error {err_twin:.3e} + {atol.expand_as(k)[idx].item():.1e}; "
            f"kernel vs float64 twin: {_describe(k, hi)}"
        )


def generator(seed: int) -> torch.Generator:
    """A CPU generator: inputs are drawn on the CPU and then moved, so every device sees
    identical data."""
    return torch.Generator().manual_seed(seed)


def use_twin_ops(monkeypatch) -> None:
    """Makes the layers and algorithms run on the pure-PyTorch twin (same signatures as the
    ops), so that whole networks can be compared against the kernels."""
    from bpkernels import algorithms, conv, layers, reference

    for module in (algorithms, layers, conv):
        monkeypatch.setattr(module, "ops", reference)


def fashion_mnist_or_skip(**kwargs) -> data.Dataset:
    """``data.load_fashion_mnist(**kwargs)``, or skip the test where the dataset is not
    installed, except in CI, which installs dataset-fashion-mnist: there it is a failure."""
    try:
        return data.load_fashion_mnist(**kwargs)
    except data.DatasetNotFoundError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
