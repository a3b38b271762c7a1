"""The trace of a symmetric operator by Hutch++, with a confidence interval and adaptive stopping.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace estimation",
SOSA) splits the trace along a random range sketch. With S an n × r Rademacher matrix and Q an
orthonormal basis of H·S (so QQᵀ captures the top of the spectrum),

    tr(H) = tr(QᵀHQ) + tr(PHP),        P = I − QQᵀ,

the first term computed exactly with r more products, the second estimated by Hutchinson's
estimator (Hutchinson 1989) on the deflated operator: for Rademacher g, E[(Pg)ᵀH(Pg)] = tr(PHP).

Confidence interval: conditional on Q, the deflated samples s_i = (Pg_i)ᵀH(Pg_i) are independent and
identically distributed with mean tr(PHP), so

    tr(H) ∈ tr(QᵀHQ) + mean(s) ± t_{(1+c)/2, m−1} · sd(s)/√m

is a Student-t interval of nominal level c for m samples. Samples are drawn in blocks until
the half-width is at most ``rtol``·|estimate| (after at least ``min_samples``), or the budget of
products runs out (then ``converged`` is False). Stopping on the observed width makes the level
approximate; ``min_samples`` ≥ 20 keeps it near nominal (measured in the tests). When r ≥ n the
sketch spans the whole space and the trace is exact.

Batching: the sketch (2r products) and the samples go to the operator ``block`` vectors at a
time through ``op.matmat``; a :class:`~mli_theory.curvature.hvp.LossHessian` multiplies them in
one vmapped pass (``forward_over_reverse``) or in chunks of its own ``block`` (default 4) per
batched backward through the cached graph (``double_backward``, the CPU choice of
``engine="auto"``). The random stream is unchanged by this: vectors are still drawn ``block``
rows at a time from one ``numpy`` generator seeded with ``seed``, and the stopping rule is still
checked after every ``block`` samples, so the estimate, the interval and the product count do not
depend on the engine or its chunk size (up to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .spectrum import SymmetricOperator


@dataclass(frozen=True)
class TraceEstimate:
    """A Hutch++ trace estimate.

    Attributes:
        value: the estimate of tr(H).
        ci: (lo, hi), the confidence interval of level ``confidence``.
        half_width: (hi − lo)/2.
        confidence: nominal level of ``ci``.
        rtol: the relative half-width asked for.
        converged: half_width ≤ rtol·|value|.
        low_rank: tr(QᵀHQ), the exactly computed part.
        sketch_rank: r, the columns of the range sketch.
        n_samples: Hutchinson samples of the deflated operator.
        n_matvecs: products with H spent.
        exact: the sketch spanned the whole space (value exact up to rounding, ci of zero width).
    """

    value: float
    ci: tuple[float, float]
    half_width: float
    confidence: float
    rtol: float
    converged: bool
    low_rank: float
    sketch_rank: int
    n_samples: int
    n_matvecs: int
    exact: bool


def _rademacher(rng: np.random.Generator, shape: tuple[int, ...], op: SymmetricOperator) -> torch.Tensor:
    return torch.as_tensor(rng.integers(0, 2, size=shape) * 2.0 - 1.0, dtype=op.dtype, device=op.device)


def _blocks(op: SymmetricOperator, vs: torch.Tensor, block: int) -> torch.Tensor:
    return torch.cat([op.matmat(vs[i : i + block]) for i in range(0, vs.shape[0], block)], 0)


def hutchpp_trace(
    op: SymmetricOperator,
    *,
    rtol: float = 0.01,
    confidence: float = 0.95,
    sketch_rank: int | None = None,
    block: int = 8,
    min_samples: int = 24,
    max_matvecs: int = 2000,
    seed: int = 0,
) -> TraceEstimate:
    """tr(H) by Hutch++ with a Student-t interval, stopping at relative half-width ``rtol``.

    Args:
        op: the symmetric operator.
        rtol: stop when half-width ≤ rtol·|estimate|.
        confidence: level of the interval, in (0, 1).
        sketch_rank: r (default min(n, 16)); r ≥ n computes the trace exactly with n products.
        block: vectors per block product.
        min_samples: deflated Hutchinson samples before the stopping rule is applied (≥ 2).
        max_matvecs: budget of products, sketch included.
        seed: seed of the random vectors.
    """
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise InputError(f"rtol={rtol!r}: the relative half-width must be a finite number > 0")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise InputError(f"confidence={confidence!r}: must be in (0, 1)")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
        raise InputError(f"min_samples={min_samples!r}: need an integer of at least 2")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InputError(f"block={block!r}: must be a positive integer")
    from scipy.stats import t as student_t

    n = op.size
    r = min(n, 16 if sketch_rank is None else int(sketch_rank))
    if r < 0:
        raise InputError(f"sketch_rank={sketch_rank!r}: must be ≥ 0")
    rng = np.random.default_rng(seed)
    if r >= n:  # exact: the sum of e_iᵀ H e_i
        eye = torch.eye(n, dtype=op.dtype, device=op.device)
        val = float(sum(float(torch.diagonal(op.matmat(eye[i : i + block])[:, i : i + block]).double().sum()) for i in range(0, n, block)))
        return TraceEstimate(val, (val, val), 0.0, confidence, rtol, True, val, n, 0, n, True)

    used = 0
    low = 0.0
    q = None
    if r > 0:
        s = _rademacher(rng, (r, n), op)
        y = _blocks(op, s, block).double()
        q64, _ = torch.linalg.qr(y.T)  # (n, r) orthonormal basis of range(H S)
        q = q64.to(op.dtype)
        hq = _blocks(op, q.T.contiguous(), block).double()
        low = float((q64 * hq.T).sum())
        used = 2 * r
    samples: list[float] = []
    value, half = low, math.inf
    while used < max_matvecs:
        m = min(block, max_matvecs - used)
        g = _rademacher(rng, (m, n), op).double()
        if q is not None:
            q64 = q.double()
            g = g - (g @ q64) @ q64.T
        hg = op.matmat(g.to(op.dtype)).double()
        used += m
        samples.extend(float(v) for v in (g * hg).sum(dim=1).cpu())
        if len(samples) >= max(min_samples, 2):
            arr = np.asarray(samples)
            value = low + float(arr.mean())
            sd = float(arr.std(ddof=1))
            half = float(student_t.ppf(0.5 + confidence / 2, len(arr) - 1)) * sd / math.sqrt(len(arr))
            if half <= rtol * abs(value):
                break
    if len(samples) >= 2 and half == math.inf:
        arr = np.asarray(samples)
        value = low + float(arr.mean())
        half = float(student_t.ppf(0.5 + confidence / 2, len(arr) - 1)) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return TraceEstimate(
        value, (value - half, value + half), half, confidence, rtol, bool(half <= rtol * abs(value)),
        low, r, len(samples), used, False,
    )
