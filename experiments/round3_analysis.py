"""Round-3 analysis: the pre-registered tests of ``experiments/README.md`` on the finished runs.

``analyse(rows, out, label=…, readme=…)`` writes ``tables.md``, ``summary.json`` and the figures
into ``out`` and, given ``readme``, the verdict block between the ``round3`` markers. Nothing here
trains or certifies; every number comes from the run rows (``experiments/round3.py``).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any, Callable, Iterable

import numpy as np
from scipy import stats

from inference import (detectable_rate, detectable_shift, firth_logistic, holm, mcnemar_exact, stratified_rank_test,
                       stratified_rate_test, trend_test)
from validate_analysis import f, fmt, pval, table, wilson

THRESHOLD = 0.05
T_PRIMARY = 1e-3
N_TESTS = 7
ALPHA = 0.05
BEGIN, END = "<!-- round3:begin -->", "<!-- round3:end -->"
OPT_LABEL = {"sgd": "SGD", "sgd_m": "SGD + momentum", "adam": "Adam"}
LAST_CELL = 48 / 49  # a witness ending at or after the last grid step's start is an end rise


# ----------------------------------------------------------------------------- run predicates


def state(r: dict) -> str:
    """``converged`` | ``not_converged`` | ``diverged`` | ``failed``."""
    if r.get("status") == "failed":
        return "failed"
    final, start = f(r.get("final_loss_path")), f(r.get("initial_loss"))
    if r.get("status") == "diverged" or not math.isfinite(final) or (math.isfinite(start) and final >= start):
        return "diverged"
    return "converged" if final < THRESHOLD else "not_converged"


def conv(r: dict) -> bool:
    return state(r) == "converged"


def recertified(r: dict, tol: float = T_PRIMARY) -> bool:
    """Certified again at ``tol`` by a later library (``recert@T``; README: the deviation)."""
    return r.get(f"recert@{tol:g}") is not None


def status(r: dict, tol: float = T_PRIMARY, *, first: bool = False) -> str:
    """The run's certificate at ``tol``: the later library's where the run was certified again,
    else the sweep's own; ``first``: always the sweep's own (the library of d183bf2)."""
    v = r.get(f"recert@{tol:g}") if not first and recertified(r, tol) else r.get(f"cert@{tol:g}")
    return v if v in ("monotone", "non_monotone") else "unknown"


def y(r: dict, tol: float = T_PRIMARY, *, first: bool = False) -> bool:
    """The primary outcome: converged and certified non-monotone at T."""
    return conv(r) and status(r, tol, first=first) == "non_monotone"


def kind(r: dict, tol: float = T_PRIMARY) -> str | None:
    """``end`` or ``interior`` for a certified rise (by where its witness ends), else None."""
    if not y(r, tol):
        return None
    w = str(r.get(f"recert_witness@{tol:g}" if recertified(r, tol) else f"witness@{tol:g}") or "")
    try:
        b = float(w.split(",")[1])
    except (IndexError, ValueError):
        return "interior"
    return "end" if b >= LAST_CELL - 1e-12 else "interior"


def unknown(r: dict, *, first: bool = False) -> bool:
    return conv(r) and status(r, first=first) == "unknown"


def grid_nm(r: dict) -> bool:
    return r.get("status") == "ok" and f(r.get("max_rise")) > T_PRIMARY


def bn(r: dict) -> bool:
    v = r.get("batchnorm")
    return v is True or str(v).lower() == "true"


def num(r: dict, key: str) -> float:
    return f(r.get(key))


def cell(r: dict) -> str:
    return OPT_LABEL[r["opt"]] + (" + BN" if bn(r) else "")


# ----------------------------------------------------------------------------- formatting


def pct(k: int, n: int) -> str:
    """'k/n = p % [lo, hi]' (Wilson 95 %); no interval for n < 2."""
    if n == 0:
        return "0/0"
    if n < 2:
        return f"{k}/{n}"
    p, lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * p:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def count(rows: Iterable[dict], pred: Callable[[dict], bool]) -> tuple[int, int]:
    rows = list(rows)
    return sum(1 for r in rows if pred(r)), len(rows)


# ----------------------------------------------------------------------------- the tests


def _strata(rows: list[dict], keys: Callable[[dict], Any]) -> list:
    return [keys(r) for r in rows]


def tests(edge: list[dict], push: list[dict]) -> list[dict]:
    """The seven pre-registered tests. Each: name, claim, n, effect, p, detectable, direction."""
    const = [r for r in edge if f(r.get("anneal")) == 0.0]
    cc = [r for r in const if conv(r)]
    alpha = ALPHA / N_TESTS
    out = []

    # 1. MLI holds for most SGD nets
    sgd = [r for r in cc if r["opt"] in ("sgd", "sgd_m")]
    k = sum(1 for r in sgd if status(r) == "monotone")
    n = len(sgd)
    p1 = float(stats.binomtest(k, n, 0.5).pvalue) if n else 1.0
    out.append(dict(key="1", claim="MLI holds for most networks trained with SGD", test="exact binomial, monotone fraction vs ½",
                    n=n, effect=k / n if n else math.nan, effect_text=pct(k, n) + " certified monotone at T = 1e-3",
                    p=p1, positive=(k / n > 0.5) if n else None,
                    detectable=f"fraction ≥ {detectable_rate(n, math.inf, 0.5, alpha=alpha):.2f}" if n else "–"))

    # 2. Adam vs SGD, stratified by (BN, step)
    t = stratified_rate_test([y(r) for r in cc], [r["opt"] == "adam" for r in cc], _strata(cc, lambda r: (bn(r), r["step"])))
    na = sum(1 for r in cc if r["opt"] == "adam")
    ns = len(cc) - na
    p0 = sum(1 for r in cc if r["opt"] != "adam" and y(r)) / ns if ns else 0.0
    ka = sum(1 for r in cc if r["opt"] == "adam" and y(r))
    out.append(dict(key="2", claim="Adam violates MLI more often than SGD", test="stratified permutation (CMH), strata BN × step",
                    n=len(cc), effect=t.effect, effect_text=f"Adam {pct(ka, na)} vs SGD {pct(round(p0 * ns), ns)}; MH difference {fmt(t.effect)}",
                    p=t.p, positive=t.effect > 0 if math.isfinite(t.effect) else None,
                    detectable=f"Adam rate ≥ {detectable_rate(na, ns, p0, alpha=alpha):.2f} (SGD {p0:.2f})"))

    # 3. BN vs plain, stratified by (optimiser, step)
    t = stratified_rate_test([y(r) for r in cc], [bn(r) for r in cc], _strata(cc, lambda r: (r["opt"], r["step"])))
    nb = sum(1 for r in cc if bn(r))
    npl = len(cc) - nb
    kb = sum(1 for r in cc if bn(r) and y(r))
    kp = sum(1 for r in cc if not bn(r) and y(r))
    p0 = kp / npl if npl else 0.0
    out.append(dict(key="3", claim="BatchNorm networks violate MLI more often", test="stratified permutation (CMH), strata optimiser × step",
                    n=len(cc), effect=t.effect, effect_text=f"BN {pct(kb, nb)} vs plain {pct(kp, npl)}; MH difference {fmt(t.effect)}",
                    p=t.p, positive=t.effect > 0 if math.isfinite(t.effect) else None,
                    detectable=f"BN rate ≥ {detectable_rate(nb, npl, p0, alpha=alpha):.2f} (plain {p0:.2f})"))

    # 4a. distance within (optimiser, BN, lr) strata
    dd = [r for r in cc if num(r, "normalized_distance") > 0]
    t = stratified_rank_test([math.log(num(r, "normalized_distance")) for r in dd], [y(r) for r in dd],
                             _strata(dd, lambda r: (r["opt"], bn(r), f(r["lr"]))))
    ky = sum(1 for r in dd if y(r))
    out.append(dict(key="4a", claim="Larger distance ‖θT − θ0‖/‖θ0‖ goes with violations", test="stratified rank sum, strata optimiser × BN × lr",
                    n=len(dd), effect=t.effect, effect_text=f"{ky} certified rises among {len(dd)}; mean within-stratum rank shift {fmt(t.effect)}",
                    p=t.p, positive=t.effect > 0 if math.isfinite(t.effect) else None,
                    detectable=f"shift ≥ {detectable_shift(ky, len(dd) - ky, alpha=alpha):.2f} SD" if ky else "no events: none"))

    # 4b. the push: trend over ρ, stratified by optimiser
    pc = [r for r in push if conv(r)]
    t = trend_test([y(r) for r in pc], [num(r, "min_distance") for r in pc], [r["opt"] for r in pc])
    n4 = [r for r in pc if num(r, "min_distance") == 4.0]
    n0 = [r for r in pc if num(r, "min_distance") == 0.0]
    p0 = sum(map(y, n0)) / len(n0) if n0 else 0.0
    by_rho = "; ".join(f"ρ = {rho:g}: {pct(*count([r for r in pc if num(r, 'min_distance') == rho], y))}"
                       for rho in sorted({num(r, 'min_distance') for r in pc}))
    out.append(dict(key="4b", claim="Pushing weights away from θ0 produces violations", test="Cochran–Armitage trend over ρ, strata optimiser",
                    n=len(pc), effect=t.effect, effect_text=f"{by_rho}; slope {fmt(t.effect)} per unit ρ",
                    p=t.p, positive=t.effect > 0 if math.isfinite(t.effect) else None,
                    detectable=f"ρ = 4 rate ≥ {detectable_rate(len(n4), len(n0), p0, alpha=alpha):.2f} (ρ = 0: {p0:.2f})"))

    # 5. Gauss length, plain runs only, strata (optimiser, lr)
    gp = [r for r in cc if not bn(r) and math.isfinite(num(r, "gauss_length"))]
    t = stratified_rank_test([num(r, "gauss_length") for r in gp], [y(r) for r in gp], _strata(gp, lambda r: (r["opt"], f(r["lr"]))))
    ky = sum(1 for r in gp if y(r))
    out.append(dict(key="5", claim="Short Gauss length goes with monotone paths", test="stratified rank sum, plain runs, strata optimiser × lr",
                    n=len(gp), effect=t.effect, effect_text=f"{ky} certified rises among {len(gp)} plain runs; rank shift {fmt(t.effect)}",
                    p=t.p, positive=t.effect > 0 if math.isfinite(t.effect) else None,
                    detectable=f"shift ≥ {detectable_shift(ky, len(gp) - ky, alpha=alpha):.2f} SD" if ky else "no events: none"))

    # 6. the end-rise mechanism: every pair, no filtering on an outcome
    pr = pairs(edge)
    usable = [(a, b) for a, b in pr if a.get("status") == "ok" and b.get("status") == "ok"]
    b_ = sum(1 for a, c in usable if num(a, "end_rise") > 0 and not num(c, "end_rise") > 0)
    c_ = sum(1 for a, c in usable if num(c, "end_rise") > 0 and not num(a, "end_rise") > 0)
    out.append(dict(key="6", claim="Annealing the learning rate removes end rises", test="exact McNemar on all pairs, grid end rise > 0",
                    n=len(usable), effect=(b_ - c_) / len(usable) if usable else math.nan,
                    effect_text=f"{len(pr)} pairs, {len(pr) - len(usable)} with a diverged twin set apart; removed by annealing in {b_}, added in {c_}",
                    p=mcnemar_exact(b_, c_), positive=b_ > c_ if b_ != c_ else None,
                    detectable=_mcnemar_detectable(len(usable), alpha)))
    adj = holm([t["p"] for t in out])
    for t, a in zip(out, adj):
        t["p_holm"] = a
        t["verdict"] = verdict(a, t["positive"])
    return out


def _mcnemar_detectable(n_pairs: int, alpha: float) -> str:
    """The smallest fraction q of pairs in which annealing removes the rise (none added) that the
    exact McNemar test detects with 80 % power: b ~ Binomial(n, q) must reach the critical count."""
    if n_pairs == 0:
        return "–"
    crit = next((b for b in range(1, n_pairs + 1) if mcnemar_exact(b, 0) < alpha), None)
    if crit is None:
        return "none"
    lo, hi = 0.0, 1.0
    for _ in range(60):
        q = (lo + hi) / 2
        if stats.binom.sf(crit - 1, n_pairs, q) >= 0.8:
            hi = q
        else:
            lo = q
    return f"≥ {crit} one-way discordant pairs; a removal rate ≥ {hi:.2f} of pairs"


def verdict(p_holm: float, positive: bool | None) -> str:
    if p_holm < ALPHA and positive:
        return "supported"
    if p_holm < ALPHA and positive is False:
        return "contradicted"
    return "not supported at this power"


def pairs(edge: list[dict]) -> list[tuple[dict, dict]]:
    """(constant, annealed) twins: same optimiser, BN, lr and seed."""
    by: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in edge:
        by[(r["opt"], bn(r), f(r["lr"]), int(r["seed"]))][f(r.get("anneal"))] = r
    return [(d[0.0], d[0.25]) for _, d in sorted(by.items(), key=lambda kv: str(kv[0])) if 0.0 in d and 0.25 in d]


# ----------------------------------------------------------------------------- confounds and sensitivity


def logistic(cc: list[dict], with_gauss: bool) -> dict[str, Any]:
    rows = [r for r in cc if num(r, "normalized_distance") > 0 and (not with_gauss or math.isfinite(num(r, "gauss_length")))]
    if with_gauss:
        rows = [r for r in rows if not bn(r)]
    ys = np.array([y(r) for r in rows], dtype=float)
    if len(rows) < 5 or ys.sum() == 0 or ys.sum() == len(rows):
        return {"n": len(rows), "events": int(ys.sum()), "note": "no fit: the outcome does not vary"}
    ld = np.array([math.log(num(r, "normalized_distance")) for r in rows])
    cols = {"intercept": np.ones(len(rows)), "at edge (step 0)": np.array([r["step"] == 0 for r in rows], dtype=float),
            "log distance (per SD)": (ld - ld.mean()) / (ld.std() or 1.0),
            "SGD + momentum": np.array([r["opt"] == "sgd_m" for r in rows], dtype=float),
            "Adam": np.array([r["opt"] == "adam" for r in rows], dtype=float)}
    if not with_gauss:
        cols["BatchNorm"] = np.array([bn(r) for r in rows], dtype=float)
    else:
        g = np.array([num(r, "gauss_length") for r in rows])
        cols["Gauss length (per SD)"] = (g - g.mean()) / (g.std() or 1.0)
    X = np.column_stack(list(cols.values()))
    fit = firth_logistic(X, ys, list(cols))
    return {"n": fit.n, "events": fit.events, "converged": fit.converged,
            "terms": [{"name": n, "coef": c, "lo": lo, "hi": hi} for n, c, lo, hi in zip(fit.names, fit.coef, fit.lo, fit.hi)]}


def sensitivity(edge: list[dict]) -> list[list[Any]]:
    """Tests 2–5 again: without the runs at the edge step (chaotic), and with unknowns counted as rises."""
    const = [r for r in edge if f(r.get("anneal")) == 0.0]
    rows = []
    for label, sub, pred in (("all runs (primary)", const, y),
                             ("without the edge step (step −1 only)", [r for r in const if r["step"] != 0], y),
                             ("unknown counted as a rise", const, lambda r: y(r) or unknown(r)),
                             ("first certificates (the sweep's own)", const, lambda r: y(r, first=True)),
                             ("first certificates, unknown counted as a rise", const, lambda r: y(r, first=True) or unknown(r, first=True))):
        cc = [r for r in sub if conv(r)]
        ys = [pred(r) for r in cc]
        t2 = stratified_rate_test(ys, [r["opt"] == "adam" for r in cc], [(bn(r), r["step"]) for r in cc])
        t3 = stratified_rate_test(ys, [bn(r) for r in cc], [(r["opt"], r["step"]) for r in cc])
        dd = [(r, v) for r, v in zip(cc, ys) if num(r, "normalized_distance") > 0]
        t4 = stratified_rank_test([math.log(num(r, "normalized_distance")) for r, _ in dd], [v for _, v in dd],
                                  [(r["opt"], bn(r), f(r["lr"])) for r, _ in dd])
        gp = [(r, v) for r, v in zip(cc, ys) if not bn(r) and math.isfinite(num(r, "gauss_length"))]
        t5 = stratified_rank_test([num(r, "gauss_length") for r, _ in gp], [v for _, v in gp], [(r["opt"], f(r["lr"])) for r, _ in gp])
        rows.append([label, len(cc), sum(ys)] + [f"{fmt(t.effect)} (p {pval(t.p)})" for t in (t2, t3, t4, t5)])
    return rows


def thread_changes(edge: list[dict], threads: list[dict]) -> dict[str, Any]:
    by_id = {r["id"]: r for r in edge}
    compared, changed = [], []
    for r2 in threads:
        r1 = by_id.get(r2["id"])
        if r1 is None:
            continue
        d = {"cell": cell(r1), "lr": f(r1["lr"]), "seed": r1["seed"], "loss_1t": num(r1, "final_loss_path"), "loss_2t": num(r2, "final_loss_path"),
             "state": (state(r1), state(r2)), "grid": (grid_nm(r1), grid_nm(r2)), "cert": (status(r1, first=True) if conv(r1) else "–", status(r2, first=True) if conv(r2) else "–")}
        compared.append(d)
        if d["state"][0] != d["state"][1] or d["grid"][0] != d["grid"][1] or d["cert"][0] != d["cert"][1]:
            changed.append(d)
    rel = [abs(d["loss_1t"] - d["loss_2t"]) / max(abs(d["loss_1t"]), 1e-12) for d in compared if math.isfinite(d["loss_1t"]) and math.isfinite(d["loss_2t"])]
    return {"compared": len(compared), "changed": changed,
            "changed_training": sum(1 for d in changed if d["state"][0] != d["state"][1] or d["grid"][0] != d["grid"][1]),
            "changed_certificate_only": sum(1 for d in changed if d["state"][0] == d["state"][1] and d["grid"][0] == d["grid"][1]),
            "median_rel_loss_change": float(np.median(rel)) if rel else math.nan,
            "max_rel_loss_change": float(np.max(rel)) if rel else math.nan,
            "identical_loss": sum(1 for d in compared if d["loss_1t"] == d["loss_2t"])}


# ----------------------------------------------------------------------------- tables


def cell_table(edge: list[dict]) -> list[list[Any]]:
    out = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in edge:
        groups[(r["opt"], bn(r), r["step"], f(r.get("anneal")))].append(r)
    for (o, b, st, an), rs in sorted(groups.items(), key=lambda kv: (list(OPT_LABEL).index(kv[0][0]), kv[0][1], -kv[0][2], kv[0][3])):
        cc = [r for r in rs if conv(r)]
        k_end = sum(1 for r in cc if kind(r) == "end")
        k_int = sum(1 for r in cc if kind(r) == "interior")
        out.append([OPT_LABEL[o] + (" + BN" if b else ""), fmt(f(rs[0]["lr"])), st, "annealed" if an else "constant", len(rs),
                    sum(1 for r in rs if state(r) == "diverged"), sum(1 for r in rs if state(r) == "not_converged"), len(cc),
                    pct(sum(map(y, cc)), len(cc)), f"{k_end} / {k_int}", sum(map(unknown, cc)),
                    pct(sum(map(grid_nm, cc)), len(cc)), sum(1 for r in cc if status(r, 0.0) == "non_monotone"),
                    fmt(float(np.median([num(r, "normalized_distance") for r in cc])) if cc else math.nan), certifier(cc)])
    return out


def events_by_cell(cc: list[dict]) -> tuple[list[tuple[str, int, int]], str]:
    """Certified rises Y per cell among converged constant-lr edge runs, and one sentence saying
    where they lie (when every event is in one optimiser × BatchNorm cell, tests 2 and 3 rest on the
    same runs: an interaction, not two effects)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in cc:
        by[cell(r)].append(r)
    order = [OPT_LABEL[o] + bnl for o in OPT_LABEL for bnl in ("", " + BN")]
    rows = [(c, sum(map(y, by[c])), len(by[c])) for c in order if by.get(c)]
    hit = [(c, k, n) for c, k, n in rows if k]
    total = sum(k for _, k, _ in rows)
    if not hit:
        return rows, "No converged constant-lr edge run is certified non-monotone at T = 1e-3."
    where = "; ".join(f"{c} {k}/{n}" for c, k, n in hit)
    text = f"Certified rises at T = 1e-3 among converged constant-lr edge runs: {where}; every other cell 0."
    if len(hit) == 1:
        c = hit[0][0]
        text += (f" All {total} lie in one cell ({c}): where tests 2 and 3 are supported, they rest on the same runs, "
                 "an interaction of optimiser and BatchNorm; in these data neither factor shows a certified rise without the other.")
    return rows, text


def source(r: dict, tol: float = T_PRIMARY) -> str:
    """The library of a run's certificate at ``tol``: the fingerprint of the one that certified it
    again, else of the sweep's own, else ``d183bf2`` (the pre-registration commit recorded none)."""
    if recertified(r, tol):
        return r.get("recert_library") or "?"
    return r.get("env_library") or "d183bf2"


def certifier(rows: list[dict]) -> str:
    """Which libraries gave a group's certificates at the primary tolerance."""
    c: dict[str, int] = defaultdict(int)
    for r in rows:
        c[source(r)] += 1
    if len(c) <= 1:
        return next(iter(c), "–")
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


CELL_HEADER = ["cell", "lr", "step", "schedule", "runs", "diverged", "not converged", "converged",
               "certified non-monotone at 1e-3 (of converged)", "end / interior", "unknown", "grid Δ > 1e-3",
               "certified non-monotone at T = 0", "median distance", "library of the certificates at 1e-3"]


def pilot_table(pilot: list[dict]) -> list[list[Any]]:
    by: dict[float, list[dict]] = defaultdict(list)
    for r in pilot:
        by[f(r["lr"])].append(r)
    return [[fmt(lr), len(rs), sum(map(conv, rs)), sum(1 for r in rs if state(r) == "not_converged"),
             sum(1 for r in rs if state(r) == "diverged"), fmt(float(np.median([num(r, "final_loss_path") for r in rs])))]
            for lr, rs in sorted(by.items())]


def push_table(push: list[dict]) -> list[list[Any]]:
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in push:
        by[(r["opt"], num(r, "min_distance"))].append(r)
    out = []
    for (o, rho), rs in sorted(by.items(), key=lambda kv: (list(OPT_LABEL).index(kv[0][0]), kv[0][1])):
        cc = [r for r in rs if conv(r)]
        out.append([OPT_LABEL[o], fmt(rho), len(rs), len(cc), pct(sum(map(y, cc)), len(cc)),
                    f"{sum(1 for r in cc if kind(r) == 'end')} / {sum(1 for r in cc if kind(r) == 'interior')}",
                    sum(map(unknown, cc)), pct(sum(map(grid_nm, cc)), len(cc)),
                    fmt(float(np.median([num(r, "normalized_distance") for r in cc])) if cc else math.nan)])
    return out


def scale_table(scale: list[dict]) -> list[list[Any]]:
    return [[r["arch"].removeprefix("mlp:"), OPT_LABEL[r["opt"]], fmt(f(r["lr"])), state(r), fmt(num(r, "final_loss_path")),
             fmt(num(r, "max_rise")), status(r) if conv(r) else "–", status(r, 0.0) if conv(r) else "–",
             fmt(num(r, "normalized_distance")), fmt(num(r, "seconds"))] for r in scale]


def environments(rows: Iterable[dict]) -> list[list[Any]]:
    c: dict[tuple, int] = defaultdict(int)
    for r in rows:
        c[(r.get("env_torch"), r.get("env_blas"), r.get("env_cpu"), r.get("env_simd"), r.get("threads"),
           r.get("env_library") or "not recorded (library of commit d183bf2)")] += 1
    return [list(k) + [v] for k, v in sorted(c.items(), key=str)]


def recertifications(rows: Iterable[dict]) -> list[list[Any]]:
    """Runs certified again at the primary tolerance, by library: (library, runs, changed verdicts)."""
    c: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        if recertified(r):
            e = c[r.get("recert_library") or "?"]
            e[0] += 1
            e[1] += status(r) != status(r, first=True)
            e[2] += status(r, first=True) == "unknown" and status(r) != "unknown"
            e[3] += status(r, first=True) != "unknown" and status(r) != "unknown" and status(r) != status(r, first=True)
    return [[k, *v] for k, v in sorted(c.items())]


# ----------------------------------------------------------------------------- figures


def _plots(edge: list[dict], pilot: list[dict], push: list[dict], out: str, warnings: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.lines  # noqa: F401  (legend handles)
        import matplotlib.ticker  # noqa: F401
    except Exception as exc:  # optional work: a warning, never a lost verdict
        warnings.append(f"plots skipped: {exc}")
        return
    const = [r for r in edge if f(r.get("anneal")) == 0.0]
    colours = {"sgd": "tab:blue", "sgd_m": "tab:orange", "adam": "tab:green"}
    try:
        fig, axes = plt.subplots(2, 3, figsize=(13, 7), gridspec_kw={"width_ratios": [1, 1, 1.1]})
        for j, b in enumerate((False, True)):
            for o, col in colours.items():
                rs = [r for r in const if r["opt"] == o and bn(r) == b]
                pts: dict[int, list[dict]] = defaultdict(list)
                for r in rs:
                    pts[int(r["step"])].append(r)
                xs = sorted(pts)
                off = 0.12 * (list(colours).index(o) - 1)
                for i, (pred, among) in enumerate(((conv, lambda r: True), (y, conv))):
                    keep = [(x, sum(1 for r in pts[x] if among(r) and pred(r)), sum(1 for r in pts[x] if among(r))) for x in xs]
                    keep = [t for t in keep if t[2] > 0]
                    if not keep:
                        continue
                    ax = axes[i, j]
                    ps = [wilson(k, n) for _, k, n in keep]
                    ax.errorbar([x + off for x, _, _ in keep], [p[0] for p in ps], yerr=[[p[0] - p[1] for p in ps], [p[2] - p[0] for p in ps]],
                                fmt="o-", color=col, capsize=3, label=OPT_LABEL[o])
                    for (x, k, n), p in zip(keep, ps):
                        dy = 9 * list(colours).index(o)
                        ax.annotate(f"n={n}", (x + off, p[0]), textcoords="offset points", fontsize=7, color=col,
                                    xytext=(4, -12 - dy) if p[0] > 0.8 else (4, 4 + dy))
            for i in range(2):
                ax = axes[i, j]
                ax.axvline(0.0, color="k", ls=":", lw=1)
                ax.set_xlim(-1.5, 0.5)
                ax.set_xticks([-1, 0], ["one step below", "edge"])
                ax.set_ylim(-0.05, 1.05)
            axes[0, j].set_title(("with" if b else "without") + " BatchNorm")
        axes[0, 0].set_ylabel("fraction converged (of runs)")
        axes[1, 0].set_ylabel("certified non-monotone at 1e-3\n(of converged)")
        if axes[0, 0].get_legend_handles_labels()[0]:
            axes[0, 0].legend(fontsize=8)
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for r in pilot:
            by_lr[f(r["lr"])].append(r)
        ax = axes[0, 2]
        if by_lr:
            lrs = sorted(by_lr)
            ps = [wilson(sum(map(conv, by_lr[lr])), len(by_lr[lr])) for lr in lrs]
            ax.errorbar(lrs, [p[0] for p in ps], yerr=[[p[0] - p[1] for p in ps], [p[2] - p[0] for p in ps]], fmt="o-", color=colours["adam"], capsize=3)
            dv = [sum(1 for r in by_lr[lr] if state(r) == "diverged") / len(by_lr[lr]) for lr in lrs]
            ax.plot(lrs, dv, "x--", color="tab:red", label="diverged")
            for lr, p in zip(lrs, ps):
                ax.annotate(f"n={len(by_lr[lr])}", (lr, p[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.set_xscale("log")
            ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], fontsize=8)
            ax.minorticks_off()
            ax.legend(fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("Adam + BN pilot past round 2's grid")
        ax.set_xlabel("learning rate")
        ax = axes[1, 2]  # what stands between the BN cells and a verdict: the undecided runs
        for o, col in colours.items():
            rs = [r for r in const if r["opt"] == o and bn(r) and conv(r)]
            xs = sorted({int(r["step"]) for r in rs})
            if not xs:
                continue
            ks = [(sum(1 for r in rs if int(r["step"]) == x and unknown(r)), sum(1 for r in rs if int(r["step"]) == x)) for x in xs]
            ps = [wilson(k, n) for k, n in ks]
            off = 0.12 * (list(colours).index(o) - 1)
            ax.errorbar([x + off for x in xs], [p[0] for p in ps], yerr=[[p[0] - p[1] for p in ps], [p[2] - p[0] for p in ps]],
                        fmt="s--", color=col, capsize=3, label=OPT_LABEL[o] + " + BN")
            for x, (k, n), p in zip(xs, ks, ps):
                ax.annotate(f"n={n}", (x + off, p[0]), textcoords="offset points", fontsize=7, color=col, xytext=(4, 4))
        ax.axvline(0.0, color="k", ls=":", lw=1)
        ax.set_xlim(-1.5, 0.5)
        ax.set_xticks([-1, 0], ["one step below", "edge"])
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("unknown at 1e-3 (of converged)")
        ax.set_title("with BatchNorm: undecided runs", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.suptitle("Round 3: constant-lr runs at each cell's stability edge and one step below (Wilson 95 %)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "edge_cells.png"), dpi=120)
        plt.close(fig)

        cc = [r for r in const if conv(r) and num(r, "normalized_distance") > 0]
        short = {"sgd": "SGD", "sgd_m": "SGD+m", "adam": "Adam"}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
        for j, b in enumerate((False, True)):
            ax = axes[j]
            mine = [r for r in cc if bn(r) == b]  # each panel its own strata (optimiser, lr)
            strata = sorted({(r["opt"], f(r["lr"]), r["step"]) for r in mine}, key=lambda s: (list(OPT_LABEL).index(s[0]), s[1]))
            for i, (o, lr, step) in enumerate(strata):
                rs = [r for r in mine if (r["opt"], f(r["lr"])) == (o, lr)]
                for r in rs:
                    st = "Y" if y(r) else ("unknown" if unknown(r) else "monotone")
                    col = {"Y": "tab:red", "unknown": "tab:orange", "monotone": "tab:purple" if b else "tab:gray"}[st]
                    ax.scatter(i + {"Y": 0.2, "unknown": 0.0, "monotone": -0.2}[st], num(r, "normalized_distance"), s=16,
                               facecolors="none" if st == "unknown" else col, edgecolors=col, alpha=0.8)
                ax.annotate(f"n={len(rs)}", (i, min(num(r, 'normalized_distance') for r in rs)), textcoords="offset points",
                            xytext=(0, -12), fontsize=7, ha="center")
            ax.set_xticks(range(len(strata)), [f"{short[o]}\n{lr:g}" + ("\nedge" if step == 0 else "") for o, lr, step in strata], fontsize=7)
            ax.set_xlim(-0.6, len(strata) - 0.4)
            ax.margins(y=0.12)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=6)
            ax.set_title(("with" if b else "without") + " BatchNorm, by (optimiser, lr)")
            ax.set_ylabel("‖θT − θ0‖ / ‖θ0‖")
        handles = [matplotlib.lines.Line2D([], [], marker="o", ls="", color=c, markerfacecolor=fc, label=l)
                   for c, fc, l in (("tab:red", "tab:red", "certified non-monotone at 1e-3"), ("tab:orange", "none", "unknown"),
                                    ("tab:gray", "tab:gray", "certified monotone (plain)"), ("tab:purple", "tab:purple", "certified monotone (BN)"))]
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
        fig.suptitle("Distance travelled within learning-rate cells (converged constant-lr edge runs; test 4a)")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(os.path.join(out, "distance_within_cells.png"), dpi=120)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        for o, col in colours.items():
            rs = [r for r in push if r["opt"] == o and conv(r)]
            rhos = sorted({num(r, "min_distance") for r in rs})
            ks = [(sum(1 for r in rs if num(r, "min_distance") == rho and y(r)), sum(1 for r in rs if num(r, "min_distance") == rho)) for rho in rhos]
            if not rhos:
                continue
            ps = [wilson(k, n) for k, n in ks]
            ax.errorbar(rhos, [p[0] for p in ps], yerr=[[p[0] - p[1] for p in ps], [p[2] - p[0] for p in ps]], fmt="o-",
                        color=col, capsize=3, label=OPT_LABEL[o])
            for rho, (k, n) in zip(rhos, ks):
                ax.annotate(f"{n}", (rho, k / n), textcoords="offset points", xytext=(4, 4), fontsize=7, color=col)
        ax.set_xlabel("push radius ρ (‖θ − θ0‖ ≥ ρ‖θ0‖)")
        ax.set_ylabel("certified non-monotone at 1e-3 (of converged)")
        ax.set_ylim(-0.05, 1.05)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "push_trend.png"), dpi=120)
        plt.close(fig)

        gp = [r for r in const if conv(r) and not bn(r) and math.isfinite(num(r, "gauss_length"))]
        strata = sorted({(r["opt"], f(r["lr"])) for r in gp}, key=lambda s: (list(OPT_LABEL).index(s[0]), s[1]))
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, s in enumerate(strata):
            rs = [r for r in gp if (r["opt"], f(r["lr"])) == s]
            for r in rs:
                ax.scatter(i + (0.15 if y(r) else -0.15), num(r, "gauss_length"), s=14, color="tab:red" if y(r) else "tab:gray", alpha=0.7)
            ax.annotate(f"n={len(rs)}", (i, max(num(r, 'gauss_length') for r in rs)), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set_xticks(range(len(strata)), [f"{OPT_LABEL[o]}\n{lr:g}" for o, lr in strata], fontsize=7)
        ax.set_ylabel("Gauss length (plain runs; red: certified non-monotone)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "gauss_within_cells.png"), dpi=120)
        plt.close(fig)
    except Exception as exc:  # optional work
        warnings.append(f"a plot failed: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- the report


def analyse(rows: dict[str, list[dict]], out: str, *, label: str, readme: str | None) -> dict[str, Any]:
    edge, pilot, push = rows.get("edge", []), rows.get("pilot", []), rows.get("push", [])
    threads, scale = rows.get("threads", []), rows.get("scale", [])
    warnings: list[str] = []
    res = tests(edge, push)
    const = [r for r in edge if f(r.get("anneal")) == 0.0]
    cc = [r for r in const if conv(r)]
    models = {"all": logistic(cc, with_gauss=False), "plain, with Gauss length": logistic(cc, with_gauss=True)}
    ev_rows, ev_text = events_by_cell(cc)
    sens = sensitivity(edge)
    thr = thread_changes(edge, threads)
    pr = pairs(edge)
    cert_pairs = [(a, b) for a, b in pr if conv(a) and conv(b)]
    cb = sum(1 for a, b in cert_pairs if kind(a, 0.0) == "end" and kind(b, 0.0) != "end")
    cc_ = sum(1 for a, b in cert_pairs if kind(b, 0.0) == "end" and kind(a, 0.0) != "end")
    seeds = sorted({int(r["seed"]) for r in edge})
    edges = sorted({(r["opt"], bn(r), f(r["edge_lr"])) for r in edge}, key=lambda e: (list(OPT_LABEL).index(e[0]), e[1]))
    summary = {"label": label, "runs": {k: len(v) for k, v in rows.items()}, "seeds": seeds,
               "edges": [{"cell": OPT_LABEL[o] + (" + BN" if b else ""), "edge_lr": e} for o, b, e in edges],
               "tests": res, "models": models, "threads": thr,
               "events_by_cell": [{"cell": c, "events": k, "converged": n} for c, k, n in ev_rows], "events_text": ev_text,
               "certified_end_rises_T0": {"pairs_both_converged": len(cert_pairs), "constant_only": cb, "annealed_only": cc_,
                                          "p": mcnemar_exact(cb, cc_)},
               "warnings": warnings}
    _plots(edge, pilot, push, out, warnings)

    md = [f"# Round 3 ({label}): tables", "",
          f"Runs: {', '.join(f'{k} {v}' for k, v in summary['runs'].items())}; edge-block seeds {seeds[0] if seeds else '–'}–{seeds[-1] if seeds else '–'} ({len(seeds)}).", "",
          "## Stability edges", "", table(["cell", "edge lr"], [[OPT_LABEL[o] + (" + BN" if b else ""), fmt(e)] for o, b, e in edges]), "",
          "## Adam + BatchNorm pilot (5 seeds per lr)", "", table(["lr", "runs", "converged", "not converged", "diverged", "median final loss"], pilot_table(pilot)), "",
          "## Edge block, per cell", "", table(CELL_HEADER, cell_table(edge)), "",
          "## Pre-registered tests (Holm over 7)", "",
          table(["#", "claim", "test", "n", "observed", "p", "Holm p", "smallest detectable (80 %, α = 0.05/7)", "verdict"],
                [[t["key"], t["claim"], t["test"], t["n"], t["effect_text"], pval(t["p"]), pval(t["p_holm"]), t["detectable"], t["verdict"]] for t in res]), "",
          ev_text, "",
          "## Sensitivity: tests 2–5 (effect, p; not Holm-adjusted)", "",
          table(["analysis", "converged runs", "events", "2 Adam (MH diff)", "3 BN (MH diff)", "4a distance (rank shift)", "5 Gauss (rank shift)"], sens), "",
          "## Firth logistic models of Y (converged constant-lr edge runs)", ""]
    for name, m in models.items():
        md.append(f"**{name}** (n = {m['n']}, events = {m['events']})")
        md.append("")
        if "terms" in m:
            md.append(table(["term", "log-odds", "95 % Wald interval"], [[t["name"], fmt(t["coef"]), f"[{fmt(t['lo'])}, {fmt(t['hi'])}]"] for t in m["terms"]]))
        else:
            md.append(m["note"])
        md.append("")
    md += ["## Push block", "", table(["optimiser", "ρ", "runs", "converged", "certified non-monotone at 1e-3", "end / interior", "unknown", "grid Δ > 1e-3", "median distance"], push_table(push)), "",
           "## End rises, certified at T = 0 (pairs where both twins converged)", "",
           f"{len(cert_pairs)} pairs: a certified end rise in the constant twin only {cb}, in the annealed twin only {cc_} (exact McNemar p {pval(mcnemar_exact(cb, cc_))}).", "",
           "## Threads (1 vs 2 torch threads, same configs)", "",
           f"{thr['compared']} runs compared; identical final loss in {thr['identical_loss']}; median relative change of the final loss "
           f"{fmt(thr['median_rel_loss_change'])}, max {fmt(thr['max_rel_loss_change'])}. Verdicts changed in {len(thr['changed'])}: "
           f"{thr['changed_training']} in what training decides (converged or not, grid Δ > 1e-3), {thr['changed_certificate_only']} in the "
           "certificate alone (which can also change because the proof budget is wall-clock time: the 2-thread runs ran alone, "
           "the 1-thread runs beside another worker). One machine only: no second machine was available to this project.", ""]
    if thr["changed"]:
        md.append(table(["cell", "lr", "seed", "loss (1 thread)", "loss (2 threads)", "state", "grid Δ > 1e-3", "certificate at 1e-3"],
                        [[d["cell"], fmt(d["lr"]), d["seed"], fmt(d["loss_1t"]), fmt(d["loss_2t"]), " → ".join(d["state"]),
                          " → ".join(map(str, d["grid"])), " → ".join(d["cert"])] for d in thr["changed"]]))
        md.append("")
    if scale:
        md += ["## Scale block (300 epochs, descriptive)", "",
               table(["arch", "optimiser", "lr", "state", "final loss", "grid Δ", "cert 1e-3", "cert 0", "distance", "seconds"], scale_table(scale)), ""]
    md += ["## Environments", "", table(["torch", "BLAS", "CPU", "vector", "threads", "library", "runs"], environments([r for rs in rows.values() for r in rs])), ""]
    rc = recertifications([r for name, rs in rows.items() if name != "threads" for r in rs])
    if rc:
        md += ["Certified again at T = 1e-3 (the primary outcome) by a later library (fingerprint of its source), as the sweep "
               "certified them (same budget, float32 line, statistics re-estimated, one thread, two runs at a time):", "",
               table(["library", "runs", "verdict changed", "unknown → decided", "decided → the other decision"], rc), ""]
    if warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    with open(os.path.join(out, "tables.md"), "w") as fh:
        fh.write("\n".join(md))
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
    if readme:
        _write_readme(readme, _block(summary, md, label))
    return summary


def _block(summary: dict, md: list[str], label: str) -> str:
    res = summary["tests"]
    res_dir = f"results/round3/{label}"
    head = [f"## Round 3: verdicts ({label} design)", "",
            f"Generated by `python experiments/validate.py --round 3{' --quick' if label == 'quick' else ''}` from `{res_dir}/results.csv`; "
            f"every number is in `{res_dir}/tables.md`, figures `edge_cells.png`, `distance_within_cells.png`, `push_trend.png`, "
            f"`gauss_within_cells.png` beside it. Tests and their correction as pre-registered above."]
    if label == "quick":
        head += ["", "**The quick form: a 2-seed subset for checking the pipeline; its verdicts are not the round's.**"]
    head += ["", table(["#", "claim", "n", "observed", "Holm p", "smallest detectable effect", "verdict"],
                       [[t["key"], t["claim"], t["n"], t["effect_text"], pval(t["p_holm"]), t["detectable"], f"**{t['verdict']}**"] for t in res]), "",
             summary.get("events_text", ""), ""]
    # the tables after the header of tables.md
    body = "\n".join(md[2:])
    return "\n".join(head) + "\n" + body.replace("\n## ", "\n### ")


def _write_readme(path: str, block: str) -> None:
    text = open(path).read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: the round-3 markers are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as fh:
        fh.write(head + f"{BEGIN}\n{block}\n{END}" + tail)
