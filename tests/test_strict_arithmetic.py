"""The arithmetic the enclosures' rounding bounds assume, whatever the caller's settings or threads.

Every bound here rests on IEEE float64 (and float32 for helper products) with gradual underflow.
Two ways a caller's process broke that without the walks noticing, each found by test:
``torch.autocast`` (float32 helper products ran in bfloat16), and subnormals flushed to zero in
torch's intra-op threads (a per-thread setting, which those threads keep from when they started,
so that turning it off in the caller's thread left them flushing)."""

import os
import subprocess
import sys
import textwrap

import torch
from torch import nn

import mli_theory as mt
from mli_theory.certify import enclosures as E
from mli_theory.certify.partition import enclose_cells, prepare
from mli_theory.path import BNPolicy

D = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_callers_autocast_is_off_inside_and_back_after():
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(64, 512, dtype=D, generator=g), torch.rand(512, 256, dtype=D, generator=g)
    with torch.autocast("cpu"):
        assert (x.float() @ w.float()).dtype == torch.bfloat16  # what the helper products would meet
        with E.strict_arithmetic(torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")
            bound = E.upper_matmul(x, w)
        assert torch.is_autocast_enabled("cpu")
    # an upper bound of the exact product (the float64 product is within 10⁻¹³ of it here; bfloat16
    # products fell short by up to 0.5 in half of the entries)
    assert bool((bound >= x @ w).all())


def _small_mlp_problem():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))  # float32 helper products (K ≥ 64)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    end = {k: v + 0.3 * torch.randn_like(v) for k, v in start.items()}
    x = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    return mt.make_line(model, start, end, dtype=D), mt.Dataset(x, y, "ce", "t")


def test_enclosures_under_the_callers_autocast_are_the_enclosures_without_it():
    line, data = _small_mlp_problem()
    prob = prepare(line, data, BNPolicy.FROZEN)
    a, b = [0.0, 0.3, 0.7], [0.3, 0.7, 1.0]
    with E.strict_arithmetic(torch.device("cpu")):
        plain = enclose_cells(prob, a, b)
    with torch.autocast("cpu"), E.strict_arithmetic(torch.device("cpu")):
        under = enclose_cells(prob, a, b)
    assert under == plain


_POOL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import torch
    torch.set_flush_denormal(True)  # before torch's intra-op threads start: they keep it
    torch.set_num_threads(2)
    x = torch.full((1 << 20,), 2.0**-1060, dtype=torch.float64)
    (x * 1.0).sum()
    torch.set_flush_denormal(False)  # this thread only
    from mli_theory.certify import enclosures as E
    assert not E._flushes_denormals()
    assert E._pool_flushes(2), "the pool was expected to flush"
    assert bool(((x * 1.0) == 0).any()), "the pool was expected to flush"
    with E.strict_arithmetic(torch.device("cpu")):
        assert torch.get_num_threads() == 1
        assert not bool(((x * 0.5) == 0).any())  # every product exact: 2^-1061
        assert not bool(((x.reshape(1024, 1024) @ torch.full((1024, 4), 2.0**-10, dtype=torch.float64)) == 0).any())
    assert torch.get_num_threads() == 2
    print("ok")
    """
)


def test_intra_op_threads_that_flush_subnormals_are_not_used():
    """Subnormals flushed in torch's pool threads, which the caller's thread cannot switch off there:
    the walks run in the caller's thread alone, with gradual underflow, and the thread count is back after."""
    out = subprocess.run([sys.executable, "-c", _POOL_SCRIPT.format(root=ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_pool_that_keeps_gradual_underflow_is_used(two_cpu_threads):
    assert not E._pool_flushes(2)
    with E.strict_arithmetic(torch.device("cpu")):
        assert torch.get_num_threads() == 2
