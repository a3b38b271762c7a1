"""Barriers (named definitions), weight matching, REPAIR and ``mli-theory barrier``.

References are closed forms (convex quadratic bowls, a polynomial double well) or slow,
obviously-correct re-evaluations with a plain ``nn.Module`` and ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from mli_theory.connectivity import (
    BARRIER_DEFINITIONS,
    apply_permutation,
    barrier,
    barriers_from_samples,
    permutation_groups,
    prepare_repair,
    repaired_state,
    weight_matching,
)
from mli_theory.errors import InputError
from mli_theory.inputs.data import Dataset
from mli_theory.path import make_line

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and far faster on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


def _reference_loss(model: nn.Module, state, data: Dataset) -> tuple[float, float | None]:
    """Slow, obvious: load the state into a float64 copy and compute torch's mean loss."""
    import copy

    m = copy.deepcopy(model).to(F64)
    m.load_state_dict({k: v.to(F64) if v.is_floating_point() else v for k, v in state.items()})
    m.eval()
    with torch.no_grad():
        out = m(data.x.to(F64))
    if data.loss == "mse":
        return float(nn.functional.mse_loss(out, data.y.to(F64))), None
    return float(nn.functional.cross_entropy(out, data.y)), float((out.argmax(1) != data.y).double().mean())


def _lerp(a, b, alpha):
    return {k: (1 - alpha) * a[k].to(F64) + alpha * b[k].to(F64) if a[k].is_floating_point() else b[k] for k in a}


# --------------------------------------------------------------------------- definitions from samples


def test_barriers_from_samples_by_hand():
    s = {0.0: (1.0, 0.2), 0.25: (2.5, 0.5), 0.5: (0.0, 0.1), 1.0: (3.0, 0.4)}
    b = barriers_from_samples(s)
    assert set(b) == set(BARRIER_DEFINITIONS)
    # chord at 0.25: 0.75*1 + 0.25*3 = 1.5 → 1.0; at 0.5: 2 → −2
    assert (b["loss_chord"].value, b["loss_chord"].alpha) == (1.0, 0.25)
    # mean 2.0: the highest loss is L(1) = 3 → 1.0 at alpha 1
    assert (b["loss_mean"].value, b["loss_mean"].alpha) == (1.0, 1.0)
    # error mean 0.3: max E 0.5 → 0.2 at 0.25
    assert b["error_mean"].alpha == 0.25 and b["error_mean"].value == pytest.approx(0.2, abs=1e-15)
    # |2 − L|: 1, 0.5, 2, 1 → alpha 0.5, value 2 − 0 = +2 (the path dips below the ends)
    assert (b["signed_taxonomy"].value, b["signed_taxonomy"].alpha) == (2.0, 0.5)
    with pytest.raises(InputError):
        barriers_from_samples({0.0: (1.0, None), 0.5: (1.0, None)})


# --------------------------------------------------------------------------- convex bowl


def _bowl(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.randn(30, 2, generator=g, dtype=F64)
    model = nn.Linear(3, 2).to(F64)
    # least-squares optimum θ* (the bowl's bottom)
    X1 = torch.cat([x, torch.ones(30, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(X1, y).solution  # (4, 2)
    star = {"weight": sol[:3].T.contiguous(), "bias": sol[3].contiguous()}
    return model, Dataset(x, y, "mse", "bowl"), star, g


@pytest.mark.parametrize("seed", [0, 1])
def test_convex_bowl_chord_barrier_is_zero_and_mean_barrier_is_half_the_gap(seed):
    model, data, star, g = _bowl(seed)
    a = {k: v + torch.randn(v.shape, generator=g, dtype=F64) for k, v in star.items()}
    b = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=F64) for k, v in star.items()}
    r = barrier(model, a, b, data, alphas=10, dtype=F64, alpha_tol=1e-6)
    l0, l1 = r.losses[0], r.losses[-1]
    assert abs(r.barriers["loss_chord"].value) <= 1e-12
    assert r.barriers["loss_mean"].value == pytest.approx(abs(l0 - l1) / 2, abs=1e-12)
    assert r.barriers["error_mean"].value is None and r.errors is None


def test_convex_bowl_symmetric_ends_every_barrier_zero_and_taxonomy_closed_form():
    model, data, star, g = _bowl(2)
    d = {k: torch.randn(v.shape, generator=g, dtype=F64) for k, v in star.items()}
    a = {k: star[k] - d[k] for k in star}
    b = {k: star[k] + d[k] for k in star}  # same level set: L(0) = L(1); midpoint is θ*
    r = barrier(model, a, b, data, alphas=10, dtype=F64, alpha_tol=1e-7)  # 0.5 is not on the grid
    assert abs(r.barriers["loss_chord"].value) <= 1e-12
    assert abs(r.barriers["loss_mean"].value) <= 1e-12
    l_star, _ = _reference_loss(model, star, data)
    mean = 0.5 * (r.losses[0] + r.losses[-1])
    tax = r.barriers["signed_taxonomy"]
    assert tax.value == pytest.approx(mean - l_star, abs=1e-10) and tax.value > 0
    assert abs(tax.alpha - 0.5) < 1e-5


# --------------------------------------------------------------------------- double well (closed form)


class DoubleWell(nn.Module):
    """f(x; w) = x·[w² − 1, w/4]; with x = 1, y = [0, t/4]: L(w) = ½[(w² − 1)² + (w − t)²/16]."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x * torch.cat([self.w * self.w - 1, 0.25 * self.w])


def _poly_sup(coeffs, extra=None):
    """Exact sup of a polynomial (numpy order) on [0, 1]: endpoints and real critical points."""
    p = np.poly1d(coeffs)
    cands = [0.0, 1.0] + [float(r.real) for r in p.deriv().r if abs(r.imag) < 1e-12 and 0 < r.real < 1]
    vals = [(p(c), c) for c in cands]
    return max(vals)


def test_double_well_known_barrier():
    t, wa, wb = 0.3, -1.05, 0.97
    model = DoubleWell()
    data = Dataset(torch.ones(1, 1, dtype=F64), torch.tensor([[0.0, 0.25 * t]], dtype=F64), "mse", "well")
    r = barrier(model, {"w": torch.tensor([wa], dtype=F64)}, {"w": torch.tensor([wb], dtype=F64)}, data, alphas=8, dtype=F64, alpha_tol=1e-8)
    w = np.poly1d([wb - wa, wa])  # w(α)
    L = 0.5 * ((w * w - 1) ** 2 + (w - t) ** 2 / 16)
    l0, l1 = L(0.0), L(1.0)
    chord = np.poly1d([l1 - l0, l0])
    v, a = _poly_sup((L - chord).coeffs)
    assert r.barriers["loss_chord"].value == pytest.approx(v, abs=1e-10)
    assert r.barriers["loss_chord"].alpha == pytest.approx(a, abs=1e-4)
    assert v > 0.4  # a real barrier (about ½)
    v, a = _poly_sup(L.coeffs)
    assert r.barriers["loss_mean"].value == pytest.approx(v - 0.5 * (l0 + l1), abs=1e-10)
    assert r.barriers["loss_mean"].alpha == pytest.approx(a, abs=1e-4)
    # signed: argmax |m − L| is the peak here, so the score is −(peak − m)
    assert r.barriers["signed_taxonomy"].value == pytest.approx(0.5 * (l0 + l1) - v, abs=1e-10)


def test_every_value_is_a_loss_evaluated_at_its_alpha():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    a = _clone(model.state_dict())
    b = {k: torch.randn_like(v) for k, v in a.items()}
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g), "ce", "toy")
    r = barrier(model, a, b, data, alphas=9, dtype=F64)
    l0, e0 = _reference_loss(model, a, data)
    l1, e1 = _reference_loss(model, b, data)
    for name, bv in r.barriers.items():
        la, ea = _reference_loss(model, _lerp(a, b, bv.alpha), data)
        expected = {
            "loss_chord": la - ((1 - bv.alpha) * l0 + bv.alpha * l1),
            "loss_mean": la - 0.5 * (l0 + l1),
            "error_mean": ea - 0.5 * (e0 + e1),
            "signed_taxonomy": 0.5 * (l0 + l1) - la,
        }[name]
        assert bv.value == pytest.approx(expected, abs=1e-10), name
    # the refined value is never below the grid maximum
    grid_err = max(r.errors) - 0.5 * (r.errors[0] + r.errors[-1])
    assert r.barriers["error_mean"].value >= grid_err - 1e-15
    grid_chord = max(l - ((1 - x) * r.losses[0] + x * r.losses[-1]) for x, l in zip(r.alphas, r.losses))
    assert r.barriers["loss_chord"].value >= grid_chord - 1e-15


def test_bad_options_are_one_line_input_errors():
    model = nn.Linear(2, 1)
    sd = model.state_dict()
    data = Dataset(torch.randn(5, 2), torch.randn(5, 1), "mse", "x")
    for kw, word in [({"alphas": 1}, "alphas"), ({"align": "foo"}, "align"), ({"bn": "magic"}, "bn"), ({"alpha_tol": 0.0}, "alpha_tol")]:
        with pytest.raises(InputError, match=word):
            barrier(model, sd, sd, data, **kw)


# --------------------------------------------------------------------------- permutations


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class TinyResNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block1 = Block(c)
        self.block2 = Block(c)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c * 4, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomise_bn(model: nn.Module, g: torch.Generator) -> dict:
    sd = _clone(model.state_dict())
    for k, v in sd.items():
        if k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            sd[k] = 0.3 * torch.randn(v.shape, generator=g)
        elif k.endswith("weight") and v.dim() == 1:
            sd[k] = torch.randn(v.shape, generator=g)
    return sd


def _shuffle(n: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation of n ≥ 2 items that is not the identity."""
    while True:
        p = torch.randperm(n, generator=g)
        if not torch.equal(p, torch.arange(n)):
            return p


def _outputs(model: nn.Module, sd, x):
    import copy

    m = copy.deepcopy(model).to(F64).eval()
    m.load_state_dict({k: v.to(F64) if v.is_floating_point() else v for k, v in sd.items()})
    with torch.no_grad():
        return m(x.to(F64))


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.BatchNorm1d(6), nn.GELU(), nn.Linear(6, 2)), (9, 5)),
    "resnet": (lambda: TinyResNet(), (6, 2, 4, 4)),
    "convnet": (lambda: nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(5, 3, 1), nn.Tanh(), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2)),
                (6, 2, 4, 4)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_permuted_model_computes_the_same_function(kind):
    build, shape = MODELS[kind]
    torch.manual_seed(0)
    model = build()
    g = torch.Generator().manual_seed(1)
    sd = _randomise_bn(model, g)
    groups = permutation_groups(model)
    perms = {gr.name: _shuffle(gr.size, g) for gr in groups}
    assert all(not torch.equal(p, torch.arange(p.numel())) for p in perms.values())
    permuted = apply_permutation(sd, groups, perms)
    x = torch.randn(*shape, generator=g, dtype=F64)
    y0, y1 = _outputs(model, sd, x), _outputs(model, permuted, x)
    assert (y0 - y1).abs().max().item() <= 1e-10
    assert any(not torch.equal(sd[k], permuted[k]) for k in sd)  # the weights did move


from hypothesis import given
from hypothesis import strategies as st


@given(
    widths=st.lists(st.integers(2, 9), min_size=1, max_size=3),
    bn=st.booleans(),
    act=st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU]),
    seed=st.integers(0, 2**16),
)
def test_random_mlps_permute_exactly_and_matching_is_sound(widths, bn, act, seed):
    torch.manual_seed(seed)
    dims = [3, *widths, 2]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += ([nn.BatchNorm1d(dims[i + 1])] if bn else []) + [act()]
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    sd = _randomise_bn(model, g)
    groups = permutation_groups(model)
    assert [gr.size for gr in groups] == widths
    perms = {gr.name: _shuffle(gr.size, g) for gr in groups}
    permuted = apply_permutation(sd, groups, perms)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    assert (_outputs(model, sd, x) - _outputs(model, permuted, x)).abs().max().item() <= 1e-10
    res = weight_matching(model, sd, permuted, seed=seed)
    # the matched B computes B's function; coordinate ascent never lowers the similarity, which is at
    # most ‖A‖² (Cauchy–Schwarz), with equality exactly when the permutation was undone
    assert (_outputs(model, res.state, x) - _outputs(model, permuted, x)).abs().max().item() <= 1e-10
    norm2 = sum(float((v.double() ** 2).sum()) for k, v in sd.items() if "running" not in k)
    assert res.similarity_before - 1e-9 <= res.similarity_after <= norm2 * (1 + 1e-12)
    recovered = all(torch.equal(res.state[k], sd[k]) for k in sd)
    assert recovered == (abs(res.similarity_after - norm2) <= 1e-9 * norm2)


def test_residual_stream_shares_one_permutation():
    groups = permutation_groups(TinyResNet())
    names = {g.name: g for g in groups}
    # stem, block1.conv2 and block2.conv2 write into one residual stream: one group; plus each block's inner conv1
    assert set(names) == {"stem", "block1.conv1", "block2.conv1"}
    stream = {k for k, _, _ in names["stem"].axes}
    assert {"block1.conv2.weight", "block2.conv2.weight", "block2.bn2.running_var", "fc.weight"} <= stream
    fc = [(k, ax, rep) for k, ax, rep in names["stem"].axes if k == "fc.weight"]
    assert fc == [("fc.weight", 1, 4)]  # flatten: 4 spatial positions per channel


def test_unsupported_structure_says_cannot_align():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.cat([h, h], 1))

    for m in (Cat(), nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 1))):
        with pytest.raises(InputError, match="^cannot align: "):
            permutation_groups(m)


def _trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).to(F64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=F64)
    y = torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, Dataset(x, y, "ce", "toy"), _clone(model.state_dict())


def test_weight_matching_recovers_a_hidden_unit_permutation_and_the_barrier_vanishes():
    model, data, a = _trained_mlp()
    groups = permutation_groups(model)
    g = torch.Generator().manual_seed(5)
    perms = {gr.name: _shuffle(gr.size, g) for gr in groups}
    b = apply_permutation(a, groups, perms)
    before = {k: v.clone() for k, v in b.items()}
    res = weight_matching(model, a, b)
    for gr in groups:  # b[i] = a[p[i]], so matching b onto a needs π = p⁻¹
        assert res.perms[gr.name] == tuple(torch.argsort(perms[gr.name]).tolist())
    assert all(torch.equal(res.state[k], a[k]) for k in a)
    assert all(torch.equal(before[k], b[k]) for k in b)  # the caller's tensors are untouched
    r = barrier(model, a, b, data, alphas=5, align="weights", dtype=F64, alpha_tol=1e-3)
    for name, v in r.barriers.items():
        assert abs(v.value) <= 1e-9, name
    assert r.before_alignment is not None and r.before_alignment.barriers["loss_chord"].value > 1e-3
    assert res.similarity_after >= res.similarity_before


def test_weight_matching_recovers_a_resnet_permutation():
    torch.manual_seed(1)
    model = TinyResNet(c=6)
    g = torch.Generator().manual_seed(2)
    a = _randomise_bn(model, g)
    groups = permutation_groups(model)
    perms = {gr.name: _shuffle(gr.size, g) for gr in groups}
    b = apply_permutation(a, groups, perms)
    res = weight_matching(model, a, b)
    assert all(torch.allclose(res.state[k].double(), a[k].double(), atol=0, rtol=0) for k in a)


# --------------------------------------------------------------------------- REPAIR


def _bn_mlp_pair():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    g = torch.Generator().manual_seed(4)
    a = _randomise_bn(model, g)
    b = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v) for k, v in a.items()}
    b = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in b.items()}
    data = Dataset(torch.randn(50, 4, generator=g, dtype=F64), torch.randn(50, 2, generator=g, dtype=F64), "mse", "toy")
    return model, a, b, data


def test_repair_of_a_convnet_without_batchnorm_keeps_the_ends_and_rescales_channels():
    from mli_theory.connectivity.repair import _moments

    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(6)
    a = _clone(model.state_dict())
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    data = Dataset(torch.randn(12, 2, 4, 4, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64), "mse", "img")
    line = make_line(model, a, b, dtype=F64)
    ctx = prepare_repair(line, data, batch_size=5)  # batches do not change the statistics
    assert ctx.targets == (("0", "affine"), ("2", "affine"))
    for alpha, end in ((0.0, a), (1.0, b)):
        assert (_outputs(model, end, data.x) - _outputs(model, repaired_state(ctx, alpha), data.x)).abs().max().item() <= 1e-10
    st = repaired_state(ctx, 0.7)
    got = _moments(line, st, data, None, ["0", "2"], use_input=False)
    for n in ("0", "2"):
        sd = 0.3 * ctx.stats_a[n][1] + 0.7 * ctx.stats_b[n][1]
        assert torch.allclose(got[n][1].sqrt(), sd, atol=1e-8)


def test_repair_is_identity_at_the_ends_and_hits_the_interpolated_statistics():
    from mli_theory.connectivity.repair import _moments

    model, a, b, data = _bn_mlp_pair()
    line = make_line(model, a, b, dtype=F64)
    ctx = prepare_repair(line, data)
    assert [k for _, k in ctx.targets] == ["bn", "affine"]  # BN after layer 0; layer 3 (not the output layer 5)
    for alpha, end in ((0.0, a), (1.0, b)):
        y_end = _outputs(model, end, data.x)
        y_rep = _outputs(model, repaired_state(ctx, alpha), data.x)
        assert (y_end - y_rep).abs().max().item() <= 1e-10
    alpha = 0.4
    st = repaired_state(ctx, alpha)
    names = [n for n, _ in ctx.targets]
    got = _moments(line, st, data, None, names, use_input=False)
    for n in names:
        mu = (1 - alpha) * ctx.stats_a[n][0] + alpha * ctx.stats_b[n][0]
        sd = (1 - alpha) * ctx.stats_a[n][1] + alpha * ctx.stats_b[n][1]
        assert torch.allclose(got[n][0], mu, atol=1e-9) and torch.allclose(got[n][1].sqrt(), sd, atol=1e-7)
    before = _clone(a)
    r = barrier(model, a, b, data, alphas=3, bn="repair", dtype=F64, alpha_tol=0.05)
    assert r.bn == "repair" and all(torch.equal(before[k], a[k]) for k in a)


# --------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("barrier")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    torch.save(m.state_dict(), d / "a.pt")
    torch.save({k: torch.randn_like(v) for k, v in m.state_dict().items()}, d / "b.pt")
    torch.save(nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3)).state_dict(), d / "other.pt")
    rng = np.random.default_rng(0)
    np.savez(d / "ce.npz", x=rng.normal(size=(30, 4)), y=rng.integers(0, 3, 30))
    np.savez(d / "mse.npz", x=rng.normal(size=(30, 4)), y=rng.normal(size=(30, 3)))
    return d


def _base(d, data="ce.npz"):
    return ["barrier", "--arch", "mlp:4-6-3", "--a", str(d / "a.pt"), "--b", str(d / "b.pt"), "--data", str(d / data), "--quiet"]


def test_cli_json_contract(ckpts):
    r = cli(*_base(ckpts), "--loss", "ce", "--alphas", "7", "--alpha-tol", "0.01", "--json", "--plot", str(ckpts / "b.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"alphas", "losses", "errors", "barriers", "warnings"} <= set(out)
    assert "barriers_before_alignment" not in out
    assert set(out["barriers"]) == set(BARRIER_DEFINITIONS)
    assert all(set(v) == {"value", "alpha"} for v in out["barriers"].values())
    assert len(out["alphas"]) == len(out["losses"]) == len(out["errors"]) == 7
    assert all(w.startswith("error_mean is the largest") for w in out["warnings"]) and (ckpts / "b.png").stat().st_size > 0
    r = cli(*_base(ckpts, "mse.npz"), "--alphas", "5", "--alpha-tol", "0.05", "--json", "--align", "weights", "--bn", "repair")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] is None and out["barriers"]["error_mean"] == {"value": None, "alpha": None}
    assert set(out["barriers_before_alignment"]) == set(BARRIER_DEFINITIONS)


def test_cli_plot_failure_is_a_warning(ckpts, monkeypatch):
    import mli_theory.connectivity as conn

    def boom(*a, **k):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(conn, "plot_barrier", boom)
    r = cli(*_base(ckpts), "--loss", "ce", "--alphas", "3", "--alpha-tol", "0.1", "--json", "--plot", str(ckpts / "c.png"))
    assert r.returncode == 0
    assert any("plot" in w and "no canvas" in w for w in json.loads(r.stdout)["warnings"])


@pytest.mark.parametrize(
    "change, flag",
    [
        (["--alphas", "1"], "--alphas"),
        (["--align", "foo"], "--align"),
        (["--bn", "magic"], "--bn"),
        ("drop-b", "--b"),
        ("other-b", "b checkpoint"),
    ],
)
def test_cli_bad_input_exit_2_one_line(ckpts, change, flag):
    args = _base(ckpts)
    if change == "drop-b":
        i = args.index("--b")
        del args[i : i + 2]
    elif change == "other-b":
        args[args.index("--b") + 1] = str(ckpts / "other.pt")
    else:
        args += change
    r = cli(*args, "--json")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mli-theory: error:") and flag in lines[0]


def test_cli_help_states_every_definition():
    r = cli("barrier", "--help")
    assert r.returncode == 0
    for name in BARRIER_DEFINITIONS:
        assert name in r.stdout
    assert "repair" in r.stdout and "sup_a" in r.stdout
