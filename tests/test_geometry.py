import math

import pytest
import torch
from cases import CASES, instantiate
from torch import nn

from mli_theory.inputs import Dataset
from mli_theory.exact import output_polynomial
from mli_theory.geometry import gauss_length, logit_linearity, path_jet, taylor_supported, turning_rate
from mli_theory.path import make_line


class Arc(nn.Module):
    """Outputs (cos θx, sin θx): as θ goes 0 → π the output path is a half circle."""

    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(self.t * x[:, 0]), torch.sin(self.t * x[:, 0])], -1)


def _arc_line(angle: float, device: str = "cpu"):
    t0 = {"t": torch.zeros(1, dtype=torch.float64)}
    t1 = {"t": torch.tensor([angle], dtype=torch.float64)}
    line = make_line(Arc(), t0, t1, device=device, dtype=torch.float64)
    data = Dataset(torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64), "mse", "arc").to(device, torch.float64)
    return line, data


def test_planar_arc_through_pi_has_gauss_length_pi(device):
    line, data = _arc_line(math.pi, device)
    jet = path_jet(line, data, torch.linspace(0, 1, 200, dtype=torch.float64))
    g = gauss_length(line, data, jet=jet)
    assert abs(g.mean - math.pi) < 1e-4
    assert abs(g.stacked - math.pi) < 1e-4
    assert not g.singular


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.5])
def test_arc_gauss_length_equals_its_angle(angle):
    line, data = _arc_line(angle)
    assert gauss_length(line, data).mean == pytest.approx(angle, abs=1e-4)


def test_straight_output_path_has_zero_curvature_and_gauss_length():
    model = nn.Sequential(nn.Linear(3, 2))
    g = torch.Generator().manual_seed(0)
    s0 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    s1 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    line = make_line(model, s0, s1, dtype=torch.float64)
    data = Dataset(torch.randn(5, 3, generator=g, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64), "mse", "s")
    jet = path_jet(line, data, torch.linspace(0, 1, 11, dtype=torch.float64))
    assert float(jet.d2z.abs().max()) == 0.0
    rate, _ = turning_rate(jet.dz, jet.d2z)
    assert float(rate.abs().max()) == 0.0
    assert gauss_length(line, data).mean == 0.0
    assert logit_linearity(jet.z, jet.alphas) == pytest.approx(0.0, abs=1e-28)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_derivatives_match_central_finite_differences(case, device):
    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, device=device, dtype=torch.float64)
    data = data.to(device, torch.float64)
    h = 1e-4
    alphas = [0.3, 0.71]
    pts = [a + o for a in alphas for o in (-h, 0.0, h)]
    bn = "frozen"  # statistics fixed along α, so z(α) is smooth
    jet = path_jet(line, data, alphas, bn=bn)
    z = path_jet(line, data, pts, bn=bn, method="nested_jvp").z.reshape(len(alphas), 3, *jet.z.shape[1:])
    fd1 = (z[:, 2] - z[:, 0]) / (2 * h)
    fd2 = (z[:, 2] - 2 * z[:, 1] + z[:, 0]) / h**2
    scale1 = float(jet.dz.abs().max()) + 1
    scale2 = float(jet.d2z.abs().max()) + 1
    assert float((fd1 - jet.dz).abs().max()) <= 1e-6 * scale1  # O(h²) truncation
    assert float((fd2 - jet.d2z).abs().max()) <= 1e-4 * scale2  # O(h²) truncation + rounding/h²


@pytest.mark.parametrize("case", [c for c in CASES if c["id"] != "convnet"], ids=lambda c: c["id"])
@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
def test_taylor_mode_equals_nested_jvp(case, bn, device):
    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, device=device, dtype=torch.float64)
    data = data.to(device, torch.float64)
    assert taylor_supported(line)
    a = [0.0, 0.25, 0.9, 1.0]
    fast = path_jet(line, data, a, bn=bn, method="taylor")
    ref = path_jet(line, data, a, bn=bn, method="nested_jvp")
    assert fast.off_curve is None
    names = ("z", "dz", "d2z")
    if ref.off_curve is not None:  # BatchNorm statistics that move: nested jvp holds them fixed
        assert line.has_bn and bn != "frozen"  # (tests/test_bn_geometry.py checks the Taylor mode)
        names = ("z",)
    for name in names:
        f, r = getattr(fast, name), getattr(ref, name)
        assert torch.allclose(f, r, rtol=1e-10, atol=1e-12 * (1 + float(r.abs().max()))), name


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_derivatives_match_the_exact_polynomial(depth):
    g = torch.Generator().manual_seed(depth)
    widths = [3] + [4] * (depth - 1) + [2]
    model = nn.Sequential(*[nn.Linear(a, b, bias=(depth == 1)) for a, b in zip(widths[:-1], widths[1:])])
    s0 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    s1 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    line = make_line(model, s0, s1, dtype=torch.float64)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    data = Dataset(x, torch.zeros(6, 2, dtype=torch.float64), "mse", "p")
    zp = output_polynomial(line.start, line.end, line.structure.linear, x)
    coeffs = [torch.tensor([[float(v) for v in c.entries()]], dtype=torch.float64).reshape(2, 6).T * 2.0**zp.exp for c in zp.coeffs]
    for a in (0.0, 0.4, 1.0):
        jet = path_jet(line, data, [a])
        z = sum(c * a**j for j, c in enumerate(coeffs))
        dz = sum(j * c * a ** (j - 1) for j, c in enumerate(coeffs) if j >= 1)
        d2z = sum(j * (j - 1) * c * a ** (j - 2) for j, c in enumerate(coeffs) if j >= 2) if len(coeffs) > 2 else torch.zeros_like(z)
        for got, want in ((jet.z[0], z), (jet.dz[0], dz), (jet.d2z[0], d2z)):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c["loss"] == "mse"], ids=lambda c: c["id"])
def test_second_derivative_of_the_loss_from_geometry_matches_autograd(case):
    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, dtype=torch.float64)
    n_k = data.y.numel()
    for a in (0.2, 0.8):
        jet = path_jet(line, data, [a], bn="frozen")
        r = jet.z[0] - data.y.reshape(jet.z[0].shape)
        geo = 2.0 / n_k * (float((jet.dz[0] ** 2).sum()) + float((jet.d2z[0] * r).sum()))
        fixed = {k: v for k, v in line.end.items() if k not in line.param_names}

        def loss_at(t):
            state = dict(fixed)
            for k in line.param_names:
                state[k] = (1 - t) * line.start[k] + t * line.end[k]
            out = torch.func.functional_call(line.shell, state, (data.x,))
            return torch.nn.functional.mse_loss(out, data.y)

        t = torch.tensor(a, dtype=torch.float64)
        second = torch.func.grad(torch.func.grad(loss_at))(t)
        assert geo == pytest.approx(float(second), rel=1e-10, abs=1e-12)


def test_a_reversal_of_direction_turns_the_tangent_by_pi_and_is_flagged():
    # scalar depth-2 network: z(α) = (α − 0.5)², so z′ changes sign at α = 0.5
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    w0 = {"0.weight": torch.tensor([[-0.5]], dtype=torch.float64), "1.weight": torch.tensor([[-0.5]], dtype=torch.float64)}
    w1 = {"0.weight": torch.tensor([[0.5]], dtype=torch.float64), "1.weight": torch.tensor([[0.5]], dtype=torch.float64)}
    line = make_line(model, w0, w1, dtype=torch.float64)
    data = Dataset(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), "mse", "rev")
    g = gauss_length(line, data)
    assert g.mean == pytest.approx(math.pi, rel=1e-12)
    assert g.singular


@pytest.mark.parametrize("case", [c for c in CASES if c["loss"] == "mse"], ids=lambda c: c["id"])
def test_describe_path_loss_derivatives_match_the_loss_curve(case):
    from mli_theory.geometry import describe_path
    from mli_theory.path import loss_curve

    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, dtype=torch.float64)
    a = torch.linspace(0, 1, 9, dtype=torch.float64)
    geo = describe_path(line, data, a, bn="frozen")
    curve = loss_curve(line, data, a.tolist(), bn="frozen")
    assert torch.allclose(geo.loss, torch.tensor(curve.losses, dtype=torch.float64), rtol=1e-12)
    h = 1e-5
    up = loss_curve(line, data, (a + h).tolist(), bn="frozen").losses
    dn = loss_curve(line, data, (a - h).tolist(), bn="frozen").losses
    fd = (torch.tensor(up, dtype=torch.float64) - torch.tensor(dn, dtype=torch.float64)) / (2 * h)
    assert torch.allclose(geo.dloss, fd.double(), rtol=1e-6, atol=1e-8)
    assert (geo.curvature >= 0).all() and (geo.speed >= 0).all()
