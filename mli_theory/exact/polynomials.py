"""Exact output and loss polynomials of a path through a chain of affine layers.

For ``f(x) = A_L ⋯ A_1 x`` (each ``A_i`` an affine map, ``nn.Linear`` with or without bias) on the
path ``A_i(α) = A_i⁰ + α·(A_iᵀ − A_i⁰)``, the stacked outputs ``z(α)`` are a matrix polynomial of
degree at most L in α and the mean squared error

    L(α) = (1/(n·k)) · ‖z(α) − y‖²

is a polynomial of degree at most 2L. Every float in the weights and data is a dyadic rational, so
both are computed *exactly* (integer matrices via python-flint, one power-of-two scale per layer).
Which models qualify is decided by tracing them (:mod:`mli_theory.path.structure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch

from ..errors import InputError
from ..path import Line, PathKind
from ..inputs.data import Dataset
from .budget import check_deadline
from .dyadic import to_fixed

try:  # python-flint: fast exact integer matrices
    import flint
except ImportError:  # pragma: no cover - declared as a dependency
    flint = None  # type: ignore[assignment]


def horner(ints: Sequence[int], a: Fraction) -> Fraction:
    """Σ_m ints[m]·a^m exactly (Horner's scheme in rational arithmetic).

    >>> horner([1, -2, 1], Fraction(1, 2))
    Fraction(1, 4)
    """
    acc = Fraction(0)
    for c in reversed(ints):
        acc = acc * a + c
    return acc


def _mat(rows: int, cols: int, flat: list[int]) -> "flint.fmpz_mat":
    return flint.fmpz_mat(rows, cols, flat)


@dataclass(frozen=True)
class OutputPolynomial:
    """z(α)ᵀ = 2**exp · Σ_j α^j Z_j exactly, each Z_j a k×n integer matrix (outputs × examples)."""

    coeffs: tuple["flint.fmpz_mat", ...]
    exp: int

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1


@dataclass(frozen=True)
class LossPolynomial:
    """L(α) = scale · Σ_m ints[m] α^m exactly (scale > 0 rational).

    Attributes:
        ints: integer coefficients, lowest degree first.
        scale: positive rational factor (4**s / (n·k) for mean squared error).
    """

    ints: tuple[int, ...]
    scale: Fraction

    @property
    def coeffs(self) -> tuple[Fraction, ...]:
        """Exact rational coefficients of L, lowest degree first."""
        return tuple(self.scale * c for c in self.ints)

    @property
    def degree(self) -> int:
        return len(self.ints) - 1

    def exact(self, alpha: Fraction | int | float) -> Fraction:
        """L(α) exactly at a rational (or float, taken exactly) α."""
        return horner(self.ints, Fraction(alpha)) * self.scale

    def __call__(self, alpha: float) -> float:
        """L(α) rounded to a float."""
        return float(self.exact(alpha))


# the most input values (n · d) the exact method turns into exact integers: beyond this it would hold
# gigabytes of Python integers and spend minutes before its first budget check
EXACT_MAX_ENTRIES = 1 << 22


def exact_fits(x) -> bool:
    """Whether the exact method takes inputs ``x`` (n × d values at most :data:`EXACT_MAX_ENTRIES`)."""
    n = int(x.shape[0])
    d = 1
    for s in tuple(x.shape[1:]):
        d *= int(s)
    return n * d <= EXACT_MAX_ENTRIES


def output_polynomial(
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    layers: Sequence[tuple[str, bool]],
    x: torch.Tensor,
    deadline: float | None = None,
) -> OutputPolynomial:
    """Exact coefficients of the outputs along the path for a Sequential of Linear layers.

    Args:
        start, end: θ0 and θT state dicts (keys ``{prefix}.weight`` and ``{prefix}.bias``).
        layers: ``(prefix, has_bias)`` per layer, in order.
        x: inputs, shape (n, d0).
        deadline: ``time.perf_counter()`` value after which :class:`BudgetExceeded` is raised.
    """
    if flint is None:  # pragma: no cover
        raise RuntimeError("the exact method needs python-flint (pip install python-flint)")
    if x.dim() != 2:
        raise InputError(f"the exact method needs 2-D inputs x, got shape {tuple(x.shape)}")
    if not isinstance(x, torch.Tensor):  # streamed inputs: exact arithmetic reads every example
        x = x[:]
    aug = any(b for _, b in layers)  # carry a row of ones so that biases become matrix columns
    xt = x.detach().cpu().double().numpy().T  # d0 × n
    n = xt.shape[1]
    fx = to_fixed([xt], max_exp=0)
    rows = xt.shape[0]
    flat = fx.ints[0]
    if aug:
        flat = flat + [1 << (-fx.exp)] * n
        rows += 1
    coeffs = [_mat(rows, n, flat)]
    exp = fx.exp
    for prefix, has_bias in layers:
        check_deadline(deadline)
        w0 = start[f"{prefix}.weight"].detach().cpu().double().numpy()
        w1 = end[f"{prefix}.weight"].detach().cpu().double().numpy()
        out_d, in_d = w0.shape
        arrays = [w0, w1]
        if has_bias:
            arrays += [start[f"{prefix}.bias"].detach().cpu().double().numpy(), end[f"{prefix}.bias"].detach().cpu().double().numpy()]
        f = to_fixed(arrays, max_exp=0 if aug else None)
        m0, m1 = f.ints[0], f.ints[1]
        if aug:
            one = 1 << (-f.exp)
            b0 = f.ints[2] if has_bias else [0] * out_d
            b1 = f.ints[3] if has_bias else [0] * out_d
            m0 = [v for r in range(out_d) for v in m0[r * in_d : (r + 1) * in_d] + [b0[r]]] + [0] * in_d + [one]
            m1 = [v for r in range(out_d) for v in m1[r * in_d : (r + 1) * in_d] + [b1[r]]] + [0] * in_d + [one]
            shape = (out_d + 1, in_d + 1)
        else:
            shape = (out_d, in_d)
        a0 = _mat(*shape, m0)
        d = _mat(*shape, [v1 - v0 for v0, v1 in zip(m0, m1)])
        new = [a0 * coeffs[0]]
        for j in range(1, len(coeffs)):
            check_deadline(deadline)
            new.append(a0 * coeffs[j] + d * coeffs[j - 1])
        new.append(d * coeffs[-1])
        coeffs = new
        exp += f.exp
    if aug:  # drop the row of ones
        k = coeffs[0].nrows() - 1
        coeffs = [_mat(k, n, [int(v) for v in c.entries()[: k * n]]) for c in coeffs]
    while len(coeffs) > 1 and coeffs[-1].is_zero():
        coeffs.pop()
    return OutputPolynomial(tuple(coeffs), exp)


def _inner(a: "flint.fmpz_mat", b: "flint.fmpz_mat") -> int:
    """⟨A, B⟩ = trace(A·Bᵀ) for integer matrices."""
    p = a * b.transpose()
    return int(sum(int(p[i, i]) for i in range(p.nrows())))


def mse_loss_polynomial(z: OutputPolynomial, y: torch.Tensor, deadline: float | None = None) -> LossPolynomial:
    """L(α) = (1/(n·k))·‖z(α) − y‖² exactly, for targets y of shape (n, k)."""
    yt = y.detach().cpu().double().numpy().T  # k × n
    k, n = yt.shape
    if z.coeffs[0].nrows() != k or z.coeffs[0].ncols() != n:
        raise InputError(f"targets of shape {(n, k)} do not match outputs of shape {(z.coeffs[0].ncols(), z.coeffs[0].nrows())}")
    fy = to_fixed([yt])
    s = min(z.exp, fy.exp)
    r = [c * (1 << (z.exp - s)) for c in z.coeffs]
    r[0] = r[0] - _mat(k, n, [v << (fy.exp - s) for v in fy.ints[0]])
    deg = len(r) - 1
    gram: dict[tuple[int, int], int] = {}
    for i in range(deg + 1):
        for j in range(i, deg + 1):
            check_deadline(deadline)
            gram[i, j] = _inner(r[i], r[j])
    ints = [0] * (2 * deg + 1)
    for (i, j), g in gram.items():
        ints[i + j] += g if i == j else 2 * g
    while len(ints) > 1 and ints[-1] == 0:
        ints.pop()
    scale = (Fraction(4) ** s) / (n * k)
    return LossPolynomial(tuple(ints), scale)


def loss_polynomial_of_line(line: Line, data: Dataset, deadline: float | None = None) -> LossPolynomial:
    """The exact MSE loss polynomial of a Line whose traced model is a chain of affine layers.

    Raises:
        InputError: the path is not polynomial (says why), the loss is not MSE, or x is not 2-D.
    """
    if line.structure.kind != PathKind.POLYNOMIAL:
        raise InputError(f"the exact method needs a chain of nn.Linear layers; this model: {line.structure.reason}")
    if data.loss != "mse":
        raise InputError(f"the exact method needs loss=\"mse\", got {data.loss!r}")
    z = output_polynomial(line.start, line.end, line.structure.linear, data.x, deadline)
    return mse_loss_polynomial(z, data.y, deadline)
