"""The smoothness table (mli_theory.path.smoothness) against the functions torch computes.

Every entry of the table is probed numerically along a real path θ(α) = θ0 + αΔθ: a model whose
parameter b moves so that the operation's input crosses one of its break points at α = ½. In
float64, one-sided extrapolations of the value, of the first and of the second derivative (finite
differences at two step sizes, so that a true jump stays while a smooth difference shrinks) decide
whether the value, f′ or f″ jumps there. The probed class must equal the table's class (read by
:func:`analyse`, i.e. with the parameters taken from the module or from the call's arguments), and
generic points must show no jump. Then: the path kinds of MLPs, the conditions of ``check`` on an
ELU(alpha=0.5) network, and the jet and enclosure rules for the same parameter values.
"""

from __future__ import annotations

import math
import operator

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mli_theory import check
from mli_theory.inputs import Dataset
from mli_theory.path import PathKind, Smoothness, analyse, make_line
from mli_theory.path import smoothness as S

D = torch.float64
INF = float("inf")


# ----------------------------------------------------------------------------- probing


def _jump(est, h_big: float, h_small: float, tol: float) -> bool:
    """A jump of size J survives as h shrinks; an O(h^p) smooth difference does not."""
    big, small = abs(est(h_big)), abs(est(h_small))
    return small > tol and small > 0.5 * big


def probe(g, t0: float) -> Smoothness:
    """The lowest order that jumps at t0 (DISCONTINUOUS, C0 = f′ jumps, C1 = f″ jumps, else SMOOTH)."""
    scale = max(1.0, abs(g(t0)))

    def value(h):  # right minus left limit, each by linear extrapolation: O(h²) without a jump
        return (2 * g(t0 + h) - g(t0 + 2 * h)) - (2 * g(t0 - h) - g(t0 - 2 * h))

    def slope(h):  # one-sided quadratic fits, derivative at t0: O(h²) without a jump
        right = (-2.5 * g(t0 + h) + 4 * g(t0 + 2 * h) - 1.5 * g(t0 + 3 * h)) / h
        left = (2.5 * g(t0 - h) - 4 * g(t0 - 2 * h) + 1.5 * g(t0 - 3 * h)) / h
        return right - left

    def curvature(h):  # second differences beside t0: O(h) without a jump
        right = (g(t0 + h) - 2 * g(t0 + 2 * h) + g(t0 + 3 * h)) / (h * h)
        left = (g(t0 - h) - 2 * g(t0 - 2 * h) + g(t0 - 3 * h)) / (h * h)
        return right - left

    if _jump(value, 1e-4, 1e-6, 1e-11 * scale):
        return Smoothness.DISCONTINUOUS
    if _jump(slope, 1e-3, 1e-4, 1e-6 * scale):
        return Smoothness.C0
    if _jump(curvature, 1e-3, 1e-4, 1e-3 * scale):
        return Smoothness.C1
    return Smoothness.SMOOTH


class Shifted(nn.Module):
    """op(x + b) with a parameter b: along the path, b(α) = c + (α − ½)·d."""

    def __init__(self, op, n: int = 1, shape: tuple[int, ...] | None = None):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(n, dtype=D))
        self.shape = shape  # the module's input shape (pooling wants (N, C, L))
        if isinstance(op, nn.Module):
            self.op = op
        else:
            self.fn = op

    def forward(self, x):
        u = x + self.b
        if self.shape is not None:
            u = u.view(self.shape)
        return self.op(u) if hasattr(self, "op") else self.fn(u, x)


def _path_value(model: nn.Module, x: torch.Tensor, c: torch.Tensor, d: torch.Tensor, weights: torch.Tensor):
    def g(alpha: float) -> float:
        out = functional_call(model, {"b": c + (alpha - 0.5) * d}, (x,))
        out = out.to(D).flatten()
        return float((out.detach() * weights[: out.numel()]).sum())

    return g


def _weights():
    return torch.tensor([1.0, 0.7, -0.45, 0.3, 0.9, -1.3, 0.55, 0.2], dtype=D)


def _least_verdict(model: nn.Module) -> S.Verdict:
    """The table's verdict of the least regular node (what analyse uses), with its break points."""
    gm = torch.fx.symbolic_trace(model)
    varying = S.varying_nodes(gm.graph, model)
    modules = dict(model.named_modules())
    out = S.Verdict(Smoothness.SMOOTH, "")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        v, _ = S.classify_node(node, modules, varying)
        if v.smoothness < out.smoothness or (v.smoothness == out.smoothness and v.breaks and not out.breaks):
            out = v
    return out


# ----------------------------------------------------------------------------- elementwise entries

_SUSPICIOUS = (0.0, -1.0, 1.0, -3.0, 3.0, 6.0, 0.5, 2.5, 20.0, -20.0)
_GENERIC = (-4.3, -1.7, -0.45, 0.23, 1.3, 2.2, 4.1, 7.3)

# (label, op: a module or fn(u, x), expected class); the table supplies the break points
ELEMENTWISE = [
    # C∞
    ("nn.Tanh", nn.Tanh(), Smoothness.SMOOTH),
    ("torch.sigmoid", lambda u, x: torch.sigmoid(u), Smoothness.SMOOTH),
    (".exp()", lambda u, x: u.exp(), Smoothness.SMOOTH),
    ("nn.SiLU", nn.SiLU(), Smoothness.SMOOTH),
    ("F.mish", lambda u, x: F.mish(u), Smoothness.SMOOTH),
    ("nn.Mish", nn.Mish(), Smoothness.SMOOTH),
    ("nn.GELU()", nn.GELU(), Smoothness.SMOOTH),
    ("nn.GELU(tanh)", nn.GELU(approximate="tanh"), Smoothness.SMOOTH),
    ("F.gelu(tanh)", lambda u, x: F.gelu(u, approximate="tanh"), Smoothness.SMOOTH),
    ("nn.LogSigmoid", nn.LogSigmoid(), Smoothness.SMOOTH),
    ("nn.Tanhshrink", nn.Tanhshrink(), Smoothness.SMOOTH),
    ("nn.Softplus(threshold=inf)", nn.Softplus(threshold=INF), Smoothness.SMOOTH),
    ("nn.LeakyReLU(1)", nn.LeakyReLU(1.0), Smoothness.SMOOTH),
    ("F.hardtanh(u, 0.5, 0.5)", lambda u, x: F.hardtanh(u, 0.5, 0.5), Smoothness.SMOOTH),
    ("torch.clamp(u, 2, 1)", lambda u, x: torch.clamp(u, 2.0, 1.0), Smoothness.SMOOTH),
    ("F.softshrink(u, 0)", lambda u, x: F.softshrink(u, 0.0), Smoothness.SMOOTH),
    ("nn.Hardshrink(0)", nn.Hardshrink(0.0), Smoothness.SMOOTH),
    # C¹: f″ jumps
    ("nn.ELU()", nn.ELU(), Smoothness.C1),
    ("F.elu(alpha=1)", lambda u, x: F.elu(u, alpha=1.0), Smoothness.C1),
    ("nn.CELU(0.7)", nn.CELU(0.7), Smoothness.C1),
    ("F.celu(alpha=2)", lambda u, x: F.celu(u, alpha=2.0), Smoothness.C1),
    ("nn.Softsign", nn.Softsign(), Smoothness.C1),
    # C⁰: f′ jumps
    ("nn.ELU(0.5)", nn.ELU(alpha=0.5), Smoothness.C0),
    ("F.elu(u, 2)", lambda u, x: F.elu(u, 2.0), Smoothness.C0),
    ("nn.SELU", nn.SELU(), Smoothness.C0),
    ("nn.ReLU", nn.ReLU(), Smoothness.C0),
    ("torch.relu", lambda u, x: torch.relu(u), Smoothness.C0),
    (".relu()", lambda u, x: u.relu(), Smoothness.C0),
    ("nn.LeakyReLU()", nn.LeakyReLU(), Smoothness.C0),
    ("F.leaky_relu(u, 2)", lambda u, x: F.leaky_relu(u, 2.0), Smoothness.C0),
    ("nn.PReLU", nn.PReLU(init=0.25).double(), Smoothness.C0),
    ("nn.RReLU eval", nn.RReLU(), Smoothness.C0),
    ("F.relu6", lambda u, x: F.relu6(u), Smoothness.C0),
    ("nn.ReLU6", nn.ReLU6(), Smoothness.C0),
    ("nn.Hardtanh(-2, 3)", nn.Hardtanh(-2.0, 3.0), Smoothness.C0),
    ("nn.Hardswish", nn.Hardswish(), Smoothness.C0),
    ("F.hardswish", lambda u, x: F.hardswish(u), Smoothness.C0),
    ("nn.Hardsigmoid", nn.Hardsigmoid(), Smoothness.C0),
    ("nn.Softshrink(0.5)", nn.Softshrink(0.5), Smoothness.C0),
    ("nn.Threshold(0.5, 0.5)", nn.Threshold(0.5, 0.5), Smoothness.C0),
    ("torch.abs", lambda u, x: torch.abs(u), Smoothness.C0),
    (".abs()", lambda u, x: u.abs(), Smoothness.C0),
    ("abs(u)", lambda u, x: abs(u), Smoothness.C0),
    (".clamp(min=-1, max=2)", lambda u, x: u.clamp(min=-1.0, max=2.0), Smoothness.C0),
    ("torch.clip(u, max=1)", lambda u, x: torch.clip(u, max=1.0), Smoothness.C0),
    (".clamp_min(0.5)", lambda u, x: u.clamp_min(0.5), Smoothness.C0),
    ("torch.clamp_max(u, 0.5)", lambda u, x: torch.clamp_max(u, 0.5), Smoothness.C0),
    # the value jumps
    ("nn.Softplus()", nn.Softplus(), Smoothness.DISCONTINUOUS),  # a jump of 2·10⁻⁹ at 20
    ("nn.Softplus(beta=2, threshold=1)", nn.Softplus(beta=2.0, threshold=1.0), Smoothness.DISCONTINUOUS),
    ("nn.Softplus(threshold=5)", nn.Softplus(threshold=5.0), Smoothness.DISCONTINUOUS),
    ("F.softplus(u, 2, threshold=3)", lambda u, x: F.softplus(u, 2.0, threshold=3.0), Smoothness.DISCONTINUOUS),
    ("nn.Softplus(beta=-1, threshold=2)", nn.Softplus(beta=-1.0, threshold=2.0), Smoothness.DISCONTINUOUS),
    ("nn.Hardshrink(0.5)", nn.Hardshrink(0.5), Smoothness.DISCONTINUOUS),
    ("F.threshold(u, 0.5, -1)", lambda u, x: F.threshold(u, 0.5, -1.0), Smoothness.DISCONTINUOUS),
]


@pytest.mark.parametrize("label,op,expected", ELEMENTWISE, ids=[c[0] for c in ELEMENTWISE])
def test_elementwise_class_matches_the_probed_function(label, op, expected):
    model = Shifted(op).eval()
    structure = analyse(model)
    verdict = _least_verdict(model)
    assert structure.smoothness == verdict.smoothness == expected, (label, structure.reason, verdict)
    if expected != Smoothness.SMOOTH:
        assert verdict.breaks, (label, "an elementwise entry that is not C∞ lists its break points")
    x, w = torch.zeros(1, dtype=D), _weights()
    one = torch.ones(1, dtype=D)
    probed_at_breaks = []
    for u0 in verdict.breaks:
        probed_at_breaks.append(probe(_path_value(model, x, u0 * one, one, w), 0.5))
    if verdict.breaks:
        assert min(probed_at_breaks) == expected, (label, verdict.breaks, probed_at_breaks)
        assert all(p <= Smoothness.C1 for p in probed_at_breaks), (label, "a listed break point shows no jump", probed_at_breaks)
    others = _SUSPICIOUS if expected == Smoothness.SMOOTH else _GENERIC
    for u0 in others:
        if any(abs(u0 - b) < 0.1 for b in verdict.breaks):
            continue
        got = probe(_path_value(model, x, u0 * one, one, w), 0.5)
        assert got == Smoothness.SMOOTH, (label, u0, got)


# ----------------------------------------------------------------------------- other entries


def _pool1d(v):
    return v.view(1, 1, -1)


def _both(pair):
    return pair[0] + pair[1]  # values + indices


# (label, op(u, x), x, c, d, expected): b(α) = c + (α − ½)d, probed at α = ½ (a tie or a crossing)
# and at α = 0.2 (generic)
_X2 = torch.tensor([1.0, 2.0], dtype=D)
_Z2 = torch.zeros(2, dtype=D)
_TIE = torch.tensor([0.3, 0.3], dtype=D)
_E1 = torch.tensor([1.0, 0.0], dtype=D)
_X_TIE = torch.tensor([1.0, 0.0], dtype=D)  # x + c = (2, 2): a tie of the entries
_ONE = torch.ones(1, dtype=D)
_Z1 = torch.zeros(1, dtype=D)

OTHERS = [
    # pooling
    ("nn.MaxPool1d", nn.MaxPool1d(2), None, _Z2, _TIE, _E1, Smoothness.C0),
    ("nn.AdaptiveMaxPool1d", nn.AdaptiveMaxPool1d(1), None, _Z2, _TIE, _E1, Smoothness.C0),
    ("nn.AvgPool1d", nn.AvgPool1d(2), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("F.max_pool1d", lambda u, x: F.max_pool1d(_pool1d(u), 2), None, _Z2, _TIE, _E1, Smoothness.C0),
    ("F.adaptive_max_pool1d", None, lambda u, x: F.adaptive_max_pool1d(_pool1d(u), 1), _Z2, _TIE, _E1, Smoothness.C0),
    ("max_pool1d indices read", lambda u, x: _both(F.max_pool1d(_pool1d(u), 2, return_indices=True)), None, _Z2, _TIE, _E1,
     Smoothness.DISCONTINUOUS),
    ("max_pool1d values only", lambda u, x: F.max_pool1d(_pool1d(u), 2, return_indices=True)[0], None, _Z2, _TIE, _E1, Smoothness.C0),
    ("F.avg_pool1d", lambda u, x: F.avg_pool1d(_pool1d(u), 2), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("F.adaptive_avg_pool1d", None, lambda u, x: F.adaptive_avg_pool1d(_pool1d(u), 1), _Z2, _TIE, _E1, Smoothness.SMOOTH),
    # max / min
    ("torch.maximum", lambda u, x: torch.maximum(u, x + 0.3), None, _Z1, 0.3 * _ONE, _ONE, Smoothness.C0),
    ("torch.minimum", lambda u, x: torch.minimum(u, x + 0.3), None, _Z1, 0.3 * _ONE, _ONE, Smoothness.C0),
    (".maximum()", lambda u, x: u.maximum(x + 0.3), None, _Z1, 0.3 * _ONE, _ONE, Smoothness.C0),
    ("torch.fmin", lambda u, x: torch.fmin(u, x + 0.3), None, _Z1, 0.3 * _ONE, _ONE, Smoothness.C0),
    ("torch.max(u, other)", lambda u, x: torch.max(u, x + 0.3), None, _Z1, 0.3 * _ONE, _ONE, Smoothness.C0),
    ("torch.max(u, 0).values", lambda u, x: torch.max(u, 0).values, None, _Z2, _TIE, _E1, Smoothness.C0),
    (".min(dim=0)[0]", lambda u, x: u.min(dim=0)[0], None, _Z2, _TIE, _E1, Smoothness.C0),
    ("torch.max(u, 0) indices read", lambda u, x: torch.max(u, 0)[1] * 1.0, None, _Z2, _TIE, _E1, Smoothness.DISCONTINUOUS),
    ("torch.amax", lambda u, x: torch.amax(u, 0), None, _Z2, _TIE, _E1, Smoothness.C0),
    (".amin()", lambda u, x: u.amin(0), None, _Z2, _TIE, _E1, Smoothness.C0),
    ("clamp with a tensor bound", lambda u, x: torch.clamp(u, min=x + 0.2), None, _Z1, 0.2 * _ONE, _ONE, Smoothness.C0),
    ("F.prelu", None, None, _Z1, _Z1, _ONE, Smoothness.C0),  # filled in below (needs a parameter)
    # selections and steps
    ("torch.where, varying condition", lambda u, x: torch.where(u > 0, u, u + 1), None, _Z1, _Z1, _ONE, Smoothness.DISCONTINUOUS),
    ("torch.where, fixed condition", lambda u, x: torch.where(x > 0, u, 2 * u), None, _ONE, _Z1, _ONE, Smoothness.SMOOTH),
    (".where(), varying condition", lambda u, x: u.where(u > 0, u + 1), None, _Z1, _Z1, _ONE, Smoothness.DISCONTINUOUS),
    (".masked_fill, varying mask", lambda u, x: u.masked_fill(u > 0, 0.5), None, _Z1, _Z1, _ONE, Smoothness.DISCONTINUOUS),
    ("torch.masked_fill, fixed mask", lambda u, x: torch.masked_fill(u, x > 0, 0.5), None, -_ONE, _Z1, _ONE, Smoothness.SMOOTH),
    ("comparison", lambda u, x: (u > 0) * 1.0, None, _Z1, _Z1, _ONE, Smoothness.DISCONTINUOUS),
    ("comparison of the data", lambda u, x: (x > 0) * u, None, _ONE, _Z1, _ONE, Smoothness.SMOOTH),
    ("torch.sign", lambda u, x: torch.sign(u) * 1.0, None, _Z1, _Z1, _ONE, Smoothness.DISCONTINUOUS),
    (".floor()", lambda u, x: u.floor(), None, _Z1, _ONE, _ONE, Smoothness.DISCONTINUOUS),
    ("u // 1", lambda u, x: u // 1.0, None, _Z1, _ONE, _ONE, Smoothness.DISCONTINUOUS),
    ("div rounding_mode=floor", lambda u, x: torch.div(u, 1.0, rounding_mode="floor"), None, _Z1, _ONE, _ONE, Smoothness.DISCONTINUOUS),
    ("indexing by argmax", lambda u, x: (10 * x)[torch.argmax(u)], None, _X2, _X_TIE, _E1, Smoothness.DISCONTINUOUS),
    ("indexing by constants", lambda u, x: u[0] + u[1:], None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    # layers, arithmetic, structure
    ("nn.Linear", nn.Linear(2, 2).double(), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("nn.LayerNorm", nn.LayerNorm(2).double(), None, _X2, _Z2, _E1, Smoothness.SMOOTH),
    ("nn.BatchNorm1d eval", lambda u, x: F.batch_norm(u.view(1, 2), torch.zeros(2, dtype=D), torch.ones(2, dtype=D)), None, _Z2,
     _TIE, _E1, Smoothness.SMOOTH),
    ("nn.Softmax", nn.Softmax(-1), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("attention", lambda u, x: F.scaled_dot_product_attention(u.view(1, 2, 1), u.view(1, 2, 1), u.view(1, 2, 1)), None, _Z2, _TIE,
     _E1, Smoothness.SMOOTH),
    ("dropout in eval mode", nn.Dropout(0.5), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("arithmetic", lambda u, x: u * u - u / (x + 2.0) + torch.neg(u) @ u, None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("natural power", lambda u, x: u**3 + torch.pow(u, 2), None, _Z2, _TIE, _E1, Smoothness.SMOOTH),
    ("structure", lambda u, x: torch.cat([u.view(1, -1), torch.stack([u, u]).reshape(2, 2)]).flatten(), None, _Z2, _TIE,
     _E1, Smoothness.SMOOTH),
]


class _PReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, dtype=D))
        self.w = nn.Parameter(torch.full((1,), 0.25, dtype=D))

    def forward(self, x):
        return F.prelu(x + self.b, self.w)


def _other_model(label, op, fn):
    if label == "F.prelu":
        return _PReLU().eval()
    shape = (1, 1, 2) if label in ("nn.MaxPool1d", "nn.AdaptiveMaxPool1d", "nn.AvgPool1d") else None
    return Shifted(op if op is not None else fn, shape=shape).eval()


@pytest.mark.parametrize("label,op,fn,x,c,d,expected", OTHERS, ids=[c[0] for c in OTHERS])
def test_other_entries_match_the_probed_path(label, op, fn, x, c, d, expected):
    model = _other_model(label, op, fn)
    structure = analyse(model)
    assert structure.smoothness == expected, (label, structure.reason)
    g = _path_value(model, x, c, d, _weights())
    assert probe(g, 0.5) == expected, (label, probe(g, 0.5))
    assert probe(g, 0.2) == Smoothness.SMOOTH, label


def test_every_table_entry_is_probed():
    """Each entry of the table has a probe above (or is checked by name below)."""
    probed = set()
    for cases in (ELEMENTWISE, OTHERS):
        for label, op, *rest in cases:
            model = _other_model(label, op, rest[0]) if cases is OTHERS else Shifted(op).eval()
            gm = torch.fx.symbolic_trace(model)
            modules = dict(model.named_modules())
            for node in gm.graph.nodes:
                if node.op == "call_module":
                    probed.add(S.op_of("module", type(modules[node.target])))
                elif node.op in ("call_function", "call_method"):
                    probed.add(S.op_of("function" if node.op == "call_function" else "method", node.target))
    names = {op.name for op in probed if op is not None}
    missing = {op.name for op in S.TABLE} - names - {"rms normalisation"}
    assert not missing, missing


# ----------------------------------------------------------------------------- parameter values the table refuses


@pytest.mark.parametrize(
    "op",
    [nn.Dropout(0.5), nn.RReLU(), nn.LayerNorm(1, eps=0.0), lambda u, x: F.dropout(u, 0.5, True),
     lambda u, x: u**0.5, lambda u, x: F.scaled_dot_product_attention(u.view(1, 1, 1), u.view(1, 1, 1), u.view(1, 1, 1), dropout_p=0.3),
     lambda u, x: torch.max(u), lambda u, x: u.amax(), lambda u, x: u.sum()],
    ids=["dropout train", "rrelu train", "layernorm eps=0", "F.dropout train", "fractional power", "attention dropout",
         "max of all entries", "amax of all entries", "sum"],
)
def test_uses_the_table_does_not_classify_are_unknown(op):
    model = Shifted(op)  # training mode: dropout and RReLU are random
    s = analyse(model)
    assert s.kind == PathKind.UNKNOWN and s.smoothness == Smoothness.UNKNOWN, s.reason


def test_parameters_are_read_from_modules_and_arguments():
    assert S.of_module(nn.ELU(alpha=0.5)).smoothness == Smoothness.C0
    assert S.of_module(nn.ELU()).smoothness == Smoothness.C1
    assert S.of_function(F.elu, ("x",), {"alpha": 1.0}).smoothness == Smoothness.C1
    assert S.of_function(F.elu, ("x", 0.3)).smoothness == Smoothness.C0
    assert S.of_function(F.softplus, ("x", 2.0), {"threshold": INF}).smoothness == Smoothness.SMOOTH
    assert S.of_function(F.softplus, ("x", 2.0, 4.0)).breaks == (2.0,)
    assert S.of_method("clamp", ("x",), {"min": 0.0}).breaks == (0.0,)
    assert S.of_method("clamp", ("x", 3.0, 1.0)).smoothness == Smoothness.SMOOTH  # constant 1
    assert S.of_module(nn.Softplus()).smoothness == Smoothness.DISCONTINUOUS
    assert "2.06e-09" in S.of_module(nn.Softplus()).why
    # a parameter computed in forward is taken to be any value: the weakest class it can have
    assert S.of_function(F.elu, ("x",), {"alpha": object()}).smoothness == Smoothness.C0
    # subclasses may compute something else: not classified
    assert S.of_module(type("MyELU", (nn.ELU,), {})()).smoothness == Smoothness.UNKNOWN


def test_everything_the_old_tables_listed_is_classified():
    """The ad-hoc sets structure.py had (smooth / kinked) are all in the table, with the same class
    for default parameters, except the two the review found wrong: ELU (C¹ at best) and Softplus
    (a jump at its threshold)."""
    smooth_modules = [nn.Linear(2, 2), nn.Bilinear(2, 2, 2), nn.Conv1d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv3d(1, 1, 1),
                      nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.Tanh(),
                      nn.Sigmoid(), nn.GELU(), nn.SiLU(), nn.Identity(), nn.Flatten(), nn.Unflatten(1, (1, 1)),
                      nn.AvgPool1d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool1d(1), nn.AdaptiveAvgPool2d(1), nn.Softmax(-1),
                      nn.LogSoftmax(-1), nn.Dropout().eval()]
    kinked_modules = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(), nn.Hardtanh(), nn.MaxPool1d(2), nn.MaxPool2d(2),
                      nn.AdaptiveMaxPool1d(1), nn.AdaptiveMaxPool2d(1)]
    for m in smooth_modules:
        assert S.of_module(m).smoothness == Smoothness.SMOOTH, m
    for m in kinked_modules:
        assert S.of_module(m).smoothness == Smoothness.C0, m
    assert S.of_module(nn.ELU()).smoothness == Smoothness.C1
    assert S.of_module(nn.Softplus()).smoothness == Smoothness.DISCONTINUOUS
    smooth_functions = [operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.getitem, torch.add,
                        torch.sub, torch.mul, torch.div, torch.neg, torch.tanh, torch.sigmoid, torch.exp, torch.flatten, torch.cat,
                        torch.stack, torch.reshape, torch.transpose, torch.permute, torch.matmul, torch.softmax, torch.log_softmax,
                        F.linear, F.conv1d, F.conv2d, F.gelu, F.silu, F.layer_norm, F.group_norm, F.avg_pool1d, F.avg_pool2d,
                        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.softmax, F.log_softmax, F.scaled_dot_product_attention]
    for fn in smooth_functions:
        assert S.of_function(fn, ("x",)).smoothness == Smoothness.SMOOTH, fn
    for fn in (torch.relu, F.relu, F.leaky_relu, F.relu6, F.hardtanh, torch.abs, F.max_pool1d, F.max_pool2d):
        assert S.of_function(fn, ("x",)).smoothness == Smoothness.C0, fn
    assert S.of_function(torch.clamp, ("x", 0.0)).smoothness == Smoothness.C0
    for name in ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "unsqueeze", "squeeze", "add", "sub",
                 "mul", "div", "tanh", "sigmoid", "exp", "softmax", "log_softmax", "matmul", "t", "expand"):
        assert S.of_method(name, ("x",)).smoothness == Smoothness.SMOOTH, name
    assert S.of_method("pow", ("x", 2)).smoothness == Smoothness.SMOOTH
    for name in ("relu", "abs"):
        assert S.of_method(name, ("x",)).smoothness == Smoothness.C0, name
    assert S.of_method("clamp", ("x", 0.0)).smoothness == Smoothness.C0


def test_unpacked_but_unread_indices_are_not_a_step():
    class Unpack(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            v, i = torch.max(self.lin(x), 1)
            return v

    assert analyse(Unpack()).smoothness == Smoothness.C0


def test_sizes_of_varying_tensors_do_not_make_indexing_a_step():
    class Slice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            h = self.lin(x)
            return h[:, : h.size(1) - 1] + h.shape[0]

    assert analyse(Slice()).kind == PathKind.SMOOTH


# ----------------------------------------------------------------------------- kinds and conditions


def _mlp(act):
    return nn.Sequential(nn.Linear(2, 4), act, nn.Linear(4, 1))


@pytest.mark.parametrize(
    "act,kind,smoothness",
    [
        (nn.ELU(alpha=0.5), PathKind.PIECEWISE_SMOOTH, Smoothness.C0),
        (nn.ELU(), PathKind.PIECEWISE_SMOOTH, Smoothness.C1),
        (nn.Softplus(threshold=5), PathKind.UNKNOWN, Smoothness.DISCONTINUOUS),
        (nn.Softplus(), PathKind.UNKNOWN, Smoothness.DISCONTINUOUS),
        (nn.Softplus(threshold=INF), PathKind.SMOOTH, Smoothness.SMOOTH),
        (nn.Hardswish(), PathKind.PIECEWISE_SMOOTH, Smoothness.C0),
        (nn.GELU(approximate="tanh"), PathKind.SMOOTH, Smoothness.SMOOTH),
        (nn.CELU(), PathKind.PIECEWISE_SMOOTH, Smoothness.C1),
    ],
    ids=["elu0.5", "elu1", "softplus5", "softplus20", "softplus-inf", "hardswish", "gelu-tanh", "celu"],
)
def test_mlp_kinds(act, kind, smoothness):
    s = analyse(_mlp(act))
    assert s.kind == kind and s.smoothness == smoothness, s.reason
    if smoothness == Smoothness.DISCONTINUOUS:
        assert "threshold" in s.reason and "jumps" in s.reason


def _elu_problem(act, seed=0):
    torch.manual_seed(seed)
    model = _mlp(act).double()
    init = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    final = {k: v + torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(16, 2, dtype=D)
    return model, init, final, Dataset(x, torch.randn(16, 1, dtype=D), "mse", "elu")


@pytest.mark.parametrize("act", [nn.ELU(alpha=0.5), nn.ELU(), nn.Softplus(threshold=5)], ids=["elu0.5", "elu1", "softplus5"])
def test_no_c2_condition_is_applicable_on_elu_paths(act):
    from mli_theory.theory.hypotheses import C2, HYPOTHESES

    model, init, final, data = _elu_problem(act)
    r = check(model, init, final, data, alphas=11, dtype=D)
    assert r.conditions
    kind = analyse(model).kind
    for cond in r.conditions:
        needs_c2 = C2 in HYPOTHESES.get(cond.name, (C2,))
        if needs_c2 or kind == PathKind.UNKNOWN:
            assert cond.applicable is False and cond.holds is None, (cond.name, cond.reason)
    if kind == PathKind.PIECEWISE_SMOOTH:  # the C¹-piecewise results stay available
        assert any(cond.applicable for cond in r.conditions)


# ----------------------------------------------------------------------------- jet rules for these parameter values


_JET_CASES = [
    ("elu", lambda u: F.elu(u, 1.0)), ("elu", lambda u: F.elu(u, 0.5)), ("elu", lambda u: F.elu(u, -0.3)),
    ("softplus", lambda u: F.softplus(u, 1.0, 20.0)), ("softplus", lambda u: F.softplus(u, 2.0, 1.0)),
    ("softplus", lambda u: F.softplus(u, -1.0, 2.0)), ("softplus", lambda u: F.softplus(u, 1.0, INF)),
    ("leaky_relu", lambda u: F.leaky_relu(u, 2.0)), ("leaky_relu", lambda u: F.leaky_relu(u, -0.5)),
    ("hardtanh", lambda u: F.hardtanh(u, -2.0, 3.0)), ("hardtanh", lambda u: F.hardtanh(u, 0.5, 0.5)),
    ("relu6", F.relu6), ("clamp", lambda u: torch.clamp(u, 2.0, 1.0)), ("clamp", lambda u: torch.clamp(u, min=-1.0)),
    ("gelu", lambda u: F.gelu(u, approximate="tanh")), ("gelu", F.gelu), ("silu", F.silu), ("abs", torch.abs),
]


@pytest.mark.parametrize("name,fn", _JET_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(_JET_CASES)])
def test_jet_rules_are_the_derivatives_for_these_parameters(name, fn):
    """(h, h′, h″) of a rule = derivatives of t ↦ f(u + t u′ + ½t² u″) at generic points (off the breaks)."""
    from mli_theory.geometry.rules import JET, Jet

    u = torch.tensor([-4.3, -1.7, -0.45, 0.23, 1.3, 2.2, 4.1, 7.3, 21.0, -21.0], dtype=D)
    d1 = torch.linspace(0.5, 1.5, u.numel(), dtype=D)
    d2 = torch.linspace(-1.0, 1.0, u.numel(), dtype=D)
    gm = torch.fx.symbolic_trace(Shifted(lambda v, x: fn(v), u.numel()))
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.add)
    rule = JET.rule("function", node.target)
    assert rule is not None, name
    args = tuple(Jet(u, d1, d2) if isinstance(a, torch.fx.Node) else a for a in node.args)
    out = rule(*args, **node.kwargs)
    assert out is not NotImplemented

    def g(t):
        return fn(u + t * d1 + 0.5 * t * t * d2)

    h = 1e-4
    first = (g(h) - g(-h)) / (2 * h)
    second = (g(h) - 2 * g(0.0) + g(-h)) / (h * h)
    assert torch.allclose(out.v, g(0.0))
    zero = torch.zeros_like(u)
    assert torch.allclose(out.d1 if out.d1 is not None else zero, first, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.d2 if out.d2 is not None else zero, second, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- enclosure rules for these parameter values


def _encloses(act, b0, b1):
    """Enclose L and L′ of x ↦ act(w·x + b) (one neuron, w = 1) on the cell [0, 1] with b from b0 to b1."""
    from mli_theory.certify.partition import enclose, prepare
    from mli_theory.path import BNPolicy

    model = nn.Sequential(nn.Linear(1, 1), act).double()
    w = torch.ones(1, 1, dtype=D)
    init = {"0.weight": w, "0.bias": torch.tensor([b0], dtype=D)}
    final = {"0.weight": w, "0.bias": torch.tensor([b1], dtype=D)}
    line = make_line(model, init, final, dtype=D)
    data = Dataset(torch.zeros(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), "mse", "one")
    try:
        prob = prepare(line, data, BNPolicy.FROZEN)
        (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [0.0], [1.0]))
    except Exception:
        return None
    return (llo, lhi), (dlo, dhi)


@pytest.mark.parametrize(
    "act,b0,b1,ok",
    [
        (nn.Softplus(threshold=5.0), -1.0, 2.0, True),  # below the threshold on the whole cell: the smooth function
        (nn.Softplus(threshold=5.0), 4.0, 6.0, False),  # crosses the jump: declined, never enclosed as if smooth
        (nn.Softplus(threshold=INF), 4.0, 6.0, True),
        (nn.Softplus(beta=2.0), -1.0, 1.0, True),  # softplus(2x)/2, 2x below the threshold
        (nn.Softplus(beta=0.5, threshold=1.0), 1.0, 3.0, False),  # βx crosses the threshold at x = 2
        (nn.Softplus(beta=-1.0), -1.0, 1.0, False),  # β ≤ 0 declined
        (nn.ELU(alpha=0.5), -1.0, 1.0, False),  # no ELU enclosure rule (any alpha)
        (nn.GELU(approximate="tanh"), -1.0, 1.0, False),
        (nn.LeakyReLU(2.0), -1.0, 1.0, False),  # the Clarke set [slope, 1] assumes 0 ≤ slope ≤ 1
        (nn.LeakyReLU(0.1), -1.0, 1.0, True),
    ],
    ids=["softplus-below", "softplus-across", "softplus-inf", "softplus-beta2", "softplus-beta-across", "softplus-beta-negative", "elu", "gelu-tanh", "leaky2", "leaky0.1"],
)
def test_enclosure_rules_decline_where_their_maths_does_not_hold(act, b0, b1, ok):
    got = _encloses(act, b0, b1)
    assert (got is not None) == ok, got
    if got is None:
        return
    (llo, lhi), (dlo, dhi) = got
    # L(α) = act(b(α))² (MSE against 0) along the cell: the enclosures contain its values and slopes
    for alpha in (0.0, 0.3, 0.7, 1.0):
        b = b0 + alpha * (b1 - b0)
        z = act(torch.tensor([b], dtype=D))
        eps = 1e-6
        zp = act(torch.tensor([b + eps * (b1 - b0)], dtype=D))
        zm = act(torch.tensor([b - eps * (b1 - b0)], dtype=D))
        L, dL = float(z * z), float((zp * zp - zm * zm) / (2 * eps))
        assert llo - 1e-9 <= L <= lhi + 1e-9, (alpha, L, llo, lhi)
        assert dlo - 1e-5 <= dL <= dhi + 1e-5, (alpha, dL, dlo, dhi)


def test_enclosure_rules_exist_only_for_continuous_table_classes():
    """An activation with an enclosure rule is continuous in the table for the parameters it accepts;
    the one discontinuous entry with a rule (Softplus) declines wherever its range reaches the threshold."""
    from mli_theory.certify import enclosures as E

    for cls in E._MODULE_RULES:
        op = S.op_of("module", cls)
        assert op is not None, cls
    for cls, inst in [(nn.ReLU, nn.ReLU()), (nn.LeakyReLU, nn.LeakyReLU(0.2)), (nn.Tanh, nn.Tanh()), (nn.Sigmoid, nn.Sigmoid()),
                      (nn.GELU, nn.GELU())]:
        assert S.of_module(inst).smoothness >= Smoothness.C0, cls
    assert math.isclose(S.of_module(nn.Softplus(threshold=5.0)).breaks[0], 5.0)
