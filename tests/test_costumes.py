"""Regression tests: models in costume (``tests/costumes.py``) never get a false certificate.

Each costume's TRUE measured curve rises by far more than its tolerance; this is verified here by an
independent float64 dense grid (plain ``functional_call`` code, no mli_theory), and for deterministic
costumes the reference is first checked against the curve ``check`` itself measured. Then
``check(..., certify=True)`` must not answer "monotone"; "non_monotone" is accepted only with a witness
[a, b] that the independent evaluation reproduces (L(b) − L(a) > tol); "unknown" is always sound.

Written against the public API only (``mli_theory.check``, the CLI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import costumes as C
from mli_theory import Dataset, check

F64 = torch.float64
BUDGET = 5.0  # seconds of proof work per check
ALPHAS = 50
DENSE = 2001
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def run_check(c: C.Costume, **kw):
    return check(
        c.model, c.init, c.final, c.data, alphas=ALPHAS, tol=c.tol, certify=True, dtype=F64, bn=c.bn,
        geometry=False, certify_budget=c.budget or BUDGET, **kw,
    )


def describe(cert) -> str:
    d = cert if isinstance(cert, dict) else cert.__dict__
    return (
        f"{d.get('status')} ({d.get('method')}): rise={d.get('rise')} where={d.get('where')} "
        f"rise_bound={d.get('rise_bound')} reason={d.get('reason')!r}"
    )


def assert_measured_curve_is_the_reference(c: C.Costume, alphas, losses) -> None:
    """The curve ``check`` measured is the documented one (so the dense reference below is about it)."""
    ref = C.reference_curve(c.model, c.init, c.final, c.data, alphas, c.bn, c.frozen_buffers)
    scale = max(1.0, max(abs(v) for v in ref))
    diff = max(abs(a - b) for a, b in zip(ref, losses))
    assert diff <= 1e-9 * scale, (
        f"{c.name}: check's measured curve differs from the plain reference evaluation by {diff:.3g} "
        f"(reference {ref[:4]}…, measured {list(losses[:4])}…)"
    )


def witness_rise(c: C.Costume, a: float, b: float) -> float:
    """The largest rise L(b) − L(a) the independent evaluation can reproduce for the witness [a, b]."""
    if c.kind == "deterministic":
        return c.loss(b) - c.loss(a)
    if c.kind == "random":  # a random curve: the witness counts if some draw of the masks shows it
        best = -np.inf
        for seed in range(8):
            torch.manual_seed(seed)
            la = c.loss(a)
            lb = c.loss(b)
            best = max(best, lb - la)
        return best
    # stateful: within the regime after the switch, or across the switch (before → after)
    return max(
        C.regime_loss(c, b, True) - C.regime_loss(c, a, True),
        C.regime_loss(c, b, True) - C.regime_loss(c, a, False),
    )


def assert_sound(c: C.Costume, status: str, cert_where, cert_text: str, truth: C.DenseRise) -> None:
    assert truth.rise > 10 * c.tol, f"costume {c.name} is broken: its true rise {truth.rise} is not above tol"
    assert status != "monotone", (
        f"FALSE CERTIFICATE on {c.name} ({c.note}): {cert_text}; the independent dense evaluation "
        f"({truth.points} points) rises by {truth.rise:.6g} on {truth.where}"
    )
    assert status in ("non_monotone", "unknown"), status
    if status == "non_monotone":
        a, b = cert_where
        assert 0.0 <= a < b <= 1.0, cert_where
        r = witness_rise(c, a, b)
        assert r > c.tol - 1e-10 * max(1.0, truth.scale), (
            f"{c.name}: witness {cert_where} not reproduced: independent L(b) − L(a) = {r:.6g} ≤ tol {c.tol}; {cert_text}"
        )


def _dense(c: C.Costume) -> C.DenseRise:
    if c.kind == "random":
        torch.manual_seed(0)
    return C.dense_max_rise(c.loss, n=DENSE)


def _verify(c: C.Costume) -> None:
    try:
        res = run_check(c)
    except Exception as exc:  # every costume is a valid input: an answer (a loss curve) is due
        pytest.fail(f"check raised on {c.name} ({c.note}): {type(exc).__name__}: {str(exc)[:300]}")
    assert len(res.losses) == ALPHAS and all(np.isfinite(res.losses))
    if c.kind == "deterministic":
        assert_measured_curve_is_the_reference(c, res.alphas, res.losses)
    else:  # the measured curve itself rises (a random or call-dependent curve)
        assert C.max_rise(res.losses)[0] > c.tol, f"{c.name}: the measured grid shows no rise"
    fresh = C.CATALOGUE[c.name]() if c.name in C.CATALOGUE else c  # stateful: a counter not yet advanced
    truth = _dense(fresh)
    assert_sound(c, res.certificate.status, res.certificate.where, describe(res.certificate), truth)


# a, b, c, d, f, g --------------------------------------------------------------------------------

# the CLI (f) and process-wide patches (e) are below; everything else is one check each
API_CASES = [
    "buffer_scale_bn_recompute",
    "buffer_scale_bn_interpolate",
    "buffer_scale_frozen",
    "buffer_scale_interpolate",
    "buffer_scale_recompute",
    "train_branch_bn",
    "dropout_functional_bn",
    "dropout_module_bn",
    "batch_centring",
    "chunked_centring",
    "reparam_legacy_weight_norm",
    "reparam_weight_norm",
    "reparam_prune",
    "stateful_counter",
    # beyond the brief
    "offgrid_chunked_centring",
    "forced_train_bn_frozen",
    "forced_train_bn_recompute",
    "train_pass_mutates_parameter",
    "train_pass_toggles_attribute",
    "integer_buffer_sign",
    "rrelu_bn",
    "window_try_float",
    "window_param_dict",
    "window_is_tensor",
    "window_inplace",
    "window_thread",
    "window_counter",
    "window_clock",
]


@pytest.mark.parametrize("name", API_CASES)
def test_costume_is_never_certified_monotone(name):
    _verify(C.CATALOGUE[name]())


def test_costume_catalogue_is_covered():
    assert set(API_CASES) == set(C.CATALOGUE)


# the costumes themselves: what a layer-by-layer reading sees is flat or decreasing (so a certifier
# that reads them that way would be fooled), while the truth rises -------------------------------


def test_costumes_fool_a_layer_by_layer_reading():
    # a: with the buffer held at either end's value, every parameter is the same: a flat curve
    c = C.buffer_scale(False, "frozen")
    key = next(k for k in c.init if k.endswith(".s"))
    held = {k: (c.final[k] if k == key else v) for k, v in c.init.items()}
    flat = [C.reference_loss(c.model, held, held, c.data, a, "interpolate") for a in (0.0, 0.5, 1.0)]
    assert max(flat) - min(flat) == 0.0
    # b: the eval branch alone (no ×10 in the statistics pass) gives a decreasing curve
    c = C.train_branch()
    x = c.data.x
    mu, var = x.mean(), x.var(unbiased=True)
    eval_only = [float(((g * (x - mu) / torch.sqrt(var + 1e-5) - c.data.y) ** 2).mean()) for g in np.linspace(0, 1, 11)]
    assert all(b < a for a, b in zip(eval_only, eval_only[1:]))
    # d: per example (no centring) (b − 1)² + w² decreases along the path
    c = C.batch_centring()
    per_example = [(-5 + 5.5 * a - 1) ** 2 + a**2 for a in np.linspace(0, 1, 101)]
    assert all(b < a for a, b in zip(per_example, per_example[1:]))
    assert C.dense_max_rise(c.loss, n=101).rise == pytest.approx(1.0, abs=1e-9)


# e. a function replaced process-wide --------------------------------------------------------------


@pytest.fixture
def patched_linear_costume():
    """The costume whose factory replaces torch.nn.functional.linear; restored whatever happens."""
    original = torch.nn.functional.linear
    try:
        yield C.patched_linear_chain()
    finally:
        torch.nn.functional.linear = original


def test_patched_functional_linear_is_never_certified_monotone(patched_linear_costume):
    c = patched_linear_costume
    assert torch.nn.functional.linear is not C.PRISTINE_LINEAR  # the costume is on
    _verify(c)


def test_patched_functional_linear_was_restored():
    assert torch.nn.functional.linear is C.PRISTINE_LINEAR


# f. parametrisations and pruning through the command line -----------------------------------------


def _check_through_the_cli(c: C.Costume, factory_source: str, tmp_path) -> subprocess.CompletedProcess:
    """``check --certify --json`` on ``c``, its model built by ``build()`` of a user's module with
    ``factory_source`` (importing from ``tests/costumes.py``), as a user would run it."""
    (tmp_path / "costume_factory.py").write_text(factory_source)
    torch.save(c.init, tmp_path / "init.pt")
    torch.save(c.final, tmp_path / "final.pt")
    np.savez(tmp_path / "data.npz", x=c.data.x.numpy(), y=c.data.y.numpy())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), TESTS_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [
        sys.executable, "-m", "mli_theory", "check", "--arch", "costume_factory:build",
        "--init", str(tmp_path / "init.pt"), "--final", str(tmp_path / "final.pt"), "--data", str(tmp_path / "data.npz"),
        "--loss", "mse", "--dtype", "float64", "--alphas", str(ALPHAS), "--tol", str(c.tol), "--certify",
        "--certify-budget", str(BUDGET), "--no-geometry", "--json",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


@pytest.mark.parametrize("kind", C.REPARAMETRISATIONS)
def test_reparametrised_model_through_the_cli(kind, tmp_path):
    """Exit code 0 (an answer; its certificate consistent with the truth) or 2 (refused), never 1."""
    c = C.reparametrised(kind)
    proc = _check_through_the_cli(
        c, f"from costumes import reparametrised_mlp\n\n\ndef build():\n    return reparametrised_mlp({kind!r})\n", tmp_path
    )
    assert proc.returncode in (0, 2), f"exit {proc.returncode} (internal error) for {kind}:\n{proc.stderr[-3000:]}"
    if proc.returncode == 2:
        assert proc.stdout.strip() == "" and proc.stderr.strip(), proc.stderr
        return
    out = json.loads(proc.stdout)
    assert_measured_curve_is_the_reference(c, out["alphas"], out["losses"])
    cert = out["certificate"]
    assert_sound(c, cert["status"], cert.get("where"), describe(cert), C.dense_max_rise(c.loss, n=DENSE))


@pytest.mark.parametrize("how", ["try_float", "is_tensor"])
def test_window_costume_through_the_cli(how, tmp_path):
    """A user's factory whose forward differs from its trace only inside a window of α: unknown."""
    c = C.window(how)
    proc = _check_through_the_cli(
        c, f"from costumes import WindowNet\n\n\ndef build():\n    return WindowNet({how!r}).double().eval()\n", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert max(out["losses"][i + 1] - out["losses"][i] for i in range(ALPHAS - 1)) <= 0  # the grid sees no rise
    cert = out["certificate"]
    assert cert["status"] == "unknown" and "traced graph" in cert["reason"], describe(cert)
    assert_sound(c, cert["status"], cert.get("where"), describe(cert), C.dense_max_rise(c.loss, n=DENSE))


# g. stateful forward: the witness semantics ------------------------------------------------------


def test_stateful_costume_rises_in_every_regime():
    c = C.stateful()
    after = C.dense_max_rise(lambda a: C.regime_loss(c, a, True), n=101)
    before = [C.regime_loss(c, a, False) for a in np.linspace(0, 1, 101)]
    assert after.rise > 1.0  # the regime a long-running process ends up in rises
    assert all(b <= a for a, b in zip(before, before[1:]))  # a single trace sees a decreasing curve


# beyond the brief: inputs that must be answered or refused cleanly, and the caller's tensors -----


class _ExtraState(torch.nn.Module):
    """A Linear whose sign lives in ``get_extra_state`` (a non-tensor ``_extra_state`` entry)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.sign = 1.0

    def get_extra_state(self):
        return {"sign": self.sign}

    def set_extra_state(self, state):
        self.sign = state["sign"]

    def forward(self, x):
        return self.sign * self.lin(x)


def test_module_with_extra_state_is_answered_or_refused():
    """A state dict with a non-tensor ``_extra_state`` entry: an answer or an InputError, never a crash."""
    from mli_theory.errors import InputError

    model = _ExtraState().double().eval()
    x = torch.linspace(0.5, 1.5, 8, dtype=F64).reshape(-1, 1)
    init = {"lin.weight": torch.zeros(1, 1, dtype=F64), "lin.bias": torch.zeros(1, dtype=F64), "_extra_state": {"sign": 1.0}}
    final = {"lin.weight": torch.ones(1, 1, dtype=F64), "lin.bias": torch.zeros(1, dtype=F64), "_extra_state": {"sign": -1.0}}
    data = Dataset(x, x.clone(), "mse", "extra")
    try:
        res = check(model, init, final, data, tol=1e-3, certify=True, dtype=F64, geometry=False, certify_budget=BUDGET)
    except InputError:
        return
    except Exception as exc:
        pytest.fail(f"internal error on a module with extra state: {type(exc).__name__}: {exc}")
    # answered: whatever it did with the extra state, "monotone" needs a curve that does not rise
    if res.certificate.status == "monotone":
        assert C.max_rise(res.losses)[0] <= 1e-3


@pytest.mark.parametrize("name", ["forced_train_bn_frozen", "forced_train_bn_recompute", "train_pass_mutates_parameter"])
def test_check_leaves_the_callers_state_dicts_alone(name):
    """check's contract: init and final are not modified, even by a forward that writes to its tensors."""
    c = C.CATALOGUE[name]()
    before = {k: v.clone() for k, v in c.init.items()}, {k: v.clone() for k, v in c.final.items()}
    run_check(c)
    changed = [f"init[{k!r}]" for k, v in c.init.items() if not torch.equal(v, before[0][k])]
    changed += [f"final[{k!r}]: {before[1][k].tolist()} -> {v.tolist()}" for k, v in c.final.items() if not torch.equal(v, before[1][k])]
    assert not changed, f"check modified the caller's state dicts: {changed}"
