"""Shared fixtures: devices, hypothesis profiles, small helpers."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("fast", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
# many more examples, for a soundness run by hand: HYPOTHESIS_PROFILE=stress pytest tests/test_exact.py
settings.register_profile("stress", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "fast"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every available device (CUDA tests are skipped where there is none)."""
    return request.param


@contextlib.contextmanager
def torch_threads(n: int):
    """``n`` torch intra-op threads for the duration, the previous count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One intra-op thread while a module's tests run: train-mode BatchNorm on a handful of examples
    costs ~6-25 ms per call with two threads on a loaded machine against ~0.02 ms with one (results equal)."""
    with torch_threads(1):
        yield


@pytest.fixture
def two_cpu_threads():
    """Two intra-op threads while a test runs (a thread pool to probe)."""
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def experiments():
    """``import_module`` with ``experiments/`` on sys.path while a module's tests run (the research
    scripts import each other by name)."""
    import importlib

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    sys.path.insert(0, path)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(path)
