"""The operator registry cannot drift: every schema registered in the ``bpkernels`` namespace
has a CPU kernel, a wrapper (:mod:`bpkernels.ops`, or :mod:`bpkernels.packed_ops` for packed
inference), a twin (:mod:`bpkernels.reference` / :mod:`bpkernels.packed_reference`; not for
the instruction-set query), a fake kernel (``bpkernels._ops``) and, for the message-passing
operators, an input builder (:mod:`bpkernels.testing`), all with the schema's argument names,
and nothing is listed that is not registered."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch._library import simple_registry

from bpkernels import testing

REGISTERED = sorted(name.removeprefix("bpkernels::") for name in torch._C._dispatch_get_all_op_names()
                    if name.startswith("bpkernels::"))


def test_op_list_is_the_registered_schemas():
    assert REGISTERED, "no bpkernels schema is registered"
    assert sorted(testing.TWINS) == REGISTERED
    assert sorted(testing.BUILDERS) == sorted(testing.OPS)


@pytest.mark.parametrize("op", REGISTERED)
def test_every_op_is_complete(op):
    names = testing.arg_names(op)
    assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(f"bpkernels::{op}", "CPU"), "no CPU kernel"
    modules = testing.TWINS[op]
    query = not names  # xnor_cpu_isa: no tensors, so no twin and no fake to trace
    if query:
        modules = modules[:1]
    for module in modules:
        fn = getattr(module, op, None)
        assert fn is not None, f"{module.__name__}.{op} is missing"
        assert list(inspect.signature(fn).parameters) == names, f"{module.__name__}.{op}: argument names"
    fake = simple_registry.singleton.find(f"bpkernels::{op}").fake_impl.kernel
    assert query or fake is not None, "no fake kernel (bpkernels/_ops.py)"
    if op in testing.OPS:
        assert len(testing.build_args(op, (3, 5, 4))) == len(names), "the input builder's arguments"
