"""The split of L″(α) into a Gauss–Newton term and an output-curvature term.

Along the path the outputs z_i(α) = f(x_i; θ(α)) move on a curve, and the mean loss
L(α) = (1/N) Σ_i ℓ_i(z_i(α)) (ℓ_i the summed loss of example i, N = n·k for ``mse``, n for ``ce``)
has, by the chain rule twice,

    L′(α) = (1/N) Σ_i ⟨∇_z ℓ_i, z_i′⟩,
    L″(α) = (1/N) Σ_i z_i′ᵀ (∂²ℓ_i/∂z²) z_i′  +  (1/N) Σ_i ⟨∇_z ℓ_i, z_i″⟩
          =          gauss_newton             +           residual.

With z′ = J·Δθ (Δθ = θT − θ0) the first term is Δθᵀ G(α) Δθ, the generalised Gauss–Newton matrix
G (Martens 2020, "New insights and perspectives on the natural gradient method", JMLR 21, §8) along
the path: it is ≥ 0 because both losses are convex in z. The second term carries the whole
curvature of the output curve (z″ = D²f[Δθ, Δθ], zero for a model linear in θ) weighted by the
loss's pull ∇_z ℓ (zero at an interpolating fit). So L″(α) < 0, the failure of the convex-end
condition L″ ≥ 0, needs the residual term to be negative and to outweigh the Gauss–Newton term;
and Δθᵀ H(α) Δθ = gauss_newton + residual (:func:`~mli_theory.curvature.directional_curvature`).

z, z′ and z″ come from :func:`mli_theory.geometry.path_jet` (no Jacobian or Hessian is formed);
the loss derivatives ∇_z ℓ and (∂²ℓ/∂z²)·z′ by ``torch.func`` on the outputs, in float64.

BatchNorm: the jets follow the statistics along the measured curve where they can (then the sum is
the L″ of the ``check`` loss curve, and with moving statistics the first term is the Gauss–Newton
form of the *total* output velocity, not Δθᵀ G Δθ with statistics fixed); where they cannot, they
hold them fixed at each α (``off_curve`` says so). :attr:`SecondDerivativeSplit.ggn_form` tells
whether gauss_newton = Δθᵀ G(α) Δθ for the GGN operator of :mod:`.operators` (same statistics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch.func import grad, jvp
from torch.nn import functional as F

from ..errors import InputError
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, data_on_line, loss_normaliser
from ..results import json_safe


@dataclass(frozen=True)
class SecondDerivativeSplit:
    """L(α), L′(α) and the two terms of L″(α) at one α (see the module doc).

    Attributes:
        alpha: α.
        loss: L(α), the mean training loss.
        first_derivative: L′(α) = (1/N) Σ ⟨∇_z ℓ_i, z_i′⟩.
        gauss_newton: (1/N) Σ z_i′ᵀ (∂²ℓ_i/∂z²) z_i′ ≥ 0 (= Δθᵀ G(α) Δθ when ``ggn_form``).
        residual: (1/N) Σ ⟨∇_z ℓ_i, z_i″⟩, the output-curvature term.
        second_derivative: gauss_newton + residual = L″(α).
        ggn_form: whether gauss_newton equals Δθᵀ G(α) Δθ with the GGN at fixed statistics
            (always without BatchNorm, with ``bn="frozen"``, or when the statistics were held fixed).
        off_curve: None when the derivatives are those of the measured loss curve, else why not
            (BatchNorm statistics held fixed at each α; :attr:`mli_theory.geometry.PathJet.off_curve`).
        loss_name: ``mse`` or ``ce``.
    """

    alpha: float
    loss: float
    first_derivative: float
    gauss_newton: float
    residual: float
    second_derivative: float
    ggn_form: bool
    off_curve: str | None
    loss_name: str

    @property
    def convex(self) -> bool:
        """L″(α) ≥ 0 (the convex-end condition at this α)."""
        return self.second_derivative >= 0

    def to_dict(self) -> dict[str, Any]:
        return json_safe({**asdict(self), "convex": self.convex})


def _loss_sum(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return F.mse_loss(z.reshape(y.shape), y, reduction="sum")
    return F.cross_entropy(z, y, reduction="sum")


def second_derivative_splits(
    line: Line,
    data: Dataset,
    alphas: Sequence[float],
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    method: str = "auto",
    batch_size: int | None = None,
) -> tuple[SecondDerivativeSplit, ...]:
    """The split of L″ at each α of ``alphas`` (one :func:`~mli_theory.geometry.path_jet` call).

    Args:
        line: the path; not modified.
        data: training data (cast here to the line's device and dtype).
        alphas: where to evaluate, each in [0, 1].
        bn: BatchNorm policy, as for the loss curve.
        method: jet method, ``auto``, ``taylor`` or ``nested_jvp`` (see :func:`mli_theory.geometry.path_jet`).
        batch_size: examples per pass.
    """
    from ..geometry.jets import path_jet

    alist = [float(a) for a in alphas]
    if not alist:
        raise InputError("alphas=[]: need at least one α")
    for a in alist:
        if not math.isfinite(a) or not 0 <= a <= 1:
            raise InputError(f"alphas: {a!r} is not a number in [0, 1]")
    try:
        bn = BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    if method not in ("auto", "taylor", "nested_jvp"):
        raise InputError(f"method={method!r}: expected auto, taylor or nested_jvp")
    data = data_on_line(line, data, bn, batch_size)
    try:
        jet = path_jet(line, data, alist, bn=bn, method=method, batch_size=batch_size)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputError(str(exc).strip().splitlines()[0][:240]) from None
    norm = loss_normaliser(data)
    y = data.y.double() if data.loss == "mse" else data.y
    moving = line.has_bn and bn != BNPolicy.FROZEN
    ggn_form = not moving or jet.off_curve is not None
    out = []
    for i, a in enumerate(alist):
        z, dz, d2z = jet.z[i].double(), jet.dz[i].double(), jet.d2z[i].double()

        def total(zz: torch.Tensor) -> torch.Tensor:
            return _loss_sum(zz, y, data.loss)

        with torch.enable_grad():
            g, hz = jvp(grad(total), (z,), (dz,))
        value = float(total(z)) / norm
        gn = float((dz * hz).sum()) / norm
        res = float((g * d2z).sum()) / norm
        out.append(SecondDerivativeSplit(a, value, float((g * dz).sum()) / norm, gn, res, gn + res, ggn_form, jet.off_curve, data.loss))
    return tuple(out)


def second_derivative_split(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    method: str = "auto",
    batch_size: int | None = None,
) -> SecondDerivativeSplit:
    """L″(α) = Δθᵀ G(α) Δθ + (1/N) Σ ⟨∇_z ℓ_i, z_i″(α)⟩ at one α (see :func:`second_derivative_splits`)."""
    return second_derivative_splits(line, data, [alpha], bn=bn, method=method, batch_size=batch_size)[0]
