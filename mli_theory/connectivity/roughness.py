"""The roughness index of a loss landscape over random 1D slices.

Source: K. Wu, X. Jian, R. Du, J. Chen, X. Zhou, "Roughness Index for Loss Landscapes of Neural
Network Models of Partial Differential Equations", arXiv:2103.11069 (2021). The paper builds its
roughness index (RI) from the mean and the variance, over randomly sampled directions, of the
*normalised total variation* of the one-dimensional loss profiles; a large RI at a minimiser signals
an oscillatory landscape.

**Our reading** (we could read the paper's abstract but not its formula section; the exact
normalisation there may differ, so every per-slice value is reported and any other combination
can be computed from them):

* Slices: for i = 1…m, a filter-normalised Gaussian direction d_i about the centre c (θT or θ0;
  :mod:`.directions`) and the profile f_i(t) = L(c + t·d_i) on the grid t_0 < … < t_{n−1},
  t ∈ [−R, R].
* Normalised total variation of a sampled profile:

      T_i = Σ_k |f_i(t_{k+1}) − f_i(t_k)| / (max_k f_i(t_k) − min_k f_i(t_k)),

  the discrete total variation divided by the range. T_i is scale-free (unchanged by L → aL + b,
  a > 0), T_i = 1 exactly when the sampled profile is monotone, T_i ∈ [1, 2] for a profile with a
  single minimum and no other turn (T = 2 for a bowl whose ends are equally high), and every extra
  oscillation of depth h adds 2h/range. A constant profile gets T_i = 1 by convention.
* Roughness index: the coefficient of variation of the T_i over the directions,

      RI = s_T / m_T,   m_T = (1/m) Σ T_i,   s_T = sqrt( (1/(m−1)) Σ (T_i − m_T)² )  (0 for m = 1),

  reported together with m_T and s_T. A convex quadratic bowl centred at its minimiser has every
  T_i = 2, so RI = 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..inputs.devices import resolve_device, resolve_dtype
from ..path.curve import data_on_line
from ..path.line import BNPolicy, make_line
from .directions import random_directions
from .surface import Frame, axis_grid, evaluate_points

Progress = Callable[[int, int], None]

DEFINITION = (
    "T_i = sum_k |f_i(t_k+1) - f_i(t_k)| / (max f_i - min f_i) for f_i(t) = L(c + t*d_i), d_i filter-normalised "
    "Gaussian (T_i = 1 for a monotone or constant slice); RI = sample std(T) / mean(T) over the slices "
    "(our reading of Wu et al. 2021, arXiv:2103.11069)"
)


def normalized_total_variation(values: Sequence[float]) -> float:
    """T = Σ|f_{k+1} − f_k| / (max f − min f); 1.0 for a constant sequence.

    >>> normalized_total_variation([3.0, 2.0, 1.0])
    1.0
    >>> normalized_total_variation([1.0, 0.0, 1.0])
    2.0
    >>> normalized_total_variation([0.0, 1.0, 0.0, 1.0, 0.0])
    4.0
    """
    v = [float(x) for x in values]
    if len(v) < 2:
        raise ValueError("normalized_total_variation: need at least 2 values")
    if not all(math.isfinite(x) for x in v):
        raise ValueError("normalized_total_variation: non-finite value")
    rng = max(v) - min(v)
    if rng == 0.0:
        return 1.0
    tv = sum(abs(b - a) for a, b in zip(v, v[1:]))
    return tv / rng


@dataclass(frozen=True)
class RoughnessIndex:
    """The roughness index of a set of 1D profiles (definition in the module docstring).

    Attributes:
        index: RI = s_T / m_T (0.0 for a single slice or all T equal).
        mean: m_T, the mean normalised total variation.
        std: s_T, its sample standard deviation (ddof = 1; 0.0 for one slice).
        per_slice: T_i for each slice.
        definition: the formula, in words.
    """

    index: float
    mean: float
    std: float
    per_slice: tuple[float, ...]
    definition: str = DEFINITION

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "mean": self.mean, "std": self.std, "per_slice": list(self.per_slice), "definition": self.definition}


def roughness_index(profiles: Sequence[Sequence[float]]) -> RoughnessIndex:
    """RI of sampled profiles (each ≥ 2 finite values).

    >>> r = roughness_index([[2, 1, 0], [0, 1, 0, 1, 0]])   # T = 1 and T = 4
    >>> (r.mean, round(r.std, 12), round(r.index, 12))
    (2.5, 2.12132034356, 0.848528137424)
    """
    if len(profiles) < 1:
        raise ValueError("roughness_index: need at least one profile")
    ts = [normalized_total_variation(p) for p in profiles]
    m = sum(ts) / len(ts)
    s = math.sqrt(sum((t - m) ** 2 for t in ts) / (len(ts) - 1)) if len(ts) > 1 else 0.0
    return RoughnessIndex(index=s / m if m > 0 else 0.0, mean=m, std=s, per_slice=tuple(ts))


@dataclass(frozen=True)
class Roughness:
    """Random 1D slices of the loss about a centre, and their roughness index.

    Attributes:
        t: slice coordinates t_k ∈ [−R, R].
        slices: losses[i][k] = L(c + t_k·d_i) (None where non-finite).
        roughness: the index over the slices with finite values (None if there are none).
        center: ``final`` (θT) or ``init`` (θ0).
        seed: seed of the directions (one generator, drawn in order).
        include_bn_and_bias: whether biases/BatchNorm parameters were perturbed.
        bn: BatchNorm policy (None for models without BatchNorm).
        warnings: caveats (slices left out, vmap fallback).
        info: facts (device, dtype, timings).
    """

    t: tuple[float, ...]
    slices: tuple[tuple[float | None, ...], ...]
    roughness: RoughnessIndex | None
    center: str
    seed: int
    include_bn_and_bias: bool
    bn: str | None
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": list(self.t),
            "slices": [list(s) for s in self.slices],
            "roughness_index": self.roughness.index if self.roughness else None,
            "roughness": self.roughness.to_dict() if self.roughness else None,
            "center": self.center,
            "seed": self.seed,
            "include_bn_and_bias": self.include_bn_and_bias,
            "bn": self.bn,
            "warnings": list(self.warnings),
            "info": dict(self.info),
        }


def landscape_roughness(
    model: nn.Module,
    init: StateDict,
    final: StateDict,
    data: Dataset,
    *,
    slices: int = 10,
    steps: int = 51,
    span: float = 1.0,
    seed: int = 0,
    center: str = "final",
    include_bn_and_bias: bool = False,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    batch_size: int | None = None,
    chunk: int | None = None,
    progress: Progress | None = None,
) -> Roughness:
    """Evaluate ``slices`` random 1D slices about θT (or θ0) and their roughness index.

    Args:
        model, init, final, data: as for :func:`mli_theory.connectivity.surface.loss_surface`.
        slices: number of random directions m ≥ 1.
        steps: grid points per slice n ≥ 3.
        span: R > 0; t ∈ [−R, R].
        seed: seed of one ``torch.Generator``; direction i is its i-th draw.
        center: ``final`` or ``init``.
        include_bn_and_bias, bn, device, dtype, batch_size, chunk, progress: as for ``loss_surface``.

    Raises:
        InputError: bad options or inputs, before heavy work.
    """
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 2:
        raise InputError(f"slices={slices!r}: need an integer of at least 2 slices (the index is a standard deviation over them)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3:
        raise InputError(f"steps={steps!r}: need an integer of at least 3 points per slice")
    if slices * steps > 1_000_000:
        raise InputError(f"slices={slices}: {slices * steps} points in all is more than 1000000")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not math.isfinite(span) or span <= 0:
        raise InputError(f"range={span!r}: must be a finite number > 0")
    if center not in ("final", "init"):
        raise InputError(f"center={center!r}: expected final or init")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r}: must be an integer")
    try:
        bn = BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    line = make_line(model, init, final, device=device, dtype=dtype)
    data = data_on_line(line, data, bn, batch_size)
    c = line.end if center == "final" else line.start
    dirs = random_directions(model, c, slices, seed=seed, include_bn_and_bias=include_bn_and_bias, orthogonal=False)
    ts = axis_grid(-float(span), float(span), steps)
    total = slices * steps
    warnings: list[str] = []
    rows: list[tuple[float | None, ...]] = []
    t0 = time.perf_counter()
    used_chunk = None
    for i, d in enumerate(dirs):
        fixed = {k: v for k, v in c.items() if not v.is_floating_point() or not bool(d[k].any())}
        offset = {k: v for k, v in c.items() if k not in fixed}
        bases = {k: d[k].unsqueeze(0) for k in offset}
        frame = Frame(fixed, offset, bases, lambda u: [float(u[0])])

        def prog(done: int, _n: int, i: int = i) -> None:
            if progress is not None:
                progress(i * steps + done, total)

        vals, used_chunk, w = evaluate_points(line, frame, [(t,) for t in ts], data, bn=bn, batch_size=batch_size, chunk=chunk, progress=prog)
        for msg in w:
            if msg not in warnings:
                warnings.append(msg)
        rows.append(tuple(v if math.isfinite(v) else None for v in vals))
    good = [r for r in rows if all(v is not None for v in r)]
    if len(good) < len(rows):
        warnings.append(f"{len(rows) - len(good)} of {len(rows)} slices have non-finite losses and are left out of the index")
    ri = roughness_index(good) if good else None  # type: ignore[arg-type]
    info = {
        "device": str(device), "dtype": str(dtype).replace("torch.", ""), "n_examples": data.n, "slices": slices,
        "steps": steps, "range": float(span), "chunk": used_chunk, "eval_s": round(time.perf_counter() - t0, 4),
    }
    return Roughness(
        t=tuple(ts), slices=tuple(rows), roughness=ri, center=center, seed=seed,
        include_bn_and_bias=bool(include_bn_and_bias), bn=bn.value if line.has_bn else None,
        warnings=tuple(warnings), info=info,
    )
