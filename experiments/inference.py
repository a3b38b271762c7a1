"""Statistical tests of the round-3 validation: stratified permutation tests, a trend test, Holm's
correction, Firth-penalised logistic regression and the smallest detectable effects.

Every p-value is two-sided. Permutation tests permute the binary outcome (or the group label)
within strata, so they condition on each stratum's margins: they are exact (up to Monte Carlo
error, ±1/√B) whatever the strata's sizes, and they need no large-sample argument (many of our
cells have no or few events). The Monte Carlo p-value is (1 + #{|T*| ≥ |T|}) / (1 + B), which is a
valid p-value (Phipson & Smyth 2010).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

B_DEFAULT = 20_000


@dataclass(frozen=True)
class PermutationResult:
    """A stratified permutation test.

    Attributes:
        statistic: the observed statistic, centred on its permutation mean (0 under the null).
        effect: a readable effect size (see each test).
        p: two-sided Monte Carlo p-value.
        n: observations used; events: outcome events among them; strata: informative strata.
    """

    statistic: float
    effect: float
    p: float
    n: int
    events: int
    strata: int


def _groups(strata: Sequence) -> list[np.ndarray]:
    keys: dict = {}
    for i, s in enumerate(strata):
        keys.setdefault(s, []).append(i)
    return [np.asarray(v) for v in keys.values()]


def _permute_within(rng: np.random.Generator, y: np.ndarray, groups: list[np.ndarray], B: int) -> np.ndarray:
    """B × n copies of y, each permuted within every stratum."""
    out = np.empty((B, y.size), dtype=y.dtype)
    for g in groups:
        block = np.broadcast_to(y[g], (B, g.size)).copy()
        out[:, g] = rng.permuted(block, axis=1)
    return out


def _mc_p(obs: float, null: np.ndarray) -> float:
    tol = 1e-12 * max(1.0, abs(obs))
    return float((1 + np.sum(np.abs(null) >= abs(obs) - tol)) / (1 + null.size))


def stratified_rate_test(y: Sequence[bool], group: Sequence[bool], strata: Sequence, *, B: int = B_DEFAULT, seed: int = 0) -> PermutationResult:
    """Is the event rate different between ``group`` True and False, within strata?

    Statistic: the Cochran–Mantel–Haenszel numerator Σ_s (a_s − E a_s), a_s the events of the
    True group in stratum s; the group labels are permuted within strata. ``effect`` is the
    Mantel–Haenszel risk difference Σ w_s (p1_s − p0_s) / Σ w_s, w_s = n1_s n0_s / n_s.
    Strata with only one group or no variation in y carry no information and are dropped.

    >>> r = stratified_rate_test([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [0] * 8, B=4000)
    >>> round(r.effect, 3), r.p < 0.25
    (0.75, True)
    """
    y = np.asarray(y, dtype=float)
    g = np.asarray(group, dtype=float)
    keep = []
    num = den = 0.0
    for idx in _groups(strata):
        ys, gs = y[idx], g[idx]
        n1, n = gs.sum(), idx.size
        if 0 < n1 < n and 0 < ys.sum() < n:
            keep.append(idx)
        if 0 < n1 < n:
            w = n1 * (n - n1) / n
            num += w * (ys[gs == 1].mean() - ys[gs == 0].mean())
            den += w
    effect = float(num / den) if den else math.nan
    n_all = int(sum(i.size for i in _groups(strata)))
    if not keep:
        return PermutationResult(0.0, effect, 1.0, n_all, int(y.sum()), 0)
    idx = np.concatenate(keep)
    ys, gs = y[idx], g[idx]
    local = _groups([s for s, i in enumerate(keep) for _ in range(i.size)])

    def centred(labels: np.ndarray) -> np.ndarray:  # (B, n) labels → Σ_s (a_s − E a_s)
        out = np.zeros(labels.shape[0])
        for gi in local:
            a = (labels[:, gi] * ys[gi]).sum(axis=1)
            out += a - gs[gi].sum() * ys[gi].sum() / gi.size
        return out

    obs = float(centred(gs[None, :])[0])
    null = centred(_permute_within(np.random.default_rng(seed), gs, local, B))
    return PermutationResult(obs, float(effect), _mc_p(obs, null), n_all, int(y.sum()), len(keep))


def _within_ranks(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Ranks scaled to (0, 1) within each stratum, (rank − ½)/n, ties averaged."""
    u = np.empty_like(x, dtype=float)
    for g in groups:
        u[g] = (stats.rankdata(x[g]) - 0.5) / g.size
    return u


def stratified_rank_test(x: Sequence[float], y: Sequence[bool], strata: Sequence, *, B: int = B_DEFAULT, seed: int = 0) -> PermutationResult:
    """Do the runs with y True sit higher in x than the others of their stratum?

    Statistic: Σ over y-True runs of (u_i − ū_s), u the within-stratum rank scaled to (0, 1) (a
    stratified Wilcoxon rank sum, as van Elteren's but with equal weight per run); the outcome is
    permuted within strata. ``effect``: the mean of (u_i − ū_s) over the y-True runs, in (−½, ½):
    +0.25 means the events sit a quarter of their stratum's ranks above its middle.

    >>> r = stratified_rank_test([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1], [0] * 6, B=4000)
    >>> round(r.effect, 3), r.p < 0.2
    (0.25, True)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    groups = _groups(strata)
    keep = [g for g in groups if 0 < y[g].sum() < g.size]
    n_all = int(x.size)
    if not keep:
        return PermutationResult(0.0, math.nan, 1.0, n_all, int(y.sum()), 0)
    idx = np.concatenate(keep)
    local = _groups([s for s, g in enumerate(keep) for _ in range(g.size)])
    u = _within_ranks(x[idx], local)
    ys = y[idx]
    ubar = np.empty_like(u)
    for g in local:
        ubar[g] = u[g].mean()
    d = u - ubar
    obs = float((ys * d).sum())
    null = _permute_within(np.random.default_rng(seed), ys, local, B) @ d
    return PermutationResult(obs, float(obs / ys.sum()), _mc_p(obs, null), n_all, int(y.sum()), len(keep))


def trend_test(y: Sequence[bool], score: Sequence[float], strata: Sequence, *, B: int = B_DEFAULT, seed: int = 0) -> PermutationResult:
    """Cochran–Armitage trend of an event rate over ordered scores, stratified.

    Statistic: Σ_i y_i (score_i − mean_s score); the outcome is permuted within strata. ``effect``:
    the least-squares slope of the event rate on the score, pooled within strata (events per unit
    of score).

    >>> r = trend_test([0, 0, 0, 1, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3], [0] * 8, B=4000)
    >>> r.effect > 0 and r.p < 0.2
    True
    """
    y = np.asarray(y, dtype=float)
    s = np.asarray(score, dtype=float)
    groups = _groups(strata)
    c = np.empty_like(s)
    for g in groups:
        c[g] = s[g] - s[g].mean()
    obs = float((y * c).sum())
    sxx = float((c * c).sum())
    effect = obs / sxx if sxx else math.nan
    keep = [g for g in groups if 0 < y[g].sum() < g.size]
    if not keep:
        return PermutationResult(0.0, effect, 1.0, int(y.size), int(y.sum()), 0)
    null = _permute_within(np.random.default_rng(seed), y, groups, B) @ c
    return PermutationResult(obs, effect, _mc_p(obs, null), int(y.size), int(y.sum()), len(keep))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (a binomial test of b
    successes in b + c trials at ½).

    >>> mcnemar_exact(6, 0) == 2 * 0.5 ** 6
    True
    """
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def detectable_rate(n1: int, n0: int, p0: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest rate p1 ≥ p0 that a two-sided level-α comparison of n1 against n0 runs detects
    with the given power, by Cohen's arcsine approximation: 2 asin√p1 − 2 asin√p0 =
    (z_{1−α/2} + z_power) √(1/n1 + 1/n0). Returns 1.0 when even p1 = 1 is not enough (or n = 0).

    >>> round(detectable_rate(100, 100, 0.5), 3)
    0.693
    """
    if n1 < 1 or n0 < 1:
        return 1.0
    h = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(1 / n1 + 1 / n0)
    a = math.asin(math.sqrt(min(max(p0, 0.0), 1.0))) + h / 2
    return 1.0 if a >= math.pi / 2 else math.sin(a) ** 2


def detectable_shift(n1: int, n0: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest standardised shift (Cohen's d) between n1 and n0 runs that a rank-sum test at
    two-sided level α detects with the given power: (z_{1−α/2} + z_power) √(1/n1 + 1/n0) / √(3/π)
    (the rank test's efficiency against the t-test under normality is 3/π). inf when a group is empty.

    >>> round(detectable_shift(50, 50), 3)
    0.573
    """
    if n1 < 1 or n0 < 1:
        return math.inf
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(1 / n1 + 1 / n0) / math.sqrt(3 / math.pi))


@dataclass(frozen=True)
class LogisticFit:
    """Firth-penalised logistic regression.

    Attributes:
        names: the coefficient names (the first is the intercept).
        coef: the penalised maximum-likelihood estimates.
        se: standard errors from the inverse Fisher information at the estimate.
        lo, hi: 95 % Wald intervals.
        n, events: observations and events.
        converged: whether Newton's iteration met its tolerance.
    """

    names: tuple[str, ...]
    coef: tuple[float, ...]
    se: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: int
    events: int
    converged: bool


def firth_penalised_loglik(beta: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """ℓ(β) + ½ log det I(β), I = Xᵀ W X, W = diag(p(1 − p)) (Firth 1993): the function
    :func:`firth_logistic` maximises."""
    eta = X @ beta
    p = 1 / (1 + np.exp(-eta))
    ll = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    w = p * (1 - p)
    sign, logdet = np.linalg.slogdet(X.T @ (X * w[:, None]))
    return ll + 0.5 * logdet if sign > 0 else -math.inf


def firth_logistic(X: np.ndarray, y: np.ndarray, names: Sequence[str], *, tol: float = 1e-10, max_iter: int = 200) -> LogisticFit:
    """Firth's bias-reduced logistic regression by Newton's method on the modified score
    U*(β) = Xᵀ(y − p + h(½ − p)), h the diagonal of the hat matrix W^½ X (XᵀWX)⁻¹ Xᵀ W^½ (Firth 1993;
    Heinze & Schemper 2002). Finite estimates even under complete separation, which is why it is
    used here: many cells have no events. ``X`` includes the intercept column.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    beta = np.zeros(X.shape[1])
    ok = False
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(X @ beta)))
        w = p * (1 - p)
        info = X.T @ (X * w[:, None])
        inv = np.linalg.pinv(info)
        h = np.einsum("ij,jk,ik->i", X, inv, X) * w
        step = inv @ (X.T @ (y - p + h * (0.5 - p)))
        # halve the step while the penalised likelihood does not increase
        base = firth_penalised_loglik(beta, X, y)
        t = 1.0
        while t > 1e-6 and firth_penalised_loglik(beta + t * step, X, y) < base - 1e-12:
            t /= 2
        beta = beta + t * step
        if np.max(np.abs(t * step)) < tol:
            ok = True
            break
    p = 1 / (1 + np.exp(-(X @ beta)))
    info = X.T @ (X * (p * (1 - p))[:, None])
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(info)), 0, None))
    z = stats.norm.ppf(0.975)
    return LogisticFit(tuple(names), tuple(beta.tolist()), tuple(se.tolist()), tuple((beta - z * se).tolist()),
                       tuple((beta + z * se).tolist()), int(y.size), int(y.sum()), ok)
