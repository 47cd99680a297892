"""Fixtures of the bpkernels test suite: the device under test and per-test seeding.

pytest discovers this file; tests import plain helpers from ``helpers.py`` instead.
"""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device the suite can reach: the CPU always, CUDA when a GPU is visible."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch's global generators before every test (tests that build inputs use their own
    CPU ``torch.Generator`` so that every device sees the same data)."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
