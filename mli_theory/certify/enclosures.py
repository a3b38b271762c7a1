r"""Rigorous enclosures along α: the second number type of the graph interpreter.

The path θ(α) = (1−α)θ0 + αθT is cut into cells [a, b] ⊂ [0, 1]; on a cell we write
α = m + t with m = (a + b)/2 and |t| ≤ h = (b − a)/2. Every activation of the network, and its
α-derivative, is carried as a **first-order Taylor model** (an affine form in t with a remainder):

    v(α) ∈ ĉ + ĝ·t + [−e, e]   for every α in the cell, entrywise,

with ĉ, ĝ floating-point tensors (any values: they are a choice, not a claim) and e ≥ 0 a proven
bound. A number of this type (:class:`Enclosure`) holds two Taylor models: one for the activation
h(α) and one for h′(α). Cells are batched along a leading axis, so one walk of the traced graph
(:func:`mli_theory.geometry.interpreter.interpret`, the same walk the jet number type uses)
encloses a whole batch of cells at once.

Sources. A parameter is a :class:`Param` (θ0, Δθ) with Δθ = fl(θT − θ0): W(α) = W(m) + t·ΔW,
W′(α) = ΔW. The input x is a plain tensor, so the first layer is exactly affine in α (zero
remainder except rounding).

Rules (each with its proof in ``proofs/enclosure_soundness.md``):

* bilinear maps B (the weight–input product of Linear, and of conv1d/conv2d computed as
  unfold + matmul; elementwise scaling in BatchNorm): with x = ĉ + ĝt + δ, |δ| ≤ e,
  B(x, W(α)) = B(ĉ, W_m) + t[B(ĝ, W_m) + B(ĉ, ΔW)] + t²B(ĝ, ΔW) + B(δ, W_m + tΔW); t² ∈ [0, h²]
  becomes its midpoint h²/2 plus a remainder h²/2·|B(ĝ, ΔW)|, and |B(δ, ·)| ≤ B(e, |W_m| + h|ΔW|).
  The derivative is B(x′, W(α)) + B(x, ΔW) by the product rule (W″ = 0);
* remainders in Euclidean norm: a Taylor model may also carry n ≥ ‖δ‖₂ over its last axis (then
  e ≤ n entrywise). A Linear layer bounds W(α)δ both entrywise, (|W_m| + h|ΔW|)e, and by
  |(W(α)δ)_j| ≤ ‖W(α)_j‖₂‖δ‖₂ and ‖W(α)δ‖₂ ≤ ‖W(α)‖₂‖δ‖₂, taking the smaller; the norms of
  W(α) = (1 − α)W0 + α(W0 + ΔW) are bounded by convexity from proven bounds at both ends
  (:func:`_spectral_bound`: repeated squaring of the Gram matrix with every rounding covered).
  ReLU and smooth activations scale δ by a diagonal of magnitude ≤ 1 (or ≤ max f′), so n passes
  through them plus the norm of their new entrywise terms. In wide layers this does not compound
  the way |W|-propagation does (‖|W|‖₂ can exceed ‖W‖₂ by a factor of order √width);
* smooth elementwise f (tanh, sigmoid, GELU, softplus): Taylor's theorem with the Lagrange
  remainder: f(v) = f(ĉ) + f′(ĉ)(v − ĉ) + ½f″(ξ)(v − ĉ)², |v − ĉ| ≤ R = |ĝ|h + e, and
  |f″(ξ)| ≤ sup over the range [ĉ − R, ĉ + R] (computed from the finitely many local maxima
  of |f″|, listed per function and checked in the tests). The derivative f′(v)·v′ is the product
  of the Taylor model of f′(v) (same argument one order up, with sup |f‴|) and that of v′;
* ReLU/LeakyReLU: on a neuron whose range does not contain 0 the map is linear (exact); otherwise
  the value uses the minimal-area parallelogram relaxation (λ = u/(u − l)) and the derivative the
  Clarke set: relu′ ∈ [0, 1], slope s ≤ leaky′ ≤ 1. L is absolutely continuous along α, so
  L(b) − L(a) = ∫ L′ with L′ in that set almost everywhere: the enclosure is sound for rises.
  With ``EnclosureNumbers.deferred`` set, the derivative uses the midpoint slope (1 + s)/2 alone
  and the Clarke term is bounded afterwards by a reverse walk (:mod:`.adjoint`), which then also
  takes the ΔW·δ part of Linear and Conv2d derivatives (δ the input's value remainder, a
  :class:`Source`); clamps and max pooling defer their kinks likewise (:func:`_clamp_deferred`,
  :func:`_max_pool2d_deferred`);
* products of two Taylor models (elementwise): (a + g_a t)(b + g_b t) expanded exactly, t² as
  above, cross terms with the remainders bounded by the magnitudes;
* sums, differences, scalings, reshapes, flatten, dropout in eval mode, average pooling and means
  over feature axes: linear maps applied to ĉ, ĝ and (with |·|, valid for non-negative weights or
  pure moves of entries) to e;
* BatchNorm in eval mode: with fixed statistics (``bn=frozen``, or equal at both ends) an affine
  map per channel; with interpolated statistics (``bn=interpolate``) μ(α) and σ²(α) are affine
  in α and (σ² + ε)^(−1/2) is enclosed like a smooth activation on v > 0.

Anything else has no rule: the walk stops and the certificate is "unknown", naming the layer.

Floating point. torch has no directed rounding; we keep ĉ, ĝ as computed and make e cover both the
mathematical remainder and every rounding error:

* a computed dot product of length K satisfies |fl(Σ a_i b_i) − Σ a_i b_i| ≤ γ_K Σ|a_i b_i| with
  γ_K = Ku/(1 − Ku), u = 2⁻⁵³, whatever the summation order and with or without FMA (Higham,
  *Accuracy and Stability of Numerical Algorithms*, §3.1); BLAS matmuls compute dot products
  (no Strassen), and convolutions are computed here as unfold + matmul for that reason. Each
  rule adds 2γ_{K+16} times an abs-valued product that dominates every term it rounded;
* Δθ = fl(θT − θ0) differs from θT − θ0 by at most u|Δθ| relatively: covered by the same factor 2;
* every e is computed from non-negative terms and then multiplied by (1 + 2⁻⁴⁸) (≥ 32 roundings
  of relative error u) plus 2⁻¹⁰⁰⁰ (underflow);
* products of non-negative tensors that only bound remainders (|W(α)|·e in Linear layers, and
  in the reverse walk r·|W(α)|, |g|·|ΔW|) may be computed in float32 with operands rounded up and
  the float32 rounding and underflow added (:func:`upper_matmul`): an upper bound is all they must
  be, and they are about half of a wide layer's products. Only when float32 matmuls are plain IEEE
  at that moment (no TF32 or bf16: ``torch.get_float32_matmul_precision() == "highest"``), else
  in float64; where such a remainder is rounding-sized but on a few entries (behind an MLP's first
  ReLU only its mixed neurons carry relaxations), those few are multiplied as a sparse matrix and
  the rest bounded by their row maximum times the weights' column sums (:func:`sparse_upper_matmul`);
* the centres' products ĉ·W and ĝ·W of a Linear layer whose input changes little from one cell to
  the next (behind an MLP's first ReLU) are computed along the batch of cells: one cell densely,
  the others from their neighbour's by sparse differences (:func:`chain_products`); the telescoped
  sums' rounding, bounded by row maxima and ℓ1 norms, is added to the layer's remainders;
* elementwise library functions (exp, log, tanh, erf, …) are assumed accurate to 2⁻⁴⁴ relative
  to max(|value|, the function's scale): glibc documents ≤ 4 ulp for these in double precision,
  SLEEF's u10 variants 1 ulp, i.e. 2⁻⁴⁴ is a margin of 2⁸ over the worst documented bound. This
  is the one assumption not proven here; the tests check every enclosure against 60-digit mpmath
  evaluations of the same network.

Everything else is computed in float64 (the checkpoints' values are exact in float64 whatever dtype
the line uses), so the enclosures hold for the real-number loss of exactly those weights and data.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import operator
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

U = 2.0**-53
_SLACK = 2.0**-48  # relative inflation of every computed remainder (≥ 32 roundings)
_TINY = 2.0**-1000  # absolute inflation (underflow)
# what a few float64 operations can lose to underflow, flushed (< 2⁻¹⁰²² each) or gradual (≤ 2⁻¹⁰⁷⁵):
# added to an upper bound that is multiplied by something large before _TINY would cover it
_UNDER = 2.0**-1020
_LIB = 2.0**-44  # assumed accuracy of library elementwise functions (see module docstring)


@contextlib.contextmanager
def strict_arithmetic(device: torch.device):
    """Run enclosure walks with IEEE double arithmetic as the rounding bounds assume, whatever the device.

    Every enclosure tensor is float64, where TF32 and reduced-precision reductions do not apply
    (they concern float32 and half types); convolutions are unfold + matmul, so no FFT or Winograd
    algorithm of cuDNN is ever chosen; cuBLAS and torch's reductions compute sums of products in some
    order, with or without FMA, which γ_K covers. On CUDA the TF32 switches are nevertheless turned
    off for the duration (and restored), so that no float32 helper computation can use them either.

    A caller's ``torch.autocast`` is switched off for the duration (on the CPU and on the device):
    under it a float32 helper product (:func:`upper_matmul`) would run in bfloat16 or half, below
    the accuracy its bound assumes (measured: a bound of a product of non-negative 64 × 512 and
    512 × 256 matrices fell below the product in half of its entries).

    On CPU, flushing subnormals to zero (``torch.set_flush_denormal``) is turned off for the duration
    when it is on (the underflow allowances assume gradual underflow), and turned on again after.
    That setting belongs to each thread (the x86 MXCSR), and torch's intra-op threads keep the one
    they were started with: a process that flushed before its first parallel operation flushes in
    those threads whatever this thread says. So the pool is probed (:func:`_pool_flushes`) and,
    where any of its threads flushes, the walks run in this thread alone for the duration
    (``torch.set_num_threads(1)``, restored after).
    """
    dev = torch.device(device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if dev.type == "cuda":
            stack.enter_context(torch.autocast("cuda", enabled=False))
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            stack.callback(_restore_tf32, saved)
            yield
            return
        # subnormals flushed to zero (``torch.set_flush_denormal(True)``, set by a user's code, say)
        # break the underflow allowances of the rounding bounds: gradual underflow for the duration
        if _flushes_denormals():
            torch.set_flush_denormal(False)
            stack.callback(torch.set_flush_denormal, True)
        threads = torch.get_num_threads()
        if threads > 1 and _pool_flushes(threads):
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, threads)
        yield


def _restore_tf32(saved: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flushes_denormals() -> bool:
    """Whether CPU float64 arithmetic flushes subnormal numbers to zero in this thread."""
    tiny = torch.full((8,), 2.0**-1060, dtype=torch.float64)
    return bool((tiny * 1.0)[0] == 0.0)


def _pool_flushes(threads: int) -> bool:
    """Whether any of torch's ``threads`` intra-op threads flushes float64 subnormals to zero: an
    elementwise product split over every thread (2¹⁶ entries each, twice torch's grain) and a matrix
    product large enough to be threaded, each of whose exact results is a subnormal number
    (2⁻¹⁰⁶⁰·1, and sums of 256 products 2⁻⁵³⁰·2⁻⁵³⁰): any zero among them was flushed."""
    tiny = torch.full((threads * 2**16,), 2.0**-1060, dtype=torch.float64)
    if bool(((tiny * 1.0) == 0.0).any()):
        return True
    a = torch.full((64 * threads, 256), 2.0**-530, dtype=torch.float64)
    return bool(((a @ a.T) == 0.0).any())


def gamma(k: int) -> float:
    """γ_k = k·u/(1 − k·u), the classical bound on the relative error of k floating-point operations."""
    return k * U / (1.0 - k * U)


def _zero(like: Tensor) -> Tensor:
    """An identically zero component: a 0-dim tensor (broadcasts; rules skip work on it)."""
    return torch.zeros((), dtype=like.dtype, device=like.device)


def _is_zero(t: Tensor) -> bool:
    """Whether a Taylor-model component is the 0-dim zero of :func:`_zero` (only zeros are 0-dim)."""
    return t.dim() == 0


def broadcast_shape(*shapes: tuple[int, ...]) -> torch.Size:
    """The shape the tensors of ``shapes`` broadcast to (numpy's rule); raises ValueError when they do not.

    ``torch.broadcast_shapes`` does the same, but its first call imports torch's symbolic-shape
    machinery (sympy with it: about 0.3 s, paid by the first certificate of every process).

    >>> tuple(broadcast_shape((3, 1, 5), (4, 1), ()))
    (3, 4, 5)
    """
    out: list[int] = []
    for shape in shapes:
        shape = tuple(shape)
        if len(shape) > len(out):
            out = [1] * (len(shape) - len(out)) + out
        for i, n in enumerate(shape, len(out) - len(shape)):
            if n != 1:
                if out[i] not in (1, n):
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = n
    return torch.Size(out)


_U32 = 2.0**-24  # unit roundoff of float32
_MIN32 = 2.0**-126  # smallest normal float32
UPPER32_MIN_K = 64  # products shorter than this stay in float64 (the conversions would cost more)


def _float32_is_ieee(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` are plain IEEE single precision now (no TF32 or bf16):
    torch's precision switches, and the environment variables by which oneDNN (CPU) and cuBLAS
    (CUDA) may be told to compute float32 products in lower precision or by emulation."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
        if os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "strict").strip().lower() not in ("", "strict"):
            return False
        if torch.device(device).type == "cuda" and os.environ.get("CUBLAS_EMULATE_SINGLE_PRECISION", "0").strip() not in ("", "0"):
            return False
        be = torch.backends
        mk = getattr(be, "mkldnn", None)
        for obj in (be, mk, getattr(mk, "matmul", None), be.cuda.matmul, getattr(be, "cudnn", None)):
            if getattr(obj, "fp32_precision", None) not in (None, "none", "ieee"):
                return False
        return not (torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    except Exception:  # noqa: BLE001 - an API we cannot read: stay in float64
        return False


def use_float32(k: int, device: torch.device) -> bool:
    """Whether a product of length ``k`` on ``device`` is computed in float32 (:func:`upper_matmul`):
    long enough to pay for the conversions, short enough for γ_k, and float32 plain IEEE now."""
    return k >= UPPER32_MIN_K and k * _U32 < 0.5 and _float32_is_ieee(device)


def up32(t: Tensor) -> tuple[Tensor, float]:
    """(t̂, max t̂): t ≥ 0 rounded up to float32 as :func:`upper_matmul` does it, for reuse as its ``b32``."""
    t32 = (t * (1.0 + 2.0**-22)).to(torch.float32)
    return t32, (float(t32.max()) if t32.numel() else 0.0)


def memo_up32(nt: "EnclosureNumbers", key: object, tag: str, t: Tensor, k: int) -> tuple[Tensor, float] | None:
    """:func:`up32` of the weight-only tensor ``t``, memoised per batch of cells under (``key``, ``tag``),
    when products of length ``k`` run in float32 (:func:`use_float32`); else None."""
    return nt.memo(key, tag, lambda: up32(t)) if use_float32(k, t.device) else None


def upper_matmul(a: Tensor, b: Tensor, b32: tuple[Tensor, float] | None = None) -> Tensor:
    r"""A float64 upper bound of a @ b for entrywise non-negative float64 a, b (torch.matmul's
    broadcasting), computed in float32 where that is sound and pays (about half the time).

    The operands are rounded up, â = fl32(fl64(a(1 + 2⁻²²))) ≥ a wherever â is a normal float32
    (≥ 2⁻¹²⁶; below, â ≥ a − 2⁻¹⁴⁹), and the product is computed in IEEE single precision (checked:
    :func:`_float32_is_ieee`). For non-negative terms a computed sum of K products satisfies
    Σ â_i b̂_i ≤ fl(Σ â_i b̂_i)(1 + 2γ_K) in any summation order, with or without FMA, if nothing
    underflows (Higham, Thm 3.1 with γ_K = Ku/(1 − Ku), u = 2⁻²⁴); a flushed or gradual underflow
    loses less than 2⁻¹²⁶ per operation, and an operand below 2⁻¹²⁶ (possibly read as 0) less than
    2⁻¹²⁶·max b̂ per term (or max â). So a @ b ≤ fl32(â @ b̂)(1 + 2γ_K) +
    4K·2⁻¹²⁶(1 + max â + max b̂), evaluated here in float64 and inflated for that evaluation. A
    non-finite float32 result (an operand beyond float32's range) falls back to float64, as do short
    products (K < ``UPPER32_MIN_K``) and devices whose float32 matmuls are not plain IEEE: there the
    bound is fl64(a @ b)(1 + 2γ_K) (γ_K of float64). ``b32``: :func:`up32` of b, when the caller
    reuses one b for many products."""
    k = a.shape[-1]
    if use_float32(k, a.device):
        a32, amax = up32(a)
        b32, bmax = b32 if b32 is not None else up32(b)
        bound = _bound_from32(torch.matmul(a32, b32), k, amax, bmax)
        if bound is not None:
            return bound
    return _bound_from64(torch.matmul(a, b), k)


def _bound_from32(p: Tensor, k: int, amax: float, bmax: float) -> Tensor | None:
    """fl32(â @ b̂) turned into the float64 upper bound of :func:`upper_matmul` (dot products of k
    non-negative terms, operands rounded up, max â and max b̂ given): times (1 + 2γ_k) plus the
    underflow floor, doubled; None where a float32 sum is not finite. Every term is at most
    max â · max b̂, so where k·max â·max b̂ < 2¹²⁶ no product, partial sum (at most (1 + γ_k) times
    the exact one) or result can overflow, and with finite non-negative operands nothing is NaN:
    the pass over p that looks for non-finite entries is needed only beyond that."""
    if not (k * amax * bmax < 2.0**126) and not bool(torch.isfinite(p).all()):
        return None
    g32 = k * _U32 / (1.0 - k * _U32)
    floor = 4.0 * k * _MIN32 * (1.0 + amax + bmax)
    return p.to(torch.float64) * ((1.0 + 2.0 * g32) * (1.0 + 2.0**-50)) + floor * 2.0


def _bound_from64(p: Tensor, k: int) -> Tensor:
    """fl64(a @ b) for dot products of k non-negative terms turned into an upper bound: each of the
    k products may also lose up to 2⁻¹⁰²² to underflow (the bound is then multiplied by remainders
    that may be large, so _TINY would not cover it)."""
    return p * (1.0 + 2.0 * gamma(k + 2)) + k * _UNDER


SPARSE_REMAINDER_SHARE = 2.0**-20  # entries of a remainder above this share of its largest are multiplied one by one
SPARSE_REMAINDER_MAX_DENSITY = 0.03  # ... when at most this share of the entries is above it (else the dense product)
SPARSE_MIN_OUTPUTS = 64  # ... and the product has at least this many outputs per row


def column_sums_up(b: Tensor) -> Tensor:
    """An upper bound of Σ_k b[…, k, j] for b ≥ 0 (the sums over the second-to-last axis): a computed
    sum of K non-negative terms is within γ_{K−1} of the exact one (an addition whose result is
    subnormal is exact), so fl(Σ)(1 + 2γ_K) bounds it."""
    return b.sum(-2) * (1.0 + 2.0 * gamma(b.shape[-2] + 1))


def sparse_upper_matmul(a: Tensor, b: Tensor, colsum: Tensor) -> Tensor | None:
    r"""An upper bound of a @ b for a remainder a ≥ 0 of which few entries matter, or None.

    ``a`` (C, R, K), ``b`` (C, K, O) (a matrix per cell) or (K, O) (shared), both float64 and
    entrywise non-negative; ``colsum`` (C, O) or (O,) an upper bound of b's column sums Σ_k b_kj
    (:func:`column_sums_up`). Behind a ReLU whose input is exact in α (an MLP's first layer) the
    value and derivative remainders are rounding-sized on every neuron whose sign is proven and large
    only on the few mixed ones (about 1–2 % on the 784-1000-1000-10 net's cells), so the dense
    product spends almost all its work on terms that cannot matter. With τ =
    ``SPARSE_REMAINDER_SHARE``·max a, a = a_l + a_s (a_l the entries above τ, a_s the rest):

        (a @ b)_rj = Σ_k a_l,rk b_kj + Σ_k a_s,rk b_kj ≤ (a_l @ b)_rj + (max_k a_s,rk)·Σ_k b_kj,

    the first a sparse product (CSR: plain sums of products, so :func:`_bound_from64` bounds its
    rounding), the second one product per entry. The sum of the two and that product round
    (at most 3u), covered by a factor 1 + 8u and 2⁻¹⁰²⁰ (underflow). None (the caller takes the
    dense product) when more than ``SPARSE_REMAINDER_MAX_DENSITY`` of a's entries lie above τ, when
    b has fewer than ``SPARSE_MIN_OUTPUTS`` columns (the dense product is then cheaper than the
    passes that split a), or when a is empty or not finite."""
    if b.dtype != torch.float64 or b.shape[-1] < SPARSE_MIN_OUTPUTS:  # a narrow product costs less than splitting a
        return None
    split = sparse_split(a)
    if split is None:
        return None
    return _sparse_product(split, b, colsum)


def sparse_split(a: Tensor) -> tuple[Tensor, Tensor] | None:
    """(a_l, row maxima of a_s) for :func:`sparse_upper_matmul`'s split of a (C, R, K) float64 remainder
    ≥ 0, or None where it does not apply: an empty, non-float64 or non-finite a, or one with more
    than ``SPARSE_REMAINDER_MAX_DENSITY`` of its entries above τ (judged first on a few thousand
    entries, so that a dense remainder costs one short look)."""
    if a.dim() != 3 or a.numel() == 0 or a.dtype != torch.float64:
        return None
    top = float(a.max())
    if not math.isfinite(top):
        return None
    tau = top * SPARSE_REMAINDER_SHARE
    probe = a.reshape(-1)[: min(a.numel(), 4096)]
    if int(torch.count_nonzero(probe > tau)) > 2 * SPARSE_REMAINDER_MAX_DENSITY * probe.numel():
        return None
    large = a > tau
    if int(torch.count_nonzero(large)) > SPARSE_REMAINDER_MAX_DENSITY * a.numel():
        return None
    zero = a.new_zeros(())
    return torch.where(large, a, zero), torch.where(large, zero, a).amax(-1, keepdim=True)


def _csr_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for a mostly-zero matrix a (R, K) and a dense, contiguous b (K, O): a as CSR, so only its
    non-zero entries are multiplied (plain sums of products, the rounding every bound here assumes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return torch.matmul(a.to_sparse_csr(), b)


def _sparse_product(split: tuple[Tensor, Tensor], b: Tensor, colsum: Tensor) -> Tensor | None:
    """The bound of :func:`sparse_upper_matmul` from :func:`sparse_split`'s parts; None where b's
    shape does not fit."""
    a_l, small = split
    cells, rows, k = a_l.shape
    per_cell = b.dim() == 3
    if (per_cell and (b.shape[0] != cells or b.shape[1] != k)) or (not per_cell and (b.dim() != 2 or b.shape[0] != k)):
        return None
    if per_cell:
        p = torch.stack([_csr_matmul(a_l[i], b[i]) for i in range(cells)])
    else:
        p = _csr_matmul(a_l.reshape(cells * rows, k), b).reshape(cells, rows, -1)
    cs = colsum.unsqueeze(-2) if per_cell else colsum
    return (_bound_from64(p, k) + small * cs) * (1.0 + 8 * U) + _UNDER


CHAIN_MAX_DENSITY = 0.08  # a cell's products come from its neighbour's when at most this share of the differences is non-zero
CHAIN_SMALL = 2.0**-48  # ... differences of ĉ below this share of their row's scale are bounded, not multiplied
# ... in Linear layers with at least this many outputs: the passes over the input that find the
# differences cost about as much as a dense product with 512 columns (digits 64-256-256-10:
# 31 against 24 ms per batch of cells; 64-512×5-10: 33 against 48 ms; 784-1000-1000-10: 45 against 87)
CHAIN_MIN_OUTPUTS = 512


@dataclass(frozen=True)
class ChainProducts:
    """Products of a batch of cells' centres with one matrix b, computed along the cells
    (:func:`chain_products`).

    Fields (C cells; ``lead`` the input's axes between cells and features; O columns of b):

    * ``pc``, ``pg``: (C, *lead, O), the computed ĉ·b and ĝ·b;
    * ``mag_c``, ``mag1_c`` (and ``mag_g``, ``mag1_g``): (C, *lead, 1), such that for every cell,
      row and column j, |pc − ĉ·b| ≤ ``gamma``·((``mag_c`` + 2⁻¹⁰²⁰)·Σ_i|b_ij| +
      (``mag1_c`` + 2⁻¹⁰²⁰)·max_i|b_ij|) + (L + 1)(K + 1)·2⁻¹⁰⁷⁴ (and so for ``pg``; the last term
      is underflow, L below): row maxima against column sums for
      dense terms, ℓ1 norms against column maxima for the sparse differences. On a reference cell
      (a plain dense product, |pc − ĉ·b| ≤ γ_K|ĉ||b|) they are 0: the caller's allowance for a
      dense product covers it;
    * ``gamma``: γ_{K+L+3}, L the longest run of cells computed from their neighbours;
    * ``references``: how many cells were multiplied densely.
    """

    pc: Tensor
    pg: Tensor
    mag_c: Tensor
    mag1_c: Tensor
    mag_g: Tensor
    mag1_g: Tensor
    gamma: float
    references: int


def chain_products(c: Tensor, g: Tensor, mid: Tensor, b: Tensor) -> ChainProducts | None:
    r"""ĉ_k·b and ĝ_k·b for a batch of cells k, each cell's from its neighbour's by sparse differences.

    ``c``, ``g``: (C, *lead, K) float64, a layer input's value centres and slopes on C cells with
    midpoints ``mid`` (C,); ``b``: (K, O) float64, contiguous (the layer's [W0; ΔW]ᵀ). Behind a
    ReLU whose input is exact in α (an MLP's first layer: z(α) = A + αB, so ĉ_k = fl(A + m_k B)
    and ĝ_k = B on the active neurons, 0 on the inactive) neighbouring cells differ only where a
    neuron changes state or is mixed: about 2.4 % of the entries between cells of width 0.05 on the
    784-1000-1000-10 net. With the cells ordered by midpoint, μ_j = fl(m_j − m_{j−1}) and the exact
    identities

        ĝ_j = ĝ_{j−1} + D_j,                 D_j = ĝ_j − ĝ_{j−1},
        ĉ_j = ĉ_{j−1} + μ_j ĝ_j + F_j,       F_j = ĉ_j − ĉ_{j−1} − μ_j ĝ_j,

    give ĝ_k·b = ĝ_r·b + Σ_{j=r+1..k} D_j·b and ĉ_k·b = ĉ_r·b + Σ_j (μ_j ĝ_j·b + F_j·b) from a
    reference cell r multiplied densely (n = k − r). D̃_j = fl(D_j) and the entries S_j of
    F̃_j = fl(fl(ĉ_j − ĉ_{j−1}) − fl(μ_j ĝ_j)) above τ_j = 2⁻⁴⁸(M_ĉj + M_ĉj−1 + |μ_j|M_ĝj)
    (M_x = ‖x‖_∞ per row; an active neuron leaves only rounding noise, at most 2.01u times that sum)
    are multiplied as one CSR matrix; the rest, R_j (|R_j| ≤ τ_j), are bounded. A cell whose
    differences have more than ``CHAIN_MAX_DENSITY`` non-zero entries becomes a reference itself.

    Rounding (Higham §3.1: a sum of n terms in any order errs by at most γ_n·Σ|terms|, a dot product
    of length K by γ_K·Σ|a_i b_i|; |D̃ − D| ≤ u|D̃|(1 + u); |F̃ − F| ≤ 2.01u(|ĉ_j| + |ĉ_{j−1}| +
    |μ_j ĝ_j|); T_j = fl(fl(S_j b) + μ_j G_j) rounds twice) with γ' = γ_{K+n+3}, u/γ' ≤ 1/(K + 3)
    and, per row and column l, |x|·|b|_l ≤ M_x·Σ_i|b_il| and ≤ ‖x‖₁·max_i|b_il|:

        |G_k − ĝ_k b| ≤ γ_{K+n+2}(|ĝ_r| + Σ_j |D̃_j|)|b|,
        |C_k − ĉ_k b| ≤ γ'(|ĉ_r| + Σ_j |S_j|)|b| + Σ_j [γ_{n+3}|μ_j||ĝ_j||b|
                        + 1.01|μ_j|·|G_j − ĝ_j b| + τ_j Σ_i|b_il| + 2.01u(|ĉ_j| + |ĉ_{j−1}| + |μ_j ĝ_j|)|b|],

    so with a = (L + 4)/(K + 3) ≥ γ_{n+3}/γ' and ≥ 2.01u/γ':
    ``mag_g`` = M_ĝr, ``mag1_g`` = Σ_j ‖D̃_j‖₁; ``mag_c`` = M_ĉr + Σ_j [a(M_ĉj + M_ĉj−1 + 2|μ_j|M_ĝj)
    + 1.01|μ_j|mag_g,j + τ_j/γ'], ``mag1_c`` = Σ_j [‖S_j‖₁ + 1.01|μ_j|mag1_g,j] (underflow: the
    2⁻¹⁰²⁰ every rounding bound here adds to a row's magnitude), plus, absolutely, what the products
    lose to underflow, at most (L + 1)(K + 1)·2⁻¹⁰⁷⁴ per entry (``_up``'s 2⁻¹⁰⁰⁰ covers it).

    None where it does not pay or apply: fewer than 3 cells, more than half of them references,
    a non-float64 or non-finite input, mismatched shapes, or an input whose neighbouring cells
    differ widely (judged first on 4 096 entries, so a deep layer pays one short look)."""
    if c.dim() < 2 or tuple(g.shape) != tuple(c.shape) or c.shape[0] < 3 or tuple(mid.shape) != (c.shape[0],):
        return None
    if c.dtype != torch.float64 or g.dtype != torch.float64 or b.dtype != torch.float64 or b.dim() != 2 or b.shape[0] != c.shape[-1]:
        return None
    cells, k, o = c.shape[0], c.shape[-1], b.shape[1]
    lead = c.shape[1:-1]
    n = c[0].numel() // k if k else 0
    if n == 0 or k == 0 or o == 0:
        return None
    order = None
    if not bool((mid[1:] >= mid[:-1]).all()):
        order = torch.argsort(mid)
        c, g, mid = c[order], g[order], mid[order]
    c3, g3 = c.reshape(cells, n, k), g.reshape(cells, n, k)
    probe = min(n * k, 4096)
    if int(torch.count_nonzero(g3[1].reshape(-1)[:probe] != g3[0].reshape(-1)[:probe])) > 2 * CHAIN_MAX_DENSITY * probe:
        return None
    inf = float("inf")
    m_c = torch.linalg.vector_norm(c3, inf, dim=-1)  # (C, N)
    m_g = torch.linalg.vector_norm(g3, inf, dim=-1)
    if not (bool(torch.isfinite(m_c).all()) and bool(torch.isfinite(m_g).all())):
        return None
    mu = mid[1:] - mid[:-1]  # (C − 1,)
    d = g3[1:] - g3[:-1]  # (C − 1, N, K)
    f = (c3[1:] - c3[:-1]).sub_(g3[1:] * mu.reshape(-1, 1, 1))
    tau = (m_c[1:] + m_c[:-1] + mu.abs().reshape(-1, 1) * m_g[1:]) * CHAIN_SMALL  # (C − 1, N)
    large = f.abs() > tau.unsqueeze(-1)
    per = float(n * k)
    dense_d = torch.count_nonzero(d.reshape(cells - 1, -1), dim=1).double() / per
    dense_f = torch.count_nonzero(large.reshape(cells - 1, -1), dim=1).double() / per
    linked = ((dense_d <= CHAIN_MAX_DENSITY) & (dense_f <= CHAIN_MAX_DENSITY)).tolist()  # cell j + 1 from cell j
    refs = [0] + [j + 1 for j, ok in enumerate(linked) if not ok]
    if 2 * len(refs) > cells:
        return None
    runs = list(zip(refs, refs[1:] + [cells]))
    steps = max(e - s - 1 for s, e in runs)
    gam = gamma(k + steps + 3)
    a = (steps + 4) / (k + 3)
    ref_t = torch.tensor(refs, device=c.device)
    dense = torch.matmul(torch.cat([c3[ref_t], g3[ref_t]], 0), b)  # (2R, N, O)
    seq_c, seq_g = c3.new_empty(cells, n, o), c3.new_empty(cells, n, o)
    seq_c[ref_t], seq_g[ref_t] = dense[: len(refs)], dense[len(refs) :]
    zeros = m_c.new_zeros(cells, n)
    mag_c, mag_g, mag1_c, mag1_g = m_c.clone(), m_g.clone(), zeros, zeros.clone()  # per-cell terms, summed along each run
    chained = [j + 1 for j, ok in enumerate(linked) if ok]  # cells computed from their predecessor
    if chained:
        ch = torch.tensor(chained, device=c.device)
        pj = ch - 1  # the pair (j − 1, j) as an index into d, f, tau
        s_j = torch.where(large[pj], f[pj], f.new_zeros(()))
        d_j = d[pj]
        q = _csr_matmul(torch.cat([d_j, s_j], 0).reshape(-1, k), b).reshape(2, len(chained), n, o)
        seq_g[ch] = q[0]
        mag_g[ch] = 0.0
        mag1_g[ch] = torch.linalg.vector_norm(d_j, 1, dim=-1)
    pg = torch.empty_like(seq_g)
    for s0, e0 in runs:
        torch.cumsum(seq_g[s0:e0], 0, out=pg[s0:e0])
        mag_g[s0:e0] = torch.cumsum(mag_g[s0:e0], 0)
        mag1_g[s0:e0] = torch.cumsum(mag1_g[s0:e0], 0)
    if chained:
        mu_c = mu[pj].abs().reshape(-1, 1)
        seq_c[ch] = torch.addcmul(q[1], pg[ch], mu[pj].reshape(-1, 1, 1))
        mag_c[ch] = a * (m_c[ch] + m_c[pj] + 2.0 * mu_c * m_g[ch]) + 1.01 * mu_c * mag_g[ch] + tau[pj] * (1.0 / gam)
        mag1_c[ch] = torch.linalg.vector_norm(s_j, 1, dim=-1) + 1.01 * mu_c * mag1_g[ch]
    pc = torch.empty_like(seq_c)
    for s0, e0 in runs:
        torch.cumsum(seq_c[s0:e0], 0, out=pc[s0:e0])
        mag_c[s0:e0] = torch.cumsum(mag_c[s0:e0], 0)
        mag1_c[s0:e0] = torch.cumsum(mag1_c[s0:e0], 0)
    # a reference cell's products are the plain dense ones, whose rounding every layer's standard
    # allowance covers (γ_K|ĉ||b|): no more to add there
    mag_c[ref_t], mag_g[ref_t] = 0.0, 0.0
    outs = [pc, pg, mag_c, mag1_c, mag_g, mag1_g]
    if order is not None:
        back = torch.argsort(order)
        outs = [t[back] for t in outs]
    pc, pg = (t.reshape(cells, *lead, o) for t in outs[:2])
    mags = [t.reshape(cells, *lead, 1) for t in outs[2:]]
    return ChainProducts(pc, pg, *mags, gam, len(refs))

def _add0(a: Tensor, b: Tensor) -> Tensor:
    return b if _is_zero(a) else a if _is_zero(b) else a + b


def _mul0(a: Tensor, b: Tensor | float) -> Tensor:
    if _is_zero(a):
        return a
    if isinstance(b, Tensor) and _is_zero(b):
        return b
    return a * b


def _up(e: Tensor) -> Tensor:
    """A computed remainder inflated to cover its own rounding (and underflow)."""
    return e * (1.0 + _SLACK) + _TINY


# ----------------------------------------------------------------------------- Euclidean remainders

_TINY_N = 2.0**-500  # absolute inflation of a computed Euclidean norm (squares that underflowed)


def _l2(e: Tensor, width: int) -> Tensor:
    """A proven upper bound of ‖δ‖₂ over the last axis (kept, size 1) for any |δ| ≤ e entrywise.

    ``width`` is the true length of that axis (e may broadcast along it: then e is constant there
    and the norm is √width·e). The computed Σe² has relative error ≤ γ_{K+1} (non-negative terms),
    the square root halves it and adds one rounding; (1 + 2γ_{K+4}) covers all of it with the final
    product's rounding. Squares below the normal range lose at most K·2⁻¹⁰⁷⁴, i.e. √K·2⁻⁵³⁷ ≤ 2⁻⁵⁰⁰
    on the norm."""
    if e.dim() == 0 or e.shape[-1] != width:
        return e.amax(-1, keepdim=True) * (math.sqrt(width) * (1.0 + 8 * U)) + _TINY_N if e.dim() else (
            e * (math.sqrt(width) * (1.0 + 8 * U)) + _TINY_N).reshape(1)
    return (e * e).sum(-1, keepdim=True).sqrt() * (1.0 + 2 * gamma(width + 4)) + _TINY_N


def _with_norm(c: Tensor, g: Tensor, e: Tensor, carried: Tensor, extra: Tensor) -> "TM":
    """A Taylor model whose remainder δ is bounded entrywise by e and in Euclidean norm over the last
    axis by n = min(carried + ‖extra‖₂, ‖e‖₂), where ``carried`` bounds the norm of the part mapped
    from an input's remainder and ``extra`` bounds the new parts entrywise (triangle inequality).
    Every entry of δ is at most ‖δ‖₂, so e ← min(e, n) is sound."""
    width = c.shape[-1]
    n = torch.minimum(_up(carried + _l2(extra, width)), _l2(e, width))
    return TM(c, g, torch.minimum(e, n), n)


def _norm_of(t: "TM", width: int) -> Tensor:
    """‖δ‖₂ over the last axis for the remainder δ of ``t``: the tracked bound, else from e."""
    return t.n if t.n is not None else _l2(t.e, width)


def _frobenius_up(a: Tensor) -> float:
    """A proven upper bound of the Frobenius norm of a float64 tensor (same argument as :func:`_l2`)."""
    return math.sqrt(float((a * a).sum())) * (1.0 + 2 * gamma(a.numel() + 4)) + _TINY_N


def _spectral_bound(a: Tensor, squarings: int = 5) -> float:
    r"""A proven upper bound of the largest singular value ‖A‖₂ of a float64 matrix (exact entries).

    After an exact power-of-two scaling, T₀ = sym(fl(AᵀA)) (the smaller Gram matrix) satisfies
    ‖T₀ − AᵀA‖₂ ≤ η₀ = γ_r‖A‖_F² + u‖T₀‖_F (|fl(AᵀA) − AᵀA| ≤ γ_r|A|ᵀ|A| entrywise, Higham §3.5, and
    ‖|A|ᵀ|A|‖_F ≤ ‖A‖_F²; symmetrising a symmetric target cannot increase the error, its own
    rounding is u|T₀|), so λ_max(AᵀA) ≤ ‖T₀‖₂ + η₀ (Weyl). For symmetric T, ‖T‖₂² = ‖T²‖₂ and
    T_{j+1}·2^{k_j} = sym(fl(T_j T_j)) is within η_j = γ_c‖T_j‖_F² + u‖sym(fl(T_j T_j))‖_F of
    T_j², so ‖T_j‖₂ ≤ √(2^{k_j}‖T_{j+1}‖₂ + η_j); at the end ‖T_J‖₂ ≤ ‖T_J‖_F. The bound
    overestimates ‖A‖₂ by at most the factor c^{1/2^{J+2}} (c = the Gram size): ≤ 1.06 for c ≤ 1000
    and J = 5. Back-substitution in Python floats, each step inflated by 2⁻⁵⁰ (≥ 8 roundings)."""
    if a.numel() == 0:
        return 0.0
    mx = float(a.abs().max())
    if mx == 0.0:
        return 0.0
    if not math.isfinite(mx):
        return math.inf
    up = 1.0 + 2.0**-50
    e0 = math.frexp(mx)[1]
    A = torch.ldexp(a.to(torch.float64), torch.tensor(-e0, dtype=torch.int32, device=a.device))  # exact (|A| < 1)
    if A.shape[0] < A.shape[1]:
        A = A.T
    r, c = A.shape
    G = A.T @ A
    T = (G + G.T) * 0.5
    fa = _frobenius_up(A)
    eta0 = (gamma(r) * fa * fa + U * _frobenius_up(T)) * up + _TINY
    steps: list[tuple[int, float]] = []
    for _ in range(squarings):
        ft = _frobenius_up(T)
        P = T @ T
        S = (P + P.T) * 0.5
        eta = (gamma(c) * ft * ft + U * _frobenius_up(S)) * up + _TINY
        ms = float(S.abs().max())
        if ms == 0.0:
            steps.append((0, eta))
            T = S
            break
        k = math.frexp(ms)[1]
        T = torch.ldexp(S, torch.tensor(-k, dtype=torch.int32, device=S.device))
        steps.append((k, eta))
    beta = _frobenius_up(T)
    for k, eta in reversed(steps):
        beta = math.sqrt(math.ldexp(beta, k) + eta) * up
    lam = (beta + eta0) * up
    return math.ldexp(math.sqrt(lam) * up + _TINY, e0) * up


def _matrix_norms(p: "Param") -> dict:
    """Proven norm bounds of a matrix parameter along the path, cached on the parameter:
    ``s0, sT, sD`` ≥ ‖W0‖₂, ‖W0 + ΔW‖₂, ‖ΔW‖₂ (the real W0 + ΔW, within u|ΔW| of fl(W0 + ΔW)),
    ``r0, rT, rD``: the same for every row (Euclidean norms, shape (out,)) and ``c0, cT, cD`` for
    every column (shape (in,), for the reverse walk of :mod:`.adjoint`)."""
    if not p.norms:
        wt = p.w0 + p.dw  # |fl(W0 + ΔW) − (W0 + ΔW)| ≤ u|W0 + ΔW| ≤ 2u|fl(W0 + ΔW)|
        grow = 1.0 + 4 * U
        p.norms.update(
            s0=_spectral_bound(p.w0),
            sT=(_spectral_bound(wt) + 2 * U * _frobenius_up(wt)) * grow,
            sD=_spectral_bound(p.dw),
            r0=_l2(p.w0.abs(), p.w0.shape[-1]).squeeze(-1),
            rT=_l2(wt.abs(), wt.shape[-1]).squeeze(-1) * (1.0 + 4 * U),
            rD=_l2(p.dw.abs(), p.dw.shape[-1]).squeeze(-1),
            c0=_l2(p.w0.abs().T, p.w0.shape[0]).squeeze(-1),
            cT=_l2(wt.abs().T, wt.shape[0]).squeeze(-1) * (1.0 + 4 * U),
            cD=_l2(p.dw.abs().T, p.dw.shape[0]).squeeze(-1),
        )
    return p.norms


def _along_cells(v0: Tensor | float, vT: Tensor | float, vD: Tensor | float, m: Tensor, h: Tensor) -> Tensor:
    """An upper bound of ‖W0 + αΔW‖ over each cell α ∈ [m − h, m + h], for a norm with bounds v0 at
    α = 0, vT at α = 1 and vD of ΔW: convexity, (1 − α)v0 + αvT at the cell's ends, where the cell
    lies in [0, 1]; the triangle inequality v0 + (|m| + h)vD elsewhere."""
    a, b = m - h, m + h
    ends = torch.maximum((1.0 - a) * v0 + a * vT, (1.0 - b) * v0 + b * vT)
    slack = (abs(vT) + abs(v0) if not isinstance(vT, Tensor) else vT.abs() + v0.abs()) * (8 * U)
    ends = ends * (1.0 + 4 * U) + slack + _TINY
    tri = (v0 + (m.abs() + h) * vD) * (1.0 + 4 * U) + _TINY
    inside = (a >= 0.0) & (b <= 1.0)
    return torch.where(inside, torch.minimum(ends, tri), tri)


# ----------------------------------------------------------------------------- numbers


@dataclass(frozen=True, slots=True)
class TM:
    """A first-order Taylor model on a batch of cells: v(m + t) ∈ c + g·t + [−e, e] for |t| ≤ h.

    Tensors have a leading cell axis (size C or 1, broadcast against the cells' m and h).
    """

    c: Tensor
    g: Tensor
    e: Tensor
    # optional: an upper bound of the Euclidean norm of the remainder vector over the last axis,
    # shape (…, 1); None when not tracked (see :func:`_l2` and the Linear rule)
    n: Tensor | None = None

    def magnitude(self, h: Tensor) -> Tensor:
        """An upper bound of |v| on the cell (up to the rounding of this sum, which callers inflate, and
        what |ĝ|·h loses to underflow, < 2⁻¹⁰²², which callers add where they multiply the bound by
        weights that may be large: the rules' ``rounding``)."""
        return self.c.abs() + self.g.abs() * h + self.e

    def bounds(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Rigorous [lower, upper] of v on each cell."""
        r = self.g.abs() * h + self.e
        lo = self.c - r
        hi = self.c + r
        pad = (self.c.abs() + r) * (4 * U) + _TINY
        return lo - pad, hi + pad

    def map(self, fn: Callable[[Tensor], Tensor]) -> "TM":
        """``fn`` applied to c, g and e: exact for maps that only move, copy or select entries
        (reshape, flatten, indexing), which commute with |·| and involve no arithmetic."""
        return TM(fn(self.c), self.g if _is_zero(self.g) else fn(self.g), self.e if _is_zero(self.e) else fn(self.e))


@dataclass(frozen=True, slots=True)
class Enclosure:
    """An activation h(α) and its derivative h′(α), each as a Taylor model over the cells."""

    v: TM
    d: TM

    @property
    def shape(self) -> torch.Size:
        """The activation's shape without the cell axis (what ``size()`` returns in the model)."""
        return self.v.c.shape[1:]

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Enclosure":
        return Enclosure(self.v.map(fn), self.d.map(fn))


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter on the path: θ(α) = θ0 + α·Δθ (no cell axis).

    ``norms`` caches the proven norm bounds of a matrix parameter (:func:`_matrix_norms`)."""

    w0: Tensor
    dw: Tensor
    norms: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> torch.Size:
        return self.w0.shape


@dataclass(frozen=True, slots=True)
class Kink:
    """What a ReLU/LeakyReLU did on a batch of cells when its Clarke term is deferred
    (:attr:`EnclosureNumbers.deferred`): ``pos``/``neg`` mark the neurons whose sign is proven on
    the cell, ``idx`` (as from ``nonzero(as_tuple=True)``) the mixed ones, where the derivative was
    propagated with the midpoint slope D̃ = (1 + slope)/2, and ``w`` ≥ (1 − slope)/2·|ṽ′| there, so
    that |(D − D̃)ṽ′| ≤ w for the true slope D ∈ [slope, 1] (see :mod:`.adjoint`)."""

    pos: Tensor
    neg: Tensor
    idx: tuple[Tensor, ...]
    w: Tensor
    slope: float
    # at ``idx``: (ĉ, ĝ, e) of the pre-activation, v(m + t) ∈ ĉ + ĝt ± e for |t| ≤ h (e covers the
    # rule's own rounding of that test), and (ĉ′, ĝ′, e′) of ṽ′ likewise — where along the cell
    # each mixed neuron's sign is known, and its term (:func:`~.adjoint.kink_pieces`); None where
    # not recorded
    window: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] | None = None


@dataclass(frozen=True, slots=True)
class PoolKink(Kink):
    """What max pooling did on a batch of cells when its kinks are deferred (:func:`_max_pool2d`):
    per output entry and window offset k (leading axis of ``p`` and ``cand``), whether the entry can
    be the window's maximum somewhere on the cell (``cand``) and the weight P̃_k it has in the
    derivative (1/|candidates| there, else 0); ``w`` ≥ |Σ_k (P_k − P̃_k)ṽ′_k| for every choice of the
    maximum P (a vertex of the candidates' simplex) at the mixed outputs (two or more candidates);
    ``geometry`` = (kernel, stride, padding, dilation, input height, input width)."""

    p: Tensor | None = None
    cand: Tensor | None = None
    geometry: tuple | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """What a Linear or Conv2d layer left out of its derivative when remainders are deferred
    (:attr:`EnclosureNumbers.deferred`): the derivative of o = W(α)x + b(α) is W(α)x′ + ΔW·x + Δb,
    and the walk carries ΔW·(ĉ + ĝt) of the input's Taylor polynomial alone; the rest, ΔW·δ with
    |δ| ≤ ``e`` (the input's value remainder, entrywise), is bounded afterwards by the reverse walk
    as ⟨|ΔW|ᵀ sup|g|, e⟩, g the loss gradient at the layer's output (see :mod:`.adjoint`)."""

    e: Tensor


def _cells_view(x: Tensor, ndim: int) -> Tensor:
    """A (C,) tensor viewed as (C, 1, …, 1) with ``ndim`` trailing singleton axes."""
    return x.reshape(-1, *([1] * ndim))


# ----------------------------------------------------------------------------- the number type


def _odd_number(v: object, depth: int = 0) -> bool:
    """Whether ``v`` (or an item of a tuple or list in it) is a number of a type other than
    Python's own or NumPy's: a subclass of ``int`` or ``float`` may answer ``float(v)`` otherwise
    than torch reads it (torch takes the stored value), so the rules, which read numbers with
    ``float()``, take none of them."""
    if isinstance(v, (int, float, complex)):
        t = type(v)
        return t not in (int, float, bool, complex) and t.__module__ != "numpy"
    if isinstance(v, (tuple, list)) and depth < 2:
        return any(_odd_number(u, depth + 1) for u in v)
    return False


def _guarded(r: Callable[..., Any], kind: str, nt: "EnclosureNumbers", args: tuple, kwargs: dict) -> Any:
    """``r(nt, *args, **kwargs)``, declined (``NotImplemented``) where the call's numbers are not
    plain (:func:`_odd_number`; for a module rule, the module's own attributes too) or its arguments
    do not fit the rule's parameters (a keyword such as ``input=`` the rule names otherwise): a
    declined call is refused by name instead of failing inside the rule. Why a call was declined
    is left in ``nt.declined`` (here, or by the rule through :func:`_decline`) for the refusal."""
    nt.declined = None
    odd = [v for v in (*args[1 if kind == "module" else 0:], *kwargs.values()) if _odd_number(v)]
    if odd:
        return _decline(nt, f"a number of type {_odd_type(odd[0])}, not Python's or NumPy's own")
    if kind == "module" and args:
        odd_attrs = [k for k, v in vars(args[0]).items() if _odd_number(v)]
        if odd_attrs:
            return _decline(nt, f"the module's attribute {odd_attrs[0]!r} holds a number of type "
                                f"{_odd_type(vars(args[0])[odd_attrs[0]])}, not Python's or NumPy's own")
    sig = _signature(r)
    if sig is not None:
        try:
            sig.bind(nt, *args, **kwargs)
        except TypeError as exc:
            foreign = [k for k in kwargs if k not in sig.parameters]
            said = f"keyword {', '.join(map(repr, foreign))}" if foreign else str(exc)
            return _decline(nt, f"arguments it does not take: {said}")
    return r(nt, *args, **kwargs)


def _odd_type(v: object) -> str:
    """The qualified name of the first number of a type other than Python's or NumPy's in ``v``."""
    if isinstance(v, (tuple, list)):
        return next(_odd_type(u) for u in v if _odd_number(u, 1))
    t = type(v)
    return f"{t.__module__}.{t.__qualname__}"


def _decline(nt: "EnclosureNumbers", why: str) -> Any:
    """``NotImplemented`` (the rule declines this call), with the reason kept for the refusal."""
    nt.declined = why
    return NotImplemented


@functools.lru_cache(maxsize=None)
def _signature(r: Callable[..., Any]) -> inspect.Signature | None:
    """The rule's signature, read once (None where Python cannot read one)."""
    try:
        return inspect.signature(r)
    except (TypeError, ValueError):
        return None


class EnclosureNumbers:
    """The rigorous number type for :func:`mli_theory.geometry.interpreter.interpret`.

    Args:
        mid, rad: (C,) float64 tensors, the cells' midpoints m and radii h (dyadic, exact).
    """

    name = "rigorous enclosure"

    def __init__(self, mid: Tensor, rad: Tensor):
        self.mid = mid
        self.rad = rad
        # per-walk memo of weight-only work (stacked and per-cell absolute weights), shared by the
        # example chunks of one enclosure call: keyed by id, holding the object to pin the id
        self._memo: dict[tuple[int, str], tuple[object, Any]] = {}
        # None: ReLU derivatives carry their Clarke set [slope, 1]·v′ in the remainder; a list:
        # they use the midpoint slope and append a :class:`Kink` (bounded later by
        # :func:`mli_theory.certify.adjoint.kink_bound`; the walk's L′ is not an enclosure without it)
        # Linear and Conv2d layers likewise leave their input's value remainder out of the
        # derivative and append a :class:`Source`
        self.deferred: list[Kink | Source] | None = None
        # True: a walk for values alone (points of the validation, where L′ is not asked): Linear
        # and ReLU rules skip the derivative and return it as identically zero, so the walk's
        # derivative is no enclosure; every value is computed exactly as in a full walk
        self.values_only = False
        # True (set with values_only when every cell has width 0: the validation's points): t = 0,
        # so the Taylor models' slopes ĝ never reach a value; Linear and convolution layers carry
        # them as zero, which skips their products with ĝ (half of those layers' work)
        self.points = False
        # why the last rule called declined its arguments (None: no reason given), for the refusal
        self.declined: str | None = None

    def memo(self, obj: object, tag: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per (object, tag) for this batch of cells."""
        key = (id(obj), tag)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not obj:
            hit = (obj, make())
            self._memo[key] = hit
        return hit[1]

    # --- protocol
    def is_number(self, obj: object) -> bool:
        return isinstance(obj, (Enclosure, Param))

    def rule(self, kind: str, key: object):
        table = _MODULE_RULES if kind == "module" else _FUNCTION_RULES if kind == "function" else _METHOD_RULES
        r = table.get(key)
        if r is None:
            return None
        return lambda *a, **k: _guarded(r, kind, self, a, k)

    def fallback(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError("no rigorous enclosure rule for this operation (certification needs one for every operation)")

    # --- helpers
    def m(self, ndim: int) -> Tensor:
        return _cells_view(self.mid, ndim)

    def h(self, ndim: int) -> Tensor:
        return _cells_view(self.rad, ndim)


# ----------------------------------------------------------------------------- bilinear maps


def _abs_sum(*ts: Tensor | None) -> Tensor | float:
    out: Tensor | float = 0.0
    for t in ts:
        if t is not None:
            out = out + t.abs()
    return out


def _affine_layer(
    nt: EnclosureNumbers,
    x: Tensor | Enclosure,
    w: Param | Tensor,
    b: Param | Tensor | None,
    f: Callable[[Tensor, Tensor], Tensor],
    k_len: int,
    bias_view: Callable[[Tensor], Tensor],
    abs_cellwise: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    rounding: Callable[[Tensor], Tensor] | None = None,
    norms: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor, Tensor]] | None = None,
    defer: bool = False,
    at_points: Callable[[Tensor], Tensor] | None = None,
    abs_dw: Callable[[Tensor], Tensor] | None = None,
) -> Enclosure:
    """o = f(x, W(α)) + b(α) for a map f bilinear in (x, W) with non-negative coefficients.

    ``f(x, W)`` must accept x with a leading cell axis (or none) and a shared W. ``abs_cellwise(e,
    m, h)``, if given, returns f(e, |W(m)| + h|ΔW|) with per-cell weights; otherwise the looser
    f(e, |W0|) + (m + h)·f(e, |ΔW|) is used (valid as |W0 + mΔW| + h|ΔW| ≤ |W0| + (|m| + h)|ΔW|).
    ``rounding(M)``, if given, returns an upper bound of f(M, |W0| + |ΔW|) for M ≥ 0 (cheaper than
    the product itself); it is multiplied by 2γ_{K+16} to cover every rounding error.
    ``norms(m, h, nd)``, if given (a matrix acting on the last axis), returns per-cell upper bounds
    (‖W(α)‖₂, rows ‖W(α)_j‖₂, ‖ΔW‖₂, rows ‖ΔW_j‖₂) viewed against the output: the remainder is then
    also carried in Euclidean norm, ‖W(α)δ‖₂ ≤ ‖W(α)‖₂‖δ‖₂ and |(W(α)δ)_j| ≤ ‖W(α)_j‖₂‖δ‖₂, which
    does not compound the way entrywise |W|-propagation does in wide layers.
    ``defer``: when remainders are deferred (:attr:`EnclosureNumbers.deferred`), the input's value
    remainder is left out of the derivative's x·ΔW term and recorded as a :class:`Source` for the
    reverse walk (the map must be one :mod:`.adjoint` passes back: Linear, Conv2d).
    ``at_points(x)``, if given, returns f(x, fl(W0 + mΔW)) per cell: on points
    (:attr:`EnclosureNumbers.points`) the value is that one product (:func:`_affine_at_points`).
    ``abs_dw(e)``, if given, returns an upper bound of f(e, |ΔW|) for e ≥ 0 (rounding included, as
    :func:`upper_matmul`): the derivative's x·ΔW remainder when it is not deferred; otherwise that
    product is computed as f(e, |ΔW|) in float64, its rounding covered by the ``rounding`` allowance.
    ``f.cell_chain(ĉ, ĝ, mid)``, where f has it (Linear), returns the centres' four products along
    the batch of cells and ``allow(a, b)`` ≥ a·ε_c + b·ε_g for the rounding ε_c, ε_g of each of ĉ's
    and ĝ's products (:func:`chain_products`), or None where they are better computed densely.
    """
    defer = defer and isinstance(w, Param) and nt.deferred is not None and not nt.values_only
    if not isinstance(w, Param):
        w = Param(w, torch.zeros_like(w))
    if b is not None and not isinstance(b, Param):
        b = Param(b, torch.zeros_like(b))
    g2 = gamma(k_len + 16) * 2.0
    w_mag = (w.w0.abs() + w.dw.abs()) if rounding is None else None

    if not isinstance(x, Enclosure):  # an input: exactly affine in α
        nd = x.dim()
        m, h = nt.m(nd), nt.h(nd)
        p1, p2 = _multi(f, x, [w.w0, w.dw])
        rho = (rounding(x.abs().unsqueeze(0)).squeeze(0) if rounding is not None else f(x.abs(), w_mag)) * g2
        c = p1.unsqueeze(0) + m * p2.unsqueeze(0)
        g = p2.unsqueeze(0).expand_as(c)
        if b is not None:
            c = c + bias_view(b.w0) + m * bias_view(b.dw)
            g = g + bias_view(b.dw)
            rho = rho + bias_view(b.w0.abs() + b.dw.abs()) * g2
        e = _up(rho.unsqueeze(0).expand_as(c) * 1.0)
        if nt.values_only:
            return Enclosure(TM(c, _zero(c) if nt.points else g, e), _zero_tm(c))
        return Enclosure(TM(c, g, e), TM(g, _zero(g), e))

    if nt.points and at_points is not None and rounding is not None:
        return _affine_at_points(nt, x.v, w, b, k_len, bias_view, abs_cellwise, rounding, norms, at_points)
    v, d = x.v, x.d
    nd = v.c.dim() - 1
    m, h = nt.m(nd), nt.h(nd)
    shape = v.c.shape
    # shared products: the non-zero rows of [ĉ, ĝ, ĉ′, ĝ′] times W0 and ΔW (a zero is a 0-dim tensor)
    comps = [v.c, v.g] if nt.values_only else [v.c, v.g, d.c, d.g]
    zero = _zero(v.c)
    p0, p1 = [zero] * 4, [zero] * 4
    shared = None if nt.values_only else _shared_difference(f, v.g, d.c, shape)
    # ĉ·W and ĝ·W along the cells, from sparse differences between neighbours (Linear only), with
    # allow(a, b) bounding a·ε_c + b·ε_g, ε_c and ε_g each of ĉ's and ĝ's products' rounding (chain_products)
    chain = None
    cell_chain = getattr(f, "cell_chain", None)
    if cell_chain is not None and len(shape) >= 3 and shape[0] == nt.mid.shape[0] and tuple(v.g.shape) == tuple(shape):
        chain = cell_chain(v.c, v.g, nt.mid)
    if chain is not None:
        p0[0], p1[0], p0[1], p1[1] = chain[:4]
    for i, t in enumerate(comps):  # values only: the derivative's products stay zero
        if chain is not None and i < 2:
            continue
        if i == 2 and shared is not None:  # ĉ′·W = ĝ·W + D·W, D sparse (see _shared_difference)
            q0, q1 = f.sparse_multi(shared, [w.w0, w.dw]) if bool(shared.any()) else (zero, zero)
            p0[2], p1[2] = _add0(p0[1], q0), _add0(p1[1], q1)
        elif not _is_zero(t):  # one product per component with [W0; ΔW] (no stacked copy)
            p0[i], p1[i] = _multi(f, t.expand(shape), [w.w0, w.dw])
    cW0, gW0, dcW0, dgW0 = p0
    cdW, gdW, dcdW, dgdW = p1
    hh = h * h * 0.5
    # value: W(α)x = W_m ĉ + t(W_m ĝ + ΔW ĉ) + t² ΔW ĝ + W(α)δ
    c = cW0 + m * cdW + hh * gdW
    g = _zero(c) if nt.points else gW0 + m * gdW + cdW  # points: t = 0, the slope is never used
    vo = nt.values_only  # the derivative is skipped (see EnclosureNumbers.values_only)
    if not vo:  # derivative: x′ W(α) + x ΔW
        dc = _add0(dcW0 + m * dcdW + hh * dgdW, cdW)
        dg = _add0(_add0(dgW0 + m * dgdW, dcdW), gdW)
    if abs_cellwise is not None:
        e_v = abs_cellwise(v.e.expand(shape).unsqueeze(0), m, h)[0]
        if not vo:
            e_d = abs_cellwise(d.e.expand(shape).unsqueeze(0), m, h)[0]
            if defer:
                e_x_dw = None
            elif abs_dw is not None:  # the x·ΔW term of the derivative
                e_x_dw = abs_dw(v.e.expand(shape))
            else:
                e_x_dw = f(v.e.expand(shape), w.dw.abs())
    else:
        av0, av1 = _multi(f, v.e.expand(shape), [w.w0.abs(), w.dw.abs()])
        e_v = av0 + (m.abs() + h) * av1
        if not vo:
            ad0, ad1 = _multi(f, d.e.expand(shape), [w.w0.abs(), w.dw.abs()])
            e_d = ad0 + (m.abs() + h) * ad1
            e_x_dw = av1

    def _rho(t: Tensor) -> Tensor:
        return (rounding(t.unsqueeze(0))[0] if rounding is not None else f(t + _UNDER, w_mag)) * g2

    rho_v = _rho(v.magnitude(h).expand(shape))
    if norms is not None:
        s_w, r_w, s_d, r_d = norms(m, h, nd)
        nv = _norm_of(v, shape[-1])
        e_v = torch.minimum(e_v, r_w * nv)
        if not vo:
            ndv = _norm_of(d, shape[-1])
            e_d = torch.minimum(e_d, r_w * ndv)
            if not defer:
                e_x_dw = torch.minimum(e_x_dw, r_d * nv)
    extra_v = rho_v  # the entrywise-only parts: rounding, t² terms, bias rounding
    if not _is_zero(gdW):
        extra_v = extra_v + hh * gdW.abs()
    if b is not None:
        c = c + bias_view(b.w0) + m * bias_view(b.dw)
        if not nt.points:
            g = g + bias_view(b.dw)
        bmag = bias_view(b.w0.abs() + b.dw.abs()) * g2
        extra_v = extra_v + bmag
    if chain is not None:  # |δc| + h|δg| + (h²/2)ε_g (the t² radius) ≤ (1 + |m| + h)(ε_c + h·ε_g)
        grow = 1.0 + m.abs() + h
        extra_v = extra_v + chain[4](grow, grow * h)
    e = _up(e_v + extra_v)
    value = TM(c, g, e) if norms is None else _with_norm(c, g, e, s_w * nv, extra_v)
    if vo:
        return Enclosure(value, _zero_tm(c))
    extra_d = _rho(d.magnitude(h).expand(shape)) + rho_v
    if shared is not None:  # the products of ĝ and D in place of ĉ′'s: see _shared_difference
        extra_d = extra_d + _rho(v.g.abs().expand(shape) + shared.abs() + d.c.abs().expand(shape))
    if chain is not None:  # cdW in dc, gW0 + m·gdW (through ĉ′ = ĝ + D) in dc, dcdW and gdW in dg
        grow = 1.0 + m.abs() + 2.0 * h
        extra_d = extra_d + chain[4](grow, grow)
    if not _is_zero(dgdW):
        extra_d = extra_d + hh * dgdW.abs()
    if b is not None:
        dc = dc + bias_view(b.dw)
        extra_d = extra_d + bmag
    if defer:  # ΔW·δ goes to the reverse walk (Source); the derivative keeps ΔW·(ĉ + ĝt)
        nt.deferred.append(Source(v.e))
        de = _up(e_d + extra_d)
        if norms is None:
            return Enclosure(value, TM(dc, dg, de))
        return Enclosure(value, _with_norm(dc, dg, de, s_w * ndv, extra_d))
    de = _up(e_d + e_x_dw + extra_d)
    if norms is None:
        return Enclosure(value, TM(dc, dg, de))
    return Enclosure(value, _with_norm(dc, dg, de, s_w * ndv + s_d * nv, extra_d))


SHARED_MAX_DENSITY = 0.05  # D = ĉ′ − ĝ is multiplied as a sparse matrix when at most this share of it is non-zero


def _shared_difference(f: Callable, g: Tensor, dc: Tensor, shape: torch.Size) -> Tensor | None:
    r"""D = fl(ĉ′ − ĝ), when the layer's products of ĉ′ (the derivative's centre) are better computed
    as ĝ·W + D·W (one sparse product in place of a dense one); else None.

    Behind a layer whose input is exact (an MLP's first Linear layer) the derivative's centre and
    the value's slope are the same tensor, and a ReLU maps both alike on every neuron whose sign is
    proven: they differ only on the few mixed neurons. Any D serves: the caller adds
    2γ_{K+16}·f(|ĝ| + |D| + |ĉ′|, |W0| + |ΔW|) (its cheap bound) to the derivative's remainder, which
    covers |fl(fl(ĝW) + fl(DW)) − ĉ′W| ≤ γ_{K+3}(|ĝ| + |D| + |ĉ′|)|W| (|D − (ĉ′ − ĝ)| ≤ u|ĉ′ − ĝ|,
    two products of γ_K and a sum). Used when ``f`` has a sparse product (``f.sparse_multi``: Linear)
    and D has at most ``SHARED_MAX_DENSITY`` non-zero entries."""
    if getattr(f, "sparse_multi", None) is None or _is_zero(g) or _is_zero(dc) or len(shape) < 2:
        return None
    if tuple(g.shape) != tuple(shape) or tuple(dc.shape) != tuple(shape):
        return None
    probe = min(g.numel(), 4096)  # a first look at a few entries: layers where they differ everywhere pay no more
    if int(torch.count_nonzero(dc.reshape(-1)[:probe] != g.reshape(-1)[:probe])) > 2 * SHARED_MAX_DENSITY * probe:
        return None
    diff = dc - g
    if int(torch.count_nonzero(diff)) > SHARED_MAX_DENSITY * diff.numel():
        return None
    return diff


_POINT_CHEAP = 2.0**-30  # at points, the remainder's cheap bound is kept when below this share of |o|


def _affine_at_points(nt: EnclosureNumbers, v: TM, w: Param, b: Param | None, k_len: int, bias_view: Callable[[Tensor], Tensor],
                      abs_cellwise: Callable[[Tensor, Tensor, Tensor], Tensor] | None, rounding: Callable[[Tensor], Tensor],
                      norms: Callable | None, at_points: Callable[[Tensor], Tensor]) -> Enclosure:
    """The value of o = f(x, W(m)) + b(m) at points (cells of width 0, |m| ≤ 1; values only).

    With t = 0 the input is ĉ ± e and o = f(ĉ, W(m)) + f(δ, W(m)) + b(m), |δ| ≤ e. The product is
    computed once with the rounded weights W̃ = fl(W0 + fl(mΔW)) (:func:`_weights_at`), where a full
    cell needs four (ĉ and ĝ times W0 and ΔW). Rounding: |W̃ − W(m)| ≤ (2u + u²)(|W0| + |ΔW|) and
    |fl(f(ĉ, W̃)) − f(ĉ, W̃)| ≤ γ_K f(|ĉ|, |W̃|), so the error is at most
    (γ_K(1 + 3u) + 3u)·f(|ĉ|, |W0| + |ΔW|) ≤ 2γ_{K+16}·``rounding``(|ĉ|), the allowance every cell
    pays, and what fl(mΔW) and the sum lose to underflow, |W̃ − W(m)| < 2·2⁻¹⁰²² absolutely, adds at
    most K·max|ĉ|·2⁻¹⁰²¹. The remainder f(δ, W(m)) is bounded by ``rounding``(e) ≥ f(e, |W0| + |ΔW|)
    ≥ f(e, |W(m)|) (one pass over the entries, no product) when that is below 2⁻³⁰ of the output's
    size (points carry rounding-sized remainders), else by the exact product ``abs_cellwise``.
    """
    shape = v.c.shape
    nd = len(shape) - 1
    g2 = gamma(k_len + 16) * 2.0
    c = at_points(v.c.expand(shape))
    e_in = v.e.expand(shape).unsqueeze(0)
    e_v = rounding(e_in)[0]
    if abs_cellwise is not None and not float(e_v.max()) <= _POINT_CHEAP * (float(c.abs().max()) + 1.0):
        e_v = abs_cellwise(e_in, nt.m(nd), nt.h(nd))[0]
    extra_v = rounding(v.magnitude(nt.h(nd)).expand(shape).unsqueeze(0))[0] * g2
    if v.c.numel():  # what W̃ = fl(W0 + fl(mΔW)) lost to underflow, times |ĉ| (see above)
        extra_v = extra_v + k_len * _UNDER * float(v.c.abs().max())
    if norms is not None:
        s_w, r_w, _, _ = norms(nt.m(nd), nt.h(nd), nd)
        nv = _norm_of(v, shape[-1])
        e_v = torch.minimum(e_v, r_w * nv)
    m = nt.m(nd)
    if b is not None:
        c = c + bias_view(b.w0) + m * bias_view(b.dw)
        extra_v = extra_v + bias_view(b.w0.abs() + b.dw.abs()) * g2
    e = _up(e_v + extra_v)
    zero = _zero(c)
    value = TM(c, zero, e) if norms is None else _with_norm(c, zero, e, s_w * nv, extra_v)
    return Enclosure(value, _zero_tm(c))


def _weights_at(nt: EnclosureNumbers, key: object, w: Param) -> Tensor:
    """(C, *W.shape): fl(W0 + fl(m·ΔW)) for each cell's midpoint m, memoised per batch of cells."""

    def make() -> Tensor:
        mc = nt.mid.reshape(-1, *([1] * w.w0.dim()))
        return w.w0 + mc * w.dw

    return nt.memo(key, "weights-at", make)


def _zero_tm(like: Tensor) -> TM:
    """The derivative of a values-only walk (:attr:`EnclosureNumbers.values_only`): all zero, a
    0-dim zero expanded (no memory) to the value's shape, so that every rule's shape logic holds."""
    z = _zero(like).expand(like.shape)
    return TM(z, z, z)


def _multi(f: Callable[[Tensor, Tensor], Tensor], x: Tensor, ws: list[Tensor]) -> list[Tensor]:
    """[f(x, w) for w in ws], in one call when ``f`` can take the weights stacked (``f.multi``)."""
    multi = getattr(f, "multi", None)
    if multi is not None:
        return multi(x, ws)
    return [f(x, w) for w in ws]


def _linear_multi(x: Tensor, ws: list[Tensor]) -> list[Tensor]:
    out = torch.matmul(x, torch.cat(ws, 0).transpose(-1, -2))
    return list(out.split([w.shape[0] for w in ws], -1))


def abs_per_cell(nt: EnclosureNumbers, key: object, w: Param) -> Tensor:
    """(C, *W.shape): an entrywise upper bound of |W(α)| on each cell, |W0 + mΔW| + h|ΔW| plus
    4u(|W0| + |ΔW|) + 2⁻¹⁰²⁰, which covers the rounding of fl(W0 + mΔW) (|m| ≤ 1) and of this sum,
    underflow included; memoised per batch of cells under ``key``."""

    def make() -> Tensor:
        view = (-1, *([1] * w.w0.dim()))
        mc, hc = nt.mid.reshape(view), nt.rad.reshape(view)
        wmag = w.w0.abs() + w.dw.abs()
        # _UNDER: what fl(m·ΔW), h·|ΔW| and the 4u term lose to underflow (the bound multiplies
        # remainders that may be large)
        return (w.w0 + mc * w.dw).abs() + hc * w.dw.abs() + (wmag * (4 * U) + _UNDER)

    return nt.memo(key, "abs-per-cell", make)


def _linear(nt: EnclosureNumbers, x: Any, weight: Any, bias: Any = None) -> Any:
    if not isinstance(x, Enclosure) and not isinstance(weight, Param) and not isinstance(bias, Param):
        return NotImplemented
    if isinstance(x, Param) or (isinstance(x, Tensor) and x.dim() < 1):
        return NotImplemented
    k_len = weight.shape[-1]
    w = weight if isinstance(weight, Param) else Param(weight, torch.zeros_like(weight))

    def sparse(a: Tensor, b: Tensor, tag: str) -> Tensor | None:
        # sparse_upper_matmul(a, b) with b (weights only) kept contiguous per batch of cells under
        # ``tag`` (the CSR product would copy a view at every call), its column sums with it
        if b.shape[-1] < SPARSE_MIN_OUTPUTS:
            return None
        split = sparse_split(a)
        if split is None:
            return None
        bc = nt.memo(weight, tag, lambda: b.contiguous())
        return _sparse_product(split, bc, nt.memo(weight, tag + "-colsum", lambda: column_sums_up(bc)))

    def abs_cellwise(e: Tensor, m: Tensor, h: Tensor) -> Tensor:
        # e is (1, C, …, in); an upper bound with its rounding: where few entries of e matter (the
        # layer behind an MLP's first ReLU), sparse_upper_matmul, else the dense upper_matmul
        wa_t = abs_per_cell(nt, weight, w).transpose(-1, -2)
        lead = e.shape[2:-1]
        e2 = e.reshape(e.shape[0], e.shape[1], -1, e.shape[-1])  # (1, C, N, in)
        if e2.shape[0] == 1 and e2.shape[1] == wa_t.shape[0] and wa_t.dim() == 3:
            out = sparse(e2[0], wa_t, "abs-per-cell-t")
            if out is not None:
                return out.reshape(1, e.shape[1], *lead, -1)
        wa32 = memo_up32(nt, weight, "abs-per-cell-32", wa_t, e.shape[-1])
        out = upper_matmul(e2, wa_t, wa32)  # (1, C, N, out), an upper bound (rounding included)
        return out.reshape(e.shape[0], e.shape[1], *lead, -1)

    def abs_dw(e: Tensor) -> Tensor:  # an upper bound of e·|ΔW|ᵀ (rounding included), e ≥ 0
        # |ΔW| as (out, in) under the tags the reverse walk memoises it by (adjoint._source_bound)
        adw = nt.memo(weight, "abs-dw", lambda: w.dw.abs())
        out = sparse(e.reshape(e.shape[0], -1, e.shape[-1]), adw.transpose(-1, -2), "abs-dw-t") if e.dim() >= 2 else None
        if out is not None:
            return out.reshape(*e.shape[:-1], -1)
        a32 = memo_up32(nt, weight, "abs-dw-32", adw, e.shape[-1])
        return upper_matmul(e, adw.transpose(-1, -2), None if a32 is None else (a32[0].transpose(-1, -2), a32[1]))

    wsum = nt.memo(weight, "abs-row-sums", lambda: (w.w0.abs() + w.dw.abs()).sum(-1))  # (out,)
    stacked_t = nt.memo(weight, "stacked", lambda: torch.cat([w.w0, w.dw], 0).transpose(-1, -2))

    def f(x: Tensor, ww: Tensor) -> Tensor:
        return torch.matmul(x, ww.transpose(-1, -2))

    def multi(x: Tensor, ws: list[Tensor]) -> list[Tensor]:
        if len(ws) == 2 and ws[0] is w.w0 and ws[1] is w.dw:
            return list(torch.matmul(x, stacked_t).split([w.w0.shape[0]] * 2, -1))
        return _linear_multi(x, ws)

    def stacked_dense() -> Tensor:
        # [W0; ΔW]ᵀ contiguous, per batch of cells: a CSR product with a transposed view copies it at
        # every call (7 times slower on a 1000 × 2000 matrix)
        return nt.memo(weight, "stacked-contiguous", lambda: stacked_t.contiguous())

    def sparse_multi(x: Tensor, ws: list[Tensor]) -> list[Tensor]:
        # x mostly zero: one CSR product with [W0; ΔW]ᵀ (plain dot products, as the dense one)
        assert len(ws) == 2 and ws[0] is w.w0 and ws[1] is w.dw
        out = _csr_matmul(x.reshape(-1, x.shape[-1]), stacked_dense())
        return list(out.reshape(*x.shape[:-1], -1).split([w.w0.shape[0]] * 2, -1))

    def rounding(mags: Tensor) -> Tensor:
        # Σ_k M_k |W|_jk ≤ max_k M_k · Σ_k |W|_jk; _UNDER: what a magnitude lost to underflow
        return (mags.amax(-1, keepdim=True) + _UNDER) * wsum

    def cell_chain(c: Tensor, g: Tensor, mid: Tensor) -> tuple[Any, ...] | None:
        # (ĉW0, ĉΔW, ĝW0, ĝΔW) along the cells (chain_products) and allow(a, b) ≥ a·ε_c + b·ε_g for
        # per-cell a, b ≥ 0, ε_c (ε_g) a bound of the rounding error of each of ĉ's (ĝ's) products:
        # γ·((mag + 2⁻¹⁰²⁰)·Σ_i|W_ji| + (mag1 + 2⁻¹⁰²⁰)·max_i|W_ji|), with wsum and wmax ≥ both halves'
        # row sums and maxima (their own rounding, and this one's, within the factor 2); the
        # magnitudes are combined per row first, so the bound costs two products with the output
        if w.w0.shape[0] < CHAIN_MIN_OUTPUTS:
            return None
        ch = chain_products(c, g, mid, stacked_dense())
        if ch is None:
            return None
        o = w.w0.shape[0]
        wmax = nt.memo(weight, "abs-row-max", lambda: (w.w0.abs() + w.dw.abs()).amax(-1))  # (out,)

        def allow(a: Tensor, b: Tensor) -> Tensor:
            rows = a * (ch.mag_c + _UNDER) + b * (ch.mag_g + _UNDER)
            rows1 = a * (ch.mag1_c + _UNDER) + b * (ch.mag1_g + _UNDER)
            return _up(torch.addcmul(rows * wsum, rows1, wmax) * (2.0 * ch.gamma))

        return ch.pc[..., :o], ch.pc[..., o:], ch.pg[..., :o], ch.pg[..., o:], allow

    f.multi = multi  # type: ignore[attr-defined]
    if w.w0.dim() == 2:
        f.sparse_multi = sparse_multi  # type: ignore[attr-defined]
        f.cell_chain = cell_chain  # type: ignore[attr-defined]

    def norms(m: Tensor, h: Tensor, nd: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b = _matrix_norms(weight)
        mc, hc = m.reshape(-1, 1), h.reshape(-1, 1)
        s_w = _along_cells(b["s0"], b["sT"], b["sD"], mc, hc).reshape(-1, *([1] * nd))
        r_w = _along_cells(b["r0"], b["rT"], b["rD"], mc, hc)  # (C, out)
        r_w = r_w.reshape(r_w.shape[0], *([1] * (nd - 1)), r_w.shape[-1])
        return s_w, r_w, torch.tensor(b["sD"], dtype=m.dtype, device=m.device), b["rD"]

    def at_points(xc: Tensor) -> Tensor:  # xc (C, …, in) against each cell's weights (C, out, in)
        wm = _weights_at(nt, weight, w)
        lead = xc.shape[1:-1]
        out = torch.matmul(xc.reshape(xc.shape[0], -1, xc.shape[-1]), wm.transpose(-1, -2))
        return out.reshape(xc.shape[0], *lead, -1)

    use_norms = isinstance(weight, Param) and weight.w0.dim() == 2
    return _affine_layer(nt, x, w, bias, f, k_len, lambda t: t, abs_cellwise, rounding, norms if use_norms else None, defer=True,
                         at_points=at_points if w.w0.dim() == 2 else None, abs_dw=abs_dw if w.w0.dim() == 2 else None)


def _linear_module(nt: EnclosureNumbers, mod: nn.Linear, p: dict, x: Any) -> Any:
    return _linear(nt, x, p["weight"], p.get("bias"))


CONV_ROWS = 2048  # output positions per block of conv2d_dots (float64 GEMMs run fastest on blocks about this tall)


def conv2d_dots(x: Tensor, w: Tensor, stride: tuple[int, int], padding: tuple[int, ...], dilation: tuple[int, int]) -> Tensor:
    """``F.conv2d(x, w, None, stride, padding, dilation)`` (x (B, Cin, H, W), w (Cout, Cin, kh, kw),
    no groups, zero padding), computed as one dot product of length K = Cin·kh·kw per output entry:
    the padded input in channels-last layout, its receptive fields read through a strided view
    (im2col) in blocks of about ``CONV_ROWS`` output positions, each image's fields multiplied by
    the kernel as a (Cout, K) matrix in one batched product per block, written straight into the
    channels-first output (no copy back: on the digits ResNet's enclosures 0–9 % less time than a
    (rows, K)·(K, Cout) product per block followed by a layout copy). A matrix product is plain
    sums of products (in any order, with or without FMA), the argument every rounding bound here
    rests on; padded entries are exact zeros, whose products and sums change nothing. On CPU in
    float64 it is about twice as fast as ``F.conv2d``, whose im2col + gemm runs one small product
    per image (2 cores: 25 against 52 ms for 1008 images of 16 × 8 × 8 into 64 channels).

    ``padding``: (ph, pw) on both sides, or (top, bottom, left, right), each ≥ 0 (the reverse walk's
    transposed convolutions pad unevenly). A weight per cell: x (C, B, Cin, H, W) and w
    (C, Cout, Cin, kh, kw) give (C, B, Cout, OH, OW), cell i's images against cell i's kernel, in
    one batched product per block instead of C calls (the per-cell |W(m)| + h|ΔW| products of the
    rules; 1.0–1.9 times faster on the digits ResNet's shapes)."""
    per_cell = w.dim() == 5
    if per_cell:
        if x.dim() != 5 or x.shape[0] != w.shape[0]:
            raise ValueError(f"per-cell weights {tuple(w.shape)} need inputs (cells, B, Cin, H, W), got {tuple(x.shape)}")
        cells = x.shape[0]
        b, cin, hgt, wid = x.shape[1:]
        cout, _, kh, kw = w.shape[1:]
    else:
        cells = 1
        b, cin, hgt, wid = x.shape
        cout, _, kh, kw = w.shape
    top, bottom, left, right = (padding[0], padding[0], padding[1], padding[1]) if len(padding) == 2 else tuple(padding)
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hgt + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wid + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0 or b == 0 or w.shape[-3] != cin or min(top, bottom, left, right) < 0:
        if per_cell:
            return torch.stack([conv2d_dots(x[i], w[i], stride, padding, dilation) for i in range(cells)])
        if len(padding) == 4:
            x = F.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        return F.conv2d(x, w, None, stride, padding, dilation)  # its own errors or empty outputs
    k = cin * kh * kw
    # (C, B, H + pads, W + pads, Cin): padded, channels last
    xp = x.new_empty(cells, b, hgt + top + bottom, wid + left + right, cin)
    xp[:, :, :top] = 0  # the padding, and only it, is zeroed: the rest is overwritten at once
    xp[:, :, top + hgt :] = 0
    xp[:, :, top : top + hgt, :left] = 0
    xp[:, :, top : top + hgt, left + wid :] = 0
    xp[:, :, top : top + hgt, left : left + wid] = x.reshape(cells, b, cin, hgt, wid).permute(0, 1, 3, 4, 2)
    # (C, 1, Cout, K) or (Cout, K), K ordered (kh, kw, Cin) as the fields
    wm = w.permute(0, 1, 3, 4, 2).reshape(cells, 1, cout, k) if per_cell else w.permute(0, 2, 3, 1).reshape(cout, k)
    out = x.new_empty(cells, b, cout, oh * ow)
    per = max(1, CONV_ROWS // (oh * ow * cells))
    for i in range(0, b, per):
        xb = xp[:, i : i + per]
        s_c, s_b, s_h, s_w, s_ch = xb.stride()
        n = xb.shape[1]
        fields = xb.as_strided((cells, n, oh, ow, kh, kw, cin), (s_c, s_b, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_ch))
        if per_cell:
            torch.matmul(wm, fields.reshape(cells, n, oh * ow, k).transpose(-1, -2), out=out[:, i : i + per])
        else:
            torch.matmul(wm, fields.reshape(n, oh * ow, k).transpose(1, 2), out=out[0, i : i + per])
    return out.view(cells, b, cout, oh, ow) if per_cell else out.view(b, cout, oh, ow)


def upper_conv2d_dots(x: Tensor, w: Tensor, stride: tuple[int, int], padding: tuple[int, ...], dilation: tuple[int, int]) -> Tensor:
    """A float64 upper bound of ``conv2d_dots(x, w, …)`` for entrywise non-negative float64 x and w
    (a weight per cell included), rounding included, computed in float32 where that is sound and
    pays: the argument of :func:`upper_matmul`, since each output is one dot product of
    K = Cin·kh·kw non-negative terms (operands rounded up to float32, a plain IEEE float32 GEMM, its
    result times (1 + 2γ_K) plus the underflow floor 4K·2⁻¹²⁶(1 + max x̂ + max ŵ), doubled). A
    non-finite float32 result, a short K, a device whose float32 products are not plain IEEE, or a
    degenerate shape: float64, times (1 + 2γ_{K+2}) plus K·2⁻¹⁰²² per output."""
    k = int(w.shape[-3] * w.shape[-2] * w.shape[-1])
    usable = x.shape[-4] > 0 and x.shape[-3] == w.shape[-3] and min(padding) >= 0
    if usable and use_float32(k, x.device):
        x32, xmax = up32(x)
        w32, wmax = up32(w)
        bound = _bound_from32(conv2d_dots(x32, w32, stride, padding, dilation), k, xmax, wmax)
        if bound is not None:
            return bound
    return _bound_from64(conv2d_dots(x, w, stride, padding, dilation), k)


def _conv_f(ndim: int, stride, padding, dilation, groups):
    """f(x, W) for a convolution, computed as unfold + matmul (plain dot products, see docstring).

    ``f.multi(x, [W1, W2, …])`` unfolds x once for all the weights; the batch is processed in
    slices so the unfolded columns stay small.
    """

    def multi(x: Tensor, ws: list[Tensor]) -> list[Tensor]:
        lead = x.shape[: x.dim() - (ndim + 1)]  # everything before the channel axis
        xb = x.reshape(-1, *x.shape[-(ndim + 1):])  # (B, Cin, *spatial)
        if ndim == 2 and groups == 1 and x.device.type == "cpu" and x.dtype == torch.float64:
            # on CPU in float64: im2col + one gemm per block of output positions, dot products of
            # length K as below (conv2d_dots; about twice as fast as F.conv2d or unfold + matmul)
            cout = ws[0].shape[0]
            out = conv2d_dots(xb, torch.cat(ws, 0), tuple(stride), tuple(padding), tuple(dilation))
            return [o.reshape(*lead, *o.shape[1:]) for o in out.split(cout, 1)]
        if ndim == 1:
            xb = xb.unsqueeze(-2)
            wks = [w.unsqueeze(-2) for w in ws]
            st, pa, di = (1, stride[0]), (0, padding[0]), (1, dilation[0])
        else:
            wks, st, pa, di = ws, stride, padding, dilation
        bsz, cin = xb.shape[0], xb.shape[1]
        kh, kw = wks[0].shape[-2], wks[0].shape[-1]
        oh = (xb.shape[-2] + 2 * pa[0] - di[0] * (kh - 1) - 1) // st[0] + 1
        ow = (xb.shape[-1] + 2 * pa[1] - di[1] * (kw - 1) - 1) // st[1] + 1
        cout = wks[0].shape[0]
        kk = (cin // groups) * kh * kw
        wcat = torch.cat([w.reshape(groups, cout // groups, kk) for w in wks], 1)  # (groups, n_w·cout/groups, kk)
        per = max(1, int(2**25 // max(1, cin * kh * kw * oh * ow)))  # ≤ 32M column entries per slice
        outs = []
        for i in range(0, bsz, per):
            cols = F.unfold(xb[i : i + per], (kh, kw), dilation=di, padding=pa, stride=st)
            cols = cols.reshape(cols.shape[0], groups, kk, oh * ow)
            outs.append(torch.matmul(wcat.unsqueeze(0), cols))  # (b, groups, n_w·cout/groups, L)
        out = torch.cat(outs, 0)
        res = []
        cg = cout // groups
        for j in range(len(ws)):
            o = out[:, :, j * cg : (j + 1) * cg].reshape(bsz, cout, oh, ow)
            if ndim == 1:
                o = o.squeeze(-2)
            res.append(o.reshape(*lead, *o.shape[1:]))
        return res

    def f(x: Tensor, w: Tensor) -> Tensor:
        return multi(x, [w])[0]

    def per_cell_upper(x: Tensor, w: Tensor) -> Tensor | None:
        # an upper bound of f(x[i], w[i]) per cell i for x (C, …, Cin, H, W), w (C, Cout, Cin, kh, kw),
        # both ≥ 0, rounding included (upper_conv2d_dots with a weight per cell), where multi runs
        # conv2d_dots; None elsewhere
        if not (ndim == 2 and groups == 1 and x.device.type == "cpu" and x.dtype == torch.float64):
            return None
        lead = x.shape[: x.dim() - 3]
        out = upper_conv2d_dots(x.reshape(x.shape[0], -1, *x.shape[-3:]), w, tuple(stride), tuple(padding), tuple(dilation))
        return out.reshape(*lead, *out.shape[-3:])

    f.multi = multi  # type: ignore[attr-defined]
    f.per_cell_upper = per_cell_upper  # type: ignore[attr-defined]
    return f


def _string_padding(ndim: int, padding: str, kernel: tuple, dilation: tuple, stride: tuple) -> tuple[tuple[int, ...], list[int] | None] | None:
    """``padding='valid'`` or ``'same'`` as (symmetric padding, zero pad of the input or None), the
    way torch computes them (``'same'``: total d·(k − 1) per dimension, the left half rounded down,
    the odd one on the right by padding the input first); None for what torch itself refuses."""
    if padding == "valid":
        return (0,) * ndim, None
    if padding != "same" or any(v != 1 for v in stride):
        return None
    left = [dilation[i] * (kernel[i] - 1) // 2 for i in range(ndim)]
    right = [dilation[i] * (kernel[i] - 1) - left[i] for i in range(ndim)]
    if left == right:
        return tuple(left), None
    pads: list[int] = []
    for i in reversed(range(ndim)):  # F.pad lists the last dimension first
        pads += [left[i], right[i]]
    return (0,) * ndim, pads


def conv_map(mod: nn.Module) -> tuple[Callable[[Tensor, Tensor], Tensor], int] | None:
    """(f, K): the convolution of ``mod`` as a bilinear map f(x, W) computed by unfold + matmul
    (dot products of length K, see the module docstring), with string padding resolved as torch
    does; None for what is not covered (non-zero padding modes, ``'same'`` with strides)."""
    ndim = 1 if type(mod) is nn.Conv1d else 2
    if mod.padding_mode != "zeros":
        return None
    padding, pre = mod.padding, None
    if isinstance(padding, str):
        got = _string_padding(ndim, padding, tuple(mod.kernel_size), tuple(mod.dilation), tuple(mod.stride))
        if got is None:
            return None
        padding, pre = got
    f = _conv_f(ndim, mod.stride, padding, mod.dilation, mod.groups)
    if pre is not None:  # zero padding of the input: exact on centres, slopes, radii and magnitudes alike
        inner = f

        def f(t: Tensor, wt: Tensor) -> Tensor:  # noqa: F811 - the padded convolution
            return inner(F.pad(t, pre), wt)

        f.multi = lambda t, ws: inner.multi(F.pad(t, pre), ws)  # type: ignore[attr-defined]
    k_len = int(mod.weight.shape[1] * math.prod(mod.weight.shape[2:]))
    return f, k_len


def _conv_module(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Any) -> Any:
    ndim = 1 if type(mod) is nn.Conv1d else 2
    got = conv_map(mod)
    if got is None:
        return NotImplemented
    f, k_len = got
    w = p["weight"]
    view = (lambda t: t.reshape(-1, 1)) if ndim == 1 else (lambda t: t.reshape(-1, 1, 1))
    wmag = w.w0.abs() + w.dw.abs() if isinstance(w, Param) else w.abs()
    wsum = view(wmag.reshape(wmag.shape[0], -1).sum(1))  # (Cout, 1[, 1])

    def rounding(mags: Tensor) -> Tensor:
        # Σ over a receptive field of M·|W| ≤ max over the example's input of M · Σ|W| per output channel
        top = mags.flatten(-(ndim + 1)).amax(-1) + _UNDER  # (…, ) per example; _UNDER as for Linear
        return top.reshape(*top.shape, 1, *([1] * ndim)) * wsum

    def abs_cellwise(e: Tensor, m: Tensor, h: Tensor) -> Tensor:
        # e is (1, C or 1, …): f(e, |W(m)| + h|ΔW|) with each cell's own weights, as an upper
        # bound with its rounding (f.per_cell_upper: all cells in one batched product), else one
        # cell at a time, times a factor covering the rounding (γ_K)
        wa = abs_per_cell(nt, w, w)  # (C, *W.shape)
        cells = wa.shape[0]
        upper = getattr(f, "per_cell_upper", None)  # rounding included (float32 where sound): as it is
        if upper is not None:
            got = upper(e[0].expand(cells, *e.shape[2:]), wa)  # (C, …)
            if got is not None:
                return got.unsqueeze(0)
        ei = [e[:, i if e.shape[1] > 1 else 0] for i in range(cells)]
        return torch.stack([f(ei[i], wa[i]) for i in range(cells)], 1) * (1.0 + gamma(k_len + 8) * 2.0)

    cellwise = abs_cellwise if isinstance(w, Param) else None
    return _affine_layer(nt, x, w, p.get("bias"), f, k_len, view, cellwise, rounding=rounding, defer=ndim == 2)


# ----------------------------------------------------------------------------- products and sums


def _product(a: TM, b: TM, h: Tensor, *, norm_of_b: bool = False) -> TM:
    """The elementwise product of two Taylor models (broadcasting).

    With ``norm_of_b`` (both of the result's full shape along the last axis), the remainder is also
    bounded in Euclidean norm over the last axis: the part â·δ_b (â the affine part of a) has norm
    ≤ max|â|·‖δ_b‖₂, the rest is bounded entrywise."""
    hh = h * h * 0.5
    gg = _mul0(a.g, b.g)
    c = a.c * b.c
    if not _is_zero(gg):
        c = c + hh * gg
    g = _add0(_mul0(a.c, b.g), _mul0(a.g, b.c))
    # each absolute value once (|x·y| = |x|·|y| exactly in floating point)
    ac, ag, bc, bg = a.c.abs(), a.g.abs(), b.c.abs(), b.g.abs()
    ma = ac + (ag * h + _UNDER)  # _UNDER: what ag·h loses to underflow (ma multiplies b.e)
    mb = bc + (bg * h + _UNDER)
    rest = a.e * (mb + b.e)
    if not _is_zero(gg):
        rest = rest + hh * (ag * bg)
    rest = rest + (ac + ag + a.e) * (bc + bg + b.e) * (8 * U)
    e = _up(rest + ma * b.e)
    if not norm_of_b:
        return TM(c, g, e)
    return _with_norm(c, g, e, ma.amax(-1, keepdim=True) * _norm_of(b, c.shape[-1]), rest)


def _twice(a: TM) -> TM:
    """2·a: multiplying by 2 is exact in floating point, so no rounding term."""
    return TM(a.c * 2.0, a.g * 2.0, a.e * 2.0)


def _scale(a: TM, s: Tensor | float) -> TM:
    """a·s for a constant s (tensor broadcasting or float)."""
    sa = s.abs() if isinstance(s, Tensor) else abs(s)
    rho = (a.c.abs() + a.g.abs()) * sa * (2 * U)
    return TM(a.c * s, _mul0(a.g, s), _up(a.e * sa + rho))


def _add_tm(a: TM, b: TM, sign: float = 1.0) -> TM:
    c = a.c + sign * b.c
    g = _add0(a.g, _mul0(b.g, sign))
    rho = (a.c.abs() + b.c.abs() + a.g.abs() + b.g.abs()) * U
    return TM(c, g, _up(a.e + b.e + rho))


def _shift(a: TM, s: Tensor | float) -> TM:
    """a + s for a constant s."""
    c = a.c + s
    sa = s.abs() if isinstance(s, Tensor) else abs(s)
    return TM(c, a.g, _up(a.e + (a.c.abs() + sa) * U))


def _zero_like(t: TM) -> TM:
    z = _zero(t.c)
    return TM(torch.zeros_like(t.c), z, z)


def _const_enclosure(nt: EnclosureNumbers, t: Tensor) -> Enclosure:
    c = t.unsqueeze(0)
    z = _zero(c)
    return Enclosure(TM(c, z, z), TM(torch.zeros_like(c), z, z))


def _param_enclosure(nt: EnclosureNumbers, p: Param) -> Enclosure:
    m = nt.m(p.w0.dim())
    c = p.w0.unsqueeze(0) + m * p.dw.unsqueeze(0)
    g = p.dw.unsqueeze(0).expand_as(c)
    e = _up((p.w0.abs() + p.dw.abs()).unsqueeze(0) * (4 * U)).expand_as(c)
    return Enclosure(TM(c, g, e), TM(g, _zero(g), e))


def _as_enclosure(nt: EnclosureNumbers, x: Any) -> Enclosure | None:
    if isinstance(x, Enclosure):
        return x
    if isinstance(x, Param):
        return _param_enclosure(nt, x)
    if isinstance(x, Tensor) and x.is_floating_point():
        return _const_enclosure(nt, x.to(torch.float64))
    return None


def _aligned(*encs: Enclosure) -> list[Enclosure]:
    """The enclosures with singleton axes inserted after the cell axis so that all have the same
    rank: torch broadcasts the model's tensors from the right, and an enclosure's leading axis is
    the cells, so a parameter vector (cells, d) must meet an activation (cells, n, d) as
    (cells, 1, d), never as (1, cells, d) (which would pair example i with cell i)."""
    rank = max(e.v.c.dim() for e in encs)

    def pad(e: Enclosure) -> Enclosure:
        k = rank - e.v.c.dim()
        if k == 0:
            return e
        return e.map(lambda t: t if _is_zero(t) else t.reshape(t.shape[0], *([1] * k), *t.shape[1:]))

    return [pad(e) for e in encs]


def _add(nt: EnclosureNumbers, a: Any, b: Any, *, alpha: Any = 1, sign: float = 1.0) -> Any:
    if alpha != 1:
        return NotImplemented
    if isinstance(a, (int, float)) and isinstance(b, Enclosure):
        if sign > 0:
            return Enclosure(_shift(b.v, float(a)), b.d)
        return Enclosure(_shift(_scale(b.v, -1.0), float(a)), _scale(b.d, -1.0))
    if isinstance(b, (int, float)) and isinstance(a, Enclosure):
        return Enclosure(_shift(a.v, sign * b), a.d)
    ea, eb = _as_enclosure(nt, a), _as_enclosure(nt, b)
    if ea is None or eb is None:
        return NotImplemented
    ea, eb = _aligned(ea, eb)
    return Enclosure(_add_tm(ea.v, eb.v, sign), _add_tm(ea.d, eb.d, sign))


def _sub(nt: EnclosureNumbers, a: Any, b: Any, *, alpha: Any = 1) -> Any:
    return _add(nt, a, b, alpha=alpha, sign=-1.0)


def _mul(nt: EnclosureNumbers, a: Any, b: Any) -> Any:
    if isinstance(b, Enclosure) and not isinstance(a, Enclosure):
        a, b = b, a
    if not isinstance(a, Enclosure):
        return NotImplemented
    if isinstance(b, (int, float)):
        return Enclosure(_scale(a.v, float(b)), _scale(a.d, float(b)))
    if isinstance(b, Tensor):
        if not b.is_floating_point():
            return NotImplemented
        bb = b.to(torch.float64)
        return Enclosure(_scale(a.v, bb), _scale(a.d, bb))
    if b is a:  # a square (a variance): (a²)′ = 2·a′a, one product instead of two and their sum
        h = nt.h(a.v.c.dim() - 1)
        return Enclosure(_product(a.v, a.v, h), _twice(_product(a.d, a.v, h)))
    eb = _as_enclosure(nt, b)
    if eb is None:
        return NotImplemented
    a, eb = _aligned(a, eb)
    h = nt.h(a.v.c.dim() - 1)
    # (a b)′ = a′ b + a b′
    return Enclosure(_product(a.v, eb.v, h), _add_tm(_product(a.d, eb.v, h), _product(a.v, eb.d, h)))


def _neg(nt: EnclosureNumbers, a: Any) -> Any:
    if not isinstance(a, Enclosure):
        return NotImplemented
    return Enclosure(_scale(a.v, -1.0), _scale(a.d, -1.0))


def _truediv(nt: EnclosureNumbers, a: Any, b: Any) -> Any:
    if isinstance(a, Enclosure) and isinstance(b, (int, float)) and b != 0:
        # division by a constant: a·(1/b), with 1/b's rounding (relative u) covered by the scale's 2u
        inv = 1.0 / float(b)
        out_v, out_d = _scale(a.v, inv), _scale(a.d, inv)
        return Enclosure(TM(out_v.c, out_v.g, _up(out_v.e + out_v.c.abs() * (2 * U))), TM(out_d.c, out_d.g, _up(out_d.e + out_d.c.abs() * (2 * U))))
    return NotImplemented


# ----------------------------------------------------------------------------- interval helpers (losses)


_SUBNORMAL = 2.0**-1074  # the absolute error of an exp that lands among the subnormals
_TOO_SMALL = 2.0**-1000  # a softmax denominator below this is not divided by (the bound falls back to [0, 1])


def _others(t: Tensor) -> Tensor:
    """Σ_{j≠k} t_j for every k of the last axis, from exclusive prefix and suffix sums of t ≥ 0: no
    subtraction, so no cancellation (each is a sum of non-negative terms, relative error ≤ γ_k in any
    summation order), and O(k) work where the k × k table of every row without its k-th entry would
    be O(k²) (1 000 classes: 10⁶ entries per example)."""
    zero = torch.zeros_like(t[..., :1])
    before = torch.cat([zero, torch.cumsum(t, -1)[..., :-1]], -1)
    after = torch.cat([torch.cumsum(t.flip(-1), -1).flip(-1)[..., 1:], zero], -1)
    return before + after


def _softmax_box(vlo: Tensor, vhi: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of p_k = softmax([0, u])_k (k ≠ y; zero at k = y) over the box vlo ≤ u ≤ vhi (u_y = 0):
    p_k is increasing in u_k and decreasing in every other entry, so its extremes are at corners,

        p_k ≤ e^{vhi_k} / (e^{vhi_k} + Σ_{j≠k} e^{vlo_j}),   p_k ≥ e^{vlo_k} / (e^{vlo_k} + Σ_{j≠k} e^{vhi_j}),

    each computed in O(k) per example (:func:`_others`), every exponent shifted by the row's largest
    lower (upper) bound, so the denominator's largest term is at least 1 unless it is the k-th's own.

    Rounding: the exp of a shifted argument a is within δ(a) = 2·2⁻⁴⁴(1 + |a|) of its value
    relatively (the library's accuracy and the shift's rounding, u|a|), or within 2⁻¹⁰⁷⁴ absolutely
    where it lands among the subnormals. A sum S = Σ_j e^{a_j} of such terms is then within
    Σ_j δ(a_j)e^{a_j} = 2·2⁻⁴⁴(S + W), W = Σ_j |a_j|e^{a_j}, plus γ_{k+2}S for its own rounding, so
    the quotient's relative error is at most 2·2⁻⁴⁴(2 + |a_k| + W/S) + γ_{k+2} + 4u (the division,
    the products); the bounds take twice that, with the subnormal errors added to the numerator and
    taken off (put on) the denominator, and 2·2⁻¹⁰⁷⁴ more for the quotient's own rounding where it
    lands among the subnormals (relative bounds do not hold there). This weights each exponent's
    error by its term, as the k-th row's logsumexp would, without the row's most negative exponent
    counting in full. A denominator below 2⁻¹⁰⁰⁰ or anything non-finite gives [0, 1]."""
    k = vlo.shape[-1]
    zero = torch.zeros_like(vlo)
    sub = _SUBNORMAL * (k + 2)
    round_k = gamma(k + 2) + 4 * U

    def quotient(a: Tensor, o: Tensor, upper: bool) -> Tensor:
        # e^{a_k} / (e^{a_k} + Σ_{j≠k} e^{o_j}), rounded up (upper) or down
        ea, eo = torch.exp(a), torch.exp(o)
        s = ea + _others(eo)
        w = a.abs() * ea + _others(o.abs() * eo)
        rel = 2.0 * (2.0 * _LIB * (2.0 + a.abs() + w / s) + round_k)
        if upper:
            den = s * (1.0 - rel) - sub
            p = ((ea + _SUBNORMAL) / den * (1.0 + rel) + 2 * _SUBNORMAL).clamp(max=1.0)  # the quotient's own subnormal rounding
            return torch.where(torch.isfinite(p) & (den >= _TOO_SMALL), p, torch.ones_like(p))
        den = s * (1.0 + rel) + sub
        p = ((ea * (1.0 - rel) - _SUBNORMAL).clamp(min=0.0) / den * (1.0 - rel) - 2 * _SUBNORMAL).clamp(min=0.0)
        return torch.where(torch.isfinite(p) & (den >= _TOO_SMALL), p, torch.zeros_like(p))

    lo_shift = vlo.amax(-1, keepdim=True)
    hi_shift = vhi.amax(-1, keepdim=True)
    p_hi = quotient(vhi - lo_shift, vlo - lo_shift, True)  # the k-th at vhi, the others at vlo
    p_lo = quotient(vlo - hi_shift, vhi - hi_shift, False)  # the k-th at vlo, the others at vhi
    return torch.where(onehot, zero, p_lo), torch.where(onehot, zero, p_hi)


def _imul(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor) -> tuple[Tensor, Tensor]:
    """The interval product [alo, ahi]·[blo, bhi], rounded outward."""
    prods = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    lo, hi = prods.amin(0), prods.amax(0)
    pad = (lo.abs() + hi.abs()) * (2 * U) + _TINY
    return lo - pad, hi + pad



# ----------------------------------------------------------------------------- elementwise nonlinearities
#
# Which activations have a rule, for which parameter values (each checked against the smoothness
# table, mli_theory/path/smoothness.py, in tests/test_smoothness.py): the bisection bounds rises by
# ∫ L′, which needs L absolutely continuous along α, so a rule exists only for continuous maps and
# only where the maths it uses is the function torch computes:
# * tanh, sigmoid, exact GELU: C∞, Taylor with Lagrange remainder (GELU approximate="tanh" has no
#   derivative bounds here: declined);
# * softplus_β(x) = softplus(βx)/β for β > 0 (other β declined), and only on cells whose range of βx lies at or
#   below the threshold: above it torch returns x, a jump of log(1 + e^(−threshold)) in value, so a
#   range that reaches the threshold is declined (never enclosed as if smooth);
# * ReLU and LeakyReLU with 0 ≤ slope ≤ 1 (C⁰: the Clarke set [slope, 1] of the derivative); other
#   slopes declined;
# * no rule (declined, certificate "unknown") for ELU/CELU/SELU (any alpha), ReLU6, Hardtanh,
#   Hardswish, Hardsigmoid, clamp, abs, max pooling and the activations that may jump.


def _sup_at(fn: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, peaks: tuple[float, ...], scale: float) -> Tensor:
    """An upper bound of |fn| on [lo, hi], given every local maximiser of |fn| in ``peaks``.

    The maximum of a continuous function on an interval is attained at an end point or at an
    interior local maximum; ``peaks`` must list all local maximisers of |fn| (tests check this on a
    dense grid). Inflated for the library accuracy and for peaks rounded to float.
    """
    out = torch.maximum(fn(lo).abs(), fn(hi).abs())
    for p in peaks:
        inside = (lo <= p) & (hi >= p)
        if bool(inside.any()):
            val = fn(torch.tensor(p, dtype=lo.dtype, device=lo.device)).abs()
            out = torch.where(inside, torch.maximum(out, val), out)
    return out * (1.0 + _LIB) + scale * _LIB + _TINY


@dataclass(frozen=True)
class _Smooth:
    """A smooth activation: f, f′, f″ computed, |f″| and |f‴| bounded over ranges."""

    f: Callable[[Tensor], Tensor]
    f1: Callable[[Tensor], Tensor]
    f2: Callable[[Tensor], Tensor]
    f3: Callable[[Tensor], Tensor]
    peaks2: tuple[float, ...]  # local maximisers of |f″|
    peaks3: tuple[float, ...]  # local maximisers of |f‴|
    scale0: float  # scale of f for the library-accuracy bound (sup |f| may be infinite: use 1 and relative)
    scale1: float  # sup |f′|
    scale2: float  # sup |f″|
    scale3: float  # sup |f‴|


def _tanh_parts():
    def f1(x):
        t = torch.tanh(x)
        return 1 - t * t

    def f2(x):
        t = torch.tanh(x)
        return -2 * t * (1 - t * t)

    def f3(x):
        t = torch.tanh(x)
        return -2 * (1 - t * t) * (1 - 3 * t * t)

    a, b = 0.6584789484624084, 1.1462158347805889
    return _Smooth(torch.tanh, f1, f2, f3, (-a, a), (0.0, -b, b), 1.0, 1.0, 0.77, 2.0)


def _sigmoid_parts():
    def f1(x):
        s = torch.sigmoid(x)
        return s * (1 - s)

    def f2(x):
        s = torch.sigmoid(x)
        return s * (1 - s) * (1 - 2 * s)

    def f3(x):
        s = torch.sigmoid(x)
        return s * (1 - s) * (1 - 6 * s + 6 * s * s)

    a, b = 1.3169578969248167, 2.2924316695611777
    return _Smooth(torch.sigmoid, f1, f2, f3, (-a, a), (0.0, -b, b), 1.0, 0.25, 0.1, 0.125)


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_parts():
    def phi(x):
        return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI

    def f(x):
        return F.gelu(x)

    def f1(x):
        return 0.5 * torch.erfc(-x / math.sqrt(2.0)) + x * phi(x)

    def f2(x):
        return phi(x) * (2 - x * x)

    def f3(x):
        return -x * phi(x) * (4 - x * x)

    a, b = 0.7922869913932613, 2.5243377989621386
    return _Smooth(f, f1, f2, f3, (0.0, -2.0, 2.0), (-a, a, -b, b), 1.0, 1.13, 0.8, 0.75)


def _softplus_parts():
    def f2(x):
        s = torch.sigmoid(x)
        return s * (1 - s)

    def f3(x):
        s = torch.sigmoid(x)
        return s * (1 - s) * (1 - 2 * s)

    a = 1.3169578969248167
    return _Smooth(lambda x: torch.log1p(torch.exp(x)), torch.sigmoid, f2, f3, (0.0,), (-a, a), 1.0, 1.0, 0.25, 0.1)


_TANH, _SIGMOID, _GELU, _SOFTPLUS = _tanh_parts(), _sigmoid_parts(), _gelu_parts(), _softplus_parts()
# v ↦ v^(−1/2) on v > 0 (BatchNorm's scale with interpolated variances); |f″|, |f‴| decrease on v > 0
_RSQRT = _Smooth(
    torch.rsqrt,
    lambda v: -0.5 * torch.rsqrt(v) / v,
    lambda v: 0.75 * torch.rsqrt(v) / (v * v),
    lambda v: -1.875 * torch.rsqrt(v) / (v * v * v),
    (), (), 1.0, 1.0, 1.0, 1.0,
)


def _lib(x: Tensor, scale: float) -> Tensor:
    """The assumed library error of a computed elementwise value x (see module docstring)."""
    return (x.abs() + scale) * _LIB


def _smooth(nt: EnclosureNumbers, s: _Smooth, x: Any, *, softplus_threshold: float | None = None, domain_lo: float | None = None,
            known_lo: float | None = None) -> Any:
    """f(x) as an enclosure, by Taylor's theorem about the centre ĉ with |f″|, |f‴| bounded on a
    range that contains ĉ and every value of x on the cell.

    ``known_lo``: a proven lower bound on the true values of x (a variance plus ε is ≥ ε) that
    may be larger than the Taylor model's own lower end; the range is then
    [min(ĉ, max(lo, known_lo)), hi], which still contains every ξ between ĉ and x(α)."""
    if not isinstance(x, Enclosure):
        return NotImplemented
    v, d = x.v, x.d
    h = nt.h(v.c.dim() - 1)
    R = (v.g.abs() * h + v.e) * (1.0 + 4 * U) + _TINY
    lo, hi = v.c - R, v.c + R
    lo, hi = lo - lo.abs() * (2 * U), hi + hi.abs() * (2 * U)
    if softplus_threshold is not None and bool((hi > softplus_threshold).any()):
        return NotImplemented  # torch switches to the identity above the threshold: not the smooth function
    if known_lo is not None:
        if domain_lo is not None and bool((v.c <= domain_lo).any()):
            return NotImplemented  # the expansion point itself is outside the domain
        lo = torch.minimum(torch.clamp(lo, min=known_lo), v.c)
    if domain_lo is not None and bool((lo <= domain_lo).any()):
        return NotImplemented  # the range leaves the function's domain
    fc, f1c, f2c = s.f(v.c), s.f1(v.c), s.f2(v.c)
    err0, err1, err2 = _lib(fc, s.scale0), _lib(f1c, s.scale1), _lib(f2c, s.scale2)
    m2 = _sup_at(s.f2, lo, hi, s.peaks2, s.scale2)
    m3 = _sup_at(s.f3, lo, hi, s.peaks3, s.scale3)
    # value: f(ĉ) + f′(ĉ)ĝ t + [f′(ĉ)δ + ½ f″(ξ)(ĝt + δ)²]
    g = _mul0(v.g, f1c)
    slope = f1c.abs() + err1
    rest = 0.5 * m2 * R * R + err0 + (err1 * v.g.abs() + g.abs() * (2 * U)) * h + fc.abs() * U
    e = _up(slope * v.e + rest)
    # f′(v) as a Taylor model, then times v′
    g1 = _mul0(v.g, f2c)
    e1 = (f2c.abs() + err2) * v.e + 0.5 * m3 * R * R + err1 + (err2 * v.g.abs() + g1.abs() * (2 * U)) * h
    fprime = TM(f1c, g1, _up(e1))
    full = v.c.shape
    if len(full) < 2 or full.numel() == 0 or d.c.shape != full:
        return Enclosure(TM(fc, g, e), _product(fprime, d, h))
    # Euclidean norm over the last axis: the remainder is f′(ĉ)·δ plus entrywise-bounded terms
    return Enclosure(_with_norm(fc, g, e, slope.amax(-1, keepdim=True) * _norm_of(v, full[-1]), rest),
                     _product(fprime, d, h, norm_of_b=True))


def _unravel(flat: Tensor, shape: torch.Size) -> tuple[Tensor, ...]:
    """The coordinates of the flat positions ``flat`` in a contiguous tensor of ``shape``, as
    ``nonzero(as_tuple=True)`` lists them (``torch.unravel_index`` does the same but costs a third
    of a second on its first call in a process)."""
    out = []
    rest = flat
    for size in reversed(shape):
        out.append(rest % size)
        rest = rest // size
    return tuple(reversed(out))


def _put(t: Tensor, full: torch.Size, flat: Tensor, values: Tensor) -> Tensor:
    """``t`` (a tensor this rule just computed, never an input's) with ``values`` written at the flat
    positions ``flat`` of its ``full``-shaped layout: in place where ``t`` already has that shape
    contiguously, else into a contiguous copy."""
    if t.shape != full or not t.is_contiguous():
        t = t.expand(full).contiguous()
    t.view(-1).index_copy_(0, flat, values)
    return t


def _relu_like(nt: EnclosureNumbers, x: Any, slope: float = 0.0) -> Any:
    """LeakyReLU with 0 ≤ slope ≤ 1 (ReLU: slope 0): exact where the sign is known, relaxed elsewhere.

    Decided neurons (range ≥ 0 or ≤ 0) are linear maps, applied to the whole tensor; the few mixed
    neurons (their count shrinks with the cell) get the relaxation, computed on them alone:
    leaky(x) = slope·x + (1 − slope)·relu(x) and, for any λ ∈ [0, 1], relu(x) − λx ∈
    [0, max(−λl, (1 − λ)u)] on [l, u] (λ = u/(u − l) gives the minimal-area parallelogram); the
    derivative lies in the Clarke set [slope, 1]·x′.
    """
    if not isinstance(x, Enclosure) or not (0.0 <= slope <= 1.0):
        return NotImplemented
    v, d = x.v, x.d
    h = nt.h(v.c.dim() - 1)
    full = v.c.shape
    r = v.g.abs() * h + v.e
    mag = v.c.abs() + r  # ≥ |x| on the cell
    rr = r + mag * (4 * U) + _TINY  # rigorous radius: the range is [ĉ − rr, ĉ + rr]
    pos, neg = v.c >= rr, v.c <= -rr
    coef = pos.to(v.c.dtype)
    if slope:
        coef = coef + neg.to(v.c.dtype) * slope
    c = coef * v.c
    g = _mul0(v.g, coef)
    extra = mag * (4 * U)  # the remainder is coef·δ (|coef| ≤ 1) plus these (Euclidean tracking)
    e = coef * v.e + extra
    # the mixed neurons by their flat position in the (cells, …) layout (the order of nonzero()),
    # each tensor read there with take() and written with index_copy_ (fresh tensors, in place)
    flat = (~(pos | neg)).reshape(-1).nonzero().squeeze(1)
    idx = _unravel(flat, full)
    kink_w = v.c.new_zeros(0)
    window = None
    k = 1.0 - slope

    def at(t: Tensor) -> Tensor:
        return torch.take(t.expand(full), flat)

    if flat.numel():
        vc = at(v.c)
        rm = at(rr)
        l_, u_ = vc - rm, vc + rm
        lam = (u_ / (u_ - l_)).clamp(0.0, 1.0)  # any λ in [0, 1] is valid; offsets use this rounded λ
        r1, r2 = -lam * l_, (1 - lam) * u_
        zero = torch.zeros_like(r1)
        pad = (r1.abs() + r2.abs()) * (4 * U) + _TINY
        off_lo = torch.minimum(torch.minimum(r1, r2), zero) - pad
        off_hi = torch.maximum(torch.maximum(r1, r2), zero) + pad
        mu = (off_lo + off_hi) * 0.5
        rad = (off_hi - off_lo) * 0.5 * (1 + 4 * U)
        cm = slope + k * lam
        c = _put(c, full, flat, cm * vc + k * mu)
        vgm = at(v.g)  # the slope at the mixed neurons (also the window's, below)
        if not _is_zero(g):
            g = _put(g, full, flat, cm * vgm)
        vmag, ve = at(mag), at(v.e)  # (also the window's, below)
        x_extra = k * rad + (vmag + mu.abs()) * (4 * U)
        e = _put(e, full, flat, cm * ve + x_extra)
        extra = _put(extra, full, flat, x_extra)
    e = _up(e)
    # Euclidean norms over the last axis: δ_out = D·δ_in + (extra), D diagonal with entries in [0, 1]
    flat_shape = full.numel() == 0 or len(full) < 2
    width = None if flat_shape else full[-1]
    value = TM(c, g, e) if flat_shape else _with_norm(c, g, e, _norm_of(v, width), extra)
    if nt.values_only:  # no derivative (see EnclosureNumbers.values_only)
        return Enclosure(value, _zero_tm(c))
    dmag = d.c.abs() + d.g.abs() * h + d.e
    dc = coef * d.c
    dg = _mul0(d.g, coef)
    dextra = (d.c.abs() + d.g.abs()) * (2 * U)
    de = coef * d.e + dextra
    if flat.numel():
        # derivative: leaky′ ∈ [slope, 1]: (1 + slope)/2 ± (1 − slope)/2
        dmid = (1.0 + slope) * 0.5
        dcm = at(d.c)
        dc = _put(dc, full, flat, dmid * dcm)
        dgm = _zero(dcm) if _is_zero(d.g) else at(d.g)
        if not _is_zero(dg):
            dg = _put(dg, full, flat, dmid * dgm)
        d_round = (dcm.abs() + dgm.abs()) * (2 * U)
        dem = at(d.e)
        if nt.deferred is not None:  # D̃ = dmid exactly; the Clarke term goes to the adjoint bound
            kink_w = _up(k * 0.5 * at(dmag))
            d_extra = d_round
            window = (vc, vgm, _up(ve + vmag * (4 * U) + _TINY), dcm, dgm, _up(dem))
        else:
            d_extra = k * 0.5 * at(dmag) + d_round
        de = _put(de, full, flat, dmid * dem + d_extra)
        dextra = _put(dextra, full, flat, d_extra)
    de = _up(de)
    if nt.deferred is not None:
        nt.deferred.append(Kink(pos, neg, idx, kink_w, slope, window))
    if flat_shape:
        return Enclosure(value, TM(dc, dg, de))
    return Enclosure(value, _with_norm(dc, dg, de, _norm_of(d, width), dextra))


def _values_undeferred(nt: EnclosureNumbers, make: Callable[[], Enclosure]) -> TM:
    """The value Taylor model of ``make()`` (a rule composed of others, e.g. of ReLUs) computed with
    the kinks not deferred and no derivative: the composed rules then record nothing for the reverse
    walk, whose one record for the node the caller makes itself."""
    saved = nt.deferred, nt.values_only
    nt.deferred, nt.values_only = None, True
    try:
        return make().v
    finally:
        nt.deferred, nt.values_only = saved


def _clamp_bound(b: Any) -> float | None | bool:
    """A clamp bound as a float, None where absent, False where it is not a finite real number
    (numbers of other types never reach here: :func:`_guarded` declines them for every rule)."""
    if b is None:
        return None
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        return False
    return float(b)


def _clamp(nt: EnclosureNumbers, input: Any, min: Any = None, max: Any = None, *, out: Any = None) -> Any:  # noqa: A002 - torch's names
    """clamp(x, a, b) (also hardtanh and relu6) for numbers a ≤ b, either of them absent, as
    b − relu(b − (a + relu(x − a))): in real arithmetic that is the clamp itself, so the ReLU rule
    (:func:`_relu_like`, the kinks' Clarke sets in the remainders) on shifted enclosures
    (:func:`_shift`, each shift a rounded addition of a constant) encloses it. Where the kinks are
    deferred to the reverse walk, the derivative is :func:`_clamp_deferred`'s. Declined: tensor
    bounds, a > b (torch then returns b everywhere), non-finite bounds."""
    lo, hi = _clamp_bound(min), _clamp_bound(max)
    if out is not None:
        return _decline(nt, "out= is not supported")
    if lo is False or hi is False:
        return _decline(nt, "clamp bounds must be finite numbers (tensor bounds are not supported)")
    if not isinstance(input, Enclosure):
        return NotImplemented
    if lo is not None and hi is not None and lo > hi:
        return _decline(nt, f"the lower clamp bound {lo} exceeds the upper {hi}")
    if nt.deferred is not None:
        return _clamp_deferred(nt, input, lo, hi)
    return _clamp_composed(nt, input, lo, hi)


def _clamp_composed(nt: EnclosureNumbers, x: Enclosure, lo: float | None, hi: float | None) -> Enclosure:
    """The clamp as b − relu(b − (a + relu(x − a))) through the forward ReLU rule. A bound that no
    entry reaches on any cell (x ≥ a, or x ≤ b, proven everywhere) is skipped: there the clamp is
    the identity, while shifting by a bound far larger than x (a safety clamp at ±10¹⁶, say) and
    back would round x away."""
    y = x
    h = nt.h(x.v.c.dim() - 1)
    if lo is not None and not bool((y.v.bounds(h)[0] >= lo).all()):
        y = _add(nt, _relu_like(nt, _add(nt, y, lo, sign=-1.0)), lo)
    if hi is not None and not bool((y.v.bounds(h)[1] <= hi).all()):
        y = _add(nt, hi, _relu_like(nt, _add(nt, hi, y, sign=-1.0)), sign=-1.0)
    return y


def _clamp_deferred(nt: EnclosureNumbers, x: Enclosure, lo: float | None, hi: float | None) -> Enclosure:
    """The clamp with its kinks deferred to the reverse walk (:mod:`.adjoint`), as ReLU's are.

    The clamp's slope is D = 1 where a < x < b and 0 where x < a or x > b, so its derivative walk is
    D·x′ with D ∈ [0, 1] (the Clarke set) at the two kinks: the identity (∗) of :mod:`.adjoint`
    holds as for a ReLU. D is proven 1 where x − a > 0 and b − x > 0 are proven on the cell, 0 where
    x − a ≤ 0 or b − x ≤ 0 is, and on the other (mixed) neurons the derivative uses D̃ = 1/2 and
    records ``w`` ≥ |x′|/2 in a :class:`Kink` (slope 0). The tests read the Taylor models of x − a
    and b − x (:func:`_add`, their rounding in their remainders) exactly as :func:`_relu_like`
    reads its argument's. A mixed neuron whose other bound is proven records the window of the
    undecided difference (where along the cell its sign, hence D, is known); one that may meet both
    bounds records the whole cell. The value is the composed clamp's (:func:`_clamp_composed`,
    computed without deferring, values only)."""
    value = _values_undeferred(nt, lambda: _clamp_composed(nt, x, lo, hi))
    v, d = x.v, x.d
    full = v.c.shape
    if nt.values_only:
        return Enclosure(value, _zero_tm(value.c))
    h = nt.h(v.c.dim() - 1)

    def tests(w: Enclosure | None) -> tuple[Tensor | bool, Tensor | bool, TM | None, Tensor | None]:
        # (w > 0 proven, w ≤ 0 proven, w's Taylor model, its rounding-covered remainder for the window)
        if w is None:
            return True, False, None, None
        r = w.v.g.abs() * h + w.v.e
        mag = w.v.c.abs() + r
        rr = r + mag * (4 * U) + _TINY
        return w.v.c >= rr, w.v.c <= -rr, w.v, w.v.e + mag * (4 * U) + _TINY

    above, below, wa, ea = tests(None if lo is None else _add(nt, x, lo, sign=-1.0))
    inside, beyond, wb, eb = tests(None if hi is None else _add(nt, hi, x, sign=-1.0))
    pos = torch.as_tensor(above & inside, device=v.c.device).expand(full)
    neg = torch.as_tensor(below | beyond, device=v.c.device).expand(full)
    mixed = ~(pos | neg)
    flat = mixed.reshape(-1).nonzero().squeeze(1)
    idx = _unravel(flat, full)
    dcx, dgx, dex = d.c.expand(full), d.g, d.e.expand(full)
    dmag = dcx.abs() + d.g.abs() * h + dex
    coef = pos.to(v.c.dtype) + mixed.to(v.c.dtype) * 0.5
    dc = coef * dcx
    dg = _mul0(dgx, coef)
    dextra = (dcx.abs() + dgx.abs()) * (2 * U)
    de = _up(coef * dex + dextra)
    window = None
    kink_w = v.c.new_zeros(0)
    if flat.numel():
        def at(t: Tensor | None) -> Tensor:
            return torch.zeros_like(flat, dtype=v.c.dtype) if t is None else torch.take(t.expand(full), flat)

        kink_w = _up(0.5 * at(dmag))
        # the undecided difference: x − a where b − x > 0 is proven, b − x where x − a > 0 is; else
        # both may change sign on the cell: a window of the whole cell (ĝ = 0, |ĉ| ≤ e)
        only_a = at(torch.as_tensor(inside, device=v.c.device).to(v.c.dtype)) > 0
        only_b = at(torch.as_tensor(above, device=v.c.device).to(v.c.dtype)) > 0
        zeros, ones = torch.zeros_like(kink_w), torch.ones_like(kink_w)

        def pick(fa: Callable[[], Tensor], fb: Callable[[], Tensor], other: Tensor) -> Tensor:
            a_ = fa() if wa is not None else other
            b_ = fb() if wb is not None else other
            return torch.where(only_a, a_, torch.where(only_b, b_, other))

        wc = pick(lambda: at(wa.c), lambda: at(wb.c), zeros)
        wg = pick(lambda: at(wa.g) if not _is_zero(wa.g) else zeros, lambda: at(wb.g) if not _is_zero(wb.g) else zeros, zeros)
        we = _up(pick(lambda: at(ea), lambda: at(eb), ones))
        dgm = _zero(dcx) if _is_zero(dgx) else at(dgx)
        window = (wc, wg, we, at(dcx), dgm, _up(at(dex)))
    nt.deferred.append(Kink(pos, neg, idx, kink_w, 0.0, window))
    if full.numel() == 0 or len(full) < 2:
        return Enclosure(value, TM(dc, dg, de))
    return Enclosure(value, _with_norm(dc, dg, de, _norm_of(d, full[-1]), dextra))


def _hardtanh_fn(nt: EnclosureNumbers, input: Any, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Any:  # noqa: A002
    return _clamp(nt, input, min_val, max_val)


def _relu6_fn(nt: EnclosureNumbers, input: Any, inplace: bool = False) -> Any:  # noqa: A002 - torch's name
    return _clamp(nt, input, 0.0, 6.0)


# ----------------------------------------------------------------------------- normalisation


def _channel_view(nd: int) -> Callable[[Tensor], Tensor]:
    """Per-channel (F,) tensors viewed as (F, 1, …) against an (n, F, …) activation of ``nd`` axes."""
    return (lambda t: t.reshape(-1, *([1] * (nd - 2)))) if nd > 2 else (lambda t: t)


def _data_enclosure(nt: EnclosureNumbers, x: Any) -> Any:
    """A layer's input that is the data itself (a floating tensor, the same at every α) as an exact
    enclosure on every cell (BatchNorm right after the input); else ``x``."""
    if isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 2:
        cells = nt.mid.shape[0]
        return _const_enclosure(nt, x.to(torch.float64)).map(lambda t: t.expand(cells, *t.shape[1:]))
    return x


def _batch_norm_module(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Any) -> Any:
    x = _data_enclosure(nt, x)
    if mod.training or not isinstance(x, Enclosure):
        return NotImplemented
    mean, var = p.get("running_mean"), p.get("running_var")
    nd = x.v.c.dim() - 1  # (n, F, ...) without the cell axis
    view = _channel_view(nd)
    if mean is None or var is None:
        return NotImplemented  # no running statistics: batch statistics even in eval mode
    if isinstance(mean, (Param, Enclosure)) or isinstance(var, (Param, Enclosure)):
        return _batch_norm_moving(nt, mod, p, x, mean, var, view, nd)
    mean64, var64 = mean.to(torch.float64), var.to(torch.float64)
    # r = 1/sqrt(var + eps): three correctly rounded operations, relative error ≤ 3u
    r = 1.0 / torch.sqrt(var64 + mod.eps)
    centred = Enclosure(_shift(x.v, -view(mean64)), x.d)
    r_v = view(r)
    scaled_v, scaled_d = _scale(centred.v, r_v), _scale(centred.d, r_v)
    scaled = Enclosure(
        TM(scaled_v.c, scaled_v.g, _up(scaled_v.e + scaled_v.magnitude(nt.h(nd)) * (4 * U))),
        TM(scaled_d.c, scaled_d.g, _up(scaled_d.e + scaled_d.magnitude(nt.h(nd)) * (4 * U))),
    )
    weight, bias = p.get("weight"), p.get("bias")
    out = scaled
    if weight is not None:
        w = weight if isinstance(weight, Param) else Param(weight, torch.zeros_like(weight))
        out = _affine_layer(nt, out, w, None, lambda a, ww: a * view(ww), 1, view)
    if bias is not None:
        out = _add(nt, out, _bias_enclosure(nt, bias, view, nd))
    return out


def _batch_norm_moving(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Enclosure, mean: Any, var: Any, view, nd: int) -> Any:
    """BatchNorm with moving statistics μ(α), σ²(α): y = (x − μ)·(σ² + ε)^(−1/2)·γ + β.

    The statistics are either interpolated (``Param``: affine in α) or re-estimated (``Enclosure``
    from :class:`StatisticsNumbers`, shaped (C, 1, F, 1, …) to broadcast over examples).
    (σ² + ε)^(−1/2) is a smooth function of a Taylor model, enclosed like an activation; its
    derivatives |f″| = ¾v^(−5/2) and |f‴| = (15/8)v^(−7/2) are decreasing on v > 0, so their sup
    over a range is at its lower end (no interior maximiser)."""
    mu = mean if isinstance(mean, Enclosure) else _bias_enclosure(nt, mean, view, nd)
    v = var if isinstance(var, Enclosure) else _bias_enclosure(nt, var, view, nd)
    # a re-estimated variance is ≥ 0 for every α; an interpolated one is positive at both ends
    return _normalise(nt, mod, p, _sub(nt, x, mu), v, view, nd, nonnegative=isinstance(var, Enclosure))


def _normalise(nt: EnclosureNumbers, mod: nn.Module, p: dict, centred: Enclosure, var: Enclosure, view, nd: int, *,
               nonnegative: bool, root: Any = None) -> Enclosure:
    """(x − μ)·(var + ε)^(−1/2)·γ + β from the centred input and the variance's enclosure.
    ``nonnegative``: var is proven ≥ 0 for every α, so var + ε ≥ ε bounds the range of the rsqrt.
    ``root``: (var + ε)^(−1/2) already enclosed (:func:`_inverse_root`)."""
    r = _normaliser(nt, mod, p, var, view, nd, nonnegative=nonnegative, root=root)
    if r is NotImplemented:  # the variance's enclosure reaches 0 on some cell: nothing is known there
        return _undefined(_full(centred))
    out = _mul(nt, centred, r)
    bias = p.get("bias")
    if bias is not None:
        out = _add(nt, out, _bias_enclosure(nt, bias, view, nd))
    return out


def _inverse_root(nt: EnclosureNumbers, mod: nn.Module, var: Enclosure, *, nonnegative: bool) -> Any:
    """(var + ε)^(−1/2) per channel as an enclosure on the cells, NotImplemented where the variance's
    enclosure reaches −ε. ``nonnegative``: var ≥ 0 is proven for every α, so var + ε ≥ ε bounds the
    range of the rsqrt."""
    known = float(mod.eps) * (1 - 2 * U) if nonnegative else None
    return _smooth(nt, _RSQRT, Enclosure(_shift(var.v, float(mod.eps)), var.d), domain_lo=0.0, known_lo=known)


def _normaliser(nt: EnclosureNumbers, mod: nn.Module, p: dict, var: Enclosure, view, nd: int, *, nonnegative: bool, root: Any = None) -> Any:
    """ρ = γ·(var + ε)^(−1/2) per channel (γ = 1 without an affine weight) as an enclosure on the
    cells, NotImplemented where the variance's enclosure reaches −ε (``root``: the inverse root
    already enclosed, :func:`_inverse_root`). The product with γ comes first (small tensors), then
    one product with the centred activations instead of two."""
    r = root if root is not None else _inverse_root(nt, mod, var, nonnegative=nonnegative)
    weight = p.get("weight")
    if r is NotImplemented or weight is None:
        return r
    return _mul(nt, r, _bias_enclosure(nt, weight, view, nd))


def batch_norm_scale(nt: EnclosureNumbers, mod: nn.Module, p: dict, nd: int) -> TM | None:
    """The value of ρ(α) = γ(α)·(σ²(α) + ε)^(−1/2), the factor by which an eval-mode BatchNorm layer
    multiplies its input, as a Taylor model per channel on the cells (shaped to broadcast against
    the layer's (C, n, F, …) activations of ``nd`` axes without the cell axis); None where the
    layer is not the eval-mode affine map :func:`_batch_norm_module` encloses, or where the
    variance's enclosure reaches −ε. The statistics in ``p`` are constants (``bn=frozen``),
    affine in α (``Param``, ``bn=interpolate``) or re-estimated (``Enclosure``, ``bn=recompute``):
    each encloses the true statistics at every α of the cell, so ρ's enclosure holds for all three.
    The reverse walk (:mod:`.adjoint`) passes cotangents back through the layer with it:
    ∂y/∂x = ρ(α) per channel, whatever the statistics' own derivatives."""
    got = batch_norm_factors(nt, mod, p, nd)
    return None if got is None else got[0]


def batch_norm_factors(nt: EnclosureNumbers, mod: nn.Module, p: dict, nd: int) -> tuple[TM, TM] | None:
    """(ρ, q): the values of ρ(α) = γ(α)·q(α) and q(α) = (σ²(α) + ε)^(−1/2) as Taylor models per
    channel (see :func:`batch_norm_scale`, which returns ρ alone); None where that has none. The
    statistics walk of :mod:`.adjoint` reads ∂y/∂σ² = −½(x − μ)·ρ·q² from them."""
    mean, var = p.get("running_mean"), p.get("running_var")
    if mod.training or mean is None or var is None:
        return None
    view = _channel_view(nd)
    v = var if isinstance(var, Enclosure) else _bias_enclosure(nt, var, view, nd)
    q = _inverse_root(nt, mod, v, nonnegative=isinstance(var, Enclosure))
    if q is NotImplemented:
        return None
    r = _normaliser(nt, mod, p, v, view, nd, nonnegative=isinstance(var, Enclosure), root=q)
    return None if r is NotImplemented else (r.v, q.v)


def _undefined(x: Enclosure) -> Enclosure:
    """An enclosure that says nothing (infinite remainders): the cells' bounds become infinite and
    the bisection splits them (or reports the interval as undecided)."""
    inf = torch.full_like(x.v.c, math.inf)
    return Enclosure(TM(x.v.c, _zero(x.v.c), inf), TM(x.d.c.expand_as(x.v.c), _zero(x.v.c), inf))


def _mean_over(x: Enclosure, cdims: tuple[int, ...]) -> Enclosure:
    """The mean over the axes ``cdims`` (counted with the cell axis; the batch axis is 1), kept as
    size-1 axes. A mean of k terms in any summation order errs by at most γ_k·mean|·| (and the
    division by k by one more rounding); |t| ≤ h ≤ 1 bounds the ĝ part, as in :func:`_mean`."""
    full = _full(x)
    return _averaged(full, lambda t: t.mean(cdims, keepdim=True), int(math.prod(full.v.c.shape[d] for d in cdims)))


def _averaged(full: Enclosure, avg: Callable[[Tensor], Tensor], k: int) -> Enclosure:
    """``avg`` (non-negative weights summing to 1 over k terms: a mean, an average pool) applied to
    ĉ, ĝ and e of both Taylor models. Each computed average errs by at most γ_k·avg|·| in any
    summation order (plus the division's rounding), the averaged remainder's own included, so
    2γ_{k+4}·avg(|ĉ| + |ĝ| + e) covers them all (|t| ≤ h ≤ 1 for the ĝ part)."""
    return Enclosure(_reduced(full.v, avg, k), _reduced(full.d, avg, k))


def _reduced(a: TM, red: Callable[[Tensor], Tensor], k: int) -> TM:
    """``red`` (an average, or a sum, of at most k terms per output entry; non-negative weights)
    applied to ĉ, ĝ and e of a Taylor model of full shape: a sum of k terms in any order errs by at
    most γ_k·Σ|·| (an average by one more rounding), |t| ≤ h ≤ 1 for the ĝ part, and the remainders'
    own reduction rounds down by at most as much, so 2γ_{k+4}·red(|ĉ| + |ĝ| + e) covers all three."""
    mag = red(a.c.abs() + (0.0 if _is_zero(a.g) else a.g.abs()) + a.e)
    return TM(red(a.c), a.g if _is_zero(a.g) else red(a.g), _up((a.e if _is_zero(a.e) else red(a.e)) + mag * (gamma(k + 4) * 2.0)))


def _scale_inexact(a: TM, s: float) -> TM:
    """a·s for a constant s that is itself a rounded quotient (relative error ≤ u): the product's
    rounding is :func:`_scale`'s; the constant's error adds (|ĉ| + |ĝ|)·|s|·u, covered by 2u."""
    out = _scale(a, s)
    return TM(out.c, out.g, _up(out.e + (out.c.abs() + (0.0 if _is_zero(out.g) else out.g.abs())) * (2 * U)))


def _batch_norm_statistics(nt: "StatisticsNumbers", mod: nn.Module, p: dict, x: Any) -> Any:
    """BatchNorm in the re-estimation pass (train mode): normalise with the batch's own statistics
    and record the running statistics torch stores after one batch with ``momentum=None``:

        μ = mean of x over examples (and positions),   v = mean of (x − μ)²,
        running_mean = μ,   running_var = v·N/(N − 1),   y = (x − μ)·(v + ε)^(−1/2)·γ + β,

    N the number of values per channel. All as enclosures over the cells, derivatives included
    (the product and quotient rules of :func:`_mul` and :func:`_smooth`)."""
    name = nt.names.get(id(mod))
    x = _data_enclosure(nt, x)
    if name is None or not isinstance(x, Enclosure):
        return _batch_norm_module(nt, mod, p, x)
    full = _full(x)
    nd = full.v.c.dim()
    cdims = (1,) + tuple(range(3, nd))
    count = int(math.prod(full.v.c.shape[d] for d in cdims))
    if count < 2:
        return NotImplemented  # torch refuses train-mode BatchNorm with one value per channel
    mu = _mean_over(full, cdims)
    h = nt.h(nd - 1)
    anchor = nt.anchors.get(name) if nt.anchors is not None and not nt.points and nt.deferred is None else None
    given = nt.values.get(name) if nt.values is not None and nt.deferred is not None else None
    if anchor is not None:
        mu = Enclosure(_anchored(mu.v, anchor[0], mu.d, h), mu.d)
    elif given is not None:
        mu = Enclosure(given[0], mu.d)
    centred = _sub(nt, full, mu)
    # v = mean((x − μ)²) and v′ = 2·mean((x − μ)·x′): the μ′ part of (x − μ)′ averages to exactly 0
    # (mean(x − μ) = 0 at every α), so it is left out instead of carried as a remainder
    var_b = _mean_over(Enclosure(_product(centred.v, centred.v, h), _twice(_product(centred.v, full.d, h))), cdims)
    if anchor is not None:
        var_b = Enclosure(_anchored(var_b.v, anchor[1], var_b.d, h), var_b.d)
    elif given is not None:
        var_b = Enclosure(given[1], var_b.d)
    if nt.anchors is not None and nt.points:  # a pass at the midpoints: what the cells' pass anchors at
        nt.anchors[name] = (mu.v, var_b.v)
    elif nt.values is not None and nt.deferred is None:  # what a deferred pass on the same cells reads
        nt.values[name] = (mu.v, var_b.v)
    factor = count / (count - 1)
    var_u = Enclosure(_scale_inexact(var_b.v, factor), _scale_inexact(var_b.d, factor))
    inner = nd - 1  # (n, F, …) without the cell axis
    view = _channel_view(inner)
    root = _inverse_root(nt, mod, var_b, nonnegative=True)
    nt.record[name] = (mu, var_u)
    if nt.deferred is not None and root is not NotImplemented:  # what the statistics walk of .adjoint reads
        rho = _normaliser(nt, mod, p, var_b, view, inner, nonnegative=True, root=root)
        nt.normalised[name] = Normalised(centred.v, root.v, rho.v, count, cdims)
    nt.stop_if_complete()
    return _normalise(nt, mod, p, centred, var_b, view, inner, nonnegative=True, root=root)


@dataclass(frozen=True, slots=True)
class Normalised:
    """What a train-mode BatchNorm layer of the re-estimation pass computed, for the statistics walk
    of :mod:`.adjoint` (recorded when remainders are deferred): the centred input x − μ (value
    Taylor model, full shape), q = (v + ε)^(−1/2) and ρ = γ·q per channel (v the biased batch
    variance), N values per channel, and the axes (with the cell axis) the statistics average over."""

    centred: TM
    root: TM
    scale: TM
    count: int
    dims: tuple[int, ...]


def _anchored(v: TM, at_mid: TM, d: TM, h: Tensor) -> TM:
    """A statistic's value on the cells, entrywise the narrower of its Taylor model ``v`` and the mean
    value form s(m) + ∫_m^{m+t} s′: with s(m) ∈ ``at_mid`` (a pass at the midpoints, no slope) and
    s′(m + τ) ∈ d.c + d.g·τ ± d.e (its derivative's enclosure, Clarke remainders included, which
    holds wherever s′ exists; s is Lipschitz, so the integral form holds),
    s(m + t) ∈ at_mid.c + d.c·t ± (at_mid.e + |d.g|h²/2 + d.e·h). Deep in a re-estimation pass the
    value's own remainder compounds through every BatchNorm layer (each entry's relaxation error,
    squared into the variance), while the derivative's grows more slowly: on a trained digits ResNet
    + BN, on cells of 2⁻⁸, the last variance's value radius was 0.05–0.13 against values ≥ 0.07."""
    full = broadcast_shape(v.c.shape, d.c.shape, at_mid.c.shape)
    dg = d.g.abs() if not _is_zero(d.g) else _zero(d.c)
    e_alt = _up((at_mid.e + dg * (h * h * 0.5) + d.e * h) * (1.0 + 4 * U) + (at_mid.c.abs() + d.c.abs()) * (2 * U) + _TINY)
    take = (e_alt < v.e).expand(full)  # the remainder is what later products amplify; the slopes carry along
    if not bool(take.any()):
        return v
    return TM(torch.where(take, at_mid.c.expand(full), v.c.expand(full)), torch.where(take, d.c.expand(full), v.g.expand(full)),
              torch.where(take, e_alt.expand(full), v.e.expand(full)))


class StatisticsComplete(Exception):
    """Raised by a re-estimation pass once every BatchNorm layer's statistics are recorded: what
    follows the last BatchNorm layer does not change them (each layer is called exactly once,
    checked before any walk), so the rest of the pass is skipped."""


class StatisticsNumbers(EnclosureNumbers):
    """Enclosures for the re-estimation pass of ``bn=recompute`` (one batch of all the data):
    BatchNorm layers named in ``names`` (id(module) → name) normalise with their batch statistics
    and record (running_mean, running_var) enclosures in ``record``."""

    name = "rigorous enclosure (re-estimation pass)"

    def __init__(self, mid: Tensor, rad: Tensor, names: dict[int, str]):
        super().__init__(mid, rad)
        self.names = names
        self.record: dict[str, tuple[Enclosure, Enclosure]] = {}
        self.normalised: dict[str, Normalised] = {}
        # name → (μ, v) value Taylor models at the cells' midpoints (from a pass with ``points``, which
        # fills it when given a dict): the cells' pass then anchors its statistics there (_anchored)
        self.anchors: dict[str, tuple[TM, TM]] | None = None
        # name → (μ, v) value Taylor models on the cells: a pass with remainders deferred takes them
        # in place of its own (the same quantities on the same cells, from an anchored pass)
        self.values: dict[str, tuple[TM, TM]] | None = None

    def stop_if_complete(self) -> None:
        """Raise :class:`StatisticsComplete` once every named layer has its record."""
        if len(self.record) >= len(set(self.names.values())):
            raise StatisticsComplete

    def rule(self, kind: str, key: object):
        if kind == "module" and key in (nn.BatchNorm1d, nn.BatchNorm2d):
            return lambda *a, **k: _batch_norm_statistics(self, *a, **k)
        return super().rule(kind, key)


def _bias_enclosure(nt: EnclosureNumbers, b: Any, view, nd: int) -> Enclosure:
    if isinstance(b, Param):
        p = Param(view(b.w0), view(b.dw))
        enc = _param_enclosure(nt, p)
    else:
        enc = _const_enclosure(nt, view(b.to(torch.float64)))
    # add a batch axis so it broadcasts against (C, n, F, …)
    return enc.map(lambda t: t.unsqueeze(1))


# ----------------------------------------------------------------------------- shapes


def _shape_of(x: Enclosure) -> torch.Size:
    return x.shape


def _reshape(nt: EnclosureNumbers, x: Any, *shape: Any) -> Any:
    if not isinstance(x, Enclosure):
        return NotImplemented
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    full = _full(x)
    cells = full.v.c.shape[0]
    return full.map(lambda t: t.reshape(cells, *shape))


def _full(x: Enclosure) -> Enclosure:
    """Broadcast every tensor of ``x`` to the value's full (C, …) shape."""
    s = x.v.c.shape

    def ex(t: Tensor) -> Tensor:
        return t if _is_zero(t) else t.expand(s)

    return Enclosure(TM(x.v.c, ex(x.v.g), ex(x.v.e)), TM(x.d.c.expand(s), ex(x.d.g), ex(x.d.e)))


def _flatten(nt: EnclosureNumbers, x: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
    if not isinstance(x, Enclosure):
        return NotImplemented
    nd = len(x.shape)
    s = start_dim % nd + 1
    e = end_dim % nd + 1
    return _full(x).map(lambda t: torch.flatten(t, s, e))


def _flatten_module(nt: EnclosureNumbers, mod: nn.Flatten, p: dict, x: Any) -> Any:
    return _flatten(nt, x, mod.start_dim, mod.end_dim)


def _unflatten(nt: EnclosureNumbers, x: Any, dim: int, sizes: Any) -> Any:
    if not isinstance(x, Enclosure) or not isinstance(dim, int):
        return NotImplemented
    d = dim % len(x.shape) + 1  # + 1: the leading cell axis
    return _full(x).map(lambda t: t.unflatten(d, tuple(sizes)))


def _unflatten_module(nt: EnclosureNumbers, mod: nn.Unflatten, p: dict, x: Any) -> Any:
    return _unflatten(nt, x, mod.dim, mod.unflattened_size)


def _identity_module(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Any) -> Any:
    if isinstance(mod, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) and mod.training:
        return NotImplemented
    return x


def _dropout(nt: EnclosureNumbers, x: Any, p: float = 0.5, training: bool = False, inplace: bool = False) -> Any:
    return NotImplemented if training else x


def _size(nt: EnclosureNumbers, x: Any, dim: int | None = None) -> Any:
    s = x.shape
    return s if dim is None else s[dim]


def _dim(nt: EnclosureNumbers, x: Any) -> Any:
    return len(x.shape)


def _avg_pool_module(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Any) -> Any:
    if not isinstance(x, Enclosure):
        return NotImplemented
    if type(mod) is nn.AvgPool2d:
        if mod.divisor_override is not None:
            return NotImplemented
        # every output is Σ w_i x_i over its window, w_i = 1/divisor ≥ 0, Σ w_i ≤ 1 (ceil_mode windows
        # clipped at the border, count_include_pad=False dividing by the entries inside): a
        # non-negative map of norm ≤ 1 whatever the options, applied to ĉ, ĝ and e alike
        pool = lambda t: F.avg_pool2d(t, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad)  # noqa: E731
        nk = _prod2(mod.kernel_size)
    elif type(mod) is nn.AdaptiveAvgPool2d:
        pool = lambda t: F.adaptive_avg_pool2d(t, mod.output_size)  # noqa: E731
        nk = None
    else:
        return NotImplemented
    return _linear_average(nt, x, pool, nk)


def _pair2(v: Any) -> tuple[int, int] | None:
    """A pooling argument as (height, width): an int or a sequence of one or two ints; None otherwise."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return (v[0], v[-1])
    return None


def _max_pool2d(nt: EnclosureNumbers, input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,  # noqa: A002
                ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """Max pooling over the last two axes as a chain of pairwise maxima over each window,
    max(m, w) = m + relu(w − m), exact in real arithmetic, so the ReLU rule (:func:`_relu_like`)
    encloses it (values, and the derivative's Clarke set where two entries may tie). Padding
    (torch's −∞, which never wins) is taken as a copy of the nearest entry, which lies in the same
    window when the dilation is 1 and the padding at most half the kernel (torch's own limit), so the
    maximum is unchanged. Where the kinks are deferred to the reverse walk, the derivative is
    :func:`_max_pool2d_deferred`'s. Declined: ``ceil_mode``, ``return_indices``, padding with dilation > 1."""
    x = input
    if ceil_mode or return_indices:
        return _decline(nt, "ceil_mode and return_indices are not supported")
    if not isinstance(x, Enclosure):
        return NotImplemented
    k = _pair2(kernel_size)
    s = _pair2(stride) if stride is not None and stride != [] and stride != () else k
    pad, dil = _pair2(padding), _pair2(dilation)
    if k is None or s is None or pad is None or dil is None or min(*k, *s, *dil) < 1 or min(pad) < 0:
        return _decline(nt, "kernel, stride, padding and dilation must be positive integers (padding ≥ 0)")
    if pad[0] > k[0] // 2 or pad[1] > k[1] // 2:
        return _decline(nt, "padding larger than half the kernel")
    if max(pad) > 0 and max(dil) > 1:
        return _decline(nt, "padding together with dilation is not supported")
    shape = x.v.c.shape  # (cells, …, H, W)
    if len(shape) < 3:
        return NotImplemented
    hgt, wid = shape[-2], shape[-1]
    oh = (hgt + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (wid + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
    if oh <= 0 or ow <= 0 or hgt == 0 or wid == 0:
        return NotImplemented
    dev = x.v.c.device
    rows = torch.arange(-pad[0], hgt + pad[0], device=dev).clamp(0, hgt - 1)
    cols = torch.arange(-pad[1], wid + pad[1], device=dev).clamp(0, wid - 1)

    def padded(t: Tensor) -> Tensor:
        if _is_zero(t):
            return t
        t = t.expand(shape)
        return t.index_select(-2, rows).index_select(-1, cols) if max(pad) > 0 else t

    parts = [padded(t) for t in (x.v.c, x.v.g, x.v.e, x.d.c, x.d.g, x.d.e)]

    def window(i: int, j: int) -> Enclosure:
        def cut(t: Tensor) -> Tensor:
            if _is_zero(t):
                return t
            r0, c0 = i * dil[0], j * dil[1]
            return t[..., r0 : r0 + s[0] * (oh - 1) + 1 : s[0], c0 : c0 + s[1] * (ow - 1) + 1 : s[1]]

        vc, vg, ve, dc, dg, de = (cut(t) for t in parts)
        return Enclosure(TM(vc, vg, ve), TM(dc, dg, de))

    def composed() -> Enclosure:
        out = window(0, 0)
        for i in range(k[0]):
            for j in range(k[1]):
                if i or j:
                    out = _add(nt, out, _relu_like(nt, _sub(nt, window(i, j), out)))
        return out

    if nt.deferred is None:
        return composed()
    value = _values_undeferred(nt, composed)
    if nt.values_only:
        return Enclosure(value, _zero_tm(value.c))
    return _max_pool2d_deferred(nt, value, [window(i, j) for i in range(k[0]) for j in range(k[1])],
                                (k, s, pad, dil, hgt, wid))


def _max_pool2d_deferred(nt: EnclosureNumbers, value: TM, wins: list[Enclosure], geometry: tuple) -> Enclosure:
    """Max pooling's derivative with its kinks deferred to the reverse walk (:mod:`.adjoint`).

    For almost every α the maximum y of a window is differentiable with y′ = x′_k for an entry k
    attaining it (y − x_k ≥ 0 has a minimum there), so y′ = Σ_k P_k x′_k with P a vertex of the
    simplex of the window's candidates: the entries whose upper bound on the cell reaches the
    largest lower bound (the others lie below another entry on the whole cell). The walk takes
    P̃ = 1/|candidates| on each candidate and records ``w`` ≥ max_k sup x̃′_k − min_k inf x̃′_k over
    the candidates, which bounds |Σ_k (P_k − P̃_k)x̃′_k| (a weighted mean lies between them); a
    window with one candidate is decided (w = 0). The identity (∗) of :mod:`.adjoint` holds with this
    term in place of a ReLU's (the derivative walk is linear in x′ with coefficients P), and the
    reverse walk sends P_k·g back to each entry, P_k ∈ P̃_k ± max(P̃_k, 1 − P̃_k) on candidates
    (:func:`~.adjoint._max_pool_back`). Padding entries are copies of an edge entry (see
    :func:`_max_pool2d`), which the reverse walk sums back onto it."""
    h = nt.h(value.c.dim() - 1)
    full = value.c.shape
    bounds = [w.v.bounds(h) for w in wins]
    top = torch.stack([lo.expand(full) for lo, _ in bounds]).amax(0)
    cand = torch.stack([hi.expand(full) >= top for _, hi in bounds])  # (K, cells, …, oh, ow)
    count = cand.sum(0)
    p = cand.to(value.c.dtype) / count.clamp(min=1).to(value.c.dtype)  # rounded weights: the walk's own P̃
    d = None
    for k, w in enumerate(wins):
        term = _scale(w.d, p[k])
        d = term if d is None else _add_tm(d, term)
    dbounds = [w.d.bounds(h) for w in wins]
    inf = torch.tensor(math.inf, dtype=value.c.dtype, device=value.c.device)
    big = torch.stack([torch.where(cand[k], hi.expand(full), -inf) for k, (_, hi) in enumerate(dbounds)]).amax(0)
    small = torch.stack([torch.where(cand[k], lo.expand(full), inf) for k, (lo, _) in enumerate(dbounds)]).amin(0)
    mixed = count >= 2
    idx = mixed.nonzero(as_tuple=True)
    kink_w = _up((big[idx] - small[idx]) * (1 + 2 * U)) if idx[0].numel() else value.c.new_zeros(0)
    zeros = torch.zeros_like(kink_w)
    # the kinks' pieces (adjoint.kink_pieces): no sign to place, the whole cell, a term of at most
    # ½·|g|·(2w) (the pieces' half-width ½ times ṽ′'s radius 2w)
    window = (zeros, zeros, torch.ones_like(kink_w), zeros, zeros, 2.0 * kink_w)
    nt.deferred.append(PoolKink(~mixed, torch.zeros_like(mixed), idx, kink_w, 0.0, window, p, cand, geometry))
    return Enclosure(value, TM(d.c, d.g, d.e))


def _avg_pool_fn(nt: EnclosureNumbers, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: Any = None) -> Any:
    if not isinstance(x, Enclosure) or divisor_override is not None:
        return NotImplemented
    pool = lambda t: F.avg_pool2d(t, kernel_size, stride, padding, ceil_mode, count_include_pad)  # noqa: E731
    return _linear_average(nt, x, pool, _prod2(kernel_size))


def _adaptive_avg_pool_fn(nt: EnclosureNumbers, x: Any, output_size: Any) -> Any:
    if not isinstance(x, Enclosure):
        return NotImplemented
    return _linear_average(nt, x, lambda t: F.adaptive_avg_pool2d(t, output_size), None)


def _mean(nt: EnclosureNumbers, x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    """The mean over non-batch axes (global average pooling written as ``x.mean((2, 3))``)."""
    if not isinstance(x, Enclosure) or dim is None or dtype is not None:
        return NotImplemented
    nd = len(x.shape)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    dims = tuple(d % nd for d in dims)
    if not dims or 0 in dims:
        return NotImplemented  # averaging over examples (dim=[] is every axis) is not a per-example map
    cdims = tuple(d + 1 for d in dims)
    return _averaged(_full(x), lambda t: t.mean(cdims, keepdim=keepdim), int(math.prod(x.shape[d] for d in dims)))


def _getattr(nt: EnclosureNumbers, x: Any, name: str) -> Any:
    if not isinstance(x, Enclosure):
        return NotImplemented
    if name == "shape":
        return x.shape
    if name == "ndim":
        return len(x.shape)
    if name in ("dtype", "device"):
        return getattr(x.v.c, name)
    return NotImplemented


def _nonzero(p: Any) -> bool:
    return any(v != 0 for v in p) if isinstance(p, (tuple, list)) else p != 0


def _prod2(k: Any) -> int:
    return int(k[0] * k[1]) if isinstance(k, (tuple, list)) else int(k * k)


def _linear_average(nt: EnclosureNumbers, x: Enclosure, pool: Callable[[Tensor], Tensor], nk: int | None) -> Enclosure:
    """An average (non-negative weights summing to 1): applied to ĉ, ĝ and e; rounding by γ."""
    full = _full(x)

    def ap(t: Tensor) -> Tensor:
        s = t.shape
        y = pool(t.reshape(-1, *s[-3:]))
        return y.reshape(*s[:-3], *y.shape[-3:])

    return _averaged(full, ap, nk if nk is not None else int(math.prod(full.v.c.shape[-2:])))


# ----------------------------------------------------------------------------- rule tables


_MODULE_RULES: dict[type, Callable[..., Any]] = {
    nn.Linear: _linear_module,
    nn.Conv1d: _conv_module,
    nn.Conv2d: _conv_module,
    nn.ReLU: lambda nt, m, p, x: _relu_like(nt, x),
    nn.LeakyReLU: lambda nt, m, p, x: _relu_like(nt, x, float(m.negative_slope)),
    nn.ReLU6: lambda nt, m, p, x: _clamp(nt, x, m.min_val, m.max_val),
    nn.Hardtanh: lambda nt, m, p, x: _clamp(nt, x, m.min_val, m.max_val),
    nn.Tanh: lambda nt, m, p, x: _smooth(nt, _TANH, x),
    nn.Sigmoid: lambda nt, m, p, x: _smooth(nt, _SIGMOID, x),
    nn.GELU: lambda nt, m, p, x: _smooth(nt, _GELU, x) if m.approximate == "none" else NotImplemented,
    nn.Softplus: lambda nt, m, p, x: _softplus_fn(nt, x, m.beta, m.threshold),
    nn.BatchNorm1d: _batch_norm_module,
    nn.BatchNorm2d: _batch_norm_module,
    nn.Flatten: _flatten_module,
    nn.Unflatten: _unflatten_module,
    nn.Identity: _identity_module,
    nn.Dropout: _identity_module,
    nn.AvgPool2d: _avg_pool_module,
    nn.AdaptiveAvgPool2d: _avg_pool_module,
    nn.MaxPool2d: lambda nt, m, p, x: _max_pool2d(nt, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices),
}


def _relu_fn(nt, x, inplace=False):
    return _relu_like(nt, x)


def _leaky_fn(nt, x, negative_slope=0.01, inplace=False):
    return _relu_like(nt, x, float(negative_slope))


def _gelu_fn(nt, x, approximate="none"):
    return _smooth(nt, _GELU, x) if approximate == "none" else NotImplemented


def _softplus_fn(nt, x, beta=1.0, threshold=20.0):
    """softplus_β(x) = softplus(βx)/β where βx ≤ threshold (torch returns x above it: declined).
    β > 0: βx is a constant scaling (rounded like any product), and 1/β a rounded constant."""
    beta = float(beta)
    if beta == 1:
        return _smooth(nt, _SOFTPLUS, x, softplus_threshold=float(threshold))
    if not isinstance(x, Enclosure) or not (math.isfinite(beta) and beta > 0):
        return NotImplemented
    y = _smooth(nt, _SOFTPLUS, Enclosure(_scale(x.v, beta), _scale(x.d, beta)), softplus_threshold=float(threshold))
    if y is NotImplemented:
        return y
    return Enclosure(_scale_inexact(y.v, 1.0 / beta), _scale_inexact(y.d, 1.0 / beta))


_FUNCTION_RULES: dict[object, Callable[..., Any]] = {
    F.linear: _linear,
    torch.relu: _relu_fn,
    F.relu: _relu_fn,
    F.leaky_relu: _leaky_fn,
    F.relu6: _relu6_fn,
    F.hardtanh: _hardtanh_fn,
    torch.clamp: _clamp,
    torch.clip: _clamp,
    torch.tanh: lambda nt, x: _smooth(nt, _TANH, x),
    F.tanh: lambda nt, x: _smooth(nt, _TANH, x),
    torch.sigmoid: lambda nt, x: _smooth(nt, _SIGMOID, x),
    F.sigmoid: lambda nt, x: _smooth(nt, _SIGMOID, x),
    F.gelu: _gelu_fn,
    F.softplus: _softplus_fn,
    operator.add: _add,
    torch.add: _add,
    operator.sub: _sub,
    torch.sub: _sub,
    operator.mul: _mul,
    torch.mul: _mul,
    operator.neg: _neg,
    operator.truediv: _truediv,
    torch.flatten: _flatten,
    torch.unflatten: _unflatten,
    torch.reshape: _reshape,
    torch.mean: _mean,
    F.avg_pool2d: _avg_pool_fn,
    F.adaptive_avg_pool2d: _adaptive_avg_pool_fn,
    F.max_pool2d: _max_pool2d,
    getattr: _getattr,
    F.dropout: _dropout,
}

_METHOD_RULES: dict[str, Callable[..., Any]] = {
    "view": _reshape,
    "reshape": _reshape,
    "flatten": _flatten,
    "unflatten": _unflatten,
    "size": _size,
    "dim": _dim,
    "relu": _relu_fn,
    "clamp": _clamp,
    "clip": _clamp,
    "tanh": lambda nt, x: _smooth(nt, _TANH, x),
    "sigmoid": lambda nt, x: _smooth(nt, _SIGMOID, x),
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "neg": _neg,
    "contiguous": lambda nt, x: x,
    "mean": _mean,
}
