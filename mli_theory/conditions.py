"""The MSE sufficient conditions for MLI, evaluated on a concrete path.

Notation (derived and proved in :mod:`mli_theory.symbolic` and ``proofs/``): z(α) ∈ R^{n·k} the
stacked outputs, r = z(1) − y the final residual, L(α) = c·‖z(α) − y‖² with c = 1/(n·k) > 0, so
L′(α) = 2c·⟨z′(α), z(α) − y⟩. Each condition below implies L′ ≤ 0 on [0, 1]:

* ``zero_residual_gauss``: r = 0, z′ ≠ 0 on [0, 1] and Gauss length G < π/2 (stacked outputs).
* ``zero_residual_gauss_per_example``: the same for every example's own output path.
* ``acute_tangents``: ⟨z′(α), z′(s)⟩ ≥ 0 for all α, s and ⟨z′(α), r⟩ ≤ 0 for all α.
* ``acute_tangents_per_example``: the same for every example.
* ``stationary_pairwise``: ⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all α ≤ s.
* ``stationary_curvature``: ⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖².
* ``linear_in_theta`` (only when z is affine in α): L′(1) ≤ 0, which is also necessary.

How they are evaluated:

* any model: on the α grid of the geometry (``proven`` = False: evidence, never a certificate);
* Sequential-of-Linear models (polynomial paths): with exact integer arithmetic and Bernstein
  bounds (``proven`` = True); ``holds`` is then True only when proven, False when disproven, and
  None when the exact evaluation was undecided within its budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction

import torch

from . import bernstein as bz
from .data import Dataset
from .geometry import GaussLength, PathJet, gauss_length, logit_linearity, path_jet
from .path import BNPolicy, Line
from .report import Condition

HALF_PI = math.pi / 2

STATEMENTS = {
    "zero_residual_gauss": "r = z(1) − y = 0, z′ ≠ 0 and the Gauss length of the stacked output path is < π/2",
    "zero_residual_gauss_per_example": "every example has r_x = 0 and its own output path turns by < π/2 in total",
    "acute_tangents": "⟨z′(α), z′(s)⟩ ≥ 0 for all α, s in [0,1] and ⟨z′(α), r⟩ ≤ 0 for all α",
    "acute_tangents_per_example": "each example's tangents are pairwise acute and obtuse to its own residual r_x",
    "stationary_pairwise": "⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all 0 ≤ α ≤ s ≤ 1",
    "stationary_curvature": "⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖²  (value = left/right)",
    "linear_in_theta": "z is affine in α, so L is a convex quadratic: monotone on [0,1] iff L′(1) ≤ 0",
}


@dataclass(frozen=True)
class GeometryReport:
    """Geometry of the output path and the conditions evaluated on it.

    Attributes:
        gauss: Gauss length details (mean, per example, stacked, resolution).
        logit_linearity: ∫₀¹ D(α) dα.
        conditions: the MSE conditions (empty for cross-entropy).
        jet: z, z′, z″ on the base grid.
    """

    gauss: GaussLength
    logit_linearity: float
    conditions: tuple[Condition, ...]
    jet: PathJet

    @property
    def gauss_length(self) -> float:
        return self.gauss.mean


# ----------------------------------------------------------------------------- grid evaluation


def _cos_matrix(v: torch.Tensor) -> torch.Tensor:
    """cos∠(v_a, v_b) for rows of v (..., K, m); 0 where a vector vanishes."""
    s = v.norm(dim=-1)
    g = v @ v.transpose(-1, -2)
    d = s.unsqueeze(-1) * s.unsqueeze(-2)
    return torch.where(d > 0, g / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(g))


def _acute_value(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """min(min_{a,b} cos∠(v_a, v_b), −max_a cos∠(v_a, r)) for v (..., K, m), r (..., m)."""
    pair = _cos_matrix(v).amin(dim=(-1, -2))
    s = v.norm(dim=-1)
    rn = r.norm(dim=-1, keepdim=True)
    d = s * rn
    cr = torch.where(d > 0, (v * r.unsqueeze(-2)).sum(-1) / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(s))
    return torch.minimum(pair, -cr.amax(dim=-1))


def _grid_conditions(jet: PathJet, y: torch.Tensor, gauss: GaussLength) -> dict[str, tuple[bool | None, float | None, float]]:
    """name -> (holds, value, threshold) on the grid."""
    K = jet.dz.shape[0]
    V = jet.dz.reshape(K, -1).double()
    A = jet.d2z.reshape(K, -1).double()
    yy = y.reshape(y.shape[0], -1).double()
    r_ex = jet.z[-1].double() - yy  # (n, k)
    r = r_ex.reshape(-1)
    rn = float(r.norm())
    out: dict[str, tuple[bool | None, float | None, float]] = {}
    g = gauss.stacked
    out["zero_residual_gauss"] = (rn == 0.0 and g < HALF_PI and not gauss.singular, g, HALF_PI)
    gmax = float(gauss.per_example.max())
    out["zero_residual_gauss_per_example"] = (
        bool((r_ex.norm(dim=-1) == 0).all()) and gmax < HALF_PI and not gauss.singular,
        gmax,
        HALF_PI,
    )
    acute = float(_acute_value(V, r))
    out["acute_tangents"] = (acute >= 0.0, acute, 0.0)
    per = []
    Vx = jet.dz.double().permute(1, 0, 2)  # (n, K, k)
    for i0 in range(0, Vx.shape[0], 512):
        per.append(_acute_value(Vx[i0 : i0 + 512], r_ex[i0 : i0 + 512]))
    acute_ex = float(torch.cat(per).min())
    out["acute_tangents_per_example"] = (acute_ex >= 0.0, acute_ex, 0.0)
    s1 = float(V[-1] @ r)
    speed2 = V.pow(2).sum(-1)
    pair = (V @ V.T) + (A @ r).unsqueeze(0)  # [i, j] = <z'(a_i), z'(a_j)> + <z''(a_j), r>
    iu = torch.triu_indices(K, K)
    pmin = float(pair[iu[0], iu[1]].min()) / max(float(speed2.max()), 1e-300)
    out["stationary_pairwise"] = (s1 <= 0.0 and pmin >= 0.0, pmin, 0.0)
    vmin2 = float(speed2.min())
    amax = float(A.norm(dim=-1).max())
    if g < HALF_PI and vmin2 > 0:
        ratio = rn * amax / (math.cos(g) * vmin2)
        out["stationary_curvature"] = (s1 <= 0.0 and ratio <= 1.0, ratio, 1.0)
    else:
        out["stationary_curvature"] = (False, None, 1.0)
    return out


# ----------------------------------------------------------------------------- exact evaluation


def _dot_int(a: list[int], b: list[int]) -> int:
    return sum(x * y for x, y in zip(a, b))


def _float_up(q: Fraction) -> float:
    f = float(q)
    return f if Fraction(f) >= q else math.nextafter(f, math.inf)


def _sqrt_up(q: Fraction) -> Fraction:
    return Fraction(math.nextafter(math.sqrt(_float_up(q)), math.inf))


def _gauss_upper(dpoly: list[int], npoly: list[int], target: float, deadline: float | None):
    """Proven upper bound on ∫ √N / D over [0,1] (None if D may vanish), and bounds of D.

    Uses 2^k equal boxes, k = 3..10, stopping once the bound is below ``target``.
    Returns (G_upper, min D lower bound, k) or None.
    """
    best = None
    for k in range(3, 11):
        if deadline is not None and time.perf_counter() > deadline:
            break
        total, dmin, ok = Fraction(0), None, True
        for m in range(2**k):
            dlo, _ = bz.bounds(dpoly, m, k)
            if dlo <= 0:
                ok = False
                break
            _, nhi = bz.bounds(npoly, m, k)
            total += _sqrt_up(max(nhi, Fraction(0))) / dlo / 2**k
            dmin = dlo if dmin is None else min(dmin, dlo)
        if ok:
            best = (total, dmin, k)
            if total < Fraction(target):
                break
    return best


def _poly_mul(a: list[int], b: list[int]) -> list[int]:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        if x:
            for j, yv in enumerate(b):
                out[i + j] += x * yv
    return out


def _poly_sub(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) - (b[i] if i < len(b) else 0) for i in range(n)]


def _gram_poly(u: list[list[int]], v: list[list[int]]) -> list[int]:
    """Σ_{i,j} ⟨u_i, v_j⟩ α^{i+j} for coefficient vectors u_i, v_j."""
    if not u or not v:
        return [0]
    out = [0] * (len(u) + len(v) - 1)
    for i, a in enumerate(u):
        for j, b in enumerate(v):
            out[i + j] += _dot_int(a, b)
    return out


class _ExactPath:
    """Integer data of a polynomial output path: z(α) = 2^e Σ_j α^j Z_j, r = 2^s R."""

    def __init__(self, line: Line, data: Dataset, deadline: float | None) -> None:
        from .exact import _to_fixed, linear_layers, output_polynomial

        z = output_polynomial(line.start, line.end, linear_layers(line) or [], data.x, deadline)
        k, n = z.coeffs[0].nrows(), z.coeffs[0].ncols()
        self.k, self.n = k, n
        self.Z = [[int(v) for v in c.entries()] for c in z.coeffs]  # row-major k×n
        self.e = z.exp
        fy = _to_fixed([data.y.detach().cpu().double().numpy().T])
        self.s = min(self.e, fy.exp)
        z1 = [sum(col) for col in zip(*self.Z)]
        self.R = [(a << (self.e - self.s)) - (b << (fy.exp - self.s)) for a, b in zip(z1, fy.ints[0])]
        deg = len(self.Z) - 1
        self.V = [[(i + 1) * v for v in self.Z[i + 1]] for i in range(deg)]  # z' = 2^e Σ α^i V_i
        self.U = [[(i + 1) * (i + 2) * v for v in self.Z[i + 2]] for i in range(deg - 1)]  # z''
        self.degree = deg

    def column(self, vecs: list[list[int]], x: int) -> list[list[int]]:
        return [[vec[a * self.n + x] for a in range(self.k)] for vec in vecs]

    def rcol(self, x: int) -> list[int]:
        return [self.R[a * self.n + x] for a in range(self.k)]


def _exact_acute(V: list[list[int]], R: list[int], deadline: float | None) -> bool | None:
    if not V:
        return True  # z' ≡ 0: L is constant
    P = [[_dot_int(a, b) for b in V] for a in V]
    ok = bz.prove_nonnegative2(P, deadline=deadline)
    if ok is not True or not any(R):
        return ok
    negq = [-_dot_int(v, R) for v in V]  # −⟨z′(α), r⟩ ≥ 0
    return bz.prove_nonnegative(negq, deadline=deadline)


def _exact_conditions(line: Line, data: Dataset, budget_s: float) -> dict[str, bool | None]:
    """Proven verdicts for polynomial paths (True proven / False disproven / None undecided)."""
    deadline = time.perf_counter() + budget_s
    p = _ExactPath(line, data, deadline)
    out: dict[str, bool | None] = {}
    r_zero = not any(p.R)
    s1 = sum(_dot_int(v, p.R) for v in p.V)  # ⟨z′(1), r⟩ up to a positive scale
    out["acute_tangents"] = _exact_acute(p.V, p.R, deadline)
    per: bool | None = True
    for x in range(p.n):
        v = _exact_acute(p.column(p.V, x), p.rcol(x), deadline)
        if v is False:
            per = False
            break
        if v is None:
            per = None
    out["acute_tangents_per_example"] = per
    # stationary, pairwise: <z'(a), z'(s)> 4^e + <z''(s), r> 2^{e+s} >= 0 on a <= s
    if s1 > 0:
        out["stationary_pairwise"] = False
    elif not p.V:
        out["stationary_pairwise"] = True
    else:
        m = min(2 * p.e, p.e + p.s)
        c1, c2 = 1 << (2 * p.e - m), 1 << (p.e + p.s - m)
        deg = len(p.V) - 1
        W = [_dot_int(u, p.R) for u in p.U] + [0] * (deg + 1 - len(p.U))
        Q = [[_dot_int(p.V[i], p.V[j]) * c1 + (W[j] * c2 if i == 0 else 0) for j in range(deg + 1)] for i in range(deg + 1)]
        out["stationary_pairwise"] = bz.prove_nonnegative2(bz.compose_triangle(Q), deadline=deadline)
    # Gauss-length based conditions need a proven bound on the total turning
    D = _gram_poly(p.V, p.V)
    A = _gram_poly(p.U, p.U) if p.U else [0]
    B = _gram_poly(p.V, p.U) if p.U else [0]
    N = _poly_sub(_poly_mul(D, A), _poly_mul(B, B))
    if not p.V:
        bound = None
    else:
        bound = _gauss_upper(D, N, HALF_PI, deadline)
    out["zero_residual_gauss"] = False if not r_zero else (None if bound is None else bool(bound[0] < Fraction(HALF_PI)))
    if not r_zero:
        out["zero_residual_gauss_per_example"] = False if any(any(p.rcol(x)) for x in range(p.n)) else None
    else:
        verdicts = []
        for x in range(p.n):
            Vx, Ux = p.column(p.V, x), p.column(p.U, x)
            Dx = _gram_poly(Vx, Vx)
            Nx = _poly_sub(_poly_mul(Dx, _gram_poly(Ux, Ux) if Ux else [0]), _poly_mul(*([_gram_poly(Vx, Ux)] * 2)) if Ux else [0])
            bx = _gauss_upper(Dx, Nx, HALF_PI, deadline)
            verdicts.append(None if bx is None else bool(bx[0] < Fraction(HALF_PI)))
        out["zero_residual_gauss_per_example"] = True if all(v is True for v in verdicts) else (None if any(v is None for v in verdicts) else False)
    if s1 > 0:
        out["stationary_curvature"] = False
    elif bound is None or bound[0] >= Fraction(HALF_PI):
        out["stationary_curvature"] = None
    else:
        g_up, dmin, k = bound
        amax = max((bz.bounds(A, m, k)[1] for m in range(2**k)), default=Fraction(0)) if p.U else Fraction(0)
        cos_lo = Fraction(math.nextafter(math.cos(float(g_up)), 0.0)) - Fraction(1, 2**50)
        rn2 = Fraction(_dot_int(p.R, p.R))
        # 4^s‖R‖²·maxA ≤ cos²·4^e·minD²  (true quantities: r = 2^s R, z' = 2^e V, z'' = 2^e U)
        lhs = rn2 * max(amax, Fraction(0)) * Fraction(4) ** p.s
        rhs = cos_lo * cos_lo * dmin * dmin * Fraction(4) ** p.e
        out["stationary_curvature"] = True if (cos_lo > 0 and lhs <= rhs) else None
    if p.degree <= 1:
        out["linear_in_theta"] = s1 <= 0
    return out


# ----------------------------------------------------------------------------- public


def evaluate_conditions(
    line: Line,
    data: Dataset,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    grid: int = 51,
    rtol: float = 1e-3,
    exact_budget_s: float = 20.0,
) -> GeometryReport:
    """Geometry of the output path and the MSE sufficient conditions with their margins.

    Args:
        line: the path.
        data: training data on the line's device and dtype.
        bn: BatchNorm policy (statistics are held fixed at each α while differentiating).
        batch_size: examples per pass.
        grid: base α grid for z′, z″ (refined adaptively for the Gauss length).
        rtol: relative tolerance of the Gauss-length refinement.
        exact_budget_s: seconds for the exact evaluation on polynomial paths.
    """
    from .exact import BudgetExceeded, linear_layers

    alphas = torch.linspace(0, 1, grid, dtype=torch.float64)
    jet = path_jet(line, data, alphas, bn=bn, batch_size=batch_size)
    gauss = gauss_length(line, data, bn=bn, batch_size=batch_size, rtol=rtol, jet=jet)
    lin = logit_linearity(jet.z, jet.alphas)
    if data.loss != "mse":
        return GeometryReport(gauss, lin, (), jet)
    grid_res = _grid_conditions(jet, data.y, gauss)
    exact: dict[str, bool | None] | None = None
    exact_note = ""
    if linear_layers(line) is not None:
        try:
            exact = _exact_conditions(line, data, exact_budget_s)
        except BudgetExceeded:
            exact_note = "; exact evaluation ran out of budget"
    conds = []
    for name, statement in STATEMENTS.items():
        if name == "linear_in_theta":
            if exact is None or name not in exact:
                continue
            s1 = float(jet.dz[-1].double().reshape(-1) @ (jet.z[-1].double() - data.y.double()).reshape(-1))
            lprime1 = 2.0 * s1 / data.y.numel()
            conds.append(Condition(name, exact[name], lprime1, 0.0, statement + " [exact: sign of L′(1) in rational arithmetic]", True))
            continue
        holds, value, threshold = grid_res[name]
        if exact is not None:
            verdict = exact[name]
            how = {True: "proven exactly", False: "disproven exactly", None: "undecided by the exact method"}[verdict]
            conds.append(
                Condition(
                    name,
                    verdict,
                    value,
                    threshold,
                    f"{statement} [{how} (integer arithmetic, Bernstein bounds); value on a {len(jet.alphas)}-point grid]",
                    verdict is not None,
                )
            )
        else:
            conds.append(
                Condition(
                    name,
                    bool(holds) if holds is not None else None,
                    value,
                    threshold,
                    f"{statement} [evaluated on a {len(gauss.alphas) if 'gauss' in name or 'curvature' in name else len(jet.alphas)}"
                    f"-point α grid: evidence, not proof{exact_note}]",
                    False,
                )
            )
    return GeometryReport(gauss, lin, tuple(conds), jet)
