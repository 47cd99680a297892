"""A small seeded run of the op fuzz (python_tests/fuzz_ops.py; the published figures are
``benchmarks/robustness.py fuzz``): every operator, float32 and float64, ~1e4 extreme but finite
scalar inputs on small layers. No output may be non-finite where the float64 reference is
finite, and the worst errors stay within the budgets below."""

import pytest
import torch

import fuzz_ops

# Worst error against the float64 twin, per dtype (fuzz_ops.ERROR_KIND says how it is measured).
# float32 bp_output: c = ln((1 − |t|)/|t|) ≈ −2|b| for |b| up to 1e4 is rounded to ~1e-3
# absolute, which E = exp(x² + c) turns into that relative error wherever E matters; the
# float64 twin sees the float32 inputs but not this rounding.
BUDGET = {torch.float32: 1e-4, torch.float64: 1e-11}
BUDGET_OUTPUT = {torch.float32: 5e-3, torch.float64: 1e-11}
MPMATH_BUDGET = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(scope="module")
def results():
    return fuzz_ops.run_fuzz_results(10_000, seed=1, shape=(6, 10, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fuzz_small(results, dtype):
    name = str(dtype).replace("torch.", "")
    rows = [r for r in results if r["dtype"] == name]
    assert {r["op"] for r in rows} == set(fuzz_ops.testing.OPS)
    for r in rows:
        assert r["nonfinite"] == 0, r
        budget = (BUDGET_OUTPUT if r["op"] == "bp_output" else BUDGET)[dtype]
        assert r["err"] <= budget, r
        if r["mp_err"] is not None:
            assert r["mp_err"] <= MPMATH_BUDGET[dtype], r
    assert sum(r["inputs"] for r in rows) >= 5_000


def test_fuzz_section_renders():
    text = fuzz_ops.run_fuzz(600, seed=2)
    assert text.startswith("## Op fuzz")
    rows = [line for line in text.splitlines() if line.startswith(("| bp_", "| gauss_"))]
    assert len(rows) == 2 * len(fuzz_ops.testing.OPS), "one row per op and dtype"
