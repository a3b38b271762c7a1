"""Hypothesis strategies that draw whole MLI problems (needs ``pip install mli-theory[test]``).

Each strategy yields an :class:`MLIProblem`: a model, two endpoint state dicts and a data set,
all float64 on the CPU, that :func:`mli_theory.check` and :func:`mli_theory.testing.assert_mli`
accept directly. Everything is drawn from small integers (depth, widths, example count, a seed)
and a few fixed scales, so hypothesis shrinks a counterexample towards few layers, few examples,
small seeds and simple numbers.

>>> from hypothesis import given, settings
>>> @settings(max_examples=3, deadline=None)
... @given(deep_linear_problems(max_depth=2))
... def test_it(p):
...     assert len(p.model) <= 2
>>> test_it()

Two strategies promise a verdict, and keep it: every problem :func:`overshoot_problems` draws is a
*proven* MLI violation and every problem :func:`mli_problems` draws is *proven* MLI. Each is
certified while it is drawn, by exactly the check that :func:`~mli_theory.testing.assert_not_mli` /
:func:`~mli_theory.testing.assert_mli` run with their defaults (float64, ``tol=0``, the exact
polynomial decision of these deep linear MSE problems, validated against the measured curve),
and the verdict is also visible on that check's 50-point grid (so ``certify=False`` agrees). A
drawn problem that misses its verdict is repaired deterministically (the overshoot doubled; θT
pulled halfway back towards θ0), so the drawn integers still describe it and shrinking stays
meaningful; the rare problem no repair fixes is rejected (``assume``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from ..inputs.data import Dataset

Endpoint = Literal["random", "trained", "overshoot"]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


@dataclass(frozen=True)
class MLIProblem:
    """A network, θ0, θT and training data: one MLI question.

    Attributes:
        model: the architecture (its own weights are θ0).
        init: θ0 state dict.
        final: θT state dict.
        data: training data (float64).
        label: a readable description (shown in failure messages).
        certificate: the :class:`~mli_theory.results.Certificate` the problem was drawn with, for
            the strategies that promise a verdict (:func:`overshoot_problems`,
            :func:`mli_problems`); None otherwise.
    """

    model: nn.Module
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    data: Dataset
    label: str
    certificate: Any = field(default=None, compare=False, repr=False)


def _loss(model: nn.Module, data: Dataset) -> torch.Tensor:
    out = model(data.x)
    if data.loss == "mse":
        return ((out - data.y) ** 2).mean()
    return nn.functional.cross_entropy(out, data.y)


def _gradient_descent(model: nn.Module, data: Dataset, steps: int, lr: float) -> dict[str, torch.Tensor]:
    """Full-batch gradient descent from the model's weights; the step halves until it stays finite."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(30):
        model.load_state_dict(init)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            loss = _loss(model, data)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        if all(bool(torch.isfinite(v).all()) for v in model.state_dict().values()):
            break
        lr /= 2
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(init)
    return final


def build_problem(
    widths: list[int],
    n: int,
    seed: int,
    init_scale: float = 1.0,
    endpoint: Endpoint = "random",
    *,
    bias: bool = False,
    activation: str | None = None,
    batchnorm: bool = False,
    loss: Literal["mse", "ce"] = "mse",
    overshoot: float = 0.5,
    steps: int = 60,
) -> MLIProblem:
    """One problem, deterministic in its arguments.

    Args:
        widths: layer widths D0..DL (deep linear without ``activation``, else an MLP).
        n: number of examples.
        seed: seeds weights, data and noise.
        init_scale: θ0 = init_scale · N(0, 1/fan_in).
        endpoint: ``random`` (θT = θ0 + N(0, 1)), ``trained`` (``steps`` of full-batch gradient
            descent) or ``overshoot`` (θT = θ* + overshoot·(θ* − θ0) with θ* from gradient descent:
            the final point lies past the minimum along the line when gradient descent came close
            enough to it, usually an MLI violation but not always (a θ* short of the minimum can
            leave the whole segment downhill); :func:`planted_violation` builds one that is proven).
        bias: biases in every layer (always on for MLPs).
        activation: None (deep linear) or one of :data:`ACTIVATIONS`.
        batchnorm: BatchNorm1d after each hidden layer (MLPs only).
        loss: ``mse`` (targets from a linear teacher plus noise) or ``ce`` (teacher's argmax).
    """
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias or activation is not None))
        if activation is not None and i < len(widths) - 2:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[activation]())
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * init_scale / max(1, p.shape[-1]) ** 0.5)
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    teacher = torch.randn(widths[0], widths[-1], generator=g, dtype=torch.float64)
    z = x @ teacher + 0.1 * torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    data = Dataset(x, z, "mse", "synthetic") if loss == "mse" else Dataset(x, z.argmax(1), "ce", "synthetic")
    model.eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if endpoint == "random":
        final = {k: (v + torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v) for k, v in init.items()}
    else:
        final = _gradient_descent(model, data, steps, lr=0.05)
        if endpoint == "overshoot":
            final = {k: (v + overshoot * (v - init[k]) if v.is_floating_point() else v) for k, v in final.items()}
    kind = f"mlp:{activation}{':bn' if batchnorm else ''}" if activation else "deep_linear"
    label = f"{kind} {'-'.join(map(str, widths))}, n={n}, seed={seed}, scale={init_scale}, {endpoint}, {loss}"
    return MLIProblem(model, init, final, data, label)


@st.composite
def deep_linear_problems(draw, max_depth: int = 5, max_width: int = 6, max_n: int = 16, endpoints=("random", "trained")) -> MLIProblem:
    """Deep linear networks (exactly decidable): depth 1–max_depth, widths 1–max_width, 1–max_n examples."""
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    endpoint = draw(st.sampled_from(list(endpoints)))
    bias = draw(st.booleans()) if depth == 1 else False
    return build_problem(widths, n, seed, scale, endpoint, bias=bias)


@st.composite
def mlp_problems(
    draw, max_depth: int = 3, max_width: int = 8, max_n: int = 16, activations=tuple(ACTIVATIONS), batchnorm: bool | None = None,
    losses=("mse",), endpoints=("random", "trained", "overshoot"),
) -> MLIProblem:
    """MLPs with a drawn activation (and optional BatchNorm), regression or classification data."""
    depth = draw(st.integers(2, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    loss = draw(st.sampled_from(list(losses)))
    if loss == "ce":
        widths[-1] = max(widths[-1], 2)
    n = draw(st.integers(2, max_n))
    bn = draw(st.booleans()) if batchnorm is None else batchnorm
    return build_problem(
        widths, n, draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.5, 1.0, 2.0])),
        draw(st.sampled_from(list(endpoints))), activation=draw(st.sampled_from(list(activations))), batchnorm=bn, loss=loss,
    )


# the verdicts the promising strategies keep are those of the users' assertions with their defaults
OVERSHOOT_DOUBLINGS = 10  # overshoot ε, 2ε, 4ε, … up to 2**10·ε before a problem is rejected
MLI_HALVINGS = 10  # θT = θ0 + 2**−k·(θ* − θ0), k = 0 … 10, before a problem is rejected


def certified(problem: MLIProblem, tol: float = 0.0):
    """The :class:`~mli_theory.results.CheckResult` that :func:`~mli_theory.testing.assert_mli` and
    :func:`~mli_theory.testing.assert_not_mli` compute for ``problem`` with their defaults (float64,
    certified, no geometry, 50 α): its ``certificate`` and ``monotone_on_grid`` decide both."""
    from ..check import check

    return check(problem.model, problem.init, problem.final, problem.data, tol=tol, certify=True, dtype=torch.float64, geometry=False)


def _with_final(base: MLIProblem, final: dict[str, torch.Tensor], label: str, certificate: Any = None) -> MLIProblem:
    return MLIProblem(base.model, base.init, final, base.data, label, certificate)


def planted_violation(
    widths: list[int], n: int, seed: int, overshoot: float = 0.5, *, init_scale: float = 1.0, bias: bool = False,
    doublings: int = OVERSHOOT_DOUBLINGS,
) -> MLIProblem | None:
    """A deep linear MSE problem whose θT lies past the minimum, with a *proven* MLI violation.

    θ* is gradient descent's endpoint (as :func:`build_problem` ``endpoint="trained"``) and
    θT = θ* + ε·(θ* − θ0) with ε = ``overshoot``·2^k for the smallest k ≤ ``doublings`` at which
    :func:`certified` finds a ``non_monotone`` certificate *and* a rise on its grid (k = 0 gives
    exactly ``build_problem(..., endpoint="overshoot", overshoot=overshoot)``). Doubling works
    because the loss along the ray θ0 + s·(θ* − θ0) is a polynomial that grows without bound
    unless the outputs do not move at all: θ* short of the line's minimum (too few steps of
    gradient descent) only needs a longer overshoot.

    Returns:
        The problem (its ``certificate`` is the proof, its label names ε), or None when no ε up to
        ``overshoot``·2^``doublings`` is proven (θ* = θ0 in the outputs, or a budget ran out).
    """
    base = build_problem(widths, n, seed, init_scale, "trained", bias=bias)
    head = base.label.rsplit(", trained, ", 1)[0]
    for k in range(doublings + 1):
        eps = overshoot * 2**k
        final = {key: (v + eps * (v - base.init[key]) if v.is_floating_point() else v) for key, v in base.final.items()}
        label = f"{head}, overshoot ε={eps:g}" + (f" (drawn {overshoot:g}, doubled {k}×)" if k else "") + ", mse"
        r = certified(_with_final(base, final, label))
        if r.certificate.status == "non_monotone" and not r.monotone_on_grid:
            return _with_final(base, final, label, r.certificate)
    return None


def proven_mli(
    widths: list[int], n: int, seed: int, *, init_scale: float = 1.0, bias: bool = False, halvings: int = MLI_HALVINGS,
) -> MLIProblem | None:
    """A deep linear MSE problem with *proven* MLI: θT on the way from θ0 to gradient descent's θ*.

    θT = θ0 + 2^−k·(θ* − θ0) for the smallest k ≤ ``halvings`` at which :func:`certified` finds a
    ``monotone`` certificate at ``tol=0`` *and* no rise on its grid (k = 0 is θ* itself, exactly
    :func:`build_problem`'s ``endpoint="trained"``). Halving works whenever θ* − θ0 is a descent
    direction at θ0 (L′(0) < 0): near α = 0 the loss then falls.

    Returns:
        The problem (its ``certificate`` is the proof), or None when no such θT was proven.
    """
    base = build_problem(widths, n, seed, init_scale, "trained", bias=bias)
    head = base.label.rsplit(", trained, ", 1)[0]
    for k in range(halvings + 1):
        if k == 0:
            final, label = base.final, base.label
        else:
            t = 2.0**-k
            final = {key: (base.init[key] + t * (v - base.init[key]) if v.is_floating_point() else v) for key, v in base.final.items()}
            label = f"{head}, trained then pulled back to θ0 + 2^-{k}·(θ* − θ0), mse"
        r = certified(_with_final(base, final, label))
        if r.certificate.status == "monotone" and r.monotone_on_grid:
            return _with_final(base, final, label, r.certificate)
    return None


@st.composite
def overshoot_problems(draw, max_depth: int = 3, max_width: int = 4, max_n: int = 8) -> MLIProblem:
    """Deep linear networks whose θT is planted past the minimum, θT = θ* + ε(θ* − θ0): every drawn
    problem is a *proven* MLI violation (:func:`planted_violation`; ``certificate`` holds the proof).

    ε is drawn from {1/8, 1/4, 1/2, 1} and doubled until the violation is proven; the few problems
    no doubling fixes are rejected (``assume``). Shrinks towards one scalar layer, one example,
    seed 0.
    """
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    eps = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
    problem = planted_violation(widths, draw(st.integers(1, max_n)), draw(st.integers(0, 2**16)), eps)
    assume(problem is not None)
    return problem


@st.composite
def mli_problems(draw, max_depth: int = 3, max_width: int = 4, max_n: int = 8) -> MLIProblem:
    """Deep linear networks with θT on the way to gradient descent's endpoint: every drawn problem
    is *proven* MLI (:func:`proven_mli`; ``certificate`` holds the proof).

    Depth 1–``max_depth`` (a bias is drawn for one layer), widths 1–``max_width``, 1–``max_n``
    examples, θ0 scale 0.1, 1 or 3; θT is gradient descent's endpoint, pulled back towards θ0
    until MLI is proven; the few problems none of that fixes are rejected (``assume``).
    """
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1.0, 0.1, 3.0]))
    bias = draw(st.booleans()) if depth == 1 else False
    problem = proven_mli(widths, n, seed, init_scale=scale, bias=bias)
    assume(problem is not None)
    return problem


def rises() -> st.SearchStrategy[list[float]]:
    """Sequences of finite floats (sampled loss curves) for max-rise properties."""
    return st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=60)


# ==================================================================================================
# BEGIN adversarial feature models (append-only block, written for tests/test_differential_search.py)
#
# Small MLPs whose first hidden layer carries "costume" features that a certifier reading the model
# as a plain stack of layers gets wrong: floating buffers that move between θ0 and θT, branches taken
# in train mode only, computation across the examples of a batch, random operations in the
# train-mode BatchNorm re-estimation pass, and parametrised weights. The loss curve ``check`` measures
# must be certified as it is measured, costume and all.
# ==================================================================================================

from torch.nn import functional as _F  # noqa: E402

FEATURES: tuple[str, ...] = ("buffer", "branch", "mix", "dropout", "weight_norm", "batchnorm")
MIX_FORMS: tuple[str, ...] = ("mean0", "flat")
FEATURE_ENDPOINTS: tuple[str, ...] = ("near", "random", "teacher_end", "near_teacher_end", "overshoot", "teacher_start", "still")


class FeatureNet(nn.Module):
    """Linear → [features] → act → (Linear → act)* → Linear, features on the first hidden layer.

    Features (any subset of :data:`FEATURES`), applied in this order after the first Linear:

    * ``weight_norm``: the first Linear is reparametrised (``torch.nn.utils.parametrizations.weight_norm``,
      or the hook-based ``torch.nn.utils.weight_norm`` with ``legacy_weight_norm=True``);
    * ``buffer``: multiplied by a registered floating buffer ``scale`` (not a BatchNorm statistic);
    * ``branch``: ``if self.training: h = branch_scale·h + branch_shift`` (only the train-mode pass
      of ``bn="recompute"`` takes it);
    * ``dropout``: ``F.dropout(h, p, self.training)`` (random in the train-mode pass);
    * ``batchnorm``: ``BatchNorm1d``;
    * ``mix``: centring across the batch, ``h − h.mean(0)`` (``mix_form="mean0"``) or minus the mean
      of every entry of the batch (``"flat"``), on the hidden layer or on the output (``mix_at``).

    >>> net = FeatureNet([2, 3, 1], features=("buffer", "batchnorm"))
    >>> sorted(k for k in net.state_dict() if not k.startswith("linears"))
    ['bn.bias', 'bn.num_batches_tracked', 'bn.running_mean', 'bn.running_var', 'bn.weight', 'scale']
    """

    def __init__(
        self,
        widths: list[int],
        activation: str = "tanh",
        features=(),
        *,
        mix_form: str = "mean0",
        mix_at: str = "hidden",
        p: float = 0.3,
        branch_scale: float = 3.0,
        branch_shift: float = 0.5,
        legacy_weight_norm: bool = False,
    ):
        super().__init__()
        unknown = set(features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}")
        self.features = frozenset(features)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if "weight_norm" in self.features:
            if legacy_weight_norm:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.linears[0] = torch.nn.utils.weight_norm(self.linears[0])
            else:
                self.linears[0] = torch.nn.utils.parametrizations.weight_norm(self.linears[0])
        h = widths[1]
        if "buffer" in self.features:
            self.register_buffer("scale", torch.ones(h))
        if "batchnorm" in self.features:
            self.bn = nn.BatchNorm1d(h)
        self.act = ACTIVATIONS[activation]()
        self.mix_form, self.mix_at, self.p = mix_form, mix_at, p
        self.branch_scale, self.branch_shift = branch_scale, branch_shift
        self._buffer = "buffer" in self.features
        self._branch = "branch" in self.features
        self._dropout = "dropout" in self.features
        self._bn = "batchnorm" in self.features
        self._mix = "mix" in self.features

    @property
    def random_in_train_pass(self) -> bool:
        """Whether ``bn="recompute"`` draws random numbers (dropout active before BatchNorm's pass)."""
        return self._dropout and self._bn

    def _centre(self, t: torch.Tensor) -> torch.Tensor:
        if self.mix_form == "mean0":
            return t - t.mean(0, keepdim=True)
        return t - t.reshape(1, -1).mean(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linears[0](x)
        if self._buffer:
            h = h * self.scale
        if self._branch and self.training:
            h = h * self.branch_scale + self.branch_shift
        if self._dropout:
            h = _F.dropout(h, self.p, self.training)
        if self._bn:
            h = self.bn(h)
        if self._mix and self.mix_at == "hidden":
            h = self._centre(h)
        h = self.act(h)
        for lin in self.linears[1:-1]:
            h = self.act(lin(h))
        out = self.linears[-1](h)
        if self._mix and self.mix_at == "output":
            out = self._centre(out)
        return out


def _measured_outputs(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` at ``state`` as the default curve measures them: with BatchNorm, running
    statistics reset and re-estimated by one no-grad train-mode pass over all of ``x`` (cumulative
    average), then eval mode; without, eval mode. Used for targets only."""
    from torch.func import functional_call

    bns = [(f"{n}." if n else "", m) for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    state = dict(state)
    saved = [(m, m.momentum) for _, m in bns]
    was = model.training
    try:
        with torch.no_grad():
            if bns:
                for prefix, m in bns:
                    m.momentum = None
                    state[prefix + "running_mean"] = torch.zeros_like(state[prefix + "running_mean"])
                    state[prefix + "running_var"] = torch.ones_like(state[prefix + "running_var"])
                    state[prefix + "num_batches_tracked"] = torch.zeros_like(state[prefix + "num_batches_tracked"])
                model.train()
                functional_call(model, state, (x,))
            model.eval()
            return functional_call(model, state, (x,))
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)


def build_feature_problem(
    widths: list[int],
    features,
    n: int,
    seed: int,
    *,
    activation: str = "tanh",
    loss: Literal["mse", "ce"] = "mse",
    init_scale: float = 1.0,
    endpoint: str = "random",
    buffer_motion: str = "flip",
    alpha_star: float = 0.5,
    mix_form: str = "mean0",
    mix_at: str = "hidden",
    p: float = 0.3,
    legacy_weight_norm: bool = False,
) -> MLIProblem:
    """One :class:`FeatureNet` problem, deterministic in its arguments (float64).

    Args:
        widths: D0, hidden widths…, outputs.
        features: a subset of :data:`FEATURES`.
        n: number of examples.
        seed: seeds weights, buffers, data and the endpoint's step.
        endpoint: ``near`` (θT = θ0 + 0.05·N(0, 1), linear-teacher targets), ``random``
            (θT = θ0 + N(0, 1), linear-teacher targets), ``teacher_end`` / ``near_teacher_end`` (a
            far / near θT, targets = the outputs at θT as the default curve measures them: BatchNorm
            statistics re-estimated on all the data) or ``overshoot`` (targets = those outputs at
            θ(``alpha_star``): the loss tends to fall towards α* and rise after it, a planted violation),
            ``teacher_start`` (a near θT, targets = the outputs at θ0: the loss starts at 0) or ``still``
            (every parameter the same at both ends, only buffers move; targets = the outputs at θ0).
        buffer_motion: the ``scale`` buffer at θT: ``flip`` (−θ0's), ``perturb`` (θ0's + 0.5·N(0, 1))
            or ``same``. BatchNorm running statistics get fresh values at θT.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    model = FeatureNet(
        widths, activation, features, mix_form=mix_form, mix_at=mix_at, p=p, legacy_weight_norm=legacy_weight_norm
    ).double()
    with torch.no_grad():
        for _, prm in model.named_parameters():
            fan = prm.shape[-1] if prm.dim() > 1 else 1
            prm.copy_(randn(*prm.shape) * init_scale / max(1, fan) ** 0.5)
    model.eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    h = widths[1]
    if model._buffer:
        init["scale"] = (0.5 + torch.rand(h, generator=g, dtype=torch.float64)) * torch.sign(randn(h) + 1e-3)
    if model._bn:
        init["bn.running_mean"] = 0.3 * randn(h)
        init["bn.running_var"] = 0.5 + torch.rand(h, generator=g, dtype=torch.float64)
    step = {"near": 0.05, "near_teacher_end": 0.05, "teacher_start": 0.05, "still": 0.0}.get(endpoint, 1.0)
    params = {k for k, _ in model.named_parameters()}
    final: dict[str, torch.Tensor] = {}
    for k, v in init.items():
        if not v.is_floating_point():
            final[k] = torch.full_like(v, 10)
        elif k in params:
            final[k] = v + step * randn(*v.shape)
        elif k == "scale":
            final[k] = -v if buffer_motion == "flip" else v + 0.5 * randn(*v.shape) if buffer_motion == "perturb" else v.clone()
        elif k.endswith("running_var"):
            final[k] = 0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64)
        else:
            final[k] = 0.3 * randn(*v.shape)
    x = randn(n, widths[0])
    if endpoint in ("teacher_end", "near_teacher_end", "overshoot", "teacher_start", "still"):
        a = alpha_star if endpoint == "overshoot" else 0.0 if endpoint in ("teacher_start", "still") else 1.0
        mid = {k: ((1 - a) * v + a * final[k]) if v.is_floating_point() else final[k] for k, v in init.items()}
        z = _measured_outputs(model, mid, x).detach().clone()
    else:
        z = x @ randn(widths[0], widths[-1]) + 0.1 * randn(n, widths[-1])
    data = Dataset(x, z, "mse", "synthetic") if loss == "mse" else Dataset(x, z.argmax(1), "ce", "synthetic")
    feats = ",".join(sorted(model.features)) or "plain"
    extra = f" mix={mix_form}@{mix_at}" if model._mix else ""
    label = (
        f"FeatureNet[{feats}]{extra} {'-'.join(map(str, widths))} {activation}, n={n}, seed={seed}, scale={init_scale}, "
        f"{endpoint}{f'@{alpha_star}' if endpoint == 'overshoot' else ''}, buffer {buffer_motion}, {loss}"
    )
    return MLIProblem(model, init, final, data, label)


@st.composite
def feature_problems(
    draw,
    features=FEATURES,
    max_width: int = 6,
    max_n: int = 16,
    losses=("mse", "ce"),
    endpoints=FEATURE_ENDPOINTS,
    legacy_weight_norm: bool = False,
) -> MLIProblem:
    """:class:`FeatureNet` problems: input dim 2–4, 1–2 hidden layers of width 2–``max_width``,
    tanh or ReLU, a random subset of ``features``, 4–``max_n`` examples, MSE or cross-entropy.
    Shrinks towards no features, one hidden layer, few examples and small seeds."""
    # each feature on with probability 1/2, weight_norm with 1/4 (a model the certifier refuses
    # outright says less); a list of booleans shrinks towards no features
    chosen = {f for f in features if draw(st.integers(0, 3)) >= (3 if f == "weight_norm" else 2)}
    loss = draw(st.sampled_from(list(losses)))
    depth = draw(st.integers(1, 2))
    d = draw(st.integers(2, 4))
    hidden = [draw(st.integers(2, max_width)) for _ in range(depth)]
    k = draw(st.integers(2, 3)) if loss == "ce" else draw(st.integers(1, 3))
    return build_feature_problem(
        [d, *hidden, k],
        chosen,
        draw(st.integers(4, max_n)),
        draw(st.integers(0, 2**16)),
        activation=draw(st.sampled_from(["tanh", "relu"])),
        loss=loss,
        init_scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        endpoint=draw(st.sampled_from(list(endpoints))),
        buffer_motion=draw(st.sampled_from(["flip", "perturb", "flip", "same"])),
        alpha_star=draw(st.sampled_from([0.25, 0.5, 0.75])),
        mix_form=draw(st.sampled_from(["flat", "flat", "mean0"])),
        mix_at=draw(st.sampled_from(["hidden", "output"])),
        p=draw(st.sampled_from([0.2, 0.5])),
        legacy_weight_norm=legacy_weight_norm,
    )


# END adversarial feature models
# ==================================================================================================
