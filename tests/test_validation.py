"""Differential validation: the certified computation must reproduce the measured one.

The backstop is tested by injecting wrong rules into each proof method and checking that no
certificate comes out; the root causes (declared motion, train-mode trace, cross-example models,
replaced torch functions, modules that cannot be deep-copied) each by the model that exposed them.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mli_theory import check
from mli_theory.certify.validation import MEASURED_DIFFERS, Reference, grid_rise, validation_points
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy, LossCurve, Motion, make_line
from mli_theory.path.line import private_copy
from mli_theory.path.pristine import replaced_functions

enclosures = importlib.import_module("mli_theory.certify.enclosures")
certificate_mod = importlib.import_module("mli_theory.certify.certificate")


def _data(n: int = 24, d: int = 3, k: int = 1, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, d, generator=g), torch.randn(n, k, generator=g), "mse", "random")


def _pair(model: nn.Module, scale: float = 0.5, seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: (v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in a.items()}
    return a, b


def _truth(model: nn.Module, a: dict, b: dict, data: Dataset, alphas: list[float]) -> list[float]:
    """The measured curve by plain code: every floating entry affine, eval mode, one batch."""
    m = private_copy(model).double().eval()
    out = []
    for t in alphas:
        state = {k: ((1 - t) * a[k].double() + t * b[k].double()) if a[k].is_floating_point() else b[k] for k in a}
        with torch.no_grad():
            z = torch.func.functional_call(m, state, (data.x.double(),), tie_weights=False)
        out.append(float(F.mse_loss(z, data.y.double())))
    return out


def _certify(model, a, b, data, **kw):
    kw.setdefault("certify_budget", 20)
    return check(model, a, b, data, certify=True, dtype=torch.float64, geometry=False, **kw)


# ----------------------------------------------------------------------------- the backstop


def test_a_wrong_enclosure_rule_is_caught_before_any_certificate(monkeypatch):
    """An injected rule computing 1.01·tanh: the enclosures are about another model, so the
    validation refuses, naming the α where the certified and measured values differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    a, b = _pair(model)
    data = _data()
    honest = _certify(model, a, b, data, tol=1e-3)
    assert honest.certificate.status in ("monotone", "non_monotone")
    real = enclosures._MODULE_RULES[nn.Tanh]

    def wrong(nt, m, p, x):
        out = real(nt, m, p, x)
        return nt.scale(out, 1.01) if hasattr(nt, "scale") else _scaled(out, 1.01)

    monkeypatch.setitem(enclosures._MODULE_RULES, nn.Tanh, wrong)
    r = _certify(model, a, b, data, tol=1e-3)
    assert r.certificate.status == "unknown"
    assert MEASURED_DIFFERS in r.certificate.reason and "α =" in r.certificate.reason
    assert any(MEASURED_DIFFERS in w for w in r.warnings)


def _scaled(enc, c: float):
    """An enclosure times a constant (exact for c a power of two; here only used to be wrong)."""
    tm = type(enc.v)
    return type(enc)(tm(enc.v.c * c, enc.v.g * c, enc.v.e * abs(c)), tm(enc.d.c * c, enc.d.g * c, enc.d.e * abs(c)))


def test_a_wrong_exact_polynomial_is_caught(monkeypatch):
    """The exact method's loss polynomial scaled by 1.001: refused, never a verdict."""
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False))
    a, b = _pair(model)
    data = _data()
    assert _certify(model, a, b, data).certificate.method == "exact_polynomial"
    real = certificate_mod.mse_loss_polynomial

    def wrong(z, y, deadline=None):
        p = real(z, y, deadline)
        return type(p)(p.ints, p.scale * 1001 / 1000)

    monkeypatch.setattr(certificate_mod, "mse_loss_polynomial", wrong)
    r = _certify(model, a, b, data)
    assert r.certificate.status == "unknown" and MEASURED_DIFFERS in r.certificate.reason


def test_a_monotone_verdict_contradicted_by_the_grid_is_withdrawn(monkeypatch):
    """A prover that says monotone on a path whose grid rises: withdrawn, with a warning."""
    from mli_theory.exact.decide import ExactVerdict

    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    a = {"0.weight": torch.zeros(1, 3)}
    b = {"0.weight": torch.ones(1, 3) * 3.0}
    data = _data()
    r0 = _certify(model, a, b, data)
    assert r0.max_rise > 0.1 and r0.certificate.status == "non_monotone"
    monkeypatch.setattr(certificate_mod, "decide", lambda poly, tol, deadline=None: ExactVerdict("monotone", 0.0, None, 0.0, "a lying prover"))
    r = _certify(model, a, b, data)
    assert r.certificate.status == "unknown" and "contradicted by the grid" in r.certificate.reason
    assert any("withdrawn" in w for w in r.warnings)


def test_a_witness_the_measured_curve_does_not_reproduce_is_withdrawn(monkeypatch):
    from mli_theory.exact.decide import ExactVerdict

    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    a = {"0.weight": torch.ones(1, 3)}
    b = {"0.weight": torch.ones(1, 3) * 0.5}
    data = Dataset(torch.ones(8, 3), torch.zeros(8, 1), "mse", "ones")  # L decreases on all of [0, 1]
    monkeypatch.setattr(certificate_mod, "decide", lambda poly, tol, deadline=None: ExactVerdict("non_monotone", 0.5, (0.25, 0.75), None, "a lying prover"))
    r = _certify(model, a, b, data)
    assert r.certificate.status == "unknown" and "does not reproduce the witness" in r.certificate.reason


def test_validation_points_and_grid_rise():
    curve = LossCurve(tuple(i / 10 for i in range(11)), (5, 4, 3, 2, 1, 1.5, 0.5, 0.4, 0.3, 0.2, 0.1), None)
    assert grid_rise(curve) == (0.4, 0.5)
    assert validation_points(curve) == [0.0, 0.2, 0.4, 0.5, 0.8, 1.0] or set(validation_points(curve)) >= {0.0, 0.4, 0.5, 1.0}


def test_random_measured_curve_is_no_function_of_alpha():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 1)

        def forward(self, x):
            return F.dropout(self.l(x), 0.5, True)  # random in eval mode too

    model = Noisy()
    a, b = _pair(model)
    line = make_line(model, a, b, dtype=torch.float64)
    ref = Reference(line, _data(), BNPolicy.RECOMPUTE, None)
    why = ref.consistency()
    assert why is not None and ("not a function of α" in why or "draws random numbers" in why), why


# ----------------------------------------------------------------------------- root causes


class Scale(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("s", torch.ones(d))

    def forward(self, x):
        return x * self.s


@pytest.mark.parametrize("bn", ["frozen", "interpolate", "recompute"])
@pytest.mark.parametrize("with_bn", [False, True])
def test_a_moving_buffer_moves_for_the_certifier_as_for_the_curve(bn, with_bn):
    """A floating buffer −1 → 1 (not a BatchNorm statistic) is affine under every policy, for the
    curve and the certifier alike: the rise is proven (it was "monotone, rise ≤ 2e-13")."""
    torch.manual_seed(3)
    layers = [nn.Linear(3, 4)] + ([nn.BatchNorm1d(4)] if with_bn else []) + [nn.Tanh(), nn.Linear(4, 1), Scale(1)]
    model = nn.Sequential(*layers)
    a, b = _pair(model, 0.1)
    key = f"{len(layers) - 1}.s"
    a[key], b[key] = -torch.ones(1), torch.ones(1)
    data = _data(32)
    line = make_line(model, a, b, dtype=torch.float64)
    assert line.motions(bn)[key] == Motion.AFFINE
    r = _certify(model, a, b, data, bn=bn, tol=1e-3)
    assert r.max_rise > 0.01
    assert r.certificate.status in ("non_monotone", "unknown")
    if r.certificate.status == "non_monotone" and not with_bn:
        lo, hi = r.certificate.where
        la, lb = _truth(model, a, b, data, [lo, hi])
        assert lb - la > 1e-3


def test_declared_motions():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), Scale(2))
    sd = model.state_dict()
    line = make_line(model, sd, sd)
    m = line.motions("recompute")
    assert m["0.weight"] == m["1.weight"] == m["2.s"] == Motion.AFFINE
    assert m["1.running_mean"] == m["1.running_var"] == Motion.RECOMPUTED
    assert m["1.num_batches_tracked"] == Motion.END
    assert line.motions("frozen")["1.running_var"] == Motion.END and line.motions("frozen")["2.s"] == Motion.AFFINE
    assert line.motions("interpolate")["1.running_var"] == Motion.AFFINE


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.bn, self.l2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)

    def forward(self, x):
        h = self.l1(x)
        if self.training:
            h = 3 * h + 1
        return self.l2(torch.tanh(self.bn(h)))


class DropBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.bn, self.l2 = nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Linear(16, 1)

    def forward(self, x):
        return self.l2(torch.tanh(self.bn(F.dropout(self.l1(x), 0.5, self.training))))


@pytest.mark.parametrize("cls", [Branch, DropBN])
def test_the_train_mode_pass_is_traced_too(cls):
    torch.manual_seed(0)
    model = cls()
    a, b = _pair(model)
    r = _certify(model, a, b, _data(32))
    assert r.certificate.status == "unknown"
    assert "train mode" in r.certificate.reason or MEASURED_DIFFERS in r.certificate.reason


class Centred(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        o = self.l2(torch.tanh(self.l1(x)))
        return o - o.sum(0, keepdim=True) / x.shape[0]


def test_a_model_that_mixes_examples_is_certified_on_the_curves_batches_or_not_at_all():
    from mli_theory.certify.partition import _mixes_examples, prepare

    torch.manual_seed(0)
    model = Centred()
    a, b = _pair(model)
    data = _data(40)
    line = make_line(model, a, b, dtype=torch.float64)
    start = {k: v.double() for k, v in a.items()}
    end = {k: v.double() for k, v in b.items()}
    assert _mixes_examples(line.shell, start, end, data.x.double())
    assert not _mixes_examples(nn.Sequential(nn.Linear(3, 1)).double(), {"0.weight": torch.ones(1, 3).double(), "0.bias": torch.zeros(1).double()},
                               {"0.weight": torch.ones(1, 3).double(), "0.bias": torch.zeros(1).double()}, data.x.double())
    try:
        prob = prepare(line, data, BNPolicy.FROZEN, memory_bytes=1.0)  # memory would ask for chunks of 1
    except Exception as exc:  # no enclosure rule for the batch reduction: refused, which is sound
        assert "rule" in str(exc)
    else:
        assert prob.chunk == data.n
    for batch_size in (None, 8):
        r = _certify(model, a, b, data, batch_size=batch_size)
        assert r.certificate.status != "monotone" or r.max_rise <= 0


def test_a_replaced_torch_function_is_refused(monkeypatch):
    original = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: torch.tanh(original(x, w, b)))
    assert "torch.nn.functional.linear" in replaced_functions()
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    a, b = _pair(model)
    r = _certify(model, a, b, _data())
    assert r.certificate.status == "unknown" and "replaced" in r.certificate.reason
    assert r.info["path_kind"] == "unknown"


def test_pristine_after_restoring():
    assert replaced_functions() == []


@pytest.mark.parametrize("kind", ["weight_norm", "parametrizations", "prune"])
def test_parametrised_models_give_an_answer(kind):
    import warnings

    from torch.nn.utils import parametrizations, prune

    torch.manual_seed(0)
    first = nn.Linear(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "weight_norm":
            first = nn.utils.weight_norm(first)
        elif kind == "parametrizations":
            first = parametrizations.weight_norm(first)
        else:
            prune.l1_unstructured(first, "weight", 0.25)
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(4, 1))
    a, b = _pair(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = _certify(model, a, b, _data(), tol=1e-3)
    assert len(r.losses) == 50 and all(torch.isfinite(torch.tensor(r.losses)))
    assert r.certificate.status in ("unknown", "non_monotone", "monotone")
    assert r.certificate.status == "unknown" or kind == "prune"  # hooks or parametrisations: not traced
    truth = _truth(model, a, b, _data(), [0.0, 0.5, 1.0])
    assert r.losses[0] == pytest.approx(truth[0], rel=1e-9) and r.losses[-1] == pytest.approx(truth[2], rel=1e-9)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model untouched


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_a_constant_path_is_monotone_at_once(loss):
    """θ0 = θT: L is constant, so monotone at tol 0 without any cell (it used to spend the budget)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    sd = model.state_dict()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g)
    data = Dataset(x, torch.randn(20, 2, generator=g), "mse", "r") if loss == "mse" else Dataset(x, torch.randint(0, 2, (20,), generator=g), "ce", "r")
    r = check(model, sd, sd, data, certify=True, geometry=False, tol=0.0, certify_budget=5)
    assert r.certificate.status == "monotone" and r.certificate.method == "constant_path" and r.certificate.rise_bound == 0.0
    moved = {k: v + 1e-3 if k == "2.bias" else v for k, v in sd.items()}
    assert check(model, sd, moved, data, certify=True, geometry=False, certify_budget=5).certificate.method != "constant_path"


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_tied_weights_are_measured_and_certified_and_their_mismatch_is_named():
    from mli_theory import InputError

    torch.manual_seed(0)
    model = Tied()
    sd = model.state_dict()
    moved = {k: v + 0.1 for k, v in sd.items()}
    data = Dataset(torch.randn(20, 3), torch.randn(20, 3), "mse", "r")
    r = check(model, sd, moved, data, certify=True, dtype=torch.float64, geometry=False, certify_budget=10)
    truth = _truth(model, sd, moved, data, [0.0, 1.0])
    assert r.losses[0] == pytest.approx(truth[0], rel=1e-12) and r.losses[-1] == pytest.approx(truth[1], rel=1e-12)
    assert r.certificate.status in ("monotone", "non_monotone")
    assert r.distance == pytest.approx(0.1 * 15**0.5)  # the shared weight counts once
    bad = dict(moved)
    bad["b.weight"] = bad["b.weight"] + 1
    with pytest.raises(InputError, match=r"a\.weight and b\.weight are one tensor"):
        check(model, sd, bad, data)
    assert model.b.weight is model.a.weight  # the caller's model keeps its tie


def test_flag_hints_use_the_flags_values():
    from mli_theory.cli.main import _as_flags

    assert "--dtype float64" in _as_flags("not finite (evaluate in float64 with dtype=torch.float64)")


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_subnormal_weights_end_at_once_with_the_reason_and_decide_above_the_floor(loss):
    """Weights of 1e-310: the loss varies by less than the enclosures' underflow guards. At tol 0
    the answer is unknown at once, saying so (it used to spend the whole budget); above the floor
    the path is decided."""
    import time

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    a = {k: torch.randn_like(v) * 1e-310 for k, v in model.state_dict().items()}
    b = {k: torch.randn_like(v) * 1e-310 for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(10, 2, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (10,), generator=g)
    data = Dataset(x, y, loss, "subnormal")
    t = time.perf_counter()
    r = check(model, a, b, data, certify=True, dtype=torch.float64, geometry=False, tol=0.0, certify_budget=30)
    assert r.certificate.status == "unknown" and "underflow floor" in r.certificate.reason
    assert time.perf_counter() - t < 15
    r = check(model, a, b, data, certify=True, dtype=torch.float64, geometry=False, tol=1e-250, certify_budget=30)
    assert r.certificate.status == "monotone"


# ----------------------------------------------------------------------------- found by an adversarial review


class _BatchSized(nn.Module):
    """Outputs that depend on the batch size through arithmetic on ``x.shape[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        b = x.shape[0]
        return self.lin(x) * ((b - 1) * (b - 8) / 100.0) + self.lin(x)


def test_a_graph_that_computes_with_the_batch_size_is_enclosed_on_the_curves_batches():
    from mli_theory.certify.partition import _reads_batch_size, prepare
    from mli_theory.geometry.interpreter import trace

    assert _reads_batch_size(trace(_BatchSized()))
    flat = nn.Sequential(nn.Linear(3, 4), nn.Flatten())

    class Viewed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 4)

        def forward(self, x):
            h = self.l(x)
            return h.view(h.shape[0], -1) + h.reshape(h.size(0), 2, 2).flatten(1)

    assert not _reads_batch_size(trace(flat)) and not _reads_batch_size(trace(Viewed()))
    model = _BatchSized().double()
    a, b = _pair(model)
    data = _data(40)
    line = make_line(model, a, b, dtype=torch.float64)
    assert prepare(line, data, BNPolicy.FROZEN, memory_bytes=1.0).chunk == data.n


def test_helpers_of_torch_module_classes_and_module_call_are_in_the_snapshot(monkeypatch):
    from mli_theory.path.structure import opaque_call_reason

    original = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, x, w, b: original(self, x, w, b) * 2)
    assert any("_conv_forward" in name for name in replaced_functions())
    assert "replaced" in opaque_call_reason(nn.Sequential(nn.Conv2d(1, 1, 1)))
    monkeypatch.undo()
    call = nn.Module._call_impl
    monkeypatch.setattr(nn.Module, "_call_impl", lambda self, *a, **k: call(self, *a, **k))
    assert any("_call_impl" in name for name in replaced_functions())
    monkeypatch.undo()
    assert replaced_functions() == []


class _Tracing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 1)

    def forward(self, x):
        out = self.l(x)
        if not torch.fx._symbolic_trace.is_fx_tracing():
            out = out * 2
        return out


class _GradMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 1)

    def forward(self, x):
        return self.l(x) * (2.0 if torch.is_grad_enabled() else 1.0)


@pytest.mark.parametrize("cls", [_Tracing, _GradMode])
def test_a_forward_that_asks_how_it_runs_is_refused(cls):
    model = cls()
    a, b = _pair(model)
    r = _certify(model, a, b, _data())
    # refused by the name it reads, or (_Tracing) first by what it runs: more than its trace
    assert r.certificate.status == "unknown"
    assert "reads" in r.certificate.reason or "runs other operations" in r.certificate.reason
    assert r.info["path_kind"] == "unknown"


def test_a_monotone_verdict_is_withdrawn_where_the_checks_own_float32_curve_rises_beyond_rounding():
    """Red team, part 25: an intermediate that overflows in float32 only (tanh turns the inf into 1),
    past the probe α: the float64 computation the enclosures certify is monotone, the float32 curve a
    caller measures rises by 0.34."""
    import mli_theory as mt

    class Overflows(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.perm = nn.Linear(4, 3, bias=False)
            self.s = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            bump = torch.relu(self.perm(x))
            d = ((bump * self.s) * 1e20) * 1e20  # inf in float32 once bump·s > 0.034
            return self.fc(x) + 5.0 * torch.tanh((d * 1e-20) * 1e-20)

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.arange(60) % 3
    x = centres[y] + 0.3 * torch.randn(60, 4, generator=g)
    torch.manual_seed(1)
    m = Overflows()
    perm = torch.zeros(3, 4)
    for c in range(3):
        perm[(c + 1) % 3, c] = 1.0
    with torch.no_grad():
        m.perm.weight.copy_(perm)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(m.fc.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(m.fc(x), y).backward()
        opt.step()
    with torch.no_grad():
        m.s.fill_(0.015)
    end = {k: v.clone() for k, v in m.state_dict().items()}
    out = mt.check(Overflows(), start, end, mt.Dataset(x, y, "ce", "t"), certify=True, geometry=False)
    assert out.max_rise > 0.3  # the float32 curve rises
    assert out.certificate.status == "unknown" and "is not the computation certified" in out.certificate.reason, out.certificate.reason
